//! The benchmark workloads, defined once and run by `keel bench --workload NAME`, by the
//! criterion benches and by the comparison with raft-engine, against any [`Engine`].
//!
//! - W1: 1 writer, 256 B entries, one entry per append, synced.
//! - W2: 1 writer, 4 KiB entries, one per append, synced.
//! - W3: 4 synced 256 B appends outstanding at all times (keel: asynchronous appends with
//!   completions; an engine without such an API: 4 writer threads on 4 Raft groups).
//! - W4: 1 writer, batches of 64 × 4 KiB entries, synced.
//! - R1: open a directory holding 1 GiB of 4 KiB entries.
//! - R2: 100,000 random single-entry reads over that 1 GiB.
//! - C1: compact half of that 1 GiB: seconds, and disk space freed.

use super::Samples;
use keel::wal::{GroupCommitOptions, Log, LogOptions, NewEntry, OwnedNewEntry, SegmentPreparation, SharedLog, Ticket};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

/// Errors of any engine under test.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the workloads need from a log engine. One Raft group (id 1) unless a workload says.
pub trait Engine: Sized {
    /// A short name for reports.
    fn name() -> &'static str;
    /// Opens (or creates) the engine's directory.
    fn open(dir: &Path) -> Result<Self, BoxError>;
    /// Appends entries `first_index..` with these payloads, in one write, synced if asked.
    fn append(&mut self, first_index: u64, payloads: &[&[u8]], sync: bool) -> Result<(), BoxError>;
    /// Reads one entry; returns its payload length.
    fn read(&self, index: u64) -> Result<usize, BoxError>;
    /// Drops entries below `index` and frees what space the engine frees.
    fn compact(&mut self, index: u64) -> Result<(), BoxError>;
    /// W3: `total` synced appends of one `payload` each, with `outstanding` in flight at all
    /// times. Returns the latency of each.
    fn pipelined(
        dir: &Path,
        payload: &[u8],
        total: usize,
        outstanding: usize,
        tick: &mut dyn FnMut(),
    ) -> Result<Samples, BoxError>;
}

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
    R1,
    R2,
    C1,
}

impl Workload {
    pub const ALL: [Workload; 7] =
        [Workload::W1, Workload::W2, Workload::W3, Workload::W4, Workload::R1, Workload::R2, Workload::C1];

    /// (entry bytes, entries per append) of the append workloads.
    pub fn shape(self) -> Option<(usize, usize)> {
        match self {
            Workload::W1 | Workload::W3 => Some((256, 1)),
            Workload::W2 => Some((4096, 1)),
            Workload::W4 => Some((4096, 64)),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| format!("{w:?}").eq_ignore_ascii_case(s))
    }
}

/// What one run of a workload measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// One latency per operation (append call, read, open, compaction).
    pub samples: Samples,
    /// Entries written or read.
    pub entries: u64,
    /// Payload bytes written or read.
    pub bytes: u64,
    /// Disk space freed (C1).
    pub freed_bytes: u64,
}

impl Outcome {
    pub fn entries_per_s(&self) -> f64 {
        self.entries as f64 / self.samples.elapsed.as_secs_f64()
    }
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.samples.elapsed.as_secs_f64()
    }
}

/// Sizes of a run: append calls for W1–W4, and the data set of R1/R2/C1.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub appends: usize,
    pub dataset_bytes: u64,
    pub reads: usize,
}

impl Default for Scale {
    fn default() -> Self {
        Scale { appends: 4000, dataset_bytes: 1 << 30, reads: 100_000 }
    }
}

