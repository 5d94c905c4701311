//! Opening a log directory: rebuild the in-memory view from the files, repair a torn tail,
//! and refuse anything else that is damaged.
//!
//! 1. Create the directory if missing (fsyncing the parents of what was created), take
//!    the directory lock (`LOCK`: one open log per directory), remove `*.tmp` files
//!    (creations that never completed, here and in the archive), read the meta file.
//! 2. Scan the newest segment record by record. Bad bytes at its end with no valid record
//!    after them are a torn write: the file is cut back to its last whole record. A bad
//!    record followed by a valid one is corruption (unless [`RecoveryMode::TruncateTail`]).
//! 3. For each older segment, read the seal at its end. A segment whose entries Raft has
//!    all purged is retained as is (its range comes from the seal; its records are checked
//!    when raw-read); any other is scanned in full and must be whole.
//! 4. Check continuity: no overlap between segments, no gap above the purged index, and
//!    the first unpurged entry right after the purged one. Gaps below the purged index (a
//!    snapshot install) are allowed, and so are the sealed segments a raw import wrote
//!    into them: they are ordinary purged segments, retained like any other.
//!
//! Any failure names the file and the offset ([`crate::Error::Corruption`]): recovery
//! never drops data it cannot prove was unacknowledged.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use super::config::{LogConfig, RecoveryMode};
use super::flusher::Flusher;
use super::format::{self, TMP_SUFFIX};
use super::fs::{sync_dir, FileLock, FileSystem, OpenMode};
use super::meta;
use super::retention::{self, Background};
use super::segment::{self, ScanKind, Segment};
use super::store::{Inner, Shared};
use crate::error::{Error, Result};
use crate::types::LogId;

