//! The checker: given a run's history and the cluster's final state, decides whether any
//! click was lost or counted twice, or any read was impossible. Each numbered line of the
//! fault suite's contract (docs/testing.md) is one [`Check`]; any anomaly in any of them
//! fails the run.
//!
//! 1. `lost`: every acknowledged event (an `Accepted` or `Duplicate` answer) is counted by
//!    the model of the committed log, and every replica has applied every entry that
//!    counts a click.
//! 2. `unexpected`: the log holds no event id the workload never sent.
//! 3. `double-count`: on every replica, every (ad, minute) counter equals the model's
//!    count of distinct event ids counted there up to that replica's applied index; an
//!    event whose every answer said "not counted" (`Fail`, `Late`, `Rejected`) is not
//!    counted.
//! 4. `bounds`: per (ad, minute), acknowledged <= counted <= attempted; every count read
//!    taken during the run lies between the events acknowledged before it was invoked and
//!    the events attempted before it completed; a count read never returns less than a
//!    read that completed before it was invoked; each row of a top-N read lies within its
//!    ad's bounds.
//! 5. `top-n`: a top-N over every ad, read after the run, equals a recomputation from the
//!    model's final counts (count descending, ties by ad id).
//! 6. `convergence`: replicas at the same applied index have the same state digest, raw
//!    logs agree entry for entry where they overlap, and every group could be compared.
//! 7. `liveness`: after each heal a write and a linearizable read succeed within 10 s; no
//!    node on a partition's minority side acknowledges a write invoked during the
//!    partition, and with a majority down nothing is acknowledged at all.
//!
//! The model (see [`super::model`]) is what makes 1 and 3 exact: it is built from the log,
//! not from the answers, so a replica that double-counts and a leader that acknowledged an
//! entry that was never committed both show.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use adclick_proto::model::Minute;

use super::history::{ad_index, ad_name, Answer, EventIdx, History, OpKind, Outcome};
use super::model::GroupModel;
use super::model::Verdict as ModelVerdict;

/// How long after a heal the cluster has to take a write and a read.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(10);

/// At most this many anomalies are listed per check (all are counted).
const LISTED: usize = 20;

/// One replica's state of one group, read from its data directory after the run.
#[derive(Debug, Clone, Default)]
pub struct ReplicaGroup {
    /// Its applied index.
    pub applied: Option<u64>,
    /// Its state digest.
    pub digest: u128,
    /// Keys in the digest.
    pub keys: u64,
    /// Its counters for every (ad, minute) the run could have touched (zeros left out).
    pub buckets: BTreeMap<(String, Minute), u64>,
    /// Its count per ad over a range far wider than the run's (a day either side), every
    /// ad it has: catches counts outside the minutes `buckets` covers.
    pub totals: BTreeMap<String, u64>,
}

/// The cluster after the run.
#[derive(Debug, Clone)]
pub struct FinalState {
    /// Node → group → replica state.
    pub replicas: BTreeMap<u64, BTreeMap<u64, ReplicaGroup>>,
    /// Group → the model of its committed log.
    pub models: BTreeMap<u64, GroupModel>,
    /// Problems found while reading and comparing the raw logs (gaps in every copy,
    /// entries that differ between nodes).
    pub log_problems: Vec<String>,
    /// Groups whose replicas could not be brought to a common applied index.
    pub uncompared_groups: Vec<u64>,
    /// The final top-N over every ad; `Err` if it could not be read.
    pub final_top: Result<FinalTop, String>,
}

/// The top-N read after the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalTop {
    /// `(ad id, count)`, count descending.
    pub rows: Vec<(String, u64)>,
    /// Group → the applied index the answer reflects.
    pub positions: BTreeMap<u64, u64>,
}

/// A liveness probe after a heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The fault it followed.
    pub nemesis: String,
    /// How long after the heal a fresh click was acknowledged (`None`: not within the
    /// bound).
    pub write_after: Option<Duration>,
    /// How long after the heal a linearizable count that includes it was read.
    pub read_after: Option<Duration>,
    /// The last error, if it failed.
    pub error: Option<String>,
}

/// One line of the contract and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `1 lost`, `2 unexpected`, ...
    pub name: &'static str,
    /// Anomalies found (at most [`LISTED`] listed).
    pub anomalies: Vec<String>,
    /// How many there were in all.
    pub total: usize,
}

impl Check {
    fn new(name: &'static str) -> Self {
        Check {
            name,
            anomalies: Vec::new(),
            total: 0,
        }
    }

