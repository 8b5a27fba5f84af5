//! The replica server: one replica of a cluster, serving peers and clients over TCP.
//!
//! Threads: a tokio runtime for sockets (accepting, reading, writing, reconnecting), a pool of
//! verification threads, one thread for the protocol core and one for the service, and in
//! durable mode one for storage (see [`storage`]). Data flows socket -> decode -> verify pool
//! -> core -> (storage | peers' queues | service | clients' queues), and every queue is
//! bounded (see [`conn`] for how).

mod conn;
mod core;
mod core_queue;
mod storage;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use shieldwall_core::{Config, Durability, Principal, Replica, ReplicaId, MAC_BYTES};
use shieldwall_crypto::pool::BatchPool;
use shieldwall_crypto::{KeyPair, NodeAuth, VerifiedCache};
use tokio::sync::Semaphore;
use tracing::info;

use self::conn::{accept_loop, start_peer_links, ClientRouter, NetContext, PeerLinks, VerifyJob};
use self::core::{
    run_executor, Clock, CoreHandle, CoreInput, CoreParts, ExecJob, ReadJob, SharedService,
};
use self::core_queue::CoreQueue;
use self::storage::{run_storage, StorageJob, STORAGE_QUEUE_JOBS};
use crate::config::ClusterConfig;
use crate::http::{self, HttpContent};
use crate::metrics::Metrics;
use crate::service::Service;

/// Signatures remembered as verified (32 bytes each, about 2 MiB with the index).
const VERIFIED_CACHE_ENTRIES: usize = 1 << 16;

/// Bounds on what a replica holds for its peers and clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest frame from a peer (a state-transfer reply carries a snapshot).
    pub peer_frame_bytes_max: usize,
    /// Received, not yet handled bytes per peer (at least two frames).
    pub peer_budget_bytes: usize,
    /// Frames queued for one peer before new ones are dropped.
    pub peer_queue_frames: usize,
    /// Bytes queued for one peer before new frames are dropped.
    pub peer_queue_bytes_max: usize,
    /// Received, not yet handled bytes per client key.
    pub client_budget_bytes: usize,
    /// Replies queued for one client connection before new ones are dropped.
    pub client_queue_frames: usize,
    /// Bytes of replies queued for one client connection before new ones are dropped.
    pub client_queue_bytes_max: usize,
    /// Open client connections.
    pub client_connections_max: usize,
    /// Open connections of one client key (replies go to its latest one).
    pub client_connections_per_key_max: usize,
    /// Connections in their handshake at once (the rest are closed at once).
    pub handshakes_max: usize,
    /// Connections in their handshake at once from one source address.
    pub handshakes_per_ip_max: usize,
    /// Read-only requests waiting for the service before new ones are dropped.
    pub read_queue_max: usize,
    /// Bytes of read-only requests waiting for the service before new ones are dropped.
    pub read_queue_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            peer_frame_bytes_max: 64 << 20,
            peer_budget_bytes: 128 << 20,
            peer_queue_frames: 16_384,
            peer_queue_bytes_max: 128 << 20,
            client_budget_bytes: 8 << 20,
            client_queue_frames: 8_192,
            client_queue_bytes_max: 16 << 20,
            client_connections_max: 4_096,
            client_connections_per_key_max: 8,
            handshakes_max: 256,
            handshakes_per_ip_max: 32,
            read_queue_max: 65_536,
            read_queue_bytes_max: 64 << 20,
        }
    }
}

impl Limits {
    /// Largest frame from a client: a maximal request, a MAC per replica and the envelope.
    fn client_frame_bytes(&self, protocol: &Config) -> usize {
        protocol.request_bytes_max as usize + MAC_BYTES * protocol.n as usize + 4096
    }
}

