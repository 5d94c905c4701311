//! Crafted files: bytes on disk never make the log panic, whatever they claim. Indexes near
//! `u64::MAX` in names, seals, meta files and entries are corruption naming the file and
//! the offset (`u64::MAX` itself is reserved: the index after any stored one must exist).

use super::*;
use crate::codec;
use crate::log::format::{self, Meta, Seal, MAX_INDEX, RECORD_COMMITTED, RECORD_ENTRY};
use crate::Error;

/// Writes segment `first` holding a committed record and then `entries` (their indexes
/// are taken as given), plus a seal claiming `seal` if set. Returns the offset of each
/// entry record.
fn write_segment(dir: &Path, first: u64, entries: &[u64], seal: Option<u64>) -> Vec<u64> {
    let mut buf = format::encode_segment_header(first).to_vec();
    format::put_frame(&mut buf, RECORD_COMMITTED, &format::encode_committed(None));
    let mut offsets = Vec::new();
    for &index in entries {
        offsets.push(buf.len() as u64);
        let mut payload = Vec::new();
        codec::encode_entry(&blank(1, index), &mut payload);
        format::put_frame(&mut buf, RECORD_ENTRY, &payload);
    }
    if let Some(last_index) = seal {
        let seal = Seal {
            last_index,
            sealed_at_ms: 1,
            committed: None,
        };
        format::put_frame(&mut buf, format::RECORD_SEAL, &format::encode_seal(&seal));
    }
    std::fs::write(dir.join(format::segment_file_name(first)), buf).expect("write segment");
    offsets
}

/// Writes a meta file whose purged index is `purged` (checksum valid).
fn write_meta(dir: &Path, purged: u64) {
    let meta = Meta {
        vote: None,
        purged: Some(id(1, MAX_INDEX)),
        raw_from: 0,
    };
    let mut b = format::encode_meta(&meta);
    b[47..55].copy_from_slice(&purged.to_le_bytes());
    let crc = crc32fast::hash(&b[0..63]);
    b[63..67].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.join(format::META_FILE), b).expect("write meta");
}

fn corruption(dir: &Path) -> (PathBuf, u64, String) {
    match LogStore::open(config(dir, 1 << 20)) {
        Err(Error::Corruption {
            path,
            offset,
            reason,
        }) => (path, offset, reason),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, the log opened"),
    }
}

#[test]
fn a_meta_file_purged_at_u64_max_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_meta(dir.path(), u64::MAX);
    let (path, _, reason) = corruption(dir.path());
    assert_eq!(path, dir.path().join(format::META_FILE));
    assert!(reason.contains("largest index"), "{reason}");
}

#[test]
fn a_seal_claiming_u64_max_under_a_purge_at_u64_max_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segment(dir.path(), 0, &[0, 1], Some(u64::MAX));
    write_segment(dir.path(), 2, &[], None);
    write_meta(dir.path(), u64::MAX);
    let (path, _, _) = corruption(dir.path());
    assert_eq!(path, dir.path().join(format::META_FILE));
}

#[test]
fn a_seal_claiming_u64_max_is_corruption_at_the_seal() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segment(dir.path(), 0, &[0, 1], Some(u64::MAX));
    write_segment(dir.path(), 2, &[], None);
    let seg = dir.path().join(format::segment_file_name(0));
    let seal_at = std::fs::metadata(&seg).expect("metadata").len() - SEAL_LEN;
    let (path, offset, reason) = corruption(dir.path());
    assert_eq!((path, offset), (seg, seal_at));
    assert!(reason.contains("largest index"), "{reason}");
}

const SEAL_LEN: u64 = format::SEAL_RECORD_LEN as u64;

#[test]
fn an_entry_at_u64_max_in_a_segment_named_u64_max_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = write_segment(dir.path(), u64::MAX, &[u64::MAX], None);
    let (path, offset, reason) = corruption(dir.path());
    assert_eq!(
        (path, offset),
        (dir.path().join(format::segment_file_name(u64::MAX)), at[0])
    );
    assert!(reason.contains("largest index"), "{reason}");
}

#[test]
fn entries_running_past_the_largest_index_are_corruption_at_the_first_too_far() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = MAX_INDEX - 1;
    let at = write_segment(dir.path(), first, &[first, MAX_INDEX, u64::MAX], None);
    let (path, offset, _) = corruption(dir.path());
    assert_eq!(
        (path, offset),
        (dir.path().join(format::segment_file_name(first)), at[2])
    );
}

#[test]
fn a_log_ending_at_the_largest_index_opens_and_refuses_to_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_segment(dir.path(), MAX_INDEX - 1, &[MAX_INDEX - 1, MAX_INDEX], None);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(ids(&store), vec![id(1, MAX_INDEX - 1), id(1, MAX_INDEX)]);
    let err = store
        .shared
        .append(vec![blank(1, u64::MAX)], IOFlushed::noop())
        .expect_err("u64::MAX is reserved");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    store
        .shared
        .truncate_after(Some(id(1, u64::MAX)))
        .expect("nothing follows u64::MAX");
    drop(store);
    assert_eq!(ids(&open(dir.path(), 1 << 20)).len(), 2);
}

#[test]
fn raft_inputs_past_the_largest_index_are_refused_before_reaching_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1 << 20);
    for batch in [
        vec![blank(1, u64::MAX)],
        vec![blank(1, MAX_INDEX), blank(1, u64::MAX)],
    ] {
        let err = store
            .shared
            .append(batch, IOFlushed::noop())
            .expect_err("u64::MAX is reserved");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
    let err = store.shared.purge(id(1, u64::MAX)).expect_err("purge");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = store
        .shared
        .save_committed(Some(id(1, u64::MAX)))
        .expect_err("committed");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    drop(store);
    // Nothing reached the disk that recovery would refuse.
    assert_eq!(ids(&open(dir.path(), 1 << 20)), vec![]);
}
