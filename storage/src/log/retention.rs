//! Retention of the raw-click store: segments whose entries Raft has all purged stay in
//! the log directory (raw reads still serve them) until the [`RetentionPolicy`] lets them
//! go; then they are moved to the archive directory, or deleted when there is none.
//!
//! Only a prefix of the segments is ever removed (oldest first, stopping at the first one
//! that must stay). The segment being written and any segment holding an unpurged entry
//! are never candidates; segments a raw import wrote are purged segments like any other.
//! Before a pass removes anything it raises the raw low-water mark (meta file) past the
//! last segment it will remove, so removed indexes never count as raw gaps.
//!
//! Invariants:
//! - The in-memory segment list matches the directory, even after a failure: a segment
//!   leaves the list only once its file has left the log directory, one at a time, so a
//!   pass that fails midway keeps every segment still on disk readable.
//! - Passes are serialized (`Shared::retention_lock`); a copy into the archive goes
//!   through `<name>.seg.tmp`, removed if the copy fails and, after a crash, on open.
//! - Background passes (after a Raft purge) run on one worker thread at a time, which
//!   [`Background::close`] joins: once the store is dropped, nothing touches the directory.
//!
//! [`RetentionPolicy`]: super::config::RetentionPolicy

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::format::{Meta, TMP_SUFFIX};
use super::fs::{sync_dir, FileSystem, OpenMode};
use super::meta;
use super::store::Shared;
use crate::error::{Error, Result};

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments moved to the archive directory (their new paths).
    pub archived: Vec<PathBuf>,
    /// Segments deleted (their former paths).
    pub deleted: Vec<PathBuf>,
}

/// The background retention worker of one log.
#[derive(Debug, Default)]
pub(crate) struct Background {
    state: Mutex<BackgroundState>,
}

#[derive(Debug, Default)]
struct BackgroundState {
    /// A worker thread is running a pass.
    running: bool,
    /// A purge arrived during the pass: run another one.
    again: bool,
    /// The store is gone: start nothing, stop between segments.
    closed: bool,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn lock(&self) -> MutexGuard<'_, BackgroundState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stops the worker: no pass starts any more, a running one stops after its current
    /// segment, and this returns once the thread has exited.
    pub(crate) fn close(&self) {
        let thread = {
            let mut st = self.lock();
            st.closed = true;
            st.thread.take()
        };
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("log retention thread panicked");
            }
        }
    }
}

