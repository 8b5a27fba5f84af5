//! Named fault scenarios and the plan each one draws from a seed.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shieldwall_core::{Config, FaultModel, ReplicaId};

use crate::byzantine::ReplicaFault;
use crate::client::ClientKind;

/// A fault scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// No faults; delays still reorder and occasionally duplicate messages.
    Baseline,
    /// Message loss, duplication and widely varying delays.
    Lossy,
    /// Replicas split into two sides (sometimes the leader alone), healed later.
    Partition,
    /// The current leader crashes, up to f times.
    CrashLeader,
    /// Replicas crash and restart without state (amnesia), one at a time.
    CrashRestart,
    /// f Byzantine leaders send different batches to different followers.
    EquivocatingLeader,
    /// f replicas vote for random digests and return wrong results.
    ConflictingVotes,
    /// f replicas send every message several times.
    DuplicateVotes,
    /// f replicas replay their own old messages.
    ReplayedVotes,
    /// f leaders send pre-prepares whose digest does not match their batch.
    WrongDigest,
    /// f replicas send messages under other replicas' names or with garbage signatures.
    ForgedSignatures,
    /// f replicas send random, truncated and bit-flipped bytes.
    GarbageBytes,
    /// f replicas are silent.
    Silent,
    /// f correct replicas behind very slow links.
    SlowReplica,
    /// f leaders drop one client's requests.
    CensorClient,
    /// f leaders slip made-up client requests into their batches.
    ForgedRequest,
    /// f replicas lie in view changes (nothing prepared, genesis checkpoint, spurious future
    /// views, bad NEW-VIEWs) while an honest replica is cut off for a while.
    LyingViewChange,
    /// f replicas forge state-transfer replies and checkpoints while an honest replica is cut
    /// off and has to catch up.
    LyingStateTransfer,
    /// Everything at once within the fault budget: loss, duplication, a heavy delay tail, a
    /// partition, crash-restarts, and (Byzantine mode, n >= 7) a Byzantine replica with a
    /// random behaviour.
    Chaos,
    /// A client sends requests with bad authenticators or another client's identity.
    BadClientAuth,
    /// A client signs different operations under one request number.
    ReusedSeq,
    /// Four clients flood requests beyond the per-client and total pending bounds.
    ClientFlood,
    /// Every client sends to all replicas but the leader it believes in; no replica is faulty,
    /// so no view change may happen (followers relay requests to the leader).
    SkipLeader,
    /// Durable mode: every replica crashes at once (losing what it had not synced), once or
    /// twice, and restarts from its disk; nothing acknowledged may be lost.
    CrashAll,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 24] = [
        Scenario::Baseline,
        Scenario::Lossy,
        Scenario::Partition,
        Scenario::CrashLeader,
        Scenario::CrashRestart,
        Scenario::EquivocatingLeader,
        Scenario::ConflictingVotes,
        Scenario::DuplicateVotes,
        Scenario::ReplayedVotes,
        Scenario::WrongDigest,
        Scenario::ForgedSignatures,
        Scenario::GarbageBytes,
        Scenario::Silent,
        Scenario::SlowReplica,
        Scenario::CensorClient,
        Scenario::ForgedRequest,
        Scenario::LyingViewChange,
        Scenario::LyingStateTransfer,
        Scenario::Chaos,
        Scenario::BadClientAuth,
        Scenario::ReusedSeq,
        Scenario::ClientFlood,
        Scenario::SkipLeader,
        Scenario::CrashAll,
    ];

    /// The scenario's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::Lossy => "lossy",
            Scenario::Partition => "partition",
            Scenario::CrashLeader => "crash-leader",
            Scenario::CrashRestart => "crash-restart",
            Scenario::EquivocatingLeader => "equivocating-leader",
            Scenario::ConflictingVotes => "conflicting-votes",
            Scenario::DuplicateVotes => "duplicate-votes",
            Scenario::ReplayedVotes => "replayed-votes",
            Scenario::WrongDigest => "wrong-digest",
            Scenario::ForgedSignatures => "forged-signatures",
            Scenario::GarbageBytes => "garbage-bytes",
            Scenario::Silent => "silent",
            Scenario::SlowReplica => "slow-replica",
            Scenario::CensorClient => "censor-client",
            Scenario::ForgedRequest => "forged-request",
            Scenario::LyingViewChange => "lying-view-change",
            Scenario::LyingStateTransfer => "lying-state-transfer",
            Scenario::Chaos => "chaos",
            Scenario::BadClientAuth => "bad-client-auth",
            Scenario::ReusedSeq => "reused-seq",
            Scenario::ClientFlood => "client-flood",
            Scenario::SkipLeader => "skip-leader",
            Scenario::CrashAll => "crash-all",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The Byzantine behaviour of faulty replicas, if the scenario has Byzantine replicas.
    pub fn replica_fault(self) -> Option<ReplicaFault> {
        Some(match self {
            Scenario::EquivocatingLeader => ReplicaFault::Equivocate,
            Scenario::ConflictingVotes => ReplicaFault::ConflictingVotes,
            Scenario::DuplicateVotes => ReplicaFault::DuplicateVotes,
            Scenario::ReplayedVotes => ReplicaFault::ReplayVotes,
            Scenario::WrongDigest => ReplicaFault::WrongDigest,
            Scenario::ForgedSignatures => ReplicaFault::ForgeSignatures,
            Scenario::GarbageBytes => ReplicaFault::GarbageBytes,
            Scenario::Silent => ReplicaFault::Silent,
            Scenario::SlowReplica => ReplicaFault::Slow,
            Scenario::CensorClient => ReplicaFault::CensorClient(0),
            Scenario::ForgedRequest => ReplicaFault::ForgeRequest,
            Scenario::LyingViewChange => ReplicaFault::LyingViewChange,
            Scenario::LyingStateTransfer => ReplicaFault::LyingStateTransfer,
            _ => return None,
        })
    }

    /// Whether the scenario applies under `model` (Byzantine replicas need Byzantine mode).
    pub fn applies_to(self, model: FaultModel) -> bool {
        model == FaultModel::Byzantine || self.replica_fault().is_none()
    }

    /// The scenarios that apply under `model`.
    pub fn for_model(model: FaultModel) -> Vec<Scenario> {
        Scenario::ALL
            .into_iter()
            .filter(|s| s.applies_to(model))
            .collect()
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A partition between replicas: `side[r]` says which side replica r is on.
#[derive(Clone, Debug)]
pub(crate) struct Partition {
    pub(crate) start_ms: u64,
    pub(crate) end_ms: u64,
    pub(crate) side: Vec<bool>,
}

/// A crash followed by a restart (without state, or from disk in durable mode).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CrashPlan {
    pub(crate) at_ms: u64,
    /// The replica, or `None` for the leader of the highest view at that time.
    pub(crate) victim: Option<ReplicaId>,
    pub(crate) down_ms: u64,
}

