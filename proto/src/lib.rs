//! adclick's wire protocol and domain types.
//!
//! - [`model`]: validated domain types (click, ids, minute arithmetic, outcomes).
//! - [`filter`]: the filter predicate language (parse, print, evaluate on a click).
//! - [`wire`]: the generated protobuf messages of package `adclick.v1` and, with the
//!   `grpc` feature, the tonic client and server stubs.
//! - [`convert`]: domain <-> wire conversions; wire -> domain is fallible and typed.
//! - `json` (feature `json`): the JSON click object of `POST /clicks` and JSONL files.
//!
//! Without the `grpc` feature the crate carries no network code, so the storage engine
//! can use the domain types and messages without depending on tonic.

#[cfg(feature = "grpc")]
pub mod codec;
pub mod convert;
pub mod filter;
#[cfg(feature = "json")]
pub mod json;
pub mod model;
pub mod wire;
