//! Append, read, truncate, purge, rotation and reopen.

use super::*;
use crate::Error;

#[test]
fn appended_entries_are_readable_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), 1 << 20);
        append(&store, vec![blank(1, 0), ingest(1, 1, 10), ingest(1, 2, 3)]);
        let entries = store.shared.read_entries(0, 10, usize::MAX).expect("read");
        assert_eq!(
            entries,
            vec![blank(1, 0), ingest(1, 1, 10), ingest(1, 2, 3)]
        );
        let st = store.log_state().expect("state");
        assert_eq!(
            (st.last_purged_log_id, st.last_log_id),
            (None, Some(id(1, 2)))
        );
    }
    let store = open(dir.path(), 1 << 20);
    assert_eq!(
        store.shared.read_entries(0, 10, usize::MAX).expect("read"),
        vec![blank(1, 0), ingest(1, 1, 10), ingest(1, 2, 3)]
    );
}

#[test]
fn vote_committed_and_purged_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), 1 << 20);
        append_blanks(&store, 1, 0..10);
        store.shared.save_vote(vote(3)).expect("save vote");
        store
            .shared
            .save_committed(Some(id(1, 7)))
            .expect("save committed");
        store.shared.purge(id(1, 4)).expect("purge");
    }
    let store = open(dir.path(), 1 << 20);
    let inner = store.shared.read().expect("read lock");
    assert_eq!(inner.vote, Some(vote(3)));
    assert_eq!(inner.committed, Some(id(1, 7)));
    assert_eq!(inner.purged, Some(id(1, 4)));
    drop(inner);
    assert_eq!(ids(&store), (5..10).map(|i| id(1, i)).collect::<Vec<_>>());
}

#[test]
fn reads_return_only_the_requested_stored_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..10);
    let r = |a, b| -> Vec<u64> {
        store
            .shared
            .read_entries(a, b, usize::MAX)
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    };
    assert_eq!(r(3, 6), vec![3, 4, 5]);
    assert_eq!(r(8, 100), vec![8, 9]);
    assert_eq!(r(10, 20), Vec::<u64>::new());
    assert_eq!(r(5, 5), Vec::<u64>::new());
}

#[test]
fn limited_reads_stop_near_the_byte_cap_but_return_at_least_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append(&store, (0..20).map(|i| ingest(1, i, 20)).collect());
    let one = store.shared.read_entries(0, 20, 1).expect("read");
    assert_eq!(one.len(), 1);
    let some = store.shared.read_entries(0, 20, 5_000).expect("read");
    assert!(some.len() > 1 && some.len() < 20, "{} entries", some.len());
    assert_eq!(some[0].log_id.index, 0);
}

#[test]
fn segments_rotate_at_the_configured_size_and_reads_span_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 4096);
    for i in 0..40 {
        append(&store, vec![ingest(1, i, 10)]);
    }
    let segs = store.raw_reader().segments().expect("segments");
    assert!(segs.len() > 3, "{} segments", segs.len());
    for pair in segs.windows(2) {
        assert!(pair[0].sealed_at.is_some(), "all but the last are sealed");
        assert_eq!(pair[0].last_index.map(|l| l + 1), Some(pair[1].first_index));
        assert!(pair[0].bytes <= 4096 + 1024, "{} bytes", pair[0].bytes);
    }
    assert_eq!(segment_files(dir.path()).len(), segs.len());
    let all = store.shared.read_entries(0, 40, usize::MAX).expect("read");
    assert_eq!(all, (0..40).map(|i| ingest(1, i, 10)).collect::<Vec<_>>());
    drop(store);
    let store = open(dir.path(), 4096);
    assert_eq!(ids(&store).len(), 40);
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1024);
    append(&store, vec![blank(1, 0)]);
    append(&store, vec![ingest(1, 1, 100)]);
    append(&store, vec![blank(1, 2)]);
    let segs = store.raw_reader().segments().expect("segments");
    let ranges: Vec<_> = segs.iter().map(|s| (s.first_index, s.last_index)).collect();
    assert_eq!(ranges, vec![(0, Some(0)), (1, Some(1)), (2, Some(2))]);
}

