//! The RESP2 gateway: a TCP server that speaks the Redis protocol to unmodified Redis clients
//! and forwards each key-value command to a [`Backend`].
//!
//! Per connection, one task runs two halves:
//! - the reader reads into a bounded buffer, parses commands ([`RespParser`]) and starts each
//!   one at once: a local reply (`PING`, `HELLO`, ...) is ready immediately, a key-value
//!   command is handed to the backend. Up to [`GatewayOptions::pipeline_max`] commands may be
//!   unanswered; then the reader stops reading until replies drain (pipelined clients such as
//!   `redis-benchmark -P 16` get their commands executed concurrently);
//! - the writer sends replies strictly in request order, coalescing every reply that is ready
//!   into one write.
//!
//! Consecutive writes that arrive together (a client's pipeline: `redis-benchmark -P 16`)
//! go to the backend as one [`KvOp::Pipeline`] of up to [`GatewayOptions::coalesce_max`]
//! operations: one request of the replication protocol instead of one per command, applied
//! in order and atomically. Commands are only grouped with those already read, so grouping
//! never waits for input.
//!
//! A backend future that completes on its first poll (the [`LocalBackend`]) is answered inline;
//! others run as tasks of their own. Errors are per command: a protocol error or a backend
//! error becomes `-ERR ...` for that command and the connection goes on.
//!
//! # Order of effects
//!
//! A replicated backend may order concurrent operations of one client in any order, so
//! running a connection's commands concurrently could let `GET a` overtake the `SET a 1` sent
//! before it. The gateway prevents that per key: a command starts only once every earlier
//! unanswered command of the same connection that *conflicts* with it has completed, where two
//! commands conflict if at least one writes and they share a key (`KEYS`, `DBSIZE` and
//! `FLUSHALL` touch every key). Commands on different keys, and reads of the same key, still
//! run concurrently. So each connection sees its own commands on each key take effect in the
//! order it sent them, as in Redis; across different keys the order is that of Redis Cluster,
//! where a pipeline spanning several nodes is not ordered between them either.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use shieldwall_node::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, Instrument};

use crate::command::{self, Action, ServerStatus, Session};
use crate::ops::{KvOp, KvReply, PIPELINE_OPS_MAX};
use crate::resp::{self, ParserLimits, RespParser};
use crate::service::{KvLimits, KvService};

/// The future a [`Backend`] returns: the service's result bytes, or why there are none.
pub type BackendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<u8>, BackendError>> + Send + 'a>>;

/// Where the gateway sends key-value operations: the replicated cluster (through the client
/// library) in production, a [`LocalBackend`] in tests and unreplicated mode.
///
/// To ensure correctness, an implementation must:
/// - run each operation at most once per call, and return the result bytes the service's
///   [`Service::execute`] (or [`Service::read`]) produced for it, unchanged: the gateway
///   decodes them as a [`KvReply`];
/// - return [`BackendError`] only when there is no result (timeout, cluster unreachable,
///   request refused). The gateway answers `-ERR <message>` for that command alone; for an
///   ordered operation the client cannot tell whether it was applied, as with any database
///   whose connection fails mid-request;
/// - be callable concurrently: the gateway has many calls in flight, from many connections;
/// - complete every future eventually (time out internally): a connection does not close
///   before its outstanding commands are answered, and shutdown waits for connections.
pub trait Backend: Send + Sync + 'static {
    /// Run an ordered (write or read-modify-write) operation; returns the service's result
    /// bytes.
    fn invoke(&self, op: Vec<u8>) -> BackendFuture<'_>;

    /// Run a read-only operation (may be answered without ordering; see
    /// [`Service::read`]); returns the service's result bytes.
    fn invoke_read(&self, op: Vec<u8>) -> BackendFuture<'_>;
}

/// Why a backend could not produce a result. The message is sent to the Redis client as
/// `-ERR <message>` (line breaks become spaces).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

impl BackendError {
    /// An error with the given message.
    pub fn new(message: impl Into<String>) -> BackendError {
        BackendError(message.into())
    }
}