/// How to run a replica.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// This replica's index in the cluster file.
    pub id: ReplicaId,
    /// Its secret keys.
    pub keys: KeyPair,
    /// Listen here instead of the cluster file's address (e.g. `0.0.0.0:7000` in a container).
    pub listen: Option<String>,
    /// Serve HTTP here instead of the cluster file's `http` address.
    pub http_listen: Option<String>,
    /// Verification threads (default: the number of CPUs).
    pub verify_threads: usize,
    /// Threads for socket IO.
    pub io_threads: usize,
    /// The replica ran before. In memory mode (and in durable mode when its data directory
    /// holds no saved state, e.g. a wiped disk) it lost its state: it recovers from its peers
    /// and casts no vote until a view change (docs/adr/002-amnesia-recovery.md).
    pub restarted: bool,
    /// This replica's data directory. Durable mode requires it: the write-ahead log is kept in
    /// `<data>/wal` and the stable checkpoints in `<data>/snapshots`.
    pub data_dir: Option<PathBuf>,
    /// Bounds.
    pub limits: Limits,
}

impl ReplicaOptions {
    /// Defaults for replica `id`.
    pub fn new(id: ReplicaId, keys: KeyPair) -> ReplicaOptions {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        ReplicaOptions {
            id,
            keys,
            listen: None,
            http_listen: None,
            verify_threads: cpus,
            io_threads: cpus.clamp(1, 4),
            restarted: false,
            data_dir: None,
            limits: Limits::default(),
        }
    }
}

/// Why a replica could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration for this replica.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The error.
        source: std::io::Error,
    },
    /// Internal failure (thread or runtime could not start).
    #[error("{0}")]
    Internal(String),
    /// The replica stopped on an unrecoverable error.
    #[error("replica stopped: {0}")]
    Fatal(String),
}

/// What `GET /status` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Replica index.
    pub id: ReplicaId,
    /// Current view.
    pub view: u64,
    /// Leader of the current view.
    pub leader: ReplicaId,
    /// `normal`, `view-changing` or `recovering`.
    pub status: String,
    /// Last executed sequence number.
    pub last_executed: u64,
    /// Last stable checkpoint.
    pub stable_checkpoint: u64,
    /// Requests held, not yet executed.
    pub pending_requests: u64,
    /// Outbound peer links that are up.
    pub peers_connected: u32,
    /// Replicas in the cluster.
    pub n: u32,
    /// Faults tolerated.
    pub f: u32,
    /// `byzantine` or `crash`.
    pub fault_model: String,
    /// The highest sequence number this replica knows to be committed (by itself or, as
    /// peers showed it, by others).
    #[serde(default)]
    pub known_committed: u64,
    /// A state transfer is under way.
    #[serde(default)]
    pub state_transfer: bool,
    /// Replicas in a quorum (this one included).
    #[serde(default)]
    pub quorum: u32,
    /// Sequence numbers `last_executed` may trail `known_committed` by and still be ready (the
    /// checkpoint interval).
    #[serde(default)]
    pub lag_max: u64,
}

impl ReplicaStatus {
    /// Whether this replica is ready to serve as a full member (`GET /ready`, `shieldwall
    /// health`): its links to a quorum's worth of peers are up, it is in normal operation (not
    /// changing view, not recovering), no state transfer is under way, and it executed within
    /// `lag_max` of the highest committed point it knows. `Err` says what is missing.
    /// Docs: docs/adr/010-containers.md.
    pub fn readiness(&self) -> Result<(), String> {
        let peers_needed = self.quorum.saturating_sub(1);
        if self.peers_connected < peers_needed {
            return Err(format!(
                "{} of {} peers connected; a quorum needs {peers_needed}",
                self.peers_connected,
                self.n.saturating_sub(1)
            ));
        }
        if self.status != "normal" {
            return Err(format!("{} (view {})", self.status, self.view));
        }
        if self.state_transfer {
            return Err(format!(
                "state transfer under way (executed {}, committed {})",
                self.last_executed, self.known_committed
            ));
        }
        let lag = self.known_committed.saturating_sub(self.last_executed);
        if lag > self.lag_max {
            return Err(format!(
                "behind: executed {}, committed {} (more than {} behind)",
                self.last_executed, self.known_committed, self.lag_max
            ));
        }
        Ok(())
    }

