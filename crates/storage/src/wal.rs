//! The segmented write-ahead log. Formats and recovery rules are described in the crate docs.

use std::mem;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};
use crate::fs::{Fs, FsFile};

/// A log sequence number: the position of a record in the log. The first record ever appended
/// has LSN 1; LSNs are dense (no gaps) and survive compaction.
pub type Lsn = u64;

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SHWLWAL\n";
/// Version of the segment format written by this build (the only one it reads).
pub const SEGMENT_VERSION: u32 = 2;
/// Bytes of the segment header: magic (8), version (4), first LSN (8), crc32c (4).
pub const SEGMENT_HEADER_BYTES: u64 = 24;
/// Bytes before a record's payload: length (4), crc32c (4), key (8).
pub const RECORD_HEADER_BYTES: u64 = 16;

const SEG_HDR: usize = SEGMENT_HEADER_BYTES as usize;
const REC_HDR: usize = RECORD_HEADER_BYTES as usize;

/// Limits of a [`Wal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is rotated before a record would take it past this size (header included).
    /// A single record larger than that still goes alone into a segment of its own.
    pub segment_bytes_max: u64,
    /// The largest payload accepted by [`Wal::append`], and the largest length field that
    /// recovery will believe; nothing larger is ever allocated from an on-disk length.
    pub record_bytes_max: u32,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: 64 << 20,
            record_bytes_max: 16 << 20,
        }
    }
}

/// A record read back by [`Wal::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Its position in the log.
    pub lsn: Lsn,
    /// The key given to [`Wal::append`].
    pub key: u64,
    /// The bytes given to [`Wal::append`].
    pub payload: Vec<u8>,
}

/// What [`Wal::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments: usize,
    /// Records recovered.
    pub records: u64,
    /// The torn tail cut from the last segment, if there was one.
    pub torn_tail: Option<TornTail>,
}

/// A torn tail removed by recovery: bytes a crash left incomplete after the last durable
/// record. Nothing in it was ever reported durable by [`Wal::sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment that was truncated.
    pub path: PathBuf,
    /// The offset it was truncated to (where the first bad record began).
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes_dropped: u64,
    /// Why the first dropped record was bad.
    pub reason: String,
}

/// A segment already on disk.
#[derive(Clone, Debug)]
struct Segment {
    first_lsn: Lsn,
    records: u64,
    /// Largest key in the segment; `None` when it holds no record.
    max_key: Option<u64>,
    path: PathBuf,
}

/// Records appended but not yet written, all bound for one segment.
#[derive(Clone, Debug, Default)]
struct Pending {
    first_lsn: Lsn,
    records: u64,
    max_key: Option<u64>,
    bytes: Vec<u8>,
}

/// The write-ahead log. See the crate docs for formats, recovery and the durability contract.
///
/// One owner: `Wal` is not shared; it is `Send` so it can live in a storage stage of its own.
#[derive(Debug)]
pub struct Wal<F: Fs> {
    fs: F,
    dir: PathBuf,
    opts: WalOptions,
    /// Finished segments, oldest first; all fsynced.
    sealed: Vec<Segment>,
    /// The segment being written; its records count only what was written to the file.
    active: Segment,
    active_file: F::File,
    /// Length of the active segment's file (header and written records).
    active_bytes: u64,
    /// Appended records bound for the active segment.
    pending_active: Pending,
    /// Appended records bound for segments not created yet (rotation happens in `sync`).
    pending_new: Vec<Pending>,
    next_lsn: Lsn,
    durable_lsn: Lsn,
    report: RecoveryReport,
    /// Set while an IO sequence is under way; left set if it failed.
    poisoned: bool,
}

/// The file name of the segment whose first record is `first_lsn`.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("wal-{first_lsn:020}.log")
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn segment_header(first_lsn: Lsn) -> [u8; SEG_HDR] {
    let mut h = [0; SEG_HDR];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn record_crc(key: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&key.to_le_bytes()), payload)
}

