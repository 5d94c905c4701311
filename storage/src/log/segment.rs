//! One segment file: its in-memory description ([`Segment`]), its creation, and the scan
//! that checks its records and indexes its entries on open.
//!
//! A segment holds the entries `first_index ..= first_index + entries - 1`, contiguous, in
//! order. It starts with a header and a committed record (written to a temporary name,
//! fsynced and renamed, so a segment file with its final name always has both). Only the
//! newest segment is written; when it is full it gets a fixed-size seal record as its last
//! record, so recovery can learn an old segment's range from its last bytes alone.
//!
//! Live segments (holding an entry Raft has not purged) keep a per-entry index
//! ([`EntryLoc`]: offset, length, leader) so replication reads are one positional read.
//! Retained segments (purged by Raft, kept as the raw-click store) keep only their range.
//!
//! The scan of the newest segment tells a torn tail from damage by looking for a valid
//! record after the first bad one; that search is linear in the bytes after it and has a
//! checksum budget (see [`PosReader::find_following_record`]). Indexes read from a file are
//! checked against [`format::MAX_INDEX`] before any arithmetic on them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::impls::leader_id_adv::LeaderId;

use super::config::RecoveryMode;
use super::format::{
    self, FrameHeader, Seal, FRAME_HEADER_LEN, RECORD_COMMITTED, RECORD_ENTRY, RECORD_SEAL,
    SEAL_RECORD_LEN, SEGMENT_HEADER_LEN,
};
use super::fs::{create_atomically, FileSystem, LogFile};
use crate::codec;
use crate::error::{Error, Result};
use crate::types::LogId;

/// Where one entry's record lies in its segment, and whose log id it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    /// Offset of the record (frame header) in the file.
    pub offset: u64,
    /// Length of the record, frame header included.
    pub len: u32,
    /// The entry's leader id (its index follows from its position).
    pub leader: LeaderId<u64, u64>,
}

/// A segment as the log knows it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub path: PathBuf,
    pub first_index: u64,
    /// Number of entries. `first_index + entries - 1` (the last index) is at most
    /// [`format::MAX_INDEX`]: recovery checks it, appends refuse indexes past it.
    pub entries: u64,
    /// Bytes of valid data: the end of the last record.
    pub len: u64,
    /// The seal, for a sealed segment.
    pub seal: Option<Seal>,
    /// Open handle; `None` for retained segments (opened on demand by raw reads).
    pub file: Option<Arc<dyn LogFile>>,
    /// Per-entry index; `Some` exactly when the segment is live.
    pub locs: Option<Vec<EntryLoc>>,
}

impl Segment {
    /// Index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        (self.entries > 0).then(|| self.first_index + self.entries - 1)
    }

    /// Log id of the entry at `index`, for a live segment holding it.
    pub fn log_id(&self, index: u64) -> Option<LogId> {
        self.loc(index).map(|loc| LogId::new(loc.leader, index))
    }

    /// Location of the entry at `index`, for a live segment holding it.
    pub fn loc(&self, index: u64) -> Option<EntryLoc> {
        let i = usize::try_from(index.checked_sub(self.first_index)?).ok()?;
        self.locs.as_ref()?.get(i).copied()
    }
}

/// Creates segment `first_index` in `dir` atomically: header and committed record go to a
/// temporary file, which is fsynced and renamed; the directory is fsynced. Returns the
/// segment, open for writing, with `locs` empty.
pub(crate) fn create(
    fs: &dyn FileSystem,
    dir: &Path,
    first_index: u64,
    committed: Option<&LogId>,
) -> Result<Segment> {
    let name = format::segment_file_name(first_index);
    let mut buf =
        Vec::with_capacity(SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + format::COMMITTED_PAYLOAD_LEN);
    buf.extend_from_slice(&format::encode_segment_header(first_index));
    format::put_frame(
        &mut buf,
        RECORD_COMMITTED,
        &format::encode_committed(committed),
    );
    let file = create_atomically(fs, dir, &name, &buf)?;
    Ok(Segment {
        path: dir.join(name),
        first_index,
        entries: 0,
        len: buf.len() as u64,
        seal: None,
        file: Some(file),
        locs: Some(Vec::new()),
    })
}

