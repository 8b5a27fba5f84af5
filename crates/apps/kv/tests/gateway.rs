//! The gateway end to end: a real TCP server on a port chosen by the OS, spoken to by the
//! `redis` crate and by a raw socket. Every wait is bounded (socket timeouts, channel
//! timeouts, deadlines on observable conditions); nothing sleeps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use redis::RedisError;
use shieldwall_kv::{
    serve_with_shutdown, Backend, BackendError, BackendFuture, GatewayOptions, KvOp, KvReply,
    LocalBackend,
};

/// Bound on every single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// A gateway running on its own runtime.
struct Server {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn start(backend: Arc<dyn Backend>, options: GatewayOptions) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = runtime.spawn(serve_with_shutdown(listener, backend, options, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            runtime,
            stop: Some(stop),
            done,
        }
    }

    fn local() -> (Server, Arc<LocalBackend>) {
        let backend = Arc::new(LocalBackend::new());
        (
            Server::start(backend.clone(), GatewayOptions::default()),
            backend,
        )
    }

    fn redis(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://{}/", self.addr)).unwrap();
        let con = client.get_connection_with_timeout(WAIT).unwrap();
        con.set_read_timeout(Some(WAIT)).unwrap();
        con.set_write_timeout(Some(WAIT)).unwrap();
        con
    }

    fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }

    /// Signals shutdown and waits (bounded) for `serve_with_shutdown` to return.
    fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().map(|stop| stop.send(()));
        let done = &mut self.done;
        self.runtime
            .block_on(async { tokio::time::timeout(WAIT, done).await })
            .expect("the gateway stops within the bound")
            .expect("the serve task does not panic")
    }
}

/// A client speaking raw bytes.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until `expected.len()` bytes are buffered and checks they are `expected`.
    fn expect(&mut self, expected: &[u8]) {
        let mut chunk = [0u8; 4096];
        while self.buf.len() < expected.len() {
            let n = self
                .stream
                .read(&mut chunk)
                .expect("a reply within the bound");
            assert!(
                n > 0,
                "connection closed; got {:?}, expected {:?}",
                String::from_utf8_lossy(&self.buf),
                String::from_utf8_lossy(expected)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(
            String::from_utf8_lossy(&self.buf[..expected.len()]),
            String::from_utf8_lossy(expected)
        );
        self.buf.drain(..expected.len());
    }

    /// Checks that the server closes the connection with nothing more to say.
    fn expect_eof(&mut self) {
        let mut chunk = [0u8; 64];
        let n = self
            .stream
            .read(&mut chunk)
            .expect("end of stream within the bound");
        assert_eq!(
            n,
            0,
            "expected end of stream, got {:?}",
            String::from_utf8_lossy(&chunk[..n])
        );
        assert!(self.buf.is_empty());
    }

    fn ping(&mut self) {
        self.send(b"PING\r\n");
        self.expect(b"+PONG\r\n");
    }
}

fn cmd(words: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(words[0]);
    for word in &words[1..] {
        c.arg(*word);
    }
    c
}

fn query<T: redis::FromRedisValue>(con: &mut redis::Connection, words: &[&str]) -> T {
    cmd(words).query(con).unwrap()
}

fn query_err(con: &mut redis::Connection, words: &[&str]) -> RedisError {
    cmd(words).query::<redis::Value>(con).unwrap_err()
}

/// The error line as the server sent it (code and detail).
fn error_line(e: &RedisError) -> String {
    format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or(""))
}

