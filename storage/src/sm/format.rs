//! Every byte layout of the state machine, defined once: the RocksDB keys and values of a
//! group, and the value encodings the snapshot file reuses. `docs/state-format.md` is the
//! human description of the same bytes; change both together and bump a version.
//!
//! Invariants the query code relies on:
//! - every key of group `g` starts with `g` as a big-endian `u64`, then a one-byte tag, so
//!   a group is one contiguous key range `[g, g ‖ 0xFF)`;
//! - minutes are encoded big-endian with the sign bit flipped, so byte order is numeric
//!   order for negative minutes too, and a minute range is a key range;
//! - counter keys are minute-major (`minute ‖ ad`), so "every ad of minutes [a, b)" is one
//!   range scan; late-tally keys are ad-major (`len ‖ ad ‖ minute`), so "late clicks of
//!   one ad over a range" is one range scan.

use std::collections::{BTreeMap, BTreeSet};

use adclick_proto::model::{AdId, Minute};
use openraft::{BasicNode, Membership};

use crate::types::{GroupSettings, LogId, StoredMembership};

/// The column family holding every state-machine key of every group on a node.
pub const CF_NAME: &str = "sm";

/// Version byte that starts every structured value (log id, membership, settings, clock,
/// filter). Counters are bare `u64`s and carry none.
pub const VALUE_VERSION: u8 = 1;

/// Length of the group-id prefix of every key.
pub const GROUP_PREFIX_LEN: usize = 8;

/// Key tags: the byte after the group id.
pub mod tag {
    /// Singletons: applied log id, membership, settings, event clock, install marker.
    pub const META: u8 = 0x00;
    /// Filter registry: `name -> (id, canonical expression)`.
    pub const FILTER: u8 = 0x01;
    /// Counter of all accepted clicks: `minute ‖ ad -> u64`.
    pub const COUNT: u8 = 0x02;
    /// Counter of accepted clicks matching a filter: `filter id ‖ minute ‖ ad -> u64`.
    pub const FILTER_COUNT: u8 = 0x03;
    /// Late tally: `ad len ‖ ad ‖ minute -> u64`.
    pub const LATE: u8 = 0x04;
    /// Deduplication index, first layout: one key per id, `minute ‖ event id -> ()`.
    /// Still read (open, snapshot install), no longer written: such ids expire with
    /// their minute, a few minutes after an upgrade.
    pub const DEDUP_IDS: u8 = 0x05;
    /// Deduplication index: the ids one entry counted in one minute, as blocks:
    /// `minute ‖ log index ‖ part:u32 -> dedup block` (see [`super::DedupBlock`]).
    pub const DEDUP: u8 = 0x06;
    /// Upper bound of the group's key range (no key uses it).
    pub const END: u8 = 0xFF;
}

/// Meta key ids: the byte after [`tag::META`].
pub mod meta {
    /// Last applied log id.
    pub const APPLIED: u8 = 0x01;
    /// Last applied membership (with its log id).
    pub const MEMBERSHIP: u8 = 0x02;
    /// Replicated settings (absent: defaults).
    pub const SETTINGS: u8 = 0x03;
    /// Event clock: newest counted event time and watermark (absent: nothing counted).
    pub const CLOCK: u8 = 0x04;
    /// Present only while a snapshot install is replacing the group's keys.
    pub const INSTALLING: u8 = 0x05;
}

/// A value or key that does not decode: the caller turns it into `Error::Corruption` with
/// the location it read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Malformed {
    fn new(what: impl Into<String>) -> Self {
        Malformed(what.into())
    }
}

/// Result of decoding.
pub type DecodeResult<T> = Result<T, Malformed>;

/// The two clocks of a group, stored together: the newest event time ever counted and the
/// watermark. The watermark is kept explicitly (not recomputed from the newest event)
/// because it never moves backward, even when a `Configure` raises the lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventClock {
    /// Newest event time counted, ms since the epoch.
    pub max_event_ms: i64,
    /// `W`: events older than this are late.
    pub watermark_ms: i64,
}

impl EventClock {
    /// Minutes below this one are final: no counter there can change any more.
    pub fn floor(&self) -> Minute {
        Minute::of_ms(self.watermark_ms)
    }
}

/// A filter as registered: its id (the registration's log index) and canonical text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRecord {
    /// The log index of the `CreateFilter` entry; unique for the group's lifetime.
    pub id: u64,
    /// The canonical predicate text (`Filter`'s `Display`).
    pub expr: String,
}

