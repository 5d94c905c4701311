//! Reading a stopped node's data directory with the storage engine itself.
//!
//! A node keeps `<data-dir>/db` (RocksDB with every group's state machine),
//! `<data-dir>/groups/<g>/log` (group `g`'s segmented Raft log) and
//! `<data-dir>/groups/<g>/snapshots`. Group 0 is the metadata group; data groups are
//! `1..=G`. The node must be stopped: the log directory and the database are locked while
//! a process has them open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adclick_proto::model::{AdId, Minute, MinuteRange};
use adclick_storage::log::{LogConfig, LogStore};
use adclick_storage::sm::{open_db, SmOptions, SmReader, StateDigest, StateMachine};
use adclick_storage::types::Entry;
use anyhow::{ensure, Context};

/// `<data-dir>/db`.
pub fn db_path(node_dir: &Path) -> PathBuf {
    node_dir.join("db")
}

/// `<data-dir>/groups/<g>/log`.
pub fn log_dir(node_dir: &Path, group: u64) -> PathBuf {
    node_dir.join("groups").join(group.to_string()).join("log")
}

/// `<data-dir>/groups/<g>/snapshots`.
pub fn snapshot_dir(node_dir: &Path, group: u64) -> PathBuf {
    node_dir
        .join("groups")
        .join(group.to_string())
        .join("snapshots")
}

/// What a group's raw log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLog {
    /// Index of the first committed entry the raw store serves.
    pub first: Option<u64>,
    /// Index of the last committed entry the raw store serves.
    pub last: Option<u64>,
    /// How many entries it serves.
    pub entries: u64,
    /// Missing index ranges `[from, to)` between `first` and `last`.
    pub gaps: Vec<(u64, u64)>,
    /// The last index Raft purged (covered by a snapshot), if any.
    pub last_purged: Option<u64>,
    /// The last index in the log (committed or not).
    pub last_log: Option<u64>,
    /// Number of segment files.
    pub segments: usize,
}

/// Opens group `group`'s log in `node_dir` and walks its raw entries.
pub fn raw_log(node_dir: &Path, group: u64) -> anyhow::Result<RawLog> {
    let dir = log_dir(node_dir, group);
    ensure!(dir.is_dir(), "no log directory {}", dir.display());
    let store = LogStore::open(LogConfig::new(&dir))
        .with_context(|| format!("opening {}", dir.display()))?;
    let state = store.log_state()?;
    let raw = store.raw_reader();
    let segments = raw.segments()?.len();
    let mut out = RawLog {
        first: None,
        last: None,
        entries: 0,
        gaps: Vec::new(),
        last_purged: state.last_purged_log_id.map(|l| l.index),
        last_log: state.last_log_id.map(|l| l.index),
        segments,
    };
    for entry in raw.entries(..)? {
        let index = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .log_id
            .index;
        match out.last {
            None => out.first = Some(index),
            Some(prev) if index != prev + 1 => out.gaps.push((prev + 1, index)),
            Some(_) => {}
        }
        out.last = Some(index);
        out.entries += 1;
    }
    Ok(out)
}

/// The state digest of each of `groups` in the node's database.
pub fn state_digests(
    node_dir: &Path,
    groups: &[u64],
) -> anyhow::Result<BTreeMap<u64, StateDigest>> {
    let mut out = BTreeMap::new();
    for (g, reader) in group_readers(node_dir, groups)? {
        out.insert(g, reader.digest()?);
    }
    Ok(out)
}

/// A reader of each of `groups`' state in the node's database.
fn group_readers(node_dir: &Path, groups: &[u64]) -> anyhow::Result<Vec<(u64, SmReader)>> {
    let path = db_path(node_dir);
    let db = open_db(&path).with_context(|| format!("opening {}", path.display()))?;
    groups
        .iter()
        .map(|&g| {
            let sm = StateMachine::open(
                db.clone(),
                g,
                snapshot_dir(node_dir, g),
                SmOptions::default(),
            )
            .with_context(|| format!("opening group {g}'s state in {}", path.display()))?;
            Ok((g, sm.reader()))
        })
        .collect()
}

/// Every committed entry group `group`'s raw log in `node_dir` serves, in index order.
pub fn raw_entries(node_dir: &Path, group: u64) -> anyhow::Result<Vec<Entry>> {
    let dir = log_dir(node_dir, group);
    ensure!(dir.is_dir(), "no log directory {}", dir.display());
    let store = LogStore::open(LogConfig::new(&dir))
        .with_context(|| format!("opening {}", dir.display()))?;
    let raw = store.raw_reader();
    let mut out = Vec::new();
    for entry in raw.entries(..)? {
        out.push(entry.with_context(|| format!("reading {}", dir.display()))?);
    }
    Ok(out)
}

/// One group's state on a stopped node: its digest, its counter for each of `ads` in each
/// minute of `minutes` (zeros left out), and its total per ad over every minute.
#[derive(Debug, Clone)]
pub struct GroupCounters {
    /// The state digest (with the applied id).
    pub digest: StateDigest,
    /// `(ad, minute)` → clicks counted.
    pub buckets: BTreeMap<(String, Minute), u64>,
    /// Ad → clicks counted in any minute from 1970 to 2070 (every ad the group has).
    pub totals: BTreeMap<String, u64>,
}

/// The minutes [`GroupCounters::totals`] covers: 1970-01-01 up to 2070-01-01.
const ALL_MINUTES: MinuteRange = MinuteRange {
    from: Minute(0),
    to: Minute(36_525 * 24 * 60),
};

/// [`GroupCounters`] of each of `groups` in the node's database.
pub fn group_counters(
    node_dir: &Path,
    groups: &[u64],
    ads: &[String],
    minutes: MinuteRange,
) -> anyhow::Result<BTreeMap<u64, GroupCounters>> {
    let ad_ids = ads
        .iter()
        .map(|a| AdId::new(a).with_context(|| format!("ad id {a:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut out = BTreeMap::new();
    for (g, reader) in group_readers(node_dir, groups)? {
        let mut buckets = BTreeMap::new();
        for ad in &ad_ids {
            for m in minutes.from.0..minutes.to.0 {
                let one = MinuteRange {
                    from: Minute(m),
                    to: Minute(m + 1),
                };
                let n = reader.count(ad, one, None)?.count;
                if n > 0 {
                    buckets.insert((ad.as_str().to_owned(), Minute(m)), n);
                }
            }
        }
        let totals = reader
            .top(usize::MAX, ALL_MINUTES, None)?
            .rows
            .into_iter()
            .map(|r| (r.ad_id.as_str().to_owned(), r.count))
            .collect();
        out.insert(
            g,
            GroupCounters {
                digest: reader.digest()?,
                buckets,
                totals,
            },
        );
    }
    Ok(out)
}
