//! The client-facing operations, shared by the gRPC services ([`grpc`]) and the HTTP
//! surface (`crate::http`): ingest, count/top queries and administration.

pub mod admin;
pub mod grpc;
pub mod ingest;
pub mod query;
