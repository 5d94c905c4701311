//! Retention of the raw-click store: segments whose entries Raft has all purged stay in
//! the log directory (raw reads still serve them) until the [`RetentionPolicy`] lets them
//! go; then they are moved to the archive directory, or deleted when there is none.
//!
//! Only a prefix of the segments is ever removed (oldest first, stopping at the first one
//! that must stay), so the retained range stays contiguous. The segment being written and
//! any segment holding an unpurged entry are never candidates.
//!
//! [`RetentionPolicy`]: super::config::RetentionPolicy

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::format::TMP_SUFFIX;
use super::fs::{FileSystem, OpenMode};
use super::segment::Segment;
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

impl Shared {
    /// Archives or deletes the segments the retention policy no longer keeps, judging age
    /// against `now`.
    pub fn apply_retention(&self, now: SystemTime) -> Result<RetentionOutcome> {
        let policy = self.config.retention;
        if policy.max_age.is_none() && policy.max_bytes.is_none() {
            return Ok(RetentionOutcome::default());
        }
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let victims: Vec<Segment> = {
            let mut inner = self.write()?;
            let Some(purged) = inner.purged.map(|p| p.index) else {
                return Ok(RetentionOutcome::default());
            };
            let mut total: u64 = inner.segments.iter().map(|s| s.len).sum();
            let candidates = inner.segments.len() - 1;
            let mut n = 0;
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
                total -= seg.len;
                n += 1;
            }
            inner.segments.drain(..n).collect()
        };
        if victims.is_empty() {
            return Ok(RetentionOutcome::default());
        }
        let mut out = RetentionOutcome::default();
        let fs = self.fs.as_ref();
        for seg in &victims {
            match &self.config.archive_dir {
                Some(archive) => out.archived.push(archive_one(fs, &seg.path, archive)?),
                None => {
                    fs.remove_file(&seg.path)
                        .map_err(|e| Error::io(format!("deleting {}", seg.path.display()), e))?;
                    out.deleted.push(seg.path.clone());
                }
            }
        }
        if let Some(archive) = &self.config.archive_dir {
            fs.sync_dir(archive)
                .map_err(|e| Error::io(format!("syncing directory {}", archive.display()), e))?;
        }
        fs.sync_dir(&self.config.dir).map_err(|e| {
            Error::io(
                format!("syncing directory {}", self.config.dir.display()),
                e,
            )
        })?;
        tracing::info!(
            archived = out.archived.len(),
            deleted = out.deleted.len(),
            "log retention applied"
        );
        Ok(out)
    }
}

/// Moves `path` into `archive`: a rename when both are on one file system, else a copy
/// (to a temporary name, fsynced, renamed) and a delete.
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
    let ctx = |what: &str, p: &Path| format!("{what} {} while archiving", p.display());
    let src = fs
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io(ctx("opening", path), e))?;
    let len = src
        .size()
        .map_err(|e| Error::io(ctx("measuring", path), e))?;
    if fs
        .exists(&tmp)
        .map_err(|e| Error::io(ctx("checking", &tmp), e))?
    {
        fs.remove_file(&tmp)
            .map_err(|e| Error::io(ctx("removing", &tmp), e))?;
    }
    let dst = fs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io(ctx("creating", &tmp), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        src.read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io(ctx("reading", path), e))?;
        dst.write_all_at(&buf[..n], at)
            .map_err(|e| Error::io(ctx("writing", &tmp), e))?;
        at += n as u64;
    }
    dst.sync_data()
        .map_err(|e| Error::io(ctx("syncing", &tmp), e))?;
    fs.rename(&tmp, &dest)
        .map_err(|e| Error::io(ctx("renaming", &tmp), e))?;
    fs.sync_dir(archive)
        .map_err(|e| Error::io(ctx("syncing", archive), e))?;
    fs.remove_file(path)
        .map_err(|e| Error::io(ctx("deleting", path), e))?;
    Ok(dest)
}
