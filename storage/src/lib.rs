//! adclick's storage engine: everything one replica of one Raft group keeps on disk.
//!
//! - [`log`]: the segmented log — Raft log and raw-click store in one — with group commit,
//!   recovery and retention; it implements openraft's `RaftLogStorage`.
//! - [`codec`]: the byte encoding of log entries and commands.
//! - [`sm`]: the aggregation state machine — deterministic apply, counters, dedup,
//!   watermark, filters, queries — persisted in RocksDB; it implements openraft's
//!   `RaftStateMachine`.
//! - [`types`]: the Raft type configuration and the commands the log carries.
//! - [`error`]: the crate's error type.
//!
//! This crate has no network code: the server crate wires it to openraft's networking.

pub mod codec;
pub mod error;
pub mod log;
pub mod sm;
pub mod types;

pub use error::{Error, Result};
