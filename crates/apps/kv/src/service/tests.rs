use proptest::prelude::*;
use shieldwall_node::Service;

use super::*;
use crate::ops::encode;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn set(svc: &mut KvService, key: &str, value: &str) -> KvReply {
    svc.apply(KvOp::Set {
        key: b(key),
        value: b(value),
        condition: SetCondition::Always,
        get: false,
    })
}

fn get(svc: &KvService, key: &str) -> KvReply {
    svc.query(&KvOp::Get { key: b(key) })
}

fn keys(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|k| b(k)).collect()
}

fn err(line: &str) -> KvReply {
    KvReply::Error(line.to_string())
}

/// Recomputes the derived byte count from the map, to check the incremental accounting.
fn recount(svc: &KvService) -> u64 {
    svc.map.iter().map(|(k, v)| entry_bytes(k, v)).sum()
}

#[test]
fn get_and_set() {
    let mut svc = KvService::new();
    assert_eq!(get(&svc, "a"), KvReply::Nil);
    assert_eq!(set(&mut svc, "a", "1"), KvReply::Ok);
    assert_eq!(get(&svc, "a"), KvReply::Bulk(b("1")));
    assert_eq!(set(&mut svc, "a", "2"), KvReply::Ok);
    assert_eq!(get(&svc, "a"), KvReply::Bulk(b("2")));
    assert_eq!(
        set(&mut svc, "", ""),
        KvReply::Ok,
        "empty key and value are fine"
    );
    assert_eq!(get(&svc, ""), KvReply::Bulk(vec![]));
    assert_eq!(svc.state_bytes(), recount(&svc));
}

fn set_with(
    svc: &mut KvService,
    key: &str,
    value: &str,
    condition: SetCondition,
    get: bool,
) -> KvReply {
    svc.apply(KvOp::Set {
        key: b(key),
        value: b(value),
        condition,
        get,
    })
}

#[test]
fn set_nx_xx_get() {
    use SetCondition::{IfAbsent, IfPresent};
    let mut svc = KvService::new();
    assert_eq!(set_with(&mut svc, "k", "1", IfPresent, false), KvReply::Nil);
    assert_eq!(get(&svc, "k"), KvReply::Nil);
    assert_eq!(set_with(&mut svc, "k", "1", IfAbsent, false), KvReply::Ok);
    assert_eq!(set_with(&mut svc, "k", "2", IfAbsent, false), KvReply::Nil);
    assert_eq!(get(&svc, "k"), KvReply::Bulk(b("1")));
    assert_eq!(set_with(&mut svc, "k", "3", IfPresent, false), KvReply::Ok);
    assert_eq!(get(&svc, "k"), KvReply::Bulk(b("3")));
    // GET returns the previous value whether or not the write happened.
    assert_eq!(
        set_with(&mut svc, "k", "4", SetCondition::Always, true),
        KvReply::Bulk(b("3"))
    );
    assert_eq!(
        set_with(&mut svc, "k", "5", IfAbsent, true),
        KvReply::Bulk(b("4"))
    );
    assert_eq!(get(&svc, "k"), KvReply::Bulk(b("4")));
    assert_eq!(set_with(&mut svc, "new", "x", IfAbsent, true), KvReply::Nil);
    assert_eq!(get(&svc, "new"), KvReply::Bulk(b("x")));
    assert_eq!(
        set_with(&mut svc, "none", "x", IfPresent, true),
        KvReply::Nil
    );
    assert_eq!(get(&svc, "none"), KvReply::Nil);
    assert_eq!(svc.state_bytes(), recount(&svc));
}

#[test]
fn del_and_exists() {
    let mut svc = KvService::new();
    set(&mut svc, "a", "1");
    set(&mut svc, "b", "2");
    assert_eq!(
        svc.query(&KvOp::Exists {
            keys: keys(&["a", "a", "b", "c"])
        }),
        KvReply::Int(3),
        "duplicates count twice"
    );
    assert_eq!(
        svc.apply(KvOp::Del {
            keys: keys(&["a", "a", "c"])
        }),
        KvReply::Int(1),
        "a key deleted twice counts once"
    );
    assert_eq!(
        svc.query(&KvOp::Exists { keys: keys(&["a"]) }),
        KvReply::Int(0)
    );
    assert_eq!(svc.query(&KvOp::DbSize), KvReply::Int(1));
    assert_eq!(svc.state_bytes(), recount(&svc));
}

fn incr(svc: &mut KvService, key: &str, delta: i64) -> KvReply {
    svc.apply(KvOp::IncrBy { key: b(key), delta })
}

