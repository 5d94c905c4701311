//! Configuration of a segmented log: where it lives, how large segments grow, how long
//! Raft-purged segments are kept as the raw-click store, where they go afterwards, and how
//! strict recovery is.

use std::path::PathBuf;
use std::time::Duration;

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default retention of Raft-purged segments: 7 days.
pub const DEFAULT_RETENTION_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default cap on the bytes one `limited_get_log_entries` call returns (replication batch).
pub const DEFAULT_MAX_READ_BYTES: usize = 8 << 20;

/// How a segmented log is laid out and retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Directory holding the segments and the vote file (created if missing). One log per
    /// directory; the directory must not be shared.
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once an append would take it past this
    /// many bytes (a single batch larger than this gets a segment of its own). Default
    /// [`DEFAULT_SEGMENT_SIZE`].
    pub segment_size: u64,
    /// How long segments are kept once Raft has purged all their entries.
    pub retention: RetentionPolicy,
    /// Where expired segments go: moved into this directory (created if missing) when set,
    /// deleted when `None` (the default).
    pub archive_dir: Option<PathBuf>,
    /// What recovery does with a damaged tail. Default [`RecoveryMode::Strict`].
    pub recovery: RecoveryMode,
    /// Cap on the bytes of entries one replication read returns (at least one entry is
    /// always returned). Default [`DEFAULT_MAX_READ_BYTES`].
    pub max_read_bytes: usize,
    /// Fault injection: the group-commit flusher reports appends durable without calling
    /// fsync (it calls [`super::LogFile::sync_skipped`] instead). Other fsyncs (seals,
    /// cuts, new files, the meta file) still happen. Default `false`; only for the fault
    /// suite's deliberately broken builds.
    #[cfg(feature = "fault-injection")]
    pub fault_skip_fsync: bool,
}

impl LogConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            retention: RetentionPolicy::default(),
            archive_dir: None,
            recovery: RecoveryMode::Strict,
            max_read_bytes: DEFAULT_MAX_READ_BYTES,
            #[cfg(feature = "fault-injection")]
            fault_skip_fsync: false,
        }
    }
}

/// When a segment whose entries Raft has all purged may leave the log directory (archived
/// or deleted). The segment being written is never removed, nor any segment holding an
/// entry Raft has not purged. Both limits may be set; a segment goes when either says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Remove purged segments sealed longer ago than this. Default 7 days.
    pub max_age: Option<Duration>,
    /// Remove the oldest purged segments while all segments together exceed this many
    /// bytes. Default `None` (no limit).
    pub max_bytes: Option<u64>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            max_age: Some(DEFAULT_RETENTION_AGE),
            max_bytes: None,
        }
    }
}

/// What recovery does when the last segment has a bad record followed by good ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open ([`crate::Error::Corruption`] naming the file and offset). A torn
    /// tail (bad bytes with no valid record after them) is still cut back. The default:
    /// records after a bad one may have been acknowledged, and dropping acknowledged
    /// entries on one replica can break Raft's guarantees.
    #[default]
    Strict,
    /// Cut the last segment at its first bad record, whatever follows. For an operator who
    /// knows the tail was never acknowledged (e.g. after power loss tore a write that
    /// spanned several pages) or who will re-replicate this node.
    TruncateTail,
}
