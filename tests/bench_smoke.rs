//! The benchmark workloads run end to end at a tiny scale, so `keel bench` and the comparison
//! bench cannot rot between the occasions they are run at full length.

use keel_harness::bench::workload::{
    Keel, KeelFallocate, Scale, Workload, incompressible, run_appends, run_compact, run_open, run_reads, write_dataset,
};

#[test]
fn every_workload_runs_on_keel() {
    let dir = tempfile::tempdir().unwrap();
    let scale = Scale { appends: 20, dataset_bytes: 4 << 20, reads: 200 };
    for w in [Workload::W1, Workload::W2, Workload::W3, Workload::W4] {
        let o = run_appends::<Keel>(w, dir.path(), scale, &mut || {}).unwrap();
        let per = w.shape().unwrap().1 as u64;
        assert_eq!(o.entries, 20 * per, "{w:?}");
        assert_eq!(o.samples.latencies.len(), 20, "{w:?}");
        run_appends::<KeelFallocate>(w, dir.path(), scale, &mut || {}).unwrap();
    }
    let data = dir.path().join("data");
    let n = write_dataset::<Keel>(&data, scale, &mut || {}).unwrap();
    assert_eq!(n, 1024);
    assert_eq!(run_open::<Keel>(&data, n).unwrap().entries, n);
    assert_eq!(run_reads::<Keel>(&data, n, scale, &mut || {}).unwrap().bytes, 200 * 4096);
    assert_eq!(run_compact::<Keel>(&data, n).unwrap().entries, n / 2);
}

#[test]
fn workload_names_and_payloads() {
    for w in Workload::ALL {
        assert_eq!(Workload::parse(&format!("{w:?}").to_lowercase()), Some(w));
    }
    assert_eq!(Workload::parse("W9"), None);
    let a = incompressible(4096, 1);
    assert_ne!(a, incompressible(4096, 2));
    // Incompressible enough: no byte value dominates.
    let mut counts = [0usize; 256];
    a.iter().for_each(|&b| counts[b as usize] += 1);
    assert!(counts.iter().all(|&c| c < 64), "{:?}", counts.iter().max());
}
