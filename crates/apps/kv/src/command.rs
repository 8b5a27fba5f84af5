//! Redis commands: turns a parsed command into a [`KvOp`] for the backend or into a reply the
//! gateway gives itself (connection handshake and introspection commands). Pure code: the
//! gateway supplies the connection's [`Session`] and a [`ServerStatus`].

use std::time::Duration;

use bytes::BufMut;

use crate::glob::Glob;
use crate::ops::{parse_integer, KvOp, KvReply, SetCondition};
use crate::resp::{self, RespValue};

/// The Redis version the gateway claims in `HELLO` and `INFO` (clients check it for features).
pub const REDIS_VERSION: &str = "7.0.0";

/// Error lines the gateway answers itself, as Redis 7 words them.
pub mod errors {
    /// `ERR syntax error`.
    pub const SYNTAX: &str = "ERR syntax error";
    /// `SELECT` of a database other than 0.
    pub const DB_INDEX: &str = "ERR DB index is out of range";
    /// `HELLO 3` (RESP3) or another unsupported version.
    pub const NOPROTO: &str = "NOPROTO unsupported protocol version";
    /// `HELLO` with a version that is not an integer.
    pub const HELLO_VERSION: &str = "ERR Protocol version is not an integer or out of range";
    /// `SET ... EX/PX/EXAT/PXAT`: the replicated store has no clock, so no expiry.
    pub const NO_EXPIRY: &str = "ERR key expiry (EX, PX, EXAT, PXAT) is not supported by \
                                 shieldwall: its state machine has no clock";
    /// `AUTH password` while no password is configured (always, here).
    pub const AUTH_NOT_CONFIGURED: &str = "ERR AUTH <password> called without any password \
                                           configured for the default user. Are you sure your \
                                           configuration is correct?";
    /// `AUTH user password` / `HELLO ... AUTH` for a user other than `default`.
    pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
    /// `CLIENT SETNAME` with a space, a newline or another special character.
    pub const CLIENT_NAME: &str =
        "ERR Client names cannot contain spaces, newlines or special characters.";
    /// `CONFIG REWRITE`.
    pub const NO_CONFIG_FILE: &str = "ERR The server is running without a config file";
}

/// Per-connection state the commands read and change.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// Unique per gateway, from 1.
    pub id: u64,
    /// Peer address, `ip:port`.
    pub peer: String,
    /// Local address, `ip:port`.
    pub local: String,
    /// `CLIENT SETNAME`.
    pub name: Vec<u8>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Vec<u8>,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Vec<u8>,
    /// How long the connection has been open (for `CLIENT INFO` `age=`), updated by the
    /// caller before each command.
    pub age: Duration,
}

impl Session {
    pub(crate) fn new(id: u64, peer: String, local: String) -> Session {
        Session {
            id,
            peer,
            local,
            name: Vec::new(),
            lib_name: Vec::new(),
            lib_ver: Vec::new(),
            age: Duration::ZERO,
        }
    }
}

/// Gateway-wide facts some commands report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerStatus {
    pub connected_clients: usize,
    pub connections_max: usize,
    pub tcp_port: u16,
    pub uptime: Duration,
}

/// What to do with one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send these RESP bytes.
    Reply(Vec<u8>),
    /// Run the operation through [`crate::Backend::invoke`].
    Ordered(KvOp),
    /// Run the operation through [`crate::Backend::invoke_read`].
    Read(KvOp),
    /// Send these RESP bytes, then close the connection (`QUIT`).
    Close(Vec<u8>),
}

/// A command the gateway knows: its Redis arity (positive: exactly that many arguments with
/// the name; negative: at least that many), flags, and key positions (for `COMMAND`).
struct Spec {
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
    }
}

const READ_FAST: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write"];
const WRITE_DENYOOM: &[&str] = &["write", "denyoom"];
const WRITE_DENYOOM_FAST: &[&str] = &["write", "denyoom", "fast"];
const CONNECTION: &[&str] = &["noscript", "loading", "stale", "fast"];
const ADMIN: &[&str] = &["noscript", "loading", "stale"];
const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);

