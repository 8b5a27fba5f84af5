//! The client library: submit operations to a cluster and get quorum-backed results.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use shieldwall_node::{Client, ClientOptions, ClusterConfig};
//! let cluster = ClusterConfig::load("cluster.toml".as_ref())?;
//! let client = Client::connect(&cluster, ClientOptions::from_key_file(&cluster, 1)?).await?;
//! let result = client.invoke(b"operation bytes".to_vec()).await?;        // ordered
//! let read = client.invoke_read(b"read-only operation".to_vec()).await?;  // unordered read
//! # Ok(()) }
//! ```
//!
//! How it works. Every request is signed with the client key (Ed25519), or carries one MAC
//! per replica ([`AuthMode::Mac`]). In Byzantine mode it is sent to every replica, so that
//! followers watch the leader order what they hold. In crash mode, where a leader cannot
//! censor, an ordered request goes to the leader of [`Client::view`] only (to every replica
//! until a completed request has told the client a view), and reaches the others on its first
//! retransmission (ADR 019); read-only requests always go to every replica. Replies are MACed
//! with the key the client shares with each replica (X25519). An
//! ordered request completes when a quorum of replicas (`Config::reply_quorum`) returns the
//! same result; a read-only request when a read quorum does, and otherwise (conflicting
//! answers, or no quorum within `read_timeout`) it is sent again as an ordered request.
//! Unanswered requests are retransmitted to the replicas that have not answered, with a
//! doubling interval; replicas answer retransmissions of executed requests from their client
//! table, so a request executes at most once.
//!
//! Concurrency. One client key has 64 lanes (client ids); each lane numbers its requests and
//! may have up to `W = client_pending_max` requests in flight under the window rule (request
//! `s` is sent only once every request at or below `s - W` completed). `invoke` waits for
//! room when every lane is full. Numbers start from the clock (nanoseconds), so a restarted
//! client never reuses one. **One process per client key at a time**: two processes using the
//! same key make each other's requests stale (they time out).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shieldwall_core::{
    Authenticator, FaultModel, Principal, ReplicaId, Request, RequestAuth, SignedRequest,
};
use shieldwall_crypto::{client_id, KeyPair, NodeAuth, CLIENT_LANES};
use shieldwall_wire::{decode_reply, Frame, Role};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::config::ClusterConfig;
use crate::net::{handshake, FrameReader, Handshake, NetError, HANDSHAKE_FRAME_BYTES};
use crate::outbox::{Outbox, OutboxReceiver};

/// Largest reply frame accepted.
const REPLY_FRAME_BYTES_MAX: usize = 16 << 20;
/// Frames queued per replica connection (bytes are bounded by frames times the request limit).
const LINK_QUEUE_FRAMES: usize = 16_384;
/// How often the client checks for requests to retransmit.
const TICK: Duration = Duration::from_millis(20);

/// Why an operation or connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The operation is larger than the cluster accepts.
    #[error("operation of {bytes} bytes exceeds the cluster's limit of {max} bytes")]
    TooLarge {
        /// Size of the operation.
        bytes: usize,
        /// The cluster's `request_bytes_max`.
        max: usize,
    },
    /// No quorum of matching replies in time. The operation may or may not have executed.
    #[error(
        "no quorum of matching replies within {0:?} (the operation may or may not have executed)"
    )]
    Timeout(Duration),
    /// Not enough replicas reachable.
    #[error("cannot reach a quorum of replicas: {0}")]
    Unavailable(String),
    /// Bad options or key.
    #[error("{0}")]
    Config(String),
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Which client key of the cluster file this client uses.
    pub key_index: u64,
    /// The client key's secret half.
    pub keys: KeyPair,
    /// Lanes used (1 to 64): in-flight requests are at most `lanes * W`.
    pub lanes: u32,
    /// How long an operation may take before [`ClientError::Timeout`].
    pub timeout: Duration,
    /// First retransmission interval; doubles up to `retransmit_max`.
    pub retransmit: Duration,
    /// Longest retransmission interval.
    pub retransmit_max: Duration,
    /// How long a read-only request waits for a matching read quorum before it is sent as an
    /// ordered request.
    pub read_timeout: Duration,
    /// How long [`Client::connect`] waits for a quorum of replicas.
    pub connect_timeout: Duration,
    /// How requests are authenticated: an Ed25519 signature (the default) or a MAC per
    /// replica, which the cluster accepts only with `request_macs = true` (ADR 011).
    pub auth_mode: AuthMode,
}

