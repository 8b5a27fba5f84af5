//! Connections of a replica: outbound links to peers (one dialled connection per peer, which
//! carries this replica's messages to it), the listener (peers' links and clients), reply
//! routing to clients, and the verification stage between the sockets and the core.
//!
//! Bounds: a peer or client key may hold at most its byte budget of received, not yet handled
//! frames (a semaphore per principal, shared by all its connections; the permit travels with
//! the message through verification and the core). Once it is spent, its connections are not
//! read until the core catches up: a flooding principal slows down only itself. Outbound
//! queues are bounded per peer and per client connection; when one is full the frame is
//! dropped and counted, and the core never waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;
use shieldwall_core::verify::{verify_message, verify_request, Reject};
use shieldwall_core::{Authenticator, Config, Event, Message, Principal, Reply, SignedRequest};
use shieldwall_crypto::{client_key_index, NodeAuth, Recorder, VerifiedCache};
use shieldwall_wire::{encode_reply, Frame, MacedReply};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

use super::core::CoreInput;
use crate::metrics::Metrics;
use crate::net::{handshake, write_loop, FrameReader, Handshake, HANDSHAKE_FRAME_BYTES};

/// First and last delay between reconnection attempts to a peer.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A job for the verify pool.
#[derive(Debug)]
pub(crate) enum VerifyJob {
    Message {
        msg: Message,
        permit: OwnedSemaphorePermit,
    },
    Request {
        req: SignedRequest,
        permit: OwnedSemaphorePermit,
    },
}

/// Verify a batch of jobs (on a pool thread) and pass what is valid to the core.
///
/// Every job's structure is checked first with a [`Recorder`] that collects the signatures it
/// carries; then the signatures of the whole batch are verified together (batch verification,
/// already-verified ones skipped via `cache`). A job whose check fails either way is checked
/// again with the real authenticator to count the exact reason (faulty input only).
pub(crate) fn verify_jobs(
    jobs: Vec<VerifyJob>,
    config: &Config,
    auth: &NodeAuth,
    cache: &VerifiedCache,
    core: &Sender<CoreInput>,
    metrics: &Metrics,
) {
    let mut sigs = Vec::new();
    let mut candidates = Vec::with_capacity(jobs.len());
    for job in jobs {
        let rec = Recorder::new(auth);
        let structure = match &job {
            VerifyJob::Message { msg, .. } => verify_message(config, &rec, msg).map_err(|_| ()),
            VerifyJob::Request { req, .. } => verify_request(config, &rec, req).map_err(|r| {
                metrics.reject(r.as_str());
            }),
        };
        match (structure, job) {
            (Ok(()), job) => {
                let start = sigs.len();
                sigs.extend(rec.take());
                candidates.push((job, start..sigs.len()));
            }
            (Err(()), VerifyJob::Message { msg, .. }) => {
                reject_message(config, auth, msg, core, metrics)
            }
            (Err(()), VerifyJob::Request { .. }) => {}
        }
    }
    let verdicts = cache.verify_each(auth, &sigs);
    for (job, range) in candidates {
        let valid = verdicts[range].iter().all(|ok| *ok);
        match job {
            VerifyJob::Message { msg, permit } if valid => {
                let _ = core.send(CoreInput::Event(Event::Message(msg), Some(permit)));
            }
            VerifyJob::Message { msg, .. } => reject_message(config, auth, msg, core, metrics),
            VerifyJob::Request { req, permit } if valid => {
                let _ = core.send(CoreInput::Event(Event::Request(req), Some(permit)));
            }
            VerifyJob::Request { .. } => metrics.reject(Reject::BadClientAuth.as_str()),
        }
    }
}

/// Check an invalid message with the real authenticator: count why, and report the signer
/// whose valid signature covers invalid content.
fn reject_message(
    config: &Config,
    auth: &NodeAuth,
    msg: Message,
    core: &Sender<CoreInput>,
    metrics: &Metrics,
) {
    match verify_message(config, auth, &msg) {
        // Only reachable if a signature verified singly but not in a batch: contract breach
        // of the authenticator; trust the single verification.
        Ok(()) => {
            let _ = core.send(CoreInput::Event(Event::Message(msg), None));
        }
        Err(rejection) => {
            debug!(
                from = msg.from(),
                kind = msg.kind(),
                reason = rejection.reason.as_str(),
                "rejected message"
            );
            metrics.reject(rejection.reason.as_str());
            if let Some((from, view)) = rejection.blame {
                let _ = core.send(CoreInput::Event(Event::ProvenFault { from, view }, None));
            }
        }
    }
}

