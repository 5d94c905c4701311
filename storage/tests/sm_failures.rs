//! The state machine when something around it misbehaves: the entry stream fails
//! mid-apply, a peer sends a well-formed snapshot of nonsense or of another group, a
//! snapshot file lives in someone else's directory, and a snapshot build races an install.

mod common;

use common::{all_time, click, log_id, GROUP, MIN, T0};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use adclick_proto::model::{AdId, Click, Minute};
use adclick_storage::sm::format::{self, meta, tag};
use adclick_storage::sm::snapshot::{SnapshotReader, SnapshotWriter};
use adclick_storage::sm::{open_db, IncomingSnapshot, SmOptions, SnapshotFile, StateMachine};
use adclick_storage::types::{Command, Entry, FilterDef, IngestBatch, SnapshotMeta};
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;

fn ingest(index: u64, at: i64, clicks: Vec<Click>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Ingest(IngestBatch {
            proposed_at_ms: at,
            clicks,
        })),
    }
}

fn open(dir: &Path, group: u64, opts: SmOptions) -> StateMachine {
    let db = open_db(&dir.join("db")).expect("open db");
    StateMachine::open(db, group, dir.join("snapshots"), opts).expect("open state machine")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// A group with a filter, counters over several minutes, late tallies and dedup ids;
/// `clicks` accepted clicks in all.
fn populated(dir: &Path, group: u64, clicks: usize) -> StateMachine {
    let mut sm = open(dir, group, SmOptions::default());
    let mut entries = vec![Entry {
        log_id: log_id(1),
        payload: EntryPayload::Normal(Command::CreateFilter(FilterDef {
            name: "us".into(),
            expr: "country = \"US\"".into(),
        })),
    }];
    let per_entry = 100;
    for (i, chunk) in (0..clicks)
        .collect::<Vec<_>>()
        .chunks(per_entry)
        .enumerate()
    {
        let at = T0 + i as i64 * 10_000;
        let mut batch: Vec<Click> = chunk
            .iter()
            .map(|n| click(&format!("e{n}"), &format!("ad{}", n % 7), at))
            .collect();
        batch.push(click(&format!("late{i}"), "ad0", T0 - 60 * MIN));
        entries.push(ingest(i as u64 + 2, at, batch));
    }
    sm.apply_entries(entries).expect("apply");
    sm
}

fn dir_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn an_entry_stream_that_fails_midway_still_writes_the_entries_already_staged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(dir.path(), GROUP, SmOptions::default());
    runtime().block_on(async {
        let items: Vec<io::Result<_>> = vec![
            Ok((ingest(1, T0, vec![click("a", "ad1", T0)]), None)),
            Err(io::Error::other("log read failed")),
        ];
        let err = sm
            .apply(futures::stream::iter(items))
            .await
            .expect_err("the stream error is reported");
        assert_eq!(err.to_string(), "log read failed");
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id(1)));
    });
    // The view and RocksDB agree with the apply state: entry 1 is there, once.
    let r = sm.reader();
    assert_eq!(r.applied().expect("applied"), Some(log_id(1)));
    let c = r
        .count(&AdId::new("ad1").expect("ad"), all_time(), None)
        .expect("count");
    assert_eq!(c.count, 1);
    drop((r, sm));
    let sm = open(dir.path(), GROUP, SmOptions::default());
    assert_eq!(sm.applied(), Some(log_id(1)));
}

#[test]
fn installing_a_snapshot_from_another_directory_leaves_the_source_in_place() {
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let mut a = populated(a_dir.path(), GROUP, 300);
    let snap = a.snapshot_builder().build_blocking().expect("build");
    let source = snap.snapshot.path().to_path_buf();
    let mut b = open(b_dir.path(), GROUP, SmOptions::default());
    b.install_snapshot_file(&snap.meta, snap.snapshot)
        .expect("install");
    assert!(source.exists(), "the source snapshot was taken away");
    let rt = runtime();
    let a_current = rt
        .block_on(a.get_current_snapshot())
        .expect("current")
        .expect("the builder's snapshot is still its current one");
    assert_eq!(a_current.meta, snap.meta);
    let b_current = rt
        .block_on(b.get_current_snapshot())
        .expect("current")
        .expect("installed snapshot kept");
    assert_eq!(b_current.meta, snap.meta);
    assert_eq!(b_current.snapshot.path().parent(), Some(b.snapshot_dir()));
    assert_eq!(
        a.reader().digest().expect("digest"),
        b.reader().digest().expect("digest")
    );
}

