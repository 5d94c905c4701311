//! Fault injection: a file system that emulates a volatile page cache, so the fault
//! suite can simulate a power loss after killing a node.
//!
//! The journaling file system (`CrashFs`) exists only with the `fault-injection` feature;
//! reading a journal and applying it ([`drop_unsynced`]) is always compiled, so the test
//! harness can emulate the power loss without enabling the feature (which would put the
//! switches into every binary built alongside it).
//!
//! A `kill -9` loses nothing a process wrote: the page cache survives the process and
//! reaches the disk later. A power loss loses what was not fsynced. [`CrashFs`] passes
//! every operation to the real file system and keeps a **crash journal**: for each file,
//! how many of its bytes a power loss would keep. After killing the node, the harness
//! calls [`drop_unsynced`] on its data directory, which cuts every file back to what the
//! journal says survived; restarting the node then recovers from a power-loss state.
//!
//! What counts as durable (per file, in bytes from its start):
//! - `sync_data` makes durable the length the file had when the call *started*, once the
//!   real fsync succeeds: writes racing with an fsync are not known to be covered by it,
//!   and the log acknowledges only writes that completed before its fsync started.
//! - [`LogFile::sync_skipped`] (the flusher under [`super::LogConfig::fault_skip_fsync`])
//!   emulates the OS's own writeback: it makes durable the length the file had at least
//!   [`WRITEBACK_DELAY`] earlier, from a small ring of (time, length) samples taken on
//!   writes. An unsynced log thus loses about its last second.
//! - Truncation (`set_len`) lowers the durable length to the new length at once, and an
//!   fsync that was running when a truncation happened records nothing.
//! - A new file has 0 durable bytes until synced. A file that existed when the journal
//!   started, or that this process first sees already existing, counts as durable whole:
//!   whatever an earlier crash did to it was settled before this process started.
//! - A rename carries the record to the new name (replacing the target's); a removal drops
//!   it.
//!
//! Invariants:
//! - The journal on disk (`<data-dir>/`[`JOURNAL_FILE`]) reflects every durable length
//!   before the call that changed it returns. It is rewritten whole to a temporary file
//!   and renamed over, so a `kill -9` leaves the old or the new journal, never a mix; it
//!   is not fsynced, since only process crashes are emulated.
//! - Only files under the data directory are journaled (by their path relative to it, so
//!   a copied data directory keeps a valid journal); others pass through untouched.
//!
//! Where the emulation is kinder than a real disk: directory operations (create, rename,
//! remove) are durable at once, as if every one were followed by a directory fsync; a cut
//! file never ends in garbage or zeros (a real disk may leave either after the last synced
//! byte); and an overwrite of durable bytes counts as durable (the log only ever writes
//! past its durable end). It is never stricter than a real disk for a store that fsyncs
//! before it acknowledges. `docs/fault-injection.md` documents the journal's bytes.

use std::collections::{BTreeMap, BTreeSet};
#[cfg(feature = "fault-injection")]
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
#[cfg(feature = "fault-injection")]
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
#[cfg(feature = "fault-injection")]
use std::time::Instant;

#[cfg(feature = "fault-injection")]
use super::fs::{FileLock, FileSystem, LogFile, OpenMode};

/// The journal's file name, in the data directory.
pub const JOURNAL_FILE: &str = "fault-crash-journal";
/// The first line of a journal, before its newline: magic and format version.
pub const JOURNAL_HEADER: &str = "adclick-crash-journal 1";
/// How old a length must be for the emulated writeback to make it durable.
pub const WRITEBACK_DELAY: Duration = Duration::from_secs(1);
/// Least time between two length samples of one file (a later write updates the newest).
#[cfg(feature = "fault-injection")]
const SAMPLE_SPACING: Duration = Duration::from_millis(100);
/// Samples kept per file: enough to reach past [`WRITEBACK_DELAY`] at [`SAMPLE_SPACING`].
#[cfg(feature = "fault-injection")]
const MAX_SAMPLES: usize = 32;

