//! Group commit: appends share fsyncs, callbacks fire only after the fsync that covers
//! them and in order, and an fsync or write failure disables the log.

use std::time::Duration;

use tokio::sync::oneshot::error::TryRecvError;

use super::*;

#[test]
fn rapid_appends_share_few_fsyncs_and_no_callback_fires_before_its_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 64 << 20, &fs);
    let syncs_at_start = fs.file_syncs();
    fs.hold_syncs();
    const N: u64 = 500;
    let mut rxs = Vec::new();
    for i in 0..N {
        let (cb, rx) = callback();
        store
            .shared
            .append(vec![ingest(1, i, 2)], cb)
            .expect("append");
        rxs.push(rx);
    }
    // Everything is readable at once, nothing is durable yet.
    assert_eq!(ids(&store).len() as u64, N);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fs.file_syncs(), syncs_at_start, "every fsync is held");
    for rx in &mut rxs {
        assert_eq!(
            rx.try_recv().err(),
            Some(TryRecvError::Empty),
            "a callback fired before its fsync"
        );
    }
    fs.release_syncs();
    // Callbacks fire in order, all under one lock: once the last fired, all have.
    let last = rxs.pop().expect("appends");
    assert!(matches!(last.blocking_recv(), Ok(Ok(()))));
    for (k, mut rx) in rxs.into_iter().enumerate() {
        assert!(
            matches!(rx.try_recv(), Ok(Ok(()))),
            "callback {k} fired after the last one"
        );
    }
    let syncs = fs.file_syncs() - syncs_at_start;
    assert!(syncs <= 3, "{N} appends cost {syncs} fsyncs");
    assert!(store.flusher_fsyncs() <= 3);
}

#[test]
fn sealing_a_segment_completes_the_callbacks_it_covers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 2048, &fs);
    let mut rxs = Vec::new();
    for i in 0..20 {
        let (cb, rx) = callback();
        store
            .shared
            .append(vec![ingest(1, i, 5)], cb)
            .expect("append");
        rxs.push(rx);
    }
    for rx in rxs {
        assert!(matches!(rx.blocking_recv(), Ok(Ok(()))));
    }
    drop(store);
    assert_eq!(ids(&open(dir.path(), 2048)).len(), 20);
}

#[test]
fn a_failed_fsync_fails_pending_callbacks_and_disables_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 1 << 20, &fs);
    append(&store, vec![blank(1, 0)]);
    fs.fail_syncs(true);
    let (cb, rx) = callback();
    store
        .shared
        .append(vec![blank(1, 1)], cb)
        .expect("written to the OS");
    assert!(rx.blocking_recv().expect("callback fired").is_err());
    let (cb, rx) = callback();
    assert!(
        store.shared.append(vec![blank(1, 2)], cb).is_err(),
        "the log refuses writes"
    );
    assert!(rx.blocking_recv().expect("callback fired").is_err());
    assert!(store.shared.save_vote(vote(2)).is_err());
    assert!(store.shared.truncate_after(Some(id(1, 0))).is_err());
    fs.fail_syncs(false);
    drop(store);
    // A restart recovers from what is on disk.
    let store = open(dir.path(), 1 << 20);
    assert!(!ids(&store).is_empty());
}

#[test]
fn save_vote_waits_until_earlier_appends_are_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 1 << 20, &fs);
    fs.hold_syncs();
    let (cb, mut rx) = callback();
    store.shared.append(vec![blank(1, 0)], cb).expect("append");
    let shared = Arc::clone(&store.shared);
    let t = std::thread::spawn(move || shared.save_vote(vote(5)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!t.is_finished(), "the vote waits for the earlier append");
    assert_eq!(store.shared.read().expect("lock").vote, None);
    fs.release_syncs();
    t.join().expect("thread").expect("save vote");
    assert!(
        matches!(rx.try_recv(), Ok(Ok(()))),
        "the append was durable first"
    );
    assert_eq!(store.shared.read().expect("lock").vote, Some(vote(5)));
}

#[test]
fn a_torn_write_disables_the_log_and_recovery_cuts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 1 << 20, &fs);
    append_blanks(&store, 1, 0..3);
    fs.tear_writes_after(Some(50));
    let err = store
        .shared
        .append(vec![ingest(1, 3, 10)], IOFlushed::noop())
        .expect_err("torn");
    assert!(matches!(err, crate::Error::Io { .. }), "{err}");
    assert!(store
        .shared
        .append(vec![blank(1, 3)], IOFlushed::noop())
        .is_err());
    fs.tear_writes_after(None);
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(ids(&store), (0..3).map(|i| id(1, i)).collect::<Vec<_>>());
    append(&store, vec![blank(2, 3)]);
}

#[test]
fn dropping_the_store_flushes_pending_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 1 << 20, &fs);
    let (cb, rx) = callback();
    store.shared.append(vec![blank(1, 0)], cb).expect("append");
    drop(store);
    assert!(matches!(rx.blocking_recv(), Ok(Ok(()))));
}