/// Every command the gateway accepts.
const COMMANDS: &[Spec] = &[
    spec("get", 2, READ_FAST, ONE_KEY),
    spec("set", -3, WRITE_DENYOOM, ONE_KEY),
    spec("del", -2, WRITE, ALL_KEYS),
    spec("exists", -2, READ_FAST, ALL_KEYS),
    spec("incr", 2, WRITE_DENYOOM_FAST, ONE_KEY),
    spec("incrby", 3, WRITE_DENYOOM_FAST, ONE_KEY),
    spec("decr", 2, WRITE_DENYOOM_FAST, ONE_KEY),
    spec("decrby", 3, WRITE_DENYOOM_FAST, ONE_KEY),
    spec("append", 3, WRITE_DENYOOM_FAST, ONE_KEY),
    spec("strlen", 2, READ_FAST, ONE_KEY),
    spec("mget", -2, READ_FAST, ALL_KEYS),
    spec("mset", -3, WRITE_DENYOOM, (1, -1, 2)),
    spec("dbsize", 1, READ_FAST, NO_KEYS),
    spec("keys", 2, &["readonly"], NO_KEYS),
    spec("flushall", -1, WRITE, NO_KEYS),
    spec("ping", -1, &["fast"], NO_KEYS),
    spec("echo", 2, &["fast"], NO_KEYS),
    spec("select", 2, CONNECTION, NO_KEYS),
    spec("quit", -1, CONNECTION, NO_KEYS),
    spec("reset", 1, CONNECTION, NO_KEYS),
    spec("auth", -2, CONNECTION, NO_KEYS),
    spec("hello", -1, CONNECTION, NO_KEYS),
    spec("client", -2, ADMIN, NO_KEYS),
    spec("command", -1, ADMIN, NO_KEYS),
    spec("config", -2, ADMIN, NO_KEYS),
    spec("info", -1, ADMIN, NO_KEYS),
];

