//! The filter predicate language (being written).
