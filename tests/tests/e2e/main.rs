//! End-to-end tests on real `adclickd` processes: 3 nodes on 127.0.0.1 started by
//! `adclick_tests::Cluster`, driven through gRPC and HTTP as clients use them.
//!
//! One test binary (so it links once), one module per scenario:
//!
//! - [`read_write`]: writes through one node, exact counts and top-N through the others,
//!   over gRPC (linearizable and stale) and HTTP.
//! - [`failover`]: SIGKILL of a data group's leader during ingestion.
//! - [`client`]: the Rust client rides out a leader kill by itself.
//! - [`cli`]: `adclick ingest` of a seed file, twice, with bad lines; queries and filters
//!   through the CLI.
//! - [`dev`]: `adclick dev` starts a cluster, serves queries, and stops on Ctrl-C.
//! - [`catch_up`]: a stopped node catches up, from the log or from a snapshot plus the raw
//!   segments fetched from a peer.
//! - [`ingest_outcomes`]: duplicates, late, future and invalid clicks, over gRPC and HTTP.
//! - [`bad_input`]: malformed requests get INVALID_ARGUMENT / 4xx with a reason, never a
//!   5xx, and the nodes stay up.
//! - [`filters`]: a registered filter counts exactly the matching clicks.
//! - [`paused_leader`]: a leader deposed while frozen by SIGSTOP serves no stale read.
//! - [`shutdown`]: SIGTERM during ingestion exits 0 and loses nothing acknowledged.
//! - [`tooling`]: gRPC health and reflection answer as `grpcurl` needs them; `/metrics`
//!   exposes the documented families.
//!
//! The binaries `adclickd` and `adclick` must be built first (`cargo build --workspace
//! --bins`; `scripts/test` does, `cargo test` alone does not build another package's
//! binaries); `ADCLICKD_BIN` and `ADCLICK_BIN` override their paths. Clusters run
//! one at a time; a failing test prints the tail of every node's log, and
//! `ADCLICK_KEEP_TEST_DIRS=1` keeps the data directories.

mod bad_input;
mod catch_up;
mod cli;
mod client;
mod dev;
mod failover;
mod filters;
mod ingest_outcomes;
mod paused_leader;
mod read_write;
mod shutdown;
mod support;
mod tooling;
