//! The log's core: the in-memory view of the segments ([`Inner`]) behind one lock, and
//! the operations on it — append, read, truncate, purge, committed, vote. Everything here
//! is synchronous; [`super::raft`] adapts it to openraft's async traits.
//!
//! Locking: `inner` is a read-write lock. Appends, truncation and rotation hold it for
//! writing (a positional write to the page cache; an fsync only when a segment is sealed or
//! cut, which is rare); replication reads hold it for reading while they copy the bytes of
//! a range, so a read never sees a half-applied truncation. Entries are encoded before the
//! lock is taken and decoded after it is released. `meta_lock` serializes the rewrites of
//! the meta file (vote, purged).
//!
//! Invariants (checked by `assert!` where only a bug could break them):
//! - `segments` is sorted by first index and non-empty; the last one is the segment being
//!   written, unsealed, with an open handle and an entry index.
//! - Entries Raft has not purged are contiguous, start right after `purged` (or anywhere on
//!   a log never purged), and live in segments with an entry index (`locs`).
//! - A gap between segments lies entirely at or below `purged` (a snapshot install; raw
//!   imports fill such gaps with sealed segments, always below the active one).

use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::IOFlushed;

use super::config::LogConfig;
use super::flusher::Flusher;
use super::format::{
    self, FrameHeader, Meta, Seal, FRAME_HEADER_LEN, RECORD_COMMITTED, RECORD_ENTRY, RECORD_SEAL,
};
use super::fs::{FileLock, FileSystem};
use super::meta;
use super::retention::Background;
use super::segment::{self, EntryLoc, Segment};
use crate::codec;
use crate::error::{Error, Result};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// State shared by the store, its readers and its raw readers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: LogConfig,
    pub fs: Arc<dyn FileSystem>,
    pub inner: RwLock<Inner>,
    pub meta_lock: Mutex<()>,
    pub flusher: Flusher,
    /// Serializes retention passes: a pass removes a prefix of `segments` one at a time.
    pub retention_lock: Mutex<()>,
    /// The background retention worker, joined by [`Self::close`].
    pub background: Background,
    /// The directory lock, held from open until [`Self::close`] releases it.
    pub dir_lock: Mutex<Option<Box<dyn FileLock>>>,
}

/// The in-memory view of the log directory.
#[derive(Debug)]
pub(crate) struct Inner {
    pub segments: Vec<Segment>,
    pub vote: Option<Vote>,
    pub purged: Option<LogId>,
    pub committed: Option<LogId>,
    /// The raw store's low-water mark (meta file): indexes below it were removed by
    /// retention and are not gaps.
    pub raw_from: u64,
}

impl Inner {
    /// The segment being written.
    pub fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has a segment being written")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has a segment being written")
    }

    pub(crate) fn purged_index(&self) -> Option<u64> {
        self.purged.map(|p| p.index)
    }

    /// Index of the last entry on disk, purged or not.
    pub fn last_stored_index(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(Segment::last_index)
    }

    /// Log id of the last entry Raft has not purged, if any.
    pub fn last_live(&self) -> Option<LogId> {
        let seg = self.segments.iter().rev().find(|s| s.entries > 0)?;
        let last = seg.last_index()?;
        if self.purged_index().is_some_and(|p| last <= p) {
            return None;
        }
        let id = seg.log_id(last);
        assert!(
            id.is_some(),
            "live segment {} has no entry index",
            seg.path.display()
        );
        id
    }

    /// Index of the first entry Raft has not purged, if any.
    pub fn first_live_index(&self) -> Option<u64> {
        let p = self.purged_index();
        let seg = self
            .segments
            .iter()
            .find(|s| s.last_index().is_some_and(|l| p.is_none_or(|p| l > p)))?;
        Some(p.map_or(seg.first_index, |p| seg.first_index.max(p + 1)))
    }

    /// What openraft calls the last log id: the last live entry, else the last purged.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.last_live().or(self.purged)
    }

    /// The purged indexes no segment holds, from the raw low-water mark up to and including
    /// the purged index, in order. Above the purged index the log has no gap.
    pub fn raw_gaps(&self) -> Vec<std::ops::Range<u64>> {
        let Some(purged) = self.purged_index() else {
            return Vec::new();
        };
        // `purged` is at most MAX_INDEX, so the end exists.
        let end = purged + 1;
        let mut gaps = Vec::new();
        let mut at = self.raw_from;
        for seg in &self.segments {
            let Some(last) = seg.last_index() else {
                continue;
            };
            if at >= end || seg.first_index >= end {
                break;
            }
            if seg.first_index > at {
                gaps.push(at..seg.first_index);
            }
            at = at.max(last + 1);
        }
        if at < end {
            gaps.push(at..end);
        }
        gaps
    }

    /// Position of the segment that holds `index`.
    pub fn find(&self, index: u64) -> Option<usize> {
        let pos = self
            .segments
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)?;
        let seg = &self.segments[pos];
        seg.last_index().is_some_and(|l| index <= l).then_some(pos)
    }
}