/// A [`KvService`] in this process behind a mutex: an unreplicated backend for tests and for
/// running the gateway without a cluster. Its futures complete on their first poll.
#[derive(Debug, Default)]
pub struct LocalBackend {
    service: Mutex<KvService>,
}

/// The [`shieldwall_node::ClientId`] the local backend executes operations as.
const LOCAL_CLIENT: shieldwall_node::ClientId = 0;

impl LocalBackend {
    /// A backend over an empty store with the default [`KvLimits`].
    pub fn new() -> LocalBackend {
        LocalBackend::default()
    }

    /// A backend over an empty store with the given limits.
    pub fn with_limits(limits: KvLimits) -> LocalBackend {
        LocalBackend::from_service(KvService::with_limits(limits))
    }

    /// A backend over an existing store.
    pub fn from_service(service: KvService) -> LocalBackend {
        LocalBackend {
            service: Mutex::new(service),
        }
    }

    /// Runs `f` on the store (for tests and inspection).
    ///
    /// # Errors
    /// [`BackendError`] if a thread panicked while holding the store (it never should).
    pub fn with_service<R>(&self, f: impl FnOnce(&mut KvService) -> R) -> Result<R, BackendError> {
        let mut service = self
            .service
            .lock()
            .map_err(|_| BackendError::new("local store unavailable: a holder panicked"))?;
        Ok(f(&mut service))
    }
}

impl Backend for LocalBackend {
    fn invoke(&self, op: Vec<u8>) -> BackendFuture<'_> {
        let result = self.with_service(|service| service.execute(LOCAL_CLIENT, &op));
        Box::pin(std::future::ready(result))
    }

    fn invoke_read(&self, op: Vec<u8>) -> BackendFuture<'_> {
        let result = self.with_service(|service| service.read(LOCAL_CLIENT, &op));
        Box::pin(std::future::ready(result))
    }
}

/// Gateway settings. Defaults in parentheses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayOptions {
    /// Most open client connections (1024). One more is answered
    /// `-ERR max number of clients reached` and closed.
    pub connections_max: usize,
    /// Most commands of one connection read but not yet answered (128, at least 1): the
    /// reader stops reading while this many are outstanding.
    pub pipeline_max: usize,
    /// Bounds on one command ([`ParserLimits::default`]); a connection's input buffer holds at
    /// most [`ParserLimits::element_bytes_max`] plus one read.
    pub parser: ParserLimits,
    /// Most pipelined writes of one connection sent to the backend as one
    /// [`KvOp::Pipeline`] (64, at most [`PIPELINE_OPS_MAX`]; 0 or 1 sends each alone).
    /// Consecutive writes read together (a client's pipeline) are coalesced, up to 16 KiB,
    /// so that they take one round of the protocol instead of one each.
    pub coalesce_max: usize,
}

impl Default for GatewayOptions {
    fn default() -> GatewayOptions {
        GatewayOptions {
            connections_max: 1024,
            pipeline_max: 128,
            parser: ParserLimits::default(),
            coalesce_max: 64,
        }
    }
}

/// Encoded bytes of pipelined writes coalesced into one backend call, at most (well within
/// the cluster's default request size of 64 KiB).
const COALESCE_BYTES_MAX: usize = 16 << 10;
/// A write larger than this is never coalesced.
const COALESCE_OP_BYTES_MAX: usize = 4 << 10;

/// How many bytes one read asks for.
const READ_CHUNK_BYTES: usize = 16 << 10;
/// Replies coalesced into one write, at most (a single larger reply is written whole).
const WRITE_COALESCE_BYTES: usize = 64 << 10;
/// An idle connection's buffer larger than this (after a large command or reply) is freed,
/// so that many idle connections hold little memory.
const BUFFER_KEEP_BYTES: usize = 4 * WRITE_COALESCE_BYTES;
/// Connections refused for `connections_max` that may be lingering at once (draining the
/// client's input so that the error is not lost to a TCP reset); beyond it they are dropped.
const REFUSED_LINGERING_MAX: usize = 64;
/// How long a refused connection lingers.
const REFUSED_LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error caused by exhausted resources (file descriptors, memory),
/// so the loop does not spin while they are short.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

