//! adclick's server: the Raft groups of one node (openraft over gRPC), the ingest, query
//! and admin services (gRPC and HTTP), and the `adclickd` binary.
//!
//! A node hosts every group of the cluster: the metadata group 0 (filter registry) and the
//! data groups 1..=G, each a Raft group of all members with its own segmented log and its
//! state machine in the node's one RocksDB. [`server::run`] starts a node and serves it
//! until shutdown; `docs/architecture.md` describes the whole design.

pub mod config;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod group;
pub mod http;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod rawfetch;
pub mod server;
pub mod service;
