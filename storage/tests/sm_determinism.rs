//! Determinism property: replicas fed the same random command sequence — applied in
//! different batch splits, with different tuning, one reopened midway, one catching up
//! from another's snapshot — end with equal digests, and their outcomes and counts equal
//! a deliberately simple in-memory model of the rules (DESIGN.md, "Write path" / "Time").
//!
//! Seeds: `SM_SEED=<n>` runs one seed; otherwise a fixed list. The seed is printed first,
//! so a failure's output names it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use adclick_proto::model::{AdId, Click, EventId, Minute, MinuteRange, Outcome, RejectReason};
use adclick_storage::sm::{open_db, SmOptions, StateMachine};
use adclick_storage::types::{
    Command, CommandResponse, Entry, FilterDef, GroupSettings, IngestBatch, LogId,
};
use openraft::{EntryPayload, Membership};

const MIN: i64 = 60_000;
const T0: i64 = 1_720_483_200_000;

/// xorshift64*: small, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The filters the generator registers, with the model's own evaluation of each.
const FILTERS: &[(&str, &str)] = &[
    ("us", "country = \"US\""),
    ("a1", "ad_id starts_with \"ad1\""),
    ("broken", "country =="),
];

fn model_matches(expr: &str, c: &Click) -> bool {
    match expr {
        "country = \"US\"" => c.country == "US",
        "ad_id starts_with \"ad1\"" => c.ad_id.as_str().starts_with("ad1"),
        other => panic!("model has no evaluation for {other}"),
    }
}

/// The rules, written as plainly as possible.
#[derive(Default)]
struct Model {
    settings: GroupSettings,
    max_event: Option<i64>,
    watermark: Option<i64>,
    dedup: HashMap<Vec<u8>, i64>,
    counts: BTreeMap<(String, i64), u64>,
    filter_counts: BTreeMap<(String, String, i64), u64>,
    late: BTreeMap<(String, i64), u64>,
    filters: BTreeMap<String, (u64, String)>,
}

impl Model {
    fn apply(&mut self, index: u64, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::Ingest(b) => CommandResponse::Ingest(
                b.clicks
                    .iter()
                    .map(|c| self.click(c, b.proposed_at_ms))
                    .collect(),
            ),
            Command::Configure(s) => {
                if s.allowed_lateness_ms < 0 || s.max_future_skew_ms < 0 {
                    return CommandResponse::Refused(String::new());
                }
                self.settings = *s;
                if let Some(max) = self.max_event {
                    self.raise(max);
                }
                CommandResponse::Configured
            }
            Command::CreateFilter(FilterDef { name, expr }) => {
                if self.filters.contains_key(name) || expr == "country ==" {
                    return CommandResponse::Refused(String::new());
                }
                self.filters.insert(name.clone(), (index, expr.clone()));
                CommandResponse::FilterCreated { since_index: index }
            }
            Command::DropFilter { name } => {
                let existed = self.filters.remove(name).is_some();
                self.filter_counts.retain(|(f, _, _), _| f != name);
                CommandResponse::FilterDropped { existed }
            }
        }
    }

    fn raise(&mut self, max: i64) {
        self.max_event = Some(max);
        let w = max - self.settings.allowed_lateness_ms;
        self.watermark = Some(self.watermark.map_or(w, |old| old.max(w)));
    }

    fn click(&mut self, c: &Click, at: i64) -> Outcome {
        let t = c.event_time_ms;
        let floor = self.watermark.map(|w| w.div_euclid(MIN));
        if let Some(m) = self.dedup.get(c.event_id.as_bytes()) {
            if floor.is_none_or(|f| *m >= f) {
                return Outcome::Duplicate;
            }
        }
        if t > at + self.settings.max_future_skew_ms {
            return Outcome::Rejected(RejectReason::FutureEvent);
        }
        let minute = t.div_euclid(MIN);
        let ad = c.ad_id.to_string();
        if self.watermark.is_some_and(|w| t < w) {
            *self.late.entry((ad, minute)).or_default() += 1;
            return Outcome::Late;
        }
        self.dedup.insert(c.event_id.as_bytes().to_vec(), minute);
        *self.counts.entry((ad.clone(), minute)).or_default() += 1;
        for (name, (_, expr)) in &self.filters {
            if model_matches(expr, c) {
                *self
                    .filter_counts
                    .entry((name.clone(), ad.clone(), minute))
                    .or_default() += 1;
            }
        }
        self.raise(self.max_event.map_or(t, |m| m.max(t)));
        Outcome::Accepted
    }
}

