//! The rules: what a command does to a group, decided from the command and the state
//! alone (no clock, no randomness, no environment), so every replica decides the same.
//!
//! [`ApplyState`] is the part of the group state that decisions read — settings, event
//! clock, filters, the dedup index, applied id and membership — kept in memory by the
//! state machine. Applying a command mutates it and records the effects in a [`Pending`]
//! (counter deltas, late deltas, dedup ids, registry changes) that the store later turns
//! into one RocksDB WriteBatch and one update of the query view. `Pending` is plain data,
//! so the rules are testable without RocksDB and a failed write can't half-apply.
//!
//! Per click, in batch order (the outcome is the first rule that fires):
//! 1. a click that fails validation is `Rejected(Invalid)`;
//! 2. an id live in the dedup index is `Duplicate` (whatever event time the retry carries,
//!    whichever leader's clock stamped the retry's entry);
//! 3. `event_time > proposed_at + max_future_skew` is `Rejected(FutureEvent)`;
//! 4. `event_time < W` is `Late`, tallied per (ad, minute), never counted;
//! 5. otherwise `Accepted`: counted for the ad's minute and every matching filter, its id
//!    enters the dedup index, and `W = max(W, max counted event time - allowed_lateness)`.
//!    When W's minute rises, ids of the minutes below it expire.
//!
//! With the `fault-injection` feature, `SmOptions::fault_no_dedup` makes rule 2 never
//! fire (a deliberately broken build for the fault suite's checker).
//!
//! The dedup check comes before the future check because a retry is judged against the
//! clock of whichever leader proposes it: a click counted under one leader, whose answer
//! was lost, may be retried through a new leader whose clock is behind. Checked the other
//! way round, that retry would be answered "rejected" (not counted) for a counted click.
//! Neither rule changes the state, so the order decides only the answer, never a stored
//! byte: replicas and replays of logs applied before the change agree either way.

use std::collections::BTreeMap;

use adclick_proto::model::{AdId, Click, Minute, Outcome, RejectReason, MAX_AD_ID_LEN};

use super::dedup::DedupIndex;
use super::filters::{self, ActiveFilter};
use super::format::{DedupBlock, EventClock, FilterRecord};
use super::hash::FastMap;
use crate::types::{
    Command, CommandResponse, FilterDef, GroupSettings, IngestBatch, LogId, StoredMembership,
};

/// Accepted clicks of one (minute, ad) within a [`Pending`]: all, and per matching filter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Accepted clicks.
    pub all: u64,
    /// `(filter id, clicks)` for each filter some of them matched.
    pub filters: Vec<(u64, u64)>,
}

impl Delta {
    fn add_filter(&mut self, id: u64) {
        match self.filters.iter_mut().find(|(f, _)| *f == id) {
            Some((_, n)) => *n += 1,
            None => self.filters.push((id, 1)),
        }
    }
}

/// An ad id's bytes held inline (ad ids are at most [`MAX_AD_ID_LEN`] bytes), as the key
/// of pending deltas: recording an ad costs no allocation and no reference count on the
/// click's buffer. Hashes and compares as its bytes, so it is found by a `&[u8]`.
#[derive(Clone, Copy)]
pub struct AdBytes {
    len: u8,
    buf: [u8; MAX_AD_ID_LEN],
}

impl AdBytes {
    /// The bytes of `ad`.
    pub fn new(ad: &AdId) -> Self {
        let b = ad.as_bytes();
        let mut buf = [0; MAX_AD_ID_LEN];
        buf[..b.len()].copy_from_slice(b);
        AdBytes {
            len: b.len() as u8,
            buf,
        }
    }

    /// The ad id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

super::hash::bytes_key!(AdBytes, as_bytes);

impl std::fmt::Debug for AdBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Ids that entered the dedup index, as the blocks they are stored in: per entry and
/// minute, the ids in apply order (split into parts at [`DedupBlock::MAX_LEN`]). Blocks
/// depend only on the entries, never on how entries were grouped into commits, so
/// replicas that commit differently still store the same bytes.
#[derive(Debug, Default)]
pub struct DedupLog {
    /// By `(minute, log index, part)`: the RocksDB keys' order.
    blocks: BTreeMap<(Minute, u64, u32), DedupBlock>,
    ids: usize,
}

impl DedupLog {
    /// Records `id`, counted in `minute` by the entry at `index`.
    pub fn push(&mut self, index: u64, minute: Minute, id: &[u8]) {
        let last = self
            .blocks
            .range_mut((minute, index, 0)..=(minute, index, u32::MAX))
            .next_back();
        match last {
            Some((_, block)) if block.fits(id) => block.push(id),
            last => {
                let part = last.map_or(0, |((_, _, part), _)| part + 1);
                let mut block = DedupBlock::new();
                block.push(id);
                self.blocks.insert((minute, index, part), block);
            }
        }
        self.ids += 1;
    }

