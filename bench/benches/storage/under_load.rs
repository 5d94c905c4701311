//! The target's queries (`count`, `top -n 100 --last 5`) timed while another thread applies
//! 1,000-click entries at 50k clicks/s, with what that thread achieved meanwhile.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use adclick_proto::model::{AdId, Minute, MinuteRange};
use adclick_storage::sm::{SmReader, StateMachine};
use criterion::Criterion;

use crate::{fmt_percentiles, ingest_entry, Workload, CLICKS_PER_ENTRY, LOAD_CLICKS_PER_S};

/// A thread applying 1,000-click entries paced at `LOAD_CLICKS_PER_S`, as a leader's apply
/// loop would at the design's peak; it publishes its event-time minute for the queries.
struct Ingestor {
    stop: Arc<AtomicBool>,
    now_minute: Arc<AtomicI64>,
    thread: JoinHandle<IngestLog>,
}

/// Every apply of the paced ingest: when it started and how long it took.
struct IngestLog {
    applies: Vec<(Instant, Duration)>,
}

impl IngestLog {
    /// Achieved clicks/s and apply durations (sorted) of the applies started in
    /// `[from, to)`.
    fn window(&self, from: Instant, to: Instant) -> (f64, Vec<Duration>) {
        let mut took: Vec<Duration> = self
            .applies
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| *d)
            .collect();
        took.sort_unstable();
        let secs = to.saturating_duration_since(from).as_secs_f64();
        let rate = (took.len() * CLICKS_PER_ENTRY) as f64 / secs.max(f64::MIN_POSITIVE);
        (rate, took)
    }
}

impl Ingestor {
    fn start(mut sm: StateMachine, mut wl: Workload, mut next_index: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let now_minute = Arc::new(AtomicI64::new(Minute::of_ms(wl.now_ms()).0));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&now_minute));
        let thread = std::thread::spawn(move || {
            let per_entry =
                Duration::from_secs_f64(CLICKS_PER_ENTRY as f64 / LOAD_CLICKS_PER_S as f64);
            let mut applies = Vec::new();
            let mut due = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let e = ingest_entry(&mut wl, next_index);
                next_index += 1;
                let t = Instant::now();
                sm.apply_entries([e]).expect("apply under load");
                applies.push((t, t.elapsed()));
                m.store(Minute::of_ms(wl.now_ms()).0, Ordering::Relaxed);
                // A thread that fell behind catches up flat out, as a real apply loop
                // would; the achieved rate per window shows it.
                due += per_entry;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            IngestLog { applies }
        });
        Ingestor {
            stop,
            now_minute,
            thread,
        }
    }

    fn now(&self) -> Minute {
        Minute(self.now_minute.load(Ordering::Relaxed))
    }

    fn finish(self) -> IngestLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the ingest thread panicked")
    }
}

/// Pause between two queries of the `_paced` benchmark. Spun, not slept, so the querying
/// thread uses as much CPU as without it: only the gaps in its read lock change.
const QUERY_PAUSE: Duration = Duration::from_micros(50);

/// The target's queries, timed one by one by one client querying back to back while a
/// thread applies 50k clicks/s. Criterion reports the mean query time; the `note:` lines
/// give percentiles over every timed query (warm-up included) and what the ingest thread
/// achieved meanwhile. The `_paced` variant pauses `QUERY_PAUSE` between queries.
pub(crate) fn queries_under_load(
    c: &mut Criterion,
    sm: StateMachine,
    live: Workload,
    next_index: u64,
) {
    let reader: SmReader = sm.reader();
    let popular = AdId::new(&Workload::ad_name(1)).expect("a generated ad id is valid");
    let ingest = Ingestor::start(sm, live, next_index);
    // Let the first dense minutes open before measuring.
    std::thread::sleep(Duration::from_secs(1));

    let mut g = c.benchmark_group("sm_under_load_50k_clicks_per_s");
    g.measurement_time(Duration::from_secs(5));
    type Query<'a> = Box<dyn Fn(Minute) + 'a>;
    let count = |m: u32| -> Query<'_> {
        let (reader, popular) = (&reader, &popular);
        Box::new(move |now| {
            black_box(
                reader
                    .count(popular, MinuteRange::last(m, now), None)
                    .expect("count"),
            );
        })
    };
    let top = || -> Query<'_> {
        let reader = &reader;
        Box::new(move |now| {
            black_box(
                reader
                    .top(100, MinuteRange::last(5, now), None)
                    .expect("top"),
            );
        })
    };
    let queries: [(&str, Query<'_>, Duration); 4] = [
        ("count_popular_last_5min", count(5), Duration::ZERO),
        ("count_popular_last_60min", count(60), Duration::ZERO),
        ("top100_last_5min", top(), Duration::ZERO),
        ("top100_last_5min_paced", top(), QUERY_PAUSE),
    ];
    let mut phases = Vec::new();
    for (name, query, pause) in &queries {
        let mut lat: Vec<Duration> = Vec::new();
        let from = Instant::now();
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let now = ingest.now();
                    let t = Instant::now();
                    query(now);
                    let d = t.elapsed();
                    total += d;
                    lat.push(d);
                    let p = Instant::now();
                    while p.elapsed() < *pause {
                        std::hint::spin_loop();
                    }
                }
                total
            })
        });
        lat.sort_unstable();
        phases.push((*name, from, Instant::now(), lat));
    }
    g.finish();
    let log = ingest.finish();
    for (name, from, to, lat) in &phases {
        let (rate, apply) = log.window(*from, *to);
        println!("note: under load, {name}: queries {}", fmt_percentiles(lat));
        if apply.is_empty() {
            continue;
        }
        println!(
            "note:   meanwhile the ingest thread applied {rate:.0} clicks/s \
             (target {LOAD_CLICKS_PER_S}); apply per 1000-click entry {}",
            fmt_percentiles(&apply)
        );
    }
}
