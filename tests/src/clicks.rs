//! Generating clicks, ingesting them with bounded retries, and keeping the books on what
//! the cluster acknowledged.
//!
//! Retries always resend the same clicks (same event ids), as the API contract asks: a
//! click whose first attempt was applied although its answer was lost comes back
//! `DUPLICATE`, and is counted once.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick_proto::wire;
use adclick_proto::wire::grpc::IngestClient;
use anyhow::{anyhow, bail, ensure};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::wait::now_ms;

/// The countries generated clicks come from.
pub const COUNTRIES: [&str; 5] = ["USA", "CAN", "GBR", "DEU", "FRA"];

/// The id of the `i`-th generated ad (0-based): `ad-0001`, `ad-0002`, ...
pub fn ad_id(i: usize) -> String {
    format!("ad-{:04}", i + 1)
}

/// Generates clicks with unique event ids (a random prefix per generator and a counter),
/// ads `ad-0001..`, `event_time` = now, countries from [`COUNTRIES`], and IPs half in
/// `10.0.0.0/8`, half public.
#[derive(Debug)]
pub struct ClickGen {
    prefix: String,
    seq: u64,
    ads: usize,
    rng: StdRng,
}

impl ClickGen {
    /// A generator over `ads` ads whose random choices follow `seed`.
    pub fn new(ads: usize, seed: u64) -> Self {
        let run: u32 = rand::rng().random();
        Self {
            prefix: format!("e{run:08x}"),
            seq: 0,
            ads: ads.max(1),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The ids of the ads this generator picks from.
    pub fn ads(&self) -> Vec<String> {
        (0..self.ads).map(ad_id).collect()
    }

    /// The random number generator (for tests that shuffle with the same seed).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// A fresh, never used event id.
    pub fn event_id(&mut self) -> Bytes {
        self.seq += 1;
        Bytes::from(format!("{}-{:09}", self.prefix, self.seq))
    }

    /// A click of `ad` at `event_time_ms` with a fresh event id and random attributes.
    pub fn click(&mut self, ad: &str, event_time_ms: i64) -> wire::Click {
        let event_id = self.event_id();
        let country = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let ip = if self.rng.random_bool(0.5) {
            format!(
                "10.{}.{}.{}",
                self.rng.random_range(0..=255u8),
                self.rng.random_range(0..=255u8),
                self.rng.random_range(1..=254u8)
            )
        } else {
            format!("203.0.113.{}", self.rng.random_range(1..=254u8))
        };
        wire::Click {
            event_id,
            ad_id: ad.to_owned(),
            event_time_ms,
            user_id: format!("user-{}", self.rng.random_range(0..1000u32)),
            ip,
            country: country.to_owned(),
        }
    }

    /// A click of a random ad, now.
    pub fn random_click(&mut self) -> wire::Click {
        let ad = ad_id(self.rng.random_range(0..self.ads));
        self.click(&ad, now_ms())
    }

    /// `n` clicks of random ads, now.
    pub fn batch(&mut self, n: usize) -> Vec<wire::Click> {
        (0..n).map(|_| self.random_click()).collect()
    }

    /// One click, now, for each entry of `ads` (repeat an ad to give it more clicks).
    pub fn batch_for<S: AsRef<str>>(&mut self, ads: &[S]) -> Vec<wire::Click> {
        let now = now_ms();
        ads.iter().map(|a| self.click(a.as_ref(), now)).collect()
    }
}

/// How hard [`ingest_with_retry`] tries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Deadline of one attempt (sent as `grpc-timeout` and enforced locally).
    pub attempt_timeout: Duration,
    /// At most this many attempts.
    pub max_attempts: u32,
    /// No new attempt after this much time.
    pub max_elapsed: Duration,
    /// First backoff; doubles per retry up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 100,
            max_elapsed: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// Whether a failed call may be retried with the same event ids: the server said so
/// (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`), or no answer arrived at all
/// (the connection failed or broke: tonic builds such statuses locally, with a source
/// error, whatever their code).
pub fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
    ) || is_transport_failure(status)
}

/// Whether `status` was made by the client because no answer arrived (connection refused,
/// reset or closed), rather than sent by a server.
pub fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some()
}

/// A batch that could not be ingested within the retry policy.
#[derive(Debug)]
pub struct IngestError {
    /// Attempts made.
    pub attempts: u32,
    /// Time spent.
    pub elapsed: Duration,
    /// The last error.
    pub last: String,
    /// Whether the last error was not retryable (the server refused the batch).
    pub fatal: bool,
}

