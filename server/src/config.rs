//! `adclickd` configuration: command-line flags, an optional TOML file with the same keys
//! (flags win), defaults, and validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Default number of data groups.
pub const DEFAULT_GROUPS: u64 = 4;
/// Most data groups a cluster may have (the metadata group comes on top).
pub const MAX_GROUPS: u64 = 256;
/// Longest minimum election timeout accepted, ms (the maximum is twice this).
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 60_000;
/// Most clicks a batch may be configured to hold: a batch of the largest valid clicks
/// must fit the 16 MiB request limit.
pub const MAX_BATCH_CLICKS: usize = 50_000;

/// The node's settings, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's Raft id; must be a key of `peers`.
    pub node_id: u64,
    /// Where the node keeps its state (`db/`, `groups/<g>/log`, `groups/<g>/snapshots`).
    pub data_dir: PathBuf,
    /// gRPC listen address (clients and Raft peers).
    pub listen: SocketAddr,
    /// HTTP listen address (JSON API, /healthz, /metrics).
    pub http: SocketAddr,
    /// Every initial member: node id → the gRPC address the others dial.
    pub peers: BTreeMap<u64, String>,
    /// Where this node dials some peers instead of their `peers` address (a proxy, a
    /// tunnel, NAT): node id → HOST:PORT. Only this node's outgoing connections change;
    /// the membership, leader hints, the shard map and ClusterStatus keep the `peers`
    /// addresses. Each id is another member (never this node).
    pub peer_routes: BTreeMap<u64, String>,
    /// Data groups (the metadata group 0 comes on top).
    pub groups: u64,
    /// Raft heartbeat interval, ms.
    pub raft_heartbeat_ms: u64,
    /// Minimum election timeout, ms (the maximum is twice this).
    pub raft_election_timeout_ms: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot so slow followers can catch up without one.
    pub snapshot_keep_logs: u64,
    /// Log segment size, bytes.
    pub log_segment_bytes: u64,
    /// Clicks the node accepts in flight from clients before it answers
    /// RESOURCE_EXHAUSTED.
    pub max_inflight_clicks: usize,
    /// Most clicks in one ingest request.
    pub max_batch_clicks: usize,
    /// How long a client request may wait for Raft (leader election, commit, apply), ms.
    pub request_timeout_ms: u64,
    /// The fault switches (`--fault-*`), all off by default.
    #[cfg(feature = "fault-injection")]
    pub fault: FaultConfig,
}

/// The fault switches of a `fault-injection` build: deliberately broken behaviour for the
/// fault suite, whose checker must be shown to catch it. `Default` is all off.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// Added to the time a leader stamps on the ingest entries it proposes, ms (its clock
    /// is wrong); changeable at runtime (`POST /fault/clock-skew?ms=N`).
    pub clock_skew_ms: i64,
    /// The state machine's dedup lookup never finds an id: retries count again.
    pub no_dedup: bool,
    /// A leader answers the valid clicks of an ingest part `Accepted` as soon as it hands
    /// the entry to Raft, without waiting for commit or apply.
    pub ack_before_commit: bool,
    /// The logs' group commit reports appends durable without fsync.
    pub skip_fsync: bool,
    /// The logs keep a crash journal (`<data-dir>/fault-crash-journal`) so a harness can
    /// emulate a power loss after a kill (`adclick_storage::log::crash::drop_unsynced`).
    pub crash_journal: bool,
}

#[cfg(feature = "fault-injection")]
impl FaultConfig {
    /// The switches that are on, as their flags (for the startup warning).
    pub fn active(&self) -> Vec<String> {
        let mut on = Vec::new();
        if self.clock_skew_ms != 0 {
            on.push(format!("--fault-clock-skew-ms {}", self.clock_skew_ms));
        }
        for (set, flag) in [
            (self.no_dedup, "--fault-no-dedup"),
            (self.ack_before_commit, "--fault-ack-before-commit"),
            (self.skip_fsync, "--fault-skip-fsync"),
            (self.crash_journal, "--fault-crash-journal"),
        ] {
            if set {
                on.push(flag.to_owned());
            }
        }
        on
    }
}