impl Shared {
    /// Runs a retention pass on the worker thread (starting it if idle, else asking it for
    /// one more pass), off Raft's path: archiving may copy whole segments.
    pub fn retain_in_background(self: &Arc<Self>) {
        let mut st = self.background.lock();
        if st.closed {
            return;
        }
        if st.running {
            st.again = true;
            return;
        }
        if let Some(done) = st.thread.take() {
            // It cleared `running` as its last act: this returns at once.
            if done.join().is_err() {
                tracing::error!("log retention thread panicked");
            }
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("adclick-log-retention".into())
            .spawn(move || loop {
                if let Err(e) = shared.apply_retention(SystemTime::now()) {
                    tracing::error!(error = %e, "log retention failed; it is retried after the next purge");
                }
                let mut st = shared.background.lock();
                if st.again && !st.closed {
                    st.again = false;
                    continue;
                }
                st.running = false;
                st.again = false;
                break;
            });
        match spawned {
            Ok(t) => {
                st.running = true;
                st.thread = Some(t);
            }
            Err(e) => tracing::error!(error = %e, "cannot start the log retention thread"),
        }
    }

    /// Archives or deletes the segments the retention policy no longer keeps, judging age
    /// against `now`. On failure the segments not yet removed stay in the log, readable.
    pub fn apply_retention(&self, now: SystemTime) -> Result<RetentionOutcome> {
        let policy = self.config.retention;
        if policy.max_age.is_none() && policy.max_bytes.is_none() {
            return Ok(RetentionOutcome::default());
        }
        let now_ms = super::store::epoch_ms(now);
        let _pass = self
            .retention_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let victims: Vec<(u64, u64, PathBuf)> = {
            let inner = self.read()?;
            let Some(purged) = inner.purged.map(|p| p.index) else {
                return Ok(RetentionOutcome::default());
            };
            // Sizes come from the disk: a sum that overflows just means "too big".
            let mut total = inner
                .segments
                .iter()
                .fold(0u64, |t, s| t.saturating_add(s.len));
            let candidates = inner.segments.len() - 1;
            let mut victims = Vec::new();
            for seg in &inner.segments[..candidates] {
                let (Some(seal), Some(last)) = (seg.seal, seg.last_index()) else {
                    break;
                };
                if last > purged {
                    break;
                }
                let too_old = policy.max_age.is_some_and(|age| {
                    now_ms.saturating_sub(seal.sealed_at_ms) > age.as_millis() as u64
                });
                let too_big = policy.max_bytes.is_some_and(|max| total > max);
                if !(too_old || too_big) {
                    break;
                }
                total = total.saturating_sub(seg.len);
                victims.push((seg.first_index, last, seg.path.clone()));
            }
            victims
        };
        let Some(&(_, last_victim, _)) = victims.last() else {
            return Ok(RetentionOutcome::default());
        };
        // Before any file goes: the indexes it holds are then no raw gap, even after a
        // crash midway (a segment still on disk below the mark stays listed and readable).
        self.raise_raw_from(last_victim + 1)?;
        let mut out = RetentionOutcome::default();
        let fs = self.fs.as_ref();
        let mut failed = None;
        for (first, _, path) in &victims {
            if self.background.is_closed() {
                break;
            }
            let moved = match &self.config.archive_dir {
                Some(archive) => archive_one(fs, path, archive).map(|dest| {
                    out.archived.push(dest);
                }),
                None => fs
                    .remove_file(path)
                    .map(|()| out.deleted.push(path.clone()))
                    .map_err(|e| Error::io(format!("deleting {}", path.display()), e)),
            };
            if let Err(e) = moved {
                // Keep the segment while its file is (or may be) still in the log directory.
                if fs.exists(path).is_ok_and(|exists| !exists) {
                    self.forget_oldest(*first)?;
                }
                failed = Some(e);
                break;
            }
            self.forget_oldest(*first)?;
        }
        let synced = self.sync_retention_dirs(!(out.archived.is_empty() && out.deleted.is_empty()));
        if let Some(e) = failed {
            return Err(e);
        }
        synced?;
        tracing::info!(
            archived = out.archived.len(),
            deleted = out.deleted.len(),
            "log retention applied"
        );
        Ok(out)
    }

    /// Raises the raw low-water mark to `mark` (durably, in the meta file) unless it is
    /// already there.
    fn raise_raw_from(&self, mark: u64) -> Result<()> {
        let _m = self
            .meta_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (vote, purged) = {
            let inner = self.read()?;
            if inner.raw_from >= mark {
                return Ok(());
            }
            (inner.vote, inner.purged)
        };
        meta::write(
            self.fs.as_ref(),
            &self.config.dir,
            &Meta {
                vote,
                purged,
                raw_from: mark,
            },
        )?;
        self.write()?.raw_from = mark;
        Ok(())
    }

    /// Drops the oldest segment, which must start at `first`, from the in-memory list.
    fn forget_oldest(&self, first: u64) -> Result<()> {
        let mut inner = self.write()?;
        assert!(
            inner.segments.len() > 1 && inner.segments[0].first_index == first,
            "retention removed segment {first}, which is not the oldest"
        );
        inner.segments.remove(0);
        Ok(())
    }

    /// Fsyncs the archive and log directories after a pass that removed something.
    fn sync_retention_dirs(&self, removed: bool) -> Result<()> {
        if !removed {
            return Ok(());
        }
        let fs = self.fs.as_ref();
        let dirs = self.config.archive_dir.iter().chain([&self.config.dir]);
        for d in dirs {
            sync_dir(fs, d)?;
        }
        Ok(())
    }
}

/// Removes the archive copies a crash left half-made (`<segment name>.tmp`) in `archive`;
/// other files there are not the log's and stay. Called on open, under the log's lock.
pub(crate) fn remove_stale_archive_tmps(fs: &dyn FileSystem, archive: &Path) -> Result<()> {
    let names = fs
        .list_dir(archive)
        .map_err(|e| Error::io(format!("listing {}", archive.display()), e))?;
    for name in names {
        let is_ours = name
            .strip_suffix(TMP_SUFFIX)
            .and_then(super::format::parse_segment_file_name)
            .is_some();
        if is_ours {
            let p = archive.join(&name);
            tracing::info!(file = %p.display(), "removing an incomplete archive copy");
            fs.remove_file(&p)
                .map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
        }
    }
    Ok(())
}

/// Moves `path` into `archive`: a rename when both are on one file system, else a copy
/// (to a temporary name, fsynced, renamed) and a delete. A failed copy removes its
/// temporary file (best effort: open removes what is left).
fn archive_one(fs: &dyn FileSystem, path: &Path, archive: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!("segment path {} has no file name", path.display()))
    })?;
    let dest = archive.join(name);
    if fs.rename(path, &dest).is_ok() {
        return Ok(dest);
    }
    let mut tmp_name = name.to_os_string();
    tmp_name.push(TMP_SUFFIX);
    let tmp = archive.join(tmp_name);
    let copied = copy_to(fs, path, &tmp);
    if copied.is_err() && fs.exists(&tmp).unwrap_or(true) {
        if let Err(e) = fs.remove_file(&tmp) {
            tracing::warn!(file = %tmp.display(), error = %e, "cannot remove a failed archive copy");
        }
    }
    copied?;
    let ctx = |what: &str, p: &Path| format!("{what} {} while archiving", p.display());
    fs.rename(&tmp, &dest)
        .map_err(|e| Error::io(ctx("renaming", &tmp), e))?;
    fs.sync_dir(archive)
        .map_err(|e| Error::io(ctx("syncing", archive), e))?;
    fs.remove_file(path)
        .map_err(|e| Error::io(ctx("deleting", path), e))?;
    Ok(dest)
}

/// Copies `path` to the new file `tmp` and fsyncs it.
fn copy_to(fs: &dyn FileSystem, path: &Path, tmp: &Path) -> Result<()> {
    let ctx = |what: &str, p: &Path| format!("{what} {} while archiving", p.display());
    let src = fs
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io(ctx("opening", path), e))?;
    let len = src
        .size()
        .map_err(|e| Error::io(ctx("measuring", path), e))?;
    if fs
        .exists(tmp)
        .map_err(|e| Error::io(ctx("checking", tmp), e))?
    {
        fs.remove_file(tmp)
            .map_err(|e| Error::io(ctx("removing", tmp), e))?;
    }
    let dst = fs
        .open(tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io(ctx("creating", tmp), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        // Bounded by the buffer's length, so it fits in usize.
        let n = (buf.len() as u64).min(len - at) as usize;
        src.read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io(ctx("reading", path), e))?;
        dst.write_all_at(&buf[..n], at)
            .map_err(|e| Error::io(ctx("writing", tmp), e))?;
        at += n as u64;
    }
    dst.sync_data()
        .map_err(|e| Error::io(ctx("syncing", tmp), e))
}