#[test]
fn truncate_after_removes_a_suffix_spanning_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 2048);
    for i in 0..30 {
        append(&store, vec![ingest(1, i, 5)]);
    }
    let before = store.raw_reader().segments().expect("segments").len();
    store
        .shared
        .truncate_after(Some(id(1, 6)))
        .expect("truncate");
    assert_eq!(ids(&store), (0..7).map(|i| id(1, i)).collect::<Vec<_>>());
    let after = store.raw_reader().segments().expect("segments");
    assert!(after.len() < before);
    assert_eq!(after.last().and_then(|s| s.last_index), Some(6));
    assert!(
        after.last().is_some_and(|s| s.sealed_at.is_none()),
        "the cut segment is written again"
    );
    // The new leader's entries replace the old suffix.
    append(&store, vec![blank(2, 7), blank(2, 8)]);
    drop(store);
    let store = open(dir.path(), 2048);
    let mut want: Vec<_> = (0..7).map(|i| id(1, i)).collect();
    want.extend([id(2, 7), id(2, 8)]);
    assert_eq!(ids(&store), want);
    assert_eq!(
        store.log_state().expect("state").last_log_id,
        Some(id(2, 8))
    );
}

#[test]
fn truncation_makes_each_segment_removal_durable_before_the_next() {
    // Removing newest first, with a directory fsync after each removal, means a crash
    // leaves a prefix of the segments even where unlinks persist out of order: never a
    // missing middle segment, which recovery refuses.
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 2048, &fs);
    for i in 0..30 {
        append(&store, vec![ingest(1, i, 5)]);
    }
    let segs = store.raw_reader().segments().expect("segments");
    let doomed: Vec<PathBuf> = segs
        .iter()
        .filter(|s| s.first_index > 7)
        .map(|s| s.path.clone())
        .rev()
        .collect();
    assert!(doomed.len() >= 2, "{segs:?}");
    let before = fs.ops().len();
    store
        .shared
        .truncate_after(Some(id(1, 6)))
        .expect("truncate");
    let ops = fs.ops().split_off(before);
    let want: Vec<FsOp> = doomed
        .iter()
        .flat_map(|p| {
            [
                FsOp::Remove(p.clone()),
                FsOp::SyncDir(dir.path().to_path_buf()),
            ]
        })
        .collect();
    assert_eq!(ops, want);
}

#[test]
fn truncate_after_none_empties_a_never_purged_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..5);
    store.shared.truncate_after(None).expect("truncate");
    assert_eq!(ids(&store), vec![]);
    assert_eq!(store.log_state().expect("state").last_log_id, None);
    append_blanks(&store, 2, 0..2);
    drop(store);
    assert_eq!(ids(&open(dir.path(), 1 << 20)), vec![id(2, 0), id(2, 1)]);
}

#[test]
fn truncate_below_the_purged_index_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..5);
    store.shared.purge(id(1, 2)).expect("purge");
    let err = store
        .shared
        .truncate_after(Some(id(1, 1)))
        .expect_err("below purged");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    store
        .shared
        .truncate_after(Some(id(1, 2)))
        .expect("at purged is fine");
    assert_eq!(ids(&store), vec![]);
    assert_eq!(
        store.log_state().expect("state").last_log_id,
        Some(id(1, 2))
    );
}

#[test]
fn purge_hides_entries_from_raft_but_keeps_them_for_raw_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 2048);
    for i in 0..20 {
        append(&store, vec![ingest(1, i, 5)]);
    }
    store
        .shared
        .save_committed(Some(id(1, 19)))
        .expect("commit");
    store.shared.purge(id(1, 12)).expect("purge");
    assert_eq!(ids(&store), (13..20).map(|i| id(1, i)).collect::<Vec<_>>());
    let st = store.log_state().expect("state");
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (Some(id(1, 12)), Some(id(1, 19)))
    );
    assert_eq!(
        raw_ids(&store),
        (0..20).map(|i| id(1, i)).collect::<Vec<_>>()
    );
    let segs = store.raw_reader().segments().expect("segments");
    assert!(
        segs.iter().any(|s| s.purged),
        "some segments are kept only as raw store"
    );
    // Raw reads can start in the middle of a purged segment.
    let mid: Vec<_> = store
        .raw_reader()
        .entries(5..=7)
        .expect("raw")
        .map(|e| e.expect("entry").log_id.index)
        .collect();
    assert_eq!(mid, vec![5, 6, 7]);
    drop(store);
    let store = open(dir.path(), 2048);
    assert_eq!(raw_ids(&store).len(), 20);
    assert_eq!(ids(&store).len(), 7);
}

#[test]
fn raw_reads_serve_only_committed_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..10);
    assert_eq!(raw_ids(&store), vec![]);
    store.shared.save_committed(Some(id(1, 3))).expect("commit");
    assert_eq!(
        raw_ids(&store),
        (0..4).map(|i| id(1, i)).collect::<Vec<_>>()
    );
}

