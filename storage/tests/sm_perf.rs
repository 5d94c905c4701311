//! A rough, ignored load test of one group's state machine: ingest throughput with ~2M
//! Zipf-distributed ads at 50k clicks/s of event time, and `count` / `top -n 100 --last 5`
//! latency while ingest runs. Not a benchmark of record (those live in `bench/`); it exists
//! so design changes here can be checked quickly:
//!
//! ```text
//! CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test -p adclick-storage --test sm_perf -- --ignored --nocapture
//! ```
//!
//! Knobs: `SM_PERF_CLICKS` (default 6M), `SM_PERF_ADS` (default 2M), `SM_PERF_SEED`,
//! `SM_PERF_RATE` (clicks per wall-clock second to pace ingest at; default 0 = flat out,
//! 50000 reproduces the query-latency target's load), `SM_PERF_COMMIT` (the state
//! machine's `max_pending_clicks`), `SM_PERF_EXPECTED_ADS` (its `expected_ads`),
//! `SM_PERF_WARMUP` (percent of the clicks ingested before query latencies are recorded;
//! default 30, so interning and minute-map growth of the first minutes are excluded).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick_proto::model::{AdId, Click, EventId, Minute, MinuteRange};
use adclick_storage::sm::{open_db, SmOptions, StateMachine};
use adclick_storage::types::{Command, Entry, IngestBatch};
use openraft::EntryPayload;

const T0: i64 = 1_720_483_200_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn sample(&self, u: f64) -> usize {
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn report(name: &str, mut v: Vec<Duration>) {
    println!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        v.len(),
        percentile(&mut v, 0.5),
        percentile(&mut v, 0.99),
        percentile(&mut v, 1.0)
    );
}

#[test]
#[ignore = "load test; run explicitly with an optimised build"]
fn ingest_and_query_under_zipf_load() {
    let clicks = env("SM_PERF_CLICKS", 6_000_000);
    let ads = env("SM_PERF_ADS", 2_000_000) as usize;
    let seed = env("SM_PERF_SEED", 42);
    let rate = env("SM_PERF_RATE", 0);
    println!("seed = {seed}, clicks = {clicks}, ads = {ads}, rate = {rate}/s (0: flat out)");
    let zipf = Arc::new(Zipf::new(ads, 1.0));
    let names: Arc<Vec<AdId>> = Arc::new(
        (0..ads)
            .map(|i| AdId::new(&format!("ad-{i:07}")).expect("ad"))
            .collect(),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(&dir.path().join("db")).expect("db");
    let opts = SmOptions {
        max_pending_clicks: env(
            "SM_PERF_COMMIT",
            SmOptions::default().max_pending_clicks as u64,
        ) as usize,
        expected_ads: env("SM_PERF_EXPECTED_ADS", 0) as usize,
        ..SmOptions::default()
    };
    println!(
        "max_pending_clicks = {}, expected_ads = {}",
        opts.max_pending_clicks, opts.expected_ads
    );
    let warmup = clicks * env("SM_PERF_WARMUP", 30) / 100;
    let warm = Arc::new(AtomicBool::new(false));
    let mut sm = StateMachine::open(db, 1, dir.path().join("snap"), opts).expect("open");
    let reader = sm.reader();

    let stop = Arc::new(AtomicBool::new(false));
    let now_minute = Arc::new(std::sync::atomic::AtomicI64::new(Minute::of_ms(T0).0));
    let querier = {
        let (stop, now_minute, zipf, names) = (
            stop.clone(),
            now_minute.clone(),
            zipf.clone(),
            names.clone(),
        );
        std::thread::spawn(move || {
            let mut rng = Rng(seed ^ 0xABCD);
            let (mut counts, mut tops) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let now = Minute(now_minute.load(Ordering::Relaxed));
                let ad = &names[zipf.sample(rng.unit())];
                let t = Instant::now();
                reader
                    .count(ad, MinuteRange::last(60, now), None)
                    .expect("count");
                counts.push(t.elapsed());
                if counts.len() % 10 == 0 {
                    let t = Instant::now();
                    reader
                        .top(100, MinuteRange::last(5, now), None)
                        .expect("top");
                    tops.push(t.elapsed());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (counts, tops)
        })
    };

    let mut rng = Rng(seed);
    let per_entry = 1000u64;
    let entries_per_call = 4u64;
    let mut index = 1u64;
    let mut applied = 0u64;
    let mut busy = Duration::ZERO;
    let mut event = 0u64;
    let wall = Instant::now();
    while applied < clicks {
        let mut batch = Vec::new();
        for _ in 0..entries_per_call {
            // 50k clicks/s of event time: 20 ms per 1000-click entry.
            let at = T0 + (index as i64) * 20;
            let clicks: Vec<Click> = (0..per_entry)
                .map(|_| {
                    event += 1;
                    Click {
                        event_id: EventId::new(format!("{event:016x}-{seed}").into_bytes())
                            .expect("id"),
                        ad_id: names[zipf.sample(rng.unit())].clone(),
                        event_time_ms: at - (rng.next() % 2000) as i64,
                        user_id: String::new(),
                        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        country: "US".into(),
                    }
                })
                .collect();
            batch.push(Entry {
                log_id: adclick_storage::types::log_id(1, 1, index),
                payload: EntryPayload::Normal(Command::Ingest(IngestBatch {
                    proposed_at_ms: at,
                    clicks,
                })),
            });
            now_minute.store(Minute::of_ms(at).0, Ordering::Relaxed);
            index += 1;
        }
        let t = Instant::now();
        sm.apply_entries(batch).expect("apply");
        busy += t.elapsed();
        applied += per_entry * entries_per_call;
        if applied >= warmup {
            warm.store(true, Ordering::Relaxed);
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(applied as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(wall.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    println!(
        "ingest: {applied} clicks in {:?} of apply ({:.0} clicks/s; wall {:?} incl. generation)",
        busy,
        applied as f64 / busy.as_secs_f64(),
        wall.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let (counts, tops) = querier.join().expect("querier");
    report(
        "count(ad, last 60 min) during ingest, after warm-up",
        counts,
    );
    report("top(100, last 5 min) during ingest, after warm-up", tops);

    let now = Minute(now_minute.load(Ordering::Relaxed));
    let (mut counts, mut tops) = (Vec::new(), Vec::new());
    let reader = sm.reader();
    for _ in 0..2000 {
        let ad = &names[zipf.sample(rng.unit())];
        let t = Instant::now();
        reader
            .count(ad, MinuteRange::last(60, now), None)
            .expect("count");
        counts.push(t.elapsed());
    }
    for _ in 0..100 {
        let t = Instant::now();
        let rows = reader
            .top(100, MinuteRange::last(5, now), None)
            .expect("top")
            .rows;
        tops.push(t.elapsed());
        assert_eq!(rows.len(), 100);
    }
    report("count(ad, last 60 min) idle", counts);
    report("top(100, last 5 min) idle", tops);
    let status = reader.status().expect("status");
    println!(
        "memory: {} minutes, {} ads",
        status.memory_minutes, status.memory_ads
    );
}
