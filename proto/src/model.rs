//! Domain types shared by every adclick crate: a click, the identifiers inside it, the
//! per-event outcome of an ingest, and the minute arithmetic that decides where a click
//! counts.
//!
//! These types are the validated form of data. Constructors check every rule the design
//! states (lengths, alphabets, address syntax), so a value of one of these types is always
//! well-formed; wire messages and text formats become domain values only through the
//! fallible conversions in this crate, never by field access.
//!
//! Nothing here depends on tonic: the storage engine uses this module with the crate's
//! `grpc` feature turned off.

use std::fmt;
use std::net::IpAddr;

use bytes::Bytes;

/// Longest accepted `event_id`, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 64;
/// Longest accepted `ad_id`, in bytes.
pub const MAX_AD_ID_LEN: usize = 64;
/// Longest accepted `user_id`, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest accepted `country`, in bytes.
pub const MAX_COUNTRY_LEN: usize = 64;
/// Milliseconds in one minute: the width of an aggregation bucket.
pub const MS_PER_MINUTE: i64 = 60_000;

/// Why a value could not become a domain type. Every variant is an input error: the
/// caller should fix the data, not retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A field that must be present was empty or missing.
    #[error("{field} is required")]
    Missing {
        /// The field's name, as on the wire.
        field: &'static str,
    },
    /// A field was longer than its limit.
    #[error("{field} is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// The field's name, as on the wire.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A field held a character outside its alphabet.
    #[error("{field} contains {found:?}, outside [A-Za-z0-9_.:-]")]
    BadChar {
        /// The field's name, as on the wire.
        field: &'static str,
        /// The first offending character.
        found: char,
    },
    /// A field did not parse (an IP address, a timestamp, a number...).
    #[error("{field}: {reason}")]
    Malformed {
        /// The field's name, as on the wire.
        field: &'static str,
        /// What was wrong, for a human.
        reason: String,
    },
}

impl InvalidInput {
    /// The name of the field the error is about, as on the wire.
    pub fn field(&self) -> &'static str {
        match self {
            InvalidInput::Missing { field }
            | InvalidInput::TooLong { field, .. }
            | InvalidInput::BadChar { field, .. }
            | InvalidInput::Malformed { field, .. } => field,
        }
    }

    /// The same error, naming `field` (e.g. the wire field) instead of the one it had.
    pub fn with_field(self, field: &'static str) -> Self {
        match self {
            InvalidInput::Missing { .. } => InvalidInput::Missing { field },
            InvalidInput::TooLong { len, max, .. } => InvalidInput::TooLong { field, len, max },
            InvalidInput::BadChar { found, .. } => InvalidInput::BadChar { field, found },
            InvalidInput::Malformed { reason, .. } => InvalidInput::Malformed { field, reason },
        }
    }
}

/// `TooLong` if `len` (bytes) exceeds `max`.
pub(crate) fn check_max(field: &'static str, len: usize, max: usize) -> Result<(), InvalidInput> {
    if len > max {
        return Err(InvalidInput::TooLong { field, len, max });
    }
    Ok(())
}

/// A required field of at most `max` bytes: `Missing` if `len` is 0, else as [`check_max`].
pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), InvalidInput> {
    if len == 0 {
        return Err(InvalidInput::Missing { field });
    }
    check_max(field, len, max)
}

/// Identifier of one click, unique per click: 1 to 64 arbitrary bytes. Clients generate a
/// UUIDv7 by default; the seed format derives one from the file and line offset. Retries
/// reuse it, which is what makes them safe.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Bytes);