fn decr(svc: &mut KvService, key: &str, delta: i64) -> KvReply {
    svc.apply(KvOp::DecrBy { key: b(key), delta })
}

#[test]
fn incr_and_decr() {
    let mut svc = KvService::new();
    assert_eq!(incr(&mut svc, "n", 1), KvReply::Int(1));
    assert_eq!(incr(&mut svc, "n", 10), KvReply::Int(11));
    assert_eq!(decr(&mut svc, "n", 1), KvReply::Int(10));
    assert_eq!(decr(&mut svc, "n", 20), KvReply::Int(-10));
    assert_eq!(get(&svc, "n"), KvReply::Bulk(b("-10")));
    assert_eq!(decr(&mut svc, "m", -5), KvReply::Int(5));
    assert_eq!(svc.state_bytes(), recount(&svc));
}

#[test]
fn incr_errors() {
    let mut svc = KvService::new();
    for bad in ["abc", "", " 1", "1.5", "+1", "01", "99999999999999999999"] {
        set(&mut svc, "s", bad);
        assert_eq!(incr(&mut svc, "s", 1), err(errors::NOT_INTEGER), "{bad:?}");
        assert_eq!(
            get(&svc, "s"),
            KvReply::Bulk(b(bad)),
            "unchanged after an error"
        );
    }
    set(&mut svc, "max", &i64::MAX.to_string());
    assert_eq!(incr(&mut svc, "max", 1), err(errors::OVERFLOW));
    assert_eq!(decr(&mut svc, "max", -1), err(errors::OVERFLOW));
    assert_eq!(incr(&mut svc, "max", 0), KvReply::Int(i64::MAX));
    set(&mut svc, "min", &i64::MIN.to_string());
    assert_eq!(decr(&mut svc, "min", 1), err(errors::OVERFLOW));
    assert_eq!(incr(&mut svc, "min", -1), err(errors::OVERFLOW));
    assert_eq!(
        decr(&mut svc, "zero", i64::MIN),
        err(errors::DECREMENT_OVERFLOW)
    );
    assert_eq!(get(&svc, "zero"), KvReply::Nil);
    assert_eq!(incr(&mut svc, "zero", i64::MIN), KvReply::Int(i64::MIN));
}

#[test]
fn append_and_strlen() {
    let mut svc = KvService::new();
    let strlen = |svc: &KvService, key: &str| svc.query(&KvOp::Strlen { key: b(key) });
    assert_eq!(strlen(&svc, "a"), KvReply::Int(0));
    assert_eq!(
        svc.apply(KvOp::Append {
            key: b("a"),
            value: b("hello")
        }),
        KvReply::Int(5)
    );
    assert_eq!(
        svc.apply(KvOp::Append {
            key: b("a"),
            value: b(" world")
        }),
        KvReply::Int(11)
    );
    assert_eq!(get(&svc, "a"), KvReply::Bulk(b("hello world")));
    assert_eq!(strlen(&svc, "a"), KvReply::Int(11));
    assert_eq!(
        svc.apply(KvOp::Append {
            key: b("empty"),
            value: vec![]
        }),
        KvReply::Int(0)
    );
    assert_eq!(
        get(&svc, "empty"),
        KvReply::Bulk(vec![]),
        "APPEND of nothing creates the key"
    );
    assert_eq!(svc.state_bytes(), recount(&svc));
}

#[test]
fn mget_and_mset() {
    let mut svc = KvService::new();
    assert_eq!(
        svc.apply(KvOp::MSet {
            pairs: vec![(b("a"), b("1")), (b("b"), b("2")), (b("a"), b("3"))]
        }),
        KvReply::Ok
    );
    assert_eq!(
        svc.query(&KvOp::MGet {
            keys: keys(&["a", "b", "c", "a"])
        }),
        KvReply::Array(vec![Some(b("3")), Some(b("2")), None, Some(b("3"))]),
        "the later pair wins"
    );
    assert_eq!(svc.query(&KvOp::DbSize), KvReply::Int(2));
    assert_eq!(svc.state_bytes(), recount(&svc));
}

fn keys_reply(list: &[&str]) -> KvReply {
    KvReply::Array(list.iter().map(|k| Some(b(k))).collect())
}

