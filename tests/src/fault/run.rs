//! One fault run, start to verdict:
//!
//! 1. start three fault-injection `adclickd` builds (release code generation) whose
//!    node-to-node traffic goes through the [`Mesh`] (each node gets `--peer-route` to its
//!    own proxy addresses), with the crash journal on so a kill can be a power loss;
//! 2. run the [`Workload`] and, after a warm-up, each step of the [`Schedule`]: inject,
//!    hold, heal, then a liveness probe (a write and a read within 10 s of the heal);
//! 3. stop the workload, heal everything, resend every event whose outcome is still
//!    unknown, and read a final top-N;
//! 4. wait until the replicas agree on their applied indexes, stop every node, and read
//!    each node's raw logs, state digests and counters from disk;
//! 5. build the model from the raw logs and run the [`checker`](super::checker).
//!
//! The history is written to `<out_dir>/history-<seed>.jsonl` when the run fails (or
//! always, with [`RunConfig::keep_history`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use adclick_proto::model::{Minute, MinuteRange};
use adclick_proto::wire;
use anyhow::{bail, Context};

use super::checker::{self, FinalState, FinalTop, Probe, ReplicaGroup, Verdict};
use super::history::{ad_name, History, OpKind, Outcome, Recorder, RunInfo};
use super::model;
use super::nemesis::{self, Schedule};
use super::proxy::Mesh;
use super::workload::{self, RunContext, Workload, WorkloadConfig, PINNED_BASE};
use crate::cluster::{fault_adclickd_path, Cluster, ClusterOptions};
use crate::disk;
use crate::query::{between, top_request};
use crate::wait::now_ms;

/// The longest run: clicks are made up to a minute in the past and must never become late
/// (5 minutes of allowed lateness) before their last retry, so the checker can read
/// `Late` as "not counted".
pub const MAX_DURATION: Duration = Duration::from_secs(180);

/// Everything a run needs; with the seed, it describes the run fully.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The seed of every random choice (workload, schedule steps).
    pub seed: u64,
    /// The faults.
    pub schedule: Schedule,
    /// The clients.
    pub workload: WorkloadConfig,
    /// Traffic before the first fault.
    pub warmup: Duration,
    /// Data groups.
    pub groups: u64,
    /// `--snapshot-logs` (server default when `None`).
    pub snapshot_logs: Option<u64>,
    /// More flags for every node (the checker's self-tests pass broken-build switches).
    pub node_args: Vec<String>,
    /// Run the nodes with the crash journal and make every kill a power loss.
    pub power_loss: bool,
    /// Where the history goes.
    pub out_dir: PathBuf,
    /// Write the history even when the run passes.
    pub keep_history: bool,
}

impl RunConfig {
    /// A run of `schedule` with the default workload and settings.
    pub fn new(seed: u64, schedule: Schedule) -> Self {
        RunConfig {
            seed,
            schedule,
            workload: WorkloadConfig::default(),
            warmup: Duration::from_secs(3),
            groups: 3,
            snapshot_logs: None,
            node_args: Vec::new(),
            power_loss: true,
            out_dir: std::env::temp_dir(),
            keep_history: false,
        }
    }
}

/// Per fault: what the routing writers saw from its injection to its heal, and after.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultStats {
    /// The nemesis.
    pub nemesis: String,
    /// Ingests by the routing writers invoked between injection and heal: answered.
    pub ok: usize,
    /// ... provably not applied.
    pub failed: usize,
    /// ... indeterminate.
    pub indeterminate: usize,
    /// Time from the heal to the first acknowledged ingest invoked after it.
    pub first_write_after: Option<Duration>,
    /// Ingests sent to a node that cannot acknowledge while the fault holds (its
    /// minority side, or any node with a majority down), invoked and completed while it
    /// held: evidence the fault bit (the checker requires that none was acknowledged).
    pub cut_off_ops: usize,
}

