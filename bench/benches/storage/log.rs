//! The segmented log's write path: append of 1,000-click entries with group commit, timed
//! until each entry is durable (its flush callback fired).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use adclick_storage::log::{LogConfig, LogStore};
use adclick_storage::types::{Command, Entry, IngestBatch, TypeConfig};
use criterion::{Criterion, Throughput};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;

use crate::{entry, workload, CLICKS_PER_ENTRY, PIPELINE_DEPTH};

/// Owned entries for the log benchmarks, with contiguous indexes, cloned from a few
/// pre-generated batches on their own thread so that cloning (which is not the log's
/// work) stays off the timed thread. The first `HEAD` entries are built before the timer
/// starts; `stalls` counts the times the timed thread found the feed empty.
struct EntryFeed {
    head: VecDeque<Entry>,
    rest: mpsc::Receiver<Entry>,
    producer: Option<JoinHandle<()>>,
    stalls: u64,
}

impl EntryFeed {
    const HEAD: u64 = 64;

    fn start(pool: &Arc<Vec<IngestBatch>>, first: u64, n: u64) -> Self {
        let make = |pool: &[IngestBatch], index: u64| {
            entry(
                index,
                Command::Ingest(pool[(index % pool.len() as u64) as usize].clone()),
            )
        };
        let head_n = n.min(Self::HEAD);
        let head = (first..first + head_n).map(|i| make(pool, i)).collect();
        let (tx, rest) = mpsc::sync_channel(Self::HEAD as usize);
        let pool = Arc::clone(pool);
        let producer = std::thread::spawn(move || {
            for i in first + head_n..first + n {
                if tx.send(make(&pool, i)).is_err() {
                    return;
                }
            }
        });
        EntryFeed {
            head,
            rest,
            producer: Some(producer),
            stalls: 0,
        }
    }

    fn next(&mut self) -> Entry {
        if let Some(e) = self.head.pop_front() {
            return e;
        }
        match self.rest.try_recv() {
            Ok(e) => e,
            Err(TryRecvError::Empty) => {
                self.stalls += 1;
                self.rest.recv().expect("the entry feed ended early")
            }
            Err(TryRecvError::Disconnected) => panic!("the entry feed ended early"),
        }
    }
}

impl Drop for EntryFeed {
    fn drop(&mut self) {
        if let Some(p) = self.producer.take() {
            // Dropping the receiver fails the producer's next send, which ends it.
            drop(std::mem::replace(&mut self.rest, mpsc::sync_channel(0).1));
            p.join().expect("the entry feed thread panicked");
        }
    }
}

/// What the log benchmarks add up across criterion's calls, for the fsyncs-per-entry note.
#[derive(Default)]
struct LogTotals {
    entries: u64,
    fsyncs: u64,
    stalls: u64,
    runs: u64,
}

impl LogTotals {
    fn report(&self, name: &str) {
        if self.entries == 0 {
            return;
        }
        println!(
            "note: log/{name}: {} entries, {} flusher fsyncs: {:.3} fsyncs/entry \
             ({} runs; the entry feed ran dry {} times)",
            self.entries,
            self.fsyncs,
            self.fsyncs as f64 / self.entries as f64,
            self.runs,
            self.stalls
        );
    }
}

/// Append of 1,000-click entries to a fresh log, each durable before it counts: one writer
/// waiting for each flush, and one keeping `PIPELINE_DEPTH` entries in flight.
pub(crate) fn log(c: &mut Criterion, dir: &Path) {
    let mut wl = workload(100_000, None, 2);
    let pool: Arc<Vec<IngestBatch>> = Arc::new(
        (0..16)
            .map(|_| IngestBatch {
                clicks: (0..CLICKS_PER_ENTRY).map(|_| wl.next_click().0).collect(),
                proposed_at_ms: wl.now_ms(),
            })
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the log's async API");

    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(CLICKS_PER_ENTRY as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for (name, depth) in [
        ("append_1000_clicks_wait_each", 1),
        ("append_1000_clicks_pipelined_8", PIPELINE_DEPTH),
    ] {
        let mut totals = LogTotals::default();
        let mut run = 0u64;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                run += 1;
                let log_dir = dir.join(format!("log-{name}-{run}"));
                let took = rt.block_on(append_run(&log_dir, &pool, iters, depth, &mut totals));
                std::fs::remove_dir_all(&log_dir).expect("remove the benchmark log");
                took
            })
        });
        totals.report(name);
    }
    g.finish();
}

/// Appends `iters` entries to a new log at `dir` with at most `depth` waiting for their
/// flush, and returns the time from the first append until the last is durable.
async fn append_run(
    dir: &Path,
    pool: &Arc<Vec<IngestBatch>>,
    iters: u64,
    depth: usize,
    totals: &mut LogTotals,
) -> Duration {
    let mut log = LogStore::open(LogConfig::new(dir)).expect("open the benchmark log");
    let mut feed = EntryFeed::start(pool, 1, iters);
    let fsyncs_before = log.flusher_fsyncs();
    let mut in_flight = VecDeque::with_capacity(depth);
    let start = Instant::now();
    for _ in 0..iters {
        let e = feed.next();
        let (tx, rx) = TypeConfig::oneshot();
        log.append([e], IOFlushed::<TypeConfig>::signal(tx))
            .await
            .expect("append to the benchmark log");
        in_flight.push_back(rx);
        if in_flight.len() >= depth {
            if let Some(rx) = in_flight.pop_front() {
                flushed(rx).await;
            }
        }
    }
    while let Some(rx) = in_flight.pop_front() {
        flushed(rx).await;
    }
    let took = start.elapsed();
    totals.entries += iters;
    totals.fsyncs += log.flusher_fsyncs() - fsyncs_before;
    totals.stalls += feed.stalls;
    totals.runs += 1;
    took
}

async fn flushed<T, E: std::fmt::Debug>(rx: impl std::future::Future<Output = Result<T, E>>) {
    rx.await.expect("the log flusher stopped");
}