/// Encodes a minute so that byte order is numeric order (sign bit flipped, big-endian).
pub fn minute_bytes(m: Minute) -> [u8; 8] {
    ((m.0 as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`minute_bytes`].
pub fn minute_from(b: [u8; 8]) -> Minute {
    Minute((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

/// Which counter family: all accepted clicks, or those matching one filter (by id).
/// Decides between the [`tag::COUNT`] and [`tag::FILTER_COUNT`] keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Every accepted click.
    All,
    /// Accepted clicks matching the filter with this id.
    Filter(u64),
}

/// Builds every key of one group. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    group: [u8; GROUP_PREFIX_LEN],
}

impl Keys {
    /// Keys of group `group`.
    pub fn new(group: u64) -> Self {
        Keys {
            group: group.to_be_bytes(),
        }
    }

    fn with_tag(&self, tag: u8, extra: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(GROUP_PREFIX_LEN + 1 + extra);
        k.extend_from_slice(&self.group);
        k.push(tag);
        k
    }

    /// The group these keys belong to.
    pub fn group(&self) -> u64 {
        u64::from_be_bytes(self.group)
    }

    /// First key of the group.
    pub fn group_start(&self) -> Vec<u8> {
        self.group.to_vec()
    }

    /// Exclusive end of the group's key range.
    pub fn group_end(&self) -> Vec<u8> {
        self.with_tag(tag::END, 0)
    }

    /// A meta singleton.
    pub fn meta(&self, id: u8) -> Vec<u8> {
        let mut k = self.with_tag(tag::META, 1);
        k.push(id);
        k
    }

    /// A filter registration.
    pub fn filter(&self, name: &str) -> Vec<u8> {
        let mut k = self.with_tag(tag::FILTER, name.len());
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// All filter registrations.
    pub fn filter_range(&self) -> (Vec<u8>, Vec<u8>) {
        (self.with_tag(tag::FILTER, 0), self.with_tag(tag::COUNT, 0))
    }

    /// Counter of `(ad, minute)` over all clicks.
    pub fn count(&self, minute: Minute, ad: &[u8]) -> Vec<u8> {
        self.slot_count(Slot::All, minute, ad)
    }

    /// Counter of `(ad, minute)` in `slot`: [`Keys::count`] or [`Keys::filter_count`].
    pub fn slot_count(&self, slot: Slot, minute: Minute, ad: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(GROUP_PREFIX_LEN + 1 + 16 + ad.len());
        self.slot_count_into(&mut k, slot, minute, ad);
        k
    }

    /// [`Keys::slot_count`] written into `buf` (cleared first), so a commit can reuse one
    /// buffer for all its keys.
    pub fn slot_count_into(&self, buf: &mut Vec<u8>, slot: Slot, minute: Minute, ad: &[u8]) {
        buf.clear();
        buf.extend_from_slice(&self.group);
        match slot {
            Slot::All => buf.push(tag::COUNT),
            Slot::Filter(id) => {
                buf.push(tag::FILTER_COUNT);
                buf.extend_from_slice(&id.to_be_bytes());
            }
        }
        buf.extend_from_slice(&minute_bytes(minute));
        buf.extend_from_slice(ad);
    }

    /// Counters of every ad of `slot` in minutes `[from, to)`.
    pub fn slot_count_range(&self, slot: Slot, from: Minute, to: Minute) -> (Vec<u8>, Vec<u8>) {
        (
            self.slot_count(slot, from, &[]),
            self.slot_count(slot, to, &[]),
        )
    }

    /// Counters of every ad in minutes `[from, to)` over all clicks.
    pub fn count_range(&self, from: Minute, to: Minute) -> (Vec<u8>, Vec<u8>) {
        self.slot_count_range(Slot::All, from, to)
    }

    /// Counter of `(ad, minute)` restricted to filter `id`.
    pub fn filter_count(&self, id: u64, minute: Minute, ad: &[u8]) -> Vec<u8> {
        self.slot_count(Slot::Filter(id), minute, ad)
    }

    /// Counters of filter `id` over minutes `[from, to)`.
    pub fn filter_count_range(&self, id: u64, from: Minute, to: Minute) -> (Vec<u8>, Vec<u8>) {
        self.slot_count_range(Slot::Filter(id), from, to)
    }

    /// Every counter of filter `id`.
    pub fn filter_count_all(&self, id: u64) -> (Vec<u8>, Vec<u8>) {
        let mut a = self.with_tag(tag::FILTER_COUNT, 8);
        a.extend_from_slice(&id.to_be_bytes());
        let b = match id.checked_add(1) {
            Some(next) => {
                let mut b = self.with_tag(tag::FILTER_COUNT, 8);
                b.extend_from_slice(&next.to_be_bytes());
                b
            }
            None => self.with_tag(tag::FILTER_COUNT + 1, 0),
        };
        (a, b)
    }

    /// Late tally of `(ad, minute)`.
    pub fn late(&self, ad: &[u8], minute: Minute) -> Vec<u8> {
        let mut k = self.with_tag(tag::LATE, 1 + ad.len() + 8);
        k.push(ad_len_byte(ad));
        k.extend_from_slice(ad);
        k.extend_from_slice(&minute_bytes(minute));
        k
    }

    /// Late tallies of one ad over minutes `[from, to)`.
    pub fn late_range(&self, ad: &[u8], from: Minute, to: Minute) -> (Vec<u8>, Vec<u8>) {
        (self.late(ad, from), self.late(ad, to))
    }

    /// Dedup key of the first layout ([`tag::DEDUP_IDS`]): `event_id` under the minute
    /// its click counted in.
    pub fn dedup_id(&self, minute: Minute, event_id: &[u8]) -> Vec<u8> {
        let mut k = self.with_tag(tag::DEDUP_IDS, 8 + event_id.len());
        k.extend_from_slice(&minute_bytes(minute));
        k.extend_from_slice(event_id);
        k
    }

    /// Part `part` of the dedup block of the ids entry `index` counted in `minute`.
    pub fn dedup_block(&self, minute: Minute, index: u64, part: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(GROUP_PREFIX_LEN + 1 + 20);
        self.dedup_block_into(&mut k, minute, index, part);
        k
    }

    /// [`Keys::dedup_block`] written into `buf` (cleared first).
    pub fn dedup_block_into(&self, buf: &mut Vec<u8>, minute: Minute, index: u64, part: u32) {
        buf.clear();
        buf.extend_from_slice(&self.group);
        buf.push(tag::DEDUP);
        buf.extend_from_slice(&minute_bytes(minute));
        buf.extend_from_slice(&index.to_be_bytes());
        buf.extend_from_slice(&part.to_be_bytes());
    }

    /// The dedup keys of minutes older than `floor`, both layouts: two ranges.
    pub fn dedup_below(&self, floor: Minute) -> [(Vec<u8>, Vec<u8>); 2] {
        let below = |t: u8| {
            let mut end = self.with_tag(t, 8);
            end.extend_from_slice(&minute_bytes(floor));
            (self.with_tag(t, 0), end)
        };
        [below(tag::DEDUP_IDS), below(tag::DEDUP)]
    }

    /// Every dedup key of layout `tag` ([`tag::DEDUP_IDS`] or [`tag::DEDUP`]).
    pub fn dedup_all(&self, tag: u8) -> (Vec<u8>, Vec<u8>) {
        (self.with_tag(tag, 0), self.with_tag(tag + 1, 0))
    }

    /// The key without its group prefix (the form stored in snapshots), if it is one of
    /// this group's keys.
    pub fn strip<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        key.strip_prefix(&self.group[..])
    }

    /// A snapshot key (without group prefix) re-homed into this group.
    pub fn rehome(&self, suffix: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(GROUP_PREFIX_LEN + suffix.len());
        self.rehome_into(&mut k, suffix);
        k
    }

    /// [`Keys::rehome`] written into `buf` (cleared first), for loops over many records.
    pub fn rehome_into(&self, buf: &mut Vec<u8>, suffix: &[u8]) {
        buf.clear();
        buf.extend_from_slice(&self.group);
        buf.extend_from_slice(suffix);
    }
}

fn ad_len_byte(ad: &[u8]) -> u8 {
    // AdId guarantees 1..=64 bytes, so the length always fits.
    assert!(
        ad.len() <= usize::from(u8::MAX),
        "ad id of {} bytes",
        ad.len()
    );
    ad.len() as u8
}

/// Splits the suffix of a counter key (after group and tag, or after the filter id) into
/// minute and ad.
pub fn split_minute_ad(rest: &[u8]) -> DecodeResult<(Minute, AdId)> {
    if rest.len() < 9 {
        return Err(Malformed::new(format!(
            "counter key suffix of {} bytes",
            rest.len()
        )));
    }
    let (m, ad) = rest.split_at(8);
    let minute = minute_from(fixed8(m)?);
    let ad = AdId::from_bytes(bytes::Bytes::copy_from_slice(ad))
        .map_err(|e| Malformed::new(format!("counter key ad id: {e}")))?;
    Ok((minute, ad))
}

/// Parses the key of a `COUNT` entry of group `keys`.
pub fn parse_count_key(keys: &Keys, key: &[u8]) -> DecodeResult<(Minute, AdId)> {
    let rest = keys
        .strip(key)
        .and_then(|k| k.strip_prefix(&[tag::COUNT]))
        .ok_or_else(|| Malformed::new("not a counter key"))?;
    split_minute_ad(rest)
}

/// Parses the key of a `FILTER_COUNT` entry of group `keys`.
pub fn parse_filter_count_key(keys: &Keys, key: &[u8]) -> DecodeResult<(u64, Minute, AdId)> {
    let rest = keys
        .strip(key)
        .and_then(|k| k.strip_prefix(&[tag::FILTER_COUNT]))
        .ok_or_else(|| Malformed::new("not a filter counter key"))?;
    if rest.len() < 8 {
        return Err(Malformed::new("filter counter key too short"));
    }
    let (id, rest) = rest.split_at(8);
    let (minute, ad) = split_minute_ad(rest)?;
    Ok((u64::from_be_bytes(fixed8(id)?), minute, ad))
}

/// Parses the key of a counter of `slot` (a `COUNT` or `FILTER_COUNT` key of that filter).
pub fn parse_slot_count_key(keys: &Keys, slot: Slot, key: &[u8]) -> DecodeResult<(Minute, AdId)> {
    match slot {
        Slot::All => parse_count_key(keys, key),
        Slot::Filter(want) => {
            let (id, minute, ad) = parse_filter_count_key(keys, key)?;
            if id != want {
                return Err(Malformed::new(format!(
                    "counter of filter {id} where filter {want} was read"
                )));
            }
            Ok((minute, ad))
        }
    }
}

/// The minute of a `LATE` key (its last 8 bytes).
pub fn late_key_minute(key: &[u8]) -> DecodeResult<Minute> {
    let at = key
        .len()
        .checked_sub(8)
        .ok_or_else(|| Malformed::new("late key too short"))?;
    Ok(minute_from(fixed8(&key[at..])?))
}

/// Parses the key of a `LATE` entry of group `keys`: ad and minute.
pub fn parse_late_key(keys: &Keys, key: &[u8]) -> DecodeResult<(AdId, Minute)> {
    let rest = keys
        .strip(key)
        .and_then(|k| k.strip_prefix(&[tag::LATE]))
        .ok_or_else(|| Malformed::new("not a late key"))?;
    let (&len, rest) = rest
        .split_first()
        .ok_or_else(|| Malformed::new("late key too short"))?;
    if rest.len() != usize::from(len) + 8 {
        return Err(Malformed::new(format!(
            "late key of ad length {len} has {} bytes after the length",
            rest.len()
        )));
    }
    let (ad, m) = rest.split_at(usize::from(len));
    let ad = AdId::from_bytes(bytes::Bytes::copy_from_slice(ad))
        .map_err(|e| Malformed::new(format!("late key ad id: {e}")))?;
    Ok((ad, minute_from(fixed8(m)?)))
}

/// Parses the key of a `DEDUP_IDS` entry (first layout): minute and event id bytes.
pub fn parse_dedup_id_key<'k>(keys: &Keys, key: &'k [u8]) -> DecodeResult<(Minute, &'k [u8])> {
    let rest = keys
        .strip(key)
        .and_then(|k| k.strip_prefix(&[tag::DEDUP_IDS]))
        .ok_or_else(|| Malformed::new("not a dedup id key"))?;
    if rest.len() < 9 {
        return Err(Malformed::new("dedup key too short"));
    }
    let (m, id) = rest.split_at(8);
    Ok((minute_from(fixed8(m)?), id))
}

/// Parses the key of a `DEDUP` block: minute, log index and part.
pub fn parse_dedup_block_key(keys: &Keys, key: &[u8]) -> DecodeResult<(Minute, u64, u32)> {
    let rest = keys
        .strip(key)
        .and_then(|k| k.strip_prefix(&[tag::DEDUP]))
        .ok_or_else(|| Malformed::new("not a dedup block key"))?;
    if rest.len() != 20 {
        return Err(Malformed::new(format!(
            "dedup block key of {} bytes after the tag",
            rest.len()
        )));
    }
    let part = u32::from_be_bytes([rest[16], rest[17], rest[18], rest[19]]);
    Ok((
        minute_from(fixed8(&rest[..8])?),
        u64::from_be_bytes(fixed8(&rest[8..16])?),
        part,
    ))
}

/// Longest event id (as `EventId` admits).
const MAX_EVENT_ID_LEN: usize = 64;

/// The value of a dedup block: `VALUE_VERSION ‖ (id_len:u8 ‖ id)+`, ids of 1–64 bytes in
/// the order their clicks were accepted, at most [`DedupBlock::MAX_LEN`] bytes (a longer
/// run of ids continues in the next part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupBlock(Vec<u8>);

impl DedupBlock {
    /// Largest block value: far below the snapshot's 1 MiB value limit, and small enough
    /// that RocksDB handles it like any other value.
    pub const MAX_LEN: usize = 64 * 1024;

    /// An empty block (not valid until an id is pushed).
    pub fn new() -> Self {
        let mut b = Vec::with_capacity(4096);
        b.push(VALUE_VERSION);
        DedupBlock(b)
    }

    /// Whether `id` fits without exceeding [`DedupBlock::MAX_LEN`].
    pub fn fits(&self, id: &[u8]) -> bool {
        self.0.len() + 1 + id.len() <= Self::MAX_LEN
    }

    /// Appends `id` (1–64 bytes: the caller validated the click).
    pub fn push(&mut self, id: &[u8]) {
        assert!(
            (1..=MAX_EVENT_ID_LEN).contains(&id.len()),
            "dedup id of {} bytes",
            id.len()
        );
        self.0.push(id.len() as u8);
        self.0.extend_from_slice(id);
    }

    /// The encoded value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Default for DedupBlock {
    fn default() -> Self {
        Self::new()
    }
}

/// Calls `f` with every id of the dedup block value `b`, after checking the whole value
/// (version, at least one id, every id 1–64 bytes, no trailing byte).
pub fn decode_dedup_block<'b>(b: &'b [u8], mut f: impl FnMut(&'b [u8])) -> DecodeResult<()> {
    let (&version, mut rest) = b
        .split_first()
        .ok_or_else(|| Malformed::new("empty dedup block"))?;
    if version != VALUE_VERSION {
        return Err(Malformed::new(format!(
            "dedup block version {version}, expected {VALUE_VERSION}"
        )));
    }
    if rest.is_empty() {
        return Err(Malformed::new("dedup block without ids"));
    }
    let mut ids = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > MAX_EVENT_ID_LEN || len > tail.len() {
            return Err(Malformed::new(format!(
                "dedup block id of length {len} with {} bytes left",
                tail.len()
            )));
        }
        let (id, next) = tail.split_at(len);
        ids.push(id);
        rest = next;
    }
    // Only after the whole value checked out: a caller never sees half a bad block.
    ids.into_iter().for_each(&mut f);
    Ok(())
}

/// Parses the key of a `FILTER` entry: the filter name.
pub fn parse_filter_key<'k>(keys: &Keys, key: &'k [u8]) -> DecodeResult<&'k str> {
    let rest = keys
        .strip(key)
        .and_then(|k| k.strip_prefix(&[tag::FILTER]))
        .ok_or_else(|| Malformed::new("not a filter key"))?;
    std::str::from_utf8(rest).map_err(|_| Malformed::new("filter name is not UTF-8"))
}

