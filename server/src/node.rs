//! A node: its Raft groups (the metadata group 0 and data groups 1..=G), opened over one
//! RocksDB and one segmented log per group, the peer channels they share, and the
//! background work that keeps the cluster in shape — bootstrapping a fresh cluster,
//! carrying the filter registry from group 0 into every data group, and fetching raw
//! log segments a snapshot install left out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adclick_proto::convert::LeaderHint;
use adclick_proto::model::AdId;
use adclick_proto::wire::{self, metadata};
use adclick_storage::log::{LogConfig, LogStore};
use adclick_storage::sm::{open_db, StateMachine};
use adclick_storage::types::{Command, FilterDef};
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::group::Group;
use crate::metrics::Metrics;
use crate::raft::network::{target, GroupNetwork, Peers};
use crate::raft::{raft_config, GroupRaft};

/// The metadata group's id.
pub const META_GROUP: u64 = 0;

/// The version of the shard map this release builds: a fixed, even split of the key
/// space over the data groups. Splits would bump it.
pub const SHARD_MAP_VERSION: u64 = 1;

/// How often a node checks whether to hand leaderships back (see `rebalance_forever`).
const REBALANCE_EVERY: Duration = Duration::from_secs(5);
/// Most entries a designated node may lag and still be handed its group back (openraft's
/// transfer waits for the target to flush up to the leader's last entry anyway).
const HANDBACK_MAX_LAG: u64 = 256;
/// How long a designated node must have answered without a failure before it gets a group.
const HANDBACK_CALM: Duration = Duration::from_secs(10);
/// Least time between two hand-backs of one group.
const HANDBACK_BACKOFF: Duration = Duration::from_secs(60);

/// Queries a node runs at once; more wait briefly, then get RESOURCE_EXHAUSTED.
pub const MAX_CONCURRENT_QUERIES: usize = 64;

/// The node.
pub struct Node {
    /// Its settings.
    pub config: Config,
    /// Channels to the peers.
    pub peers: Arc<Peers>,
    groups: BTreeMap<u64, Arc<Group>>,
    /// Counters and gauges for /metrics.
    pub metrics: Metrics,
    /// Clicks of client requests in flight (backpressure).
    pub client_budget: Arc<Semaphore>,
    /// Clicks of requests forwarded by peers in flight; separate so that two nodes
    /// forwarding to each other can never hold each other's budget.
    pub forward_budget: Arc<Semaphore>,
    /// Queries running at once (each may scan a group's counters on the blocking pool).
    pub query_budget: Arc<Semaphore>,
    /// FetchSegments streams this node serves at once (each holds a blocking thread).
    pub fetch_budget: Arc<Semaphore>,
    /// The fault switches' runtime state (the clock skew).
    #[cfg(feature = "fault-injection")]
    pub faults: Arc<crate::fault::Faults>,
    draining: AtomicBool,
    leaving: AtomicBool,
    stopped: tokio::sync::watch::Sender<bool>,
    inflight: AtomicUsize,
    idle: Notify,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.config.node_id)
            .finish()
    }
}

/// Milliseconds since the epoch on this node's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The data group owning shard key `key`.
pub fn group_of_key(key: u64, groups: u64) -> u64 {
    // floor(key * groups / 2^64) + 1. With the bounds b(i) = ceil(i * 2^64 / groups) of
    // `wire::KeyRange::of_group`, key >= b(i)
    // exactly when key * groups >= i * 2^64, so this is the group whose range holds key.
    ((u128::from(key) * u128::from(groups)) >> 64) as u64 + 1
}

/// An in-flight client request; the node drains these before it stops.
#[derive(Debug)]
pub struct InFlight<'a> {
    node: &'a Node,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.node.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.node.idle.notify_waiters();
        }
    }
}

