//! Raw gaps and raw imports: after a snapshot install the raw store lacks the purged
//! entries the node never held; segment images from a peer fill exactly those gaps, durably.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::codec;
use crate::log::format::{self, Seal, RECORD_COMMITTED, RECORD_ENTRY, RECORD_SEAL};
use crate::log::ImportOutcome;
use crate::Error;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The entry every replica holds at `index` (term 1, leader 1).
fn entry(index: u64) -> Entry {
    ingest(1, index, 2)
}

/// A segment image as a peer's log writes it: header, a committed record, the entries
/// `indexes` (a committed record in the middle), and a seal at `sealed_at_ms` if set.
fn image(first: u64, indexes: Range<u64>, sealed_at_ms: Option<u64>) -> Vec<u8> {
    let mut buf = format::encode_segment_header(first).to_vec();
    format::put_frame(&mut buf, RECORD_COMMITTED, &format::encode_committed(None));
    let mid = indexes.start + (indexes.end - indexes.start) / 2;
    for i in indexes.clone() {
        if i == mid {
            let c = format::encode_committed(Some(&id(1, i)));
            format::put_frame(&mut buf, RECORD_COMMITTED, &c);
        }
        let mut payload = Vec::new();
        codec::encode_entry(&entry(i), &mut payload);
        format::put_frame(&mut buf, RECORD_ENTRY, &payload);
    }
    if let Some(sealed_at_ms) = sealed_at_ms {
        let seal = Seal {
            last_index: indexes.end - 1,
            sealed_at_ms,
            committed: Some(id(1, indexes.end - 1)),
        };
        format::put_frame(&mut buf, RECORD_SEAL, &format::encode_seal(&seal));
    }
    buf
}

/// A sealed image of the entries `indexes`.
fn sealed(indexes: Range<u64>) -> Vec<u8> {
    image(indexes.start, indexes, Some(now_ms()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

/// A node that held the entries `0..held` (all committed), then installed a snapshot
/// ending at `snapshot` (openraft purges the log up to it).
fn installed(dir: &Path, held: u64, snapshot: u64, segment_size: u64) -> LogStore {
    let store = open(dir, segment_size);
    for i in 0..held {
        append(&store, vec![entry(i)]);
    }
    if held > 0 {
        store
            .shared
            .save_committed(Some(id(1, held - 1)))
            .expect("commit");
    }
    store.shared.purge(id(1, snapshot)).expect("purge");
    store
}

fn gaps(store: &LogStore) -> Vec<Range<u64>> {
    store.raw_gaps().expect("raw gaps")
}

fn import(store: &LogStore, image: &[u8]) -> ImportOutcome {
    store.import_raw(image).expect("import")
}

fn raw_indexes(store: &LogStore) -> Vec<u64> {
    raw_ids(store).into_iter().map(|i| i.index).collect()
}

/// Every raw entry, checked against [`entry`].
fn assert_raw_entries(store: &LogStore, want: Range<u64>) {
    let got: Vec<Entry> = store
        .raw_reader()
        .entries(..)
        .expect("raw reader")
        .map(|e| e.expect("raw entry"))
        .collect();
    assert_eq!(got.len() as u64, want.end - want.start);
    for (e, i) in got.iter().zip(want) {
        assert_eq!(e, &entry(i));
    }
}

#[test]
fn gaps_are_the_purged_indexes_no_segment_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing purged: no gap, whatever the log holds.
    let store = open(dir.path(), 1 << 20);
    append_blanks(&store, 1, 0..5);
    assert_eq!(gaps(&store), vec![]);
    // A purge of entries the log holds leaves no gap either.
    store.shared.save_committed(Some(id(1, 4))).expect("commit");
    store.shared.purge(id(1, 3)).expect("purge");
    assert_eq!(gaps(&store), vec![]);
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 11, 500, 1 << 20);
    assert_eq!(gaps(&store), vec![11..501]);
    assert_eq!(store.raw_reader().raw_gaps().expect("gaps"), vec![11..501]);
    // New entries after the snapshot, then a later snapshot: the old gap stays, no new one.
    for i in 501..511 {
        append(&store, vec![entry(i)]);
    }
    store
        .shared
        .save_committed(Some(id(1, 510)))
        .expect("commit");
    store.shared.purge(id(1, 505)).expect("purge");
    assert_eq!(gaps(&store), vec![11..501]);
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(gaps(&store), vec![11..501]);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 0, 500, 1 << 20);
    assert_eq!(gaps(&store), vec![0..501]);
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(gaps(&store), vec![0..501]);
}

