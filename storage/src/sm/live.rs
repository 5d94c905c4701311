//! The in-memory view that queries read: counters of the recent minutes, organised for
//! exact top-N, plus the group's metadata as of the last committed apply.
//!
//! RocksDB holds every counter; this view holds the minutes at or above `mem_floor` (the
//! open minutes, whose counters still change, plus a few final ones kept for fast
//! "last M minutes" queries). Apply never reads counters back from RocksDB: it adds deltas
//! here and writes the resulting absolute values to its WriteBatch.
//!
//! Per (minute, slot) a [`Tally`] keeps `ad -> count` and `count -> [ads]`. Counts only
//! grow by accepted clicks, so moving an ad between adjacent count buckets is O(log
//! distinct counts), and the buckets give sorted access for the threshold algorithm of
//! [`Counters::top`]: with Zipf-distributed ads the top rows are found after visiting a few
//! buckets instead of summing every ad of every minute.
//!
//! Ads are interned to `u32` (refcounted by the in-memory minutes that contain them) so a
//! counter costs ~30 bytes instead of ~100.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use adclick_proto::model::{AdCount, AdId, Minute, MinuteRange};

pub use super::format::Slot;
use super::format::{EventClock, FilterRecord};
use super::hash::{FastMap, FastSet};
use crate::types::{GroupSettings, LogId, StoredMembership};

/// Interned ad ids, refcounted by the number of in-memory minutes whose `All` slot holds
/// the ad (a filter slot only holds ads its `All` slot holds).
#[derive(Debug, Default)]
struct AdTable {
    ids: Vec<Option<AdId>>,
    refs: Vec<u32>,
    index: FastMap<AdKey, u32>,
    free: Vec<u32>,
}

/// An interned ad id as the intern table's key: found by its bytes (`AdId` has no
/// `Borrow<[u8]>`), so interning what a commit counted needs no `AdId` in hand.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AdKey(AdId);

impl std::borrow::Borrow<[u8]> for AdKey {
    fn borrow(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::hash::Hash for AdKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Exactly like the borrowed `[u8]` (the `Borrow` contract).
        self.0.as_bytes().hash(state);
    }
}

impl AdTable {
    fn lookup(&self, ad: &AdId) -> Option<u32> {
        self.index.get(ad.as_bytes()).copied()
    }

    /// The ref of the ad whose id is `ad` (the bytes of a valid `AdId`), interned if new.
    fn intern(&mut self, ad: &[u8]) -> u32 {
        if let Some(r) = self.index.get(ad) {
            return *r;
        }
        // Copy the bytes: the caller's id may point into a whole decoded log entry.
        let own = match AdId::from_bytes(bytes::Bytes::copy_from_slice(ad)) {
            Ok(own) => own,
            Err(e) => panic!("counted an invalid ad id {ad:02x?}: {e}"),
        };
        let r = match self.free.pop() {
            Some(r) => {
                self.ids[r as usize] = Some(own.clone());
                r
            }
            None => {
                assert!(
                    self.ids.len() < u32::MAX as usize,
                    "more than 2^32 live ads"
                );
                self.ids.push(Some(own.clone()));
                self.refs.push(0);
                (self.ids.len() - 1) as u32
            }
        };
        self.index.insert(AdKey(own), r);
        r
    }

    fn ad(&self, r: u32) -> &AdId {
        match self.ids.get(r as usize) {
            Some(Some(ad)) => ad,
            _ => panic!("ad ref {r} is not interned"),
        }
    }

    fn acquire(&mut self, r: u32) {
        self.refs[r as usize] += 1;
    }