impl EventId {
    /// Validates and wraps an event id.
    pub fn new(bytes: impl Into<Bytes>) -> Result<Self, InvalidInput> {
        let bytes = bytes.into();
        check_len("event_id", bytes.len(), MAX_EVENT_ID_LEN)?;
        Ok(Self(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id as shared bytes (cheap clone).
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl fmt::Display for EventId {
    /// Printable ids show as text; others as hex, so logs never hold raw binary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.chars().all(|c| c.is_ascii_graphic()) => f.write_str(s),
            _ => {
                f.write_str("0x")?;
                for b in self.0.iter() {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// The shard key of an ad id's bytes, `xxh3_64(ad_id)`, valid or not: a server can route a
/// click before validating it (the group's leader validates it).
pub fn shard_key(ad_id: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(ad_id)
}

/// Identifier of an ad: 1 to 64 bytes of `[A-Za-z0-9_.:-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdId(Bytes);

impl AdId {
    /// Validates and wraps an ad id.
    pub fn new(s: &str) -> Result<Self, InvalidInput> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Validates and wraps an ad id given as bytes (as stored).
    pub fn from_bytes(bytes: Bytes) -> Result<Self, InvalidInput> {
        check_len("ad_id", bytes.len(), MAX_AD_ID_LEN)?;
        if let Some(&b) = bytes.iter().find(|&&b| !is_ad_id_byte(b)) {
            return Err(InvalidInput::BadChar {
                field: "ad_id",
                found: char::from(b),
            });
        }
        Ok(Self(bytes))
    }

    /// The id as text (always ASCII).
    pub fn as_str(&self) -> &str {
        // Construction admits only ASCII bytes, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shard key: `xxh3_64(ad_id)`. One ad always lands in one Raft group.
    pub fn shard_key(&self) -> u64 {
        shard_key(&self.0)
    }
}

impl TryFrom<String> for AdId {
    type Error = InvalidInput;

    /// Validates and wraps an owned ad id; `String` -> `Bytes` reuses the allocation.
    fn try_from(s: String) -> Result<Self, InvalidInput> {
        Self::from_bytes(Bytes::from(s.into_bytes()))
    }
}

fn is_ad_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

impl fmt::Debug for AdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdId({})", self.as_str())
    }
}

impl fmt::Display for AdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A minute since the Unix epoch (UTC): `floor(ms / 60_000)`. The unit of aggregation,
/// watermarks and finality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Minute(pub i64);

impl Minute {
    /// The minute that contains `ms` (floor division, so negative times are handled).
    pub fn of_ms(ms: i64) -> Self {
        Minute(ms.div_euclid(MS_PER_MINUTE))
    }

    /// The first millisecond of this minute.
    pub fn start_ms(self) -> i64 {
        self.0.saturating_mul(MS_PER_MINUTE)
    }
}

impl fmt::Display for Minute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match time::OffsetDateTime::from_unix_timestamp(self.0.saturating_mul(60)) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            ),
            Err(_) => write!(f, "minute#{}", self.0),
        }
    }
}

/// A half-open range of minutes `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MinuteRange {
    /// First minute included.
    pub from: Minute,
    /// First minute excluded.
    pub to: Minute,
}

impl MinuteRange {
    /// A range `[from, to)`; an error if `to < from`.
    pub fn new(from: Minute, to: Minute) -> Result<Self, InvalidInput> {
        if to < from {
            return Err(InvalidInput::Malformed {
                field: "range",
                reason: format!("range ends ({to}) before it starts ({from})"),
            });
        }
        Ok(Self { from, to })
    }

    /// The last `m` minutes ending with (and including) minute `now`.
    pub fn last(m: u32, now: Minute) -> Self {
        Self {
            from: Minute(now.0 - i64::from(m) + 1),
            to: Minute(now.0 + 1),
        }
    }

    /// Whether `minute` lies in the range.
    pub fn contains(&self, minute: Minute) -> bool {
        self.from <= minute && minute < self.to
    }

    /// Number of minutes in the range.
    pub fn len(&self) -> u64 {
        self.to.0.abs_diff(self.from.0)
    }

    /// Whether the range holds no minute.
    pub fn is_empty(&self) -> bool {
        self.to <= self.from
    }
}

/// One ad click, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// Unique id of this click.
    pub event_id: EventId,
    /// The ad clicked.
    pub ad_id: AdId,
    /// Click time, milliseconds since the Unix epoch, UTC. Decides the minute it counts in.
    pub event_time_ms: i64,
    /// Who clicked (opaque, at most 128 bytes; may be empty).
    pub user_id: String,
    /// Client address.
    pub ip: IpAddr,
    /// Country (free text, as the source gives it; may be empty).
    pub country: String,
}

impl Click {
    /// Checks the free-text fields' limits; ids and the address are checked by their types.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_max("user_id", self.user_id.len(), MAX_USER_ID_LEN)?;
        check_max("country", self.country.len(), MAX_COUNTRY_LEN)
    }

    /// The minute this click counts in.
    pub fn minute(&self) -> Minute {
        Minute::of_ms(self.event_time_ms)
    }
}

