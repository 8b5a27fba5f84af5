//! Connections of a replica: outbound links to peers (one dialled connection per peer, which
//! carries this replica's messages to it), the listener (peers' links and clients), reply
//! routing to clients, and the verification stage between the sockets and the core.
//!
//! Bounds: a peer or client key may hold at most its byte budget of received, not yet handled
//! frames (a semaphore per principal, shared by all its connections; the permit travels with
//! the message through verification and the core, and a frame is admitted before its body is
//! buffered). Once it is spent, its connections are not read until the core catches up: a
//! flooding principal slows down only itself. A peer has one inbound connection (a newer one
//! replaces it), a client key a few; handshakes are limited per source address and must start
//! within a second. Outbound queues are bounded in frames and bytes per peer and per client
//! connection; when one is full the frame is dropped and counted, and the core never waits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shieldwall_core::verify::{verify_message, verify_request, Reject};
use shieldwall_core::{
    Authenticator, Config, Event, Message, Principal, Reply, SettledVotes, SignedRequest,
};
use shieldwall_crypto::pool::{PoolClosed, Submitter};
use shieldwall_crypto::{client_key_index, NodeAuth, RecordedSig, Recorder, VerifiedCache};
use shieldwall_wire::{encode_reply, Frame, MacedReply, Role};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::core::CoreHandle;
use crate::metrics::Metrics;
use crate::net::{handshake, FrameReader, Handshake, HANDSHAKE_FRAME_BYTES};
use crate::outbox::{Flush, Outbox, OutboxReceiver};

/// First and last delay between reconnection attempts to a peer.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A received message or request, with the budget permit of its sender.
#[derive(Debug)]
pub(crate) enum Inbound {
    Message {
        msg: Message,
        permit: OwnedSemaphorePermit,
    },
    Request {
        req: SignedRequest,
        permit: OwnedSemaphorePermit,
    },
}

/// A job for the verify pool.
#[derive(Debug)]
pub(crate) enum VerifyJob {
    /// An input whose structure and MACs were checked, with the signatures it carries that
    /// still need verification.
    Signatures {
        input: Inbound,
        sigs: Vec<RecordedSig>,
    },
    /// A message that failed those checks, to be checked again for the reason and whom to
    /// blame (which can take many signature verifications, kept off the connection tasks). It
    /// holds its sender's budget until then, like every queued input.
    Reject {
        msg: Message,
        _permit: OwnedSemaphorePermit,
    },
}

/// The core's latest [`SettledVotes`], read by the verification stage.
#[derive(Debug, Default)]
pub(crate) struct SettledCell(Mutex<SettledVotes>);

impl SettledCell {
    pub(crate) fn get(&self) -> SettledVotes {
        self.0.lock().map(|s| *s).unwrap_or_default()
    }

    pub(crate) fn set(&self, settled: SettledVotes) {
        if let Ok(mut s) = self.0.lock() {
            *s = settled;
        }
    }
}

/// The verification stage between the sockets and the core. It runs in two steps:
///
/// 1. [`Verifier::check`], on the connection's own task: settled votes are dropped, the
///    input's structure and its MACs are checked, and the Ed25519 signatures it carries are
///    collected. An input without signatures (every input in crash mode, MAC-authenticated
///    requests) goes to the core from there: no hand-off to another thread on its way, which
///    at one client is a thread wake-up (tens of microseconds) per message saved.
/// 2. [`Verifier::verify`], on a verify pool thread, for inputs with signatures: the
///    signatures of everything queued are verified together (batch verification, those seen
///    before skipped via the cache), and the valid inputs go to the core.
///
/// A message that fails either step is checked again with the real authenticator, on a pool
/// thread, to count the exact reason and find whom to blame (faulty input only).
pub(crate) struct Verifier {
    pub config: Config,
    pub auth: Arc<NodeAuth>,
    pub cache: VerifiedCache,
    pub settled: Arc<SettledCell>,
    pub core: Arc<CoreHandle>,
    pub metrics: Arc<Metrics>,
}

impl Verifier {
    /// Step 1: drop, reject or deliver `input` here, or return the job for the pool.
    ///
    /// Votes the core's [`SettledVotes`] cover are dropped unchecked: their slot is already
    /// prepared or committed here, so the engine would only store them (at n = 4 that is one
    /// PREPARE and one COMMIT in three per slot when the others come first, each an Ed25519
    /// verification saved).
    pub(crate) fn check(&self, input: Inbound) -> Option<VerifyJob> {
        if self.settles(&input) {
            return None;
        }
        let rec = Recorder::new(&self.auth);
        let structure = match &input {
            Inbound::Message { msg, .. } => verify_message(&self.config, &rec, msg).map_err(|_| ()),
            Inbound::Request { req, .. } => verify_request(&self.config, &rec, req).map_err(|r| {
                self.metrics.reject(r.as_str());
            }),
        };
        match (structure, input) {
            (Ok(()), input) => {
                let sigs = rec.take();
                if sigs.is_empty() {
                    self.deliver(input);
                    None
                } else {
                    Some(VerifyJob::Signatures { input, sigs })
                }
            }
            (Err(()), Inbound::Message { msg, permit }) => Some(VerifyJob::Reject {
                msg,
                _permit: permit,
            }),
            (Err(()), Inbound::Request { .. }) => None,
        }
    }

