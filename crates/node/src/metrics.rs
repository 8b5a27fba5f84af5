//! Prometheus metrics of a replica, in the text exposition format.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Everything a replica counts. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Batches executed (including null batches).
    pub committed_batches: Counter,
    /// Requests executed.
    pub executed_requests: Counter,
    /// Client requests received (before verification).
    pub requests_received: Counter,
    /// Replies queued for clients (dropped ones are counted in `dropped`).
    pub replies_queued: Counter,
    /// View changes this replica started.
    pub view_changes: Counter,
    /// Snapshots installed by state transfer.
    pub snapshots_installed: Counter,
    /// Current view.
    pub view: Gauge,
    /// Leader of the current view.
    pub leader: Gauge,
    /// Last executed sequence number.
    pub last_executed: Gauge,
    /// Last stable checkpoint.
    pub stable_checkpoint: Gauge,
    /// 0 normal, 1 view changing, 2 recovering.
    pub status: Gauge,
    /// 1 when the replica is ready (`GET /ready` answers 200), else 0.
    pub ready: Gauge,
    /// Highest sequence number known to be committed.
    pub known_committed: Gauge,
    /// Requests held by the engine and not yet executed.
    pub pending_requests: Gauge,
    /// Jobs waiting in the verify pool.
    pub verify_queue: Gauge,
    /// Inputs waiting for the core thread.
    pub core_queue: Gauge,
    /// Jobs waiting for the service.
    pub execute_queue: Gauge,
    /// Frames queued for each peer.
    pub peer_queue: Family<Labels, Gauge>,
    /// Bytes queued for each peer.
    pub peer_queue_bytes: Family<Labels, Gauge>,
    /// Whether the outbound link to each peer is up.
    pub peer_connected: Family<Labels, Gauge>,
    /// Open client connections.
    pub client_connections: Gauge,
    /// Rejected inputs by reason (wire errors, handshakes, signatures, engine checks).
    pub rejected: Family<Labels, Counter>,
    /// Frames dropped because a bounded queue was full, by queue.
    pub dropped: Family<Labels, Counter>,
    /// Votes dropped before their signature check because they could no longer change
    /// anything (their slot already prepared or committed here).
    pub votes_settled: Counter,
    /// Bytes received and sent on all connections.
    pub bytes_in: Counter,
    /// Bytes sent.
    pub bytes_out: Counter,
    /// Seconds from a request's arrival at this replica to its reply.
    pub request_latency: Histogram,
    /// Ed25519 signatures verified together by the verify pool (after the cache), per batch:
    /// larger batches cost less per signature.
    pub verify_batch: Histogram,
    /// Durable mode: write-ahead log syncs (one fsync per group of records).
    pub storage_syncs: Counter,
    /// Durable mode: stable checkpoints saved to disk (a newer one may replace one not saved
    /// yet).
    pub snapshots_saved: Counter,
    /// Durable mode: records appended to the write-ahead log.
    pub storage_records: Counter,
    /// Durable mode: seconds one group commit (write and fsync) took.
    pub storage_sync_latency: Histogram,
    /// Durable mode: jobs waiting for the storage thread.
    pub storage_queue: Gauge,
    /// Durable mode: engine outputs held until their records are durable.
    pub held_outputs: Gauge,
    engine_rejected: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    last_batches: AtomicU64,
    last_requests: AtomicU64,
    last_view_changes: AtomicU64,
    last_snapshots: AtomicU64,
}