#[test]
fn keys_pattern_and_order() {
    let mut svc = KvService::new();
    for key in [
        "user:2", "user:10", "order:1", "user:1", "usex", "hello", "hallo", "hxllo",
    ] {
        set(&mut svc, key, "v");
    }
    let keys = |p: &str| svc.query(&KvOp::Keys { pattern: b(p) });
    assert_eq!(keys("user:*"), keys_reply(&["user:1", "user:10", "user:2"]));
    assert_eq!(keys("user:?"), keys_reply(&["user:1", "user:2"]));
    assert_eq!(keys("h[ae]llo"), keys_reply(&["hallo", "hello"]));
    assert_eq!(keys("h[^e]llo"), keys_reply(&["hallo", "hxllo"]));
    assert_eq!(keys("h[a-e]llo"), keys_reply(&["hallo", "hello"]));
    assert_eq!(
        keys("us*"),
        keys_reply(&["user:1", "user:10", "user:2", "usex"])
    );
    assert_eq!(keys("hello"), keys_reply(&["hello"]));
    assert_eq!(keys("nothing*"), keys_reply(&[]));
    assert_eq!(keys("*").clone(), {
        let mut all: Vec<_> = svc.map.iter().map(|(k, _)| Some(k.to_vec())).collect();
        all.sort();
        KvReply::Array(all)
    });
}

#[test]
fn flushall() {
    let mut svc = KvService::new();
    set(&mut svc, "a", "1");
    set(&mut svc, "b", "2");
    assert_eq!(svc.apply(KvOp::FlushAll), KvReply::Ok);
    assert_eq!(svc.query(&KvOp::DbSize), KvReply::Int(0));
    assert_eq!(svc.state_bytes(), 0);
    assert!(svc.is_empty());
}

fn set_op(key: &str, value: &str) -> KvOp {
    KvOp::Set {
        key: b(key),
        value: b(value),
        condition: SetCondition::Always,
        get: false,
    }
}

#[test]
fn a_pipeline_applies_its_writes_in_order() {
    let mut svc = KvService::new();
    let pipeline = KvOp::pipeline(&[
        set_op("a", "1"),
        set_op("a", "2"),
        KvOp::IncrBy {
            key: b("a"),
            delta: 5,
        },
        KvOp::IncrBy {
            key: b("b"),
            delta: 1,
        },
        KvOp::Append {
            key: b("b"),
            value: b("x"),
        },
    ]);
    let reply = svc.execute(7, &pipeline.encode());
    assert_eq!(
        KvReply::decode(&reply),
        Ok(KvReply::Pipeline(vec![
            KvReply::Ok,
            KvReply::Ok,
            KvReply::Int(7),
            KvReply::Int(1),
            KvReply::Int(2),
        ]))
    );
    assert_eq!(get(&svc, "a"), KvReply::Bulk(b("7")));
    assert_eq!(get(&svc, "b"), KvReply::Bulk(b("1x")));
    // As a read it is refused.
    assert_eq!(
        KvReply::decode(&svc.read(7, &pipeline.encode())),
        Ok(err(errors::NOT_READ_ONLY))
    );
}

#[test]
fn a_pipeline_with_a_read_a_nested_pipeline_or_too_many_ops_applies_nothing() {
    let mut svc = KvService::new();
    let bad = [
        vec![set_op("a", "1"), KvOp::Get { key: b("a") }],
        vec![
            set_op("a", "1"),
            KvOp::Set {
                key: b("a"),
                value: b("2"),
                condition: SetCondition::Always,
                get: true,
            },
        ],
        vec![KvOp::pipeline(&[set_op("a", "1")])],
        (0..=PIPELINE_OPS_MAX).map(|_| set_op("a", "1")).collect(),
    ];
    for ops in bad {
        assert_eq!(svc.apply(KvOp::pipeline(&ops)), err(errors::BAD_PIPELINE));
        assert!(svc.is_empty(), "nothing applied");
    }
    // Bytes that are not an operation, after a valid one.
    let garbage = KvOp::Pipeline {
        ops: vec![set_op("a", "1").encode(), vec![0xff, 0xff]],
    };
    assert_eq!(svc.apply(garbage), err(errors::BAD_PIPELINE));
    assert!(svc.is_empty(), "nothing applied");
    let at_limit: Vec<KvOp> = (0..PIPELINE_OPS_MAX).map(|_| set_op("a", "1")).collect();
    let KvReply::Pipeline(replies) = svc.apply(KvOp::pipeline(&at_limit)) else {
        panic!("a pipeline at the limit applies")
    };
    assert_eq!(replies.len(), PIPELINE_OPS_MAX);
}

fn small_limits() -> KvLimits {
    KvLimits {
        key_bytes_max: 8,
        value_bytes_max: 16,
        result_bytes_max: 64,
        op_bytes_max: 128,
        state_bytes_max: 10 * ENTRY_OVERHEAD_BYTES,
    }
}

