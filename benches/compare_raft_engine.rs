//! keel against TiKV's raft-engine (0.4.2, default config) on the same disk, running the shared
//! workloads (W1-W4, R1, R2, C1) alternately, engine by engine, for several rounds, and printing
//! a markdown table of medians, spreads and ratios. The README's comparison table comes from:
//!
//! `cargo bench --features compare-raft-engine --bench compare_raft_engine`
//!
//! Environment: `KEEL_COMPARE_ROUNDS` (default 3), `KEEL_COMPARE_APPENDS` (default 4000),
//! `KEEL_COMPARE_DATASET_MIB` (default 1024), `KEEL_COMPARE_DIR` (default: a temporary directory),
//! `KEEL_COMPARE_WORKLOADS` (default all; e.g. `W2,W4,R1`).

use keel_harness::bench::Samples;
use keel_harness::bench::median_spread;
use keel_harness::bench::workload::{
    BoxError, Engine, Keel, Outcome, Scale, Workload, run_appends, run_compact, run_open, run_reads, write_dataset,
};
use keel_harness::raft_engine::{self, Config, LogBatch, MessageExt};
use keel_harness::raft_proto::eraftpb::Entry;
use std::path::Path;
use std::time::Instant;

#[derive(Clone)]
struct Msg;

impl MessageExt for Msg {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

struct RaftEngine(raft_engine::Engine);

fn entry(index: u64, payload: &[u8]) -> Entry {
    Entry { index, term: 1, data: payload.to_vec().into(), ..Default::default() }
}

impl Engine for RaftEngine {
    fn name() -> &'static str {
        "raft-engine"
    }

    fn open(dir: &Path) -> Result<Self, BoxError> {
        let config = Config { dir: dir.to_string_lossy().into_owned(), ..Config::default() };
        Ok(RaftEngine(raft_engine::Engine::open(config)?))
    }

    fn append(&mut self, first_index: u64, payloads: &[&[u8]], sync: bool) -> Result<(), BoxError> {
        let entries: Vec<Entry> = payloads.iter().enumerate().map(|(k, p)| entry(first_index + k as u64, p)).collect();
        let mut batch = LogBatch::default();
        batch.add_entries::<Msg>(1, &entries)?;
        self.0.write(&mut batch, sync)?;
        Ok(())
    }

    fn read(&self, index: u64) -> Result<usize, BoxError> {
        Ok(self.0.get_entry::<Msg>(1, index)?.ok_or("missing entry")?.data.len())
    }

    fn compact(&mut self, index: u64) -> Result<(), BoxError> {
        self.0.compact_to(1, index);
        self.0.purge_expired_files()?;
        Ok(())
    }

