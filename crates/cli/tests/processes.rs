//! Real-process tests: replicas as OS processes on loopback, driven like a user and killed like
//! an operator. One cluster at a time (a lock), so that two clusters never compete for this
//! machine's cores and slow each other into view changes.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use redis::Commands;
use shieldwall_core::message::{Authenticated, Signed, Vote};
use shieldwall_core::{
    Authenticator, Digest, Message, Principal, Request, RequestAuth, SignedRequest,
};
use shieldwall_crypto::{client_id, KeyPair, NodeAuth};
use shieldwall_kv::KvReply;
use shieldwall_wire::{decode_reply, Frame};

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every acknowledged write reads back with its value.
fn assert_all_readable(
    c: &TestCluster,
    client: &shieldwall_node::Client,
    acked: &BTreeMap<String, String>,
) {
    c.rt.block_on(async {
        for (key, value) in acked {
            let r = client.invoke_read(get(key)).await.unwrap();
            assert_eq!(
                reply(&r),
                KvReply::Bulk(value.clone().into_bytes()),
                "{key}"
            );
        }
    });
}

/// Concurrent writers through the client library: distinct keys plus one shared counter;
/// then every value is read back.
fn library_workload(c: &TestCluster, tag: &str, writers: usize, per_writer: usize) {
    let counter = format!("{tag}-counter");
    let client = c.client(1);
    c.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let client = client.clone();
            let (tag, counter) = (tag.to_string(), counter.clone());
            tasks.spawn(async move {
                for i in 0..per_writer {
                    let key = format!("{tag}-w{w}-{i}");
                    let r = client
                        .invoke(set(&key, &format!("v{w}.{i}")))
                        .await
                        .unwrap();
                    assert_eq!(reply(&r), KvReply::Ok);
                    client.invoke(incr(&counter)).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let total = (writers * per_writer) as i64;
        let r = client.invoke_read(get(&counter)).await.unwrap();
        assert_eq!(reply(&r), KvReply::Bulk(total.to_string().into_bytes()));
        for w in 0..writers {
            for i in 0..per_writer {
                let r = client
                    .invoke_read(get(&format!("{tag}-w{w}-{i}")))
                    .await
                    .unwrap();
                assert_eq!(reply(&r), KvReply::Bulk(format!("v{w}.{i}").into_bytes()));
            }
        }
    });
}

/// Every command through the RESP gateway with a real Redis client.
fn resp_workload(addr: &str) {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let _: () = con.set("greeting", "hello").unwrap();
    let v: String = con.get("greeting").unwrap();
    assert_eq!(v, "hello");
    let n: i64 = con.incr("hits", 5).unwrap();
    assert_eq!(n, 5);
    let n: i64 = con.decr("hits", 2).unwrap();
    assert_eq!(n, 3);
    let len: i64 = con.append("greeting", " world").unwrap();
    assert_eq!(len, 11);
    let _: () = con.mset(&[("a", "1"), ("b", "2")]).unwrap();
    let vals: Vec<Option<String>> = con.mget(&["a", "missing", "b"]).unwrap();
    assert_eq!(vals, vec![Some("1".into()), None, Some("2".into())]);
    let mut keys: Vec<String> = con.keys("*").unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "b", "greeting", "hits"]);
    let deleted: i64 = con.del(&["a", "b", "nope"]).unwrap();
    assert_eq!(deleted, 2);
    let exists: i64 = con.exists("greeting").unwrap();
    assert_eq!(exists, 1);
    let nx: bool = redis::cmd("SET")
        .arg("greeting")
        .arg("x")
        .arg("NX")
        .query::<Option<String>>(&mut con)
        .unwrap()
        .is_some();
    assert!(!nx, "SET NX on an existing key does nothing");
    let err = redis::cmd("NOSUCHCOMMAND")
        .query::<String>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    // Pipelined: 100 commands in one round trip, replies in order.
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.cmd("INCR").arg("piped");
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
    }
    let counts: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(counts, (1..=100).collect::<Vec<i64>>());
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 3 + 100);
}

