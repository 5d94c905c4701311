//! A cluster of real `adclickd` processes on 127.0.0.1.
//!
//! [`Cluster::start`] picks free ports, creates a temporary directory, spawns one process
//! per node with
//!
//! ```text
//! adclickd --node-id N --data-dir <dir>/nN --listen 127.0.0.1:P --http 127.0.0.1:H
//!          --peers 1=127.0.0.1:P1,2=127.0.0.1:P2,3=127.0.0.1:P3 --groups G
//!          --raft-heartbeat-ms 50 --raft-election-timeout-ms 300 [--snapshot-logs N]
//!          [--snapshot-keep-logs K] [--log-segment-bytes B]
//! ```
//!
//! and waits until every node answers `GET /healthz` with 200. Each node's stdout and
//! stderr go to `<dir>/nN.log` (`RUST_LOG=info` unless the test's environment sets it).
//!
//! Dropping the cluster SIGKILLs every node. When it is dropped by a panicking test it
//! prints the tail of every node's log first; with `ADCLICK_KEEP_TEST_DIRS` set the
//! directory is kept (and its path printed) instead of deleted.
//!
//! Clusters started in one test process run one at a time ([`ClusterOptions::exclusive`]):
//! the tests run on small machines, and two clusters with 300 ms election timeouts
//! competing for two cores would make elections flap.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use adclick_proto::wire;
use adclick_proto::wire::grpc::{AdminClient, IngestClient, QueryClient};
use anyhow::{anyhow, bail, Context};
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::transport::{Channel, Endpoint};

use crate::http::HttpClient;

/// Environment variable naming the `adclickd` binary to test.
pub const ENV_BIN: &str = "ADCLICKD_BIN";
/// Environment variable that, when set, keeps every test's data directory.
pub const ENV_KEEP_DIRS: &str = "ADCLICK_KEEP_TEST_DIRS";
/// Environment variable: how many log lines per node a failing test prints (default 80).
pub const ENV_LOG_TAIL: &str = "ADCLICK_LOG_TAIL_LINES";

/// One cluster at a time per test process (see the module docs).
static SLOT: Semaphore = Semaphore::const_new(1);

/// Environment variable naming the `adclick` CLI binary to test.
pub const ENV_CLI_BIN: &str = "ADCLICK_BIN";

/// Finds the `adclickd` binary: `$ADCLICKD_BIN` if set, else `target/<profile>/adclickd`
/// next to the running test executable (`target/<profile>/deps/<test>-<hash>`).
pub fn adclickd_path() -> anyhow::Result<PathBuf> {
    built_binary("adclickd", ENV_BIN, "adclick-server")
}

/// Finds the `adclick` CLI binary: `$ADCLICK_BIN` if set, else `target/<profile>/adclick`.
pub fn adclick_path() -> anyhow::Result<PathBuf> {
    built_binary("adclick", ENV_CLI_BIN, "adclick-client")
}

/// Environment variable naming the fault-injection `adclickd` build the fault suite runs.
pub const ENV_FAULT_BIN: &str = "ADCLICKD_FAULT_BIN";

/// Finds the fault suite's `adclickd`: `$ADCLICKD_FAULT_BIN` if set, else
/// `target/fault/adclickd` (built by `cargo build --profile fault -p adclick-server
/// --features fault-injection --bin adclickd`, as scripts/test does): release code
/// generation with the test-only fault switches, kept apart from `target/release`.
pub fn fault_adclickd_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = binary_from_env(ENV_FAULT_BIN)? {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
    let mut profile_dir = exe.parent();
    if profile_dir.and_then(Path::file_name) == Some(std::ffi::OsStr::new("deps")) {
        profile_dir = profile_dir.and_then(Path::parent);
    }
    let target = profile_dir
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("executable {} is not under a target dir", exe.display()))?;
    let bin = target.join("fault").join("adclickd");
    if bin.is_file() {
        return Ok(bin);
    }
    bail!(
        "the fault-injection adclickd is missing: looked for {} (and {ENV_FAULT_BIN} is not \
         set). Build it with `cargo build --profile fault -p adclick-server --features \
         fault-injection --bin adclickd` (scripts/test does)",
        bin.display()
    )
}