#[test]
fn purge_beyond_the_last_entry_empties_the_log_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..3);
    // A snapshot ending at (2, 5) was installed.
    store.shared.purge(id(2, 5)).expect("purge");
    let st = store.log_state().expect("state");
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (Some(id(2, 5)), Some(id(2, 5)))
    );
    assert_eq!(ids(&store), vec![]);
    let err = store
        .shared
        .append(vec![blank(2, 5)], IOFlushed::noop())
        .expect_err("not after purged");
    assert!(matches!(err, Error::InvalidArgument(_)));
    append_blanks(&store, 2, 6..8);
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(ids(&store), vec![id(2, 6), id(2, 7)]);
    let st = store.log_state().expect("state");
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (Some(id(2, 5)), Some(id(2, 7)))
    );
}

#[test]
fn a_fresh_log_accepts_its_first_entry_at_any_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 2..4);
    assert_eq!(ids(&store), vec![id(1, 2), id(1, 3)]);
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(ids(&store), vec![id(1, 2), id(1, 3)]);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the empty first segment was replaced"
    );
}

#[test]
fn appends_that_leave_a_hole_overlap_or_regress_the_leader_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..3);
    for bad in [
        vec![blank(1, 4)],
        vec![blank(1, 2)],
        vec![blank(1, 3), blank(1, 5)],
        // An older leader after a newer one.
        vec![blank(0, 3)],
        vec![blank(2, 3), blank(1, 4)],
    ] {
        let err = store
            .shared
            .append(bad, IOFlushed::noop())
            .expect_err("refused");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
    assert_eq!(ids(&store).len(), 3);
}

#[test]
fn committed_saved_before_a_rotation_is_found_in_the_new_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), 1024);
        append_blanks(&store, 1, 0..3);
        store.shared.save_committed(Some(id(1, 2))).expect("commit");
        append(&store, vec![ingest(1, 3, 40)]);
        store.shared.purge(id(1, 2)).expect("purge");
    }
    let store = open(dir.path(), 1024);
    assert_eq!(store.shared.read().expect("lock").committed, Some(id(1, 2)));
}

#[test]
fn a_purge_past_the_log_keeps_only_known_committed_entries_in_the_raw_store() {
    // A follower holds entries 0..=5 but knows only 0..=2 committed: 3..=5 came from a
    // leader that was then deposed. The new leader sends a snapshot ending at (2, 8);
    // openraft does not truncate (the follower has no entry 8) and purges up to it.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..6);
    store.shared.save_committed(Some(id(1, 2))).expect("commit");
    store.shared.purge(id(2, 8)).expect("purge");
    let committed: Vec<_> = (0..3).map(|i| id(1, i)).collect();
    // Entries 3..=5 were never shown committed: the raw store must not serve them.
    assert_eq!(raw_ids(&store), committed);
    let st = store.log_state().expect("state");
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (Some(id(2, 8)), Some(id(2, 8)))
    );
    append_blanks(&store, 2, 9..11);
    store
        .shared
        .save_committed(Some(id(2, 10)))
        .expect("commit");
    let mut want = committed.clone();
    want.extend([id(2, 9), id(2, 10)]);
    assert_eq!(raw_ids(&store), want);
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(raw_ids(&store), want);
    assert_eq!(ids(&store), vec![id(2, 9), id(2, 10)]);
}

#[test]
fn a_purge_whose_entry_is_stored_keeps_every_entry_up_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..6);
    // Raft purges what a snapshot covers; the entry at the purged index is ours.
    store.shared.save_committed(Some(id(1, 2))).expect("commit");
    store.shared.purge(id(1, 4)).expect("purge");
    assert_eq!(
        raw_ids(&store),
        (0..5).map(|i| id(1, i)).collect::<Vec<_>>()
    );
    assert_eq!(ids(&store), vec![id(1, 5)]);
}

#[test]
fn the_first_append_after_a_purge_must_follow_the_purged_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..3);
    store.shared.purge(id(2, 5)).expect("purge");
    // Index 6 missing: recovery would refuse such a log ("entries missing after purged").
    let err = store
        .shared
        .append(vec![blank(2, 7)], IOFlushed::noop())
        .expect_err("a hole after the purged index");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    drop(store);
    let store = LogStore::open(config(dir.path(), 1 << 20)).expect("the log still opens");
    append_blanks(&store, 2, 6..7);
    assert_eq!(ids(&store), vec![id(2, 6)]);
}

#[test]
fn a_purge_below_the_first_stored_entry_keeps_every_entry() {
    // A log that starts at index 2 (a fresh follower) purging (1, 1): no stored entry
    // changes status, so nothing is cut.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 2..6);
    store.shared.purge(id(1, 1)).expect("purge");
    assert_eq!(ids(&store), (2..6).map(|i| id(1, i)).collect::<Vec<_>>());
}