#[test]
fn byzantine_cluster_of_4_serves_library_and_redis_clients() {
    let _serial = serial();
    let mut c = TestCluster::new(4, "byzantine", &[]);
    c.start_all();
    library_workload(&c, "a", 8, 25);
    let addr = c.start_gateway(0);
    resp_workload(&addr);
    for i in 0..4 {
        let s = c.status(i).unwrap();
        assert_eq!(
            (s.view, s.status.as_str(), s.peers_connected),
            (0, "normal", 3),
            "{s:?}"
        );
    }
    // Every replica executed the same prefix (allow the slowest a moment to catch up).
    wait_for(
        "replicas to agree on the executed prefix",
        Duration::from_secs(10),
        || {
            let done: Vec<u64> = (0..4).map(|i| c.status(i).unwrap().last_executed).collect();
            done.iter().all(|d| *d == done[0])
        },
    );
    assert!(c.metric(0, "shieldwall_executed_requests_total", "") >= 400.0);
    assert!(c.metric(0, "shieldwall_request_latency_seconds_count", "") > 0.0);
}

#[test]
fn crash_cluster_of_3_serves_library_and_redis_clients() {
    let _serial = serial();
    let mut c = TestCluster::new(3, "crash", &[]);
    c.start_all();
    library_workload(&c, "a", 4, 25);
    let addr = c.start_gateway(0);
    resp_workload(&addr);
    let s = c.status(2).unwrap();
    assert_eq!((s.fault_model.as_str(), s.f, s.n), ("crash", 1, 3));
}

#[test]
fn killing_the_leader_mid_workload_loses_no_acknowledged_write() {
    kill_the_leader_mid_workload(4, "byzantine");
}

/// In crash mode the client sends each ordered request to the leader only (ADR 019): once
/// the leader is dead, only its retransmissions reach the others, and the workload must still
/// complete.
#[test]
fn crash_mode_client_survives_the_death_of_the_leader_it_sends_to() {
    kill_the_leader_mid_workload(3, "crash");
}

fn kill_the_leader_mid_workload(n: u32, model: &str) {
    let _serial = serial();
    let mut c = TestCluster::new(
        n,
        model,
        &["request_timeout_ms=1000", "view_change_timeout_ms=1000"],
    );
    c.start_all();
    assert_eq!(c.status(1).unwrap().leader, 0);
    let client = c.client(1);
    let acked = std::sync::Arc::new(Mutex::new(BTreeMap::new()));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let client = client.clone();
            let acked = acked.clone();
            c.rt.spawn(async move {
                for i in 0..60 {
                    let (key, value) = (format!("k{w}-{i}"), format!("v{i}"));
                    // Every write must complete: the view change happens within the timeout.
                    client.invoke(set(&key, &value)).await.unwrap();
                    acked.lock().unwrap().insert(key, value);
                }
            })
        })
        .collect();
    wait_for("a third of the writes", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= 120
    });
    if model == "crash" {
        // Followers got only the first requests (sent to every replica until a view was
        // known) and retransmissions (at most one per writer per 500 ms).
        let received = |i| c.metric(i, "shieldwall_requests_received_total", "");
        let leader = received(0);
        assert!(leader >= 120.0, "the leader received {leader} requests");
        for i in 1..n {
            let follower = received(i);
            assert!(
                follower <= leader / 2.0,
                "follower {i} received {follower} requests, the leader {leader}"
            );
        }
    }
    c.kill(0);
    let killed_at = Instant::now();
    for w in writers {
        c.rt.block_on(w).unwrap();
    }
    eprintln!(
        "workload completed {:?} after the leader died",
        killed_at.elapsed()
    );
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 360);
    assert!(client.view() >= 1, "the client learned the new view");
    // A replica that took no part in the last quorums may enter the new view a moment later.
    for i in 1..n {
        wait_for(
            &format!("replica {i} to move past the dead leader"),
            Duration::from_secs(30),
            || c.status(i).is_some_and(|s| s.view >= 1 && s.leader != 0),
        );
    }
    assert_all_readable(&c, &client, &acked);
}

