//! adclick's embeddable Rust client, and the `adclick` command-line tool built on it.
//!
//! - [`Client`]: connects from a few seed addresses, caches the cluster's shard map, sends
//!   each group's part of a batch straight to that group's leader, follows not-leader
//!   redirects, refetches a stale map, and retries anything whose outcome is unknown with
//!   the same event ids (a retried click is never counted twice), all bounded by a
//!   deadline ([`ClientConfig`]).
//! - [`Producer`]: batches single clicks for high-rate ingestion, with bounded memory and
//!   requests in flight.
//! - [`Error`]: one typed error; each variant says what to do next.
//!
//! The API speaks the domain types of [`model`] (validated clicks, ids, outcomes) and the
//! query types re-exported here. It depends only on `adclick-proto`, never on the server or
//! the storage engine.

mod client;
mod config;
mod error;
mod producer;
mod routing;

pub use adclick_proto::convert::{CountQuery, ReadConsistency, TimeSpec, TopQuery};
pub use adclick_proto::filter::FilterName;
pub use adclick_proto::model;
pub use client::{
    ClickResult, Client, CountAnswer, FilterInfo, FilterState, GroupPosition, IngestReport,
    TopAnswer,
};
pub use config::ClientConfig;
pub use error::Error;
pub use producer::{Delivery, Producer, ProducerConfig, ProducerStats};
pub use routing::parse_seeds;

/// A fresh event id: a UUIDv7 (time-ordered, random), the default for new clicks. A retry
/// must reuse the id of the click it retries, never call this again.
pub fn new_event_id() -> model::EventId {
    // 16 bytes is within 1..=64, so the id is always valid.
    model::EventId::new(bytes::Bytes::copy_from_slice(
        uuid::Uuid::now_v7().as_bytes(),
    ))
    .unwrap_or_else(|_| unreachable!("a UUID is 16 bytes"))
}