#[test]
fn key_value_commands_through_the_redis_crate() {
    let (server, _) = Server::local();
    let mut con = server.redis();
    let s = |v: &str| Some(v.to_string());

    assert_eq!(query::<Option<String>>(&mut con, &["GET", "k"]), None);
    assert_eq!(query::<String>(&mut con, &["SET", "k", "v1"]), "OK");
    assert_eq!(query::<Option<String>>(&mut con, &["GET", "k"]), s("v1"));
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "v2", "NX"]),
        None
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "v2", "XX"]),
        s("OK")
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "new", "x", "XX"]),
        None
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "v3", "GET"]),
        s("v2")
    );
    assert_eq!(query::<Option<String>>(&mut con, &["GET", "k"]), s("v3"));

    assert_eq!(query::<i64>(&mut con, &["INCR", "n"]), 1);
    assert_eq!(query::<i64>(&mut con, &["INCRBY", "n", "41"]), 42);
    assert_eq!(query::<i64>(&mut con, &["DECR", "n"]), 41);
    assert_eq!(query::<i64>(&mut con, &["DECRBY", "n", "50"]), -9);
    assert_eq!(
        error_line(&query_err(&mut con, &["INCR", "k"])),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        query::<String>(&mut con, &["SET", "max", "9223372036854775807"]),
        "OK"
    );
    assert_eq!(
        error_line(&query_err(&mut con, &["INCR", "max"])),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(
        error_line(&query_err(
            &mut con,
            &["DECRBY", "n", "-9223372036854775808"]
        )),
        "ERR decrement would overflow"
    );

    assert_eq!(query::<i64>(&mut con, &["APPEND", "s", "hello"]), 5);
    assert_eq!(query::<i64>(&mut con, &["APPEND", "s", " world"]), 11);
    assert_eq!(query::<i64>(&mut con, &["STRLEN", "s"]), 11);
    assert_eq!(query::<i64>(&mut con, &["STRLEN", "nothing"]), 0);

    assert_eq!(
        query::<String>(&mut con, &["MSET", "a", "1", "b", "2"]),
        "OK"
    );
    assert_eq!(
        query::<Vec<Option<String>>>(&mut con, &["MGET", "a", "nothing", "b"]),
        vec![s("1"), None, s("2")]
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXISTS", "a", "a", "b", "nothing"]),
        3
    );
    assert_eq!(query::<i64>(&mut con, &["DBSIZE"]), 6);
    let mut keys = query::<Vec<String>>(&mut con, &["KEYS", "*"]);
    keys.sort();
    assert_eq!(keys, ["a", "b", "k", "max", "n", "s"]);
    assert_eq!(
        query::<Vec<String>>(&mut con, &["KEYS", "[ab]"]),
        ["a", "b"]
    );
    assert_eq!(query::<Vec<String>>(&mut con, &["KEYS", "m?x"]), ["max"]);
    assert_eq!(
        query::<i64>(&mut con, &["DEL", "a", "b", "nothing", "a"]),
        2
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "a"]), 0);
    assert_eq!(query::<String>(&mut con, &["FLUSHALL"]), "OK");
    assert_eq!(query::<i64>(&mut con, &["DBSIZE"]), 0);

    // Binary-safe keys and values.
    let value: Vec<u8> = (0..=255u8).collect();
    let _: () = redis::cmd("SET")
        .arg(&b"bin\r\n\x00"[..])
        .arg(&value)
        .query(&mut con)
        .unwrap();
    let got: Vec<u8> = redis::cmd("GET")
        .arg(&b"bin\r\n\x00"[..])
        .query(&mut con)
        .unwrap();
    assert_eq!(got, value);
    server.stop().unwrap();
}

#[test]
fn argument_errors_and_unknown_commands() {
    let (server, _) = Server::local();
    let mut con = server.redis();
    assert_eq!(
        error_line(&query_err(&mut con, &["GET"])),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        error_line(&query_err(&mut con, &["MSET", "a", "1", "b"])),
        "ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(
        error_line(&query_err(&mut con, &["SET", "k", "v", "NX", "XX"])),
        "ERR syntax error"
    );
    assert_eq!(
        error_line(&query_err(&mut con, &["INCRBY", "n", "one"])),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        error_line(&query_err(&mut con, &["FOO", "a", "b"])),
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    );
    assert!(error_line(&query_err(&mut con, &["SET", "k", "v", "EX", "10"])).contains("expiry"));
    // The connection is still fine.
    assert_eq!(query::<String>(&mut con, &["PING"]), "PONG");
    server.stop().unwrap();
}

