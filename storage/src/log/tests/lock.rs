//! The directory lock: one open log per directory, across processes and within one;
//! released when the store is dropped, even while readers or background work remain.

use std::time::SystemTime;

use openraft::storage::RaftLogStorage;

use super::*;
use crate::Error;

#[test]
fn a_second_open_of_a_directory_fails_naming_it_until_the_first_store_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..3);
    for attempt in [
        LogStore::open(config(dir.path(), 1 << 20)),
        LogStore::open_with_fs(config(dir.path(), 1 << 20), Arc::new(FaultyFs::default())),
    ] {
        match attempt {
            Err(Error::Io { context, source }) => {
                assert_eq!(source.kind(), io::ErrorKind::WouldBlock);
                assert!(
                    context.contains(&dir.path().display().to_string()),
                    "{context}"
                );
                assert!(context.contains("in use"), "{context}");
            }
            Err(e) => panic!("expected the lock to be refused, got {e}"),
            Ok(_) => panic!("a second store opened a locked directory"),
        }
    }
    // The failed opens changed nothing; the first store still works.
    append_blanks(&store, 1, 3..4);
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(ids(&store).len(), 4);
}

#[test]
fn readers_that_outlive_the_store_do_not_keep_the_directory_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..3);
    store.shared.save_committed(Some(id(1, 2))).expect("commit");
    let raw = store.raw_reader();
    let reader = store.reader();
    drop(store);
    let reopened = open(dir.path(), 1 << 20);
    assert_eq!(ids(&reopened).len(), 3);
    let old: Vec<_> = raw
        .entries(..)
        .expect("raw")
        .map(|e| e.expect("entry").log_id)
        .collect();
    assert_eq!(old, (0..3).map(|i| id(1, i)).collect::<Vec<_>>());
    drop(reader);
}

#[test]
fn dropping_the_store_joins_background_retention_so_the_directory_reopens_at_once() {
    // A Raft purge starts retention in the background; it must not keep the directory
    // locked (or keep moving files) once the store is gone.
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let mut c = config(dir.path(), 1024);
    c.retention.max_bytes = Some(1);
    c.archive_dir = Some(archive.path().to_path_buf());
    let mut store = LogStore::open_with_fs(c.clone(), Arc::new(fs.clone())).expect("open");
    for i in 0..40 {
        append(&store, vec![ingest(1, i, 3)]);
    }
    store
        .shared
        .save_committed(Some(id(1, 39)))
        .expect("commit");
    // Copies (an archive on "another file system") make the background pass slow.
    fs.fail_renames_from(Some(dir.path().to_path_buf()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(RaftLogStorage::purge(&mut store, id(1, 30)))
        .expect("purge");
    drop(store);

    let reopened = LogStore::open(c).expect("the directory is unlocked once the store is dropped");
    let listed: Vec<PathBuf> = reopened
        .raw_reader()
        .segments()
        .expect("segments")
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(listed, segment_files(dir.path()));
    let tmps = std::fs::read_dir(archive.path())
        .expect("list archive")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        })
        .count();
    assert_eq!(tmps, 0, "no half-made copy is left behind");
    // Nothing runs in the background any more: a pass now sees a quiet directory.
    reopened
        .apply_retention(SystemTime::now())
        .expect("retention");
    assert_eq!(
        ids(&reopened),
        (31..40).map(|i| id(1, i)).collect::<Vec<_>>()
    );
}