/// Replica 3 is replaced by a harness holding its key: it sends garbage, oversized frames,
/// messages signed with the wrong key, messages in another replica's name and replays. The three correct replicas
/// stay live (f = 1) and correct, count every rejection, and their memory stays bounded.
#[test]
fn a_fake_replica_cannot_disturb_the_cluster() {
    let _serial = serial();
    let mut c = TestCluster::new(4, "byzantine", &[]);
    for i in 0..3 {
        c.start(i);
    }
    c.wait_ready(&[0, 1, 2]);
    let keys3 = replica_keys(&c, 3);
    let wrong = KeyPair::generate();
    let cluster = c.cluster.clone();
    let rss_before: Vec<u64> = (0..3).map(|i| c.rss_kib(i)).collect();

    let attack = c.rt.spawn(async move {
        let me = Principal::Replica(3);
        let auth = NodeAuth::new(me, keys3.clone(), cluster.keyring());
        let wrong_auth = NodeAuth::new(me, wrong.clone(), cluster.keyring());
        // Handshake with the wrong key: refused.
        for target in 0..3 {
            let refused = RawConn::connect(&cluster, target, me, wrong.clone()).await;
            assert!(refused.is_err(), "a wrong key must not pass the handshake");
        }
        for round in 0..20u64 {
            for target in 0..3 {
                // Garbage bytes straight after the handshake.
                let mut conn = RawConn::connect(&cluster, target, me, keys3.clone())
                    .await
                    .unwrap();
                conn.send_raw(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])
                    .await
                    .ok();
                assert!(conn.closed_within(Duration::from_secs(5)).await);
                // A frame claiming 1 GiB: refused from its header.
                let mut conn = RawConn::connect(&cluster, target, me, keys3.clone())
                    .await
                    .unwrap();
                conn.send_raw(&(1u32 << 30).to_le_bytes()).await.ok();
                assert!(conn.closed_within(Duration::from_secs(5)).await);
                // A 1 MiB frame of garbage (within the limit): malformed.
                let mut conn = RawConn::connect(&cluster, target, me, keys3.clone())
                    .await
                    .unwrap();
                let mut big = ((1u32 << 20) + 2).to_le_bytes().to_vec();
                big.extend_from_slice(&[shieldwall_wire::VERSION, 4]);
                big.extend(std::iter::repeat_n(0xffu8, 1 << 20));
                conn.send_raw(&big).await.ok();
                assert!(conn.closed_within(Duration::from_secs(5)).await);
                // Signed with the wrong key, and replayed votes.
                let mut conn = RawConn::connect(&cluster, target, me, keys3.clone())
                    .await
                    .unwrap();
                let vote = Vote {
                    view: 0,
                    seq: 1 + round,
                    batch_digest: Digest([round as u8; 32]),
                };
                // The forged vote names a slot no replica reaches: votes for slots a replica
                // already committed are dropped before their signature is checked (ADR 013),
                // so a forgery there would be dropped, not counted.
                let far = Vote {
                    seq: 1 << 40,
                    ..vote
                };
                // COMMITs carry a MAC per replica (ADR 017), PREPAREs a signature.
                let macs = |a: &NodeAuth, bytes: &[u8]| -> Vec<u8> {
                    (0..4u32)
                        .flat_map(|r| match r {
                            3 => [0; 32],
                            r => a.mac(Principal::Replica(r), bytes),
                        })
                        .collect()
                };
                let far_bytes = shieldwall_core::message::commit_mac_bytes(3, &far);
                let forged = Message::Commit(Authenticated {
                    from: 3,
                    body: far,
                    macs: macs(&wrong_auth, &far_bytes),
                });
                let forged_prepare = Message::Prepare(Signed {
                    from: 3,
                    body: far,
                    sig: wrong_auth.sign(&shieldwall_core::message::vote_signing_bytes(
                        shieldwall_core::message::Phase::Prepare,
                        &far,
                    )),
                });
                let impersonation = Message::Commit(Authenticated {
                    from: 1,
                    body: vote,
                    macs: macs(&auth, &shieldwall_core::message::commit_mac_bytes(1, &vote)),
                });
                // A valid vote, replayed: counted once, then rejected as a duplicate (or as
                // out of window once the cluster's checkpoints moved past it).
                let replayed = Message::Commit(Authenticated {
                    from: 3,
                    body: vote,
                    macs: macs(&auth, &shieldwall_core::message::commit_mac_bytes(3, &vote)),
                });
                conn.send(&Frame::Peer(forged)).await.unwrap();
                conn.send(&Frame::Peer(forged_prepare)).await.unwrap();
                for _ in 0..50 {
                    conn.send(&Frame::Peer(replayed.clone())).await.unwrap();
                }
                // A frame of a kind peers never send.
                conn.send(&Frame::Request(SignedRequest {
                    request: Request {
                        client: 0,
                        req_seq: 1,
                        read_only: false,
                        op: Default::default(),
                    },
                    auth: RequestAuth::Signature(Default::default()),
                }))
                .await
                .unwrap();
                assert!(conn.closed_within(Duration::from_secs(5)).await);
                // Speaking for another replica, even under its own valid signature: the link
                // names the sender (crash mode, which trusts replicas' votes, relies on it).
                let mut conn = RawConn::connect(&cluster, target, me, keys3.clone())
                    .await
                    .unwrap();
                conn.send(&Frame::Peer(impersonation)).await.unwrap();
                assert!(conn.closed_within(Duration::from_secs(5)).await);
            }
        }
        // A peer has one inbound connection: a newer one closes the older.
        let mut older = RawConn::connect(&cluster, 0, me, keys3.clone())
            .await
            .unwrap();
        let _newer = RawConn::connect(&cluster, 0, me, keys3.clone())
            .await
            .unwrap();
        assert!(older.closed_within(Duration::from_secs(5)).await);
        // Unauthenticated garbage on a fresh connection.
        for target in 0..3 {
            let mut s = tokio::net::TcpStream::connect(&cluster.replicas[target].address)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, &[0xffu8; 4096])
                .await
                .ok();
        }
    });
    // Meanwhile the service works.
    library_workload(&c, "a", 4, 25);
    c.rt.block_on(attack).unwrap();
    library_workload(&c, "b", 2, 10);

    for i in 0..3 {
        let m = |label| c.metric(i, "shieldwall_rejected_total", label);
        assert!(
            m("reason=\"bad_handshake\"") >= 1.0,
            "replica {i}: wrong-key handshakes"
        );
        assert!(
            m("reason=\"frame_too_large\"") >= 20.0,
            "replica {i}: oversized frames"
        );
        assert!(
            m("reason=\"malformed_frame\"") >= 20.0,
            "replica {i}: garbage frames"
        );
        assert!(
            m("reason=\"bad_signature\"") >= 20.0,
            "replica {i}: forged prepares"
        );
        assert!(
            m("reason=\"bad_replica_mac\"") >= 20.0,
            "replica {i}: forged commits"
        );
        assert!(
            m("reason=\"sender_not_peer\"") >= 20.0,
            "replica {i}: votes in another replica's name"
        );
        assert!(
            m("reason=\"unexpected_frame\"") >= 20.0,
            "replica {i}: wrong frame kinds"
        );
        let rss = c.rss_kib(i);
        assert!(
            rss < rss_before[i as usize] + 200 * 1024,
            "replica {i} grew from {} KiB to {rss} KiB",
            rss_before[i as usize]
        );
        let s = c.status(i).unwrap();
        assert_eq!(
            s.view, 0,
            "no view change: the fake replica is not the leader"
        );
    }
}