#[test]
fn handshake_and_introspection_commands() {
    let (server, _) = Server::local();
    let mut con = server.redis();
    assert_eq!(query::<String>(&mut con, &["PING"]), "PONG");
    assert_eq!(query::<String>(&mut con, &["PING", "hello"]), "hello");
    assert_eq!(query::<String>(&mut con, &["ECHO", "x y"]), "x y");
    assert_eq!(query::<String>(&mut con, &["SELECT", "0"]), "OK");
    assert_eq!(
        error_line(&query_err(&mut con, &["SELECT", "1"])),
        "ERR DB index is out of range"
    );
    let hello: Vec<redis::Value> = query(&mut con, &["HELLO", "2"]);
    assert_eq!(hello.len(), 14);
    assert_eq!(hello[0], redis::Value::BulkString(b"server".to_vec()));
    assert_eq!(hello[5], redis::Value::Int(2));
    assert_eq!(
        error_line(&query_err(&mut con, &["HELLO", "3"])),
        "NOPROTO unsupported protocol version"
    );
    let id: i64 = query(&mut con, &["CLIENT", "ID"]);
    assert!(id >= 1);
    assert_eq!(
        query::<Option<String>>(&mut con, &["CLIENT", "GETNAME"]),
        None
    );
    assert_eq!(
        query::<String>(&mut con, &["CLIENT", "SETNAME", "tester"]),
        "OK"
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["CLIENT", "GETNAME"]),
        Some("tester".into())
    );
    let info: String = query(&mut con, &["CLIENT", "INFO"]);
    assert!(info.contains("name=tester"), "{info}");
    assert!(
        info.contains("lib-name=redis-rs"),
        "the crate's CLIENT SETINFO arrived: {info}"
    );
    assert!(query::<i64>(&mut con, &["COMMAND", "COUNT"]) > 10);
    assert_eq!(
        query::<Vec<String>>(&mut con, &["COMMAND", "DOCS"]),
        Vec::<String>::new()
    );
    assert_eq!(
        query::<Vec<String>>(&mut con, &["CONFIG", "GET", "save"]),
        ["save", ""]
    );
    assert_eq!(
        query::<Vec<String>>(&mut con, &["CONFIG", "GET", "appendonly"]),
        ["appendonly", "no"]
    );
    assert_eq!(
        query::<Vec<String>>(&mut con, &["CONFIG", "GET", "nosuch"]),
        Vec::<String>::new()
    );
    let info: String = query(&mut con, &["INFO"]);
    assert!(info.contains("redis_version:"), "{info}");
    assert!(info.contains("role:master"), "{info}");
    assert!(info.contains("shieldwall"), "{info}");
    assert!(
        info.contains(&format!("tcp_port:{}", server.addr.port())),
        "{info}"
    );
    server.stop().unwrap();
}

#[test]
fn pipeline_of_100_commands() {
    let (server, backend) = Server::local();
    let mut con = server.redis();
    let mut pipe = redis::pipe();
    for i in 0..25 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i);
        pipe.cmd("INCR").arg("counter");
        pipe.cmd("GET").arg(format!("k{i}"));
        pipe.cmd("PING");
    }
    let results: Vec<redis::Value> = pipe.query(&mut con).unwrap();
    assert_eq!(results.len(), 100);
    for i in 0..25 {
        assert_eq!(results[4 * i], redis::Value::Okay);
        assert_eq!(results[4 * i + 1], redis::Value::Int(i as i64 + 1));
        assert_eq!(
            results[4 * i + 2],
            redis::Value::BulkString(i.to_string().into_bytes())
        );
        assert_eq!(
            results[4 * i + 3],
            redis::Value::SimpleString("PONG".into())
        );
    }
    assert_eq!(backend.with_service(|s| s.len()), Ok(26));
    server.stop().unwrap();
}