/// How a client authenticates its requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// An Ed25519 signature per request: any replica can check it.
    #[default]
    Signature,
    /// A MAC vector per request, one 32-byte blake3 MAC per replica: one keyed hash per
    /// replica instead of a signature.
    Mac,
}

impl ClientOptions {
    /// Defaults for client key `key_index` with its secret `keys`.
    pub fn new(key_index: u64, keys: KeyPair) -> ClientOptions {
        ClientOptions {
            key_index,
            keys,
            lanes: 16,
            timeout: Duration::from_secs(10),
            retransmit: Duration::from_millis(500),
            retransmit_max: Duration::from_secs(4),
            read_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(10),
            auth_mode: AuthMode::Signature,
        }
    }

    /// Defaults for client key `key_index`, reading `client-<index>.key` next to the cluster
    /// file.
    pub fn from_key_file(
        cluster: &ClusterConfig,
        key_index: u64,
    ) -> Result<ClientOptions, ClientError> {
        let path = cluster.client_key_path(key_index);
        let keys = KeyPair::read_file(&path, Principal::Client(client_id(key_index, 0)))
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(ClientOptions::new(key_index, keys))
    }
}

#[derive(Debug)]
struct Lane {
    client: u64,
    next: u64,
    open: BTreeSet<u64>,
}

#[derive(Debug)]
struct Outstanding {
    op: Bytes,
    read_only: bool,
    frame: Bytes,
    /// Each replica's (result, view), once it answered.
    replies: Vec<Option<(Vec<u8>, u64)>>,
    done: Option<oneshot::Sender<Vec<u8>>>,
    next_send: Instant,
    interval: Duration,
    read_deadline: Instant,
}

#[derive(Debug, Default)]
struct State {
    lanes: Vec<Lane>,
    outstanding: HashMap<(u64, u64), Outstanding>,
}

#[derive(Debug)]
struct Inner {
    n: usize,
    f: usize,
    window: u64,
    request_bytes_max: usize,
    reply_quorum: usize,
    read_quorum: usize,
    options: ClientOptions,
    auth: NodeAuth,
    state: Mutex<State>,
    room: Notify,
    links: Vec<Outbox>,
    connected: Vec<AtomicBool>,
    last_error: Mutex<Vec<Option<String>>>,
    view: AtomicU64,
    /// Crash mode: a first send of an ordered request goes to the leader only (ADR 019).
    leader_first: bool,
    /// Whether a completed request reported a view (before that, `view` is only a guess).
    view_known: AtomicBool,
}

/// A connection to a cluster. Cheap to share (`Clone`); dropping the last handle closes it.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

