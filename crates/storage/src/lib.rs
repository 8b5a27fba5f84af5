//! Durable storage of a shieldwall replica (placeholder docs, see below).

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod error;
mod fs;
mod memfs;
mod snapshot;
mod wal;

pub use error::{Result, StorageError};
pub use fs::{Fs, FsFile, RealFile, RealFs};
pub use memfs::{MemFile, MemFs, MemFsStats};
pub use snapshot::{
    snapshot_file_name, DamagedSnapshot, Snapshot, SnapshotLoad, SnapshotStore, SNAPSHOTS_KEPT,
    SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC, SNAPSHOT_VERSION,
};
pub use wal::{
    segment_file_name, Lsn, Recovered, RecoveryReport, TornTail, Wal, WalOptions,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SEGMENT_VERSION,
};