#[test]
fn many_connections_at_once() {
    let (server, _) = Server::local();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let mut con = server.redis();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let _: i64 = cmd(&["INCR", "shared"]).query(&mut con).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut con = server.redis();
    assert_eq!(query::<i64>(&mut con, &["GET", "shared"]), 800);
    server.stop().unwrap();
}

#[test]
fn malformed_resp_gets_an_error_and_the_connection_goes_on() {
    let (server, _) = Server::local();
    let mut raw = server.raw();
    raw.send(b"*abc\r\n");
    raw.expect(b"-ERR Protocol error: invalid multibulk length\r\n");
    raw.ping();
    raw.send(b"*1\r\n:5\r\n");
    raw.expect(b"-ERR Protocol error: expected '$', got ':'\r\n");
    raw.ping();
    raw.send(b"*1\r\n$-5\r\n");
    raw.expect(b"-ERR Protocol error: invalid bulk length\r\n");
    raw.ping();
    raw.send(b"*1\r\n$4\r\nPINGxx\r\n");
    raw.expect(b"-ERR Protocol error: expected '\\r\\n' after bulk data\r\n");
    raw.ping();
    raw.send(b"SET k \"unbalanced\r\n");
    raw.expect(b"-ERR Protocol error: unbalanced quotes in request\r\n");
    raw.ping();
    // A declared length far over the limit costs nothing and is refused at once.
    raw.send(b"*2\r\n$3\r\nGET\r\n$99999999999\r\n");
    raw.expect(b"-ERR Protocol error: invalid bulk length\r\n");
    raw.ping();
    // An error between valid pipelined commands: replies stay in order.
    raw.send(b"PING\r\n*1\r\n:x\r\nECHO a\r\n");
    raw.expect(b"+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n$1\r\na\r\n");
    // Unknown commands, multibulk and inline.
    raw.send(b"*2\r\n$3\r\nfoo\r\n$1\r\na\r\n");
    raw.expect(b"-ERR unknown command 'foo', with args beginning with: 'a' \r\n");
    raw.send(b"bar\r\n");
    raw.expect(b"-ERR unknown command 'bar', with args beginning with: \r\n");
    raw.ping();
    server.stop().unwrap();
}

#[test]
fn inline_commands_and_split_writes() {
    let (server, _) = Server::local();
    let mut raw = server.raw();
    raw.send(b"SET k \"a b\"\r\nGET k\r\n");
    raw.expect(b"+OK\r\n$3\r\na b\r\n");
    // A command arriving one byte at a time.
    for byte in b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" {
        raw.send(&[*byte]);
    }
    raw.expect(b"$3\r\na b\r\n");
    server.stop().unwrap();
}

#[test]
fn values_at_and_past_the_limit() {
    let (server, _) = Server::local();
    let mut con = server.redis();
    let at = vec![b'v'; 512 << 10];
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&at)
        .query(&mut con)
        .unwrap();
    let got: Vec<u8> = redis::cmd("GET").arg("big").query(&mut con).unwrap();
    assert_eq!(got, at);
    let past = vec![b'v'; (512 << 10) + 1];
    let e = redis::cmd("SET")
        .arg("big2")
        .arg(&past)
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(
        error_line(&e),
        "ERR string exceeds maximum allowed size (value_bytes_max)"
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "big2"]), 0);
    server.stop().unwrap();
}

#[test]
fn quit_answers_then_closes() {
    let (server, _) = Server::local();
    let mut raw = server.raw();
    raw.send(b"PING\r\nQUIT\r\nPING\r\n");
    raw.expect(b"+PONG\r\n+OK\r\n");
    raw.expect_eof();
    server.stop().unwrap();
}

