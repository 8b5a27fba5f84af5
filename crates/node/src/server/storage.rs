//! Durable mode: the storage thread, which owns the write-ahead log and the snapshot store, and
//! the start-up path that reads them back.
//!
//! The core thread hands this thread the engine's [`Action::Persist`] and
//! [`Action::SaveCheckpoint`] in the order the engine emitted them, over a bounded queue (a
//! full queue makes the core wait: records are never dropped). The thread takes everything
//! queued, appends it, syncs once for the whole group (group commit) and reports the highest
//! durable ticket back to the core as [`Event::Persisted`], which releases the outputs the
//! engine held for those records.
//!
//! A checkpoint is handed, once the records requested before it are durable, to a snapshot
//! writer thread, so that writing a large state never delays the log's syncs (and with them
//! every output of the replica). When the save is durable, the log drops what the checkpoint
//! covers. A checkpoint that arrives while an older one waits for the writer replaces it (only
//! the newest state matters; the log keeps everything after the last saved one).
//!
//! Every storage error is fatal: the thread logs it (the error names the file, and the offset
//! for corruption), reports it on the fatal channel, and stops; the process exits non-zero.
//! Continuing would mean voting on state a crash could lose.
//!
//! [`Action::Persist`]: shieldwall_core::Action::Persist
//! [`Action::SaveCheckpoint`]: shieldwall_core::Action::SaveCheckpoint

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use shieldwall_core::message::{self, MESSAGE_BYTES_MAX};
use shieldwall_core::{Event, Record, StateSnapshot};
use shieldwall_storage::{
    snapshot_file_name, Fs, RealFs, SnapshotStore, StorageError, Wal, WalOptions,
};
use tracing::{debug, error, info, warn};

use super::core::CoreInput;
use super::core_queue::CoreQueue;
use crate::metrics::Metrics;

/// Jobs queued for the storage thread before the core thread waits.
pub(crate) const STORAGE_QUEUE_JOBS: usize = 4096;
/// Jobs taken into one group commit, at most.
const GROUP_JOBS_MAX: usize = 4096;
/// Write-ahead log segments are rotated at this size.
const SEGMENT_BYTES_MAX: u64 = 64 << 20;

/// A job for the storage thread, in the engine's order.
#[derive(Debug)]
pub(crate) enum StorageJob {
    /// Append a record; report its ticket once durable.
    Append {
        ticket: u64,
        key: u64,
        record: Record,
    },
    /// Save a stable checkpoint (after the records before it), then compact the log.
    Checkpoint(Box<StateSnapshot>),
}

/// The opened storage of a durable replica (on the real file system; tests inject faults with
/// an in-memory one).
pub(crate) struct Storage<F: Fs = RealFs> {
    wal: Wal<F>,
    snapshots: SnapshotStore<F>,
}

/// What a durable replica found on its disk.
#[derive(Debug, Default)]
pub(crate) struct OnDisk {
    /// The newest valid saved checkpoint.
    pub checkpoint: Option<StateSnapshot>,
    /// The log records after it, in log order.
    pub records: Vec<Record>,
}

impl OnDisk {
    /// Whether the replica saved anything before (else it starts fresh or recovers from peers).
    pub fn is_empty(&self) -> bool {
        self.checkpoint.is_none() && self.records.is_empty()
    }
}

