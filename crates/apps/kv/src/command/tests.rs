use super::*;

fn session() -> Session {
    Session::new(5, "127.0.0.1:50000".into(), "127.0.0.1:6379".into())
}

fn status() -> ServerStatus {
    ServerStatus {
        connected_clients: 3,
        connections_max: 1024,
        tcp_port: 6379,
        uptime: Duration::from_secs(90),
    }
}

fn run(session: &mut Session, words: &[&str]) -> Action {
    let args = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    dispatch(args, session, &status())
}

fn one(words: &[&str]) -> Action {
    run(&mut session(), words)
}

fn replied(action: Action) -> String {
    match action {
        Action::Reply(bytes) => String::from_utf8(bytes).unwrap(),
        other => panic!("expected a local reply, got {other:?}"),
    }
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn err_line(line: &str) -> String {
    format!("-{line}\r\n")
}

#[test]
fn key_value_commands_map_to_operations() {
    use Action::{Ordered, Read};
    assert_eq!(one(&["GET", "k"]), Read(KvOp::Get { key: b("k") }));
    assert_eq!(
        one(&["get", "k"]),
        Read(KvOp::Get { key: b("k") }),
        "case-insensitive"
    );
    assert_eq!(
        one(&["SET", "k", "v"]),
        Ordered(KvOp::Set {
            key: b("k"),
            value: b("v"),
            condition: SetCondition::Always,
            get: false
        })
    );
    assert_eq!(
        one(&["set", "k", "v", "nx", "GET", "keepttl"]),
        Ordered(KvOp::Set {
            key: b("k"),
            value: b("v"),
            condition: SetCondition::IfAbsent,
            get: true
        })
    );
    assert_eq!(
        one(&["SET", "k", "v", "XX", "XX"]),
        Ordered(KvOp::Set {
            key: b("k"),
            value: b("v"),
            condition: SetCondition::IfPresent,
            get: false
        })
    );
    assert_eq!(
        one(&["DEL", "a", "b"]),
        Ordered(KvOp::Del {
            keys: vec![b("a"), b("b")]
        })
    );
    assert_eq!(
        one(&["EXISTS", "a", "a"]),
        Read(KvOp::Exists {
            keys: vec![b("a"), b("a")]
        })
    );
    assert_eq!(
        one(&["INCR", "n"]),
        Ordered(KvOp::IncrBy {
            key: b("n"),
            delta: 1
        })
    );
    assert_eq!(
        one(&["INCRBY", "n", "-5"]),
        Ordered(KvOp::IncrBy {
            key: b("n"),
            delta: -5
        })
    );
    assert_eq!(
        one(&["DECR", "n"]),
        Ordered(KvOp::DecrBy {
            key: b("n"),
            delta: 1
        })
    );
    assert_eq!(
        one(&["DECRBY", "n", "-9223372036854775808"]),
        Ordered(KvOp::DecrBy {
            key: b("n"),
            delta: i64::MIN
        })
    );
    assert_eq!(
        one(&["APPEND", "k", "v"]),
        Ordered(KvOp::Append {
            key: b("k"),
            value: b("v")
        })
    );
    assert_eq!(one(&["STRLEN", "k"]), Read(KvOp::Strlen { key: b("k") }));
    assert_eq!(
        one(&["MGET", "a", "b"]),
        Read(KvOp::MGet {
            keys: vec![b("a"), b("b")]
        })
    );
    assert_eq!(
        one(&["MSET", "a", "1", "b", "2"]),
        Ordered(KvOp::MSet {
            pairs: vec![(b("a"), b("1")), (b("b"), b("2"))]
        })
    );
    assert_eq!(one(&["DBSIZE"]), Read(KvOp::DbSize));
    assert_eq!(one(&["KEYS", "*"]), Read(KvOp::Keys { pattern: b("*") }));
    assert_eq!(one(&["FLUSHALL"]), Ordered(KvOp::FlushAll));
    assert_eq!(one(&["flushall", "async"]), Ordered(KvOp::FlushAll));
    assert_eq!(one(&["FLUSHALL", "SYNC"]), Ordered(KvOp::FlushAll));
}

#[test]
fn argument_errors_read_like_redis() {
    let cases: &[(&[&str], &str)] = &[
        (&["GET"], "ERR wrong number of arguments for 'get' command"),
        (
            &["GET", "a", "b"],
            "ERR wrong number of arguments for 'get' command",
        ),
        (
            &["SET", "k"],
            "ERR wrong number of arguments for 'set' command",
        ),
        (&["DEL"], "ERR wrong number of arguments for 'del' command"),
        (
            &["MSET", "a"],
            "ERR wrong number of arguments for 'mset' command",
        ),
        (
            &["MSET", "a", "1", "b"],
            "ERR wrong number of arguments for 'mset' command",
        ),
        (
            &["DBSIZE", "x"],
            "ERR wrong number of arguments for 'dbsize' command",
        ),
        (
            &["PING", "a", "b"],
            "ERR wrong number of arguments for 'ping' command",
        ),
        (
            &["INCRBY", "n", "x"],
            "ERR value is not an integer or out of range",
        ),
        (
            &["INCRBY", "n", "1.5"],
            "ERR value is not an integer or out of range",
        ),
        (
            &["DECRBY", "n", "99999999999999999999"],
            "ERR value is not an integer or out of range",
        ),
        (&["SET", "k", "v", "NX", "XX"], "ERR syntax error"),
        (&["SET", "k", "v", "XX", "NX"], "ERR syntax error"),
        (&["SET", "k", "v", "BOGUS"], "ERR syntax error"),
        (&["SET", "k", "v", "EX"], "ERR syntax error"),
        (&["SET", "k", "v", "EX", "10"], errors::NO_EXPIRY),
        (&["SET", "k", "v", "px", "10"], errors::NO_EXPIRY),
        (&["FLUSHALL", "LATER"], "ERR syntax error"),
        (&["SELECT", "1"], "ERR DB index is out of range"),
        (
            &["SELECT", "x"],
            "ERR value is not an integer or out of range",
        ),
        (
            &["foo", "a", "b"],
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' ",
        ),
        (
            &["foo"],
            "ERR unknown command 'foo', with args beginning with: ",
        ),
    ];
    for (words, expected) in cases {
        assert_eq!(replied(one(words)), err_line(expected), "{words:?}");
    }
}

#[test]
fn unknown_command_lists_at_most_128_bytes_of_arguments() {
    let long = "x".repeat(200);
    let line = replied(one(&["nope", &long, "more"]));
    assert_eq!(
        line,
        err_line(&format!(
            "ERR unknown command 'nope', with args beginning with: '{}' ",
            "x".repeat(128)
        ))
    );
}

#[test]
fn connection_commands() {
    assert_eq!(replied(one(&["PING"])), "+PONG\r\n");
    assert_eq!(replied(one(&["ping", "hi there"])), "$8\r\nhi there\r\n");
    assert_eq!(replied(one(&["ECHO", "x"])), "$1\r\nx\r\n");
    assert_eq!(replied(one(&["SELECT", "0"])), "+OK\r\n");
    assert_eq!(one(&["QUIT"]), Action::Close(b("+OK\r\n")));
    assert_eq!(
        replied(one(&["AUTH", "pw"])),
        err_line(errors::AUTH_NOT_CONFIGURED)
    );
    assert_eq!(replied(one(&["AUTH", "default", "pw"])), "+OK\r\n");
    assert_eq!(
        replied(one(&["AUTH", "alice", "pw"])),
        err_line(errors::WRONGPASS)
    );
    let mut s = session();
    run(&mut s, &["CLIENT", "SETNAME", "app"]);
    assert_eq!(replied(run(&mut s, &["RESET"])), "+RESET\r\n");
    assert!(s.name.is_empty());
}

#[test]
fn hello() {
    let expected = "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n\
                    $5\r\nproto\r\n:2\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
                    $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
    assert_eq!(replied(one(&["HELLO"])), expected);
    assert_eq!(replied(one(&["hello", "2"])), expected);
    assert_eq!(replied(one(&["HELLO", "3"])), err_line(errors::NOPROTO));
    assert_eq!(replied(one(&["HELLO", "1"])), err_line(errors::NOPROTO));
    assert_eq!(
        replied(one(&["HELLO", "two"])),
        err_line(errors::HELLO_VERSION)
    );
    let mut s = session();
    assert_eq!(
        replied(run(
            &mut s,
            &["HELLO", "2", "AUTH", "default", "x", "SETNAME", "me"]
        )),
        expected
    );
    assert_eq!(s.name, b("me"));
    assert_eq!(
        replied(one(&["HELLO", "2", "AUTH", "bob", "x"])),
        err_line(errors::WRONGPASS)
    );
    assert_eq!(
        replied(one(&["HELLO", "2", "SETNAME"])),
        err_line("ERR Syntax error in HELLO option 'SETNAME'")
    );
}

#[test]
fn client_subcommands() {
    let mut s = session();
    assert_eq!(replied(run(&mut s, &["CLIENT", "ID"])), ":5\r\n");
    assert_eq!(replied(run(&mut s, &["CLIENT", "GETNAME"])), "$-1\r\n");
    assert_eq!(
        replied(run(&mut s, &["client", "setname", "worker-1"])),
        "+OK\r\n"
    );
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "GETNAME"])),
        "$8\r\nworker-1\r\n"
    );
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "SETNAME", "has space"])),
        err_line(errors::CLIENT_NAME)
    );
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "SETINFO", "LIB-NAME", "redis-rs"])),
        "+OK\r\n"
    );
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "SETINFO", "lib-ver", "0.27.6"])),
        "+OK\r\n"
    );
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "SETINFO", "color", "red"])),
        err_line("ERR Unrecognized option 'color'")
    );
    let info = replied(run(&mut s, &["CLIENT", "INFO"]));
    for field in [
        "id=5 ",
        "addr=127.0.0.1:50000 ",
        "laddr=127.0.0.1:6379 ",
        "name=worker-1 ",
        "db=0 ",
        "cmd=client|info ",
        "lib-name=redis-rs ",
        "lib-ver=0.27.6\n",
    ] {
        assert!(info.contains(field), "{field:?} in {info:?}");
    }
    assert!(replied(run(&mut s, &["CLIENT", "LIST"])).contains("cmd=client|list "));
    assert_eq!(replied(run(&mut s, &["CLIENT", "REPLY", "ON"])), "+OK\r\n");
    assert!(replied(run(&mut s, &["CLIENT", "REPLY", "OFF"])).starts_with("-ERR"));
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "NO-EVICT", "on"])),
        "+OK\r\n"
    );
    assert_eq!(replied(run(&mut s, &["CLIENT", "GETREDIR"])), ":-1\r\n");
    assert!(replied(run(&mut s, &["CLIENT", "HELP"])).starts_with("*4\r\n+CLIENT"));
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "GETNAME", "x"])),
        err_line("ERR wrong number of arguments for 'client|getname' command")
    );
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "SETNAME"])),
        err_line("ERR wrong number of arguments for 'client|setname' command")
    );
    assert_eq!(
        replied(run(&mut s, &["CLIENT"])),
        err_line("ERR wrong number of arguments for 'client' command")
    );
    assert_eq!(
        replied(run(&mut s, &["CLIENT", "fly"])),
        err_line("ERR unknown subcommand 'fly'. Try CLIENT HELP.")
    );
}