fn fixed8(b: &[u8]) -> DecodeResult<[u8; 8]> {
    b.try_into()
        .map_err(|_| Malformed::new(format!("expected 8 bytes, found {}", b.len())))
}

/// A counter or tally value: `u64` big-endian.
pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Inverse of [`encode_u64`].
pub fn decode_u64(b: &[u8]) -> DecodeResult<u64> {
    Ok(u64::from_be_bytes(fixed8(b)?))
}

/// Largest plausible counter or late tally: 2^62 clicks of one ad in one minute is
/// millions of years of the whole system's traffic. A stored value above it can only be
/// damage or a hostile snapshot, and refusing it keeps every later `+` far from overflow.
pub const MAX_COUNT: u64 = 1 << 62;

/// A counter or late-tally value: [`decode_u64`], refusing values above [`MAX_COUNT`].
pub fn decode_count(b: &[u8]) -> DecodeResult<u64> {
    let n = decode_u64(b)?;
    if n > MAX_COUNT {
        return Err(Malformed::new(format!("implausible count {n}")));
    }
    Ok(n)
}

/// A little cursor for the structured encodings below.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, naming it `what` in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Malformed::new(format!(
                "{}: needs {n} more bytes, has {}",
                self.what,
                self.buf.len()
            )));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// Takes one byte.
    pub fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.take(1)?[0])
    }

    /// Takes a big-endian `u32`.
    pub fn u32(&mut self) -> DecodeResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes a big-endian `u64`.
    pub fn u64(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_be_bytes(fixed8(self.take(8)?)?))
    }

    /// Takes a big-endian `i64`.
    pub fn i64(&mut self) -> DecodeResult<i64> {
        Ok(self.u64()? as i64)
    }

    /// Checks the version byte.
    pub fn version(&mut self) -> DecodeResult<()> {
        match self.u8()? {
            VALUE_VERSION => Ok(()),
            v => Err(Malformed::new(format!(
                "{}: unknown version {v}",
                self.what
            ))),
        }
    }

    /// The bytes not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if bytes are left over.
    pub fn finish(self) -> DecodeResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Malformed::new(format!(
                "{}: {} trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
}

fn put_log_id(out: &mut Vec<u8>, id: &LogId) {
    out.extend_from_slice(&id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&id.leader_id.node_id.to_be_bytes());
    out.extend_from_slice(&id.index.to_be_bytes());
}

fn get_log_id(r: &mut Reader<'_>) -> DecodeResult<LogId> {
    let term = r.u64()?;
    let node_id = r.u64()?;
    let index = r.u64()?;
    Ok(crate::types::log_id(term, node_id, index))
}

/// The applied log id: `version ‖ term ‖ node ‖ index`.
pub fn encode_log_id(id: &LogId) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    put_log_id(&mut out, id);
    out
}