    fn flag(&mut self, what: impl FnOnce() -> String) {
        self.total += 1;
        if self.anomalies.len() < LISTED {
            self.anomalies.push(what());
        }
    }
}

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Every check, in contract order.
    pub checks: Vec<Check>,
    /// Events acknowledged, indeterminate (never resolved), and known not counted.
    pub events: EventTally,
}

/// How the run's events ended, from the clients' point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTally {
    /// Acknowledged: must be counted.
    pub acked: usize,
    /// Every answer said "not counted": must not be.
    pub refused: usize,
    /// Never resolved: may be counted or not.
    pub indeterminate: usize,
}

impl Verdict {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.total == 0)
    }

    /// The anomaly count of the check whose name starts with `prefix` (e.g. `"3"`).
    pub fn anomalies(&self, prefix: &str) -> usize {
        self.checks
            .iter()
            .filter(|c| c.name.starts_with(prefix))
            .map(|c| c.total)
            .sum()
    }

    /// A report for a person: one line per check, then the anomalies.
    pub fn report(&self) -> String {
        let mut s = format!(
            "events: {} acknowledged, {} refused, {} indeterminate\n",
            self.events.acked, self.events.refused, self.events.indeterminate
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  {:<14} {}",
                c.name,
                if c.total == 0 {
                    "ok".to_owned()
                } else {
                    format!("{} ANOMALIES", c.total)
                }
            );
            for a in &c.anomalies {
                let _ = writeln!(s, "      {a}");
            }
            if c.total > c.anomalies.len() {
                let _ = writeln!(s, "      ... and {} more", c.total - c.anomalies.len());
            }
        }
        s
    }
}

/// What the history says about one event.
#[derive(Debug, Clone, Copy, Default)]
struct EventFacts {
    /// Earliest completion of an op that acknowledged it.
    acked_at: Option<u64>,
    /// Earliest invocation of an op that carried it.
    first_invoked: Option<u64>,
    /// Some op's outcome is unknown for it.
    indeterminate: bool,
    /// Some op answered it (any answer) or failed provably.
    answered_not_counted: bool,
}

impl EventFacts {
    fn refused(&self) -> bool {
        self.acked_at.is_none() && !self.indeterminate && self.answered_not_counted
    }
}

fn facts(h: &History) -> Vec<EventFacts> {
    let mut out = vec![EventFacts::default(); h.events.len()];
    for op in &h.ops {
        let OpKind::Ingest { events, result } = &op.kind else {
            continue;
        };
        for (i, &e) in events.iter().enumerate() {
            let f = &mut out[e as usize];
            f.first_invoked = Some(
                f.first_invoked
                    .map_or(op.invoked_us, |t| t.min(op.invoked_us)),
            );
            match result {
                Outcome::Ok(answers) => match answers.get(i) {
                    Some(a) if a.acked() => {
                        f.acked_at = Some(
                            f.acked_at
                                .map_or(op.completed_us, |t| t.min(op.completed_us)),
                        );
                    }
                    Some(Answer::Rejected) => f.answered_not_counted = true,
                    // `Late` may answer a retry of a click that an earlier attempt of the
                    // same call counted, once its minute is final; the answers check
                    // holds it to the log instead.
                    Some(_) | None => f.indeterminate = true,
                },
                Outcome::Fail(_) => f.answered_not_counted = true,
                Outcome::Info(_) => f.indeterminate = true,
            }
        }
    }
    out
}

