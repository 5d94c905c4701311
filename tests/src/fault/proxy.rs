//! A TCP fault proxy mesh: per-direction network faults between real node processes.
//!
//! Every node is told to dial each peer at a proxy address instead of the peer's real one.
//! [`Mesh::start`] binds one listener on 127.0.0.1 per *ordered* pair `(from, to)`;
//! [`Mesh::route`]`(from, to)` is the address node `from` dials to reach `to`. A connection
//! accepted on that listener is connected to `to`'s real address and carries two directed
//! links: bytes the dialer sends obey link `from -> to`, bytes coming back obey link
//! `to -> from`. Since each node dials its peers over its own route, every byte a node
//! sends to a peer — requests on its own connections, responses on the peer's — crosses
//! the link `node -> peer`, so a one-way fault ("the leader can send but not receive")
//! is one [`Mesh::set`] per direction even though every RPC shares one connection.
//!
//! What a [`LinkMode`] does to the bytes of its direction:
//! - [`LinkMode::Pass`] forwards them.
//! - [`LinkMode::Drop`] is a silent blackhole: the proxy stops reading the source socket
//!   and holds any chunk it already read, so the sender's buffers fill and its writes
//!   block, as they would while TCP retransmits into a dead path. A connection accepted
//!   while either of its links drops is not connected onwards (its handshake could not
//!   complete) until both pass again. When the link heals, held bytes flow on in order and
//!   nothing is lost; giving up is left to the endpoints (HTTP/2 keepalive timeouts).
//! - [`LinkMode::Reset`] closes every connection that carries the link, in either TCP
//!   direction, with an RST (`SO_LINGER` 0) on both of its sockets, and resets new ones
//!   as soon as they are accepted, until the mode changes.
//! - [`LinkMode::Delay`] delivers each chunk its delay after it was read, in order. Chunks
//!   are timestamped into a queue that a separate writer drains at their due times, so a
//!   delayed link keeps its throughput (up to [`WINDOW`] bytes in flight per direction of
//!   a connection, like a TCP window) instead of paying the delay once per chunk.
//!
//! Invariants: bytes of one direction are delivered in the order they were read, exactly
//! once, unless the connection is reset; a mode change reaches every pump at once (one
//! `watch` channel per link), including pumps parked by `Drop`; a [`LinkMode::Reset`]
//! set at any moment resets every connection that existed then, even if the mode changes
//! again before the pump notices (a per-link reset epoch, not only the current mode).
//! Dropping the [`Mesh`] aborts its listener tasks, which abort their connection tasks;
//! every socket is owned by one of those tasks, so nothing outlives the mesh.
//! [`Mesh::shutdown`] does the same and waits until it is done.
//!
//! Limits of the model: the proxy terminates TCP, so it shapes application bytes, not
//! segments. Transport ACKs always flow, the kernel buffers on both sides of the proxy
//! absorb a few megabytes before a dropped sender blocks, and a peer's RST is passed on
//! (as an RST) only when the proxy notices it through a read or write.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The most bytes one read takes from a socket: one chunk.
const CHUNK: usize = 16 * 1024;

/// The most bytes read but not yet delivered per direction of a connection. It bounds the
/// memory a [`LinkMode::Delay`] queue holds; like a TCP window, throughput through a delay
/// `d` is at most `WINDOW / d`.
pub const WINDOW: usize = 4 * 1024 * 1024;

/// How long the proxy waits to connect to a node before resetting the dialer's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an accept loop backs off after a failed accept (e.g. out of descriptors), so
/// a persistent failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What happens to the bytes flowing from node `from` to node `to` (one direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward the bytes.
    Pass,
    /// Blackhole: hold the bytes (stop reading them) until the mode changes; nothing is
    /// lost. New connections needing this link are not connected until it changes.
    Drop,
    /// Reset (TCP RST) every connection carrying this link, and each new one on accept.
    Reset,
    /// Deliver each chunk this long after it was read, in order.
    Delay(Duration),
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkMode::Pass => write!(f, "pass"),
            LinkMode::Drop => write!(f, "drop"),
            LinkMode::Reset => write!(f, "reset"),
            LinkMode::Delay(d) => write!(f, "delay({d:?})"),
        }
    }
}

/// Counters of one directed link, as evidence for tests and their logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes delivered in this direction (to `to`).
    pub bytes: u64,
    /// Connections accepted on this link's route (dialed by `from` to reach `to`).
    pub accepted: u64,
    /// Connections carrying this link that the mesh reset because the link was
    /// [`LinkMode::Reset`] (on either route between the two nodes).
    pub resets: u64,
    /// Connections on this link's route whose onward connection to `to` failed (the node
    /// was down); the dialer's connection was reset, as a refused connect would be.
    pub connect_failures: u64,
}

