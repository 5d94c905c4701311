//! `cluster-load`: drives a running adclick cluster over gRPC with batches of generated
//! clicks from several concurrent clients, while one reader measures `count` and
//! `top -n 100 --last 5` latency, and prints throughput and latency percentiles.
//!
//! Each client sends whole batches to one node (round robin over `--targets`); the node
//! splits them by shard and forwards parts to their group leaders, so this measures the
//! "any node takes any batch" path. Every batch is acknowledged only after its clicks are
//! committed on a majority (fsync'd) and applied. A failed batch is resent with the same
//! event ids (bounded), so retries never double-count.
//!
//! ```text
//! cargo run --release -p adclick-bench --bin cluster-load -- \
//!     --targets 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 --clients 8 --duration 20
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adclick_bench::workload::{Workload, WorkloadConfig};
use adclick_proto::wire::{self, grpc};
use clap::Parser;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

/// Flags.
#[derive(Debug, Parser)]
#[command(
    name = "cluster-load",
    about = "Load a running adclick cluster over gRPC"
)]
struct Args {
    /// gRPC addresses of the nodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<String>,
    /// Concurrent ingesting clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Clicks per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Offered load in clicks per second over all clients (0: as fast as acknowledged).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Distinct ads.
    #[arg(long, default_value_t = 100_000)]
    ads: u64,
    /// Also measure queries (one reader issuing count and top in turn).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    queries: bool,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct Totals {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    late: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
}

fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_lazy())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.clients > 0 && args.batch > 0,
        "--clients and --batch must be positive"
    );
    let channels: Vec<Channel> = args
        .targets
        .iter()
        .map(|a| channel(a))
        .collect::<anyhow::Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Totals::default());
    let acks = Arc::new(Mutex::new(hist()));
    let per_client_rate = args.rate as f64 / args.clients as f64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let ch = channels[c % channels.len()].clone();
        let (stop, totals, acks) = (stop.clone(), totals.clone(), acks.clone());
        let cfg = WorkloadConfig {
            ads: args.ads,
            start_ms: now_ms(),
            duplicate_rate: 0.0,
            late_rate: 0.0,
            future_rate: 0.0,
            // The event clock runs at about the offered rate, so it stays near real time.
            clicks_per_minute: 600_000,
            ..WorkloadConfig::default()
        };
        let mut workload =
            Workload::new(cfg, args.seed * 1000 + c as u64).map_err(|e| anyhow::anyhow!(e))?;
        let batch = args.batch;
        let clients = args.clients;
        tasks.push(tokio::spawn(async move {
            let mut client = grpc::IngestClient::new(ch).max_decoding_message_size(64 << 20);
            let mut local = hist();
            let mut sent = 0u64;
            // Clients are staggered over one batch interval, so paced clients do not send
            // in lockstep (which would offer the cluster bursts of `clients` batches).
            let interval = if per_client_rate > 0.0 {
                batch as f64 / per_client_rate
            } else {
                0.0
            };
            let began =
                Instant::now() + Duration::from_secs_f64(interval * c as f64 / clients as f64);
            while !stop.load(Ordering::Relaxed) {
                if per_client_rate > 0.0 {
                    let due = began + Duration::from_secs_f64(sent as f64 / per_client_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let clicks: Vec<wire::Click> = (0..batch)
                    .map(|_| {
                        let (mut click, _) = workload.next_click();
                        click.event_time_ms = now_ms();
                        wire::Click::from(click)
                    })
                    .collect();
                let t = Instant::now();
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let req = wire::IngestRequest {
                        clicks: clicks.clone(),
                    };
                    match client.ingest(req).await {
                        Ok(resp) => {
                            let _ = local.record(t.elapsed().as_micros() as u64);
                            if let Some(tl) = resp.into_inner().tally {
                                totals.accepted.fetch_add(tl.accepted, Ordering::Relaxed);
                                totals.duplicate.fetch_add(tl.duplicate, Ordering::Relaxed);
                                totals.late.fetch_add(tl.late, Ordering::Relaxed);
                                totals.rejected.fetch_add(tl.rejected, Ordering::Relaxed);
                            }
                            totals.batches.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(s) if attempts < 20 => {
                            totals.retries.fetch_add(1, Ordering::Relaxed);
                            tracing_free_warn(&s);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(s) => {
                            eprintln!("batch failed after {attempts} attempts: {s}");
                            totals.failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                sent += batch as u64;
            }
            if let Ok(mut a) = acks.lock() {
                let _ = a.add(&local);
            }
        }));
    }
    let reader = if args.queries {
        let ch = channels[0].clone();
        let stop = stop.clone();
        let ads = args.ads;
        Some(tokio::spawn(async move {
            let mut q = grpc::QueryClient::new(ch);
            let (mut count_h, mut top_h) = (hist(), hist());
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let ad = Workload::ad_name(1 + (i * 7919) % ads.min(1000));
                let t = Instant::now();
                let r = q
                    .count(wire::CountRequest {
                        ad_id: ad,
                        range: Some(wire::TimeRange {
                            range: Some(wire::time_range::Range::LastMinutes(5)),
                        }),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    let _ = count_h.record(t.elapsed().as_micros() as u64);
                }
                let t = Instant::now();
                let r = q
                    .top(wire::TopRequest {
                        n: 100,
                        range: Some(wire::TimeRange {
                            range: Some(wire::time_range::Range::LastMinutes(5)),
                        }),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    let _ = top_h.record(t.elapsed().as_micros() as u64);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (count_h, top_h)
        }))
    } else {
        None
    };
    let mut last = 0u64;
    for s in 1..=args.duration {
        tokio::time::sleep_until((start + Duration::from_secs(s)).into()).await;
        let b = totals.batches.load(Ordering::Relaxed);
        eprintln!(
            "t={s:>3}s  {:>9} clicks/s  (retries {}, failed {})",
            (b - last) * args.batch as u64,
            totals.retries.load(Ordering::Relaxed),
            totals.failed.load(Ordering::Relaxed)
        );
        last = b;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let queries = match reader {
        Some(r) => Some(r.await?),
        None => None,
    };
    let a = acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let batches = totals.batches.load(Ordering::Relaxed);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "clients {}  batch {}  duration {:.1}s  targets {}",
        args.clients,
        args.batch,
        elapsed,
        args.targets.join(",")
    );
    println!(
        "offered {}  achieved {:.0} clicks/s  ({} batches, {} retries, {} failed)",
        if args.rate == 0 {
            "max".to_string()
        } else {
            format!("{} clicks/s", args.rate)
        },
        batches as f64 * args.batch as f64 / elapsed,
        batches,
        totals.retries.load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed)
    );
    println!(
        "outcomes accepted {}  duplicate {}  late {}  rejected {}",
        totals.accepted.load(Ordering::Relaxed),
        totals.duplicate.load(Ordering::Relaxed),
        totals.late.load(Ordering::Relaxed),
        totals.rejected.load(Ordering::Relaxed)
    );
    println!(
        "ack latency ms   p50 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}",
        ms(&a, 0.5),
        ms(&a, 0.99),
        ms(&a, 0.999),
        a.max() as f64 / 1000.0
    );
    if let Some((c, t)) = queries {
        println!(
            "count latency ms p50 {:.2}  p99 {:.2}  ({} queries)",
            ms(&c, 0.5),
            ms(&c, 0.99),
            c.len()
        );
        println!(
            "top-100 last 5m  p50 {:.2}  p99 {:.2}  ({} queries)",
            ms(&t, 0.5),
            ms(&t, 0.99),
            t.len()
        );
    }
    Ok(())
}

fn tracing_free_warn(s: &tonic::Status) {
    eprintln!("retrying a batch: {:?}: {}", s.code(), s.message());
}