#[derive(Debug)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Client {
    /// Connect to the cluster and wait until a quorum of replicas accepted the connection.
    /// Must be called inside a tokio runtime.
    pub async fn connect(
        cluster: &ClusterConfig,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let key = options.key_index;
        let public = cluster.clients.get(key as usize).ok_or_else(|| {
            ClientError::Config(format!(
                "client key {key} is not in the cluster file (it lists {} client keys)",
                cluster.clients.len()
            ))
        })?;
        if options.keys.public() != *public {
            return Err(ClientError::Config(format!(
                "the key file does not belong to client key {key}: its public key differs \
                 from the cluster file's"
            )));
        }
        if options.lanes == 0 || u64::from(options.lanes) > CLIENT_LANES {
            return Err(ClientError::Config(format!(
                "lanes must be in 1..={CLIENT_LANES}"
            )));
        }
        let p = &cluster.protocol;
        let n = p.n as usize;
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let lanes = (0..u64::from(options.lanes))
            .map(|l| Lane {
                client: client_id(key, l),
                next: start,
                open: BTreeSet::new(),
            })
            .collect();
        let me = Principal::Client(client_id(key, 0));
        let mut receivers = Vec::with_capacity(n);
        let mut links = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = Outbox::new(LINK_QUEUE_FRAMES, usize::MAX, None);
            links.push(tx);
            receivers.push(rx);
        }
        let inner = Arc::new(Inner {
            n,
            f: p.f as usize,
            window: u64::from(p.client_pending_max),
            request_bytes_max: p.request_bytes_max as usize,
            reply_quorum: p.reply_quorum(),
            read_quorum: p.read_quorum(),
            auth: NodeAuth::new(me, options.keys.clone(), cluster.keyring()),
            options,
            state: Mutex::new(State {
                lanes,
                outstanding: HashMap::new(),
            }),
            room: Notify::new(),
            links,
            connected: (0..n).map(|_| AtomicBool::new(false)).collect(),
            last_error: Mutex::new(vec![None; n]),
            view: AtomicU64::new(0),
            leader_first: p.fault_model == FaultModel::Crash,
            view_known: AtomicBool::new(false),
        });
        let mut tasks = Vec::with_capacity(n + 1);
        for (i, rx) in receivers.into_iter().enumerate() {
            let address = cluster.replicas[i].address.clone();
            tasks.push(tokio::spawn(link(
                inner.clone(),
                i as ReplicaId,
                address,
                cluster.cluster_id,
                rx,
            )));
        }
        tasks.push(tokio::spawn(retransmitter(Arc::downgrade(&inner))));
        let client = Client {
            inner,
            _tasks: Arc::new(Tasks(tasks)),
        };
        client.wait_connected().await?;
        Ok(client)
    }

    async fn wait_connected(&self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.inner.options.connect_timeout;
        let need = self.inner.reply_quorum;
        loop {
            let up = self.connected_replicas();
            if up >= need {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let errors: Vec<String> = self
                    .inner
                    .last_error
                    .lock()
                    .map(|e| {
                        e.iter()
                            .enumerate()
                            .filter_map(|(i, e)| e.as_ref().map(|e| format!("replica {i}: {e}")))
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(ClientError::Unavailable(format!(
                    "{up} of {} replicas connected, {need} needed ({})",
                    self.inner.n,
                    errors.join("; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Replicas this client is connected to now.
    pub fn connected_replicas(&self) -> usize {
        self.inner
            .connected
            .iter()
            .filter(|c| c.load(Ordering::Relaxed))
            .count()
    }

    /// The highest view f+1 replicas reported in one completed request's replies.
    pub fn view(&self) -> u64 {
        self.inner.view.load(Ordering::Relaxed)
    }

    /// The leader of [`Client::view`].
    pub fn leader(&self) -> ReplicaId {
        shieldwall_core::leader_of(self.view(), self.inner.n as u32)
    }

    /// Run `op` through the ordering protocol and return the service's result, once a quorum
    /// of replicas returned the same bytes.
    pub fn invoke(
        &self,
        op: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send + 'static {
        self.clone().submit(op, false)
    }

    /// Run a read-only `op` against the replicas' current state, without ordering; falls back
    /// to an ordered request if a read quorum does not agree in time.
    pub fn invoke_read(
        &self,
        op: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send + 'static {
        self.clone().submit(op, true)
    }

    async fn submit(self, op: Vec<u8>, read_only: bool) -> Result<Vec<u8>, ClientError> {
        let inner = &self.inner;
        if op.len() > inner.request_bytes_max {
            return Err(ClientError::TooLarge {
                bytes: op.len(),
                max: inner.request_bytes_max,
            });
        }
        let timeout = inner.options.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (client, seq) = tokio::time::timeout_at(deadline, inner.take_slot())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?;
        // Frees the slot however this future ends, completed or dropped by its caller.
        let _slot = SlotGuard { inner, client, seq };
        let op = Bytes::from(op);
        let frame = inner.frame(client, seq, read_only, &op);
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let mut alone = false;
        if let Ok(mut st) = inner.state.lock() {
            st.outstanding.insert(
                (client, seq),
                Outstanding {
                    op,
                    read_only,
                    frame: frame.clone(),
                    replies: vec![None; inner.n],
                    done: Some(tx),
                    next_send: now + inner.options.retransmit,
                    interval: inner.options.retransmit,
                    read_deadline: now + inner.options.read_timeout,
                },
            );
            alone = st.outstanding.len() == 1;
        }
        // A lone request is written by this task itself (no wake-up of the link tasks on its
        // way out); with others outstanding, the link tasks coalesce them into fewer writes.
        match inner.first_destination(read_only) {
            Some(leader) => {
                inner.links[leader].send(frame, alone);
            }
            None => {
                for link in &inner.links {
                    link.send(frame.clone(), alone);
                }
            }
        }
        let result = tokio::time::timeout_at(deadline, rx).await;
        match result {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }
}

/// A taken lane slot; returns it (and forgets the request) when dropped.
struct SlotGuard<'a> {
    inner: &'a Inner,
    client: u64,
    seq: u64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.inner.finish(self.client, self.seq);
    }
}

impl Inner {
    /// Wait for a lane with room under the window rule and take its next number.
    async fn take_slot(&self) -> (u64, u64) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(mut st) = self.state.lock() {
                let window = self.window;
                if let Some(lane) = st
                    .lanes
                    .iter_mut()
                    .filter(|l| l.open.first().is_none_or(|low| l.next - low < window))
                    .min_by_key(|l| l.open.len())
                {
                    let seq = lane.next;
                    lane.next += 1;
                    lane.open.insert(seq);
                    return (lane.client, seq);
                }
            }
            notified.await;
        }
    }

    /// Forget a request and free its lane slot.
    fn finish(&self, client: u64, seq: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.outstanding.remove(&(client, seq));
            if let Some(lane) = st.lanes.iter_mut().find(|l| l.client == client) {
                lane.open.remove(&seq);
            }
        }
        self.room.notify_waiters();
    }

    fn frame(&self, client: u64, req_seq: u64, read_only: bool, op: &Bytes) -> Bytes {
        let request = Request {
            client,
            req_seq,
            read_only,
            op: op.clone(),
        };
        let bytes = request.signing_bytes();
        let auth = match self.options.auth_mode {
            AuthMode::Signature => RequestAuth::Signature(self.auth.sign(&bytes).into()),
            AuthMode::Mac => RequestAuth::Macs(self.auth.mac_vector(self.n as u32, &bytes).into()),
        };
        Frame::Request(SignedRequest { request, auth }).encode()
    }

    /// Where a request goes first: `Some(leader)` for an ordered request in crash mode once
    /// a view is known, else `None` (every replica).
    fn first_destination(&self, read_only: bool) -> Option<usize> {
        (self.leader_first && !read_only && self.view_known.load(Ordering::Relaxed)).then(|| {
            shieldwall_core::leader_of(self.view.load(Ordering::Relaxed), self.n as u32) as usize
        })
    }

    /// A verified reply from `replica`.
    fn on_reply(&self, replica: ReplicaId, reply: shieldwall_core::Reply) {
        let mut resend = None;
        if let Ok(mut st) = self.state.lock() {
            let key = (reply.client, reply.req_seq);
            let Some(o) = st.outstanding.get_mut(&key) else {
                return;
            };
            if o.read_only != reply.read_only || o.done.is_none() {
                return;
            }
            let slot = &mut o.replies[replica as usize];
            if slot.is_some() {
                return;
            }
            *slot = Some((reply.result.clone(), reply.view));
            let mut views: Vec<u64> = o
                .replies
                .iter()
                .flatten()
                .filter(|(r, _)| *r == reply.result)
                .map(|(_, v)| *v)
                .collect();
            let quorum = if o.read_only {
                self.read_quorum
            } else {
                self.reply_quorum
            };
            if views.len() >= quorum {
                views.sort_unstable_by(|a, b| b.cmp(a));
                if let Some(v) = views.get(self.f) {
                    self.view.fetch_max(*v, Ordering::Relaxed);
                    self.view_known.store(true, Ordering::Relaxed);
                }
                if let Some(done) = o.done.take() {
                    let _ = done.send(reply.result);
                }
                return;
            }
            if o.read_only {
                // Fall back as soon as a read quorum can no longer agree.
                let answered = o.replies.iter().flatten().count();
                let best = o
                    .replies
                    .iter()
                    .flatten()
                    .map(|(r, _)| o.replies.iter().flatten().filter(|(x, _)| x == r).count())
                    .max()
                    .unwrap_or(0);
                if best + (self.n - answered) < quorum {
                    resend = Some(self.fall_back(key, o));
                }
            }
        }
        if let Some(frame) = resend {
            self.send_all(&frame);
        }
    }

    /// Turn a read-only request into an ordered one with the same number.
    fn fall_back(&self, key: (u64, u64), o: &mut Outstanding) -> Bytes {
        debug!(
            client = key.0,
            seq = key.1,
            "read-only request falls back to ordering"
        );
        o.read_only = false;
        o.frame = self.frame(key.0, key.1, false, &o.op);
        o.replies = vec![None; self.n];
        o.interval = self.options.retransmit;
        o.next_send = Instant::now() + o.interval;
        o.frame.clone()
    }

    fn send_all(&self, frame: &Bytes) {
        for link in &self.links {
            link.send(frame.clone(), false);
        }
    }

    /// Retransmit due requests (to the replicas that have not answered) and fall back reads
    /// that waited too long.
    fn tick(&self) {
        let now = Instant::now();
        let mut sends: Vec<(Option<usize>, Bytes)> = Vec::new();
        if let Ok(mut st) = self.state.lock() {
            let keys: Vec<(u64, u64)> = st.outstanding.keys().copied().collect();
            for key in keys {
                let Some(o) = st.outstanding.get_mut(&key) else {
                    continue;
                };
                if o.read_only && now >= o.read_deadline {
                    sends.push((None, self.fall_back(key, o)));
                } else if now >= o.next_send {
                    for (i, r) in o.replies.iter().enumerate() {
                        if r.is_none() {
                            sends.push((Some(i), o.frame.clone()));
                        }
                    }
                    o.interval = (o.interval * 2).min(self.options.retransmit_max);
                    o.next_send = now + o.interval;
                }
            }
        }
        for (to, frame) in sends {
            match to {
                Some(i) => {
                    self.links[i].send(frame, false);
                }
                None => self.send_all(&frame),
            }
        }
    }

    /// Frames of every request still waiting for `replica` (sent again after a reconnect).
    fn pending_for(&self, replica: usize) -> Vec<Bytes> {
        self.state
            .lock()
            .map(|st| {
                st.outstanding
                    .values()
                    .filter(|o| o.replies[replica].is_none())
                    .map(|o| o.frame.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn retransmitter(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.tick();
    }
}

/// Keep a connection to replica `i`: write queued requests, read and check replies.
async fn link(
    inner: Arc<Inner>,
    i: ReplicaId,
    address: String,
    cluster: [u8; 32],
    mut rx: OutboxReceiver,
) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let attempt = async {
            let stream = crate::net::connect(&address).await?;
            let (r, mut w) = stream.into_split();
            let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_BYTES);
            let hs = Handshake {
                cluster,
                me: inner.auth.me(),
                auth: &inner.auth,
                role: Role::Dialer,
            };
            let expect = Principal::Replica(i);
            handshake(&mut reader, &mut w, &hs, |p| {
                if p == expect {
                    Ok(())
                } else {
                    Err(format!("expected replica {i}, found {p:?}"))
                }
            })
            .await?;
            Ok::<_, NetError>((reader, w))
        };
        match attempt.await {
            Ok((mut reader, w)) => {
                backoff = Duration::from_millis(20);
                inner.connected[i as usize].store(true, Ordering::Relaxed);
                if let Ok(mut e) = inner.last_error.lock() {
                    e[i as usize] = None;
                }
                for frame in inner.pending_for(i as usize) {
                    inner.links[i as usize].send(frame, false);
                }
                reader.set_max_frame_bytes(REPLY_FRAME_BYTES_MAX);
                let result = tokio::select! {
                    r = rx.write_into(w) => r,
                    r = read_replies(&inner, i, &mut reader) => r,
                };
                inner.connected[i as usize].store(false, Ordering::Relaxed);
                debug!(replica = i, "connection lost: {result:?}");
            }
            Err(e) => {
                debug!(replica = i, %address, "cannot connect: {e}");
                if let Ok(mut errors) = inner.last_error.lock() {
                    errors[i as usize] = Some(e.to_string());
                }
            }
        }
        if rx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn read_replies(
    inner: &Inner,
    i: ReplicaId,
    reader: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
) -> Result<(), NetError> {
    let from = Principal::Replica(i);
    loop {
        match reader.next().await? {
            Some((Frame::Reply(r), _)) => {
                if !inner.auth.verify_mac(from, &r.reply, &r.mac) {
                    debug!(replica = i, "reply with a bad MAC ignored");
                    continue;
                }
                match decode_reply(&r.reply) {
                    Ok(reply) if reply.replica == i => inner.on_reply(i, reply),
                    Ok(_) | Err(_) => debug!(replica = i, "malformed reply ignored"),
                }
            }
            Some((f, _)) => return Err(NetError::Unexpected(f.name())),
            None => return Ok(()),
        }
    }
}
