//! Tests of the segmented log, by concern. They drive the synchronous core directly (the
//! openraft adapters are thin and covered by `storage/tests/log_openraft_suite.rs`).

mod basic;
mod crafted;
#[cfg(feature = "fault-injection")]
mod crash;
mod group_commit;
mod import;
mod lock;
mod model;
mod recovery;
mod retention;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adclick_proto::model::{AdId, Click, EventId};
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::IOFlushed;
use openraft::type_config::TypeConfigExt;
use openraft::EntryPayload;
use tokio::sync::oneshot;

use super::{FaultyFs, FileSystem, FsOp, LogConfig, LogStore, RetentionPolicy, StdFs};
use crate::types::{Command, Entry, IngestBatch, LogId, TypeConfig, Vote};

/// Log id with leader node 1.
fn id(term: u64, index: u64) -> LogId {
    crate::types::log_id(term, 1, index)
}

fn vote(term: u64) -> Vote {
    Vote {
        leader_id: LeaderId { term, node_id: 1 },
        committed: true,
    }
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Blank,
    }
}

/// An ingest entry of `clicks` small clicks.
fn ingest(term: u64, index: u64, clicks: usize) -> Entry {
    let proposed_at_ms = 1_720_483_200_000 + index as i64;
    let clicks = (0..clicks)
        .map(|i| Click {
            event_id: EventId::new(format!("evt-{index}-{i:08}").into_bytes())
                .expect("valid event id"),
            ad_id: AdId::new(&format!("ad{:03}", i % 50)).expect("valid ad id"),
            event_time_ms: proposed_at_ms - 1_000,
            user_id: format!("user-{i}"),
            ip: "207.148.22.22".parse().expect("valid ip"),
            country: "USA".into(),
        })
        .collect();
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Normal(Command::Ingest(IngestBatch {
            proposed_at_ms,
            clicks,
        })),
    }
}

/// A config with no retention (tests that want it set it) and the given segment size.
fn config(dir: &Path, segment_size: u64) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_size = segment_size;
    c.retention = RetentionPolicy {
        max_age: None,
        max_bytes: None,
    };
    c
}

fn open(dir: &Path, segment_size: u64) -> LogStore {
    LogStore::open(config(dir, segment_size)).expect("open log")
}

fn open_fs(dir: &Path, segment_size: u64, fs: &FaultyFs) -> LogStore {
    let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
    LogStore::open_with_fs(config(dir, segment_size), fs).expect("open log")
}

fn callback() -> (IOFlushed<TypeConfig>, oneshot::Receiver<io::Result<()>>) {
    let (tx, rx) = TypeConfig::oneshot();
    (IOFlushed::signal(tx), rx)
}

/// Appends and waits until the entries are durable.
fn append(store: &LogStore, entries: Vec<Entry>) {
    let (cb, rx) = callback();
    store.shared.append(entries, cb).expect("append");
    rx.blocking_recv()
        .expect("callback fired")
        .expect("append is durable");
}

/// Appends `blank(term, i)` for every `i` in `range`, one entry per call.
fn append_blanks(store: &LogStore, term: u64, range: std::ops::Range<u64>) {
    for i in range {
        append(store, vec![blank(term, i)]);
    }
}

/// Log ids of every entry Raft can read.
fn ids(store: &LogStore) -> Vec<LogId> {
    store
        .shared
        .read_entries(0, u64::MAX, usize::MAX)
        .expect("read entries")
        .into_iter()
        .map(|e| e.log_id)
        .collect()
}

/// Log ids of every entry a raw reader returns.
fn raw_ids(store: &LogStore) -> Vec<LogId> {
    store
        .raw_reader()
        .entries(..)
        .expect("raw reader")
        .map(|e| e.expect("raw entry").log_id)
        .collect()
}

/// Segment files in `dir`, sorted.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn std_fs() -> Arc<dyn FileSystem> {
    Arc::new(StdFs)
}
