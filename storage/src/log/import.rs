//! Raw imports: filling the raw-click store's gaps with committed entries fetched from a
//! peer.
//!
//! A node that installs a snapshot purges its log up to the snapshot without holding the
//! entries before it: the raw store has a **gap** there (`Inner::raw_gaps`: the indexes
//! from the raw low-water mark up to and including the purged index that no segment
//! holds). The server fetches the missing segments from a peer (whole segment files, in
//! the on-disk format) and hands each one to [`Shared::import_raw`], which:
//!
//! 1. verifies the image completely before touching the disk: header (magic, version,
//!    checksum), every record (framing, checksum, nothing after the seal, the seal naming
//!    the last entry), entries contiguous from the header's first index, leaders never
//!    older than the previous entry's, every entry decodable by [`crate::codec`];
//! 2. keeps the entries whose index lies in a current gap, and only those (everything else
//!    is either held already — a committed entry is the same on every replica — or above
//!    the purged index, which this node does not know committed);
//! 3. writes each kept run as a new sealed segment `<first index:020>.seg` (header, a
//!    committed record, the entry records copied verbatim, a seal), atomically: temporary
//!    file, fsync, rename, directory fsync;
//! 4. inserts it into the in-memory segment list as a retained (purged) segment, so raw
//!    reads serve it at once; recovery finds it like any purged sealed segment.
//!
//! The active segment must stay the last one: if it starts at or below an index to import
//! (a log purged past its end keeps its old, possibly empty, active segment), it is first
//! sealed (or dropped, when empty) and a new one started right after the purged index —
//! the rotation an append at that index would do anyway.
//!
//! Imports are serialized with retention passes (`retention_lock`): both change the
//! segment list away from its end. They hold the directory lock's mutex throughout, so a
//! store being dropped waits for an import in progress, and an import after the drop
//! fails with [`Error::Closed`].

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};

use openraft::impls::leader_id_adv::LeaderId;

use super::format::{
    self, FrameHeader, Seal, FRAME_HEADER_LEN, MAX_INDEX, RECORD_COMMITTED, RECORD_ENTRY,
    RECORD_SEAL, SEGMENT_HEADER_LEN,
};
use super::fs::create_atomically;
use super::segment::Segment;
use super::store::{now_ms, Shared};
use crate::codec;
use crate::error::{Error, Result};
use crate::types::{Entry, LogId};

/// What one raw import stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// The index ranges stored, in order; each became one new segment file.
    pub imported: Vec<Range<u64>>,
    /// How many entries were stored.
    pub entries: u64,
    /// Bytes of the segment files written.
    pub bytes: u64,
}

/// A cloneable handle that fills the raw store's gaps (see [`RawImporter::import_raw`]),
/// for a server that handed its [`super::LogStore`] to openraft. It must not outlive its
/// store's use: once the store is dropped, imports fail with [`Error::Closed`].
#[derive(Debug, Clone)]
pub struct RawImporter {
    pub(crate) shared: Arc<Shared>,
}

impl RawImporter {
    /// The purged indexes no local segment holds; see [`super::LogStore::raw_gaps`].
    pub fn raw_gaps(&self) -> Result<Vec<Range<u64>>> {
        self.shared.raw_gaps()
    }

    /// Stores the entries of a peer's segment image that fall in a gap; see
    /// [`super::LogStore::import_raw`].
    pub fn import_raw(&self, segment_image: &[u8]) -> Result<ImportOutcome> {
        self.shared.import_raw(segment_image)
    }
}

/// A segment image that passed every check.
struct Image<'a> {
    bytes: &'a [u8],
    first_index: u64,
    /// Offset and length of the record of entry `first_index + i`.
    records: Vec<(usize, usize)>,
    /// The seal time of a sealed image.
    sealed_at_ms: Option<u64>,
}

impl Image<'_> {
    fn last_index(&self) -> Option<u64> {
        // Every index was checked against MAX_INDEX: no overflow.
        (self.records.len() as u64)
            .checked_sub(1)
            .map(|n| self.first_index + n)
    }

    /// A sealed segment holding the entries `range` (all in the image): header, committed
    /// record, the entry records as the peer wrote them, seal.
    fn segment(&self, range: &Range<u64>, committed: Option<&LogId>, seal: &Seal) -> Vec<u8> {
        let from = (range.start - self.first_index) as usize;
        let to = (range.end - self.first_index) as usize;
        let recs = &self.records[from..to];
        let body: usize = recs.iter().map(|&(_, len)| len).sum();
        let mut buf = Vec::with_capacity(
            SEGMENT_HEADER_LEN
                + FRAME_HEADER_LEN
                + format::COMMITTED_PAYLOAD_LEN
                + body
                + format::SEAL_RECORD_LEN,
        );
        buf.extend_from_slice(&format::encode_segment_header(range.start));
        format::put_frame(
            &mut buf,
            RECORD_COMMITTED,
            &format::encode_committed(committed),
        );
        for &(at, len) in recs {
            buf.extend_from_slice(&self.bytes[at..at + len]);
        }
        format::put_frame(&mut buf, RECORD_SEAL, &format::encode_seal(seal));
        buf
    }
}