/// `len` pseudo-random bytes: payloads must not compress, or an engine that compresses batches
/// (raft-engine does, above 8 KiB) would measure its compressor instead of the disk.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs an append workload (W1–W4) in a fresh directory under `dir`.
pub fn run_appends<E: Engine>(
    w: Workload,
    dir: &Path,
    scale: Scale,
    tick: &mut dyn FnMut(),
) -> Result<Outcome, BoxError> {
    let (entry_bytes, per_append) = w.shape().ok_or("not an append workload")?;
    let dir = dir.join(format!("{}-{w:?}", E::name()));
    let payload = incompressible(entry_bytes, 0x5A);
    let outcome = if w == Workload::W3 {
        let samples = E::pipelined(&dir, &payload, scale.appends, 4, tick)?;
        Outcome { entries: scale.appends as u64, bytes: (scale.appends * entry_bytes) as u64, samples, freed_bytes: 0 }
    } else {
        let mut engine = E::open(&dir)?;
        // Distinct payloads within a batch, so a batch does not compress either.
        let distinct: Vec<Vec<u8>> = (0..per_append as u64).map(|k| incompressible(entry_bytes, k + 7)).collect();
        let payloads: Vec<&[u8]> = distinct.iter().map(|p| &p[..]).collect();
        let mut samples = Samples { latencies: Vec::with_capacity(scale.appends), ..Samples::default() };
        let start = Instant::now();
        for k in 0..scale.appends {
            let t = Instant::now();
            engine.append(1 + (k * per_append) as u64, &payloads, true)?;
            samples.latencies.push(t.elapsed());
            tick();
        }
        samples.elapsed = start.elapsed();
        let n = (scale.appends * per_append) as u64;
        Outcome { samples, entries: n, bytes: n * entry_bytes as u64, freed_bytes: 0 }
    };
    std::fs::remove_dir_all(&dir)?;
    Ok(outcome)
}

/// Writes the R1/R2/C1 data set (`dataset_bytes` of 4 KiB entries) into `dir`, unsynced
/// batches then one sync, and returns the number of entries.
pub fn write_dataset<E: Engine>(dir: &Path, scale: Scale, tick: &mut dyn FnMut()) -> Result<u64, BoxError> {
    let mut engine = E::open(dir)?;
    let n = scale.dataset_bytes / 4096;
    let distinct: Vec<Vec<u8>> = (0..256u64).map(|k| incompressible(4096, k + 11)).collect();
    let batch: Vec<&[u8]> = distinct.iter().map(|p| &p[..]).collect();
    let mut index = 1;
    while index <= n {
        let k = (n + 1 - index).min(256) as usize;
        engine.append(index, &batch[..k], index + k as u64 > n)?;
        index += k as u64;
        tick();
    }
    Ok(n)
}

/// R1: opens the data set.
pub fn run_open<E: Engine>(dir: &Path, entries: u64) -> Result<Outcome, BoxError> {
    let t = Instant::now();
    let engine = E::open(dir)?;
    let elapsed = t.elapsed();
    engine.read(entries)?; // the last entry is there
    Ok(Outcome {
        samples: Samples { latencies: vec![elapsed], elapsed, syncs: None },
        entries,
        bytes: entries * 4096,
        freed_bytes: 0,
    })
}

/// R2: random single-entry reads over the data set.
pub fn run_reads<E: Engine>(
    dir: &Path,
    entries: u64,
    scale: Scale,
    tick: &mut dyn FnMut(),
) -> Result<Outcome, BoxError> {
    let engine = E::open(dir)?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut samples = Samples { latencies: Vec::with_capacity(scale.reads), ..Samples::default() };
    let mut bytes = 0u64;
    let start = Instant::now();
    for k in 0..scale.reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = Instant::now();
        bytes += engine.read(1 + x % entries)? as u64;
        samples.latencies.push(t.elapsed());
        if k % 1000 == 0 {
            tick();
        }
    }
    samples.elapsed = start.elapsed();
    Ok(Outcome { samples, entries: scale.reads as u64, bytes, freed_bytes: 0 })
}

