//! Reference measurements of building blocks the engine uses, not of the engine itself,
//! printed as `note:` lines to explain what the engine's benchmarks show.

use std::collections::HashMap;
use std::time::Instant;

/// Not the engine: how long single inserts into a growing `HashMap<Box<[u8]>, i64>` take,
/// the type of the state machine's in-memory dedup index (`sm::dedup`, id -> minute), with
/// 16-byte ids like the workload's. The inserts that double the table rehash every entry;
/// their times are what an apply that triggers them pays on top of its usual cost.
pub(crate) fn dedup_map_growth_reference() {
    let mut m: HashMap<Box<[u8]>, i64> = HashMap::new();
    let mut growths = Vec::new();
    for i in 0u64..4_000_000 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&42u64.to_be_bytes());
        id[8..].copy_from_slice(&i.to_be_bytes());
        let cap = m.capacity();
        let t = Instant::now();
        m.insert(Box::from(&id[..]), 1);
        let d = t.elapsed();
        if m.capacity() != cap && m.len() > 200_000 {
            growths.push(format!("{} -> {:.0?}", m.len(), d));
        }
    }
    println!(
        "note: reference: growing a HashMap<Box<[u8]>, i64> (the dedup index's type) with \
         16-byte ids, the doubling inserts at n entries took: {}",
        growths.join(", ")
    );
}