#[test]
fn connections_over_the_maximum_are_refused() {
    let backend = Arc::new(LocalBackend::new());
    let options = GatewayOptions {
        connections_max: 2,
        ..GatewayOptions::default()
    };
    let server = Server::start(backend, options);
    let mut first = server.raw();
    first.ping();
    let mut second = server.raw();
    second.ping();
    let mut third = server.raw();
    third.expect(b"-ERR max number of clients reached\r\n");
    third.expect_eof();
    // Once a connection closes, its place is free again (the gateway notices the close
    // asynchronously, so try until a bounded deadline).
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut next = server.raw();
        next.send(b"PING\r\n");
        let mut line = [0u8; 7];
        next.stream.read_exact(&mut line).unwrap();
        if &line == b"+PONG\r\n" {
            break;
        }
        assert_eq!(&line, b"-ERR ma");
        assert!(Instant::now() < deadline, "the slot was never freed");
    }
    second.ping();
    server.stop().unwrap();
}

/// One backend call, handed to the test to answer when and how it likes.
struct Call {
    op: KvOp,
    read: bool,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, BackendError>>,
}

/// A backend whose every call the test answers by hand, and that tracks how many calls are
/// outstanding at once.
struct ManualBackend {
    calls: mpsc::Sender<Call>,
    outstanding: AtomicUsize,
    outstanding_max: AtomicUsize,
}

impl ManualBackend {
    fn new() -> (Arc<ManualBackend>, mpsc::Receiver<Call>) {
        let (calls, receiver) = mpsc::channel();
        let backend = Arc::new(ManualBackend {
            calls,
            outstanding: AtomicUsize::new(0),
            outstanding_max: AtomicUsize::new(0),
        });
        (backend, receiver)
    }

    fn call(&self, op: Vec<u8>, read: bool) -> BackendFuture<'_> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let now = self.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
        self.outstanding_max.fetch_max(now, Ordering::SeqCst);
        let op = KvOp::decode(&op).unwrap();
        let _ = self.calls.send(Call { op, read, reply });
        Box::pin(async move {
            let result = answer
                .await
                .unwrap_or_else(|_| Err(BackendError::new("test dropped the call")));
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }
}

impl Backend for ManualBackend {
    fn invoke(&self, op: Vec<u8>) -> BackendFuture<'_> {
        self.call(op, false)
    }

    fn invoke_read(&self, op: Vec<u8>) -> BackendFuture<'_> {
        self.call(op, true)
    }
}

fn next_call(calls: &mpsc::Receiver<Call>) -> Call {
    calls
        .recv_timeout(WAIT)
        .expect("a backend call within the bound")
}

fn answer(call: Call, reply: KvReply) {
    let _ = call.reply.send(Ok(reply.encode()));
}

#[test]
fn commands_run_concurrently_and_replies_keep_request_order() {
    let (backend, calls) = ManualBackend::new();
    let options = GatewayOptions {
        pipeline_max: 4,
        ..GatewayOptions::default()
    };
    let server = Server::start(backend.clone(), options);
    let mut raw = server.raw();
    let mut pipeline = Vec::new();
    for i in 0..12 {
        pipeline.extend_from_slice(format!("GET k{i}\r\n").as_bytes());
    }
    raw.send(&pipeline);
    for round in 0..3 {
        // Four calls are outstanding at once; answer them in reverse order.
        let mut batch: Vec<Call> = (0..4).map(|_| next_call(&calls)).collect();
        for (j, call) in batch.iter().enumerate() {
            assert_eq!(
                call.op,
                KvOp::Get {
                    key: format!("k{}", round * 4 + j).into_bytes()
                }
            );
            assert!(call.read, "GET goes through invoke_read");
        }
        while let Some(call) = batch.pop() {
            let KvOp::Get { key } = &call.op else {
                unreachable!()
            };
            let value = format!("v{}", String::from_utf8_lossy(&key[1..])).into_bytes();
            answer(call, KvReply::Bulk(value));
        }
        let mut expected = Vec::new();
        for j in 0..4 {
            let value = format!("v{}", round * 4 + j);
            expected.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
        }
        raw.expect(&expected);
    }
    assert_eq!(backend.outstanding_max.load(Ordering::SeqCst), 4);
    server.stop().unwrap();
}

