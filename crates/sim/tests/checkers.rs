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
