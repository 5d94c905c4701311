//! adclick's benchmarks and demos.
//!
//! - [`workload`]: the seeded click generator (Zipf over ads, countries, address ranges,
//!   known shares of duplicates, late and future clicks) shared by the demo and the load
//!   generator.
//! - `storage-demo` (binary): the README's run command until the cluster exists; drives one
//!   group's log and state machine and prints the answers.

pub mod workload;