impl Metrics {
    /// Metrics labelled with the replica id.
    pub fn new(replica: u32) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "shieldwall",
            [("replica".into(), replica.to_string().into())].into_iter(),
        );
        let m = Metrics {
            committed_batches: Counter::default(),
            executed_requests: Counter::default(),
            requests_received: Counter::default(),
            replies_queued: Counter::default(),
            view_changes: Counter::default(),
            snapshots_installed: Counter::default(),
            view: Gauge::default(),
            leader: Gauge::default(),
            last_executed: Gauge::default(),
            stable_checkpoint: Gauge::default(),
            status: Gauge::default(),
            ready: Gauge::default(),
            known_committed: Gauge::default(),
            pending_requests: Gauge::default(),
            verify_queue: Gauge::default(),
            core_queue: Gauge::default(),
            execute_queue: Gauge::default(),
            peer_queue: Family::default(),
            peer_queue_bytes: Family::default(),
            peer_connected: Family::default(),
            client_connections: Gauge::default(),
            rejected: Family::default(),
            dropped: Family::default(),
            votes_settled: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            request_latency: Histogram::new(exponential_buckets(50e-6, 2.0, 18)),
            verify_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            storage_syncs: Counter::default(),
            snapshots_saved: Counter::default(),
            storage_records: Counter::default(),
            storage_sync_latency: Histogram::new(exponential_buckets(20e-6, 2.0, 18)),
            storage_queue: Gauge::default(),
            held_outputs: Gauge::default(),
            engine_rejected: Default::default(),
            last_batches: AtomicU64::new(0),
            last_requests: AtomicU64::new(0),
            last_view_changes: AtomicU64::new(0),
            last_snapshots: AtomicU64::new(0),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "committed_batches",
            "Batches executed (including null batches)",
            m.committed_batches.clone(),
        );
        r.register(
            "executed_requests",
            "Client requests executed",
            m.executed_requests.clone(),
        );
        r.register(
            "requests_received",
            "Client requests received, before verification",
            m.requests_received.clone(),
        );
        r.register(
            "replies_queued",
            "Replies queued for clients",
            m.replies_queued.clone(),
        );
        r.register(
            "view_changes_started",
            "View changes this replica started",
            m.view_changes.clone(),
        );
        r.register("view", "Current view", m.view.clone());
        r.register("leader", "Leader of the current view", m.leader.clone());
        r.register(
            "snapshots_installed",
            "Snapshots installed by state transfer",
            m.snapshots_installed.clone(),
        );
        r.register(
            "last_executed",
            "Last executed sequence number",
            m.last_executed.clone(),
        );
        r.register(
            "stable_checkpoint",
            "Sequence number of the last stable checkpoint",
            m.stable_checkpoint.clone(),
        );
        r.register(
            "status",
            "0 normal, 1 view changing, 2 recovering",
            m.status.clone(),
        );
        r.register(
            "ready",
            "1 when the replica is ready (GET /ready answers 200), else 0",
            m.ready.clone(),
        );
        r.register(
            "known_committed",
            "Highest sequence number this replica knows to be committed",
            m.known_committed.clone(),
        );
        r.register(
            "pending_requests",
            "Requests held and not yet executed",
            m.pending_requests.clone(),
        );
        r.register(
            "verify_queue",
            "Jobs waiting in the verify pool",
            m.verify_queue.clone(),
        );
        r.register(
            "core_queue",
            "Inputs waiting for the protocol core",
            m.core_queue.clone(),
        );
        r.register(
            "execute_queue",
            "Jobs waiting for the service",
            m.execute_queue.clone(),
        );
        r.register(
            "peer_queue",
            "Frames queued for a peer",
            m.peer_queue.clone(),
        );
        r.register(
            "peer_queue_bytes",
            "Bytes queued for a peer",
            m.peer_queue_bytes.clone(),
        );
        r.register(
            "peer_connected",
            "Whether the outbound link to a peer is up",
            m.peer_connected.clone(),
        );
        r.register(
            "client_connections",
            "Open client connections",
            m.client_connections.clone(),
        );
        r.register("rejected", "Rejected inputs by reason", m.rejected.clone());
        r.register(
            "dropped_frames",
            "Frames dropped because a bounded queue was full",
            m.dropped.clone(),
        );
        r.register(
            "bytes_received",
            "Bytes received on all connections",
            m.bytes_in.clone(),
        );
        r.register(
            "bytes_sent",
            "Bytes sent on all connections",
            m.bytes_out.clone(),
        );
        r.register(
            "request_latency_seconds",
            "From a request's arrival at this replica to its reply",
            m.request_latency.clone(),
        );
        r.register(
            "verify_batch_signatures",
            "Ed25519 signatures verified together in one batch by the verify pool",
            m.verify_batch.clone(),
        );
        r.register(
            "snapshots_saved",
            "Stable checkpoints saved to disk (durable mode)",
            m.snapshots_saved.clone(),
        );
        r.register(
            "storage_syncs",
            "Write-ahead log syncs (one fsync per group of records)",
            m.storage_syncs.clone(),
        );
        r.register(
            "votes_settled",
            "Votes dropped unchecked: their slot was already prepared or committed here",
            m.votes_settled.clone(),
        );
        r.register(
            "storage_records",
            "Records appended to the write-ahead log",
            m.storage_records.clone(),
        );
        r.register(
            "storage_sync_latency_seconds",
            "Time to write and fsync one group of log records",
            m.storage_sync_latency.clone(),
        );
        r.register(
            "storage_queue",
            "Jobs waiting for the storage thread",
            m.storage_queue.clone(),
        );
        r.register(
            "held_outputs",
            "Engine outputs held until their log records are durable",
            m.held_outputs.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Count one rejected input.
    pub fn reject(&self, reason: &'static str) {
        self.rejected
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Count one dropped frame.
    pub fn drop_frame(&self, queue: &'static str) {
        self.dropped
            .get_or_create(&vec![("queue", queue.to_string())])
            .inc();
    }

    /// Bring the engine's counters into the metrics (called by the core thread).
    pub(crate) fn sync_engine(&self, stats: &shieldwall_core::Stats) {
        let delta =
            |last: &AtomicU64, now: u64| now.saturating_sub(last.swap(now, Ordering::Relaxed));
        self.committed_batches
            .inc_by(delta(&self.last_batches, stats.executed_batches));
        self.executed_requests
            .inc_by(delta(&self.last_requests, stats.executed_requests));
        self.view_changes
            .inc_by(delta(&self.last_view_changes, stats.view_changes_started));
        self.snapshots_installed
            .inc_by(delta(&self.last_snapshots, stats.snapshots_installed));
        if let Ok(mut seen) = self.engine_rejected.lock() {
            for (reason, count) in &stats.rejected {
                let before = seen.insert(reason, *count).unwrap_or(0);
                if *count > before {
                    self.rejected
                        .get_or_create(&vec![("reason", (*reason).to_string())])
                        .inc_by(count - before);
                }
            }
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_syncs_engine_counters() {
        let m = Metrics::new(2);
        let mut stats = shieldwall_core::Stats {
            executed_batches: 5,
            ..Default::default()
        };
        stats.rejected.insert("duplicate", 3);
        m.sync_engine(&stats);
        stats.executed_batches = 7;
        stats.rejected.insert("duplicate", 4);
        m.sync_engine(&stats);
        m.reject("bad_signature");
        let text = m.render();
        assert!(
            text.contains("shieldwall_committed_batches_total{replica=\"2\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("shieldwall_rejected_total{replica=\"2\",reason=\"duplicate\"} 4"),
            "{text}"
        );
        assert!(text.contains("reason=\"bad_signature\"} 1"), "{text}");
        assert!(text.contains("# EOF"), "{text}");
    }
}
