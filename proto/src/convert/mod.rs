//! Conversions between the domain types of [`crate::model`] and the wire messages of
//! [`crate::wire`], plus the text forms HTTP and the CLI share (timestamps, ranges).
//!
//! Domain -> wire is infallible (`From`). Wire -> domain is fallible (`TryFrom`, error
//! [`InvalidInput`](crate::model::InvalidInput)) and checks every rule the design states,
//! through the `model` constructors; the error names the offending field as it is spelled
//! on the wire, so it can go back to the caller verbatim (gRPC `INVALID_ARGUMENT`, HTTP
//! 400, or the `message` of a `REJECTED`/`INVALID` event result). Nothing here panics on
//! input.
//!
//! One file per conversion family:
//! - `click`: [`wire::Click`](crate::wire::Click) <-> [`Click`](crate::model::Click).
//! - `ingest`: outcomes, reject reasons, event results, tallies, the ingest response.
//! - `timestamp`: RFC 3339 / epoch-millisecond text <-> ms since the epoch.
//! - `range`: query time ranges -> [`MinuteRange`](crate::model::MinuteRange).
//! - `query`: count and top requests <-> [`CountQuery`] / [`TopQuery`], top rows.
//! - `shard`: key ranges, shard-map routing, leader hints.
//! - `status` (feature `grpc`): the metadata half of the gRPC status contract.

mod click;
mod ingest;
mod query;
mod range;
mod shard;
#[cfg(feature = "grpc")]
mod status;
mod timestamp;

#[cfg(test)]
mod proptests;

pub use click::MAX_IP_TEXT_LEN;
pub use ingest::ingest_response;
pub use query::{CountQuery, ReadConsistency, TopQuery, DEFAULT_TOP_N, MAX_TOP_N};
pub use range::{TimeSpec, MAX_LAST_MINUTES};
pub use shard::LeaderHint;
#[cfg(feature = "grpc")]
pub use status::{
    leader_hint, not_leader, overloaded, retry_after, shard_map_version, stale_shard_map,
};
pub use timestamp::{format_timestamp_ms, parse_timestamp_ms, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