    /// Step 2: verify the signatures of a batch of jobs together; deliver the valid inputs.
    /// Votes that settled while they waited are dropped unchecked.
    pub(crate) fn verify(&self, jobs: Vec<VerifyJob>) {
        let mut sigs = Vec::with_capacity(jobs.len());
        let mut ranges = Vec::with_capacity(jobs.len());
        let mut inputs = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                VerifyJob::Reject { msg, .. } => self.reject_message(msg),
                VerifyJob::Signatures { input, .. } if self.settles(&input) => {}
                VerifyJob::Signatures { input, sigs: own } => {
                    let start = sigs.len();
                    sigs.extend(own);
                    ranges.push(start..sigs.len());
                    inputs.push(input);
                }
            }
        }
        let (verdicts, verified) = self.cache.verify_each_counted(&self.auth, &sigs);
        if verified > 0 {
            self.metrics.verify_batch.observe(verified as f64);
        }
        for (input, range) in inputs.into_iter().zip(ranges) {
            if verdicts[range].iter().all(|ok| *ok) {
                self.deliver(input);
            } else {
                match input {
                    Inbound::Message { msg, .. } => self.reject_message(msg),
                    Inbound::Request { .. } => self.metrics.reject(Reject::BadClientAuth.as_str()),
                }
            }
        }
    }

    fn settles(&self, input: &Inbound) -> bool {
        let settled = match input {
            Inbound::Message { msg, .. } => self.settled.get().covers(msg),
            Inbound::Request { .. } => false,
        };
        if settled {
            self.metrics.votes_settled.inc();
        }
        settled
    }

    fn deliver(&self, input: Inbound) {
        let (event, permit) = match input {
            Inbound::Message { msg, permit } => (Event::Message(msg), permit),
            Inbound::Request { req, permit } => (Event::Request(req), permit),
        };
        self.core.deliver(event, Some(permit));
    }

    /// Check an invalid message with the real authenticator: count why, and report the signer
    /// whose valid signature covers invalid content.
    fn reject_message(&self, msg: Message) {
        match verify_message(&self.config, self.auth.as_ref(), &msg) {
            // Only reachable if a signature verified singly but not in a batch: contract
            // breach of the authenticator; trust the single verification.
            Ok(()) => {
                self.core.deliver(Event::Message(msg), None);
            }
            Err(rejection) => {
                debug!(
                    from = msg.from(),
                    kind = msg.kind(),
                    reason = rejection.reason.as_str(),
                    "rejected message"
                );
                self.metrics.reject(rejection.reason.as_str());
                if let Some((from, view)) = rejection.blame {
                    self.core.deliver(Event::ProvenFault { from, view }, None);
                }
            }
        }
    }
}

/// The outbound queue and link state of one peer.
#[derive(Debug)]
struct PeerLink {
    out: Outbox,
    connected: Arc<AtomicBool>,
}

/// Outbound links to every peer.
#[derive(Debug)]
pub(crate) struct PeerLinks {
    me: u32,
    links: Vec<Option<PeerLink>>,
    metrics: Arc<Metrics>,
}

impl PeerLinks {
    /// Queue `bytes` for `to`, sent at `flush`'s next run; a full queue drops them (counted).
    pub(crate) fn send(&self, to: u32, bytes: Bytes, flush: &mut Flush) {
        if let Some(Some(link)) = self.links.get(to as usize) {
            if !flush.queue(&link.out, bytes) {
                self.metrics.drop_frame("peer");
            }
        }
    }

    /// Queue the same bytes for every peer.
    pub(crate) fn broadcast(&self, bytes: &Bytes, flush: &mut Flush) {
        for (j, link) in self.links.iter().enumerate() {
            if j as u32 != self.me && link.is_some() {
                self.send(j as u32, bytes.clone(), flush);
            }
        }
    }

    /// Peers whose link is up.
    pub(crate) fn connected(&self) -> usize {
        self.links
            .iter()
            .flatten()
            .filter(|l| l.connected.load(Ordering::Relaxed))
            .count()
    }

    /// Refresh the per-peer gauges.
    pub(crate) fn export(&self) {
        for (j, link) in self.links.iter().enumerate() {
            if let Some(l) = link {
                let peer = vec![("peer", j.to_string())];
                self.metrics
                    .peer_queue
                    .get_or_create(&peer)
                    .set(l.out.queued_frames() as i64);
                self.metrics
                    .peer_queue_bytes
                    .get_or_create(&peer)
                    .set(l.out.queued_bytes() as i64);
                self.metrics
                    .peer_connected
                    .get_or_create(&peer)
                    .set(i64::from(l.connected.load(Ordering::Relaxed)));
            }
        }
    }
}