#[test]
fn command_introspection() {
    let all = replied(one(&["COMMAND"]));
    assert!(all.starts_with(&format!("*{}\r\n", COMMANDS.len())));
    assert_eq!(
        replied(one(&["COMMAND", "COUNT"])),
        format!(":{}\r\n", COMMANDS.len())
    );
    assert_eq!(replied(one(&["COMMAND", "DOCS"])), "*0\r\n");
    assert_eq!(replied(one(&["COMMAND", "DOCS", "get"])), "*0\r\n");
    assert_eq!(
        replied(one(&["COMMAND", "INFO", "get", "nosuch"])),
        "*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n\
         *0\r\n*0\r\n*0\r\n*0\r\n$-1\r\n"
    );
    assert_eq!(
        replied(one(&["COMMAND", "LIST", "FILTERBY", "PATTERN", "?et"])),
        "*2\r\n$3\r\nget\r\n$3\r\nset\r\n"
    );
    assert_eq!(
        replied(one(&["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"])),
        "*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    );
    assert_eq!(
        replied(one(&["COMMAND", "GETKEYS", "GET"])),
        err_line("ERR Invalid number of arguments specified for command")
    );
    assert_eq!(
        replied(one(&["COMMAND", "GETKEYS", "PING", "x"])),
        err_line("ERR The command has no key arguments")
    );
    assert_eq!(
        replied(one(&["COMMAND", "COUNT", "x"])),
        err_line("ERR wrong number of arguments for 'command|count' command")
    );
    assert_eq!(
        replied(one(&["COMMAND", "nope"])),
        err_line("ERR unknown subcommand 'nope'. Try COMMAND HELP.")
    );
}

#[test]
fn config_get() {
    assert_eq!(
        replied(one(&["CONFIG", "GET", "save"])),
        "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    );
    assert_eq!(
        replied(one(&["config", "get", "APPENDONLY"])),
        "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    );
    assert_eq!(replied(one(&["CONFIG", "GET", "nosuch"])), "*0\r\n");
    assert_eq!(
        replied(one(&["CONFIG", "GET", "maxclients", "databases"])),
        "*4\r\n$9\r\ndatabases\r\n$1\r\n1\r\n$10\r\nmaxclients\r\n$4\r\n1024\r\n"
    );
    assert!(replied(one(&["CONFIG", "GET", "*"])).starts_with("*12\r\n"));
    assert_eq!(
        replied(one(&["CONFIG", "GET"])),
        err_line("ERR wrong number of arguments for 'config|get' command")
    );
    assert!(replied(one(&["CONFIG", "SET", "save", ""])).starts_with("-ERR"));
    assert_eq!(replied(one(&["CONFIG", "RESETSTAT"])), "+OK\r\n");
    assert_eq!(
        replied(one(&["CONFIG", "REWRITE"])),
        err_line(errors::NO_CONFIG_FILE)
    );
}

#[test]
fn info_sections() {
    let all = replied(one(&["INFO"]));
    for line in [
        "# Server\r\n",
        "redis_version:7.0.0\r\n",
        "tcp_port:6379\r\n",
        "uptime_in_seconds:90\r\n",
        "shieldwall_note:",
        "# Clients\r\nconnected_clients:3\r\nmaxclients:1024\r\n",
        "# Replication\r\nrole:master\r\n",
    ] {
        assert!(all.contains(line), "{line:?} in {all:?}");
    }
    assert_eq!(replied(one(&["INFO", "all"])), all);
    let server = replied(one(&["INFO", "SERVER"]));
    assert!(server.contains("# Server") && !server.contains("# Clients"));
    let two = replied(one(&["INFO", "clients", "replication"]));
    assert!(!two.contains("# Server") && two.contains("# Clients") && two.contains("role:master"));
    assert_eq!(replied(one(&["INFO", "nosuch"])), "$0\r\n\r\n");
}

#[test]
fn kv_replies_become_resp() {
    let write = |reply: KvReply| {
        let mut out = Vec::new();
        write_kv_reply(&mut out, &reply);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(write(KvReply::Ok), "+OK\r\n");
    assert_eq!(write(KvReply::Nil), "$-1\r\n");
    assert_eq!(write(KvReply::Int(-3)), ":-3\r\n");
    assert_eq!(write(KvReply::Bulk(b("v"))), "$1\r\nv\r\n");
    assert_eq!(
        write(KvReply::Array(vec![Some(b("a")), None])),
        "*2\r\n$1\r\na\r\n$-1\r\n"
    );
    assert_eq!(write(KvReply::Array(vec![])), "*0\r\n");
    assert_eq!(write(KvReply::error("ERR x")), "-ERR x\r\n");
}