/// C1: compacts half of the data set; reports the time and the disk space freed.
pub fn run_compact<E: Engine>(dir: &Path, entries: u64) -> Result<Outcome, BoxError> {
    let mut engine = E::open(dir)?;
    let before = disk_usage(dir)?;
    let t = Instant::now();
    engine.compact(entries / 2 + 1)?;
    let elapsed = t.elapsed();
    let after = disk_usage(dir)?;
    Ok(Outcome {
        samples: Samples { latencies: vec![elapsed], elapsed, syncs: None },
        entries: entries / 2,
        bytes: entries / 2 * 4096,
        freed_bytes: before.saturating_sub(after),
    })
}

/// Bytes of disk blocks allocated under `dir`.
pub fn disk_usage(dir: &Path) -> Result<u64, BoxError> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { disk_usage(&e.path())? } else { m.blocks() * 512 };
    }
    Ok(total)
}

/// keel's log as a workload engine; `PREP` picks how segments are prepared (0 auto, 1 zero-fill,
/// 2 fallocate).
#[derive(Debug)]
pub struct KeelWith<const PREP: u8>(Log);

/// keel with its defaults (segment preparation chosen automatically).
pub type Keel = KeelWith<0>;
/// keel with segments always zero-filled ahead of time.
pub type KeelZeroFill = KeelWith<1>;
/// keel with fallocate-only segments.
pub type KeelFallocate = KeelWith<2>;

fn keel_options<const PREP: u8>() -> LogOptions {
    let preparation = match PREP {
        1 => SegmentPreparation::ZeroFill,
        2 => SegmentPreparation::Fallocate,
        _ => SegmentPreparation::Auto,
    };
    LogOptions { preparation, ..LogOptions::default() }
}

impl<const PREP: u8> Engine for KeelWith<PREP> {
    fn name() -> &'static str {
        match PREP {
            1 => "keel-zero-fill",
            2 => "keel-fallocate",
            _ => "keel",
        }
    }

    fn open(dir: &Path) -> Result<Self, BoxError> {
        Ok(KeelWith(Log::open(dir, keel_options::<PREP>())?.0))
    }

    fn append(&mut self, first_index: u64, payloads: &[&[u8]], sync: bool) -> Result<(), BoxError> {
        let entries: Vec<NewEntry<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(k, p)| NewEntry { index: first_index + k as u64, term: 1, payload: p })
            .collect();
        self.0.append(&entries)?;
        if sync {
            self.0.sync()?;
        }
        Ok(())
    }

    fn read(&self, index: u64) -> Result<usize, BoxError> {
        Ok(self.0.entry(index)?.payload.len())
    }

    fn compact(&mut self, index: u64) -> Result<(), BoxError> {
        Ok(self.0.compact(index)?)
    }

    fn pipelined(
        dir: &Path,
        payload: &[u8],
        total: usize,
        outstanding: usize,
        tick: &mut dyn FnMut(),
    ) -> Result<Samples, BoxError> {
        let (log, _) = Log::open(dir, keel_options::<PREP>())?;
        let shared = SharedLog::new(log, GroupCommitOptions::default())?;
        let mut in_flight: VecDeque<(Instant, Ticket)> = VecDeque::with_capacity(outstanding);
        let mut samples = Samples { latencies: Vec::with_capacity(total), ..Samples::default() };
        let start = Instant::now();
        for i in 1..=total as u64 {
            if in_flight.len() == outstanding
                && let Some((t, ticket)) = in_flight.pop_front()
            {
                ticket.wait()?;
                samples.latencies.push(t.elapsed());
                tick();
            }
            let entry = OwnedNewEntry { index: i, term: 1, payload: payload.to_vec() };
            in_flight.push_back((Instant::now(), shared.append_async(vec![entry])));
        }
        for (t, ticket) in in_flight {
            ticket.wait()?;
            samples.latencies.push(t.elapsed());
            tick();
        }
        samples.elapsed = start.elapsed();
        samples.syncs = Some(shared.stats().syncs);
        Ok(samples)
    }
}

/// A latency in microseconds, for reports.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
