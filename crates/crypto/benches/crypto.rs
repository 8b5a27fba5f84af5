//! Microbenchmarks of the primitives on the request path: sign, verify, batch verify, MAC.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shieldwall_core::{Authenticator, Principal, VerifyItem};
use shieldwall_crypto::{client_id, KeyPair, Keyring, NodeAuth};

fn setup(signers: usize) -> (NodeAuth, Vec<NodeAuth>) {
    let keys: Vec<KeyPair> = (0..signers)
        .map(|i| KeyPair::from_seed([i as u8; 32]))
        .collect();
    let ring = Arc::new(Keyring::new(
        vec![KeyPair::from_seed([255; 32]).public()],
        keys.iter().map(KeyPair::public).collect(),
    ));
    let me = NodeAuth::new(
        Principal::Replica(0),
        KeyPair::from_seed([255; 32]),
        ring.clone(),
    );
    let clients = keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| NodeAuth::new(Principal::Client(client_id(i as u64, 0)), k, ring.clone()))
        .collect();
    (me, clients)
}

fn bench(c: &mut Criterion) {
    let (me, clients) = setup(64);
    let msg = [7u8; 64];
    c.bench_function("ed25519_sign_64B", |b| b.iter(|| clients[0].sign(&msg)));
    let sig = clients[0].sign(&msg);
    let signer = Principal::Client(client_id(0, 0));
    c.bench_function("ed25519_verify_64B", |b| {
        b.iter(|| assert!(me.verify(signer, &msg, &sig)))
    });
    let mut group = c.benchmark_group("ed25519_batch_verify_64B");
    for size in [16usize, 32, 64, 96, 128, 192, 256] {
        let sigs: Vec<Vec<u8>> = (0..size).map(|i| clients[i % 64].sign(&msg)).collect();
        let items: Vec<VerifyItem<'_>> = sigs
            .iter()
            .enumerate()
            .map(|(i, s)| VerifyItem {
                signer: Principal::Client(client_id((i % 64) as u64, 0)),
                bytes: &msg,
                sig: s,
            })
            .collect();
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &items, |b, items| {
            b.iter(|| assert!(me.verify_batch(items)))
        });
    }
    group.finish();
    c.bench_function("blake3_mac_64B", |b| b.iter(|| me.mac(signer, &msg)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