/// Open (creating if missing) `<data>/wal` and `<data>/snapshots` and read back what they hold.
/// A damaged snapshot is skipped for an older one and logged; a log record that fails its
/// checks or does not decode is an error naming the file: recovery never skips a record.
pub(crate) fn open(data: &Path) -> Result<(Storage, OnDisk), String> {
    let snapshots_dir = data.join("snapshots");
    let wal_dir = data.join("wal");
    let snapshots = SnapshotStore::open(RealFs, &snapshots_dir).map_err(|e| e.to_string())?;
    let load = snapshots.load_newest().map_err(|e| e.to_string())?;
    for d in &load.damaged {
        warn!(
            seq = d.seq,
            path = %d.path.display(),
            reason = %d.reason,
            "skipped a damaged checkpoint file; using an older one"
        );
    }
    let checkpoint = match load.newest {
        Some(s) => {
            let path = snapshots_dir.join(snapshot_file_name(s.seq));
            // Our own checksummed file: the state may be larger than one message.
            let snap: StateSnapshot = message::decode_limited(&s.bytes, usize::MAX)
                .map_err(|e| format!("checkpoint {}: does not decode: {e}", path.display()))?;
            if snap.checkpoint.seq != s.seq {
                return Err(format!(
                    "checkpoint {}: holds the state at seq {}, not {}",
                    path.display(),
                    snap.checkpoint.seq,
                    s.seq
                ));
            }
            Some(snap)
        }
        None => None,
    };
    let options = WalOptions {
        segment_bytes_max: SEGMENT_BYTES_MAX,
        // A record is at most a protocol message (a NEW-VIEW with its re-proposals).
        record_bytes_max: MESSAGE_BYTES_MAX as u32,
    };
    let (wal, recovered) = Wal::open(RealFs, &wal_dir, options).map_err(|e| e.to_string())?;
    // The log keeps whole segments: records the checkpoint covers may still be there.
    let covered = checkpoint.as_ref().map_or(0, |c| c.checkpoint.seq);
    let mut records = Vec::with_capacity(recovered.len());
    for r in recovered {
        if r.key <= covered {
            continue;
        }
        let record: Record = message::decode(&r.payload).map_err(|e| {
            format!(
                "write-ahead log {}: record at LSN {} (key {}) does not decode: {e}",
                wal_dir.display(),
                r.lsn,
                r.key
            )
        })?;
        records.push(record);
    }
    let report = wal.recovery_report();
    if let Some(t) = &report.torn_tail {
        info!(
            path = %t.path.display(),
            offset = t.offset,
            bytes_dropped = t.bytes_dropped,
            reason = %t.reason,
            "write-ahead log: truncated a torn tail (a write cut short by a crash)"
        );
    }
    info!(
        data = %data.display(),
        checkpoint_seq = checkpoint.as_ref().map(|c| c.checkpoint.seq),
        segments = report.segments,
        records_read = report.records,
        records_replayed = records.len(),
        torn_tail = report.torn_tail.is_some(),
        "opened durable storage"
    );
    Ok((
        Storage { wal, snapshots },
        OnDisk {
            checkpoint,
            records,
        },
    ))
}

