use super::*;
use proptest::prelude::*;
use shieldwall_core::message::{Authenticated, Fetch, PrePrepare, Signed, Vote};
use shieldwall_core::{Digest, Reply, Request, RequestAuth};

fn arb_principal() -> impl Strategy<Value = Principal> {
    prop_oneof![
        any::<u32>().prop_map(Principal::Replica),
        any::<u64>().prop_map(Principal::Client)
    ]
}

fn arb_request() -> impl Strategy<Value = SignedRequest> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..128),
        proptest::collection::vec(any::<u8>(), 0..80),
        0u8..3,
    )
        .prop_map(
            |(client, req_seq, read_only, op, auth, kind)| SignedRequest {
                request: Request {
                    client,
                    req_seq,
                    read_only,
                    op: op.into(),
                },
                auth: match kind {
                    0 => RequestAuth::Signature(auth.into()),
                    1 => RequestAuth::Macs(auth.into()),
                    _ => RequestAuth::Relayed,
                },
            },
        )
}

fn arb_vote() -> impl Strategy<Value = Signed<Vote>> {
    (any::<u32>(), any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(
        |(from, view, seq, d)| Signed {
            from,
            body: Vote {
                view,
                seq,
                batch_digest: Digest(d),
            },
            sig: vec![3; 64],
        },
    )
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (arb_principal(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
            |(principal, cluster, nonce)| Frame::Hello(Hello {
                cluster,
                principal,
                nonce
            })
        ),
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(|sig| Frame::Proof(Proof { sig })),
        ".{0,40}".prop_map(|reason| Frame::Refused(Refused { reason })),
        Just(Frame::Accepted),
        arb_request().prop_map(Frame::Request),
        arb_vote().prop_map(|v| Frame::Peer(Message::Commit(Authenticated {
            from: v.from,
            body: v.body,
            macs: v.sig,
        }))),
        arb_vote().prop_map(|v| Frame::Peer(Message::Prepare(v))),
        (
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(arb_request(), 0..4)
        )
            .prop_map(
                |(from, seq, batch)| Frame::Peer(Message::PrePrepare(Signed {
                    from,
                    body: PrePrepare {
                        view: 0,
                        seq,
                        batch_digest: shieldwall_core::message::batch_digest(&batch),
                        batch: batch.into(),
                    },
                    sig: vec![1; 64],
                }))
            ),
        (
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(client, replica, result)| {
                let reply = Reply {
                    view: 1,
                    replica,
                    client,
                    req_seq: 9,
                    read_only: false,
                    result,
                };
                Frame::Reply(MacedReply {
                    reply: encode_reply(&reply),
                    mac: [4; 32],
                })
            }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(arb_frame(), 1..8), split in 1usize..64) {
        let mut stream = BytesMut::new();
        for f in &frames {
            f.encode_into(&mut stream);
        }
        // Feed the stream in chunks of `split` bytes: any split yields the same frames.
        let dec = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in stream.chunks(split) {
            buf.extend_from_slice(chunk);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn peer_frame_bodies_are_the_canonical_encoding(f in arb_frame()) {
        // The body of a peer frame is exactly the postcard encoding the core signs and hashes.
        if let Frame::Peer(m) = &f {
            let bytes = f.encode();
            prop_assert_eq!(&bytes[HEADER_BYTES..], &message::encode(m)[..]);
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dec = Decoder::new(4096);
        let mut buf = BytesMut::from(&bytes[..]);
        // Either an error, need-more, or frames that each consumed bytes.
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = decode_frame(&bytes);
    }

    #[test]
    fn truncated_bodies_are_malformed(f in arb_frame(), cut in 1usize..8) {
        let bytes = f.encode();
        let body = frame_body(&bytes);
        let cut = cut.min(body.len() - 2);
        if cut > 0 {
            prop_assert!(decode_frame(&body[..body.len() - cut]).is_err());
        }
    }
}

#[test]
fn oversized_frames_are_refused_from_the_header() {
    let dec = Decoder::new(100);
    let mut buf = BytesMut::new();
    buf.put_u32_le(1_000_000);
    assert_eq!(
        dec.decode(&mut buf),
        Err(WireError::TooLarge {
            len: 1_000_004,
            max: 100
        })
    );
    // At the limit exactly: accepted.
    let f = Frame::Proof(Proof { sig: vec![0; 90] });
    let bytes = f.encode();
    let dec = Decoder::new(bytes.len());
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(dec.decode(&mut buf), Ok(Some(f.clone())));
    let dec = Decoder::new(bytes.len() - 1);
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn header_errors_are_typed() {
    let dec = Decoder::new(1 << 20);
    let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 1][..]);
    assert_eq!(dec.decode(&mut buf), Err(WireError::TooShort(1)));
    let mut buf = BytesMut::from(&[2u8, 0, 0, 0, 9, 1][..]);
    assert_eq!(dec.decode(&mut buf), Err(WireError::Version(9)));
    let mut buf = BytesMut::from(&[2u8, 0, 0, 0, VERSION, 99][..]);
    assert_eq!(dec.decode(&mut buf), Err(WireError::UnknownKind(99)));
    let mut buf = BytesMut::from(&[3u8, 0, 0, 0, VERSION, 4, 0xff][..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(WireError::Malformed { kind: "peer", .. })
    ));
    // Trailing bytes inside a frame are an error.
    let f = Frame::Peer(Message::Fetch(Signed {
        from: 1,
        body: Fetch {
            executed: 1,
            view: 2,
            nonce: 3,
            digests_only: false,
        },
        sig: vec![],
    }));
    let mut bytes = BytesMut::from(&f.encode()[..]);
    bytes.put_u8(0);
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        dec.decode(&mut bytes),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn handshake_bytes_bind_everything() {
    let (c, n1, n2) = ([1; 32], [2; 32], [3; 32]);
    let (a, b) = (Principal::Replica(0), Principal::Replica(1));
    let base = handshake_signing_bytes(&c, Role::Dialer, a, b, &n1, &n2);
    let variants = [
        handshake_signing_bytes(&[9; 32], Role::Dialer, a, b, &n1, &n2),
        handshake_signing_bytes(&c, Role::Acceptor, a, b, &n1, &n2),
        handshake_signing_bytes(&c, Role::Dialer, b, a, &n1, &n2),
        handshake_signing_bytes(&c, Role::Dialer, a, Principal::Client(1), &n1, &n2),
        handshake_signing_bytes(&c, Role::Dialer, a, b, &n2, &n1),
        handshake_signing_bytes(&c, Role::Dialer, a, b, &n1, &[4; 32]),
    ];
    for v in variants {
        assert_ne!(base, v);
    }
}

/// A reply's MAC travels as a byte string (length, then bytes) and must be exactly 32 bytes.
#[test]
fn reply_macs_are_byte_strings_of_exactly_32_bytes() {
    #[derive(Serialize)]
    struct Loose {
        #[serde(with = "serde_bytes")]
        reply: Vec<u8>,
        #[serde(with = "serde_bytes")]
        mac: Vec<u8>,
    }
    let frame = |mac_len: usize| {
        let mut bytes = vec![VERSION, Kind::Reply as u8];
        let body = Loose {
            reply: b"r".to_vec(),
            mac: vec![4; mac_len],
        };
        bytes.extend(postcard::to_allocvec(&body).unwrap());
        bytes
    };
    let good = Frame::Reply(MacedReply {
        reply: b"r".to_vec(),
        mac: [4; 32],
    });
    assert_eq!(&good.encode()[4..], &frame(32)[..]);
    assert_eq!(decode_frame(&frame(32)), Ok(good));
    for len in [0, 31, 33] {
        assert!(
            matches!(decode_frame(&frame(len)), Err(WireError::Malformed { .. })),
            "a {len}-byte MAC"
        );
    }
}