/// What the connection tasks share.
pub(crate) struct NetContext {
    pub me: u32,
    pub cluster_id: [u8; 32],
    pub n: u32,
    pub auth: Arc<NodeAuth>,
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<Verifier>,
    pub verify: Submitter<VerifyJob>,
    pub router: Arc<ClientRouter>,
    pub peer_budgets: Vec<Arc<Semaphore>>,
    pub client_budgets: Vec<Arc<Semaphore>>,
    pub handshakes: Arc<Semaphore>,
    pub limits: super::Limits,
    pub client_frame_bytes_max: usize,
    /// Handshakes in progress by source address.
    pub handshakes_by_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Each peer's current inbound connection: (connection id, its stop signal).
    pub inbound_peers: Mutex<HashMap<u32, (u64, Arc<Notify>)>>,
    pub next_conn: AtomicU64,
}

impl NetContext {
    /// Hand a received input to verification: checked here, and queued for the verify pool
    /// if it carries signatures.
    fn inbound(&self, input: Inbound) -> Result<(), PoolClosed> {
        match self.verifier.check(input) {
            Some(job) => self.verify.submit(job),
            None => Ok(()),
        }
    }

    fn hs(&self, role: Role) -> Handshake<'_> {
        Handshake {
            cluster: self.cluster_id,
            me: Principal::Replica(self.me),
            auth: self.auth.as_ref(),
            role,
        }
    }

    fn accept(&self, p: Principal) -> Result<(), String> {
        match p {
            Principal::Replica(r) if r < self.n && r != self.me => Ok(()),
            Principal::Replica(r) => {
                Err(format!("replica {r} is not a peer of replica {}", self.me))
            }
            Principal::Client(c) => {
                let key = client_key_index(c);
                if key >= self.client_budgets.len() as u64 {
                    return Err(format!("client key {key} is not in the cluster file"));
                }
                Ok(())
            }
        }
    }

    /// Take a handshake slot for `ip`, unless it already holds its share.
    fn ip_slot(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut by_ip = self.handshakes_by_ip.lock().ok()?;
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.limits.handshakes_per_ip_max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ctx: self.clone(),
            ip,
        })
    }
}