fn find_spec(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

fn arity_ok(arity: i64, argc: usize) -> bool {
    let argc = argc as i64;
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

fn reply(value: RespValue) -> Action {
    Action::Reply(value.to_bytes())
}

fn error(line: &str) -> Action {
    reply(RespValue::Error(line.to_string()))
}

fn ok() -> Action {
    reply(RespValue::Simple("OK".into()))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Cuts at `max` bytes, on a character boundary (Redis's `%.128s`).
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn truncate_128(text: &str) -> &str {
    truncate(text, 128)
}

/// `ERR wrong number of arguments for 'get' command` (subcommands: `'client|setname'`).
pub(crate) fn wrong_arity(full_name: &str) -> String {
    format!("ERR wrong number of arguments for '{full_name}' command")
}

/// Redis's unknown-command error: the name, then the first arguments quoted, until 128
/// bytes of them are listed.
fn unknown_command(args: &[Vec<u8>]) -> String {
    let mut listed = String::new();
    for arg in &args[1..] {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        listed.push('\'');
        listed.push_str(truncate(&lossy(arg), room));
        listed.push_str("' ");
    }
    format!(
        "ERR unknown command '{}', with args beginning with: {listed}",
        truncate_128(&lossy(&args[0]))
    )
}

fn unknown_subcommand(command: &str, sub: &[u8]) -> String {
    format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        truncate_128(&lossy(sub)),
        command.to_ascii_uppercase()
    )
}

fn upper(bytes: &[u8]) -> Vec<u8> {
    bytes.to_ascii_uppercase()
}

/// Decides what to do with one command (never empty: the parser returns none).
pub(crate) fn dispatch(
    mut args: Vec<Vec<u8>>,
    session: &mut Session,
    server: &ServerStatus,
) -> Action {
    let Some(spec) = args.first().and_then(|name| find_spec(name)) else {
        if args.is_empty() {
            return error(errors::SYNTAX);
        }
        return error(&unknown_command(&args));
    };
    if !arity_ok(spec.arity, args.len()) {
        return error(&wrong_arity(spec.name));
    }
    // Arguments by value, the name dropped: args[0] is now the first argument.
    args.remove(0);
    match spec.name {
        "get" => Action::Read(KvOp::Get {
            key: take(&mut args, 0),
        }),
        "set" => set(args),
        "del" => Action::Ordered(KvOp::Del { keys: args }),
        "exists" => Action::Read(KvOp::Exists { keys: args }),
        "incr" => Action::Ordered(KvOp::IncrBy {
            key: take(&mut args, 0),
            delta: 1,
        }),
        "decr" => Action::Ordered(KvOp::DecrBy {
            key: take(&mut args, 0),
            delta: 1,
        }),
        "incrby" | "decrby" => match parse_integer(&args[1]) {
            None => error(crate::service::errors::NOT_INTEGER),
            Some(delta) => {
                let key = take(&mut args, 0);
                Action::Ordered(if spec.name == "incrby" {
                    KvOp::IncrBy { key, delta }
                } else {
                    KvOp::DecrBy { key, delta }
                })
            }
        },
        "append" => {
            let value = take(&mut args, 1);
            Action::Ordered(KvOp::Append {
                key: take(&mut args, 0),
                value,
            })
        }
        "strlen" => Action::Read(KvOp::Strlen {
            key: take(&mut args, 0),
        }),
        "mget" => Action::Read(KvOp::MGet { keys: args }),
        "mset" => {
            if !args.len().is_multiple_of(2) {
                return error(&wrong_arity("mset"));
            }
            let mut pairs = Vec::with_capacity(args.len() / 2);
            let mut args = args.into_iter();
            while let (Some(key), Some(value)) = (args.next(), args.next()) {
                pairs.push((key, value));
            }
            Action::Ordered(KvOp::MSet { pairs })
        }
        "dbsize" => Action::Read(KvOp::DbSize),
        "keys" => Action::Read(KvOp::Keys {
            pattern: take(&mut args, 0),
        }),
        "flushall" => match args.as_slice() {
            [] => Action::Ordered(KvOp::FlushAll),
            [mode] if matches!(upper(mode).as_slice(), b"ASYNC" | b"SYNC") => {
                Action::Ordered(KvOp::FlushAll)
            }
            _ => error(errors::SYNTAX),
        },
        "ping" => match args.len() {
            0 => reply(RespValue::Simple("PONG".into())),
            1 => reply(RespValue::Bulk(take(&mut args, 0))),
            _ => error(&wrong_arity("ping")),
        },
        "echo" => reply(RespValue::Bulk(take(&mut args, 0))),
        "select" => match parse_integer(&args[0]) {
            None => error(crate::service::errors::NOT_INTEGER),
            Some(0) => ok(),
            Some(_) => error(errors::DB_INDEX),
        },
        "quit" => Action::Close(RespValue::Simple("OK".into()).to_bytes()),
        "reset" => {
            session.name.clear();
            reply(RespValue::Simple("RESET".into()))
        }
        "auth" => auth(&args),
        "hello" => hello(&args, session),
        "client" => client(&args, session),
        "command" => command(&args),
        "config" => config(&args, server),
        "info" => info(&args, server),
        _ => error(&unknown_command(&[spec.name.as_bytes().to_vec()])),
    }
}

/// Moves argument `i` out (the arity check guarantees it exists).
fn take(args: &mut [Vec<u8>], i: usize) -> Vec<u8> {
    args.get_mut(i).map(std::mem::take).unwrap_or_default()
}

/// `SET key value [NX|XX] [GET] [KEEPTTL]`; expiry options are refused (no clock).
fn set(mut args: Vec<Vec<u8>>) -> Action {
    let mut condition = SetCondition::Always;
    let mut get = false;
    let mut i = 2;
    while i < args.len() {
        match upper(&args[i]).as_slice() {
            b"NX" if condition != SetCondition::IfPresent => condition = SetCondition::IfAbsent,
            b"XX" if condition != SetCondition::IfAbsent => condition = SetCondition::IfPresent,
            b"GET" => get = true,
            // No key has a time to live, so keeping it is a no-op.
            b"KEEPTTL" => {}
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if i + 1 < args.len() => {
                return error(errors::NO_EXPIRY)
            }
            _ => return error(errors::SYNTAX),
        }
        i += 1;
    }
    let value = take(&mut args, 1);
    Action::Ordered(KvOp::Set {
        key: take(&mut args, 0),
        value,
        condition,
        get,
    })
}

fn auth(args: &[Vec<u8>]) -> Action {
    match args {
        [_password] => error(errors::AUTH_NOT_CONFIGURED),
        // The default user has no password: any password is accepted, as in Redis.
        [user, _password] if user.as_slice() == b"default" => ok(),
        [_, _] => error(errors::WRONGPASS),
        _ => error(errors::SYNTAX),
    }
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: RESP2 only.
fn hello(args: &[Vec<u8>], session: &mut Session) -> Action {
    let mut rest = args;
    if let Some((version, tail)) = args.split_first() {
        match parse_integer(version) {
            None => return error(errors::HELLO_VERSION),
            Some(2) => {}
            Some(_) => return error(errors::NOPROTO),
        }
        rest = tail;
    }
    let mut new_name = None;
    while let Some((option, tail)) = rest.split_first() {
        match (upper(option).as_slice(), tail) {
            (b"AUTH", [user, _password, tail @ ..]) => {
                if user.as_slice() != b"default" {
                    return error(errors::WRONGPASS);
                }
                rest = tail;
            }
            (b"SETNAME", [name, tail @ ..]) => {
                if !valid_name(name) {
                    return error(errors::CLIENT_NAME);
                }
                new_name = Some(name.clone());
                rest = tail;
            }
            _ => {
                return error(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    truncate_128(&lossy(option))
                ))
            }
        }
    }
    if let Some(name) = new_name {
        session.name = name;
    }
    let s = |text: &str| RespValue::bulk(text);
    reply(RespValue::Array(vec![
        s("server"),
        s("redis"),
        s("version"),
        s(REDIS_VERSION),
        s("proto"),
        RespValue::Integer(2),
        s("id"),
        RespValue::Integer(i64::try_from(session.id).unwrap_or(i64::MAX)),
        s("mode"),
        s("standalone"),
        s("role"),
        s("master"),
        s("modules"),
        RespValue::Array(vec![]),
    ]))
}

/// Redis accepts client names and library names made of `!`..`~` only.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

/// Checks a subcommand's arity. `args` are the arguments after the command name (the
/// subcommand first); Redis's arity counts the command name too.
fn sub_arity(command: &str, sub: &str, arity: i64, args: &[Vec<u8>]) -> Result<(), Action> {
    if arity_ok(arity, args.len() + 1) {
        Ok(())
    } else {
        Err(error(&wrong_arity(&format!("{command}|{sub}"))))
    }
}

fn help(lines: &[&str]) -> Action {
    reply(RespValue::Array(
        lines
            .iter()
            .map(|line| RespValue::Simple((*line).to_string()))
            .collect(),
    ))
}

fn client_info_line(session: &Session, cmd: &str) -> String {
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 \
         multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 \
         tot-mem=0 events=r cmd={cmd} user=default redir=-1 resp=2 lib-name={} lib-ver={}\n",
        session.id,
        session.peer,
        session.local,
        lossy(&session.name),
        session.age.as_secs(),
        lossy(&session.lib_name),
        lossy(&session.lib_ver),
    )
}

/// `CLIENT ...`: the subcommands clients send on connect, answered for this connection only.
fn client(args: &[Vec<u8>], session: &mut Session) -> Action {
    client_sub(args, session).unwrap_or_else(|e| e)
}

fn client_sub(args: &[Vec<u8>], session: &mut Session) -> Result<Action, Action> {
    let sub = lossy(&args[0]).to_ascii_lowercase();
    let arity = |arity| sub_arity("client", &sub, arity, args);
    Ok(match sub.as_str() {
        "id" => {
            arity(2)?;
            reply(RespValue::Integer(
                i64::try_from(session.id).unwrap_or(i64::MAX),
            ))
        }
        "getname" => {
            arity(2)?;
            if session.name.is_empty() {
                reply(RespValue::Nil)
            } else {
                reply(RespValue::Bulk(session.name.clone()))
            }
        }
        "setname" => {
            arity(3)?;
            if !valid_name(&args[1]) {
                return Ok(error(errors::CLIENT_NAME));
            }
            session.name = args[1].clone();
            ok()
        }
        "setinfo" => {
            arity(4)?;
            let attribute = upper(&args[1]);
            let value = &args[2];
            let slot = match attribute.as_slice() {
                b"LIB-NAME" => &mut session.lib_name,
                b"LIB-VER" => &mut session.lib_ver,
                _ => {
                    return Ok(error(&format!(
                        "ERR Unrecognized option '{}'",
                        truncate_128(&lossy(&args[1]))
                    )))
                }
            };
            if !valid_name(value) {
                return Ok(error(&format!(
                    "ERR {} cannot contain spaces, newlines or special characters.",
                    lossy(&attribute).to_ascii_lowercase()
                )));
            }
            *slot = value.clone();
            ok()
        }
        "info" => {
            arity(2)?;
            reply(RespValue::bulk(client_info_line(session, "client|info")))
        }
        "list" => {
            arity(-2)?;
            reply(RespValue::bulk(client_info_line(session, "client|list")))
        }
        "reply" => {
            arity(3)?;
            match upper(&args[1]).as_slice() {
                b"ON" => ok(),
                b"OFF" | b"SKIP" => {
                    error("ERR CLIENT REPLY OFF and SKIP are not supported by shieldwall")
                }
                _ => error(errors::SYNTAX),
            }
        }
        "no-evict" | "no-touch" => {
            arity(3)?;
            match upper(&args[1]).as_slice() {
                b"ON" | b"OFF" => ok(),
                _ => error(errors::SYNTAX),
            }
        }
        "getredir" => {
            arity(2)?;
            reply(RespValue::Integer(-1))
        }
        "unpause" => {
            arity(2)?;
            ok()
        }
        "unblock" => {
            arity(-3)?;
            reply(RespValue::Integer(0))
        }
        "kill" => {
            arity(-3)?;
            error("ERR No such client")
        }
        "pause" | "tracking" | "caching" | "trackinginfo" => error(&format!(
            "ERR CLIENT {} is not supported by shieldwall",
            sub.to_ascii_uppercase()
        )),
        "help" => {
            arity(2)?;
            help(&[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "ID, GETNAME, SETNAME <name>, SETINFO <LIB-NAME|LIB-VER> <value>,",
                "INFO, LIST (this connection only), REPLY ON, NO-EVICT, NO-TOUCH,",
                "GETREDIR, UNPAUSE, UNBLOCK, KILL, HELP.",
            ])
        }
        _ => error(&unknown_subcommand("client", &args[0])),
    })
}

/// The `COMMAND INFO` entry of a command (RESP2 layout of Redis 7).
fn command_info(spec: &Spec) -> RespValue {
    RespValue::Array(vec![
        RespValue::bulk(spec.name),
        RespValue::Integer(spec.arity),
        RespValue::Array(
            spec.flags
                .iter()
                .map(|flag| RespValue::Simple((*flag).to_string()))
                .collect(),
        ),
        RespValue::Integer(spec.first_key),
        RespValue::Integer(spec.last_key),
        RespValue::Integer(spec.step),
        RespValue::Array(vec![]),
        RespValue::Array(vec![]),
        RespValue::Array(vec![]),
        RespValue::Array(vec![]),
    ])
}

/// `COMMAND [COUNT|DOCS|INFO|LIST|GETKEYS|HELP]`.
fn command(args: &[Vec<u8>]) -> Action {
    if args.is_empty() {
        return reply(RespValue::Array(
            COMMANDS.iter().map(command_info).collect(),
        ));
    }
    command_sub(args).unwrap_or_else(|e| e)
}

fn command_sub(args: &[Vec<u8>]) -> Result<Action, Action> {
    let sub = lossy(&args[0]).to_ascii_lowercase();
    let arity = |arity| sub_arity("command", &sub, arity, args);
    Ok(match sub.as_str() {
        "count" => {
            arity(2)?;
            reply(RespValue::Integer(COMMANDS.len() as i64))
        }
        // Documentation is optional for clients (redis-cli uses it for hints only).
        "docs" => reply(RespValue::Array(vec![])),
        "info" => {
            if args.len() == 1 {
                reply(RespValue::Array(
                    COMMANDS.iter().map(command_info).collect(),
                ))
            } else {
                reply(RespValue::Array(
                    args[1..]
                        .iter()
                        .map(|name| find_spec(name).map_or(RespValue::Nil, command_info))
                        .collect(),
                ))
            }
        }
        "list" => {
            let names = COMMANDS.iter().map(|spec| spec.name);
            let names: Vec<&str> = match &args[1..] {
                [] => names.collect(),
                [filterby, kind, value] if upper(filterby) == b"FILTERBY" => {
                    match upper(kind).as_slice() {
                        b"PATTERN" => {
                            let glob = Glob::new(&value.to_ascii_lowercase());
                            names.filter(|name| glob.matches(name.as_bytes())).collect()
                        }
                        b"MODULE" | b"ACLCAT" => Vec::new(),
                        _ => return Ok(error(errors::SYNTAX)),
                    }
                }
                _ => return Ok(error(errors::SYNTAX)),
            };
            reply(RespValue::Array(
                names.into_iter().map(RespValue::bulk).collect(),
            ))
        }
        "getkeys" => {
            arity(-3)?;
            command_getkeys(&args[1..])
        }
        "help" => {
            arity(2)?;
            help(&[
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand), COUNT, DOCS (empty), INFO [<name> ...],",
                "LIST [FILTERBY PATTERN <pattern>], GETKEYS <command> [<arg> ...], HELP.",
            ])
        }
        _ => error(&unknown_subcommand("command", &args[0])),
    })
}

fn command_getkeys(command: &[Vec<u8>]) -> Action {
    let Some(spec) = find_spec(&command[0]) else {
        return error("ERR Invalid command specified");
    };
    if !arity_ok(spec.arity, command.len()) {
        return error("ERR Invalid number of arguments specified for command");
    }
    if spec.first_key == 0 {
        return error("ERR The command has no key arguments");
    }
    let last = if spec.last_key < 0 {
        command.len() as i64 + spec.last_key
    } else {
        spec.last_key
    };
    let keys = (spec.first_key..=last)
        .step_by(spec.step.max(1) as usize)
        .filter_map(|i| command.get(i as usize))
        .map(RespValue::bulk)
        .collect();
    reply(RespValue::Array(keys))
}

/// `CONFIG GET|SET|RESETSTAT|REWRITE|HELP`: a read-only view of the settings clients ask about.
fn config(args: &[Vec<u8>], server: &ServerStatus) -> Action {
    config_sub(args, server).unwrap_or_else(|e| e)
}

fn config_sub(args: &[Vec<u8>], server: &ServerStatus) -> Result<Action, Action> {
    let sub = lossy(&args[0]).to_ascii_lowercase();
    let arity = |arity| sub_arity("config", &sub, arity, args);
    Ok(match sub.as_str() {
        "get" => {
            arity(-3)?;
            let settings = [
                ("appendonly", "no".to_string()),
                ("databases", "1".to_string()),
                ("maxclients", server.connections_max.to_string()),
                ("port", server.tcp_port.to_string()),
                ("save", String::new()),
                ("timeout", "0".to_string()),
            ];
            let globs: Vec<Glob> = args[1..]
                .iter()
                .map(|p| Glob::new(&p.to_ascii_lowercase()))
                .collect();
            let mut out = Vec::new();
            for (name, value) in &settings {
                if globs.iter().any(|g| g.matches(name.as_bytes())) {
                    out.push(RespValue::bulk(name));
                    out.push(RespValue::bulk(value));
                }
            }
            reply(RespValue::Array(out))
        }
        "set" => {
            arity(-4)?;
            error("ERR CONFIG SET is not supported by shieldwall")
        }
        "resetstat" => {
            arity(2)?;
            ok()
        }
        "rewrite" => {
            arity(2)?;
            error(errors::NO_CONFIG_FILE)
        }
        "help" => {
            arity(2)?;
            help(&[
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern> [<pattern> ...], RESETSTAT, HELP.",
                "Settings: appendonly, databases, maxclients, port, save, timeout.",
            ])
        }
        _ => error(&unknown_subcommand("config", &args[0])),
    })
}

/// `INFO [section ...]`: server, clients and replication sections.
fn info(args: &[Vec<u8>], server: &ServerStatus) -> Action {
    let all = args.is_empty()
        || args.iter().any(|a| {
            matches!(
                a.to_ascii_lowercase().as_slice(),
                b"all" | b"default" | b"everything"
            )
        });
    let wants = |section: &[u8]| all || args.iter().any(|a| a.eq_ignore_ascii_case(section));
    let mut sections = Vec::new();
    if wants(b"server") {
        let uptime = server.uptime.as_secs();
        sections.push(format!(
            "# Server\r\n\
             redis_version:{REDIS_VERSION}\r\n\
             redis_mode:standalone\r\n\
             arch_bits:{}\r\n\
             process_id:{}\r\n\
             tcp_port:{}\r\n\
             uptime_in_seconds:{uptime}\r\n\
             uptime_in_days:{}\r\n\
             shieldwall_version:{}\r\n\
             shieldwall_note:this is the RESP gateway of shieldwall, a Byzantine-fault-tolerant \
             replicated key-value store, not Redis\r\n",
            usize::BITS,
            std::process::id(),
            server.tcp_port,
            uptime / 86_400,
            env!("CARGO_PKG_VERSION"),
        ));
    }
    if wants(b"clients") {
        sections.push(format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n",
            server.connected_clients, server.connections_max
        ));
    }
    if wants(b"replication") {
        sections.push("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n".to_string());
    }
    reply(RespValue::bulk(sections.join("\r\n")))
}

/// Writes the Redis reply for a service result.
pub fn write_kv_reply<B: BufMut>(out: &mut B, reply: &KvReply) {
    match reply {
        KvReply::Ok => resp::write_simple(out, "OK"),
        KvReply::Nil => resp::write_nil(out),
        KvReply::Int(n) => resp::write_integer(out, *n),
        KvReply::Bulk(bytes) => resp::write_bulk(out, bytes),
        KvReply::Array(items) => {
            resp::write_array_len(out, items.len());
            for item in items {
                match item {
                    Some(bytes) => resp::write_bulk(out, bytes),
                    None => resp::write_nil(out),
                }
            }
        }
        KvReply::Error(line) => resp::write_error(out, line),
        // One reply per pipelined command, one after another (as Redis answers a pipeline).
        KvReply::Pipeline(replies) => {
            for reply in replies {
                write_kv_reply(out, reply);
            }
        }
    }
}

#[cfg(test)]
mod tests;