impl std::fmt::Display for IngestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ingest failed after {} attempts in {:?}{}: {}",
            self.attempts,
            self.elapsed,
            if self.fatal { " (not retryable)" } else { "" },
            self.last
        )
    }
}

impl std::error::Error for IngestError {}

/// Describes a status for a test report: code, message, and the leader hint if any.
pub fn describe(status: &Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    if let Some(hint) = adclick_proto::convert::leader_hint(status) {
        s.push_str(&format!(" (leader {hint})"));
    }
    if let Some(src) = status.source() {
        s.push_str(&format!(" [transport: {src}]"));
    }
    s
}

/// Ingests `clicks`, retrying retryable failures with the same clicks, rotating through
/// `clients` starting at `first` (one per node, so a dead node is skipped), with
/// exponential backoff (or the server's `x-adclick-retry-after-ms`), bounded by `policy`.
/// Returns the response and the number of attempts.
pub async fn ingest_with_retry(
    clients: &mut [IngestClient<Channel>],
    first: usize,
    clicks: &[wire::Click],
    policy: &RetryPolicy,
) -> Result<(wire::IngestResponse, u32), IngestError> {
    ingest_with_retry_traced(clients, first, clicks, policy, &mut Vec::new()).await
}

/// [`ingest_with_retry`], also pushing onto `retried` a description of every failed
/// attempt that was retried (`CODE: message`).
pub async fn ingest_with_retry_traced(
    clients: &mut [IngestClient<Channel>],
    first: usize,
    clicks: &[wire::Click],
    policy: &RetryPolicy,
    retried: &mut Vec<String>,
) -> Result<(wire::IngestResponse, u32), IngestError> {
    assert!(!clients.is_empty(), "ingest_with_retry needs a client");
    let start = Instant::now();
    let mut backoff = policy.initial_backoff;
    let mut attempts = 0u32;
    let mut at = first;
    loop {
        attempts += 1;
        let client = &mut clients[at % clients.len()];
        let mut req = tonic::Request::new(wire::IngestRequest {
            clicks: clicks.to_vec(),
        });
        req.set_timeout(policy.attempt_timeout);
        let result = tokio::time::timeout(policy.attempt_timeout, client.ingest(req)).await;
        let status = match result {
            Ok(Ok(resp)) => return Ok((resp.into_inner(), attempts)),
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded(format!(
                "no answer within {:?} (client-side deadline)",
                policy.attempt_timeout
            )),
        };
        let fatal = !is_retryable(&status);
        if fatal || attempts >= policy.max_attempts || start.elapsed() >= policy.max_elapsed {
            return Err(IngestError {
                attempts,
                elapsed: start.elapsed(),
                last: describe(&status),
                fatal,
            });
        }
        retried.push(describe(&status));
        let wait = adclick_proto::convert::retry_after(&status)
            .unwrap_or(backoff)
            .min(policy.max_backoff * 4);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(policy.max_backoff);
        at += 1;
    }
}

/// Calls `call` until it succeeds, fails with a status that is not retryable (see
/// [`is_retryable`]), or `bound` has passed; backs off from 25 ms to 500 ms between
/// attempts. For reads and admin calls, which the contract says to retry on
/// `UNAVAILABLE` (no leader, or a forwarded request met a stale leader). Returns the
/// value and the number of attempts, or the last status.
pub async fn retry_rpc<T, F, Fut>(bound: Duration, mut call: F) -> Result<(T, u32), Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    let mut backoff = Duration::from_millis(25);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match call().await {
            Ok(v) => return Ok((v, attempts)),
            Err(s) if is_retryable(&s) && start.elapsed() < bound => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(s) => return Err(s),
        }
    }
}

/// Checks a response against its request: one result per click, a known outcome each, a
/// reason exactly for rejections, and a tally that sums the results.
pub fn check_response(clicks: &[wire::Click], resp: &wire::IngestResponse) -> anyhow::Result<()> {
    ensure!(
        resp.results.len() == clicks.len(),
        "{} results for {} clicks",
        resp.results.len(),
        clicks.len()
    );
    let mut tally = wire::Tally::default();
    for (i, r) in resp.results.iter().enumerate() {
        let outcome = wire::Outcome::try_from(r.outcome)
            .map_err(|_| anyhow!("result {i}: unknown outcome {}", r.outcome))?;
        let reason = wire::RejectReason::try_from(r.reject_reason)
            .map_err(|_| anyhow!("result {i}: unknown reject reason {}", r.reject_reason))?;
        match outcome {
            wire::Outcome::Unspecified => bail!("result {i}: OUTCOME_UNSPECIFIED"),
            wire::Outcome::Accepted => tally.accepted += 1,
            wire::Outcome::Duplicate => tally.duplicate += 1,
            wire::Outcome::Late => tally.late += 1,
            wire::Outcome::Rejected => tally.rejected += 1,
        }
        ensure!(
            (outcome == wire::Outcome::Rejected) == (reason != wire::RejectReason::Unspecified),
            "result {i}: outcome {outcome:?} with reject reason {reason:?}"
        );
    }
    ensure!(
        resp.tally.as_ref() == Some(&tally),
        "tally {:?} does not sum the results {tally:?}",
        resp.tally
    );
    Ok(())
}

