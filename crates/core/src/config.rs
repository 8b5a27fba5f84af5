//! Cluster configuration and quorum arithmetic.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::{ReplicaId, Seq, View};

/// Which faults the cluster tolerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultModel {
    /// PBFT: n >= 3f+1, f replicas may behave arbitrarily.
    Byzantine,
    /// Multi-Paxos: n >= 2f+1, f replicas may crash; no prepare phase.
    Crash,
}

impl std::str::FromStr for FaultModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "byzantine" => Ok(FaultModel::Byzantine),
            "crash" => Ok(FaultModel::Crash),
            other => Err(format!(
                "unknown fault model `{other}` (expected byzantine or crash)"
            )),
        }
    }
}

impl std::fmt::Display for FaultModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultModel::Byzantine => "byzantine",
            FaultModel::Crash => "crash",
        })
    }
}

/// Whether replicas keep what they must not forget on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Nothing on disk: a restarted replica recovers from its peers and votes again only after
    /// the next view change (ADR 002). If every replica stops at once, the state is gone.
    #[default]
    Memory,
    /// Write-ahead: the engine emits [`crate::Action::Persist`] for every record a restarted
    /// replica needs (its view changes, accepted proposals, prepared certificates, committed
    /// batches) and holds back every later output until [`crate::Event::Persisted`] reports
    /// the record durable (ADR 008).
    Durable,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(Durability::Memory),
            "durable" => Ok(Durability::Durable),
            other => Err(format!(
                "unknown durability `{other}` (expected memory or durable)"
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Memory => "memory",
            Durability::Durable => "durable",
        })
    }
}

/// Everything a replica needs to know about the cluster and its limits.
///
/// Build one with [`Config::new`] and adjust fields; [`Config::validate`] must pass before a
/// [`crate::Replica`] accepts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Number of replicas.
    pub n: u32,
    /// Number of faulty replicas tolerated.
    pub f: u32,
    /// Byzantine (PBFT) or crash (Multi-Paxos).
    pub fault_model: FaultModel,
    /// Maximum requests in one batch.
    pub batch_requests_max: u32,
    /// Maximum encoded bytes of the requests in one batch.
    pub batch_bytes_max: u32,
    /// Maximum bytes of one request's operation.
    pub request_bytes_max: u32,
    /// Pipeline window W: batches proposed but not yet committed at the leader.
    pub pipeline_window: u32,
    /// Watermark window L: sequence numbers accepted above the last stable checkpoint.
    pub watermark_window: u64,
    /// Checkpoint interval K (must divide L, and L >= 2K so ordering never waits on a checkpoint
    /// that cannot form).
    pub checkpoint_interval: u64,
    /// How long a request may wait to execute before a follower suspects the leader.
    pub request_timeout_ms: u64,
    /// Initial time to complete a view change; doubles on each consecutive failure.
    pub view_change_timeout_ms: u64,
    /// Upper bound of the doubling view-change timeout.
    pub view_change_timeout_max_ms: u64,
    /// How long a replica waits on its state-transfer peers before asking the next ones.
    pub fetch_timeout_ms: u64,
    /// The client window W: requests a client (lane) may have in flight. A replica keeps up
    /// to 2W pending (received, not executed) requests per client, since one executing behind
    /// the quorum still holds the previous window's requests when the client sends the next.
    pub client_pending_max: u32,
    /// Pending requests kept in total.
    pub pending_max: u32,
    /// Batches served in one state-transfer reply.
    pub fetch_batches_max: u32,
    /// Memory or durable (write-ahead) mode.
    #[serde(default)]
    pub durability: Durability,
    /// State transfer moves a snapshot in pieces of this many bytes, each checked on its own
    /// against the certified state digest (which depends on it: every replica must agree).
    #[serde(default = "default_state_chunk_bytes")]
    pub state_chunk_bytes: u32,
    /// Whether requests may carry a MAC vector instead of a signature
    /// ([`crate::RequestAuth::Macs`], ADR 011). Faster, but a client that corrupts entries
    /// can stall the batches carrying its requests, so only clusters whose clients are
    /// trusted not to attack liveness (e.g. behind a gateway) should turn it on.
    #[serde(default)]
    pub request_macs: bool,
    /// Adaptive pipelining: with `k` batches in flight, the leader opens another only once
    /// `k * pipeline_fill` requests wait (an idle pipeline always proposes at once). Under
    /// light load one batch at a time keeps latency low; under load the queue grows, batches
    /// grow with it and the per-batch cost (signed votes) is shared by more requests. 0
    /// fills the pipeline eagerly.
    #[serde(default = "default_pipeline_fill")]
    pub pipeline_fill: u32,
}

fn default_pipeline_fill() -> u32 {
    64
}