fn log_id(index: u64) -> LogId {
    adclick_storage::types::log_id(2, 7, index)
}

/// A random but plausible history: mostly ingest, with duplicates (same or different
/// time), late, far-late and future events, settings changes and filter churn.
fn generate(rng: &mut Rng, entries: usize) -> Vec<Entry> {
    let mut now = T0;
    let mut seen: Vec<(EventId, i64)> = Vec::new();
    let mut fresh = 0u64;
    let mut out = Vec::new();
    for i in 0..entries {
        let index = i as u64 + 1;
        now += rng.below(25_000) as i64;
        let roll = rng.below(100);
        let payload = if roll < 85 {
            let n = 1 + rng.below(40);
            let clicks = (0..n)
                .map(|_| {
                    let (event_id, base_t) = if !seen.is_empty() && rng.chance(25) {
                        seen[rng.below(seen.len() as u64) as usize].clone()
                    } else {
                        fresh += 1;
                        let id =
                            EventId::new(format!("ev-{fresh}").into_bytes()).expect("valid id");
                        (id, 0)
                    };
                    let t = if base_t != 0 && rng.chance(50) {
                        base_t
                    } else {
                        match rng.below(100) {
                            0..70 => now - rng.below(90_000) as i64,
                            70..85 => now - rng.below(15 * MIN as u64) as i64,
                            85..95 => now + rng.below(90_000) as i64,
                            _ => now - 2 * 60 * MIN,
                        }
                    };
                    if base_t == 0 {
                        seen.push((event_id.clone(), t));
                    }
                    let ad = format!("ad{}", (rng.unit().powi(3) * 40.0) as u64);
                    Click {
                        event_id,
                        ad_id: AdId::new(&ad).expect("valid ad"),
                        event_time_ms: t,
                        user_id: format!("u{}", rng.below(100)),
                        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, rng.below(255) as u8)),
                        country: ["US", "FR", "DE"][rng.below(3) as usize].into(),
                    }
                })
                .collect();
            EntryPayload::Normal(Command::Ingest(IngestBatch {
                proposed_at_ms: now,
                clicks,
            }))
        } else if roll < 89 {
            let lateness = [-MIN, 0, MIN, 5 * MIN, 10 * MIN][rng.below(5) as usize];
            let skew = [0, 30_000, 60_000][rng.below(3) as usize];
            EntryPayload::Normal(Command::Configure(GroupSettings {
                allowed_lateness_ms: lateness,
                max_future_skew_ms: skew,
            }))
        } else if roll < 94 {
            let (name, expr) = FILTERS[rng.below(FILTERS.len() as u64) as usize];
            // Sometimes register a valid expression under another filter's name.
            let name = if rng.chance(20) { "us" } else { name };
            EntryPayload::Normal(Command::CreateFilter(FilterDef {
                name: name.into(),
                expr: expr.into(),
            }))
        } else if roll < 97 {
            let name = ["us", "a1", "nope"][rng.below(3) as usize];
            EntryPayload::Normal(Command::DropFilter { name: name.into() })
        } else if roll < 99 {
            EntryPayload::Blank
        } else {
            let voters = [1u64, 2, 3]
                .into_iter()
                .take(1 + rng.below(3) as usize)
                .collect();
            EntryPayload::Membership(Membership::new_with_defaults(vec![voters], []))
        };
        out.push(Entry {
            log_id: log_id(index),
            payload,
        });
    }
    out
}

fn open(dir: &Path, opts: SmOptions) -> StateMachine {
    StateMachine::open(
        open_db(&dir.join("db")).expect("db"),
        9,
        dir.join("snap"),
        opts,
    )
    .expect("open")
}

