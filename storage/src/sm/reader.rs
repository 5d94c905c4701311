//! Queries on a group, served concurrently with apply.
//!
//! Every answer reflects one applied log id: the in-memory part is read under the view's
//! read lock, and the RocksDB part through a RocksDB snapshot taken under that same lock.
//! The snapshot may or may not include the commit being written at that moment, but the
//! only RocksDB data a query reads that a commit changes are late tallies, and the view's
//! late overlay holds the in-flight commit's values (see `store`).
//!
//! Cost model: minutes at or above the in-memory floor (the open minutes plus
//! `keep_final_minutes`) are hash lookups; `top` over them uses the threshold algorithm of
//! [`super::live::Counters::top`]. Older minutes are read from RocksDB: `count` does one
//! batched point lookup per minute of the range that has any counter (the view lists
//! them), `top` scans the range's counters and sums them; coarser rollups for long
//! ranges are future work.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use adclick_proto::model::{AdCount, AdId, Minute, MinuteRange};
use rocksdb::ReadOptions;

use super::format::{self, meta, EventClock};
use super::live::{Live, Slot};
use super::store::{scan, Shared};
use crate::error::{Error, Result};
use crate::types::{GroupSettings, LogId, StoredMembership};

/// Largest `n` a `top` query may ask for; larger requests are capped to it. Exact top-N
/// cost grows with `n` and dashboards ask for tens.
pub const MAX_TOP_N: usize = 1000;

/// Point lookups per RocksDB multi-get in `count`.
const MULTI_GET_CHUNK: usize = 1024;

/// The answer to a `count` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountAnswer {
    /// Accepted clicks of the ad in the range (restricted to the filter, if any).
    pub count: u64,
    /// Late clicks of the ad in the range (all clicks: late clicks are not filtered).
    pub late: u64,
    /// The applied log index the answer reflects (None: nothing applied yet).
    pub applied_index: Option<u64>,
    /// The group's watermark at that index, ms since the epoch.
    pub watermark_ms: Option<i64>,
}

/// The answer to a `top` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopAnswer {
    /// At most `n` rows, sorted by count descending then ad id ascending.
    pub rows: Vec<AdCount>,
    /// The applied log index the answer reflects.
    pub applied_index: Option<u64>,
}

/// A registered filter, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterInfo {
    /// Its name.
    pub name: String,
    /// Its id: the log index of its registration; it counts clicks applied after it.
    pub since_index: u64,
    /// The canonical predicate text.
    pub expr: String,
}

/// Everything about a group except its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmStatus {
    /// Last applied log id.
    pub applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// Replicated settings.
    pub settings: GroupSettings,
    /// Watermark, ms since the epoch (None until a click is counted).
    pub watermark_ms: Option<i64>,
    /// Newest counted event time.
    pub max_event_ms: Option<i64>,
    /// Registered filters by name.
    pub filters: Vec<FilterInfo>,
    /// Minutes held in memory.
    pub memory_minutes: usize,
    /// Final minutes with counters that are served from RocksDB.
    pub disk_minutes: usize,
    /// Distinct ads held in memory.
    pub memory_ads: usize,
}

/// A hash of a group's whole replicated state, to prove that replicas converged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDigest {
    /// The applied log id the digest covers.
    pub applied: Option<LogId>,
    /// xxh3-128 over every key (without group prefix) and value, in key order.
    pub hash: u128,
    /// Number of keys hashed.
    pub keys: u64,
}

/// A cloneable, thread-safe read handle on one group's state.
#[derive(Debug, Clone)]
pub struct SmReader {
    shared: Arc<Shared>,
}

/// Splits `range` into the part served from RocksDB and the part in memory.
fn split(live: &Live, range: MinuteRange) -> (Option<MinuteRange>, MinuteRange) {
    let Some(floor) = live.mem_floor else {
        return (None, range);
    };
    let mem = MinuteRange {
        from: range.from.max(floor),
        to: range.to.max(floor),
    };
    // Trim the disk part to minutes that have counters at all.
    let below = MinuteRange {
        from: range.from,
        to: range.to.min(floor),
    };
    let mut present = live
        .disk_minutes
        .range(below.from..below.to.max(below.from));
    let disk = match (present.next(), present.next_back()) {
        (Some(first), last) => Some(MinuteRange {
            from: *first,
            to: Minute(last.unwrap_or(first).0.saturating_add(1)),
        }),
        (None, _) => None,
    };
    (disk, mem)
}