#[test]
fn key_limit_at_and_past() {
    let mut svc = KvService::with_limits(small_limits());
    let at = "k".repeat(8);
    let past = "k".repeat(9);
    assert_eq!(set(&mut svc, &at, "v"), KvReply::Ok);
    assert_eq!(set(&mut svc, &past, "v"), err(errors::KEY_TOO_LARGE));
    assert_eq!(incr(&mut svc, &past, 1), err(errors::KEY_TOO_LARGE));
    assert_eq!(
        svc.apply(KvOp::Append {
            key: b(&past),
            value: b("v")
        }),
        err(errors::KEY_TOO_LARGE)
    );
    assert_eq!(
        svc.apply(KvOp::MSet {
            pairs: vec![(b("ok"), b("v")), (b(&past), b("v"))]
        }),
        err(errors::KEY_TOO_LARGE)
    );
    assert_eq!(get(&svc, "ok"), KvReply::Nil, "MSET is all or nothing");
    assert_eq!(
        get(&svc, &past),
        KvReply::Nil,
        "reads of long keys find nothing"
    );
}

#[test]
fn value_limit_at_and_past() {
    let mut svc = KvService::with_limits(small_limits());
    let at = "v".repeat(16);
    let past = "v".repeat(17);
    assert_eq!(set(&mut svc, "a", &at), KvReply::Ok);
    assert_eq!(set(&mut svc, "b", &past), err(errors::VALUE_TOO_LARGE));
    assert_eq!(
        svc.apply(KvOp::MSet {
            pairs: vec![(b("c"), b(&past))]
        }),
        err(errors::VALUE_TOO_LARGE)
    );
    set(&mut svc, "x", &"v".repeat(10));
    let append = |svc: &mut KvService, n: usize| {
        svc.apply(KvOp::Append {
            key: b("x"),
            value: b(&"w".repeat(n)),
        })
    };
    assert_eq!(append(&mut svc, 7), err(errors::VALUE_TOO_LARGE));
    assert_eq!(
        get(&svc, "x"),
        KvReply::Bulk(b(&"v".repeat(10))),
        "unchanged"
    );
    assert_eq!(append(&mut svc, 6), KvReply::Int(16));
    assert_eq!(svc.state_bytes(), recount(&svc));
}

#[test]
fn result_limit_at_and_past() {
    let limits = KvLimits {
        value_bytes_max: 100,
        state_bytes_max: u64::MAX,
        ..small_limits()
    };
    // GET: variant (1) + length (1) + bytes; 62 bytes of value make exactly 64.
    let mut svc = KvService::with_limits(limits.clone());
    set(&mut svc, "at", &"v".repeat(62));
    set(&mut svc, "past", &"v".repeat(63));
    let reply = get(&svc, "at");
    assert_eq!(reply.encode().len(), 64);
    assert!(matches!(reply, KvReply::Bulk(_)));
    assert_eq!(get(&svc, "past"), err(errors::RESULT_TOO_LARGE));

    // MGET: variant (1) + count (1) + per element: tag (1) + length (1) + bytes.
    let mut svc = KvService::with_limits(limits.clone());
    set(&mut svc, "a", &"v".repeat(29));
    set(&mut svc, "b", &"v".repeat(29));
    set(&mut svc, "c", &"v".repeat(30));
    let reply = svc.query(&KvOp::MGet {
        keys: keys(&["a", "b"]),
    });
    assert_eq!(reply.encode().len(), 64);
    assert!(matches!(reply, KvReply::Array(_)));
    assert_eq!(
        svc.query(&KvOp::MGet {
            keys: keys(&["a", "c"])
        }),
        err(errors::RESULT_TOO_LARGE)
    );

    // KEYS: twelve 3-byte keys cost 2 + 12 * 5 = 62, the empty key 2 more: exactly 64.
    let mut svc = KvService::with_limits(limits);
    for i in 0..12 {
        set(&mut svc, &format!("k{i:02}"), "");
    }
    set(&mut svc, "", "");
    let reply = svc.query(&KvOp::Keys { pattern: b("*") });
    assert_eq!(reply.encode().len(), 64);
    assert!(matches!(reply, KvReply::Array(_)));
    set(&mut svc, "y", "");
    assert_eq!(
        svc.query(&KvOp::Keys { pattern: b("*") }),
        err(errors::RESULT_TOO_LARGE)
    );
    // A narrower pattern still answers.
    assert_eq!(
        svc.query(&KvOp::Keys { pattern: b("k0*") }),
        keys_reply(&["k00", "k01", "k02", "k03", "k04", "k05", "k06", "k07", "k08", "k09"])
    );
}

