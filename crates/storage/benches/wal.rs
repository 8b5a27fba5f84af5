//! Append + sync throughput of the write-ahead log on the real file system (records/s), for
//! 100 B and 4 KiB records with 1, 16 and 256 records per sync (group commit).
//!
//! Every iteration pays one fdatasync, so the numbers are dominated by the disk under the
//! temporary directory (set `TMPDIR` to choose it).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shieldwall_storage::{RealFs, Wal, WalOptions};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_sync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for record_bytes in [100usize, 4096] {
        for per_sync in [1u64, 16, 256] {
            let tmp = match tempfile::tempdir() {
                Ok(tmp) => tmp,
                Err(e) => panic!("temp dir: {e}"),
            };
            let opts = WalOptions {
                segment_bytes_max: 16 << 20,
                record_bytes_max: 1 << 20,
            };
            let (mut wal, _) = match Wal::open(RealFs, tmp.path().join("wal"), opts) {
                Ok(opened) => opened,
                Err(e) => panic!("open: {e}"),
            };
            let payload = vec![0xa5; record_bytes];
            let mut key = 0u64;
            group.throughput(Throughput::Elements(per_sync));
            group.bench_with_input(
                BenchmarkId::new(format!("{record_bytes}B"), format!("{per_sync}_per_sync")),
                &per_sync,
                |b, &per_sync| {
                    b.iter(|| {
                        for _ in 0..per_sync {
                            key += 1;
                            if let Err(e) = wal.append(key, &payload) {
                                panic!("append: {e}");
                            }
                        }
                        if let Err(e) = wal.sync() {
                            panic!("sync: {e}");
                        }
                        // Keep the disk footprint bounded: drop finished segments.
                        if let Err(e) = wal.compact(key) {
                            panic!("compact: {e}");
                        }
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
