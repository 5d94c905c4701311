//! `adclick dev`: a local three-node cluster on loopback with demo traffic.
//!
//! Starts three `adclickd` processes on free 127.0.0.1 ports with their data under one
//! directory (wiped first: ports change from run to run and a node's data dir pins its
//! peers' addresses), waits until every group has a leader, registers two demo filters,
//! feeds generated clicks (Zipf over many ads, several countries, some resent clicks, some
//! late ones) through a [`Producer`], and shows a live top 10 until Ctrl-C (or
//! `--duration`), then stops the nodes with SIGTERM and waits for them.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use adclick_client::model::{AdId, Click};
use adclick_client::{Client, ClientConfig, Producer, ProducerConfig, TimeSpec, TopQuery};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::json;

use crate::output::{top_table, Output};

const NODES: u64 = 3;

/// The signal number of SIGTERM on Linux.
const SIGTERM: i32 = 15;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the nodes' data and logs, emptied first if an earlier run made it
    /// [default: $TMPDIR/adclick-dev].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Demo clicks per second (0: no traffic).
    #[arg(long, default_value_t = 2000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=200_000))]
    rate: u32,
    /// Distinct ads in the demo traffic.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    ads: u64,
    /// Data groups (Raft groups holding clicks).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    groups: u64,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// The adclickd binary (default: next to this adclick binary, else on PATH).
    #[arg(long, value_name = "PATH", env = "ADCLICKD_BIN")]
    adclickd: Option<PathBuf>,
    /// Seed of the demo traffic generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One local node.
