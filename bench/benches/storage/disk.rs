//! The disk's own price of durability, measured without the log: what an `fdatasync` after
//! a write costs on the file system the benchmarks write to.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

/// The disk's own price of durability, without the log: a write at the end of a growing
/// file followed by `fdatasync` (what the log's flusher does), and the same into space
/// written beforehand (what a preallocating log would pay).
pub(crate) fn disk(c: &mut Criterion, dir: &Path, entry_bytes: usize) {
    let mut g = c.benchmark_group("disk");
    g.sample_size(10);
    let path = dir.join("fsync-probe");
    for (name, size, prealloc) in [
        ("append_4KiB_fdatasync", 4096, false),
        ("append_entry_sized_fdatasync", entry_bytes, false),
        ("overwrite_entry_sized_fdatasync", entry_bytes, true),
    ] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| write_and_sync(&path, size, prealloc, iters))
        });
    }
    g.finish();
}

/// Space written (and synced) up front for the overwrite probe; writes wrap around in it.
const PREALLOC_BYTES: u64 = 64 << 20;

fn write_and_sync(path: &Path, size: usize, prealloc: bool, iters: u64) -> Duration {
    let f = File::create(path).expect("create the fsync probe file");
    let buf = vec![0xA5u8; size];
    let size = size as u64;
    let slots = PREALLOC_BYTES / size;
    if prealloc {
        let zeros = vec![0u8; 1 << 20];
        for i in 0..PREALLOC_BYTES >> 20 {
            f.write_all_at(&zeros, i << 20)
                .expect("preallocate the probe");
        }
        f.sync_all().expect("sync the preallocated probe");
    } else {
        f.sync_all().expect("sync the new probe file");
    }
    let start = Instant::now();
    for i in 0..iters {
        let at = if prealloc {
            (i % slots) * size
        } else {
            i * size
        };
        f.write_all_at(&buf, at).expect("write the probe");
        f.sync_data().expect("fdatasync the probe");
    }
    let took = start.elapsed();
    drop(f);
    std::fs::remove_file(path).expect("remove the fsync probe");
    took
}
