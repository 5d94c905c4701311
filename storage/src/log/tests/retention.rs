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

/// 40 entries over many small segments through `fs`, committed, purged up to 25, with a
/// byte limit that makes every purged segment go.
fn filled_fs(dir: &Path, archive: Option<&Path>, fs: &FaultyFs) -> LogStore {
    let mut c = config(dir, 1024);
    c.retention.max_bytes = Some(1);
    c.archive_dir = archive.map(Path::to_path_buf);
    let store = LogStore::open_with_fs(c, Arc::new(fs.clone())).expect("open");
    for i in 0..40 {
        append(&store, vec![ingest(1, i, 3)]);
    }
    store
        .shared
        .save_committed(Some(id(1, 39)))
        .expect("commit");
    store.shared.purge(id(1, 25)).expect("purge");
    store
}

/// The segments the log lists must be exactly the segment files in its directory, and
/// every committed entry from the oldest one on must stay raw-readable.
fn assert_view_matches_disk(store: &LogStore, dir: &Path) {
    let segs = store.raw_reader().segments().expect("segments");
    let listed: Vec<PathBuf> = segs.iter().map(|s| s.path.clone()).collect();
    assert_eq!(listed, segment_files(dir));
    let first = segs.first().map_or(0, |s| s.first_index);
    let want: Vec<u64> = (first..40).collect();
    let got: Vec<u64> = raw_ids(store).into_iter().map(|i| i.index).collect();
    assert_eq!(got, want);
}

fn tmp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
        .collect()
}

#[test]
fn a_failed_deletion_keeps_every_segment_still_on_disk_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = filled_fs(dir.path(), None, &fs);
    let purged = store
        .raw_reader()
        .segments()
        .expect("segments")
        .iter()
        .filter(|s| s.purged)
        .count();
    assert!(purged >= 3, "{purged} purged segments");
    fs.fail_removes_after(Some(1));
    store
        .apply_retention(SystemTime::now())
        .expect_err("the second deletion fails");
    assert_view_matches_disk(&store, dir.path());

    fs.fail_removes_after(None);
    let out = store.apply_retention(SystemTime::now()).expect("retention");
    assert_eq!(out.deleted.len(), purged - 1);
    assert_view_matches_disk(&store, dir.path());
}

#[test]
fn a_failed_archive_copy_leaves_no_temporary_file_and_keeps_the_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = filled_fs(dir.path(), Some(archive.path()), &fs);
    let first = store.raw_reader().segments().expect("segments")[0].clone();
    // The archive is "on another file system": segments are copied, and the second copy
    // runs out of disk midway.
    fs.fail_renames_from(Some(dir.path().to_path_buf()));
    fs.tear_writes_after(Some(first.bytes + 100));
    store
        .apply_retention(SystemTime::now())
        .expect_err("the second copy fails");
    fs.tear_writes_after(None);
    let name = first.path.file_name().expect("name");
    assert!(
        archive.path().join(name).exists(),
        "the first copy completed"
    );
    assert_eq!(tmp_files(archive.path()), Vec::<PathBuf>::new());
    assert_view_matches_disk(&store, dir.path());

    let out = store.apply_retention(SystemTime::now()).expect("retention");
    assert!(!out.archived.is_empty());
    assert_view_matches_disk(&store, dir.path());
    assert!(store
        .raw_reader()
        .segments()
        .expect("segments")
        .iter()
        .all(|s| !s.purged));
}

#[test]
fn half_made_archive_copies_are_removed_on_open_and_other_files_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = tempfile::tempdir().expect("tempdir");
    let stale = archive.path().join("00000000000000000000.seg.tmp");
    let foreign = archive.path().join("notes.tmp");
    std::fs::write(&stale, b"a copy cut short by a crash").expect("write");
    std::fs::write(&foreign, b"not the log's").expect("write");
    let mut c = config(dir.path(), 1024);
    c.archive_dir = Some(archive.path().to_path_buf());
    let store = LogStore::open(c).expect("open");
    assert!(!stale.exists());
    assert!(foreign.exists());
    drop(store);
}