#[test]
fn an_image_filling_the_gap_exactly_makes_raw_reads_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 11, 500, 1 << 20);
    assert_eq!(raw_indexes(&store), (0..11).collect::<Vec<_>>());
    let img = sealed(11..501);
    let out = import(&store, &img);
    assert_eq!(out.imported, vec![11..501]);
    assert_eq!(out.entries, 490);
    let file = dir.path().join(format::segment_file_name(11));
    assert_eq!(
        out.bytes,
        std::fs::metadata(&file).expect("imported file").len()
    );
    assert_eq!(gaps(&store), vec![]);
    assert_raw_entries(&store, 0..501);
    let info = store
        .raw_reader()
        .segments()
        .expect("segments")
        .into_iter()
        .find(|s| s.first_index == 11)
        .expect("the imported segment is listed");
    assert_eq!((info.last_index, info.purged), (Some(500), true));
    // The same image again finds no gap: nothing more is written.
    assert_eq!(import(&store, &img), ImportOutcome::default());
    // Raft's view is untouched and the log continues after the snapshot.
    assert_eq!(ids(&store), vec![]);
    append(&store, vec![entry(501)]);
    assert_eq!(ids(&store), vec![id(1, 501)]);
}

#[test]
fn a_peer_segment_larger_than_the_gap_stores_only_the_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 11, 500, 1 << 20);
    // The peer's segment starts before the gap and runs past the snapshot (unsealed: it
    // is the peer's active segment).
    let out = import(&store, &image(0, 0..600, None));
    assert_eq!(out.imported, vec![11..501]);
    assert_eq!(out.entries, 490);
    assert_eq!(gaps(&store), vec![]);
    // Every index once, nothing above the purged index.
    assert_eq!(raw_indexes(&store), (0..501).collect::<Vec<_>>());
    let segs = store.raw_reader().segments().expect("segments");
    let ranges: Vec<_> = segs.iter().map(|s| (s.first_index, s.last_index)).collect();
    assert_eq!(ranges, vec![(0, Some(10)), (11, Some(500)), (501, None)]);
}

#[test]
fn one_image_fills_every_gap_it_covers_with_a_segment_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 11, 500, 1 << 20);
    assert_eq!(import(&store, &sealed(100..201)).imported, vec![100..201]);
    assert_eq!(gaps(&store), vec![11..100, 201..501]);
    let out = import(&store, &sealed(0..501));
    assert_eq!(out.imported, vec![11..100, 201..501]);
    assert_eq!(out.entries, 89 + 300);
    assert_eq!(gaps(&store), vec![]);
    assert_raw_entries(&store, 0..501);
}

#[test]
fn a_damaged_image_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 2, 20, 1 << 20);
    let good = image(2, 2..6, Some(now_ms()));
    let files = segment_files(dir.path());
    let refused = |bad: &[u8], what: &str| {
        let err = store.import_raw(bad).expect_err(what);
        assert!(err.is_corruption(), "{what}: {err}");
        assert_eq!(segment_files(dir.path()), files, "{what}");
        assert_eq!(gaps(&store), vec![2..21], "{what}");
    };
    // Every byte is covered by a checksum (or is the magic or version).
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        refused(&bad, &format!("byte {i} flipped"));
    }
    // Cut inside the last record, or trailing garbage.
    refused(&good[..good.len() - 1], "cut inside the seal");
    refused(
        &good[..format::SEGMENT_HEADER_LEN - 1],
        "cut inside the header",
    );
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 3]);
    refused(&longer, "trailing bytes");
    // Well-framed records that break the segment's rules.
    refused(
        &image(2, 3..6, None),
        "first entry is not the header's index",
    );
    let mut after_seal = good.clone();
    format::put_frame(
        &mut after_seal,
        RECORD_COMMITTED,
        &format::encode_committed(None),
    );
    refused(&after_seal, "record after the seal");
    let mut hole = image(2, 2..4, None);
    hole.extend_from_slice(&image(4, 5..6, None)[format::SEGMENT_HEADER_LEN..]);
    refused(&hole, "entries not contiguous");
    let mut undecodable = format::encode_segment_header(2).to_vec();
    format::put_frame(&mut undecodable, RECORD_ENTRY, &[1, 1, 1, 2, 9]);
    refused(&undecodable, "entry the codec refuses");
    let mut bad_seal = image(2, 2..6, None);
    let seal = Seal {
        last_index: 9,
        sealed_at_ms: 1,
        committed: None,
    };
    format::put_frame(&mut bad_seal, RECORD_SEAL, &format::encode_seal(&seal));
    refused(&bad_seal, "seal naming another last index");
    // The good image still imports.
    assert_eq!(import(&store, &good).imported, vec![2..6]);
}