/// A handshake slot of one source address, returned when dropped.
struct IpSlot {
    ctx: Arc<NetContext>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut by_ip) = self.ctx.handshakes_by_ip.lock() {
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// Start the outbound link to each peer.
pub(crate) fn start_peer_links(ctx: &Arc<NetContext>, addresses: &[String]) -> PeerLinks {
    let links = addresses
        .iter()
        .enumerate()
        .map(|(j, address)| {
            if j as u32 == ctx.me {
                return None;
            }
            let (out, rx) = Outbox::new(
                ctx.limits.peer_queue_frames,
                ctx.limits.peer_queue_bytes_max,
                Some(ctx.metrics.bytes_out.clone()),
            );
            let connected = Arc::new(AtomicBool::new(false));
            tokio::spawn(dial_peer(
                ctx.clone(),
                j as u32,
                address.clone(),
                rx,
                connected.clone(),
            ));
            Some(PeerLink { out, connected })
        })
        .collect();
    PeerLinks {
        me: ctx.me,
        links,
        metrics: ctx.metrics.clone(),
    }
}

/// Keep a connection to peer `j` and write its queue into it; reconnect with backoff. Frames
/// queued while the link is down are dropped (counted): they are stale by the time it is up,
/// and the protocol recovers lost messages.
async fn dial_peer(
    ctx: Arc<NetContext>,
    j: u32,
    address: String,
    mut rx: OutboxReceiver,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = RECONNECT_MIN;
    let mut announced_failure = false;
    loop {
        let attempt = async {
            let stream = crate::net::connect(&address).await?;
            let (r, mut w) = stream.into_split();
            let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_BYTES);
            let expect = Principal::Replica(j);
            handshake(&mut reader, &mut w, &ctx.hs(Role::Dialer), |p| {
                if p == expect {
                    Ok(())
                } else {
                    Err(format!("expected replica {j} at {address}, found {p:?}"))
                }
            })
            .await?;
            Ok::<_, crate::net::NetError>((reader, w))
        };
        match attempt.await {
            Ok((reader, w)) => {
                info!(peer = j, %address, "connected to peer");
                announced_failure = false;
                backoff = RECONNECT_MIN;
                connected.store(true, Ordering::Relaxed);
                // The peer never writes on this connection after the handshake; reading
                // notices when it closes.
                let mut reader = reader.into_inner();
                let result = tokio::select! {
                    r = rx.write_into(w) => r,
                    _ = async {
                        let mut b = [0u8; 64];
                        while tokio::io::AsyncReadExt::read(&mut reader, &mut b).await.is_ok_and(|n| n > 0) {}
                    } => Ok(()),
                };
                connected.store(false, Ordering::Relaxed);
                info!(
                    peer = j,
                    "link to peer lost: {}",
                    result
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "closed".into())
                );
            }
            Err(e) => {
                if !announced_failure {
                    info!(peer = j, %address, "cannot reach peer yet: {e}");
                    announced_failure = true;
                }
                if let crate::net::NetError::Handshake(_) | crate::net::NetError::Refused(_) = e {
                    ctx.metrics.reject(e.as_str());
                }
            }
        }
        if rx.is_closed() {
            return;
        }
        for _ in 0..rx.clear() {
            ctx.metrics.drop_frame("peer_link_down");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Accept connections from peers and clients.
pub(crate) async fn accept_loop(listener: TcpListener, ctx: Arc<NetContext>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Typically out of file descriptors: an operator must see it.
                warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(ip_slot) = ctx.ip_slot(addr.ip()) else {
            ctx.metrics.reject("too_many_handshakes");
            continue;
        };
        let Ok(slot) = ctx.handshakes.clone().try_acquire_owned() else {
            ctx.metrics.reject("too_many_handshakes");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            crate::net::tune(&stream);
            let (r, mut w) = stream.into_split();
            let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_BYTES);
            let hs = ctx.hs(Role::Acceptor);
            // A client's connection slot is reserved when its claim is accepted, so that
            // concurrent handshakes cannot all pass the limit; released if the handshake fails.
            let reserved = AtomicU64::new(u64::MAX);
            let peer = handshake(&mut reader, &mut w, &hs, |p| {
                ctx.accept(p)?;
                if let Principal::Client(c) = p {
                    let key = client_key_index(c);
                    ctx.router.reserve(key, &ctx.limits)?;
                    reserved.store(key, Ordering::Relaxed);
                }
                Ok(())
            })
            .await;
            drop((slot, ip_slot));
            let reserved = reserved.load(Ordering::Relaxed);
            if peer.is_err() && reserved != u64::MAX {
                ctx.router.release(reserved);
            }
            match peer {
                Ok(Principal::Replica(j)) => {
                    debug!(peer = j, %addr, "peer connected");
                    peer_inbound(ctx, j, reader).await;
                }
                Ok(Principal::Client(c)) => {
                    client_connection(ctx, client_key_index(c), reader, w).await;
                }
                Err(e) => {
                    debug!(%addr, "handshake failed: {e}");
                    ctx.metrics.reject(e.as_str());
                }
            }
        });
    }
}

