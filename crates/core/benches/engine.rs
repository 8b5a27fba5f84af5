//! The engine alone: a follower of a 4-replica Byzantine cluster handling the pre-prepare,
//! prepares and commits of consecutive slots, then executing them. Signature checks are not
//! included (they run in the verify pool, outside the engine); the follower's own vote signing
//! is (SimAuth, a keyed blake3 hash).
//!
//! Run: `cargo bench -p shieldwall-core --bench engine`. Each slot is 6 messages
//! (1 pre-prepare, 2 prepares, 3 commits) plus one execution result.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "common/workload.rs"]
mod workload;
use workload::{messages, run, SLOTS};

fn bench(c: &mut Criterion) {
    for (label, per_slot) in [("messages", None), ("requests", Some(()))] {
        let mut group = c.benchmark_group(format!("core_follower_{label}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        for batch in [1usize, 100, 1000] {
            let slots = messages(batch);
            let elements = match per_slot {
                None => SLOTS * 6,
                Some(()) => SLOTS * batch as u64,
            };
            group.throughput(Throughput::Elements(elements));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &slots, |b, slots| {
                b.iter_custom(|iters| (0..iters).map(|_| run(slots)).sum())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