/// `MinuteRange`'s fields are public, so a backward range can reach us unchecked.
fn check(range: MinuteRange) -> Result<()> {
    if range.to < range.from {
        return Err(Error::InvalidArgument(format!(
            "range ends ({}) before it starts ({})",
            range.to, range.from
        )));
    }
    Ok(())
}

fn slot(live: &Live, filter: Option<&str>) -> Result<Slot> {
    match filter {
        None => Ok(Slot::All),
        Some(name) => live
            .filters
            .get(name)
            .map(|f| Slot::Filter(f.id))
            .ok_or_else(|| Error::NotFound(format!("no filter named {name:?}"))),
    }
}

impl SmReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SmReader { shared }
    }

    /// Clicks of `ad` in `range` (optionally matching `filter`), and its late tally.
    /// An unknown filter is `NotFound`.
    pub fn count(
        &self,
        ad: &AdId,
        range: MinuteRange,
        filter: Option<&str>,
    ) -> Result<CountAnswer> {
        check(range)?;
        let sh = &*self.shared;
        let (db, keys, cf) = (&*sh.db, sh.keys, sh.cf()?);
        let live = sh.read_live()?;
        let slot = slot(&live, filter)?;
        let (disk, mem) = split(&live, range);
        let mut count = live.counters.sum(slot, mem, ad);
        // Minutes on disk are final: the list can be taken now and read after unlocking.
        let disk_minutes: Vec<Minute> = disk.map_or_else(Vec::new, |d| {
            live.disk_minutes.range(d.from..d.to).copied().collect()
        });
        let applied_index = live.applied.map(|l| l.index);
        let watermark_ms = live.clock.map(|c| c.watermark_ms);
        let overlay: Vec<(Minute, u64)> = live.late_overlay.as_ref().map_or_else(Vec::new, |o| {
            o.range((ad.clone(), range.from)..(ad.clone(), range.to))
                .map(|((_, m), v)| (*m, *v))
                .collect()
        });
        let snap = db.snapshot();
        drop(live);

        if !disk_minutes.is_empty() {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            for chunk in disk_minutes.chunks(MULTI_GET_CHUNK) {
                let batch: Vec<Vec<u8>> = chunk
                    .iter()
                    .map(|m| keys.slot_count(slot, *m, ad.as_bytes()))
                    .collect();
                for v in db.batched_multi_get_cf_opt(cf, &batch, true, &ro) {
                    if let Some(v) = v? {
                        let n = format::decode_count(&v).map_err(|m| sh.corrupt(m.0))?;
                        count = count.saturating_add(n);
                    }
                }
            }
        }
        let mut late = BTreeMap::new();
        let (a, b) = keys.late_range(ad.as_bytes(), range.from, range.to);
        scan(db, cf, Some(&snap), (&a, &b), false, |k, v| {
            let minute = format::late_key_minute(k).map_err(|m| sh.corrupt(m.0))?;
            late.insert(
                minute,
                format::decode_count(v).map_err(|m| sh.corrupt(m.0))?,
            );
            Ok(true)
        })?;
        // The in-flight commit's tallies, whether or not the snapshot already holds them.
        late.extend(overlay);
        let late = late.values().fold(0u64, |a, n| a.saturating_add(*n));
        Ok(CountAnswer {
            count,
            late,
            applied_index,
            watermark_ms,
        })
    }

    /// The exact top `n` ads of `range` (optionally matching `filter`), `n` capped at
    /// [`MAX_TOP_N`]. An unknown filter is `NotFound`.
    pub fn top(&self, n: usize, range: MinuteRange, filter: Option<&str>) -> Result<TopAnswer> {
        check(range)?;
        let n = n.min(MAX_TOP_N);
        let sh = &*self.shared;
        let (db, keys, cf) = (&*sh.db, sh.keys, sh.cf()?);
        let live = sh.read_live()?;
        let slot = slot(&live, filter)?;
        let applied_index = live.applied.map(|l| l.index);
        let (disk, mem) = split(&live, range);
        let Some(disk) = disk else {
            let rows = live.counters.top(slot, mem, n);
            return Ok(TopAnswer {
                rows,
                applied_index,
            });
        };
        let mut acc: HashMap<AdId, u64> = HashMap::new();
        live.counters.accumulate(slot, mem, &mut acc);
        let snap = db.snapshot();
        drop(live);
        let (a, b) = keys.slot_count_range(slot, disk.from, disk.to);
        scan(db, cf, Some(&snap), (&a, &b), true, |k, v| {
            let (_, ad) =
                format::parse_slot_count_key(&keys, slot, k).map_err(|m| sh.corrupt(m.0))?;
            let n = format::decode_count(v).map_err(|m| sh.corrupt(m.0))?;
            let c = acc.entry(ad).or_insert(0);
            *c = c.saturating_add(n);
            Ok(true)
        })?;
        let mut rows: Vec<AdCount> = acc
            .into_iter()
            .filter(|(_, c)| *c > 0)
            .map(|(ad_id, count)| AdCount { ad_id, count })
            .collect();
        let order =
            |a: &AdCount, b: &AdCount| b.count.cmp(&a.count).then_with(|| a.ad_id.cmp(&b.ad_id));
        if rows.len() > n && n > 0 {
            rows.select_nth_unstable_by(n - 1, order);
        }
        rows.truncate(n);
        adclick_proto::model::sort_top(&mut rows);
        Ok(TopAnswer {
            rows,
            applied_index,
        })
    }

    /// Everything about the group except counters.
    pub fn status(&self) -> Result<SmStatus> {
        let live = self.shared.read_live()?;
        Ok(SmStatus {
            applied: live.applied,
            membership: live.membership.clone(),
            settings: live.settings,
            watermark_ms: live.clock.map(|c: EventClock| c.watermark_ms),
            max_event_ms: live.clock.map(|c| c.max_event_ms),
            filters: filter_list(&live),
            memory_minutes: live.counters.minutes().count(),
            disk_minutes: live.disk_minutes.len(),
            memory_ads: live.counters.ad_count(),
        })
    }

    /// Last applied log id.
    pub fn applied(&self) -> Result<Option<LogId>> {
        Ok(self.shared.read_live()?.applied)
    }

    /// Waits until queries on this reader see log index `index` applied; `Ok(false)` if
    /// that did not happen within `timeout`.
    ///
    /// For linearizable reads: openraft's applied index (its metrics) moves only when a
    /// whole `apply` call returns, which can span many entries and several commits, and
    /// then only after its core task has handled the notification. This one moves as
    /// soon as the commit holding `index` is visible to queries.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<bool> {
        let mut rx = self.shared.applied_tx.subscribe();
        let reached = rx.wait_for(|a| a.is_some_and(|a| a >= index));
        let outcome = match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Ok(false),
        };
        outcome
    }

    /// The watermark, ms since the epoch (None until a click is counted).
    pub fn watermark_ms(&self) -> Result<Option<i64>> {
        Ok(self.shared.read_live()?.clock.map(|c| c.watermark_ms))
    }

    /// The replicated settings.
    pub fn settings(&self) -> Result<GroupSettings> {
        Ok(self.shared.read_live()?.settings)
    }

    /// Registered filters, by name.
    pub fn filters(&self) -> Result<Vec<FilterInfo>> {
        Ok(filter_list(&*self.shared.read_live()?))
    }

    /// A hash over the group's whole state in key order — counters, filter counters, late
    /// tallies, dedup ids, settings, clock (watermark), filters, membership and last
    /// applied — as of one applied id. Replicas at the same applied id must agree.
    /// Reads every key: an admin operation, not a hot-path query.
    pub fn digest(&self) -> Result<StateDigest> {
        let sh = &*self.shared;
        let (db, keys, cf) = (&*sh.db, sh.keys, sh.cf()?);
        // Taking the snapshot under the read lock keeps it off a half-installed state.
        let live = sh.read_live()?;
        let snap = db.snapshot();
        drop(live);
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut n = 0u64;
        let mut applied = None;
        let applied_key = keys.meta(meta::APPLIED);
        let (a, b) = (keys.group_start(), keys.group_end());
        scan(db, cf, Some(&snap), (&a, &b), true, |k, v| {
            if k == applied_key.as_slice() {
                applied = Some(format::decode_log_id(v).map_err(|m| sh.corrupt(m.0))?);
            }
            let suffix = keys.strip(k).unwrap_or(k);
            h.update(&(suffix.len() as u32).to_be_bytes());
            h.update(suffix);
            h.update(&(v.len() as u32).to_be_bytes());
            h.update(v);
            n += 1;
            Ok(true)
        })?;
        Ok(StateDigest {
            applied,
            hash: h.digest128(),
            keys: n,
        })
    }
}

fn filter_list(live: &Live) -> Vec<FilterInfo> {
    live.filters
        .iter()
        .map(|(name, r)| FilterInfo {
            name: name.clone(),
            since_index: r.id,
            expr: r.expr.clone(),
        })
        .collect()
}
