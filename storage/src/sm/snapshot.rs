//! The snapshot file: a group's whole state as of one applied log id, in a self-checking
//! format that can be streamed to a peer in chunks and verified before anything is
//! installed.
//!
//! ```text
//! header  : magic "ADCKSNAP" | version u32 | meta_len u32 | meta | crc32(header so far) u32
//! meta    : group u64 | opt log id (0 | 1 term node index) | membership (state-format encoding)
//! record* : 0x01 | key_len u32 | val_len u32 | key | value | crc32(record so far) u32
//! footer  : 0x00 | record count u64 | crc32(all record bytes) u32 | "ADCKSEND"
//! ```
//!
//! All integers are big-endian. Keys are the group's RocksDB keys without the 8-byte group
//! prefix, in ascending order; values are the RocksDB values unchanged (see
//! `docs/state-format.md`). A reader refuses the file at the first failed check and names
//! the byte offset; nothing after the footer is allowed. The header names the group the
//! snapshot was built from, so a snapshot delivered to the wrong group is refused instead
//! of silently replacing that group's counters.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::format::{self, Malformed, Reader};
use crate::error::{Error, Result};
use crate::log::FileSystem;
use crate::types::SnapshotMeta;

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"ADCKSNAP";
/// Last bytes of every snapshot file.
pub const FOOTER_MAGIC: &[u8; 8] = b"ADCKSEND";
/// Format version written. Version 2 added the group id to the header; version 3 files
/// may hold dedup blocks (`format::tag::DEDUP`), which version 2 readers cannot load, so
/// they refuse the file at its header rather than at a record.
pub const VERSION: u32 = 3;
/// Oldest version read: version 2 differs only in holding no dedup blocks.
pub const MIN_VERSION: u32 = 2;
/// Tag of a record.
pub const RECORD_TAG: u8 = 0x01;
/// Tag of the footer.
pub const FOOTER_TAG: u8 = 0x00;
/// Longest accepted key (a corrupt length must not make us allocate gigabytes).
pub const MAX_KEY_LEN: u32 = 1024;
/// Longest accepted value.
pub const MAX_VALUE_LEN: u32 = 1 << 20;
/// Longest accepted header meta section.
pub const MAX_META_LEN: u32 = 1 << 20;

/// File name prefix and suffix of a complete snapshot; temporary files end in `.part`.
const NAME_PREFIX: &str = "snap-";
const NAME_SUFFIX: &str = ".snap";
const PART_SUFFIX: &str = ".part";

/// A snapshot file, open for reading from its start: openraft's `SnapshotData`.
///
/// The network layer can stream it (`file()` / `tokio::fs::File::from_std(into_file())`)
/// in chunks; the receiver writes the chunks into an [`IncomingSnapshot`] and passes the
/// result to `install_snapshot`, which verifies every byte before using it.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: File,
}

impl SnapshotFile {
    /// Opens a snapshot file for reading.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let file = File::open(&path)
            .map_err(|e| Error::io(format!("open snapshot {}", path.display()), e))?;
        Ok(SnapshotFile { path, file })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (positioned at the start when handed out).
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The open file, for streaming.
    pub fn into_file(self) -> File {
        self.file
    }

    /// Size in bytes.
    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("stat snapshot {}", self.path.display()), e))
    }

    /// Whether the file is empty (a valid snapshot never is).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A snapshot being received from a peer: write the chunks, then [`IncomingSnapshot::finish`].
/// Create it in the state machine's snapshot directory so install can rename it in place.
/// Dropped unfinished (a transfer cut short), it removes its file.
#[derive(Debug)]
pub struct IncomingSnapshot {
    path: PathBuf,
    /// `None` once finished.
    file: Option<BufWriter<File>>,
}

impl IncomingSnapshot {
    /// Creates a temporary file in `dir` (removed on drop if never finished, and by the
    /// next open after a crash).
    pub fn create(dir: &Path) -> Result<Self> {
        let path = temp_path(dir, "recv");
        let file =
            File::create(&path).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        Ok(IncomingSnapshot {
            path,
            file: Some(BufWriter::new(file)),
        })
    }