/// Builds a segment image (the on-disk segment format of `docs/log-format.md`: header and
/// entry records, unsealed) holding `entries`, which must be contiguous by index. This is
/// what a node serves to a peer filling a raw gap, and what [`RawImporter::import_raw`]
/// takes. Serve only committed entries ([`super::RawReader::entries`] yields nothing
/// else): the importer trusts the serving node's entries to be the committed log.
pub fn encode_segment_image(entries: &[Entry]) -> Result<Vec<u8>> {
    let Some(first) = entries.first() else {
        return Err(Error::InvalidArgument(
            "a segment image needs entries".into(),
        ));
    };
    let first_index = first.log_id.index;
    let mut buf = Vec::with_capacity(SEGMENT_HEADER_LEN + entries.len() * 64);
    buf.extend_from_slice(&format::encode_segment_header(first_index));
    for (i, e) in entries.iter().enumerate() {
        if e.log_id.index != first_index + i as u64 {
            return Err(Error::InvalidArgument(format!(
                "segment image entries must be contiguous: index {} after {}",
                e.log_id.index,
                first_index + i as u64 - 1
            )));
        }
        format::put_frame_with(&mut buf, RECORD_ENTRY, |b| codec::encode_entry(e, b)).map_err(
            |len| Error::InvalidArgument(format!("entry {} of {len} bytes", e.log_id.index)),
        )?;
    }
    Ok(buf)
}

/// Checks a peer's segment image completely; any flaw is [`Error::Corruption`] naming the
/// image (`<peer segment image NAME>`) and the offset in it. Never panics.
fn verify(bytes: &[u8]) -> Result<Image<'_>> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return Err(Error::corruption(
            "<peer segment image>",
            0,
            format!(
                "image of {} bytes is shorter than a segment header",
                bytes.len()
            ),
        ));
    };
    let first_index = format::decode_segment_header(header)
        .map_err(|r| Error::corruption("<peer segment image>", 0, r))?;
    let path = PathBuf::from(format!(
        "<peer segment image {}>",
        format::segment_file_name(first_index)
    ));
    let bad = |at: usize, reason: String| Error::corruption(&path, at as u64, reason);
    let mut image = Image {
        bytes,
        first_index,
        records: Vec::new(),
        sealed_at_ms: None,
    };
    let mut prev_leader: Option<LeaderId<u64, u64>> = None;
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER_LEN {
            return Err(bad(at, "incomplete record header".into()));
        }
        let h = FrameHeader::parse(rest);
        if !h.is_plausible() {
            return Err(bad(
                at,
                format!(
                    "bad record header (type {}, length {})",
                    h.record_type, h.len
                ),
            ));
        }
        let Some(rec) = rest.get(..h.record_len()) else {
            return Err(bad(at, "incomplete record".into()));
        };
        if !h.checksum_ok(rec) {
            return Err(bad(at, "record checksum mismatch".into()));
        }
        if image.sealed_at_ms.is_some() {
            return Err(bad(at, "record after the segment's seal".into()));
        }
        let payload = &rec[FRAME_HEADER_LEN..];
        match h.record_type {
            RECORD_ENTRY => {
                let n = image.records.len() as u64;
                let Some(expected) = first_index.checked_add(n).filter(|&i| i <= MAX_INDEX) else {
                    return Err(bad(
                        at,
                        format!("entry {n} from index {first_index} passes index {MAX_INDEX}"),
                    ));
                };
                let entry = codec::decode_entry(payload)
                    .map_err(|e| e.into_corruption(&path, (at + FRAME_HEADER_LEN) as u64))?;
                if entry.log_id.index != expected {
                    return Err(bad(
                        at,
                        format!(
                            "entry has index {}, expected {expected}",
                            entry.log_id.index
                        ),
                    ));
                }
                let leader = entry.log_id.leader_id;
                if prev_leader.is_some_and(|p| leader < p) {
                    return Err(bad(
                        at,
                        format!("leader regresses to {leader} at index {expected}"),
                    ));
                }
                prev_leader = Some(leader);
                image.records.push((at, rec.len()));
            }
            RECORD_COMMITTED => {
                format::decode_committed(payload).map_err(|r| bad(at, r))?;
            }
            RECORD_SEAL => {
                let seal = format::decode_seal(payload).map_err(|r| bad(at, r))?;
                if Some(seal.last_index) != image.last_index() {
                    return Err(bad(
                        at,
                        format!(
                            "seal says last index {}, image holds {:?}",
                            seal.last_index,
                            image.last_index()
                        ),
                    ));
                }
                image.sealed_at_ms = Some(seal.sealed_at_ms);
            }
            t => return Err(bad(at, format!("unknown record type {t}"))),
        }
        at += rec.len();
    }
    Ok(image)
}

