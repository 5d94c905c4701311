//! The Jepsen-style fault suite (see docs/testing.md).
//!
//! - [`proxy`]: the TCP fault proxy every node-to-node connection goes through.

pub mod proxy;
