//! The client's one error type, and how a gRPC status becomes it or a retry.

use std::time::Duration;

use adclick_proto::convert::{leader_hint, retry_after, shard_map_version, LeaderHint};
use adclick_proto::model::InvalidInput;
use tonic::{Code, Status};

/// What went wrong with a call. Every variant says what the caller should do next.
///
/// Writes are safe to retry whatever the error: a retry with the same event ids is never
/// counted twice (already counted clicks come back `Duplicate`). The variants that leave a
/// write's outcome unknown say so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid (a bad argument, a filter expression with a syntax error, a
    /// time range out of bounds). Retrying it unchanged fails the same way.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A filter, group or node named by the request does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A filter of that name exists with another expression.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The call kept failing with errors worth retrying (no leader, a node down or
    /// overloaded, a timed-out attempt) until its deadline passed. For a write, some or all
    /// of the clicks may have been counted: retry with the same event ids.
    #[error("gave up after {attempts} attempts in {elapsed:?}; last error: {last}")]
    DeadlineExceeded {
        /// Attempts made for the call (for a batch: by the part that gave up), redirects
        /// included.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last retryable error seen.
        last: String,
    },
    /// A node reported an internal error on every try (a bug or storage corruption on the
    /// node). For a write the outcome is unknown, as for [`Error::DeadlineExceeded`].
    #[error("server error: {0}")]
    Server(String),
    /// A node answered something this client cannot read (version skew or a bug).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client's configuration or seed list is unusable.
    #[error("configuration error: {0}")]
    Config(String),
    /// The [`crate::Producer`] was closed before the click was sent.
    #[error("the producer is closed")]
    Closed,
}

impl Error {
    /// Whether the same call, sent again later, may succeed. False for errors in the
    /// request itself.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::DeadlineExceeded { .. } | Error::Server(_) | Error::Protocol(_)
        )
    }

    pub(crate) fn protocol(what: impl std::fmt::Display) -> Self {
        Error::Protocol(what.to_string())
    }
}

impl From<InvalidInput> for Error {
    fn from(e: InvalidInput) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

/// How one failed attempt is handled.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The node does not lead the group; `Some` names the leader to try next.
    NotLeader(Option<LeaderHint>),
    /// The client routed with an older shard map than the node's: refetch and re-route.
    StaleMap,
    /// Backpressure: wait this long (or the client's backoff when absent), then retry.
    Overloaded(Option<Duration>),
    /// The attempt's outcome is unknown or the node is unreachable: retry, same ids.
    Retry,
    /// The node failed internally: retry elsewhere a few times, then give up.
    Internal,
    /// Not worth retrying: the caller gets this error.
    Fatal(Error),
}

impl Failure {
    /// Classifies a status from a node. Ambiguous answers are always [`Failure::Retry`]:
    /// the caller cannot know whether a write was applied, and a retry is safe.
    pub(crate) fn of(status: &Status) -> Failure {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unavailable => Failure::NotLeader(leader_hint(status)),
            Code::FailedPrecondition if shard_map_version(status.metadata()).is_some() => {
                Failure::StaleMap
            }
            Code::ResourceExhausted => Failure::Overloaded(retry_after(status)),
            Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                Failure::Retry
            }
            Code::Internal | Code::DataLoss => Failure::Internal,
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                Failure::Fatal(Error::InvalidArgument(message))
            }
            Code::NotFound => Failure::Fatal(Error::NotFound(message)),
            Code::AlreadyExists => Failure::Fatal(Error::AlreadyExists(message)),
            Code::Ok | Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented => {
                Failure::Fatal(Error::Protocol(format!(
                    "{}: {message}",
                    status.code().description()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_proto::convert::{not_leader, overloaded, stale_shard_map};

    #[test]
    fn statuses_map_to_what_the_client_does_next() {
        let hint = LeaderHint {
            node_id: 3,
            addr: "127.0.0.1:7403".into(),
        };
        assert!(matches!(
            Failure::of(&not_leader("no", Some(&hint))),
            Failure::NotLeader(Some(h)) if h == hint
        ));
        assert!(matches!(
            Failure::of(&Status::unavailable("election")),
            Failure::NotLeader(None)
        ));
        assert!(matches!(
            Failure::of(&stale_shard_map(1, 2)),
            Failure::StaleMap
        ));
        assert!(matches!(
            Failure::of(&overloaded("busy", Duration::from_millis(250))),
            Failure::Overloaded(Some(d)) if d == Duration::from_millis(250)
        ));
        assert!(matches!(
            Failure::of(&Status::deadline_exceeded("slow")),
            Failure::Retry
        ));
        assert!(matches!(
            Failure::of(&Status::internal("bug")),
            Failure::Internal
        ));
        assert!(matches!(
            Failure::of(&Status::invalid_argument("ad_id is empty")),
            Failure::Fatal(Error::InvalidArgument(m)) if m == "ad_id is empty"
        ));
        assert!(matches!(
            Failure::of(&Status::not_found("filter x")),
            Failure::Fatal(Error::NotFound(_))
        ));
        // FAILED_PRECONDITION without a map version is the request's fault.
        assert!(matches!(
            Failure::of(&Status::failed_precondition("target node")),
            Failure::Fatal(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn only_errors_outside_the_request_are_retryable() {
        assert!(!Error::InvalidArgument("x".into()).is_retryable());
        assert!(!Error::NotFound("x".into()).is_retryable());
        assert!(Error::Server("x".into()).is_retryable());
        assert!(Error::DeadlineExceeded {
            attempts: 3,
            elapsed: Duration::from_secs(1),
            last: "x".into()
        }
        .is_retryable());
    }
}
