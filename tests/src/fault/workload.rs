//! The fault suite's workload: client processes that ingest unique clicks and read counts
//! while the nemesis works, recording every operation in the [`Recorder`].
//!
//! - *Routing writers* use the real [`adclick_client::Client`] (leader routing, redirects,
//!   retries with the same ids inside one call). Each call ingests a few fresh events, the
//!   events whose earlier calls ended indeterminate (a retry with the same ids), and now
//!   and then a few events already acknowledged (a deliberate duplicate, which must come
//!   back `Duplicate` and never count twice).
//! - *Pinned writers*, one per node, send raw gRPC ingests to that node only, with no
//!   routing header, so the node forwards to the leaders itself. They make "a node on the
//!   minority side acknowledges nothing" checkable.
//! - *Readers* issue linearizable counts of random ads and top-N reads over the run's
//!   fixed query range.
//!
//! Event times lie in the last minute, and a run is kept short enough (see
//! `run::MAX_DURATION`) that no retry can be late: so `Late` and `Rejected` answers mean
//! "not counted" and the checker can hold the cluster to them.
//!
//! Classification: an answer is `Ok`; every error is `Info` (indeterminate), including
//! `INVALID_ARGUMENT`: a call's parts go to several groups, and the routing client may
//! have sent a part before (a timed-out attempt) when a later attempt is refused, so no
//! error proves that none of the clicks was applied. (The workload's clicks are all valid;
//! a refusal would be a surprise, and the log settles what happened.) A failed read is
//! `Fail`: it had no effect.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick_client::model::{AdId, Click, EventId, Outcome as ModelOutcome};
use adclick_client::{Client, ClientConfig, CountQuery, TimeSpec, TopQuery};
use adclick_proto::wire;
use adclick_proto::wire::grpc::IngestClient;
use anyhow::Context;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use super::checker::{Probe, LIVENESS_BOUND};
use super::history::{ad_name, Answer, Event, EventIdx, Op, OpKind, Outcome, Recorder};
use crate::cluster::channel_to;
use crate::wait::now_ms;

/// How the workload runs.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Writers using the routing client.
    pub writers: u32,
    /// Whether to run one pinned writer per node.
    pub pinned: bool,
    /// Readers (counts and top-N).
    pub readers: u32,
    /// Number of ads.
    pub ads: u32,
    /// Most fresh events per ingest.
    pub max_fresh: usize,
    /// Chance that an ingest also resends a few acknowledged events.
    pub duplicate_chance: f64,
    /// Pause between a process's operations.
    pub pause: Duration,
    /// Deadline of one routing-client call (its retries included).
    pub call_deadline: Duration,
    /// Timeout of one pinned-writer request.
    pub pinned_timeout: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            writers: 3,
            pinned: true,
            readers: 2,
            ads: 30,
            max_fresh: 12,
            duplicate_chance: 0.15,
            pause: Duration::from_millis(10),
            call_deadline: Duration::from_secs(4),
            // Short enough that a whole request fits inside a 3 s fault even behind one
            // that was in flight when the fault began, so the cut-off side is asked.
            pinned_timeout: Duration::from_secs(1),
        }
    }
}

/// The first process number of each kind (for reading a history).
pub const WRITER_BASE: u32 = 0;
/// Pinned writers are `PINNED_BASE + node id`.
pub const PINNED_BASE: u32 = 100;
/// Readers.
pub const READER_BASE: u32 = 200;
/// The final resolution pass and the liveness probes.
pub const FINAL_PROCESS: u32 = 300;

/// The workload's shared context.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Where operations are recorded.
    pub rec: Recorder,
    /// The run's query range, `[from_ms, to_ms)`.
    pub range: (i64, i64),
    /// The configuration.
    pub cfg: WorkloadConfig,
    /// The seed.
    pub seed: u64,
    /// Every node: id and gRPC address.
    pub nodes: Vec<(u64, SocketAddr)>,
}

/// The running workload.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<EventIdx>>>,
}

/// A routing client for the run's nodes.
pub async fn client(nodes: &[(u64, SocketAddr)], deadline: Duration) -> anyhow::Result<Client> {
    let mut cfg = ClientConfig::default();
    cfg.deadline = deadline;
    cfg.attempt_timeout = deadline.min(Duration::from_secs(2));
    cfg.max_backoff = Duration::from_millis(250);
    let seeds: Vec<String> = nodes.iter().map(|(_, a)| a.to_string()).collect();
    Client::connect_with(seeds, cfg)
        .await
        .context("connecting the routing client")
}

