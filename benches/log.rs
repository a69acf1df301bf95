//! Criterion benches of the log: synced and unsynced appends (256 B and 4 KiB), single-entry and
//! range reads from mapped segments, and opening a log that holds 1 GiB in sealed segments.
//!
//! The synced benches print the raw pwrite+fdatasync rate of the same write shape beside them
//! (measured in the same run) so the ratio can be read off; `keel bench` does this in rounds.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keel::wal::{Log, LogOptions, NewEntry};
use keel_harness::bench::{RawSpace, SyncedAppends, raw_fdatasync_loop};
use std::hint::black_box;
use std::time::Duration;

fn opts() -> LogOptions {
    LogOptions::default()
}

fn appends(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    for &size in &[256usize, 4096] {
        let payload = vec![0x5Au8; size];
        for synced in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
            let mut index = 1;
            g.throughput(Throughput::Bytes(size as u64));
            let name = if synced { "synced" } else { "unsynced" };
            g.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    let e = [NewEntry { index, term: 1, payload: &payload }];
                    if synced {
                        log.append_and_sync(&e).unwrap();
                    } else {
                        log.append(&e).unwrap();
                    }
                    index += 1;
                })
            });
            if synced {
                let w = SyncedAppends { entry_bytes: size, entries_per_append: 1, appends: 2000 };
                for space in [RawSpace::Fresh, RawSpace::Overwrite] {
                    let raw = raw_fdatasync_loop(dir.path(), &w, space, || {}).unwrap();
                    println!(
                        "raw pwrite+fdatasync loop, {} B writes, {space:?}: {:.0}/s ({:.1} us each)",
                        w.write_bytes(),
                        raw.rate(),
                        1e6 / raw.rate()
                    );
                }
            }
        }
    }
    g.finish();
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
    let payload = vec![0x5Au8; 4096];
    let n = 50_000u64;
    for chunk in (1..=n).collect::<Vec<_>>().chunks(1000) {
        let e: Vec<_> = chunk.iter().map(|&index| NewEntry { index, term: 1, payload: &payload }).collect();
        log.append(&e).unwrap();
    }
    log.sync().unwrap();
    let mut g = c.benchmark_group("read");
    let mut x = 0x2545F4914F6CDD1Du64;
    g.bench_function("single_4096", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = log.entry(1 + x % n).unwrap();
            black_box(e.payload[0]);
        })
    });
    g.throughput(Throughput::Bytes(64 * 4096));
    g.bench_function("range_64x4096", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let lo = 1 + x % (n - 64);
            black_box(log.entries(lo, lo + 64, u64::MAX).unwrap().len());
        })
    });
    g.finish();
}

fn open_1gib(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
        let payload = vec![0x5Au8; 4096];
        let n = (1u64 << 30) / 4096;
        for start in (1..=n).step_by(1024) {
            let e: Vec<_> = (start..(start + 1024).min(n + 1))
                .map(|index| NewEntry { index, term: 1, payload: &payload })
                .collect();
            log.append(&e).unwrap();
        }
        log.sync().unwrap();
    }
    let mut g = c.benchmark_group("open");
    g.sample_size(20);
    g.bench_function("1GiB_4096_entries", |b| {
        b.iter(|| {
            let (log, report) = Log::open(dir.path(), opts()).unwrap();
            assert_eq!(report.entries_recovered, (1 << 30) / 4096);
            black_box(log.last_index());
        })
    });
    g.finish();
}

/// The shared workload definitions W1-W4 (as run by `keel bench`), timed by criterion: each
/// iteration is one synced append call of the workload's shape, in a fresh log per sample.
fn workloads(c: &mut Criterion) {
    use keel_harness::bench::workload::{Keel, Scale, Workload, run_appends};
    let mut g = c.benchmark_group("workload");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for w in [Workload::W1, Workload::W2, Workload::W3, Workload::W4] {
        let (entry_bytes, per_append) = w.shape().unwrap();
        g.throughput(Throughput::Bytes((entry_bytes * per_append) as u64));
        g.bench_function(format!("{w:?}"), |b| {
            b.iter_custom(|iters| {
                let dir = tempfile::tempdir().unwrap();
                let scale = Scale { appends: iters as usize, ..Scale::default() };
                run_appends::<Keel>(w, dir.path(), scale, &mut || {}).unwrap().samples.elapsed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, appends, reads, open_1gib, workloads);
criterion_main!(benches);