/// Command-line flags of `adclickd`. Each may also be set in the `--config` file under the
/// same name with `_` for `-` (e.g. `node_id = 1`); a flag given on the command line wins.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "adclickd", version, about = "adclick server node")]
pub struct Flags {
    /// TOML file with any of the settings below.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id (a key of --peers).
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,
    /// Directory for the node's data (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC address to listen on, for clients and Raft peers.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// HTTP address to listen on (JSON API, /healthz, /metrics).
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<SocketAddr>,
    /// All initial members, this node included: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// Dial peer ID at HOST:PORT instead of its --peers address (a proxy, tunnel or NAT);
    /// the membership keeps the --peers address. Same form as --peers; only other members.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub peer_route: Option<String>,
    /// Number of data groups [default: 4].
    #[arg(long, value_name = "G")]
    pub groups: Option<u64>,
    /// Raft heartbeat interval in ms [default: 100].
    #[arg(long, value_name = "MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Minimum Raft election timeout in ms; the maximum is twice this [default: 1000].
    #[arg(long, value_name = "MS")]
    pub raft_election_timeout_ms: Option<u64>,
    /// Build a state-machine snapshot every N log entries [default: 20000].
    #[arg(long, value_name = "N")]
    pub snapshot_logs: Option<u64>,
    /// Log entries kept behind a snapshot [default: 1000].
    #[arg(long, value_name = "N")]
    pub snapshot_keep_logs: Option<u64>,
    /// Log segment size in bytes [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub log_segment_bytes: Option<u64>,
    /// Clicks in flight from clients before the node answers RESOURCE_EXHAUSTED
    /// [default: 200000].
    #[arg(long, value_name = "N")]
    pub max_inflight_clicks: Option<usize>,
    /// Most clicks in one ingest request [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_batch_clicks: Option<usize>,
    /// How long a request may wait for Raft, ms [default: 10000].
    #[arg(long, value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// FAULT INJECTION: a leader adds MS to the time it stamps on ingest entries (its clock
    /// is wrong); also `POST /fault/clock-skew?ms=N` [default: 0].
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub fault_clock_skew_ms: Option<i64>,
    /// FAULT INJECTION: the state machine never finds an event id in its dedup index, so
    /// retried and duplicated clicks are counted again.
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    pub fault_no_dedup: bool,
    /// FAULT INJECTION: a leader answers clicks ACCEPTED once the entry is handed to Raft,
    /// before commit and apply.
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    pub fault_ack_before_commit: bool,
    /// FAULT INJECTION: the logs' group commit reports appends durable without fsync.
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    pub fault_skip_fsync: bool,
    /// FAULT INJECTION: journal what a power loss would keep of the log files
    /// (`<data-dir>/fault-crash-journal`), for a harness to emulate one after a kill.
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    pub fault_crash_journal: bool,
}

/// The `--config` file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
    /// Either the flag's string form or a table `{ 1 = "host:port", ... }`.
    peers: Option<PeersValue>,
    /// Same forms as `peers`.
    peer_route: Option<PeersValue>,
    groups: Option<u64>,
    raft_heartbeat_ms: Option<u64>,
    raft_election_timeout_ms: Option<u64>,
    snapshot_logs: Option<u64>,
    snapshot_keep_logs: Option<u64>,
    log_segment_bytes: Option<u64>,
    max_inflight_clicks: Option<usize>,
    max_batch_clicks: Option<usize>,
    request_timeout_ms: Option<u64>,
    #[cfg(feature = "fault-injection")]
    fault_clock_skew_ms: Option<i64>,
    #[cfg(feature = "fault-injection")]
    fault_no_dedup: Option<bool>,
    #[cfg(feature = "fault-injection")]
    fault_ack_before_commit: Option<bool>,
    #[cfg(feature = "fault-injection")]
    fault_skip_fsync: Option<bool>,
    #[cfg(feature = "fault-injection")]
    fault_crash_journal: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PeersValue {
    Text(String),
    Table(BTreeMap<String, String>),
}