#[test]
fn state_limit_refuses_growth_and_allows_shrinking() {
    // Nine entries of 65 bytes: 585 of 640; no room for a tenth entry (at least 65 bytes).
    let mut svc = KvService::with_limits(small_limits());
    for i in 0..9 {
        assert_eq!(set(&mut svc, &format!("{i}"), ""), KvReply::Ok);
    }
    assert_eq!(svc.state_bytes(), 9 * (ENTRY_OVERHEAD_BYTES + 1));
    let full = svc.clone();
    assert_eq!(set(&mut svc, "z", ""), err(errors::OUT_OF_MEMORY));
    assert_eq!(incr(&mut svc, "z", 1), err(errors::OUT_OF_MEMORY));
    assert_eq!(
        svc.apply(KvOp::Append {
            key: b("z"),
            value: b("x")
        }),
        err(errors::OUT_OF_MEMORY)
    );
    assert_eq!(
        svc.apply(KvOp::MSet {
            pairs: vec![(b("0"), b("")), (b("z"), b(""))]
        }),
        err(errors::OUT_OF_MEMORY)
    );
    assert_eq!(svc, full, "refused writes change nothing");
    // Growing an existing value within the room passes; shrinking always passes.
    assert_eq!(
        incr(&mut svc, "0", 1),
        err(errors::NOT_INTEGER),
        "empty is not an integer"
    );
    assert_eq!(set(&mut svc, "0", &"v".repeat(16)), KvReply::Ok);
    assert_eq!(set(&mut svc, "0", ""), KvReply::Ok);
    assert_eq!(
        svc.apply(KvOp::Del {
            keys: keys(&["1", "2"])
        }),
        KvReply::Int(2)
    );
    assert_eq!(svc.state_bytes(), 7 * (ENTRY_OVERHEAD_BYTES + 1));
    assert_eq!(set(&mut svc, "z", ""), KvReply::Ok);
    assert_eq!(svc.state_bytes(), recount(&svc));
}

#[test]
fn state_limit_exact_boundary() {
    let limits = KvLimits {
        state_bytes_max: 2 * ENTRY_OVERHEAD_BYTES + 20,
        value_bytes_max: 100,
        ..KvLimits::default()
    };
    let mut svc = KvService::with_limits(limits.clone());
    assert_eq!(set(&mut svc, "a", &"v".repeat(9)), KvReply::Ok); // 64 + 10
    assert_eq!(
        set(&mut svc, "b", &"v".repeat(10)),
        err(errors::OUT_OF_MEMORY)
    ); // one past
    assert_eq!(set(&mut svc, "b", &"v".repeat(9)), KvReply::Ok); // exactly at
    assert_eq!(svc.state_bytes(), limits.state_bytes_max);
    assert_eq!(
        svc.apply(KvOp::Append {
            key: b("a"),
            value: b("x")
        }),
        err(errors::OUT_OF_MEMORY)
    );
    assert_eq!(
        svc.apply(KvOp::MSet {
            pairs: vec![(b("a"), b("")), (b("b"), b(&"v".repeat(18)))]
        }),
        KvReply::Ok,
        "MSET is charged for the net change"
    );
    assert_eq!(svc.state_bytes(), limits.state_bytes_max - 9 + 9);
    assert_eq!(svc.state_bytes(), recount(&svc));
}

#[test]
fn op_limit_at_and_past() {
    let mut svc = KvService::with_limits(small_limits());
    let op = |n: usize| {
        KvOp::Del {
            keys: vec![vec![b'k'; 1]; n],
        }
        .encode()
    };
    // Del: variant (1) + count (1) + n * (length 1 + byte 1).
    let at = op(63);
    assert_eq!(at.len(), 128);
    assert_eq!(KvReply::decode(&svc.execute(0, &at)), Ok(KvReply::Int(0)));
    let past = op(64);
    assert!(past.len() > 128);
    assert_eq!(
        KvReply::decode(&svc.execute(0, &past)),
        Ok(err(errors::OP_TOO_LARGE))
    );
    assert_eq!(
        KvReply::decode(&svc.read(0, &past)),
        Ok(err(errors::OP_TOO_LARGE))
    );
}