/// The bytes of a run of entries, copied under the read lock, decoded after it.
struct Span {
    path: std::path::PathBuf,
    offset: u64,
    bytes: Vec<u8>,
    first_index: u64,
    locs: Vec<EntryLoc>,
}

/// Milliseconds since the epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    epoch_ms(SystemTime::now())
}

/// Milliseconds from the epoch to `t` (0 before it, `u64::MAX` past what fits).
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn poisoned() -> Error {
    Error::io(
        "log state",
        std::io::Error::other("a thread panicked while updating the log; restart the node"),
    )
}

impl Shared {
    pub fn read(&self) -> Result<RwLockReadGuard<'_, Inner>> {
        self.inner.read().map_err(|_| poisoned())
    }

    pub fn write(&self) -> Result<RwLockWriteGuard<'_, Inner>> {
        self.inner.write().map_err(|_| poisoned())
    }

    pub(crate) fn check(&self) -> Result<()> {
        self.flusher.check().map_err(|e| Error::io("log", e))
    }

    /// Shuts the writing side down when the [`super::LogStore`] goes: joins the background
    /// retention worker (a pass in progress stops after the segment it is moving), waits
    /// until every append is durable, then releases the directory lock — so the directory
    /// can be reopened at once, even while readers of this log are still alive.
    pub fn close(&self) {
        self.background.close();
        if let Err(e) = self.flusher.wait_synced(self.flusher.last_written()) {
            tracing::warn!(error = %e, "closing a log whose last appends are not durable");
        }
        let lock = self
            .dir_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(lock);
        tracing::debug!(dir = %self.config.dir.display(), "log closed");
    }

    /// Disables the log after a failed write: the file's state is unknown until recovery.
    fn fail(&self, context: String, e: std::io::Error) -> Error {
        self.flusher.fail(&e);
        Error::io(context, e)
    }

    /// Appends `entries` (contiguous, continuing the log) and registers `callback` to fire
    /// once they are durable. Returns once they are written to the OS and readable.
    pub fn append(&self, entries: Vec<Entry>, callback: IOFlushed<TypeConfig>) -> Result<()> {
        let mut callback = Some(callback);
        let res = self.try_append(&entries, &mut callback);
        if let (Err(e), Some(cb)) = (&res, callback) {
            cb.io_completed(Err(std::io::Error::other(e.to_string())));
        }
        res
    }

    /// Writes the entries, then registers the callback (taking it) under the same lock, so
    /// sequence numbers follow write order.
    fn try_append(
        &self,
        entries: &[Entry],
        callback: &mut Option<IOFlushed<TypeConfig>>,
    ) -> Result<()> {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            self.flusher.written(callback.take());
            return Ok(());
        };
        let fits = (entries.len() as u64 - 1)
            .checked_add(first)
            .is_some_and(|last| last <= format::MAX_INDEX);
        if !fits {
            return Err(Error::InvalidArgument(format!(
                "append of {} entries from index {first} passes the largest index {}",
                entries.len(),
                format::MAX_INDEX
            )));
        }
        let mut buf = Vec::new();
        let mut rel = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            if e.log_id.index != first + i as u64 {
                return Err(Error::InvalidArgument(format!(
                    "append batch is not contiguous: index {} after {}",
                    e.log_id.index,
                    first + i as u64 - 1
                )));
            }
            let at = buf.len() as u64;
            let len = format::put_frame_with(&mut buf, RECORD_ENTRY, |b| codec::encode_entry(e, b))
                .map_err(|n| {
                    Error::InvalidArgument(format!(
                        "entry {} encodes to {n} bytes, over the record limit",
                        e.log_id
                    ))
                })?;
            rel.push((at, len, e.log_id.leader_id));
        }

        let mut inner = self.write()?;
        self.check()?;
        let last_live = inner.last_live();
        match last_live {
            Some(last) if first != last.index + 1 => {
                return Err(Error::InvalidArgument(format!(
                    "append at index {first} does not continue the log ending at {last}"
                )));
            }
            // Everything is purged: the log continues right after the purged entry (a gap
            // there would be a hole Raft cannot see and recovery refuses).
            None if inner.purged_index().is_some_and(|p| first != p + 1) => {
                return Err(Error::InvalidArgument(format!(
                    "append at index {first} does not follow the purged {:?}",
                    inner.purged
                )));
            }
            _ => {}
        }
        // Raft log ids never go back to an older leader; recovery relies on it.
        let mut prev = last_live.map(|l| l.leader_id);
        for e in entries {
            if prev.is_some_and(|p| e.log_id.leader_id < p) {
                return Err(Error::InvalidArgument(format!(
                    "entry {} comes from a leader older than the one before it",
                    e.log_id
                )));
            }
            prev = Some(e.log_id.leader_id);
        }
        let active = inner.active();
        let needs_new = match active.last_index() {
            None => first != active.first_index,
            Some(last) => {
                first != last + 1 || active.len + buf.len() as u64 > self.config.segment_size
            }
        };
        if needs_new {
            self.rotate(&mut inner, first)?;
        }
        let seg = inner.active_mut();
        let file = Arc::clone(seg.file.as_ref().expect("the active segment is open"));
        let base = seg.len;
        file.write_all_at(&buf, base)
            .map_err(|e| self.fail(format!("appending to {}", seg.path.display()), e))?;
        seg.len += buf.len() as u64;
        seg.entries += entries.len() as u64;
        let locs = seg
            .locs
            .as_mut()
            .expect("the active segment has an entry index");
        locs.extend(rel.into_iter().map(|(at, len, leader)| EntryLoc {
            offset: base + at,
            len: u32::try_from(len).expect("records are capped below 4 GiB"),
            leader,
        }));
        self.flusher.written(callback.take());
        Ok(())
    }

    /// Seals the active segment (or drops it if it holds no entry) and starts segment
    /// `first_index`. Fsyncs inline: this happens once per `segment_size` bytes.
    pub(crate) fn rotate(&self, inner: &mut Inner, first_index: u64) -> Result<()> {
        let committed = inner.committed;
        let purged = inner.purged_index();
        let dir = self.config.dir.clone();
        let seg = inner.active_mut();
        let file = Arc::clone(seg.file.as_ref().expect("the active segment is open"));
        if let Some(last_index) = seg.last_index() {
            let seal = Seal {
                last_index,
                sealed_at_ms: now_ms(),
                committed,
            };
            let mut rec = Vec::with_capacity(format::SEAL_RECORD_LEN);
            format::put_frame(&mut rec, RECORD_SEAL, &format::encode_seal(&seal));
            let ctx = |what: &str| format!("{what} {}", seg.path.display());
            file.write_all_at(&rec, seg.len)
                .map_err(|e| self.fail(ctx("sealing"), e))?;
            file.sync_data().map_err(|e| self.fail(ctx("syncing"), e))?;
            seg.len += rec.len() as u64;
            seg.seal = Some(seal);
            if purged.is_some_and(|p| last_index <= p) {
                seg.locs = None;
                seg.file = None;
            }
            // Every write so far is in this file or in one sealed (and fsynced) before it.
            self.flusher.synced_inline(self.flusher.last_written());
        } else {
            let path = seg.path.clone();
            self.fs
                .remove_file(&path)
                .map_err(|e| self.fail(format!("removing empty segment {}", path.display()), e))?;
            self.fs
                .sync_dir(&dir)
                .map_err(|e| self.fail(format!("syncing directory {}", dir.display()), e))?;
            inner.segments.pop();
        }
        let new = segment::create(self.fs.as_ref(), &dir, first_index, committed.as_ref())
            .inspect_err(|e| {
                self.flusher.fail(&std::io::Error::other(e.to_string()));
            })?;
        self.flusher.set_active(Arc::clone(
            new.file.as_ref().expect("a new segment is open"),
        ));
        tracing::debug!(segment = %new.path.display(), "log segment started");
        inner.segments.push(new);
        Ok(())
    }

    /// Reads the live entries with index in `[start, end)`, stopping early once more than
    /// `max_bytes` of records were read (but always returning at least one entry).
    pub fn read_entries(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<Entry>> {
        let spans = {
            let inner = self.read()?;
            let lo = start.max(inner.first_live_index().unwrap_or(u64::MAX));
            let hi = end.min(inner.last_live().map_or(0, |l| l.index + 1));
            let mut spans = Vec::new();
            let mut index = lo;
            let mut bytes = 0usize;
            while index < hi && (bytes < max_bytes || spans.is_empty()) {
                let pos = inner.find(index).ok_or_else(|| {
                    Error::corruption(&self.config.dir, 0, format!("log has no entry {index}"))
                })?;
                let seg = &inner.segments[pos];
                let locs = seg
                    .locs
                    .as_ref()
                    .expect("live segments have an entry index");
                let from = (index - seg.first_index) as usize;
                let mut to = from;
                while to < locs.len()
                    && seg.first_index + (to as u64) < hi
                    && (bytes < max_bytes || to == from)
                {
                    bytes = bytes.saturating_add(locs[to].len as usize);
                    to += 1;
                }
                let offset = locs[from].offset;
                let stop = locs[to - 1].offset + u64::from(locs[to - 1].len);
                let mut buf = vec![0u8; (stop - offset) as usize];
                let file = seg.file.as_ref().expect("live segments are open");
                file.read_exact_at(&mut buf, offset).map_err(|e| {
                    Error::io(format!("reading {} at {offset}", seg.path.display()), e)
                })?;
                spans.push(Span {
                    path: seg.path.clone(),
                    offset,
                    bytes: buf,
                    first_index: index,
                    locs: locs[from..to].to_vec(),
                });
                index = seg.first_index + to as u64;
            }
            spans
        };
        let mut out = Vec::new();
        for span in spans {
            for (i, loc) in span.locs.iter().enumerate() {
                let at = (loc.offset - span.offset) as usize;
                let rec = &span.bytes[at..at + loc.len as usize];
                let entry = decode_record(rec, &span.path, loc.offset)?;
                let want = LogId::new(loc.leader, span.first_index + i as u64);
                if entry.log_id != want {
                    return Err(Error::corruption(
                        &span.path,
                        loc.offset,
                        format!("record holds entry {}, index says {want}", entry.log_id),
                    ));
                }
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Removes every entry after `last` (all entries if `None`); durable on return.
    pub fn truncate_after(&self, last: Option<LogId>) -> Result<()> {
        let mut inner = self.write()?;
        self.check()?;
        let Some(from) = last.map_or(Some(0), |l| l.index.checked_add(1)) else {
            // Nothing can follow index u64::MAX.
            return Ok(());
        };
        if let Some(p) = inner.purged.filter(|p| from <= p.index) {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate after {last:?}: entries up to {p} are purged"
            )));
        }
        self.cut_from(&mut inner, from)?;
        tracing::info!(after = ?last, "log truncated");
        Ok(())
    }

    /// Removes every stored entry with index `from` or above, durably: later segments are
    /// deleted newest first, each removal made durable (directory fsync) before the next,
    /// so a crash — even on a file system that reorders unlinks — leaves a prefix of the
    /// segments, never a hole recovery would refuse; then the segment holding `from` is cut
    /// at its record and fsynced. The caller checked that nothing at or below the purged
    /// index is cut.
    fn cut_from(&self, inner: &mut Inner, from: u64) -> Result<()> {
        if inner.last_stored_index().is_none_or(|l| l < from) {
            return Ok(());
        }
        let k = inner
            .segments
            .iter()
            .position(|s| s.last_index().is_some_and(|l| l >= from))
            .expect("some segment holds the last stored index");
        let dir = self.config.dir.clone();
        let removed: Vec<Segment> = inner.segments.drain(k + 1..).collect();
        for s in removed.iter().rev() {
            self.fs
                .remove_file(&s.path)
                .map_err(|e| self.fail(format!("removing {}", s.path.display()), e))?;
            self.fs
                .sync_dir(&dir)
                .map_err(|e| self.fail(format!("syncing directory {}", dir.display()), e))?;
        }
        let committed = inner.committed;
        let seg = inner.active_mut();
        let keep = from.saturating_sub(seg.first_index) as usize;
        let locs = seg
            .locs
            .as_mut()
            .expect("segments with unpurged entries have an entry index");
        let cut = locs[keep].offset;
        locs.truncate(keep);
        let file = Arc::clone(seg.file.as_ref().expect("live segments are open"));
        let ctx = |what: &str| format!("{what} {}", seg.path.display());
        file.set_len(cut)
            .map_err(|e| self.fail(ctx("truncating"), e))?;
        // The cut may have dropped the newest committed record: write it again.
        let mut rec = Vec::new();
        format::put_frame(
            &mut rec,
            RECORD_COMMITTED,
            &format::encode_committed(committed.as_ref()),
        );
        file.write_all_at(&rec, cut)
            .map_err(|e| self.fail(ctx("writing"), e))?;
        file.sync_data().map_err(|e| self.fail(ctx("syncing"), e))?;
        seg.len = cut + rec.len() as u64;
        seg.entries = keep as u64;
        seg.seal = None;
        tracing::debug!(from, segment = %seg.path.display(), "log segment cut");
        self.flusher.set_active(file);
        self.flusher.synced_inline(self.flusher.last_written());
        Ok(())
    }

    /// Stops serving entries up to `id` to Raft (they stay on disk, retained); durable on
    /// return. Retention is the caller's next step ([`Self::apply_retention`]).
    ///
    /// Purged entries become raw-readable as committed, so only entries known to be
    /// committed may stay below the purged index. When the log does not hold `id` itself (a
    /// snapshot from a leader this log lags or diverges from; openraft then purges without
    /// truncating), the stored entries after the last known committed one may come from a
    /// deposed leader: they are cut first, leaving a gap the snapshot covers.
    pub fn purge(&self, id: LogId) -> Result<()> {
        check_index(&id, "purge")?;
        self.check()?;
        {
            let _m = self
                .meta_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let (vote, raw_from) = {
                let mut inner = self.write()?;
                if inner.purged.is_some_and(|p| p.index >= id.index) {
                    return Ok(());
                }
                if let Some(from) = unverified_from(&inner, &id) {
                    tracing::info!(
                        purge = %id,
                        from,
                        "cutting entries not known committed before a purge past them"
                    );
                    self.cut_from(&mut inner, from)?;
                }
                (inner.vote, inner.raw_from)
            };
            meta::write(
                self.fs.as_ref(),
                &self.config.dir,
                &Meta {
                    vote,
                    purged: Some(id),
                    raw_from,
                },
            )?;
            let mut inner = self.write()?;
            inner.purged = Some(id);
            let n = inner.segments.len();
            for seg in &mut inner.segments[..n - 1] {
                if seg.last_index().is_some_and(|l| l <= id.index) {
                    seg.locs = None;
                    seg.file = None;
                }
            }
        }
        Ok(())
    }

    /// Saves the vote, durably, after every earlier append is durable (Raft's write order).
    pub fn save_vote(&self, vote: Vote) -> Result<()> {
        self.flusher
            .wait_synced(self.flusher.last_written())
            .map_err(|e| Error::io("log", e))?;
        let _m = self
            .meta_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (purged, raw_from) = {
            let inner = self.read()?;
            (inner.purged, inner.raw_from)
        };
        meta::write(
            self.fs.as_ref(),
            &self.config.dir,
            &Meta {
                vote: Some(vote),
                purged,
                raw_from,
            },
        )?;
        self.write()?.vote = Some(vote);
        Ok(())
    }

    /// Records the committed log id in the active segment; durable with the next group
    /// commit (losing the newest one in a crash is harmless: Raft re-learns it).
    pub fn save_committed(&self, committed: Option<LogId>) -> Result<()> {
        if let Some(c) = &committed {
            check_index(c, "committed log id")?;
        }
        let mut inner = self.write()?;
        if inner.committed == committed {
            return Ok(());
        }
        self.check()?;
        inner.committed = committed;
        let mut rec = Vec::new();
        format::put_frame(
            &mut rec,
            RECORD_COMMITTED,
            &format::encode_committed(committed.as_ref()),
        );
        let seg = inner.active_mut();
        let file = Arc::clone(seg.file.as_ref().expect("the active segment is open"));
        file.write_all_at(&rec, seg.len)
            .map_err(|e| self.fail(format!("appending to {}", seg.path.display()), e))?;
        seg.len += rec.len() as u64;
        self.flusher.written(None);
        Ok(())
    }
}

