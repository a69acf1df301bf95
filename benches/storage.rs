//! Criterion benches of Raft persistence: `set_hard_state` (one slot write and fdatasync) and
//! writing and reading a 256 MiB snapshot, with the raw sequential write rate of the same disk,
//! measured in the same run, printed beside them.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel::storage::{ConfState, DiskStorage, Entry, HardState, Storage, StorageMut, StorageOptions};
use keel_harness::bench::{GeneratedData, raw_sequential_write};
use std::io::Read;
use std::time::Duration;

const SNAPSHOT_BYTES: u64 = 256 << 20;

fn hard_state(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap();
    let mut term = 0;
    let mut g = c.benchmark_group("hard_state");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("set_hard_state", |b| {
        b.iter(|| {
            term += 1;
            s.set_hard_state(&HardState { term, vote: 1, commit: 0 }).unwrap();
        })
    });
    g.finish();
}

fn snapshots(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    raw_rates(dir.path(), "before");
    let (mut s, _) = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap();
    s.append(&[Entry::new(1, 1, b"x".to_vec())]).unwrap();
    let mut g = c.benchmark_group("snapshot_256MiB");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Bytes(SNAPSHOT_BYTES));
    let mut index = 0;
    g.bench_function("write", |b| {
        b.iter(|| {
            // Each snapshot needs a new index: append one entry per iteration.
            index += 1;
            if index > 1 {
                s.append(&[Entry::new(index, 1, b"x".to_vec())]).unwrap();
            }
            s.create_snapshot(index, &ConfState::default(), &mut GeneratedData { pos: 0, len: SNAPSHOT_BYTES })
                .unwrap();
        })
    });
    g.bench_function("read", |b| {
        let snap = s.snapshot(0).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        b.iter(|| {
            let mut r = snap.reader().unwrap();
            let mut total = 0u64;
            loop {
                let k = r.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                total += k as u64;
            }
            assert_eq!(total, SNAPSHOT_BYTES);
        })
    });
    g.finish();
    raw_rates(dir.path(), "after");
}

/// Three runs of the raw sequential write of 256 MiB, printed with their median.
fn raw_rates(dir: &std::path::Path, when: &str) {
    let rates: Vec<f64> = (0..3).map(|_| raw_sequential_write(dir, SNAPSHOT_BYTES).unwrap()).collect();
    let (median, lo, hi) = keel_harness::bench::median_spread(&rates);
    println!(
        "raw sequential write of 256 MiB (1 MiB pwrites + fdatasync), {when} the snapshot benches: \
         median {median:.0} MiB/s (range {lo:.0}-{hi:.0})"
    );
}

criterion_group!(benches, hard_state, snapshots);
criterion_main!(benches);