#[test]
fn execute_and_read_through_the_service_trait() {
    let mut svc = KvService::new();
    let run = |svc: &mut KvService, op: KvOp| KvReply::decode(&svc.execute(7, &op.encode()));
    assert_eq!(
        run(
            &mut svc,
            KvOp::Set {
                key: b("a"),
                value: b("1"),
                condition: SetCondition::Always,
                get: false
            }
        ),
        Ok(KvReply::Ok)
    );
    assert_eq!(
        run(&mut svc, KvOp::Get { key: b("a") }),
        Ok(KvReply::Bulk(b("1")))
    );
    let read = |svc: &KvService, op: KvOp| KvReply::decode(&svc.read(7, &op.encode()));
    assert_eq!(
        read(&svc, KvOp::Get { key: b("a") }),
        Ok(KvReply::Bulk(b("1")))
    );
    assert_eq!(read(&svc, KvOp::DbSize), Ok(KvReply::Int(1)));
    for write in [
        KvOp::FlushAll,
        KvOp::Del { keys: keys(&["a"]) },
        KvOp::IncrBy {
            key: b("a"),
            delta: 1,
        },
        KvOp::MSet { pairs: vec![] },
    ] {
        assert_eq!(read(&svc, write), Ok(err(errors::NOT_READ_ONLY)));
    }
    assert_eq!(svc.len(), 1, "reads changed nothing");
    assert_eq!(
        KvReply::decode(&svc.execute(7, b"garbage")),
        Ok(err(errors::MALFORMED_OP))
    );
    assert_eq!(
        KvReply::decode(&svc.read(7, b"")),
        Ok(err(errors::MALFORMED_OP))
    );
    let mut trailing = KvOp::DbSize.encode();
    trailing.push(0);
    assert_eq!(
        KvReply::decode(&svc.execute(7, &trailing)),
        Ok(err(errors::MALFORMED_OP))
    );
}

#[test]
fn snapshot_round_trips_and_is_canonical() {
    let mut a = KvService::new();
    let mut b_svc = KvService::new();
    for i in 0..100u32 {
        set(&mut a, &format!("key{i}"), &format!("value{i}"));
    }
    for i in (0..100u32).rev() {
        set(&mut b_svc, &format!("key{i}"), "tmp");
        set(&mut b_svc, &format!("key{i}"), &format!("value{i}"));
    }
    set(&mut b_svc, "gone", "x");
    b_svc.apply(KvOp::Del {
        keys: keys(&["gone"]),
    });
    assert_eq!(
        a.snapshot().concat(),
        b_svc.snapshot().concat(),
        "same state, same bytes"
    );

    let mut restored = KvService::new();
    set(&mut restored, "stale", "x");
    restored.restore(&a.snapshot().concat()).unwrap();
    assert_eq!(restored, a);
    assert_eq!(restored.state_bytes(), recount(&restored));
    assert_eq!(restored.snapshot().concat(), a.snapshot().concat());

    let mut empty = KvService::new();
    let mut c = a.clone();
    c.restore(&empty.snapshot().concat()).unwrap();
    assert!(c.is_empty());
    assert_eq!(c.state_bytes(), 0);
}

#[test]
fn restore_rejects_bad_snapshots() {
    let mut svc = KvService::new();
    set(&mut svc, "a", "1");
    set(&mut svc, "b", "2");
    let good = svc.snapshot().concat();
    let mut target = KvService::new();
    set(&mut target, "keep", "me");
    let before = target.clone();

    let mut trailing = good.clone();
    trailing.push(0);
    let unsorted = encode(&(SNAPSHOT_VERSION, vec![(b("b"), b("2")), (b("a"), b("1"))]));
    let duplicate = encode(&(SNAPSHOT_VERSION, vec![(b("a"), b("2")), (b("a"), b("1"))]));
    let version = encode(&(SNAPSHOT_VERSION + 1, Vec::<(Vec<u8>, Vec<u8>)>::new()));
    for bad in [
        &b""[..],
        b"\x01",
        &good[..good.len() - 1],
        &trailing,
        &unsorted,
        &duplicate,
        &version,
    ] {
        assert!(target.restore(bad).is_err(), "{bad:?}");
        assert_eq!(target, before, "a failed restore changes nothing");
    }

    let mut small = KvService::with_limits(small_limits());
    let mut big = KvService::new();
    set(&mut big, "a", &"v".repeat(17));
    assert!(
        small.restore(&big.snapshot().concat()).is_err(),
        "value beyond local limits"
    );
    let mut many = KvService::new();
    for i in 0..11 {
        set(&mut many, &format!("{i}"), "");
    }
    assert!(
        small.restore(&many.snapshot().concat()).is_err(),
        "state beyond local limits"
    );
}

fn arb_key() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        Just(b("a")),
        Just(b("b")),
        Just(b("c")),
        Just(b("n")),
        Just(vec![])
    ]
}

