//! Micro-benchmarks of adclick's storage engine, one replica of one data group, no network
//! and no Raft: the entry codec, the disk's fsync cost, the segmented log's group commit,
//! and the aggregation state machine (apply, and queries at rest and under paced ingest).
//! Figures, the machine they were measured on and how to read them: `docs/performance.md`.
//!
//! ```text
//! cargo bench -p adclick-bench --bench storage            # everything, about 2 min 15 s
//! cargo bench -p adclick-bench --bench storage -- log/    # one group (a regex filter)
//! ```
//!
//! - [`codec`]: encode / decode of a 1,000-click entry.
//! - [`disk`]: write + `fdatasync` on the bare file system, the floor under the log.
//! - [`log`]: append with group commit, one writer waiting per entry or 8 in flight.
//! - [`sm`]: the state machine loaded with 1.5M clicks: queries at rest, apply flat out.
//! - [`under_load`]: the target's queries while a thread applies 50k clicks/s.
//! - [`reference`]: not the engine: growth stalls of the dedup index's map type.
//!
//! Data lives in a temporary directory (`/tmp` is the root ext4 disk on the machine of
//! record, so fsyncs are real); `ADCLICK_BENCH_DIR` puts it elsewhere and
//! `ADCLICK_BENCH_KEEP` keeps it. The generated data is the same in every run (seeded);
//! what overlaps with what under load depends on timing. Without `--bench` (e.g.
//! `cargo test --benches`) every benchmark runs once on small states, as a smoke test.
//!
//! What criterion cannot express is printed as `note:` lines: fsyncs per log entry,
//! latency percentiles, and the ingest rate achieved while queries ran.

mod codec;
mod disk;
mod log;
mod reference;
mod sm;
mod under_load;

use std::path::PathBuf;
use std::time::Duration;

use adclick_bench::workload::{Workload, WorkloadConfig};
use adclick_proto::model::Click;
use adclick_storage::types::{log_id, Command, Entry, IngestBatch};
use criterion::Criterion;
use openraft::EntryPayload;

/// Clicks per Raft entry: one client batch, as the design proposes them.
const CLICKS_PER_ENTRY: usize = 1_000;
/// Distinct ads of every workload here (Zipf s = 1.1 over them).
const ADS: u64 = 200_000;
/// Entries a pipelined writer keeps in flight before it waits for the oldest.
const PIPELINE_DEPTH: usize = 8;
/// Ingest rate of the "under load" queries: the design's peak, 50k clicks/s.
const LOAD_CLICKS_PER_S: u64 = 50_000;
/// The group id of the benchmarked state machine.
const GROUP: u64 = 1;

/// How big the loaded states are: the full sizes under `cargo bench`, tiny ones when the
/// binary runs as a test (`cargo test --benches`) or lists benchmarks.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Minutes of sparse history (10k clicks/min) before the dense part.
    history_minutes: u64,
    /// Minutes at 100k clicks/min ending at "now".
    dense_minutes: u64,
    /// Whether this is a real benchmark run (not a test or a listing).
    benchmarking: bool,
}

impl Sizes {
    fn from_args(args: &[String]) -> Self {
        let benchmarking = args.iter().any(|a| a == "--bench")
            && !args.iter().any(|a| a == "--test" || a == "--list");
        Sizes {
            history_minutes: if benchmarking { 50 } else { 2 },
            dense_minutes: if benchmarking { 10 } else { 1 },
            benchmarking,
        }
    }
}

/// The name filter criterion will apply, roughly: the first bare argument that does not
/// follow an option (good enough to skip the work of a group nobody asked for).
fn name_filter(args: &[String]) -> Option<&str> {
    args.iter()
        .enumerate()
        .skip(1)
        .find(|(i, a)| {
            let is_option_value = args[i - 1].starts_with("--") && args[i - 1] != "--bench";
            let bare = !a.starts_with('-');
            bare && !is_option_value
        })
        .map(|(_, a)| a.as_str())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes = Sizes::from_args(&args);
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let (_tmp, dir) = bench_dir();
    let entry_bytes = codec::codec(&mut c);
    disk::disk(&mut c, &dir, entry_bytes);
    log::log(&mut c, &dir);
    // Loading the state machine takes seconds: skip it when only other groups are asked for.
    let others = ["codec", "disk", "log", "reference"];
    if !name_filter(&args).is_some_and(|f| others.iter().any(|g| f.starts_with(g))) {
        sm::state_machine(&mut c, &dir, sizes);
    }
    if sizes.benchmarking && name_filter(&args).is_none_or(|f| "reference".contains(f)) {
        reference::dedup_map_growth_reference();
    }
    c.final_summary();
}

/// Where benchmark data goes: a fresh temporary directory under `ADCLICK_BENCH_DIR` (or
/// the system's), removed when the returned guard drops unless `ADCLICK_BENCH_KEEP` is set
/// (to read RocksDB's `LOG` afterwards, say).
fn bench_dir() -> (tempfile::TempDir, PathBuf) {
    let mut t = match std::env::var_os("ADCLICK_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base).expect("ADCLICK_BENCH_DIR must be writable"),
        None => tempfile::tempdir().expect("a temporary directory is needed for the data"),
    };
    if std::env::var_os("ADCLICK_BENCH_KEEP").is_some() {
        t.disable_cleanup(true);
        println!("note: keeping the benchmark data in {}", t.path().display());
    }
    let p = t.path().to_path_buf();
    (t, p)
}

/// Entry `index` (term 1, leader 1) carrying `cmd`.
fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// The workload every benchmark draws from: `ADS` Zipf ads, the event clock moving at
/// `clicks_per_minute` from `start_ms` (the generator's default start if `None`).
fn workload(clicks_per_minute: u64, start_ms: Option<i64>, seed: u64) -> Workload {
    let defaults = WorkloadConfig::default();
    Workload::new(
        WorkloadConfig {
            ads: ADS,
            clicks_per_minute,
            start_ms: start_ms.unwrap_or(defaults.start_ms),
            ..defaults
        },
        seed,
    )
    .expect("the benchmark's workload configuration is valid")
}

/// The next `CLICKS_PER_ENTRY` clicks of `wl` as one ingest entry at `index`, proposed at
/// the generator's clock (as a live leader would).
fn ingest_entry(wl: &mut Workload, index: u64) -> Entry {
    let clicks: Vec<Click> = (0..CLICKS_PER_ENTRY).map(|_| wl.next_click().0).collect();
    entry(
        index,
        Command::Ingest(IngestBatch {
            proposed_at_ms: wl.now_ms(),
            clicks,
        }),
    )
}

/// The `p` quantile (0..=1) of durations sorted ascending; zero for none.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One line of count, median, tail and maximum of durations sorted ascending.
fn fmt_percentiles(sorted: &[Duration]) -> String {
    format!(
        "n={} p50={:.1?} p99={:.1?} p99.9={:.1?} max={:.1?}",
        sorted.len(),
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        percentile(sorted, 0.999),
        percentile(sorted, 1.0)
    )
}
