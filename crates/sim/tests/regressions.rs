//! Seeds that once exposed engine bugs (see `docs/sim-findings.md`), replayed exactly. Each must run
//! clean: a failure here names the bug it reintroduced (or one still open).

use shieldwall_core::FaultModel;
use shieldwall_sim::{replay_command, run, Scenario, SimParams};

fn check(
    bug: &str,
    scenario: Scenario,
    n: u32,
    model: FaultModel,
    seed: u64,
    tweak: fn(&mut SimParams),
) {
    let mut params = SimParams::new(seed, n, model);
    tweak(&mut params);
    let r = run(scenario, params);
    assert!(
        r.violations.is_empty(),
        "{bug}: {}\n  {}",
        replay_command(scenario, &params),
        r.violations.join("\n  ")
    );
}

fn defaults(_: &mut SimParams) {}

fn window_one_ordered_reads(p: &mut SimParams) {
    p.client_window = 1;
    p.read_only = false;
}

#[test]
fn bug1_client_table_floor() {
    check(
        "bug 1",
        Scenario::Lossy,
        4,
        FaultModel::Byzantine,
        0,
        defaults,
    );
    check("bug 1", Scenario::Lossy, 3, FaultModel::Crash, 0, defaults);
    check(
        "bug 1",
        Scenario::ClientFlood,
        4,
        FaultModel::Byzantine,
        6,
        defaults,
    );
}

#[test]
fn bug2_read_only_linearizability() {
    check("bug 2", Scenario::Lossy, 3, FaultModel::Crash, 8, defaults);
    check("bug 2", Scenario::Lossy, 3, FaultModel::Crash, 12, defaults);
}

#[test]
fn bug3_leader_reuses_a_sequence_number() {
    for seed in [454, 974, 1195, 1265, 1353] {
        check(
            "bug 3",
            Scenario::Lossy,
            3,
            FaultModel::Crash,
            seed,
            window_one_ordered_reads,
        );
    }
    check(
        "bug 3",
        Scenario::ClientFlood,
        3,
        FaultModel::Crash,
        324,
        window_one_ordered_reads,
    );
    check(
        "bug 3",
        Scenario::Lossy,
        5,
        FaultModel::Crash,
        22,
        window_one_ordered_reads,
    );
}

#[test]
fn bug4_recovery_on_a_stale_new_view() {
    check(
        "bug 4",
        Scenario::Chaos,
        3,
        FaultModel::Crash,
        162,
        defaults,
    );
}

#[test]
fn bug5_leader_alone_in_a_view_change() {
    check(
        "bug 5",
        Scenario::Chaos,
        3,
        FaultModel::Crash,
        265,
        defaults,
    );
    check(
        "bug 5",
        Scenario::Chaos,
        4,
        FaultModel::Byzantine,
        4_000_167,
        defaults,
    );
}

#[test]
fn finding7_lagging_leader_fetches_at_once() {
    check(
        "finding 7",
        Scenario::SkipLeader,
        3,
        FaultModel::Crash,
        3_000_944,
        defaults,
    );
}

#[test]
fn finding8_recovered_leader_keeps_its_proposals() {
    for seed in [96, 104] {
        check(
            "finding 8",
            Scenario::CrashAll,
            3,
            FaultModel::Crash,
            seed,
            defaults,
        );
    }
}

fn durable(p: &mut SimParams) {
    p.durable = true;
}

#[test]
fn finding9_crash_mode_acceptor_state_survives_recovery() {
    check(
        "finding 9",
        Scenario::Chaos,
        3,
        FaultModel::Crash,
        56,
        durable,
    );
    check(
        "finding 9",
        Scenario::CrashAll,
        5,
        FaultModel::Crash,
        5_000_326,
        defaults,
    );
}

#[test]
fn finding10_pieces_served_before_the_checkpoint_is_stable_here() {
    check(
        "finding 10",
        Scenario::SkipLeader,
        3,
        FaultModel::Crash,
        279,
        durable,
    );
}

#[test]
fn finding11_pieces_are_asked_of_the_peers_that_hold_the_state() {
    for seed in [3_000_835, 3_000_899] {
        check(
            "finding 11",
            Scenario::Chaos,
            3,
            FaultModel::Crash,
            seed,
            defaults,
        );
    }
}

#[test]
fn finding12_a_replica_fetching_its_lost_state_counts_against_f() {
    check(
        "finding 12",
        Scenario::Chaos,
        3,
        FaultModel::Crash,
        85,
        |p| p.request_macs = true,
    );
}