/// The state a link's watch channel carries to its pumps.
#[derive(Clone, Copy, Debug)]
struct LinkState {
    mode: LinkMode,
    /// Incremented by every [`Mesh::set`] to [`LinkMode::Reset`], so a connection resets
    /// even if the mode moved on before its pump saw the `Reset`.
    reset_epoch: u64,
}

impl LinkState {
    /// Whether a connection that started at reset epoch `epoch` must be reset.
    fn resets_since(&self, epoch: u64) -> bool {
        self.mode == LinkMode::Reset || self.reset_epoch != epoch
    }
}

/// One directed link: its mode and its counters, shared by the mesh and its tasks.
#[derive(Debug)]
struct Link {
    state: watch::Sender<LinkState>,
    bytes: AtomicU64,
    accepted: AtomicU64,
    resets: AtomicU64,
    connect_failures: AtomicU64,
}

impl Link {
    fn new() -> Self {
        let (state, _) = watch::channel(LinkState {
            mode: LinkMode::Pass,
            reset_epoch: 0,
        });
        Self {
            state,
            bytes: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        }
    }

    fn count(counter: &AtomicU64, n: u64) {
        // Counters are evidence, not synchronisation: no ordering with other memory needed.
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running fault proxy mesh between N nodes on 127.0.0.1; see the [module docs](self).
///
/// Dropping it stops every task and closes every socket it owns (asynchronously, within a
/// scheduler tick); [`Mesh::shutdown`] does the same and waits for it.
#[derive(Debug)]
pub struct Mesh {
    nodes: BTreeSet<u64>,
    links: BTreeMap<(u64, u64), Arc<Link>>,
    routes: BTreeMap<(u64, u64), SocketAddr>,
    /// The accept loops; each owns the tasks of its connections, so aborting it (by
    /// dropping this set) aborts them too.
    listeners: JoinSet<()>,
    /// Asks the accept loops to stop and wait for their connections ([`Mesh::shutdown`]).
    stop: watch::Sender<bool>,
}

impl Mesh {
    /// Starts a mesh between the nodes of `targets` (node id to its real address): one
    /// listener on 127.0.0.1 with an OS-chosen port per ordered pair of distinct nodes, all
    /// links [`LinkMode::Pass`].
    pub async fn start(targets: &BTreeMap<u64, SocketAddr>) -> anyhow::Result<Mesh> {
        let nodes: BTreeSet<u64> = targets.keys().copied().collect();
        let mut links = BTreeMap::new();
        for &from in &nodes {
            for &to in &nodes {
                if from != to {
                    links.insert((from, to), Arc::new(Link::new()));
                }
            }
        }
        let (stop, _) = watch::channel(false);
        let mut mesh = Mesh {
            nodes,
            links,
            routes: BTreeMap::new(),
            listeners: JoinSet::new(),
            stop,
        };
        // On an early return the partial mesh drops, aborting the listeners already spawned.
        for (&(from, to), fwd) in &mesh.links {
            let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .await
                .with_context(|| format!("binding the proxy listener for {from}->{to}"))?;
            let addr = listener
                .local_addr()
                .with_context(|| format!("reading the proxy address for {from}->{to}"))?;
            mesh.routes.insert((from, to), addr);
            let back = Arc::clone(&mesh.links[&(to, from)]);
            mesh.listeners.spawn(accept_loop(
                listener,
                targets[&to],
                Arc::clone(fwd),
                back,
                mesh.stop.subscribe(),
            ));
        }
        Ok(mesh)
    }

    /// The node ids of this mesh.
    pub fn nodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.iter().copied()
    }

    /// The address node `from` must dial to reach node `to` through the mesh.
    ///
    /// # Panics
    /// If `from` or `to` is not a node of the mesh, or they are equal (a harness bug).
    pub fn route(&self, from: u64, to: u64) -> SocketAddr {
        match self.routes.get(&(from, to)) {
            Some(addr) => *addr,
            None => panic!("no route {from}->{to} in the mesh of {:?}", self.nodes),
        }
    }

    /// Every peer of `from` with the address `from` must dial to reach it: what to put in
    /// node `from`'s peer flags.
    pub fn routes_from(&self, from: u64) -> BTreeMap<u64, SocketAddr> {
        self.routes
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|(&(_, to), &addr)| (to, addr))
            .collect()
    }

