//! Power loss, emulated by the crash journal (`log::crash`): whatever fsync a power loss
//! interrupts, recovery opens the log, and it holds every acknowledged operation and
//! nothing an acknowledged truncation removed. With `fault_skip_fsync`, acknowledged
//! appends younger than the emulated writeback are lost (that build is broken on purpose).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::log::crash::{drop_unsynced, CrashFs, CrashReport, WRITEBACK_DELAY};
use crate::log::{FileLock, LogFile, OpenMode};

/// The data directory's log directory.
fn log_dir(data: &Path) -> PathBuf {
    data.join("log")
}

fn crash_fs(data: &Path, inner: Arc<dyn FileSystem>) -> CrashFs {
    CrashFs::new(data, [log_dir(data)], inner).expect("crash journal")
}

fn open_crash(data: &Path, fs: &CrashFs, mut config: LogConfig) -> LogStore {
    config.dir = log_dir(data);
    LogStore::open_with_fs(config, Arc::new(fs.clone())).expect("open log")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// A power loss now: copies the data directory as it is (the store may be running) and
/// cuts the copy to what the journal says is durable. Panics only on I/O errors, so a
/// caller holding the store's fsyncs can release them before it checks anything.
fn power_loss(data: &Path) -> (tempfile::TempDir, CrashReport) {
    let copy = tempfile::tempdir().expect("tempdir");
    copy_tree(data, copy.path());
    let report = drop_unsynced(copy.path()).expect("drop unsynced bytes");
    (copy, report)
}

/// Opens the log of a data directory after [`power_loss`]: recovery must succeed.
fn recover(copy: &Path, report: &CrashReport) -> LogStore {
    LogStore::open(config(&log_dir(copy), 1 << 20))
        .unwrap_or_else(|e| panic!("recovery after a power loss ({report}): {e}"))
}

/// What Raft was told is durable.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    /// Every stored entry, purged or not.
    ids: Vec<LogId>,
    purged: Option<LogId>,
    vote: Option<Vote>,
}

impl Model {
    fn live(&self, purged: Option<LogId>) -> Vec<LogId> {
        let p = purged.map(|p| p.index);
        self.ids
            .iter()
            .copied()
            .filter(|i| p.is_none_or(|p| i.index > p))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Entry),
    Truncate(LogId),
    Purge(LogId),
    Vote(Vote),
}

impl Op {
    fn run(&self, store: &LogStore) {
        match self {
            Op::Append(e) => append(store, vec![e.clone()]),
            Op::Truncate(id) => store.shared.truncate_after(Some(*id)).expect("truncate"),
            Op::Purge(id) => store.shared.purge(*id).expect("purge"),
            Op::Vote(v) => store.shared.save_vote(*v).expect("save vote"),
        }
    }

    fn model(&self, m: &mut Model) {
        match self {
            Op::Append(e) => m.ids.push(e.log_id),
            Op::Truncate(id) => m.ids.retain(|i| i.index <= id.index),
            Op::Purge(id) => m.purged = Some(*id),
            Op::Vote(v) => m.vote = Some(*v),
        }
    }
}

/// Appends across several segments, a truncation across segments, a purge, votes.
fn scenario() -> Vec<Op> {
    let mut ops: Vec<Op> = (0..12).map(|i| Op::Append(ingest(1, i, 3))).collect();
    ops.push(Op::Vote(vote(2)));
    ops.push(Op::Truncate(id(1, 7)));
    ops.extend((8..16).map(|i| Op::Append(ingest(2, i, 3))));
    ops.push(Op::Purge(id(2, 10)));
    ops.extend((16..20).map(|i| Op::Append(ingest(2, i, 3))));
    ops.push(Op::Truncate(id(2, 17)));
    ops.push(Op::Vote(vote(3)));
    ops.extend((18..22).map(|i| Op::Append(ingest(3, i, 3))));
    ops
}

fn is_prefix(a: &[LogId], b: &[LogId]) -> bool {
    b.starts_with(a)
}

/// A file system that stops at its `n`th file fsync (counting from 1) until released, and
/// skips every real fsync: the crash journal above it decides what is durable, and a test
/// that fsyncs for real hundreds of times is slow.
#[derive(Debug, Clone)]
struct StepFs {
    n: u64,
    state: Arc<(Mutex<Step>, Condvar)>,
}

#[derive(Debug, Default)]
struct Step {
    syncs: u64,
    stopped: bool,
    released: bool,
}

impl StepFs {
    fn new(n: u64) -> Self {
        StepFs {
            n,
            state: Arc::default(),
        }
    }

    fn sync(&self) {
        let (m, cv) = &*self.state;
        let mut st = m.lock().expect("step lock");
        st.syncs += 1;
        if st.syncs == self.n {
            st.stopped = true;
            cv.notify_all();
            while !st.released {
                st = cv.wait(st).expect("step lock");
            }
        }
    }

    /// Waits until the `n`th fsync is reached (true) or `done` says the work ended.
    fn wait_stopped(&self, done: impl Fn() -> bool) -> bool {
        let (m, cv) = &*self.state;
        let mut st = m.lock().expect("step lock");
        while !st.stopped {
            if done() {
                return false;
            }
            st = cv
                .wait_timeout(st, Duration::from_millis(5))
                .expect("step lock")
                .0;
        }
        true
    }

    fn release(&self) {
        let (m, cv) = &*self.state;
        m.lock().expect("step lock").released = true;
        cv.notify_all();
    }
}