/// The outcome of each result of a response.
pub fn outcomes(resp: &wire::IngestResponse) -> Vec<wire::Outcome> {
    resp.results
        .iter()
        .map(|r| wire::Outcome::try_from(r.outcome).unwrap_or(wire::Outcome::Unspecified))
        .collect()
}

/// What a workload attempted and what the cluster acknowledged.
///
/// An event id is *acknowledged* when a successful Ingest answered it `ACCEPTED` or
/// `DUPLICATE`: the cluster then promises it is counted exactly once. Batches that gave up
/// are kept, to be resent with [`Ledger::settle`].
#[derive(Debug, Default)]
pub struct Ledger {
    attempted: BTreeMap<Bytes, String>,
    acked: BTreeMap<Bytes, String>,
    pending: Vec<Vec<wire::Click>>,
    /// Clicks answered `ACCEPTED`.
    pub accepted: u64,
    /// Clicks answered `DUPLICATE`.
    pub duplicate: u64,
    /// Clicks answered `LATE`.
    pub late: u64,
    /// Clicks answered `REJECTED`.
    pub rejected: u64,
    /// Batches answered.
    pub acked_batches: u64,
    /// Batches that gave up (after the policy's retries).
    pub failed_batches: u64,
    /// Attempts beyond the first, over all batches.
    pub retries: u64,
    /// The first errors seen, for reports.
    pub errors: Vec<String>,
    /// Why attempts were retried: error description (truncated) -> occurrences.
    pub retry_reasons: BTreeMap<String, u64>,
}

impl Ledger {
    /// Notes that `clicks` are about to be sent.
    pub fn attempt(&mut self, clicks: &[wire::Click]) {
        for c in clicks {
            self.attempted.insert(c.event_id.clone(), c.ad_id.clone());
        }
    }

    /// Records the answer to `clicks` (checked with [`check_response`]).
    pub fn record(
        &mut self,
        clicks: &[wire::Click],
        resp: &wire::IngestResponse,
        attempts: u32,
    ) -> anyhow::Result<()> {
        check_response(clicks, resp)?;
        for (c, outcome) in clicks.iter().zip(outcomes(resp)) {
            match outcome {
                wire::Outcome::Accepted => self.accepted += 1,
                wire::Outcome::Duplicate => self.duplicate += 1,
                wire::Outcome::Late => self.late += 1,
                wire::Outcome::Rejected | wire::Outcome::Unspecified => self.rejected += 1,
            }
            if matches!(outcome, wire::Outcome::Accepted | wire::Outcome::Duplicate) {
                self.acked.insert(c.event_id.clone(), c.ad_id.clone());
            }
        }
        self.acked_batches += 1;
        self.retries += u64::from(attempts.saturating_sub(1));
        Ok(())
    }

    /// Records that `clicks` could not be ingested; they stay pending.
    pub fn give_up(&mut self, clicks: Vec<wire::Click>, err: &IngestError) {
        self.failed_batches += 1;
        self.retries += u64::from(err.attempts.saturating_sub(1));
        self.note_error(err.to_string());
        self.pending.push(clicks);
    }

    fn note_retried(&mut self, retried: Vec<String>) {
        for r in retried {
            let key: String = r.chars().take(120).collect();
            *self.retry_reasons.entry(key).or_insert(0) += 1;
        }
    }

    fn note_error(&mut self, e: String) {
        if self.errors.len() < 20 {
            self.errors.push(e);
        }
    }

