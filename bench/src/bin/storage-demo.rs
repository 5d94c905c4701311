//! `storage-demo`: runs adclick's storage engine for one data group, on its own, the way a
//! Raft leader would drive it — entries appended to the segmented log with group commit,
//! then applied to the aggregation state machine on RocksDB — and prints what the engine
//! answers: outcome tallies (checked against what the generator meant each click to be),
//! the top ads, a filtered view, the watermark, and proof that a restart and a snapshot
//! restore reproduce the same state digest.
//!
//! This is the README's run command until the replicated cluster exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use adclick_bench::workload::{Kind, Workload, WorkloadConfig};
use adclick_proto::model::{AdId, Minute, MinuteRange, Outcome, Tally};
use adclick_storage::log::{LogConfig, LogStore};
use adclick_storage::sm::{SmReader, StateMachine};
use adclick_storage::types::{
    log_id, Command, CommandResponse, Entry, FilterDef, GroupSettings, IngestBatch, TypeConfig,
};
use anyhow::{bail, Context, Result};
use clap::Parser;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::EntryPayload;

/// Feed generated clicks through one group's log and state machine and show the answers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Clicks to generate.
    #[arg(long, default_value_t = 300_000)]
    clicks: u64,
    /// Distinct ads (Zipf-distributed popularity).
    #[arg(long, default_value_t = 5_000)]
    ads: u64,
    /// Clicks per Raft entry (one client batch).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Seed of the generator; the same seed gives the same run.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the data here instead of a temporary directory (must not exist yet).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The group id this demo's state lives under.