/// A file system that journals what a power loss would keep of each file (see the module
/// docs). Clones share one journal: every log store of a node must use the same one.
#[derive(Debug, Clone)]
#[cfg(feature = "fault-injection")]
pub struct CrashFs {
    inner: Arc<dyn FileSystem>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
#[cfg(feature = "fault-injection")]
struct Shared {
    /// The data directory, absolute; the journal lives in it and names files relative to it.
    data_dir: PathBuf,
    /// Directories (relative) whose unjournaled files [`drop_unsynced`] empties.
    roots: Vec<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
#[cfg(feature = "fault-injection")]
struct State {
    next_id: u64,
    /// Relative path → the file living there now.
    by_path: BTreeMap<PathBuf, u64>,
    /// What is known of each file, by id; open handles keep their id across renames.
    files: HashMap<u64, Tracked>,
}

#[derive(Debug, Default)]
#[cfg(feature = "fault-injection")]
struct Tracked {
    /// Current length (every write and truncation goes through this file system).
    len: u64,
    /// Bytes a power loss keeps.
    durable: u64,
    /// Truncations so far: an fsync that saw another count records nothing.
    truncations: u64,
    /// Lengths over time, oldest first, for the emulated writeback.
    samples: VecDeque<Sample>,
}

/// The file had `len` bytes at `at`; the sample was started at `first` (later writes within
/// [`SAMPLE_SPACING`] of it move `at` and `len` forward).
#[derive(Debug, Clone, Copy)]
#[cfg(feature = "fault-injection")]
struct Sample {
    first: Instant,
    at: Instant,
    len: u64,
}

#[cfg(feature = "fault-injection")]
impl Tracked {
    fn new(len: u64, durable: u64) -> Self {
        Tracked {
            len,
            durable,
            ..Tracked::default()
        }
    }

    fn wrote(&mut self, end: u64, now: Instant) {
        self.len = self.len.max(end);
        let len = self.len;
        match self.samples.back_mut() {
            Some(s) if now.duration_since(s.first) < SAMPLE_SPACING => {
                s.at = now;
                s.len = len;
            }
            _ => {
                if self.samples.len() == MAX_SAMPLES {
                    self.samples.pop_front();
                }
                self.samples.push_back(Sample {
                    first: now,
                    at: now,
                    len,
                });
            }
        }
    }

    /// The emulated writeback at `now`: lengths at least [`WRITEBACK_DELAY`] old are
    /// durable. Returns whether the durable length grew.
    fn write_back(&mut self, now: Instant) -> bool {
        let Some(cutoff) = now.checked_sub(WRITEBACK_DELAY) else {
            return false;
        };
        let Some(newest) = self.samples.iter().rposition(|s| s.at <= cutoff) else {
            return false;
        };
        let len = self.samples[newest].len;
        // Older samples can never be needed again.
        self.samples.drain(..newest);
        if len > self.durable {
            self.durable = len;
            return true;
        }
        false
    }