    /// Ingests `clicks` and records the outcome; a batch that gives up stays pending.
    pub async fn ingest(
        &mut self,
        clients: &mut [IngestClient<Channel>],
        first: usize,
        clicks: Vec<wire::Click>,
        policy: &RetryPolicy,
    ) -> anyhow::Result<bool> {
        self.attempt(&clicks);
        let mut retried = Vec::new();
        let result = ingest_with_retry_traced(clients, first, &clicks, policy, &mut retried).await;
        self.note_retried(retried);
        match result {
            Ok((resp, attempts)) => {
                self.record(&clicks, &resp, attempts)?;
                Ok(true)
            }
            Err(e) if e.fatal => bail!("the cluster refused a valid batch: {e}"),
            Err(e) => {
                self.give_up(clicks, &e);
                Ok(false)
            }
        }
    }

    /// Batches that gave up and were not answered yet.
    pub fn pending_batches(&self) -> usize {
        self.pending.len()
    }

    /// Resends every pending batch (same event ids) until answered; fails if one still
    /// cannot be ingested within `policy`.
    pub async fn settle(
        &mut self,
        clients: &mut [IngestClient<Channel>],
        policy: &RetryPolicy,
    ) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for (i, clicks) in pending.into_iter().enumerate() {
            let mut retried = Vec::new();
            let result = ingest_with_retry_traced(clients, i, &clicks, policy, &mut retried).await;
            self.note_retried(retried);
            match result {
                Ok((resp, attempts)) => self.record(&clicks, &resp, attempts)?,
                Err(e) => bail!("resending a batch of {} clicks: {e}", clicks.len()),
            }
        }
        Ok(())
    }

    /// Distinct acknowledged event ids per ad.
    pub fn acked_per_ad(&self) -> BTreeMap<String, u64> {
        per_ad(&self.acked)
    }

    /// Distinct attempted event ids per ad.
    pub fn attempted_per_ad(&self) -> BTreeMap<String, u64> {
        per_ad(&self.attempted)
    }

    /// Distinct acknowledged event ids.
    pub fn acked(&self) -> usize {
        self.acked.len()
    }

    /// Distinct attempted event ids.
    pub fn attempted(&self) -> usize {
        self.attempted.len()
    }
}

fn per_ad(events: &BTreeMap<Bytes, String>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ad in events.values() {
        *out.entry(ad.clone()).or_insert(0) += 1;
    }
    out
}

/// A task ingesting batches continuously (with retries, rotating over its clients) until
/// stopped, keeping a [`Ledger`].
#[derive(Debug)]
pub struct BackgroundIngest {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handle: JoinHandle<anyhow::Result<Ledger>>,
    stop_bound: Duration,
}

impl BackgroundIngest {
    /// Starts ingesting batches of `batch_size` clicks from `gen` through `clients` (batch
    /// `k` starts at client `k % len`), pausing `pause` between batches.
    pub fn start(
        mut clients: Vec<IngestClient<Channel>>,
        mut gen: ClickGen,
        batch_size: usize,
        policy: RetryPolicy,
        pause: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop_bound = policy.max_elapsed + policy.attempt_timeout + Duration::from_secs(10);
        let handle = {
            let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
            tokio::spawn(async move {
                let mut ledger = Ledger::default();
                let mut k = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let batch = gen.batch(batch_size);
                    if ledger.ingest(&mut clients, k, batch, &policy).await? {
                        acked.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    k += 1;
                    tokio::time::sleep(pause).await;
                }
                Ok(ledger)
            })
        };
        Self {
            stop,
            acked,
            failed,
            handle,
            stop_bound,
        }
    }

    /// Batches answered so far.
    pub fn acked_batches(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Batches given up so far.
    pub fn failed_batches(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits until `more` batches beyond those answered now are answered.
    pub async fn wait_acked_more(&self, more: u64, timeout: Duration) -> anyhow::Result<u64> {
        let target = self.acked_batches() + more;
        let start = Instant::now();
        loop {
            let now = self.acked_batches();
            if now >= target {
                return Ok(now);
            }
            if self.handle.is_finished() {
                bail!("the ingest task ended early (stop it to see its error)");
            }
            if start.elapsed() >= timeout {
                bail!(
                    "only {now} of {target} batches answered after {timeout:?} ({} gave up)",
                    self.failed_batches()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops after the batch in flight and returns the ledger.
    pub async fn stop(self) -> anyhow::Result<Ledger> {
        self.stop.store(true, Ordering::SeqCst);
        match tokio::time::timeout(self.stop_bound, self.handle).await {
            Ok(joined) => joined.map_err(|e| anyhow!("ingest task panicked: {e}"))?,
            Err(_) => bail!("the ingest task did not stop within {:?}", self.stop_bound),
        }
    }
}