#[test]
fn backend_errors_fail_one_command_only() {
    let (backend, calls) = ManualBackend::new();
    let server = Server::start(backend, GatewayOptions::default());
    let mut raw = server.raw();
    raw.send(b"SET a 1\r\nGET a\r\nINCR n\r\nPING\r\n");
    // GET a waits for SET a (same key); INCR n does not.
    let set = next_call(&calls);
    assert!(!set.read, "SET goes through invoke");
    let incr = next_call(&calls);
    assert!(!incr.read, "INCR goes through invoke");
    assert!(matches!(&incr.op, KvOp::IncrBy { key, delta: 1 } if key == b"n"));
    let _ = set
        .reply
        .send(Err(BackendError::new("cluster unavailable")));
    let get = next_call(&calls);
    assert!(get.read, "GET goes through invoke_read");
    let _ = get.reply.send(Ok(b"not a reply".to_vec()));
    answer(incr, KvReply::Int(1));
    raw.expect(b"-ERR cluster unavailable\r\n");
    raw.expect(b"-ERR the backend returned a malformed reply\r\n");
    raw.expect(b":1\r\n+PONG\r\n");
    server.stop().unwrap();
}

#[test]
fn shutdown_answers_outstanding_commands_then_closes() {
    let (backend, calls) = ManualBackend::new();
    let mut server = Server::start(backend, GatewayOptions::default());
    let mut idle = server.raw();
    idle.ping();
    let mut busy = server.raw();
    busy.send(b"INCR n\r\n");
    let call = next_call(&calls);
    // Stop while the INCR is outstanding, then answer it: the client gets its reply, then
    // both connections close and serve returns.
    let _ = server.stop.take().map(|stop| stop.send(()));
    answer(call, KvReply::Int(7));
    busy.expect(b":7\r\n");
    busy.expect_eof();
    idle.expect_eof();
    server.stop().unwrap();
}

/// Commands on the same key (at least one a write) wait for each other; others run at once.
#[test]
fn conflicting_commands_of_a_connection_keep_their_order() {
    let (backend, calls) = ManualBackend::new();
    let server = Server::start(backend, GatewayOptions::default());
    let mut raw = server.raw();
    raw.send(b"SET a 1\r\nGET a\r\nGET b\r\nSET b 2\r\nGET a\r\nKEYS *\r\nPING\r\n");
    // Calls reach the backend in the order they start. SET a and GET b start at once; GET a
    // waits for SET a, SET b for GET b, KEYS for both writes.
    let set_a = next_call(&calls);
    assert!(matches!(&set_a.op, KvOp::Set { key, .. } if key == b"a"));
    let get_b = next_call(&calls);
    assert_eq!(get_b.op, KvOp::Get { key: b"b".to_vec() });
    answer(get_b, KvReply::Nil);
    let set_b = next_call(&calls);
    assert!(matches!(&set_b.op, KvOp::Set { key, .. } if key == b"b"));
    answer(set_a, KvReply::Ok);
    let get_a = next_call(&calls);
    assert_eq!(get_a.op, KvOp::Get { key: b"a".to_vec() });
    let get_a_again = next_call(&calls);
    assert_eq!(get_a_again.op, KvOp::Get { key: b"a".to_vec() });
    answer(set_b, KvReply::Ok);
    let keys = next_call(&calls);
    assert_eq!(
        keys.op,
        KvOp::Keys {
            pattern: b"*".to_vec()
        }
    );
    answer(get_a_again, KvReply::Bulk(b"1".to_vec()));
    answer(get_a, KvReply::Bulk(b"1".to_vec()));
    answer(
        keys,
        KvReply::Array(vec![Some(b"a".to_vec()), Some(b"b".to_vec())]),
    );
    raw.expect(b"+OK\r\n$1\r\n1\r\n$-1\r\n+OK\r\n$1\r\n1\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n+PONG\r\n");
    server.stop().unwrap();
}