    fn truncated(&mut self, len: u64) -> bool {
        self.len = len;
        self.truncations += 1;
        for s in &mut self.samples {
            s.len = s.len.min(len);
        }
        let lowered = self.durable > len;
        self.durable = self.durable.min(len);
        lowered
    }
}

#[cfg(feature = "fault-injection")]
fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(feature = "fault-injection")]
impl CrashFs {
    /// Starts the journal of the node whose data directory is `data_dir` (created if
    /// missing), over `inner`. `log_dirs` are the directories whose files the journal
    /// covers (they must be inside `data_dir`; they need not exist yet): every file found
    /// in them now counts as durable whole, and [`drop_unsynced`] empties a file in them
    /// that the journal does not know. Writes the journal before returning.
    pub fn new(
        data_dir: &Path,
        log_dirs: impl IntoIterator<Item = PathBuf>,
        inner: Arc<dyn FileSystem>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let data_dir = std::path::absolute(data_dir)?;
        let mut roots = Vec::new();
        for d in log_dirs {
            let rel = relative_to(&data_dir, &d).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "crash journal: {} is not inside the data directory {}",
                        d.display(),
                        data_dir.display()
                    ),
                )
            })?;
            roots.push(rel);
        }
        let mut state = State::default();
        for root in &roots {
            for (rel, len) in files_under(&data_dir, root)? {
                state.insert(rel, Tracked::new(len, len));
            }
        }
        let shared = Shared {
            data_dir,
            roots,
            state: Mutex::new(state),
        };
        shared.persist(&lock(&shared.state))?;
        Ok(CrashFs {
            inner,
            shared: Arc::new(shared),
        })
    }

    /// The bytes of `path` a power loss would keep now, if the journal knows the file.
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let rel = self.shared.rel(path)?;
        let st = lock(&self.shared.state);
        st.by_path
            .get(&rel)
            .and_then(|id| st.files.get(id))
            .map(|t| t.durable)
    }

    /// Where the journal is written.
    pub fn journal_path(&self) -> PathBuf {
        self.shared.data_dir.join(JOURNAL_FILE)
    }
}

#[cfg(feature = "fault-injection")]
impl State {
    fn insert(&mut self, rel: PathBuf, t: Tracked) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(old) = self.by_path.insert(rel, id) {
            self.files.remove(&old);
        }
        self.files.insert(id, t);
        id
    }

    fn remove(&mut self, rel: &Path) -> Option<u64> {
        let id = self.by_path.remove(rel)?;
        self.files.remove(&id);
        Some(id)
    }
}

#[cfg(feature = "fault-injection")]
impl Shared {
    /// `path` relative to the data directory, if it lies inside it.
    fn rel(&self, path: &Path) -> Option<PathBuf> {
        relative_to(&self.data_dir, path)
    }

