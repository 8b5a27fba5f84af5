//! Writes the seed inputs of every fuzz target to `fuzz/seeds/<target>/`: valid encodings of
//! each frame, message, request, operation and snapshot kind, in each target's input layout,
//! so that the fuzzer starts from deep inside the formats instead of rediscovering them.
//!
//! ```sh
//! cd fuzz && cargo run --example gen_seeds
//! ```
//!
//! The output is deterministic (fixed keys and seeds): re-running it rewrites the same files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use shieldwall_core::client_table::ClientTable;
use shieldwall_core::message::{
    batch_digest, encode, Authenticated, CheckpointCert, CommittedBatch, CommittedDigest, Fetch,
    FetchReply,
    NewView, PrePrepare, PreparedCert, Signed, StateSnapshot, ViewChange, Vote,
};
use shieldwall_core::verify::verify_message;
use shieldwall_core::{
    Checkpoint, Digest, Message, Principal, Reply, Request, RequestAuth, SignedRequest, SimAuth,
};
use shieldwall_crypto::KeyPair;
use shieldwall_fuzz::{four_replicas, repair, sim_sign, Repair, SIM_SEED};
use shieldwall_kv::resp::encode_command;
use shieldwall_kv::{KvOp, KvService, SetCondition};
use shieldwall_node::{ClusterConfig, ReplicaEntry, Service};
use shieldwall_wire::{encode_reply, frame_body, Frame, Hello, MacedReply, Proof, Refused};

fn request(client: u64, req_seq: u64, op: &[u8]) -> SignedRequest {
    let request = Request {
        client,
        req_seq,
        read_only: false,
        op: op.to_vec().into(),
    };
    let auth = RequestAuth::Signature(
        sim_sign(Principal::Client(client), &request.signing_bytes()).into(),
    );
    SignedRequest { request, auth }
}

fn pre_prepare(view: u64, seq: u64, batch: Vec<SignedRequest>) -> PrePrepare {
    PrePrepare {
        view,
        seq,
        batch_digest: batch_digest(&batch),
        batch: batch.into(),
    }
}

fn signed<T>(from: u32, body: T) -> Signed<T> {
    Signed {
        from,
        body,
        sig: Vec::new(),
    }
}

fn vote(from: u32, pp: &PrePrepare) -> Signed<Vote> {
    signed(
        from,
        Vote {
            view: pp.view,
            seq: pp.seq,
            batch_digest: pp.batch_digest,
        },
    )
}

fn genesis() -> CheckpointCert {
    CheckpointCert {
        seq: 0,
        state_digest: Digest::default(),
        proof: Vec::new(),
    }
}

fn checkpoint_cert(seq: u64, state_digest: Digest) -> CheckpointCert {
    CheckpointCert {
        seq,
        state_digest,
        proof: (0..3)
            .map(|from| signed(from, Checkpoint { seq, state_digest }))
            .collect(),
    }
}

fn kv_set(key: &[u8], value: &[u8]) -> Vec<u8> {
    KvOp::Set {
        key: key.to_vec(),
        value: value.to_vec(),
        condition: SetCondition::Always,
        get: false,
    }
    .encode()
}

