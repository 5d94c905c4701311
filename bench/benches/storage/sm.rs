//! The aggregation state machine on a loaded state: queries with nothing else running, and
//! apply of 1,000-click entries flat out; then hands the state to [`crate::under_load`].

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use adclick_proto::model::{AdId, Minute, MinuteRange};
use adclick_storage::sm::{open_db, SmOptions, StateMachine};
use adclick_storage::types::{Command, CommandResponse, Entry, FilterDef, GroupSettings};
use criterion::{Criterion, Throughput};
use openraft::EntryPayload;

use crate::under_load::queries_under_load;
use crate::{
    entry, fmt_percentiles, ingest_entry, workload, Sizes, Workload, ADS, CLICKS_PER_ENTRY, GROUP,
    LOAD_CLICKS_PER_S,
};

/// A state machine loaded with `sizes` of history, then: queries on it at rest, apply of
/// more batches flat out, and queries while a thread applies at 50k clicks/s.
pub(crate) fn state_machine(c: &mut Criterion, dir: &Path, sizes: Sizes) {
    let loaded = Loaded::build(&dir.join("sm"), sizes);
    queries_at_rest(c, &loaded);
    let Loaded {
        mut sm,
        mut next_index,
        now_ms,
        ..
    } = loaded;

    // From here on traffic arrives at the design's peak density: 3M clicks per minute of
    // event time (50k/s), continuing the loaded state's clock.
    let mut live = workload(LOAD_CLICKS_PER_S * 60, Some(now_ms), 4);
    let mut g = c.benchmark_group("sm_apply");
    g.throughput(Throughput::Elements(CLICKS_PER_ENTRY as u64));
    g.measurement_time(Duration::from_secs(5));
    let mut took: Vec<Duration> = Vec::new();
    let mut on_cpu: Vec<Duration> = Vec::new();
    g.bench_function("apply_1000_clicks_2_filters", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let e = ingest_entry(&mut live, next_index);
                next_index += 1;
                let cpu = thread_cpu();
                let t = Instant::now();
                black_box(sm.apply_entries([e]).expect("apply"));
                let d = t.elapsed();
                if let (Some(a), Some(b)) = (cpu, thread_cpu()) {
                    on_cpu.push(b.saturating_sub(a));
                }
                total += d;
                took.push(d);
            }
            total
        })
    });
    g.finish();
    took.sort_unstable();
    println!(
        "note: sm_apply, each 1000-click entry (warm-up included): {}",
        fmt_percentiles(&took)
    );
    if !on_cpu.is_empty() {
        // The kernel updates the counter at ticks and context switches, so single
        // entries are quantised to the tick: only the mean over many is meaningful.
        let sum = on_cpu.iter().sum::<Duration>();
        println!(
            "note: sm_apply, the applying thread's time on a CPU (schedstat, not counting \
             waits for a CPU held by other processes): mean={:.2?} per entry over {}",
            sum / on_cpu.len() as u32,
            on_cpu.len()
        );
    }

    queries_under_load(c, sm, live, next_index);
}

/// Time the calling thread has spent running on a CPU, from the first field of Linux's
/// `/proc/thread-self/schedstat` (nanoseconds); None where that file does not exist. Unlike
/// wall time, it does not count time the thread waited for a CPU other processes held.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The loaded state and what the queries need to know about it.
struct Loaded {
    sm: StateMachine,
    next_index: u64,
    /// The event clock at the end of the load: "now" for the queries.
    now_ms: i64,
    /// Ads drawn from the workload's distribution, for queries on a random ad.
    sample_ads: Vec<AdId>,
}

