//! The engine alone: a follower of a 4-replica Byzantine cluster handling the pre-prepare,
//! prepares and commits of consecutive slots, then executing them. Signature checks are not
//! included (they run in the verify pool, outside the engine); the follower's own vote signing
//! is (SimAuth, a keyed blake3 hash).
//!
//! Run: `cargo bench -p shieldwall-core --bench engine`. Each slot is 6 messages
//! (1 pre-prepare, 2 prepares, 3 commits) plus one execution result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shieldwall_core::message::{batch_digest, vote_signing_bytes, Phase, Signable};
use shieldwall_core::{
    Action, Authenticator, Config, Event, FaultModel, Message, PrePrepare, Principal, Replica,
    Request, RequestAuth, Signed, SignedRequest, SimAuth, Vote,
};

const SEED: [u8; 32] = [3; 32];
const SLOTS: u64 = 256;

fn config() -> Config {
    let mut c = Config::for_replicas(4, FaultModel::Byzantine);
    c.checkpoint_interval = 1 << 20;
    c.watermark_window = 1 << 21;
    c.batch_requests_max = 1000;
    c.client_pending_max = 1 << 20;
    c
}

/// Pre-built messages for `SLOTS` consecutive slots, as a follower (replica 1) receives them.
fn messages(batch_size: usize) -> Vec<Vec<Event>> {
    let signer = |i: u32| SimAuth::new(Principal::Replica(i), SEED);
    let client = SimAuth::new(Principal::Client(1), SEED);
    let mut req_seq = 0;
    (1..=SLOTS)
        .map(|seq| {
            let batch: Vec<SignedRequest> = (0..batch_size)
                .map(|_| {
                    req_seq += 1;
                    let request = Request {
                        client: 1,
                        req_seq,
                        read_only: false,
                        op: vec![7; 64],
                    };
                    let auth = RequestAuth::Signature(client.sign(&request.signing_bytes()));
                    SignedRequest { request, auth }
                })
                .collect();
            let body = PrePrepare {
                view: 0,
                seq,
                batch_digest: batch_digest(&batch),
                batch,
            };
            let vote = Vote {
                view: 0,
                seq,
                batch_digest: body.batch_digest,
            };
            let pp = Signed {
                from: 0,
                sig: signer(0).sign(&body.signing_bytes()),
                body,
            };
            let mut events = vec![Event::Message(Message::PrePrepare(pp))];
            for r in [2, 3] {
                let sig = signer(r).sign(&vote_signing_bytes(Phase::Prepare, &vote));
                events.push(Event::Message(Message::Prepare(Signed {
                    from: r,
                    body: vote,
                    sig,
                })));
            }
            for r in [0, 2, 3] {
                let sig = signer(r).sign(&vote_signing_bytes(Phase::Commit, &vote));
                events.push(Event::Message(Message::Commit(Signed {
                    from: r,
                    body: vote,
                    sig,
                })));
            }
            events
        })
        .collect()
}

fn run(slots: &[Vec<Event>]) -> Duration {
    let auth: Arc<dyn Authenticator> = Arc::new(SimAuth::new(Principal::Replica(1), SEED));
    let mut replica = Replica::new(config(), 1, auth).expect("valid config");
    let mut out = Vec::with_capacity(64);
    // Clone outside the timed region: only the engine's own work is measured.
    let slots = slots.to_vec();
    let start = Instant::now();
    for events in slots {
        for e in events {
            replica.handle(0, e, &mut out);
        }
        for a in out.drain(..) {
            if let Action::Execute { seq, requests, .. } = a {
                let results = vec![Vec::new(); requests.len()];
                replica.handle(
                    0,
                    Event::Executed {
                        seq,
                        results,
                        snapshot: None,
                    },
                    &mut Vec::new(),
                );
            }
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(replica.last_executed(), SLOTS, "every slot must execute");
    elapsed
}

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
