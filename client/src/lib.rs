//! adclick's embeddable Rust client and the `adclick` command-line tool.
//!
//! It depends only on `adclick-proto` (the wire protocol and domain types), never on the
//! server or the storage engine, so applications embed it cheaply. The client itself is
//! built by the "client crate, CLI" issue.