fn arb_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b("1")),
        Just(b("-7")),
        Just(b("x")),
        Just(vec![]),
        proptest::collection::vec(any::<u8>(), 0..20)
    ]
}

fn arb_op() -> impl Strategy<Value = KvOp> {
    let condition = prop_oneof![
        Just(SetCondition::Always),
        Just(SetCondition::IfAbsent),
        Just(SetCondition::IfPresent)
    ];
    let keys = proptest::collection::vec(arb_key(), 0..4);
    prop_oneof![
        arb_key().prop_map(|key| KvOp::Get { key }),
        (arb_key(), arb_value(), condition, any::<bool>()).prop_map(
            |(key, value, condition, get)| {
                KvOp::Set {
                    key,
                    value,
                    condition,
                    get,
                }
            }
        ),
        keys.clone().prop_map(|keys| KvOp::Del { keys }),
        (arb_key(), any::<i64>()).prop_map(|(key, delta)| KvOp::IncrBy { key, delta }),
        (arb_key(), -3i64..3).prop_map(|(key, delta)| KvOp::DecrBy { key, delta }),
        (arb_key(), arb_value()).prop_map(|(key, value)| KvOp::Append { key, value }),
        proptest::collection::vec((arb_key(), arb_value()), 0..4)
            .prop_map(|pairs| KvOp::MSet { pairs }),
        keys.prop_map(|keys| KvOp::MGet { keys }),
        Just(KvOp::FlushAll),
    ]
}

proptest! {
    #[test]
    fn execute_never_panics_on_arbitrary_bytes(
        op in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut svc = KvService::new();
        set(&mut svc, "a", "1");
        let reply = KvReply::decode(&svc.execute(0, &op));
        prop_assert!(reply.is_ok());
        let reply = KvReply::decode(&svc.read(0, &op));
        prop_assert!(reply.is_ok());
    }

    #[test]
    fn accounting_and_snapshots_agree_after_any_history(
        ops in proptest::collection::vec(arb_op(), 0..40),
    ) {
        let limits = KvLimits {
            state_bytes_max: 6 * ENTRY_OVERHEAD_BYTES,
            value_bytes_max: 24,
            ..KvLimits::default()
        };
        let mut svc = KvService::with_limits(limits.clone());
        for op in ops {
            let before = svc.clone();
            let reply = svc.apply(op);
            if let KvReply::Error(_) = reply {
                prop_assert_eq!(&svc, &before, "an error leaves the state unchanged");
            }
            prop_assert_eq!(svc.state_bytes(), recount(&svc));
            prop_assert!(svc.state_bytes() <= limits.state_bytes_max);
        }
        // A service rebuilt from the snapshot in a different insertion order is identical.
        let mut rebuilt = KvService::with_limits(limits.clone());
        let mut entries: Vec<_> = svc.map.iter().map(|(k, v)| (k.to_vec(), v.clone())).collect();
        entries.reverse();
        rebuilt.apply(KvOp::MSet { pairs: entries });
        prop_assert_eq!(rebuilt.snapshot().concat(), svc.snapshot().concat());
        let mut restored = KvService::with_limits(limits);
        restored.restore(&svc.snapshot().concat()).unwrap();
        prop_assert_eq!(restored, svc);
    }
}

/// Keys spread over a range large enough for a state of several parts.
fn arb_many_key() -> impl Strategy<Value = Vec<u8>> {
    (0u32..400).prop_map(|i| format!("k{i}").into_bytes())
}

fn arb_many_op() -> impl Strategy<Value = KvOp> {
    let value = proptest::collection::vec(any::<u8>(), 0..160);
    prop_oneof![
        6 => (arb_many_key(), value.clone()).prop_map(|(key, value)| KvOp::Set {
            key,
            value,
            condition: SetCondition::Always,
            get: false,
        }),
        2 => proptest::collection::vec(arb_many_key(), 1..4).prop_map(|keys| KvOp::Del { keys }),
        1 => (arb_many_key(), value.clone()).prop_map(|(key, value)| KvOp::Append { key, value }),
        1 => proptest::collection::vec((arb_many_key(), value), 1..8)
            .prop_map(|pairs| KvOp::MSet { pairs }),
        1 => (arb_many_key(), -3i64..3).prop_map(|(key, delta)| KvOp::IncrBy { key, delta }),
    ]
}