    /// The blocks, in key order: `(minute, log index, part)` and the encoded value.
    pub fn blocks(&self) -> impl Iterator<Item = ((Minute, u64, u32), &[u8])> + '_ {
        self.blocks.iter().map(|(k, b)| (*k, b.as_bytes()))
    }

    /// How many ids were recorded.
    pub fn len(&self) -> usize {
        self.ids
    }

    /// Whether no id was recorded.
    pub fn is_empty(&self) -> bool {
        self.ids == 0
    }
}

/// A change to the filter registry, in apply order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOp {
    /// A filter was registered.
    Create {
        /// Its name.
        name: String,
        /// Its id and canonical text.
        record: FilterRecord,
    },
    /// A filter was dropped, with all its counters.
    Drop {
        /// Its name.
        name: String,
        /// Its id.
        id: u64,
    },
}

/// The effects of applying some entries, not yet written.
#[derive(Debug, Default)]
pub struct Pending {
    /// Accepted clicks per minute and ad: one entry per counter key the commit writes,
    /// however many clicks it took.
    pub counts: BTreeMap<Minute, FastMap<AdBytes, Delta>>,
    /// Late clicks per (ad, minute).
    pub late: FastMap<(AdId, Minute), u64>,
    /// Ids that entered the dedup index, with their minute.
    pub dedup: DedupLog,
    /// The dedup floor rose to this: every id of an older minute expires. Written after
    /// `dedup`, which gives the same result as interleaving (the floor only rises).
    pub dedup_floor: Option<Minute>,
    /// Registry changes, in order. Counters of a filter dropped in the same batch are not
    /// written at all, so it leaves nothing behind.
    pub registry: Vec<RegistryOp>,
    /// Whether settings, clock or membership changed (they are rewritten whole).
    pub settings_changed: bool,
    /// See `settings_changed`.
    pub clock_changed: bool,
    /// See `settings_changed`.
    pub membership_changed: bool,
    /// Clicks decided so far (bounds the batch size).
    pub clicks: usize,
    /// Entries applied so far.
    pub entries: usize,
}

impl Pending {
    /// Whether nothing was applied.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// The state decisions read, in memory.
#[derive(Debug, Default)]
pub struct ApplyState {
    /// Last applied log id.
    pub applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// Current settings.
    pub settings: GroupSettings,
    /// Event clock; None until a click is counted.
    pub clock: Option<EventClock>,
    /// Registered filters, by ascending id.
    pub filters: Vec<ActiveFilter>,
    /// Ids counted in open minutes.
    pub dedup: DedupIndex,
    /// Fault injection ([`super::SmOptions::fault_no_dedup`]): rule 2 never fires.
    #[cfg(feature = "fault-injection")]
    pub fault_no_dedup: bool,
}

impl ApplyState {
    /// Records that the entry `log_id` was applied (every entry, whatever its payload).
    pub fn advance(&mut self, log_id: LogId, p: &mut Pending) {
        if let Some(prev) = &self.applied {
            assert!(
                log_id.index > prev.index,
                "apply went backward: {} after {}",
                log_id.index,
                prev.index
            );
        }
        self.applied = Some(log_id);
        p.entries += 1;
    }

    /// Applies a membership entry's configuration.
    pub fn set_membership(&mut self, m: StoredMembership, p: &mut Pending) {
        self.membership = m;
        p.membership_changed = true;
    }

    /// Applies a command at `index` (the entry's log index); the caller advanced `applied`.
    pub fn apply(&mut self, index: u64, cmd: &Command, p: &mut Pending) -> CommandResponse {
        match cmd {
            Command::Ingest(batch) => CommandResponse::Ingest(self.ingest(index, batch, p)),
            Command::Configure(s) => self.configure(*s, p),
            Command::CreateFilter(def) => self.create_filter(index, def, p),
            Command::DropFilter { name } => self.drop_filter(name, p),
        }
    }

    fn ingest(&mut self, index: u64, batch: &IngestBatch, p: &mut Pending) -> Vec<Outcome> {
        p.clicks += batch.clicks.len();
        batch
            .clicks
            .iter()
            .map(|c| self.click(index, c, batch.proposed_at_ms, p))
            .collect()
    }