    /// Rewrites the journal from `st`: a temporary file renamed over the old one.
    fn persist(&self, st: &State) -> io::Result<()> {
        let files = st
            .by_path
            .iter()
            .filter_map(|(rel, id)| st.files.get(id).map(|t| (rel.as_path(), t.durable)));
        let bytes = encode(&self.roots, files);
        let path = self.data_dir.join(JOURNAL_FILE);
        let tmp = self.data_dir.join(format!("{JOURNAL_FILE}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }

    /// Applies `f` to the file `id` (if still journaled) and persists when it says so.
    fn update(&self, id: Option<u64>, f: impl FnOnce(&mut Tracked) -> bool) -> io::Result<()> {
        let Some(id) = id else { return Ok(()) };
        let mut st = lock(&self.state);
        let changed = st.files.get_mut(&id).is_some_and(f);
        if changed {
            self.persist(&st)?;
        }
        Ok(())
    }
}

/// `path` (made absolute) relative to `dir` (absolute), if inside it and made only of
/// plain names.
#[cfg(feature = "fault-injection")]
fn relative_to(dir: &Path, path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let rel = abs.strip_prefix(dir).ok()?;
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && rel.components().next().is_some()).then(|| rel.to_path_buf())
}

/// Every regular file under `dir/root` (recursively) with its length, paths relative to
/// `dir`; nothing if `dir/root` does not exist.
fn files_under(dir: &Path, root: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(rel) = todo.pop() {
        let entries = match std::fs::read_dir(dir.join(&rel)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let kind = e.file_type()?;
            let child = rel.join(e.file_name());
            if kind.is_dir() {
                todo.push(child);
            } else if kind.is_file() {
                out.push((child, e.metadata()?.len()));
            }
        }
    }
    Ok(out)
}

#[cfg(feature = "fault-injection")]
impl FileSystem for CrashFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>> {
        let file = self.inner.open(path, mode)?;
        let id = match self.shared.rel(path) {
            None => None,
            Some(rel) => {
                let mut st = lock(&self.shared.state);
                let known = st.by_path.get(&rel).copied();
                let id = match (mode, known) {
                    (OpenMode::Read | OpenMode::ReadWrite, Some(id)) => id,
                    (OpenMode::CreateNew, _) => st.insert(rel, Tracked::new(0, 0)),
                    (OpenMode::Read | OpenMode::ReadWrite, None) => {
                        // Not written by this process: it was on disk before.
                        let len = file.size()?;
                        st.insert(rel, Tracked::new(len, len))
                    }
                };
                self.shared.persist(&st)?;
                Some(id)
            }
        };
        Ok(Arc::new(CrashFile {
            inner: file,
            shared: Arc::clone(&self.shared),
            id,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)?;
        if let Some(rel) = self.shared.rel(path) {
            let mut st = lock(&self.shared.state);
            if st.remove(&rel).is_some() {
                self.shared.persist(&st)?;
            }
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)?;
        let (from_rel, to_rel) = (self.shared.rel(from), self.shared.rel(to));
        if from_rel.is_none() && to_rel.is_none() {
            return Ok(());
        }
        let mut st = lock(&self.shared.state);
        let moved = from_rel.and_then(|r| st.by_path.remove(&r));
        if let Some(to_rel) = to_rel {
            match moved {
                Some(id) => {
                    if let Some(old) = st.by_path.insert(to_rel, id) {
                        st.files.remove(&old);
                    }
                }
                None => {
                    // Moved in from where nothing is journaled: on disk before.
                    let len = std::fs::metadata(to)?.len();
                    st.insert(to_rel, Tracked::new(len, len));
                }
            }
        } else if let Some(id) = moved {
            st.files.remove(&id);
        }
        self.shared.persist(&st)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }

    fn try_lock_file(&self, path: &Path) -> io::Result<Box<dyn FileLock>> {
        self.inner.try_lock_file(path)
    }
}

#[derive(Debug)]
#[cfg(feature = "fault-injection")]
struct CrashFile {
    inner: Arc<dyn LogFile>,
    shared: Arc<Shared>,
    /// `None` for a file outside the data directory (not journaled).
    id: Option<u64>,
}

#[cfg(feature = "fault-injection")]
impl LogFile for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let res = self.inner.write_all_at(buf, offset);
        // After a failed (possibly torn) write only the file knows its length.
        let end = match &res {
            Ok(()) => Some(offset.saturating_add(buf.len() as u64)),
            Err(_) => self.inner.size().ok(),
        };
        if let Some(end) = end {
            self.shared.update(self.id, |t| {
                t.wrote(end, Instant::now());
                false
            })?;
        }
        res
    }

    fn sync_data(&self) -> io::Result<()> {
        let Some(id) = self.id else {
            return self.inner.sync_data();
        };
        let before = {
            let st = lock(&self.shared.state);
            st.files.get(&id).map(|t| (t.len, t.truncations))
        };
        self.inner.sync_data()?;
        self.shared.update(Some(id), |t| match before {
            Some((len, truncations)) if truncations == t.truncations && len > t.durable => {
                t.durable = len;
                true
            }
            _ => false,
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.shared.update(self.id, |t| t.truncated(len))
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn sync_skipped(&self) {
        self.inner.sync_skipped();
        let persisted = self
            .shared
            .update(self.id, |t| t.write_back(Instant::now()));
        if let Err(e) = persisted {
            // The flusher has no error path here (it is pretending to sync): the journal
            // only lags, which makes the emulated loss larger, never smaller.
            tracing::error!(error = %e, "crash journal: cannot write the journal");
        }
    }
}

/// One file [`drop_unsynced`] cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutFile {
    /// The file (the data directory joined with its journaled path).
    pub path: PathBuf,
    /// Its length before.
    pub len: u64,
    /// Its length after: the durable length, or 0 for a file the journal did not know.
    pub kept: u64,
    /// Whether the journal knew the file.
    pub journaled: bool,
}

/// What [`drop_unsynced`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// The files it cut, in path order; files already at their durable length are not
    /// listed.
    pub cut: Vec<CutFile>,
}

impl CrashReport {
    /// Bytes dropped in all.
    pub fn dropped_bytes(&self) -> u64 {
        self.cut.iter().map(|c| c.len - c.kept).sum()
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cut.is_empty() {
            return f.write_str("power loss emulated: nothing was unsynced");
        }
        write!(
            f,
            "power loss emulated: {} bytes dropped from {} files:",
            self.dropped_bytes(),
            self.cut.len()
        )?;
        for c in &self.cut {
            let why = if c.journaled { "" } else { " (never synced)" };
            write!(f, " {} {} -> {}{why};", c.path.display(), c.len, c.kept)?;
        }
        Ok(())
    }
}

/// Emulates a power loss on the data directory of a node that is **not running** (killed):
/// cuts every file its crash journal names to its durable length, and empties every file
/// under the journal's log directories that the journal does not name (created, never
/// synced). Never lengthens a file. Idempotent.
///
/// Fails with `NotFound` when the directory has no journal (the node did not run with the
/// crash journal: nothing is touched) and with `InvalidData` when the journal is damaged.
pub fn drop_unsynced(data_dir: &Path) -> io::Result<CrashReport> {
    let bytes = std::fs::read(data_dir.join(JOURNAL_FILE))?;
    let journal = decode(&bytes)?;
    let mut cut = Vec::new();
    for (rel, &durable) in &journal.files {
        let path = data_dir.join(rel);
        let len = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if len > durable {
            truncate(&path, durable)?;
            cut.push(CutFile {
                path,
                len,
                kept: durable,
                journaled: true,
            });
        }
    }
    for root in &journal.roots {
        for (rel, len) in files_under(data_dir, root)? {
            if len > 0 && !journal.files.contains_key(&rel) {
                let path = data_dir.join(&rel);
                truncate(&path, 0)?;
                cut.push(CutFile {
                    path,
                    len,
                    kept: 0,
                    journaled: false,
                });
            }
        }
    }
    cut.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(CrashReport { cut })
}

fn truncate(path: &Path, len: u64) -> io::Result<()> {
    OpenOptions::new().write(true).open(path)?.set_len(len)
}

/// A decoded journal.
#[derive(Debug, Default, PartialEq, Eq)]
struct Journal {
    roots: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, u64>,
}

/// The journal's bytes (`docs/fault-injection.md`): the header line, a `root` line per
/// log directory, a `file` line per journaled file, an `end` line with the counts.
#[cfg(feature = "fault-injection")]
fn encode<'a>(roots: &[PathBuf], files: impl Iterator<Item = (&'a Path, u64)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(JOURNAL_HEADER.as_bytes());
    out.push(b'\n');
    for r in roots {
        let p = r.as_os_str().as_bytes();
        out.extend_from_slice(format!("root {} ", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.push(b'\n');
    }
    let mut n = 0usize;
    for (path, durable) in files {
        let p = path.as_os_str().as_bytes();
        out.extend_from_slice(format!("file {durable} {} ", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.push(b'\n');
        n += 1;
    }
    out.extend_from_slice(format!("end {} {n}\n", roots.len()).as_bytes());
    out
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("crash journal: {}", why.into()),
    )
}

/// Parses a journal; anything but the exact format, a path that is absolute or leaves
/// the data directory, or counts that disagree is `InvalidData`.
fn decode(bytes: &[u8]) -> io::Result<Journal> {
    let mut r = Reader { bytes, at: 0 };
    r.expect(JOURNAL_HEADER.as_bytes())?;
    r.expect(b"\n")?;
    let mut j = Journal::default();
    loop {
        let word = r.until(b' ')?;
        match word {
            b"root" => {
                let path = r.path()?;
                j.roots.insert(path);
            }
            b"file" => {
                let durable = r.number(b' ')?;
                let path = r.path()?;
                if j.files.insert(path, durable).is_some() {
                    return Err(bad("a file is listed twice"));
                }
            }
            b"end" => {
                let roots = r.number(b' ')?;
                let files = r.number(b'\n')?;
                if roots != j.roots.len() as u64 || files != j.files.len() as u64 {
                    return Err(bad("the counts in the end line disagree with the lines"));
                }
                if r.at != bytes.len() {
                    return Err(bad("bytes after the end line"));
                }
                return Ok(j);
            }
            other => {
                return Err(bad(format!(
                    "unknown line {:?} at byte {}",
                    String::from_utf8_lossy(other),
                    r.at
                )))
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn expect(&mut self, want: &[u8]) -> io::Result<()> {
        if self.bytes[self.at..].starts_with(want) {
            self.at += want.len();
            Ok(())
        } else {
            Err(bad(format!(
                "expected {:?} at byte {}",
                String::from_utf8_lossy(want),
                self.at
            )))
        }
    }

    /// The bytes up to `stop` (consumed, not returned).
    fn until(&mut self, stop: u8) -> io::Result<&'a [u8]> {
        let rest = &self.bytes[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == stop)
            .ok_or_else(|| bad(format!("truncated at byte {}", self.at)))?;
        self.at += n + 1;
        Ok(&rest[..n])
    }

    fn number(&mut self, stop: u8) -> io::Result<u64> {
        let at = self.at;
        let digits = self.until(stop)?;
        let ok = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
        std::str::from_utf8(digits)
            .ok()
            .filter(|_| ok)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad number at byte {at}")))
    }

    /// `<len> <len bytes>\n`: a relative path of plain names.
    fn path(&mut self) -> io::Result<PathBuf> {
        let at = self.at;
        let len = usize::try_from(self.number(b' ')?).map_err(|_| bad("path too long"))?;
        let raw = self
            .at
            .checked_add(len)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or_else(|| bad(format!("truncated path at byte {at}")))?;
        self.at += len;
        self.expect(b"\n")?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(raw));
        let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain || path.components().next().is_none() {
            return Err(bad(format!(
                "path at byte {at} is not a relative path inside the data directory"
            )));
        }
        Ok(path)
    }
}

#[cfg(feature = "fault-injection")]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::StdFs;

    fn fs(dir: &Path) -> CrashFs {
        CrashFs::new(dir, [dir.join("log")], Arc::new(StdFs)).expect("crash fs")
    }

    fn len(p: &Path) -> u64 {
        std::fs::metadata(p).expect("metadata").len()
    }

    #[test]
    fn the_journal_round_trips_any_path_bytes() {
        let roots = vec![PathBuf::from("groups/0/log")];
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"a b\n\xffc"));
        let files = [(Path::new("groups/0/log/meta"), 67u64), (odd.as_path(), 0)];
        let bytes = encode(&roots, files.iter().copied());
        let j = decode(&bytes).expect("decodes");
        assert_eq!(j.roots.into_iter().collect::<Vec<_>>(), roots);
        assert_eq!(j.files.get(Path::new("groups/0/log/meta")), Some(&67));
        assert_eq!(j.files.get(&odd), Some(&0));
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("adclick-crash-journal 1\nroot 12 groups/0/log\nfile 67 17 "),
            "{text}"
        );
    }

