//! Every byte layout of the log directory, as named constants and tiny encode/decode
//! functions; `docs/log-format.md` documents the same layouts for humans. Integers are
//! little-endian; checksums are CRC-32 (IEEE, `crc32fast`).
//!
//! - A **segment file** `<first_index:020>.seg` is a [`SEGMENT_HEADER_LEN`]-byte header
//!   followed by records.
//! - A **record** is a [`FRAME_HEADER_LEN`]-byte frame header (crc, payload length, record
//!   type) and the payload. The crc covers the length, the type and the payload, so a record
//!   whose bytes were not all written (a torn write) fails its check.
//! - Record types: [`RECORD_ENTRY`] (an encoded Raft entry, see [`crate::codec`]),
//!   [`RECORD_COMMITTED`] (the committed log id Raft saved) and [`RECORD_SEAL`] (the last
//!   record of a full segment, fixed size so it can be read from the end of the file).
//! - The **meta file** `meta` holds the vote, the last purged log id and the raw store's
//!   low-water mark; it is replaced atomically (write a temporary file, fsync, rename, fsync
//!   the directory).
//! - The **lock file** `LOCK` is empty; an exclusive lock on it marks the directory as owned
//!   by one open log.
//! - Entry indexes are at most [`MAX_INDEX`]: `u64::MAX` is reserved, so the index after
//!   any stored one exists. Decoders refuse a log id past it.
//!
//! Invariant: nothing else in the crate knows an offset or a magic number.

use openraft::impls::leader_id_adv::LeaderId;

use crate::types::{log_id, LogId, Vote};

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"ADCKSEG\0";
/// Version of the segment layout (header, framing, record types).
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Segment header: magic (8), format version (u32), first index (u64), crc of the
/// preceding 20 bytes (u32).
pub const SEGMENT_HEADER_LEN: usize = 24;
/// Suffix of segment file names.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of files being created; a file with it is never part of the log and is removed
/// on open.
pub const TMP_SUFFIX: &str = ".tmp";

/// Largest entry index the log stores. `u64::MAX` is reserved so that `index + 1` of any
/// stored (or recorded) index cannot overflow; a log id past it on disk is corruption.
pub const MAX_INDEX: u64 = u64::MAX - 1;

/// Name of the lock file: held exclusively by the one open log of the directory.
pub const LOCK_FILE: &str = "LOCK";

/// Frame header: crc (u32) over the rest of the record, payload length (u32), record type
/// (u8).
pub const FRAME_HEADER_LEN: usize = 9;
/// Largest record payload accepted. Bounds what a corrupt length can make us read.
pub const MAX_PAYLOAD_LEN: usize = 256 << 20;

/// Record type: an encoded Raft entry.
pub const RECORD_ENTRY: u8 = 1;
/// Record type: the committed log id saved by Raft, [`COMMITTED_PAYLOAD_LEN`] bytes.
pub const RECORD_COMMITTED: u8 = 2;
/// Record type: the seal that closes a full segment, [`SEAL_PAYLOAD_LEN`] bytes.
pub const RECORD_SEAL: u8 = 3;

/// An optional log id: present flag (u8, 0 or 1), term (u64), node id (u64), index (u64);
/// all zero when absent.
pub const OPT_LOG_ID_LEN: usize = 25;
/// Committed payload: the committed log id (optional).
pub const COMMITTED_PAYLOAD_LEN: usize = OPT_LOG_ID_LEN;
/// Seal payload: last entry index (u64), seal time in ms since the epoch (u64), the
/// committed log id (optional).
pub const SEAL_PAYLOAD_LEN: usize = 16 + OPT_LOG_ID_LEN;
/// A seal record, framed: the last bytes of every sealed segment.
pub const SEAL_RECORD_LEN: usize = FRAME_HEADER_LEN + SEAL_PAYLOAD_LEN;

/// Name of the meta file (vote and last purged log id), replaced atomically.
pub const META_FILE: &str = "meta";
/// Magic bytes opening the meta file.
pub const META_MAGIC: [u8; 8] = *b"ADCKMETA";
/// Version of the meta file layout written: 2 (version 1, without the raw low-water mark,
/// is still read).
pub const META_FORMAT_VERSION: u32 = 2;
/// Meta file (version 2): magic (8), version (u32), vote present flag (u8), vote term
/// (u64), vote node id (u64), vote committed flag (u8), last purged log id (optional, 25),
/// raw low-water mark (u64), crc of the preceding 63 bytes (u32).
pub const META_FILE_LEN: usize = 67;
/// Length of a version 1 meta file: as version 2 without the raw low-water mark (the crc
/// covers the preceding 55 bytes).
pub const META_FILE_V1_LEN: usize = 59;

