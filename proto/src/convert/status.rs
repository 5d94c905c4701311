//! The metadata half of the gRPC status contract (`docs/api.md`): building the statuses
//! whose meaning rides in metadata, and reading that metadata back on the client.
//!
//! The server keeps its one `Error -> Status` mapping and calls these constructors for
//! the variants that need metadata; the client's one `Status -> Error` mapping calls the
//! readers. Defining both halves here, beside the key names in [`wire::metadata`], keeps
//! the value formats in one place. A value that cannot be written as ASCII metadata is
//! left out rather than failing the call: the status code alone is still correct.

use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use super::shard::LeaderHint;
use crate::model::InvalidInput;
use crate::wire::metadata;

impl From<InvalidInput> for Status {
    /// Bad input is `INVALID_ARGUMENT`; the message names the field and the rule.
    fn from(e: InvalidInput) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// `UNAVAILABLE` for a node that is not the leader of the group a request needs, with the
/// leader it knows in `x-adclick-leader` (absent while an election runs).
pub fn not_leader(message: impl Into<String>, leader: Option<&LeaderHint>) -> Status {
    let mut status = Status::unavailable(message);
    if let Some(hint) = leader {
        insert(status.metadata_mut(), metadata::LEADER, &hint.to_string());
    }
    status
}

/// The leader named by a status's `x-adclick-leader` metadata, if present and well-formed.
pub fn leader_hint(status: &Status) -> Option<LeaderHint> {
    read(status.metadata(), metadata::LEADER)?.parse().ok()
}

/// `FAILED_PRECONDITION` for a request routed with an older shard map, carrying the
/// node's current version in `x-adclick-shard-map-version`.
pub fn stale_shard_map(client_version: u64, current_version: u64) -> Status {
    let mut status = Status::failed_precondition(format!(
        "shard map version {client_version} is stale; the current version is \
         {current_version}: refresh it with GetShardMap"
    ));
    insert(
        status.metadata_mut(),
        metadata::SHARD_MAP_VERSION,
        &current_version.to_string(),
    );
    status
}

/// The shard map version in `x-adclick-shard-map-version`: on a request, the version the
/// client routed with; on a `FAILED_PRECONDITION` status, the node's current one.
pub fn shard_map_version(map: &MetadataMap) -> Option<u64> {
    read(map, metadata::SHARD_MAP_VERSION)?.parse().ok()
}

/// `RESOURCE_EXHAUSTED` for backpressure, with the suggested wait in
/// `x-adclick-retry-after-ms`.
pub fn overloaded(message: impl Into<String>, retry_after: Duration) -> Status {
    let mut status = Status::resource_exhausted(message);
    let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
    insert(
        status.metadata_mut(),
        metadata::RETRY_AFTER_MS,
        &ms.to_string(),
    );
    status
}

/// The wait a `RESOURCE_EXHAUSTED` status suggests, if it carries one.
pub fn retry_after(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let ms = read(status.metadata(), metadata::RETRY_AFTER_MS)?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

fn insert(map: &mut MetadataMap, key: &'static str, value: &str) {
    if let Ok(value) = MetadataValue::try_from(value) {
        map.insert(key, value);
    }
}

fn read<'a>(map: &'a MetadataMap, key: &'static str) -> Option<&'a str> {
    map.get(key)?.to_str().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_is_invalid_argument_with_its_message() {
        let status = Status::from(InvalidInput::Missing { field: "ad_id" });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "ad_id is required");
    }

    #[test]
    fn not_leader_carries_the_leader_when_known() {
        let hint = LeaderHint {
            node_id: 2,
            addr: "10.0.0.2:7400".into(),
        };
        let status = not_leader("not the leader of group 4", Some(&hint));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status
                .metadata()
                .get(metadata::LEADER)
                .and_then(|v| v.to_str().ok()),
            Some("2@10.0.0.2:7400")
        );
        assert_eq!(leader_hint(&status), Some(hint));

        let status = not_leader("election in progress", None);
        assert_eq!(leader_hint(&status), None);
    }

    #[test]
    fn non_ascii_addresses_are_left_out_not_fatal() {
        let hint = LeaderHint {
            node_id: 2,
            addr: "n\u{f6}de:7400".into(),
        };
        let status = not_leader("not the leader", Some(&hint));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(leader_hint(&status), None);
    }

    #[test]
    fn stale_shard_map_carries_the_current_version() {
        let status = stale_shard_map(3, 5);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(shard_map_version(status.metadata()), Some(5));
        assert!(
            status.message().contains("GetShardMap"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn overloaded_suggests_a_wait() {
        let status = overloaded("ingest queue full", Duration::from_millis(250));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&status), Some(Duration::from_millis(250)));
        assert_eq!(retry_after(&Status::unavailable("x")), None);
    }
}