#[test]
fn a_snapshot_of_another_group_is_refused() {
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let a = populated(a_dir.path(), 1, 50);
    let snap = a.snapshot_builder().build_blocking().expect("build");
    let mut b = populated(b_dir.path(), 2, 20);
    let before = b.reader().digest().expect("digest");
    let err = b
        .install_snapshot_file(&snap.meta, snap.snapshot)
        .expect_err("group 1's snapshot installed into group 2");
    assert!(err.is_corruption(), "{err}");
    assert_eq!(b.reader().digest().expect("digest"), before);
    assert!(runtime()
        .block_on(b.get_current_snapshot())
        .expect("current")
        .is_none());
}

/// Every record of `snap`, as a sorted map (key without group prefix -> value).
fn records(path: &Path) -> (SnapshotMeta, BTreeMap<Vec<u8>, Vec<u8>>) {
    let mut r = SnapshotReader::new(SnapshotFile::open(path).expect("open")).expect("header");
    let mut out = BTreeMap::new();
    while let Some((k, v)) = r.next_record().expect("record") {
        out.insert(k, v);
    }
    (r.meta().clone(), out)
}

/// A well-formed snapshot file (valid crcs, ordered keys) holding exactly `recs`.
fn write_snapshot(
    dir: &Path,
    group: u64,
    meta: &SnapshotMeta,
    recs: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> PathBuf {
    let mut w = SnapshotWriter::create(dir, group, meta).expect("create");
    for (k, v) in recs {
        w.record(k, v).expect("record");
    }
    w.finish().expect("finish").0
}

fn first_key(recs: &BTreeMap<Vec<u8>, Vec<u8>>, t: u8) -> Vec<u8> {
    recs.keys()
        .find(|k| k.first() == Some(&t))
        .cloned()
        .unwrap_or_else(|| panic!("no record with tag {t:#04x}"))
}

#[test]
fn well_formed_snapshots_with_bad_contents_are_refused_before_anything_changes() {
    let (a_dir, b_dir, scratch) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
        tempfile::tempdir().expect("scratch"),
    );
    let a = populated(a_dir.path(), GROUP, 200);
    let snap = a.snapshot_builder().build_blocking().expect("build");
    let (header, good) = records(snap.snapshot.path());
    let applied = header.last_log_id.expect("applied").index;

    type Mutation = Box<dyn Fn(&mut BTreeMap<Vec<u8>, Vec<u8>>)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "counter value of 3 bytes",
            Box::new(|r| {
                let k = first_key(r, tag::COUNT);
                r.insert(k, vec![0, 0, 1]);
            }),
        ),
        (
            "counter value near u64::MAX",
            Box::new(|r| {
                let k = first_key(r, tag::COUNT);
                r.insert(k, u64::MAX.to_be_bytes().to_vec());
            }),
        ),
        (
            "applied id differs from the header",
            Box::new(|r| {
                r.insert(
                    vec![tag::META, meta::APPLIED],
                    format::encode_log_id(&log_id(1)),
                );
            }),
        ),
        (
            "applied id missing",
            Box::new(|r| {
                r.remove(&[tag::META, meta::APPLIED][..]);
            }),
        ),
        (
            "filter expression that does not compile",
            Box::new(|r| {
                let k = first_key(r, tag::FILTER);
                let mut v = vec![format::VALUE_VERSION];
                v.extend_from_slice(&1u64.to_be_bytes());
                v.extend_from_slice(b"country ==");
                r.insert(k, v);
            }),
        ),
        (
            "filter id beyond the applied index",
            Box::new(move |r| {
                let k = first_key(r, tag::FILTER);
                let rec = format::FilterRecord {
                    id: applied + 1,
                    expr: "country = \"US\"".into(),
                };
                r.insert(k, format::encode_filter(&rec));
            }),
        ),
        (
            "filter counter of an unknown filter",
            Box::new(|r| {
                let mut k = vec![tag::FILTER_COUNT];
                k.extend_from_slice(&999u64.to_be_bytes());
                k.extend_from_slice(&format::minute_bytes(Minute(5)));
                k.extend_from_slice(b"ad1");
                r.insert(k, 1u64.to_be_bytes().to_vec());
            }),
        ),
        (
            "late key whose length byte lies",
            Box::new(|r| {
                let k = first_key(r, tag::LATE);
                let v = r.remove(&k).expect("late record");
                let mut bad = k.clone();
                bad[1] += 1;
                r.insert(bad, v);
            }),
        ),
        (
            "dedup record with a value",
            Box::new(|r| {
                let k = first_key(r, tag::DEDUP);
                r.insert(k, vec![1]);
            }),
        ),
        (
            "the install marker as a record",
            Box::new(|r| {
                r.insert(vec![tag::META, meta::INSTALLING], Vec::new());
            }),
        ),
    ];

    let mut b = populated(b_dir.path(), GROUP, 10);
    let before = b.reader().digest().expect("digest");
    let b_files = dir_files(b.snapshot_dir());
    for (what, mutate) in cases {
        let mut recs = good.clone();
        mutate(&mut recs);
        let path = write_snapshot(scratch.path(), GROUP, &header, &recs);
        let file = SnapshotFile::open(&path).expect("open");
        let err = b
            .install_snapshot_file(&header, file)
            .expect_err(&format!("{what}: installed"));
        assert!(err.is_corruption(), "{what}: {err}");
        let after = b
            .reader()
            .digest()
            .unwrap_or_else(|e| panic!("{what}: group unusable after the refusal: {e}"));
        assert_eq!(after, before, "{what}: state changed");
        assert_eq!(
            dir_files(b.snapshot_dir()),
            b_files,
            "{what}: files changed"
        );
    }
    // The untouched records install fine, so each refusal above was the mutation's.
    let path = write_snapshot(scratch.path(), GROUP, &header, &good);
    b.install_snapshot_file(&header, SnapshotFile::open(&path).expect("open"))
        .expect("the unmutated snapshot installs");
    assert_eq!(
        b.reader().digest().expect("digest"),
        a.reader().digest().expect("digest")
    );
}