impl Workload {
    /// Starts every process.
    pub async fn start(ctx: &RunContext) -> anyhow::Result<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for p in 0..ctx.cfg.writers {
            let c = client(&ctx.nodes, ctx.cfg.call_deadline).await?;
            let w = Writer::new(ctx, WRITER_BASE + p, Sender::Routing(c));
            tasks.push(tokio::spawn(w.run(Arc::clone(&stop))));
        }
        if ctx.cfg.pinned {
            for &(id, addr) in &ctx.nodes {
                let ch = channel_to(addr, ctx.cfg.pinned_timeout);
                let w = Writer::new(ctx, PINNED_BASE + id as u32, Sender::Pinned(id, ch));
                tasks.push(tokio::spawn(w.run(Arc::clone(&stop))));
            }
        }
        for p in 0..ctx.cfg.readers {
            let c = client(&ctx.nodes, Duration::from_secs(2)).await?;
            let ctx = ctx.clone();
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                read_loop(ctx, READER_BASE + p, c, stop).await;
                Vec::new()
            }));
        }
        Ok(Workload { stop, tasks })
    }

    /// Stops every process and returns the events still unresolved (never acknowledged,
    /// some answer unknown).
    pub async fn stop(self) -> Vec<EventIdx> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for t in self.tasks {
            if let Ok(v) = t.await {
                out.extend(v);
            }
        }
        out
    }
}

enum Sender {
    Routing(Client),
    Pinned(u64, tonic::transport::Channel),
}

struct Writer {
    ctx: RunContext,
    process: u32,
    sender: Sender,
    rng: StdRng,
    seq: u64,
    unresolved: VecDeque<EventIdx>,
    queued: HashSet<EventIdx>,
    acked: Vec<EventIdx>,
}

impl Writer {
    fn new(ctx: &RunContext, process: u32, sender: Sender) -> Self {
        Writer {
            ctx: ctx.clone(),
            process,
            sender,
            rng: StdRng::seed_from_u64(ctx.seed ^ (u64::from(process) << 32)),
            seq: 0,
            unresolved: VecDeque::new(),
            queued: HashSet::new(),
            acked: Vec::new(),
        }
    }

    fn fresh(&mut self) -> EventIdx {
        self.seq += 1;
        let u: f64 = self.rng.random();
        // Squared uniform: a few ads get most clicks, so top-N has a shape.
        let ad = ((u * u) * f64::from(self.ctx.cfg.ads)) as u32;
        let ad = ad.min(self.ctx.cfg.ads - 1);
        let event_time_ms = now_ms() - self.rng.random_range(0..60_000);
        self.ctx.rec.event(Event {
            id: format!("s{:x}-p{}-{}", self.ctx.seed, self.process, self.seq),
            ad,
            event_time_ms,
        })
    }

    async fn run(mut self, stop: Arc<AtomicBool>) -> Vec<EventIdx> {
        while !stop.load(Ordering::Relaxed) {
            let mut batch: Vec<EventIdx> = Vec::new();
            while batch.len() < 4 {
                let Some(e) = self.unresolved.pop_front() else {
                    break;
                };
                self.queued.remove(&e);
                batch.push(e);
            }
            let fresh = self.rng.random_range(1..=self.ctx.cfg.max_fresh);
            for _ in 0..fresh {
                let e = self.fresh();
                batch.push(e);
            }
            if !self.acked.is_empty() && self.rng.random_bool(self.ctx.cfg.duplicate_chance) {
                for _ in 0..self.rng.random_range(1..=3) {
                    let e = self.acked[self.rng.random_range(0..self.acked.len())];
                    if !batch.contains(&e) {
                        batch.push(e);
                    }
                }
            }
            let result = self.send(&batch).await;
            self.settle(&batch, &result);
            tokio::time::sleep(self.ctx.cfg.pause).await;
        }
        self.unresolved.into_iter().collect()
    }

