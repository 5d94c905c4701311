//! The log's only door to the disk: a small file-system trait ([`FileSystem`], [`LogFile`])
//! with a std implementation ([`StdFs`]). Tests swap in [`super::fault::FaultyFs`] to count
//! fsyncs, hold them back, fail them, or tear writes.
//!
//! Files are accessed positionally (`read_at` / `write_all_at`) and shared (`Arc`), so the
//! appender, the readers and the flusher thread can use one handle at once without a seek
//! position to fight over.
//!
//! [`FileSystem::try_lock_file`] takes the exclusive lock that keeps a second process (or a
//! second open in this one) out of a log directory; [`StdFs`] uses `File::try_lock`
//! (`flock` on Linux: released when the handle is dropped or the process dies).

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::format::TMP_SUFFIX;
use crate::error::{Error, Result};

/// How [`FileSystem::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, read only.
    Read,
    /// An existing file, read and write.
    ReadWrite,
    /// A new file, read and write; fails if it exists.
    CreateNew,
}

/// An open file.
pub trait LogFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at EOF).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Fault injection: the flusher was told to skip the fsync of this file
    /// ([`super::LogConfig::fault_skip_fsync`]) and reports its writes durable anyway. A
    /// file system emulating the page cache ([`super::crash::CrashFs`]) lets older
    /// writes reach the disk here, as the OS's writeback would; others do nothing.
    #[cfg(feature = "fault-injection")]
    fn sync_skipped(&self) {}

    /// Reads exactly `buf.len()` bytes at `offset`; a short file is `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file too short",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An exclusive lock on a file, held until this value is dropped.
pub trait FileLock: Send + Sync + fmt::Debug {}

/// Directory and file operations the log needs.
pub trait FileSystem: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of a directory.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists (atomic within a file system).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Creates `path` if missing and takes an exclusive lock on it without waiting. The lock
    /// lasts until the returned value is dropped. Fails with [`io::ErrorKind::WouldBlock`]
    /// while anyone else holds it — another process, or another open handle of this one.
    fn try_lock_file(&self, path: &Path) -> io::Result<Box<dyn FileLock>>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl LogFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// The lock is the open file's: dropping the handle releases it.
#[derive(Debug)]
struct StdLock {
    _file: File,
}

impl FileLock for StdLock {}

impl FileSystem for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            // Names that are not UTF-8 cannot be ours; skip them.
            if let Ok(name) = e?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
        };
        Ok(Arc::new(StdFile(o.open(path)?)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn try_lock_file(&self, path: &Path) -> io::Result<Box<dyn FileLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdLock { _file: file })),
            Err(TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the lock is held by another open handle",
            )),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Fsyncs `dir` through `fs`, naming the directory on failure.
pub(crate) fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir)
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// Creates file `name` in `dir` atomically with contents `bytes`: they go to a temporary
/// file (a stale one is removed first), which is fsynced and renamed; the directory is
/// fsynced. Returns the file, still open.
pub(crate) fn create_atomically(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<Arc<dyn LogFile>> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    if fs.exists(&tmp).map_err(|e| Error::io(ctx("checking"), e))? {
        fs.remove_file(&tmp)
            .map_err(|e| Error::io(ctx("removing stale"), e))?;
    }
    let file = fs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io(ctx("creating"), e))?;
    file.write_all_at(bytes, 0)
        .map_err(|e| Error::io(ctx("writing"), e))?;
    file.sync_data().map_err(|e| Error::io(ctx("syncing"), e))?;
    fs.rename(&tmp, &path)
        .map_err(|e| Error::io(ctx("renaming"), e))?;
    sync_dir(fs, dir)?;
    Ok(file)
}