const MAX_CLIENTS_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";

/// State shared by the accept loop and every connection.
#[derive(Debug)]
struct Shared {
    backend: Arc<dyn Backend>,
    options: GatewayOptions,
    started: Instant,
    tcp_port: u16,
    next_client_id: AtomicU64,
    connected: AtomicUsize,
}

impl Shared {
    fn status(&self) -> ServerStatus {
        ServerStatus {
            connected_clients: self.connected.load(Ordering::Relaxed),
            connections_max: self.options.connections_max,
            tcp_port: self.tcp_port,
            uptime: self.started.elapsed(),
        }
    }
}

impl std::fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Backend")
    }
}

/// Serves Redis clients on `listener` until the task is dropped (see
/// [`serve_with_shutdown`] to stop it).
///
/// # Errors
/// As [`serve_with_shutdown`].
pub async fn serve(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    options: GatewayOptions,
) -> io::Result<()> {
    serve_with_shutdown(listener, backend, options, std::future::pending()).await
}

/// Serves Redis clients on `listener` until `shutdown` completes, then shuts down gracefully:
/// stops accepting, lets every connection finish the commands it has read (their replies are
/// sent), closes the connections and returns once all are closed.
///
/// # Errors
/// Returns the accept error, after the same graceful shutdown, if the listener fails in a way
/// that is not about one connection or a passing shortage of resources (those are logged at
/// `debug` and the loop goes on).
pub async fn serve_with_shutdown(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    mut options: GatewayOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    options.pipeline_max = options.pipeline_max.max(1);
    let tcp_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let shared = Arc::new(Shared {
        backend,
        options,
        started: Instant::now(),
        tcp_port,
        next_client_id: AtomicU64::new(1),
        connected: AtomicUsize::new(0),
    });
    let slots = Arc::new(Semaphore::new(shared.options.connections_max));
    let refused_slots = Arc::new(Semaphore::new(REFUSED_LINGERING_MAX));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    debug!(port = tcp_port, "gateway accepting connections");
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        let stop = stop_rx.clone();
                        connections.spawn(connection(stream, peer, shared, stop, permit));
                    }
                    Err(_) => {
                        let stop = stop_rx.clone();
                        refuse(stream, peer, &refused_slots, stop, &mut connections);
                    }
                },
                Err(e) if is_connection_error(&e) => {
                    debug!(error = %e, "accept failed for one connection");
                }
                Err(e) if is_resource_error(&e) => {
                    debug!(error = %e, "accept failed for lack of resources; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Err(e) => break Err(e),
            },
        }
    };
    debug!(
        connections = connections.len(),
        "gateway stopping: closing connections"
    );
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    debug!("gateway stopped");
    result
}

/// Errors that concern one incoming connection only.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// Errors from a shortage that may pass: EMFILE, ENFILE, ENOBUFS, ENOMEM.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12)) || e.kind() == io::ErrorKind::OutOfMemory
}

/// Answers a connection over `connections_max` with the Redis error and closes it. If a
/// lingering slot is free, the close waits (briefly) for the client's input to be drained,
/// so the client reads the error instead of a reset.
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    refused_slots: &Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    connections: &mut JoinSet<()>,
) {
    debug!(%peer, "connection refused: max number of clients reached");
    let Ok(permit) = refused_slots.clone().try_acquire_owned() else {
        let _ = stream.try_write(MAX_CLIENTS_REPLY);
        return;
    };
    connections.spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let linger = async {
            stream.write_all(MAX_CLIENTS_REPLY).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        };
        tokio::select! {
            _ = tokio::time::timeout(REFUSED_LINGER, linger) => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    });
}

/// One reply slot, in request order.
#[derive(Debug)]
enum Slot {
    /// The reply bytes are ready.
    Ready(Vec<u8>, OwnedSemaphorePermit),
    /// The backend is working on it; the task yields the reply bytes.
    Pending(JoinHandle<Vec<u8>>, OwnedSemaphorePermit),
}