    /// Sets what happens to bytes from `from` to `to`; every connection sees the change
    /// at once.
    ///
    /// # Panics
    /// If there is no such link (a harness bug).
    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        self.link(from, to).state.send_modify(|state| {
            state.mode = mode;
            if mode == LinkMode::Reset {
                state.reset_epoch += 1;
            }
        });
    }

    /// The current mode of the link from `from` to `to`.
    ///
    /// # Panics
    /// If there is no such link (a harness bug).
    pub fn mode(&self, from: u64, to: u64) -> LinkMode {
        self.link(from, to).state.borrow().mode
    }

    /// Sets every link to [`LinkMode::Pass`]; held bytes flow on.
    pub fn heal(&self) {
        for &(from, to) in self.links.keys() {
            self.set(from, to, LinkMode::Pass);
        }
    }

    /// Cuts `node` off in both directions from every other node with `cut` (usually
    /// [`LinkMode::Drop`] or [`LinkMode::Reset`]); links between other nodes are untouched.
    pub fn isolate(&self, node: u64, cut: LinkMode) {
        for peer in self.peers(node) {
            self.set(node, peer, cut);
            self.set(peer, node, cut);
        }
    }

    /// Splits the nodes into `sides`: links between nodes of different sides get `cut`,
    /// links within a side pass. Every link of the mesh is set; a node named in no side is
    /// a side of its own.
    ///
    /// # Panics
    /// If a side names a node not in the mesh, or a node is named twice (a harness bug).
    pub fn partition(&self, sides: &[&[u64]], cut: LinkMode) {
        let mut side_of = BTreeMap::new();
        for (i, side) in sides.iter().enumerate() {
            for &node in *side {
                assert!(
                    self.nodes.contains(&node),
                    "partition names node {node}, not in the mesh of {:?}",
                    self.nodes
                );
                let previous = side_of.insert(node, i);
                assert!(previous.is_none(), "partition names node {node} twice");
            }
        }
        for &(from, to) in self.links.keys() {
            let same =
                matches!((side_of.get(&from), side_of.get(&to)), (Some(a), Some(b)) if a == b);
            self.set(from, to, if same { LinkMode::Pass } else { cut });
        }
    }

    /// One-way cut into `node`: every other node's bytes to `node` get `cut`, while
    /// `node`'s bytes to the others pass ("it can send but not receive"). Links between
    /// other nodes are untouched.
    pub fn one_way_in(&self, node: u64, cut: LinkMode) {
        for peer in self.peers(node) {
            self.set(peer, node, cut);
            self.set(node, peer, LinkMode::Pass);
        }
    }

    /// One-way cut out of `node`: `node`'s bytes to every other node get `cut`, while
    /// theirs to `node` pass ("it can receive but not send"). Links between other nodes
    /// are untouched.
    pub fn one_way_out(&self, node: u64, cut: LinkMode) {
        for peer in self.peers(node) {
            self.set(node, peer, cut);
            self.set(peer, node, LinkMode::Pass);
        }
    }

    /// Every directed link with its current mode, in `(from, to)` order.
    pub fn links(&self) -> Vec<((u64, u64), LinkMode)> {
        self.links
            .iter()
            .map(|(&pair, link)| (pair, link.state.borrow().mode))
            .collect()
    }

    /// The links that do not pass, for logs: `"1->2 drop, 2->1 delay(200ms)"`, or
    /// `"all links pass"`.
    pub fn describe(&self) -> String {
        let faults: Vec<String> = self
            .links()
            .into_iter()
            .filter(|(_, mode)| *mode != LinkMode::Pass)
            .map(|((from, to), mode)| format!("{from}->{to} {mode}"))
            .collect();
        if faults.is_empty() {
            "all links pass".to_owned()
        } else {
            faults.join(", ")
        }
    }

    /// The counters of the link from `from` to `to`.
    ///
    /// # Panics
    /// If there is no such link (a harness bug).
    pub fn stats(&self, from: u64, to: u64) -> LinkStats {
        let link = self.link(from, to);
        LinkStats {
            bytes: link.bytes.load(Ordering::Relaxed),
            accepted: link.accepted.load(Ordering::Relaxed),
            resets: link.resets.load(Ordering::Relaxed),
            connect_failures: link.connect_failures.load(Ordering::Relaxed),
        }
    }

    /// Stops the mesh and waits until every listener and connection is closed. Connections
    /// are closed as they are (not reset); held bytes are discarded.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        while self.listeners.join_next().await.is_some() {}
    }

    fn link(&self, from: u64, to: u64) -> &Link {
        match self.links.get(&(from, to)) {
            Some(link) => link,
            None => panic!("no link {from}->{to} in the mesh of {:?}", self.nodes),
        }
    }

    fn peers(&self, node: u64) -> Vec<u64> {
        assert!(
            self.nodes.contains(&node),
            "node {node} is not in the mesh of {:?}",
            self.nodes
        );
        self.nodes.iter().copied().filter(|&n| n != node).collect()
    }
}