/// Inverse of [`encode_log_id`].
pub fn decode_log_id(b: &[u8]) -> DecodeResult<LogId> {
    let mut r = Reader::new(b, "log id");
    r.version()?;
    let id = get_log_id(&mut r)?;
    r.finish()?;
    Ok(id)
}

/// An optional log id inside a larger encoding: `0` or `1 ‖ log id`.
pub fn put_opt_log_id(out: &mut Vec<u8>, id: Option<&LogId>) {
    match id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            put_log_id(out, id);
        }
    }
}

/// Inverse of [`put_opt_log_id`].
pub fn get_opt_log_id(r: &mut Reader<'_>) -> DecodeResult<Option<LogId>> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(get_log_id(r)?)),
        f => Err(Malformed::new(format!("log id presence flag {f}"))),
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // Membership lists are tiny; a u32 is plenty and the assert documents the bound.
    assert!(
        u32::try_from(n).is_ok(),
        "list of {n} items does not fit a u32 length"
    );
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

/// The stored membership: `version ‖ opt log id ‖ configs ‖ nodes` (see the doc).
pub fn encode_membership(m: &StoredMembership) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    put_opt_log_id(&mut out, m.log_id().as_ref());
    let configs = m.membership().get_joint_config();
    put_len(&mut out, configs.len());
    for config in configs {
        put_len(&mut out, config.len());
        for id in config {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    put_len(&mut out, nodes.len());
    for (id, node) in nodes {
        out.extend_from_slice(&id.to_be_bytes());
        put_len(&mut out, node.addr.len());
        out.extend_from_slice(node.addr.as_bytes());
    }
    out
}

/// Inverse of [`encode_membership`].
pub fn decode_membership(b: &[u8]) -> DecodeResult<StoredMembership> {
    let mut r = Reader::new(b, "membership");
    r.version()?;
    let m = get_membership_body(&mut r)?;
    r.finish()?;
    Ok(m)
}

/// Decodes the body of [`encode_membership`] (after the version byte) from a larger buffer.
pub fn get_membership_body(r: &mut Reader<'_>) -> DecodeResult<StoredMembership> {
    let log_id = get_opt_log_id(r)?;
    let n_configs = r.u32()?;
    let mut configs = Vec::new();
    for _ in 0..n_configs {
        let n = r.u32()?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            set.insert(r.u64()?);
        }
        configs.push(set);
    }
    let n_nodes = r.u32()?;
    let mut nodes = BTreeMap::new();
    for _ in 0..n_nodes {
        let id = r.u64()?;
        let len = r.u32()? as usize;
        let addr = std::str::from_utf8(r.take(len)?)
            .map_err(|_| Malformed::new("node address is not UTF-8"))?
            .to_owned();
        nodes.insert(id, BasicNode { addr });
    }
    let membership =
        Membership::new(configs, nodes).map_err(|e| Malformed::new(format!("membership: {e}")))?;
    Ok(StoredMembership::new(log_id, membership))
}

/// Settings: `version ‖ allowed_lateness_ms i64 ‖ max_future_skew_ms i64`.
pub fn encode_settings(s: &GroupSettings) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    out.extend_from_slice(&s.allowed_lateness_ms.to_be_bytes());
    out.extend_from_slice(&s.max_future_skew_ms.to_be_bytes());
    out
}