/// Reads a segment header and checks it names `first_index`.
pub(crate) fn read_header(file: &dyn LogFile, path: &Path, first_index: u64) -> Result<()> {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    file.read_exact_at(&mut h, 0).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            Error::corruption(path, 0, "segment shorter than its header")
        }
        _ => Error::io(format!("reading header of {}", path.display()), e),
    })?;
    let first = format::decode_segment_header(&h).map_err(|r| Error::corruption(path, 0, r))?;
    if first != first_index {
        return Err(Error::corruption(
            path,
            0,
            format!("header says first index {first}, file name says {first_index}"),
        ));
    }
    Ok(())
}

/// Reads the seal at the end of a sealed segment of `file_len` bytes; `None` if the last
/// bytes are not a valid seal record (the caller then scans the file to find out why).
pub(crate) fn read_seal(file: &dyn LogFile, path: &Path, file_len: u64) -> Result<Option<Seal>> {
    let rec_len = SEAL_RECORD_LEN as u64;
    if file_len < SEGMENT_HEADER_LEN as u64 + rec_len {
        return Ok(None);
    }
    let mut b = [0u8; SEAL_RECORD_LEN];
    file.read_exact_at(&mut b, file_len - rec_len)
        .map_err(|e| Error::io(format!("reading seal of {}", path.display()), e))?;
    let h = FrameHeader::parse(&b);
    if h.record_type != RECORD_SEAL || h.len != format::SEAL_PAYLOAD_LEN || !h.checksum_ok(&b) {
        return Ok(None);
    }
    Ok(format::decode_seal(&b[FRAME_HEADER_LEN..]).ok())
}

/// Buffered positional reads over `[0, end)` of a file, for scans.
pub(crate) struct PosReader {
    file: Arc<dyn LogFile>,
    path: PathBuf,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

const READ_CHUNK: usize = 1 << 20;

impl PosReader {
    pub fn new(file: Arc<dyn LogFile>, path: PathBuf, end: u64) -> Self {
        Self {
            file,
            path,
            end,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// The `n` bytes at `offset`, or `None` if they extend past the end.
    pub fn get(&mut self, offset: u64, n: usize) -> Result<Option<&[u8]>> {
        let Some(stop) = offset.checked_add(n as u64).filter(|&s| s <= self.end) else {
            return Ok(None);
        };
        let buf_end = self.buf_start + self.buf.len() as u64;
        if offset < self.buf_start || stop > buf_end {
            // `stop <= end` and the chunk is clamped to `end`, so the length fits in usize
            // whenever `n` does.
            let want = (n.max(READ_CHUNK) as u64).min(self.end - offset) as usize;
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf, offset)
                .map_err(|e| {
                    Error::io(format!("reading {} at {offset}", self.path.display()), e)
                })?;
            self.buf_start = offset;
        }
        let at = (offset - self.buf_start) as usize;
        Ok(Some(&self.buf[at..at + n]))
    }

    /// The whole valid record at `offset`, or `None` if none starts there.
    pub fn record(&mut self, offset: u64) -> Result<Option<(FrameHeader, &[u8])>> {
        let h = match self.get(offset, FRAME_HEADER_LEN)? {
            Some(b) => FrameHeader::parse(b),
            None => return Ok(None),
        };
        if !h.is_plausible() {
            return Ok(None);
        }
        match self.get(offset, h.record_len())? {
            Some(rec) if h.checksum_ok(rec) => Ok(Some((h, &rec[FRAME_HEADER_LEN..]))),
            _ => Ok(None),
        }
    }

    /// Looks for a record after the bad one at `bad_at` that proves the bytes there are
    /// not a torn tail: a record that passes its checksum and could continue the log,
    /// given `next` (what the next entry must look like).
    ///
    /// Linear in the bytes after `bad_at`. Every offset is a possible record start, but the
    /// checksum (the costly part: a record can be 256 MiB) is computed only for a header
    /// that is plausible, lies within the file, and — for an entry — opens with a log id
    /// that could follow: index within reach of `next` (each entry record in between takes
    /// at least [`MIN_ENTRY_RECORD_LEN`] bytes), leader not older. Records the log wrote
    /// after `bad_at` do not overlap, so checking them all costs at most the tail's length;
    /// past [`SEARCH_BUDGET_FACTOR`] times that, the search stops [`Following::Undecided`].
    fn find_following_record(
        &mut self,
        bad_at: u64,
        next: NextEntry,
        work: &mut SearchWork,
    ) -> Result<Following> {
        let budget = (self.end - bad_at).saturating_mul(SEARCH_BUDGET_FACTOR);
        let mut at = bad_at;
        loop {
            at += 1;
            let Some(h) = self.get(at, FRAME_HEADER_LEN)?.map(FrameHeader::parse) else {
                return Ok(Following::Nothing);
            };
            work.positions += 1;
            let fits = at
                .checked_add(h.record_len() as u64)
                .is_some_and(|stop| stop <= self.end);
            if !h.is_plausible() || !fits {
                continue;
            }
            if h.record_type == RECORD_ENTRY && !self.entry_could_follow(at, &h, bad_at, next)? {
                continue;
            }
            work.hashed += h.record_len() as u64;
            if work.hashed > budget {
                return Ok(Following::Undecided);
            }
            if self.record(at)?.is_some() {
                return Ok(Following::Record(at));
            }
        }
    }

    /// Whether the entry record whose plausible header `h` is at `at` opens with a log id
    /// that could follow the entries before the bad record at `bad_at`.
    fn entry_could_follow(
        &mut self,
        at: u64,
        h: &FrameHeader,
        bad_at: u64,
        next: NextEntry,
    ) -> Result<bool> {
        let n = h.len.min(codec::MAX_LOG_ID_PREFIX_LEN);
        let Some(prefix) = self.get(at + FRAME_HEADER_LEN as u64, n)? else {
            return Ok(false);
        };
        let Ok(id) = codec::decode_log_id(prefix) else {
            return Ok(false);
        };
        let reach = (at - bad_at) / MIN_ENTRY_RECORD_LEN as u64;
        Ok(id.index >= next.index
            && id.index - next.index <= reach
            && next.leader.is_none_or(|l| id.leader_id >= l))
    }
}

/// Fewest bytes an entry record takes.
const MIN_ENTRY_RECORD_LEN: usize = FRAME_HEADER_LEN + codec::MIN_ENTRY_LEN;

/// How many times the length of the bytes after a bad record the search for a following
/// valid record may checksum before giving up (see [`PosReader::find_following_record`]).
const SEARCH_BUDGET_FACTOR: u64 = 2;

/// What the next entry record of a segment must carry.
#[derive(Debug, Clone, Copy)]
struct NextEntry {
    index: u64,
    leader: Option<LeaderId<u64, u64>>,
}

/// What the search after a bad record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Following {
    /// A valid record that could continue the log starts at this offset.
    Record(u64),
    /// None: the bad bytes are a torn tail.
    Nothing,
    /// The search gave up (its checksum budget is spent) without finding one.
    Undecided,
}

/// Whether the scanned segment is the newest one, whose tail may be torn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanKind {
    /// The last segment: bad trailing bytes are a torn write, cut per the mode.
    Last(RecoveryMode),
    /// An older segment: must be whole and end with its seal.
    Sealed,
}