/// Accepts connections on one route until stopped; `fwd` is the link of the dialer's
/// bytes, `back` the link of the answers.
async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    fwd: Arc<Link>,
    back: Arc<Link>,
    mut stop: watch::Receiver<bool>,
) {
    // Owning the connection tasks here ties their lifetime to this loop's.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    Link::count(&fwd.accepted, 1);
                    conns.spawn(serve(stream, target, Arc::clone(&fwd), Arc::clone(&back)));
                }
                // Per-connection failures (the dialer gave up) and descriptor exhaustion
                // alike: the listener stays, a later accept may succeed.
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            // Reap finished connections so the set does not grow with the test's length.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            // A closed channel means the mesh is gone; stop then too.
            // (Mapped to `()` so the channel's read guard is not held across an await.)
            _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => break,
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// How a connected connection ended.
enum Ended {
    /// Both directions delivered their end of stream.
    Closed,
    /// A socket failed (e.g. an endpoint reset it): pass the failure on as a reset.
    Failed,
    /// A link of the connection was set to [`LinkMode::Reset`].
    Reset,
}

/// Serves one accepted connection: waits until its links let it connect, connects to
/// `target` and pumps both directions until they end or a link resets the connection.
async fn serve(client: TcpStream, target: SocketAddr, fwd: Arc<Link>, back: Arc<Link>) {
    let mut fwd_rx = fwd.state.subscribe();
    let mut back_rx = back.state.subscribe();
    let fwd_epoch = fwd_rx.borrow().reset_epoch;
    let back_epoch = back_rx.borrow().reset_epoch;

    // The handshake needs both directions: while either drops, the dialer's connection is
    // accepted (the kernel did that) but never answered.
    loop {
        let f = *fwd_rx.borrow_and_update();
        let b = *back_rx.borrow_and_update();
        if f.resets_since(fwd_epoch) || b.resets_since(back_epoch) {
            count_resets(&fwd, &f, fwd_epoch);
            count_resets(&back, &b, back_epoch);
            reset(client);
            return;
        }
        if f.mode != LinkMode::Drop && b.mode != LinkMode::Drop {
            break;
        }
        let woke = tokio::select! {
            r = fwd_rx.changed() => r,
            r = back_rx.changed() => r,
        };
        if woke.is_err() {
            return;
        }
    }

    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(server)) => server,
        Ok(Err(_)) | Err(_) => {
            Link::count(&fwd.connect_failures, 1);
            reset(client);
            return;
        }
    };
    // Best effort: Nagle on the proxy would add latency the real network does not have,
    // but a proxy that cannot turn it off still forwards correctly.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let (mut client, mut server) = (client, server);
    let ended = {
        // Borrowed halves: unlike owned ones they do not send a FIN when dropped, so a
        // reset below is a bare RST.
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pipe(client_read, server_write, &fwd, fwd_rx.clone());
        let down = pipe(server_read, client_write, &back, back_rx.clone());
        tokio::select! {
            done = async { tokio::try_join!(up, down) } => match done {
                Ok(_) => Ended::Closed,
                Err(_) => Ended::Failed,
            },
            () = until_reset(&mut fwd_rx, fwd_epoch) => Ended::Reset,
            () = until_reset(&mut back_rx, back_epoch) => Ended::Reset,
        }
    };
    match ended {
        Ended::Closed => {}
        Ended::Failed => {
            reset(client);
            reset(server);
        }
        Ended::Reset => {
            let f = *fwd_rx.borrow();
            let b = *back_rx.borrow();
            count_resets(&fwd, &f, fwd_epoch);
            count_resets(&back, &b, back_epoch);
            reset(client);
            reset(server);
        }
    }
}

/// Counts a mesh-made reset on `link` if it is the link that asked for it.
fn count_resets(link: &Link, state: &LinkState, epoch: u64) {
    if state.resets_since(epoch) {
        Link::count(&link.resets, 1);
    }
}

/// Returns once the link asks connections that started at `epoch` to reset.
async fn until_reset(rx: &mut watch::Receiver<LinkState>, epoch: u64) {
    let open = rx.wait_for(|state| state.resets_since(epoch)).await.is_ok();
    if !open {
        // The mesh is gone; its abort of this task ends the connection.
        std::future::pending::<()>().await;
    }
}

/// Closes `stream` with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    // If SO_LINGER cannot be set the close is a FIN: still a closed connection, which is
    // the best left to do.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// A chunk read from one socket, to be written to the other at `due`; `None` is the end of
/// stream (the FIN, held and delayed like any byte).
struct Chunk {
    data: Option<Bytes>,
    due: Instant,
}

/// Pumps one direction of a connection under the link watched by `rx`, until its end of
/// stream is delivered or a socket fails.
async fn pipe(
    src: ReadHalf<'_>,
    dst: WriteHalf<'_>,
    link: &Link,
    rx: watch::Receiver<LinkState>,
) -> io::Result<()> {
    let window = Semaphore::new(WINDOW);
    // Unbounded by count; bounded by bytes through `window`.
    let (tx, queue) = mpsc::unbounded_channel();
    tokio::try_join!(
        read_side(src, tx, rx.clone(), &window),
        write_side(dst, queue, rx, &window, link),
    )
    .map(|_| ())
}