    /// [`ReplicaStatus::readiness`], and caught up with its peers too: `peers_executed` holds
    /// the `last_executed` its peers reported, and at least f+1 of them must have answered,
    /// the (f+1)-th highest (one a correct replica reached) no more than `lag_max` ahead. A
    /// replica that just restarted knows nothing of what the others did meanwhile; this is how
    /// it finds out.
    pub fn readiness_with_peers(&self, peers_executed: &[u64]) -> Result<(), String> {
        self.readiness()?;
        let needed = self.f as usize + 1;
        let mut executed = peers_executed.to_vec();
        executed.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&reached) = executed.get(needed - 1) else {
            return Err(format!(
                "{} peers reported their progress; {needed} needed to tell it is caught up",
                executed.len()
            ));
        };
        if self.last_executed.saturating_add(self.lag_max) < reached {
            return Err(format!(
                "behind its peers: executed {}, {needed} peers executed {reached}",
                self.last_executed
            ));
        }
        Ok(())
    }
}

/// The latest status, published by the core thread.
#[derive(Debug, Default)]
pub(crate) struct StatusCell(Mutex<ReplicaStatus>);

impl StatusCell {
    fn set(&self, s: ReplicaStatus) {
        if let Ok(mut g) = self.0.lock() {
            *g = s;
        }
    }