impl Shared {
    /// The purged indexes no local segment holds, in order.
    pub fn raw_gaps(&self) -> Result<Vec<Range<u64>>> {
        Ok(self.read()?.raw_gaps())
    }

    /// Verifies a peer's segment image and stores the entries that fall in a gap as new
    /// sealed segments (see the module documentation). On an error after verification,
    /// runs stored before it stay stored (and listed); [`Self::raw_gaps`] tells what is
    /// left.
    pub fn import_raw(&self, segment_image: &[u8]) -> Result<ImportOutcome> {
        let image = verify(segment_image)?;
        let mut out = ImportOutcome::default();
        let Some(last) = image.last_index() else {
            return Ok(out);
        };
        // Held throughout: `close` waits for the import; after it, nothing is written.
        let dir_lock = self.dir_lock.lock().unwrap_or_else(PoisonError::into_inner);
        if dir_lock.is_none() {
            return Err(Error::Closed);
        }
        let _pass = self
            .retention_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (plan, committed) = {
            let mut inner = self.write()?;
            self.check()?;
            // `last` is at most MAX_INDEX, so `last + 1` exists.
            let plan: Vec<Range<u64>> = inner
                .raw_gaps()
                .into_iter()
                .map(|g| g.start.max(image.first_index)..g.end.min(last + 1))
                .filter(|r| r.start < r.end)
                .collect();
            let Some(top) = plan.last().map(|r| r.end - 1) else {
                return Ok(out);
            };
            if inner.active().first_index <= top {
                // The active segment lies below a gap, so it holds no live entry: start the
                // next one after the purged index, where the next append goes anyway.
                assert!(
                    inner.last_live().is_none(),
                    "the active segment starts at {} below gap index {top} but holds live \
                     entries",
                    inner.active().first_index
                );
                let purged = inner
                    .purged_index()
                    .expect("gaps lie at or below the purged index");
                self.rotate(&mut inner, purged + 1)?;
            }
            (plan, inner.committed)
        };
        let now = now_ms();
        let seal_template = Seal {
            last_index: 0,
            // A peer's seal time says how old the entries are (retention ages them from it);
            // a future one is clamped to now, an unsealed image is sealed now.
            sealed_at_ms: image.sealed_at_ms.map_or(now, |t| t.min(now)),
            committed,
        };
        let fs = self.fs.as_ref();
        let dir = &self.config.dir;
        for range in plan {
            let seal = Seal {
                last_index: range.end - 1,
                ..seal_template
            };
            let buf = image.segment(&range, committed.as_ref(), &seal);
            let name = format::segment_file_name(range.start);
            let path = dir.join(&name);
            if let Err(e) = create_atomically(fs, dir, &name, &buf) {
                // Keep the directory matching the segment list (best effort: a file left
                // behind is a valid segment that recovery will list).
                if fs.exists(&path).unwrap_or(false) {
                    if let Err(re) = fs.remove_file(&path) {
                        tracing::warn!(file = %path.display(), error = %re, "cannot remove a failed import");
                    }
                }
                return Err(e);
            }
            let entries = range.end - range.start;
            {
                let mut inner = self.write()?;
                let pos = inner
                    .segments
                    .partition_point(|s| s.first_index < range.start);
                let fits_after = pos == 0
                    || inner.segments[pos - 1]
                        .last_index()
                        .is_none_or(|l| l < range.start);
                assert!(
                    pos < inner.segments.len()
                        && inner.segments[pos].first_index >= range.end
                        && fits_after,
                    "imported segment {} overlaps a segment or follows the active one",
                    path.display()
                );
                inner.segments.insert(
                    pos,
                    Segment {
                        path: path.clone(),
                        first_index: range.start,
                        entries,
                        len: buf.len() as u64,
                        seal: Some(seal),
                        file: None,
                        locs: None,
                    },
                );
            }
            tracing::info!(
                segment = %path.display(),
                first = range.start,
                last = range.end - 1,
                "raw entries imported from a peer"
            );
            out.entries += entries;
            out.bytes += buf.len() as u64;
            out.imported.push(range);
        }
        drop(dir_lock);
        Ok(out)
    }
}
