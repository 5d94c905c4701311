//! Recovery: torn tails are cut back to the last whole record; any other damage is a
//! corruption error naming the file and the offset.

use std::fs::OpenOptions;

use super::*;
use crate::log::RecoveryMode;
use crate::Error;

/// Writes entries `0..n` (one per append) and returns the path of the newest segment and
/// the (offset, length) of each entry record in it.
fn build(dir: &Path, n: u64, segment_size: u64) -> (PathBuf, Vec<(u64, u64)>) {
    let store = open(dir, segment_size);
    for i in 0..n {
        append(&store, vec![ingest(1, i, 3)]);
    }
    let inner = store.shared.read().expect("lock");
    let seg = inner.active();
    let locs = seg
        .locs
        .as_ref()
        .expect("indexed")
        .iter()
        .map(|l| (l.offset, u64::from(l.len)))
        .collect();
    (seg.path.clone(), locs)
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment")
        .set_len(len)
        .expect("truncate segment");
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).expect("write segment");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

fn open_err(dir: &Path) -> Error {
    LogStore::open(config(dir, 1 << 20)).expect_err("open must fail")
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("list") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}

#[test]
fn torn_tail_is_cut_at_every_byte_offset_of_the_last_record() {
    let template = tempfile::tempdir().expect("tempdir");
    let (seg, locs) = build(template.path(), 5, 1 << 20);
    let (last_at, last_len) = locs[4];
    assert_eq!(
        last_at + last_len,
        file_len(&seg),
        "the last record ends the file"
    );
    for cut in last_at..last_at + last_len {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(template.path(), dir.path());
        let seg = dir.path().join(seg.file_name().expect("name"));
        set_len(&seg, cut);
        let store = open(dir.path(), 1 << 20);
        assert_eq!(
            ids(&store),
            (0..4).map(|i| id(1, i)).collect::<Vec<_>>(),
            "cut at {cut}"
        );
        assert_eq!(
            file_len(&seg),
            last_at,
            "cut at {cut}: file cut back to the last whole record"
        );
        // The log continues where the whole records end.
        append(&store, vec![blank(2, 4)]);
        drop(store);
        assert_eq!(ids(&open(dir.path(), 1 << 20)).last(), Some(&id(2, 4)));
    }
}

#[test]
fn bad_checksum_in_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, locs) = build(dir.path(), 5, 1 << 20);
    flip_byte(&seg, locs[4].0 + locs[4].1 - 1);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(ids(&store).len(), 4);
}

#[test]
fn zeroed_or_garbage_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, _) = build(dir.path(), 3, 1 << 20);
    let len = file_len(&seg);
    set_len(&seg, len + 4096);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(ids(&store).len(), 3);
    assert_eq!(file_len(&seg), len);
}

#[test]
fn bad_checksum_followed_by_a_valid_record_is_corruption_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, locs) = build(dir.path(), 5, 1 << 20);
    flip_byte(&seg, locs[2].0 + 12);
    match open_err(dir.path()) {
        Error::Corruption {
            path,
            offset,
            reason,
        } => {
            assert_eq!((path, offset), (seg.clone(), locs[2].0));
            assert!(reason.contains("followed by a valid record"), "{reason}");
        }
        e => panic!("expected corruption, got {e}"),
    }
    assert_eq!(file_len(&seg), locs[4].0 + locs[4].1, "nothing was cut");
}

#[test]
fn truncate_tail_mode_cuts_at_the_first_bad_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, locs) = build(dir.path(), 5, 1 << 20);
    flip_byte(&seg, locs[2].0 + 12);
    let mut c = config(dir.path(), 1 << 20);
    c.recovery = RecoveryMode::TruncateTail;
    let store = LogStore::open(c).expect("open");
    assert_eq!(ids(&store), vec![id(1, 0), id(1, 1)]);
}

#[test]
fn corruption_in_a_non_last_segment_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 30, 1024);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{} segments", files.len());
    // Corrupt the second record of the first segment: it holds unpurged entries, so it is
    // scanned in full.
    let store = open(dir.path(), 1024);
    let (path, at) = {
        let inner = store.shared.read().expect("lock");
        let s = &inner.segments[0];
        let locs = s.locs.as_ref().expect("live segment is indexed");
        (s.path.clone(), locs[1].offset)
    };
    drop(store);
    flip_byte(&path, at + 10);
    match open_err(dir.path()) {
        Error::Corruption {
            path: p, offset, ..
        } => assert_eq!((p, offset), (path, at)),
        e => panic!("expected corruption, got {e}"),
    }
}

