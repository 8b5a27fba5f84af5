//! An in-memory file system that models what a crash keeps.
//!
//! The model, per the [`Fs`] durability contract:
//!
//! - A file's bytes beyond its last fsynced length are volatile, and so is a truncation since
//!   the last fsync.
//! - A directory entry created, renamed or removed since its directory was last fsynced is
//!   volatile: a crash restores the entry as it was at that fsync (a removed file comes back
//!   with its durable content, a created one disappears).
//! - [`MemFs::crash`] without a seed keeps exactly the durable state. With a seed it tears
//!   instead: of each file's unsynced appended bytes a random prefix survives (possibly none,
//!   possibly all), and with probability 1/2 the lost rest reads back as zeros up to the full
//!   written length (as ext4 can leave a file whose size was updated before its data).
//!   The randomness is a ChaCha8 stream from the seed: the same history and seed give the same
//!   disk, byte for byte.
//! - Directories themselves are not subject to crashes (they are created once at setup).
//!
//! Everything lives behind one `Arc<Mutex<..>>`: clones share the same disk, as handles to one
//! file system would. [`MemFs::fork`] makes an independent copy. File handles opened before a
//! crash fail afterwards, as a process's descriptors do not survive its own death.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, StorageError};
use crate::fs::{Fs, FsFile};

/// The in-memory, crash-modelling [`Fs`]. See the module docs for the model.
#[derive(Clone, Debug, Default)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

/// Counters of the operations a [`MemFs`] has performed (shared by its clones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemFsStats {
    /// File writes.
    pub writes: u64,
    /// File fsyncs.
    pub file_syncs: u64,
    /// Directory fsyncs.
    pub dir_syncs: u64,
    /// Crashes.
    pub crashes: u64,
}

#[derive(Clone, Debug, Default)]
struct State {
    dirs: BTreeSet<PathBuf>,
    /// The directory entries as the running system sees them.
    entries: BTreeMap<PathBuf, u64>,
    /// The directory entries as of each directory's last fsync.
    durable_entries: BTreeMap<PathBuf, u64>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// Incremented by each crash; handles from an earlier generation are stale.
    generation: u64,
    /// Mutating operations still allowed before every one fails (fault injection).
    fail_after: Option<u64>,
    stats: MemFsStats,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    /// `data[..durable_len]` is durable, unless `durable_copy` is set.
    durable_len: usize,
    /// The durable content when an unsynced truncation cut below `durable_len`.
    durable_copy: Option<Vec<u8>>,
}

/// A file of [`MemFs`].
#[derive(Debug)]
pub struct MemFile {
    fs: MemFs,
    inode: u64,
    generation: u64,
    path: PathBuf,
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file or directory")
}