impl Node {
    /// Opens every group's storage and builds its Raft (not running yet).
    pub async fn open(config: Config) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&config.data_dir)?;
        check_identity(&config)?;
        let db = open_db(&config.db_dir())?;
        if !config.peer_routes.is_empty() {
            tracing::info!(routes = ?config.peer_routes, "dialing these peers through routes");
        }
        let peers = Arc::new(Peers::new(config.node_id, config.peer_routes.clone()));
        let raft_config = raft_config(&config)?;
        #[cfg(feature = "fault-injection")]
        crate::fault::announce(&config.fault);
        #[cfg(feature = "fault-injection")]
        let (log_fs, sm_options) = (
            crate::fault::log_fs(&config)?,
            crate::fault::sm_options(&config.fault),
        );
        #[cfg(not(feature = "fault-injection"))]
        let sm_options = adclick_storage::sm::SmOptions::default();
        let mut groups = BTreeMap::new();
        for g in 0..=config.groups {
            let log_config = LogConfig {
                segment_size: config.log_segment_bytes,
                #[cfg(feature = "fault-injection")]
                fault_skip_fsync: config.fault.skip_fsync,
                ..LogConfig::new(config.log_dir(g))
            };
            #[cfg(feature = "fault-injection")]
            let log = LogStore::open_with_fs(log_config, Arc::clone(&log_fs))?;
            #[cfg(not(feature = "fault-injection"))]
            let log = LogStore::open(log_config)?;
            let raw = log.raw_reader();
            let importer = log.raw_importer();
            let sm = StateMachine::open(
                Arc::clone(&db),
                g,
                config.snapshot_dir(g),
                sm_options.clone(),
            )?;
            let reader = sm.reader();
            let snapshot_dir = sm.snapshot_dir().to_path_buf();
            let raft = GroupRaft::build(
                config.node_id,
                Arc::clone(&raft_config),
                GroupNetwork::new(g, Arc::clone(&peers)),
                log,
                sm,
            )
            .await
            .map_err(|e| anyhow::anyhow!("group {g}: {e}"))?;
            groups.insert(
                g,
                Arc::new(Group {
                    id: g,
                    node_id: config.node_id,
                    raft,
                    reader,
                    raw,
                    importer,
                    fetch_backoff: std::sync::Mutex::new((
                        std::time::Instant::now(),
                        Duration::ZERO,
                    )),
                    snapshot_dir,
                }),
            );
        }
        let client_budget = Arc::new(Semaphore::new(config.max_inflight_clicks));
        let forward_budget = Arc::new(Semaphore::new(config.max_inflight_clicks));
        Ok(Arc::new(Node {
            #[cfg(feature = "fault-injection")]
            faults: Arc::new(crate::fault::Faults::new(&config.fault)),
            metrics: Metrics::new(config.node_id),
            config,
            peers,
            groups,
            client_budget,
            forward_budget,
            query_budget: Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES)),
            fetch_budget: Arc::new(Semaphore::new(2)),
            draining: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            stopped: tokio::sync::watch::channel(false).0,
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
        }))
    }

    /// Starts the groups and the background tasks.
    pub fn start(self: &Arc<Self>) {
        for g in self.groups.values() {
            g.raft.run();
        }
        for g in self.groups.keys().copied() {
            if self.designated(g) == self.config.node_id {
                tokio::spawn(Arc::clone(self).bootstrap(g));
            }
        }
        tokio::spawn(Arc::clone(self).reconcile_filters_forever());
        tokio::spawn(Arc::clone(self).fetch_raw_forever());
        tokio::spawn(Arc::clone(self).rebalance_forever());
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.node_id
    }

    /// The node that initializes group `g` on a fresh cluster (and so first leads it):
    /// the groups' first leaders go round the members.
    pub fn designated(&self, g: u64) -> u64 {
        let ids: Vec<u64> = self.config.peers.keys().copied().collect();
        ids[(g as usize) % ids.len()]
    }

    /// Group `g`, or NOT_FOUND.
    pub fn group(&self, g: u64) -> Result<&Arc<Group>> {
        self.groups
            .get(&g)
            .ok_or_else(|| Error::NotFound(format!("node {} hosts no group {g}", self.id())))
    }

    /// Every group, metadata group first.
    pub fn groups(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.values()
    }

    /// The data groups.
    pub fn data_groups(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.range(1..).map(|(_, g)| g)
    }

    /// The data group holding `ad`'s clicks.
    pub fn group_of(&self, ad: &AdId) -> &Arc<Group> {
        let g = group_of_key(ad.shard_key(), self.config.groups);
        // Every g in 1..=groups exists: `open` built them all.
        &self.groups[&g]
    }

    /// The per-request time budget.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Registers a client request; UNAVAILABLE once the node drains.
    pub fn begin(&self) -> Result<InFlight<'_>> {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight { node: self };
        if self.draining.load(Ordering::Acquire) {
            return Err(Error::Unavailable(format!(
                "node {} is shutting down; retry at another node",
                self.id()
            )));
        }
        Ok(guard)
    }

    /// Runs a client operation: refused once the node drains, counted and timed as `op`.
    /// Every client surface (gRPC, HTTP) serves its operations through this.
    pub async fn serve<T, E, F>(&self, op: crate::metrics::Op, f: F) -> std::result::Result<T, E>
    where
        E: From<Error>,
        F: std::future::Future<Output = std::result::Result<T, E>>,
    {
        let started = std::time::Instant::now();
        let result = match self.begin() {
            Ok(_guard) => f.await,
            Err(e) => Err(E::from(e)),
        };
        self.metrics.record(op, started.elapsed(), result.is_ok());
        result
    }

    /// Takes `n` units of `budget`, waiting at most `wait`; RESOURCE_EXHAUSTED (`what`
    /// is exhausted, retry after `retry_after`) when there is no room by then.
    pub async fn admit(
        budget: &Arc<Semaphore>,
        n: usize,
        wait: Duration,
        what: impl FnOnce() -> String,
        retry_after: Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match tokio::time::timeout(wait, Arc::clone(budget).acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Unavailable("the node is shutting down".into())),
            Err(_) => Err(Error::Overloaded {
                message: what(),
                retry_after,
            }),
        }
    }

    /// Whether the node is stopping (it refuses to take leaderships from then on).
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops taking client requests and waits (at most `limit`) for those in flight.
    pub async fn drain(&self, limit: Duration) {
        self.draining.store(true, Ordering::Release);
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.inflight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::warn!(
                inflight = self.inflight.load(Ordering::Acquire),
                "requests still in flight after {limit:?}; stopping anyway"
            );
        }
    }

    /// Hands every group this node leads to its most caught-up follower and waits (at
    /// most `limit`) for the new leaders, so that a planned stop costs writes no election
    /// timeout: the rest of the cluster takes over while this node drains.
    pub async fn hand_off_leadership(&self, limit: Duration) {
        self.leaving.store(true, Ordering::Release);
        let mut moving = Vec::new();
        for g in self.groups.values() {
            let m = g.metrics();
            if m.state != ServerState::Leader {
                continue;
            }
            let mut followers: Vec<(u64, Option<u64>)> = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .filter(|(id, _)| **id != self.id())
                        .map(|(id, matched)| (*id, matched.map(|l| l.index)))
                        .collect()
                })
                .unwrap_or_default();
            followers.sort_by_key(|f| std::cmp::Reverse(f.1));
            // Only to a follower that is serving: when the whole cluster stops at once,
            // handing groups around would only start elections among stopping nodes.
            for (to, _) in followers {
                if self.peer_serving(to).await {
                    if g.raft.trigger().transfer_leader(to).await.is_ok() {
                        moving.push((g, to));
                    }
                    break;
                }
            }
        }
        let waits = moving.into_iter().map(|(g, to)| async move {
            let moved = g
                .raft
                .wait(Some(limit))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != self.id()),
                    "hand-off",
                )
                .await;
            if moved.is_err() {
                tracing::warn!(group = g.id, to, "leadership not handed off in {limit:?}");
            }
        });
        futures::future::join_all(waits).await;
    }

    /// Stops every group (flushing their logs and state machines), each within `limit`,
    /// then ends the peers' replication streams into this node.
    pub async fn shutdown(&self, limit: Duration) {
        let stops = self.groups.values().map(|g| async move {
            match tokio::time::timeout(limit, g.raft.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(group = g.id, error = %e, "raft shutdown"),
                Err(_) => tracing::warn!(group = g.id, "raft did not stop within {limit:?}"),
            }
        });
        futures::future::join_all(stops).await;
        let _ = self.stopped.send(true);
    }

    /// Resolves once the node's groups are stopped (streams served to peers end then).
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopped.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// The address of node `id` as configured.
    pub fn addr_of(&self, id: u64) -> Option<&str> {
        self.config.peers.get(&id).map(String::as_str)
    }

    /// A request to node `to` marked as forwarded by this node.
    pub fn forwarded<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = self.id().to_string().parse() {
            req.metadata_mut().insert(metadata::FORWARDED_BY, v);
        }
        req.set_timeout(self.request_timeout());
        req
    }

    /// Waits (bounded by the request timeout) until `g` has a leader, and returns it.
    pub async fn await_leader(&self, g: &Group) -> Result<LeaderHint> {
        if let Some(l) = g.leader() {
            return Ok(l);
        }
        let waited = g
            .raft
            .wait(Some(self.request_timeout()))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
        match waited {
            Ok(_) => g.leader().ok_or_else(|| no_leader(g.id)),
            Err(_) => Err(no_leader(g.id)),
        }
    }

    /// Makes a local read of `g` linearizable: the leader confirms its leadership and
    /// names an index; this replica waits until it has applied it. A leader that turns
    /// out not to lead (an election just happened) is followed to the one it names, until
    /// the request timeout.
    pub async fn read_barrier(&self, g: &Group) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        let mut hint = None;
        let mut pause = Duration::from_millis(10);
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.read_index_once(g, hint.take()));
            let Ok(attempt) = attempt.await else {
                return Err(Error::Timeout(format!(
                    "group {}: no read index within {:?}",
                    g.id,
                    self.request_timeout()
                )));
            };
            match attempt {
                Ok(index) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    return g.wait_applied(index, left).await;
                }
                Err(Error::NotLeader { leader, .. }) if tokio::time::Instant::now() < deadline => {
                    hint = leader;
                }
                Err(Error::Unavailable(_)) if tokio::time::Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// One attempt at a read index of `g`: locally when this node leads it, else from the
    /// leader named by `hint` or known to this node.
    async fn read_index_once(&self, g: &Group, hint: Option<LeaderHint>) -> Result<Option<u64>> {
        let timeout = self.request_timeout();
        let leader = match hint {
            Some(h) => h,
            None if g.is_leader() => self.me(),
            None => self.await_leader(g).await?,
        };
        if leader.node_id == self.id() {
            return match g.read_index(timeout).await? {
                Ok(index) => Ok(index),
                Err(hint) => Err(Error::NotLeader {
                    node: self.id(),
                    group: g.id,
                    leader: hint,
                }),
            };
        }
        let mut client = self.peers.raft_client(leader.node_id, &leader.addr);
        let mut req = target(
            tonic::Request::new(wire::ReadIndexRequest { group_id: g.id }),
            leader.node_id,
        );
        req.set_timeout(timeout);
        match client.read_index(req).await {
            // The leader always names an index; an answer without one cannot vouch for
            // any state, so it is not taken as "nothing to wait for".
            Ok(resp) => match resp.into_inner().read_log_id {
                Some(l) => Ok(Some(l.index)),
                None => Err(Error::Unavailable(format!(
                    "node {} answered a read index without an index",
                    leader.node_id
                ))),
            },
            Err(s) if s.code() == tonic::Code::Unavailable => Err(Error::NotLeader {
                node: leader.node_id,
                group: g.id,
                leader: adclick_proto::convert::leader_hint(&s),
            }),
            Err(s) => Err(Error::from_status(&s)),
        }
    }

    /// This node as a leader hint.
    fn me(&self) -> LeaderHint {
        LeaderHint {
            node_id: self.id(),
            addr: self.config.advertised_addr().to_owned(),
        }
    }

    /// Initializes group `g` with every configured member once all of them answer, if it
    /// has never been initialized. Runs only on the group's designated node.
    async fn bootstrap(self: Arc<Self>, g: u64) {
        let Ok(group) = self.group(g).cloned() else {
            return;
        };
        match group.raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(group = g, error = %e, "bootstrap: raft stopped");
                return;
            }
        }
        let members: BTreeMap<u64, BasicNode> = self
            .config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        let mut announced = false;
        loop {
            if self.is_draining() {
                return;
            }
            let problems = self.peer_config_problems().await;
            if problems.is_empty() {
                break;
            }
            if !announced {
                tracing::info!(
                    group = g,
                    ?problems,
                    "bootstrap: waiting for every peer to answer with this node's cluster \
                     configuration"
                );
                announced = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match group.raft.initialize(members).await {
            Ok(()) => tracing::info!(group = g, "bootstrap: initialized the group"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::info!(group = g, "bootstrap: already initialized")
            }
            Err(e) => tracing::error!(group = g, error = %e, "bootstrap failed"),
        }
    }

    /// Whether peer `id` answers its gRPC health check with SERVING now (a stopping node
    /// answers NOT_SERVING).
    async fn peer_serving(&self, id: u64) -> bool {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        let Some(addr) = self.addr_of(id) else {
            return false;
        };
        let mut client = HealthClient::new(self.peers.channel(id, addr));
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        req.set_timeout(Duration::from_millis(500));
        client
            .check(req)
            .await
            .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
    }

    /// Why the cluster cannot bootstrap yet: peers that do not answer, or answer with
    /// another member list or group count than this node's. Nodes initialize groups only
    /// once every peer agrees, so two nodes can never initialize a group with different
    /// memberships, and no node routes clicks over a different number of groups.
    async fn peer_config_problems(&self) -> Vec<String> {
        let mine: Vec<(u64, String)> = self
            .config
            .peers
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let mut problems = Vec::new();
        for (id, addr) in &self.config.peers {
            if *id == self.id() {
                continue;
            }
            let mut client =
                adclick_proto::wire::grpc::AdminClient::new(self.peers.channel(*id, addr));
            let mut req = tonic::Request::new(wire::ClusterStatusRequest {});
            req.set_timeout(Duration::from_secs(1));
            let status = match client.cluster_status(req).await {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    problems.push(format!(
                        "node {id} at {addr} does not answer: {}",
                        e.message()
                    ));
                    continue;
                }
            };
            let theirs: Vec<(u64, String)> = status
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref().map(|a| (a.node_id, a.addr.clone())))
                .collect();
            let groups = status.groups.len().saturating_sub(1) as u64;
            let mut wrong = Vec::new();
            if theirs != mine {
                wrong.push(format!(
                    "node {id} runs with peers {theirs:?}, this node with {mine:?}"
                ));
            }
            if groups != self.config.groups {
                wrong.push(format!(
                    "node {id} runs {groups} data groups, this node {}",
                    self.config.groups
                ));
            }
            if !wrong.is_empty() {
                tracing::error!(peer = id, problems = ?wrong, "cluster misconfigured");
                problems.extend(wrong);
            }
        }
        problems
    }

    /// Carries the filter registry of group 0 into every data group this node leads:
    /// a filter registered (or dropped) in group 0 is created (or dropped) in each data
    /// group's log, so every replica starts counting it at the same click.
    async fn reconcile_filters_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.is_draining() {
            tick.tick().await;
            if let Err(e) = self.reconcile_filters().await {
                tracing::debug!(error = %e, "filter reconciliation");
            }
        }
    }

    async fn reconcile_filters(&self) -> Result<()> {
        let led: Vec<&Arc<Group>> = self.data_groups().filter(|g| g.is_leader()).collect();
        if led.is_empty() {
            return Ok(());
        }
        // Both views must be current, not this replica's possibly stale state: a stale
        // registry would drop a live filter (wiping its counts for good, as filters are
        // not backfilled), a stale data group would re-propose what is already there.
        // Only reconcilers write filters into data groups, and a leader's reconciler reads
        // the registry after every entry an earlier leader's reconciler wrote, so with
        // both barriers a pass never undoes a newer decision.
        let meta = self.group(META_GROUP)?;
        self.read_barrier(meta).await?;
        let wanted = registry(meta)?;
        let passes = led.iter().map(|g| self.reconcile_group(g, &wanted));
        let results = futures::future::join_all(passes).await;
        for (g, r) in led.iter().zip(results) {
            if let Err(e) = r {
                tracing::debug!(group = g.id, error = %e, "filter reconciliation");
            }
        }
        Ok(())
    }

    /// Brings one data group's filters (this node leads it) in line with `wanted`.
    async fn reconcile_group(&self, g: &Group, wanted: &BTreeMap<String, String>) -> Result<()> {
        self.read_barrier(g).await?;
        let have = registry(g)?;
        for (name, expr) in &have {
            if wanted.get(name) != Some(expr) {
                let cmd = Command::DropFilter { name: name.clone() };
                g.propose(cmd, self.request_timeout()).await?;
            }
        }
        for (name, expr) in wanted {
            if have.get(name) != Some(expr) {
                let cmd = Command::CreateFilter(FilterDef {
                    name: name.clone(),
                    expr: expr.clone(),
                });
                g.propose(cmd, self.request_timeout()).await?;
            }
        }
        Ok(())
    }

    /// Keeps leaderships spread: a node leading a group whose designated node is back and
    /// fully caught up hands the group to it. Without this, leaders pile up on the nodes
    /// that stayed up through a restart, and one node does all the write work.
    ///
    /// Guarded against flapping: the target must be within [`HANDBACK_MAX_LAG`] entries,
    /// have answered this node recently with no failure for [`HANDBACK_CALM`], and a group
    /// is handed back at most once per [`HANDBACK_BACKOFF`] (a target that cannot win,
    /// e.g. with broken outbound links, costs one election timeout per backoff, not per
    /// tick). A manual `TransferLeader` to another node is undone this way too, after the
    /// backoff; this release has no pinning.
    async fn rebalance_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REBALANCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_try: BTreeMap<u64, std::time::Instant> = BTreeMap::new();
        while !self.is_draining() {
            tick.tick().await;
            for g in self.groups.values() {
                let to = self.designated(g.id);
                if to == self.id() || !g.is_leader() || self.is_leaving() {
                    continue;
                }
                if last_try
                    .get(&g.id)
                    .is_some_and(|t| t.elapsed() < HANDBACK_BACKOFF)
                {
                    continue;
                }
                let m = g.metrics();
                let last = m.last_log_index.unwrap_or(0);
                let caught_up = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&to).copied().flatten())
                    .is_some_and(|matched| matched.index + HANDBACK_MAX_LAG >= last);
                let seen = self.peers.seen(to);
                let healthy = seen
                    .ok
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
                    && seen.failed.is_none_or(|f| f.elapsed() > HANDBACK_CALM);
                if caught_up && healthy {
                    tracing::info!(
                        group = g.id,
                        to,
                        "handing leadership back to its designated node"
                    );
                    last_try.insert(g.id, std::time::Instant::now());
                    if let Err(e) = g.raft.trigger().transfer_leader(to).await {
                        tracing::warn!(group = g.id, error = %e, "leader transfer");
                    }
                }
            }
        }
    }

    /// Fetches, from a peer, the raw log segments a snapshot install left out.
    async fn fetch_raw_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.is_draining() {
            tick.tick().await;
            // Groups fetch side by side: one slow peer stream holds up only its group.
            let rounds = self.groups.values().map(|g| async {
                if let Err(e) = crate::rawfetch::fill_gaps(&self, g).await {
                    tracing::warn!(group = g.id, error = %e, "fetching raw segments");
                }
            });
            futures::future::join_all(rounds).await;
        }
    }
}