#[test]
fn building_a_snapshot_while_one_is_installed_never_fails() {
    // openraft runs snapshot builds concurrently with the state machine's other work and
    // treats a failed build as fatal for the node, so a build that lands in the middle of
    // an install must wait for it, not fail.
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let a = populated(a_dir.path(), GROUP, 3000);
    let snap = a.snapshot_builder().build_blocking().expect("build");
    let bytes = std::fs::read(snap.snapshot.path()).expect("read snapshot");
    let mut b = open(
        b_dir.path(),
        GROUP,
        SmOptions {
            // Many small batches: a long window in which the install is half done.
            install_batch_records: 1,
            ..SmOptions::default()
        },
    );
    b.apply_entries([ingest(1, T0, vec![click("own", "ad9", T0)])])
        .expect("apply");
    let stop = Arc::new(AtomicBool::new(false));
    let builder = {
        let (stop, builder) = (stop.clone(), b.snapshot_builder());
        std::thread::spawn(move || {
            let (mut built, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match builder.build_blocking() {
                    Ok(_) => built += 1,
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (built, failures)
        })
    };
    for _ in 0..4 {
        let mut incoming = IncomingSnapshot::create(b.snapshot_dir()).expect("incoming");
        io::Write::write_all(&mut incoming, &bytes).expect("write");
        let file = incoming.finish().expect("finish");
        b.install_snapshot_file(&snap.meta, file).expect("install");
    }
    stop.store(true, Ordering::Relaxed);
    let (built, failures) = builder.join().expect("builder thread");
    assert!(built > 0 || !failures.is_empty(), "no build ran");
    assert!(
        failures.is_empty(),
        "{} of {} builds failed, first: {:?}",
        failures.len(),
        failures.len() + built as usize,
        failures.first()
    );
    let current = runtime()
        .block_on(b.get_current_snapshot())
        .expect("current")
        .expect("a snapshot");
    assert_eq!(
        current.meta, snap.meta,
        "the newest snapshot is the install's"
    );
    assert_eq!(
        b.reader().digest().expect("digest"),
        a.reader().digest().expect("digest")
    );
}