    /// The temporary file's path (a [`SnapshotFile`] that openraft declines to install
    /// stays there; its receiver removes it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, fsyncs and reopens the file for reading.
    pub fn finish(mut self) -> Result<SnapshotFile> {
        let ctx = |p: &Path| format!("finish snapshot {}", p.display());
        let Some(file) = self.file.take() else {
            return Err(Error::Closed);
        };
        let file = file
            .into_inner()
            .map_err(|e| Error::io(ctx(&self.path), e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(ctx(&self.path), e))?;
        let opened = SnapshotFile::open(self.path.clone());
        if opened.is_ok() {
            // The file is the caller's now; do not remove it on drop.
            self.path = PathBuf::new();
        }
        opened
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            drop(self.file.take());
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %self.path.display(), error = %e, "removing an unfinished snapshot");
                }
            }
        }
    }
}

impl Write for IncomingSnapshot {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("snapshot already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

fn temp_path(dir: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{what}-{}-{n}{PART_SUFFIX}", std::process::id()))
}

/// The file name of the snapshot covering `meta`: names sort like log positions.
pub fn file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        None => format!("{NAME_PREFIX}{:020}-{:020}-{:020}{NAME_SUFFIX}", 0, 0, 0),
        Some(id) => format!(
            "{NAME_PREFIX}{:020}-{:020}-{:020}{NAME_SUFFIX}",
            // +1 so that "nothing applied" sorts before index 0.
            u128::from(id.index) + 1,
            id.leader_id.term,
            id.leader_id.node_id
        ),
    }
}

/// Complete snapshot files in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(NAME_PREFIX) && name.ends_with(NAME_SUFFIX) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `path` names a temporary (unpublished) snapshot file.
pub fn is_partial(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(PART_SUFFIX))
}

/// Removes temporary files left by a crash during build or receive.
pub fn remove_partials(dir: &Path) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        if entry.file_name().to_string_lossy().ends_with(PART_SUFFIX) {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| Error::io(format!("remove {}", p.display()), e))?;
        }
    }
    Ok(())
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    crate::log::StdFs
        .sync_dir(dir)
        .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

/// Copies the snapshot `file` (from its start) into a new temporary file in `dir`, fsync'd,
/// so that installing a snapshot that lives elsewhere never moves or changes the caller's
/// file (another group's current snapshot, say) and never renames across file systems.
pub fn copy_into(dir: &Path, mut file: SnapshotFile) -> Result<SnapshotFile> {
    let source = file.path().to_path_buf();
    let mut copy = IncomingSnapshot::create(dir)?;
    let copied = file
        .file()
        .seek(SeekFrom::Start(0))
        .and_then(|_| io::copy(file.file(), &mut copy));
    if let Err(e) = copied {
        let _ = fs::remove_file(&copy.path);
        return Err(Error::io(
            format!("copy snapshot {} into {}", source.display(), dir.display()),
            e,
        ));
    }
    let path = copy.path.clone();
    copy.finish().inspect_err(|_| {
        let _ = fs::remove_file(&path);
    })
}

/// Moves `file` (already fsync'd) to its final name in `dir` and deletes every other
/// complete snapshot that is not newer. Returns the final path.
///
/// The rename is made durable before anything older is deleted, so a crash in between
/// leaves the older snapshot as well, never neither.
pub fn publish(dir: &Path, file: &Path, meta: &SnapshotMeta) -> Result<PathBuf> {
    let target = dir.join(file_name(meta));
    if file != target {
        fs::rename(file, &target).map_err(|e| {
            Error::io(
                format!("rename {} to {}", file.display(), target.display()),
                e,
            )
        })?;
        sync_dir(dir)?;
    }
    for old in list(dir)? {
        if old < target {
            fs::remove_file(&old).map_err(|e| Error::io(format!("remove {}", old.display()), e))?;
        }
    }
    sync_dir(dir)?;
    Ok(target)
}

