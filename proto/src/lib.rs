//! adclick's wire protocol and domain types.
//!
//! - [`model`]: validated domain types (click, ids, minute arithmetic, outcomes).
//! - [`filter`]: the filter predicate language (parse, print, evaluate on a click).
//! - [`wire`]: the generated protobuf messages of package `adclick.v1` and, with the
//!   `grpc` feature, the tonic client and server stubs.
//! - [`convert`]: domain <-> wire conversions; wire -> domain is fallible and typed.
//!
//! Without the `grpc` feature the crate carries no network code, so the storage engine
//! can use the domain types and messages without depending on tonic.

#[cfg(feature = "grpc")]
pub mod codec;
pub mod convert;
pub mod filter;
pub mod model;
pub mod wire;
