//! Group commit: one dedicated thread makes appends durable, one fsync for every append
//! made before it started, then completes their openraft callbacks in append order.
//!
//! Appends write to the OS (page cache) under the log's write lock and then register here
//! with [`Flusher::written`], which gives each write a sequence number. The flusher thread
//! loops: note the highest sequence number written so far and the segment being written,
//! fsync that file, then fire every callback up to that number. Appends made while an fsync
//! runs are covered by the next one, so under load N appends cost far fewer than N fsyncs.
//!
//! Invariants:
//! - A callback fires only after an fsync that *started after its write completed*, on the
//!   file holding it (earlier segments are fsynced when they are sealed, see
//!   [`Flusher::synced_inline`]).
//! - Callbacks fire in sequence order, always under the flusher's lock.
//! - After an fsync fails nothing is trusted any more (the page cache may have dropped the
//!   dirty pages): every pending and later callback gets the error, and so does every later
//!   write; the node must restart and recover from what is on disk.
//!
//! With the `fault-injection` feature, [`Flusher::skip_fsync`] makes the thread report
//! writes durable without fsyncing them (a deliberately broken build for the fault
//! suite); the first invariant then no longer holds, which is the point.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use openraft::storage::IOFlushed;

use super::fs::LogFile;
use crate::types::TypeConfig;

/// The group-commit flusher of one log. Dropping it flushes what is pending and stops the
/// thread.
#[derive(Debug)]
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when there is work (or shutdown) for the thread.
    work: Condvar,
    /// Signalled when `synced` advances or the flusher fails.
    progress: Condvar,
}

struct State {
    /// The segment being written.
    active: Arc<dyn LogFile>,
    /// Sequence number of the last completed write.
    written: u64,
    /// Every write up to this sequence number is durable.
    synced: u64,
    /// Callbacks waiting for their write's sequence number to be synced, in order.
    pending: VecDeque<(u64, IOFlushed<TypeConfig>)>,
    /// Set by the first failed fsync; sticky.
    failed: Option<(io::ErrorKind, String)>,
    shutdown: bool,
    /// Fsyncs issued by the flusher thread (for metrics).
    rounds: u64,
    /// Fault injection: report writes durable without fsyncing them.
    #[cfg(feature = "fault-injection")]
    skip_fsync: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("written", &self.written)
            .field("synced", &self.synced)
            .field("pending", &self.pending.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl State {
    fn error(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|(kind, msg)| {
            io::Error::new(
                *kind,
                format!("log disabled after an earlier fsync failure: {msg}"),
            )
        })
    }

    /// Marks everything up to `seq` durable and completes the callbacks it covers.
    fn complete(&mut self, seq: u64) {
        if self.failed.is_some() {
            return;
        }
        self.synced = self.synced.max(seq);
        while self.pending.front().is_some_and(|(s, _)| *s <= self.synced) {
            if let Some((_, cb)) = self.pending.pop_front() {
                cb.io_completed(Ok(()));
            }
        }
    }

    fn fail(&mut self, e: &io::Error) {
        if self.failed.is_none() {
            tracing::error!(error = %e, "log fsync failed; the log refuses further writes");
            self.failed = Some((e.kind(), e.to_string()));
        }
        while let Some((_, cb)) = self.pending.pop_front() {
            cb.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
        }
    }
}

impl Flusher {
    /// Starts the flusher thread for a log whose segment being written is `active`.
    pub(crate) fn start(active: Arc<dyn LogFile>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                active,
                written: 0,
                synced: 0,
                pending: VecDeque::new(),
                failed: None,
                shutdown: false,
                rounds: 0,
                #[cfg(feature = "fault-injection")]
                skip_fsync: false,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("adclick-log-flush".into())
            .spawn(move || run(&s))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Callbacks and counters stay consistent even if a holder panicked.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The error every write must fail with once an fsync failed.
    pub(crate) fn check(&self) -> io::Result<()> {
        self.lock().error().map_or(Ok(()), Err)
    }

    /// Registers a completed write (optionally with the callback to fire once it is
    /// durable) and returns its sequence number. Call it after the write, in write order.
    pub(crate) fn written(&self, callback: Option<IOFlushed<TypeConfig>>) -> u64 {
        let mut st = self.lock();
        st.written += 1;
        let seq = st.written;
        match (callback, st.error()) {
            (Some(cb), Some(e)) => cb.io_completed(Err(e)),
            (Some(cb), None) => st.pending.push_back((seq, cb)),
            (None, _) => {}
        }
        drop(st);
        self.shared.work.notify_one();
        seq
    }

    /// Fault injection: from now on, rounds report writes durable without fsyncing them
    /// (calling [`LogFile::sync_skipped`] instead).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn skip_fsync(&self, skip: bool) {
        self.lock().skip_fsync = skip;
    }

    /// Sequence number of the last registered write.
    pub(crate) fn last_written(&self) -> u64 {
        self.lock().written
    }

    /// Fsyncs issued by the flusher thread so far.
    pub(crate) fn rounds(&self) -> u64 {
        self.lock().rounds
    }

    /// Switches the file the thread fsyncs. Call it before writing to the new file, after
    /// every earlier write is durable (see [`Self::synced_inline`]).
    pub(crate) fn set_active(&self, file: Arc<dyn LogFile>) {
        self.lock().active = file;
    }

    /// Reports that the caller fsynced everything written up to `seq` itself (a segment
    /// being sealed or cut), completing the callbacks it covers.
    pub(crate) fn synced_inline(&self, seq: u64) {
        self.lock().complete(seq);
        self.shared.progress.notify_all();
    }

    /// Disables the log after a failed write or fsync done outside the thread.
    pub(crate) fn fail(&self, e: &io::Error) {
        self.lock().fail(e);
        self.shared.progress.notify_all();
    }

    /// Blocks until every write up to `seq` is durable (or the flusher failed).
    pub(crate) fn wait_synced(&self, seq: u64) -> io::Result<()> {
        let mut st = self.lock();
        loop {
            if let Some(e) = st.error() {
                return Err(e);
            }
            if st.synced >= seq {
                return Ok(());
            }
            self.shared.work.notify_one();
            st = self
                .shared
                .progress
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.lock().shutdown = true;
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("log flusher thread panicked");
            }
        }
    }
}

fn run(shared: &Shared) {
    let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        while st.failed.is_none() && st.written == st.synced && !st.shutdown {
            st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.failed.is_some() || st.written == st.synced {
            // Failed, or shutting down with nothing left to make durable.
            return;
        }
        let target = st.written;
        let file = Arc::clone(&st.active);
        st.rounds += 1;
        #[cfg(feature = "fault-injection")]
        let skip = st.skip_fsync;
        drop(st);
        #[cfg(feature = "fault-injection")]
        let res = if skip {
            file.sync_skipped();
            Ok(())
        } else {
            file.sync_data()
        };
        #[cfg(not(feature = "fault-injection"))]
        let res = file.sync_data();
        st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        match res {
            Ok(()) => st.complete(target),
            Err(e) => st.fail(&e),
        }
        shared.progress.notify_all();
    }
}