    #[test]
    fn a_damaged_journal_is_refused() {
        let good = encode(
            &[PathBuf::from("log")],
            [(Path::new("log/a"), 5u64)].into_iter(),
        );
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let text = String::from_utf8_lossy(&good).into_owned();
        for bad in [
            text.replace("file 5", "file x"),
            text.replace("end 1 1", "end 1 2"),
            text.replace("log/a", "/og/a"),
            text.replace("5 5 log/a", "5 5 ../aa"),
            format!("{text}x"),
        ] {
            let e = decode(bad.as_bytes()).expect_err(&bad);
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad}");
        }
    }

    #[test]
    fn only_synced_bytes_survive_and_renames_carry_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = fs(dir.path());
        let log = dir.path().join("log");
        fs.create_dir_all(&log).expect("mkdir");
        let (a, b, c) = (log.join("a.tmp"), log.join("a"), log.join("c"));
        let f = fs.open(&a, OpenMode::CreateNew).expect("create");
        f.write_all_at(b"hello", 0).expect("write");
        f.sync_data().expect("sync");
        fs.rename(&a, &b).expect("rename");
        // The handle opened under the old name still journals the file.
        f.write_all_at(b" world", 5).expect("write");
        assert_eq!(fs.durable_len(&b), Some(5));
        let g = fs.open(&c, OpenMode::CreateNew).expect("create");
        g.write_all_at(b"never synced", 0).expect("write");
        let report = drop_unsynced(dir.path()).expect("drop");
        assert_eq!((len(&b), len(&c)), (5, 0));
        assert_eq!(report.dropped_bytes(), 6 + 12, "{report}");
        assert_eq!(std::fs::read(&b).expect("read"), b"hello");
        assert!(drop_unsynced(dir.path()).expect("again").cut.is_empty());
    }

    #[test]
    fn truncation_lowers_the_durable_length_and_removal_forgets_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = fs(dir.path());
        let log = dir.path().join("log");
        fs.create_dir_all(&log).expect("mkdir");
        let a = log.join("a");
        let f = fs.open(&a, OpenMode::CreateNew).expect("create");
        f.write_all_at(&[1; 100], 0).expect("write");
        f.sync_data().expect("sync");
        f.set_len(40).expect("cut");
        f.write_all_at(&[2; 10], 40).expect("write");
        assert_eq!(fs.durable_len(&a), Some(40));
        drop_unsynced(dir.path()).expect("drop");
        assert_eq!(len(&a), 40);
        fs.remove_file(&a).expect("remove");
        assert_eq!(fs.durable_len(&a), None);
        // A file that reappears under the name, never synced, is emptied.
        std::fs::write(&a, b"stale").expect("write");
        drop_unsynced(dir.path()).expect("drop");
        assert_eq!(len(&a), 0);
    }

    #[test]
    fn files_on_disk_when_the_journal_starts_count_as_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        std::fs::create_dir_all(log.join("sub")).expect("mkdir");
        std::fs::write(log.join("old"), b"0123456789").expect("write");
        std::fs::write(log.join("sub/old"), b"01234").expect("write");
        let outside = dir.path().join("db");
        std::fs::write(&outside, b"not a log file").expect("write");
        let fs = fs(dir.path());
        assert_eq!(fs.durable_len(&log.join("old")), Some(10));
        let f = fs
            .open(&log.join("old"), OpenMode::ReadWrite)
            .expect("open");
        f.write_all_at(b"more", 10).expect("write");
        let report = drop_unsynced(dir.path()).expect("drop");
        assert_eq!(report.cut.len(), 1, "{report}");
        assert_eq!(len(&log.join("old")), 10);
        assert_eq!(len(&log.join("sub/old")), 5);
        assert_eq!(len(&outside), 14, "files outside the log directories stay");
    }

    #[test]
    fn writeback_makes_lengths_a_second_old_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = fs(dir.path());
        let log = dir.path().join("log");
        fs.create_dir_all(&log).expect("mkdir");
        let a = log.join("a");
        let f = fs.open(&a, OpenMode::CreateNew).expect("create");
        f.write_all_at(&[1; 10], 0).expect("write");
        f.sync_skipped();
        assert_eq!(fs.durable_len(&a), Some(0), "too recent");
        std::thread::sleep(WRITEBACK_DELAY + Duration::from_millis(50));
        f.write_all_at(&[2; 10], 10).expect("write");
        f.sync_skipped();
        assert_eq!(fs.durable_len(&a), Some(10), "the older length only");
        drop_unsynced(dir.path()).expect("drop");
        assert_eq!(len(&a), 10);
    }

    #[test]
    fn a_missing_journal_touches_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("x"), b"keep").expect("write");
        let e = drop_unsynced(dir.path()).expect_err("no journal");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(len(&dir.path().join("x")), 4);
    }

    #[test]
    fn a_log_directory_outside_the_data_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let e = CrashFs::new(dir.path(), [other.path().join("log")], Arc::new(StdFs))
            .expect_err("outside");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
