//! An in-process Raft group for tests: three openraft instances on the real log store and
//! state machine, linked by a network whose every directed link the test controls. A
//! link can be cut (calls fail at once, as to a dead node), hold its requests (taken
//! from the sender, as a transport buffers them, but not delivered), or hold its answers
//! (delivered and answered, but the answers not handed back), each until released. That
//! is enough to replay, step by step and deterministically, what a process frozen by
//! SIGSTOP sees when it wakes with its sockets full.
//!
//! Append streams go through [`AckGuard`] as in the gRPC transport, unless a test asks
//! for openraft's bare behaviour.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adclick_storage::log::{LogConfig, LogStore};
use adclick_storage::sm::{open_db, SmOptions, Snapshot, StateMachine};
use adclick_storage::types::{Command, GroupSettings, TypeConfig, Vote};
use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{
    Backoff, NetBackoff, NetSnapshot, NetStreamAppend, NetTransferLeader, NetVote, RPCOption,
    RaftNetworkFactory,
};
use openraft::raft::{
    AppendEntriesRequest, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tokio::sync::watch;

use super::ack_guard::AckGuard;
use super::GroupRaft;

type RpcError = RPCError<TypeConfig>;

/// What one directed link does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// New calls fail at once with `Unreachable`; open streams end.
    pub cut: bool,
    /// Requests are taken from the sender but not delivered.
    pub hold_requests: bool,
    /// Answers are not handed back to the sender.
    pub hold_answers: bool,
}

/// An append request a link took from its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The index of the request's `prev_log_id`.
    pub prev: Option<u64>,
    /// How many entries it carried.
    pub entries: usize,
    /// Sent by the leader's heartbeat worker rather than its replication stream.
    pub heartbeat: bool,
}

/// The network: the nodes and the state of every directed link.
pub struct Net {
    nodes: Mutex<BTreeMap<u64, GroupRaft>>,
    links: watch::Sender<BTreeMap<(u64, u64), Link>>,
    guarded: bool,
    /// Every append request each link took, in order.
    taken: Mutex<BTreeMap<(u64, u64), Vec<Taken>>>,
    /// The guard of every append stream opened on each link.
    guards: Mutex<Vec<((u64, u64), AckGuard)>>,
}

impl Net {
    fn new(guarded: bool) -> Arc<Self> {
        Arc::new(Net {
            nodes: Mutex::new(BTreeMap::new()),
            links: watch::Sender::new(BTreeMap::new()),
            guarded,
            taken: Mutex::new(BTreeMap::new()),
            guards: Mutex::new(Vec::new()),
        })
    }

    /// The append requests the link `from -> to` has taken so far.
    pub fn taken(&self, from: u64, to: u64) -> Vec<Taken> {
        let taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken.get(&(from, to)).cloned().unwrap_or_default()
    }

    /// Answers the guards of the link `from -> to` withheld from openraft so far.
    pub fn withheld(&self, from: u64, to: u64) -> u64 {
        let guards = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        guards
            .iter()
            .filter(|(link, _)| *link == (from, to))
            .map(|(_, g)| g.withheld())
            .sum()
    }

    fn link(&self, from: u64, to: u64) -> Link {
        self.links
            .borrow()
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }

    /// Changes the link `from -> to`.
    pub fn set(&self, from: u64, to: u64, f: impl FnOnce(&mut Link)) {
        self.links
            .send_modify(|m| f(m.entry((from, to)).or_default()));
    }

    fn node(&self, id: u64) -> Option<GroupRaft> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn unreachable(from: u64, to: u64) -> RpcError {
        RPCError::Unreachable(Unreachable::from_string(format!(
            "link {from}->{to} is cut"
        )))
    }