/// What a key-value command touches, to order conflicting commands (see the module docs).
#[derive(Debug)]
struct Footprint {
    write: bool,
    /// Hashes of the keys, or `None` for the whole key space. A hash collision only makes
    /// two commands wait for each other needlessly.
    keys: Option<Vec<u64>>,
}

impl Footprint {
    fn of(op: &KvOp) -> Footprint {
        let hash = |key: &[u8]| BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        let (write, keys) = match op {
            KvOp::Get { key } | KvOp::Strlen { key } => (false, Some(vec![hash(key)])),
            KvOp::Exists { keys } | KvOp::MGet { keys } => {
                (false, Some(keys.iter().map(|k| hash(k)).collect()))
            }
            KvOp::Set { key, .. }
            | KvOp::IncrBy { key, .. }
            | KvOp::DecrBy { key, .. }
            | KvOp::Append { key, .. } => (true, Some(vec![hash(key)])),
            KvOp::Del { keys } => (true, Some(keys.iter().map(|k| hash(k)).collect())),
            KvOp::MSet { pairs } => (true, Some(pairs.iter().map(|(k, _)| hash(k)).collect())),
            KvOp::DbSize | KvOp::Keys { .. } => (false, None),
            KvOp::FlushAll => (true, None),
            // The gateway builds its pipelines' footprints from their operations
            // (`Coalesced`); another is taken to touch every key.
            KvOp::Pipeline { .. } => (true, None),
        };
        Footprint { write, keys }
    }

    /// What an empty group of commands touches.
    const NOTHING: Footprint = Footprint {
        write: false,
        keys: Some(Vec::new()),
    };

    /// Widen to also cover `other`.
    fn add(&mut self, other: &Footprint) {
        self.write |= other.write;
        match (&mut self.keys, &other.keys) {
            (Some(mine), Some(theirs)) => mine.extend_from_slice(theirs),
            (keys, _) => *keys = None,
        }
    }

    fn conflicts(&self, other: &Footprint) -> bool {
        if !self.write && !other.write {
            return false;
        }
        match (&self.keys, &other.keys) {
            (Some(mine), Some(theirs)) => mine.iter().any(|k| theirs.contains(k)),
            _ => true,
        }
    }
}

/// Becomes `true` (or its sender is dropped) when a backend call has completed.
type Done = watch::Receiver<bool>;

fn is_done(done: &Done) -> bool {
    *done.borrow() || done.has_changed().is_err()
}

/// The connection's key-value commands whose backend call has not completed, oldest first
/// (at most `pipeline_max`).
#[derive(Debug, Default)]
struct Outstanding {
    calls: VecDeque<(Footprint, Done)>,
}

impl Outstanding {
    /// The completions `footprint` must wait for: every outstanding conflicting call.
    fn dependencies(&mut self, footprint: &Footprint) -> Vec<Done> {
        self.calls.retain(|(_, done)| !is_done(done));
        self.calls
            .iter()
            .filter(|(earlier, _)| earlier.conflicts(footprint))
            .map(|(_, done)| done.clone())
            .collect()
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("connection", client_id = id, %peer);
    async move {
        shared.connected.fetch_add(1, Ordering::Relaxed);
        debug!("connection accepted");
        // Replies are small and latency matters more than packet count (Redis does the same).
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let session = Session::new(id, peer.to_string(), local);
        let (reader, writer) = stream.into_split();
        let pipeline_max = shared.options.pipeline_max;
        let (tx, rx) = mpsc::channel(pipeline_max);
        let in_flight = Arc::new(Semaphore::new(pipeline_max));
        let write = write_replies(writer, rx);
        let read = read_commands(reader, tx, in_flight, session, &shared, stop);
        tokio::pin!(write);
        let end = tokio::select! {
            // The writer only ends early on a write error: the client is gone.
            written = &mut write => match written {
                Err(e) => format!("write failed: {e}"),
                Ok(()) => "writer stopped".to_string(),
            },
            read = read => {
                // The reader is done (end of input, QUIT, shutdown or a read error) and has
                // dropped its sender: the writer sends what is outstanding, then closes.
                let written = write.await;
                match (read, written) {
                    (_, Err(e)) => format!("write failed: {e}"),
                    (Ok(reason), Ok(())) => reason.to_string(),
                    (Err(e), Ok(())) => format!("read failed: {e}"),
                }
            }
        };
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        debug!(reason = %end, "connection closed");
    }
    .instrument(span)
    .await;
}

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    Eof,
    Quit,
    Shutdown,
    /// The writer stopped (after a write error) before the reader.
    WriterGone,
}

