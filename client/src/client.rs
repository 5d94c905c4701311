//! [`Client`]: routes each call to the node that can serve it and retries what is safe to
//! retry until the call's deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adclick_proto::convert::{CountQuery, TopQuery};
use adclick_proto::filter::FilterName;
use adclick_proto::model::{AdCount, Click, MinuteRange, Outcome, Tally};
use adclick_proto::wire::{self, grpc, metadata};
use futures::future::join_all;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::config::{Backoff, ClientConfig};
use crate::error::{Error, Failure};
use crate::routing::{endpoint, parse_seeds, Router, Routes};

/// Largest answer accepted from a node (an ingest answer carries one result per click).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Redirects followed in a row without a pause: a leader hint is followed at once, but
/// two nodes that keep naming each other must not spin.
const MAX_FREE_REDIRECTS: u32 = 3;

/// A handle to an adclick cluster. Cheap to clone; clones share connections and routing.
///
/// It keeps the cluster's shard map, sends each group's part of a batch straight to the
/// group's leader, follows not-leader redirects, refetches the map when a node says it is
/// stale, and retries anything whose outcome is unknown with the same event ids, so a
/// retried click is never counted twice. Every call is bounded by
/// [`ClientConfig::deadline`].
///
/// ```no_run
/// use adclick_client::{Client, CountQuery, TimeSpec};
/// use adclick_client::model::{AdId, Click};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::connect(["127.0.0.1:7401"]).await?;
/// let click = Click {
///     event_id: adclick_client::new_event_id(),
///     ad_id: AdId::new("ad001")?,
///     event_time_ms: 1_720_483_201_000,
///     user_id: "user-1".into(),
///     ip: "207.148.22.22".parse()?,
///     country: "USA".into(),
/// };
/// let report = client.ingest(&[click]).await?;
/// println!("{:?}", report.tally);
/// let answer = client
///     .count(CountQuery::new(AdId::new("ad001")?, TimeSpec::last(5)?))
///     .await?;
/// println!("ad001: {} clicks", answer.count);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    router: Router,
}

/// The result of one click of an ingested batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickResult {
    /// What happened to it. After a retry, `Duplicate` may mean that an earlier attempt of
    /// the same call counted it: either way it is counted exactly once.
    pub outcome: Outcome,
    /// Why it was rejected, for a person; empty unless `outcome` is `Rejected`.
    pub message: String,
}

/// The answer to [`Client::ingest`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// One result per click, in the order they were given.
    pub results: Vec<ClickResult>,
    /// The results summed by outcome.
    pub tally: Tally,
    /// Requests sent for this batch in all, retries and redirects included (at least one
    /// per group touched).
    pub attempts: u32,
}

/// Where a group stood when it served a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPosition {
    /// The Raft group.
    pub group_id: u64,
    /// The node that served the read.
    pub node_id: u64,
    /// The group's last applied log index on that node.
    pub applied_index: u64,
    /// The group's event-time watermark (ms since the epoch): minutes ending at or before
    /// it are final. `None` before the group counted a click.
    pub watermark_ms: Option<i64>,
}

/// The answer to [`Client::count`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountAnswer {
    /// Clicks counted in the range (under the filter, if one was given).
    pub count: u64,
    /// Clicks of the ad in the range that arrived late: kept, not counted.
    pub late: u64,
    /// The whole minutes summed.
    pub range: MinuteRange,
    /// Where the ad's group stood.
    pub position: Option<GroupPosition>,
}

/// The answer to [`Client::top`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopAnswer {
    /// At most N rows, count descending, ties by ad id ascending.
    pub rows: Vec<AdCount>,
    /// The whole minutes summed.
    pub range: MinuteRange,
    /// Where each data group stood.
    pub positions: Vec<GroupPosition>,
}

/// How complete a filter's counts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterState {
    /// Clicks before the registration are still being counted from the raw log.
    Backfilling,
    /// Complete for every minute the raw log retains.
    Ready,
    /// Counts every click applied after its registration only (no backfill).
    ForwardOnly,
}

impl FilterState {
    /// A short, stable name: `backfilling`, `ready`, `forward_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterState::Backfilling => "backfilling",
            FilterState::Ready => "ready",
            FilterState::ForwardOnly => "forward_only",
        }
    }
}

