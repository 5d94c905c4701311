//! The raw-click view of the log: iterate committed entries by index, including those Raft
//! has purged but retention still keeps, and list the segment files with their ranges (to
//! ship missing segments to a peer, to replay, to reconcile).
//!
//! A raw read serves only committed entries (index at most the committed or purged one,
//! whichever is higher): their bytes can never be truncated, so a raw iterator can read
//! them without holding the log's lock. It snapshots the segment list when created; a
//! segment removed by retention afterwards makes it fail with an I/O error rather than
//! skip entries. Indexes the log never stored (the gap a snapshot install leaves, until a
//! raw import fills it) are skipped: entries come out in increasing index order, not
//! necessarily contiguous; [`RawReader::raw_gaps`] lists the missing ranges.

use std::collections::VecDeque;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::format::{MAX_INDEX, RECORD_COMMITTED, RECORD_ENTRY, RECORD_SEAL, SEGMENT_HEADER_LEN};
use super::fs::{FileSystem, LogFile, OpenMode};
use super::segment::{self, PosReader};
use super::store::Shared;
use crate::codec;
use crate::error::{Error, Result};
use crate::types::Entry;

/// A segment file and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// Index of its first entry (also in its name).
    pub first_index: u64,
    /// Index of its last entry; `None` if it holds none yet.
    pub last_index: Option<u64>,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was sealed; `None` for the segment being written (or a seal time past what
    /// `SystemTime` can hold).
    pub sealed_at: Option<SystemTime>,
    /// Whether Raft purged all its entries (it is kept only as raw-click store).
    pub purged: bool,
}

/// Reads retained entries for the raw-click store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RawReader {
    pub(crate) shared: Arc<Shared>,
}

impl RawReader {
    /// Every segment file of the log, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        let inner = self.shared.read()?;
        let purged = inner.purged.map(|p| p.index);
        Ok(inner
            .segments
            .iter()
            .map(|s| SegmentInfo {
                path: s.path.clone(),
                first_index: s.first_index,
                last_index: s.last_index(),
                bytes: s.len,
                sealed_at: s.seal.and_then(|seal| {
                    UNIX_EPOCH.checked_add(Duration::from_millis(seal.sealed_at_ms))
                }),
                purged: s
                    .last_index()
                    .is_some_and(|l| purged.is_some_and(|p| l <= p)),
            })
            .collect())
    }

    /// The committed-and-purged indexes no local segment holds; see
    /// [`super::LogStore::raw_gaps`].
    pub fn raw_gaps(&self) -> Result<Vec<std::ops::Range<u64>>> {
        self.shared.raw_gaps()
    }

    /// The committed entries stored with index in `range`, in index order, purged or not.
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Result<RawEntries> {
        let (lo, hi) = super::raft::bounds(&range);
        let inner = self.shared.read()?;
        let readable = inner.committed.max(inner.purged).map_or(0, |c| c.index + 1);
        let stored = inner.last_stored_index().map_or(0, |l| l + 1);
        let hi = hi.min(readable).min(stored);
        let mut segs = VecDeque::new();
        for s in &inner.segments {
            let Some(last) = s.last_index() else { continue };
            if last < lo || s.first_index >= hi {
                continue;
            }
            // Start at the first wanted entry when it is indexed; stop after the last one
            // wanted, so a later truncation of uncommitted entries cannot move bytes we read.
            let start = s
                .loc(lo.max(s.first_index))
                .map(|l| (l.offset, lo.max(s.first_index)));
            let end = s.loc(hi - 1).map_or(s.len, |l| l.offset + u64::from(l.len));
            segs.push_back(SegSnap {
                path: s.path.clone(),
                first_index: s.first_index,
                end,
                file: s.file.clone(),
                start,
            });
        }
        Ok(RawEntries {
            fs: Arc::clone(&self.shared.fs),
            segs,
            cur: None,
            next: lo,
            hi,
            done: false,
        })
    }
}

#[derive(Debug)]
struct SegSnap {
    path: PathBuf,
    first_index: u64,
    end: u64,
    file: Option<Arc<dyn LogFile>>,
    /// Offset and index of the first wanted entry, when the segment is indexed.
    start: Option<(u64, u64)>,
}

struct Cursor {
    reader: PosReader,
    path: PathBuf,
    offset: u64,
    /// Index the next entry record of this segment must carry.
    expected: u64,
}

/// Iterator over raw entries; see [`RawReader::entries`]. Stops after the first error.
pub struct RawEntries {
    fs: Arc<dyn FileSystem>,
    segs: VecDeque<SegSnap>,
    cur: Option<Cursor>,
    next: u64,
    hi: u64,
    done: bool,
}

impl std::fmt::Debug for RawEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEntries")
            .field("next", &self.next)
            .field("hi", &self.hi)
            .field("segments_left", &self.segs.len())
            .finish()
    }
}

impl RawEntries {
    fn open(&self, snap: SegSnap) -> Result<Cursor> {
        let file = match snap.file {
            Some(f) => f,
            None => {
                let f = self.fs.open(&snap.path, OpenMode::Read).map_err(|e| {
                    Error::io(
                        format!("opening retained segment {}", snap.path.display()),
                        e,
                    )
                })?;
                segment::read_header(f.as_ref(), &snap.path, snap.first_index)?;
                f
            }
        };
        let (offset, expected) = snap
            .start
            .unwrap_or((SEGMENT_HEADER_LEN as u64, snap.first_index));
        Ok(Cursor {
            path: snap.path.clone(),
            reader: PosReader::new(file, snap.path, snap.end),
            offset,
            expected,
        })
    }

    fn step(&mut self) -> Result<Option<Entry>> {
        loop {
            if self.next >= self.hi {
                return Ok(None);
            }
            let Some(cur) = self.cur.as_mut() else {
                let Some(snap) = self.segs.pop_front() else {
                    return Ok(None);
                };
                self.next = self.next.max(snap.first_index);
                self.cur = Some(self.open(snap)?);
                continue;
            };
            let at = cur.offset;
            if at >= cur.reader.end() {
                self.cur = None;
                continue;
            }
            let Some((h, payload)) = cur.reader.record(at)? else {
                return Err(Error::corruption(
                    &cur.path,
                    at,
                    "bad record in a retained segment",
                ));
            };
            cur.offset += h.record_len() as u64;
            match h.record_type {
                RECORD_ENTRY => {
                    let path = &cur.path;
                    let id =
                        codec::decode_log_id(payload).map_err(|e| e.into_corruption(path, at))?;
                    // Retained segments are read here for the first time: their indexes are
                    // unchecked bytes, so the one after this entry must be shown to exist.
                    if id.index != cur.expected || id.index > MAX_INDEX {
                        return Err(Error::corruption(
                            path,
                            at,
                            format!(
                                "entry has index {}, expected {} (at most {MAX_INDEX})",
                                id.index, cur.expected
                            ),
                        ));
                    }
                    let after = id.index + 1;
                    cur.expected = after;
                    if id.index < self.next {
                        continue;
                    }
                    let entry =
                        codec::decode_entry(payload).map_err(|e| e.into_corruption(path, at))?;
                    self.next = after;
                    return Ok(Some(entry));
                }
                RECORD_SEAL => self.cur = None,
                RECORD_COMMITTED => {}
                t => unreachable!("record() admits only known record types, got {t}"),
            }
        }
    }
}

impl Iterator for RawEntries {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step().transpose();
        if matches!(r, Some(Err(_)) | None) {
            self.done = true;
        }
        r
    }
}