fn set_op(key: &str, value: &str) -> KvOp {
    KvOp::Set {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        condition: shieldwall_kv::SetCondition::Always,
        get: false,
    }
}

/// Pipelined writes read together go to the backend as one `KvOp::Pipeline` (one round of
/// the protocol); a read after them waits for them and replies keep request order.
#[test]
fn pipelined_writes_are_coalesced_into_one_backend_call() {
    let (backend, calls) = ManualBackend::new();
    let server = Server::start(backend, GatewayOptions::default());
    let mut raw = server.raw();
    raw.send(b"SET a 1\r\nSET a 2\r\nINCR n\r\nGET a\r\nSET c 3\r\nSET a 4 GET\r\nPING\r\n");
    let pipeline = next_call(&calls);
    assert!(!pipeline.read);
    assert_eq!(
        pipeline.op,
        KvOp::pipeline(&[
            set_op("a", "1"),
            set_op("a", "2"),
            KvOp::IncrBy {
                key: b"n".to_vec(),
                delta: 1
            },
        ])
    );
    // GET a waits for the pipeline; SET c (a lone write: the next command does not
    // pipeline) starts at once, and SET .. GET goes alone as it returns a value.
    let set_c = next_call(&calls);
    assert_eq!(set_c.op, set_op("c", "3"));
    answer(
        pipeline,
        KvReply::Pipeline(vec![KvReply::Ok, KvReply::Ok, KvReply::Int(1)]),
    );
    let get_a = next_call(&calls);
    assert_eq!(get_a.op, KvOp::Get { key: b"a".to_vec() });
    answer(get_a, KvReply::Bulk(b"2".to_vec()));
    answer(set_c, KvReply::Ok);
    let set_get = next_call(&calls);
    assert!(matches!(&set_get.op, KvOp::Set { get: true, .. }));
    answer(set_get, KvReply::Bulk(b"2".to_vec()));
    raw.expect(b"+OK\r\n+OK\r\n:1\r\n$1\r\n2\r\n+OK\r\n$1\r\n2\r\n+PONG\r\n");
    // A failed pipeline fails each of its commands.
    raw.send(b"SET x 1\r\nSET y 2\r\n");
    let pipeline = next_call(&calls);
    let _ = pipeline
        .reply
        .send(Err(BackendError::new("cluster unavailable")));
    raw.expect(b"-ERR cluster unavailable\r\n-ERR cluster unavailable\r\n");
    server.stop().unwrap();
}

/// At most `coalesce_max` writes per call; 1 turns coalescing off.
#[test]
fn coalescing_stops_at_its_limit() {
    for coalesce_max in [1, 8] {
        let (backend, calls) = ManualBackend::new();
        let options = GatewayOptions {
            coalesce_max,
            ..GatewayOptions::default()
        };
        let server = Server::start(backend, options);
        let mut raw = server.raw();
        let mut pipeline = Vec::new();
        for i in 0..20 {
            pipeline.extend_from_slice(format!("SET k{i} {i}\r\n").as_bytes());
        }
        raw.send(&pipeline);
        let mut seen = 0;
        let mut expected = Vec::new();
        while seen < 20 {
            let call = next_call(&calls);
            let ops = match call.op.clone() {
                KvOp::Pipeline { ops } => ops.iter().map(|b| KvOp::decode(b).unwrap()).collect(),
                op => vec![op],
            };
            assert!(ops.len() <= coalesce_max, "{} ops", ops.len());
            if coalesce_max == 1 {
                assert!(!matches!(call.op, KvOp::Pipeline { .. }));
            }
            for op in &ops {
                assert_eq!(*op, set_op(&format!("k{seen}"), &seen.to_string()));
                seen += 1;
                expected.extend_from_slice(b"+OK\r\n");
            }
            let reply = match ops.len() {
                1 => KvReply::Ok,
                n => KvReply::Pipeline(vec![KvReply::Ok; n]),
            };
            answer(call, reply);
        }
        raw.expect(&expected);
        server.stop().unwrap();
    }
}