/// The next frame on `conn`, which must be a reply to request number 2 MACed by replica `r`.
async fn next_reply(conn: &mut RawConn, auth: &NodeAuth, r: u32) -> Vec<u8> {
    let Frame::Reply(m) = conn.next().await.unwrap() else {
        panic!("expected a reply")
    };
    assert!(auth.verify_mac(Principal::Replica(r), &m.reply, &m.mac));
    let reply = decode_reply(&m.reply).unwrap();
    assert_eq!(reply.req_seq, 2);
    reply.result
}

/// A client that cannot prove its key is refused; a request with a bad signature is rejected;
/// a retransmitted request executes once and every copy gets the same reply.
#[test]
fn client_authentication_and_exactly_once() {
    let _serial = serial();
    let mut c = TestCluster::new(4, "byzantine", &[]);
    c.start_all();
    let cluster = c.cluster.clone();
    let good = client_keys(&c, 2);
    c.rt.block_on(async {
        let me = Principal::Client(client_id(2, 0));
        // The key of client 2 claimed with another key: refused.
        let err = RawConn::connect(&cluster, 0, me, KeyPair::generate())
            .await
            .err();
        assert!(err.is_some_and(|e| e.contains("refused") || e.contains("closed")));
        // A client key the cluster does not know: refused with the reason.
        let err = RawConn::connect(
            &cluster,
            0,
            Principal::Client(client_id(99, 0)),
            KeyPair::generate(),
        )
        .await
        .unwrap_err();
        assert!(err.contains("not in the cluster file"), "{err}");

        // A client key may hold a few connections to a replica, not all of its slots.
        let mut many = Vec::new();
        for _ in 0..8 {
            many.push(
                RawConn::connect(&cluster, 0, me, good.clone())
                    .await
                    .unwrap(),
            );
        }
        let err = RawConn::connect(&cluster, 0, me, good.clone())
            .await
            .unwrap_err();
        assert!(err.contains("already has 8 connections"), "{err}");
        drop(many);
        let auth = NodeAuth::new(me, good.clone(), cluster.keyring());
        let mut conns = Vec::new();
        // The replica notices the closed connections shortly: wait until it accepts again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match RawConn::connect(&cluster, 0, me, good.clone()).await {
                Ok(c) => break conns.push(c),
                Err(e) => assert!(Instant::now() < deadline, "never accepted again: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for r in 1..4 {
            conns.push(
                RawConn::connect(&cluster, r, me, good.clone())
                    .await
                    .unwrap(),
            );
        }
        // A request signed by someone else: rejected, never executed.
        let bad = Request {
            client: client_id(2, 0),
            req_seq: 1,
            read_only: false,
            op: incr("once").into(),
        };
        let forged = SignedRequest {
            request: bad.clone(),
            auth: RequestAuth::Signature(
                NodeAuth::new(me, KeyPair::generate(), cluster.keyring())
                    .sign(&bad.signing_bytes())
                    .into(),
            ),
        };
        for conn in &mut conns {
            conn.send(&Frame::Request(forged.clone())).await.unwrap();
        }
        // The same signed request five times to every replica.
        let request = Request {
            client: client_id(2, 0),
            req_seq: 2,
            read_only: false,
            op: incr("once").into(),
        };
        let signed = SignedRequest {
            auth: RequestAuth::Signature(auth.sign(&request.signing_bytes()).into()),
            request,
        };
        let mut results = Vec::new();
        // Five copies at once: one execution, one reply per replica (copies that arrive while
        // the request is pending are absorbed).
        for conn in conns.iter_mut() {
            for _ in 0..5 {
                conn.send(&Frame::Request(signed.clone())).await.unwrap();
            }
        }
        for (r, conn) in conns.iter_mut().enumerate() {
            results.push(next_reply(conn, &auth, r as u32).await);
        }
        // Retransmissions after execution are answered from the client table.
        for (r, conn) in conns.iter_mut().enumerate() {
            for _ in 0..3 {
                conn.send(&Frame::Request(signed.clone())).await.unwrap();
                results.push(next_reply(conn, &auth, r as u32).await);
            }
        }
        assert_eq!(results.len(), 16);
        assert!(results.iter().all(|r| *r == results[0]));
        assert_eq!(reply(&results[0]), KvReply::Int(1), "executed exactly once");
    });
    let client = c.client(1);
    let r = c.rt.block_on(client.invoke(get("once"))).unwrap();
    assert_eq!(reply(&r), KvReply::Bulk(b"1".to_vec()));
    for i in 0..4 {
        let m = |label| c.metric(i, "shieldwall_rejected_total", label);
        assert!(m("reason=\"bad_client_auth\"") >= 1.0, "replica {i}");
    }
    assert!(c.metric(0, "shieldwall_rejected_total", "reason=\"bad_handshake\"") >= 2.0);
}

