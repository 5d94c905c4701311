//! `cluster-load`: drives a running adclick cluster with generated clicks through the Rust
//! client (`adclick_client::Client`: each group's part of a batch goes straight to that
//! group's leader), while one reader measures linearizable `count` and
//! `top -n 100 --last 5` latency. Prints one table row per offered rate: achieved rate,
//! acknowledgement latency percentiles, query percentiles, and each node's CPU and peak
//! RSS when given the nodes' pids; `--json FILE` writes the same rows as JSON.
//!
//! A batch is acknowledged only after its clicks are committed on a majority (fsync'd)
//! and applied. The client retries a batch whose outcome is unknown with the same event
//! ids until its deadline, so a retry never double-counts; a batch that still fails is
//! counted as failed, never as sent.
//!
//! ```text
//! cargo run --release -p adclick-bench --bin cluster-load -- \
//!     --targets 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 --clients 8 \
//!     --rate 0,50000 --duration 20
//! ```
//! `bench/scripts/cluster-load.sh` starts the cluster and passes the pids.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adclick_bench::workload::{Workload, WorkloadConfig};
use adclick_client::model::{AdId, Click};
use adclick_client::{Client, CountQuery, ReadConsistency, TimeSpec, TopQuery};
use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Flags.
#[derive(Debug, Parser)]
#[command(
    name = "cluster-load",
    about = "Load a running adclick cluster through the Rust client"
)]
struct Args {
    /// gRPC addresses of the nodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<String>,
    /// Concurrent ingesting tasks (each with its own client connection pool).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Clicks per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Seconds per offered rate.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Offered loads in clicks per second over all clients, comma-separated, run one
    /// after the other (0: as fast as acknowledged).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    rate: Vec<u64>,
    /// Distinct ads.
    #[arg(long, default_value_t = 100_000)]
    ads: u64,
    /// Also measure queries (one reader issuing count and top in turn, 5 ms apart).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    queries: bool,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Read queries as stale (served from the answering node's applied state, without
    /// waiting for the read index): separates waiting behind apply from the rest.
    #[arg(long)]
    stale_reads: bool,
    /// The nodes' process ids (`1=PID,2=PID,...`), to report CPU time and peak RSS.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<String>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
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
    attempts: AtomicU64,
    failed: AtomicU64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A node process to watch.
#[derive(Debug, Clone)]
struct NodeProc {
    id: String,
    pid: u32,
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident set size in MiB (VmHWM), from /proc.
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.clients > 0 && args.batch > 0 && args.batch <= 10_000,
        "--clients must be positive and --batch 1 to 10000"
    );
    let nodes: Vec<NodeProc> = args
        .pids
        .iter()
        .map(|p| {
            let (id, pid) = p.split_once('=').context("--pids takes ID=PID pairs")?;
            Ok(NodeProc {
                id: id.to_owned(),
                pid: pid.parse().context("a pid is a number")?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut rows = Vec::new();
    for (phase, &rate) in args.rate.iter().enumerate() {
        let row = run_phase(&args, rate, phase as u64, &nodes).await?;
        print_row(&row);
        rows.push(row);
    }
    println!();
    println!("| offered clicks/s | achieved clicks/s | ack p50 / p99 / p999 ms | count p50 / p99 ms | top-100 p50 / p99 ms | node CPU s | peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{}", markdown_row(r));
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "clients": args.clients, "batch": args.batch, "duration_s": args.duration,
            "ads": args.ads, "targets": args.targets, "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One offered rate for `--duration` seconds; returns its row.
async fn run_phase(
    args: &Args,
    rate: u64,
    phase: u64,
    nodes: &[NodeProc],
) -> anyhow::Result<Value> {
    let cpu_before: Vec<Option<f64>> = nodes.iter().map(|n| cpu_seconds(n.pid)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Totals::default());
    let acks = Arc::new(Mutex::new(hist()));
    let per_client_rate = rate as f64 / args.clients as f64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = Client::connect(&args.targets)
            .await
            .context("connecting to the cluster")?;
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
        let seed = (args.seed * 1000 + phase) * 1000 + c as u64;
        let mut workload = Workload::new(cfg, seed).map_err(|e| anyhow::anyhow!(e))?;
        let (batch, clients) = (args.batch, args.clients);
        tasks.push(tokio::spawn(async move {
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
                let clicks: Vec<Click> = (0..batch)
                    .map(|_| {
                        let (mut click, _) = workload.next_click();
                        click.event_time_ms = now_ms();
                        click
                    })
                    .collect();
                let t = Instant::now();
                match client.ingest(&clicks).await {
                    Ok(report) => {
                        let _ = local.record(t.elapsed().as_micros() as u64);
                        let tl = report.tally;
                        totals.accepted.fetch_add(tl.accepted, Ordering::Relaxed);
                        totals.duplicate.fetch_add(tl.duplicate, Ordering::Relaxed);
                        totals.late.fetch_add(tl.late, Ordering::Relaxed);
                        totals.rejected.fetch_add(tl.rejected, Ordering::Relaxed);
                        totals
                            .attempts
                            .fetch_add(u64::from(report.attempts), Ordering::Relaxed);
                        totals.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("a batch failed after the client's retries: {e}");
                        totals.failed.fetch_add(1, Ordering::Relaxed);
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
        let client = Client::connect(&args.targets).await?;
        let (stop, ads) = (stop.clone(), args.ads);
        let consistency = if args.stale_reads {
            ReadConsistency::Stale
        } else {
            ReadConsistency::Linearizable
        };
        Some(tokio::spawn(read_loop(client, stop, ads, consistency)))
    } else {
        None
    };
    let mut last = 0u64;
    for s in 1..=args.duration {
        tokio::time::sleep_until((start + Duration::from_secs(s)).into()).await;
        let b = totals.batches.load(Ordering::Relaxed);
        eprintln!(
            "rate {rate}: t={s:>3}s  {:>9} clicks/s  (failed batches {})",
            (b - last) * args.batch as u64,
            totals.failed.load(Ordering::Relaxed)
        );
        last = b;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.context("an ingest task failed")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let queries = match reader {
        Some(r) => Some(r.await?),
        None => None,
    };
    let a = acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let batches = totals.batches.load(Ordering::Relaxed);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let node_rows: Vec<Value> = nodes
        .iter()
        .zip(cpu_before)
        .map(|(n, before)| {
            let cpu = cpu_seconds(n.pid).zip(before).map(|(after, b)| after - b);
            json!({ "node": n.id, "cpu_seconds": cpu, "peak_rss_mib": peak_rss_mib(n.pid) })
        })
        .collect();
    let mut row = json!({
        "offered": rate,
        "achieved": batches as f64 * args.batch as f64 / elapsed,
        "seconds": elapsed,
        "batches": batches,
        "attempts": totals.attempts.load(Ordering::Relaxed),
        "failed_batches": totals.failed.load(Ordering::Relaxed),
        "accepted": totals.accepted.load(Ordering::Relaxed),
        "duplicate": totals.duplicate.load(Ordering::Relaxed),
        "late": totals.late.load(Ordering::Relaxed),
        "rejected": totals.rejected.load(Ordering::Relaxed),
        "ack_ms": { "p50": ms(&a, 0.5), "p99": ms(&a, 0.99), "p999": ms(&a, 0.999),
                    "max": a.max() as f64 / 1000.0 },
        "nodes": node_rows,
    });
    if let Some((c, t)) = queries {
        row["count_ms"] = json!({ "p50": ms(&c, 0.5), "p99": ms(&c, 0.99), "n": c.len() });
        row["top_ms"] = json!({ "p50": ms(&t, 0.5), "p99": ms(&t, 0.99), "n": t.len() });
    }
    Ok(row)
}

/// Count of one ad and top-100 over the last 5 minutes, in turn, 5 ms apart.
async fn read_loop(
    client: Client,
    stop: Arc<AtomicBool>,
    ads: u64,
    consistency: ReadConsistency,
) -> (Histogram<u64>, Histogram<u64>) {
    let (mut count_h, mut top_h) = (hist(), hist());
    let mut i = 0u64;
    let Ok(range) = TimeSpec::last(5) else {
        return (count_h, top_h);
    };
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let name = Workload::ad_name(1 + (i * 7919) % ads.min(1000));
        if let Ok(ad) = AdId::new(&name) {
            let t = Instant::now();
            let mut q = CountQuery::new(ad, range);
            q.consistency = consistency;
            if client.count(q).await.is_ok() {
                let _ = count_h.record(t.elapsed().as_micros() as u64);
            }
        }
        let t = Instant::now();
        let mut q = TopQuery::new(100, range);
        q.consistency = consistency;
        if client.top(q).await.is_ok() {
            let _ = top_h.record(t.elapsed().as_micros() as u64);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (count_h, top_h)
}

fn print_row(r: &Value) {
    println!(
        "offered {}  achieved {:.0} clicks/s  ({} batches, {} requests, {} failed)",
        offered(r),
        r["achieved"].as_f64().unwrap_or(0.0),
        r["batches"],
        r["attempts"],
        r["failed_batches"]
    );
    println!(
        "outcomes accepted {}  duplicate {}  late {}  rejected {}",
        r["accepted"], r["duplicate"], r["late"], r["rejected"]
    );
    println!(
        "ack latency ms   p50 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}",
        f(&r["ack_ms"]["p50"]),
        f(&r["ack_ms"]["p99"]),
        f(&r["ack_ms"]["p999"]),
        f(&r["ack_ms"]["max"])
    );
    if r.get("count_ms").is_some() {
        println!(
            "count latency ms p50 {:.2}  p99 {:.2}  ({} queries)",
            f(&r["count_ms"]["p50"]),
            f(&r["count_ms"]["p99"]),
            r["count_ms"]["n"]
        );
        println!(
            "top-100 last 5m  p50 {:.2}  p99 {:.2}  ({} queries)",
            f(&r["top_ms"]["p50"]),
            f(&r["top_ms"]["p99"]),
            r["top_ms"]["n"]
        );
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn offered(r: &Value) -> String {
    match r["offered"].as_u64() {
        Some(0) | None => "max".into(),
        Some(n) => n.to_string(),
    }
}

fn markdown_row(r: &Value) -> String {
    let q = |k: &str| {
        r.get(k).map_or("-".to_owned(), |v| {
            format!("{:.1} / {:.1}", f(&v["p50"]), f(&v["p99"]))
        })
    };
    let nodes = r["nodes"].as_array().cloned().unwrap_or_default();
    let cpu = nodes
        .iter()
        .map(|n| format!("{:.1}", f(&n["cpu_seconds"])))
        .collect::<Vec<_>>()
        .join(" / ");
    let rss = nodes
        .iter()
        .map(|n| n["peak_rss_mib"].to_string())
        .collect::<Vec<_>>()
        .join(" / ");
    format!(
        "| {} | {:.0} | {:.1} / {:.1} / {:.1} | {} | {} | {} in {:.0} s | {} |",
        offered(r),
        f(&r["achieved"]),
        f(&r["ack_ms"]["p50"]),
        f(&r["ack_ms"]["p99"]),
        f(&r["ack_ms"]["p999"]),
        q("count_ms"),
        q("top_ms"),
        if cpu.is_empty() { "-".into() } else { cpu },
        f(&r["seconds"]),
        if rss.is_empty() { "-".into() } else { rss },
    )
}