impl State {
    /// Counts one mutating operation against the fault-injection budget.
    fn mutate(&mut self, op: &'static str, path: &Path) -> Result<()> {
        match self.fail_after {
            Some(0) => Err(StorageError::io(
                op,
                path,
                io::Error::other("injected fault (MemFs::set_fail_after)"),
            )),
            Some(n) => {
                self.fail_after = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn check_parent(&self, op: &'static str, path: &Path) -> Result<()> {
        match path.parent() {
            Some(parent) if self.dirs.contains(parent) => Ok(()),
            _ => Err(StorageError::io(op, path, not_found())),
        }
    }

    fn inode_of(&self, op: &'static str, path: &Path) -> Result<u64> {
        self.entries
            .get(path)
            .copied()
            .ok_or_else(|| StorageError::io(op, path, not_found()))
    }
}

impl Inode {
    fn truncate(&mut self, len: usize) {
        if len < self.durable_len && self.durable_copy.is_none() {
            self.durable_copy = Some(self.data[..self.durable_len].to_vec());
        }
        self.data.resize(len, 0);
    }

    fn sync(&mut self) {
        self.durable_copy = None;
        self.durable_len = self.data.len();
    }
}

impl MemFs {
    /// An empty file system (no directories).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (only possible in a test) leaves consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent deep copy of this file system (its clones stay attached to `self`).
    pub fn fork(&self) -> MemFs {
        let state = self.lock().clone();
        MemFs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Simulates a power loss: drops everything volatile (see the module docs). With
    /// `tear = Some(seed)`, each file keeps a seeded random prefix of its unsynced appended
    /// bytes, the rest possibly zero-filled. Clears any pending fault injection and makes every
    /// open file handle stale.
    pub fn crash(&self, tear: Option<u64>) {
        let mut st = self.lock();
        let mut rng = tear.map(ChaCha8Rng::seed_from_u64);
        st.entries = st.durable_entries.clone();
        let live: BTreeSet<u64> = st.entries.values().copied().collect();
        st.inodes.retain(|id, _| live.contains(id));
        for inode in st.inodes.values_mut() {
            if let Some(copy) = inode.durable_copy.take() {
                inode.data = copy;
            } else {
                let written = inode.data.len();
                let unsynced = written.saturating_sub(inode.durable_len);
                match rng.as_mut() {
                    Some(rng) if unsynced > 0 => {
                        let kept = rng.gen_range(0..=unsynced);
                        let zero_fill = rng.gen_bool(0.5);
                        inode.data.truncate(inode.durable_len + kept);
                        if zero_fill {
                            inode.data.resize(written, 0);
                        }
                    }
                    _ => inode.data.truncate(inode.durable_len),
                }
            }
            inode.durable_len = inode.data.len();
        }
        st.generation += 1;
        st.fail_after = None;
        st.stats.crashes += 1;
    }

    /// Fault injection: the next `n` mutating operations (create, write, fsync, truncate,
    /// rename, remove, directory fsync) succeed, every later one fails with an IO error, as if
    /// the machine died at that point. `None` turns it off; [`MemFs::crash`] also does.
    pub fn set_fail_after(&self, n: Option<u64>) {
        self.lock().fail_after = n;
    }

    /// Operation counters.
    pub fn stats(&self) -> MemFsStats {
        self.lock().stats
    }
}

impl Fs for MemFs {
    type File = MemFile;

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let mut st = self.lock();
        st.mutate("create dir", dir)?;
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                st.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> Result<MemFile> {
        let mut st = self.lock();
        st.mutate("create", path)?;
        st.check_parent("create", path)?;
        let id = match st.entries.get(path).copied() {
            Some(id) => {
                if let Some(inode) = st.inodes.get_mut(&id) {
                    inode.truncate(0);
                }
                id
            }
            None => {
                let id = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(id, Inode::default());
                st.entries.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(MemFile {
            fs: self.clone(),
            inode: id,
            generation: st.generation,
            path: path.to_path_buf(),
        })
    }

    fn open_append(&self, path: &Path) -> Result<MemFile> {
        let st = self.lock();
        let id = st.inode_of("open", path)?;
        Ok(MemFile {
            fs: self.clone(),
            inode: id,
            generation: st.generation,
            path: path.to_path_buf(),
        })
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        let st = self.lock();
        let id = st.inode_of("read", path)?;
        Ok(st
            .inodes
            .get(&id)
            .map(|i| i.data.clone())
            .unwrap_or_default())
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
        let st = self.lock();
        let id = st.inode_of("read", path)?;
        let data = st.inodes.get(&id).map(|i| &i.data[..]).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(len) {
            Some(end) if end <= data.len() => Ok(data[start..end].to_vec()),
            _ => Err(StorageError::io(
                "read",
                path,
                io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"),
            )),
        }
    }

    fn file_len(&self, path: &Path) -> Result<u64> {
        let st = self.lock();
        let id = st.inode_of("stat", path)?;
        Ok(st.inodes.get(&id).map_or(0, |i| i.data.len() as u64))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut st = self.lock();
        st.mutate("rename", from)?;
        st.check_parent("rename", to)?;
        let id = st.inode_of("rename", from)?;
        st.entries.remove(from);
        st.entries.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<()> {
        let mut st = self.lock();
        st.mutate("remove", path)?;
        st.inode_of("remove", path)?;
        st.entries.remove(path);
        Ok(())
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let st = self.lock();
        if !st.dirs.contains(dir) {
            return Err(StorageError::io("list", dir, not_found()));
        }
        let names = st
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        let mut st = self.lock();
        st.mutate("fsync dir", dir)?;
        if !st.dirs.contains(dir) {
            return Err(StorageError::io("fsync dir", dir, not_found()));
        }
        let st = &mut *st;
        st.durable_entries.retain(|p, _| p.parent() != Some(dir));
        for (p, id) in &st.entries {
            if p.parent() == Some(dir) {
                st.durable_entries.insert(p.clone(), *id);
            }
        }
        // Inodes now unreachable from either view can never come back.
        let live: BTreeSet<u64> = st
            .entries
            .values()
            .chain(st.durable_entries.values())
            .copied()
            .collect();
        st.inodes.retain(|id, _| live.contains(id));
        st.stats.dir_syncs += 1;
        Ok(())
    }
}

impl MemFile {
    fn with_inode<T>(&mut self, op: &'static str, f: impl FnOnce(&mut Inode) -> T) -> Result<T> {
        let mut st = self.fs.lock();
        st.mutate(op, &self.path)?;
        if st.generation != self.generation {
            return Err(StorageError::io(
                op,
                &self.path,
                io::Error::other("stale file handle (opened before a crash)"),
            ));
        }
        match st.inodes.get_mut(&self.inode) {
            Some(inode) => Ok(f(inode)),
            // Unlinked and no longer reachable: writes go nowhere, as to an unlinked file.
            None => Err(StorageError::io(op, &self.path, not_found())),
        }
    }
}

impl FsFile for MemFile {
    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.with_inode("write", |i| i.data.extend_from_slice(bytes))?;
        self.fs.lock().stats.writes += 1;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.with_inode("fsync", Inode::sync)?;
        self.fs.lock().stats.file_syncs += 1;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        let len = usize::try_from(len).map_err(|_| {
            StorageError::io(
                "truncate",
                &self.path,
                io::Error::new(io::ErrorKind::InvalidInput, "length too large"),
            )
        })?;
        self.with_inode("truncate", |i| i.truncate(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (MemFs, PathBuf) {
        let fs = MemFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).unwrap();
        (fs, dir)
    }

    #[test]
    fn unsynced_data_and_entries_are_lost() {
        let (fs, dir) = setup();
        let a = dir.join("a");
        let mut f = fs.create(&a).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync().unwrap();
        // Entry not yet durable: the file disappears.
        fs.crash(None);
        assert!(fs.list(&dir).unwrap().is_empty());

        let mut f = fs.create(&a).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync().unwrap();
        fs.sync_dir(&dir).unwrap();
        f.write_all(b" world").unwrap();
        fs.crash(None);
        assert_eq!(fs.read(&a).unwrap(), b"hello");
        // The old handle is stale.
        assert!(f.write_all(b"x").is_err());
    }

    #[test]
    fn rename_and_remove_are_volatile_until_dir_sync() {
        let (fs, dir) = setup();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let mut f = fs.create(&a).unwrap();
        f.write_all(b"1").unwrap();
        f.sync().unwrap();
        fs.sync_dir(&dir).unwrap();
        fs.rename(&a, &b).unwrap();
        fs.crash(None);
        assert_eq!(fs.list(&dir).unwrap(), vec!["a"]);
        fs.rename(&a, &b).unwrap();
        fs.sync_dir(&dir).unwrap();
        fs.remove(&b).unwrap();
        fs.crash(None);
        assert_eq!(fs.read(&b).unwrap(), b"1");
    }

    #[test]
    fn unsynced_truncate_is_undone() {
        let (fs, dir) = setup();
        let a = dir.join("a");
        let mut f = fs.create(&a).unwrap();
        f.write_all(b"abcdef").unwrap();
        f.sync().unwrap();
        fs.sync_dir(&dir).unwrap();
        f.truncate(2).unwrap();
        f.write_all(b"XY").unwrap();
        assert_eq!(fs.read(&a).unwrap(), b"abXY");
        fs.crash(Some(3));
        assert_eq!(fs.read(&a).unwrap(), b"abcdef");
    }

    #[test]
    fn tear_is_deterministic_and_a_prefix() {
        let mut seen_zero = false;
        let mut seen_short = false;
        for seed in 0..64 {
            let run = || {
                let (fs, dir) = setup();
                let a = dir.join("a");
                let mut f = fs.create(&a).unwrap();
                f.write_all(b"durable-").unwrap();
                f.sync().unwrap();
                fs.sync_dir(&dir).unwrap();
                f.write_all(b"0123456789").unwrap();
                fs.crash(Some(seed));
                fs.read(&a).unwrap()
            };
            let data = run();
            assert_eq!(data, run(), "seed {seed} not deterministic");
            assert!(data.starts_with(b"durable-"));
            let tail = &data[8..];
            let kept = tail
                .iter()
                .zip(b"0123456789")
                .take_while(|(a, b)| a == b)
                .count();
            assert!(tail[kept..].iter().all(|&b| b == 0));
            seen_zero |= tail.len() == 10 && kept < 10;
            seen_short |= tail.len() < 10;
        }
        assert!(seen_zero && seen_short);
    }

    #[test]
    fn fault_injection_fails_later_operations() {
        let (fs, dir) = setup();
        let a = dir.join("a");
        fs.set_fail_after(Some(2));
        let mut f = fs.create(&a).unwrap();
        f.write_all(b"x").unwrap();
        let err = f.sync().unwrap_err();
        assert!(matches!(err, StorageError::Io { op: "fsync", .. }), "{err}");
        fs.crash(None);
        assert!(fs.create(&a).is_ok());
    }

    #[test]
    fn fork_is_independent() {
        let (fs, dir) = setup();
        let other = fs.fork();
        fs.create(&dir.join("a")).unwrap();
        assert!(other.list(&dir).unwrap().is_empty());
    }
}