/// README's first command: `shieldwall local` serves Redis clients, and Ctrl-C (SIGINT) stops
/// the gateway and every replica it started.
#[test]
fn local_serves_redis_clients_and_stops_cleanly_on_ctrl_c() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("local");
    let resp = format!("127.0.0.1:{}", free_ports(1)[0]);
    let log = std::fs::File::create(dir.path().join("local.log")).unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["local", "--resp", &resp, "--for", "120s"])
        .arg("--dir")
        .arg(&cluster_dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let show_log = || std::fs::read_to_string(dir.path().join("local.log")).unwrap_or_default();
    wait_for("the RESP front of `local`", Duration::from_secs(60), || {
        std::net::TcpStream::connect(&resp).is_ok()
    });
    let client = redis::Client::open(format!("redis://{resp}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let _: () = con.set("hello", "world").unwrap();
    let v: String = con.get("hello").unwrap();
    assert_eq!(v, "world");
    let out = show_log();
    assert!(out.contains("redis-cli -p"), "prints how to connect: {out}");

    // The status command sees the cluster `local` started.
    let config = cluster_dir.join("cluster.toml");
    let status = std::process::Command::new(bin())
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("4 of 4 replicas answered"), "{text}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "local did not stop: {}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}: {}", show_log());
    // Every replica is gone: none of their ports answers.
    let cluster = shieldwall_node::ClusterConfig::load(&config).unwrap();
    for r in &cluster.replicas {
        assert!(
            std::net::TcpStream::connect(&r.address).is_err(),
            "replica {} still listens",
            r.id
        );
    }
}

/// `status` exits non-zero once fewer than a quorum of replicas answer.
#[test]
fn status_reports_a_lost_quorum() {
    let _serial = serial();
    let mut c = TestCluster::new(3, "crash", &[]);
    c.start_all();
    let run = |c: &TestCluster| {
        std::process::Command::new(bin())
            .args(["status", "--timeout-ms", "500", "--config"])
            .arg(&c.config_path)
            .output()
            .unwrap()
    };
    let out = run(&c);
    assert!(out.status.success());
    c.kill(1);
    let out = run(&c);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "2 of 3 is a quorum: {text}");
    assert!(text.contains("2 of 3 replicas answered"), "{text}");
    c.kill(2);
    let out = run(&c);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "1 of 3 is not a quorum: {text}");
    assert!(text.contains("NOT ENOUGH"), "{text}");
}