/// The parts a service without kept parts cuts for the same entries.
fn fresh_parts(svc: &KvService) -> Vec<Bytes> {
    let mut fresh = KvService::with_limits(svc.limits.clone());
    fresh.restore(&svc.clone().snapshot().concat()).unwrap();
    fresh.snapshot()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the writes between snapshots, a service's parts (kept ones included) are the
    /// parts cut from scratch for the same entries, and restoring them gives the same service.
    #[test]
    fn kept_parts_are_the_parts_cut_from_scratch(
        rounds in proptest::collection::vec(
            (proptest::collection::vec(arb_many_op(), 0..60), any::<bool>()),
            1..8,
        ),
    ) {
        let mut svc = KvService::new();
        for (ops, flush) in rounds {
            for op in ops {
                svc.apply(op);
            }
            if flush && svc.len() > 300 {
                svc.apply(KvOp::FlushAll);
            }
            let parts = svc.snapshot();
            prop_assert_eq!(&parts, &fresh_parts(&svc));
            let mut restored = KvService::new();
            restored.restore(&parts.concat()).unwrap();
            prop_assert_eq!(&restored, &svc);
        }
    }
}

#[test]
fn a_snapshot_reencodes_only_the_parts_written_since_the_last() {
    let mut svc = KvService::new();
    for i in 0..5_000u32 {
        set(&mut svc, &format!("key{i:05}"), &"v".repeat(64));
    }
    let first = svc.snapshot();
    assert!(first.len() > 20, "a state of many parts: {}", first.len());
    let total: usize = first.iter().map(Bytes::len).sum();
    let again = svc.snapshot();
    assert!(
        first
            .iter()
            .zip(&again)
            .all(|(a, b)| a.as_ptr() == b.as_ptr()),
        "no write: the very same buffers"
    );
    // Two writes (one of them a new key) change the parts they fall in, and only those.
    set(&mut svc, "key00100", "changed");
    set(&mut svc, "key04000x", "new");
    let (third, encoded) = svc.parts.parts(&svc.map);
    assert!(
        encoded > 0 && encoded < total / 10,
        "re-encoded {encoded} of {total} bytes"
    );
    let shared = third
        .iter()
        .filter(|p| again.iter().any(|a| a.as_ptr() == p.as_ptr()))
        .count();
    assert!(
        shared + 4 >= third.len(),
        "{shared} of {} parts kept",
        third.len()
    );
    assert_eq!(
        [&again[..1], &third[..]].concat(),
        fresh_parts(&svc),
        "and they are the parts cut from scratch"
    );
}

#[test]
fn restore_rejects_entries_not_cut_where_snapshots_cut() {
    let mut svc = KvService::new();
    for i in 0..2_000u32 {
        set(&mut svc, &format!("key{i:05}"), &"v".repeat(64));
    }
    assert!(svc.snapshot().len() > 3);
    // The same entries in one sequence (the layout of version 1 under version 2's number).
    let entries: Vec<(Vec<u8>, Vec<u8>)> = svc
        .map
        .iter()
        .map(|(k, v)| (k.to_vec(), v.clone()))
        .collect();
    let one_part = encode(&(SNAPSHOT_VERSION, entries));
    let mut target = KvService::new();
    let err = target.restore(&one_part).unwrap_err();
    assert!(err.0.contains("not cut where snapshots cut"), "{err}");
    assert!(target.is_empty());
    // An empty part is never cut.
    let mut with_empty = svc.snapshot().concat();
    with_empty.push(0);
    assert!(target.restore(&with_empty).is_err());
}

#[test]
fn noted_keys_are_bounded_and_repeats_do_not_count() {
    let mut svc = KvService::new();
    for i in 0..3_000u32 {
        set(&mut svc, &format!("key{i:05}"), &"v".repeat(64));
    }
    let (first, _) = svc.parts.parts(&svc.map);
    let total: usize = first.iter().map(Bytes::len).sum();
    // One key written more times than the bound: the repeats are dropped, the parts kept.
    for i in 0..(super::parts::WRITTEN_MAX as u32 + 10) {
        set(&mut svc, "key00007", &format!("{i}"));
    }
    let (second, encoded) = svc.parts.parts(&svc.map);
    assert!(encoded < total / 10, "re-encoded {encoded} of {total}");
    assert_eq!(second, fresh_parts(&svc)[1..]);
    // More distinct keys than the bound: the kept parts are dropped, everything is encoded
    // again, and the parts are still the ones cut from scratch.
    for i in 0..(super::parts::WRITTEN_MAX as u32 + 10) {
        set(&mut svc, &format!("new{i:07}"), "");
    }
    let (third, encoded) = svc.parts.parts(&svc.map);
    assert_eq!(encoded, third.iter().map(Bytes::len).sum::<usize>());
    assert_eq!(third, fresh_parts(&svc)[1..]);
}
