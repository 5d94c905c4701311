//! adclick's end-to-end test harness: real `adclickd` processes on 127.0.0.1, driven
//! through the public gRPC and HTTP surfaces, and inspected on disk once stopped.
//!
//! - [`cluster`]: finds the `adclickd` binary, starts a 3-node cluster in a temporary
//!   directory, kills / stops / restarts nodes, waits for readiness and leaders, and hands
//!   out gRPC and HTTP clients for any node.
//! - [`http`]: a tiny HTTP/1.1 client for the nodes' JSON surface.
//! - [`clicks`]: a click generator with unique event ids, ingestion with bounded retries
//!   that reuse event ids, a [`clicks::Ledger`] of what was attempted and acknowledged,
//!   and a background ingester for fault scenarios.
//! - [`query`]: small builders for query requests.
//! - [`disk`]: reads a stopped node's raw Raft log and state-machine digests with
//!   `adclick-storage`.
//! - [`wait`]: bounded polling.
//!
//! Every wait in the harness is bounded; nothing retries forever. The end-to-end tests
//! live in `tests/e2e/`; run them with `cargo test -p adclick-tests` after building the
//! server (`cargo build -p adclick-server --bin adclickd`; `cargo test --workspace` builds
//! it too).

pub mod clicks;
pub mod cluster;
pub mod disk;
pub mod fault;
pub mod http;
pub mod query;
pub mod wait;

pub use clicks::{ingest_with_retry, BackgroundIngest, ClickGen, Ledger, RetryPolicy};
pub use cluster::{adclick_path, adclickd_path, Cluster, ClusterOptions};
pub use http::{HttpClient, HttpResponse};
pub use wait::{eventually, now_ms};