/// Inverse of [`encode_settings`].
pub fn decode_settings(b: &[u8]) -> DecodeResult<GroupSettings> {
    let mut r = Reader::new(b, "settings");
    r.version()?;
    let s = GroupSettings {
        allowed_lateness_ms: r.i64()?,
        max_future_skew_ms: r.i64()?,
    };
    r.finish()?;
    Ok(s)
}

/// Event clock: `version ‖ max_event_ms i64 ‖ watermark_ms i64`.
pub fn encode_clock(c: &EventClock) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    out.extend_from_slice(&c.max_event_ms.to_be_bytes());
    out.extend_from_slice(&c.watermark_ms.to_be_bytes());
    out
}

/// Inverse of [`encode_clock`].
pub fn decode_clock(b: &[u8]) -> DecodeResult<EventClock> {
    let mut r = Reader::new(b, "event clock");
    r.version()?;
    let c = EventClock {
        max_event_ms: r.i64()?,
        watermark_ms: r.i64()?,
    };
    r.finish()?;
    Ok(c)
}

/// Filter registration: `version ‖ id u64 ‖ canonical expression (UTF-8, rest)`.
pub fn encode_filter(f: &FilterRecord) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    out.extend_from_slice(&f.id.to_be_bytes());
    out.extend_from_slice(f.expr.as_bytes());
    out
}