struct DevNode {
    id: u64,
    grpc: SocketAddr,
    http: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

/// The three nodes; dropping it kills any still running.
struct DevCluster {
    nodes: Vec<DevNode>,
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub async fn run(args: DevArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let bin = adclickd_binary(args.adclickd.as_deref())?;
    let root = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("adclick-dev"));
    prepare_dir(&root)?;
    // Listen for Ctrl-C, SIGTERM and SIGHUP before any node exists: from here on they
    // stop the nodes in order instead of killing this command and orphaning them.
    let mut signals = Signals::new()?;
    let mut cluster = start(&bin, &root, args.groups)?;
    eprintln!(
        "started {NODES} adclickd nodes ({}), data and logs in {}",
        bin.display(),
        root.display()
    );
    let served = serve(&args, &mut cluster, &mut signals, out).await;
    let stopped = stop_nodes(&mut cluster).await;
    served?;
    stopped?;
    eprintln!(
        "all nodes stopped; data and logs kept in {}",
        root.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Everything between starting and stopping the nodes; returns on a signal, at the end of
/// `--duration`, or when a node fails.
async fn serve(
    args: &DevArgs,
    cluster: &mut DevCluster,
    signals: &mut Signals,
    out: &Output,
) -> anyhow::Result<()> {
    let seeds: Vec<String> = cluster.nodes.iter().map(|n| n.grpc.to_string()).collect();
    let ready = tokio::select! {
        r = setup(cluster, &seeds) => r?,
        () = signals.recv() => {
            eprintln!("interrupted before the cluster was ready; stopping ...");
            return Ok(());
        }
    };
    print_endpoints(cluster, out);

    let producer = Producer::new(ready.clone(), ProducerConfig::default())?;
    let stop = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(traffic(producer, args.rate, args.ads, args.seed, stop.1));
    let shown = show_top(&ready, cluster, signals, args.duration, out).await;

    let _ = stop.0.send(true);
    // The producer sends what it holds; an unhealthy cluster must not keep us here.
    match tokio::time::timeout(Duration::from_secs(15), traffic).await {
        Ok(sent) => {
            let sent = sent.context("the traffic task failed")?;
            eprintln!(
                "sent {} demo clicks: accepted {}, duplicate {}, late {}, rejected {}, \
                 unconfirmed {}",
                sent.tally.total() + sent.failed,
                sent.tally.accepted,
                sent.tally.duplicate,
                sent.tally.late,
                sent.tally.rejected,
                sent.failed
            );
        }
        Err(_) => eprintln!("the demo traffic did not finish within 15 s; stopping anyway"),
    }
    shown
}

/// Waits for leaders and registers the demo filters.
async fn setup(cluster: &mut DevCluster, seeds: &[String]) -> anyhow::Result<Client> {
    let client = wait_ready(cluster, seeds).await?;
    client
        .create_filter("usa", r#"country = "USA""#)
        .await
        .context("registering the demo filter usa")?;
    client
        .create_filter("private_net", "ip in 10.0.0.0/8")
        .await
        .context("registering the demo filter private_net")?;
    Ok(client)
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP, listened for from creation on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    /// The next of the three signals.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// The file that marks a directory as made by `adclick dev`, so emptying it on the next
/// run never deletes anything else.
const MARKER: &str = ".adclick-dev";

/// Empties and recreates `root`, refusing when it holds files `adclick dev` did not make.
fn prepare_dir(root: &Path) -> anyhow::Result<()> {
    if root.exists() {
        let empty = fs::read_dir(root)
            .with_context(|| format!("reading {}", root.display()))?
            .next()
            .is_none();
        if !empty && !root.join(MARKER).is_file() {
            bail!(
                "refusing to empty {}: it is not empty and was not made by adclick dev \
                 (no {MARKER} file); pass another --data-dir",
                root.display()
            );
        }
        fs::remove_dir_all(root).with_context(|| format!("emptying {}", root.display()))?;
    }
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    fs::write(
        root.join(MARKER),
        "made by adclick dev; emptied on its next run\n",
    )
    .with_context(|| format!("writing {}", root.join(MARKER).display()))
}

/// The adclickd binary: the flag or `$ADCLICKD_BIN`, else next to this executable, else
/// `adclickd` on PATH.
fn adclickd_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        bail!("{} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("locating the adclick executable")?;
    if let Some(sibling) = exe.parent().map(|d| d.join("adclickd")) {
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("adclickd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "cannot find adclickd next to {} or on PATH: build it (cargo build -p \
                 adclick-server) or pass --adclickd",
                exe.display()
            )
        })
}

/// Free loopback addresses (bound and released; another process could take one before the
/// node binds it, which the node then reports and `wait_ready` surfaces).
fn free_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free loopback ports")?;
    listeners
        .iter()
        .map(|l| l.local_addr().context("reading a bound port"))
        .collect()
}

fn start(bin: &Path, root: &Path, groups: u64) -> anyhow::Result<DevCluster> {
    let addrs = free_addrs(2 * NODES as usize)?;
    let mut nodes: Vec<DevNode> = (0..NODES)
        .map(|i| DevNode {
            id: i + 1,
            grpc: addrs[2 * i as usize],
            http: addrs[2 * i as usize + 1],
            child: None,
            log: root.join(format!("n{}.log", i + 1)),
        })
        .collect();
    let peers = nodes
        .iter()
        .map(|n| format!("{}={}", n.id, n.grpc))
        .collect::<Vec<_>>()
        .join(",");
    for n in &mut nodes {
        let log = File::create(&n.log).with_context(|| format!("creating {}", n.log.display()))?;
        let child = Command::new(bin)
            .arg("--node-id")
            .arg(n.id.to_string())
            .arg("--data-dir")
            .arg(root.join(format!("n{}", n.id)))
            .arg("--listen")
            .arg(n.grpc.to_string())
            .arg("--http")
            .arg(n.http.to_string())
            .arg("--peers")
            .arg(&peers)
            .arg("--groups")
            .arg(groups.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches this command only, which then stops
            // the nodes in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        n.child = Some(child);
    }
    Ok(DevCluster { nodes })
}

/// Fails if a node has exited, naming its log.
fn check_alive(cluster: &mut DevCluster) -> anyhow::Result<()> {
    for n in &mut cluster.nodes {
        if let Some(c) = &mut n.child {
            if let Some(status) = c.try_wait()? {
                n.child = None;
                bail!(
                    "node {} exited ({status}); its log {} ends with:\n{}",
                    n.id,
                    n.log.display(),
                    tail(&n.log, 20)
                );
            }
        }
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Connects and waits until every group has a leader (at most a minute).
async fn wait_ready(cluster: &mut DevCluster, seeds: &[String]) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut config = ClientConfig::default();
    config.deadline = Duration::from_secs(2);
    loop {
        check_alive(cluster)?;
        if let Ok(client) = Client::connect_with(seeds, config.clone()).await {
            if let Ok(status) = client.cluster_status().await {
                let groups = &status.groups;
                if !groups.is_empty() && groups.iter().all(|g| g.leader_id.is_some()) {
                    return Ok(Client::connect(seeds).await?);
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not elect leaders within 60 s; see the logs under {}",
                cluster.nodes[0]
                    .log
                    .parent()
                    .map_or("?".into(), |p| p.display().to_string())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_endpoints(cluster: &DevCluster, out: &Output) {
    let grpc: Vec<String> = cluster.nodes.iter().map(|n| n.grpc.to_string()).collect();
    if out.is_json() {
        let nodes: Vec<_> = cluster
            .nodes
            .iter()
            .map(|n| {
                json!({ "node_id": n.id, "grpc": n.grpc.to_string(),
                             "http": n.http.to_string(), "log": n.log })
            })
            .collect();
        out.json(&json!({ "nodes": nodes }));
        return;
    }
    println!("adclick dev cluster is up:");
    for n in &cluster.nodes {
        println!(
            "  node {}  gRPC {}  HTTP http://{}  log {}",
            n.id,
            n.grpc,
            n.http,
            n.log.display()
        );
    }
    let cluster_arg = grpc.join(",");
    let http = cluster.nodes[0].http;
    let me = this_command();
    println!("query it (filters usa and private_net are registered):");
    println!("  {me} --cluster {cluster_arg} top -n 10 --last 5");
    println!("  {me} --cluster {cluster_arg} count ad-000001 --last 5 --filter usa");
    println!("  curl 'http://{http}/ads/popular?count=10&window=5'");
    println!("  curl 'http://{http}/ads/ad-000001/aggregated_count?window=5'");
    println!("  curl http://{http}/metrics");
    println!("Ctrl-C stops the cluster.");
}

/// How to run this adclick binary from the current directory: a relative path when it
/// lies below it (`target/debug/adclick`), else its full path.
fn this_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "adclick".into();
    };
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative.unwrap_or(exe).display().to_string()
}

/// Prints the top 10 of the last 5 minutes every second (redrawn in place on a terminal)
/// until Ctrl-C or the duration, checking that the nodes are still up.
async fn show_top(
    client: &Client,
    cluster: &mut DevCluster,
    signals: &mut Signals,
    duration: Option<u64>,
    out: &Output,
) -> anyhow::Result<()> {
    let until = duration.map(|s| Instant::now() + Duration::from_secs(s));
    let redraw = std::io::stdout().is_terminal() && !out.is_json();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    if redraw {
        // Remember where the table starts; each round redraws from there.
        print!("\x1b[s");
    }
    loop {
        tokio::select! {
            () = signals.recv() => {
                eprintln!("\nstopping ...");
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return Ok(());
        }
        check_alive(cluster)?;
        let query = TopQuery::new(10, TimeSpec::last(5)?);
        let answer = tokio::select! {
            r = client.top(query) => r,
            () = signals.recv() => {
                eprintln!("\nstopping ...");
                return Ok(());
            }
        };
        match answer {
            Ok(top) if out.is_json() => {
                let rows: Vec<_> = top
                    .rows
                    .iter()
                    .map(|r| json!({ "ad_id": r.ad_id.as_str(), "count": r.count }))
                    .collect();
                out.json(&json!({ "top": rows }));
            }
            Ok(top) => {
                if redraw {
                    // Back to the saved position, clearing everything below it.
                    print!("\x1b[u\x1b[J");
                } else {
                    println!();
                }
                println!("top 10 ads, last 5 minutes:");
                if top.rows.is_empty() {
                    println!("  (no clicks yet)");
                }
                print!("{}", top_table(&top));
            }
            Err(e) => eprintln!("top: {e}"),
        }
    }
}

/// Sends demo traffic at `rate` clicks/s until told to stop; returns what was sent.
async fn traffic(
    producer: Producer,
    rate: u32,
    ads: u64,
    seed: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> adclick_client::ProducerStats {
    let mut gen = match Demo::new(ads, seed) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("demo traffic: {e}");
            return producer.close().await;
        }
    };
    if rate > 0 {
        // Ten rounds a second, each sending a tenth of the rate.
        let per_round = (rate as usize).div_ceil(10);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        'run: loop {
            tokio::select! {
                _ = stop.changed() => break 'run,
                _ = tick.tick() => {}
            }
            for _ in 0..per_round {
                if producer.send(gen.next_click()).await.is_err() {
                    break 'run;
                }
            }
        }
    }
    producer.close().await
}

/// The demo traffic: Zipf-popular ads, a few countries, some private addresses, 2% of
/// clicks resent (same event id), 1% late (ten minutes old, behind the 5-minute lateness).
struct Demo {
    rng: SmallRng,
    zipf: Zipf<f64>,
    recent: VecDeque<Click>,
}

const COUNTRIES: [(&str, u32); 7] = [
    ("USA", 40),
    ("India", 15),
    ("Germany", 10),
    ("Brazil", 10),
    ("Japan", 10),
    ("France", 8),
    ("Kenya", 7),
];

impl Demo {
    fn new(ads: u64, seed: u64) -> anyhow::Result<Demo> {
        Ok(Demo {
            rng: SmallRng::seed_from_u64(seed),
            zipf: Zipf::new(ads as f64, 1.1).map_err(|e| anyhow!("zipf: {e}"))?,
            recent: VecDeque::with_capacity(1000),
        })
    }

    fn next_click(&mut self) -> Click {
        if self.rng.random_bool(0.02) {
            if let Some(c) = self
                .recent
                .get(self.rng.random_range(0..self.recent.len().max(1)))
            {
                return c.clone();
            }
        }
        let now = time_ms();
        let late = self.rng.random_bool(0.01);
        let ad = self.zipf.sample(&mut self.rng) as u64;
        let mut pick = self.rng.random_range(0..100);
        let country = COUNTRIES
            .iter()
            .find(|(_, w)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .map_or("USA", |(c, _)| c);
        let ip = if self.rng.random_bool(0.1) {
            format!(
                "10.{}.{}.{}",
                self.rng.random::<u8>(),
                self.rng.random::<u8>(),
                1
            )
        } else {
            format!(
                "{}.{}.{}.{}",
                self.rng.random_range(11..=223),
                self.rng.random::<u8>(),
                self.rng.random::<u8>(),
                self.rng.random_range(1..=254)
            )
        };
        let click = Click {
            event_id: adclick_client::new_event_id(),
            ad_id: AdId::new(&format!("ad-{ad:06}")).unwrap_or_else(|_| fallback_ad()),
            event_time_ms: if late { now - 10 * 60_000 } else { now },
            user_id: format!("user-{}", self.rng.random_range(0..100_000)),
            ip: ip.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            country: country.to_owned(),
        };
        if self.recent.len() == 1000 {
            self.recent.pop_front();
        }
        self.recent.push_back(click.clone());
        click
    }
}

/// An ad id that is always valid, for the generator's impossible error paths.
fn fallback_ad() -> AdId {
    AdId::from_bytes(bytes::Bytes::from_static(b"ad-000000"))
        .unwrap_or_else(|_| unreachable!("a constant valid id"))
}

fn time_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// SIGTERM to every node, then waits up to 20 s each (SIGKILL after).
async fn stop_nodes(cluster: &mut DevCluster) -> anyhow::Result<()> {
    for n in &cluster.nodes {
        if let Some(c) = &n.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failed = Vec::new();
    for n in &mut cluster.nodes {
        let Some(mut c) = n.child.take() else {
            continue;
        };
        loop {
            if let Some(status) = c.try_wait()? {
                // A node stopped so early that it had not yet installed its SIGTERM
                // handler dies of the signal itself: it held nothing yet, so that is a
                // clean stop too.
                let by_sigterm =
                    std::os::unix::process::ExitStatusExt::signal(&status) == Some(SIGTERM);
                if !status.success() && !by_sigterm {
                    failed.push(format!("node {} exited with {status}", n.id));
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                failed.push(format!("node {} did not stop within 20 s: killed", n.id));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_directory_made_by_dev_is_emptied() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let precious = tmp.path().join("precious");
        fs::create_dir_all(&precious).expect("mkdir");
        fs::write(precious.join("data"), "keep me").expect("write");
        let err = prepare_dir(&precious).expect_err("a foreign directory is refused");
        assert!(err.to_string().contains("refusing"), "{err}");
        assert!(precious.join("data").is_file(), "nothing was deleted");

        let dev = tmp.path().join("dev");
        prepare_dir(&dev).expect("a new directory is made");
        fs::write(dev.join("n1.log"), "old run").expect("write");
        prepare_dir(&dev).expect("its own directory is emptied");
        assert!(!dev.join("n1.log").exists());
        assert!(dev.join(MARKER).is_file());
        // An empty directory is fine too.
        let empty = tmp.path().join("empty");
        fs::create_dir_all(&empty).expect("mkdir");
        prepare_dir(&empty).expect("an empty directory is used");
    }
}
