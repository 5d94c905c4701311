//! Domain <-> wire conversions (being written).
