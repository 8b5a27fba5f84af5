use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::{MemFs, RealFs};

const OPTS: WalOptions = WalOptions {
    segment_bytes_max: 1024,
    record_bytes_max: 512,
};

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 60) as usize + 1;
    (0..len)
        .map(|j| (i as u8).wrapping_mul(31) ^ j as u8)
        .collect()
}

fn rec(lsn: Lsn, key: u64) -> Recovered {
    Recovered {
        lsn,
        key,
        payload: payload(key),
    }
}

fn mem() -> (MemFs, PathBuf) {
    (MemFs::new(), PathBuf::from("/replica/wal"))
}

/// Appends records with keys `keys`, syncing every `per_sync`.
fn fill<F: Fs>(wal: &mut Wal<F>, keys: std::ops::Range<u64>, per_sync: u64) -> Vec<Recovered> {
    let mut out = Vec::new();
    for key in keys {
        let lsn = wal.append(key, &payload(key)).unwrap();
        out.push(rec(lsn, key));
        if (key + 1) % per_sync == 0 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap();
    out
}

fn open<F: Fs>(fs: &F, dir: &Path) -> Result<(Wal<F>, Vec<Recovered>)> {
    Wal::open(fs.clone(), dir, OPTS)
}

fn segments<F: Fs>(fs: &F, dir: &Path) -> Vec<PathBuf> {
    fs.list(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .map(|n| dir.join(n))
        .collect()
}

/// Replaces a file's content durably.
fn overwrite<F: Fs>(fs: &F, path: &Path, bytes: &[u8]) {
    let mut f = fs.create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync().unwrap();
    fs.sync_dir(path.parent().unwrap()).unwrap();
}

fn image<F: Fs>(fs: &F, dir: &Path) -> Vec<(String, Vec<u8>)> {
    fs.list(dir)
        .unwrap()
        .into_iter()
        .map(|n| {
            let bytes = fs.read(&dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

fn restore<F: Fs>(fs: &F, dir: &Path, image: &[(String, Vec<u8>)]) {
    fs.create_dir_all(dir).unwrap();
    for (name, bytes) in image {
        overwrite(fs, &dir.join(name), bytes);
    }
}

/// Start offsets of the records of an intact segment.
fn record_offsets(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut off = SEG_HDR;
    while off < bytes.len() {
        out.push(off as u64);
        off += REC_HDR + u32_at(bytes, off) as usize;
    }
    out
}

fn assert_corrupt(err: StorageError, want_path: &Path, want_offset: u64) {
    match err {
        StorageError::Corrupt { path, offset, .. } => {
            assert_eq!(
                (path.as_path(), offset),
                (want_path, want_offset),
                "{err_msg}",
                err_msg = "wrong location"
            );
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

// ---- generic scenarios, run on MemFs and RealFs ----

fn roundtrip<F: Fs>(fs: F, dir: &Path) {
    let (mut wal, recovered) = open(&fs, dir).unwrap();
    assert!(recovered.is_empty());
    assert_eq!((wal.durable_lsn(), wal.next_lsn()), (0, 1));
    let expected = fill(&mut wal, 0..50, 7);
    assert_eq!(wal.durable_lsn(), 50);
    drop(wal);
    let (wal, recovered) = open(&fs, dir).unwrap();
    assert_eq!(recovered, expected);
    assert_eq!(wal.recovery_report().torn_tail, None);
    assert_eq!((wal.durable_lsn(), wal.next_lsn()), (50, 51));
}

/// Cuts the last record at every byte offset, and zero-fills from every offset.
fn torn_tail_at_every_offset<F: Fs>(fresh: impl Fn() -> (F, PathBuf)) {
    let (fs, dir) = fresh();
    let (mut wal, _) = open(&fs, &dir).unwrap();
    let expected = fill(&mut wal, 0..3, 100);
    drop(wal);
    let base = image(&fs, &dir);
    let seg = dir.join(segment_file_name(1));
    let full = fs.read(&seg).unwrap();
    let last_start = full.len() - REC_HDR - payload(2).len();

    let check = |mutate: &dyn Fn(&F, &Path), dropped: u64| {
        let (fs, dir) = fresh();
        restore(&fs, &dir, &base);
        mutate(&fs, &seg_in(&dir));
        let (mut wal, recovered) = open(&fs, &dir).unwrap();
        assert_eq!(recovered, expected[..2]);
        let torn = wal.recovery_report().torn_tail.clone();
        if dropped == 0 {
            assert_eq!(torn, None);
        } else {
            let torn = torn.unwrap();
            assert_eq!(
                (torn.offset, torn.bytes_dropped),
                (last_start as u64, dropped)
            );
        }
        assert_eq!(fs.file_len(&seg_in(&dir)).unwrap(), last_start as u64);
        // The log goes on where the intact records end.
        assert_eq!(wal.append(7, &payload(7)).unwrap(), 3);
        wal.sync().unwrap();
        drop(wal);
        let (wal, recovered) = open(&fs, &dir).unwrap();
        assert_eq!(recovered[..2], expected[..2]);
        assert_eq!(recovered[2], rec(3, 7));
        assert_eq!(wal.recovery_report().torn_tail, None);
    };
    fn seg_in(dir: &Path) -> PathBuf {
        dir.join(segment_file_name(1))
    }

    for cut in last_start..full.len() {
        let truncate = move |fs: &F, path: &Path| {
            let mut f = fs.open_append(path).unwrap();
            f.truncate(cut as u64).unwrap();
            f.sync().unwrap();
        };
        check(&truncate, (cut - last_start) as u64);
        let original = full.clone();
        let zero_fill = move |fs: &F, path: &Path| {
            let mut bytes = original.clone();
            bytes[cut..].fill(0);
            overwrite(fs, path, &bytes);
        };
        check(&zero_fill, (full.len() - last_start) as u64);
    }
    // A complete last record with a bad checksum and nothing after it is a torn tail too
    // (a sector of its payload never reached the disk).
    let full2 = full.clone();
    check(
        &move |fs: &F, path: &Path| {
            let mut bytes = full2.clone();
            let n = bytes.len();
            bytes[n - 1] ^= 0x40;
            overwrite(fs, path, &bytes);
        },
        (full.len() - last_start) as u64,
    );
    // Zeros after the last complete record (size updated, data not): all records kept.
    let (fs, dir) = fresh();
    restore(&fs, &dir, &base);
    let mut bytes = full.clone();
    bytes.extend_from_slice(&[0; 100]);
    overwrite(&fs, &seg_in(&dir), &bytes);
    let (wal, recovered) = open(&fs, &dir).unwrap();
    assert_eq!(recovered, expected);
    assert_eq!(
        wal.recovery_report()
            .torn_tail
            .as_ref()
            .unwrap()
            .bytes_dropped,
        100
    );
}

fn corruption_in_the_middle<F: Fs>(fresh: impl Fn() -> (F, PathBuf)) {
    let (fs, dir) = fresh();
    let (mut wal, _) = open(&fs, &dir).unwrap();
    let expected = fill(&mut wal, 0..60, 5);
    assert!(wal.segment_count() >= 3);
    drop(wal);
    let base = image(&fs, &dir);
    let segs = segments(&fs, &dir);
    let first_rec = SEG_HDR as u64;
    let seg1 = &base
        .iter()
        .find(|(n, _)| Some(n.as_ref()) == segs[1].file_name())
        .unwrap()
        .1;
    let second_rec = record_offsets(seg1)[1];
    let seg0_last = *record_offsets(&base[0].1).last().unwrap();

    let damaged = |seg: usize, at: u64, edit: &dyn Fn(&mut Vec<u8>)| {
        let (fs, dir) = fresh();
        restore(&fs, &dir, &base);
        let path = dir.join(segs[seg].file_name().unwrap());
        let mut bytes = fs.read(&path).unwrap();
        edit(&mut bytes);
        overwrite(&fs, &path, &bytes);
        assert_corrupt(open(&fs, &dir).unwrap_err(), &path, at);
    };
    let last = segs.len() - 1;
    // A flipped payload byte in the first record of the first and of the last segment.
    damaged(0, first_rec, &|b| b[first_rec as usize + REC_HDR] ^= 1);
    damaged(last, first_rec, &|b| b[first_rec as usize + REC_HDR] ^= 1);
    // A flipped key byte in the second record.
    damaged(1, second_rec, &|b| b[second_rec as usize + 8] ^= 0x80);
    // The last record of a segment that is not the last one: not a torn tail.
    damaged(0, seg0_last, &|b| {
        let n = b.len();
        b[n - 1] ^= 1;
    });
    // A length beyond record_bytes_max in the middle of the last segment.
    damaged(last, first_rec, &|b| {
        b[first_rec as usize..first_rec as usize + 4].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    // A truncated earlier segment.
    damaged(0, seg0_last, &|b| b.truncate(b.len() - 3));
    // Bad headers.
    damaged(0, 0, &|b| b[0] = b'X');
    damaged(last, 0, &|b| b[8] = 9);
    damaged(1, 0, &|b| b[..SEG_HDR].fill(0));

    // The offset of the damage in the first segment's last record, exactly.
    {
        let (fs, dir) = fresh();
        restore(&fs, &dir, &base);
        let path = dir.join(segs[0].file_name().unwrap());
        let mut bytes = fs.read(&path).unwrap();
        let in_first: Vec<_> = expected
            .iter()
            .take_while(|r| {
                r.lsn < parse_segment_name(segs[1].file_name().unwrap().to_str().unwrap()).unwrap()
            })
            .collect();
        let last_len = REC_HDR + in_first.last().unwrap().payload.len();
        let at = bytes.len() - last_len;
        bytes[at + 4] ^= 0xff;
        overwrite(&fs, &path, &bytes);
        assert_corrupt(open(&fs, &dir).unwrap_err(), &path, at as u64);
    }

    // A missing segment in the middle is an LSN gap.
    let (fs, dir) = fresh();
    restore(&fs, &dir, &base);
    fs.remove(&dir.join(segs[1].file_name().unwrap())).unwrap();
    assert_corrupt(
        open(&fs, &dir).unwrap_err(),
        &dir.join(segs[2].file_name().unwrap()),
        0,
    );
}

fn rotation_and_compaction<F: Fs>(fs: F, dir: &Path) {
    let (mut wal, _) = open(&fs, dir).unwrap();
    let expected = fill(&mut wal, 0..300, 13);
    let before = wal.segment_count();
    assert!(before > 10, "{before} segments");
    assert_eq!(segments(&fs, dir).len(), before);
    // Every segment respects the size limit.
    for seg in segments(&fs, dir) {
        assert!(fs.file_len(&seg).unwrap() <= OPTS.segment_bytes_max);
    }
    let deleted = wal.compact(150).unwrap();
    assert!(deleted > 0);
    assert_eq!(wal.segment_count(), before - deleted);
    let first = wal.first_lsn();
    assert!(expected[..first as usize - 1].iter().all(|r| r.key < 150));
    drop(wal);

    let (mut wal, recovered) = open(&fs, dir).unwrap();
    assert_eq!(recovered, expected[first as usize - 1..]);
    assert!(
        recovered[0].key < 150,
        "compaction kept a minimal suffix only"
    );
    // Compacting past every key keeps the active segment and the LSN sequence.
    wal.compact(u64::MAX).unwrap();
    assert_eq!(wal.segment_count(), 1);
    let lsn = wal.append(1000, &payload(1000)).unwrap();
    assert_eq!(lsn, 301);
    wal.sync().unwrap();
    drop(wal);
    let (wal, recovered) = open(&fs, dir).unwrap();
    assert_eq!(recovered.last().unwrap(), &rec(301, 1000));
    assert_eq!(recovered[0].lsn, wal.first_lsn());
}

#[test]
fn mem_roundtrip() {
    let (fs, dir) = mem();
    roundtrip(fs, &dir);
}

#[test]
fn mem_torn_tail_at_every_offset() {
    torn_tail_at_every_offset(mem);
}

#[test]
fn mem_corruption_in_the_middle() {
    corruption_in_the_middle(mem);
}

#[test]
fn mem_rotation_and_compaction() {
    let (fs, dir) = mem();
    rotation_and_compaction(fs, &dir);
}

fn real() -> (RealFs, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    (RealFs, tmp.path().join("wal"), tmp)
}

#[test]
fn real_roundtrip() {
    let (fs, dir, _tmp) = real();
    roundtrip(fs, &dir);
}

#[test]
fn real_torn_tail_at_every_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    torn_tail_at_every_offset(|| {
        n.set(n.get() + 1);
        (RealFs, tmp.path().join(format!("wal{}", n.get())))
    });
}

#[test]
fn real_corruption_in_the_middle() {
    let tmp = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    corruption_in_the_middle(|| {
        n.set(n.get() + 1);
        (RealFs, tmp.path().join(format!("wal{}", n.get())))
    });
}

#[test]
fn real_rotation_and_compaction() {
    let (fs, dir, _tmp) = real();
    rotation_and_compaction(fs, &dir);
}

// ---- crash model (MemFs only) ----

#[test]
fn group_commit_is_one_write_and_one_fsync() {
    let (fs, dir) = mem();
    let opts = WalOptions {
        segment_bytes_max: 1 << 20,
        ..OPTS
    };
    let (mut wal, _) = Wal::open(fs.clone(), &dir, opts).unwrap();
    let before = fs.stats();
    for key in 0..100 {
        wal.append(key, &payload(key)).unwrap();
    }
    assert_eq!(fs.stats(), before, "append does no IO");
    assert_eq!(wal.sync().unwrap(), 100);
    let after = fs.stats();
    assert_eq!(
        (
            after.writes - before.writes,
            after.file_syncs - before.file_syncs
        ),
        (1, 1)
    );
    assert_eq!(after.dir_syncs, before.dir_syncs);
    // An empty sync does nothing.
    assert_eq!(wal.sync().unwrap(), 100);
    assert_eq!(fs.stats(), after);

    for key in 100..110 {
        wal.append(key, &payload(key)).unwrap();
    }
    fs.crash(None);
    drop(wal);
    let (wal, recovered) = Wal::open(fs.clone(), &dir, opts).unwrap();
    assert_eq!(recovered.len(), 100);
    assert_eq!(recovered[99], rec(100, 99));
    assert_eq!(wal.next_lsn(), 101);
}

#[test]
fn a_record_is_durable_only_once_sync_returned() {
    let (fs, dir) = mem();
    let (mut wal, _) = open(&fs, &dir).unwrap();
    fill(&mut wal, 0..3, 10);
    wal.append(3, &payload(3)).unwrap();
    // The write reaches the file, the fsync fails: the record is not durable.
    fs.set_fail_after(Some(1));
    let err = wal.sync().unwrap_err();
    assert!(matches!(err, StorageError::Io { op: "fsync", .. }), "{err}");
    assert_eq!(wal.durable_lsn(), 3);
    assert!(matches!(wal.append(4, b"x"), Err(StorageError::Poisoned)));
    assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
    fs.crash(None);
    drop(wal);
    let (mut wal, recovered) = open(&fs, &dir).unwrap();
    assert_eq!(recovered.len(), 3);

    assert_eq!(wal.append(3, &payload(3)).unwrap(), 4);
    assert_eq!(wal.sync().unwrap(), 4);
    fs.crash(Some(1));
    drop(wal);
    let (_, recovered) = open(&fs, &dir).unwrap();
    assert_eq!(recovered.len(), 4);
    assert_eq!(recovered[3], rec(4, 3));
}

/// Fills the active segment so that the next record rotates.
fn nearly_full(fs: &MemFs, dir: &Path) -> (Wal<MemFs>, Vec<Recovered>) {
    let (mut wal, _) = open(fs, dir).unwrap();
    let mut expected = Vec::new();
    let mut key = 0;
    while wal.segment_count() == 1 {
        expected.extend(fill(&mut wal, key..key + 1, 1));
        key += 1;
    }
    // Now in segment 2, with one record; fill it up to just below the limit.
    loop {
        let (bytes, _) = wal.tail();
        if bytes + RECORD_HEADER_BYTES + payload(key).len() as u64 > OPTS.segment_bytes_max {
            break;
        }
        expected.extend(fill(&mut wal, key..key + 1, 1));
        key += 1;
    }
    (wal, expected)
}

#[test]
fn crash_before_dir_fsync_of_a_new_segment_loses_it_cleanly() {
    let (fs, dir) = mem();
    let (wal, expected) = nearly_full(&fs, &dir);
    drop(wal);
    let base = fs.fork();
    let mut hit = false;
    for n in 0..10 {
        let fs = base.fork();
        let (mut wal, _) = open(&fs, &dir).unwrap();
        let key = expected.len() as u64;
        wal.append(key, &payload(key)).unwrap();
        fs.set_fail_after(Some(n));
        match wal.sync() {
            Err(StorageError::Io {
                op: "fsync dir", ..
            }) => {
                hit = true;
                assert_eq!(
                    segments(&fs, &dir).len(),
                    3,
                    "the new segment exists before the crash"
                );
                fs.crash(None);
                assert_eq!(segments(&fs, &dir).len(), 2, "and is gone after it");
                drop(wal);
                let (wal, recovered) = open(&fs, &dir).unwrap();
                assert_eq!(recovered, expected);
                assert_eq!(wal.recovery_report().torn_tail, None);
            }
            _ => continue,
        }
    }
    assert!(hit, "no injected fault hit the directory fsync");
}

#[test]
fn crash_at_every_step_of_a_rotating_sync() {
    let (fs, dir) = mem();
    let (wal, expected) = nearly_full(&fs, &dir);
    drop(wal);
    let base = fs.fork();
    let mut steps_ok = 0;
    let mut torn_seen = 0;
    for n in 0..16 {
        for tear in [None, Some(n), Some(n + 100)] {
            let fs = base.fork();
            let (mut wal, _) = open(&fs, &dir).unwrap();
            // Two records that rotate, then enough to rotate once more in the same sync.
            let mut all = expected.clone();
            for key in expected.len() as u64..expected.len() as u64 + 40 {
                let lsn = wal.append(key, &payload(key)).unwrap();
                all.push(rec(lsn, key));
            }
            fs.set_fail_after(Some(n));
            let synced = wal.sync().is_ok();
            steps_ok += u64::from(synced);
            fs.crash(tear);
            drop(wal);
            let (wal, recovered) = open(&fs, &dir).unwrap();
            torn_seen += usize::from(wal.recovery_report().torn_tail.is_some());
            assert_eq!(recovered, all[..recovered.len()], "n={n} tear={tear:?}");
            let need = if synced { all.len() } else { expected.len() };
            assert!(recovered.len() >= need, "n={n} tear={tear:?}");
        }
    }
    assert!(
        steps_ok > 0 && steps_ok < 48,
        "the faults must cover both outcomes"
    );
    assert!(torn_seen > 0, "some crash must tear a tail");
}

#[test]
fn torn_segment_creation_is_repaired() {
    let (fs, dir) = mem();
    let (mut wal, _) = open(&fs, &dir).unwrap();
    let expected = fill(&mut wal, 0..40, 40);
    let next = wal.next_lsn();
    drop(wal);
    let path = dir.join(segment_file_name(next));
    for bytes in [
        vec![],
        SEGMENT_MAGIC[..5].to_vec(),
        vec![0; SEG_HDR],
        vec![0; 100],
    ] {
        let fs = fs.fork();
        overwrite(&fs, &path, &bytes);
        let (mut wal, recovered) = open(&fs, &dir).unwrap();
        assert_eq!(recovered, expected);
        assert_eq!(wal.recovery_report().torn_tail.as_ref().unwrap().offset, 0);
        assert_eq!(wal.append(1, &payload(1)).unwrap(), next);
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(open(&fs, &dir).unwrap().1.len(), expected.len() + 1);
    }
}

#[test]
fn limits_are_enforced() {
    let (fs, dir) = mem();
    let (mut wal, _) = open(&fs, &dir).unwrap();
    let err = wal.append(0, &[0; 513]).unwrap_err();
    assert!(matches!(
        err,
        StorageError::RecordTooLarge { len: 513, max: 512 }
    ));
    // Still usable, and a maximal record fits alone in a segment even above the segment size.
    let big = WalOptions {
        segment_bytes_max: 64,
        record_bytes_max: 512,
    };
    drop(wal);
    let (mut wal, _) = Wal::open(fs.clone(), &dir, big).unwrap();
    wal.append(0, &[7; 512]).unwrap();
    wal.append(1, &[8; 512]).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.segment_count(), 2);
    let bad = WalOptions {
        segment_bytes_max: 10,
        record_bytes_max: 1,
    };
    assert!(matches!(
        Wal::open(fs, &dir, bad),
        Err(StorageError::InvalidOptions(_))
    ));
}

#[test]
fn zero_header_record_never_checks() {
    // A zero-filled tail must never parse as a record.
    assert_ne!(record_crc(0, &[]), 0);
    assert!(parse_record(&[0; 64], 0, 512).is_err());
}

// ---- property: crashes only ever tear tails ----

#[derive(Clone, Debug)]
enum Op {
    Append {
        key_step: u8,
        len: u16,
    },
    Sync,
    /// Sync with the disk dying after `fail_after` operations, then a crash and a reopen.
    CrashDuringSync {
        fail_after: u8,
        tear: Option<u64>,
    },
    Crash {
        tear: Option<u64>,
    },
    Reopen,
    Compact {
        below: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0u16..300).prop_map(|(key_step, len)| Op::Append { key_step, len }),
        2 => Just(Op::Sync),
        2 => (0u8..12, proptest::option::of(any::<u64>()))
            .prop_map(|(fail_after, tear)| Op::CrashDuringSync { fail_after, tear }),
        1 => proptest::option::of(any::<u64>()).prop_map(|tear| Op::Crash { tear }),
        1 => Just(Op::Reopen),
        1 => (0u16..400).prop_map(|below| Op::Compact { below }),
    ]
}

fn prop_payload(lsn: Lsn, len: u16) -> Vec<u8> {
    (0..len)
        .map(|i| (lsn as u8).wrapping_add(i as u8).wrapping_mul(13))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn crashes_only_tear_tails(ops in proptest::collection::vec(op(), 1..60)) {
        let (fs, dir) = mem();
        let opts = WalOptions { segment_bytes_max: 700, record_bytes_max: 300 };
        let (mut wal, _) = Wal::open(fs.clone(), &dir, opts).unwrap();
        // Every record ever appended, by LSN (index lsn - 1); truncated when a crash loses some.
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut durable: Lsn = 0;
        let mut key = 0u64;
        let mut compacted_below = 0u64;
        for op in ops {
            let reopen = |wal: &mut Wal<MemFs>, model: &mut Vec<(u64, Vec<u8>)>, durable: &mut Lsn| {
                let (new, recovered) = Wal::open(fs.clone(), &dir, opts).unwrap();
                *wal = new;
                let first = wal.first_lsn();
                // What is missing at the front was compacted away.
                prop_assert!(model[..first as usize - 1].iter().all(|(k, _)| *k < compacted_below));
                for (i, r) in recovered.iter().enumerate() {
                    prop_assert_eq!(r.lsn, first + i as u64);
                    let (k, p) = &model[r.lsn as usize - 1];
                    prop_assert_eq!((r.key, &r.payload), (*k, p));
                }
                let last = wal.next_lsn() - 1;
                prop_assert!(last >= *durable, "lost durable records: last {} durable {}", last, *durable);
                model.truncate(last as usize);
                *durable = last;
                Ok(())
            };
            match op {
                Op::Append { key_step, len } => {
                    key += u64::from(key_step);
                    let lsn = wal.append(key, &prop_payload(wal.next_lsn(), len)).unwrap();
                    prop_assert_eq!(lsn as usize, model.len() + 1);
                    model.push((key, prop_payload(lsn, len)));
                }
                Op::Sync => {
                    durable = wal.sync().unwrap();
                    prop_assert_eq!(durable as usize, model.len());
                }
                Op::CrashDuringSync { fail_after, tear } => {
                    fs.set_fail_after(Some(u64::from(fail_after)));
                    if let Ok(lsn) = wal.sync() {
                        durable = lsn;
                    }
                    fs.crash(tear);
                    reopen(&mut wal, &mut model, &mut durable)?;
                }
                Op::Crash { tear } => {
                    fs.crash(tear);
                    reopen(&mut wal, &mut model, &mut durable)?;
                }
                Op::Reopen => reopen(&mut wal, &mut model, &mut durable)?,
                Op::Compact { below } => {
                    wal.compact(u64::from(below)).unwrap();
                    compacted_below = compacted_below.max(u64::from(below));
                }
            }
        }
    }
}
