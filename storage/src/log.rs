//! Segmented log (being written).
