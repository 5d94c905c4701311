//! A fault-injecting [`FileSystem`] for tests (of this crate and of its users): it wraps
//! another file system and can count fsyncs, hold them back until released, make them
//! fail, tear writes (write a prefix, then fail), fail removals, or fail moves out of a
//! directory (as across file systems), as a crash, a full disk or a bad mount would. It
//! also journals the directory operations ([`FsOp`]) so tests can check their order.
//! Locks are the wrapped file system's, so two opens through it exclude each other as on
//! a real disk.
//!
//! Not for production use; it is public so integration tests elsewhere can inject faults.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::fs::{FileLock, FileSystem, LogFile, OpenMode, StdFs};

/// A directory operation, as journaled by [`FaultyFs::ops`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    /// A file was removed.
    Remove(PathBuf),
    /// A file was renamed (from, to).
    Rename(PathBuf, PathBuf),
    /// A directory was fsynced.
    SyncDir(PathBuf),
}

/// A file system that injects faults into another one. Clones share their fault settings.
#[derive(Debug, Clone)]
pub struct FaultyFs {
    inner: Arc<dyn FileSystem>,
    state: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    file_syncs_started: AtomicU64,
    file_syncs_done: AtomicU64,
    synced_dirs: Mutex<Vec<PathBuf>>,
    fail_syncs: AtomicBool,
    /// Bytes that may still be written before writes tear; `u64::MAX` for no limit.
    write_budget: AtomicU64,
    /// Removals that may still succeed; `u64::MAX` for no limit.
    remove_budget: AtomicU64,
    /// Moves of files out of this directory (to another one) fail.
    fail_renames_from: Mutex<Option<PathBuf>>,
    /// Successful directory operations, in order.
    ops: Mutex<Vec<FsOp>>,
    held: Mutex<bool>,
    released: Condvar,
}

impl Default for FaultyFs {
    fn default() -> Self {
        Self::new(Arc::new(StdFs))
    }
}

impl FaultyFs {
    /// Wraps `inner` with no fault enabled.
    pub fn new(inner: Arc<dyn FileSystem>) -> Self {
        let state = FaultState {
            write_budget: AtomicU64::new(u64::MAX),
            remove_budget: AtomicU64::new(u64::MAX),
            ..FaultState::default()
        };
        Self {
            inner,
            state: Arc::new(state),
        }
    }

    /// File fsyncs that completed (successfully or not).
    pub fn file_syncs(&self) -> u64 {
        self.state.file_syncs_done.load(Ordering::SeqCst)
    }

    /// File fsyncs that started (some may be held).
    pub fn file_syncs_started(&self) -> u64 {
        self.state.file_syncs_started.load(Ordering::SeqCst)
    }

    /// Directory fsyncs.
    pub fn dir_syncs(&self) -> u64 {
        lock(&self.state.synced_dirs).len() as u64
    }

    /// The directories fsynced so far, in order (with repeats).
    pub fn synced_dirs(&self) -> Vec<PathBuf> {
        lock(&self.state.synced_dirs).clone()
    }

    /// Makes every later file fsync block until [`Self::release_syncs`].
    pub fn hold_syncs(&self) {
        *self
            .state
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Lets held and later fsyncs proceed.
    pub fn release_syncs(&self) {
        *self
            .state
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.state.released.notify_all();
    }

    /// Makes file fsyncs fail (`true`) or succeed (`false`).
    pub fn fail_syncs(&self, fail: bool) {
        self.state.fail_syncs.store(fail, Ordering::SeqCst);
    }

    /// The successful removals, renames and directory fsyncs so far, in order.
    pub fn ops(&self) -> Vec<FsOp> {
        lock(&self.state.ops).clone()
    }

    /// Lets `n` more file removals succeed; later ones fail. `None` removes the limit.
    pub fn fail_removes_after(&self, n: Option<u64>) {
        self.state
            .remove_budget
            .store(n.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Makes moves of files out of `dir` into another directory fail as a rename across
    /// file systems does; renames within `dir` still work. `None`: no rename fails.
    pub fn fail_renames_from(&self, dir: Option<PathBuf>) {
        *lock(&self.state.fail_renames_from) = dir;
    }

    /// Lets `bytes` more bytes be written; the write that would exceed them writes only the
    /// allowed prefix and fails, and later writes fail. `None` removes the limit.
    pub fn tear_writes_after(&self, bytes: Option<u64>) {
        self.state
            .write_budget
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

impl FileSystem for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(FaultyFile {
            inner: self.inner.open(path, mode)?,
            state: Arc::clone(&self.state),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let budget = &self.state.remove_budget;
        let allowed = budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                u64::MAX => Some(n),
                0 => None,
                n => Some(n - 1),
            })
            .is_ok();
        if !allowed {
            return Err(io::Error::other("injected fault: remove failed"));
        }
        self.inner.remove_file(path)?;
        lock(&self.state.ops).push(FsOp::Remove(path.to_path_buf()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if lock(&self.state.fail_renames_from)
            .as_deref()
            .is_some_and(|d| from.parent() == Some(d) && to.parent() != Some(d))
        {
            return Err(io::Error::new(
                io::ErrorKind::CrossesDevices,
                "injected fault: rename across file systems",
            ));
        }
        self.inner.rename(from, to)?;
        lock(&self.state.ops).push(FsOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        lock(&self.state.synced_dirs).push(dir.to_path_buf());
        self.inner.sync_dir(dir)?;
        lock(&self.state.ops).push(FsOp::SyncDir(dir.to_path_buf()));
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }

    fn try_lock_file(&self, path: &Path) -> io::Result<Box<dyn FileLock>> {
        self.inner.try_lock_file(path)
    }
}

/// Fault settings and journals stay usable even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn LogFile>,
    state: Arc<FaultState>,
}

impl LogFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let want = buf.len() as u64;
        let budget = &self.state.write_budget;
        let mut left = budget.load(Ordering::SeqCst);
        loop {
            if left == u64::MAX {
                return self.inner.write_all_at(buf, offset);
            }
            let take = left.min(want);
            match budget.compare_exchange(left, left - take, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) if take == want => return self.inner.write_all_at(buf, offset),
                Ok(_) => {
                    // `take < want <= usize::MAX`.
                    self.inner.write_all_at(&buf[..take as usize], offset)?;
                    return Err(io::Error::other("injected fault: torn write"));
                }
                Err(now) => left = now,
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.state.file_syncs_started.fetch_add(1, Ordering::SeqCst);
        {
            let mut held = self
                .state
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while *held {
                held = self
                    .state
                    .released
                    .wait(held)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        let res = if self.state.fail_syncs.load(Ordering::SeqCst) {
            Err(io::Error::other("injected fault: fsync failed"))
        } else {
            self.inner.sync_data()
        };
        self.state.file_syncs_done.fetch_add(1, Ordering::SeqCst);
        res
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    #[cfg(feature = "fault-injection")]
    fn sync_skipped(&self) {
        self.inner.sync_skipped();
    }
}