/// Checks a run; see the module docs.
pub fn check(h: &History, state: &FinalState, probes: &[Probe]) -> Verdict {
    let facts = facts(h);
    let mut events = EventTally::default();
    for f in &facts {
        if f.acked_at.is_some() {
            events.acked += 1;
        } else if f.refused() {
            events.refused += 1;
        } else if f.first_invoked.is_some() {
            events.indeterminate += 1;
        }
    }
    let by_id: HashMap<&str, EventIdx> = h
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i as EventIdx))
        .collect();
    let counted: HashSet<&str> = state
        .models
        .values()
        .flat_map(|m| m.counted.iter().map(|c| c.event_id.as_str()))
        .collect();

    let mut lost = Check::new("1 lost");
    for (i, f) in facts.iter().enumerate() {
        if let Some(at) = f.acked_at {
            let e = &h.events[i];
            if !counted.contains(e.id.as_str()) {
                lost.flag(|| {
                    format!(
                        "event {} (ad {}) acknowledged at {:.3}s is not in the committed log",
                        e.id,
                        ad_name(e.ad),
                        at as f64 / 1e6
                    )
                });
            }
        }
    }
    for (&node, groups) in &state.replicas {
        for (&g, r) in groups {
            let Some(m) = state.models.get(&g) else {
                continue;
            };
            if let Some(need) = m.last_counting_index {
                if r.applied.is_none_or(|a| a < need) {
                    lost.flag(|| {
                        format!(
                            "node {node} group {g}: applied {:?}, but entry {need} counts clicks",
                            r.applied
                        )
                    });
                }
            }
        }
    }

    let mut unexpected = Check::new("2 unexpected");
    for m in state.models.values() {
        let mut strays: Vec<&String> = m
            .seen
            .iter()
            .filter(|id| !by_id.contains_key(id.as_str()))
            .collect();
        strays.sort();
        for id in strays {
            unexpected.flag(|| format!("event id {id} is in the log but was never sent"));
        }
    }
    let mut ad_group: HashMap<&str, u64> = HashMap::new();
    for (&g, m) in &state.models {
        for c in &m.counted {
            if let Some(&e) = by_id.get(c.event_id.as_str()) {
                let ev = &h.events[e as usize];
                if ad_name(ev.ad) != c.ad || Minute::of_ms(ev.event_time_ms) != c.minute {
                    unexpected.flag(|| {
                        format!(
                            "event {} is counted for ad {} minute {}, but was sent for ad {} \
                             minute {}",
                            c.event_id,
                            c.ad,
                            c.minute.0,
                            ad_name(ev.ad),
                            Minute::of_ms(ev.event_time_ms).0
                        )
                    });
                }
            }
            match ad_group.insert(c.ad.as_str(), g) {
                Some(other) if other != g => {
                    unexpected.flag(|| format!("ad {} is counted in groups {other} and {g}", c.ad))
                }
                _ => {}
            }
        }
    }

    let mut double = Check::new("3 double-count");
    for (&node, groups) in &state.replicas {
        for (&g, r) in groups {
            let Some(m) = state.models.get(&g) else {
                double.flag(|| format!("node {node} has group {g}, which has no model"));
                continue;
            };
            let want = m.buckets(r.applied);
            let keys: std::collections::BTreeSet<&(String, Minute)> =
                want.keys().chain(r.buckets.keys()).collect();
            for k in keys {
                let (w, got) = (
                    want.get(k).copied().unwrap_or(0),
                    r.buckets.get(k).copied().unwrap_or(0),
                );
                if w != got {
                    double.flag(|| {
                        format!(
                            "node {node} group {g} ad {} minute {}: counts {got}, distinct \
                             event ids counted there: {w}{}",
                            k.0,
                            k.1 .0,
                            if got > w {
                                " (counted twice)"
                            } else {
                                " (missing)"
                            }
                        )
                    });
                }
            }
        }
    }
    for (i, f) in facts.iter().enumerate() {
        let e = &h.events[i];
        if f.refused() && counted.contains(e.id.as_str()) {
            double.flag(|| {
                format!(
                    "event {} was answered \"not counted\" every time but is counted",
                    e.id
                )
            });
        }
    }

    let mut times: HashMap<&str, u32> = HashMap::new();
    for m in state.models.values() {
        for c in &m.counted {
            *times.entry(c.event_id.as_str()).or_insert(0) += 1;
        }
    }
    let mut twice: Vec<(&str, u32)> = times.into_iter().filter(|(_, n)| *n > 1).collect();
    twice.sort_unstable();
    for (id, n) in twice {
        double.flag(|| format!("event {id} is counted {n} times, in different groups"));
    }
    for (&node, groups) in &state.replicas {
        for (&g, r) in groups {
            let Some(m) = state.models.get(&g) else {
                continue;
            };
            let want = m.totals(r.applied);
            if want != r.totals {
                double.flag(|| {
                    format!(
                        "node {node} group {g}: per-ad totals over a wide range {:?} differ \
                         from the model's {want:?}",
                        r.totals
                    )
                });
            }
        }
    }
    check_answers(h, state, &mut double);

    let mut bounds = Check::new("4 bounds");
    check_final_bounds(h, &facts, state, &mut bounds);
    check_reads(h, &facts, &mut bounds);

    let mut top = Check::new("5 top-n");
    check_top(state, &mut top);

    let mut conv = Check::new("6 convergence");
    check_convergence(state, &mut conv);

    let mut live = Check::new("7 liveness");
    check_liveness(h, probes, &mut live);

    Verdict {
        checks: vec![lost, unexpected, double, bounds, top, conv, live],
        events,
    }
}

