//! The checker's own model of a data group: replays a group's committed raw log and
//! decides, click by click, whether the click must be counted, using the rules of
//! docs/architecture.md ("Write path and exactly-once", "Time") written out from scratch,
//! not the server's apply code:
//!
//! - a click whose event id was counted before (in any earlier entry or earlier in the
//!   same entry) is not counted again;
//! - a click more than `max_future_skew` ahead of its entry's `proposed_at` is not
//!   counted;
//! - a click older than the watermark `W = max(counted event time) - allowed_lateness` is
//!   not counted;
//! - otherwise it is counted in its (ad, minute), and W moves up.
//!
//! `Configure` entries change the two settings from the next entry on (and a smaller
//! lateness moves W at once). The server forgets a counted id once its minute falls
//! below W; the model never forgets. Both count the same: a click whose minute is below W
//! is late anyway (a click's retries carry the same event time).
//!
//! It also records what each click of each entry should have been answered, so the checker
//! can hold the clients' answers to the log.
//!
//! The model knows nothing of the clients' answers, so comparing it with the replicas'
//! counters catches a replica that counts a retry twice, and comparing it with the
//! acknowledgements catches an acknowledged click that is not in the log.

use std::collections::{BTreeMap, HashSet};

use adclick_proto::model::Minute;
use adclick_storage::types::{Command, Entry, GroupSettings};
use openraft::EntryPayload;

/// A click the model counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The log index of its entry.
    pub index: u64,
    /// Its event id, as text (the workload's ids are ASCII).
    pub event_id: String,
    /// Its ad.
    pub ad: String,
    /// The minute it counts in.
    pub minute: Minute,
}

/// What the model says a click of an entry should have been answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted by this entry.
    Counted,
    /// Its id was counted before.
    Duplicate,
    /// Too far ahead of the entry's `proposed_at`, or invalid.
    Rejected,
    /// Older than the watermark.
    Late,
}

/// One ingest entry as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestModel {
    /// Its log index.
    pub index: u64,
    /// Its clicks' event ids, in order.
    pub ids: Vec<String>,
    /// What each click should have been answered.
    pub verdicts: Vec<Verdict>,
}

/// What the model made of one group's log.
#[derive(Debug, Clone, Default)]
pub struct GroupModel {
    /// Every counted click, in log order.
    pub counted: Vec<Counted>,
    /// Every ingest entry, in log order.
    pub ingests: Vec<IngestModel>,
    /// Every event id that appears in the log (counted or not), as text.
    pub seen: HashSet<String>,
    /// Index of the last entry replayed.
    pub last_index: Option<u64>,
    /// Index of the last entry that counted a click.
    pub last_counting_index: Option<u64>,
}

impl GroupModel {
    /// Counts per (ad, minute) of the clicks counted by entries up to `index` (all when
    /// `None`).
    pub fn buckets(&self, upto: Option<u64>) -> BTreeMap<(String, Minute), u64> {
        self.fold(upto, |c| (c.ad.clone(), c.minute))
    }

    /// Counts per ad of the clicks counted by entries up to `index` (all when `None`).
    pub fn totals(&self, upto: Option<u64>) -> BTreeMap<String, u64> {
        self.fold(upto, |c| c.ad.clone())
    }

    fn fold<K: Ord>(&self, upto: Option<u64>, key: impl Fn(&Counted) -> K) -> BTreeMap<K, u64> {
        let mut out = BTreeMap::new();
        for c in &self.counted {
            if upto.is_some_and(|u| c.index > u) {
                break;
            }
            *out.entry(key(c)).or_insert(0) += 1;
        }
        out
    }
}

