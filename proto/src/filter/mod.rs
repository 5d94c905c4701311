//! The filter predicate language: registered filters are predicates over a click's
//! attributes, typed by users and evaluated in the Raft state machine's apply.
//!
//! ```text
//! country = "USA" and ip in 10.0.0.0/8
//! ad_id starts_with "camp7:" and not (user_id in ("bot-1", "bot-2") or ip in (::1, 127.0.0.0/8))
//! ```
//!
//! - [`Filter::parse`] turns text into a type-checked [`Filter`] or a [`FilterError`] that
//!   names the position and what was expected; it never panics and enforces
//!   [`MAX_FILTER_LEN`], [`MAX_DEPTH`] and [`MAX_LIST_ITEMS`] against hostile input.
//! - [`Filter::matches`] evaluates it on a [`crate::model::Click`]: deterministic (it reads
//!   only the click), allocation-free and fast enough for every click of every group.
//! - `Display` prints a canonical form (lower-case keywords, sorted lists, minimal
//!   parentheses) with `Filter::parse(&f.to_string()) == Ok(f)`; the registry stores it.
//! - [`FilterName`] is the validated name a filter is registered under.
//!
//! The grammar, operators and semantics for users are in `docs/filters.md`.

mod ast;
mod error;
mod lexer;
mod name;
mod parser;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use ast::Filter;
pub use error::FilterError;
pub use name::{FilterName, MAX_FILTER_NAME_LEN};
pub use parser::{MAX_DEPTH, MAX_FILTER_LEN, MAX_LIST_ITEMS};
