//! `shieldwall sim`: the deterministic cluster simulator.

use std::process::ExitCode;

use shieldwall_core::FaultModel;
use shieldwall_sim::{campaign, replay_command, run, Scenario, SimParams};

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Scenario name, or `all` for every scenario that applies to the fault model.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Seeds per scenario (0..N).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Replay exactly one run with this seed (prints its full report).
    #[arg(long)]
    seed: Option<u64>,
    /// Replicas (default 4 in byzantine mode, 3 in crash mode).
    #[arg(long)]
    replicas: Option<u32>,
    /// byzantine or crash.
    #[arg(long, default_value = "byzantine")]
    fault_model: FaultModel,
    /// Requests each correct client keeps outstanding.
    #[arg(long, default_value_t = 2)]
    client_window: usize,
    /// Send every read as an ordered request (no read-only optimisation).
    #[arg(long)]
    no_read_only: bool,
    /// Sign with real Ed25519 keys (slow) instead of the simulated authenticator.
    #[arg(long)]
    ed25519: bool,
    /// Durable mode on simulated disks (crashes lose only unsynced records; restarts recover
    /// from disk). The crash-all scenario is always durable.
    #[arg(long)]
    durable: bool,
    /// Correct clients authenticate requests with a MAC per replica instead of a signature
    /// (the cluster's `request_macs` setting); the bad-client-auth scenario then also sends
    /// MAC vectors with up to f corrupted entries.
    #[arg(long)]
    request_macs: bool,
    /// The leader's adaptive pipelining threshold (`pipeline_fill`): with k batches in flight
    /// it opens another only once k times this many requests wait; 0 fills eagerly.
    #[arg(long, default_value_t = 0)]
    pipeline_fill: u32,
    /// With --seed: print every delivered message and execution to stderr.
    #[arg(long)]
    trace: bool,
    /// List the scenario names and exit.
    #[arg(long)]
    list: bool,
}

pub fn sim(args: SimArgs) -> ExitCode {
    if args.list {
        for s in Scenario::ALL {
            let modes = if s.applies_to(FaultModel::Crash) {
                "byzantine, crash"
            } else {
                "byzantine"
            };
            println!("{:<22} {modes}", s.name());
        }
        return ExitCode::SUCCESS;
    }
    let scenarios = if args.scenario == "all" {
        Scenario::for_model(args.fault_model)
    } else {
        match Scenario::from_name(&args.scenario) {
            Some(s) if s.applies_to(args.fault_model) => vec![s],
            Some(s) => {
                eprintln!("scenario {s} needs byzantine mode");
                return ExitCode::from(2);
            }
            None => {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                eprintln!(
                    "unknown scenario `{}`; known: all, {}",
                    args.scenario,
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    };
    let n = args
        .replicas
        .unwrap_or_else(|| SimParams::default_replicas(args.fault_model));
    let base = SimParams {
        client_window: args.client_window,
        read_only: !args.no_read_only,
        ed25519: args.ed25519,
        durable: args.durable,
        request_macs: args.request_macs,
        pipeline_fill: args.pipeline_fill,
        ..SimParams::new(0, n, args.fault_model)
    };

    if let Some(seed) = args.seed {
        let mut failed = false;
        for s in scenarios {
            let params = SimParams {
                seed,
                trace: args.trace,
                ..base
            };
            let r = run(s, params);
            println!(
                "{s}: seed {seed}: steps {} commits {} view changes {} ops {} sim time {} ms, \
                 decode errors {}, rejected {:?}",
                r.steps,
                r.commits,
                r.view_changes,
                r.completed_ops,
                r.sim_time_ms,
                r.decode_errors,
                r.rejected
            );
            for v in &r.violations {
                println!("  VIOLATION: {v}");
            }
            if !r.violations.is_empty() {
                failed = true;
                println!("  replay: {}", replay_command(s, &params));
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }

    let mut failed = false;
    for s in scenarios {
        let r = campaign(s, 0..args.seeds, base);
        println!(
            "{:<22} n={n} {:<9} seeds {:>5}  steps {:>10}  commits {:>8}  view changes {:>6}  \
             violations {}",
            s.name(),
            args.fault_model,
            r.runs,
            r.steps,
            r.commits,
            r.view_changes,
            r.failures.len()
        );
        for f in r.failures.iter().take(5) {
            failed = true;
            println!("  seed {}: {}", f.seed, f.violations.join(" | "));
            println!("  replay: {}", f.replay);
        }
        failed |= !r.failures.is_empty();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