/// What a scan found.
#[derive(Debug)]
pub(crate) struct Scan {
    pub locs: Vec<EntryLoc>,
    /// End of the last valid record.
    pub valid_len: u64,
    pub seal: Option<Seal>,
    /// The committed log id of the last committed or seal record.
    pub committed: Option<Option<LogId>>,
    /// For the last segment: the offset where bad trailing bytes start, and why.
    pub torn: Option<(u64, String)>,
    /// What looking for a valid record after a bad one cost.
    pub search: SearchWork,
}

/// The work of a search for a valid record after a bad one (a metric; tests pin it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SearchWork {
    /// Offsets examined as possible record starts.
    pub positions: u64,
    /// Bytes checksummed while checking candidates.
    pub hashed: u64,
}

/// The index the next entry record of a segment holding `entries` entries from
/// `first_index` must carry, or corruption (naming the record at `at`) if it would pass
/// [`format::MAX_INDEX`]: a file named near `u64::MAX` cannot hold more entries.
fn next_index(path: &Path, at: u64, first_index: u64, entries: usize) -> Result<u64> {
    first_index
        .checked_add(entries as u64)
        .filter(|&i| i <= format::MAX_INDEX)
        .ok_or_else(|| {
            Error::corruption(
                path,
                at,
                format!(
                    "entry {entries} of a segment starting at index {first_index} would be \
                     past the largest index {}",
                    format::MAX_INDEX
                ),
            )
        })
}