/// Waits for a change of the link; an error means the mesh is gone.
async fn changed(rx: &mut watch::Receiver<LinkState>) -> io::Result<()> {
    rx.changed()
        .await
        .map_err(|_| io::Error::other("the fault mesh is shut down"))
}

/// Waits until the link does not drop; returns its mode then.
async fn until_not_dropped(rx: &mut watch::Receiver<LinkState>) -> io::Result<LinkMode> {
    loop {
        let mode = rx.borrow_and_update().mode;
        if mode != LinkMode::Drop {
            return Ok(mode);
        }
        changed(rx).await?;
    }
}

/// Reads chunks from `src`, timestamps them with their due time and queues them.
async fn read_side(
    mut src: ReadHalf<'_>,
    queue: mpsc::UnboundedSender<Chunk>,
    mut rx: watch::Receiver<LinkState>,
    window: &Semaphore,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        // A dropped link is not read at all, so the sender's buffers fill and it blocks.
        until_not_dropped(&mut rx).await?;
        let n = tokio::select! {
            read = src.read(&mut buf) => read?,
            // Re-check the mode, so a cut stops reading at once; TcpStream reads are
            // cancel-safe, nothing is lost.
            change = changed(&mut rx) => {
                change?;
                continue;
            }
        };
        let read_at = Instant::now();
        let due = match rx.borrow().mode {
            // A far-future due date for an absurd delay rather than an overflow.
            LinkMode::Delay(d) => read_at
                .checked_add(d)
                .unwrap_or_else(|| read_at + Duration::from_secs(86_400 * 365)),
            LinkMode::Pass | LinkMode::Drop | LinkMode::Reset => read_at,
        };
        if n == 0 {
            // The writer being gone already means the connection failed; its error wins.
            let _ = queue.send(Chunk { data: None, due });
            return Ok(());
        }
        // `n <= CHUNK`, far below u32::MAX.
        let permits = window
            .acquire_many(n as u32)
            .await
            .map_err(|_| io::Error::other("window closed"))?;
        permits.forget();
        let chunk = Chunk {
            data: Some(Bytes::copy_from_slice(&buf[..n])),
            due,
        };
        if queue.send(chunk).is_err() {
            return Ok(());
        }
    }
}