    fn release(&mut self, r: u32) {
        let refs = &mut self.refs[r as usize];
        assert!(*refs > 0, "ad ref {r} released more often than acquired");
        *refs -= 1;
        if *refs == 0 {
            if let Some(ad) = self.ids[r as usize].take() {
                self.index.remove(ad.as_bytes());
            }
            self.free.push(r);
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// An ad's counter and its position in its count bucket.
#[derive(Debug, Clone, Copy)]
struct Cell {
    count: u64,
    pos: u32,
}

/// Counts of one slot in one minute.
///
/// Buckets are `Vec`s with swap-remove (each cell knows its position), not hash sets: a
/// bucket of the most common counts holds most ads of the minute, and growing a
/// million-entry hash set rehashes it whole, stalling the write lock for tens of
/// milliseconds, where a `Vec` only copies 4 bytes per ad.
#[derive(Debug, Default)]
pub struct Tally {
    by_ad: FastMap<u32, Cell>,
    by_count: BTreeMap<u64, Vec<u32>>,
}

impl Tally {
    /// Adds `n` to `ad`; returns the old and the new value.
    fn add(&mut self, ad: u32, n: u64) -> (u64, u64) {
        assert!(n > 0, "zero delta for ad ref {ad}");
        let cell = self.by_ad.entry(ad).or_insert(Cell { count: 0, pos: 0 });
        let (old, old_pos) = (cell.count, cell.pos as usize);
        let new = old + n;
        let bucket = self.by_count.entry(new).or_default();
        assert!(bucket.len() < u32::MAX as usize, "count bucket overflow");
        *cell = Cell {
            count: new,
            pos: bucket.len() as u32,
        };
        bucket.push(ad);
        if old > 0 {
            let bucket = self
                .by_count
                .get_mut(&old)
                .unwrap_or_else(|| panic!("ad ref {ad} counted {old} has no bucket"));
            let removed = bucket.swap_remove(old_pos);
            assert_eq!(removed, ad, "count bucket {old} out of sync at {old_pos}");
            if let Some(&moved) = bucket.get(old_pos) {
                if let Some(c) = self.by_ad.get_mut(&moved) {
                    c.pos = old_pos as u32;
                }
            }
            if bucket.is_empty() {
                self.by_count.remove(&old);
            }
        }
        (old, new)
    }

    fn get(&self, ad: u32) -> u64 {
        self.by_ad.get(&ad).map_or(0, |c| c.count)
    }
}

/// Counters of the in-memory minutes.
#[derive(Debug, Default)]
pub struct Counters {
    minutes: BTreeMap<Minute, FastMap<Slot, Tally>>,
    ads: AdTable,
    /// Ad refs of dropped minutes not yet released. Releasing ~1M ads at once would hold
    /// the view's write lock for tens of milliseconds, so it is spread over commits
    /// ([`Counters::release_some`]); until then an ad only stays interned a little longer.
    retired: Vec<u32>,
}

/// Minutes taken out of the view, to be freed after the lock is released.
#[derive(Debug, Default)]
pub struct Garbage {
    slots: Vec<FastMap<Slot, Tally>>,
    buckets: Vec<BTreeMap<u64, Vec<u32>>>,
}

impl Counters {
    /// Adds `n` clicks of `ad` in `minute` to `slot`; returns the new absolute value.
    /// `All` must be added before any filter slot of the same (minute, ad).
    pub fn add(&mut self, slot: Slot, minute: Minute, ad: &AdId, n: u64) -> u64 {
        let r = self.ads.intern(ad.as_bytes());
        let tally = minute_slots(&mut self.minutes, minute)
            .entry(slot)
            .or_default();
        let (old, new) = tally.add(r, n);
        if slot == Slot::All && old == 0 {
            self.ads.acquire(r);
        }
        new
    }

    /// Adds one commit's accepted clicks of `minute`, given per ad as `(ad id bytes, all,
    /// [(filter id, n)])`: `all` to the `All` slot and each `n` to its filter's slot. Each
    /// ad is interned once, whatever the number of filters. Calls `out(ad, slot, new
    /// value)` for every counter it changes. The ad ids must be valid `AdId` bytes.
    pub fn add_minute<'a, I, F>(&mut self, minute: Minute, deltas: I, mut out: F)
    where
        I: IntoIterator<Item = (&'a [u8], u64, &'a [(u64, u64)])>,
        F: FnMut(&'a [u8], Slot, u64),
    {
        let slots = minute_slots(&mut self.minutes, minute);
        let mut filtered = Vec::new();
        let all = slots.entry(Slot::All).or_default();
        for (ad, n, filters) in deltas {
            let r = self.ads.intern(ad);
            let (old, new) = all.add(r, n);
            if old == 0 {
                self.ads.acquire(r);
            }
            out(ad, Slot::All, new);
            if !filters.is_empty() {
                filtered.push((r, ad, filters));
            }
        }
        for (r, ad, filters) in filtered {
            for &(id, n) in filters {
                let (_, new) = slots.entry(Slot::Filter(id)).or_default().add(r, n);
                out(ad, Slot::Filter(id), new);
            }
        }
    }

    /// The counter of `(slot, minute, ad)`, if the minute is in memory.
    pub fn get(&self, slot: Slot, minute: Minute, ad: &AdId) -> u64 {
        let Some(r) = self.ads.lookup(ad) else {
            return 0;
        };
        self.minutes
            .get(&minute)
            .and_then(|m| m.get(&slot))
            .map_or(0, |t| t.get(r))
    }

    /// Sum of `ad`'s counters over the in-memory minutes of `range`.
    pub fn sum(&self, slot: Slot, range: MinuteRange, ad: &AdId) -> u64 {
        let Some(r) = self.ads.lookup(ad) else {
            return 0;
        };
        self.minutes
            .range(range.from..range.to)
            .filter_map(|(_, m)| m.get(&slot))
            .fold(0, |a, t| a.saturating_add(t.get(r)))
    }

    /// Forgets every minute below `floor` (they stay in RocksDB). Cheap: the ads they
    /// referenced are released later by [`Counters::release_some`], and the returned
    /// [`Garbage`] should be dropped after the lock is released.
    #[must_use = "drop the garbage outside the lock"]
    pub fn drop_below(&mut self, floor: Minute) -> Garbage {
        let keep = self.minutes.split_off(&floor);
        let gone = std::mem::replace(&mut self.minutes, keep);
        let mut garbage = Garbage::default();
        for (_, mut slots) in gone {
            if let Some(all) = slots.remove(&Slot::All) {
                self.retired.extend(all.by_ad.into_keys());
                garbage.buckets.push(all.by_count);
            }
            garbage.slots.push(slots);
        }
        garbage
    }

    /// Releases up to `limit` ad refs of dropped minutes; returns how many remain.
    pub fn release_some(&mut self, limit: usize) -> usize {
        let keep = self.retired.len().saturating_sub(limit);
        for r in self.retired.split_off(keep) {
            self.ads.release(r);
        }
        self.retired.len()
    }

    /// Forgets every counter of filter `id`.
    pub fn drop_filter(&mut self, id: u64) {
        for slots in self.minutes.values_mut() {
            slots.remove(&Slot::Filter(id));
        }
    }

    /// Adds every `(ad, count)` of `slot` over the in-memory minutes of `range` into `acc`.
    pub fn accumulate(&self, slot: Slot, range: MinuteRange, acc: &mut HashMap<AdId, u64>) {
        for tally in self
            .minutes
            .range(range.from..range.to)
            .filter_map(|(_, m)| m.get(&slot))
        {
            for (&r, c) in &tally.by_ad {
                let n = acc.entry(self.ads.ad(r).clone()).or_insert(0);
                *n = n.saturating_add(c.count);
            }
        }
    }

    /// Exact top `n` of `slot` over the in-memory minutes of `range`, sorted like
    /// `sort_top` (count desc, ad asc).
    ///
    /// Threshold algorithm over the per-minute count buckets: take the highest unvisited
    /// bucket of any minute, compute the exact total of each newly seen ad by lookups in
    /// every minute, and stop once the n-th best total is strictly above the sum of the
    /// minutes' highest unvisited counts — no unseen ad can reach it, not even by a tie
    /// (ties are broken by ad id, so an unseen ad with an equal total could still win).
    pub fn top(&self, slot: Slot, range: MinuteRange, n: usize) -> Vec<AdCount> {
        let lists: Vec<&Tally> = self
            .minutes
            .range(range.from..range.to)
            .filter_map(|(_, m)| m.get(&slot))
            .collect();
        if n == 0 || lists.is_empty() {
            return Vec::new();
        }
        let mut cursors: Vec<_> = lists
            .iter()
            .map(|t| t.by_count.iter().rev().peekable())
            .collect();
        let mut seen: FastSet<u32> = FastSet::default();
        // Max-heap whose top is the worst kept row: lowest count, then greatest ad id.
        let mut best: BinaryHeap<(Reverse<u64>, AdId)> = BinaryHeap::with_capacity(n + 1);
        loop {
            let next = cursors
                .iter_mut()
                .enumerate()
                .filter_map(|(i, c)| c.peek().map(|(count, _)| (**count, i)))
                .max();
            let Some((_, i)) = next else { break };
            let Some((_, ads)) = cursors[i].next() else {
                break;
            };
            for &r in ads {
                if !seen.insert(r) {
                    continue;
                }
                let total = lists.iter().fold(0u64, |a, t| a.saturating_add(t.get(r)));
                best.push((Reverse(total), self.ads.ad(r).clone()));
                if best.len() > n {
                    best.pop();
                }
            }
            let threshold = cursors.iter_mut().fold(0u64, |a, c| {
                a.saturating_add(c.peek().map_or(0, |(count, _)| **count))
            });
            if best.len() == n && best.peek().is_some_and(|(Reverse(c), _)| *c > threshold) {
                break;
            }
        }
        let mut rows: Vec<AdCount> = best
            .into_iter()
            .map(|(Reverse(count), ad_id)| AdCount { ad_id, count })
            .collect();
        adclick_proto::model::sort_top(&mut rows);
        rows
    }

    /// Pre-sizes the ad intern table for `ads` distinct ads, so it never rehashes while
    /// the write lock is held (a rehash at ~500k ads takes ~150 ms).
    pub fn reserve_ads(&mut self, ads: usize) {
        self.ads.index.reserve(ads);
        self.ads.ids.reserve(ads);
        self.ads.refs.reserve(ads);
    }

    /// In-memory minutes, oldest first.
    pub fn minutes(&self) -> impl Iterator<Item = Minute> + '_ {
        self.minutes.keys().copied()
    }

    /// Distinct ads held in memory.
    pub fn ad_count(&self) -> usize {
        self.ads.len()
    }
}

/// The slots of `minute`, created (sized like the newest minute) if missing.
fn minute_slots(
    minutes: &mut BTreeMap<Minute, FastMap<Slot, Tally>>,
    minute: Minute,
) -> &mut FastMap<Slot, Tally> {
    if !minutes.contains_key(&minute) {
        // Size a new minute like the newest one, so its map doesn't rehash ~20 times
        // (the last few rehashes of a million-entry map stall the write lock).
        let hint = minutes
            .values()
            .next_back()
            .and_then(|m| m.get(&Slot::All))
            .map_or(0, |t| t.by_ad.len());
        let all = Tally {
            by_ad: FastMap::with_capacity_and_hasher(hint, Default::default()),
            by_count: BTreeMap::new(),
        };
        let mut slots = FastMap::default();
        slots.insert(Slot::All, all);
        minutes.insert(minute, slots);
    }
    minutes.entry(minute).or_default()
}

/// Everything a query needs, as of one applied log id. Guarded by the state machine's
/// lock. RocksDB may be one commit ahead of it while that commit is written, which only
/// matters for late tallies (see `late_overlay`).
#[derive(Debug)]
pub struct Live {
    /// Last applied log id.
    pub applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// Current settings.
    pub settings: GroupSettings,
    /// Event clock (None until a click is counted).
    pub clock: Option<EventClock>,
    /// Registered filters by name.
    pub filters: BTreeMap<String, FilterRecord>,
    /// Counters of minutes at or above `mem_floor`.
    pub counters: Counters,
    /// Minutes below this are served from RocksDB; None: every minute is in memory.
    pub mem_floor: Option<Minute>,
    /// Minutes below `mem_floor` that have counters in RocksDB, so `count` looks up only
    /// minutes that exist (one entry per minute with traffic: ~0.5M per year).
    pub disk_minutes: BTreeSet<Minute>,
    /// Set when a write failed after memory changed: the view no longer matches disk.
    pub broken: Option<String>,
    /// While the commit of `applied` is being written to RocksDB (outside the lock), the
    /// absolute late tallies it writes. A RocksDB snapshot taken meanwhile may or may not
    /// hold that write; overriding its late values with these makes the answer exact at
    /// `applied` either way. (Everything else a query reads from RocksDB is final.)
    pub late_overlay: Option<BTreeMap<(AdId, Minute), u64>>,
}

impl Live {
    /// The view of an empty group.
    pub fn empty() -> Self {
        Live {
            applied: None,
            membership: StoredMembership::default(),
            settings: GroupSettings::default(),
            clock: None,
            filters: BTreeMap::new(),
            counters: Counters::default(),
            mem_floor: None,
            disk_minutes: BTreeSet::new(),
            broken: None,
            late_overlay: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad(s: &str) -> AdId {
        AdId::new(s).expect("valid ad id")
    }

    fn brute(c: &Counters, slot: Slot, range: MinuteRange, n: usize) -> Vec<AdCount> {
        let mut acc = HashMap::new();
        c.accumulate(slot, range, &mut acc);
        let mut rows: Vec<_> = acc
            .into_iter()
            .map(|(ad_id, count)| AdCount { ad_id, count })
            .collect();
        adclick_proto::model::sort_top(&mut rows);
        rows.truncate(n);
        rows
    }

    #[test]
    fn top_breaks_ties_by_ad_id() {
        let mut c = Counters::default();
        for name in ["d", "b", "c", "a"] {
            c.add(Slot::All, Minute(1), &ad(name), 2);
        }
        c.add(Slot::All, Minute(2), &ad("z"), 3);
        let r = MinuteRange::new(Minute(0), Minute(5)).expect("range");
        let got: Vec<_> = c
            .top(Slot::All, r, 3)
            .into_iter()
            .map(|r| (r.ad_id.to_string(), r.count))
            .collect();
        assert_eq!(got, [("z".into(), 3), ("a".into(), 2), ("b".into(), 2)]);
    }

    #[test]
    fn top_equals_brute_force_on_skewed_data() {
        let seed = 0x5eed_u64;
        println!("seed {seed}");
        let mut x = seed;
        let mut next = move || {
            // xorshift64*: deterministic and dependency-free.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut c = Counters::default();
        for _ in 0..20_000 {
            let r = next();
            // Skewed: low ad numbers are far more likely.
            let a = (r % 1000) * (r >> 20) % 1000 / (1 + (r >> 40) % 50);
            let m = Minute((r >> 10) as i64 % 6);
            let name = format!("ad{a}");
            c.add(Slot::All, m, &ad(&name), 1);
            if a % 3 == 0 {
                c.add(Slot::Filter(7), m, &ad(&name), 1);
            }
        }
        for (from, to) in [(0, 6), (2, 4), (5, 6), (0, 1)] {
            let r = MinuteRange::new(Minute(from), Minute(to)).expect("range");
            for n in [1, 5, 37, 100, 5000] {
                for slot in [Slot::All, Slot::Filter(7)] {
                    assert_eq!(
                        c.top(slot, r, n),
                        brute(&c, slot, r, n),
                        "{slot:?} {from}..{to} n={n}"
                    );
                }
            }
        }
    }

    #[test]
    fn tally_buckets_stay_in_sync_with_counts() {
        let mut t = Tally::default();
        let mut x = 7u64;
        for _ in 0..5000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            t.add(((x >> 33) % 300) as u32, 1 + (x >> 60) % 3);
        }
        let mut seen = 0;
        for (count, ads) in &t.by_count {
            assert!(!ads.is_empty(), "empty bucket {count}");
            for (pos, ad) in ads.iter().enumerate() {
                let cell = t.by_ad[ad];
                assert_eq!((cell.count, cell.pos as usize), (*count, pos), "ad {ad}");
                seen += 1;
            }
        }
        assert_eq!(seen, t.by_ad.len());
    }

    #[test]
    fn dropping_minutes_releases_interned_ads() {
        let mut c = Counters::default();
        c.add(Slot::All, Minute(1), &ad("a"), 1);
        c.add(Slot::All, Minute(2), &ad("a"), 1);
        c.add(Slot::All, Minute(1), &ad("b"), 1);
        c.add(Slot::Filter(3), Minute(1), &ad("b"), 1);
        assert_eq!(c.ad_count(), 2);
        drop(c.drop_below(Minute(2)));
        assert_eq!(c.ad_count(), 2, "released lazily");
        assert_eq!(c.release_some(usize::MAX), 0);
        assert_eq!(c.ad_count(), 1);
        assert_eq!(c.get(Slot::All, Minute(2), &ad("a")), 1);
        assert_eq!(c.get(Slot::Filter(3), Minute(1), &ad("b")), 0);
        c.add(Slot::All, Minute(3), &ad("c"), 4);
        assert_eq!(
            c.sum(
                Slot::All,
                MinuteRange::new(Minute(0), Minute(9)).expect("r"),
                &ad("c")
            ),
            4
        );
    }
}