#[derive(Debug)]
struct StepFile {
    inner: Arc<dyn LogFile>,
    fs: StepFs,
}

impl LogFile for StepFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.sync();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl FileSystem for StepFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdFs.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdFs.list_dir(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(StepFile {
            inner: StdFs.open(path, mode)?,
            fs: self.clone(),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        StdFs.exists(path)
    }
    fn try_lock_file(&self, path: &Path) -> io::Result<Box<dyn FileLock>> {
        StdFs.try_lock_file(path)
    }
}

#[test]
fn a_power_loss_during_any_fsync_keeps_every_acknowledged_operation() {
    let ops = scenario();
    let models: Vec<Model> = std::iter::once(Model::default())
        .chain(ops.iter().scan(Model::default(), |m, op| {
            op.model(m);
            Some(m.clone())
        }))
        .collect();
    let (mut lost_appends, mut dropped) = (0, 0);
    for n in 1.. {
        let data = tempfile::tempdir().expect("tempdir");
        let step = StepFs::new(n);
        let fs = crash_fs(data.path(), Arc::new(step.clone()));
        let done = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (ops, fs, done) = (ops.clone(), fs.clone(), Arc::clone(&done));
            let data = data.path().to_path_buf();
            std::thread::spawn(move || {
                let store = open_crash(&data, &fs, config(Path::new(""), 1024));
                for op in &ops {
                    op.run(&store);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let stopped = step.wait_stopped(|| worker.is_finished());
        // Ops acknowledged before the power loss; the next one may be partly done.
        let k = done.load(Ordering::SeqCst);
        let (copy, report) = power_loss(data.path());
        step.release();
        worker.join().expect("the operations ran");
        let store = recover(copy.path(), &report);
        let (before, after) = (&models[k], &models[(k + 1).min(ops.len())]);
        let inner = store.shared.read().expect("lock");
        let (purged, vote) = (inner.purged, inner.vote);
        drop(inner);
        let live = ids(&store);
        let context = format!(
            "power loss at fsync {n}, after {k} ops, during {:?}: {report}",
            ops.get(k)
        );
        assert!(
            purged == before.purged || purged == after.purged,
            "{context}: purged {purged:?}"
        );
        assert!(
            vote == before.vote || vote == after.vote,
            "{context}: vote {vote:?}"
        );
        let (b, a) = (before.live(purged), after.live(purged));
        let between = (is_prefix(&b, &live) && is_prefix(&live, &a))
            || (is_prefix(&a, &live) && is_prefix(&live, &b));
        assert!(
            between,
            "{context}: log {live:?}, before {b:?}, after {a:?}"
        );
        if matches!(ops.get(k), Some(Op::Append(_))) && live == b {
            lost_appends += 1;
        }
        dropped += report.dropped_bytes();
        if !stopped {
            assert_eq!(k, ops.len(), "every operation was acknowledged");
            assert!(n > 20, "the scenario fsyncs more than {n} times");
            break;
        }
    }
    assert!(dropped > 0, "some power loss dropped unsynced bytes");
    assert!(lost_appends > 0, "some power loss lost an append in flight");
}

#[test]
fn appends_not_yet_flushed_are_lost_and_flushed_ones_kept() {
    let data = tempfile::tempdir().expect("tempdir");
    let faulty = FaultyFs::default();
    let fs = crash_fs(data.path(), Arc::new(faulty.clone()));
    let store = open_crash(data.path(), &fs, config(Path::new(""), 64 << 10));
    append_blanks(&store, 1, 0..10);
    faulty.hold_syncs();
    let (cb, rx) = callback();
    store
        .shared
        .append(vec![blank(1, 10), blank(1, 11)], cb)
        .expect("append");
    let (copy, report) = power_loss(data.path());
    faulty.release_syncs();
    rx.blocking_recv()
        .expect("callback fired")
        .expect("append is durable");
    assert!(report.dropped_bytes() > 0, "{report}");
    let crashed = recover(copy.path(), &report);
    assert_eq!(ids(&crashed), (0..10).map(|i| id(1, i)).collect::<Vec<_>>());
    let (copy, report) = power_loss(data.path());
    let crashed = recover(copy.path(), &report);
    assert_eq!(ids(&crashed), (0..12).map(|i| id(1, i)).collect::<Vec<_>>());
}

#[test]
fn without_fsync_a_power_loss_takes_about_the_last_second() {
    let data = tempfile::tempdir().expect("tempdir");
    let faulty = FaultyFs::default();
    let fs = crash_fs(data.path(), Arc::new(faulty.clone()));
    let mut c = config(Path::new(""), 64 << 10);
    c.fault_skip_fsync = true;
    let store = open_crash(data.path(), &fs, c);
    let syncs = faulty.file_syncs();
    append_blanks(&store, 1, 0..5);
    std::thread::sleep(WRITEBACK_DELAY + Duration::from_millis(200));
    append_blanks(&store, 1, 5..8);
    assert_eq!(faulty.file_syncs(), syncs, "group commit issued no fsync");
    let (copy, report) = power_loss(data.path());
    assert!(report.dropped_bytes() > 0, "{report}");
    let crashed = recover(copy.path(), &report);
    assert_eq!(
        ids(&crashed),
        (0..5).map(|i| id(1, i)).collect::<Vec<_>>(),
        "acknowledged appends of the last second are lost"
    );
}