    /// Waits until `open` holds for the link `from -> to`; the link as it then was.
    async fn wait_for(&self, from: u64, to: u64, open: impl Fn(&Link) -> bool) -> Link {
        let mut rx = self.links.subscribe();
        let link_of =
            |m: &BTreeMap<(u64, u64), Link>| m.get(&(from, to)).copied().unwrap_or_default();
        // An error means the network is gone: nothing is held any more.
        let link = match rx.wait_for(|m| open(&link_of(m))).await {
            Ok(m) => link_of(&m),
            Err(_) => Link::default(),
        };
        link
    }
}

/// openraft's network factory for node `from`.
pub struct Factory {
    from: u64,
    net: Arc<Net>,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Conn {
        Conn {
            from: self.from,
            to: target,
            net: Arc::clone(&self.net),
            heartbeat: false,
        }
    }

    async fn new_heartbeat_client(&mut self, target: u64, node: &BasicNode) -> Conn {
        Conn {
            heartbeat: true,
            ..self.new_client(target, node).await
        }
    }
}

/// Node `from`'s connection to node `to`.
pub struct Conn {
    from: u64,
    to: u64,
    net: Arc<Net>,
    /// Made for openraft's heartbeat worker.
    heartbeat: bool,
}

impl Conn {
    fn target(&self) -> Result<GroupRaft, RpcError> {
        if self.net.link(self.from, self.to).cut {
            return Err(Net::unreachable(self.from, self.to));
        }
        self.net
            .node(self.to)
            .ok_or_else(|| Net::unreachable(self.from, self.to))
    }
}

/// Holds each item of `s` until the link's `open` holds; ends the stream if the link is
/// cut first.
fn gated<S>(
    s: S,
    net: Arc<Net>,
    (from, to): (u64, u64),
    open: fn(&Link) -> bool,
) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream + Send + Unpin + 'static,
    S::Item: Send,
{
    futures::stream::unfold((s, net), move |(mut s, net)| async move {
        let item = s.next().await?;
        if net.wait_for(from, to, |l| l.cut || open(l)).await.cut {
            return None;
        }
        Some((item, (s, net)))
    })
}

impl NetStreamAppend<TypeConfig> for Conn {
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcError>>, RpcError>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let target = self.target()?;
            let link = (self.from, self.to);
            let guard = self.net.guarded.then(AckGuard::new);
            if let Some(g) = &guard {
                let mut guards = self.net.guards.lock().unwrap_or_else(|p| p.into_inner());
                guards.push((link, g.clone()));
            }
            let input: BoxStream<'static, _> = match &guard {
                Some(g) => Box::pin(g.requests(input)),
                None => Box::pin(input),
            };
            // The transport takes requests as soon as openraft offers them (a socket
            // buffers them), whether or not the link delivers them yet.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (net, heartbeat) = (Arc::clone(&self.net), self.heartbeat);
            tokio::spawn(async move {
                let mut input = input;
                while let Some(r) = input.next().await {
                    let taken = Taken {
                        prev: r.prev_log_id.map(|l| l.index),
                        entries: r.entries.len(),
                        heartbeat,
                    };
                    let mut all = net.taken.lock().unwrap_or_else(|p| p.into_inner());
                    all.entry(link).or_default().push(taken);
                    drop(all);
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            });
            let requests = gated(
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                Arc::clone(&self.net),
                link,
                |l| !l.hold_requests,
            );
            let (from, to) = link;
            let answers = Box::pin(target.stream_append(requests)).map(move |r| {
                r.map_err(|fatal| {
                    RPCError::Unreachable(Unreachable::from_string(format!(
                        "node {to} stopped: {fatal} (link {from}->{to})"
                    )))
                })
            });
            let answers = gated(answers, Arc::clone(&self.net), link, |l| !l.hold_answers);
            Ok(match guard {
                Some(g) => Box::pin(g.answers(Box::pin(answers))) as BoxStream<'s, _>,
                None => Box::pin(answers) as BoxStream<'s, _>,
            })
        })
    }
}

impl NetVote<TypeConfig> for Conn {
    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.send_vote(rpc, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.send_vote(rpc, true).await
    }
}