fn bucket_of(h: &History, e: EventIdx) -> (String, Minute) {
    let ev = &h.events[e as usize];
    (ad_name(ev.ad), Minute::of_ms(ev.event_time_ms))
}

fn check_final_bounds(h: &History, facts: &[EventFacts], state: &FinalState, c: &mut Check) {
    let mut acked: BTreeMap<(String, Minute), u64> = BTreeMap::new();
    let mut attempted: BTreeMap<(String, Minute), u64> = BTreeMap::new();
    for (i, f) in facts.iter().enumerate() {
        if f.first_invoked.is_none() {
            continue;
        }
        let b = bucket_of(h, i as EventIdx);
        *attempted.entry(b.clone()).or_insert(0) += 1;
        if f.acked_at.is_some() {
            *acked.entry(b).or_insert(0) += 1;
        }
    }
    let mut final_counts: BTreeMap<(String, Minute), u64> = BTreeMap::new();
    for m in state.models.values() {
        for (k, n) in m.buckets(None) {
            *final_counts.entry(k).or_insert(0) += n;
        }
    }
    let keys: std::collections::BTreeSet<&(String, Minute)> =
        attempted.keys().chain(final_counts.keys()).collect();
    for k in keys {
        let (lo, n, hi) = (
            acked.get(k).copied().unwrap_or(0),
            final_counts.get(k).copied().unwrap_or(0),
            attempted.get(k).copied().unwrap_or(0),
        );
        if !(lo <= n && n <= hi) {
            c.flag(|| {
                format!(
                    "ad {} minute {}: {lo} acknowledged <= {n} counted <= {hi} attempted fails",
                    k.0, k.1 .0
                )
            });
        }
    }
}

/// Per ad: sorted acknowledgement times, and sorted first-invocation times of the events
/// that may be counted.
fn ad_timelines(h: &History, facts: &[EventFacts]) -> HashMap<u32, (Vec<u64>, Vec<u64>)> {
    let mut out: HashMap<u32, (Vec<u64>, Vec<u64>)> = HashMap::new();
    for (i, f) in facts.iter().enumerate() {
        let ad = h.events[i].ad;
        let t = out.entry(ad).or_default();
        if let Some(a) = f.acked_at {
            t.0.push(a);
        }
        if let Some(inv) = f.first_invoked {
            if !f.refused() {
                t.1.push(inv);
            }
        }
    }
    for t in out.values_mut() {
        t.0.sort_unstable();
        t.1.sort_unstable();
    }
    out
}