/// The file `$env` names, if it is set; an error if it is set to anything but a file.
fn binary_from_env(env: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(p) = std::env::var_os(env) else {
        return Ok(None);
    };
    let p = PathBuf::from(p);
    if p.is_file() {
        Ok(Some(p))
    } else {
        bail!("{env}={} is not a file", p.display())
    }
}

/// The binary `name` of package `package`: `$env` if set, else in the profile directory
/// of the running test executable.
fn built_binary(name: &str, env: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = binary_from_env(env)? {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("test executable {} has no grandparent", exe.display()))?;
    let bin = profile_dir.join(name);
    if bin.is_file() {
        return Ok(bin);
    }
    bail!(
        "the {name} binary is missing: looked for {} (and {env} is not set). Build it with \
         `cargo build -p {package} --bin {name}` (scripts/test does; `cargo test` alone does \
         not build another package's binaries), or set {env} to its path",
        bin.display()
    )
}

/// How to start a cluster. The defaults suit tests: 3 nodes, 4 data groups, fast Raft
/// timeouts, the server's own snapshot and segment settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u64,
    /// Number of data groups (`--groups`).
    pub groups: u64,
    /// `--raft-heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--raft-election-timeout-ms` (the minimum; the server uses twice it as maximum).
    pub election_timeout_ms: u64,
    /// `--snapshot-logs`: build a snapshot every N log entries (server default if None).
    pub snapshot_logs: Option<u64>,
    /// `--snapshot-keep-logs`: entries kept behind a snapshot (server default if None).
    pub snapshot_keep_logs: Option<u64>,
    /// `--log-segment-bytes` (server default if None).
    pub log_segment_bytes: Option<u64>,
    /// More arguments for every node.
    pub extra_args: Vec<String>,
    /// The `adclickd` binary to run; [`adclickd_path`] when `None`.
    pub bin: Option<PathBuf>,
    /// How long [`Cluster::start`] waits for every node to be ready.
    pub ready_timeout: Duration,
    /// Deadline of every gRPC call made through [`Cluster`]'s clients.
    pub rpc_timeout: Duration,
    /// How long [`Cluster::stop`] waits for a node to exit after SIGTERM.
    pub stop_timeout: Duration,
    /// Run no other exclusive cluster of this process at the same time (default true).
    pub exclusive: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            groups: 4,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            snapshot_logs: None,
            snapshot_keep_logs: None,
            log_segment_bytes: None,
            extra_args: Vec::new(),
            bin: None,
            ready_timeout: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(10),
            // Above the server's worst case for a graceful shutdown (leadership hand-offs,
            // draining, flushing), so a slow but correct exit is not reported as a hang.
            stop_timeout: Duration::from_secs(30),
            exclusive: true,
        }
    }
}

#[derive(Debug)]
struct Node {
    id: u64,
    grpc: SocketAddr,
    http: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
    /// Arguments for this node only, after the common ones.
    own_args: Vec<String>,
}

impl Node {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running cluster; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOptions,
    bin: PathBuf,
    root: PathBuf,
    dir: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    _slot: Option<SemaphorePermit<'static>>,
}