fn default_state_chunk_bytes() -> u32 {
    1 << 20
}

/// Why a configuration was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// n is too small for f under the fault model.
    #[error("{model} mode needs n >= {need} replicas to tolerate f={f}, got n={n}")]
    TooFewReplicas {
        /// the fault model
        model: FaultModel,
        /// replicas needed
        need: u32,
        /// replicas given
        n: u32,
        /// faults to tolerate
        f: u32,
    },
    /// A limit was zero or out of range.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// the offending field
        field: &'static str,
        /// what is wrong
        why: String,
    },
}

/// The leader of `view` among `n` replicas (round robin): the one rule replicas
/// ([`Config::leader`]) and clients, who know only `n`, share.
pub fn leader_of(view: View, n: u32) -> ReplicaId {
    (view % u64::from(n)) as ReplicaId
}

impl Config {
    /// A configuration with defaults suited to a LAN cluster.
    pub fn new(n: u32, f: u32, fault_model: FaultModel) -> Config {
        Config {
            n,
            f,
            fault_model,
            batch_requests_max: 1024,
            batch_bytes_max: 1 << 20,
            request_bytes_max: 64 << 10,
            pipeline_window: 8,
            watermark_window: 256,
            checkpoint_interval: 64,
            request_timeout_ms: 2_000,
            view_change_timeout_ms: 2_000,
            view_change_timeout_max_ms: 60_000,
            fetch_timeout_ms: 1_000,
            client_pending_max: 64,
            pending_max: 100_000,
            fetch_batches_max: 64,
            durability: Durability::Memory,
            state_chunk_bytes: default_state_chunk_bytes(),
            request_macs: false,
            pipeline_fill: default_pipeline_fill(),
        }
    }

    /// The largest f that n replicas tolerate under `fault_model`, with that configuration.
    pub fn for_replicas(n: u32, fault_model: FaultModel) -> Config {
        let f = match fault_model {
            FaultModel::Byzantine => n.saturating_sub(1) / 3,
            FaultModel::Crash => n.saturating_sub(1) / 2,
        };
        Config::new(n, f, fault_model)
    }

