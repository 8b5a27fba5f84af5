//! Encoding and decoding cost of the frames on the hot path.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shieldwall_core::message::{batch_digest, PrePrepare, Signed, Vote};
use shieldwall_core::{Digest, Message, Request, RequestAuth, SignedRequest};
use shieldwall_wire::{Decoder, Frame};

fn request(i: u64) -> SignedRequest {
    SignedRequest {
        request: Request {
            client: i,
            req_seq: i,
            read_only: false,
            op: vec![7; 64].into(),
        },
        auth: RequestAuth::Signature(vec![1; 64].into()),
    }
}

fn bench(c: &mut Criterion) {
    let dec = Decoder::new(64 << 20);
    let vote = Frame::Peer(Message::Prepare(Signed {
        from: 1,
        body: Vote {
            view: 0,
            seq: 9,
            batch_digest: Digest([5; 32]),
        },
        sig: vec![2; 64],
    }));
    c.bench_function("encode_vote", |b| b.iter(|| vote.encode()));
    let bytes = vote.encode();
    c.bench_function("decode_vote", |b| {
        b.iter(|| dec.decode(&mut BytesMut::from(&bytes[..])).unwrap())
    });
    let mut group = c.benchmark_group("pre_prepare_64B_requests");
    for n in [1usize, 100, 1000] {
        let batch: Vec<SignedRequest> = (0..n as u64).map(request).collect();
        let f = Frame::Peer(Message::PrePrepare(Signed {
            from: 0,
            body: PrePrepare {
                view: 0,
                seq: 1,
                batch_digest: batch_digest(&batch),
                batch: batch.into(),
            },
            sig: vec![3; 64],
        }));
        let bytes = f.encode();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("encode", n), &f, |b, f| {
            b.iter(|| f.encode())
        });
        group.bench_with_input(BenchmarkId::new("decode", n), &bytes, |b, bytes| {
            b.iter(|| dec.decode(&mut BytesMut::from(&bytes[..])).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