/// Run the storage thread (and its snapshot writer) until the core thread drops its end of the
/// queue, or a storage error (fatal: reported on `fatal`).
pub(crate) fn run_storage<F: Fs>(
    storage: Storage<F>,
    rx: Receiver<StorageJob>,
    core_tx: Arc<CoreQueue<CoreInput>>,
    metrics: Arc<Metrics>,
    fatal: Sender<String>,
) {
    let Storage { wal, snapshots } = storage;
    let mut log = Log { wal };
    let dir: PathBuf = log.wal.dir().to_path_buf();
    let pending = SaveSlot::default();
    let (saved_tx, saved_rx) = crossbeam_channel::unbounded::<u64>();
    std::thread::scope(|scope| {
        let writer = {
            let (pending, fatal) = (&pending, fatal.clone());
            let name = std::thread::current()
                .name()
                .map_or_else(|| "snapshot-writer".to_owned(), |n| format!("{n}-snap"));
            std::thread::Builder::new()
                .name(name)
                .spawn_scoped(scope, move || {
                    write_snapshots(snapshots, pending, saved_tx, fatal);
                })
        };
        if let Err(e) = writer {
            let _ = fatal.send(format!("cannot start the snapshot writer thread: {e}"));
            return;
        }
        let failed = |e: StorageError| {
            error!(wal = %dir.display(), "{e}; stopping the replica");
            let _ = fatal.send(format!("durable storage failed: {e}"));
        };
        loop {
            crossbeam_channel::select! {
                recv(rx) -> first => {
                    let Ok(first) = first else { break };
                    let mut jobs = Vec::with_capacity(rx.len() + 1);
                    jobs.push(first);
                    while jobs.len() < GROUP_JOBS_MAX {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    match log.group(jobs, &pending, &metrics) {
                        Ok(Some(ticket)) => {
                            let event = Event::Persisted { ticket };
                            if core_tx.send(CoreInput::Event(event, None)).is_err() {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            failed(e);
                            break;
                        }
                    }
                }
                recv(saved_rx) -> seq => {
                    // The writer stopped (an error it reported as fatal): so do we.
                    let Ok(seq) = seq else { break };
                    match log.wal.compact(seq.saturating_add(1)) {
                        Ok(segments) => {
                            metrics.snapshots_saved.inc();
                            debug!(seq, segments, "saved a checkpoint and compacted the log");
                        }
                        Err(e) => {
                            failed(e);
                            break;
                        }
                    }
                }
            }
        }
        pending.close();
    });
    debug!("storage thread stopped");
}

/// The checkpoint waiting for the snapshot writer: a newer one replaces it.
#[derive(Default)]
struct SaveSlot {
    state: Mutex<(Option<Box<StateSnapshot>>, bool)>,
    ready: Condvar,
}

impl SaveSlot {
    fn put(&self, snap: Box<StateSnapshot>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = state.0.replace(snap) {
            debug!(
                seq = old.checkpoint.seq,
                "a newer checkpoint replaces one not saved yet"
            );
        }
        self.ready.notify_one();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.ready.notify_one();
    }

    /// The next checkpoint to save; `None` once closed and empty (a replica that stops saves the
    /// checkpoint it was handed last, so its next start replays less log).
    fn take(&self) -> Option<Box<StateSnapshot>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(snap) = state.0.take() {
                return Some(snap);
            }
            if state.1 {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The snapshot writer: saves each checkpoint handed over (atomically, fsynced) and reports its
/// sequence number, so the storage thread compacts the log below it.
fn write_snapshots<F: Fs>(
    mut snapshots: SnapshotStore<F>,
    pending: &SaveSlot,
    saved: Sender<u64>,
    fatal: Sender<String>,
) {
    while let Some(snap) = pending.take() {
        let seq = snap.checkpoint.seq;
        let parts = snap.encoded_parts();
        let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        if let Err(e) = snapshots.save_parts(seq, &parts) {
            error!(snapshots = %snapshots.dir().display(), "{e}; stopping the replica");
            let _ = fatal.send(format!("durable storage failed: {e}"));
            return;
        }
        if saved.send(seq).is_err() {
            return;
        }
    }
}

/// The write-ahead log as the storage thread uses it.
struct Log<F: Fs> {
    wal: Wal<F>,
}

impl<F: Fs> Log<F> {
    /// Carry out one group of jobs in order; the highest ticket made durable, if any.
    fn group(
        &mut self,
        jobs: Vec<StorageJob>,
        pending: &SaveSlot,
        metrics: &Metrics,
    ) -> Result<Option<u64>, StorageError> {
        let mut highest = None;
        let mut unsynced = 0u64;
        for job in jobs {
            match job {
                StorageJob::Append {
                    ticket,
                    key,
                    record,
                } => {
                    self.wal.append(key, &message::encode(&record))?;
                    unsynced += 1;
                    highest = Some(ticket);
                }
                StorageJob::Checkpoint(snap) => {
                    // The records requested before the checkpoint (among them the view record
                    // written again above it) are durable before the log can be compacted.
                    self.sync(&mut unsynced, metrics)?;
                    pending.put(snap);
                }
            }
        }
        self.sync(&mut unsynced, metrics)?;
        Ok(highest)
    }

    /// Write and fsync the records appended since the last sync (one group commit).
    fn sync(&mut self, unsynced: &mut u64, metrics: &Metrics) -> Result<(), StorageError> {
        if *unsynced == 0 {
            return Ok(());
        }
        let started = Instant::now();
        self.wal.sync()?;
        metrics
            .storage_sync_latency
            .observe(started.elapsed().as_secs_f64());
        metrics.storage_syncs.inc();
        metrics.storage_records.inc_by(*unsynced);
        *unsynced = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shieldwall_core::message::{CommittedBatch, PrePrepare};
    use shieldwall_storage::MemFs;
    use std::time::Duration;

    fn record(seq: u64) -> Record {
        Record::Committed(CommittedBatch {
            pre_prepare: PrePrepare {
                view: 0,
                seq,
                batch_digest: Default::default(),
                batch: Default::default(),
            },
        })
    }

    /// The storage thread on an in-memory disk; `fail_after`: the disk fails every operation
    /// after that many more. Returns what reached the core and the fatal channel.
    fn run_on_memfs(fail_after: Option<u64>, jobs: Vec<StorageJob>) -> (Vec<u64>, Option<String>) {
        let (persisted, fatal, _) = run_on(MemFs::new(), fail_after, jobs);
        (persisted, fatal)
    }

    fn run_on(
        fs: MemFs,
        fail_after: Option<u64>,
        jobs: Vec<StorageJob>,
    ) -> (Vec<u64>, Option<String>, MemFs) {
        let wal = Wal::open(fs.clone(), "/d/wal", WalOptions::default())
            .unwrap()
            .0;
        let snapshots = SnapshotStore::open(fs.clone(), "/d/snapshots").unwrap();
        fs.set_fail_after(fail_after);
        let (tx, rx) = crossbeam_channel::bounded(16);
        let core_tx = Arc::new(CoreQueue::default());
        let core_rx = core_tx.clone();
        let (fatal_tx, fatal_rx) = crossbeam_channel::unbounded();
        let metrics = Arc::new(Metrics::new(0));
        let thread = std::thread::spawn(move || {
            run_storage(Storage { wal, snapshots }, rx, core_tx, metrics, fatal_tx)
        });
        for j in jobs {
            tx.send(j).unwrap();
        }
        drop(tx);
        thread.join().unwrap();
        let persisted = core_rx
            .drain()
            .into_iter()
            .filter_map(|input| match input {
                CoreInput::Event(Event::Persisted { ticket }, _) => Some(ticket),
                _ => None,
            })
            .collect();
        (persisted, fatal_rx.recv_timeout(Duration::ZERO).ok(), fs)
    }

    fn append(ticket: u64) -> StorageJob {
        StorageJob::Append {
            ticket,
            key: ticket,
            record: record(ticket),
        }
    }

    #[test]
    fn a_group_of_records_is_reported_durable_once() {
        let (persisted, fatal) = run_on_memfs(None, vec![append(1), append(2), append(3)]);
        assert_eq!(fatal, None);
        assert_eq!(persisted.last(), Some(&3), "{persisted:?}");
    }

    #[test]
    fn a_checkpoint_is_saved_by_the_writer_without_holding_the_records_after_it() {
        let snap = StateSnapshot {
            checkpoint: shieldwall_core::CheckpointCert {
                seq: 2,
                state_digest: Default::default(),
                proof: Vec::new(),
            },
            service: vec![
                bytes::Bytes::from_static(b"the service "),
                bytes::Bytes::from_static(b"state"),
            ],
            clients: bytes::Bytes::from_static(b"clients"),
        };
        let jobs = vec![
            append(1),
            append(2),
            StorageJob::Checkpoint(Box::new(snap.clone())),
            append(3),
        ];
        let (persisted, fatal, fs) = run_on(MemFs::new(), None, jobs);
        assert_eq!(fatal, None);
        assert_eq!(persisted.last(), Some(&3), "{persisted:?}");
        // The storage thread waits for its writer before it stops: the save is on disk.
        let store = SnapshotStore::open(fs, "/d/snapshots").unwrap();
        let newest = store
            .load_newest()
            .unwrap()
            .newest
            .expect("the checkpoint was saved");
        assert_eq!(newest.seq, 2);
        let back: StateSnapshot = message::decode_limited(&newest.bytes, usize::MAX).unwrap();
        assert_eq!(back, snap);
    }

    #[test]
    fn a_disk_error_at_run_time_is_fatal_and_nothing_is_reported_durable() {
        let (persisted, fatal) = run_on_memfs(Some(0), vec![append(1), append(2)]);
        assert!(
            persisted.is_empty(),
            "reported durable on a failing disk: {persisted:?}"
        );
        let fatal = fatal.expect("the failure reaches the fatal channel");
        assert!(
            fatal.contains("durable storage failed") && fatal.contains("injected fault"),
            "{fatal}"
        );
    }

    #[test]
    fn an_empty_data_directory_holds_nothing_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let (_storage, on_disk) = open(dir.path()).unwrap();
        assert!(on_disk.is_empty());
        assert!(dir.path().join("wal").is_dir());
        assert!(dir.path().join("snapshots").is_dir());
    }

    #[test]
    fn a_record_that_does_not_decode_is_fatal_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        {
            let (mut wal, _) = Wal::open(RealFs, &wal_dir, WalOptions::default()).unwrap();
            // Checksummed, so not a torn tail: bytes that are no Record.
            wal.append(5, &[0xff; 7]).unwrap();
            wal.sync().unwrap();
        }
        let err = open(dir.path()).err().unwrap();
        assert!(err.contains(&wal_dir.display().to_string()), "{err}");
        assert!(
            err.contains("LSN 1") && err.contains("does not decode"),
            "{err}"
        );
    }

    #[test]
    fn a_checkpoint_that_does_not_decode_is_fatal_and_named() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = SnapshotStore::open(RealFs, dir.path().join("snapshots")).unwrap();
            store.save(16, b"not a state snapshot").unwrap();
        }
        let err = open(dir.path()).err().unwrap();
        assert!(err.contains(&snapshot_file_name(16)), "{err}");
        assert!(err.contains("does not decode"), "{err}");
    }
}
