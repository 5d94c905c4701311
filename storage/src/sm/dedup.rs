//! The in-memory deduplication index of one group: event id -> the minute its click was
//! counted in.
//!
//! The index answers "was this id counted in a minute that is still open?". An id is
//! *live* while its minute is at or above the floor (the watermark's minute); once the
//! watermark moves past its whole minute the id expires, and a retry of it can only be
//! late (or, with a newer event time, counted again — the documented limit of
//! deduplication). The map is keyed by id rather than by (minute, id) so that a retry
//! carrying a different event time is still recognised.
//!
//! Expiry is lazy: raising the floor only makes older entries invisible to [`DedupIndex::lookup`];
//! their memory is reclaimed by one `retain` pass once they make up half of the map, which
//! amortises to O(1) per insert and never walks the map on the hot path. RocksDB holds the
//! same ids (range-deleted at expiry), and the index is rebuilt from it on open.
//!
//! Ids of up to [`INLINE_ID_LEN`] bytes (UUIDs, binary or text) are stored inside the map's
//! slots: no allocation and no free per click. Longer ones are boxed.

use std::collections::BTreeMap;

use adclick_proto::model::Minute;

use super::hash::FastMap;

/// Longest id stored without an allocation: a UUID's text form (36 bytes) fits.
pub const INLINE_ID_LEN: usize = 38;

/// An event id as a dedup key: inline when short, boxed otherwise. Hashes and compares as
/// its bytes, so the map can be searched with a `&[u8]`.
#[derive(Clone)]
enum IdKey {
    Inline { len: u8, buf: [u8; INLINE_ID_LEN] },
    Boxed(Box<[u8]>),
}

impl IdKey {
    fn new(id: &[u8]) -> Self {
        if id.len() <= INLINE_ID_LEN {
            let mut buf = [0; INLINE_ID_LEN];
            buf[..id.len()].copy_from_slice(id);
            IdKey::Inline {
                len: id.len() as u8,
                buf,
            }
        } else {
            IdKey::Boxed(id.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            IdKey::Inline { len, buf } => &buf[..usize::from(*len)],
            IdKey::Boxed(b) => b,
        }
    }
}

super::hash::bytes_key!(IdKey, as_slice);

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

/// Reclaim expired entries only past this many, so small groups never pay for a pass.
const MIN_STALE_TO_RECLAIM: usize = 1 << 16;

/// Event ids counted in open minutes.
#[derive(Debug, Default)]
pub struct DedupIndex {
    /// id -> minute; entries below `floor` are expired but may still be present.
    ids: FastMap<IdKey, Minute>,
    /// Live entries per minute, to know how many expire when the floor rises.
    per_minute: BTreeMap<Minute, usize>,
    /// Minutes below this are expired.
    floor: Option<Minute>,
    /// Expired entries still in `ids`.
    stale: usize,
}

impl DedupIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The minute `id` was counted in, if that minute is still open.
    pub fn lookup(&self, id: &[u8]) -> Option<Minute> {
        let m = *self.ids.get(id)?;
        self.is_live(m).then_some(m)
    }

    /// Whether ids of minute `m` are still kept (the minute is at or above the floor).
    pub(crate) fn is_live(&self, m: Minute) -> bool {
        self.floor.is_none_or(|f| m >= f)
    }

    /// Records a newly counted id. The caller checked [`DedupIndex::lookup`] first.
    pub fn insert(&mut self, id: &[u8], minute: Minute) {
        assert!(
            self.is_live(minute),
            "dedup insert into expired minute {minute:?}"
        );
        if let Some(old) = self.ids.insert(IdKey::new(id), minute) {
            // Only an expired entry can be overwritten: a live one is a duplicate.
            assert!(
                !self.is_live(old),
                "dedup insert over live id counted in {old:?}"
            );
            self.stale -= 1;
        }
        *self.per_minute.entry(minute).or_default() += 1;
    }

    /// Expires every id of a minute below `floor`. The floor never moves down.
    pub fn raise_floor(&mut self, floor: Minute) {
        if self.floor.is_some_and(|f| floor <= f) {
            return;
        }
        self.floor = Some(floor);
        let live = self.per_minute.split_off(&floor);
        let expired = std::mem::replace(&mut self.per_minute, live);
        self.stale += expired.values().sum::<usize>();
        if self.stale >= MIN_STALE_TO_RECLAIM && self.stale * 2 >= self.ids.len() {
            self.ids.retain(|_, m| *m >= floor);
            self.ids.shrink_to_fit();
            self.stale = 0;
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.ids.len() - self.stale
    }

    /// Whether no id is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_found_whatever_minute_the_retry_claims() {
        let mut d = DedupIndex::new();
        d.insert(b"e1", Minute(10));
        assert_eq!(d.lookup(b"e1"), Some(Minute(10)));
        assert_eq!(d.lookup(b"e2"), None);
    }

    #[test]
    fn raising_the_floor_expires_whole_minutes_below_it() {
        let mut d = DedupIndex::new();
        d.insert(b"a", Minute(1));
        d.insert(b"b", Minute(2));
        d.insert(b"c", Minute(3));
        d.raise_floor(Minute(3));
        assert_eq!((d.lookup(b"a"), d.lookup(b"b")), (None, None));
        assert_eq!(d.lookup(b"c"), Some(Minute(3)));
        assert_eq!(d.len(), 1);
        // An expired id may be counted again in an open minute.
        d.insert(b"a", Minute(4));
        assert_eq!((d.lookup(b"a"), d.len()), (Some(Minute(4)), 2));
        d.raise_floor(Minute(2));
        assert_eq!(d.len(), 2, "the floor never moves down");
    }

    #[test]
    fn reclaiming_expired_entries_keeps_live_ones() {
        let mut d = DedupIndex::new();
        for i in 0..(MIN_STALE_TO_RECLAIM as u64 + 10) {
            d.insert(&i.to_be_bytes(), Minute(0));
        }
        d.insert(b"keep", Minute(1));
        d.raise_floor(Minute(1));
        assert_eq!(d.ids.len(), 1, "expired entries reclaimed");
        assert_eq!((d.len(), d.lookup(b"keep")), (1, Some(Minute(1))));
    }

    #[test]
    fn short_and_long_ids_are_told_apart_by_their_bytes() {
        let mut d = DedupIndex::new();
        let long = [7u8; 64];
        let edge = [9u8; INLINE_ID_LEN];
        d.insert(&long, Minute(1));
        d.insert(&edge, Minute(1));
        d.insert(b"x", Minute(1));
        assert_eq!(d.lookup(&long), Some(Minute(1)));
        assert_eq!(d.lookup(&long[..63]), None);
        assert_eq!(d.lookup(&edge), Some(Minute(1)));
        assert_eq!(d.lookup(&edge[..INLINE_ID_LEN - 1]), None);
        assert_eq!(d.lookup(b"x"), Some(Minute(1)));
        assert_eq!(d.lookup(b"x\0"), None, "padding is not part of the id");
    }
}