fn check_reads(h: &History, facts: &[EventFacts], c: &mut Check) {
    let lines = ad_timelines(h, facts);
    let empty = (Vec::new(), Vec::new());
    let within = |ad: u32, v: u64, invoked: u64, completed: u64| -> Option<(u64, u64)> {
        let (acks, possible) = lines.get(&ad).unwrap_or(&empty);
        let lo = acks.partition_point(|&t| t < invoked) as u64;
        let hi = possible.partition_point(|&t| t < completed) as u64;
        (!(lo <= v && v <= hi)).then_some((lo, hi))
    };
    // Count reads per ad, for the monotonicity check.
    let mut reads: HashMap<u32, Vec<(u64, u64, u64)>> = HashMap::new();
    for op in &h.ops {
        match &op.kind {
            OpKind::Count {
                ad,
                result: Outcome::Ok(v),
                served_by,
            } => {
                if let Some((lo, hi)) = within(*ad, *v, op.invoked_us, op.completed_us) {
                    c.flag(|| {
                        format!(
                            "count of {} read {v} in [{:.3}s, {:.3}s]; possible: {lo}..={hi}{}",
                            ad_name(*ad),
                            op.invoked_us as f64 / 1e6,
                            op.completed_us as f64 / 1e6,
                            served_by
                                .map(|(n, i)| format!(" (node {n} at index {i})"))
                                .unwrap_or_default()
                        )
                    });
                }
                reads
                    .entry(*ad)
                    .or_default()
                    .push((op.invoked_us, op.completed_us, *v));
            }
            OpKind::Top {
                result: Outcome::Ok(rows),
                ..
            } => {
                for (name, v) in rows {
                    let Some(ad) = ad_index(name) else {
                        c.flag(|| format!("top-N names ad {name:?}, which was never written"));
                        continue;
                    };
                    if let Some((lo, hi)) = within(ad, *v, op.invoked_us, op.completed_us) {
                        c.flag(|| {
                            format!(
                                "top-N row {name} = {v} in [{:.3}s, {:.3}s]; possible: {lo}..={hi}",
                                op.invoked_us as f64 / 1e6,
                                op.completed_us as f64 / 1e6
                            )
                        });
                    }
                    // A top-N row is a linearizable read of its ad's count too.
                    reads
                        .entry(ad)
                        .or_default()
                        .push((op.invoked_us, op.completed_us, *v));
                }
                if rows.windows(2).any(|w| w[0].1 < w[1].1) {
                    c.flag(|| format!("top-N rows out of order: {rows:?}"));
                }
            }
            _ => {}
        }
    }
    for (ad, mut rs) in reads {
        // Sweep reads by invocation; every read completed before it bounds it below.
        let mut by_completion = rs.clone();
        by_completion.sort_unstable_by_key(|r| r.1);
        rs.sort_unstable_by_key(|r| r.0);
        let mut j = 0;
        let mut floor: Option<(u64, u64)> = None;
        for (invoked, completed, v) in rs {
            while j < by_completion.len() && by_completion[j].1 < invoked {
                let (_, done, value) = by_completion[j];
                if floor.is_none_or(|(fv, _)| value > fv) {
                    floor = Some((value, done));
                }
                j += 1;
            }
            if let Some((fv, done)) = floor {
                if v < fv {
                    c.flag(|| {
                        format!(
                            "count of {} went backwards: {fv} read by {:.3}s, then {v} in a \
                             read invoked at {:.3}s and completed at {:.3}s",
                            ad_name(ad),
                            done as f64 / 1e6,
                            invoked as f64 / 1e6,
                            completed as f64 / 1e6
                        )
                    });
                }
            }
        }
    }
}

fn check_top(state: &FinalState, c: &mut Check) {
    let top = match &state.final_top {
        Err(e) => {
            c.flag(|| format!("the final top-N could not be read: {e}"));
            return;
        }
        Ok(t) => t,
    };
    // Recompute at the positions the answer reflects: a straggling retry may commit after
    // it was read.
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for (g, m) in &state.models {
        let Some(&at) = top.positions.get(g) else {
            c.flag(|| format!("the final top-N has no position for group {g}"));
            continue;
        };
        for (ad, n) in m.totals(Some(at)) {
            *totals.entry(ad).or_insert(0) += n;
        }
    }
    let mut want: Vec<(String, u64)> = totals.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let got = &top.rows;
    if got.len() != want.len() {
        c.flag(|| {
            format!(
                "final top-N has {} rows, the model {}",
                got.len(),
                want.len()
            )
        });
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g != w {
            c.flag(|| format!("final top-N row {}: {g:?}, recomputed {w:?}", i + 1));
        }
    }
}

/// Every answered ingest must be borne out by the log: for each group's part of it (the
/// clicks of that group, in request order, as the nodes propose them), some entry holds
/// exactly those clicks and the model's verdicts for them are the answers given.
fn check_answers(h: &History, state: &FinalState, c: &mut Check) {
    let mut group_of: HashMap<&str, u64> = HashMap::new();
    let mut by_first: HashMap<&str, Vec<(u64, usize)>> = HashMap::new();
    for (&g, m) in &state.models {
        for (i, e) in m.ingests.iter().enumerate() {
            for id in &e.ids {
                group_of.insert(id.as_str(), g);
            }
            if let Some(first) = e.ids.first() {
                by_first.entry(first.as_str()).or_default().push((g, i));
            }
        }
    }
    let expect = |v: ModelVerdict| match v {
        ModelVerdict::Counted => Answer::Accepted,
        ModelVerdict::Duplicate => Answer::Duplicate,
        ModelVerdict::Rejected => Answer::Rejected,
        ModelVerdict::Late => Answer::Late,
    };
    for op in &h.ops {
        let OpKind::Ingest {
            events,
            result: Outcome::Ok(answers),
        } = &op.kind
        else {
            continue;
        };
        let mut parts: BTreeMap<u64, (Vec<&str>, Vec<Answer>)> = BTreeMap::new();
        for (&e, &a) in events.iter().zip(answers) {
            let id = h.events[e as usize].id.as_str();
            match group_of.get(id) {
                Some(&g) => {
                    let p = parts.entry(g).or_default();
                    p.0.push(id);
                    p.1.push(a);
                }
                None => c.flag(|| {
                    format!(
                        "event {id} was answered {a:?} (at {:.3}s) but is in no log entry",
                        op.completed_us as f64 / 1e6
                    )
                }),
            }
        }
        for (g, (ids, got)) in parts {
            let candidates = by_first.get(ids[0]).map_or(&[][..], Vec::as_slice);
            let matching = candidates.iter().any(|&(cg, i)| {
                let e = &state.models[&cg].ingests[i];
                cg == g
                    && e.ids.iter().map(String::as_str).eq(ids.iter().copied())
                    && e.verdicts
                        .iter()
                        .map(|&v| expect(v))
                        .eq(got.iter().copied())
            });
            if !matching {
                c.flag(|| {
                    format!(
                        "answers {got:?} for {ids:?} (group {g}, at {:.3}s) match no entry of \
                         the log holding those clicks",
                        op.completed_us as f64 / 1e6
                    )
                });
            }
        }
    }
}