impl Cluster {
    /// Waits for this process's one cluster slot, for a test that runs nodes by other
    /// means (e.g. `adclick dev`) and must not overlap an exclusive cluster. Held until
    /// the permit is dropped.
    pub async fn exclusive_slot() -> anyhow::Result<SemaphorePermit<'static>> {
        tokio::time::timeout(Duration::from_secs(600), SLOT.acquire())
            .await
            .map_err(|_| anyhow!("waited 10 min for another test's cluster to finish"))?
            .context("cluster slot closed")
    }

    /// Starts every node and waits until all are ready (see [`Cluster::wait_ready`]).
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Self> {
        let mut cluster = Cluster::prepare(opts).await?;
        cluster.launch().await?;
        Ok(cluster)
    }

    /// Takes the cluster slot, picks the nodes' ports and creates the directory, without
    /// starting any node: the caller can learn the addresses (e.g. to put a proxy in
    /// front of them), give nodes arguments of their own ([`Cluster::set_node_args`]),
    /// then [`Cluster::launch`].
    pub async fn prepare(opts: ClusterOptions) -> anyhow::Result<Self> {
        let bin = match &opts.bin {
            Some(bin) => bin.clone(),
            None => adclickd_path()?,
        };
        let slot = if opts.exclusive {
            Some(Cluster::exclusive_slot().await?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("adclick-e2e-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let root = dir.path().to_path_buf();
        let ports = free_ports(usize::try_from(opts.nodes * 2)?)?;
        let nodes = (1..=opts.nodes)
            .zip(ports.chunks(2))
            .map(|(id, p)| Node {
                id,
                grpc: p[0],
                http: p[1],
                data_dir: root.join(format!("n{id}")),
                log_path: root.join(format!("n{id}.log")),
                child: Mutex::new(None),
                own_args: Vec::new(),
            })
            .collect();
        Ok(Self {
            opts,
            bin,
            root,
            dir: Some(dir),
            nodes,
            _slot: slot,
        })
    }

    /// Arguments node `id` gets after the common ones, from its next start on.
    pub fn set_node_args(&mut self, id: u64, args: Vec<String>) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"));
        node.own_args = args;
    }

    /// Starts every node of a [`Cluster::prepare`]d cluster and waits until all are ready.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        for id in self.ids() {
            self.spawn(id)?;
        }
        let timeout = self.opts.ready_timeout;
        if let Err(e) = self.wait_ready(timeout).await {
            let tails: Vec<String> = self
                .ids()
                .into_iter()
                .map(|id| format!("----- node {id} -----\n{}", self.log_tail(id, 40)))
                .collect();
            // Kill what started, so the caller can drop the cluster without a panic dump.
            for node in &self.nodes {
                if let Some(mut c) = node.child().take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            return Err(e.context(format!(
                "the cluster did not start; last log lines:\n{}",
                tails.join("\n")
            )));
        }
        Ok(())
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Every node id, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The data group ids (1..=groups); group 0 is the metadata group.
    pub fn data_groups(&self) -> Vec<u64> {
        (1..=self.opts.groups).collect()
    }

    /// The cluster's temporary directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// Node `id`'s gRPC address (`--listen`).
    pub fn grpc_addr(&self, id: u64) -> SocketAddr {
        self.node(id).grpc
    }

    /// Node `id`'s HTTP address (`--http`).
    pub fn http_addr(&self, id: u64) -> SocketAddr {
        self.node(id).http
    }

    /// Node `id`'s data directory (`--data-dir`).
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }

    /// The file node `id`'s stdout and stderr go to.
    pub fn log_path(&self, id: u64) -> &Path {
        &self.node(id).log_path
    }

    /// The process id of node `id`, if it is running.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child().as_ref().map(Child::id)
    }

    /// The command-line arguments node `id` is started with.
    pub fn args(&self, id: u64) -> Vec<String> {
        let o = &self.opts;
        let node = self.node(id);
        let peers = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "--node-id".to_owned(),
            id.to_string(),
            "--data-dir".to_owned(),
            node.data_dir.display().to_string(),
            "--listen".to_owned(),
            node.grpc.to_string(),
            "--http".to_owned(),
            node.http.to_string(),
            "--peers".to_owned(),
            peers,
            "--groups".to_owned(),
            o.groups.to_string(),
            "--raft-heartbeat-ms".to_owned(),
            o.heartbeat_ms.to_string(),
            "--raft-election-timeout-ms".to_owned(),
            o.election_timeout_ms.to_string(),
        ];
        for (flag, value) in [
            ("--snapshot-logs", o.snapshot_logs),
            ("--snapshot-keep-logs", o.snapshot_keep_logs),
            ("--log-segment-bytes", o.log_segment_bytes),
        ] {
            if let Some(v) = value {
                args.push(flag.to_owned());
                args.push(v.to_string());
            }
        }
        args.extend(o.extra_args.iter().cloned());
        args.extend(node.own_args.iter().cloned());
        args
    }

    fn note(&self, id: u64, text: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.node(id).log_path)
        {
            let _ = writeln!(f, "=== harness: {text} ===");
        }
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        if self.is_running(id) {
            bail!("node {id} is already running (pid {:?})", self.pid(id));
        }
        let args = self.args(id);
        self.note(
            id,
            &format!(
                "starting node {id}: {} {}",
                self.bin.display(),
                args.join(" ")
            ),
        );
        let node = self.node(id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        let err = log.try_clone()?;
        let rust_log = std::env::var_os("RUST_LOG").unwrap_or_else(|| OsString::from("info"));
        let child = Command::new(&self.bin)
            .args(&args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {} for node {id}", self.bin.display()))?;
        *self.node(id).child() = Some(child);
        Ok(())
    }

    /// Whether node `id`'s process is running (it was started and has not exited).
    pub fn is_running(&self, id: u64) -> bool {
        match self.node(id).child().as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The ids of the nodes whose process should be running (started, not killed or
    /// stopped by the harness).
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child().is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Fails if a node the harness started (and did not kill or stop) has exited.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        let mut dead = Vec::new();
        for node in &self.nodes {
            if let Some(c) = node.child().as_mut() {
                match c.try_wait() {
                    Ok(None) => {}
                    Ok(Some(status)) => dead.push(format!("node {} exited: {status}", node.id)),
                    Err(e) => dead.push(format!("node {}: wait failed: {e}", node.id)),
                }
            }
        }
        if dead.is_empty() {
            Ok(())
        } else {
            bail!("{}", dead.join("; "))
        }
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let Some(mut child) = self.node(id).child().take() else {
            bail!("node {id} is not running");
        };
        child.kill().with_context(|| format!("SIGKILL node {id}"))?;
        let status = child.wait()?;
        self.note(id, &format!("node {id} killed with SIGKILL ({status})"));
        Ok(())
    }

    /// Sends SIGTERM to node `id` and waits (at most [`ClusterOptions::stop_timeout`]) for
    /// it to exit; returns its exit status. A node that does not exit in time is
    /// SIGKILLed and the call fails.
    pub async fn stop(&mut self, id: u64) -> anyhow::Result<ExitStatus> {
        self.sigterm(id)?;
        self.wait_exit(id).await
    }

    /// Stops every running node at once: freezes them all (one `kill -STOP` naming every
    /// pid), queues SIGTERM for all (one `kill -TERM`), and resumes them together (one
    /// `kill -CONT`), so every node starts its shutdown at the same moment and sees its
    /// peers stopping too (they hand no leadership to a stopping peer). Then waits for each
    /// (bounded as in [`Cluster::stop`]) and returns each node's exit status.
    ///
    /// (SIGKILL is no substitute: the state machines write without a WAL, so a killed
    /// node's on-disk state is only its last flush.)
    pub async fn stop_all(&mut self) -> anyhow::Result<Vec<(u64, ExitStatus)>> {
        let ids = self.live_ids();
        self.signal(&ids, "STOP")?;
        let sent = self.signal(&ids, "TERM");
        self.signal(&ids, "CONT")?;
        sent?;
        let mut out = Vec::new();
        for id in ids {
            out.push((id, self.wait_exit(id).await?));
        }
        Ok(out)
    }

    /// Pauses node `id` with SIGSTOP: the process stays alive but does nothing (no
    /// heartbeats, no answers) until [`Cluster::resume`].
    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        self.signal(&[id], "STOP")
    }

    /// Resumes node `id` (SIGCONT) after [`Cluster::pause`].
    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        self.signal(&[id], "CONT")
    }

    fn sigterm(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(&[id], "TERM")
    }

    /// Sends `SIG<sig>` to the nodes `ids` with one `kill` command.
    fn signal(&self, ids: &[u64], sig: &str) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pids = Vec::new();
        for &id in ids {
            let Some(pid) = self.pid(id) else {
                bail!("node {id} is not running");
            };
            pids.push(pid.to_string());
        }
        for (&id, pid) in ids.iter().zip(&pids) {
            self.note(id, &format!("sending SIG{sig} to node {id} (pid {pid})"));
        }
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .args(&pids)
            .status()
            .with_context(|| format!("running `kill -{sig}`"))?;
        if !status.success() {
            bail!(
                "`kill -{sig} {}` (nodes {ids:?}) failed: {status}",
                pids.join(" ")
            );
        }
        Ok(())
    }

    async fn wait_exit(&mut self, id: u64) -> anyhow::Result<ExitStatus> {
        let timeout = self.opts.stop_timeout;
        let start = Instant::now();
        loop {
            let exited = {
                let mut guard = self.node(id).child();
                let child = guard
                    .as_mut()
                    .ok_or_else(|| anyhow!("node {id} is not running"))?;
                let exited = child.try_wait()?;
                if exited.is_none() && start.elapsed() >= timeout {
                    let _ = child.kill();
                    let _ = child.wait();
                    *guard = None;
                    drop(guard);
                    self.note(
                        id,
                        &format!("node {id} did not exit in {timeout:?}; SIGKILLed"),
                    );
                    bail!("node {id} did not exit within {timeout:?} of SIGTERM (SIGKILLed it)");
                }
                if exited.is_some() {
                    *guard = None;
                }
                exited
            };
            if let Some(status) = exited {
                self.note(
                    id,
                    &format!("node {id} exited after {:?}: {status}", start.elapsed()),
                );
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts node `id` again with the same flags, data directory and ports. Does not wait
    /// for readiness (see [`Cluster::wait_ready`]).
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// Waits until every running node answers `GET /healthz` with 200 (it serves, and
    /// every group has a known leader). Fails at once if a node process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            let mut waiting = Vec::new();
            for id in self.live_ids() {
                let http = HttpClient::new(self.http_addr(id), Duration::from_secs(2));
                match http.get("/healthz").await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => waiting.push(format!("node {id}: HTTP {} {}", r.status, r.body)),
                    Err(e) => waiting.push(format!("node {id}: {e:#}")),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "nodes not ready after {timeout:?}: {} (logs in {})",
                    waiting.join("; "),
                    self.root.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A gRPC channel to node `id` (connected lazily; every call bounded by
    /// [`ClusterOptions::rpc_timeout`]).
    pub fn channel(&self, id: u64) -> Channel {
        channel_to(self.grpc_addr(id), self.opts.rpc_timeout)
    }

    /// An Ingest client for node `id`.
    pub fn ingest(&self, id: u64) -> IngestClient<Channel> {
        IngestClient::new(self.channel(id))
    }

    /// A Query client for node `id`.
    pub fn query(&self, id: u64) -> QueryClient<Channel> {
        QueryClient::new(self.channel(id))
    }

    /// An Admin client for node `id`.
    pub fn admin(&self, id: u64) -> AdminClient<Channel> {
        AdminClient::new(self.channel(id))
    }

    /// An HTTP client for node `id`'s HTTP port.
    pub fn http(&self, id: u64) -> HttpClient {
        HttpClient::new(self.http_addr(id), self.opts.rpc_timeout)
    }

    /// `Admin.ClusterStatus` from the first running node that answers.
    pub async fn status(&self) -> anyhow::Result<wire::ClusterStatusResponse> {
        let mut errors = Vec::new();
        for id in self.live_ids() {
            match self
                .admin(id)
                .cluster_status(wire::ClusterStatusRequest {})
                .await
            {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => errors.push(format!("node {id}: {:?} {}", s.code(), s.message())),
            }
        }
        let alive = match self.check_alive() {
            Ok(()) => "every started node is running".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        bail!(
            "no running node answered ClusterStatus: {} ({alive})",
            errors.join("; ")
        )
    }

    /// The leader of `group` according to `Admin.ClusterStatus` (`None` during an
    /// election).
    pub async fn leader_of(&self, group: u64) -> anyhow::Result<Option<u64>> {
        let status = self.status().await?;
        let g = status
            .groups
            .iter()
            .find(|g| g.group_id == group)
            .ok_or_else(|| anyhow!("ClusterStatus has no group {group}: {status:?}"))?;
        Ok(g.leader_id)
    }

    /// Waits until `group` has a leader other than `not` that is a running node.
    pub async fn wait_leader(
        &self,
        group: u64,
        not: Option<u64>,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let live = &self.live_ids();
        crate::eventually(
            &format!("a leader of group {group} other than {not:?}"),
            timeout,
            Duration::from_millis(50),
            move || async move {
                match self.leader_of(group).await {
                    Ok(Some(l)) if Some(l) != not && live.contains(&l) => Ok(l),
                    Ok(other) => Err(format!("leader {other:?}")),
                    Err(e) => Err(format!("{e:#}")),
                }
            },
        )
        .await
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read(self.log_path(id))
            .map(|b| strip_ansi(&String::from_utf8_lossy(&b)))
            .unwrap_or_else(|e| format!("(cannot read log: {e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of node `id`'s log that contain `needle` (for test evidence).
    pub fn log_grep(&self, id: u64, needle: &str) -> Vec<String> {
        std::fs::read(self.log_path(id))
            .map(|b| {
                strip_ansi(&String::from_utf8_lossy(&b))
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            // The tails are taken before the nodes are killed, so they end with what the
            // nodes were doing when the test failed, not with the noise of the kill.
            let lines = std::env::var(ENV_LOG_TAIL)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(80);
            for id in self.ids() {
                eprintln!(
                    "----- node {id}: last {lines} lines of {} -----\n{}",
                    self.log_path(id).display(),
                    self.log_tail(id, lines)
                );
            }
        }
        for node in &mut self.nodes {
            if let Some(mut c) = node.child().take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::env::var_os(ENV_KEEP_DIRS).is_some() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("kept the cluster directory {}", path.display());
            }
        } else if panicking {
            eprintln!(
                "the cluster directory {} is deleted; set {ENV_KEEP_DIRS}=1 to keep it",
                self.root.display()
            );
        }
    }
}

/// `text` without ANSI escape sequences (colour codes in the nodes' logs).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A lazily connected channel to `addr` whose calls time out after `timeout`.
pub fn channel_to(addr: SocketAddr, timeout: Duration) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy()
}

/// The ports the kernel hands out for outgoing connections and `bind(0)`
/// (`net.ipv4.ip_local_port_range`; Linux's default when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// `n` distinct free TCP ports on 127.0.0.1 for nodes to bind, chosen below the kernel's
/// ephemeral range. A port from `bind(0)` is an ephemeral one: released for a node to
/// bind, it can be handed out again meanwhile, to another `bind(0)` or an outgoing
/// connection, and the node then fails with "address in use". The fault suite's long
/// mode met this in 2 of 10 runs: the fault proxy, binding its listeners right after
/// the nodes' ports were picked, got a node's port. Ports below the range are never
/// handed out that way. Each is checked free by binding it, and all stay bound until
/// every one is chosen, so they differ.
fn free_ports(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    use rand::Rng;
    const LOWEST: u16 = 10_000;
    let below = ephemeral_range().0.saturating_sub(1);
    let held = if below < LOWEST.saturating_add(1_000) {
        // No room below the range: fall back to ephemeral ports.
        (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .context("binding 127.0.0.1:0")?
    } else {
        let mut rng = rand::rng();
        let mut held: Vec<TcpListener> = Vec::with_capacity(n);
        for _ in 0..n.saturating_mul(100) {
            if held.len() == n {
                break;
            }
            let port = rng.random_range(LOWEST..=below);
            // A port in use (by another test's node, say) fails to bind and is skipped.
            if let Ok(l) = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
                held.push(l);
            }
        }
        anyhow::ensure!(
            held.len() == n,
            "found only {} of {n} free ports in 127.0.0.1:{LOWEST}..={below}",
            held.len()
        );
        held
    };
    held.iter()
        .map(|l| l.local_addr().context("local_addr"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
    }

    #[test]
    fn free_ports_are_distinct_and_not_ephemeral() {
        let ports = free_ports(6).expect("ports");
        let mut set: Vec<u16> = ports.iter().map(SocketAddr::port).collect();
        set.sort_unstable();
        set.dedup();
        assert_eq!(set.len(), 6);
        let (lo, hi) = ephemeral_range();
        assert!(
            set.iter().all(|p| !(lo..=hi).contains(p)),
            "{set:?} overlaps the ephemeral range {lo}..={hi}"
        );
    }
}