    /// Check every invariant the engine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let need = match self.fault_model {
            FaultModel::Byzantine => 3 * self.f + 1,
            FaultModel::Crash => 2 * self.f + 1,
        };
        if self.n < need || self.n == 0 {
            return Err(ConfigError::TooFewReplicas {
                model: self.fault_model,
                need: need.max(1),
                n: self.n,
                f: self.f,
            });
        }
        let invalid = |field: &'static str, why: &str| {
            Err(ConfigError::Invalid {
                field,
                why: why.to_string(),
            })
        };
        if self.n > 1024 {
            return invalid("n", "at most 1024 replicas");
        }
        if self.batch_requests_max == 0 {
            return invalid("batch_requests_max", "must be at least 1");
        }
        if self.request_bytes_max == 0 || self.batch_bytes_max < self.request_bytes_max {
            return invalid(
                "batch_bytes_max",
                "must be at least request_bytes_max, which must be positive",
            );
        }
        if self.checkpoint_interval == 0 {
            return invalid("checkpoint_interval", "must be at least 1");
        }
        if self.watermark_window < 2 * self.checkpoint_interval
            || !self
                .watermark_window
                .is_multiple_of(self.checkpoint_interval)
        {
            return invalid(
                "watermark_window",
                "must be a multiple of checkpoint_interval and at least twice it",
            );
        }
        if self.pipeline_window == 0 || u64::from(self.pipeline_window) > self.watermark_window {
            return invalid("pipeline_window", "must be in 1..=watermark_window");
        }
        if self.request_timeout_ms == 0
            || self.view_change_timeout_ms == 0
            || self.fetch_timeout_ms == 0
        {
            return invalid("timeouts", "must be positive");
        }
        if self.view_change_timeout_max_ms < self.view_change_timeout_ms {
            return invalid(
                "view_change_timeout_max_ms",
                "must be at least view_change_timeout_ms",
            );
        }
        if self.client_pending_max == 0 || self.pending_max == 0 || self.fetch_batches_max == 0 {
            return invalid("pending limits", "must be positive");
        }
        if self.state_chunk_bytes == 0
            || self.state_chunk_bytes as usize > crate::message::MESSAGE_BYTES_MAX / 2
        {
            return invalid(
                "state_chunk_bytes",
                "must be positive and at most half the message limit",
            );
        }
        Ok(())
    }

    /// Bytes per state-transfer piece.
    pub fn chunk(&self) -> usize {
        self.state_chunk_bytes as usize
    }

    /// Votes (including the leader's pre-prepare or own vote) that make a batch prepared or
    /// committed, and checkpoint or view-change certificates: ceil((n+f+1)/2) in Byzantine mode
    /// (2f+1 when n = 3f+1), a majority in crash mode.
    pub fn quorum(&self) -> usize {
        match self.fault_model {
            FaultModel::Byzantine => (self.n as usize + self.f as usize + 2) / 2,
            FaultModel::Crash => self.n as usize / 2 + 1,
        }
    }

    /// Replicas needed so that at least one is correct: f+1.
    pub fn weak_quorum(&self) -> usize {
        self.f as usize + 1
    }

    /// Replicas that must vouch for the same batch (its digest) at a sequence number before a
    /// replica catching up accepts it as committed (ADR 017): f+1 in Byzantine mode, so that one
    /// is correct; one in crash mode, where replicas do not lie.
    pub fn fetch_agreement(&self) -> usize {
        match self.fault_model {
            FaultModel::Byzantine => self.weak_quorum(),
            FaultModel::Crash => 1,
        }
    }

    /// Matching replies a client needs for an ordered request: a quorum, so that every
    /// completed write was executed by a quorum and any read quorum (below) includes a correct
    /// replica that executed it. f+1 would prove the result but make unordered reads
    /// non-linearizable (see docs/adr/003-reply-quorums.md; the simulator found the case).
    pub fn reply_quorum(&self) -> usize {
        self.quorum()
    }

    /// Matching replies a client needs for a read-only request answered without ordering.
    /// `reply_quorum + read_quorum > n + f`: the two intersect in a correct replica.
    pub fn read_quorum(&self) -> usize {
        self.quorum()
    }

    /// The highest sequence number accepted above a stable checkpoint at `low` (PBFT's high
    /// watermark). Saturates: a certificate for a checkpoint near `u64::MAX` must not overflow.
    pub fn window_top(&self, low: Seq) -> Seq {
        low.saturating_add(self.watermark_window)
    }

    /// The leader of view `view`.
    pub fn leader(&self, view: View) -> ReplicaId {
        leader_of(view, self.n)
    }

    /// Whether the engine runs the prepare phase (Byzantine mode only).
    pub fn has_prepare_phase(&self) -> bool {
        self.fault_model == FaultModel::Byzantine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_too_few_replicas() {
        let c = Config::new(3, 1, FaultModel::Byzantine);
        assert_eq!(
            c.validate(),
            Err(ConfigError::TooFewReplicas {
                model: FaultModel::Byzantine,
                need: 4,
                n: 3,
                f: 1
            })
        );
        assert!(Config::new(3, 1, FaultModel::Crash).validate().is_ok());
        assert!(Config::new(2, 1, FaultModel::Crash).validate().is_err());
    }

    #[test]
    fn rejects_bad_windows() {
        let mut c = Config::new(4, 1, FaultModel::Byzantine);
        c.watermark_window = 100;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "watermark_window",
                ..
            })
        ));
        let mut c = Config::new(4, 1, FaultModel::Byzantine);
        c.pipeline_window = 0;
        assert!(c.validate().is_err());
        let mut c = Config::new(4, 1, FaultModel::Byzantine);
        c.batch_requests_max = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn classic_quorums() {
        let c = Config::new(4, 1, FaultModel::Byzantine);
        assert_eq!((c.quorum(), c.weak_quorum(), c.reply_quorum()), (3, 2, 3));
        let c = Config::new(7, 2, FaultModel::Byzantine);
        assert_eq!(c.quorum(), 5);
        let c = Config::new(3, 1, FaultModel::Crash);
        assert_eq!((c.quorum(), c.reply_quorum()), (2, 2));
        let c = Config::new(5, 2, FaultModel::Crash);
        assert_eq!(c.quorum(), 3);
    }

    proptest! {
        /// Any two quorums intersect in at least f+1 replicas (Byzantine) or one (crash), and a
        /// quorum is always reachable with f replicas silent.
        #[test]
        fn quorum_intersection(f in 0u32..20, extra in 0u32..10, byz in any::<bool>()) {
            let model = if byz { FaultModel::Byzantine } else { FaultModel::Crash };
            let n = if byz { 3 * f + 1 + extra } else { 2 * f + 1 + extra };
            let c = Config::new(n, f, model);
            prop_assert!(c.validate().is_ok());
            let q = c.quorum() as u32;
            prop_assert!(q <= n - f, "quorum {} unreachable with {} silent of {}", q, f, n);
            let overlap = 2 * q - n;
            let (w, r) = (c.reply_quorum() as u32, c.read_quorum() as u32);
            prop_assert!(w + r > n + if byz { f } else { 0 }, "reads miss completed writes");
            if byz {
                prop_assert!(overlap > f, "overlap {} < f+1 for n={} f={}", overlap, n, f);
            } else {
                prop_assert!(overlap >= 1);
            }
        }
    }
}