    fn click(&mut self, index: u64, c: &Click, proposed_at_ms: i64, p: &mut Pending) -> Outcome {
        if c.validate().is_err() {
            return Outcome::Rejected(RejectReason::Invalid);
        }
        let id = c.event_id.as_bytes();
        let seen = self.dedup.lookup(id).is_some();
        if seen && !self.no_dedup_fault() {
            return Outcome::Duplicate;
        }
        let t = c.event_time_ms;
        if t > proposed_at_ms.saturating_add(self.settings.max_future_skew_ms) {
            return Outcome::Rejected(RejectReason::FutureEvent);
        }
        let minute = c.minute();
        if self.clock.is_some_and(|k| t < k.watermark_ms) {
            *p.late.entry((c.ad_id.clone(), minute)).or_insert(0) += 1;
            return Outcome::Late;
        }
        if !seen {
            // Only a fault-injected build counts a live id again; the index keeps one entry.
            self.dedup.insert(id, minute);
        }
        p.dedup.push(index, minute, id);
        let per_ad = p.counts.entry(minute).or_default();
        let delta = match per_ad.get_mut(c.ad_id.as_bytes()) {
            Some(d) => d,
            None => per_ad.entry(AdBytes::new(&c.ad_id)).or_default(),
        };
        delta.all += 1;
        for f in self.filters.iter().filter(|f| f.matches(c)) {
            delta.add_filter(f.id);
        }
        let max_event_ms = self.clock.map_or(t, |k| k.max_event_ms.max(t));
        self.set_clock(max_event_ms, p);
        Outcome::Accepted
    }

    /// Whether the no-dedup fault is switched on (never, without the feature).
    fn no_dedup_fault(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.fault_no_dedup;
        #[cfg(not(feature = "fault-injection"))]
        false
    }

    /// Recomputes the watermark from the newest counted event and the lateness; it never
    /// moves backward. Expires dedup ids when its minute rises.
    fn set_clock(&mut self, max_event_ms: i64, p: &mut Pending) {
        let candidate = max_event_ms.saturating_sub(self.settings.allowed_lateness_ms);
        let watermark_ms = self
            .clock
            .map_or(candidate, |k| k.watermark_ms.max(candidate));
        let next = EventClock {
            max_event_ms,
            watermark_ms,
        };
        if self.clock == Some(next) {
            return;
        }
        let old_floor = self.clock.map(|k| k.floor());
        self.clock = Some(next);
        p.clock_changed = true;
        if old_floor != Some(next.floor()) {
            self.dedup.raise_floor(next.floor());
            p.dedup_floor = Some(next.floor());
        }
    }

    fn configure(&mut self, s: GroupSettings, p: &mut Pending) -> CommandResponse {
        if s.allowed_lateness_ms < 0 || s.max_future_skew_ms < 0 {
            return CommandResponse::Refused(format!(
                "settings must not be negative: allowed_lateness_ms={}, max_future_skew_ms={}",
                s.allowed_lateness_ms, s.max_future_skew_ms
            ));
        }
        self.settings = s;
        p.settings_changed = true;
        // A smaller lateness moves the watermark forward now; a larger one only slows it.
        if let Some(k) = self.clock {
            self.set_clock(k.max_event_ms, p);
        }
        CommandResponse::Configured
    }

    fn create_filter(&mut self, index: u64, def: &FilterDef, p: &mut Pending) -> CommandResponse {
        if self.filters.iter().any(|f| f.name == def.name) {
            return CommandResponse::Refused(format!(
                "a filter named {:?} already exists",
                def.name
            ));
        }
        let (active, record) = match filters::compile(&def.name, &def.expr, index) {
            Ok(x) => x,
            Err(why) => return CommandResponse::Refused(why),
        };
        assert!(
            self.filters.last().is_none_or(|f| f.id < index),
            "filter id {index} not above existing ids"
        );
        self.filters.push(active);
        p.registry.push(RegistryOp::Create {
            name: def.name.clone(),
            record,
        });
        CommandResponse::FilterCreated { since_index: index }
    }

