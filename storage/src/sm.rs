//! State machine (being written).
