//! A deterministic simulator for shieldwall clusters.
//!
//! One thread, a simulated clock and seeded randomness: a run is a pure function of its
//! [`Scenario`] and [`SimParams`], so a failing seed replays exactly. Replicas run the real
//! engine; messages travel as encoded bytes over a simulated network with delay, loss,
//! duplication, reordering and partitions; replicas crash and restart without state; Byzantine
//! replicas and clients attack; checkers verify agreement, validity, exactly-once, prefix
//! consistency and state agreement at every execution, linearizability of correct clients'
//! histories at the end, and liveness after the faults stop.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod byzantine;
pub mod checker;
pub mod client;
pub mod scenario;
pub mod service;
mod world;

use std::collections::BTreeMap;

use shieldwall_core::{FaultModel, ReplicaId};

pub use scenario::Scenario;

/// Parameters of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimParams {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Replicas.
    pub n: u32,
    /// Byzantine (PBFT) or crash (Multi-Paxos) mode.
    pub fault_model: FaultModel,
    /// Correct clients.
    pub clients: u32,
    /// Operations per correct client.
    pub ops_per_client: u32,
    /// Requests a correct client keeps outstanding at once.
    pub client_window: usize,
    /// Whether correct clients send reads as read-only requests (else reads are ordered).
    pub read_only: bool,
    /// Simulated time after the faults stop within which every correct request must complete.
    pub liveness_ms: u64,
    /// Events processed before a run is declared stuck.
    pub max_steps: u64,
    /// Sign with real Ed25519 keys instead of the fast simulated authenticator (slow).
    pub ed25519: bool,
    /// Print a trace of every delivered message and execution to stderr (for replays).
    pub trace: bool,
    /// Run the replicas in durable mode on simulated disks: a crash loses only what was not
    /// synced, and a restarted replica recovers from its disk (`Replica::recover`).
    pub durable: bool,
    /// Correct clients authenticate requests with MAC vectors instead of signatures, and the
    /// replicas accept them (`Config::request_macs`).
    pub request_macs: bool,
    /// The leader's adaptive pipelining threshold (`Config::pipeline_fill`); 0, the default
    /// here, fills the pipeline eagerly so view changes meet several prepared slots.
    pub pipeline_fill: u32,
    /// A deliberate bug, to test that the checkers fail (tests only).
    #[doc(hidden)]
    pub inject: Option<Injection>,
}

impl SimParams {
    /// Default parameters for `n` replicas in `fault_model`.
    pub fn new(seed: u64, n: u32, fault_model: FaultModel) -> SimParams {
        SimParams {
            seed,
            n,
            fault_model,
            clients: 3,
            ops_per_client: 40,
            client_window: 2,
            read_only: true,
            liveness_ms: 60_000,
            max_steps: 2_000_000,
            ed25519: false,
            trace: false,
            durable: false,
            request_macs: false,
            pipeline_fill: 0,
            inject: None,
        }
    }

    /// The default replica count of a fault model: 4 (Byzantine) or 3 (crash).
    pub fn default_replicas(fault_model: FaultModel) -> u32 {
        match fault_model {
            FaultModel::Byzantine => 4,
            FaultModel::Crash => 3,
        }
    }
}

/// A deliberate bug in a "correct" replica, so tests can show the checkers catch it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// The replica's executions are reported with the last request of each batch missing.
    DivergentExecution {
        /// The replica.
        replica: ReplicaId,
    },
    /// The replica's service overwrites key `k0` before each operation.
    CorruptService {
        /// The replica.
        replica: ReplicaId,
    },
    /// Durable mode: every replica's disk acknowledges syncs but a crash loses everything (a
    /// disk that lies about fsync); acknowledged writes are lost across a whole-cluster crash.
    LyingDisks,
}

/// What one run did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Events processed.
    pub steps: u64,
    /// Sequence numbers committed (executed by a correct replica).
    pub commits: u64,
    /// Most views entered by one correct replica.
    pub view_changes: u64,
    /// Operations correct clients completed.
    pub completed_ops: u64,
    /// Simulated time at the end.
    pub sim_time_ms: u64,
    /// Messages, requests or replies that did not decode.
    pub decode_errors: u64,
    /// Requests clients sent, counting each destination replica once.
    pub client_requests_sent: u64,
    /// Inputs correct replicas rejected, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Safety or liveness violations; empty when the run passed.
    pub violations: Vec<String>,
}

/// Run one simulation.
pub fn run(scenario: Scenario, params: SimParams) -> RunReport {
    match world::World::new(scenario, params) {
        Ok(world) => world.run(),
        Err(e) => RunReport {
            violations: vec![e],
            ..RunReport::default()
        },
    }
}

/// The command that replays one run.
pub fn replay_command(scenario: Scenario, params: &SimParams) -> String {
    let mut cmd = format!(
        "shieldwall sim --scenario {} --replicas {} --fault-model {} --seed {}",
        scenario.name(),
        params.n,
        params.fault_model,
        params.seed
    );
    let defaults = SimParams::new(params.seed, params.n, params.fault_model);
    if params.client_window != defaults.client_window {
        cmd.push_str(&format!(" --client-window {}", params.client_window));
    }
    if !params.read_only {
        cmd.push_str(" --no-read-only");
    }
    if params.ed25519 {
        cmd.push_str(" --ed25519");
    }
    if params.durable {
        cmd.push_str(" --durable");
    }
    if params.request_macs {
        cmd.push_str(" --request-macs");
    }
    if params.pipeline_fill != defaults.pipeline_fill {
        cmd.push_str(&format!(" --pipeline-fill {}", params.pipeline_fill));
    }
    cmd
}

/// A failed run of a campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What went wrong.
    pub violations: Vec<String>,
    /// How to replay it.
    pub replay: String,
}

/// Totals over many seeds of one scenario.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CampaignReport {
    /// Runs.
    pub runs: u64,
    /// Events processed, summed.
    pub steps: u64,
    /// Commits, summed.
    pub commits: u64,
    /// View changes, summed.
    pub view_changes: u64,
    /// Operations completed by correct clients, summed.
    pub completed_ops: u64,
    /// Runs with violations.
    pub failures: Vec<Failure>,
}

/// Run `scenario` once per seed with otherwise equal parameters.
pub fn campaign(
    scenario: Scenario,
    seeds: impl IntoIterator<Item = u64>,
    base: SimParams,
) -> CampaignReport {
    let mut report = CampaignReport::default();
    for seed in seeds {
        let params = SimParams { seed, ..base };
        let r = run(scenario, params);
        report.runs += 1;
        report.steps += r.steps;
        report.commits += r.commits;
        report.view_changes += r.view_changes;
        report.completed_ops += r.completed_ops;
        if !r.violations.is_empty() {
            report.failures.push(Failure {
                seed,
                violations: r.violations,
                replay: replay_command(scenario, &params),
            });
        }
    }
    report
}