/// Writes queued chunks to `dst` at their due times, holding them while the link drops.
async fn write_side(
    mut dst: WriteHalf<'_>,
    mut queue: mpsc::UnboundedReceiver<Chunk>,
    mut rx: watch::Receiver<LinkState>,
    window: &Semaphore,
    link: &Link,
) -> io::Result<()> {
    while let Some(chunk) = queue.recv().await {
        // Each chunk waits for its own due time, so a delay costs once, not per chunk.
        tokio::time::sleep_until(chunk.due).await;
        // A chunk read just before a cut is held, not lost.
        until_not_dropped(&mut rx).await?;
        match chunk.data {
            None => {
                dst.shutdown().await?;
                return Ok(());
            }
            Some(data) => {
                dst.write_all(&data).await?;
                Link::count(&link.bytes, data.len() as u64);
                window.add_permits(data.len());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::time::timeout;

    use super::*;

    /// The bound on every test, so a broken proxy fails instead of hanging.
    const TEST_LIMIT: Duration = Duration::from_secs(30);

    /// How long a link must stay silent to count as not delivering.
    const QUIET: Duration = Duration::from_millis(300);

    /// How long something that should happen may take.
    const PROMPT: Duration = Duration::from_secs(5);

    async fn bounded<F: Future>(test: F) -> F::Output {
        timeout(TEST_LIMIT, test)
            .await
            .expect("the test exceeded its time bound")
    }

    /// A stand-in for a node's server: accepts connections and hands each to the test.
    struct Node {
        addr: SocketAddr,
        accepted: mpsc::UnboundedReceiver<TcpStream>,
    }

    impl Node {
        async fn start() -> Node {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binding a test node");
            let addr = listener.local_addr().expect("test node address");
            let (tx, accepted) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    if tx.send(stream).is_err() {
                        break;
                    }
                }
            });
            Node { addr, accepted }
        }

        /// The next connection the node accepts.
        async fn accept(&mut self) -> TcpStream {
            timeout(PROMPT, self.accepted.recv())
                .await
                .expect("the node accepted no connection in time")
                .expect("the test node stopped")
        }

        /// Asserts the node accepts no connection for a while.
        async fn assert_no_connection(&mut self) {
            if let Ok(conn) = timeout(QUIET, self.accepted.recv()).await {
                panic!("the node got a connection it should not have: {conn:?}");
            }
        }
    }

    /// A two-node mesh with its nodes.
    async fn two_nodes() -> (Mesh, Node, Node) {
        let one = Node::start().await;
        let two = Node::start().await;
        let targets = BTreeMap::from([(1, one.addr), (2, two.addr)]);
        let mesh = Mesh::start(&targets).await.expect("starting the mesh");
        (mesh, one, two)
    }

    /// Node 1 dials node 2 through the mesh: (node 1's end, node 2's end).
    async fn dial(mesh: &Mesh, two: &mut Node) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(mesh.route(1, 2))
            .await
            .expect("dialing through the mesh");
        let server = two.accept().await;
        (client, server)
    }

    async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        timeout(PROMPT, stream.read_exact(&mut buf))
            .await
            .expect("bytes did not arrive in time")
            .expect("reading through the mesh");
        buf
    }

    async fn assert_silent(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        if let Ok(read) = timeout(QUIET, stream.read(&mut buf)).await {
            panic!("expected no delivery, got {read:?}");
        }
    }

    /// Asserts the connection fails with a reset: an RST, not a clean close.
    async fn assert_reset(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let read = timeout(PROMPT, stream.read(&mut buf))
            .await
            .expect("the connection was not reset in time");
        match read {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected a connection reset, got {other:?}"),
        }
    }

    /// Asserts the connection ends (end of stream or an error) promptly.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let read = timeout(PROMPT, stream.read(&mut buf))
            .await
            .expect("the connection was not closed in time");
        if let Ok(n) = read {
            assert_eq!(n, 0, "expected the connection closed, got bytes");
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn pass_forwards_both_ways_and_counts() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            let (mut client, mut server) = dial(&mesh, &mut two).await;
            client.write_all(b"hello").await.expect("client write");
            assert_eq!(read_exactly(&mut server, 5).await, b"hello");
            server.write_all(b"world!").await.expect("server write");
            assert_eq!(read_exactly(&mut client, 6).await, b"world!");

            let up = mesh.stats(1, 2);
            let down = mesh.stats(2, 1);
            assert_eq!((up.bytes, up.accepted, up.resets), (5, 1, 0));
            assert_eq!((down.bytes, down.accepted, down.resets), (6, 0, 0));
            assert_eq!(mesh.describe(), "all links pass");

            // A half-close passes through: the server sees the end of stream and can
            // still answer.
            client.shutdown().await.expect("client shutdown");
            assert_closed(&mut server).await;
            server.write_all(b"bye").await.expect("server write");
            assert_eq!(read_exactly(&mut client, 3).await, b"bye");
        })
        .await;
    }

    #[tokio::test]
    async fn drop_holds_bytes_and_blocks_the_sender_until_heal_delivers_them_in_order() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            let (client, mut server) = dial(&mesh, &mut two).await;
            mesh.set(1, 2, LinkMode::Drop);
            assert_eq!(mesh.describe(), "1->2 drop");

            // Far more than the kernel buffers on both sides of the proxy hold, so the
            // write can only finish if the proxy reads (and buffers) while dropped.
            const LEN: usize = 32 * 1024 * 1024;
            let sent = pattern(LEN);
            let (_client_read, mut client_write) = client.into_split();
            let to_send = sent.clone();
            let mut writer = tokio::spawn(async move { client_write.write_all(&to_send).await });
            assert_silent(&mut server).await;
            assert!(
                timeout(QUIET, &mut writer).await.is_err(),
                "the sender finished writing into a dropped link"
            );
            assert_eq!(mesh.stats(1, 2).bytes, 0);

            mesh.heal();
            let received = timeout(PROMPT, async {
                let mut received = vec![0; LEN];
                server.read_exact(&mut received).await.map(|_| received)
            })
            .await
            .expect("the held bytes did not arrive after heal")
            .expect("reading the held bytes");
            assert!(
                received == sent,
                "the held bytes arrived changed or out of order"
            );
            timeout(PROMPT, writer)
                .await
                .expect("the sender did not finish after heal")
                .expect("writer task")
                .expect("writing through the healed link");
            assert_eq!(mesh.stats(1, 2).bytes, LEN as u64);
        })
        .await;
    }

    #[tokio::test]
    async fn drop_defers_new_connections_until_heal() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            // Either direction dropping stops the handshake.
            for (from, to) in [(1, 2), (2, 1)] {
                mesh.set(from, to, LinkMode::Drop);
                let mut client = TcpStream::connect(mesh.route(1, 2))
                    .await
                    .expect("the listener accepts while dropped");
                client.write_all(b"early").await.expect("client write");
                two.assert_no_connection().await;
                assert_silent(&mut client).await;

                mesh.heal();
                let mut server = two.accept().await;
                assert_eq!(read_exactly(&mut server, 5).await, b"early");
            }
            assert_eq!(mesh.stats(1, 2).accepted, 2);
        })
        .await;
    }

    #[tokio::test]
    async fn a_dropped_link_is_not_read_at_all() {
        bounded(async {
            // White-box: the reading side of one direction, on a plain socket pair, so
            // what the proxy took off the socket is visible as its queue.
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let mut sender = TcpStream::connect(addr).await.expect("connect");
            let (mut source, _) = listener.accept().await.expect("accept");
            let (state, _) = watch::channel(LinkState {
                mode: LinkMode::Drop,
                reset_epoch: 0,
            });
            let window = Semaphore::new(WINDOW);
            let (tx, mut queue) = mpsc::unbounded_channel();
            sender.write_all(b"blackholed").await.expect("sender write");
            {
                let (read, _write) = source.split();
                let reading = read_side(read, tx.clone(), state.subscribe(), &window);
                assert!(timeout(QUIET, reading).await.is_err(), "the reader ended");
            }
            assert!(queue.try_recv().is_err(), "a dropped link was read");

            // The control: the same reader takes the bytes once the link passes.
            state.send_modify(|s| s.mode = LinkMode::Pass);
            {
                let (read, _write) = source.split();
                let reading = read_side(read, tx, state.subscribe(), &window);
                let _ = timeout(QUIET, reading).await;
            }
            let chunk = queue.try_recv().expect("the passing link was not read");
            assert_eq!(chunk.data.as_deref(), Some(&b"blackholed"[..]));
        })
        .await;
    }

    #[tokio::test]
    async fn a_chunk_read_before_a_cut_is_held_until_heal() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            let (mut client, mut server) = dial(&mesh, &mut two).await;
            // The delay keeps the chunk in the proxy's queue, already read, when the cut
            // comes; its due time passes during the cut.
            mesh.set(1, 2, LinkMode::Delay(QUIET));
            client.write_all(b"in flight").await.expect("client write");
            tokio::time::sleep(QUIET / 4).await;
            mesh.set(1, 2, LinkMode::Drop);
            tokio::time::sleep(QUIET).await;
            assert_silent(&mut server).await;

            mesh.heal();
            assert_eq!(read_exactly(&mut server, 9).await, b"in flight");
        })
        .await;
    }

    #[tokio::test]
    async fn one_way_cut_blocks_one_direction_of_a_connection() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            let (mut client, mut server) = dial(&mesh, &mut two).await;

            mesh.one_way_out(1, LinkMode::Drop);
            assert_eq!(mesh.mode(1, 2), LinkMode::Drop);
            assert_eq!(mesh.mode(2, 1), LinkMode::Pass);
            client.write_all(b"ping").await.expect("client write");
            server.write_all(b"pong").await.expect("server write");
            assert_eq!(read_exactly(&mut client, 4).await, b"pong");
            assert_silent(&mut server).await;

            // The opposite cut on the same connection.
            mesh.one_way_in(1, LinkMode::Drop);
            assert_eq!(read_exactly(&mut server, 4).await, b"ping");
            server.write_all(b"late").await.expect("server write");
            client.write_all(b"next").await.expect("client write");
            assert_eq!(read_exactly(&mut server, 4).await, b"next");
            assert_silent(&mut client).await;

            mesh.heal();
            assert_eq!(read_exactly(&mut client, 4).await, b"late");
        })
        .await;
    }

    #[tokio::test]
    async fn reset_kills_open_connections_with_rst_and_refuses_new_ones() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            // Either direction of a connection resets it.
            for (from, to) in [(1, 2), (2, 1)] {
                let (mut client, mut server) = dial(&mesh, &mut two).await;
                client.write_all(b"x").await.expect("client write");
                assert_eq!(read_exactly(&mut server, 1).await, b"x");

                mesh.set(from, to, LinkMode::Reset);
                assert_reset(&mut client).await;
                assert_reset(&mut server).await;
                assert_eq!(mesh.stats(from, to).resets, 1);

                let mut refused = TcpStream::connect(mesh.route(1, 2))
                    .await
                    .expect("the listener accepts while resetting");
                assert_reset(&mut refused).await;
                two.assert_no_connection().await;
                assert_eq!(mesh.stats(from, to).resets, 2);

                mesh.heal();
                let (mut client, mut server) = dial(&mesh, &mut two).await;
                client.write_all(b"y").await.expect("client write");
                assert_eq!(read_exactly(&mut server, 1).await, b"y");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_reset_flipped_back_at_once_still_resets_open_connections() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            let (mut client, _server) = dial(&mesh, &mut two).await;
            mesh.set(1, 2, LinkMode::Reset);
            mesh.set(1, 2, LinkMode::Pass);
            assert_reset(&mut client).await;
        })
        .await;
    }

    #[tokio::test]
    async fn delay_delivers_each_chunk_after_the_delay_in_order_without_serialising() {
        bounded(async {
            const DELAY: Duration = Duration::from_millis(200);
            const MESSAGES: usize = 10;
            const GAP: Duration = Duration::from_millis(40);
            let (mesh, _one, mut two) = two_nodes().await;
            let (mut client, mut server) = dial(&mesh, &mut two).await;
            mesh.set(1, 2, LinkMode::Delay(DELAY));

            let reader = tokio::spawn(async move {
                let mut arrivals = Vec::new();
                let mut buf = [0u8; 64];
                while arrivals.len() < MESSAGES {
                    let n = server.read(&mut buf).await.expect("server read");
                    assert!(n > 0, "the connection closed early");
                    let at = Instant::now();
                    arrivals.extend(buf[..n].iter().map(|&b| (b, at)));
                }
                arrivals
            });
            let start = Instant::now();
            let mut sent_at = Vec::new();
            for i in 0..MESSAGES {
                sent_at.push(Instant::now());
                client.write_all(&[i as u8]).await.expect("client write");
                tokio::time::sleep(GAP).await;
            }
            let arrivals = reader.await.expect("reader task");
            let order: Vec<u8> = arrivals.iter().map(|&(b, _)| b).collect();
            let expected: Vec<u8> = (0..MESSAGES as u8).collect();
            assert_eq!(order, expected, "delayed bytes arrived out of order");
            for (i, &(_, at)) in arrivals.iter().enumerate() {
                let waited = at - sent_at[i];
                assert!(
                    waited >= DELAY,
                    "byte {i} arrived after {waited:?} < {DELAY:?}"
                );
            }
            // Pipelined: about GAP * MESSAGES + DELAY, where a serial delay per chunk
            // would take at least DELAY * MESSAGES (2 s).
            let total = start.elapsed();
            assert!(
                total < DELAY * MESSAGES as u32 - DELAY,
                "the delay was paid per chunk: {total:?}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn dropping_the_mesh_closes_its_connections_and_listeners() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            let route = mesh.route(1, 2);
            let (mut client, mut server) = dial(&mesh, &mut two).await;
            // Also a connection parked by a dropped link, and bytes held in it.
            mesh.set(2, 1, LinkMode::Drop);
            server.write_all(b"held").await.expect("server write");
            drop(mesh);

            assert_closed(&mut client).await;
            assert_closed(&mut server).await;
            assert_port_closed(route).await;
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_closes_everything_before_it_returns() {
        bounded(async {
            let (mesh, _one, mut two) = two_nodes().await;
            let route = mesh.route(1, 2);
            let (mut client, mut server) = dial(&mesh, &mut two).await;
            mesh.shutdown().await;

            assert!(
                TcpStream::connect(route).await.is_err(),
                "the route still accepts after shutdown"
            );
            assert_closed(&mut client).await;
            assert_closed(&mut server).await;
        })
        .await;
    }

    /// Waits until nothing listens on `addr` any more.
    async fn assert_port_closed(addr: SocketAddr) {
        timeout(PROMPT, async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the route kept accepting after the mesh was dropped");
    }

    #[tokio::test]
    async fn a_dead_node_makes_the_dialer_see_a_reset() {
        bounded(async {
            let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let dead_addr = dead.local_addr().expect("address");
            drop(dead);
            let one = Node::start().await;
            let targets = BTreeMap::from([(1, one.addr), (2, dead_addr)]);
            let mesh = Mesh::start(&targets).await.expect("starting the mesh");
            let mut client = TcpStream::connect(mesh.route(1, 2))
                .await
                .expect("the listener accepts");
            assert_reset(&mut client).await;
            assert_eq!(mesh.stats(1, 2).connect_failures, 1);
        })
        .await;
    }

    #[tokio::test]
    async fn helpers_set_the_links_they_describe() {
        bounded(async {
            let targets: BTreeMap<u64, SocketAddr> = (1..=3)
                .map(|n| (n, SocketAddr::from(([127, 0, 0, 1], 9))))
                .collect();
            let mesh = Mesh::start(&targets).await.expect("starting the mesh");
            assert_eq!(mesh.links().len(), 6);
            assert_eq!(
                mesh.routes_from(1).keys().copied().collect::<Vec<_>>(),
                [2, 3]
            );
            assert_eq!(mesh.routes_from(1)[&3], mesh.route(1, 3));

            mesh.partition(&[&[1], &[2, 3]], LinkMode::Drop);
            assert_eq!(
                mesh.describe(),
                "1->2 drop, 1->3 drop, 2->1 drop, 3->1 drop"
            );

            mesh.heal();
            mesh.isolate(2, LinkMode::Reset);
            assert_eq!(
                mesh.describe(),
                "1->2 reset, 2->1 reset, 2->3 reset, 3->2 reset"
            );

            mesh.heal();
            mesh.one_way_in(3, LinkMode::Drop);
            assert_eq!(mesh.describe(), "1->3 drop, 2->3 drop");

            mesh.partition(&[&[1, 2]], LinkMode::Delay(Duration::from_millis(5)));
            assert_eq!(
                mesh.describe(),
                "1->3 delay(5ms), 2->3 delay(5ms), 3->1 delay(5ms), 3->2 delay(5ms)"
            );
        })
        .await;
    }
}
