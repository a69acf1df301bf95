//! The `keel` command: `keel server` and `keel cluster` (a replicated key-value store),
//! benchmarks, and the read-only tools `keel inspect`, `keel verify` and `keel dump`.

mod bench_cluster;
mod cluster;
mod dump;
mod inspect;
mod verify;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel_harness::bench::workload::{
    BoxError, Engine, Keel, KeelFallocate, KeelZeroFill, Scale, Workload, micros, run_appends, run_compact, run_open,
    run_reads, write_dataset,
};
use keel_harness::bench::{self, RawSpace, SyncedAppends};
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keel", version, about = "keel: a write-ahead log and Raft storage engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one node of a replicated key-value store that speaks the Redis protocol.
    Server(cluster::ServerArgs),
    /// Starts a local cluster of `keel server` processes and waits for Ctrl-C.
    Cluster(cluster::ClusterArgs),
    /// Shows what is in a data directory (segments, HardState, snapshots, temporary files) and
    /// what opening it would do, by which recovery rule, without changing a byte of it or
    /// disturbing a live process that holds it open.
    ///
    /// Exit codes: 0 the directory was read (damage is reported, not an error); 2 usage or I/O
    /// error.
    Inspect(inspect::InspectArgs),
    /// Checks every checksum in a data directory: segment headers, every record's header and
    /// payload, footers, both HardState slots, every snapshot. Each finding names the file, the
    /// offset and the recovery rule, and says what opening would do (a torn tail open would
    /// truncate is reported as such: bytes never acknowledged). Changes nothing.
    ///
    /// Exit codes: 0 clean; 1 damage found; 2 usage or I/O error.
    Verify(verify::VerifyArgs),
    /// Prints the entries of the log as opening it would recover them: index, term, type,
    /// sizes, hex and UTF-8 previews of the data (and of a context), as text or JSON Lines.
    /// Changes nothing.
    ///
    /// Exit codes: 0 every entry printed; 1 an entry could not be read or decoded, or opening
    /// would refuse the log or the storage directory; 2 usage or I/O error.
    Dump(dump::DumpArgs),
    /// Runs the benchmark workloads (W1-W4 appends, R1 open, R2 reads, C1 compaction), each in
    /// alternating rounds beside raw pwrite+fdatasync loops of the same write shape, and prints
    /// rates, latencies and ratios.
    Bench {
        /// Directory to run in (default: a fresh temporary directory on the same disk as /tmp).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Workloads to run: all, or a comma-separated list of W1,W2,W3,W4,R1,R2,C1.
        #[arg(long, default_value = "all")]
        workload: String,
        /// Rounds of each workload (alternating with the raw loops).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Append calls per round of W1-W4.
        #[arg(long, default_value_t = 4000)]
        appends: usize,
        /// Size of the R1/R2/C1 data set, in MiB of 4 KiB entries.
        #[arg(long, default_value_t = 1024)]
        dataset_mib: u64,
        /// Reads of R2.
        #[arg(long, default_value_t = 100_000)]
        reads: usize,
        /// How keel prepares segments: chosen from the write sizes (auto), zero-filled ahead of
        /// time, or only fallocated.
        #[arg(long, value_enum, default_value_t = Preparation::Auto)]
        prepare: Preparation,
        /// Benchmarks a local 3-node `keel server` cluster instead: 256 B SETs from 1, 16 and 64
        /// clients, linearizable GETs, against W1 and the raw loop in the same run (and
        /// redis-benchmark where installed). Uses --dir, --rounds, --appends and --seconds.
        #[arg(long)]
        cluster: bool,
        /// Seconds per client count and round of --cluster.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Preparation {
    /// Zero-filled while syncs are small, fallocated while they are large (the default).
    Auto,
    /// Written with zeros ahead of time: appends sync over written blocks.
    Zero,
    /// Only fallocated: each sync also commits the file system journal.
    Fallocate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The read-only tools have exit codes of their own (see their `--help`).
    let cli = match cli.command {
        Command::Inspect(args) => return inspect::inspect(args),
        Command::Verify(args) => return verify::verify(args),
        Command::Dump(args) => return dump::dump(args),
        command => Cli { command },
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Server(args) => cluster::server(args),
        Command::Cluster(args) => cluster::cluster(args),
        Command::Inspect(_) | Command::Verify(_) | Command::Dump(_) => unreachable!("handled in main"),
        Command::Bench { dir, workload, rounds, appends, dataset_mib, reads, prepare, cluster, seconds } => {
            let workloads: Vec<Workload> = if workload.eq_ignore_ascii_case("all") {
                Workload::ALL.to_vec()
            } else {
                workload
                    .split(',')
                    .map(|w| Workload::parse(w.trim()).ok_or_else(|| format!("unknown workload {w:?}")))
                    .collect::<Result<_, _>>()?
            };
            let tmp;
            let dir = match dir {
                Some(d) => {
                    std::fs::create_dir_all(&d)?;
                    d
                }
                None => {
                    tmp = tempfile::Builder::new().prefix("keel-bench-").tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            if cluster {
                return bench_cluster::bench_cluster(&dir, rounds.max(1), seconds.max(0.05), appends.max(1));
            }
            let scale = Scale { appends: appends.max(1), dataset_bytes: dataset_mib.max(1) << 20, reads: reads.max(1) };
            match prepare {
                Preparation::Auto => bench_all::<Keel>(&dir, &workloads, rounds.max(1), scale),
                Preparation::Zero => bench_all::<KeelZeroFill>(&dir, &workloads, rounds.max(1), scale),
                Preparation::Fallocate => bench_all::<KeelFallocate>(&dir, &workloads, rounds.max(1), scale),
            }
        }
    }
}

fn progress(len: u64, what: &str) -> Result<ProgressBar, BoxError> {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} {msg} ({eta})")?.progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    Ok(bar)
}

fn bench_all<E: Engine>(dir: &Path, workloads: &[Workload], rounds: usize, scale: Scale) -> Result<(), BoxError> {
    println!(
        "keel bench ({}): {} rounds; {} appends per round; data set {} MiB; {} reads; in {}",
        E::name(),
        rounds,
        scale.appends,
        scale.dataset_bytes >> 20,
        scale.reads,
        dir.display()
    );
    for &w in workloads.iter().filter(|w| w.shape().is_some()) {
        bench_appends::<E>(dir, w, rounds, scale)?;
    }
    let reads: Vec<Workload> = workloads.iter().copied().filter(|w| w.shape().is_none()).collect();
    if !reads.is_empty() {
        bench_dataset::<E>(dir, &reads, rounds, scale)?;
    }
    Ok(())
}

fn bench_appends<E: Engine>(dir: &Path, w: Workload, rounds: usize, scale: Scale) -> Result<(), BoxError> {
    let (entry_bytes, per_append) = w.shape().expect("an append workload");
    let shape = SyncedAppends { entry_bytes, entries_per_append: per_append, appends: scale.appends };
    let bar = progress((3 * rounds * scale.appends) as u64, &format!("{w:?}"))?;
    let (mut fresh, mut over, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        fresh.push(bench::raw_fdatasync_loop(dir, &shape, RawSpace::Fresh, || bar.inc(1))?);
        over.push(bench::raw_fdatasync_loop(dir, &shape, RawSpace::Overwrite, || bar.inc(1))?);
        runs.push(run_appends::<E>(w, dir, scale, &mut || bar.inc(1))?);
    }
    bar.finish_and_clear();
    let rate = |v: &[bench::Samples]| bench::median_spread(&v.iter().map(|s| s.rate()).collect::<Vec<_>>());
    let (f, _, _) = rate(&fresh);
    let (o, o_lo, o_hi) = rate(&over);
    let appends: Vec<f64> = runs.iter().map(|r| r.samples.rate()).collect();
    let (a, a_lo, a_hi) = bench::median_spread(&appends);
    let vs_over: Vec<f64> = runs.iter().zip(&over).map(|(r, o)| r.samples.rate() / o.rate()).collect();
    let vs_fresh: Vec<f64> = runs.iter().zip(&fresh).map(|(r, f)| r.samples.rate() / f.rate()).collect();
    let (ro, ro_lo, ro_hi) = bench::median_spread(&vs_over);
    let (rf, _, _) = bench::median_spread(&vs_fresh);
    let all = bench::Samples {
        latencies: runs.iter().flat_map(|r| r.samples.latencies.clone()).collect(),
        ..bench::Samples::default()
    };
    let entries = a * per_append as f64;
    println!(
        "{w:?} {}x{} B synced{}: {:.0} entries/s, {:.1} MiB/s, {:.0} appends/s (range {:.0}-{:.0}), p50 {:.0} us, p99 {:.0} us",
        per_append,
        entry_bytes,
        if w == Workload::W3 { ", 4 outstanding" } else { "" },
        entries,
        entries * entry_bytes as f64 / (1 << 20) as f64,
        a,
        a_lo,
        a_hi,
        micros(all.quantile(0.5)),
        micros(all.quantile(0.99)),
    );
    println!(
        "   raw pwrite+fdatasync of {} B: fresh {:.0}/s, overwrite {:.0}/s (range {:.0}-{:.0}); \
         ratio to overwrite {:.3} (range {:.3}-{:.3}), to fresh {:.3}",
        shape.write_bytes(),
        f,
        o,
        o_lo,
        o_hi,
        ro,
        ro_lo,
        ro_hi,
        rf
    );
    let syncs: u64 = runs.iter().filter_map(|r| r.samples.syncs).sum();
    if syncs > 0 {
        let appends: usize = runs.iter().map(|r| r.samples.latencies.len()).sum();
        println!("   {:.2} appends per fdatasync ({appends} appends, {syncs} syncs)", appends as f64 / syncs as f64);
    }
    Ok(())
}

fn bench_dataset<E: Engine>(dir: &Path, workloads: &[Workload], rounds: usize, scale: Scale) -> Result<(), BoxError> {
    for round in 0..rounds {
        let data = dir.join(format!("{}-dataset", E::name()));
        let n = scale.dataset_bytes / 4096;
        let bar = progress(
            n / 256 + 1,
            &format!("writing the {} MiB data set (round {})", scale.dataset_bytes >> 20, round + 1),
        )?;
        let entries = write_dataset::<E>(&data, scale, &mut || bar.inc(1))?;
        bar.finish_and_clear();
        for &w in workloads {
            let o = match w {
                Workload::R1 => run_open::<E>(&data, entries)?,
                Workload::R2 => {
                    let bar = progress(scale.reads as u64 / 1000 + 1, "R2 reads")?;
                    let o = run_reads::<E>(&data, entries, scale, &mut || bar.inc(1))?;
                    bar.finish_and_clear();
                    o
                }
                Workload::C1 => run_compact::<E>(&data, entries)?,
                _ => unreachable!("append workloads run elsewhere"),
            };
            match w {
                Workload::R1 => println!(
                    "R1 round {}: opened {} entries ({} MiB) in {:.1} ms",
                    round + 1,
                    entries,
                    scale.dataset_bytes >> 20,
                    o.samples.elapsed.as_secs_f64() * 1e3
                ),
                Workload::R2 => println!(
                    "R2 round {}: {:.0} reads/s, p50 {:.2} us, p99 {:.2} us",
                    round + 1,
                    o.entries_per_s(),
                    micros(o.samples.quantile(0.5)),
                    micros(o.samples.quantile(0.99))
                ),
                _ => println!(
                    "C1 round {}: compacted {} entries in {:.1} ms, freed {:.0} MiB of disk",
                    round + 1,
                    o.entries,
                    o.samples.elapsed.as_secs_f64() * 1e3,
                    o.freed_bytes as f64 / (1 << 20) as f64
                ),
            }
        }
        std::fs::remove_dir_all(&data)?;
    }
    Ok(())
}