/// Why an event was rejected. Rejected events are never counted and never retried with
/// success: the data itself is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// `event_time` is more than `max_future_skew` ahead of the leader's clock.
    FutureEvent,
    /// A field failed validation (only reachable for data that bypassed the edge checks).
    Invalid,
}

impl RejectReason {
    /// A short, stable, machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::FutureEvent => "future_event",
            RejectReason::Invalid => "invalid",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to one event of an ingested batch, decided at apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Counted, exactly once.
    Accepted,
    /// Its event id was already counted in this shard; not counted again.
    Duplicate,
    /// Older than the watermark: kept in the raw log and the late tally, not counted.
    Late,
    /// Not counted, for the given reason.
    Rejected(RejectReason),
}

impl Outcome {
    /// A short, stable name: `accepted`, `duplicate`, `late`, `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Late => "late",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// Per-outcome totals of a batch, as reported to producers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events counted.
    pub accepted: u64,
    /// Events already counted before.
    pub duplicate: u64,
    /// Events older than the watermark.
    pub late: u64,
    /// Events refused.
    pub rejected: u64,
}

impl Tally {
    /// Adds one outcome.
    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Late => self.late += 1,
            Outcome::Rejected(_) => self.rejected += 1,
        }
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: &Tally) {
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        self.late += other.late;
        self.rejected += other.rejected;
    }

    /// Events in all.
    pub fn total(&self) -> u64 {
        self.accepted + self.duplicate + self.late + self.rejected
    }
}

/// One row of a top-N answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdCount {
    /// The ad.
    pub ad_id: AdId,
    /// Its clicks in the range.
    pub count: u64,
}

/// Sorts rows the way every top-N answer is ordered: count descending, ties by `ad_id`
/// ascending, so the answer is exact and the same on every node.
pub fn sort_top(rows: &mut [AdCount]) {
    rows.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.ad_id.cmp(&b.ad_id)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ad_id_accepts_its_alphabet_and_refuses_the_rest() {
        assert!(AdId::new("ad001").is_ok());
        assert!(AdId::new("camp-1:ad_2.x").is_ok());
        assert_eq!(
            AdId::new("ad 1"),
            Err(InvalidInput::BadChar {
                field: "ad_id",
                found: ' '
            })
        );
        assert_eq!(AdId::new(""), Err(InvalidInput::Missing { field: "ad_id" }));
        assert!(matches!(
            AdId::new(&"a".repeat(65)),
            Err(InvalidInput::TooLong { len: 65, .. })
        ));
        assert!(AdId::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn event_id_is_one_to_sixty_four_bytes() {
        assert!(EventId::new(vec![0u8; 64]).is_ok());
        assert!(EventId::new(vec![0u8; 65]).is_err());
        assert!(EventId::new(Vec::new()).is_err());
    }

    #[test]
    fn event_id_displays_binary_as_hex() {
        let id = EventId::new(vec![0u8, 255]).expect("valid");
        assert_eq!(id.to_string(), "0x00ff");
        let id = EventId::new(&b"abc-1"[..]).expect("valid");
        assert_eq!(id.to_string(), "abc-1");
    }

    #[test]
    fn minute_floors_negative_times() {
        assert_eq!(Minute::of_ms(0), Minute(0));
        assert_eq!(Minute::of_ms(59_999), Minute(0));
        assert_eq!(Minute::of_ms(60_000), Minute(1));
        assert_eq!(Minute::of_ms(-1), Minute(-1));
    }

    #[test]
    fn last_m_minutes_includes_the_current_minute() {
        let r = MinuteRange::last(5, Minute(100));
        assert_eq!((r.from, r.to), (Minute(96), Minute(101)));
        assert_eq!(r.len(), 5);
        assert!(r.contains(Minute(100)) && !r.contains(Minute(95)));
    }

    #[test]
    fn top_rows_sort_by_count_then_ad_id() {
        let row = |a: &str, c| AdCount {
            ad_id: AdId::new(a).expect("valid"),
            count: c,
        };
        let mut rows = vec![row("b", 2), row("a", 2), row("c", 5)];
        sort_top(&mut rows);
        let ids: Vec<_> = rows.iter().map(|r| r.ad_id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
    }
}