impl std::fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadEnd::Eof => "client closed",
            ReadEnd::Quit => "QUIT",
            ReadEnd::Shutdown => "gateway shutdown",
            ReadEnd::WriterGone => "writer stopped",
        })
    }
}

async fn read_commands(
    mut reader: OwnedReadHalf,
    tx: mpsc::Sender<Slot>,
    in_flight: Arc<Semaphore>,
    mut session: Session,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> io::Result<ReadEnd> {
    let mut parser = RespParser::new(shared.options.parser.clone());
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut outstanding = Outstanding::default();
    let mut group = Coalesced::default();
    let coalesce_max = shared.options.coalesce_max.min(PIPELINE_OPS_MAX);
    let connected_at = Instant::now();
    loop {
        // Start every command that is complete in the buffer.
        loop {
            let parsed = parser.parse(&buf);
            buf.advance(parsed.consumed);
            let action = match parsed.result {
                Ok(Some(args)) => {
                    session.age = connected_at.elapsed();
                    command::dispatch(args, &mut session, &shared.status())
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "protocol error; resynchronising");
                    Action::Reply(resp::RespValue::Error(format!("ERR {e}")).to_bytes())
                }
            };
            // Back-pressure: wait while `pipeline_max` replies are outstanding. The semaphore
            // is never closed, so acquiring only fails if that invariant breaks. Coalesced
            // writes hold places that free only once they start: start them before waiting.
            let permit = match in_flight.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !group.flush(&shared.backend, &mut outstanding, &tx).await {
                        return Ok(ReadEnd::WriterGone);
                    }
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return Ok(ReadEnd::WriterGone);
                    };
                    permit
                }
            };
            if let Action::Ordered(op) = &action {
                let encoded = if op.pipelines() && coalesce_max > 1 {
                    Some(op.encode()).filter(|e| e.len() <= COALESCE_OP_BYTES_MAX)
                } else {
                    None
                };
                if let Some(encoded) = encoded {
                    if !group.has_room(encoded.len(), coalesce_max)
                        && !group.flush(&shared.backend, &mut outstanding, &tx).await
                    {
                        return Ok(ReadEnd::WriterGone);
                    }
                    let Action::Ordered(op) = action else {
                        unreachable!("matched above")
                    };
                    group.push(op, encoded, permit);
                    continue;
                }
            }
            // What was coalesced before this command starts first: replies keep request
            // order, and this command's dependencies include it.
            if !group.flush(&shared.backend, &mut outstanding, &tx).await {
                return Ok(ReadEnd::WriterGone);
            }
            let (slot, quit) = match action {
                Action::Reply(bytes) => (Slot::Ready(bytes, permit), false),
                Action::Close(bytes) => (Slot::Ready(bytes, permit), true),
                Action::Ordered(op) => {
                    let slot = start(
                        &shared.backend,
                        Call::one(op, true),
                        &mut outstanding,
                        permit,
                    );
                    (slot, false)
                }
                Action::Read(op) => {
                    let slot = start(
                        &shared.backend,
                        Call::one(op, false),
                        &mut outstanding,
                        permit,
                    );
                    (slot, false)
                }
            };
            if tx.send(slot).await.is_err() {
                return Ok(ReadEnd::WriterGone);
            }
            if quit {
                return Ok(ReadEnd::Quit);
            }
        }
        // No complete command is left: start the coalesced writes before waiting for input.
        if !group.flush(&shared.backend, &mut outstanding, &tx).await {
            return Ok(ReadEnd::WriterGone);
        }
        // The buffer now holds at most one incomplete element (the parser consumed the rest),
        // so with reads of at most READ_CHUNK_BYTES it never exceeds
        // `element_bytes_max() + READ_CHUNK_BYTES`. Memory a large element needed is given
        // back once it is consumed.
        debug_assert!(buf.len() <= shared.options.parser.element_bytes_max());
        if buf.is_empty() && buf.capacity() > BUFFER_KEEP_BYTES {
            buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
        buf.reserve(READ_CHUNK_BYTES);
        let mut limited = (&mut buf).limit(READ_CHUNK_BYTES);
        let read = tokio::select! {
            read = reader.read_buf(&mut limited) => read?,
            _ = stop.wait_for(|stopped| *stopped) => return Ok(ReadEnd::Shutdown),
        };
        if read == 0 {
            if parser.is_mid_command() || !buf.is_empty() {
                debug!("client closed in the middle of a command");
            }
            return Ok(ReadEnd::Eof);
        }
    }
}