/// A configuration problem, for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Parses `1=host:port,2=host:port` (the form of `--peers`).
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    parse_id_map(text, "peer")
}

/// Parses `--peer-route`: the form of `--peers`.
pub fn parse_peer_routes(text: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    parse_id_map(text, "peer route")
}

/// Parses `ID=HOST:PORT,...`; `what` names an item in errors.
fn parse_id_map(text: &str, what: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut map = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, addr)) = part.split_once('=') else {
            return err(format!("{what} {part:?}: expected ID=HOST:PORT"));
        };
        let id = parse_peer_id(id, what)?;
        insert_addr(&mut map, id, addr.trim(), what)?;
    }
    Ok(map)
}

/// The map a `peers`-like key of the file or its flag gives: the flag wins; `None` when
/// neither is set.
fn resolve_id_map(
    flag: Option<String>,
    file: Option<PeersValue>,
    what: &str,
) -> Result<Option<BTreeMap<u64, String>>, ConfigError> {
    Ok(Some(match (flag, file) {
        (Some(text), _) | (None, Some(PeersValue::Text(text))) => parse_id_map(&text, what)?,
        (None, Some(PeersValue::Table(table))) => {
            let mut map = BTreeMap::new();
            for (id, addr) in table {
                insert_addr(&mut map, parse_peer_id(&id, what)?, &addr, what)?;
            }
            map
        }
        (None, None) => return Ok(None),
    }))
}

fn parse_peer_id(id: &str, what: &str) -> Result<u64, ConfigError> {
    match id.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => err(format!("{what} id {id:?}: expected a positive integer")),
    }
}

fn insert_addr(
    map: &mut BTreeMap<u64, String>,
    id: u64,
    addr: &str,
    what: &str,
) -> Result<(), ConfigError> {
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return err(format!("{what} {id}: address {addr:?} is not HOST:PORT"));
    }
    if map.insert(id, addr.to_owned()).is_some() {
        return err(format!("{what} {id} is listed twice"));
    }
    Ok(())
}

