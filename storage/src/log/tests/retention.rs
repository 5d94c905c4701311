//! Retention: purged segments stay until the policy lets them go, then are archived or
//! deleted; live and active segments never go.

use std::time::{Duration, SystemTime};

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// 40 entries over many small segments, committed, purged up to `purge_to`.
fn filled(mut c: LogConfig, purge_to: u64) -> LogStore {
    c.segment_size = 1024;
    let store = LogStore::open_with_fs(c, std_fs()).expect("open");
    for i in 0..40 {
        append(&store, vec![ingest(1, i, 3)]);
    }
    store
        .shared
        .save_committed(Some(id(1, 39)))
        .expect("commit");
    store.shared.purge(id(1, purge_to)).expect("purge");
    store.apply_retention(SystemTime::now()).expect("retention");
    store
}

#[test]
fn expired_purged_segments_are_moved_to_the_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 1024);
    c.retention.max_age = Some(7 * DAY);
    c.archive_dir = Some(archive.path().to_path_buf());
    let store = filled(c, 25);
    let before = store.raw_reader().segments().expect("segments");
    let purged: Vec<_> = before.iter().filter(|s| s.purged).cloned().collect();
    assert!(!purged.is_empty());

    // Not old enough yet: the retention pass after the purge kept everything.
    assert_eq!(store.raw_reader().segments().expect("segments"), before);
    let out = store
        .apply_retention(SystemTime::now() + DAY)
        .expect("retention");
    assert!(out.archived.is_empty() && out.deleted.is_empty());

    let out = store
        .apply_retention(SystemTime::now() + 8 * DAY)
        .expect("retention");
    assert_eq!(out.archived.len(), purged.len());
    for (seg, moved) in purged.iter().zip(&out.archived) {
        assert!(!seg.path.exists());
        assert_eq!(
            moved,
            &archive.path().join(seg.path.file_name().expect("name"))
        );
        assert_eq!(std::fs::metadata(moved).expect("archived").len(), seg.bytes);
    }
    let after = store.raw_reader().segments().expect("segments");
    assert_eq!(after.len(), before.len() - purged.len());
    assert!(after.iter().all(|s| !s.purged));
    // Raft still reads everything unpurged; raw reads start where the archive ends.
    assert_eq!(ids(&store), (26..40).map(|i| id(1, i)).collect::<Vec<_>>());
    let first_raw = raw_ids(&store).first().map(|i| i.index);
    assert_eq!(first_raw, after.first().map(|s| s.first_index));
    drop(store);
    let store = open(dir.path(), 1024);
    assert_eq!(ids(&store).len(), 14);
}

#[test]
fn the_byte_limit_deletes_the_oldest_purged_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 1024);
    c.retention.max_bytes = Some(1);
    let store = filled(c, 15);
    // Every purged segment is gone (the limit cannot be met), every live one stayed.
    let segs = store.raw_reader().segments().expect("segments");
    assert!(segs.iter().all(|s| !s.purged), "{segs:?}");
    assert!(segs.first().is_some_and(|s| s.first_index <= 16));
    assert_eq!(ids(&store), (16..40).map(|i| id(1, i)).collect::<Vec<_>>());
    assert!(segment_files(dir.path()).len() == segs.len());
}

#[test]
fn without_a_limit_purged_segments_stay_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(config(dir.path(), 1024), 30);
    let out = store
        .apply_retention(SystemTime::now() + 365 * DAY)
        .expect("retention");
    assert_eq!(out, super::super::RetentionOutcome::default());
    assert_eq!(raw_ids(&store).len(), 40);
}

#[test]
fn the_segment_being_written_is_never_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 1024);
    c.retention.max_bytes = Some(1);
    let store = filled(c, 39);
    let segs = store.raw_reader().segments().expect("segments");
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_eq!(ids(&store), vec![]);
    append(&store, vec![blank(1, 40)]);
    assert_eq!(ids(&store), vec![id(1, 40)]);
}
