//! The snapshot store: atomically written, checksummed snapshots, the newest two kept.

use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};
use crate::fs::{Fs, FsFile};

/// Magic bytes opening every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SHWLSNAP";
/// Version of the snapshot format written by this build (the only one it reads). Version 2:
/// the checkpoint's service state is a list of parts (ADR 012).
pub const SNAPSHOT_VERSION: u32 = 2;
/// Bytes of the snapshot header: magic (8), version (4), body crc32c (4), seq (8),
/// body length (8), reserved zero (4), header crc32c (4).
pub const SNAPSHOT_HEADER_BYTES: u64 = 40;
/// How many snapshots [`SnapshotStore::save`] keeps (the newest, and one to fall back on).
pub const SNAPSHOTS_KEPT: usize = 2;

const HDR: usize = SNAPSHOT_HEADER_BYTES as usize;

/// A verified snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The sequence number it was saved under.
    pub seq: u64,
    /// Its bytes, exactly as saved.
    pub bytes: Vec<u8>,
}

/// A snapshot file that failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedSnapshot {
    /// The sequence number in its file name.
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// What check failed.
    pub reason: String,
}

/// The outcome of [`SnapshotStore::load_newest`]: the newest snapshot that verifies, and every
/// newer one that did not. The caller must report `damaged` (it means the disk lost data that
/// was once durable) even when it goes on with the older snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotLoad {
    /// The newest snapshot that verifies, if any.
    pub newest: Option<Snapshot>,
    /// Newer snapshots that failed verification, newest first.
    pub damaged: Vec<DamagedSnapshot>,
}

/// The snapshot directory of a replica.
#[derive(Debug)]
pub struct SnapshotStore<F: Fs> {
    fs: F,
    dir: PathBuf,
    /// Sequence numbers of the snapshot files, ascending.
    seqs: Vec<u64>,
}

/// The file name of the snapshot saved under `seq`.
pub fn snapshot_file_name(seq: u64) -> String {
    format!("snap-{seq:020}.snap")
}

fn tmp_file_name(seq: u64) -> String {
    format!("snap-{seq:020}.tmp")
}

fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of a snapshot whose body is the concatenation of `parts`.
fn header(seq: u64, parts: &[&[u8]]) -> [u8; HDR] {
    let crc = parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
    let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let mut h = [0; HDR];
    h[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&h[..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A header that verified: body checksum and length.
struct Header {
    body_crc: u32,
    body_len: u64,
}

/// Checks a header against the sequence number of its file name and the file's length.
fn check_header(h: &[u8], seq: u64, file_len: u64) -> Result<Header, String> {
    if h.len() < HDR || file_len < SNAPSHOT_HEADER_BYTES {
        return Err(format!(
            "file of {file_len} bytes is shorter than the header"
        ));
    }
    if h[..8] != SNAPSHOT_MAGIC {
        return Err("bad snapshot magic".to_owned());
    }
    if le_u32(&h[36..]) != crc32c::crc32c(&h[..36]) {
        return Err("snapshot header checksum mismatch".to_owned());
    }
    let version = le_u32(&h[8..]);
    if version != SNAPSHOT_VERSION {
        return Err(format!("unknown snapshot version {version}"));
    }
    if le_u64(&h[16..]) != seq {
        return Err(format!(
            "header says seq {}, file name says {seq}",
            le_u64(&h[16..])
        ));
    }
    let body_len = le_u64(&h[24..]);
    if body_len != file_len - SNAPSHOT_HEADER_BYTES {
        return Err(format!(
            "header says {body_len} body bytes, file holds {}",
            file_len - SNAPSHOT_HEADER_BYTES
        ));
    }
    Ok(Header {
        body_crc: le_u32(&h[12..]),
        body_len,
    })
}

impl<F: Fs> SnapshotStore<F> {
    /// Opens (creating if needed) the snapshot directory, removing temporary files left by an
    /// interrupted [`SnapshotStore::save`].
    pub fn open(fs: F, dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs.create_dir_all(&dir)?;
        let mut seqs = Vec::new();
        let mut removed = false;
        for name in fs.list(&dir)? {
            if parse_name(&name, ".tmp").is_some() {
                fs.remove(&dir.join(&name))?;
                removed = true;
            } else if let Some(seq) = parse_name(&name, ".snap") {
                seqs.push(seq);
            }
        }
        if removed {
            fs.sync_dir(&dir)?;
        }
        seqs.sort_unstable();
        Ok(SnapshotStore { fs, dir, seqs })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(snapshot_file_name(seq))
    }

    /// Saves `bytes` as the snapshot of `seq`, atomically: when this returns `Ok` the snapshot
    /// is durable; if the machine dies before, the store holds what it held before (a partial
    /// snapshot is never visible under its final name). Then deletes all but the
    /// [`SNAPSHOTS_KEPT`] highest sequence numbers. Saving an existing `seq` replaces it.
    ///
    /// On error the store may hold a temporary file, removed by the next
    /// [`SnapshotStore::open`]; the caller should treat the error as fatal.
    pub fn save(&mut self, seq: u64, bytes: &[u8]) -> Result<()> {
        self.save_parts(seq, &[bytes])
    }

    /// [`SnapshotStore::save`] of the concatenation of `parts`, written piece by piece (a large
    /// state is never copied into one buffer first; small parts are gathered into writes of up
    /// to 1 MiB, so a state in many small parts costs few system calls).
    pub fn save_parts(&mut self, seq: u64, parts: &[&[u8]]) -> Result<()> {
        const GATHER: usize = 1 << 20;
        let tmp = self.dir.join(tmp_file_name(seq));
        let path = self.path(seq);
        let mut file = self.fs.create(&tmp)?;
        file.write_all(&header(seq, parts))?;
        let mut gathered = Vec::new();
        for part in parts {
            if !gathered.is_empty() && gathered.len() + part.len() > GATHER {
                file.write_all(&gathered)?;
                gathered.clear();
            }
            if part.len() >= GATHER {
                file.write_all(part)?;
            } else {
                gathered.extend_from_slice(part);
            }
        }
        if !gathered.is_empty() {
            file.write_all(&gathered)?;
        }
        // Content durable before the name: a crash after the rename cannot expose a
        // snapshot whose bytes never reached the disk.
        file.sync()?;
        self.fs.rename(&tmp, &path)?;
        self.fs.sync_dir(&self.dir)?;
        if let Err(at) = self.seqs.binary_search(&seq) {
            self.seqs.insert(at, seq);
        }

        let excess = self.seqs.len().saturating_sub(SNAPSHOTS_KEPT);
        for &old in &self.seqs[..excess] {
            self.fs.remove(&self.path(old))?;
        }
        if excess > 0 {
            self.seqs.drain(..excess);
            self.fs.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Loads the newest snapshot whose header and body checksum verify. Newer snapshots that
    /// fail verification are returned in [`SnapshotLoad::damaged`], never silently skipped.
    /// IO errors (as opposed to bad content) are returned as errors.
    pub fn load_newest(&self) -> Result<SnapshotLoad> {
        let mut load = SnapshotLoad::default();
        for &seq in self.seqs.iter().rev() {
            let path = self.path(seq);
            let mut buf = self.fs.read(&path)?;
            let verified = check_header(&buf, seq, buf.len() as u64).and_then(|h| {
                if crc32c::crc32c(&buf[HDR..]) == h.body_crc {
                    // The body in place: no second copy of a large state.
                    buf.drain(..HDR);
                    Ok(buf)
                } else {
                    Err("snapshot body checksum mismatch".to_owned())
                }
            });
            match verified {
                Ok(bytes) => {
                    load.newest = Some(Snapshot { seq, bytes });
                    break;
                }
                Err(reason) => load.damaged.push(DamagedSnapshot { seq, path, reason }),
            }
        }
        Ok(load)
    }

    /// Reads the body header of snapshot `seq` and returns its body length.
    fn body_header(&self, seq: u64) -> Result<(PathBuf, Header)> {
        if self.seqs.binary_search(&seq).is_err() {
            return Err(StorageError::NoSnapshot {
                seq,
                dir: self.dir.clone(),
            });
        }
        let path = self.path(seq);
        let file_len = self.fs.file_len(&path)?;
        let h = if file_len < SNAPSHOT_HEADER_BYTES {
            Vec::new()
        } else {
            self.fs.read_range(&path, 0, HDR)?
        };
        match check_header(&h, seq, file_len) {
            Ok(header) => Ok((path, header)),
            Err(reason) => Err(StorageError::corrupt(path, 0, reason)),
        }
    }

    /// The body length of snapshot `seq` (its header checked).
    pub fn snapshot_len(&self, seq: u64) -> Result<u64> {
        Ok(self.body_header(seq)?.1.body_len)
    }

    /// Reads up to `len_max` body bytes of snapshot `seq` from `offset`, without loading the
    /// snapshot whole (for sending it in chunks). Returns fewer bytes at the end of the body
    /// and none at or past it. The header is checked on every call; the body checksum is not
    /// (it covers the whole body): the receiver verifies the reassembled snapshot against its
    /// state digest.
    pub fn read_chunk(&self, seq: u64, offset: u64, len_max: usize) -> Result<Vec<u8>> {
        let (path, header) = self.body_header(seq)?;
        let rest = header.body_len.saturating_sub(offset);
        let len = usize::try_from(rest).map_or(len_max, |rest| rest.min(len_max));
        if len == 0 {
            return Ok(Vec::new());
        }
        self.fs
            .read_range(&path, SNAPSHOT_HEADER_BYTES + offset, len)
    }

    /// The sequence numbers of the snapshots in the store, ascending.
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemFs, RealFs};

    fn body(seq: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seq as u8) ^ (i as u8).wrapping_mul(7))
            .collect()
    }

    fn mem() -> (MemFs, PathBuf) {
        (MemFs::new(), PathBuf::from("/replica/snap"))
    }

    fn overwrite<F: Fs>(fs: &F, path: &Path, bytes: &[u8]) {
        let mut f = fs.create(path).unwrap();
        f.write_all(bytes).unwrap();
        f.sync().unwrap();
        fs.sync_dir(path.parent().unwrap()).unwrap();
    }

    fn save_load_keep_two<F: Fs>(fs: F, dir: &Path) {
        let mut store = SnapshotStore::open(fs.clone(), dir).unwrap();
        assert_eq!(store.load_newest().unwrap(), SnapshotLoad::default());
        for seq in [10, 20, 30, 40] {
            store.save(seq, &body(seq, 1000 + seq as usize)).unwrap();
        }
        assert_eq!(store.seqs(), [30, 40]);
        let mut files = fs.list(dir).unwrap();
        files.sort();
        assert_eq!(files, [snapshot_file_name(30), snapshot_file_name(40)]);
        let store = SnapshotStore::open(fs, dir).unwrap();
        let load = store.load_newest().unwrap();
        assert_eq!(
            load.newest,
            Some(Snapshot {
                seq: 40,
                bytes: body(40, 1040)
            })
        );
        assert!(load.damaged.is_empty());
    }

    fn damaged_newest_falls_back<F: Fs>(fs: F, dir: &Path) {
        let mut store = SnapshotStore::open(fs.clone(), dir).unwrap();
        store.save(1, &body(1, 300)).unwrap();
        store.save(2, &body(2, 300)).unwrap();
        let path = dir.join(snapshot_file_name(2));
        let good = fs.read(&path).unwrap();
        type Edit<'a> = (&'a str, &'a dyn Fn(&mut Vec<u8>));
        let edits: [Edit; 4] = [
            ("body checksum", &|b| b[HDR + 100] ^= 1),
            ("body bytes", &|b| b.truncate(b.len() - 1)),
            ("header checksum", &|b| b[20] ^= 1),
            ("shorter than the header", &|b| b.truncate(10)),
        ];
        for (want, edit) in edits {
            let mut bad = good.clone();
            edit(&mut bad);
            overwrite(&fs, &path, &bad);
            let load = SnapshotStore::open(fs.clone(), dir)
                .unwrap()
                .load_newest()
                .unwrap();
            assert_eq!(
                load.newest,
                Some(Snapshot {
                    seq: 1,
                    bytes: body(1, 300)
                })
            );
            assert_eq!(load.damaged.len(), 1);
            assert_eq!((load.damaged[0].seq, &load.damaged[0].path), (2, &path));
            assert!(
                load.damaged[0].reason.contains(want),
                "{}",
                load.damaged[0].reason
            );
        }
        // Both damaged: nothing to load, both reported.
        overwrite(&fs, &dir.join(snapshot_file_name(1)), b"garbage");
        let load = SnapshotStore::open(fs, dir).unwrap().load_newest().unwrap();
        assert_eq!(load.newest, None);
        assert_eq!(
            load.damaged.iter().map(|d| d.seq).collect::<Vec<_>>(),
            [2, 1]
        );
    }

    fn leftover_tmp_is_removed<F: Fs>(fs: F, dir: &Path) {
        let mut store = SnapshotStore::open(fs.clone(), dir).unwrap();
        store.save(5, &body(5, 64)).unwrap();
        // A save that died between writing the temporary file and renaming it.
        let b = body(6, 64);
        let mut tmp = header(6, &[&b]).to_vec();
        tmp.extend_from_slice(&b);
        overwrite(&fs, &dir.join(tmp_file_name(6)), &tmp);
        let store = SnapshotStore::open(fs.clone(), dir).unwrap();
        assert_eq!(fs.list(dir).unwrap(), [snapshot_file_name(5)]);
        assert_eq!(store.load_newest().unwrap().newest.unwrap().seq, 5);
    }

    #[test]
    fn mem_save_load_keep_two() {
        let (fs, dir) = mem();
        save_load_keep_two(fs, &dir);
    }

    #[test]
    fn mem_damaged_newest_falls_back() {
        let (fs, dir) = mem();
        damaged_newest_falls_back(fs, &dir);
    }

    #[test]
    fn mem_leftover_tmp_is_removed() {
        let (fs, dir) = mem();
        leftover_tmp_is_removed(fs, &dir);
    }

    #[test]
    fn real_save_load_keep_two() {
        let tmp = tempfile::tempdir().unwrap();
        save_load_keep_two(RealFs, &tmp.path().join("snap"));
    }

    #[test]
    fn real_damaged_newest_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        damaged_newest_falls_back(RealFs, &tmp.path().join("snap"));
    }

    #[test]
    fn real_leftover_tmp_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        leftover_tmp_is_removed(RealFs, &tmp.path().join("snap"));
    }

    #[test]
    fn save_is_atomic_at_every_crash_point() {
        let (fs, dir) = mem();
        let mut store = SnapshotStore::open(fs.clone(), &dir).unwrap();
        store.save(1, &body(1, 500)).unwrap();
        store.save(2, &body(2, 500)).unwrap();
        let (mut old, mut new) = (0, 0);
        for n in 0..12 {
            for tear in [None, Some(n)] {
                let fs = fs.fork();
                let mut store = SnapshotStore::open(fs.clone(), &dir).unwrap();
                fs.set_fail_after(Some(n));
                let saved = store.save(3, &body(3, 500)).is_ok();
                fs.crash(tear);
                let store = SnapshotStore::open(fs.clone(), &dir).unwrap();
                let load = store.load_newest().unwrap();
                assert!(load.damaged.is_empty(), "n={n}: {:?}", load.damaged);
                let got = load.newest.unwrap();
                if got.seq == 3 {
                    new += 1;
                    assert_eq!(got.bytes, body(3, 500));
                } else {
                    assert!(!saved, "n={n}: a save that returned Ok was lost");
                    old += 1;
                    assert_eq!(
                        got,
                        Snapshot {
                            seq: 2,
                            bytes: body(2, 500)
                        }
                    );
                }
                assert!(!fs.list(&dir).unwrap().iter().any(|n| n.ends_with(".tmp")));
            }
        }
        assert!(old > 0 && new > 0);
    }

    #[test]
    fn saving_in_parts_writes_the_same_file_as_saving_the_whole() {
        let (fs, dir) = mem();
        let mut store = SnapshotStore::open(fs.clone(), &dir).unwrap();
        let whole = body(4, 1000);
        store.save(4, &whole).unwrap();
        let one = fs.read(&store.path(4)).unwrap();
        store
            .save_parts(4, &[&whole[..1], &[], &whole[1..600], &whole[600..]])
            .unwrap();
        assert_eq!(fs.read(&store.path(4)).unwrap(), one);
        assert_eq!(store.load_newest().unwrap().newest.unwrap().bytes, whole);
    }

    #[test]
    fn read_in_chunks() {
        let (fs, dir) = mem();
        let mut store = SnapshotStore::open(fs.clone(), &dir).unwrap();
        let b = body(9, 1000);
        store.save(9, &b).unwrap();
        assert_eq!(store.snapshot_len(9).unwrap(), 1000);
        let mut got = Vec::new();
        loop {
            let chunk = store.read_chunk(9, got.len() as u64, 64).unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= 64);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, b);
        assert!(store.read_chunk(9, 5000, 64).unwrap().is_empty());
        assert!(matches!(
            store.read_chunk(8, 0, 64),
            Err(StorageError::NoSnapshot { seq: 8, .. })
        ));
        let path = dir.join(snapshot_file_name(9));
        let mut bad = fs.read(&path).unwrap();
        bad[17] ^= 1;
        overwrite(&fs, &path, &bad);
        match store.read_chunk(9, 0, 64) {
            Err(StorageError::Corrupt {
                path: p, offset: 0, ..
            }) => assert_eq!(p, path),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