impl Conn {
    /// Delivers a vote or, with `pre`, a pre-vote request.
    async fn send_vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
        pre: bool,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        let target = self.target()?;
        let answer = if pre {
            target.pre_vote(rpc).await
        } else {
            target.vote(rpc).await
        };
        answer.map_err(|e| {
            tracing::debug!(error = %e, pre, "sim: node {} failed a vote from {}", self.to, self.from);
            Net::unreachable(self.from, self.to)
        })
    }
}

impl NetTransferLeader<TypeConfig> for Conn {
    async fn transfer_leader(
        &mut self,
        _req: TransferLeaderRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcError> {
        Err(Net::unreachable(self.from, self.to))
    }
}

impl NetSnapshot<TypeConfig> for Conn {
    type SnapshotData = adclick_storage::sm::SnapshotFile;

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // The scenarios stay far below any snapshot threshold.
        Err(StreamingError::Unreachable(Unreachable::from_string(
            "the simulated network carries no snapshots",
        )))
    }
}

impl NetBackoff<TypeConfig> for Conn {
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(20))))
    }
}

/// A three-node group on the simulated network, with its storage in a temporary directory.
pub struct Cluster {
    /// The network, for the test to cut and hold links.
    pub net: Arc<Net>,
    _dir: tempfile::TempDir,
}

/// Heartbeat interval of the simulated group, ms.
pub const HEARTBEAT_MS: u64 = 50;
/// Minimum election timeout of the simulated group, ms (the maximum, and openraft's
/// leader lease, are twice it).
pub const ELECTION_MS: u64 = 500;