/// Pipelined writes of one connection waiting to go to the backend as one
/// [`KvOp::Pipeline`]: consecutive commands that were read together, so coalescing them
/// delays none of them.
#[derive(Debug)]
struct Coalesced {
    /// The first operation, and the encodings of all.
    first: Option<KvOp>,
    ops: Vec<Vec<u8>>,
    bytes: usize,
    /// What the operations touch, together.
    footprint: Footprint,
    /// One place in the connection's pipeline per command.
    permit: Option<OwnedSemaphorePermit>,
}

impl Default for Coalesced {
    fn default() -> Coalesced {
        Coalesced {
            first: None,
            ops: Vec::new(),
            bytes: 0,
            footprint: Footprint::NOTHING,
            permit: None,
        }
    }
}

impl Coalesced {
    fn has_room(&self, encoded: usize, ops_max: usize) -> bool {
        self.ops.len() < ops_max && self.bytes + encoded <= COALESCE_BYTES_MAX
    }

    fn push(&mut self, op: KvOp, encoded: Vec<u8>, permit: OwnedSemaphorePermit) {
        self.bytes += encoded.len();
        self.ops.push(encoded);
        self.footprint.add(&Footprint::of(&op));
        if self.first.is_none() {
            self.first = Some(op);
        }
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
    }

    /// Start what is held (one command alone, several as a pipeline) and queue its reply
    /// slot; false if the writer is gone.
    async fn flush(
        &mut self,
        backend: &Arc<dyn Backend>,
        outstanding: &mut Outstanding,
        tx: &mpsc::Sender<Slot>,
    ) -> bool {
        let Some(permit) = self.permit.take() else {
            return true;
        };
        let Coalesced {
            first,
            ops,
            footprint,
            ..
        } = std::mem::take(self);
        let replies = ops.len();
        let op = match first {
            Some(op) if replies == 1 => op,
            _ => KvOp::Pipeline { ops },
        };
        let call = Call {
            op,
            footprint,
            replies,
            ordered: true,
        };
        tx.send(start(backend, call, outstanding, permit))
            .await
            .is_ok()
    }
}

/// One backend call of a connection.
struct Call {
    op: KvOp,
    /// What it touches (for a pipeline, what its operations touch).
    footprint: Footprint,
    /// Commands it answers (more than one for a [`KvOp::Pipeline`]).
    replies: usize,
    /// Through `invoke` (else `invoke_read`).
    ordered: bool,
}

impl Call {
    /// One command's call.
    fn one(op: KvOp, ordered: bool) -> Call {
        Call {
            footprint: Footprint::of(&op),
            op,
            replies: 1,
            ordered,
        }
    }
}

