//! The checkers can fail: deliberate bugs in "correct" replicas are caught, and runs replay
//! exactly.

use shieldwall_core::FaultModel;
use shieldwall_sim::{run, Injection, Scenario, SimParams};

#[test]
fn divergent_execution_is_caught_by_agreement() {
    let params = SimParams {
        inject: Some(Injection::DivergentExecution { replica: 1 }),
        ..SimParams::new(7, 4, FaultModel::Byzantine)
    };
    let r = run(Scenario::Baseline, params);
    assert!(
        r.violations.iter().any(|v| v.starts_with("agreement")),
        "agreement checker missed it: {:?}",
        r.violations
    );
}

#[test]
fn corrupt_service_is_caught() {
    let params = SimParams {
        inject: Some(Injection::CorruptService { replica: 0 }),
        ..SimParams::new(3, 3, FaultModel::Crash)
    };
    let r = run(Scenario::Baseline, params);
    assert!(
        r.violations
            .iter()
            .any(|v| v.starts_with("state agreement")),
        "state checker missed it: {:?}",
        r.violations
    );
}

#[test]
fn runs_replay_exactly() {
    for (scenario, n, model) in [
        (Scenario::Lossy, 4, FaultModel::Byzantine),
        (Scenario::CrashRestart, 3, FaultModel::Crash),
        (Scenario::EquivocatingLeader, 4, FaultModel::Byzantine),
    ] {
        let params = SimParams::new(42, n, model);
        assert_eq!(
            run(scenario, params),
            run(scenario, params),
            "{scenario} is not deterministic"
        );
    }
}

#[test]
fn different_seeds_differ() {
    let a = run(Scenario::Lossy, SimParams::new(1, 4, FaultModel::Byzantine));
    let b = run(Scenario::Lossy, SimParams::new(2, 4, FaultModel::Byzantine));
    assert_ne!((a.steps, a.sim_time_ms), (b.steps, b.sim_time_ms));
}

#[test]
fn ed25519_signatures_work_end_to_end() {
    for scenario in [Scenario::ForgedSignatures, Scenario::BadClientAuth] {
        let fast = SimParams::new(5, 4, FaultModel::Byzantine);
        let real = SimParams {
            ed25519: true,
            ..fast
        };
        let r = run(scenario, real);
        assert!(r.violations.is_empty(), "{scenario}: {:?}", r.violations);
        assert!(r.completed_ops > 0);
        // Signature bytes never steer the simulation, so both authenticators take the same path.
        assert_eq!(r.steps, run(scenario, fast).steps);
    }
}

#[test]
fn acknowledged_writes_lost_by_lying_disks_are_caught() {
    // With disks that forget everything, a whole-cluster crash loses acknowledged writes: the
    // checkers (agreement on re-used sequence numbers, linearizability) must notice.
    let caught = (0..20).any(|seed| {
        let params = SimParams {
            inject: Some(Injection::LyingDisks),
            ..SimParams::new(seed, 4, FaultModel::Byzantine)
        };
        !run(Scenario::CrashAll, params).violations.is_empty()
    });
    assert!(caught, "no lost write detected in 20 seeds");
    // The same seeds with honest disks are clean.
    for seed in 0..20 {
        let r = run(
            Scenario::CrashAll,
            SimParams::new(seed, 4, FaultModel::Byzantine),
        );
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
    }
}
