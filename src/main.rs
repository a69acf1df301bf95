//! The `keel` command: benchmarks now; inspection tools later.

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel::bench::{self, SyncedAppends};
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
    },
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
        Command::Bench { dir, entry_bytes, batch, appends, rounds, segment_bytes } => {
            let w =
                SyncedAppends { entry_bytes, entries_per_append: batch.max(1), appends: appends.max(1), segment_bytes };
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
        "keel bench: synced appends of {} x {} B entries ({} B written per fdatasync), {} rounds x {} appends, in {}",
        w.entries_per_append,
        w.entry_bytes,
        w.write_bytes(),
        rounds,
        w.appends,
        dir.display()
    );
    let bar = ProgressBar::new((2 * rounds * w.appends) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} {msg} ({eta})")?.progress_chars("=> "),
    );
    let mut raw = Vec::new();
    let mut log = Vec::new();
    for round in 1..=rounds {
        bar.set_message(format!("round {round}: raw fdatasync loop"));
        raw.push(bench::raw_fdatasync_loop(dir, w, || bar.inc(1))?);
        bar.set_message(format!("round {round}: keel log"));
        log.push(bench::log_synced_appends(dir, w, || bar.inc(1))?);
    }
    bar.finish_and_clear();

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:>5}  {:>12}  {:>14}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}",
        "round", "raw syncs/s", "keel appends/s", "ratio", "raw p50", "raw p99", "keel p50", "keel p99"
    );
    let mut ratios = Vec::new();
    for (i, (r, l)) in raw.iter().zip(&log).enumerate() {
        let ratio = l.rate() / r.rate();
        ratios.push(ratio);
        println!(
            "{:>5}  {:>12.0}  {:>14.0}  {:>7.3}  {:>7.0}us  {:>7.0}us  {:>7.0}us  {:>7.0}us",
            i + 1,
            r.rate(),
            l.rate(),
            ratio,
            us(r.quantile(0.5)),
            us(r.quantile(0.99)),
            us(l.quantile(0.5)),
            us(l.quantile(0.99))
        );
    }
    let (raw_med, raw_lo, raw_hi) = bench::median_spread(&raw.iter().map(|s| s.rate()).collect::<Vec<_>>());
    let (log_med, log_lo, log_hi) = bench::median_spread(&log.iter().map(|s| s.rate()).collect::<Vec<_>>());
    let (ratio_med, ratio_lo, ratio_hi) = bench::median_spread(&ratios);
    let entries_per_s = log_med * w.entries_per_append as f64;
    let mib_per_s = entries_per_s * w.entry_bytes as f64 / (1 << 20) as f64;
    let all_log =
        bench::Samples { latencies: log.iter().flat_map(|s| s.latencies.clone()).collect(), elapsed: Duration::ZERO };
    println!();
    println!(
        "keel:  {entries_per_s:.0} entries/s, {mib_per_s:.1} MiB/s of payload, {log_med:.0} appends/s (median; range {log_lo:.0}-{log_hi:.0})"
    );
    println!(
        "       append latency p50 {:.0} us, p99 {:.0} us (all rounds)",
        us(all_log.quantile(0.5)),
        us(all_log.quantile(0.99))
    );
    println!("raw:   {raw_med:.0} pwrite+fdatasync/s of {} B (median; range {raw_lo:.0}-{raw_hi:.0})", w.write_bytes());
    println!("ratio: keel / raw = {ratio_med:.3} (median of per-round ratios; range {ratio_lo:.3}-{ratio_hi:.3})");
    Ok(())
}