#[test]
fn a_damaged_seal_of_a_live_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 30, 1024);
    let first = segment_files(dir.path())[0].clone();
    let len = file_len(&first);
    set_len(&first, len - 3);
    match open_err(dir.path()) {
        Error::Corruption { path, offset, .. } => {
            assert_eq!(path, first);
            assert_eq!(offset, len - crate::log::format::SEAL_RECORD_LEN as u64);
        }
        e => panic!("expected corruption, got {e}"),
    }
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 30, 1024);
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[1]).expect("remove");
    match open_err(dir.path()) {
        Error::Corruption { path, reason, .. } => {
            assert_eq!(path, files[2]);
            assert!(reason.contains("missing"), "{reason}");
        }
        e => panic!("expected corruption, got {e}"),
    }
}

#[test]
fn a_bad_segment_header_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, _) = build(dir.path(), 3, 1 << 20);
    flip_byte(&seg, 2);
    assert!(matches!(
        open_err(dir.path()),
        Error::Corruption { offset: 0, .. }
    ));
}

#[test]
fn a_corrupt_meta_file_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), 1 << 20);
        store.shared.save_vote(vote(2)).expect("vote");
    }
    flip_byte(&dir.path().join("meta"), 14);
    match open_err(dir.path()) {
        Error::Corruption { path, .. } => assert_eq!(path, dir.path().join("meta")),
        e => panic!("expected corruption, got {e}"),
    }
}

#[test]
fn leftover_temporary_files_are_removed_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 3, 1 << 20);
    let tmp = dir.path().join("00000000000000000003.seg.tmp");
    std::fs::write(&tmp, b"half-created segment").expect("write");
    std::fs::write(dir.path().join("meta.tmp"), b"half-written meta").expect("write");
    let store = open(dir.path(), 1 << 20);
    assert!(!tmp.exists() && !dir.path().join("meta.tmp").exists());
    assert_eq!(ids(&store).len(), 3);
}

#[test]
fn a_sealed_last_segment_gets_a_new_segment_after_it() {
    // A crash between sealing a segment and creating the next leaves the sealed one last.
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 30, 1024);
    let files = segment_files(dir.path());
    let last = files.last().expect("segments");
    std::fs::remove_file(last).expect("remove");
    let store = open(dir.path(), 1024);
    let n = ids(&store).len() as u64;
    assert!(n > 0 && n < 30);
    append(&store, vec![blank(1, n)]);
    assert_eq!(ids(&store).last(), Some(&id(1, n)));
}

#[test]
fn purged_segments_are_not_scanned_on_open() {
    // Damage inside a retained (purged) segment is found when it is raw-read, not on open:
    // opening a log does not read all of the raw-click store.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), 1024);
        for i in 0..30 {
            append(&store, vec![ingest(1, i, 3)]);
        }
        store
            .shared
            .save_committed(Some(id(1, 29)))
            .expect("commit");
        store.shared.purge(id(1, 20)).expect("purge");
    }
    let first = segment_files(dir.path())[0].clone();
    flip_byte(&first, 40);
    let store = open(dir.path(), 1024);
    assert_eq!(ids(&store).len(), 9);
    let err = store
        .raw_reader()
        .entries(..)
        .expect("raw")
        .find_map(|r| r.err())
        .expect("raw read finds the damage");
    assert!(
        matches!(err, Error::Corruption { ref path, .. } if *path == first),
        "{err}"
    );
}

#[test]
fn opening_a_new_log_makes_the_directories_it_created_durable() {
    // Without an fsync of each parent, a crash can lose a freshly created group directory
    // (with the votes and entries already acknowledged inside it).
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("groups").join("7");
    let archive = root.path().join("archive").join("7");
    let fs = FaultyFs::default();
    let mut c = config(&dir, 1 << 20);
    c.archive_dir = Some(archive.clone());
    let store = LogStore::open_with_fs(c, Arc::new(fs.clone())).expect("open");
    let synced = fs.synced_dirs();
    for created in [&dir, &archive] {
        let mut d = created.as_path();
        while d != root.path() {
            let parent = d.parent().expect("below the root");
            assert!(
                synced.iter().any(|s| s == parent),
                "{} was created but {} never fsynced: {synced:?}",
                d.display(),
                parent.display()
            );
            d = parent;
        }
    }
    drop(store);
}

/// `n` pseudo-random bytes from `seed` (xorshift64*: deterministic, no dependency).
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