impl Config {
    /// Resolves flags over the `--config` file over the defaults, and validates.
    pub fn resolve(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let Some(peers) = resolve_id_map(flags.peers, file.peers, "peer")? else {
            return err("--peers is required (e.g. 1=127.0.0.1:7401,...)");
        };
        let peer_routes =
            resolve_id_map(flags.peer_route, file.peer_route, "peer route")?.unwrap_or_default();
        let Some(node_id) = flags.node_id.or(file.node_id) else {
            return err("--node-id is required");
        };
        let Some(data_dir) = flags.data_dir.or(file.data_dir) else {
            return err("--data-dir is required");
        };
        let Some(listen) = flags.listen.or(file.listen) else {
            return err("--listen is required");
        };
        let Some(http) = flags.http.or(file.http) else {
            return err("--http is required");
        };
        let config = Config {
            node_id,
            data_dir,
            listen,
            http,
            peers,
            peer_routes,
            groups: flags.groups.or(file.groups).unwrap_or(DEFAULT_GROUPS),
            raft_heartbeat_ms: flags
                .raft_heartbeat_ms
                .or(file.raft_heartbeat_ms)
                .unwrap_or(100),
            raft_election_timeout_ms: flags
                .raft_election_timeout_ms
                .or(file.raft_election_timeout_ms)
                .unwrap_or(1000),
            snapshot_logs: flags.snapshot_logs.or(file.snapshot_logs).unwrap_or(20_000),
            snapshot_keep_logs: flags
                .snapshot_keep_logs
                .or(file.snapshot_keep_logs)
                .unwrap_or(1000),
            log_segment_bytes: flags
                .log_segment_bytes
                .or(file.log_segment_bytes)
                .unwrap_or(adclick_storage::log::DEFAULT_SEGMENT_SIZE),
            max_inflight_clicks: flags
                .max_inflight_clicks
                .or(file.max_inflight_clicks)
                .unwrap_or(200_000),
            max_batch_clicks: flags
                .max_batch_clicks
                .or(file.max_batch_clicks)
                .unwrap_or(10_000),
            request_timeout_ms: flags
                .request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(10_000),
            // A switch is on when its flag is given or the file turns it on.
            #[cfg(feature = "fault-injection")]
            fault: FaultConfig {
                clock_skew_ms: flags
                    .fault_clock_skew_ms
                    .or(file.fault_clock_skew_ms)
                    .unwrap_or(0),
                no_dedup: flags.fault_no_dedup || file.fault_no_dedup.unwrap_or(false),
                ack_before_commit: flags.fault_ack_before_commit
                    || file.fault_ack_before_commit.unwrap_or(false),
                skip_fsync: flags.fault_skip_fsync || file.fault_skip_fsync.unwrap_or(false),
                crash_journal: flags.fault_crash_journal
                    || file.fault_crash_journal.unwrap_or(false),
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.peers.contains_key(&self.node_id) {
            return err(format!(
                "--node-id {} is not one of --peers ({})",
                self.node_id,
                self.peers
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for id in self.peer_routes.keys() {
            if *id == self.node_id {
                return err(format!(
                    "--peer-route {id}: a node never dials itself; route only other members"
                ));
            }
            if !self.peers.contains_key(id) {
                return err(format!(
                    "--peer-route {id}: node {id} is not one of --peers"
                ));
            }
        }
        if !(1..=MAX_GROUPS).contains(&self.groups) {
            return err(format!("--groups must be 1 to {MAX_GROUPS}"));
        }
        let mut addrs: Vec<&String> = self.peers.values().collect();
        addrs.sort();
        if let Some(w) = addrs.windows(2).find(|w| w[0] == w[1]) {
            return err(format!("two peers share the address {}", w[0]));
        }
        if self.raft_election_timeout_ms > MAX_ELECTION_TIMEOUT_MS {
            return err(format!(
                "--raft-election-timeout-ms must be at most {MAX_ELECTION_TIMEOUT_MS}"
            ));
        }
        if self.max_batch_clicks > MAX_BATCH_CLICKS {
            return err(format!(
                "--max-batch-clicks must be at most {MAX_BATCH_CLICKS} (a batch must fit one \
                 16 MiB request)"
            ));
        }
        if self.raft_heartbeat_ms == 0 || self.raft_election_timeout_ms <= self.raft_heartbeat_ms {
            return err(
                "--raft-election-timeout-ms must be greater than --raft-heartbeat-ms (> 0)",
            );
        }
        if self.snapshot_logs == 0 {
            return err("--snapshot-logs must be positive");
        }
        if self.log_segment_bytes < 4096 {
            return err("--log-segment-bytes must be at least 4096");
        }
        if self.max_batch_clicks == 0 || self.max_inflight_clicks < self.max_batch_clicks {
            return err("--max-inflight-clicks must be at least --max-batch-clicks (> 0)");
        }
        if self.request_timeout_ms == 0 {
            return err("--request-timeout-ms must be positive");
        }
        Ok(())
    }

    /// The address peers and clients dial for this node (its `--peers` entry).
    pub fn advertised_addr(&self) -> &str {
        self.peers.get(&self.node_id).map_or("", String::as_str)
    }

    /// Directory of group `g`'s log.
    pub fn log_dir(&self, group: u64) -> PathBuf {
        self.data_dir
            .join("groups")
            .join(group.to_string())
            .join("log")
    }

    /// Directory of group `g`'s snapshots.
    pub fn snapshot_dir(&self, group: u64) -> PathBuf {
        self.data_dir
            .join("groups")
            .join(group.to_string())
            .join("snapshots")
    }

    /// The node's RocksDB (every group's state machine).
    pub fn db_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            node_id: Some(2),
            data_dir: Some("/tmp/x".into()),
            listen: Some("127.0.0.1:7402".parse().expect("addr")),
            http: Some("127.0.0.1:8402".parse().expect("addr")),
            peers: Some("1=127.0.0.1:7401, 2=127.0.0.1:7402,3=localhost:7403".into()),
            ..Flags::default()
        }
    }

    #[test]
    fn flags_resolve_with_defaults() {
        let c = Config::resolve(flags()).expect("valid");
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.peers[&3], "localhost:7403");
        assert_eq!(c.groups, DEFAULT_GROUPS);
        assert_eq!(c.advertised_addr(), "127.0.0.1:7402");
        assert_eq!(c.log_dir(3), PathBuf::from("/tmp/x/groups/3/log"));
    }

    #[test]
    fn bad_peers_are_refused_with_the_reason() {
        for (text, want) in [
            ("1=127.0.0.1:7401,1=127.0.0.1:7402", "listed twice"),
            ("x=127.0.0.1:7401", "positive integer"),
            ("0=127.0.0.1:7401", "positive integer"),
            ("1=127.0.0.1", "HOST:PORT"),
            ("1", "ID=HOST:PORT"),
        ] {
            let e = parse_peers(text).expect_err(text);
            assert!(e.0.contains(want), "{text}: {e}");
        }
        let mut f = flags();
        f.peers = Some("1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7402".into());
        let e = Config::resolve(f).expect_err("shared address");
        assert!(e.0.contains("share the address"), "{e}");
        let mut f = flags();
        f.raft_election_timeout_ms = Some(u64::MAX / 2 + 1);
        let e = Config::resolve(f).expect_err("overflowing timeout");
        assert!(e.0.contains("at most"), "{e}");
        let mut f = flags();
        f.max_batch_clicks = Some(1_000_000);
        f.max_inflight_clicks = Some(2_000_000);
        let e = Config::resolve(f).expect_err("huge batches");
        assert!(e.0.contains("at most"), "{e}");
        let mut f = flags();
        f.node_id = Some(9);
        let e = Config::resolve(f).expect_err("not a peer");
        assert!(e.0.contains("not one of --peers"), "{e}");
    }

    #[test]
    fn peer_routes_parse_and_default_to_none() {
        assert!(Config::resolve(flags())
            .expect("valid")
            .peer_routes
            .is_empty());
        let mut f = flags();
        f.peer_route = Some("1=127.0.0.1:9401, 3=proxy.local:9403".into());
        let c = Config::resolve(f).expect("valid");
        assert_eq!(
            c.peer_routes,
            BTreeMap::from([
                (1, "127.0.0.1:9401".to_owned()),
                (3, "proxy.local:9403".to_owned())
            ])
        );
        assert_eq!(
            c.peers[&1], "127.0.0.1:7401",
            "the membership keeps the canonical address"
        );
        assert_eq!(c.advertised_addr(), "127.0.0.1:7402");
    }

    #[test]
    fn bad_peer_routes_are_refused_with_the_reason() {
        for (text, want) in [
            (
                "1=127.0.0.1:9401,1=127.0.0.1:9402",
                "peer route 1 is listed twice",
            ),
            ("x=127.0.0.1:9401", "positive integer"),
            ("1=127.0.0.1", "HOST:PORT"),
            ("1=:9401", "HOST:PORT"),
            ("1", "ID=HOST:PORT"),
            ("2=127.0.0.1:9402", "never dials itself"),
            ("9=127.0.0.1:9409", "not one of --peers"),
        ] {
            let mut f = flags();
            f.peer_route = Some(text.into());
            let e = Config::resolve(f).expect_err(text);
            assert!(e.0.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn file_peer_routes_take_both_forms_and_the_flag_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        let base = "node_id = 1\ndata_dir = \"/data\"\nlisten = \"127.0.0.1:1\"\n\
                    http = \"127.0.0.1:2\"\npeers = \"1=127.0.0.1:1,2=127.0.0.1:3\"\n";
        let resolve = |extra: &str, flag: Option<&str>| {
            std::fs::write(&path, format!("{base}{extra}")).expect("write");
            Config::resolve(Flags {
                config: Some(path.clone()),
                peer_route: flag.map(str::to_owned),
                ..Flags::default()
            })
        };
        let c = resolve("peer_route = \"2=127.0.0.1:9\"\n", None).expect("text form");
        assert_eq!(c.peer_routes[&2], "127.0.0.1:9");
        let c = resolve("[peer_route]\n2 = \"127.0.0.1:8\"\n", None).expect("table form");
        assert_eq!(c.peer_routes[&2], "127.0.0.1:8");
        let c =
            resolve("[peer_route]\n2 = \"127.0.0.1:8\"\n", Some("2=127.0.0.1:7")).expect("flag");
        assert_eq!(c.peer_routes[&2], "127.0.0.1:7", "the flag wins");
        let e = resolve("[peer_route]\n1 = \"127.0.0.1:8\"\n", None).expect_err("self");
        assert!(e.0.contains("never dials itself"), "{e}");
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn a_production_build_has_no_fault_switches() {
        for flag in [
            "--fault-no-dedup",
            "--fault-ack-before-commit",
            "--fault-skip-fsync",
            "--fault-crash-journal",
        ] {
            assert!(Flags::try_parse_from(["adclickd", flag]).is_err(), "{flag}");
        }
        assert!(Flags::try_parse_from(["adclickd", "--fault-clock-skew-ms", "5"]).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "fault_no_dedup = true\n").expect("write");
        let e = Config::resolve(Flags {
            config: Some(path),
            ..flags()
        })
        .expect_err("unknown key");
        assert!(e.0.contains("fault_no_dedup"), "{e}");
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn fault_switches_are_off_by_default_and_set_by_flags_or_file() {
        let c = Config::resolve(flags()).expect("valid");
        assert_eq!(c.fault, FaultConfig::default());
        assert!(c.fault.active().is_empty());

        let args = [
            "adclickd",
            "--fault-clock-skew-ms",
            "-90000",
            "--fault-no-dedup",
            "--fault-ack-before-commit",
            "--fault-skip-fsync",
            "--fault-crash-journal",
        ];
        let parsed = Flags::try_parse_from(args).expect("flags parse");
        let c = Config::resolve(Flags {
            fault_clock_skew_ms: parsed.fault_clock_skew_ms,
            fault_no_dedup: parsed.fault_no_dedup,
            fault_ack_before_commit: parsed.fault_ack_before_commit,
            fault_skip_fsync: parsed.fault_skip_fsync,
            fault_crash_journal: parsed.fault_crash_journal,
            ..flags()
        })
        .expect("valid");
        assert_eq!(
            c.fault,
            FaultConfig {
                clock_skew_ms: -90_000,
                no_dedup: true,
                ack_before_commit: true,
                skip_fsync: true,
                crash_journal: true,
            }
        );
        assert_eq!(c.fault.active().len(), 5);
        assert_eq!(c.fault.active()[0], "--fault-clock-skew-ms -90000");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "fault_clock_skew_ms = 5000\nfault_skip_fsync = true\n",
        )
        .expect("write");
        let c = Config::resolve(Flags {
            config: Some(path),
            fault_clock_skew_ms: Some(7),
            ..flags()
        })
        .expect("valid");
        assert_eq!((c.fault.clock_skew_ms, c.fault.skip_fsync), (7, true));
        assert!(!c.fault.no_dedup);
    }

    #[test]
    fn file_supplies_keys_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = 1\ndata_dir = \"/data\"\nlisten = \"127.0.0.1:1\"\nhttp = \"127.0.0.1:2\"\n\
             groups = 8\n[peers]\n1 = \"127.0.0.1:1\"\n2 = \"127.0.0.1:3\"\n",
        )
        .expect("write");
        let c = Config::resolve(Flags {
            config: Some(path.clone()),
            groups: Some(2),
            ..Flags::default()
        })
        .expect("valid");
        assert_eq!(c.node_id, 1);
        assert_eq!(c.groups, 2, "the flag wins over the file");
        assert_eq!(c.peers.len(), 2);
        std::fs::write(&path, "nodeid = 1\n").expect("write");
        let e = Config::resolve(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .expect_err("unknown key");
        assert!(e.0.contains("nodeid"), "{e}");
    }
}