fn encode_record(out: &mut Vec<u8>, key: u64, payload: &[u8], len: u32) {
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(key, payload).to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A record parsed in place: key, payload range, end offset.
struct Parsed {
    key: u64,
    payload: (usize, usize),
    end: usize,
}

/// Parses the record at `off`, or says why there is no valid one there.
fn parse_record(buf: &[u8], off: usize, record_max: u32) -> Result<Parsed, String> {
    let rest = buf.len() - off;
    if rest < REC_HDR {
        return Err(format!(
            "incomplete record header ({rest} of {REC_HDR} bytes)"
        ));
    }
    let len = u32_at(buf, off);
    if len > record_max {
        return Err(format!(
            "record length {len} above record_bytes_max {record_max}"
        ));
    }
    let start = off + REC_HDR;
    let end = start + len as usize;
    if end > buf.len() {
        return Err(format!(
            "incomplete record ({} of {len} payload bytes)",
            buf.len() - start
        ));
    }
    let crc = u32_at(buf, off + 4);
    let key = u64_at(buf, off + 8);
    if record_crc(key, &buf[start..end]) != crc {
        return Err("record checksum mismatch".to_owned());
    }
    Ok(Parsed {
        key,
        payload: (start, end),
        end,
    })
}

/// The first offset after `from` where a valid record starts, if any. Used to tell a torn tail
/// (nothing valid follows the bad bytes) from corruption in the middle (something does).
fn valid_record_after(buf: &[u8], from: usize, record_max: u32) -> Option<usize> {
    (from..buf.len().saturating_sub(REC_HDR - 1))
        .find(|&p| parse_record(buf, p, record_max).is_ok())
}

impl<F: Fs> Wal<F> {
    /// Opens (creating if needed) the log in `dir`, recovers it, and returns it with every
    /// record it holds, oldest first.
    ///
    /// A torn tail of the last segment is cut off (the file is truncated and fsynced) and
    /// described in [`Wal::recovery_report`]. Anything else that fails a check is
    /// [`StorageError::Corrupt`]; see the crate docs for the exact rules. On success the last
    /// segment and the directory have been fsynced, so every returned record is durable even
    /// if the previous process died before its own fsync.
    pub fn open(
        fs: F,
        dir: impl Into<PathBuf>,
        opts: WalOptions,
    ) -> Result<(Self, Vec<Recovered>)> {
        let dir = dir.into();
        if opts.segment_bytes_max < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES {
            return Err(StorageError::InvalidOptions(
                "segment_bytes_max must hold a segment header and a record header",
            ));
        }
        if u64::from(opts.record_bytes_max) + RECORD_HEADER_BYTES > isize::MAX as u64 {
            return Err(StorageError::InvalidOptions("record_bytes_max too large"));
        }
        fs.create_dir_all(&dir)?;
        let mut firsts: Vec<Lsn> = fs
            .list(&dir)?
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect();
        firsts.sort_unstable();

        let mut report = RecoveryReport::default();
        let mut records = Vec::new();
        let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len());
        let mut last_bytes = 0;
        for (i, &first_lsn) in firsts.iter().enumerate() {
            let is_last = i + 1 == firsts.len();
            let path = dir.join(segment_file_name(first_lsn));
            if let Some(prev) = segments.last() {
                let expected = prev.first_lsn + prev.records;
                if first_lsn != expected {
                    return Err(StorageError::corrupt(
                        &path,
                        0,
                        format!("LSN gap: segment starts at {first_lsn}, previous one ends before {expected}"),
                    ));
                }
            }
            let (segment, bytes) = Self::recover_segment(
                &fs,
                &path,
                first_lsn,
                is_last,
                opts,
                &mut records,
                &mut report,
            )?;
            last_bytes = bytes;
            segments.push(segment);
        }
        report.segments = segments.len();
        report.records = records.len() as u64;

        let (active, active_file, active_bytes) = match segments.pop() {
            Some(active) => {
                let mut file = fs.open_append(&active.path)?;
                // The previous process may have died with written but unsynced bytes that we
                // just read back; make them durable before anyone relies on them.
                file.sync()?;
                fs.sync_dir(&dir)?;
                (active, file, last_bytes)
            }
            None => {
                let (segment, file) = Self::create_segment(&fs, &dir, 1)?;
                (segment, file, SEGMENT_HEADER_BYTES)
            }
        };
        let next_lsn = active.first_lsn + active.records;
        let wal = Wal {
            fs,
            dir,
            opts,
            sealed: segments,
            pending_active: Pending {
                first_lsn: next_lsn,
                ..Pending::default()
            },
            active,
            active_file,
            active_bytes,
            pending_new: Vec::new(),
            next_lsn,
            durable_lsn: next_lsn - 1,
            report,
            poisoned: false,
        };
        Ok((wal, records))
    }

    /// Reads one segment, appending its records to `out`. Returns the segment and the length
    /// of its file after any repair.
    fn recover_segment(
        fs: &F,
        path: &Path,
        first_lsn: Lsn,
        is_last: bool,
        opts: WalOptions,
        out: &mut Vec<Recovered>,
        report: &mut RecoveryReport,
    ) -> Result<(Segment, u64)> {
        let buf = fs.read(path)?;
        let mut segment = Segment {
            first_lsn,
            records: 0,
            max_key: None,
            path: path.to_path_buf(),
        };
        let header_ok = buf.len() >= SEG_HDR && buf[..SEG_HDR] == segment_header(first_lsn);
        if !header_ok {
            // The last segment may have been created just before a crash, before its header
            // reached the disk: short, or zeros where the header goes. It cannot hold a
            // record anyone was told is durable (the header is fsynced before any record is
            // written), so it is rewritten empty.
            let torn_creation = buf.len() < SEG_HDR || buf[..SEG_HDR].iter().all(|&b| b == 0);
            if !(is_last && torn_creation)
                || valid_record_after(&buf, 0, opts.record_bytes_max).is_some()
            {
                let reason = if buf.len() < SEG_HDR {
                    "incomplete segment header".to_owned()
                } else if buf[..8] != SEGMENT_MAGIC {
                    "bad segment magic".to_owned()
                } else if u32_at(&buf, 8) != SEGMENT_VERSION {
                    format!("unknown segment version {}", u32_at(&buf, 8))
                } else if u64_at(&buf, 12) != first_lsn {
                    format!(
                        "header says first LSN {}, file name says {first_lsn}",
                        u64_at(&buf, 12)
                    )
                } else {
                    "segment header checksum mismatch".to_owned()
                };
                return Err(StorageError::corrupt(path, 0, reason));
            }
            let mut file = fs.create(path)?;
            file.write_all(&segment_header(first_lsn))?;
            file.sync()?;
            report.torn_tail = Some(TornTail {
                path: path.to_path_buf(),
                offset: 0,
                bytes_dropped: buf.len() as u64,
                reason: "segment header never completed".to_owned(),
            });
            return Ok((segment, SEGMENT_HEADER_BYTES));
        }

        let mut off = SEG_HDR;
        while off < buf.len() {
            match parse_record(&buf, off, opts.record_bytes_max) {
                Ok(rec) => {
                    out.push(Recovered {
                        lsn: first_lsn + segment.records,
                        key: rec.key,
                        payload: buf[rec.payload.0..rec.payload.1].to_vec(),
                    });
                    segment.records += 1;
                    segment.max_key = segment.max_key.max(Some(rec.key));
                    off = rec.end;
                }
                Err(reason) => {
                    if !is_last {
                        return Err(StorageError::corrupt(
                            path,
                            off as u64,
                            format!("{reason} in a segment that is not the last"),
                        ));
                    }
                    if let Some(next) = valid_record_after(&buf, off + 1, opts.record_bytes_max) {
                        return Err(StorageError::corrupt(
                            path,
                            off as u64,
                            format!("{reason}, followed by a valid record at offset {next}"),
                        ));
                    }
                    let mut file = fs.open_append(path)?;
                    file.truncate(off as u64)?;
                    file.sync()?;
                    report.torn_tail = Some(TornTail {
                        path: path.to_path_buf(),
                        offset: off as u64,
                        bytes_dropped: (buf.len() - off) as u64,
                        reason,
                    });
                    break;
                }
            }
        }
        Ok((segment, off as u64))
    }

    /// Creates an empty segment durably: header written and fsynced, directory fsynced.
    fn create_segment(fs: &F, dir: &Path, first_lsn: Lsn) -> Result<(Segment, F::File)> {
        let path = dir.join(segment_file_name(first_lsn));
        let mut file = fs.create(&path)?;
        file.write_all(&segment_header(first_lsn))?;
        file.sync()?;
        fs.sync_dir(dir)?;
        let segment = Segment {
            first_lsn,
            records: 0,
            max_key: None,
            path,
        };
        Ok((segment, file))
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Size and record count of the last segment, counting appended records not written yet.
    fn tail(&self) -> (u64, u64) {
        match self.pending_new.last() {
            Some(p) => (SEGMENT_HEADER_BYTES + p.bytes.len() as u64, p.records),
            None => (
                self.active_bytes + self.pending_active.bytes.len() as u64,
                self.active.records + self.pending_active.records,
            ),
        }
    }

    /// Buffers a record and returns its LSN. No IO happens here: the record is written and
    /// made durable by the next [`Wal::sync`], and is lost if the log is dropped (or the
    /// machine dies) before that returns.
    ///
    /// Fails with [`StorageError::RecordTooLarge`] (the log stays usable) or
    /// [`StorageError::Poisoned`].
    pub fn append(&mut self, key: u64, payload: &[u8]) -> Result<Lsn> {
        self.check_usable()?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len <= self.opts.record_bytes_max)
            .ok_or(StorageError::RecordTooLarge {
                len: payload.len(),
                max: self.opts.record_bytes_max,
            })?;
        let framed = RECORD_HEADER_BYTES + u64::from(len);
        let (tail_bytes, tail_records) = self.tail();
        if tail_records > 0 && tail_bytes + framed > self.opts.segment_bytes_max {
            self.pending_new.push(Pending {
                first_lsn: self.next_lsn,
                ..Pending::default()
            });
        }
        let pending = match self.pending_new.last_mut() {
            Some(p) => p,
            None => &mut self.pending_active,
        };
        encode_record(&mut pending.bytes, key, payload, len);
        pending.records += 1;
        pending.max_key = pending.max_key.max(Some(key));
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Writes every buffered record and makes them durable, then returns the highest durable
    /// LSN ([`Wal::durable_lsn`]). One fsync covers all records appended since the last sync
    /// (group commit); a rotation adds an fsync of the finished segment and of the directory.
    ///
    /// When this returns `Ok(lsn)`, every record with an LSN up to `lsn` survives a crash. On
    /// error nothing new is promised, and the log is poisoned: reopen it to learn what is on
    /// disk.
    pub fn sync(&mut self) -> Result<Lsn> {
        self.check_usable()?;
        if self.pending_active.records == 0 && self.pending_new.is_empty() {
            return Ok(self.durable_lsn);
        }
        self.poisoned = true;
        let first = mem::replace(
            &mut self.pending_active,
            Pending {
                first_lsn: self.next_lsn,
                ..Pending::default()
            },
        );
        self.write_active(first)?;
        for pending in mem::take(&mut self.pending_new) {
            // The finished segment is durable before its successor exists, so only the last
            // segment can ever have a torn tail.
            self.active_file.sync()?;
            let (segment, file) = Self::create_segment(&self.fs, &self.dir, pending.first_lsn)?;
            self.sealed.push(mem::replace(&mut self.active, segment));
            self.active_file = file;
            self.active_bytes = SEGMENT_HEADER_BYTES;
            self.write_active(pending)?;
        }
        self.active_file.sync()?;
        self.durable_lsn = self.next_lsn - 1;
        self.poisoned = false;
        Ok(self.durable_lsn)
    }

    fn write_active(&mut self, pending: Pending) -> Result<()> {
        if pending.records == 0 {
            return Ok(());
        }
        self.active_file.write_all(&pending.bytes)?;
        self.active_bytes += pending.bytes.len() as u64;
        self.active.records += pending.records;
        self.active.max_key = self.active.max_key.max(pending.max_key);
        Ok(())
    }

    /// Deletes the oldest finished segments whose records all have keys below `below_key`,
    /// stopping at the first segment that must be kept (so the remaining segments stay
    /// contiguous), and returns how many were deleted. The segment being written is never
    /// deleted. Each deletion is made durable (directory fsync) before the next, so a crash
    /// leaves a contiguous suffix of the log.
    pub fn compact(&mut self, below_key: u64) -> Result<usize> {
        self.check_usable()?;
        let deletable = self
            .sealed
            .iter()
            .take_while(|s| s.max_key.is_none_or(|k| k < below_key))
            .count();
        self.poisoned = true;
        for segment in &self.sealed[..deletable] {
            self.fs.remove(&segment.path)?;
            self.fs.sync_dir(&self.dir)?;
        }
        self.sealed.drain(..deletable);
        self.poisoned = false;
        Ok(deletable)
    }

    /// The highest LSN known durable (0 if none).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// The LSN the next [`Wal::append`] will return.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The LSN of the oldest record still in the log (equal to [`Wal::next_lsn`] if empty).
    pub fn first_lsn(&self) -> Lsn {
        self.sealed.first().unwrap_or(&self.active).first_lsn
    }

    /// Segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// What [`Wal::open`] found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests;