/// The file name of the segment whose first entry index is `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

/// The first index encoded in a segment file name, or `None` if the name is not one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment header.
pub fn encode_segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header and returns its first index, or says what is wrong.
pub fn decode_segment_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "header is {} bytes, expected {SEGMENT_HEADER_LEN}",
            h.len()
        ));
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    if crc32fast::hash(&h[0..20]) != u32_at(h, 20) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32_at(h, 8);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    Ok(u64_at(h, 12))
}

/// Appends a framed record to `buf`.
pub fn put_frame(buf: &mut Vec<u8>, record_type: u8, payload: &[u8]) {
    assert!(
        payload.len() <= MAX_PAYLOAD_LEN,
        "record payload of {} bytes",
        payload.len()
    );
    put_frame_with(buf, record_type, |b| b.extend_from_slice(payload))
        .expect("payload length checked above");
}

/// Appends a framed record whose payload is produced by `write` into `buf` directly, so an
/// encoded entry is never copied. Returns the record's length, or `Err(payload length)`
/// (with `buf` restored) if the payload exceeds [`MAX_PAYLOAD_LEN`].
pub fn put_frame_with(
    buf: &mut Vec<u8>,
    record_type: u8,
    write: impl FnOnce(&mut Vec<u8>),
) -> Result<usize, usize> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    write(buf);
    let len = buf.len() - start - FRAME_HEADER_LEN;
    if len > MAX_PAYLOAD_LEN {
        buf.truncate(start);
        return Err(len);
    }
    // MAX_PAYLOAD_LEN fits in a u32.
    buf[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 8] = record_type;
    let crc = crc32fast::hash(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.len() - start)
}

/// A frame header as read from disk, not yet checked against its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Stored checksum.
    pub crc: u32,
    /// Payload length.
    pub len: usize,
    /// Record type.
    pub record_type: u8,
}

impl FrameHeader {
    /// Parses the first [`FRAME_HEADER_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Self {
        assert!(
            b.len() >= FRAME_HEADER_LEN,
            "frame header needs {FRAME_HEADER_LEN} bytes"
        );
        Self {
            crc: u32_at(b, 0),
            len: u32_at(b, 4) as usize,
            record_type: b[8],
        }
    }

    /// Whether the type is known and the length possible (and, for fixed-size records,
    /// exact). A plausible header can still fail its checksum.
    pub fn is_plausible(&self) -> bool {
        match self.record_type {
            RECORD_ENTRY => self.len > 0 && self.len <= MAX_PAYLOAD_LEN,
            RECORD_COMMITTED => self.len == COMMITTED_PAYLOAD_LEN,
            RECORD_SEAL => self.len == SEAL_PAYLOAD_LEN,
            _ => false,
        }
    }

    /// Header plus payload.
    pub fn record_len(&self) -> usize {
        FRAME_HEADER_LEN + self.len
    }

    /// Whether `record` (header and payload, exactly [`Self::record_len`] bytes) matches
    /// the stored checksum.
    pub fn checksum_ok(&self, record: &[u8]) -> bool {
        record.len() == self.record_len() && crc32fast::hash(&record[4..]) == self.crc
    }
}

/// Encodes a committed record's payload.
pub fn encode_committed(committed: Option<&LogId>) -> [u8; COMMITTED_PAYLOAD_LEN] {
    let mut b = [0u8; COMMITTED_PAYLOAD_LEN];
    put_opt_log_id(&mut b, committed);
    b
}

/// Decodes a committed record's payload.
pub fn decode_committed(b: &[u8]) -> Result<Option<LogId>, String> {
    if b.len() != COMMITTED_PAYLOAD_LEN {
        return Err(format!("committed record of {} bytes", b.len()));
    }
    get_opt_log_id(b)
}

/// What a seal record says about its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// Index of the segment's last entry.
    pub last_index: u64,
    /// When the segment was sealed, ms since the epoch (drives age-based retention).
    pub sealed_at_ms: u64,
    /// The committed log id when it was sealed.
    pub committed: Option<LogId>,
}

/// Encodes a seal record's payload.
pub fn encode_seal(s: &Seal) -> [u8; SEAL_PAYLOAD_LEN] {
    let mut b = [0u8; SEAL_PAYLOAD_LEN];
    b[0..8].copy_from_slice(&s.last_index.to_le_bytes());
    b[8..16].copy_from_slice(&s.sealed_at_ms.to_le_bytes());
    put_opt_log_id(&mut b[16..], s.committed.as_ref());
    b
}