/// Starts one call on the backend, after the outstanding calls it conflicts with. A call
/// that is done on its first poll (an in-process backend without dependencies) is answered at
/// once; any other runs as its own task so that the connection's commands proceed
/// concurrently, and is recorded in `outstanding` until it completes.
fn start(
    backend: &Arc<dyn Backend>,
    call: Call,
    outstanding: &mut Outstanding,
    permit: OwnedSemaphorePermit,
) -> Slot {
    let Call {
        op,
        footprint,
        replies,
        ordered,
    } = call;
    let dependencies = outstanding.dependencies(&footprint);
    let (done_tx, done) = watch::channel(false);
    let backend = backend.clone();
    let op = op.encode();
    let mut call: Pin<Box<dyn Future<Output = Vec<u8>> + Send>> = Box::pin(async move {
        for mut dependency in dependencies {
            // Err: the earlier call's task is gone, which also means it is over.
            let _ = dependency.wait_for(|done| *done).await;
        }
        let result = if ordered {
            backend.invoke(op).await
        } else {
            backend.invoke_read(op).await
        };
        done_tx.send_replace(true);
        reply_bytes(result, replies)
    });
    // A future must register whatever waker it is polled with before returning Pending, so
    // polling once with a no-op waker and then handing it to the runtime loses no wake-up.
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(bytes) => Slot::Ready(bytes, permit),
        Poll::Pending => {
            outstanding.calls.push_back((footprint, done));
            Slot::Pending(tokio::spawn(call), permit)
        }
    }
}

/// The RESP bytes for a backend's answer to `replies` commands: one reply each. An error
/// for a whole pipeline (the backend failed, the service refused it) is each command's error.
fn reply_bytes(result: Result<Vec<u8>, BackendError>, replies: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let error = match result {
        Ok(bytes) => match KvReply::decode(&bytes).ok().and_then(|r| r.split(replies)) {
            Some(all) => {
                for reply in &all {
                    command::write_kv_reply(&mut out, reply);
                }
                return out;
            }
            None => {
                debug!("backend returned bytes that are not the expected KvReply");
                "ERR the backend returned a malformed reply".to_string()
            }
        },
        Err(e) => {
            debug!(error = %e, "backend error");
            format!("ERR {e}")
        }
    };
    for _ in 0..replies {
        resp::write_error(&mut out, &error);
    }
    out
}

/// Awaits a pending reply; a task that panicked or was cancelled becomes an error reply.
async fn resolve(handle: JoinHandle<Vec<u8>>) -> Vec<u8> {
    match handle.await {
        Ok(bytes) => bytes,
        Err(e) => {
            debug!(error = %e, "backend task failed");
            let mut out = Vec::new();
            resp::write_error(&mut out, "ERR internal error: the backend call failed");
            out
        }
    }
}

/// Writes replies in the order of the slots, coalescing every reply that is ready into one
/// write; closes the write side when the reader has dropped its sender and all is written.
async fn write_replies(mut writer: OwnedWriteHalf, mut rx: mpsc::Receiver<Slot>) -> io::Result<()> {
    let mut out = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut next: Option<Slot> = None;
    loop {
        let slot = match next.take() {
            Some(slot) => slot,
            None => match rx.recv().await {
                Some(slot) => slot,
                None => break,
            },
        };
        append(&mut out, slot).await;
        // Take whatever else is ready without waiting, in order.
        while out.len() < WRITE_COALESCE_BYTES {
            match rx.try_recv() {
                Ok(Slot::Pending(handle, permit)) if !handle.is_finished() => {
                    next = Some(Slot::Pending(handle, permit));
                    break;
                }
                Ok(slot) => append(&mut out, slot).await,
                Err(_) => break,
            }
        }
        writer.write_all(&out).await?;
        out.clear();
        if out.capacity() > BUFFER_KEEP_BYTES {
            out = Vec::with_capacity(READ_CHUNK_BYTES);
        }
    }
    writer.shutdown().await
}

