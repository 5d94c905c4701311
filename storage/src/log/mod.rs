//! The segmented log: the Raft log of one group and, at the same time, its raw-click
//! store.
//!
//! # Layout
//!
//! A log directory holds segment files `<first_index:020>.seg`, a `meta` file (vote and
//! last purged log id) and a `LOCK` file, locked exclusively while a [`LogStore`] has the
//! directory open: a second open (from any process) fails until that store is dropped. A segment is a header followed by checksummed records: entries
//! (encoded by [`crate::codec`]), committed log ids, and a final seal once the segment is
//! full. [`format`](mod@format) owns every byte layout; `docs/log-format.md` documents them.
//!
//! # Writing: group commit
//!
//! `append` encodes the entries, writes them to the newest segment with one positional
//! write, indexes them in memory and returns: the entries are readable at once but not yet
//! durable. The flusher thread fsyncs the segment in a loop; each fsync covers every
//! append made before it started, after which their openraft callbacks fire in order. Under load, many appends share one fsync. A segment that would outgrow
//! [`LogConfig::segment_size`] is sealed (seal record, fsync) and a new one is created
//! atomically (temporary file, fsync, rename, directory fsync).
//!
//! # Raft operations
//!
//! - `truncate_after` (a conflicting suffix): deletes later segments newest first, each
//!   removal made durable before the next (so a crash never leaves a missing middle
//!   segment), cuts the segment holding the first removed entry at that record, fsyncs.
//! - `purge` (a snapshot covers a prefix): records the purged log id in the meta file. The
//!   entries stay on disk; they are no longer served to Raft but remain readable through
//!   [`RawReader`] until the [`RetentionPolicy`] archives or deletes their segments. A purge
//!   past an entry the log does not hold first cuts the entries not known committed, so
//!   the raw store never serves a deposed leader's entries as committed.
//! - `save_vote`: waits until earlier appends are durable, then replaces the meta file.
//! - `save_committed`: a small record in the newest segment, durable with the next group
//!   commit (losing the latest one in a crash only delays re-applying).
//!
//! # Raw gaps and imports
//!
//! A snapshot install purges past what the log holds, leaving a gap in the raw store.
//! [`LogStore::raw_gaps`] lists the purged indexes no segment holds (above the raw
//! low-water mark, which retention raises past what it removes); the server fetches them
//! from a peer as whole segment files and hands each to [`LogStore::import_raw`] (or a
//! [`RawImporter`]), which verifies it and stores the part inside a gap as new sealed,
//! purged segments.
//!
//! # Recovery
//!
//! Opening scans the newest segment (and every segment holding unpurged entries) and
//! rebuilds the in-memory index; older purged segments are known from their seal alone. A
//! torn tail in the newest segment is cut back to the last whole record; damage anywhere
//! else is [`crate::Error::Corruption`] naming the file and offset. Deciding that bad
//! bytes are a torn tail (no valid record after them) takes work linear in their length.
//! Bytes on disk never make recovery panic: every value read is checked, indexes against
//! [`format::MAX_INDEX`].
//!
//! # Use
//!
//! ```text
//! let log = LogStore::open(LogConfig::new(group_dir))?;   // recovers
//! let raw = log.raw_reader();          // raw clicks: raw.entries(from..to), raw.segments()
//! let importer = log.raw_importer();   // after a snapshot install: importer.raw_gaps(),
//!                                      // then importer.import_raw(&peer_segment_bytes)
//! let raft = Raft::new(id, config, network, log, state_machine).await?;
//! // on a timer, in a blocking task: log.apply_retention(SystemTime::now())
//! ```
//!
//! # Testing
//!
//! All disk I/O goes through [`FileSystem`]; [`FaultyFs`] counts, holds, fails or tears
//! writes and fsyncs. With the `fault-injection` feature, `crash` journals what a power
//! loss would keep of each file, for the fault suite, and `LogConfig::fault_skip_fsync`
//! makes group commit skip its fsyncs.

mod config;
pub mod crash;
pub mod fault;
mod flusher;
pub mod format;
mod fs;
mod import;
mod meta;
mod raft;
mod raw;
mod recovery;
mod retention;
mod segment;
mod store;

#[cfg(test)]
mod tests;

pub use config::{
    LogConfig, RecoveryMode, RetentionPolicy, DEFAULT_MAX_READ_BYTES, DEFAULT_RETENTION_AGE,
    DEFAULT_SEGMENT_SIZE,
};
pub use fault::{FaultyFs, FsOp};
pub use fs::{FileLock, FileSystem, LogFile, OpenMode, StdFs};
pub use import::{encode_segment_image, ImportOutcome, RawImporter};
pub use raft::{LogReader, LogStore};
pub use raw::{RawEntries, RawReader, SegmentInfo};
pub use retention::RetentionOutcome;