/// Writes a snapshot file: header, then records in ascending key order, then footer.
pub struct SnapshotWriter {
    path: PathBuf,
    out: BufWriter<File>,
    records: u64,
    body: crc32fast::Hasher,
    last_key: Option<Vec<u8>>,
}

impl SnapshotWriter {
    /// Starts a temporary file in `dir` with the header of `group`'s snapshot at `meta`.
    pub fn create(dir: &Path, group: u64, meta: &SnapshotMeta) -> Result<Self> {
        let path = temp_path(dir, "build");
        let file =
            File::create(&path).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let mut w = SnapshotWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            records: 0,
            body: crc32fast::Hasher::new(),
            last_key: None,
        };
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_be_bytes());
        let meta_bytes = encode_meta(group, meta);
        header.extend_from_slice(&len_u32(meta_bytes.len()).to_be_bytes());
        header.extend_from_slice(&meta_bytes);
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_be_bytes());
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out
            .write_all(b)
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))
    }

    /// Appends one record; keys must ascend.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        assert!(
            self.last_key.as_deref().is_none_or(|k| k < key),
            "snapshot records out of order"
        );
        assert!(
            len_u32(key.len()) <= MAX_KEY_LEN,
            "key of {} bytes",
            key.len()
        );
        assert!(
            len_u32(value.len()) <= MAX_VALUE_LEN,
            "value of {} bytes",
            value.len()
        );
        let mut rec = Vec::with_capacity(13 + key.len() + value.len());
        rec.push(RECORD_TAG);
        rec.extend_from_slice(&len_u32(key.len()).to_be_bytes());
        rec.extend_from_slice(&len_u32(value.len()).to_be_bytes());
        rec.extend_from_slice(key);
        rec.extend_from_slice(value);
        let crc = crc32fast::hash(&rec);
        rec.extend_from_slice(&crc.to_be_bytes());
        self.body.update(&rec);
        self.records += 1;
        self.last_key = Some(key.to_vec());
        self.write(&rec)
    }

    /// Writes the footer, fsyncs, and returns the temporary path and the record count.
    pub fn finish(mut self) -> Result<(PathBuf, u64)> {
        let mut footer = vec![FOOTER_TAG];
        footer.extend_from_slice(&self.records.to_be_bytes());
        footer.extend_from_slice(&self.body.clone().finalize().to_be_bytes());
        footer.extend_from_slice(FOOTER_MAGIC);
        self.write(&footer)?;
        let ctx = format!("sync {}", self.path.display());
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(ctx.clone(), e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(ctx, e))?;
        Ok((self.path, self.records))
    }

    /// Removes the unfinished file (on a failed build).
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn encode_meta(group: u64, meta: &SnapshotMeta) -> Vec<u8> {
    let mut out = group.to_be_bytes().to_vec();
    format::put_opt_log_id(&mut out, meta.last_log_id.as_ref());
    out.extend_from_slice(&format::encode_membership(&meta.last_membership));
    out
}

fn decode_meta(b: &[u8]) -> std::result::Result<(u64, SnapshotMeta), Malformed> {
    let mut r = Reader::new(b, "snapshot meta");
    let group = r.u64()?;
    let last_log_id = format::get_opt_log_id(&mut r)?;
    r.version()?;
    let last_membership = format::get_membership_body(&mut r)?;
    r.finish()?;
    Ok((
        group,
        SnapshotMeta {
            last_log_id,
            last_membership,
        },
    ))
}

/// Reads and checks a snapshot file front to back.
pub struct SnapshotReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    group: u64,
    meta: SnapshotMeta,
    records: u64,
    body: crc32fast::Hasher,
    last_key: Option<Vec<u8>>,
    done: bool,
}