/// Appends a slot's reply to `out` (waiting for it if pending) and frees its pipeline place.
async fn append(out: &mut Vec<u8>, slot: Slot) {
    match slot {
        Slot::Ready(bytes, _permit) => out.extend_from_slice(&bytes),
        Slot::Pending(handle, _permit) => out.extend_from_slice(&resolve(handle).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_backend_executes_and_reads() {
        let backend = LocalBackend::new();
        let set = KvOp::Set {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            condition: crate::SetCondition::Always,
            get: false,
        };
        let poll = |fut: BackendFuture<'_>| {
            let mut fut = fut;
            match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(result) => result,
                Poll::Pending => panic!("the local backend never waits"),
            }
        };
        let result = poll(backend.invoke(set.encode())).unwrap();
        assert_eq!(KvReply::decode(&result), Ok(KvReply::Ok));
        let result = poll(backend.invoke_read(KvOp::Get { key: b"k".to_vec() }.encode())).unwrap();
        assert_eq!(KvReply::decode(&result), Ok(KvReply::Bulk(b"v".to_vec())));
        let result = poll(backend.invoke_read(set.encode())).unwrap();
        assert_eq!(
            KvReply::decode(&result),
            Ok(KvReply::error(crate::service::errors::NOT_READ_ONLY))
        );
        assert_eq!(backend.with_service(|s| s.len()), Ok(1));
    }

    #[test]
    fn footprints_conflict_on_shared_keys_with_a_write() {
        let k = |s: &str| s.as_bytes().to_vec();
        let get = |key: &str| Footprint::of(&KvOp::Get { key: k(key) });
        let set = |key: &str| {
            Footprint::of(&KvOp::Set {
                key: k(key),
                value: vec![],
                condition: crate::SetCondition::Always,
                get: false,
            })
        };
        let mset = Footprint::of(&KvOp::MSet {
            pairs: vec![(k("x"), k("1")), (k("y"), k("2"))],
        });
        let mget = Footprint::of(&KvOp::MGet {
            keys: vec![k("y"), k("z")],
        });
        let keys = Footprint::of(&KvOp::Keys { pattern: k("*") });
        let flush = Footprint::of(&KvOp::FlushAll);
        assert!(set("a").conflicts(&get("a")));
        assert!(get("a").conflicts(&set("a")));
        assert!(set("a").conflicts(&set("a")));
        assert!(!get("a").conflicts(&get("a")), "reads commute");
        assert!(!set("a").conflicts(&set("b")), "different keys commute");
        assert!(mset.conflicts(&mget), "they share y");
        assert!(!mget.conflicts(&get("y")));
        assert!(keys.conflicts(&set("q")), "KEYS reads every key");
        assert!(!keys.conflicts(&get("q")));
        assert!(flush.conflicts(&get("q")), "FLUSHALL writes every key");
        assert!(!keys.conflicts(&Footprint::of(&KvOp::DbSize)));
    }

    #[test]
    fn reply_bytes_maps_results_and_errors() {
        assert_eq!(reply_bytes(Ok(KvReply::Int(3).encode()), 1), b":3\r\n");
        assert_eq!(
            reply_bytes(Err(BackendError::new("cluster unreachable\r\nretry")), 1),
            b"-ERR cluster unreachable  retry\r\n"
        );
        assert_eq!(
            reply_bytes(Ok(b"\xff\xff".to_vec()), 1),
            b"-ERR the backend returned a malformed reply\r\n"
        );
        // A pipeline: one reply per command, or the pipeline's error for each.
        let pipeline = KvReply::Pipeline(vec![KvReply::Ok, KvReply::Int(2)]);
        assert_eq!(reply_bytes(Ok(pipeline.encode()), 2), b"+OK\r\n:2\r\n");
        assert_eq!(
            reply_bytes(Ok(pipeline.encode()), 3),
            b"-ERR the backend returned a malformed reply\r\n".repeat(3)
        );
        assert_eq!(
            reply_bytes(Ok(KvReply::error("ERR busy").encode()), 2),
            b"-ERR busy\r\n-ERR busy\r\n"
        );
        assert_eq!(
            reply_bytes(Err(BackendError::new("timeout")), 2),
            b"-ERR timeout\r\n-ERR timeout\r\n"
        );
        assert_eq!(
            reply_bytes(Ok(pipeline.encode()), 1),
            b"-ERR the backend returned a malformed reply\r\n"
        );
    }
}
