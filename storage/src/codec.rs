//! Byte encoding of log entries (being written).