    fn get(&self) -> ReplicaStatus {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

struct Observer {
    /// The HTTP addresses of the peers that have one (readiness compares progress with them).
    peers_http: Vec<String>,
    metrics: Arc<Metrics>,
    status: Arc<StatusCell>,
    links: Arc<PeerLinks>,
    queues: Queues,
}

#[derive(Clone)]
struct Queues {
    verify: shieldwall_crypto::pool::Submitter<VerifyJob>,
    core: Arc<CoreQueue<CoreInput>>,
    exec: Receiver<ExecJob>,
    read: Receiver<ReadJob>,
    storage: Option<Receiver<StorageJob>>,
}

impl HttpContent for Observer {
    fn metrics(&self) -> String {
        let m = &self.metrics;
        m.verify_queue.set(self.queues.verify.queued() as i64);
        m.core_queue.set(self.queues.core.len() as i64);
        m.execute_queue
            .set((self.queues.exec.len() + self.queues.read.len()) as i64);
        if let Some(s) = &self.queues.storage {
            m.storage_queue.set(s.len() as i64);
        }
        self.links.export();
        m.render()
    }

    fn status_json(&self) -> String {
        serde_json::to_string(&self.status.get()).unwrap_or_default()
    }

    fn status(&self) -> ReplicaStatus {
        self.status.get()
    }

    fn peers_http(&self) -> Vec<String> {
        self.peers_http.clone()
    }
}

/// A running replica. Dropping it stops it.
pub struct ReplicaServer {
    id: ReplicaId,
    address: SocketAddr,
    http_address: Option<SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
    core_tx: Arc<CoreQueue<CoreInput>>,
    fatal_rx: Receiver<String>,
    threads: Vec<JoinHandle<()>>,
    verify: Option<BatchPool<VerifyJob>>,
    status: Arc<StatusCell>,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
}

/// Reports a thread's end as fatal unless the replica is stopping.
struct ExitGuard {
    name: String,
    fatal: Sender<String>,
    stopping: Arc<AtomicBool>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if !self.stopping.load(Ordering::Relaxed) {
            let how = if std::thread::panicking() {
                "panicked"
            } else {
                "stopped"
            };
            tracing::error!(thread = %self.name, "thread {how}");
            let _ = self.fatal.send(format!("thread {} {how}", self.name));
        }
    }
}

impl std::fmt::Debug for ReplicaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaServer")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ReplicaServer {
    /// Bind the listeners and start the replica. Returns once it accepts connections.
    pub fn start(
        cluster: &ClusterConfig,
        options: ReplicaOptions,
        service: Box<dyn Service>,
    ) -> Result<ReplicaServer, ServerError> {
        let id = options.id;
        let entry = cluster.replicas.get(id as usize).ok_or_else(|| {
            ServerError::Config(format!(
                "replica id {id} is not in the cluster file (it has replicas 0..{})",
                cluster.n()
            ))
        })?;
        if options.keys.public() != entry.keys {
            return Err(ServerError::Config(format!(
                "the key file does not belong to replica {id}: its public key differs from \
                 the cluster file's"
            )));
        }
        let protocol = cluster.protocol.clone();
        let keyring = cluster.keyring();
        let auth = Arc::new(NodeAuth::new(
            Principal::Replica(id),
            options.keys.clone(),
            keyring.clone(),
        ));
        let clock = Clock::new();
        let mut initial = Vec::new();
        let mut storage = None;
        let mut recovered = None;
        if protocol.durability == Durability::Durable {
            let data = options.data_dir.as_ref().ok_or_else(|| {
                ServerError::Config(
                    "the cluster file says durability = \"durable\": a data directory is \
                     required"
                        .into(),
                )
            })?;
            let (opened, on_disk) = storage::open(data).map_err(ServerError::Fatal)?;
            storage = Some(opened);
            if !on_disk.is_empty() {
                recovered = Some(on_disk);
            }
        }
        let mode = match (&recovered, options.restarted) {
            (Some(_), _) => "recovered from its disk",
            (None, true) => "restarted without its state: recovering from its peers",
            (None, false) => "fresh",
        };
        let replica = match recovered {
            Some(on_disk) => {
                let checkpoint_seq = on_disk.checkpoint.as_ref().map(|c| c.checkpoint.seq);
                let records = on_disk.records.len();
                let r = Replica::recover(
                    protocol.clone(),
                    id,
                    auth.clone(),
                    clock.now_ms(),
                    on_disk.checkpoint,
                    on_disk.records,
                    &mut initial,
                )
                .map_err(|e| {
                    ServerError::Fatal(format!("recovering from the data directory: {e}"))
                })?;
                info!(
                    ?checkpoint_seq,
                    records,
                    view = r.view(),
                    last_executed_after_replay = r.last_executed(),
                    "recovered the saved state"
                );
                r
            }
            None if options.restarted => {
                Replica::restarted(protocol.clone(), id, auth.clone(), clock.now_ms())
                    .map_err(|e| ServerError::Config(e.to_string()))?
            }
            None => Replica::new(protocol.clone(), id, auth.clone())
                .map_err(|e| ServerError::Config(e.to_string()))?,
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.io_threads.max(1))
            .thread_name(format!("replica-{id}-io"))
            .enable_all()
            .build()
            .map_err(|e| ServerError::Internal(format!("cannot start the IO runtime: {e}")))?;
        let listen = options
            .listen
            .clone()
            .unwrap_or_else(|| entry.address.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&listen))
            .map_err(|source| ServerError::Bind {
                address: listen.clone(),
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        let http_listen = options.http_listen.clone().or_else(|| entry.http.clone());
        let http_listener = match &http_listen {
            Some(a) => Some(runtime.block_on(tokio::net::TcpListener::bind(a)).map_err(
                |source| ServerError::Bind {
                    address: a.clone(),
                    source,
                },
            )?),
            None => None,
        };
        let http_address = http_listener.as_ref().and_then(|l| l.local_addr().ok());

        let metrics = Arc::new(Metrics::new(id));
        let status = Arc::new(StatusCell::default());
        let router = Arc::new(ClientRouter::new(auth.clone(), metrics.clone()));
        let core_tx = Arc::new(CoreQueue::<CoreInput>::default());
        let core = Arc::new(CoreHandle::new(core_tx.clone()));
        let (exec_tx, exec_rx) = crossbeam_channel::unbounded::<ExecJob>();
        let (read_tx, read_rx) =
            crossbeam_channel::bounded::<ReadJob>(options.limits.read_queue_max);
        let (fatal_tx, fatal_rx) = crossbeam_channel::unbounded::<String>();
        let (storage_tx, storage_rx) = match storage {
            Some(_) => {
                let (tx, rx) = crossbeam_channel::bounded::<StorageJob>(STORAGE_QUEUE_JOBS);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };

        let settled = Arc::new(conn::SettledCell::default());
        let verifier = Arc::new(conn::Verifier {
            config: protocol.clone(),
            auth: auth.clone(),
            cache: VerifiedCache::new(VERIFIED_CACHE_ENTRIES),
            settled: settled.clone(),
            core: core.clone(),
            metrics: metrics.clone(),
        });
        let verify = {
            let verifier = verifier.clone();
            BatchPool::new(
                &format!("replica-{id}-verify"),
                options.verify_threads,
                256,
                move |jobs| verifier.verify(jobs),
            )
        };
        let limits = Limits {
            peer_budget_bytes: options
                .limits
                .peer_budget_bytes
                .max(2 * options.limits.peer_frame_bytes_max),
            ..options.limits.clone()
        };
        let client_frame_bytes_max = limits.client_frame_bytes(&protocol);
        let ctx = Arc::new(NetContext {
            me: id,
            cluster_id: cluster.cluster_id,
            n: cluster.n(),
            auth: auth.clone(),
            metrics: metrics.clone(),
            verifier,
            verify: verify.submitter(),
            router: router.clone(),
            peer_budgets: (0..cluster.n())
                .map(|_| Arc::new(Semaphore::new(limits.peer_budget_bytes)))
                .collect(),
            client_budgets: (0..keyring.clients())
                .map(|_| {
                    Arc::new(Semaphore::new(
                        limits.client_budget_bytes.max(2 * client_frame_bytes_max),
                    ))
                })
                .collect(),
            handshakes: Arc::new(Semaphore::new(limits.handshakes_max)),
            handshakes_by_ip: Mutex::new(HashMap::new()),
            inbound_peers: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            limits: limits.clone(),
            client_frame_bytes_max,
        });
        let addresses: Vec<String> = cluster.replicas.iter().map(|r| r.address.clone()).collect();
        let links = {
            let _guard = runtime.enter();
            Arc::new(start_peer_links(&ctx, &addresses))
        };
        runtime.spawn(accept_loop(listener, ctx.clone()));
        if let Some(l) = http_listener {
            let observer = Arc::new(Observer {
                peers_http: cluster
                    .replicas
                    .iter()
                    .filter(|r| r.id != id)
                    .filter_map(|r| r.http.clone())
                    .collect(),
                metrics: metrics.clone(),
                status: status.clone(),
                links: links.clone(),
                queues: Queues {
                    verify: verify.submitter(),
                    core: core_tx.clone(),
                    exec: exec_rx.clone(),
                    read: read_rx.clone(),
                    storage: storage_rx.clone(),
                },
            });
            runtime.spawn(http::serve(l, observer));
        }

        let read_bytes = Arc::new(AtomicUsize::new(0));
        let service = Arc::new(SharedService::new(service));
        core.install(CoreParts {
            replica,
            clock,
            links,
            router: router.clone(),
            exec_tx,
            service: service.clone(),
            read_tx,
            read_bytes: read_bytes.clone(),
            read_bytes_max: limits.read_queue_bytes_max,
            metrics: metrics.clone(),
            status: status.clone(),
            storage_tx,
            initial,
            settled,
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            // A thread that ends while the replica is not stopping (a panic, a closed channel)
            // is fatal: report it rather than leave a replica that runs but never executes.
            let guard = ExitGuard {
                name: name.clone(),
                fatal: fatal_tx.clone(),
                stopping: stopping.clone(),
            };
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let _guard = guard;
                    f()
                })
                .map_err(|e| ServerError::Internal(format!("cannot start a thread: {e}")))
        };
        let mut threads = vec![spawn(
            format!("replica-{id}-core"),
            Box::new(move || core.run()),
        )?];
        let service_thread = {
            let core_tx = core_tx.clone();
            let fatal_tx = fatal_tx.clone();
            move || {
                run_executor(
                    id, service, exec_rx, read_rx, read_bytes, core_tx, router, fatal_tx,
                )
            }
        };
        threads.push(spawn(
            format!("replica-{id}-service"),
            Box::new(service_thread),
        )?);
        if let (Some(storage), Some(rx)) = (storage, storage_rx) {
            let (core_tx, metrics, fatal_tx) = (core_tx.clone(), metrics.clone(), fatal_tx.clone());
            threads.push(spawn(
                format!("replica-{id}-storage"),
                Box::new(move || run_storage(storage, rx, core_tx, metrics, fatal_tx)),
            )?);
        }
        info!(
            replica = id,
            %address,
            http = ?http_address,
            n = cluster.n(),
            f = protocol.f,
            fault_model = %protocol.fault_model,
            durability = %protocol.durability,
            mode,
            "replica started"
        );
        Ok(ReplicaServer {
            id,
            address,
            http_address,
            runtime: Some(runtime),
            core_tx,
            fatal_rx,
            threads,
            verify: Some(verify),
            status,
            metrics,
            stopping,
        })
    }

    /// The address peers and clients connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The HTTP address, if one is served.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_address
    }