impl Cluster {
    /// Starts nodes 1, 2 and 3 and initializes the group with all of them. `guarded`:
    /// append streams go through [`AckGuard`], as in the gRPC transport.
    pub async fn start(guarded: bool) -> anyhow::Result<Self> {
        // `RUST_LOG=openraft=debug` shows what the nodes do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir()?;
        let net = Net::new(guarded);
        let config = Arc::new(
            openraft::Config {
                cluster_name: "sim".into(),
                heartbeat_interval: HEARTBEAT_MS,
                election_timeout_min: ELECTION_MS,
                election_timeout_max: 2 * ELECTION_MS,
                enable_pre_vote: Some(true),
                enable_leader_restore: Some(false),
                ..Default::default()
            }
            .validate()?,
        );
        let mut members = BTreeMap::new();
        for id in 1..=3u64 {
            let home = dir.path().join(format!("n{id}"));
            let log = LogStore::open(LogConfig::new(home.join("log")))?;
            let db = open_db(&home.join("db"))?;
            let sm = StateMachine::open(db, 1, home.join("snapshots"), SmOptions::default())?;
            let factory = Factory {
                from: id,
                net: Arc::clone(&net),
            };
            let raft = GroupRaft::build(id, Arc::clone(&config), factory, log, sm).await?;
            net.nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, raft);
            members.insert(
                id,
                BasicNode {
                    addr: format!("sim-{id}"),
                },
            );
        }
        for id in 1..=3 {
            net.node(id).expect("built").run();
        }
        let cluster = Cluster { net, _dir: dir };
        cluster.raft(1).initialize(members).await?;
        Ok(cluster)
    }

    /// Node `id`'s Raft handle.
    pub fn raft(&self, id: u64) -> GroupRaft {
        self.net.node(id).expect("nodes 1..=3 exist")
    }

    /// Waits until some node leads in a term above `after_term`; returns it and its term.
    pub async fn leader(&self, among: &[u64], after_term: u64) -> anyhow::Result<(u64, u64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            for &id in among {
                let m = self.raft(id).metrics().borrow_watched().clone();
                if m.current_leader == Some(id) && m.current_term > after_term {
                    return Ok((id, m.current_term));
                }
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no leader among {among:?} above term {after_term} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until node `id`'s metrics satisfy `f`.
    pub async fn wait(
        &self,
        id: u64,
        what: &str,
        f: impl Fn(&openraft::RaftMetrics<TypeConfig>) -> bool + Send,
    ) -> anyhow::Result<()> {
        self.raft(id)
            .wait(Some(Duration::from_secs(10)))
            .metrics(f, what)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("node {id}: {what}: {e}"))
    }

    /// Proposes a no-op write (the group's settings, unchanged) on whichever of `among`
    /// leads in a term above `after_term`, until one takes it; the node, the term it
    /// wrote in and the write's log index. An election racing the write is retried.
    pub async fn write(&self, among: &[u64], after_term: u64) -> anyhow::Result<(u64, u64, u64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (id, _) = self.leader(among, after_term).await?;
            match self
                .raft(id)
                .client_write(Command::Configure(GroupSettings::default()))
                .await
            {
                Ok(r) => {
                    let term = r.log_id.committed_leader_id().term;
                    return Ok((id, term, r.log_id.index));
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "sim: write on node {id} failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::ReadPolicy;

    use super::*;

    /// What a linearizable read asked of a leader frozen while its appends were in
    /// flight came to, once it woke.
    #[derive(Debug)]
    enum Woken {
        /// Confirmed, with a read index below a write the new leader had committed
        /// (index `committed`) before the read was asked.
        Stale { read_index: u64, committed: u64 },
        /// Confirmed with an index covering every earlier write.
        Fresh,
        /// Refused by openraft.
        Refused(String),
        /// No answer at all within 5 s (openraft gives up on a read after its lease).
        NoAnswer,
    }

    impl std::fmt::Display for Woken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Woken::Stale {
                    read_index,
                    committed,
                } => write!(
                    f,
                    "confirmed with read index {read_index}, below write {committed} that a \
                     new leader committed before the read"
                ),
                Woken::Fresh => write!(f, "confirmed with an index covering every write"),
                Woken::Refused(why) => write!(f, "refused: {why}"),
                Woken::NoAnswer => write!(f, "no answer within 5 s"),
            }
        }
    }

    /// How the scenario went.
    #[derive(Debug)]
    struct Report {
        /// The read.
        woken: Woken,
        /// Answers the guard withheld on the link from the woken leader to the follower
        /// whose answer came second.
        withheld: u64,
    }

    /// Waits until the link `from -> to` has taken a request that satisfies `f`.
    async fn wait_taken(c: &Cluster, from: u64, to: u64, what: &str, f: impl Fn(&Taken) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !c.net.taken(from, to).iter().any(&f) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "link {from}->{to} took no {what} within 5 s: {:?}",
                c.net.taken(from, to)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The scenario of the fault suite's stale reads after `pause`, step by step:
    /// 1. Leader `l` sends an append (write W1) to both followers; they take it, and
    ///    their answers wait in `l`'s "socket" (`hold_answers`).
    /// 2. `l` freezes: what it sends from now on is held, and nobody reaches it.
    /// 3. The followers elect a new leader, which commits write W2.
    /// 4. A linearizable read is asked of `l` (it still thinks it leads).
    /// 5. `l` wakes and reads its sockets: first one follower's answer (W1 commits, so
    ///    the stream to the other follower queues an entry-less append to carry the new
    ///    commit index), then the other follower's answer to W1.
    /// 6. Every link heals, and `l` must catch up with the new leader's writes.
    async fn read_on_a_woken_leader(guarded: bool) -> anyhow::Result<Report> {
        let c = Cluster::start(guarded).await?;
        let (l, term, w0) = c.write(&[1, 2, 3], 0).await?;
        let f: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != l).collect();
        let (a, b) = (f[0], f[1]);
        for n in [a, b] {
            c.wait(n, "W0 applied", |m| {
                m.last_applied.as_ref().map(|x| x.index) >= Some(w0)
            })
            .await?;
        }
        // 1. W1 reaches both followers; their answers are held.
        for n in [a, b] {
            c.net.set(l, n, |k| k.hold_answers = true);
        }
        let raft_l = c.raft(l);
        let w1_write = tokio::spawn(async move {
            raft_l
                .client_write(Command::Configure(GroupSettings::default()))
                .await
        });
        let w1 = w0 + 1;
        for n in [a, b] {
            c.wait(n, "W1 appended", |m| m.last_log_index >= Some(w1))
                .await?;
        }
        // 2. `l` freezes.
        for n in [a, b] {
            c.net.set(l, n, |k| k.hold_requests = true);
            c.net.set(n, l, |k| k.cut = true);
        }
        // 3. A new leader commits W2.
        let (_, _, w2) = c.write(&[a, b], term).await?;
        // 4. The read. (Nothing outside shows when openraft has queued it; it has long
        // before the next step, which waits for a write to commit through it.)
        let raft_l = c.raft(l);
        let read =
            tokio::spawn(async move { raft_l.get_read_linearizer(ReadPolicy::ReadIndex).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 5. `l` wakes: `b`'s answer first; W1 commits on `l`, and the stream to `a`
        // queues an entry-less append carrying the new commit index.
        c.net.set(l, b, |k| k.hold_answers = false);
        c.wait(l, "W1 committed", |m| {
            m.last_applied.as_ref().map(|x| x.index) >= Some(w1)
        })
        .await?;
        wait_taken(&c, l, a, "entry-less append after W1", |t| {
            !t.heartbeat && t.entries == 0 && t.prev == Some(w1)
        })
        .await;
        // Then `a`'s answer to W1.
        c.net.set(l, a, |k| k.hold_answers = false);
        let woken = match tokio::time::timeout(Duration::from_secs(5), read).await {
            Err(_) => Woken::NoAnswer,
            Ok(joined) => match joined? {
                Ok(lin) => {
                    let read_index = lin.read_log_id().index();
                    if read_index < w2 {
                        Woken::Stale {
                            read_index,
                            committed: w2,
                        }
                    } else {
                        Woken::Fresh
                    }
                }
                Err(e) => Woken::Refused(e.to_string()),
            },
        };
        let withheld = c.net.withheld(l, a);
        // 6. Heal.
        w1_write.abort();
        for n in [a, b] {
            c.net.set(l, n, |k| *k = Link::default());
            c.net.set(n, l, |k| *k = Link::default());
        }
        c.wait(l, "caught up with the new leader", |m| {
            m.last_applied.as_ref().map(|x| x.index) >= Some(w2)
        })
        .await?;
        for raft in (1..=3).map(|id| c.raft(id)) {
            raft.shutdown().await.ok();
        }
        Ok(Report { woken, withheld })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_woken_leader_does_not_confirm_a_read_with_answers_sent_before_it() {
        let report = read_on_a_woken_leader(true)
            .await
            .expect("the scenario runs");
        println!("guarded: {report:?}");
        assert!(
            matches!(report.woken, Woken::Refused(_)),
            "a leader deposed while frozen confirmed a linearizable read, or hung: {}",
            report.woken
        );
        assert!(
            report.withheld >= 1,
            "the guard withheld no answer: the scenario did not reach the race ({report:?})"
        );
    }

    /// openraft 0.10.0-alpha.37 on its own confirms that read, with a read index below a
    /// committed write: the reason for [`AckGuard`]. If this starts failing after an
    /// openraft upgrade, the upgrade fixed the matching, and the guard can go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_guard_openraft_confirms_the_stale_read() {
        let report = read_on_a_woken_leader(false)
            .await
            .expect("the scenario runs");
        println!("bare openraft: {report:?}");
        assert!(
            matches!(report.woken, Woken::Stale { .. }),
            "openraft no longer confirms the stale read ({}): re-check AckGuard",
            report.woken
        );
    }
}