/// A registered filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterInfo {
    /// Its name, used in queries.
    pub name: String,
    /// The predicate, in the filter language.
    pub expr: String,
    /// How complete its counts are.
    pub state: FilterState,
    /// When it was registered (ms since the epoch), when the cluster recorded it.
    pub created_at_ms: Option<i64>,
}

/// Why a retry loop stopped without an answer.
enum Stop {
    /// The shard map changed: the caller re-routes (the map is already refetched).
    Reroute,
    /// The call failed.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// The retry state of one call (or one part of a batch).
struct Attempts {
    started: Instant,
    deadline: Instant,
    count: u32,
    redirects: u32,
    internal: u32,
    /// Stale-map answers so far.
    stale: u32,
    last: String,
    backoff: Backoff,
}

impl Attempts {
    fn new(config: &ClientConfig, started: Instant) -> Attempts {
        Attempts {
            started,
            deadline: started + config.deadline,
            count: 0,
            redirects: 0,
            internal: 0,
            stale: 0,
            last: "no attempt made".into(),
            backoff: Backoff::new(config),
        }
    }

    /// Time left before the deadline, or the error that ends the call.
    fn remaining(&self) -> Result<Duration, Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::DeadlineExceeded {
                attempts: self.count,
                elapsed: self.started.elapsed(),
                last: self.last.clone(),
            });
        }
        Ok(left)
    }

    /// Sleeps `delay`, or until the deadline if that comes first.
    async fn pause(&self, delay: Duration) {
        tokio::time::sleep_until((Instant::now() + delay).min(self.deadline)).await;
    }
}

impl Client {
    /// Connects with the default [`ClientConfig`]. `seeds` are `host:port` addresses of
    /// any nodes (entries may also be comma-separated lists); the rest of the cluster is
    /// learned from its shard map.
    pub async fn connect<I, S>(seeds: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::connect_with(seeds, ClientConfig::default()).await
    }