/// The outbound queue and link state of one peer.
#[derive(Debug)]
struct PeerLink {
    tx: mpsc::Sender<Bytes>,
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
    /// Queue `bytes` for `to`; a full queue drops them (counted).
    pub(crate) fn send(&self, to: u32, bytes: Bytes) {
        if let Some(Some(link)) = self.links.get(to as usize) {
            if link.tx.try_send(bytes).is_err() {
                self.metrics.drop_frame("peer");
            }
        }
    }

    /// Queue the same bytes for every peer.
    pub(crate) fn broadcast(&self, bytes: &Bytes) {
        for (j, link) in self.links.iter().enumerate() {
            if j as u32 != self.me && link.is_some() {
                self.send(j as u32, bytes.clone());
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
                    .set((l.tx.max_capacity() - l.tx.capacity()) as i64);
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
    pub verify: shieldwall_crypto::pool::Submitter<VerifyJob>,
    pub router: Arc<ClientRouter>,
    pub peer_budgets: Vec<Arc<Semaphore>>,
    pub client_budgets: Vec<Arc<Semaphore>>,
    pub handshakes: Arc<Semaphore>,
    pub limits: super::Limits,
    pub client_frame_bytes_max: usize,
}

impl NetContext {
    fn hs(&self) -> Handshake<'_> {
        Handshake {
            cluster: self.cluster_id,
            me: Principal::Replica(self.me),
            auth: self.auth.as_ref(),
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
                if self.router.connections() >= self.limits.client_connections_max {
                    return Err("too many client connections".into());
                }
                Ok(())
            }
        }
    }
}

/// Start the outbound link to each peer.
pub(crate) fn start_peer_links(
    ctx: &Arc<NetContext>,
    addresses: &[String],
    queue_frames: usize,
) -> PeerLinks {
    let links = addresses
        .iter()
        .enumerate()
        .map(|(j, address)| {
            if j as u32 == ctx.me {
                return None;
            }
            let (tx, rx) = mpsc::channel(queue_frames);
            let connected = Arc::new(AtomicBool::new(false));
            tokio::spawn(dial_peer(
                ctx.clone(),
                j as u32,
                address.clone(),
                rx,
                connected.clone(),
            ));
            Some(PeerLink { tx, connected })
        })
        .collect();
    PeerLinks {
        me: ctx.me,
        links,
        metrics: ctx.metrics.clone(),
    }
}

/// Keep a connection to peer `j` and write its queue into it; reconnect with backoff.
async fn dial_peer(
    ctx: Arc<NetContext>,
    j: u32,
    address: String,
    mut rx: mpsc::Receiver<Bytes>,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = RECONNECT_MIN;
    let mut announced_failure = false;
    loop {
        let attempt = async {
            let stream = TcpStream::connect(&address).await?;
            let _ = stream.set_nodelay(true);
            let (r, mut w) = stream.into_split();
            let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_BYTES);
            let expect = Principal::Replica(j);
            handshake(&mut reader, &mut w, &ctx.hs(), |p| {
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
            Ok((reader, mut w)) => {
                info!(peer = j, %address, "connected to peer");
                announced_failure = false;
                backoff = RECONNECT_MIN;
                connected.store(true, Ordering::Relaxed);
                // The peer never writes on this connection after the handshake; reading
                // notices when it closes.
                let mut reader = reader.into_inner();
                let metrics = ctx.metrics.clone();
                let result = tokio::select! {
                    r = write_loop(&mut w, &mut rx, |n| {
                        metrics.bytes_out.inc_by(n as u64);
                    }) => r,
                    _ = async { let mut b = [0u8; 64]; while tokio::io::AsyncReadExt::read(&mut reader, &mut b).await.is_ok_and(|n| n > 0) {} } => Ok(()),
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
                if rx.is_closed() {
                    return;
                }
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
                debug!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = ctx.handshakes.clone().try_acquire_owned() else {
            ctx.metrics.reject("too_many_handshakes");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (r, mut w) = stream.into_split();
            let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_BYTES);
            let peer = handshake(&mut reader, &mut w, &ctx.hs(), |p| ctx.accept(p)).await;
            drop(slot);
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

/// Read a peer's messages into the verify pool, within the peer's budget.
async fn peer_inbound(
    ctx: Arc<NetContext>,
    j: u32,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
) {
    reader.set_max_frame_bytes(ctx.limits.peer_frame_bytes_max);
    let budget = ctx.peer_budgets[j as usize].clone();
    loop {
        match reader.next().await {
            Ok(Some((Frame::Peer(msg), size))) => {
                ctx.metrics.bytes_in.inc_by(size as u64);
                let Ok(permit) = budget.clone().acquire_many_owned(size as u32).await else {
                    return;
                };
                if ctx
                    .verify
                    .submit(VerifyJob::Message { msg, permit })
                    .is_err()
                {
                    return;
                }
            }
            Ok(Some((f, _))) => {
                debug!(peer = j, "unexpected {} frame from a peer", f.name());
                ctx.metrics.reject("unexpected_frame");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                debug!(peer = j, "closing connection: {e}");
                ctx.metrics.reject(e.as_str());
                return;
            }
        }
    }
}

/// Serve one client connection: requests in (within the client key's budget), replies out.
async fn client_connection(
    ctx: Arc<NetContext>,
    key: u64,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    mut w: tokio::net::tcp::OwnedWriteHalf,
) {
    let (tx, mut rx) = mpsc::channel(ctx.limits.client_queue_frames);
    let conn = ctx.router.register(key, tx);
    ctx.metrics.client_connections.inc();
    let metrics = ctx.metrics.clone();
    let writer = tokio::spawn(async move {
        let _ = write_loop(&mut w, &mut rx, |n| {
            metrics.bytes_out.inc_by(n as u64);
        })
        .await;
    });
    reader.set_max_frame_bytes(ctx.client_frame_bytes_max);
    let budget = ctx.client_budgets[key as usize].clone();
    loop {
        match reader.next().await {
            Ok(Some((Frame::Request(req), size))) => {
                ctx.metrics.bytes_in.inc_by(size as u64);
                ctx.metrics.requests_received.inc();
                if client_key_index(req.request.client) != key {
                    // Requests travel on their own client's connection only.
                    ctx.metrics.reject("wrong_client");
                    continue;
                }
                let Ok(permit) = budget.clone().acquire_many_owned(size as u32).await else {
                    break;
                };
                if ctx
                    .verify
                    .submit(VerifyJob::Request { req, permit })
                    .is_err()
                {
                    break;
                }
            }
            Ok(Some((f, _))) => {
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

/// Where each client key's replies go: its most recent connection.
#[derive(Debug)]
pub(crate) struct ClientRouter {
    auth: Arc<NodeAuth>,
    metrics: Arc<Metrics>,
    routes: Mutex<HashMap<u64, (u64, mpsc::Sender<Bytes>)>>,
    next_conn: AtomicU64,
    open: AtomicUsize,
}

impl ClientRouter {
    pub(crate) fn new(auth: Arc<NodeAuth>, metrics: Arc<Metrics>) -> ClientRouter {
        ClientRouter {
            auth,
            metrics,
            routes: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            open: AtomicUsize::new(0),
        }
    }

    fn register(&self, key: u64, tx: mpsc::Sender<Bytes>) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(key, (id, tx));
        }
        id
    }

    fn unregister(&self, key: u64, conn: u64) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut routes) = self.routes.lock() {
            if routes.get(&key).is_some_and(|(id, _)| *id == conn) {
                routes.remove(&key);
            }
        }
    }

    fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// MAC `reply` for its client and queue it on the client's connection; dropped (the client
    /// retransmits and gets the cached reply) if the client is not connected or its queue is
    /// full.
    pub(crate) fn send(&self, reply: &Reply) {
        let key = client_key_index(reply.client);
        let tx = match self.routes.lock() {
            Ok(routes) => routes.get(&key).map(|(_, tx)| tx.clone()),
            Err(_) => None,
        };
        let Some(tx) = tx else {
            self.metrics.drop_frame("reply_no_connection");
            return;
        };
        let bytes = encode_reply(reply);
        let mac = self.auth.mac(Principal::Client(reply.client), &bytes);
        let frame = Frame::Reply(MacedReply { reply: bytes, mac }).encode();
        if tx.try_send(frame).is_ok() {
            self.metrics.replies_sent.inc();
        } else {
            self.metrics.drop_frame("reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shieldwall_core::message::{
        batch_digest, vote_signing_bytes, Phase, PrePrepare, Signable, Signed, Vote,
    };
    use shieldwall_core::{Digest, Request};
    use shieldwall_crypto::{client_id, KeyPair, Keyring};

    struct Fixture {
        config: Config,
        replicas: Vec<NodeAuth>,
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
                .map(|(i, k)| NodeAuth::new(Principal::Replica(i as u32), k, ring.clone()))
                .collect(),
            client: NodeAuth::new(Principal::Client(client_id(0, 0)), ck, ring),
        }
    }

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    fn commit(signer: &NodeAuth, from: u32, seq: u64) -> Message {
        let body = Vote {
            view: 0,
            seq,
            batch_digest: Digest([1; 32]),
        };
        Message::Commit(Signed {
            from,
            body,
            sig: signer.sign(&vote_signing_bytes(Phase::Commit, &body)),
        })
    }

    fn request(seq: u64, signer: &NodeAuth) -> SignedRequest {
        let request = Request {
            client: client_id(0, 1),
            req_seq: seq,
            read_only: false,
            op: vec![7],
        };
        SignedRequest {
            auth: signer.sign(&request.signing_bytes()),
            request,
        }
    }

    #[test]
    fn a_batch_delivers_the_valid_and_rejects_the_rest_exactly() {
        let f = fixture();
        let me = &f.replicas[3];
        let metrics = Metrics::new(3);
        let cache = VerifiedCache::new(100);
        let (tx, rx) = crossbeam_channel::unbounded();
        // A leader's batch carrying a request with a forged client signature: the leader's
        // valid signature covers it, so the leader is blamed.
        let bad_request = request(2, &f.replicas[1]);
        let body = PrePrepare {
            view: 0,
            seq: 1,
            batch_digest: batch_digest(std::slice::from_ref(&bad_request)),
            batch: vec![bad_request.clone()],
        };
        let pre_prepare = Message::PrePrepare(Signed {
            from: 0,
            sig: f.replicas[0].sign(&body.signing_bytes()),
            body,
        });
        let jobs = vec![
            VerifyJob::Message {
                msg: commit(&f.replicas[1], 1, 1),
                permit: permit(),
            },
            VerifyJob::Message {
                msg: commit(&f.replicas[1], 2, 1),
                permit: permit(),
            },
            VerifyJob::Request {
                req: request(1, &f.client),
                permit: permit(),
            },
            VerifyJob::Request {
                req: bad_request,
                permit: permit(),
            },
            VerifyJob::Message {
                msg: pre_prepare,
                permit: permit(),
            },
        ];
        verify_jobs(jobs, &f.config, me, &cache, &tx, &metrics);
        let got: Vec<Event> = rx
            .try_iter()
            .map(|i| match i {
                CoreInput::Event(e, _) => e,
                CoreInput::Shutdown => panic!("unexpected"),
            })
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[0], Event::Message(Message::Commit(v)) if v.from == 1));
        assert!(matches!(&got[1], Event::Request(r) if r.request.req_seq == 1));
        assert_eq!(got[2], Event::ProvenFault { from: 0, view: 0 });
        let text = metrics.render();
        for reason in ["bad_signature", "bad_client_auth"] {
            assert!(
                text.contains(&format!("reason=\"{reason}\"")),
                "{reason}: {text}"
            );
        }
        // Valid signatures are cached (the commit, the request, the leader's signature on its
        // batch): a request seen again inside a pre-prepare is not checked again.
        assert_eq!(cache.len(), 3);
    }
}
