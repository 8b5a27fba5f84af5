//! How simulated correct clients address the replicas: in crash mode a new ordered request goes
//! to the leader the client knows (ADR 019), in Byzantine mode to every replica.

use shieldwall_core::FaultModel;
use shieldwall_sim::{replay_command, run, Scenario, SimParams};

#[test]
fn crash_mode_clients_send_new_requests_to_the_leader_only() {
    for (model, n) in [(FaultModel::Crash, 3u32), (FaultModel::Byzantine, 4)] {
        for seed in 0..4 {
            let mut params = SimParams::new(seed, n, model);
            // Ordered requests only: read-only ones go to every replica in both modes.
            params.read_only = false;
            let r = run(Scenario::Baseline, params);
            let replay = replay_command(Scenario::Baseline, &params);
            assert!(r.violations.is_empty(), "{replay}: {:?}", r.violations);
            assert!(r.completed_ops > 20, "{replay}: {} ops", r.completed_ops);
            let per_op = r.client_requests_sent as f64 / r.completed_ops as f64;
            match model {
                // One send per request, plus the first requests of each client (before it
                // knows a view) and retransmissions.
                FaultModel::Crash => assert!(per_op < 2.0, "{replay}: {per_op} sends per op"),
                FaultModel::Byzantine => {
                    assert!(per_op >= f64::from(n), "{replay}: {per_op} sends per op")
                }
            }
        }
    }
}