    /// The latest status (refreshed every 100 ms).
    pub fn status(&self) -> ReplicaStatus {
        self.status.get()
    }

    /// The metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Block until the replica stops on a fatal error (it never stops otherwise), or `timeout`
    /// passes (`Ok`).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<(), ServerError> {
        let got = match timeout {
            Some(t) => self.fatal_rx.recv_timeout(t),
            None => self
                .fatal_rx
                .recv()
                .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(why) => Err(ServerError::Fatal(why)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err(ServerError::Fatal("the replica's threads stopped".into()))
            }
        }
    }

    /// Stop every thread and close every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.core_tx.send(CoreInput::Shutdown);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(v) = self.verify.take() {
            v.shutdown();
        }
    }
}

impl Drop for ReplicaServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::ReplicaStatus;

    fn in_sync() -> ReplicaStatus {
        ReplicaStatus {
            status: "normal".into(),
            last_executed: 100,
            known_committed: 100,
            peers_connected: 3,
            n: 4,
            f: 1,
            quorum: 3,
            lag_max: 64,
            ..ReplicaStatus::default()
        }
    }

    #[test]
    fn ready_only_when_connected_normal_and_caught_up() {
        assert_eq!(in_sync().readiness(), Ok(()));
        let s = ReplicaStatus {
            peers_connected: 2,
            known_committed: 164,
            ..in_sync()
        };
        assert_eq!(s.readiness(), Ok(()), "a quorum of links, lag at the limit");
        let s = ReplicaStatus {
            peers_connected: 1,
            ..in_sync()
        };
        assert!(s.readiness().unwrap_err().contains("1 of 3 peers"));
        let s = ReplicaStatus {
            status: "view-changing".into(),
            view: 3,
            ..in_sync()
        };
        assert_eq!(s.readiness().unwrap_err(), "view-changing (view 3)");
        let s = ReplicaStatus {
            status: "recovering".into(),
            ..in_sync()
        };
        assert!(s.readiness().unwrap_err().starts_with("recovering"));
        let s = ReplicaStatus {
            state_transfer: true,
            ..in_sync()
        };
        assert!(s.readiness().unwrap_err().contains("state transfer"));
        let s = ReplicaStatus {
            known_committed: 165,
            ..in_sync()
        };
        assert!(s.readiness().unwrap_err().starts_with("behind"));
    }

    #[test]
    fn ready_only_when_f_plus_1_peers_are_not_far_ahead() {
        let s = in_sync();
        assert_eq!(s.readiness_with_peers(&[100, 164, 90]), Ok(()));
        assert_eq!(
            s.readiness_with_peers(&[1_000, 120, 90]),
            Ok(()),
            "one peer far ahead may be lying"
        );
        assert_eq!(
            s.readiness_with_peers(&[1_000, 165, 90]).unwrap_err(),
            "behind its peers: executed 100, 2 peers executed 165"
        );
        assert!(s
            .readiness_with_peers(&[100])
            .unwrap_err()
            .contains("1 peers reported"));
        let s = ReplicaStatus {
            status: "view-changing".into(),
            ..in_sync()
        };
        assert!(s.readiness_with_peers(&[100, 100, 100]).is_err());
    }

    #[test]
    fn statuses_without_the_readiness_fields_still_parse() {
        let old = r#"{"id":1,"view":0,"leader":0,"status":"normal","last_executed":5,
            "stable_checkpoint":0,"pending_requests":0,"peers_connected":3,"n":4,"f":1,
            "fault_model":"byzantine"}"#;
        let s: ReplicaStatus = serde_json::from_str(old).unwrap();
        assert_eq!(
            (s.known_committed, s.quorum, s.state_transfer),
            (0, 0, false)
        );
    }
}