#[test]
fn hostile_bytes_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 0, 50, 1 << 20);
    let good = image(0, 0..8, Some(now_ms()));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..2000 {
        let mut bytes = if round % 4 == 0 {
            let n = (next() % 300) as usize;
            (0..n).map(|_| next() as u8).collect()
        } else {
            good.clone()
        };
        for _ in 0..=(next() % 4) {
            if bytes.is_empty() {
                break;
            }
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if next() % 3 == 0 {
            let cut = (next() % (bytes.len() as u64 + 1)) as usize;
            bytes.truncate(cut);
        }
        if let Err(e) = store.import_raw(&bytes) {
            assert!(e.is_corruption(), "round {round}: {e}");
        }
    }
}

#[test]
fn imported_entries_survive_a_reopen_without_holes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = installed(dir.path(), 11, 500, 4096);
        // Several images, as a peer with small segments sends them.
        for first in (0..600).step_by(97) {
            import(&store, &sealed(first..(first + 97).min(600)));
        }
        assert_eq!(gaps(&store), vec![]);
        for i in 501..505 {
            append(&store, vec![entry(i)]);
        }
        store
            .shared
            .save_committed(Some(id(1, 504)))
            .expect("commit");
    }
    let store = open(dir.path(), 4096);
    assert_eq!(gaps(&store), vec![]);
    assert_raw_entries(&store, 0..505);
    let st = store.log_state().expect("state");
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (Some(id(1, 500)), Some(id(1, 504)))
    );
    append(&store, vec![entry(505)]);
    assert_eq!(ids(&store).len(), 5);
}

#[test]
fn a_fresh_node_imports_from_index_0_past_its_empty_first_segment() {
    // A node that never held an entry keeps its empty first segment (named 0) through the
    // snapshot install: the import moves it past the purged index instead of colliding.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = installed(dir.path(), 0, 500, 1 << 20);
        let out = import(&store, &sealed(0..501));
        assert_eq!(out.imported, vec![0..501]);
        let segs = store.raw_reader().segments().expect("segments");
        let ranges: Vec<_> = segs.iter().map(|s| (s.first_index, s.last_index)).collect();
        assert_eq!(ranges, vec![(0, Some(500)), (501, None)]);
        assert_eq!(segment_files(dir.path()).len(), 2);
        append(&store, vec![entry(501)]);
        assert_raw_entries(&store, 0..501);
    }
    let store = open(dir.path(), 1 << 20);
    assert_eq!(gaps(&store), vec![]);
    assert_eq!(ids(&store), vec![id(1, 501)]);
    assert_raw_entries(&store, 0..501);
}

#[test]
fn a_purged_active_segment_below_the_gap_is_sealed_before_the_import() {
    // The node held 0..=10 in its active segment (never rotated) when the snapshot came.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = installed(dir.path(), 11, 500, 1 << 20);
        assert_eq!(segment_files(dir.path()).len(), 1);
        import(&store, &sealed(11..501));
        let segs = store.raw_reader().segments().expect("segments");
        assert!(segs[0].sealed_at.is_some(), "{segs:?}");
        assert_eq!(segs.last().map(|s| s.first_index), Some(501));
    }
    let store = open(dir.path(), 1 << 20);
    append(&store, vec![entry(501)]);
    store
        .shared
        .save_committed(Some(id(1, 501)))
        .expect("commit");
    assert_raw_entries(&store, 0..502);
}

#[test]
fn entries_above_the_purged_index_are_never_imported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 11, 500, 1 << 20);
    let files = segment_files(dir.path());
    // Entirely above: nothing.
    assert_eq!(import(&store, &sealed(501..520)), ImportOutcome::default());
    assert_eq!(segment_files(dir.path()), files);
    // Across the purged index: only up to it.
    let out = import(&store, &image(480, 480..520, None));
    assert_eq!(out.imported, vec![480..501]);
    assert_eq!(gaps(&store), vec![11..480]);
    let top = store
        .raw_reader()
        .segments()
        .expect("segments")
        .iter()
        .filter_map(|s| s.last_index)
        .max();
    assert_eq!(top, Some(500));
    // The log still takes 501 from Raft.
    append(&store, vec![entry(501)]);
    assert_eq!(ids(&store), vec![id(1, 501)]);
}