/// Decodes a seal record's payload.
pub fn decode_seal(b: &[u8]) -> Result<Seal, String> {
    if b.len() != SEAL_PAYLOAD_LEN {
        return Err(format!("seal record of {} bytes", b.len()));
    }
    let last_index = u64_at(b, 0);
    if last_index > MAX_INDEX {
        return Err(format!(
            "seal says last index {last_index}, past the largest index {MAX_INDEX}"
        ));
    }
    Ok(Seal {
        last_index,
        sealed_at_ms: u64_at(b, 8),
        committed: get_opt_log_id(&b[16..])?,
    })
}

/// What the meta file holds: the state Raft needs durable before the call returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// The last saved vote.
    pub vote: Option<Vote>,
    /// The last log id purged by Raft (entries up to it are no longer served to Raft).
    pub purged: Option<LogId>,
    /// The raw store's low-water mark: retention removed (archived or deleted) segments
    /// holding indexes below it, so the raw store no longer wants them (they are not gaps).
    /// 0 until retention first removes a segment.
    pub raw_from: u64,
}

/// Encodes the meta file (always the current version).
pub fn encode_meta(m: &Meta) -> [u8; META_FILE_LEN] {
    let mut b = [0u8; META_FILE_LEN];
    b[0..8].copy_from_slice(&META_MAGIC);
    b[8..12].copy_from_slice(&META_FORMAT_VERSION.to_le_bytes());
    if let Some(v) = &m.vote {
        b[12] = 1;
        b[13..21].copy_from_slice(&v.leader_id.term.to_le_bytes());
        b[21..29].copy_from_slice(&v.leader_id.node_id.to_le_bytes());
        b[29] = u8::from(v.committed);
    }
    put_opt_log_id(&mut b[30..55], m.purged.as_ref());
    b[55..63].copy_from_slice(&m.raw_from.to_le_bytes());
    let crc = crc32fast::hash(&b[0..63]);
    b[63..67].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes the meta file (version 2, or version 1 with a raw low-water mark of 0), or says
/// what is wrong with it.
pub fn decode_meta(b: &[u8]) -> Result<Meta, String> {
    let crc_at = match b.len() {
        META_FILE_LEN => 63,
        META_FILE_V1_LEN => 55,
        n => {
            return Err(format!(
                "meta file is {n} bytes, expected {META_FILE_LEN} (or {META_FILE_V1_LEN})"
            ))
        }
    };
    if b[0..8] != META_MAGIC {
        return Err("bad meta file magic".into());
    }
    if crc32fast::hash(&b[0..crc_at]) != u32_at(b, crc_at) {
        return Err("meta file checksum mismatch".into());
    }
    let version = u32_at(b, 8);
    let raw_from = match (version, b.len()) {
        (META_FORMAT_VERSION, META_FILE_LEN) => u64_at(b, 55),
        (1, META_FILE_V1_LEN) => 0,
        _ => {
            return Err(format!(
                "unsupported meta file version {version} in a file of {} bytes",
                b.len()
            ))
        }
    };
    let vote = match (b[12], b[29]) {
        (0, 0) if b[13..29].iter().all(|&x| x == 0) => None,
        (1, c @ (0 | 1)) => Some(Vote {
            leader_id: LeaderId {
                term: u64_at(b, 13),
                node_id: u64_at(b, 21),
            },
            committed: c == 1,
        }),
        _ => return Err("bad vote fields".into()),
    };
    Ok(Meta {
        vote,
        purged: get_opt_log_id(&b[30..55])?,
        raw_from,
    })
}

fn put_opt_log_id(b: &mut [u8], id: Option<&LogId>) {
    if let Some(id) = id {
        b[0] = 1;
        b[1..9].copy_from_slice(&id.leader_id.term.to_le_bytes());
        b[9..17].copy_from_slice(&id.leader_id.node_id.to_le_bytes());
        b[17..25].copy_from_slice(&id.index.to_le_bytes());
    }
}

fn get_opt_log_id(b: &[u8]) -> Result<Option<LogId>, String> {
    match b[0] {
        0 if b[1..OPT_LOG_ID_LEN].iter().all(|&x| x == 0) => Ok(None),
        1 if u64_at(b, 17) > MAX_INDEX => Err(format!(
            "log id index {}, past the largest index {MAX_INDEX}",
            u64_at(b, 17)
        )),
        1 => Ok(Some(log_id(u64_at(b, 1), u64_at(b, 9), u64_at(b, 17)))),
        _ => Err("bad optional log id".into()),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_first_index_and_parse_back() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg.tmp"),
            None
        );
    }

    #[test]
    fn segment_header_detects_any_flipped_byte() {
        let h = encode_segment_header(7);
        assert_eq!(decode_segment_header(&h), Ok(7));
        for i in 0..SEGMENT_HEADER_LEN {
            let mut bad = h;
            bad[i] ^= 0x40;
            assert!(decode_segment_header(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn frames_checksum_length_type_and_payload() {
        let mut buf = Vec::new();
        put_frame(&mut buf, RECORD_ENTRY, b"hello");
        let h = FrameHeader::parse(&buf);
        assert_eq!((h.len, h.record_type), (5, RECORD_ENTRY));
        assert!(h.is_plausible() && h.checksum_ok(&buf));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 1;
            assert!(!FrameHeader::parse(&bad).checksum_ok(&bad), "byte {i}");
        }
        let mut via_closure = Vec::new();
        assert_eq!(
            put_frame_with(&mut via_closure, RECORD_ENTRY, |b| b
                .extend_from_slice(b"hello")),
            Ok(14)
        );
        assert_eq!(via_closure, buf);
    }

    #[test]
    fn committed_seal_and_meta_roundtrip() {
        let id = |t, n, i| {
            LogId::new(
                LeaderId {
                    term: t,
                    node_id: n,
                },
                i,
            )
        };
        for c in [None, Some(id(1, 2, 3))] {
            assert_eq!(decode_committed(&encode_committed(c.as_ref())), Ok(c));
        }
        let seal = Seal {
            last_index: 99,
            sealed_at_ms: 1_700_000_000_000,
            committed: Some(id(4, 5, 6)),
        };
        assert_eq!(decode_seal(&encode_seal(&seal)), Ok(seal));
        let m = Meta {
            vote: Some(Vote {
                leader_id: LeaderId {
                    term: 9,
                    node_id: 3,
                },
                committed: true,
            }),
            purged: Some(id(2, 1, 40)),
            raw_from: 17,
        };
        assert_eq!(decode_meta(&encode_meta(&m)), Ok(m));
        assert_eq!(
            decode_meta(&encode_meta(&Meta::default())),
            Ok(Meta::default())
        );
        for i in 0..META_FILE_LEN {
            let mut bad = encode_meta(&m);
            bad[i] ^= 0x10;
            assert!(decode_meta(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_version_1_meta_file_is_read_with_a_raw_low_water_mark_of_0() {
        let m = Meta {
            vote: None,
            purged: Some(log_id(3, 1, 40)),
            raw_from: 0,
        };
        let v2 = encode_meta(&m);
        let mut v1 = [0u8; META_FILE_V1_LEN];
        v1[0..55].copy_from_slice(&v2[0..55]);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&v1[0..55]);
        v1[55..59].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_meta(&v1), Ok(m));
        for i in 0..META_FILE_V1_LEN {
            let mut bad = v1;
            bad[i] ^= 0x10;
            assert!(decode_meta(&bad).is_err(), "byte {i}");
        }
        // A version 2 file cut to the version 1 length (or the reverse) is refused.
        let mut short = [0u8; META_FILE_V1_LEN];
        short[0..55].copy_from_slice(&v2[0..55]);
        let crc = crc32fast::hash(&short[0..55]);
        short[55..59].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_meta(&short).is_err());
    }

    #[test]
    fn decoders_refuse_indexes_past_the_largest() {
        let at = |index| {
            LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            )
        };
        assert!(decode_committed(&encode_committed(Some(&at(MAX_INDEX)))).is_ok());
        assert!(decode_committed(&encode_committed(Some(&at(u64::MAX)))).is_err());
        let seal = |last_index, committed| Seal {
            last_index,
            sealed_at_ms: 0,
            committed,
        };
        assert!(decode_seal(&encode_seal(&seal(MAX_INDEX, None))).is_ok());
        assert!(decode_seal(&encode_seal(&seal(u64::MAX, None))).is_err());
        assert!(decode_seal(&encode_seal(&seal(1, Some(at(u64::MAX))))).is_err());
        let meta = Meta {
            vote: None,
            purged: Some(at(u64::MAX)),
            raw_from: 0,
        };
        assert!(decode_meta(&encode_meta(&meta)).is_err());
    }
}