impl Scenario {
    /// Whether the scenario runs in durable mode whatever the parameters say.
    pub fn forces_durable(self) -> bool {
        self == Scenario::CrashAll
    }
}

/// Everything a run's faults consist of, drawn from the seed.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) byzantine: Vec<(ReplicaId, ReplicaFault)>,
    pub(crate) clients: Vec<(ClientKind, u32)>,
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    /// Probability that a message gets 100-1000 ms of extra delay.
    pub(crate) tail: f64,
    pub(crate) delay_ms: (u64, u64),
    pub(crate) slow_extra_ms: (u64, u64),
    pub(crate) partitions: Vec<Partition>,
    pub(crate) crash_leader_at: Vec<u64>,
    pub(crate) crashes: Vec<CrashPlan>,
    pub(crate) fault_end_ms: u64,
    /// At most this many view changes may happen (scenarios where one would be a fault).
    pub(crate) view_changes_max: Option<u64>,
    /// Whole-cluster crashes: (time, per-replica downtime).
    pub(crate) crash_all: Vec<(u64, Vec<u64>)>,
}

pub(crate) fn plan(
    scenario: Scenario,
    cfg: &Config,
    correct_clients: u32,
    ops_per_client: u32,
    rng: &mut ChaCha8Rng,
) -> Plan {
    let f = cfg.f;
    let n = cfg.n;
    let mut p = Plan {
        byzantine: Vec::new(),
        clients: (0..correct_clients)
            .map(|_| (ClientKind::Correct, ops_per_client))
            .collect(),
        loss: 0.0,
        duplicate: 0.01,
        tail: 0.0,
        delay_ms: (1, 10),
        slow_extra_ms: (200, 1000),
        partitions: Vec::new(),
        crash_leader_at: Vec::new(),
        crashes: Vec::new(),
        fault_end_ms: 1500,
        view_changes_max: None,
        crash_all: Vec::new(),
    };
    if let Some(fault) = scenario.replica_fault() {
        // Faults that matter most in a leader go to the leaders of the first views.
        let leaders = matches!(
            fault,
            ReplicaFault::Equivocate
                | ReplicaFault::WrongDigest
                | ReplicaFault::ForgeRequest
                | ReplicaFault::CensorClient(_)
        );
        let mut ids: Vec<ReplicaId> = (0..n).collect();
        if !leaders {
            ids.shuffle(rng);
        }
        p.byzantine = ids
            .into_iter()
            .take(f as usize)
            .map(|r| (r, fault))
            .collect();
    }
    match scenario {
        Scenario::Lossy => {
            p.loss = rng.gen_range(0.05..0.25);
            p.duplicate = rng.gen_range(0.0..0.1);
            p.delay_ms = (1, rng.gen_range(10..80));
        }
        Scenario::Partition => {
            let mut start = rng.gen_range(20..400);
            for _ in 0..rng.gen_range(1..=2) {
                let end = start + rng.gen_range(200..1200);
                let side: Vec<bool> = if rng.gen_bool(0.4) {
                    // Isolate the first leader.
                    (0..n).map(|r| r == 0).collect()
                } else {
                    (0..n).map(|_| rng.gen_bool(0.5)).collect()
                };
                p.partitions.push(Partition {
                    start_ms: start,
                    end_ms: end,
                    side,
                });
                start = end + rng.gen_range(50..300);
            }
            p.fault_end_ms = start.max(p.fault_end_ms);
        }
        Scenario::CrashLeader => {
            let mut t = rng.gen_range(20..300);
            for _ in 0..f {
                p.crash_leader_at.push(t);
                t += rng.gen_range(300..900);
            }
        }
        Scenario::CrashRestart => {
            let mut t = rng.gen_range(20..300);
            for _ in 0..rng.gen_range(1..=4) {
                // Half the time the current leader, which also forces the view change that
                // ends an earlier victim's recovery (ADR 002).
                let victim = if rng.gen_bool(0.5) {
                    None
                } else {
                    Some(rng.gen_range(0..n))
                };
                let down_ms = rng.gen_range(50..800);
                p.crashes.push(CrashPlan {
                    at_ms: t,
                    victim,
                    down_ms,
                });
                t += down_ms + rng.gen_range(50..400);
            }
            p.fault_end_ms = t.max(p.fault_end_ms);
        }
        Scenario::LyingViewChange | Scenario::LyingStateTransfer => {
            // Cut one honest replica off so that it needs view changes and state transfer.
            let honest: Vec<ReplicaId> = (0..n)
                .filter(|r| !p.byzantine.iter().any(|(b, _)| b == r))
                .collect();
            if let Some(&victim) = honest.choose(rng) {
                let start_ms = rng.gen_range(20..400);
                let end_ms = start_ms + rng.gen_range(300..1200);
                let side = (0..n).map(|r| r == victim).collect();
                p.partitions.push(Partition {
                    start_ms,
                    end_ms,
                    side,
                });
                p.fault_end_ms = p.fault_end_ms.max(end_ms + 100);
            }
        }
        Scenario::Chaos => {
            p.loss = rng.gen_range(0.0..0.1);
            p.duplicate = rng.gen_range(0.0..0.05);
            p.tail = rng.gen_range(0.0..0.03);
            p.delay_ms = (1, rng.gen_range(5..40));
            // With f >= 2, one Byzantine replica leaves room for a crash.
            if cfg.fault_model == FaultModel::Byzantine && f >= 2 {
                const FAULTS: [ReplicaFault; 8] = [
                    ReplicaFault::Equivocate,
                    ReplicaFault::ConflictingVotes,
                    ReplicaFault::ReplayVotes,
                    ReplicaFault::ForgeSignatures,
                    ReplicaFault::GarbageBytes,
                    ReplicaFault::Silent,
                    ReplicaFault::LyingViewChange,
                    ReplicaFault::LyingStateTransfer,
                ];
                let fault = FAULTS[rng.gen_range(0..FAULTS.len())];
                p.byzantine.push((rng.gen_range(0..n), fault));
            }
            let start_ms = rng.gen_range(20..600);
            let end_ms = start_ms + rng.gen_range(100..800);
            let side = (0..n).map(|_| rng.gen_bool(0.5)).collect();
            p.partitions.push(Partition {
                start_ms,
                end_ms,
                side,
            });
            let mut t = rng.gen_range(20..400);
            for _ in 0..rng.gen_range(0..=3) {
                let victim = if rng.gen_bool(0.5) {
                    None
                } else {
                    Some(rng.gen_range(0..n))
                };
                let down_ms = rng.gen_range(50..600);
                p.crashes.push(CrashPlan {
                    at_ms: t,
                    victim,
                    down_ms,
                });
                t += down_ms + rng.gen_range(50..400);
            }
            p.fault_end_ms = p.fault_end_ms.max(t).max(end_ms + 100);
        }
        Scenario::CrashAll => {
            let mut t = rng.gen_range(50..400);
            for _ in 0..rng.gen_range(1..=2) {
                let downs: Vec<u64> = (0..n).map(|_| rng.gen_range(20..400)).collect();
                let longest = downs.iter().copied().max().unwrap_or(0);
                p.crash_all.push((t, downs));
                t += longest + rng.gen_range(100..600);
            }
            p.fault_end_ms = t.max(p.fault_end_ms);
        }
        Scenario::SkipLeader => {
            // Every client avoids the leader; followers must relay, not suspect it.
            for c in &mut p.clients {
                c.0 = ClientKind::SkipLeader;
            }
            p.view_changes_max = Some(0);
        }
        Scenario::BadClientAuth => p.clients.push((ClientKind::BadAuth, 60)),
        Scenario::ReusedSeq => p.clients.push((ClientKind::ReusedSeq, 60)),
        Scenario::ClientFlood => {
            // Several flooding identities together exceed the replicas' total pending bound.
            for _ in 0..4 {
                p.clients.push((ClientKind::Flood, 200));
            }
        }
        _ => {}
    }
    p
}