#[test]
fn a_multi_mib_random_tail_is_cut_after_work_linear_in_its_length() {
    let seed = 0x5eed_0001;
    let tail_len = 8 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, locs) = build(dir.path(), 5, 64 << 20);
    let valid = file_len(&seg);
    let mut bytes = std::fs::read(&seg).expect("read segment");
    bytes.extend_from_slice(&random_bytes(seed, tail_len));
    std::fs::write(&seg, &bytes).expect("write segment");

    let file = std_fs()
        .open(&seg, crate::log::OpenMode::Read)
        .expect("open segment");
    let scan = crate::log::segment::scan(
        &file,
        &seg,
        0,
        bytes.len() as u64,
        crate::log::segment::ScanKind::Last(RecoveryMode::Strict),
    )
    .expect("scan");
    assert_eq!(scan.locs.len(), locs.len(), "seed {seed:#x}");
    assert_eq!(
        scan.torn.as_ref().map(|t| t.0),
        Some(valid),
        "seed {seed:#x}"
    );
    // Every offset of the tail is looked at once, and no byte is checksummed more often
    // than the tail is long: the work is linear, not quadratic, in the garbage.
    assert!(
        scan.search.positions <= tail_len as u64,
        "seed {seed:#x}: {:?}",
        scan.search
    );
    assert!(
        scan.search.hashed <= tail_len as u64,
        "seed {seed:#x}: {:?}",
        scan.search
    );
    drop(file);

    let store = open(dir.path(), 64 << 20);
    assert_eq!(ids(&store).len(), 5, "seed {seed:#x}");
    assert_eq!(file_len(&seg), valid, "seed {seed:#x}: the tail is cut");
}

/// Appends `bytes` to the file at `path`.
fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut all = std::fs::read(path).expect("read segment");
    all.extend_from_slice(bytes);
    std::fs::write(path, all).expect("write segment");
}

/// A framed entry record holding `blank(term, index)`.
fn entry_record(term: u64, index: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    crate::codec::encode_entry(&blank(term, index), &mut payload);
    let mut rec = Vec::new();
    crate::log::format::put_frame(&mut rec, crate::log::format::RECORD_ENTRY, &payload);
    rec
}

#[test]
fn a_bad_record_followed_by_a_valid_committed_record_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, locs) = build(dir.path(), 3, 1 << 20);
    let end = file_len(&seg);
    let mut torn = entry_record(1, 3);
    let last = torn.len() - 1;
    torn[last] ^= 0xff;
    let mut committed = Vec::new();
    crate::log::format::put_frame(
        &mut committed,
        crate::log::format::RECORD_COMMITTED,
        &crate::log::format::encode_committed(Some(&id(1, 2))),
    );
    append_bytes(&seg, &[torn, committed].concat());
    match open_err(dir.path()) {
        Error::Corruption { path, offset, .. } => assert_eq!((path, offset), (seg, end)),
        e => panic!("expected corruption, got {e}"),
    }
    assert_eq!(locs.len(), 3);
}

#[test]
fn a_checksummed_entry_that_cannot_continue_the_log_does_not_block_cutting_a_torn_tail() {
    // After a torn record only a record that could follow it proves acknowledged data
    // lies beyond: an entry far past the next index (or from an older leader) cannot have
    // been written there by this log.
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, _) = build(dir.path(), 3, 1 << 20);
    let end = file_len(&seg);
    let mut torn = entry_record(1, 3);
    let last = torn.len() - 1;
    torn[last] ^= 0xff;
    append_bytes(
        &seg,
        &[torn, entry_record(1, 1_000_000), entry_record(0, 4)].concat(),
    );
    let store = open(dir.path(), 1 << 20);
    assert_eq!(ids(&store).len(), 3);
    assert_eq!(file_len(&seg), end);
}

#[test]
fn a_tail_built_to_defeat_the_search_is_refused_with_a_clear_reason() {
    // Dozens of overlapping headers that each claim a record to the end of the file and
    // open with the right log id: checking them all would checksum the tail many times
    // over. The search stops at its budget and, unable to prove the tail torn, refuses.
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, _) = build(dir.path(), 3, 1 << 20);
    let end = file_len(&seg);
    let fakes = 64usize;
    let stride = 14;
    let tail_len = fakes * stride + 64 * 1024;
    let mut tail = vec![0u8; tail_len];
    for k in 0..fakes {
        let at = k * stride;
        let len = (tail_len - at - crate::log::format::FRAME_HEADER_LEN) as u32;
        tail[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        tail[at + 8] = crate::log::format::RECORD_ENTRY;
        // version 1, term 1, node 1, index 3: the next entry.
        tail[at + 9..at + 13].copy_from_slice(&[1, 1, 1, 3]);
    }
    append_bytes(&seg, &tail);
    match open_err(dir.path()) {
        Error::Corruption {
            path,
            offset,
            reason,
        } => {
            assert_eq!((path, offset), (seg.clone(), end));
            assert!(reason.contains("gave up"), "{reason}");
            assert!(reason.contains("TruncateTail"), "{reason}");
        }
        e => panic!("expected corruption, got {e}"),
    }
    let mut c = config(dir.path(), 1 << 20);
    c.recovery = RecoveryMode::TruncateTail;
    let store = LogStore::open(c).expect("open");
    assert_eq!(ids(&store).len(), 3);
    assert_eq!(file_len(&seg), end);
}
