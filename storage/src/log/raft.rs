//! The log as openraft sees it: [`LogStore`] implements `RaftLogStorage` and
//! [`LogReader`] implements `RaftLogReader`.
//!
//! What openraft requires, and how it is met:
//! - `append` returns once the entries are written to the OS and readable; the callback
//!   fires from the group-commit flusher after the fsync that covers them.
//! - `save_vote` is durable on return, and ordered after every earlier append (it waits
//!   for them to be durable first). It, `truncate_after` and `purge` fsync, so they run on
//!   tokio's blocking pool instead of stalling the runtime.
//! - `truncate_after` and `purge` never leave a hole; purged entries stay on disk for the
//!   raw-click store and are simply no longer served here.
//! - Reads are atomic with respect to writes (they copy their bytes under the read lock).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, Range, RangeBounds};
use std::sync::Arc;
use std::time::SystemTime;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::config::LogConfig;
use super::fs::{FileSystem, StdFs};
use super::import::{ImportOutcome, RawImporter};
use super::raw::RawReader;
use super::recovery;
use super::retention::RetentionOutcome;
use super::store::Shared;
use crate::error::Result;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// The segmented log of one Raft group: its Raft log storage and raw-click store.
///
/// Open it with [`LogStore::open`], hand it to openraft, and keep a [`RawReader`] for raw
/// reads. It holds the directory's lock: a second open of the same directory (from this
/// process or another) fails until this store is dropped. Dropping it stops background
/// retention (joining its thread), waits until pending appends are durable and releases
/// the lock, so the directory can be reopened at once; readers that outlive it still read,
/// and the last handle to go stops the flusher thread.
#[derive(Debug)]
pub struct LogStore {
    pub(crate) shared: Arc<Shared>,
}

/// A cloneable reader of the Raft log, for openraft's replication tasks.
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens (creating if needed) the log described by `config` on the real file system,
    /// recovering from whatever a crash left.
    pub fn open(config: LogConfig) -> Result<Self> {
        Self::open_with_fs(config, Arc::new(StdFs))
    }

    /// Opens the log through another file system (tests inject faults this way).
    pub fn open_with_fs(config: LogConfig, fs: Arc<dyn FileSystem>) -> Result<Self> {
        Ok(Self {
            shared: Arc::new(recovery::open(config, fs)?),
        })
    }

    /// A reader of the Raft log.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A reader of the raw-click store (committed entries, purged or not).
    pub fn raw_reader(&self) -> RawReader {
        RawReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A cloneable handle for raw imports ([`RawImporter::import_raw`]), for use after
    /// this store was handed to openraft.
    pub fn raw_importer(&self) -> RawImporter {
        RawImporter {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The committed-and-purged indexes the raw store lacks, in increasing order: every
    /// index from the raw low-water mark up to and including the purged index that no
    /// local segment holds. Empty while nothing is purged (the log then holds every entry
    /// Raft gave it, contiguously). The low-water mark is 0 until retention first removes
    /// a segment; it then rises past every segment retention removes (archived or
    /// deleted), so what retention removed is never a gap.
    ///
    /// A node that held 0..=10 and installed a snapshot ending at 500 has the gap
    /// `11..501`; one that held nothing, `0..501`.
    pub fn raw_gaps(&self) -> Result<Vec<Range<u64>>> {
        self.shared.raw_gaps()
    }

    /// Stores the committed entries of `segment_image` — a whole segment file from a
    /// peer's log, sealed or not (`docs/log-format.md`) — that fall in a raw gap
    /// ([`Self::raw_gaps`]), and only those, as new sealed segment files; raw reads serve
    /// them at once and recovery finds them after a restart. Entries outside every gap
    /// (held already, below the low-water mark, or above the purged index) are ignored.
    ///
    /// The image is verified completely first (header, every record's checksum, contiguous
    /// indexes, non-decreasing leaders, every entry decodable): a damaged one is
    /// [`crate::Error::Corruption`] and nothing is stored. The image must end at a record
    /// boundary (a peer sends the first `bytes` bytes its [`RawReader::segments`] lists).
    /// An imported segment is sealed with the peer's seal time (at most now), or the import
    /// time for an unsealed image: retention ages it from there like any purged segment.
    ///
    /// Does file I/O and fsyncs: call it from a blocking context. Waits for a retention
    /// pass in progress (and one waits for it).
    pub fn import_raw(&self, segment_image: &[u8]) -> Result<ImportOutcome> {
        self.shared.import_raw(segment_image)
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    /// Last purged and last log id, as openraft's `get_log_state` reports them.
    pub fn log_state(&self) -> Result<LogState<TypeConfig>> {
        let inner = self.shared.read()?;
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: inner.last_log_id(),
        })
    }

    /// Archives or deletes the segments the retention policy no longer keeps. Runs on its
    /// own (in the background) after every Raft purge; call it on a timer too, so age
    /// limits apply on an idle log. It does file I/O: call it from a blocking context.
    pub fn apply_retention(&self, now: SystemTime) -> Result<RetentionOutcome> {
        self.shared.apply_retention(now)
    }

    /// Fsyncs issued by the group-commit flusher so far (a metric: compare with appends).
    pub fn flusher_fsyncs(&self) -> u64 {
        self.shared.flusher.rounds()
    }

    /// Runs `f` on the shared core in tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let shared = Arc::clone(&self.shared);
        let res = tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| io::Error::other(format!("log task failed: {e}")))?;
        Ok(res?)
    }
}

/// `[start, end)` of a range of indexes.
pub(crate) fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (start, end) = bounds(&range);
        Ok(self.shared.read_entries(start, end, usize::MAX)?)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.shared.read()?.vote)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        Ok(self
            .shared
            .read_entries(start, end, self.shared.config.max_read_bytes)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        Ok(self.log_state()?)
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let vote = *vote;
        self.blocking(move |s| s.save_vote(vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        Ok(self.shared.save_committed(committed)?)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.shared.read()?.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        Ok(self.shared.append(entries, callback)?)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        self.blocking(move |s| s.truncate_after(last_log_id)).await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.blocking(move |s| s.purge(log_id)).await?;
        // Archiving may copy whole segments: do it off Raft's path, on a worker the store
        // joins when dropped.
        self.shared.retain_in_background();
        Ok(())
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.shared.close();
    }
}