/// Admission: wait until `budget` grants `len` bytes.
fn admit(
    budget: &Arc<Semaphore>,
) -> impl FnOnce(
    usize,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<OwnedSemaphorePermit>> + Send>,
> {
    let budget = budget.clone();
    move |len| Box::pin(async move { budget.acquire_many_owned(len as u32).await.ok() })
}

/// Read a peer's messages into the verify pool, within the peer's budget. A peer has one
/// inbound connection: a newer one replaces this one.
async fn peer_inbound(
    ctx: Arc<NetContext>,
    j: u32,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
) {
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(Notify::new());
    if let Ok(mut inbound) = ctx.inbound_peers.lock() {
        if let Some((_, old)) = inbound.insert(j, (conn, stop.clone())) {
            old.notify_one();
        }
    }
    reader.set_max_frame_bytes(ctx.limits.peer_frame_bytes_max);
    let budget = &ctx.peer_budgets[j as usize];
    loop {
        let next = tokio::select! {
            _ = stop.notified() => {
                debug!(peer = j, "inbound connection replaced by a newer one");
                break;
            }
            next = reader.next_admitted(admit(budget)) => next,
        };
        match next {
            Ok(Some((Frame::Peer(msg), size, permit))) => {
                ctx.metrics.bytes_in.inc_by(size as u64);
                if msg.from() != j {
                    // A replica speaks only for itself on its link; crash mode, which does
                    // not check replicas' signatures, relies on this binding.
                    debug!(
                        peer = j,
                        from = msg.from(),
                        "a peer spoke for another replica"
                    );
                    ctx.metrics.reject("sender_not_peer");
                    break;
                }
                if ctx.inbound(Inbound::Message { msg, permit }).is_err() {
                    break;
                }
            }
            Ok(Some((f, _, _))) => {
                debug!(peer = j, "unexpected {} frame from a peer", f.name());
                ctx.metrics.reject("unexpected_frame");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                debug!(peer = j, "closing connection: {e}");
                ctx.metrics.reject(e.as_str());
                break;
            }
        }
    }
    if let Ok(mut inbound) = ctx.inbound_peers.lock() {
        if inbound.get(&j).is_some_and(|(c, _)| *c == conn) {
            inbound.remove(&j);
        }
    }
}

/// Serve one client connection: requests in (within the client key's budget), replies out.
async fn client_connection(
    ctx: Arc<NetContext>,
    key: u64,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
) {
    let (out, mut rx) = Outbox::new(
        ctx.limits.client_queue_frames,
        ctx.limits.client_queue_bytes_max,
        Some(ctx.metrics.bytes_out.clone()),
    );
    let conn = ctx.router.register(key, out);
    ctx.metrics.client_connections.inc();
    let writer = tokio::spawn(async move {
        let _ = rx.write_into(w).await;
    });
    reader.set_max_frame_bytes(ctx.client_frame_bytes_max);
    let budget = &ctx.client_budgets[key as usize];
    loop {
        match reader.next_admitted(admit(budget)).await {
            Ok(Some((Frame::Request(req), size, permit))) => {
                ctx.metrics.bytes_in.inc_by(size as u64);
                ctx.metrics.requests_received.inc();
                if client_key_index(req.request.client) != key {
                    // Requests travel on their own client's connection only.
                    ctx.metrics.reject("wrong_client");
                    continue;
                }
                if ctx.inbound(Inbound::Request { req, permit }).is_err() {
                    break;
                }
            }
            Ok(Some((f, _, _))) => {
                debug!(key, "unexpected {} frame from a client", f.name());
                ctx.metrics.reject("unexpected_frame");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                debug!(key, "closing client connection: {e}");
                ctx.metrics.reject(e.as_str());
                break;
            }
        }
    }
    ctx.router.unregister(key, conn);
    ctx.metrics.client_connections.dec();
    writer.abort();
}

#[derive(Debug, Default)]
struct Routes {
    /// Each client key's latest connection: (connection id, its reply queue).
    latest: HashMap<u64, (u64, Outbox)>,
    /// Open connections per client key.
    per_key: HashMap<u64, usize>,
    total: usize,
}

/// Where each client key's replies go: its most recent connection.
#[derive(Debug)]
pub(crate) struct ClientRouter {
    auth: Arc<NodeAuth>,
    metrics: Arc<Metrics>,
    routes: Mutex<Routes>,
    next_conn: AtomicU64,
}

impl ClientRouter {
    pub(crate) fn new(auth: Arc<NodeAuth>, metrics: Arc<Metrics>) -> ClientRouter {
        ClientRouter {
            auth,
            metrics,
            routes: Mutex::new(Routes::default()),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Take a connection slot for client key `key`, within the limits.
    fn reserve(&self, key: u64, limits: &super::Limits) -> Result<(), String> {
        let mut r = self
            .routes
            .lock()
            .map_err(|_| "router unavailable".to_string())?;
        if r.total >= limits.client_connections_max {
            return Err("too many client connections".into());
        }
        let of_key = r.per_key.get(&key).copied().unwrap_or(0);
        if of_key >= limits.client_connections_per_key_max {
            return Err(format!(
                "client key {key} already has {of_key} connections to this replica"
            ));
        }
        r.per_key.insert(key, of_key + 1);
        r.total += 1;
        Ok(())
    }

    /// Give back a reserved slot.
    fn release(&self, key: u64) {
        if let Ok(mut r) = self.routes.lock() {
            r.total = r.total.saturating_sub(1);
            if let Some(n) = r.per_key.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    r.per_key.remove(&key);
                }
            }
        }
    }

    /// Route `key`'s replies to a new connection (its slot was reserved).
    fn register(&self, key: u64, out: Outbox) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.routes.lock() {
            r.latest.insert(key, (id, out));
        }
        id
    }

    /// A connection closed: free its slot and its route.
    fn unregister(&self, key: u64, conn: u64) {
        self.release(key);
        if let Ok(mut r) = self.routes.lock() {
            if r.latest.get(&key).is_some_and(|(id, _)| *id == conn) {
                r.latest.remove(&key);
            }
        }
    }

    /// MAC `reply` for its client and queue it on the client's latest connection, sent at
    /// `flush`'s next run; dropped (the client retransmits and gets the cached reply) if the
    /// client is not connected or its queue is full.
    pub(crate) fn send(&self, reply: &Reply, flush: &mut Flush) {
        let key = client_key_index(reply.client);
        let out = match self.routes.lock() {
            Ok(r) => r.latest.get(&key).map(|(_, out)| out.clone()),
            Err(_) => None,
        };
        let Some(out) = out else {
            self.metrics.drop_frame("reply_no_connection");
            return;
        };
        let bytes = encode_reply(reply);
        let mac = self.auth.mac(Principal::Client(reply.client), &bytes);
        let frame = Frame::Reply(MacedReply { reply: bytes, mac }).encode();
        if flush.queue(&out, frame) {
            self.metrics.replies_queued.inc();
        } else {
            self.metrics.drop_frame("reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::core::CoreInput;
    use crate::server::core_queue::CoreQueue;
    use shieldwall_core::message::{
        batch_digest, commit_mac_bytes, vote_signing_bytes, Authenticated, Phase, PrePrepare,
        Signable, Signed, Vote,
    };
    use shieldwall_core::{Digest, Request, RequestAuth};
    use shieldwall_crypto::{client_id, KeyPair, Keyring};

    struct Fixture {
        config: Config,
        replicas: Vec<Arc<NodeAuth>>,
        client: NodeAuth,
    }

    fn fixture() -> Fixture {
        let rk: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i; 32])).collect();
        let ck = KeyPair::from_seed([50; 32]);
        let ring = Arc::new(Keyring::new(
            rk.iter().map(KeyPair::public).collect(),
            vec![ck.public()],
        ));
        Fixture {
            config: Config::for_replicas(4, shieldwall_core::FaultModel::Byzantine),
            replicas: rk
                .into_iter()
                .enumerate()
                .map(|(i, k)| {
                    Arc::new(NodeAuth::new(Principal::Replica(i as u32), k, ring.clone()))
                })
                .collect(),
            client: NodeAuth::new(Principal::Client(client_id(0, 0)), ck, ring),
        }
    }

    /// Replica 3's verification stage for `config`, and the core's end of its queue.
    fn verifier(f: &Fixture, config: Config) -> (Verifier, Arc<CoreQueue<CoreInput>>) {
        let rx = Arc::new(CoreQueue::default());
        let tx = Arc::new(CoreHandle::new(rx.clone()));
        let v = Verifier {
            config,
            auth: f.replicas[3].clone(),
            cache: VerifiedCache::new(100),
            settled: Arc::new(SettledCell::default()),
            core: tx,
            metrics: Arc::new(Metrics::new(3)),
        };
        (v, rx)
    }

    /// The events queued for the core so far.
    fn events(rx: &CoreQueue<CoreInput>) -> Vec<Event> {
        rx.drain()
            .into_iter()
            .map(|i| match i {
                CoreInput::Event(e, _) => e,
                CoreInput::Shutdown => panic!("unexpected"),
            })
            .collect()
    }

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    fn vote_body(seq: u64) -> Vote {
        Vote {
            view: 0,
            seq,
            batch_digest: Digest([1; 32]),
        }
    }

    /// A PREPARE in `from`'s name, signed by `signer`.
    fn prepare(signer: &NodeAuth, from: u32, seq: u64) -> Message {
        let body = vote_body(seq);
        Message::Prepare(Signed {
            from,
            body,
            sig: signer.sign(&vote_signing_bytes(Phase::Prepare, &body)),
        })
    }

    /// A COMMIT in `from`'s name, with `signer`'s MACs for the four replicas.
    fn commit(signer: &NodeAuth, from: u32, seq: u64) -> Message {
        let body = vote_body(seq);
        let bytes = commit_mac_bytes(from, &body);
        Message::Commit(Authenticated {
            from,
            body,
            macs: (0..4)
                .flat_map(|r| signer.mac(Principal::Replica(r), &bytes))
                .collect(),
        })
    }

    fn request(seq: u64, signer: &NodeAuth) -> SignedRequest {
        let request = Request {
            client: client_id(0, 1),
            req_seq: seq,
            read_only: false,
            op: vec![7].into(),
        };
        SignedRequest {
            auth: RequestAuth::Signature(signer.sign(&request.signing_bytes()).into()),
            request,
        }
    }

    /// A service that echoes operations.
    #[derive(Debug)]
    struct Echo;

    impl crate::Service for Echo {
        fn execute(&mut self, _: shieldwall_core::ClientId, op: &[u8]) -> Vec<u8> {
            op.to_vec()
        }
        fn read(&self, _: shieldwall_core::ClientId, op: &[u8]) -> Vec<u8> {
            op.to_vec()
        }
        fn snapshot(&mut self) -> Vec<Bytes> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), crate::service::RestoreError> {
            Ok(())
        }
    }

    /// Replica 3's core, with no peers and no core thread, its queue, and the service
    /// thread's end of its queue of ordered batches.
    fn core_handle(
        f: &Fixture,
    ) -> (
        Arc<CoreHandle>,
        Arc<CoreQueue<CoreInput>>,
        crossbeam_channel::Receiver<crate::server::core::ExecJob>,
    ) {
        let queue = Arc::new(CoreQueue::default());
        let handle = Arc::new(CoreHandle::new(queue.clone()));
        let metrics = Arc::new(Metrics::new(3));
        let (exec_tx, exec_rx) = crossbeam_channel::unbounded();
        let (read_tx, _) = crossbeam_channel::bounded(1);
        handle.install(crate::server::core::CoreParts {
            replica: shieldwall_core::Replica::new(f.config.clone(), 3, f.replicas[3].clone())
                .unwrap(),
            clock: crate::server::core::Clock::new(),
            links: Arc::new(PeerLinks {
                me: 3,
                links: (0..4).map(|_| None).collect(),
                metrics: metrics.clone(),
            }),
            router: Arc::new(ClientRouter::new(f.replicas[3].clone(), metrics.clone())),
            exec_tx,
            service: Arc::new(crate::server::core::SharedService::new(Box::new(Echo))),
            read_tx,
            read_bytes: Default::default(),
            read_bytes_max: 1 << 20,
            metrics,
            status: Default::default(),
            storage_tx: None,
            initial: Vec::new(),
            settled: Default::default(),
        });
        (handle, queue, exec_rx)
    }

    /// An idle core handles an input on the thread that delivers it; with anything queued
    /// (or before the core thread carried out the recovered state's actions) the input
    /// queues behind, so the order holds.
    #[test]
    fn an_idle_core_runs_on_the_delivering_thread_and_never_overtakes_the_queue() {
        let f = fixture();
        let (core, queue, _exec) = core_handle(&f);
        core.deliver(Event::Request(request(1, &f.client)), None);
        assert_eq!(queue.len(), 1, "not running yet: queued");
        assert_eq!(core.pending_requests(), 0);
        drop(queue.drain());

        core.mark_running();
        core.deliver(Event::Request(request(1, &f.client)), None);
        assert!(queue.is_empty(), "handled here");
        assert_eq!(core.pending_requests(), 1, "the engine has it on return");

        queue.send(CoreInput::Event(Event::Tick, None)).unwrap();
        core.deliver(Event::Request(request(2, &f.client)), None);
        assert_eq!(core.pending_requests(), 1, "not ahead of the queued input");
        let queued = events(&queue);
        assert!(matches!(
            queued.as_slice(),
            [Event::Tick, Event::Request(r)] if r.request.req_seq == 2
        ));
    }

    /// However the core thread ends (shutdown, or a panic elsewhere while running the core),
    /// the core is dropped with it: the service thread's queue closes, so that thread ends
    /// and the server can stop; later inputs are refused.
    #[test]
    fn the_core_is_dropped_when_its_thread_ends_even_after_a_panic() {
        let f = fixture();
        for panicked in [false, true] {
            let (core, queue, exec) = core_handle(&f);
            let thread = {
                let core = core.clone();
                std::thread::spawn(move || core.run())
            };
            if panicked {
                core.poison();
                // The core thread finds the poison at its next round (at most 100 ms away).
                queue.wake();
            } else {
                queue.send(CoreInput::Shutdown).unwrap();
            }
            thread.join().unwrap();
            assert!(
                matches!(
                    exec.recv_timeout(std::time::Duration::from_secs(10)),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected)
                ),
                "the service thread's queue closed (panicked: {panicked})"
            );
            core.deliver(Event::Request(request(1, &f.client)), None);
            assert!(queue.is_empty(), "refused once the core is gone");
        }
    }

    #[test]
    fn a_batch_delivers_the_valid_and_rejects_the_rest_exactly() {
        let f = fixture();
        let (v, rx) = verifier(&f, f.config.clone());
        // A leader's batch carrying a request with a forged client signature: the leader's
        // valid signature covers it, so the leader is blamed.
        let bad_request = request(2, &f.replicas[1]);
        let body = PrePrepare {
            view: 0,
            seq: 1,
            batch_digest: batch_digest(std::slice::from_ref(&bad_request)),
            batch: vec![bad_request.clone()].into(),
        };
        let pre_prepare = Message::PrePrepare(Signed {
            from: 0,
            sig: f.replicas[0].sign(&body.signing_bytes()),
            body,
        });
        let inputs = vec![
            Inbound::Message {
                msg: prepare(&f.replicas[1], 1, 1),
                permit: permit(),
            },
            Inbound::Message {
                msg: prepare(&f.replicas[1], 2, 1),
                permit: permit(),
            },
            Inbound::Request {
                req: request(1, &f.client),
                permit: permit(),
            },
            Inbound::Request {
                req: bad_request,
                permit: permit(),
            },
            Inbound::Message {
                msg: pre_prepare,
                permit: permit(),
            },
        ];
        let jobs: Vec<VerifyJob> = inputs.into_iter().filter_map(|i| v.check(i)).collect();
        assert_eq!(jobs.len(), 5, "every input carries a signature");
        assert!(rx.is_empty(), "nothing reaches the core before the pool");
        v.verify(jobs);
        let got = events(&rx);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[0], Event::Message(Message::Prepare(v)) if v.from == 1));
        assert!(matches!(&got[1], Event::Request(r) if r.request.req_seq == 1));
        assert_eq!(got[2], Event::ProvenFault { from: 0, view: 0 });
        let text = v.metrics.render();
        for reason in ["bad_signature", "bad_client_auth"] {
            assert!(
                text.contains(&format!("reason=\"{reason}\"")),
                "{reason}: {text}"
            );
        }
        // Valid signatures are cached (the prepare, the request, the leader's signature on its
        // batch): a request seen again inside a pre-prepare is not checked again.
        assert_eq!(v.cache.len(), 3);
    }

    #[test]
    fn inputs_without_signatures_reach_the_core_without_the_pool() {
        let f = fixture();
        // Crash mode: replicas' votes are not signed (the link binds the sender).
        let crash = Config {
            request_macs: true,
            ..Config::for_replicas(4, shieldwall_core::FaultModel::Crash)
        };
        let (v, rx) = verifier(&f, crash);
        let vote = commit(&f.replicas[1], 1, 1);
        assert!(v
            .check(Inbound::Message {
                msg: vote,
                permit: permit()
            })
            .is_none());
        // A MAC-authenticated request, valid and with a wrong MAC for replica 3.
        let macs = |req: &Request, corrupt: bool| {
            let bytes = req.signing_bytes();
            let mut macs = Vec::new();
            for r in 0..4 {
                let mut mac = f.client.mac(Principal::Replica(r), &bytes);
                if corrupt && r == 3 {
                    mac[0] ^= 1;
                }
                macs.extend_from_slice(&mac);
            }
            RequestAuth::Macs(macs.into())
        };
        for (seq, corrupt) in [(1, false), (2, true)] {
            let mut req = request(seq, &f.client);
            req.auth = macs(&req.request, corrupt);
            assert!(v
                .check(Inbound::Request {
                    req,
                    permit: permit()
                })
                .is_none());
        }
        let got = events(&rx);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], Event::Message(Message::Commit(c)) if c.from == 1));
        assert!(matches!(&got[1], Event::Request(r) if r.request.req_seq == 1));
        assert!(v.metrics.render().contains("reason=\"bad_client_mac\""));
        assert!(v.cache.is_empty(), "no signature was verified");
    }

    #[test]
    fn commits_are_checked_by_their_mac_on_the_connection_task() {
        let f = fixture();
        let (v, rx) = verifier(&f, f.config.clone());
        let genuine = v.check(Inbound::Message {
            msg: commit(&f.replicas[1], 1, 1),
            permit: permit(),
        });
        assert!(genuine.is_none(), "a valid MAC needs no pool");
        // Replica 1's MACs under replica 2's name: judged (and counted) on the pool.
        let job = v.check(Inbound::Message {
            msg: commit(&f.replicas[1], 2, 1),
            permit: permit(),
        });
        v.verify(vec![job.expect("a bad MAC goes to the pool to be judged")]);
        let got = events(&rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(matches!(&got[0], Event::Message(Message::Commit(c)) if c.from == 1));
        assert!(v.metrics.render().contains("reason=\"bad_replica_mac\""));
        assert!(v.cache.is_empty(), "no signature was verified");
    }

    #[test]
    fn a_malformed_message_is_judged_on_the_pool_not_the_connection_task() {
        let f = fixture();
        let (v, rx) = verifier(&f, f.config.clone());
        // The leader signs a batch whose digest does not match it.
        let body = PrePrepare {
            view: 0,
            seq: 1,
            batch_digest: Digest([9; 32]),
            batch: vec![request(1, &f.client)].into(),
        };
        let pre_prepare = Message::PrePrepare(Signed {
            from: 0,
            sig: f.replicas[0].sign(&body.signing_bytes()),
            body,
        });
        let job = v.check(Inbound::Message {
            msg: pre_prepare,
            permit: permit(),
        });
        let job = job.expect("queued for the pool");
        assert!(rx.is_empty(), "nothing judged yet");
        assert!(
            !v.metrics.render().contains("digest_mismatch"),
            "nothing judged yet"
        );
        v.verify(vec![job]);
        let got = events(&rx);
        assert!(got.is_empty(), "{got:?}");
        let text = v.metrics.render();
        assert!(text.contains("reason=\"digest_mismatch\""), "{text}");
    }

    #[test]
    fn settled_votes_are_dropped_unchecked() {
        let f = fixture();
        let (v, rx) = verifier(&f, f.config.clone());
        v.settled.set(SettledVotes {
            view: 0,
            executed: 2,
            prepared: 4,
            committed: 4,
        });
        let jobs = [4, 5]
            .into_iter()
            .filter_map(|seq| {
                v.check(Inbound::Message {
                    msg: prepare(&f.replicas[1], 1, seq),
                    permit: permit(),
                })
            })
            .collect();
        v.verify(jobs);
        let got: Vec<u64> = events(&rx)
            .into_iter()
            .map(|e| match e {
                Event::Message(Message::Prepare(v)) => v.body.seq,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [5],
            "the prepare for 4 is settled, the one for 5 is not"
        );
        assert_eq!(
            v.cache.len(),
            1,
            "only the unsettled vote's signature was checked"
        );
        assert!(
            v.metrics
                .render()
                .contains("shieldwall_votes_settled_total{replica=\"3\"} 1"),
            "{}",
            v.metrics.render()
        );
    }
}
