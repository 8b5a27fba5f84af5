//! The file-system operations this crate needs, and their implementation over `std::fs`.
//!
//! The trait is deliberately narrow: files are written only by appending, shrunk only by
//! truncation, and replaced only by rename. That is all the log and the snapshot store need,
//! and it is what [`crate::MemFs`] models precisely, crash behaviour included.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};

/// A file system.
///
/// # Durability contract (what implementations must provide, what callers may assume)
///
/// - Bytes written with [`FsFile::write_all`] and length changes by [`FsFile::truncate`] are
///   durable only once [`FsFile::sync`] on that file has returned `Ok`.
/// - A directory entry created by [`Fs::create`] or [`Fs::rename`], or removed by [`Fs::remove`],
///   is durable only once [`Fs::sync_dir`] on its parent directory has returned `Ok`.
/// - After any error the state of the affected file is unknown; callers must not retry an
///   fsync and assume the earlier writes reached the disk.
pub trait Fs: Clone + Send + Sync + fmt::Debug + 'static {
    /// An open file, written at its end.
    type File: FsFile;

    /// Creates `dir` and its missing ancestors (the new entries are made durable).
    fn create_dir_all(&self, dir: &Path) -> Result<()>;
    /// Creates `path` empty (truncating it if it exists) and opens it for appending.
    fn create(&self, path: &Path) -> Result<Self::File>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> Result<Self::File>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> Result<Vec<u8>>;
    /// Reads exactly `len` bytes at `offset`; fails if the file is shorter.
    fn read_range(&self, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// The length of a file in bytes.
    fn file_len(&self, path: &Path) -> Result<u64>;
    /// Renames `from` to `to`, replacing `to` atomically if it exists.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> Result<()>;
    /// The names of the files in `dir`, sorted.
    fn list(&self, dir: &Path) -> Result<Vec<String>>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> Result<()>;
}

/// A file open for appending.
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Appends all of `bytes` at the end of the file.
    fn write_all(&mut self, bytes: &[u8]) -> Result<()>;
    /// Makes the file's content and length durable (fdatasync).
    fn sync(&mut self) -> Result<()>;
    /// Sets the file's length to `len` (later writes append after it). Durable after `sync`.
    fn truncate(&mut self, len: u64) -> Result<()>;
}

/// [`Fs`] over `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

/// A file of [`RealFs`].
#[derive(Debug)]
pub struct RealFile {
    file: File,
    path: PathBuf,
}

impl RealFs {
    fn open_dir_sync(dir: &Path) -> Result<()> {
        let d = File::open(dir).map_err(|e| StorageError::io("open dir", dir, e))?;
        d.sync_all()
            .map_err(|e| StorageError::io("fsync dir", dir, e))
    }
}

impl Fs for RealFs {
    type File = RealFile;

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.is_dir())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
        // Make each new directory's entry durable in its parent, deepest first.
        for created in missing {
            if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
                Self::open_dir_sync(parent)?;
            }
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> Result<RealFile> {
        let file = File::create(path).map_err(|e| StorageError::io("create", path, e))?;
        Ok(RealFile {
            file,
            path: path.to_path_buf(),
        })
    }

    fn open_append(&self, path: &Path) -> Result<RealFile> {
        // Not `O_APPEND`: `truncate` must be able to move the end, and we seek there ourselves.
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io("open", path, e))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| StorageError::io("seek", path, e))?;
        Ok(RealFile {
            file,
            path: path.to_path_buf(),
        })
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| StorageError::io("read", path, e))
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut file = File::open(path).map_err(|e| StorageError::io("open", path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| StorageError::io("seek", path, e))?;
        let mut buf = vec![0; len];
        file.read_exact(&mut buf)
            .map_err(|e| StorageError::io("read", path, e))?;
        Ok(buf)
    }

    fn file_len(&self, path: &Path) -> Result<u64> {
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| StorageError::io("stat", path, e))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to).map_err(|e| StorageError::io("rename", from, e))
    }

    fn remove(&self, path: &Path) -> Result<()> {
        std::fs::remove_file(path).map_err(|e| StorageError::io("remove", path, e))
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
            // Names that are not UTF-8 are not ours; skip them rather than fail.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        Self::open_dir_sync(dir)
    }
}

impl FsFile for RealFile {
    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| StorageError::io("write", &self.path, e))
    }

    fn sync(&mut self) -> Result<()> {
        // fdatasync also flushes the file size, which is all the metadata appends change.
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fsync", &self.path, e))
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| StorageError::io("truncate", &self.path, e))?;
        self.file
            .seek(SeekFrom::End(0))
            .map_err(|e| StorageError::io("seek", &self.path, e))?;
        Ok(())
    }
}