#[test]
fn imports_run_alongside_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 11, 500, 2048);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 501..701 {
                append(&store, vec![entry(i)]);
            }
        });
        s.spawn(|| {
            for first in (0..501).step_by(50) {
                let out = store
                    .import_raw(&sealed(first..(first + 50).min(501)))
                    .expect("import");
                assert!(out.entries > 0, "{first}: {out:?}");
            }
        });
    });
    store
        .shared
        .save_committed(Some(id(1, 700)))
        .expect("commit");
    assert_eq!(gaps(&store), vec![]);
    assert_eq!(
        ids(&store),
        (501..701).map(|i| id(1, i)).collect::<Vec<_>>()
    );
    assert_raw_entries(&store, 0..701);
    drop(store);
    let store = open(dir.path(), 2048);
    assert_raw_entries(&store, 0..701);
    assert_eq!(ids(&store).len(), 200);
}

#[test]
fn imported_segments_age_from_the_peers_seal_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 0, 500, 1 << 20);
    let old = now_ms() - 3 * DAY.as_millis() as u64;
    import(&store, &image(0, 0..200, Some(old)));
    let before = SystemTime::now();
    import(&store, &image(200, 200..300, None));
    // A seal time in the future is clamped to the import time.
    import(&store, &image(300, 300..501, Some(u64::MAX / 2)));
    let after = SystemTime::now();
    let segs = store.raw_reader().segments().expect("segments");
    let sealed_at = |first: u64| {
        segs.iter()
            .find(|s| s.first_index == first)
            .and_then(|s| s.sealed_at)
            .expect("sealed")
    };
    assert_eq!(sealed_at(0), UNIX_EPOCH + Duration::from_millis(old));
    for first in [200, 300] {
        let t = sealed_at(first);
        assert!(
            t + Duration::from_millis(1) >= before && t <= after,
            "{first}: {t:?}"
        );
    }
}

#[test]
fn what_retention_removed_is_not_a_gap_even_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 1024);
    c.retention.max_age = Some(7 * DAY);
    {
        let store = LogStore::open(c.clone()).expect("open");
        for i in 0..40 {
            append(&store, vec![entry(i)]);
        }
        store
            .shared
            .save_committed(Some(id(1, 39)))
            .expect("commit");
        store.shared.purge(id(1, 25)).expect("purge");
        let out = store
            .apply_retention(SystemTime::now() + 8 * DAY)
            .expect("retention");
        assert!(!out.deleted.is_empty());
        let first = store.raw_reader().segments().expect("segments")[0].first_index;
        assert!(first > 0);
        assert_eq!(gaps(&store), vec![]);
        // A later snapshot past the log: only what follows the log is a gap.
        store.shared.purge(id(1, 100)).expect("purge");
        assert_eq!(gaps(&store), vec![40..101]);
        // An image reaching below the retained range stores only the gap.
        let out = import(&store, &sealed(0..101));
        assert_eq!(out.imported, vec![40..101]);
    }
    let store = LogStore::open(c).expect("reopen");
    assert_eq!(gaps(&store), vec![]);
}

#[test]
fn retention_removes_imported_segments_like_other_purged_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 1 << 20);
    c.retention.max_age = Some(7 * DAY);
    {
        let store = LogStore::open(c.clone()).expect("open");
        store.shared.purge(id(1, 500)).expect("purge");
        let ten_days = now_ms() - 10 * DAY.as_millis() as u64;
        import(&store, &image(0, 0..300, Some(ten_days)));
        import(&store, &sealed(300..501));
        let out = store.apply_retention(SystemTime::now()).expect("retention");
        assert_eq!(
            out.deleted,
            vec![dir.path().join(format::segment_file_name(0))]
        );
        assert_eq!(raw_indexes(&store), (300..501).collect::<Vec<_>>());
        // Retention dropped 0..300 on purpose: not a gap to fetch again.
        assert_eq!(gaps(&store), vec![]);
    }
    let store = LogStore::open(c).expect("reopen");
    assert_eq!(gaps(&store), vec![]);
    assert_eq!(raw_indexes(&store), (300..501).collect::<Vec<_>>());
}