/// Replays `entries` (one group's committed log, in index order, without gaps).
pub fn replay(entries: &[Entry]) -> GroupModel {
    let mut settings = GroupSettings::default();
    let mut max_event: Option<i64> = None;
    let mut watermark: Option<i64> = None;
    let mut out = GroupModel::default();
    let mut counted_ids: HashSet<String> = HashSet::new();
    for entry in entries {
        let index = entry.log_id.index;
        out.last_index = Some(index);
        let EntryPayload::Normal(cmd) = &entry.payload else {
            continue;
        };
        match cmd {
            Command::Configure(s) => {
                if s.allowed_lateness_ms >= 0 && s.max_future_skew_ms >= 0 {
                    settings = *s;
                    if let Some(m) = max_event {
                        let w = m.saturating_sub(settings.allowed_lateness_ms);
                        watermark = Some(watermark.map_or(w, |old| old.max(w)));
                    }
                }
            }
            Command::Ingest(batch) => {
                let mut entry = IngestModel {
                    index,
                    ids: Vec::with_capacity(batch.clicks.len()),
                    verdicts: Vec::with_capacity(batch.clicks.len()),
                };
                for c in &batch.clicks {
                    let id = String::from_utf8_lossy(c.event_id.as_bytes()).into_owned();
                    out.seen.insert(id.clone());
                    entry.ids.push(id.clone());
                    let t = c.event_time_ms;
                    let verdict = if c.validate().is_err() {
                        Verdict::Rejected
                    } else if counted_ids.contains(&id) {
                        Verdict::Duplicate
                    } else if t > batch
                        .proposed_at_ms
                        .saturating_add(settings.max_future_skew_ms)
                    {
                        Verdict::Rejected
                    } else if watermark.is_some_and(|w| t < w) {
                        Verdict::Late
                    } else {
                        Verdict::Counted
                    };
                    entry.verdicts.push(verdict);
                    if verdict != Verdict::Counted {
                        continue;
                    }
                    counted_ids.insert(id.clone());
                    out.counted.push(Counted {
                        index,
                        event_id: id,
                        ad: c.ad_id.as_str().to_owned(),
                        minute: c.minute(),
                    });
                    out.last_counting_index = Some(index);
                    let m = max_event.map_or(t, |m| m.max(t));
                    max_event = Some(m);
                    let w = m.saturating_sub(settings.allowed_lateness_ms);
                    watermark = Some(watermark.map_or(w, |old| old.max(w)));
                }
                out.ingests.push(entry);
            }
            Command::CreateFilter(_) | Command::DropFilter { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_proto::model::{AdId, Click, EventId};
    use adclick_storage::types::{log_id, IngestBatch};
    use bytes::Bytes;

    const T0: i64 = 1_700_000_000_000;

    fn click(id: &str, ad: &str, t: i64) -> Click {
        Click {
            event_id: EventId::new(Bytes::from(id.to_owned())).expect("id"),
            ad_id: AdId::new(ad).expect("ad"),
            event_time_ms: t,
            user_id: String::new(),
            ip: std::net::IpAddr::from([10, 0, 0, 1]),
            country: String::new(),
        }
    }

    fn ingest(index: u64, proposed_at_ms: i64, clicks: Vec<Click>) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Command::Ingest(IngestBatch {
                proposed_at_ms,
                clicks,
            })),
        }
    }

    #[test]
    fn a_retried_event_counts_once() {
        let m = replay(&[
            ingest(1, T0, vec![click("a", "x", T0), click("a", "x", T0)]),
            ingest(2, T0, vec![click("a", "x", T0), click("b", "x", T0)]),
        ]);
        let ids: Vec<&str> = m.counted.iter().map(|c| c.event_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(m.counted[1].index, 2);
        assert_eq!(m.buckets(None)[&("x".to_owned(), Minute::of_ms(T0))], 2);
        assert_eq!(m.buckets(Some(1))[&("x".to_owned(), Minute::of_ms(T0))], 1);
    }

    #[test]
    fn future_and_late_events_are_not_counted() {
        let skew = GroupSettings::default().max_future_skew_ms;
        let lateness = GroupSettings::default().allowed_lateness_ms;
        let m = replay(&[
            // Too far ahead of the leader's clock.
            ingest(1, T0, vec![click("f", "x", T0 + skew + 1)]),
            // Counted; the watermark becomes T0 - lateness.
            ingest(2, T0, vec![click("n", "x", T0)]),
            // Older than the watermark.
            ingest(3, T0, vec![click("l", "x", T0 - lateness - 1)]),
            // At the watermark: counted.
            ingest(4, T0, vec![click("w", "x", T0 - lateness)]),
        ]);
        let ids: Vec<&str> = m.counted.iter().map(|c| c.event_id.as_str()).collect();
        assert_eq!(ids, ["n", "w"]);
        assert_eq!(m.seen.len(), 4);
        assert_eq!(m.last_counting_index, Some(4));
    }

    #[test]
    fn a_rejected_event_can_count_when_sent_again() {
        let skew = GroupSettings::default().max_future_skew_ms;
        let m = replay(&[
            ingest(1, T0 - 2 * skew, vec![click("a", "x", T0)]),
            ingest(2, T0, vec![click("a", "x", T0)]),
        ]);
        assert_eq!(m.counted.len(), 1);
        assert_eq!(m.counted[0].index, 2);
    }
}