fn check_convergence(state: &FinalState, c: &mut Check) {
    for p in &state.log_problems {
        c.flag(|| p.clone());
    }
    for g in &state.uncompared_groups {
        c.flag(|| format!("group {g}: no two replicas ended at the same applied index"));
    }
    let mut groups: BTreeMap<u64, Vec<(u64, &ReplicaGroup)>> = BTreeMap::new();
    for (&node, gs) in &state.replicas {
        for (&g, r) in gs {
            groups.entry(g).or_default().push((node, r));
        }
    }
    for (g, rs) in groups {
        for (i, (na, a)) in rs.iter().enumerate() {
            for (nb, b) in &rs[i + 1..] {
                if a.applied == b.applied && (a.digest, a.keys) != (b.digest, b.keys) {
                    c.flag(|| {
                        format!(
                            "group {g}: nodes {na} and {nb} both applied {:?} but their \
                             states differ ({:032x}/{} keys vs {:032x}/{} keys)",
                            a.applied, a.digest, a.keys, b.digest, b.keys
                        )
                    });
                }
            }
        }
    }
}

fn check_liveness(h: &History, probes: &[Probe], c: &mut Check) {
    for p in probes {
        let fine = |d: Option<Duration>| d.is_some_and(|d| d <= LIVENESS_BOUND);
        if !fine(p.write_after) || !fine(p.read_after) {
            c.flag(|| {
                format!(
                    "after healing {}: write after {:?}, read after {:?} (bound {:?}){}",
                    p.nemesis,
                    p.write_after,
                    p.read_after,
                    LIVENESS_BOUND,
                    p.error
                        .as_ref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                )
            });
        }
    }
    for f in &h.faults {
        if f.minority.is_empty() && !f.no_quorum {
            continue;
        }
        for op in &h.ops {
            let OpKind::Ingest {
                events,
                result: Outcome::Ok(answers),
            } = &op.kind
            else {
                continue;
            };
            let during = op.invoked_us >= f.start_us && op.completed_us <= f.heal_us;
            let cut_off = f.no_quorum || op.node.is_some_and(|n| f.minority.contains(&n));
            if during && cut_off {
                let acked = answers.iter().filter(|a| a.acked()).count();
                if acked > 0 {
                    c.flag(|| {
                        format!(
                            "{} ({}): {acked} of {} clicks acknowledged by {} during the \
                             fault (invoked {:.3}s, completed {:.3}s)",
                            f.nemesis,
                            f.detail,
                            events.len(),
                            op.node
                                .map_or("the routing client".to_owned(), |n| format!("node {n}")),
                            op.invoked_us as f64 / 1e6,
                            op.completed_us as f64 / 1e6
                        )
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::{Answer, Event, Fault, Op};
    use super::super::model::{Counted, IngestModel, Verdict as V};
    use super::*;

    const T: i64 = 1_700_000_000_000;

    /// Three events of ad 0: e0 and e1 acknowledged (e1 twice: a duplicate send), e2
    /// indeterminate; the model counts e0 and e1; replicas 1 and 2 agree with it.
    fn base() -> (History, FinalState) {
        let events = (0..3)
            .map(|i| Event {
                id: format!("e{i}"),
                ad: 0,
                event_time_ms: T,
            })
            .collect();
        let ingest = |invoked_us, completed_us, events: Vec<u32>, result| Op {
            process: 0,
            node: None,
            invoked_us,
            completed_us,
            kind: OpKind::Ingest { events, result },
        };
        let ops = vec![
            ingest(
                10,
                20,
                vec![0, 1],
                Outcome::Ok(vec![Answer::Accepted, Answer::Accepted]),
            ),
            ingest(30, 40, vec![1], Outcome::Ok(vec![Answer::Duplicate])),
            ingest(50, 60, vec![2], Outcome::Info("timeout".into())),
        ];
        let h = History {
            events,
            ops,
            faults: vec![],
        };
        let minute = Minute::of_ms(T);
        let entry = |index, ids: &[&str], verdicts: Vec<V>| IngestModel {
            index,
            ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            verdicts,
        };
        let model = GroupModel {
            counted: ["e0", "e1"]
                .iter()
                .map(|id| Counted {
                    index: 3,
                    event_id: (*id).to_owned(),
                    ad: ad_name(0),
                    minute,
                })
                .collect(),
            ingests: vec![
                entry(3, &["e0", "e1"], vec![V::Counted, V::Counted]),
                entry(4, &["e1"], vec![V::Duplicate]),
                entry(5, &["e2"], vec![V::Rejected]),
            ],
            seen: ["e0", "e1", "e2"].iter().map(|s| (*s).to_owned()).collect(),
            last_index: Some(5),
            last_counting_index: Some(3),
        };
        let replica = ReplicaGroup {
            applied: Some(5),
            digest: 7,
            keys: 3,
            buckets: [((ad_name(0), minute), 2)].into_iter().collect(),
            totals: [(ad_name(0), 2)].into_iter().collect(),
        };
        let state = FinalState {
            replicas: [1, 2]
                .into_iter()
                .map(|n| (n, [(1, replica.clone())].into_iter().collect()))
                .collect(),
            models: [(1, model)].into_iter().collect(),
            log_problems: vec![],
            uncompared_groups: vec![],
            final_top: Ok(FinalTop {
                rows: vec![(ad_name(0), 2)],
                positions: [(1, 5)].into_iter().collect(),
            }),
        };
        (h, state)
    }

    fn read(h: &mut History, invoked_us: u64, completed_us: u64, v: u64) {
        h.ops.push(Op {
            process: 9,
            node: None,
            invoked_us,
            completed_us,
            kind: OpKind::Count {
                ad: 0,
                result: Outcome::Ok(v),
                served_by: None,
            },
        });
    }

    #[test]
    fn a_clean_run_passes() {
        let (mut h, state) = base();
        read(&mut h, 25, 26, 2);
        read(&mut h, 55, 56, 2);
        let v = check(&h, &state, &[]);
        assert!(v.ok(), "{}", v.report());
        assert_eq!(
            v.events,
            EventTally {
                acked: 2,
                refused: 0,
                indeterminate: 1
            }
        );
    }

    #[test]
    fn an_acknowledged_event_missing_from_the_log_is_lost() {
        let (h, mut state) = base();
        // The leader acknowledged e1 but its entry never committed: the log has only e0.
        let m = state.models.get_mut(&1).expect("group 1");
        m.counted.pop();
        m.ingests = vec![IngestModel {
            index: 3,
            ids: vec!["e0".into()],
            verdicts: vec![V::Counted],
        }];
        m.seen.remove("e1");
        for r in state.replicas.values_mut() {
            let g = r.get_mut(&1).expect("group 1");
            *g.buckets.values_mut().next().expect("a bucket") = 1;
            g.totals = [(ad_name(0), 1)].into_iter().collect();
        }
        state.final_top = Ok(FinalTop {
            rows: vec![(ad_name(0), 1)],
            positions: [(1, 5)].into_iter().collect(),
        });
        let v = check(&h, &state, &[]);
        assert_eq!(v.anomalies("1"), 1, "{}", v.report());
    }

    #[test]
    fn a_replica_counting_a_retry_twice_is_a_double_count() {
        let (h, mut state) = base();
        let r = state.replicas.get_mut(&2).expect("node 2");
        let g = r.get_mut(&1).expect("group 1");
        *g.buckets.values_mut().next().expect("a bucket") = 3;
        *g.totals.values_mut().next().expect("a total") = 3;
        let v = check(&h, &state, &[]);
        // The bucket and the total both disagree with the model.
        assert_eq!(v.anomalies("3"), 2, "{}", v.report());
    }

    #[test]
    fn an_event_answered_not_counted_must_not_count() {
        let (mut h, state) = base();
        h.ops[2].kind = OpKind::Ingest {
            events: vec![2],
            result: Outcome::Ok(vec![Answer::Rejected]),
        };
        let mut state = state;
        let m = state.models.get_mut(&1).expect("group 1");
        m.counted.push(Counted {
            index: 5,
            event_id: "e2".into(),
            ad: ad_name(0),
            minute: Minute::of_ms(T),
        });
        let v = check(&h, &state, &[]);
        assert!(v.anomalies("3") >= 1, "{}", v.report());
    }

    #[test]
    fn reads_out_of_bounds_or_going_backwards_are_flagged() {
        let (mut h, state) = base();
        // Before anything was attempted, two is impossible...
        read(&mut h, 0, 5, 2);
        // ... as is a count below what was acknowledged before the read began (which is
        // also below the earlier read: two anomalies).
        read(&mut h, 25, 26, 1);
        let v = check(&h, &state, &[]);
        assert_eq!(v.anomalies("4"), 3, "{}", v.report());

        let (mut h, state) = base();
        // Both within bounds, but the later read saw less than the earlier one.
        read(&mut h, 55, 56, 3);
        read(&mut h, 57, 58, 2);
        let v = check(&h, &state, &[]);
        assert_eq!(v.anomalies("4"), 1, "{}", v.report());
        assert!(v.report().contains("went backwards"), "{}", v.report());
    }

    #[test]
    fn a_minority_node_acknowledging_during_a_partition_is_flagged() {
        let (mut h, state) = base();
        h.faults.push(Fault {
            nemesis: "split".into(),
            detail: "[3] | [1, 2]".into(),
            minority: vec![3],
            no_quorum: false,
            injected_us: 5,
            start_us: 5,
            heal_us: 100,
        });
        h.ops[1].node = Some(3);
        let v = check(&h, &state, &[]);
        assert_eq!(v.anomalies("7"), 1, "{}", v.report());
        // The same answer from a majority node is fine.
        h.ops[1].node = Some(1);
        assert!(check(&h, &state, &[]).ok());
    }

    #[test]
    fn replicas_at_one_index_with_different_states_do_not_converge() {
        let (h, mut state) = base();
        state
            .replicas
            .get_mut(&2)
            .expect("node 2")
            .get_mut(&1)
            .expect("group 1")
            .digest = 8;
        let v = check(&h, &state, &[]);
        assert_eq!(v.anomalies("6"), 1, "{}", v.report());
    }

    #[test]
    fn a_wrong_final_top_and_a_slow_recovery_are_flagged() {
        let (h, mut state) = base();
        state.final_top = Ok(FinalTop {
            rows: vec![(ad_name(0), 1)],
            positions: [(1, 5)].into_iter().collect(),
        });
        let slow = Probe {
            nemesis: "kill".into(),
            write_after: Some(Duration::from_secs(11)),
            read_after: Some(Duration::from_secs(11)),
            error: None,
        };
        let v = check(&h, &state, &[slow]);
        assert_eq!(v.anomalies("5"), 1, "{}", v.report());
        assert_eq!(v.anomalies("7"), 1, "{}", v.report());
    }

    #[test]
    fn an_answer_the_log_does_not_bear_out_is_flagged() {
        // The retry of e1 was answered Rejected (a future-event check before dedup), but
        // the entry holding it says Duplicate.
        let (mut h, state) = base();
        h.ops[1].kind = OpKind::Ingest {
            events: vec![1],
            result: Outcome::Ok(vec![Answer::Rejected]),
        };
        let v = check(&h, &state, &[]);
        assert!(v.anomalies("3") >= 1, "{}", v.report());
        assert!(v.report().contains("match no entry"), "{}", v.report());
    }

    #[test]
    fn a_click_counted_under_another_ad_or_minute_is_unexpected() {
        let (h, mut state) = base();
        let m = state.models.get_mut(&1).expect("group 1");
        m.counted[1].minute = Minute(m.counted[1].minute.0 + 1);
        let v = check(&h, &state, &[]);
        assert!(v.anomalies("2") >= 1, "{}", v.report());
    }

    #[test]
    fn a_top_row_naming_an_unknown_ad_is_flagged() {
        let (mut h, state) = base();
        h.ops.push(Op {
            process: 9,
            node: None,
            invoked_us: 70,
            completed_us: 71,
            kind: OpKind::Top {
                n: 10,
                result: Outcome::Ok(vec![("ghost".into(), 1)]),
            },
        });
        let v = check(&h, &state, &[]);
        assert_eq!(v.anomalies("4"), 1, "{}", v.report());
    }
}