impl SnapshotReader {
    /// Opens `file` from its start and checks the header.
    pub fn new(file: SnapshotFile) -> Result<Self> {
        let SnapshotFile { path, mut file } = file;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(format!("seek {}", path.display()), e))?;
        let mut r = SnapshotReader {
            path,
            input: BufReader::with_capacity(1 << 20, file),
            offset: 0,
            group: 0,
            meta: SnapshotMeta::default(),
            records: 0,
            body: crc32fast::Hasher::new(),
            last_key: None,
            done: false,
        };
        (r.group, r.meta) = r.read_header()?;
        Ok(r)
    }

    /// The meta recorded in the header.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The group the snapshot was built from.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, at: u64, reason: impl Into<String>) -> Error {
        Error::corruption(&self.path, at, reason)
    }

    fn read_exact(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.input.read_exact(&mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.corrupt(self.offset, "truncated")
            } else {
                Error::io(format!("read {}", self.path.display()), e)
            }
        })?;
        self.offset += n as u64;
        Ok(buf)
    }

    fn read_header(&mut self) -> Result<(u64, SnapshotMeta)> {
        let fixed = self.read_exact(16)?;
        if &fixed[..8] != MAGIC {
            return Err(self.corrupt(0, "not a snapshot file (bad magic)"));
        }
        let version = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(self.corrupt(8, format!("unsupported snapshot version {version}")));
        }
        let meta_len = u32::from_be_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
        if meta_len > MAX_META_LEN {
            return Err(self.corrupt(12, format!("meta length {meta_len} too large")));
        }
        let meta = self.read_exact(meta_len as usize)?;
        let crc = self.read_exact(4)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&fixed);
        h.update(&meta);
        if h.finalize().to_be_bytes()[..] != crc[..] {
            return Err(self.corrupt(16 + u64::from(meta_len), "header checksum mismatch"));
        }
        decode_meta(&meta).map_err(|m| self.corrupt(16, m.0))
    }

    /// The next record `(key without group prefix, value)`, or None after a verified footer.
    pub fn next_record(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let at = self.offset;
        let tag = self.read_exact(1)?;
        match tag[0] {
            RECORD_TAG => {}
            FOOTER_TAG => {
                self.read_footer(at)?;
                self.done = true;
                return Ok(None);
            }
            t => return Err(self.corrupt(at, format!("unknown record tag {t:#04x}"))),
        }
        let lens = self.read_exact(8)?;
        let key_len = u32::from_be_bytes([lens[0], lens[1], lens[2], lens[3]]);
        let val_len = u32::from_be_bytes([lens[4], lens[5], lens[6], lens[7]]);
        if key_len == 0 || key_len > MAX_KEY_LEN || val_len > MAX_VALUE_LEN {
            return Err(self.corrupt(
                at,
                format!("implausible record lengths {key_len}/{val_len}"),
            ));
        }
        let key = self.read_exact(key_len as usize)?;
        let value = self.read_exact(val_len as usize)?;
        let crc = self.read_exact(4)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&tag);
        h.update(&lens);
        h.update(&key);
        h.update(&value);
        if h.finalize().to_be_bytes()[..] != crc[..] {
            return Err(self.corrupt(at, "record checksum mismatch"));
        }
        if self.last_key.as_ref().is_some_and(|k| *k >= key) {
            return Err(self.corrupt(at, "record keys out of order"));
        }
        for part in [&tag[..], &lens, &key, &value, &crc] {
            self.body.update(part);
        }
        self.records += 1;
        self.last_key = Some(key.clone());
        Ok(Some((key, value)))
    }

    fn read_footer(&mut self, at: u64) -> Result<()> {
        let rest = self.read_exact(8 + 4 + 8)?;
        let count = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
        let body_crc = &rest[8..12];
        if &rest[12..] != FOOTER_MAGIC {
            return Err(self.corrupt(at, "bad footer magic"));
        }
        if count != self.records {
            return Err(self.corrupt(
                at,
                format!("footer counts {count} records, file has {}", self.records),
            ));
        }
        if self.body.clone().finalize().to_be_bytes()[..] != body_crc[..] {
            return Err(self.corrupt(at, "body checksum mismatch"));
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.corrupt(self.offset, "bytes after the footer")),
            Err(e) => Err(Error::io(format!("read {}", self.path.display()), e)),
        }
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// Reads only the header of the snapshot at `path`.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta> {
    Ok(SnapshotReader::new(SnapshotFile::open(path)?)?.meta)
}