/// Opens (creating if needed) the log in `config.dir`.
pub(crate) fn open(config: LogConfig, fs: Arc<dyn FileSystem>) -> Result<Shared> {
    let dir = config.dir.clone();
    let fsr = fs.as_ref();
    create_dir_durably(fsr, &dir)?;
    // Before anything in the directory changes: a second open must not touch it.
    let dir_lock = lock_dir(fsr, &dir)?;
    if let Some(a) = &config.archive_dir {
        create_dir_durably(fsr, a)?;
        retention::remove_stale_archive_tmps(fsr, a)?;
    }
    let names = fsr
        .list_dir(&dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut firsts = Vec::new();
    for name in &names {
        if name.ends_with(TMP_SUFFIX) {
            let p = dir.join(name);
            tracing::info!(file = %p.display(), "removing an incomplete file");
            fsr.remove_file(&p)
                .map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
        } else if let Some(first) = format::parse_segment_file_name(name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let meta = meta::read(fsr, &dir)?;
    let purged = meta.purged.map(|p| p.index);

    let mut segments = Vec::with_capacity(firsts.len());
    let mut committed: Option<Option<LogId>> = None;
    for (pos, &first) in firsts.iter().enumerate().rev() {
        let is_last = pos + 1 == firsts.len();
        let seg = open_segment(
            fsr,
            &dir,
            first,
            is_last,
            purged,
            config.recovery,
            &mut committed,
        )?;
        segments.push(seg);
    }
    segments.reverse();
    check_continuity(&segments, meta.purged)?;

    let needs_new = segments.last().is_none_or(|s| s.seal.is_some());
    let committed = committed.flatten();
    if needs_new {
        // Stored and purged indexes are at most MAX_INDEX (checked above and when decoding
        // the meta file), so the next one exists.
        // The next entry follows both the last stored one and the purged one (a sealed
        // segment may end below the purged index after a snapshot install).
        let last_stored = segments.iter().rev().find_map(Segment::last_index);
        let first = last_stored
            .max(purged)
            .map_or(Some(0), |l| l.checked_add(1))
            .ok_or_else(|| Error::corruption(&dir, 0, "no index is left after the log"))?;
        segments.push(segment::create(fsr, &dir, first, committed.as_ref())?);
    }
    // Only the segment being written keeps its handle and index once fully purged.
    let n = segments.len();
    for seg in &mut segments[..n - 1] {
        if seg
            .last_index()
            .is_some_and(|l| purged.is_some_and(|p| l <= p))
        {
            seg.locs = None;
            seg.file = None;
        }
    }
    let active = segments
        .last()
        .and_then(|s| s.file.clone())
        .expect("the segment being written is open");
    let flusher = Flusher::start(active).map_err(|e| Error::io("starting the log flusher", e))?;
    #[cfg(feature = "fault-injection")]
    if config.fault_skip_fsync {
        tracing::warn!(dir = %dir.display(), "FAULT INJECTION: this log's group commit skips fsync");
        flusher.skip_fsync(true);
    }
    let inner = Inner {
        segments,
        vote: meta.vote,
        purged: meta.purged,
        committed,
        raw_from: meta.raw_from,
    };
    tracing::info!(
        dir = %dir.display(),
        segments = inner.segments.len(),
        purged = ?inner.purged,
        last = ?inner.last_log_id(),
        "log opened"
    );
    Ok(Shared {
        config,
        fs,
        inner: RwLock::new(inner),
        meta_lock: Mutex::new(()),
        flusher,
        retention_lock: Mutex::new(()),
        background: Background::default(),
        dir_lock: Mutex::new(Some(dir_lock)),
    })
}

/// Takes the exclusive lock of the log directory `dir`, held until the store closes.
fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Box<dyn FileLock>> {
    let path = dir.join(format::LOCK_FILE);
    fs.try_lock_file(&path).map_err(|e| {
        let context = if e.kind() == std::io::ErrorKind::WouldBlock {
            format!(
                "log directory {} is in use: another process, or another LogStore in this \
                 one, has it open (it holds {})",
                dir.display(),
                path.display()
            )
        } else {
            format!(
                "locking log directory {} ({})",
                dir.display(),
                path.display()
            )
        };
        Error::io(context, e)
    })
}

/// Creates `dir` and any missing parent, and fsyncs the parent of each directory it
/// created: until then a crash can lose the new directory with everything in it, even
/// files that were fsynced.
fn create_dir_durably(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let exists = |d: &Path| {
        fs.exists(d)
            .map_err(|e| Error::io(format!("checking {}", d.display()), e))
    };
    let mut created = Vec::new();
    let mut d = dir;
    while !exists(d)? {
        created.push(d);
        match parent_of(d) {
            Some(p) => d = p,
            None => break,
        }
    }
    if created.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    for d in created.iter().rev() {
        let Some(parent) = parent_of(d) else { continue };
        sync_dir(fs, parent)?;
    }
    Ok(())
}

/// The directory holding `d`; the parent of a relative path's first component is ""
/// (the working directory), returned as ".".
fn parent_of(d: &Path) -> Option<&Path> {
    match d.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(Path::new(".")),
        p => p,
    }
}

/// Opens and checks one segment. Segments are visited newest first; `committed` takes the
/// newest committed log id found.
fn open_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    first: u64,
    is_last: bool,
    purged: Option<u64>,
    mode: RecoveryMode,
    committed: &mut Option<Option<LogId>>,
) -> Result<Segment> {
    let path = dir.join(format::segment_file_name(first));
    let file = fs
        .open(&path, OpenMode::ReadWrite)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = file
        .size()
        .map_err(|e| Error::io(format!("measuring {}", path.display()), e))?;
    segment::read_header(file.as_ref(), &path, first)?;
    if !is_last {
        if let Some(seal) = segment::read_seal(file.as_ref(), &path, len)? {
            // `decode_seal` caps the last index at MAX_INDEX, so the count cannot overflow.
            let Some(entries) = seal
                .last_index
                .checked_sub(first)
                .and_then(|n| n.checked_add(1))
            else {
                return Err(Error::corruption(
                    &path,
                    len - format::SEAL_RECORD_LEN as u64,
                    format!(
                        "seal says last index {} below first index {first}",
                        seal.last_index
                    ),
                ));
            };
            if purged.is_some_and(|p| seal.last_index <= p) {
                committed.get_or_insert(seal.committed);
                return Ok(Segment {
                    path,
                    first_index: first,
                    entries,
                    len,
                    seal: Some(seal),
                    file: None,
                    locs: None,
                });
            }
        }
    }
    let kind = if is_last {
        ScanKind::Last(mode)
    } else {
        ScanKind::Sealed
    };
    let scan = segment::scan(&file, &path, first, len, kind)?;
    if let Some((at, reason)) = &scan.torn {
        tracing::warn!(
            file = %path.display(),
            offset = at,
            dropped_bytes = len - at,
            reason = %reason,
            "cutting a torn tail off the last log segment"
        );
        file.set_len(scan.valid_len)
            .map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
        file.sync_data()
            .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
    }
    if let Some(c) = scan.committed {
        committed.get_or_insert(c);
    }
    Ok(Segment {
        path,
        first_index: first,
        entries: scan.locs.len() as u64,
        len: scan.valid_len,
        seal: scan.seal,
        file: Some(file),
        locs: Some(scan.locs),
    })
}

fn check_continuity(segments: &[Segment], purged: Option<LogId>) -> Result<()> {
    let p = purged.map(|p| p.index);
    let mut prev: Option<(u64, &Segment)> = None;
    for seg in segments {
        if seg.entries == 0 {
            continue;
        }
        if let Some((last, before)) = prev {
            if seg.first_index <= last {
                return Err(Error::corruption(
                    &seg.path,
                    0,
                    format!(
                        "starts at index {}, but {} ends at {last}",
                        seg.first_index,
                        before.path.display()
                    ),
                ));
            }
            // `first_index > last` here, so the difference is the distance.
            if seg.first_index - last > 1 && p.is_none_or(|p| last > p) {
                return Err(Error::corruption(
                    &seg.path,
                    0,
                    format!(
                        "entries {}..{} are missing after {} (purged up to {p:?})",
                        last.saturating_add(1),
                        seg.first_index,
                        before.path.display()
                    ),
                ));
            }
        }
        prev = seg.last_index().map(|l| (l, seg));
    }
    // The first unpurged entry must follow the purged one directly.
    if let Some(p) = p {
        if let Some(seg) = segments
            .iter()
            .find(|s| s.last_index().is_some_and(|l| l > p))
        {
            if seg.first_index.saturating_sub(p) > 1 {
                return Err(Error::corruption(
                    &seg.path,
                    0,
                    format!(
                        "entries {}..{} are missing after the purged index {p}",
                        p.saturating_add(1),
                        seg.first_index
                    ),
                ));
            }
        }
    }
    Ok(())
}