impl Loaded {
    /// Settings, two filters, then `history_minutes` at 10k clicks/min followed by
    /// `dense_minutes` at 100k clicks/min, all over `ADS` Zipf ads. Minutes older than the
    /// watermark minus `keep_final_minutes` end up served from RocksDB.
    fn build(dir: &Path, sizes: Sizes) -> Self {
        let db = open_db(&dir.join("db")).expect("open RocksDB");
        let mut sm = StateMachine::open(db, GROUP, dir.join("snapshots"), SmOptions::default())
            .expect("open the state machine");
        let setup = vec![
            entry(1, Command::Configure(GroupSettings::default())),
            entry(
                2,
                Command::CreateFilter(FilterDef {
                    name: "usa".into(),
                    expr: r#"country = "USA""#.into(),
                }),
            ),
            entry(
                3,
                Command::CreateFilter(FilterDef {
                    name: "private_net".into(),
                    expr: "ip in 10.0.0.0/8".into(),
                }),
            ),
        ];
        for r in sm.apply_entries(setup).expect("apply the setup entries") {
            assert!(
                !matches!(r, CommandResponse::Refused(_)),
                "setup refused: {r:?}"
            );
        }
        let mut next_index = 4;
        let started = Instant::now();
        let mut clicks = 0u64;
        let mut sample_ads = Vec::new();
        let mut now_ms = 0;
        let mut start_ms = None;
        for (seed, per_minute, minutes) in [
            (10, 10_000, sizes.history_minutes),
            (11, 100_000, sizes.dense_minutes),
        ] {
            let mut wl = workload(per_minute, start_ms, seed);
            let n = per_minute * minutes;
            let mut done = 0;
            while done < n {
                let batch: Vec<Entry> = (0..4)
                    .map(|_| {
                        let e = ingest_entry(&mut wl, next_index);
                        next_index += 1;
                        e
                    })
                    .collect();
                if sample_ads.len() < 1024 {
                    if let Some(EntryPayload::Normal(Command::Ingest(b))) =
                        batch.first().map(|e| &e.payload)
                    {
                        sample_ads.extend(b.clicks.iter().take(64).map(|c| c.ad_id.clone()));
                    }
                }
                sm.apply_entries(batch).expect("load the state machine");
                done += 4 * CLICKS_PER_ENTRY as u64;
            }
            clicks += done;
            now_ms = wl.now_ms();
            start_ms = Some(now_ms);
        }
        let status = sm.reader().status().expect("status");
        println!(
            "note: loaded {clicks} clicks ({} entries) over {ADS} Zipf ads in {:.1} s \
             (generation included); {} minutes in memory ({} ads), {} minutes on disk",
            next_index - 4,
            started.elapsed().as_secs_f64(),
            status.memory_minutes,
            status.memory_ads,
            status.disk_minutes
        );
        Loaded {
            sm,
            next_index,
            now_ms,
            sample_ads,
        }
    }
}

/// `count` of the most popular ad and of a random (Zipf) ad over the last 5 and 60
/// minutes, and `top(100)` over the last 5 (and 60) minutes, with and without a filter,
/// on the loaded state with nothing else running.
fn queries_at_rest(c: &mut Criterion, loaded: &Loaded) {
    let reader = loaded.sm.reader();
    let now = Minute::of_ms(loaded.now_ms);
    let popular = AdId::new(&Workload::ad_name(1)).expect("a generated ad id is valid");
    let last5 = MinuteRange::last(5, now);
    let last60 = MinuteRange::last(60, now);
    let top5 = reader.top(100, last5, None).expect("top");
    println!(
        "note: top(100, last 5 min): #1 {} with {}, #100 with {}; count({popular}, last 60 min) = {}",
        top5.rows.first().map_or("-", |r| r.ad_id.as_str()),
        top5.rows.first().map_or(0, |r| r.count),
        top5.rows.last().map_or(0, |r| r.count),
        reader.count(&popular, last60, None).expect("count").count
    );

    let mut g = c.benchmark_group("sm_query");
    g.measurement_time(Duration::from_secs(3));
    for (name, range, filter) in [
        ("count_popular_last_5min", last5, None),
        ("count_popular_last_60min", last60, None),
        ("count_popular_last_60min_filter_usa", last60, Some("usa")),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| reader.count(&popular, range, filter).expect("count"))
        });
    }
    let mut i = 0usize;
    g.bench_function("count_zipf_ad_last_60min", |b| {
        b.iter(|| {
            i = (i + 1) % loaded.sample_ads.len();
            reader
                .count(&loaded.sample_ads[i], last60, None)
                .expect("count")
        })
    });
    for (name, range, filter) in [
        ("top100_last_5min", last5, None),
        ("top100_last_5min_filter_usa", last5, Some("usa")),
        (
            "top100_last_5min_filter_private_net",
            last5,
            Some("private_net"),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| reader.top(100, range, filter).expect("top"))
        });
    }
    // Reaches into minutes only RocksDB holds: a scan of every counter of ~45 minutes.
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("top100_last_60min", |b| {
        b.iter(|| reader.top(100, last60, None).expect("top"))
    });
    g.finish();
}