/// Only the variant matters for refusals (the model does not reproduce messages).
fn normalise(r: CommandResponse) -> CommandResponse {
    match r {
        CommandResponse::Refused(_) => CommandResponse::Refused(String::new()),
        other => other,
    }
}

fn run(seed: u64) {
    println!("seed = {seed} (rerun with SM_SEED={seed})");
    let mut rng = Rng::new(seed);
    let entries = generate(&mut rng, 250);
    let mut model = Model::default();
    let want: Vec<CommandResponse> = entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(c) => model.apply(e.log_id.index, c),
            _ => CommandResponse::None,
        })
        .collect();

    // The generator must exercise every rule, or the comparison proves little.
    let mut tally = adclick_proto::model::Tally::default();
    let mut filters_created = 0;
    for r in &want {
        match r {
            CommandResponse::Ingest(o) => o.iter().for_each(|o| tally.add(*o)),
            CommandResponse::FilterCreated { .. } => filters_created += 1,
            _ => {}
        }
    }
    println!("outcomes {tally:?}, filters created {filters_created}");
    assert!(
        tally.accepted > 0
            && tally.duplicate > 0
            && tally.late > 0
            && tally.rejected > 0
            && filters_created > 0,
        "seed {seed}: generator missed a rule: {tally:?}, {filters_created} filters"
    );

    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    // A: one entry per apply call.
    let mut a = open(dirs[0].path(), SmOptions::default());
    let mut got_a = Vec::new();
    for e in &entries {
        got_a.extend(a.apply_entries([e.clone()]).expect("apply a"));
    }
    // B: random splits, tiny commit batches, nothing final kept in memory.
    // With the `fault-injection` feature SmOptions has one more field, left at its default.
    #[allow(clippy::needless_update)]
    let opts_b = SmOptions {
        keep_final_minutes: 0,
        max_pending_clicks: 7,
        install_batch_records: 3,
        expected_ads: 100,
        ..SmOptions::default()
    };
    let mut b = open(dirs[1].path(), opts_b.clone());
    let mut got_b = Vec::new();
    let mut i = 0;
    let snap_at = entries.len() / 3 + rng.below(entries.len() as u64 / 3) as usize;
    let mut snap = None;
    while i < entries.len() {
        let n = (1 + rng.below(20) as usize).min(entries.len() - i);
        let end = if i < snap_at && i + n > snap_at {
            snap_at
        } else {
            i + n
        };
        got_b.extend(
            b.apply_entries(entries[i..end].iter().cloned())
                .expect("apply b"),
        );
        i = end;
        if i == snap_at {
            snap = Some(b.snapshot_builder().build_blocking().expect("snapshot"));
        }
    }
    // C: reopened midway.
    let reopen_at = 1 + rng.below(entries.len() as u64 - 1) as usize;
    let opts_c = SmOptions {
        keep_final_minutes: 3,
        ..SmOptions::default()
    };
    let mut c = open(dirs[2].path(), opts_c.clone());
    let mut got_c = c
        .apply_entries(entries[..reopen_at].iter().cloned())
        .expect("apply c");
    drop(c);
    let mut c = open(dirs[2].path(), opts_c);
    got_c.extend(
        c.apply_entries(entries[reopen_at..].iter().cloned())
            .expect("apply c"),
    );
    // D: installs B's snapshot, then applies the rest.
    let snap = snap.expect("snapshot taken");
    let mut d = open(dirs[3].path(), opts_b);
    d.install_snapshot_file(&snap.meta, snap.snapshot)
        .expect("install");
    let got_d = d
        .apply_entries(entries[snap_at..].iter().cloned())
        .expect("apply d");

    let want: Vec<_> = want.into_iter().map(normalise).collect();
    for (name, got) in [("A", &got_a), ("B", &got_b), ("C", &got_c)] {
        let got: Vec<_> = got.iter().cloned().map(normalise).collect();
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g,
                w,
                "seed {seed}: replica {name}, entry {} ({})",
                k + 1,
                entries[k].payload
            );
        }
        assert_eq!(got.len(), want.len());
    }
    let got_d: Vec<_> = got_d.into_iter().map(normalise).collect();
    assert_eq!(
        got_d,
        want[snap_at..],
        "seed {seed}: replica D after the snapshot"
    );

    let digests: Vec<_> = [&a, &b, &c, &d]
        .iter()
        .map(|sm| sm.reader().digest().expect("digest"))
        .collect();
    for (name, dg) in ["B", "C", "D"].iter().zip(&digests[1..]) {
        assert_eq!(
            *dg, digests[0],
            "seed {seed}: replica {name} diverged from A"
        );
    }
    assert_eq!(digests[0].applied, Some(log_id(entries.len() as u64)));

    for sm in [&a, &b, &c, &d] {
        check_counts(seed, &model, sm);
    }
}

