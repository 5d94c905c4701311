//! The server's one error type and its one mapping to gRPC statuses and HTTP codes.
//!
//! Client mistakes are `INVALID_ARGUMENT` / `NOT_FOUND` / `ALREADY_EXISTS` (HTTP 4xx) with a
//! message naming the problem; conditions a retry can cure are `UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED` or `DEADLINE_EXCEEDED` (HTTP 503 / 429 / 504) and say whether the
//! write may have happened; only a broken invariant is `INTERNAL`.

use std::time::Duration;

use adclick_proto::convert::{self, LeaderHint};
use adclick_proto::model::InvalidInput;
use tonic::Status;

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field and rule.
    #[error("{0}")]
    InvalidArgument(String),
    /// A named thing (filter, group) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A named thing exists with different content.
    #[error("{0}")]
    AlreadyExists(String),
    /// This node does not lead the group and will not forward (the request was already
    /// forwarded once). Retry at the leader in the hint, if any.
    #[error("node {node} does not lead group {group}")]
    NotLeader {
        /// This node.
        node: u64,
        /// The group.
        group: u64,
        /// The leader this node knows.
        leader: Option<LeaderHint>,
    },
    /// Temporarily unable to serve (no leader, shutting down, outcome of a write unknown
    /// after a leader change). Retrying with the same event ids is safe.
    #[error("{0}")]
    Unavailable(String),
    /// Too much in flight; retry after the delay.
    #[error("overloaded: {message}")]
    Overloaded {
        /// What is exhausted.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// The request's time ran out; a write may or may not have been applied.
    #[error("{0}")]
    Timeout(String),
    /// A broken invariant or storage failure.
    #[error("{0}")]
    Internal(String),
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<InvalidInput> for Error {
    fn from(e: InvalidInput) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<adclick_storage::Error> for Error {
    fn from(e: adclick_storage::Error) -> Self {
        match e {
            adclick_storage::Error::InvalidArgument(m) => Error::InvalidArgument(m),
            adclick_storage::Error::NotFound(m) => Error::NotFound(m),
            adclick_storage::Error::Closed => {
                Error::Unavailable("the node is shutting down".into())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::NotLeader {
                node,
                group,
                ref leader,
            } => convert::not_leader(
                format!("node {node} does not lead group {group}; retry at the leader"),
                leader.as_ref(),
            ),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Overloaded {
                message,
                retry_after,
            } => convert::overloaded(message, retry_after),
            Error::Timeout(m) => Status::deadline_exceeded(m),
            Error::Internal(m) => Status::internal(m),
        }
    }
}

impl Error {
    /// The HTTP status code of this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidArgument(_) => 400,
            Error::NotFound(_) => 404,
            Error::AlreadyExists(_) => 409,
            Error::NotLeader { .. } | Error::Unavailable(_) => 503,
            Error::Overloaded { .. } => 429,
            Error::Timeout(_) => 504,
            Error::Internal(_) => 500,
        }
    }

    /// The error a failed forwarded call stands for on this node: the remote status,
    /// mapped back so the client sees what the leader said.
    pub fn from_status(s: &Status) -> Error {
        use tonic::Code;
        let m = s.message().to_owned();
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(m),
            Code::NotFound => Error::NotFound(m),
            Code::AlreadyExists => Error::AlreadyExists(m),
            Code::ResourceExhausted => Error::Overloaded {
                message: m,
                retry_after: convert::retry_after(s).unwrap_or(Duration::from_millis(100)),
            },
            Code::DeadlineExceeded => Error::Timeout(m),
            Code::Internal | Code::DataLoss | Code::Unimplemented => Error::Internal(m),
            // Transport failures and every other answer: the leader may have applied a
            // forwarded write, so the client must retry (safely, with the same ids).
            _ => Error::Unavailable(format!("forwarded request failed ({:?}): {m}", s.code())),
        }
    }
}

/// Runs a storage call on the blocking pool (state-machine reads, log imports).
pub async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> adclick_storage::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
        .map_err(Error::from)
}