#[test]
fn an_importer_outliving_its_store_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 0, 50, 1 << 20);
    let importer = store.raw_importer();
    assert_eq!(importer.raw_gaps().expect("gaps"), vec![0..51]);
    drop(store);
    let files = segment_files(dir.path());
    let err = importer.import_raw(&sealed(0..51)).expect_err("closed");
    assert!(matches!(err, Error::Closed), "{err}");
    assert_eq!(segment_files(dir.path()), files);
}

#[test]
fn a_failed_write_stores_nothing_and_a_retry_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 1 << 20, &fs);
    store.shared.purge(id(1, 100)).expect("purge");
    // Rebase the empty active segment first, so only the import's own write can fail.
    import(&store, &sealed(100..101));
    let img = sealed(0..100);
    fs.tear_writes_after(Some(100));
    store.import_raw(&img).expect_err("torn write");
    fs.tear_writes_after(None);
    assert_eq!(gaps(&store), vec![0..100]);
    let listed: Vec<PathBuf> = store
        .raw_reader()
        .segments()
        .expect("segments")
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(listed, segment_files(dir.path()));
    assert_eq!(import(&store, &img).imported, vec![0..100]);
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_raw_entries(&store, 0..101);
}

struct ReleaseSyncs<'a>(&'a FaultyFs);

impl Drop for ReleaseSyncs<'_> {
    fn drop(&mut self) {
        self.0.release_syncs();
    }
}

#[test]
fn appends_and_reads_do_not_wait_for_an_import_in_its_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::default();
    let store = open_fs(dir.path(), 1 << 20, &fs);
    for i in 0..11 {
        append(&store, vec![entry(i)]);
    }
    store
        .shared
        .save_committed(Some(id(1, 10)))
        .expect("commit");
    store.shared.purge(id(1, 500)).expect("purge");
    // The append rotates: the active segment now lies past the gap.
    append(&store, vec![entry(501)]);
    fs.hold_syncs();
    // Released on the way out, even from a failed assertion (before the store is dropped:
    // dropping it waits for the held fsyncs).
    let _release = ReleaseSyncs(&fs);
    let started = fs.file_syncs_started();
    let shared = Arc::clone(&store.shared);
    let img = sealed(11..501);
    let importer = std::thread::spawn(move || shared.import_raw(&img));
    while fs.file_syncs_started() == started {
        assert!(!importer.is_finished(), "the import did not fsync");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The import is held in the fsync of its new file: Raft's appends and reads go on.
    let shared = Arc::clone(&store.shared);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let appended =
            (502..600).try_for_each(|i| shared.append(vec![entry(i)], IOFlushed::noop()));
        let read = shared.read_entries(501, 600, usize::MAX).map(|v| v.len());
        let _ = tx.send((appended, read));
    });
    let (appended, read) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("appends and reads do not wait for the import");
    appended.expect("appends");
    assert_eq!(read.expect("read"), 99);
    assert!(!importer.is_finished(), "the import is still held");
    fs.release_syncs();
    let out = importer.join().expect("import thread").expect("import");
    assert_eq!(out.imported, vec![11..501]);
    store
        .shared
        .save_committed(Some(id(1, 599)))
        .expect("commit");
    assert_raw_entries(&store, 0..600);
}

#[test]
fn an_image_built_from_a_peers_raw_entries_fills_the_gap() {
    // The serving side: a peer that holds and committed 0..500.
    let peer_dir = tempfile::tempdir().expect("tempdir");
    let peer = open(peer_dir.path(), 1 << 20);
    for i in 0..500 {
        append(&peer, vec![entry(i)]);
    }
    peer.shared
        .save_committed(Some(id(1, 449)))
        .expect("commit");
    // Raw reads serve committed entries only: 450.. are not sent.
    let served: Vec<Entry> = peer
        .raw_reader()
        .entries(10..500)
        .expect("raw reader")
        .map(|e| e.expect("raw entry"))
        .collect();
    assert_eq!(served.len(), 440);
    let image = crate::log::encode_segment_image(&served).expect("image");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = installed(dir.path(), 10, 449, 1 << 20);
    assert_eq!(gaps(&store), vec![10..450]);
    let out = import(&store, &image);
    assert_eq!(out.imported, vec![10..450]);
    assert!(gaps(&store).is_empty());
    assert_raw_entries(&store, 0..450);
}

#[test]
fn segment_images_need_contiguous_entries() {
    assert!(crate::log::encode_segment_image(&[]).is_err());
    let err = crate::log::encode_segment_image(&[entry(3), entry(5)]).expect_err("a hole");
    assert!(err.to_string().contains("contiguous"), "{err}");
}