fn check_counts(seed: u64, model: &Model, sm: &StateMachine) {
    let r = sm.reader();
    let all = MinuteRange::new(Minute(0), Minute(i64::MAX / MIN)).expect("range");
    let one = |m: i64| MinuteRange::new(Minute(m), Minute(m + 1)).expect("range");
    for ((ad, m), n) in &model.counts {
        let got = r
            .count(&AdId::new(ad).expect("ad"), one(*m), None)
            .expect("count");
        assert_eq!(got.count, *n, "seed {seed}: count({ad}, minute {m})");
    }
    for ((name, ad, m), n) in &model.filter_counts {
        let got = r
            .count(&AdId::new(ad).expect("ad"), one(*m), Some(name))
            .expect("count");
        assert_eq!(
            got.count, *n,
            "seed {seed}: count({ad}, minute {m}, {name})"
        );
    }
    let mut totals: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for ((ad, _), n) in &model.counts {
        totals.entry(ad).or_default().0 += n;
    }
    for ((ad, _), n) in &model.late {
        totals.entry(ad).or_default().1 += n;
    }
    for (ad, (count, late)) in &totals {
        let got = r
            .count(&AdId::new(ad).expect("ad"), all, None)
            .expect("count");
        assert_eq!(
            (got.count, got.late),
            (*count, *late),
            "seed {seed}: totals of {ad}"
        );
        assert_eq!(got.watermark_ms, model.watermark, "seed {seed}: watermark");
    }
    // Top over everything and over the newest five minutes, for every slot.
    let newest = model.max_event.map_or(0, |t| t.div_euclid(MIN));
    let last5 = MinuteRange::last(5, Minute(newest));
    let mut slots: Vec<Option<&str>> = vec![None];
    slots.extend(model.filters.keys().map(|k| Some(k.as_str())));
    for range in [all, last5] {
        for slot in &slots {
            let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
            match slot {
                None => {
                    for ((ad, m), n) in &model.counts {
                        if range.contains(Minute(*m)) {
                            *sums.entry(ad).or_default() += n;
                        }
                    }
                }
                Some(f) => {
                    for ((name, ad, m), n) in &model.filter_counts {
                        if name == f && range.contains(Minute(*m)) {
                            *sums.entry(ad).or_default() += n;
                        }
                    }
                }
            }
            let mut want: Vec<(String, u64)> =
                sums.into_iter().map(|(a, n)| (a.to_owned(), n)).collect();
            want.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
            want.truncate(10);
            let got: Vec<(String, u64)> = r
                .top(10, range, *slot)
                .expect("top")
                .rows
                .into_iter()
                .map(|row| (row.ad_id.to_string(), row.count))
                .collect();
            assert_eq!(got, want, "seed {seed}: top 10 of {slot:?} over {range:?}");
        }
    }
}

#[test]
fn replicas_fed_the_same_commands_converge_and_match_the_model() {
    let seeds: Vec<u64> = match std::env::var("SM_SEED") {
        Ok(s) => vec![s.parse().expect("SM_SEED must be a u64")],
        Err(_) => (1..=6).collect(),
    };
    for seed in seeds {
        run(seed);
    }
}