const GROUP: u64 = 1;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.batch == 0 || args.clicks == 0 {
        bail!("--clicks and --batch must be positive");
    }
    let (_tmp, dir) = match &args.data_dir {
        Some(d) => {
            if d.exists() {
                bail!("{} already exists; pick a new directory", d.display());
            }
            (None, d.clone())
        }
        None => {
            let t = tempfile::tempdir().context("create a temporary directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    println!("adclick storage demo: one data group, segmented log + state machine on RocksDB");
    println!("data dir: {}", dir.display());

    let mut node = Replica::open(&dir)?;
    let mut wl = Workload::new(
        WorkloadConfig {
            ads: args.ads,
            ..WorkloadConfig::default()
        },
        args.seed,
    )
    .map_err(anyhow::Error::msg)?;
    println!(
        "generating {} clicks over {} ads (Zipf s=1.1), seed {}, {} clicks per entry",
        args.clicks, args.ads, args.seed, args.batch
    );

    // What a new group's leader writes first: settings, then the filters to count.
    node.propose(vec![
        Command::Configure(GroupSettings::default()),
        Command::CreateFilter(FilterDef {
            name: "usa".into(),
            expr: r#"country = "USA""#.into(),
        }),
        Command::CreateFilter(FilterDef {
            name: "private_net".into(),
            expr: "ip in 10.0.0.0/8".into(),
        }),
    ])
    .await?;

    let mut expected: HashMap<Kind, u64> = HashMap::new();
    let mut tally = Tally::default();
    let mut mismatches = 0u64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next_report = args.clicks / 10;
    while sent < args.clicks {
        let n = (args.clicks - sent).min(args.batch as u64) as usize;
        let mut clicks = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        for _ in 0..n {
            let (c, k) = wl.next_click();
            clicks.push(c);
            kinds.push(k);
            *expected.entry(k).or_default() += 1;
        }
        let batch = IngestBatch {
            proposed_at_ms: wl.now_ms(),
            clicks,
        };
        let responses = node.propose(vec![Command::Ingest(batch)]).await?;
        let Some(CommandResponse::Ingest(outcomes)) = responses.into_iter().next() else {
            bail!("the state machine answered an ingest with something else");
        };
        for (o, k) in outcomes.iter().zip(&kinds) {
            tally.add(*o);
            if !matches!(
                (k, o),
                (Kind::Fresh, Outcome::Accepted)
                    | (Kind::Duplicate, Outcome::Duplicate)
                    | (Kind::Late, Outcome::Late)
                    | (Kind::Future, Outcome::Rejected(_))
            ) {
                mismatches += 1;
            }
        }
        sent += n as u64;
        if sent >= next_report {
            println!(
                "[{:>3}%] {sent} clicks, {:.0} clicks/s",
                sent * 100 / args.clicks,
                sent as f64 / started.elapsed().as_secs_f64()
            );
            next_report += args.clicks / 10;
        }
    }
    let elapsed = started.elapsed();
    let log_bytes: u64 = node
        .log
        .raw_reader()
        .segments()?
        .iter()
        .map(|s| s.bytes)
        .sum();
    println!();
    println!(
        "ingested {} clicks in {} entries in {:.2} s: {:.0} clicks/s (append, fsync, apply; {} build)",
        sent,
        node.next_index,
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!(
        "log: {:.1} MB on disk ({:.0} bytes/click), {} fsyncs for {} entries \
         (this demo waits for each entry; concurrent writers share fsyncs)",
        log_bytes as f64 / 1e6,
        log_bytes as f64 / sent as f64,
        node.log.flusher_fsyncs(),
        node.next_index
    );
    println!(
        "outcomes: accepted {}, duplicate {}, late {}, rejected {}",
        tally.accepted, tally.duplicate, tally.late, tally.rejected
    );
    let want = |k| expected.get(&k).copied().unwrap_or(0);
    println!(
        "generator sent: fresh {}, resent {}, late {}, future {} -> {}",
        want(Kind::Fresh),
        want(Kind::Duplicate),
        want(Kind::Late),
        want(Kind::Future),
        if mismatches == 0 {
            "every outcome as expected".to_string()
        } else {
            format!("{mismatches} outcomes differ from the generator's intent")
        }
    );

    let reader = node.sm.reader();
    show_answers(&reader, &wl)?;

    // Restart: reopen log and state, replay what the state lacks, compare digests.
    let before = reader.digest()?;
    println!();
    println!(
        "state digest {:032x} over {} keys at index {}",
        before.hash,
        before.keys,
        before.applied.map(|l| l.index).unwrap_or(0)
    );
    let snapshot = node.sm.snapshot_builder().build_blocking()?;
    drop(reader);
    let Replica { log, sm, .. } = node;
    drop(sm);
    drop(log);
    let mut node = Replica::open(&dir)?;
    let replayed = node.replay_committed()?;
    let after = node.sm.reader().digest()?;
    println!(
        "restart: reopened the log and RocksDB, replayed {replayed} entries: digest {}",
        verdict(before.hash == after.hash && before.applied == after.applied)
    );

    // Snapshot: install it on a fresh replica, as a follower that fell behind would.
    let fresh_dir = dir.join("fresh-replica");
    let mut fresh =
        StateMachine::open_path(&fresh_dir.join("state"), GROUP, fresh_dir.join("snapshots"))?;
    let size = snapshot.snapshot.len()?;
    let t = Instant::now();
    fresh.install_snapshot_file(&snapshot.meta, snapshot.snapshot)?;
    let restored = fresh.reader().digest()?;
    println!(
        "snapshot: {:.1} MB, installed on a fresh replica in {} ms: digest {}",
        size as f64 / 1e6,
        t.elapsed().as_millis(),
        verdict(restored.hash == before.hash)
    );
    if mismatches > 0 || restored.hash != before.hash || after.hash != before.hash {
        bail!("the engine did not reproduce the expected state; see above");
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "identical"
    } else {
        "DIFFERENT"
    }
}

fn show_answers(reader: &SmReader, wl: &Workload) -> Result<()> {
    let now = Minute::of_ms(wl.now_ms());
    let status = reader.status()?;
    if let Some(w) = status.watermark_ms {
        println!(
            "watermark: {} (event-time clock at {}); minutes before it are final",
            Minute::of_ms(w),
            now
        );
    }
    let last5 = MinuteRange::last(5, now);
    let top = reader.top(10, last5, None)?;
    println!();
    println!(
        "top 10 ads, last 5 minutes of event time ({} .. {}):",
        last5.from, last5.to
    );
    for (i, row) in top.rows.iter().enumerate() {
        println!("  {:>2}. {:<12} {:>7}", i + 1, row.ad_id, row.count);
    }
    if let Some(first) = top.rows.first() {
        let all = MinuteRange::new(Minute(0), Minute(now.0 + 1)).map_err(anyhow::Error::msg)?;
        let c = reader.count(&first.ad_id, all, None)?;
        let us = reader.count(&first.ad_id, all, Some("usa"))?;
        println!(
            "count {} over all time: {} (late, not counted: {}); from the USA: {}",
            first.ad_id, c.count, c.late, us.count
        );
    }
    let private = reader.top(3, last5, Some("private_net"))?;
    println!("top 3, last 5 minutes, filter private_net (ip in 10.0.0.0/8):");
    for row in &private.rows {
        println!("      {:<12} {:>7}", row.ad_id, row.count);
    }
    let id = AdId::new(&Workload::ad_name(1)).map_err(anyhow::Error::msg)?;
    let c = reader.count(&id, last5, None)?;
    println!(
        "count {id}, last 5 minutes: {} at applied index {:?}",
        c.count, c.applied_index
    );
    Ok(())
}

/// One replica of one group: its log and its state machine, driven like a leader does.
struct Replica {
    log: LogStore,
    sm: StateMachine,
    next_index: u64,
}

impl Replica {
    fn open(dir: &Path) -> Result<Self> {
        let log = LogStore::open(LogConfig::new(dir.join("log")))?;
        let sm = StateMachine::open_path(&dir.join("state"), GROUP, dir.join("snapshots"))?;
        let next_index = log
            .log_state()?
            .last_log_id
            .map(|l| l.index + 1)
            .unwrap_or(0);
        Ok(Replica {
            log,
            sm,
            next_index,
        })
    }

    /// Appends one entry per command, waits for the group commit, applies them.
    async fn propose(&mut self, cmds: Vec<Command>) -> Result<Vec<CommandResponse>> {
        let entries: Vec<Entry> = cmds
            .into_iter()
            .map(|c| {
                let e = Entry {
                    log_id: log_id(1, 1, self.next_index),
                    payload: EntryPayload::Normal(c),
                };
                self.next_index += 1;
                e
            })
            .collect();
        let last = entries.last().map(|e| e.log_id);
        let (tx, rx) = TypeConfig::oneshot();
        self.log
            .append(entries.clone(), IOFlushed::<TypeConfig>::signal(tx))
            .await?;
        rx.await.context("log flusher stopped")??;
        self.log.save_committed(last).await?;
        Ok(self.sm.apply_entries(entries)?)
    }

    /// Re-applies committed entries the state machine lacks, as openraft does on start.
    fn replay_committed(&mut self) -> Result<u64> {
        let from = self.sm.applied().map(|l| l.index + 1).unwrap_or(0);
        let entries: Vec<Entry> = self
            .log
            .raw_reader()
            .entries(from..self.next_index)?
            .collect::<Result<_, _>>()?;
        let n = entries.len() as u64;
        self.sm.apply_entries(entries)?;
        Ok(n)
    }
}