    /// Connects with `config`: fetches the shard map from the first seed that answers,
    /// retrying until the config's deadline.
    pub async fn connect_with<I, S>(seeds: I, config: ClientConfig) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        config.validate()?;
        let seeds = parse_seeds(seeds)?;
        for s in &seeds {
            endpoint(s, &config)?;
        }
        let mut attempts = Attempts::new(&config, Instant::now());
        let map = fetch_map(&seeds, &config, &mut attempts, |a| {
            endpoint(a, &config).map(|e| e.connect_lazy())
        })
        .await?;
        let routes = Routes::new(map, &seeds)?;
        Ok(Client {
            inner: Arc::new(Inner {
                router: Router::new(seeds, config.clone(), routes),
                config,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The shard map as last fetched.
    pub fn shard_map(&self) -> wire::ShardMap {
        self.inner.router.routes().map.clone()
    }

    /// Fetches the shard map again (leaders included) and routes by it from now on.
    pub async fn refresh(&self) -> Result<(), Error> {
        let mut attempts = Attempts::new(&self.inner.config, Instant::now());
        self.refresh_within(&mut attempts).await
    }

    async fn refresh_within(&self, attempts: &mut Attempts) -> Result<(), Error> {
        let router = &self.inner.router;
        let mut nodes = router.routes().nodes().to_vec();
        for s in router.seeds() {
            if !nodes.contains(s) {
                nodes.push(s.clone());
            }
        }
        let map = fetch_map(&nodes, &self.inner.config, attempts, |a| router.channel(a)).await?;
        router.replace(Routes::new(map, router.seeds())?);
        Ok(())
    }

    /// Ingests `clicks` and returns each click's outcome, in order. Each group's part goes
    /// to that group's leader; parts whose outcome is unknown are retried with the same
    /// event ids until the deadline.
    ///
    /// An `Err` means some parts may have been counted and others not: the whole batch
    /// can be sent again as is (counted clicks come back `Duplicate`).
    pub async fn ingest(&self, clicks: &[Click]) -> Result<IngestReport, Error> {
        let started = Instant::now();
        let wire: Vec<wire::Click> = clicks.iter().map(wire::Click::from).collect();
        let mut results: Vec<Option<wire::EventResult>> = vec![None; wire.len()];
        let mut pending: Vec<usize> = (0..wire.len()).collect();
        let mut attempts = 0;
        let mut rounds = 0u32;
        let mut reroute = Backoff::new(&self.inner.config);
        while !pending.is_empty() {
            if rounds > 1 {
                // Parts came back for re-routing more than once: the nodes disagree on the
                // shard map. Back off (each part's own attempts started afresh).
                let mut pause = Attempts::new(&self.inner.config, started);
                pause.count = attempts;
                pause.last = "the nodes kept answering that the shard map is stale".into();
                pause.remaining()?;
                pause.pause(reroute.next_delay()).await;
            }
            rounds += 1;
            let routes = self.inner.router.routes();
            let mut parts: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for i in pending.drain(..) {
                let g = routes.group_of(wire[i].ad_id.as_bytes())?;
                parts.entry(g).or_default().push(i);
            }
            let max = self.inner.config.max_batch_clicks;
            let sends = parts
                .into_iter()
                .flat_map(|(g, idx)| idx.chunks(max).map(|c| (g, c.to_vec())).collect::<Vec<_>>());
            let answers = join_all(sends.map(|(g, idx)| {
                let wire = &wire;
                let version = routes.map.version;
                async move {
                    let mut att = Attempts::new(&self.inner.config, started);
                    let r = self.send_part(g, version, &idx, wire, &mut att).await;
                    (idx, r, att.count)
                }
            }))
            .await;
            let mut failure = None;
            for (idx, answer, count) in answers {
                attempts += count;
                match answer {
                    Ok(part) => {
                        for (i, r) in idx.into_iter().zip(part) {
                            results[i] = Some(r);
                        }
                    }
                    Err(Stop::Reroute) => pending.extend(idx),
                    Err(Stop::Failed(e)) => failure = failure.or(Some(e)),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        let mut report = IngestReport {
            results: Vec::with_capacity(results.len()),
            tally: Tally::default(),
            attempts,
        };
        for r in results {
            let r = r.ok_or_else(|| Error::protocol("a click got no result"))?;
            let outcome = Outcome::try_from(&r)
                .map_err(|e| Error::protocol(format!("a node sent a bad result: {e}")))?;
            report.tally.add(outcome);
            report.results.push(ClickResult {
                outcome,
                message: r.message,
            });
        }
        Ok(report)
    }

    /// Sends one group's part until it is applied, the map changes, or the call fails.
    async fn send_part(
        &self,
        group: u64,
        version: u64,
        idx: &[usize],
        wire: &[wire::Click],
        att: &mut Attempts,
    ) -> Result<Vec<wire::EventResult>, Stop> {
        let resp = self
            .with_retries(att, Some(group), |channel, timeout| {
                let clicks = idx.iter().map(|&i| wire[i].clone()).collect();
                let mut req = Request::new(wire::IngestRequest { clicks });
                routed(&mut req, version, timeout);
                async move {
                    grpc::IngestClient::new(channel)
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .ingest(req)
                        .await
                }
            })
            .await?;
        if resp.results.len() != idx.len() {
            return Err(Stop::Failed(Error::protocol(format!(
                "a node answered {} results for {} clicks",
                resp.results.len(),
                idx.len()
            ))));
        }
        Ok(resp.results)
    }

    /// Counts one ad's clicks. Sent to the leader of the ad's group, which confirms its
    /// leadership with one heartbeat round and answers without forwarding; any node could
    /// answer it.
    pub async fn count(&self, query: CountQuery) -> Result<CountAnswer, Error> {
        let mut att = Attempts::new(&self.inner.config, Instant::now());
        let resp = loop {
            let routes = self.inner.router.routes();
            let group = routes.group_of(query.ad_id.as_bytes())?;
            let version = routes.map.version;
            let r = self
                .with_retries(&mut att, Some(group), |channel, timeout| {
                    let mut req = Request::new(wire::CountRequest::from(query.clone()));
                    routed(&mut req, version, timeout);
                    async move { grpc::QueryClient::new(channel).count(req).await }
                })
                .await;
            match r {
                Ok(resp) => break resp,
                Err(Stop::Reroute) => continue,
                Err(Stop::Failed(e)) => return Err(e),
            }
        };
        Ok(CountAnswer {
            count: resp.count,
            late: resp.late,
            range: minutes(resp.range)?,
            position: resp.position.map(position),
        })
    }

    /// The most clicked ads. Any node answers: it asks every group and merges exactly.
    pub async fn top(&self, query: TopQuery) -> Result<TopAnswer, Error> {
        let resp = self
            .any_node(|channel, timeout, version| {
                let mut req = Request::new(wire::TopRequest::from(query.clone()));
                routed(&mut req, version, timeout);
                async move { grpc::QueryClient::new(channel).top(req).await }
            })
            .await?;
        let rows = resp
            .rows
            .into_iter()
            .map(AdCount::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::protocol(format!("a node sent a bad top row: {e}")))?;
        Ok(TopAnswer {
            rows,
            range: minutes(resp.range)?,
            positions: resp.positions.into_iter().map(position).collect(),
        })
    }

    /// Registers filter `name` with expression `expr` (e.g.
    /// `country = "USA" and ip in 10.0.0.0/8`). Registering the same pair again succeeds;
    /// a name taken by another expression is [`Error::AlreadyExists`].
    pub async fn create_filter(&self, name: &str, expr: &str) -> Result<FilterInfo, Error> {
        let name = FilterName::new(name)?;
        let resp = self
            .any_node(|channel, timeout, _| {
                let mut req = Request::new(wire::CreateFilterRequest {
                    name: name.as_str().to_owned(),
                    expr: expr.to_owned(),
                });
                req.set_timeout(timeout);
                async move { grpc::AdminClient::new(channel).create_filter(req).await }
            })
            .await?;
        filter_info(
            resp.filter
                .ok_or_else(|| Error::protocol("CreateFilter answered no filter"))?,
        )
    }

    /// The registered filters, by name.
    pub async fn list_filters(&self) -> Result<Vec<FilterInfo>, Error> {
        let resp = self
            .any_node(|channel, timeout, _| {
                let mut req = Request::new(wire::ListFiltersRequest {});
                req.set_timeout(timeout);
                async move { grpc::AdminClient::new(channel).list_filters(req).await }
            })
            .await?;
        resp.filters.into_iter().map(filter_info).collect()
    }

    /// Drops filter `name` and its counters; returns whether it existed. After a retry
    /// (the first attempt's outcome unknown), `false` may mean that attempt dropped it.
    pub async fn drop_filter(&self, name: &str) -> Result<bool, Error> {
        let name = FilterName::new(name)?;
        let resp = self
            .any_node(|channel, timeout, _| {
                let mut req = Request::new(wire::DropFilterRequest {
                    name: name.as_str().to_owned(),
                });
                req.set_timeout(timeout);
                async move { grpc::AdminClient::new(channel).drop_filter(req).await }
            })
            .await?;
        Ok(resp.existed)
    }

    /// The cluster's status as one node sees it: nodes, groups, leaders, lags. A
    /// diagnostic report, given in its wire form.
    pub async fn cluster_status(&self) -> Result<wire::ClusterStatusResponse, Error> {
        self.any_node(|channel, timeout, _| {
            let mut req = Request::new(wire::ClusterStatusRequest {});
            req.set_timeout(timeout);
            async move { grpc::AdminClient::new(channel).cluster_status(req).await }
        })
        .await
    }

    /// Runs a call any node can serve, rotating over the nodes on failure. `f` gets the
    /// channel, the attempt's timeout and the shard map version.
    async fn any_node<T, F, Fut>(&self, mut f: F) -> Result<T, Error>
    where
        F: FnMut(Channel, Duration, u64) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut att = Attempts::new(&self.inner.config, Instant::now());
        loop {
            let version = self.inner.router.routes().map.version;
            let r = self
                .with_retries(&mut att, None, |c, t| f(c, t, version))
                .await;
            match r {
                Ok(v) => return Ok(v),
                Err(Stop::Reroute) => continue,
                Err(Stop::Failed(e)) => return Err(e),
            }
        }
    }

    /// Sends attempts of one call until one succeeds, a not-retryable error comes back,
    /// the shard map turns out stale ([`Stop::Reroute`], after refetching it) or the
    /// deadline passes. `group` is the data group the call is for, whose leader is tried
    /// first; `None` rotates over all nodes.
    async fn with_retries<T, F, Fut>(
        &self,
        att: &mut Attempts,
        group: Option<u64>,
        mut f: F,
    ) -> Result<T, Stop>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let router = &self.inner.router;
        loop {
            let remaining = att.remaining()?;
            let addr = match group {
                Some(g) => router.node_for(g),
                None => router.any_node(),
            };
            let timeout = remaining.min(self.inner.config.attempt_timeout);
            let channel = router.channel(&addr)?;
            att.count += 1;
            let status = match tokio::time::timeout(timeout, f(channel, timeout)).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            att.last = format!("{addr}: {:?}: {}", status.code(), status.message());
            let mut delay = None;
            match Failure::of(&status) {
                Failure::NotLeader(Some(hint)) if hint.addr != addr => {
                    if let Some(g) = group {
                        router.learn_leader(g, Some(&hint));
                    }
                    att.redirects += 1;
                    if att.redirects <= MAX_FREE_REDIRECTS {
                        continue;
                    }
                }
                Failure::NotLeader(_) | Failure::Retry => {
                    if let Some(g) = group {
                        router.forget_leader(g, &addr);
                    }
                }
                Failure::StaleMap => {
                    // The first time, re-route at once (the map really changed); again
                    // and again means nodes disagree on the map (an upgrade in progress):
                    // back off rather than refetch at RPC speed.
                    att.stale += 1;
                    if att.stale > 1 {
                        let delay = att.backoff.next_delay();
                        att.pause(delay).await;
                    }
                    self.refresh_within(att).await?;
                    return Err(Stop::Reroute);
                }
                Failure::Overloaded(after) => delay = after,
                Failure::Internal => {
                    att.internal += 1;
                    if att.internal >= 3 {
                        return Err(Stop::Failed(Error::Server(att.last.clone())));
                    }
                    if let Some(g) = group {
                        router.forget_leader(g, &addr);
                    }
                }
                Failure::Fatal(e) => return Err(Stop::Failed(e)),
            }
            att.redirects = 0;
            let delay = match delay {
                // The node's hint, spread by up to a quarter so waiting clients do not
                // return together.
                Some(d) => d + d.mul_f64(rand::random::<f64>() / 4.0),
                None => att.backoff.next_delay(),
            };
            att.pause(delay).await;
        }
    }
}

/// Fetches and returns the shard map from the first of `nodes` that answers, going round
/// them with backoff until the deadline.
async fn fetch_map<F>(
    nodes: &[String],
    config: &ClientConfig,
    att: &mut Attempts,
    channel: F,
) -> Result<wire::ShardMap, Error>
where
    F: Fn(&str) -> Result<Channel, Error>,
{
    loop {
        for addr in nodes {
            let remaining = att.remaining()?;
            let timeout = remaining.min(config.attempt_timeout);
            let mut req = Request::new(wire::GetShardMapRequest {});
            req.set_timeout(timeout);
            att.count += 1;
            let mut admin = grpc::AdminClient::new(channel(addr)?);
            let status = match tokio::time::timeout(timeout, admin.get_shard_map(req)).await {
                Ok(Ok(resp)) => match resp.into_inner().shard_map {
                    Some(map) => return Ok(map),
                    None => return Err(Error::protocol("GetShardMap answered no map")),
                },
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            att.last = format!("{addr}: {:?}: {}", status.code(), status.message());
            if let Failure::Fatal(e) = Failure::of(&status) {
                return Err(e);
            }
        }
        let delay = att.backoff.next_delay();
        att.pause(delay).await;
    }
}

/// Marks a request as sent by a routing client (with the map version it routed by) and
/// gives it the attempt's deadline.
fn routed<T>(req: &mut Request<T>, version: u64, timeout: Duration) {
    req.metadata_mut()
        .insert(metadata::SHARD_MAP_VERSION, MetadataValue::from(version));
    req.set_timeout(timeout);
}

fn minutes(range: Option<wire::Interval>) -> Result<MinuteRange, Error> {
    let range = range.ok_or_else(|| Error::protocol("an answer has no range"))?;
    MinuteRange::try_from(range)
        .map_err(|e| Error::protocol(format!("an answer has a bad range: {e}")))
}

fn position(p: wire::GroupPosition) -> GroupPosition {
    GroupPosition {
        group_id: p.group_id,
        node_id: p.node_id,
        applied_index: p.applied_index,
        watermark_ms: p.watermark_ms,
    }
}

fn filter_info(f: wire::FilterInfo) -> Result<FilterInfo, Error> {
    let state = match wire::FilterState::try_from(f.state) {
        Ok(wire::FilterState::Backfilling) => FilterState::Backfilling,
        Ok(wire::FilterState::Ready) => FilterState::Ready,
        Ok(wire::FilterState::ForwardOnly) => FilterState::ForwardOnly,
        Ok(wire::FilterState::Unspecified) | Err(_) => {
            return Err(Error::protocol(format!(
                "filter {:?} has an unknown state {}",
                f.name, f.state
            )))
        }
    };
    Ok(FilterInfo {
        name: f.name,
        expr: f.expr,
        state,
        created_at_ms: (f.created_at_ms != 0).then_some(f.created_at_ms),
    })
}