/// Refuses a log id from Raft past [`format::MAX_INDEX`]: recovery would refuse it on disk.
fn check_index(id: &LogId, what: &str) -> Result<()> {
    if id.index > format::MAX_INDEX {
        return Err(Error::InvalidArgument(format!(
            "{what} {id} passes the largest index {}",
            format::MAX_INDEX
        )));
    }
    Ok(())
}

/// Where to cut before purging up to `id`, if anything must go. The stored entries after
/// the last one known committed (the committed or purged one) and up to `id` become
/// raw-readable as committed; they are vouched for only when the log holds `id` itself (by
/// Raft's log matching every entry up to it is then the leader's). Otherwise they may be a
/// deposed leader's, and everything from the first of them on is cut (entries after `id`
/// that follow a mismatch conflict with the leader too).
fn unverified_from(inner: &Inner, id: &LogId) -> Option<u64> {
    let known = inner.committed.max(inner.purged).map(|c| c.index);
    let from = known.map_or(0, |k| k + 1);
    let lo = from.max(inner.first_live_index()?);
    let hi = id.index.min(inner.last_live()?.index);
    if lo > hi {
        // No stored entry would change status.
        return None;
    }
    let held = inner
        .find(id.index)
        .and_then(|pos| inner.segments[pos].log_id(id.index));
    (held != Some(*id)).then_some(from)
}

/// Decodes one entry record (frame header and payload) read from `path` at `offset`.
pub(crate) fn decode_record(rec: &[u8], path: &std::path::Path, offset: u64) -> Result<Entry> {
    if rec.len() < FRAME_HEADER_LEN {
        return Err(Error::corruption(path, offset, "short record"));
    }
    let h = FrameHeader::parse(rec);
    if h.record_type != RECORD_ENTRY || !h.checksum_ok(rec) {
        return Err(Error::corruption(
            path,
            offset,
            "entry record checksum mismatch",
        ));
    }
    codec::decode_entry(&rec[FRAME_HEADER_LEN..])
        .map_err(|e| e.into_corruption(path, offset + FRAME_HEADER_LEN as u64))
}