    fn settle(&mut self, batch: &[EventIdx], result: &Outcome<Vec<Answer>>) {
        for (i, &e) in batch.iter().enumerate() {
            let answer = result.ok().and_then(|a| a.get(i).copied());
            match (answer, result) {
                (Some(a), _) if a.acked() => {
                    if self.acked.len() < 4096 {
                        self.acked.push(e);
                    }
                }
                (Some(_), _) | (None, Outcome::Fail(_)) => {}
                (None, _) => {
                    if self.queued.insert(e) {
                        self.unresolved.push_back(e);
                    }
                }
            }
        }
        // An event acknowledged now needs no retry even if an earlier call left it
        // queued.
        let acked_now: HashSet<EventIdx> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                result
                    .ok()
                    .and_then(|a| a.get(*i))
                    .is_some_and(|a| a.acked())
            })
            .map(|(_, &e)| e)
            .collect();
        if !acked_now.is_empty() {
            self.unresolved.retain(|e| !acked_now.contains(e));
            self.queued.retain(|e| !acked_now.contains(e));
        }
    }

    async fn send(&self, batch: &[EventIdx]) -> Outcome<Vec<Answer>> {
        let clicks: Vec<Click> = batch.iter().map(|&e| self.click(e)).collect();
        let invoked_us = self.ctx.rec.now_us();
        let (node, result) = match &self.sender {
            Sender::Routing(c) => (None, ingest_routed(c, &clicks).await),
            Sender::Pinned(id, ch) => (Some(*id), ingest_pinned(ch.clone(), &clicks).await),
        };
        self.ctx.rec.op(Op {
            process: self.process,
            node,
            invoked_us,
            completed_us: self.ctx.rec.now_us(),
            kind: OpKind::Ingest {
                events: batch.to_vec(),
                result: result.clone(),
            },
        });
        result
    }

    fn click(&self, e: EventIdx) -> Click {
        click_of(&self.ctx.rec, e)
    }
}

/// The click of event `e` (the same every time it is sent).
pub fn click_of(rec: &Recorder, e: EventIdx) -> Click {
    let ev = rec.get_event(e);
    Click {
        event_id: EventId::new(Bytes::from(ev.id.into_bytes()))
            .expect("workload event ids are 1..=64 bytes"),
        ad_id: AdId::new(&ad_name(ev.ad)).expect("workload ad ids are valid"),
        event_time_ms: ev.event_time_ms,
        user_id: format!("u{}", e % 97),
        ip: std::net::IpAddr::from([10, 0, (e >> 8) as u8, e as u8]),
        country: "USA".to_owned(),
    }
}

fn answer(o: &ModelOutcome) -> Answer {
    match o {
        ModelOutcome::Accepted => Answer::Accepted,
        ModelOutcome::Duplicate => Answer::Duplicate,
        ModelOutcome::Late => Answer::Late,
        ModelOutcome::Rejected(_) => Answer::Rejected,
    }
}

async fn ingest_routed(c: &Client, clicks: &[Click]) -> Outcome<Vec<Answer>> {
    match c.ingest(clicks).await {
        Ok(report) => Outcome::Ok(report.results.iter().map(|r| answer(&r.outcome)).collect()),
        // Even INVALID_ARGUMENT proves nothing here: the client may have sent the call
        // before (a timed-out attempt), and other groups' parts may have been applied.
        // The workload's clicks are all valid, so any error is a surprise the log settles.
        Err(e) => Outcome::Info(e.to_string()),
    }
}