/// Protocol settings of the durable tests: checkpoints (and so snapshot saves and log
/// compaction) every 16 batches, and timeouts short enough that a view change after the
/// restart costs about a second.
const DURABLE_SETTINGS: &[&str] = &[
    "checkpoint_interval=16",
    "watermark_window=64",
    "request_timeout_ms=1000",
    "view_change_timeout_ms=1000",
];

/// Durable mode: `kill -9` of every replica at once, with writes in flight, loses no
/// acknowledged write. The replicas restart from their data directories (checkpoint and
/// write-ahead log), every acknowledged value reads back, and the cluster takes new writes.
#[test]
fn durable_cluster_survives_killing_every_replica_mid_workload() {
    let _serial = serial();
    let mut c = TestCluster::with_durability(4, "byzantine", "durable", DURABLE_SETTINGS);
    c.start_all();
    let client = c.client(1);
    let acked = std::sync::Arc::new(Mutex::new(BTreeMap::new()));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let client = client.clone();
            let acked = acked.clone();
            c.rt.spawn(async move {
                for i in 0.. {
                    let (key, value) = (format!("k{w}-{i}"), format!("v{w}.{i}"));
                    // Once the replicas die a write fails or hangs until the task is aborted.
                    let Ok(r) = client.invoke(set(&key, &value)).await else {
                        return;
                    };
                    assert_eq!(reply(&r), KvReply::Ok);
                    acked.lock().unwrap().insert(key, value);
                }
            })
        })
        .collect();
    drop(client);
    wait_for("300 acknowledged writes", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= 300
    });
    let syncs = c.metric(0, "shieldwall_storage_syncs_total", "");
    let records = c.metric(0, "shieldwall_storage_records_total", "");
    assert!(
        syncs > 0.0 && records >= syncs,
        "{syncs} syncs, {records} records"
    );
    assert!(c.metric(0, "shieldwall_storage_sync_latency_seconds_count", "") > 0.0);
    assert!(c.metrics(0).contains("shieldwall_held_outputs"));
    c.kill_all();
    for w in &writers {
        w.abort();
    }
    for w in writers {
        let r = c.rt.block_on(w);
        assert!(
            r.as_ref().map_or_else(|e| e.is_cancelled(), |_| true),
            "a writer failed: {r:?}"
        );
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} writes acknowledged before every replica was killed",
        acked.len()
    );

    let restarted_at = Instant::now();
    for i in 0..4 {
        c.start(i);
    }
    c.wait_ready(&[0, 1, 2, 3]);
    for i in 0..4 {
        let log = c.log(i);
        let line = log
            .lines()
            .find(|l| l.contains("recovered the saved state"))
            .unwrap_or_else(|| panic!("replica {i} did not recover from its disk"));
        eprintln!("replica {i}: {line}");
        // Checkpoints every 16 batches: the replica restored one and replayed the log after it.
        assert!(line.contains("checkpoint_seq=Some("), "{line}");
    }
    // A new client key: client key 1's requests in flight at the kill are the old client's.
    let client = c.client(2);
    assert_all_readable(&c, &client, &acked);
    c.rt.block_on(async {
        for i in 0..20 {
            let r = client
                .invoke(set(&format!("after-{i}"), "yes"))
                .await
                .unwrap();
            assert_eq!(reply(&r), KvReply::Ok);
        }
        let r = client.invoke_read(get("after-19")).await.unwrap();
        assert_eq!(reply(&r), KvReply::Bulk(b"yes".to_vec()));
    });
    eprintln!(
        "every acknowledged write read back and new writes done {:?} after the restart",
        restarted_at.elapsed()
    );
}