/// One of each message kind, valid for the Byzantine n=4 configuration once repaired.
fn messages() -> Vec<(&'static str, Message)> {
    let batch = vec![request(5, 1, &kv_set(b"k", b"v")), request(6, 9, b"op")];
    let pp0 = pre_prepare(0, 1, batch.clone());
    let prepared = PreparedCert {
        pre_prepare: signed(0, pp0.clone()),
        prepares: vec![vote(1, &pp0), vote(2, &pp0)],
    };
    let view_change = |from: u32| {
        signed(
            from,
            ViewChange {
                new_view: 1,
                checkpoint: genesis(),
                prepared: vec![prepared.clone()],
            },
        )
    };
    let service = KvService::new().snapshot();
    let clients = bytes::Bytes::from(ClientTable::default().encode());
    let snapshot = StateSnapshot {
        checkpoint: checkpoint_cert(
            64,
            StateSnapshot::state_digest(four_replicas(0).chunk(), &service, &clients),
        ),
        service,
        clients,
    };
    let pp65 = pre_prepare(0, 65, batch.clone());
    let mut out = vec![
        ("pre_prepare", Message::PrePrepare(signed(0, pp0.clone()))),
        ("prepare", Message::Prepare(vote(1, &pp0))),
        (
            "commit",
            Message::Commit(Authenticated {
                from: 2,
                body: vote(2, &pp0).body,
                // `repair` computes the MAC vector.
                macs: Vec::new(),
            }),
        ),
        (
            "checkpoint",
            Message::Checkpoint(signed(
                3,
                Checkpoint {
                    seq: 64,
                    state_digest: Digest([9; 32]),
                },
            )),
        ),
        (
            "view_change",
            Message::ViewChange(signed(
                2,
                ViewChange {
                    new_view: 1,
                    checkpoint: checkpoint_cert(64, Digest([9; 32])),
                    prepared: vec![PreparedCert {
                        pre_prepare: signed(0, pre_prepare(0, 65, batch.clone())),
                        prepares: vec![vote(1, &pp65), vote(3, &pp65)],
                    }],
                },
            )),
        ),
        (
            "new_view",
            Message::NewView(signed(
                1,
                NewView {
                    view: 1,
                    view_changes: vec![view_change(0), view_change(2), view_change(3)],
                    pre_prepares: vec![signed(1, pre_prepare(1, 1, batch.clone()))],
                },
            )),
        ),
        (
            "fetch",
            Message::Fetch(signed(
                3,
                Fetch {
                    executed: 7,
                    view: 1,
                    nonce: 42,
                    digests_only: true,
                },
            )),
        ),
        (
            "fetch_reply",
            Message::FetchReply(signed(
                0,
                FetchReply {
                    view: 0,
                    nonce: 42,
                    snapshot: Some(Box::new(snapshot.manifest(four_replicas(0).chunk()))),
                    batches: vec![CommittedBatch {
                        pre_prepare: pp65.clone(),
                    }],
                    digests: vec![CommittedDigest {
                        seq: pp65.seq,
                        batch_digest: pp65.batch_digest,
                    }],
                },
            )),
        ),
    ];
    let config = four_replicas(0);
    let auth = SimAuth::new(Principal::Replica(0), SIM_SEED);
    for (name, m) in &mut out {
        repair(&config, m, Repair::all());
        assert_eq!(
            verify_message(&config, &auth, m),
            Ok(()),
            "{name} seed is not valid"
        );
    }
    out
}

fn reply() -> Reply {
    Reply {
        view: 1,
        replica: 2,
        client: 5,
        req_seq: 1,
        read_only: false,
        result: b"+OK".to_vec(),
    }
}

fn frames() -> Vec<(&'static str, Frame)> {
    let mut out = vec![
        (
            "hello",
            Frame::Hello(Hello {
                cluster: [1; 32],
                principal: Principal::Client(5),
                nonce: [2; 32],
            }),
        ),
        ("proof", Frame::Proof(Proof { sig: vec![3; 64] })),
        (
            "refused",
            Frame::Refused(Refused {
                reason: "unknown principal".into(),
            }),
        ),
        ("accepted", Frame::Accepted),
        (
            "request",
            Frame::Request(request(5, 1, &kv_set(b"k", b"v"))),
        ),
        (
            "reply",
            Frame::Reply(MacedReply {
                reply: encode_reply(&reply()),
                mac: [4; 32],
            }),
        ),
    ];
    for (name, m) in messages() {
        out.push((name, Frame::Peer(m)));
    }
    out
}

