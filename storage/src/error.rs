//! The storage engine's one error type. Variants say what the caller should do about the
//! failure, not which library produced it:
//!
//! - [`Error::Io`]: the disk failed; the operation may be retried, but a node that keeps
//!   seeing it should stop serving.
//! - [`Error::Corruption`]: bytes on disk are not what was written. Never retried, never
//!   skipped: the operator must restore the named file from a replica.
//! - [`Error::InvalidArgument`]: the request is wrong (bad range); fix it.
//! - [`Error::NotFound`]: the request names something that does not exist (a filter).
//! - [`Error::Closed`]: the store is shutting down; retry on another node.

use std::io;
use std::path::PathBuf;

/// The storage engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path where there is one.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Stored data failed a check (checksum, magic, version, structure).
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        /// The file (or RocksDB directory) holding the bad bytes.
        path: PathBuf,
        /// Byte offset of the bad record within the file (0 when not meaningful).
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The request cannot be served as asked.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request names something that does not exist (a filter).
    #[error("{0}")]
    NotFound(String),
    /// The store is closed or shutting down.
    #[error("storage is closed")]
    Closed,
}

impl Error {
    /// An [`Error::Io`] with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::Corruption`].
    pub fn corruption(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// Whether this error means stored data is damaged (and must not be retried).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        // RocksDB reports checksum and format failures as `Corruption`; keep that class.
        match e.kind() {
            rocksdb::ErrorKind::Corruption => Error::corruption("rocksdb", 0, e.into_string()),
            _ => Error::io("rocksdb", io::Error::other(e.into_string())),
        }
    }
}

/// openraft's storage traits speak `io::Error`; this is the one mapping into it.
/// Corruption becomes `InvalidData`, which openraft treats as fatal for the node.
impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { context, source } => {
                io::Error::new(source.kind(), format!("{context}: {source}"))
            }
            Error::Corruption { .. } => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            Error::InvalidArgument(_) => io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            Error::NotFound(_) => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
            Error::Closed => io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()),
        }
    }
}