/// Reads every record of a segment of `file_len` bytes, checking checksums, index
/// continuity (entry `i` has index `first_index + i`, at most [`format::MAX_INDEX`]) and
/// leader order.
pub(crate) fn scan(
    file: &Arc<dyn LogFile>,
    path: &Path,
    first_index: u64,
    file_len: u64,
    kind: ScanKind,
) -> Result<Scan> {
    let mut r = PosReader::new(Arc::clone(file), path.to_path_buf(), file_len);
    let mut out = Scan {
        locs: Vec::new(),
        valid_len: SEGMENT_HEADER_LEN as u64,
        seal: None,
        committed: None,
        torn: None,
        search: SearchWork::default(),
    };
    let mut at = SEGMENT_HEADER_LEN as u64;
    while at < file_len {
        let Some((h, payload)) = r.record(at)? else {
            let reason = if at + FRAME_HEADER_LEN as u64 > file_len {
                "incomplete record header".to_string()
            } else {
                let h = r.get(at, FRAME_HEADER_LEN)?.map(FrameHeader::parse);
                match h {
                    Some(h) if !h.is_plausible() => {
                        format!(
                            "bad record header (type {}, length {})",
                            h.record_type, h.len
                        )
                    }
                    Some(h) if at + h.record_len() as u64 > file_len => {
                        "incomplete record".to_string()
                    }
                    _ => "record checksum mismatch".to_string(),
                }
            };
            match kind {
                ScanKind::Sealed => return Err(Error::corruption(path, at, reason)),
                ScanKind::Last(RecoveryMode::TruncateTail) => {}
                ScanKind::Last(RecoveryMode::Strict) => {
                    // Only a filter: an index past MAX_INDEX cannot follow anyway.
                    let next = NextEntry {
                        index: first_index.saturating_add(out.locs.len() as u64),
                        leader: out.locs.last().map(|l| l.leader),
                    };
                    match r.find_following_record(at, next, &mut out.search)? {
                        Following::Nothing => {}
                        Following::Record(valid) => {
                            return Err(Error::corruption(
                                path,
                                at,
                                format!("{reason}, followed by a valid record at offset {valid}"),
                            ));
                        }
                        Following::Undecided => {
                            return Err(Error::corruption(
                                path,
                                at,
                                format!(
                                    "{reason}; the search for a valid record after it gave up \
                                     after checksumming {} bytes, so the bytes from here on \
                                     cannot be proven a torn tail (RecoveryMode::TruncateTail \
                                     cuts them)",
                                    out.search.hashed
                                ),
                            ));
                        }
                    }
                }
            }
            out.torn = Some((at, reason));
            break;
        };
        if out.seal.is_some() {
            return Err(Error::corruption(
                path,
                at,
                "record after the segment's seal",
            ));
        }
        let rec_len = h.record_len() as u64;
        match h.record_type {
            RECORD_ENTRY => {
                let id = codec::decode_log_id(payload)
                    .map_err(|e| e.into_corruption(path, at + FRAME_HEADER_LEN as u64))?;
                let expected = next_index(path, at, first_index, out.locs.len())?;
                if id.index != expected {
                    return Err(Error::corruption(
                        path,
                        at,
                        format!("entry has index {}, expected {expected}", id.index),
                    ));
                }
                if let Some(prev) = out.locs.last() {
                    if id.leader_id < prev.leader {
                        return Err(Error::corruption(
                            path,
                            at,
                            format!(
                                "leader regresses from {} to {} at index {expected}",
                                prev.leader, id.leader_id
                            ),
                        ));
                    }
                }
                out.locs.push(EntryLoc {
                    offset: at,
                    // `is_plausible` caps payloads at MAX_PAYLOAD_LEN, far below u32::MAX.
                    len: rec_len as u32,
                    leader: id.leader_id,
                });
            }
            RECORD_COMMITTED => {
                let c = format::decode_committed(payload)
                    .map_err(|r| Error::corruption(path, at, r))?;
                out.committed = Some(c);
            }
            RECORD_SEAL => {
                let seal =
                    format::decode_seal(payload).map_err(|r| Error::corruption(path, at, r))?;
                // Every entry's index was checked against `next_index`: no overflow.
                let last = (out.locs.len() as u64)
                    .checked_sub(1)
                    .map(|n| first_index + n);
                if Some(seal.last_index) != last {
                    return Err(Error::corruption(
                        path,
                        at,
                        format!(
                            "seal says last index {}, segment holds {last:?}",
                            seal.last_index
                        ),
                    ));
                }
                out.committed = Some(seal.committed);
                out.seal = Some(seal);
            }
            t => unreachable!("is_plausible admits only known record types, got {t}"),
        }
        at += rec_len;
        out.valid_len = at;
    }
    if kind == ScanKind::Sealed && out.seal.is_none() {
        return Err(Error::corruption(
            path,
            out.valid_len,
            "segment is not the newest but has no seal",
        ));
    }
    Ok(out)
}
