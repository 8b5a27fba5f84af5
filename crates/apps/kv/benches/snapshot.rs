//! The KV store's checkpoint cost: `Service::snapshot` of a store of 524,288 keys with 64-byte
//! values (the state `shieldwall bench` builds at 16 clients x 32 requests), from scratch and
//! after one checkpoint interval of writes (7,400: 64 batches of ~115 requests), with the keys
//! `shieldwall bench` writes (each stream cycles through its own 1,024 keys) and with keys drawn
//! uniformly from the whole store (the worst case for parts: writes spread over every part).
//!
//! `kv_apply_524k_keys` times the writes themselves (one checkpoint interval of `SET`s into
//! that store, all overwrites), `kv_fill_524k_keys` the store's growth from empty (all new
//! keys).
//!
//! Run: `cargo bench -p shieldwall-kv --bench snapshot`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use shieldwall_kv::{KvOp, KvService, SetCondition};
use shieldwall_node::Service;

const STREAMS: u64 = 512;
const KEYS_PER_STREAM: u64 = 1024;
const WRITES: u64 = 7_400;

fn key(stream: u64, slot: u64) -> Vec<u8> {
    format!("bench:{}:{}:{slot}", stream / 32, stream % 32).into_bytes()
}

fn set(service: &mut KvService, key: Vec<u8>, stamp: u64) {
    let mut value = vec![b'v'; 64];
    value[..8].copy_from_slice(&stamp.to_le_bytes());
    service.apply(KvOp::Set {
        key,
        value,
        condition: SetCondition::Always,
        get: false,
    });
}

fn full_store() -> KvService {
    let mut service = KvService::new();
    for stream in 0..STREAMS {
        for slot in 0..KEYS_PER_STREAM {
            set(&mut service, key(stream, slot), 0);
        }
    }
    service
}

/// A xorshift step: a fixed sequence, no dependency.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv_snapshot_524k_keys");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let mut base = full_store();
    group.bench_function("from_scratch", |b| {
        b.iter_batched(
            || base.clone(),
            // The store is returned, so dropping it is not timed.
            |mut s| {
                let parts = s.snapshot();
                (s, parts)
            },
            BatchSize::PerIteration,
        )
    });
    base.snapshot();
    let mut round = 0u64;
    group.bench_function("after_7400_bench_writes", |b| {
        b.iter_batched(
            || {
                let mut s = base.clone();
                round += 1;
                for i in 0..WRITES {
                    let stream = (i * 7919 + round) % STREAMS;
                    set(
                        &mut s,
                        key(stream, (round * 15 + i / STREAMS) % KEYS_PER_STREAM),
                        i,
                    );
                }
                s
            },
            // The store is returned, so dropping it is not timed.
            |mut s| {
                let parts = s.snapshot();
                (s, parts)
            },
            BatchSize::PerIteration,
        )
    });
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    group.bench_function("after_7400_uniform_writes", |b| {
        b.iter_batched(
            || {
                let mut s = base.clone();
                for i in 0..WRITES {
                    let r = next(&mut x);
                    set(&mut s, key(r % STREAMS, (r >> 20) % KEYS_PER_STREAM), i);
                }
                s
            },
            // The store is returned, so dropping it is not timed.
            |mut s| {
                let parts = s.snapshot();
                (s, parts)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv_apply_524k_keys");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(criterion::Throughput::Elements(WRITES));
    let base = full_store();
    let mut round = 0u64;
    group.bench_function("7400_bench_writes", |b| {
        b.iter_batched(
            || {
                round += 1;
                let ops: Vec<Vec<u8>> = (0..WRITES)
                    .map(|i| {
                        let stream = (i * 7919 + round) % STREAMS;
                        let key = key(stream, (round * 15 + i / STREAMS) % KEYS_PER_STREAM);
                        KvOp::Set {
                            key,
                            value: vec![b'v'; 64],
                            condition: SetCondition::Always,
                            get: false,
                        }
                        .encode()
                    })
                    .collect();
                (base.clone(), ops)
            },
            // As a replica executes them: decoded, applied, the reply encoded.
            |(mut s, ops)| {
                let replies: Vec<Vec<u8>> = ops.iter().map(|op| s.execute(0, op)).collect();
                (s, replies)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Filling the store from empty: 524,288 new keys, the inserts a `shieldwall bench` run of
/// about ten seconds mostly does.
fn fill(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv_fill_524k_keys");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(criterion::Throughput::Elements(STREAMS * KEYS_PER_STREAM));
    group.bench_function("new_keys", |b| {
        // The store is returned, so dropping it is not timed.
        b.iter(full_store)
    });
    group.finish();
}

criterion_group!(benches, snapshot, apply, fill);
criterion_main!(benches);