impl FaultStats {
    /// Answered ingests as a share of those invoked while the fault held.
    pub fn availability(&self) -> f64 {
        let all = self.ok + self.failed + self.indeterminate;
        if all == 0 {
            0.0
        } else {
            self.ok as f64 / all as f64
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// The schedule, as text.
    pub schedule: String,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// Per fault statistics.
    pub faults: Vec<FaultStats>,
    /// The liveness probes.
    pub probes: Vec<Probe>,
    /// Operations recorded.
    pub ops: usize,
    /// Where the history was written, if it was.
    pub history: Option<PathBuf>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Bytes the fault proxy carried between the nodes (evidence that their traffic went
    /// through it).
    pub proxied_bytes: u64,
}

impl RunReport {
    /// A summary for a person: seed, schedule, verdict, history file.
    pub fn describe(&self) -> String {
        format!(
            "seed {} ({:.0}s, {} ops, {:.1} MB through the proxy), schedule [{}]\n{}{}",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.ops,
            self.proxied_bytes as f64 / 1e6,
            self.schedule,
            self.verdict.report(),
            self.history
                .as_ref()
                .map(|p| format!("history: {}\n", p.display()))
                .unwrap_or_default()
        )
    }
}

/// Runs one fault run; see the module docs. An `Err` means the harness itself could not
/// do its part (a node would not start, a fault could not be injected); anomalies in the
/// system are in the report's verdict.
pub async fn run(cfg: RunConfig) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let mut extra = vec!["--request-timeout-ms".to_owned(), "3000".to_owned()];
    if cfg.power_loss {
        extra.push("--fault-crash-journal".to_owned());
    }
    extra.extend(cfg.node_args.iter().cloned());
    let opts = ClusterOptions {
        bin: Some(fault_adclickd_path()?),
        groups: cfg.groups,
        snapshot_logs: cfg.snapshot_logs,
        extra_args: extra,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::prepare(opts).await?;
    let targets: BTreeMap<u64, std::net::SocketAddr> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.grpc_addr(id)))
        .collect();
    let mesh = Mesh::start(&targets).await?;
    for id in cluster.ids() {
        let routes = mesh
            .routes_from(id)
            .iter()
            .map(|(to, addr)| format!("{to}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        cluster.set_node_args(id, vec!["--peer-route".to_owned(), routes]);
    }
    cluster.launch().await?;

    let rec = Recorder::new();
    let now = now_ms();
    let range = (
        Minute::of_ms(now - 10 * 60_000).start_ms(),
        Minute::of_ms(now + 60 * 60_000).start_ms(),
    );
    let ctx = RunContext {
        rec: rec.clone(),
        range,
        cfg: cfg.workload.clone(),
        seed: cfg.seed,
        nodes: targets.iter().map(|(&id, &a)| (id, a)).collect(),
    };
    let info = RunInfo {
        seed: cfg.seed,
        schedule: cfg.schedule.describe(),
        range_ms: range,
    };
    let load = Workload::start(&ctx).await?;
    let prober = workload::client(&ctx.nodes, Duration::from_secs(3)).await?;
    tokio::time::sleep(cfg.warmup).await;

    let mut probes = Vec::new();
    let faults = async {
        for step in &cfg.schedule.steps {
            let injected_us = rec.now_us();
            let injected = nemesis::inject(step, &mut cluster, &mesh, cfg.power_loss)
                .await
                .with_context(|| format!("injecting {}", step.nemesis))?;
            let start_us = rec.now_us();
            println!(
                "[{:>6.1}s] {}: {}",
                start_us as f64 / 1e6,
                step.nemesis,
                injected.detail
            );
            if step.nemesis != nemesis::Nemesis::RollingRestart {
                tokio::time::sleep(step.hold).await;
            }
            // The heal starts now: from here on nodes may legitimately acknowledge again
            // (restarted nodes form a quorum before a frozen one is resumed), and the
            // time to recover is measured from here.
            let heal_us = rec.now_us();
            nemesis::heal(&injected, &mut cluster, &mesh)
                .await
                .with_context(|| format!("healing {}", step.nemesis))?;
            rec.fault(super::history::Fault {
                nemesis: step.nemesis.name().to_owned(),
                detail: injected.detail.clone(),
                minority: injected.minority.clone(),
                no_quorum: injected.no_quorum,
                injected_us,
                start_us,
                heal_us,
            });
            let p = workload::probe(&ctx, &prober, step.nemesis.name(), heal_us).await;
            println!(
                "[{:>6.1}s] healed {}; write after {:?}, read after {:?}",
                heal_us as f64 / 1e6,
                step.nemesis,
                p.write_after,
                p.read_after
            );
            probes.push(p);
            tokio::time::sleep(cfg.schedule.quiet).await;
        }
        anyhow::Ok(())
    }
    .await;
    let unresolved = load.stop().await;
    mesh.heal();
    faults?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let resolver = workload::client(&ctx.nodes, Duration::from_secs(10)).await?;
    let left = workload::resolve(&ctx, &resolver, unresolved, Duration::from_secs(60)).await;
    if !left.is_empty() {
        println!(
            "note: {} events still unresolved after the final pass",
            left.len()
        );
    }
    let final_top = final_top(&cluster, range, cfg.workload.ads).await;

    let history = rec.snapshot();
    let state = final_state(&mut cluster, &history, final_top).await?;
    let verdict = checker::check(&history, &state, &probes);
    let ids = cluster.ids();
    let proxied_bytes = ids
        .iter()
        .flat_map(|&a| ids.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
        .map(|(a, b)| mesh.stats(a, b).bytes)
        .sum();
    mesh.shutdown().await;
    let history_path = if !verdict.ok() || cfg.keep_history {
        std::fs::create_dir_all(&cfg.out_dir)?;
        let p = cfg.out_dir.join(format!("history-{}.jsonl", cfg.seed));
        history.save(&info, &p)?;
        Some(p)
    } else {
        None
    };
    Ok(RunReport {
        seed: cfg.seed,
        schedule: info.schedule,
        faults: fault_stats(&history),
        probes,
        ops: history.ops.len(),
        verdict,
        history: history_path,
        elapsed: started.elapsed(),
        proxied_bytes,
    })
}

/// A linearizable top-N over every ad after the run, from any node, with the positions it
/// reflects; at most 30 s of trying.
async fn final_top(cluster: &Cluster, range: (i64, i64), ads: u32) -> Result<FinalTop, String> {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for id in cluster.live_ids() {
            let req = top_request(
                ads + 1,
                between(range.0, range.1),
                "",
                wire::Consistency::Linearizable,
            );
            match cluster.query(id).top(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(FinalTop {
                        rows: r.rows.into_iter().map(|r| (r.ad_id, r.count)).collect(),
                        positions: r
                            .positions
                            .iter()
                            .map(|p| (p.group_id, p.applied_index))
                            .collect(),
                    });
                }
                Err(s) => last = format!("node {id}: {:?} {}", s.code(), s.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

/// Each running node's applied index per data group, from stale top-1 reads.
async fn positions(cluster: &Cluster) -> Result<BTreeMap<u64, BTreeMap<u64, u64>>, String> {
    let mut out: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for id in cluster.live_ids() {
        let req = top_request(1, between(0, 60_000), "", wire::Consistency::Stale);
        let r = cluster
            .query(id)
            .top(req)
            .await
            .map_err(|s| format!("node {id}: {s}"))?
            .into_inner();
        for p in r.positions {
            out.entry(p.group_id)
                .or_default()
                .insert(p.node_id, p.applied_index);
        }
    }
    Ok(out)
}

/// Waits (at most 60 s) until every node reports the same applied index in every group
/// twice in a row.
async fn wait_converged(cluster: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut previous = None;
    loop {
        let last = match positions(cluster).await {
            Ok(p) => {
                let n = cluster.live_ids().len();
                let agreed = p.values().all(|per| {
                    per.len() == n && per.values().all(|v| Some(v) == per.values().next())
                });
                if agreed && previous.as_ref() == Some(&p) {
                    return Ok(());
                }
                let text = format!("{p:?}");
                previous = agreed.then_some(p);
                text
            }
            Err(e) => {
                previous = None;
                e
            }
        };
        if Instant::now() > deadline {
            bail!("the replicas did not converge in 60 s; last positions: {last}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Brings the replicas to rest, stops them, and reads everything the checker needs from
/// their data directories.
async fn final_state(
    cluster: &mut Cluster,
    history: &History,
    final_top: Result<FinalTop, String>,
) -> anyhow::Result<FinalState> {
    let groups = cluster.data_groups();
    let ids = cluster.ids();
    let ads: Vec<String> = {
        let mut a: Vec<u32> = history.events.iter().map(|e| e.ad).collect();
        a.sort_unstable();
        a.dedup();
        a.into_iter().map(ad_name).collect()
    };
    let minutes = {
        let lo = history.events.iter().map(|e| e.event_time_ms).min();
        let hi = history.events.iter().map(|e| e.event_time_ms).max();
        match (lo, hi) {
            (Some(lo), Some(hi)) => MinuteRange {
                from: Minute(Minute::of_ms(lo).0 - 1),
                to: Minute(Minute::of_ms(hi).0 + 2),
            },
            _ => MinuteRange {
                from: Minute(0),
                to: Minute(1),
            },
        }
    };
    let mut counters = BTreeMap::new();
    let mut uncompared = Vec::new();
    // Stopping every node at once can still leave one a leadership change behind its
    // peers; then restart and stop again (at most three rounds).
    let mut stop_problems = Vec::new();
    for round in 1..=3 {
        // A cluster that does not converge, or a node that does not stop, is the system's
        // failure, not the harness's: it is reported (line 6) and the disks are read anyway.
        if let Err(e) = wait_converged(cluster).await {
            stop_problems.push(format!("round {round}: {e:#}"));
        }
        match cluster.stop_all().await {
            Ok(statuses) => {
                for (id, status) in statuses {
                    if !status.success() {
                        stop_problems.push(format!("node {id} exited with {status} when stopped"));
                    }
                }
            }
            Err(e) => {
                stop_problems.push(format!("stopping the nodes: {e:#}"));
                for id in cluster.live_ids() {
                    let _ = cluster.kill(id);
                }
            }
        }
        counters.clear();
        for &id in &ids {
            let c = disk::group_counters(cluster.data_dir(id), &groups, &ads, minutes)
                .with_context(|| format!("reading node {id}'s state"))?;
            counters.insert(id, c);
        }
        uncompared = groups
            .iter()
            .copied()
            .filter(|g| {
                let applied: Vec<_> = ids.iter().map(|n| counters[n][g].digest.applied).collect();
                !applied
                    .iter()
                    .enumerate()
                    .any(|(i, a)| applied[i + 1..].contains(a))
            })
            .collect();
        if uncompared.is_empty() || round == 3 {
            break;
        }
        println!("note: groups {uncompared:?} ended with no two replicas at one applied index; restarting");
        for &id in &ids {
            cluster.restart(id)?;
        }
        cluster.wait_ready(Duration::from_secs(30)).await?;
    }

    let mut state = FinalState {
        replicas: BTreeMap::new(),
        models: BTreeMap::new(),
        log_problems: stop_problems,
        uncompared_groups: uncompared,
        final_top,
    };
    for (&id, per_group) in &counters {
        let mut gs = BTreeMap::new();
        for (&g, c) in per_group {
            gs.insert(
                g,
                ReplicaGroup {
                    applied: c.digest.applied.map(|l| l.index),
                    digest: c.digest.hash,
                    keys: c.digest.keys,
                    buckets: c.buckets.clone(),
                    totals: c.totals.clone(),
                },
            );
        }
        state.replicas.insert(id, gs);
    }
    for &g in &groups {
        let mut logs = BTreeMap::new();
        for &id in &ids {
            logs.insert(id, disk::raw_entries(cluster.data_dir(id), g)?);
        }
        let (reference, problems) = compare_logs(g, &logs);
        state.log_problems.extend(problems);
        // The model must cover what every replica applied, or its counts are not theirs.
        let last = reference.last().map(|e| e.log_id.index);
        for (&id, gs) in &state.replicas {
            let applied = gs.get(&g).and_then(|r| r.applied);
            if applied > last {
                state.log_problems.push(format!(
                    "group {g}: node {id} applied {applied:?}, past the end of the longest \
                     gap-free raw log ({last:?})"
                ));
            }
        }
        state.models.insert(g, model::replay(reference));
    }
    Ok(state)
}

/// Picks the raw log to model (a gap-free copy from the group's first entry that reaches
/// furthest) and reports every entry on which two copies disagree.
fn compare_logs(
    group: u64,
    logs: &BTreeMap<u64, Vec<adclick_storage::types::Entry>>,
) -> (&[adclick_storage::types::Entry], Vec<String>) {
    let mut problems = Vec::new();
    let gap_free = |l: &[adclick_storage::types::Entry]| {
        l.first().is_some_and(|e| e.log_id.index <= 1)
            && l.windows(2)
                .all(|w| w[1].log_id.index == w[0].log_id.index + 1)
    };
    let reference = logs
        .iter()
        .filter(|(_, l)| gap_free(l))
        .max_by_key(|(_, l)| l.last().map(|e| e.log_id.index))
        .map(|(_, l)| l.as_slice());
    let reference = match reference {
        Some(r) => r,
        None => {
            problems.push(format!(
                "group {group}: no node holds a gap-free raw log from the first entry"
            ));
            logs.values()
                .max_by_key(|l| l.len())
                .map_or(&[][..], Vec::as_slice)
        }
    };
    let by_index: BTreeMap<u64, &adclick_storage::types::Entry> =
        reference.iter().map(|e| (e.log_id.index, e)).collect();
    for (node, l) in logs {
        let mut differing = 0usize;
        let mut first = None;
        for e in l {
            if let Some(r) = by_index.get(&e.log_id.index) {
                if *r != e {
                    differing += 1;
                    first.get_or_insert(e.log_id.index);
                }
            }
        }
        if differing > 0 {
            problems.push(format!(
                "group {group}: node {node}'s raw log differs from the reference on {differing} \
                 committed entries (first at index {first:?})"
            ));
        }
    }
    (reference, problems)
}

/// Per fault: the routing writers' ingests while it held, and the first write after.
pub fn fault_stats(h: &History) -> Vec<FaultStats> {
    h.faults
        .iter()
        .map(|f| {
            let mut s = FaultStats {
                nemesis: f.nemesis.clone(),
                ok: 0,
                failed: 0,
                indeterminate: 0,
                first_write_after: None,
                cut_off_ops: 0,
            };
            let mut first: Option<u64> = None;
            for op in &h.ops {
                let OpKind::Ingest { result, .. } = &op.kind else {
                    continue;
                };
                let held = op.invoked_us >= f.start_us && op.completed_us <= f.heal_us;
                let cut_off = f.no_quorum || op.node.is_some_and(|n| f.minority.contains(&n));
                if held && cut_off {
                    s.cut_off_ops += 1;
                }
                if op.process >= PINNED_BASE {
                    continue;
                }
                if op.invoked_us >= f.injected_us && op.invoked_us < f.heal_us {
                    match result {
                        Outcome::Ok(_) => s.ok += 1,
                        Outcome::Fail(_) => s.failed += 1,
                        Outcome::Info(_) => s.indeterminate += 1,
                    }
                }
                let acked = result.ok().is_some_and(|a| a.iter().any(|a| a.acked()));
                if acked && op.invoked_us >= f.heal_us {
                    first = Some(first.map_or(op.completed_us, |t| t.min(op.completed_us)));
                }
            }
            s.first_write_after = first.map(|t| Duration::from_micros(t - f.heal_us));
            s
        })
        .collect()
}