/// Reads the whole file, checking every record and the footer; returns the header's meta.
pub fn verify(path: &Path) -> Result<(SnapshotMeta, u64)> {
    let mut r = SnapshotReader::new(SnapshotFile::open(path)?)?;
    while r.next_record()?.is_some() {}
    Ok((r.meta.clone(), r.records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(dir: &Path) -> PathBuf {
        let mut w = SnapshotWriter::create(dir, 1, &SnapshotMeta::default()).expect("create");
        for i in 0u32..100 {
            w.record(&i.to_be_bytes(), &[i as u8; 10]).expect("record");
        }
        w.finish().expect("finish").0
    }

    #[test]
    fn a_written_snapshot_reads_back_verbatim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_sample(dir.path());
        let mut r = SnapshotReader::new(SnapshotFile::open(&path).expect("open")).expect("header");
        assert_eq!(r.meta(), &SnapshotMeta::default());
        let mut n = 0u32;
        while let Some((k, v)) = r.next_record().expect("record") {
            assert_eq!((k, v), (n.to_be_bytes().to_vec(), vec![n as u8; 10]));
            n += 1;
        }
        assert_eq!(n, 100);
    }

    #[test]
    fn versions_2_and_3_are_read_and_others_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = fs::read(write_sample(dir.path())).expect("read");
        assert_eq!(good[8..12], VERSION.to_be_bytes());
        let with_version = |v: u32| {
            let mut b = good.clone();
            b[8..12].copy_from_slice(&v.to_be_bytes());
            let meta_len = u32::from_be_bytes([b[12], b[13], b[14], b[15]]) as usize;
            let crc = crc32fast::hash(&b[..16 + meta_len]);
            b[16 + meta_len..20 + meta_len].copy_from_slice(&crc.to_be_bytes());
            let path = dir.path().join(format!("v{v}"));
            fs::write(&path, b).expect("write");
            verify(&path)
        };
        assert_eq!(with_version(2).expect("version 2").1, 100);
        assert_eq!(with_version(3).expect("version 3").1, 100);
        for v in [1, 4] {
            let err = with_version(v).expect_err(&format!("version {v} read"));
            assert!(err.is_corruption(), "version {v}: {err}");
        }
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_sample(dir.path());
        let good = fs::read(&path).expect("read");
        let bad = dir.path().join("bad");
        for i in (0..good.len()).step_by(7).chain([good.len() - 1]) {
            let mut b = good.clone();
            b[i] ^= 0x20;
            fs::write(&bad, &b).expect("write");
            let err = verify(&bad).expect_err(&format!("flip at {i} accepted"));
            assert!(err.is_corruption(), "flip at {i}: {err}");
        }
        for n in [0, 5, 20, good.len() / 2, good.len() - 1] {
            fs::write(&bad, &good[..n]).expect("write");
            assert!(
                verify(&bad)
                    .expect_err("truncation accepted")
                    .is_corruption(),
                "cut at {n}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&bad, &longer).expect("write");
        assert!(verify(&bad)
            .expect_err("trailing byte accepted")
            .is_corruption());
    }

    #[test]
    fn an_unfinished_incoming_snapshot_removes_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cut = IncomingSnapshot::create(dir.path()).expect("create");
        cut.write_all(b"half a snapshot").expect("write");
        let path = cut.path().to_path_buf();
        assert!(path.exists());
        drop(cut);
        assert!(!path.exists(), "a transfer cut short leaves no file behind");

        let mut done = IncomingSnapshot::create(dir.path()).expect("create");
        done.write_all(b"a whole snapshot").expect("write");
        let path = done.path().to_path_buf();
        let file = done.finish().expect("finish");
        assert!(path.exists(), "a finished snapshot is the caller's to keep");
        assert_eq!(file.path(), path);
    }
}
