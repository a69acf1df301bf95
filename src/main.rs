//! The `keel` command: benchmarks now; inspection tools later.

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel::bench::{self, RawSpace, SyncedAppends};
use keel::wal::SegmentPreparation;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "keel", version, about = "keel: a write-ahead log and Raft storage engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Synced appends through the log beside a raw pwrite+fdatasync loop of the same write shape,
    /// in alternating rounds; prints rates, latencies and the ratio.
    Bench {
        /// Directory to run in (default: a fresh temporary directory on the same disk as /tmp).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Payload bytes per entry.
        #[arg(long, default_value_t = 4096)]
        entry_bytes: usize,
        /// Entries per append call (each call is one fdatasync).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Append calls per round, for each of the log and the raw loop.
        #[arg(long, default_value_t = 5000)]
        appends: usize,
        /// Alternating rounds (raw loop, then log).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Segment size in bytes.
        #[arg(long, default_value_t = keel::limits::SEGMENT_BYTES_DEFAULT)]
        segment_bytes: u64,
        /// How segments are made ready: zero-filled ahead of time, or only fallocated.
        #[arg(long, value_enum, default_value_t = Preparation::Zero)]
        prepare: Preparation,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Preparation {
    /// Written with zeros ahead of time (the default): appends sync over written blocks.
    Zero,
    /// Only fallocated: each sync also commits the file system journal.
    Fallocate,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Bench { dir, entry_bytes, batch, appends, rounds, segment_bytes, prepare } => {
            let preparation = match prepare {
                Preparation::Zero => SegmentPreparation::ZeroFill,
                Preparation::Fallocate => SegmentPreparation::Fallocate,
            };
            let w = SyncedAppends {
                entry_bytes,
                entries_per_append: batch.max(1),
                appends: appends.max(1),
                segment_bytes,
                preparation,
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
            run_bench(&dir, &w, rounds.max(1))
        }
    }
}

fn run_bench(dir: &std::path::Path, w: &SyncedAppends, rounds: usize) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "keel bench: synced appends of {} x {} B entries ({} B written per fdatasync), segments {:?}, \
         {} rounds x {} appends, in {}",
        w.entries_per_append,
        w.entry_bytes,
        w.write_bytes(),
        w.preparation,
        rounds,
        w.appends,
        dir.display()
    );
    let bar = ProgressBar::new((3 * rounds * w.appends) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} {msg} ({eta})")?.progress_chars("=> "),
    );
    let (mut fresh, mut over, mut log) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        bar.set_message(format!("round {round}: raw loop, fresh space"));
        fresh.push(bench::raw_fdatasync_loop(dir, w, RawSpace::Fresh, || bar.inc(1))?);
        bar.set_message(format!("round {round}: raw loop, overwrite"));
        over.push(bench::raw_fdatasync_loop(dir, w, RawSpace::Overwrite, || bar.inc(1))?);
        bar.set_message(format!("round {round}: keel log"));
        log.push(bench::log_synced_appends(dir, w, || bar.inc(1))?);
    }
    bar.finish_and_clear();

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:>5}  {:>11}  {:>11}  {:>10}  {:>8}  {:>8}  {:>9}  {:>9}",
        "round", "raw fresh/s", "raw over/s", "keel/s", "vs fresh", "vs over", "keel p50", "keel p99"
    );
    let (mut vs_fresh, mut vs_over) = (Vec::new(), Vec::new());
    for (i, ((f, o), l)) in fresh.iter().zip(&over).zip(&log).enumerate() {
        vs_fresh.push(l.rate() / f.rate());
        vs_over.push(l.rate() / o.rate());
        println!(
            "{:>5}  {:>11.0}  {:>11.0}  {:>10.0}  {:>8.3}  {:>8.3}  {:>7.0}us  {:>7.0}us",
            i + 1,
            f.rate(),
            o.rate(),
            l.rate(),
            vs_fresh[i],
            vs_over[i],
            us(l.quantile(0.5)),
            us(l.quantile(0.99))
        );
    }
    let rates = |v: &[bench::Samples]| bench::median_spread(&v.iter().map(|s| s.rate()).collect::<Vec<_>>());
    let (fresh_med, fresh_lo, fresh_hi) = rates(&fresh);
    let (over_med, over_lo, over_hi) = rates(&over);
    let (log_med, log_lo, log_hi) = rates(&log);
    let entries_per_s = log_med * w.entries_per_append as f64;
    let mib_per_s = entries_per_s * w.entry_bytes as f64 / (1 << 20) as f64;
    let all = |v: &[bench::Samples]| bench::Samples {
        latencies: v.iter().flat_map(|s| s.latencies.clone()).collect(),
        elapsed: Duration::ZERO,
    };
    let (all_log, all_over) = (all(&log), all(&over));
    println!();
    println!(
        "keel:  {entries_per_s:.0} entries/s, {mib_per_s:.1} MiB/s of payload, {log_med:.0} appends/s \
         (median; range {log_lo:.0}-{log_hi:.0}); latency p50 {:.0} us, p99 {:.0} us",
        us(all_log.quantile(0.5)),
        us(all_log.quantile(0.99))
    );
    println!(
        "raw:   {} B pwrite+fdatasync: fresh space {fresh_med:.0}/s (range {fresh_lo:.0}-{fresh_hi:.0}); \
         overwrite {over_med:.0}/s (range {over_lo:.0}-{over_hi:.0}), p50 {:.0} us, p99 {:.0} us",
        w.write_bytes(),
        us(all_over.quantile(0.5)),
        us(all_over.quantile(0.99))
    );
    let (f_med, f_lo, f_hi) = bench::median_spread(&vs_fresh);
    let (o_med, o_lo, o_hi) = bench::median_spread(&vs_over);
    println!(
        "ratio: keel / raw fresh = {f_med:.3} (range {f_lo:.3}-{f_hi:.3}); keel / raw overwrite = {o_med:.3} (range {o_lo:.3}-{o_hi:.3})"
    );
    Ok(())
}