/// Inverse of [`encode_filter`].
pub fn decode_filter(b: &[u8]) -> DecodeResult<FilterRecord> {
    let mut r = Reader::new(b, "filter");
    r.version()?;
    let id = r.u64()?;
    let expr = std::str::from_utf8(r.rest())
        .map_err(|_| Malformed::new("filter expression is not UTF-8"))?
        .to_owned();
    Ok(FilterRecord { id, expr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_bytes_sort_like_minutes_across_zero() {
        let ms = [i64::MIN, -1_000_000, -1, 0, 1, 29_000_000, i64::MAX];
        for w in ms.windows(2) {
            assert!(
                minute_bytes(Minute(w[0])) < minute_bytes(Minute(w[1])),
                "{w:?}"
            );
        }
        for m in ms {
            assert_eq!(minute_from(minute_bytes(Minute(m))), Minute(m));
        }
    }

    #[test]
    fn every_group_key_lies_inside_the_group_range() {
        let k = Keys::new(7);
        let (start, end) = (k.group_start(), k.group_end());
        let ad = b"ad-1";
        for key in [
            k.meta(meta::APPLIED),
            k.filter("f"),
            k.count(Minute(-5), ad),
            k.filter_count(u64::MAX, Minute(5), ad),
            k.late(ad, Minute(i64::MAX)),
            k.dedup_id(Minute(i64::MAX), &[0xFF; 64]),
            k.dedup_block(Minute(i64::MAX), u64::MAX, u32::MAX),
        ] {
            assert!(start <= key && key < end, "{key:?}");
            assert!(!(Keys::new(6).group_start() <= key && key < Keys::new(6).group_end()));
        }
    }

    #[test]
    fn counter_and_dedup_keys_keep_their_bytes() {
        // The on-disk layout of docs/state-format.md, pinned byte by byte.
        let k = Keys::new(0x0102);
        let g = [0, 0, 0, 0, 0, 0, 1, 2];
        let m = [0x80, 0, 0, 0, 0, 0, 0, 5];
        let cat = |parts: &[&[u8]]| parts.concat();
        assert_eq!(k.count(Minute(5), b"ad"), cat(&[&g, &[0x02], &m, b"ad"]));
        assert_eq!(
            k.filter_count(9, Minute(5), b"ad"),
            cat(&[&g, &[0x03], &9u64.to_be_bytes(), &m, b"ad"])
        );
        assert_eq!(
            k.slot_count(Slot::Filter(9), Minute(5), b"ad"),
            k.filter_count(9, Minute(5), b"ad")
        );
        assert_eq!(k.dedup_id(Minute(5), b"e1"), cat(&[&g, &[0x05], &m, b"e1"]));
        assert_eq!(
            k.dedup_block(Minute(5), 7, 1),
            cat(&[&g, &[0x06], &m, &7u64.to_be_bytes(), &1u32.to_be_bytes()])
        );
        let mut buf = b"junk".to_vec();
        k.dedup_block_into(&mut buf, Minute(5), 7, 1);
        assert_eq!(buf, k.dedup_block(Minute(5), 7, 1));
        assert_eq!(
            parse_dedup_block_key(&k, &buf),
            Ok((Minute(5), 7, 1)),
            "round trip"
        );
        k.slot_count_into(&mut buf, Slot::All, Minute(5), b"ad");
        assert_eq!(buf, k.count(Minute(5), b"ad"));
        assert_eq!(
            parse_slot_count_key(&k, Slot::Filter(9), &k.filter_count(9, Minute(5), b"ad")),
            Ok((Minute(5), AdId::new("ad").expect("ad")))
        );
        assert!(
            parse_slot_count_key(&k, Slot::Filter(8), &k.filter_count(9, Minute(5), b"ad"))
                .is_err()
        );
    }

    #[test]
    fn dedup_blocks_round_trip_and_refuse_damage() {
        let mut b = DedupBlock::new();
        b.push(b"e1");
        b.push(&[7; 64]);
        assert_eq!(b.as_bytes()[..4], [VALUE_VERSION, 2, b'e', b'1']);
        let mut ids = Vec::new();
        assert_eq!(decode_dedup_block(b.as_bytes(), |id| ids.push(id)), Ok(()));
        assert_eq!(ids, [b"e1".as_slice(), &[7; 64]]);
        for bad in [
            vec![],
            vec![VALUE_VERSION],
            vec![2, 1, b'x'],
            vec![VALUE_VERSION, 0],
            vec![VALUE_VERSION, 3, b'a', b'b'],
            [vec![VALUE_VERSION, 65], vec![1; 65]].concat(),
        ] {
            let mut seen = 0;
            assert!(decode_dedup_block(&bad, |_| seen += 1).is_err(), "{bad:?}");
            assert_eq!(seen, 0, "{bad:?}: ids of a refused block were passed on");
        }
        let mut full = DedupBlock::new();
        while full.fits(&[1; 64]) {
            full.push(&[1; 64]);
        }
        assert!(full.as_bytes().len() <= DedupBlock::MAX_LEN);
        assert!(full.as_bytes().len() > DedupBlock::MAX_LEN - 65);
    }

    #[test]
    fn late_range_of_one_ad_excludes_ads_it_prefixes() {
        let k = Keys::new(1);
        let (a, b) = k.late_range(b"ad", Minute(i64::MIN), Minute(i64::MAX));
        let longer = k.late(b"ad1", Minute(0));
        assert!(!(a <= longer && longer < b));
        assert!(a <= k.late(b"ad", Minute(3)) && k.late(b"ad", Minute(3)) < b);
    }

    #[test]
    fn structured_values_round_trip() {
        let id = crate::types::log_id(3, 9, 42);
        assert_eq!(decode_log_id(&encode_log_id(&id)), Ok(id));
        let mut nodes = BTreeMap::new();
        nodes.insert(1u64, BasicNode { addr: "a:1".into() });
        nodes.insert(2u64, BasicNode { addr: "b:2".into() });
        nodes.insert(
            5u64,
            BasicNode {
                addr: String::new(),
            },
        );
        let m = Membership::new(vec![[1u64, 2].into_iter().collect()], nodes)
            .expect("valid membership");
        let sm = StoredMembership::new(Some(id), m);
        assert_eq!(decode_membership(&encode_membership(&sm)), Ok(sm));
        let s = GroupSettings {
            allowed_lateness_ms: 7,
            max_future_skew_ms: -1,
        };
        assert_eq!(decode_settings(&encode_settings(&s)), Ok(s));
        let c = EventClock {
            max_event_ms: -5,
            watermark_ms: -300_005,
        };
        assert_eq!(decode_clock(&encode_clock(&c)), Ok(c));
        let f = FilterRecord {
            id: 12,
            expr: "country = \"US\"".into(),
        };
        assert_eq!(decode_filter(&encode_filter(&f)), Ok(f));
    }

    #[test]
    fn truncated_values_are_malformed_not_panics() {
        let full = encode_clock(&EventClock {
            max_event_ms: 1,
            watermark_ms: 2,
        });
        for n in 0..full.len() {
            assert!(decode_clock(&full[..n]).is_err());
        }
        assert!(decode_u64(&[1, 2, 3]).is_err());
        assert!(decode_membership(&[VALUE_VERSION, 0, 0, 0, 0, 9]).is_err());
    }
}