/// Durable mode: a replica whose data directory is lost while it is stopped rejoins by state
/// transfer. First its saved state is wiped but its incarnation marker kept (it knows it ran
/// before: amnesia recovery from its peers), then the whole directory (it starts fresh).
#[test]
fn durable_replica_with_a_wiped_data_directory_rejoins_by_state_transfer() {
    let _serial = serial();
    let mut c = TestCluster::with_durability(4, "byzantine", "durable", DURABLE_SETTINGS);
    c.start_all();
    library_workload(&c, "a", 4, 20);
    for (round, whole_directory, expect) in [
        ("b", false, "restarted without its state"),
        ("c", true, "mode=\"fresh\""),
    ] {
        c.kill(3);
        let data = c.data_dir(3);
        assert!(data.join("wal").is_dir() && data.join("snapshots").is_dir());
        if whole_directory {
            std::fs::remove_dir_all(&data).unwrap();
        } else {
            std::fs::remove_dir_all(data.join("wal")).unwrap();
            std::fs::remove_dir_all(data.join("snapshots")).unwrap();
        }
        // The other three go on without it (f = 1), past several checkpoints.
        library_workload(&c, round, 4, 20);
        let starts_before = c.log(3).matches("replica started").count();
        c.start(3);
        c.wait_ready(&[3]);
        // Its status can answer before the start line reaches the log file.
        wait_for(
            "replica 3 to log its start",
            Duration::from_secs(30),
            || c.log(3).matches("replica started").count() > starts_before,
        );
        let log = c.log(3);
        let start_line = log
            .lines()
            .filter(|l| l.contains("replica started"))
            .nth(starts_before)
            .unwrap_or_default()
            .to_string();
        assert!(start_line.contains(expect), "round {round}: {start_line}");
        // New writes: replica 3 takes part again once it caught up.
        library_workload(&c, &format!("{round}-after"), 1, 10);
        wait_for(
            "replica 3 to catch up with the others",
            Duration::from_secs(30),
            || {
                let done: Vec<u64> = (0..4)
                    .map(|i| c.status(i).map_or(0, |s| s.last_executed))
                    .collect();
                done.iter().all(|d| *d == done[0])
            },
        );
        let s = c.status(3).unwrap();
        assert!(s.stable_checkpoint >= 16, "fetched a checkpoint: {s:?}");
    }
}

/// Durable mode: damage in the write-ahead log that a crash cannot leave (a bad record with
/// valid ones after it) stops the replica at start-up with a non-zero exit, naming the file
/// and offset; it never starts on a log it cannot trust.
#[test]
fn durable_replica_refuses_to_start_on_a_corrupt_log() {
    let _serial = serial();
    let mut c = TestCluster::with_durability(4, "byzantine", "durable", DURABLE_SETTINGS);
    c.start_all();
    library_workload(&c, "a", 2, 10);
    c.kill(3);
    let wal = c.data_dir(3).join("wal");
    let segment = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // Inside the first record's payload (24-byte segment header, 16-byte record header).
    assert!(bytes.len() > 200, "the log holds records");
    bytes[24 + 16 + 2] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    c.start(3);
    let status = c.wait_exit(3, Duration::from_secs(30));
    assert!(!status.success(), "{status}");
    let log = c.log(3);
    let name = segment.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        log.contains("corrupt") && log.contains(&name) && log.contains("offset 24"),
        "the error names the file and offset: {}",
        log.lines().last().unwrap_or_default()
    );
}

