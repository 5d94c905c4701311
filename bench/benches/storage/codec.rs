//! The entry codec: encode and decode of one 1,000-click ingest entry (the log encodes
//! every entry it appends; decoding happens on recovery and raw reads), and, for scale,
//! what cloning such an entry costs.

use std::hint::black_box;

use adclick_storage::codec::{decode_entry, encode_entry};
use criterion::{Criterion, Throughput};

use crate::{ingest_entry, workload, CLICKS_PER_ENTRY};

/// Encode and decode of one 1,000-click ingest entry. Returns the encoded size.
pub(crate) fn codec(c: &mut Criterion) -> usize {
    let mut wl = workload(100_000, None, 1);
    let e = ingest_entry(&mut wl, 1_000_000);
    let mut bytes = Vec::new();
    encode_entry(&e, &mut bytes);
    println!(
        "note: a {CLICKS_PER_ENTRY}-click ingest entry encodes to {} bytes ({:.1} bytes/click)",
        bytes.len(),
        bytes.len() as f64 / CLICKS_PER_ENTRY as f64
    );

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(CLICKS_PER_ENTRY as u64));
    let mut buf = Vec::with_capacity(bytes.len());
    g.bench_function("encode_entry_1000_clicks", |b| {
        b.iter(|| {
            buf.clear();
            encode_entry(black_box(&e), &mut buf);
            black_box(buf.len())
        })
    });
    g.bench_function("decode_entry_1000_clicks", |b| {
        b.iter(|| decode_entry(black_box(&bytes)).expect("the entry was just encoded"))
    });
    // Not the codec: what building an owned entry costs (the log consumes its entries, so
    // the log benchmarks clone one per append on a separate thread; see `EntryFeed`).
    g.bench_function("clone_entry_1000_clicks", |b| {
        b.iter(|| black_box(&e).clone())
    });
    g.finish();
    bytes.len()
}