fn kv_ops() -> Vec<(&'static str, KvOp)> {
    let k = |s: &str| s.as_bytes().to_vec();
    vec![
        ("get", KvOp::Get { key: k("k") }),
        (
            "set_nx_get",
            KvOp::Set {
                key: k("k"),
                value: k("value"),
                condition: SetCondition::IfAbsent,
                get: true,
            },
        ),
        (
            "del",
            KvOp::Del {
                keys: vec![k("a"), k("k")],
            },
        ),
        (
            "exists",
            KvOp::Exists {
                keys: vec![k("k"), k("k")],
            },
        ),
        (
            "incrby",
            KvOp::IncrBy {
                key: k("n"),
                delta: 5,
            },
        ),
        (
            "decrby",
            KvOp::DecrBy {
                key: k("n"),
                delta: i64::MIN,
            },
        ),
        (
            "append",
            KvOp::Append {
                key: k("k"),
                value: k("more"),
            },
        ),
        ("strlen", KvOp::Strlen { key: k("k") }),
        (
            "mget",
            KvOp::MGet {
                keys: vec![k("k"), k("n"), k("x")],
            },
        ),
        (
            "mset",
            KvOp::MSet {
                pairs: vec![(k("a"), k("1")), (k("b"), k("2")), (k("a"), k("3"))],
            },
        ),
        ("dbsize", KvOp::DbSize),
        (
            "keys",
            KvOp::Keys {
                pattern: k("[a-k]*"),
            },
        ),
        ("flushall", KvOp::FlushAll),
        (
            "pipeline",
            KvOp::pipeline(&[
                KvOp::IncrBy {
                    key: k("n"),
                    delta: 1,
                },
                KvOp::Append {
                    key: k("k"),
                    value: k("v"),
                },
            ]),
        ),
    ]
}

fn kv_record(kind: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

fn kv_snapshot() -> Vec<u8> {
    let mut s = KvService::new();
    for (key, value) in [("a", "1"), ("b", "hello"), ("n", "42")] {
        s.execute(1, &kv_set(key.as_bytes(), value.as_bytes()));
    }
    s.snapshot().concat()
}

fn cluster_file(model_crash: bool, clients: u64) -> String {
    let mut protocol = four_replicas(u8::from(model_crash));
    protocol.batch_requests_max = 100;
    ClusterConfig {
        cluster_id: [0x5a; 32],
        protocol,
        replicas: (0..4u32)
            .map(|i| ReplicaEntry {
                id: i,
                address: format!("node-{i}.example:7000"),
                http: (i == 0).then(|| "127.0.0.1:9000".to_string()),
                keys: KeyPair::from_seed([i as u8; 32]).public(),
            })
            .collect(),
        clients: (0..clients)
            .map(|i| KeyPair::from_seed([100 + i as u8; 32]).public())
            .collect(),
        dir: PathBuf::from("."),
    }
    .to_toml()
}

struct Seeds {
    root: PathBuf,
}

impl Seeds {
    fn write(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).expect("create seed directory");
        fs::write(dir.join(name), bytes).expect("write seed");
    }
}

