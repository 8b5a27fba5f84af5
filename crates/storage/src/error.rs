//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in storage. IO errors are never dropped: each names the
/// operation and the file it was applied to. The caller should treat every error as fatal for
/// the replica (after a failed fsync the state of the file is unknown, see "fsyncgate"); a
/// [`crate::Wal`] refuses further use after one ([`StorageError::Poisoned`]).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file-system call failed.
    #[error("storage: {op} {path}: {source}")]
    Io {
        /// The operation, e.g. `"fsync"`, `"rename"`.
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// What the OS (or the simulated file system) reported.
        source: io::Error,
    },
    /// Data on disk that is not a torn tail failed its checks. Recovery must stop: skipping it
    /// would silently lose or reorder committed records.
    #[error("storage: corrupt {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset in that file where the damage was found.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// A record larger than the configured `record_bytes_max` was offered to the log.
    #[error("storage: record of {len} bytes exceeds record_bytes_max {max}")]
    RecordTooLarge {
        /// The payload length offered.
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// Options that cannot work (e.g. a segment too small to hold its header).
    #[error("storage: invalid options: {0}")]
    InvalidOptions(&'static str),
    /// The log saw an IO error earlier; what is on disk is unknown, so it refuses further work.
    /// Reopen it to recover.
    #[error("storage: write-ahead log unusable after an earlier IO error; reopen to recover")]
    Poisoned,
    /// A snapshot that is not in the store was asked for.
    #[error("storage: no snapshot {seq} in {dir}")]
    NoSnapshot {
        /// The sequence number asked for.
        seq: u64,
        /// The snapshot directory.
        dir: PathBuf,
    },
}

impl StorageError {
    /// An IO error with its operation and path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A corruption error.
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StorageError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