async fn ingest_pinned(ch: tonic::transport::Channel, clicks: &[Click]) -> Outcome<Vec<Answer>> {
    let req = wire::IngestRequest {
        clicks: clicks.iter().map(wire::Click::from).collect(),
    };
    match IngestClient::new(ch).ingest(req).await {
        Ok(resp) => {
            let results = resp.into_inner().results;
            if results.len() != clicks.len() {
                return Outcome::Info(format!(
                    "{} results for {} clicks",
                    results.len(),
                    clicks.len()
                ));
            }
            let mut out = Vec::with_capacity(results.len());
            for r in &results {
                match ModelOutcome::try_from(r) {
                    Ok(o) => out.push(answer(&o)),
                    Err(e) => return Outcome::Info(format!("unreadable result: {e}")),
                }
            }
            Outcome::Ok(out)
        }
        Err(s) if s.code() == tonic::Code::InvalidArgument => Outcome::Fail(s.message().to_owned()),
        Err(s) => Outcome::Info(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn range_spec(range: (i64, i64)) -> TimeSpec {
    TimeSpec::Between {
        from_ms: range.0,
        to_ms: range.1,
    }
}

/// One linearizable count of ad `ad`, recorded.
pub async fn read_count(ctx: &RunContext, process: u32, c: &Client, ad: u32) -> Outcome<u64> {
    let invoked_us = ctx.rec.now_us();
    let q = CountQuery::new(
        AdId::new(&ad_name(ad)).expect("workload ad ids are valid"),
        range_spec(ctx.range),
    );
    let (result, served_by) = match c.count(q).await {
        Ok(a) => (
            Outcome::Ok(a.count),
            a.position.map(|p| (p.node_id, p.applied_index)),
        ),
        Err(e) => (Outcome::Fail(e.to_string()), None),
    };
    ctx.rec.op(Op {
        process,
        node: None,
        invoked_us,
        completed_us: ctx.rec.now_us(),
        kind: OpKind::Count {
            ad,
            result: result.clone(),
            served_by,
        },
    });
    result
}

/// One linearizable top-`n` over the run's range, recorded.
pub async fn read_top(
    ctx: &RunContext,
    process: u32,
    c: &Client,
    n: u32,
) -> Outcome<Vec<(String, u64)>> {
    let invoked_us = ctx.rec.now_us();
    let result = match c.top(TopQuery::new(n, range_spec(ctx.range))).await {
        Ok(a) => Outcome::Ok(
            a.rows
                .iter()
                .map(|r| (r.ad_id.as_str().to_owned(), r.count))
                .collect(),
        ),
        Err(e) => Outcome::Fail(e.to_string()),
    };
    ctx.rec.op(Op {
        process,
        node: None,
        invoked_us,
        completed_us: ctx.rec.now_us(),
        kind: OpKind::Top {
            n,
            result: result.clone(),
        },
    });
    result
}

async fn read_loop(ctx: RunContext, process: u32, c: Client, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (u64::from(process) << 32));
    while !stop.load(Ordering::Relaxed) {
        if rng.random_bool(0.8) {
            let ad = rng.random_range(0..ctx.cfg.ads);
            read_count(&ctx, process, &c, ad).await;
        } else {
            read_top(&ctx, process, &c, 10).await;
        }
        tokio::time::sleep(ctx.cfg.pause * 2).await;
    }
}

/// Ingests `events` through the routing client as the final process, recorded.
async fn ingest_final(ctx: &RunContext, c: &Client, events: &[EventIdx]) -> Outcome<Vec<Answer>> {
    let clicks: Vec<Click> = events.iter().map(|&e| click_of(&ctx.rec, e)).collect();
    let invoked_us = ctx.rec.now_us();
    let result = ingest_routed(c, &clicks).await;
    ctx.rec.op(Op {
        process: FINAL_PROCESS,
        node: None,
        invoked_us,
        completed_us: ctx.rec.now_us(),
        kind: OpKind::Ingest {
            events: events.to_vec(),
            result: result.clone(),
        },
    });
    result
}

/// Sends the `unresolved` events again (same ids) until each is answered or `within`
/// passes; returns those still unanswered.
pub async fn resolve(
    ctx: &RunContext,
    c: &Client,
    unresolved: Vec<EventIdx>,
    within: Duration,
) -> Vec<EventIdx> {
    let start = Instant::now();
    let mut left = unresolved;
    while !left.is_empty() && start.elapsed() < within {
        let mut still = Vec::new();
        for chunk in left.chunks(200) {
            let result = ingest_final(ctx, c, chunk).await;
            if !matches!(result, Outcome::Ok(_) | Outcome::Fail(_)) {
                still.extend_from_slice(chunk);
            }
        }
        left = still;
    }
    left
}

/// After a heal at `heal` (µs on the run clock): a fresh click must be acknowledged and
/// then a linearizable count read, each within [`LIVENESS_BOUND`] of the heal.
pub async fn probe(ctx: &RunContext, c: &Client, nemesis: &str, heal_us: u64) -> Probe {
    let since = |rec: &Recorder| Duration::from_micros(rec.now_us().saturating_sub(heal_us));
    let give_up = LIVENESS_BOUND + Duration::from_secs(2);
    let ad = 0;
    let e = ctx.rec.event(Event {
        id: format!("s{:x}-probe-{heal_us}", ctx.seed),
        ad,
        event_time_ms: now_ms(),
    });
    let mut probe = Probe {
        nemesis: nemesis.to_owned(),
        write_after: None,
        read_after: None,
        error: None,
    };
    while since(&ctx.rec) < give_up {
        match ingest_final(ctx, c, &[e]).await {
            Outcome::Ok(a) if a.first().is_some_and(|a| a.acked()) => {
                probe.write_after = Some(since(&ctx.rec));
                break;
            }
            Outcome::Ok(a) => {
                probe.error = Some(format!("the probe click was answered {a:?}"));
                return probe;
            }
            Outcome::Fail(m) | Outcome::Info(m) => probe.error = Some(m),
        }
    }
    if probe.write_after.is_none() {
        return probe;
    }
    while since(&ctx.rec) < give_up {
        match read_count(ctx, FINAL_PROCESS, c, ad).await {
            Outcome::Ok(_) => {
                probe.read_after = Some(since(&ctx.rec));
                probe.error = None;
                break;
            }
            Outcome::Fail(m) | Outcome::Info(m) => probe.error = Some(m),
        }
    }
    probe
}