fn prefixed(prefix: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(bytes);
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let _ = fs::remove_dir_all(&root);
    let seeds = Seeds { root };

    for (name, m) in messages() {
        let bytes = encode(&m);
        seeds.write("core_message", name, &bytes);
        // Config bit 3: Byzantine and crash; repairs: none, and all.
        for (flags, suffix) in [(0u8, "raw"), (7, "repaired"), (15, "repaired_crash")] {
            seeds.write(
                "verify_message",
                &format!("{name}_{suffix}"),
                &prefixed(&[flags], &bytes),
            );
        }
    }
    for (i, r) in [
        request(5, 1, &kv_set(b"k", b"v")),
        request(u64::MAX, 0, b""),
    ]
    .iter()
    .enumerate()
    {
        seeds.write("core_signed_request", &format!("request_{i}"), &encode(r));
    }

    let mut table = ClientTable::default();
    table.record(1, 7, b"r7".to_vec(), 4);
    table.record(1, 9, b"r9".to_vec(), 4);
    table.record(2, 1, b"r1".to_vec(), 4);
    let head = [4u8, 1, 8, 0, 0, 0, 0, 0, 0, 0];
    seeds.write("client_table", "table", &prefixed(&head, &table.encode()));
    seeds.write(
        "client_table",
        "empty",
        &prefixed(&head, &ClientTable::default().encode()),
    );

    let mut stream = Vec::new();
    for (name, f) in frames() {
        let encoded = f.encode();
        stream.extend_from_slice(&encoded);
        seeds.write("wire_frame", name, &frame_body(&encoded));
        seeds.write("wire_stream", name, &prefixed(&[3, 0], &encoded));
    }
    seeds.write("wire_frame", "reply_body", &encode_reply(&reply()));
    seeds.write("wire_stream", "all_frames", &prefixed(&[3, 1], &stream));
    seeds.write(
        "wire_stream",
        "all_frames_limit_4096",
        &prefixed(&[2, 2], &stream),
    );

    let commands: Vec<(&str, Vec<u8>)> = {
        let multibulk = |args: &[&[u8]]| {
            let mut out = Vec::new();
            encode_command(&mut out, args);
            out
        };
        vec![
            ("get", multibulk(&[b"GET", b"k"])),
            ("set", multibulk(&[b"SET", b"k", b"a b\r\n", b"NX", b"GET"])),
            ("empty_arg", multibulk(&[b"ECHO", b""])),
            ("inline", b"PING\r\n".to_vec()),
            (
                "inline_quotes",
                b"SET k \"a b\\n\\x41\" 'it\\'s'\r\n".to_vec(),
            ),
            ("inline_lf", b"  mget a  b\tc\n".to_vec()),
            (
                "empty_commands",
                b"*0\r\n*-1\r\n\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            ),
        ]
    };
    let mut pipeline = Vec::new();
    for (name, c) in &commands {
        pipeline.extend_from_slice(c);
        seeds.write("resp_parse_command", name, &prefixed(&[0], c));
        seeds.write(
            "resp_parse_command",
            &format!("{name}_small"),
            &prefixed(&[1], c),
        );
        seeds.write("resp_stream", name, &prefixed(&[0, 3], c));
    }
    seeds.write("resp_stream", "pipeline", &prefixed(&[0, 7], &pipeline));
    seeds.write(
        "resp_stream",
        "pipeline_small",
        &prefixed(&[3, 9], &pipeline),
    );

    let mut session = vec![1u8]; // tiny limits
    for (name, op) in kv_ops() {
        let bytes = op.encode();
        seeds.write("kv_op", name, &bytes);
        seeds.write("kv_service", name, &prefixed(&[0], &kv_record(0, &bytes)));
        session.extend_from_slice(&kv_record(if op.is_read() { 1 } else { 0 }, &bytes));
        if name == "mset" {
            session.extend_from_slice(&kv_record(2, &kv_snapshot()));
        }
    }
    seeds.write("kv_service", "session_tiny", &session);
    session[0] = 0;
    seeds.write("kv_service", "session", &session);
    seeds.write("kv_restore", "snapshot", &prefixed(&[0], &kv_snapshot()));
    seeds.write(
        "kv_restore",
        "snapshot_tiny",
        &prefixed(&[1], &kv_snapshot()),
    );
    seeds.write("kv_restore", "empty", &[0, 2]);

    seeds.write(
        "cluster_file",
        "byzantine",
        cluster_file(false, 2).as_bytes(),
    );
    seeds.write("cluster_file", "crash", cluster_file(true, 0).as_bytes());
    let keys = KeyPair::from_seed([1; 32]).public();
    seeds.write(
        "cluster_file",
        "public_keys",
        format!("{}\n{}\n", keys.ed25519_hex(), keys.x25519_hex()).as_bytes(),
    );

    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for entry in fs::read_dir(&seeds.root).expect("read seeds") {
        let entry = entry.expect("seed directory entry");
        let n = fs::read_dir(entry.path()).expect("read seed dir").count();
        count.insert(entry.file_name().to_string_lossy().into_owned(), n);
    }
    for (target, n) in count {
        println!("{target}: {n} seeds");
    }
}