    fn drop_filter(&mut self, name: &str, p: &mut Pending) -> CommandResponse {
        let Some(pos) = self.filters.iter().position(|f| f.name == name) else {
            return CommandResponse::FilterDropped { existed: false };
        };
        let f = self.filters.remove(pos);
        p.registry.push(RegistryOp::Drop {
            name: f.name,
            id: f.id,
        });
        CommandResponse::FilterDropped { existed: true }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use adclick_proto::model::EventId;

    use super::*;

    const MIN: i64 = 60_000;

    fn click(id: &str, ad: &str, t: i64) -> Click {
        Click {
            event_id: EventId::new(id.as_bytes().to_vec()).expect("valid id"),
            ad_id: AdId::new(ad).expect("valid ad"),
            event_time_ms: t,
            user_id: "u".into(),
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            country: "US".into(),
        }
    }

    fn ingest(s: &mut ApplyState, p: &mut Pending, at: i64, clicks: Vec<Click>) -> Vec<Outcome> {
        match s.apply(
            1,
            &Command::Ingest(IngestBatch {
                proposed_at_ms: at,
                clicks,
            }),
            p,
        ) {
            CommandResponse::Ingest(o) => o,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn future_events_are_rejected_and_do_not_move_the_watermark() {
        let (mut s, mut p) = (ApplyState::default(), Pending::default());
        let at = 100 * MIN;
        let out = ingest(
            &mut s,
            &mut p,
            at,
            vec![click("a", "x", at + 60_001), click("b", "x", at + 60_000)],
        );
        assert_eq!(
            out,
            [
                Outcome::Rejected(RejectReason::FutureEvent),
                Outcome::Accepted
            ]
        );
        assert_eq!(s.clock.map(|k| k.max_event_ms), Some(at + 60_000));
    }

    #[test]
    fn a_retry_with_another_event_time_is_still_a_duplicate() {
        let (mut s, mut p) = (ApplyState::default(), Pending::default());
        let at = 100 * MIN;
        let out = ingest(
            &mut s,
            &mut p,
            at,
            vec![click("a", "x", at), click("a", "x", at - 2 * MIN)],
        );
        assert_eq!(out, [Outcome::Accepted, Outcome::Duplicate]);
        assert_eq!(
            p.counts
                .values()
                .flat_map(|m| m.values())
                .map(|d| d.all)
                .sum::<u64>(),
            1
        );
    }

    #[test]
    fn a_retry_through_a_leader_with_a_slower_clock_is_a_duplicate_not_rejected() {
        // The click is accepted in an entry one leader stamped at `at`; its answer is lost
        // and the retry reaches a new leader whose clock is behind by twice the skew. The
        // retry must be told "already counted", never "not counted".
        let (mut s, mut p) = (ApplyState::default(), Pending::default());
        let at = 100 * MIN;
        let t = at + s.settings.max_future_skew_ms;
        assert_eq!(
            ingest(&mut s, &mut p, at, vec![click("a", "x", t)]),
            [Outcome::Accepted]
        );
        let behind = at - 2 * s.settings.max_future_skew_ms;
        assert_eq!(
            ingest(&mut s, &mut p, behind, vec![click("a", "x", t)]),
            [Outcome::Duplicate]
        );
        let counted: u64 = p
            .counts
            .values()
            .flat_map(|m| m.values())
            .map(|d| d.all)
            .sum();
        assert_eq!(counted, 1, "counted once");
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn the_no_dedup_fault_counts_a_retry_again() {
        let mut s = ApplyState {
            fault_no_dedup: true,
            ..ApplyState::default()
        };
        let mut p = Pending::default();
        let at = 100 * MIN;
        let out = ingest(
            &mut s,
            &mut p,
            at,
            vec![
                click("a", "x", at),
                click("a", "x", at),
                click("a", "x", at),
            ],
        );
        assert_eq!(out, [Outcome::Accepted; 3]);
        let counted: u64 = p
            .counts
            .values()
            .flat_map(|m| m.values())
            .map(|d| d.all)
            .sum();
        assert_eq!(counted, 3, "every copy counted");
        assert_eq!(s.dedup.len(), 1, "the index keeps one entry per id");
    }

    #[test]
    fn events_older_than_the_watermark_are_late_and_tallied() {
        let (mut s, mut p) = (ApplyState::default(), Pending::default());
        let at = 100 * MIN;
        let out = ingest(
            &mut s,
            &mut p,
            at,
            vec![
                click("a", "x", at),
                click("b", "x", at - 5 * MIN - 1),
                click("c", "x", at - 5 * MIN),
            ],
        );
        assert_eq!(out, [Outcome::Accepted, Outcome::Late, Outcome::Accepted]);
        assert_eq!(
            p.late.get(&(AdId::new("x").expect("ad"), Minute(94))),
            Some(&1)
        );
    }

    #[test]
    fn ids_expire_with_their_minute_and_a_late_retry_is_then_late() {
        let (mut s, mut p) = (ApplyState::default(), Pending::default());
        let at = 100 * MIN;
        ingest(&mut s, &mut p, at, vec![click("a", "x", at)]);
        // Watermark moves to minute 101: minute 100 expires.
        let out = ingest(
            &mut s,
            &mut p,
            at + 6 * MIN,
            vec![click("b", "x", at + 6 * MIN), click("a", "x", at)],
        );
        assert_eq!(out, [Outcome::Accepted, Outcome::Late]);
        assert_eq!(p.dedup_floor, Some(Minute(101)));
        assert_eq!(s.dedup.lookup(b"a"), None);
    }

    #[test]
    fn raising_the_lateness_never_moves_the_watermark_back() {
        let (mut s, mut p) = (ApplyState::default(), Pending::default());
        let at = 100 * MIN;
        ingest(&mut s, &mut p, at, vec![click("a", "x", at)]);
        let w = s.clock.map(|k| k.watermark_ms);
        let r = s.apply(
            2,
            &Command::Configure(GroupSettings {
                allowed_lateness_ms: 60 * MIN,
                max_future_skew_ms: 0,
            }),
            &mut p,
        );
        assert_eq!(r, CommandResponse::Configured);
        assert_eq!(s.clock.map(|k| k.watermark_ms), w);
        let r = s.apply(
            3,
            &Command::Configure(GroupSettings {
                allowed_lateness_ms: 0,
                max_future_skew_ms: 0,
            }),
            &mut p,
        );
        assert_eq!(r, CommandResponse::Configured);
        assert_eq!(
            s.clock.map(|k| k.watermark_ms),
            Some(at),
            "smaller lateness applies at once"
        );
    }

    #[test]
    fn an_entrys_ids_are_one_block_per_minute_split_only_when_full() {
        let mut log = DedupLog::default();
        log.push(7, Minute(2), b"a");
        log.push(7, Minute(1), b"b");
        log.push(7, Minute(2), b"c");
        log.push(8, Minute(1), b"d");
        let keys: Vec<_> = log.blocks().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [(Minute(1), 7, 0), (Minute(1), 8, 0), (Minute(2), 7, 0)]
        );
        let mut ids = Vec::new();
        let (_, third) = log.blocks().nth(2).expect("block");
        crate::sm::format::decode_dedup_block(third, |id| ids.push(id.to_vec()))
            .expect("valid block");
        assert_eq!(ids, [b"a".to_vec(), b"c".to_vec()], "apply order kept");

        let mut big = DedupLog::default();
        let n = 2 * DedupBlock::MAX_LEN / 65 + 1;
        for i in 0..n {
            let mut id = [0u8; 64];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            big.push(3, Minute(0), &id);
        }
        let parts: Vec<_> = big
            .blocks()
            .map(|((_, _, part), v)| (part, v.len()))
            .collect();
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(parts.iter().all(|(_, len)| *len <= DedupBlock::MAX_LEN));
        assert_eq!(big.len(), n);
    }

    #[test]
    fn clicks_of_one_ad_and_minute_share_one_pending_delta() {
        let (mut s, mut p) = (ApplyState::default(), Pending::default());
        let at = 100 * MIN;
        let clicks = vec![
            click("a", "x", at),
            click("b", "x", at + 1),
            click("c", "x2", at),
            click("d", "x", at - MIN),
        ];
        ingest(&mut s, &mut p, at, clicks);
        let per_ad: Vec<(Minute, String, u64)> = p
            .counts
            .iter()
            .flat_map(|(m, ads)| {
                ads.iter()
                    .map(|(ad, d)| (*m, format!("{ad:?}"), d.all))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut per_ad = per_ad;
        per_ad.sort();
        assert_eq!(
            per_ad,
            [
                (Minute(99), "x".into(), 1),
                (Minute(100), "x".into(), 2),
                (Minute(100), "x2".into(), 1)
            ]
        );
        assert!(p.counts[&Minute(100)].contains_key(b"x".as_slice()));
    }

    #[test]
    fn negative_settings_are_refused() {
        let (mut s, mut p) = (ApplyState::default(), Pending::default());
        let bad = GroupSettings {
            allowed_lateness_ms: -1,
            max_future_skew_ms: 0,
        };
        assert!(matches!(
            s.apply(1, &Command::Configure(bad), &mut p),
            CommandResponse::Refused(_)
        ));
        assert_eq!(s.settings, GroupSettings::default());
    }
}
