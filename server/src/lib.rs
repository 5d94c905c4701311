//! adclick's server: the Raft groups of one node (openraft over gRPC), the ingest, query
//! and admin services (gRPC and HTTP), and the `adclickd` binary.
//!
//! The storage engine it stands on is `adclick-storage`; the wire protocol is
//! `adclick-proto`. The services themselves are built by the "replicated cluster server"
//! issue; until then this crate only fixes its place in the dependency graph
//! (server -> storage, proto).
