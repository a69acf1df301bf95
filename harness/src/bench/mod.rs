//! Benchmark support shared by `keel bench`, the criterion benches and the comparison with
//! raft-engine: the workloads (`workload.rs`), and the disk's own limits for each shape (raw
//! `pwrite` + `fdatasync` loops into fresh or already written space, a raw sequential write).

pub mod workload;

use keel::Result;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The write shape of a synced-append workload, for the raw loops: `appends` calls of
/// `entries_per_append` entries of `entry_bytes` each.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncedAppends {
    pub entry_bytes: usize,
    pub entries_per_append: usize,
    pub appends: usize,
}

/// Where the raw loop writes: space only allocated, or blocks already written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawSpace {
    /// `fallocate`d: each `fdatasync` also commits the file system journal.
    Fresh,
    /// Written with zeros and synced beforehand: the disk's overwrite ceiling.
    Overwrite,
}

impl SyncedAppends {
    /// Bytes the log writes per append call (records with headers and padding): the write shape
    /// the raw loop reproduces.
    pub fn write_bytes(&self) -> u64 {
        self.entries_per_append as u64 * keel::limits::record_bytes(self.entry_bytes as u64)
    }
}

/// Latencies of one run.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    /// fdatasyncs run, where the engine reports them.
    pub syncs: Option<u64>,
}

impl Samples {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` in [0, 1].
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

/// The disk's limit for this write shape: `appends` sequential `pwrite`s of `write_bytes`, each
/// followed by `fdatasync`, into fresh (`fallocate`d) or already written space. Calls `tick`
/// after each write.
pub fn raw_fdatasync_loop(dir: &Path, w: &SyncedAppends, space: RawSpace, mut tick: impl FnMut()) -> Result<Samples> {
    let path = dir.join("raw-fdatasync-loop");
    let io = |source| keel::Error::Io { op: "raw loop", path: path.clone(), source };
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(io)?;
    let size = w.write_bytes() * w.appends as u64 + 4096;
    match space {
        RawSpace::Fresh => {
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).map_err(|e| io(e.into()))?
        }
        RawSpace::Overwrite => {
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < size {
                let n = (size - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at).map_err(io)?;
                at += n as u64;
            }
        }
    }
    file.sync_all().map_err(io)?;
    let buf = vec![0xA5u8; w.write_bytes() as usize];
    let mut samples = Samples { latencies: Vec::with_capacity(w.appends), ..Samples::default() };
    let start = Instant::now();
    let mut offset = 64;
    for _ in 0..w.appends {
        let t = Instant::now();
        file.write_all_at(&buf, offset).map_err(io)?;
        file.sync_data().map_err(io)?;
        samples.latencies.push(t.elapsed());
        offset += buf.len() as u64;
        tick();
    }
    samples.elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path).map_err(io)?;
    Ok(samples)
}

/// Median and (min, max) of `values`.
pub fn median_spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    (mid, v[0], v[v.len() - 1])
}

/// The disk's sequential write limit: `total` bytes in 1 MiB `pwrite`s into a new file, then one
/// `fdatasync`, as a snapshot is written. Returns MiB/s.
pub fn raw_sequential_write(dir: &Path, total: u64) -> Result<f64> {
    let path = dir.join("raw-sequential-write");
    let io = |source| keel::Error::Io { op: "raw sequential write", path: path.clone(), source };
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(io)?;
    let chunk = vec![0xC3u8; 1 << 20];
    let start = Instant::now();
    let mut offset = 0;
    while offset < total {
        let n = chunk.len().min((total - offset) as usize);
        file.write_all_at(&chunk[..n], offset).map_err(io)?;
        offset += n as u64;
    }
    file.sync_data().map_err(io)?;
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).map_err(io)?;
    Ok(total as f64 / (1 << 20) as f64 / secs)
}

/// A reader of `len` generated bytes, for writing large snapshots without holding them.
#[derive(Debug)]
pub struct GeneratedData {
    pub pos: u64,
    pub len: u64,
}

impl std::io::Read for GeneratedData {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Byte `p` is `p % 251`, copied from a table so generating costs less than writing.
        const PERIOD: usize = 251;
        static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let table = TABLE.get_or_init(|| (0..PERIOD + (64 << 10)).map(|i| (i % PERIOD) as u8).collect());
        let n = buf.len().min((self.len - self.pos) as usize).min(64 << 10);
        let from = (self.pos % PERIOD as u64) as usize;
        buf[..n].copy_from_slice(&table[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}