/// A group replica's filters: name → canonical expression.
fn registry(g: &Group) -> Result<BTreeMap<String, String>> {
    Ok(g.reader
        .filters()?
        .into_iter()
        .map(|f| (f.name, f.expr))
        .collect())
}

fn no_leader(g: u64) -> Error {
    Error::Unavailable(format!(
        "group {g} has no leader right now (election in progress or no quorum); retry"
    ))
}

/// Refuses a data directory that belongs to another node id or group count.
fn check_identity(config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join("IDENTITY");
    let peers: Vec<String> = config
        .peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    let want = format!(
        "node_id={}\ngroups={}\npeers={}\n",
        config.node_id,
        config.groups,
        peers.join(",")
    );
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => anyhow::bail!(
            "{} belongs to another configuration ({}); this node was started with {}",
            config.data_dir.display(),
            have.trim().replace('\n', ", "),
            want.trim().replace('\n', ", ")
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &want)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&config.data_dir)?.sync_all()?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, groups: u64, peer3: &str) -> Config {
        Config::resolve(crate::config::Flags {
            node_id: Some(1),
            data_dir: Some(dir.to_path_buf()),
            listen: "127.0.0.1:7401".parse().ok(),
            http: "127.0.0.1:8401".parse().ok(),
            peers: Some(format!("1=127.0.0.1:7401,2=127.0.0.1:7402,3={peer3}")),
            groups: Some(groups),
            ..Default::default()
        })
        .expect("valid config")
    }

    #[test]
    fn a_data_dir_refuses_another_group_count_or_member_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_identity(&config(dir.path(), 4, "127.0.0.1:7403")).expect("first start");
        check_identity(&config(dir.path(), 4, "127.0.0.1:7403")).expect("same again");
        let e = check_identity(&config(dir.path(), 8, "127.0.0.1:7403")).expect_err("groups");
        assert!(e.to_string().contains("groups=4"), "{e}");
        let e = check_identity(&config(dir.path(), 4, "10.0.0.3:7403")).expect_err("peers");
        assert!(e.to_string().contains("10.0.0.3"), "{e}");
    }

    #[test]
    fn key_ranges_tile_the_key_space_and_route_back() {
        for groups in [1u64, 2, 3, 4, 7, 16] {
            let mut next = 0u128;
            for g in 1..=groups {
                let r = wire::KeyRange::of_group(g, groups);
                assert_eq!(u128::from(r.start), next, "groups={groups} g={g}");
                next = if r.end == 0 {
                    1 << 64
                } else {
                    u128::from(r.end)
                };
                assert!(u128::from(r.start) < next);
                assert_eq!(group_of_key(r.start, groups), g);
                assert_eq!(group_of_key((next - 1) as u64, groups), g);
            }
            assert_eq!(next, 1 << 64);
        }
    }
}