/// `local --durability durable --data DIR`, stopped and run again with the same DIR, reuses
/// the cluster (file, keys, addresses) and its replicas recover what was written.
#[test]
fn local_durable_cluster_restarts_from_its_data_directory() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("local");
    let run = |round: u32| {
        let resp = format!("127.0.0.1:{}", free_ports(1)[0]);
        let log_path = dir.path().join(format!("local-{round}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = std::process::Command::new(bin())
            .args(["local", "--durability", "durable", "--resp", &resp])
            .args(["--for", "120s", "--data"])
            .arg(&data)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let show_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        wait_for("the RESP front of `local`", Duration::from_secs(60), || {
            std::net::TcpStream::connect(&resp).is_ok() || child.try_wait().unwrap().is_some()
        });
        assert!(child.try_wait().unwrap().is_none(), "{}", show_log());
        let client = redis::Client::open(format!("redis://{resp}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        if round == 0 {
            let _: () = con.set("kept", "across restarts").unwrap();
            assert!(show_log().contains("durable durability"), "{}", show_log());
        } else {
            let v: String = con.get("kept").unwrap();
            assert_eq!(v, "across restarts");
            assert!(show_log().contains("reused the cluster"), "{}", show_log());
        }
        drop(con);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let mut exit = None;
        wait_for("local to stop", Duration::from_secs(30), || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        });
        assert!(exit.unwrap().success(), "{}", show_log());
    };
    run(0);
    run(1);
    // A memory-mode cluster directory is refused, with the reason.
    let memory = dir.path().join("memory");
    let out = std::process::Command::new(bin())
        .args(["keygen", "--replicas", "4", "--out"])
        .arg(&memory)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(bin())
        .args(["local", "--for", "1s", "--data"])
        .arg(&memory)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("memory-mode"),
        "{text}"
    );
}

/// Durable mode: a replica that stops responding (SIGSTOP) while the others run far past its
/// log (several watermark windows) costs them bounded memory (their queues to it are bounded in
/// bytes); once it resumes, it catches up by a snapshot transfer with bounded memory of its own.
/// Then the same replica is killed, the others move far ahead again, and after a restart from
/// its (now stale) disk it catches up the same way.
#[test]
fn a_replica_far_behind_catches_up_from_a_snapshot_with_bounded_memory() {
    const RSS_MAX_KIB: u64 = 256 * 1024;
    let _serial = serial();
    let mut c = TestCluster::with_durability(4, "byzantine", "durable", DURABLE_SETTINGS);
    c.start_all();
    library_workload(&c, "warm", 4, 10);
    let executed = |c: &TestCluster, i: u32| c.status(i).map_or(0, |s| s.last_executed);
    let caught_up = |c: &TestCluster| {
        let done: Vec<u64> = (0..4).map(|i| executed(c, i)).collect();
        done.iter().all(|d| *d == done[0])
    };

    // 1. Paused: its TCP buffers fill, the others' queues to it hit their byte bound.
    let pid = c.pid(3).to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let before = executed(&c, 0);
    library_workload(&c, "paused", 4, 60);
    let ahead = executed(&c, 0);
    // More than a watermark window (64): nothing it could still order, only a snapshot helps.
    assert!(
        ahead > before + 64,
        "the others ran {} batches past it",
        ahead - before
    );
    for i in 0..3 {
        let rss = c.rss_kib(i);
        assert!(
            rss < RSS_MAX_KIB,
            "replica {i} holds {rss} KiB while replica 3 lags"
        );
    }
    signal("-CONT");
    library_workload(&c, "resumed", 1, 10);
    wait_for(
        "replica 3 to catch up after a pause",
        Duration::from_secs(30),
        || caught_up(&c),
    );
    let installed = c.metric(3, "shieldwall_snapshots_installed_total", "");
    assert!(installed >= 1.0, "caught up by a snapshot: {installed}");
    let rss = c.rss_kib(3);
    assert!(
        rss < RSS_MAX_KIB,
        "replica 3 holds {rss} KiB after catching up"
    );

    // 2. Killed, the others run far past its log, restarted from its stale disk.
    c.kill(3);
    library_workload(&c, "killed", 4, 60);
    c.start(3);
    c.wait_ready(&[3]);
    assert!(
        c.log(3).contains("recovered the saved state"),
        "{}",
        c.log(3)
    );
    library_workload(&c, "restarted", 1, 10);
    wait_for(
        "replica 3 to catch up after a restart",
        Duration::from_secs(30),
        || caught_up(&c),
    );
    assert!(c.metric(3, "shieldwall_snapshots_installed_total", "") >= 1.0);
    let rss = c.rss_kib(3);
    assert!(
        rss < RSS_MAX_KIB,
        "replica 3 holds {rss} KiB after catching up"
    );
}
