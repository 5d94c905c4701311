//! Byte encodings of what the log stores: Raft entries (log id + blank / command /
//! membership payload), the commands inside them, and single clicks.
//!
//! The format is compact (varints, length-prefixed fields, clicks field by field, event
//! times relative to the batch's proposal time) because the log is also the raw-click
//! store. It is versioned ([`ENTRY_FORMAT_VERSION`]) and documented byte by byte in
//! `docs/log-format.md`. Decoding validates every value through the domain constructors and
//! reports bad bytes as a [`DecodeError`], which converts to [`crate::Error::Corruption`];
//! it never panics, whatever the input.
//!
//! - [`wire`]: varints, zigzag, length-prefixed strings, the bounds-checked reader.
//! - [`entry`]: entries, commands, clicks, memberships.

pub mod entry;
pub mod wire;

#[cfg(test)]
mod tests;

pub use entry::{
    decode_click, decode_command, decode_entry, decode_log_id, encode_click, encode_command,
    encode_entry, CLICK_FORMAT_VERSION, ENTRY_FORMAT_VERSION, MAX_LOG_ID_PREFIX_LEN, MIN_ENTRY_LEN,
};
pub use wire::DecodeError;