    /// raft-engine has no asynchronous append: 4 writer threads on 4 Raft groups, its
    /// group-commit path.
    fn pipelined(
        dir: &Path,
        payload: &[u8],
        total: usize,
        outstanding: usize,
        tick: &mut dyn FnMut(),
    ) -> Result<Samples, BoxError> {
        let engine = std::sync::Arc::new(RaftEngine::open(dir)?);
        let per = total / outstanding;
        let start = Instant::now();
        let threads: Vec<_> = (0..outstanding as u64)
            .map(|g| {
                let (engine, payload) = (engine.clone(), payload.to_vec());
                std::thread::spawn(move || -> Result<Vec<std::time::Duration>, String> {
                    let mut lat = Vec::with_capacity(per);
                    for i in 1..=per as u64 {
                        let mut batch = LogBatch::default();
                        batch.add_entries::<Msg>(g + 1, &[entry(i, &payload)]).map_err(|e| e.to_string())?;
                        let t = Instant::now();
                        engine.0.write(&mut batch, true).map_err(|e| e.to_string())?;
                        lat.push(t.elapsed());
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut samples = Samples::default();
        for t in threads {
            samples.latencies.extend(t.join().map_err(|_| "writer panicked")??);
            tick();
        }
        samples.elapsed = start.elapsed();
        Ok(samples)
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The figure compared for each workload, higher is better except where noted.
fn figure(w: Workload, o: &Outcome) -> f64 {
    match w {
        Workload::R1 | Workload::C1 => o.samples.elapsed.as_secs_f64(),
        _ => o.entries_per_s(),
    }
}

fn main() -> Result<(), BoxError> {
    let rounds = env("KEEL_COMPARE_ROUNDS", 3) as usize;
    let scale = Scale {
        appends: env("KEEL_COMPARE_APPENDS", 4000) as usize,
        dataset_bytes: env("KEEL_COMPARE_DATASET_MIB", 1024) << 20,
        reads: 100_000,
    };
    let tmp = tempfile::Builder::new().prefix("keel-compare-").tempdir()?;
    let dir = std::env::var_os("KEEL_COMPARE_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().into());
    std::fs::create_dir_all(&dir)?;
    eprintln!("comparing keel and raft-engine in {}: {rounds} alternating rounds, {scale:?}", dir.display());

    let selected: Vec<Workload> = match std::env::var("KEEL_COMPARE_WORKLOADS") {
        Ok(list) => list
            .split(',')
            .map(|w| Workload::parse(w.trim()).ok_or(format!("unknown workload {w}")))
            .collect::<Result<_, _>>()?,
        Err(_) => Workload::ALL.to_vec(),
    };
    let mut keel: Vec<(Workload, Outcome)> = Vec::new();
    let mut other: Vec<(Workload, Outcome)> = Vec::new();
    let mut freed: Vec<(u64, u64)> = Vec::new();
    for round in 0..rounds {
        for w in [Workload::W1, Workload::W2, Workload::W3, Workload::W4].into_iter().filter(|w| selected.contains(w)) {
            eprintln!("round {} {w:?}", round + 1);
            let k = run_appends::<Keel>(w, &dir, scale, &mut || {})?;
            let r = run_appends::<RaftEngine>(w, &dir, scale, &mut || {})?;
            // Per-round figures, for diagnosing spreads (stderr; the table goes to stdout).
            eprintln!("  keel {:.0} entries/s, raft-engine {:.0} entries/s", k.entries_per_s(), r.entries_per_s());
            keel.push((w, k));
            other.push((w, r));
        }
        if [Workload::R1, Workload::R2, Workload::C1].iter().any(|w| selected.contains(w)) {
            eprintln!("round {} R1 R2 C1", round + 1);
            let (k, r) = (dataset::<Keel>(&dir, scale)?, dataset::<RaftEngine>(&dir, scale)?);
            freed.push((k[2].freed_bytes, r[2].freed_bytes));
            keel.extend([Workload::R1, Workload::R2, Workload::C1].into_iter().zip(k));
            other.extend([Workload::R1, Workload::R2, Workload::C1].into_iter().zip(r));
        }
    }

    println!("| workload | keel | raft-engine 0.4.2 | keel / raft-engine |");
    println!("|---|---|---|---|");
    for w in Workload::ALL.into_iter().filter(|w| selected.contains(w)) {
        let k: Vec<f64> = keel.iter().filter(|(x, _)| *x == w).map(|(_, o)| figure(w, o)).collect();
        let r: Vec<f64> = other.iter().filter(|(x, _)| *x == w).map(|(_, o)| figure(w, o)).collect();
        let ratios: Vec<f64> = k
            .iter()
            .zip(&r)
            .map(|(a, b)| if matches!(w, Workload::R1 | Workload::C1) { b / a } else { a / b })
            .collect();
        let (km, klo, khi) = median_spread(&k);
        let (rm, rlo, rhi) = median_spread(&r);
        let (qm, qlo, qhi) = median_spread(&ratios);
        let unit = match w {
            Workload::R1 | Workload::C1 => "s",
            Workload::R2 => "reads/s",
            _ => "entries/s",
        };
        let speed = if matches!(w, Workload::R1 | Workload::C1) { "speed-up" } else { "ratio" };
        println!(
            "| {w:?} | {km:.3} {unit} ({klo:.3}-{khi:.3}) | {rm:.3} {unit} ({rlo:.3}-{rhi:.3}) | {speed} {qm:.2} ({qlo:.2}-{qhi:.2}) |"
        );
    }
    if freed.is_empty() {
        return Ok(());
    }
    let (kf, rf): (Vec<f64>, Vec<f64>) =
        freed.iter().map(|&(k, r)| (k as f64 / (1 << 20) as f64, r as f64 / (1 << 20) as f64)).unzip();
    println!(
        "\nC1 disk space freed by compacting half the data set: keel median {:.0} MiB, raft-engine median {:.0} MiB",
        median_spread(&kf).0,
        median_spread(&rf).0
    );
    Ok(())
}

/// Writes the data set, then runs R1, R2 and C1 on it, and removes it.
fn dataset<E: Engine>(dir: &Path, scale: Scale) -> Result<Vec<Outcome>, BoxError> {
    let data = dir.join(format!("{}-dataset", E::name()));
    let n = write_dataset::<E>(&data, scale, &mut || {})?;
    let out = vec![run_open::<E>(&data, n)?, run_reads::<E>(&data, n, scale, &mut || {})?, run_compact::<E>(&data, n)?];
    std::fs::remove_dir_all(&data)?;
    Ok(out)
}
