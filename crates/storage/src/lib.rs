//! Durable storage of a shieldwall replica: a segmented write-ahead log with group commit
//! ([`Wal`]), a snapshot store ([`SnapshotStore`]), and the file-system abstraction both are
//! written against ([`Fs`]), with a real implementation ([`RealFs`]) and an in-memory one that
//! models crashes ([`MemFs`], the simulator's disk).
//!
//! The crate knows nothing about protocol messages: a log record is opaque bytes with a `u64`
//! key chosen by the caller (typically the sequence number of an ordered batch), which only
//! [`Wal::compact`] looks at. IO errors are never dropped: every fallible call returns a
//! [`StorageError`] naming the operation and the file (and the offset, for corruption).
//!
//! # Write-ahead log format
//!
//! The log is a directory of segment files `wal-<first LSN, 20 digits>.log`. A segment is a
//! header followed by records:
//!
//! ```text
//! segment header (24 B): magic "SHWLWAL\n" | version u32 LE (1) | first LSN u64 LE | crc32c u32 LE of the preceding 20 bytes
//! record:                len u32 LE | crc32c u32 LE over key ++ payload | key u64 LE | payload (len bytes)
//! ```
//!
//! Checksums are CRC-32C (Castagnoli, `crc32c` crate). LSNs are dense and start at 1; a
//! record's LSN is its segment's first LSN plus its index in the segment, so each segment must
//! start where the previous one ends. A segment is rotated before a record would take it past
//! `segment_bytes_max` (a record larger than that goes alone into its own segment).
//!
//! # Recovery rules: torn tail versus corruption
//!
//! [`Wal::open`] reads the segments in LSN order and returns every valid record. It separates
//! what a crash can legitimately leave from damage:
//!
//! - **Torn tail** (repaired, reported in [`Wal::recovery_report`]): in the *last* segment, a
//!   bad record (incomplete header, incomplete payload, length above `record_bytes_max`, or
//!   checksum mismatch) after which no valid record starts at any later offset. This covers a
//!   write cut short and a tail the file system zero-filled. The file is truncated to the
//!   start of the bad record and fsynced. Likewise a last segment whose header is short or
//!   all zeros (created just before a crash) is rewritten empty.
//! - **Corruption** ([`StorageError::Corrupt`], recovery stops): a bad record in any segment
//!   but the last; a bad record in the last segment followed by a valid one; a bad segment
//!   header (wrong magic, version, checksum, or first LSN not matching the file name) other
//!   than the torn-creation case; a gap in LSNs between segments. Nothing is skipped
//!   silently: skipping would lose or reorder records that were promised durable.
//!
//! A length field is never trusted to allocate: lengths above `record_bytes_max` are rejected
//! before anything is read, and a segment is read whole (its size is bounded by
//! `segment_bytes_max` plus one record). The tail rule can misjudge damage only if garbage
//! after a bad record happens to form a record with a valid CRC-32C (about 2^-32 per
//! candidate offset).
//!
//! # Durability contract
//!
//! - [`Wal::append`] only buffers (no IO) and returns the record's LSN.
//! - [`Wal::sync`] writes everything buffered and fsyncs once, for all records appended since
//!   the previous sync (group commit). When it returns `Ok(lsn)`, every record up to `lsn`
//!   survives a crash, and [`Wal::durable_lsn`] is `lsn`. Records appended but not synced
//!   are lost by a crash (or by dropping the log); a crash during `sync` may keep a prefix of
//!   them, never a record out of order.
//! - Only the last segment can have a torn tail: a segment is fsynced before its successor is
//!   created, and a new segment's header and directory entry are fsynced before any record is
//!   written into it.
//! - [`Wal::open`] fsyncs the last segment and the directory before returning, so records it
//!   returns are durable even if the previous process died after writing and before its fsync.
//! - After any IO error the log is poisoned ([`StorageError::Poisoned`]): after a failed
//!   fsync the file's state is unknown and retrying would be a lie. Reopen to recover.
//! - [`Wal::compact`] deletes only a prefix of whole finished segments whose keys are all below
//!   the bound, one directory fsync per deletion, so a crash in the middle still leaves a
//!   contiguous log.
//!
//! # Snapshot format and contract
//!
//! A snapshot is a file `snap-<seq, 20 digits>.snap`:
//!
//! ```text
//! header (40 B): magic "SHWLSNAP" | version u32 LE (1) | body crc32c u32 LE | seq u64 LE | body length u64 LE | reserved u32 (0) | header crc32c u32 LE of the preceding 36 bytes
//! body: the bytes given to save
//! ```
//!
//! [`SnapshotStore::save`] writes `snap-<seq>.tmp`, fsyncs it, renames it to its final name and
//! fsyncs the directory: a snapshot is visible under its final name only once complete and
//! durable. It then deletes all but the newest [`SNAPSHOTS_KEPT`] (two). [`SnapshotStore::open`]
//! deletes leftover temporary files. [`SnapshotStore::load_newest`] returns the newest snapshot
//! that verifies and lists newer damaged ones, which the caller must report; large snapshots can
//! be read piecewise with [`SnapshotStore::read_chunk`].
//!
//! # Crash model of [`MemFs`]
//!
//! Unsynced file bytes and unsynced directory entries are volatile; [`MemFs::crash`] drops
//! them, or with a seed keeps a deterministic random prefix of each file's unsynced bytes,
//! possibly zero-filled to the written length. [`MemFs::set_fail_after`] makes operations fail
//! from a chosen point, to crash in the middle of a multi-step operation.

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
