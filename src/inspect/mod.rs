//! Read-only inspection of a data directory: what is there, whether every checksum holds, and
//! what [`Log::open`](crate::wal::Log::open) and [`DiskStorage::open`](crate::storage::DiskStorage::open)
//! would do with it, without changing a byte. `keel inspect`, `keel verify` and `keel dump` are
//! built on it.
//!
//! Calling order:
//! 1. [`inspect`] (or [`inspect_every_record`], which also reads back every record of every
//!    sealed segment) reads the directory and returns an [`Inspection`];
//! 2. [`Inspection::findings`] lists the damage, each with file, offset and the recovery label;
//!    [`Inspection::actions`] lists what open would do;
//! 3. [`EntryReader`] reads the entries the recovery plan locates, for a dump.
//!
//! Invariants (ARCHITECTURE.md, "Read-only inspection"):
//! - every file is opened read-only through [`ReadOnlyFileSystem`] and read with `pread`; nothing
//!   is created, written, truncated, renamed, removed, synced or mapped, and no lock is taken;
//! - what open would do comes from the same code open runs ([`plan_recovery`]), so the labels
//!   are the ones open would report;
//! - bytes on disk are untrusted: damage is a finding, never a panic; only a failure to read is
//!   an error.

mod entry;
mod live;
mod segments;
mod storage;

pub use entry::{EntryReader, StorageEntry, decode_storage_entry};
pub use live::lock_held;
pub use segments::{HeaderState, MarkerInfo, RecordFinding, ScanFinding, SegmentInfo, SegmentState};
pub use storage::{HardStateInfo, SlotState, SnapshotHeader, SnapshotInfo};

use crate::error::{Error, Result};
use crate::io::{FileSystem, ReadOnlyFileSystem};
use crate::limits::SEGMENT_HEADER_BYTES;
use crate::storage::hard_state::SLOT_BYTES;
use crate::wal::recovery_table::{READ_RECORD_REFUSE, RULES};
use crate::wal::{RecoveryMode, RecoveryPlan, plan_recovery};
use std::path::{Path, PathBuf};

/// What kind of directory was inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A `DiskStorage` directory: `hardstate`, snapshots, `log/`.
    Storage,
    /// A bare `Log` directory: segment files only.
    Log,
}

/// What was found in a directory, and what open would do with it. See the module docs.
#[derive(Debug)]
pub struct Inspection {
    /// The directory inspected.
    pub dir: PathBuf,
    /// Storage or bare log.
    pub layout: Layout,
    /// The directory holding the segments (`<dir>/log` for a storage).
    pub log_dir: PathBuf,
    /// A live process holds the directory's lock: the active segment may be growing, and what
    /// is found at its tail may be a write in flight.
    pub live: bool,
    /// The segment files, by id.
    pub segments: Vec<SegmentInfo>,
    /// What `Log::open` would do (default recovery mode); `None` if there is no log directory.
    pub plan: Option<std::result::Result<RecoveryPlan, Error>>,
    /// The HardState file (storage only; `None` if missing).
    pub hard_state: Option<HardStateInfo>,
    /// Snapshot files, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Temporary files of interrupted writes, which open removes.
    pub temp_files: Vec<PathBuf>,
    storage_findings: Vec<Finding>,
    storage_actions: Vec<String>,
}

/// One piece of damage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The damaged file.
    pub path: PathBuf,
    /// Where the damaged structure starts (a record, a header, a footer, a slot...).
    pub offset: u64,
    /// One past its end: the damaged byte lies in `offset..end`.
    pub end: u64,
    /// The evidence.
    pub what: String,
    /// The recovery label that decides it (decision table, `STORAGE_*`, ...), if any.
    pub label: Option<&'static str>,
    /// What open would do about it.
    pub consequence: String,
    /// A torn tail open would truncate under the default mode: bytes of a write never
    /// acknowledged, not a loss of acknowledged entries.
    pub torn_tail: bool,
}

/// Inspects `dir` (a `DiskStorage` or a bare `Log` directory) without changing it. Reads every
/// header, footer, unsealed segment and snapshot; not the records of sealed segments (see
/// [`inspect_every_record`]).
pub fn inspect(dir: impl AsRef<Path>) -> Result<Inspection> {
    run(dir.as_ref(), false)
}

/// [`inspect`], and every record of every sealed segment read back and checksum-verified.
pub fn inspect_every_record(dir: impl AsRef<Path>) -> Result<Inspection> {
    run(dir.as_ref(), true)
}

/// Attempts at a consistent reading of a live directory (see [`run`]).
const LIVE_ATTEMPTS: usize = 5;

/// Whether `e` says a file is gone: on a live directory, one its process removed (compaction,
/// snapshot pruning) between the listing and the read.
fn not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Reads the directory; on a live directory, reads it again (a few times) when a file listed
/// was removed by its process before it could be read, rather than reporting that race as an
/// I/O error or as damage.
fn run(dir: &Path, every_record: bool) -> Result<Inspection> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= LIVE_ATTEMPTS;
        match run_once(dir, every_record) {
            Ok(ins) if !last && ins.live && matches!(&ins.plan, Some(Err(e)) if not_found(e)) => continue,
            Err(e) if !last && not_found(&e) && lock_held(&dir.join("LOCK")).unwrap_or(false) => continue,
            r => return r,
        }
    }
}

fn run_once(dir: &Path, every_record: bool) -> Result<Inspection> {
    let fs = ReadOnlyFileSystem;
    let meta = std::fs::metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!("{} is not a directory", dir.display())));
    }
    let names = list_names(&fs, dir)?;
    let is_storage = names.iter().any(|n| {
        n == "hardstate"
            || n == "log"
            || crate::storage::snapshot::parse_file_name(n).is_some()
            || storage::is_temp_file_name(n)
    });
    let has_segments = names.iter().any(|n| crate::wal::segment::parse_file_name(n).is_some());
    let layout = match (is_storage, has_segments) {
        (true, _) => Layout::Storage,
        (false, true) => Layout::Log,
        (false, false) => {
            return Err(Error::InvalidArgument(format!(
                "{} holds neither a keel storage (hardstate, log/, snapshots) nor log segments",
                dir.display()
            )));
        }
    };
    let log_dir = if layout == Layout::Storage { dir.join("log") } else { dir.to_path_buf() };
    let live = lock_held(&dir.join("LOCK")).map_err(|e| Error::io("check lock", dir.join("LOCK"), e))?
        || (layout == Layout::Storage
            && lock_held(&log_dir.join("LOCK")).map_err(|e| Error::io("check lock", log_dir.join("LOCK"), e))?);
    let log_names = match fs.list(&log_dir) {
        Ok(_) if layout == Layout::Log => Some(names.clone()),
        Ok(_) => Some(list_names(&fs, &log_dir)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("list", &log_dir, e)),
    };
    // The HardState is read before the log: a live process raises the commit index only after
    // the entries it covers are durable, so a log read afterwards holds every committed entry.
    // Read the other way round, a commit raised in between looks like committed entries lost.
    let hard_state = if layout == Layout::Storage { storage::read_hard_state(&fs, dir)? } else { None };
    let mut ids: Vec<u64> =
        log_names.iter().flatten().filter_map(|n| crate::wal::segment::parse_file_name(n)).collect();
    ids.sort_unstable();
    let mut segments = Vec::new();
    for id in ids {
        match segments::read_segment(&fs, &log_dir, id, every_record) {
            Ok(s) => segments.push(s),
            // Removed by a live process's compaction since the listing: no longer there.
            Err(Error::Io { source, .. }) if live && source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let plan = log_names.is_some().then(|| plan_recovery(&log_dir, RecoveryMode::TolerateTailCorruption));
    let mut ins = Inspection {
        dir: dir.to_path_buf(),
        layout,
        log_dir,
        live,
        segments,
        plan,
        hard_state: None,
        snapshots: Vec::new(),
        temp_files: Vec::new(),
        storage_findings: Vec::new(),
        storage_actions: Vec::new(),
    };
    if layout == Layout::Storage {
        ins.hard_state = hard_state;
        // Listed again, after the log was read: a live process's snapshot install writes its
        // snapshot file before it resets the log, so a reset seen in the log has its file here.
        ins.snapshots = storage::read_snapshots(&fs, dir, &list_names(&fs, dir)?)?;
        ins.temp_files = names.iter().filter(|n| storage::is_temp_file_name(n)).map(|n| dir.join(n)).collect();
        ins.decide_storage();
    }
    Ok(ins)
}

fn list_names(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
    let names = fs.list(dir).map_err(|e| Error::io("list", dir, e))?;
    Ok(names.into_iter().filter_map(|n| n.into_string().ok()).collect())
}

/// The table row that refuses what `truncate_label` truncates, under `AbsoluteConsistency`.
fn strict_label(truncate_label: &str) -> Option<&'static str> {
    let r = RULES.iter().find(|r| r.label == truncate_label)?;
    RULES
        .iter()
        .find(|s| {
            s.position == r.position && s.damaged == r.damaged && s.mode == Some(RecoveryMode::AbsoluteConsistency)
        })
        .map(|s| s.label)
}

/// A decision-table label named in a text (a removal's reason carries it in brackets).
fn label_in(text: &str) -> Option<&'static str> {
    RULES.iter().map(|r| r.label).find(|l| text.contains(&format!("[{l}]")))
}

impl Inspection {
    /// The log's recovery plan, if there is a log and open would not refuse it.
    pub fn plan_ok(&self) -> Option<&RecoveryPlan> {
        self.plan.as_ref().and_then(|p| p.as_ref().ok())
    }

    /// The corruption error the log's recovery would refuse with, if any.
    fn log_refusal(&self) -> Option<&crate::Corruption> {
        self.plan.as_ref().and_then(|p| p.as_ref().err()).and_then(|e| e.corruption())
    }

    /// Whether `path` is a segment open would remove as below the compaction boundary.
    fn below_boundary(&self, path: &Path) -> bool {
        self.plan_ok().is_some_and(|p| {
            p.report.removed_segments.iter().any(|r| r.path == path && r.reason == "below the compaction boundary")
        })
    }

    /// How open decides damage at `offset` of segment `path`: label, consequence, torn tail.
    fn decided(&self, path: &Path, offset: u64) -> (Option<&'static str>, String, bool) {
        if let Some(c) = self.log_refusal().filter(|c| c.path == path && c.offset == offset) {
            return (c.rule, "open refuses: entries that may have been acknowledged are damaged".into(), false);
        }
        if let Some(t) = self.plan_ok().and_then(|p| p.report.truncations.iter().find(|t| t.path == path)) {
            let strict = strict_label(t.rule)
                .map_or(String::new(), |s| format!("; under AbsoluteConsistency open refuses [{s}]"));
            let consequence = format!(
                "a torn tail: bytes of a write that was never acknowledged (no acknowledged entry is lost); open \
                 (default mode) zeroes bytes {}..{} [{}]{strict}",
                t.offset,
                t.offset + t.bytes_dropped,
                t.rule
            );
            return (Some(t.rule), consequence, true);
        }
        if let Some(r) = self.plan_ok().and_then(|p| p.report.removed_segments.iter().find(|r| r.path == path)) {
            let label = label_in(&r.reason);
            return (
                label,
                format!("open removes the file: {}", r.reason),
                label.is_some_and(|l| l.contains("_TRUNCATE")),
            );
        }
        if self.log_refusal().is_some() {
            return (None, "not reached by open, which refuses at the damage above".into(), false);
        }
        (None, "open does not read it".into(), false)
    }

    /// Every piece of damage found, log first, then HardState, snapshots and the storage's own
    /// cross-checks.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut push =
            |path: &Path, offset: u64, end: u64, what: String, decided: (Option<&'static str>, String, bool)| {
                out.push(Finding {
                    path: path.to_path_buf(),
                    offset,
                    end,
                    what,
                    label: decided.0,
                    consequence: decided.1,
                    torn_tail: decided.2,
                });
            };
        for s in self.segments.iter().filter(|s| !self.below_boundary(&s.path)) {
            let size = match s.header {
                HeaderState::Valid { segment_bytes } => segment_bytes,
                _ => s.file_bytes,
            };
            match &s.header {
                HeaderState::Damaged(why) => {
                    push(&s.path, 0, SEGMENT_HEADER_BYTES, format!("segment header: {why}"), self.decided(&s.path, 0))
                }
                HeaderState::Version(v) => push(
                    &s.path,
                    0,
                    SEGMENT_HEADER_BYTES,
                    format!("segment format version {v} is not supported (this build reads version 1)"),
                    (None, "open refuses: incompatible version (not damage)".into(), false),
                ),
                HeaderState::Valid { .. } => {}
            }
            if let SegmentState::FooterDamaged { offset, footer_start, reason } = &s.state {
                // Reported where the footer starts (the check fails at the trailer for a bad
                // checksum); the label is looked up where open's check failed.
                let what = format!("footer: {reason} (found at offset {offset})");
                push(&s.path, *footer_start, size, what, self.decided(&s.path, *offset));
            }
            if let Some(d) = &s.scan_damage {
                let mut decided = self.decided(&s.path, d.offset);
                if self.live && decided.2 && Some(s.id) == self.segments.last().map(|l| l.id) {
                    decided.1.push_str("; the directory is held open by a live process: this may be a write in flight");
                }
                push(&s.path, d.offset, d.garbage_end, format!("{}: {}", d.damaged, d.reason), decided);
            }
            for r in &s.record_damage {
                let consequence = format!(
                    "open does not read sealed records, so it succeeds; reading entry {} fails [{READ_RECORD_REFUSE}]",
                    r.index
                );
                push(
                    &s.path,
                    r.offset,
                    r.end,
                    format!("record (index {}): {}", r.index, r.reason),
                    (Some(READ_RECORD_REFUSE), consequence, false),
                );
            }
        }
        // A refusal not tied to one segment's damage (a missing segment, a gap in the entries).
        let footer_at = |f: &Finding| {
            self.segments.iter().any(|s| {
                s.path == f.path && matches!(s.state, SegmentState::FooterDamaged { offset, .. } if Some(offset) == self.log_refusal().map(|c| c.offset))
            })
        };
        if let Some(c) = self.log_refusal()
            && !out.iter().any(|f| f.path == c.path && (f.offset == c.offset || footer_at(f)))
        {
            out.push(Finding {
                path: c.path.clone(),
                offset: c.offset,
                end: c.offset,
                what: c.kind.to_string(),
                label: c.rule,
                consequence: "open refuses".into(),
                torn_tail: false,
            });
        }
        if let Some(Err(e)) = &self.plan
            && e.corruption().is_none()
        {
            out.push(Finding {
                path: self.log_dir.clone(),
                offset: 0,
                end: 0,
                what: e.to_string(),
                label: None,
                consequence: "open fails".into(),
                torn_tail: false,
            });
        }
        if let Some(h) = &self.hard_state {
            let both = h.current.is_none();
            if h.file_bytes != (2 * SLOT_BYTES) as u64 {
                out.push(Finding {
                    path: h.path.clone(),
                    offset: h.file_bytes.min((2 * SLOT_BYTES) as u64),
                    end: (2 * SLOT_BYTES) as u64,
                    what: format!("HardState file holds {} bytes, not {}", h.file_bytes, 2 * SLOT_BYTES),
                    label: None,
                    consequence: "open reads the missing bytes as zeros".into(),
                    torn_tail: false,
                });
            }
            for (k, slot) in h.slots.iter().enumerate() {
                let SlotState::Damaged(why) = slot else { continue };
                let (label, consequence) = if both {
                    (Some("HARDSTATE_BOTH_SLOTS_INVALID"), "open refuses: neither slot holds a valid state".to_string())
                } else {
                    let (c, seq, _, _) = h.current_slot().expect("the other slot is valid");
                    (
                        None,
                        format!(
                            "open uses slot {c} (sequence {seq}); if this slot held a newer state, that update is lost (a \
                         torn write of an update never synced, or damage)"
                        ),
                    )
                };
                let offset = (k * SLOT_BYTES) as u64;
                out.push(Finding {
                    path: h.path.clone(),
                    offset,
                    end: offset + SLOT_BYTES as u64,
                    what: format!("HardState slot {k}: {why}"),
                    label,
                    consequence,
                    torn_tail: false,
                });
            }
        }
        let newest_good = self.snapshots.iter().rposition(|s| s.damage.is_none());
        for (i, s) in self.snapshots.iter().enumerate() {
            let Some((offset, end, why)) = &s.damage else { continue };
            let consequence = if newest_good.is_none_or(|g| i > g) {
                "open renames it *.corrupt and falls back to the previous snapshot (if the log still holds what follows it)".to_string()
            } else {
                "an older snapshot: open does not read its data; it would be used only if the newer ones fail"
                    .to_string()
            };
            out.push(Finding {
                path: s.path.clone(),
                offset: *offset,
                end: *end,
                what: format!("snapshot: {why}"),
                label: None,
                consequence,
                torn_tail: false,
            });
        }
        out.extend(self.storage_findings.iter().cloned());
        out
    }

    /// What open would do, in order, without doing it (besides the syncs every open makes).
    pub fn actions(&self) -> Vec<String> {
        let mut out = self.storage_actions.clone();
        match &self.plan {
            Some(Ok(p)) => {
                for t in &p.report.truncations {
                    out.push(format!(
                        "zero {} bytes of {} from offset {} (a torn tail) [{}]: {}",
                        t.bytes_dropped,
                        t.path.display(),
                        t.offset,
                        t.rule,
                        t.reason
                    ));
                }
                for r in &p.report.removed_segments {
                    out.push(format!("remove {}: {}", r.path.display(), r.reason));
                }
                if let Some(n) = &p.new_active_segment {
                    out.push(format!("create {} as the new active segment", n.display()));
                }
            }
            Some(Err(e)) => out.push(format!("refuse to open the log: {e}")),
            None => {}
        }
        out
    }

    /// Decides, as `DiskStorage::open` would, the storage-level rules (`STORAGE_*`,
    /// `COMMIT_ABOVE_LOG`, snapshot fallback and install roll-forward).
    fn decide_storage(&mut self) {
        let mut findings = Vec::new();
        let mut actions: Vec<String> =
            self.temp_files.iter().map(|p| format!("remove leftover temporary file {}", p.display())).collect();
        let finding = |path: PathBuf, label: &'static str, what: String| Finding {
            path,
            offset: 0,
            end: 0,
            what,
            label: Some(label),
            consequence: "open refuses".into(),
            torn_tail: false,
        };
        let has_segments = !self.segments.is_empty();
        let snapshot_files = self.snapshots.len();
        match &self.hard_state {
            None if has_segments || snapshot_files > 0 => findings.push(finding(
                self.dir.join("hardstate"),
                "STORAGE_HARDSTATE_MISSING",
                format!("the HardState file is missing beside {} segments and {snapshot_files} snapshot files: the term, vote and membership were lost", self.segments.len()),
            )),
            None => actions.push("create the HardState file (a first open)".into()),
            Some(h) => {
                let sequence = h.current_slot().map_or(0, |c| c.1);
                if !has_segments && (sequence > 1 || snapshot_files > 0) {
                    findings.push(finding(
                        self.log_dir.clone(),
                        "STORAGE_LOG_MISSING",
                        format!("the log holds no segment, but the HardState file has been written (sequence {sequence}) and there are {snapshot_files} snapshot files: the log was lost"),
                    ));
                }
            }
        }
        // Snapshots newest first down to the first that checks out; the damaged ones are set aside.
        let newest_good = self.snapshots.iter().rposition(|s| s.damage.is_none());
        let set_aside: Vec<&SnapshotInfo> = self
            .snapshots
            .iter()
            .enumerate()
            .filter(|(i, _)| newest_good.is_none_or(|g| *i > g))
            .map(|(_, s)| s)
            .collect();
        for s in &set_aside {
            actions.push(format!("rename the damaged snapshot {} to *.corrupt", s.path.display()));
        }
        let usable = newest_good.map(|g| &self.snapshots[g]);
        let covered = usable.and_then(|s| s.header.as_ref()).map_or(0, |h| h.index);
        if let Some(p) = self.plan_ok() {
            if !set_aside.is_empty() && p.report.first_index > covered + 1 {
                findings.push(Finding {
                    path: set_aside[0].path.clone(),
                    offset: 0,
                    end: 0,
                    what: format!("the newest snapshot is damaged and the log starts at {}, after the newest usable snapshot ({covered})", p.report.first_index),
                    label: None,
                    consequence: "open refuses: the state cannot be rebuilt locally".into(),
                    torn_tail: false,
                });
            }
            if let Some((index, _)) = p.newest_reset
                && covered.saturating_add(1) < index
            {
                findings.push(finding(
                    self.dir.clone(),
                    "STORAGE_SNAPSHOT_MISSING",
                    format!("the log was reset to start at {index} by a snapshot install, but no snapshot covers index {} (the newest covers {covered})", index - 1),
                ));
            }
            let install =
                usable.and_then(|s| s.header.as_ref()).filter(|h| h.installed && p.report.first_index <= h.index);
            if let Some(h) = install {
                actions.push(format!(
                    "complete an interrupted snapshot install at index {} (HardState, then the log's reset marker)",
                    h.index
                ));
            }
            let commit = self.hard_state.as_ref().and_then(|h| h.current_slot()).map_or(0, |c| c.2.commit);
            let held = p.report.last_index.max(covered);
            if commit > held && install.is_none() {
                let mut f = finding(
                    self.log_dir.clone(),
                    "COMMIT_ABOVE_LOG",
                    format!(
                        "the HardState's commit index is {commit} but the log and snapshots end at index {held}: committed entries {}..={commit} are missing",
                        held + 1
                    ),
                );
                f.consequence = "open refuses, in every recovery mode".into();
                findings.push(f);
            }
        }
        let usable_count = newest_good.map_or(0, |g| g + 1);
        for s in self.snapshots.iter().take(usable_count.saturating_sub(2)) {
            actions.push(format!("remove the older snapshot {} (2 are kept by default)", s.path.display()));
        }
        self.storage_findings = findings;
        self.storage_actions = actions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{Log, LogOptions};

    fn golden_copy(name: &str) -> tempfile::TempDir {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("segments/golden").join(name);
        let to = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
        }
        to
    }

    fn bytes(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.file_name().unwrap().to_owned(), std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_dry_run_predicts_open_exactly_and_changes_nothing() {
        // On each golden log, the plan's report is the report open then returns, and the plan
        // itself leaves every byte as it was (open then repairs, proving there was work to plan).
        for name in ["v1-clean", "v1-torn-tail", "v1-torn-write", "v1-reset"] {
            let d = golden_copy(name);
            let before = bytes(d.path());
            let plan = plan_recovery(d.path(), RecoveryMode::TolerateTailCorruption).unwrap();
            assert_eq!(bytes(d.path()), before, "{name}: the dry run changed a file");
            let (log, report) =
                Log::open(d.path(), LogOptions { segment_bytes: 4096, ..LogOptions::default() }).unwrap();
            assert_eq!(plan.report, report, "{name}");
            assert_eq!(plan.entries.len() as u64, report.entries_recovered);
            assert_eq!(plan.entries.last().map(|e| e.index), Some(log.last_index()).filter(|&l| l > 0));
        }
        let d = golden_copy("v1-middle-corruption");
        let refused = plan_recovery(d.path(), RecoveryMode::TolerateTailCorruption).unwrap_err();
        let opened = Log::open(d.path(), LogOptions { segment_bytes: 4096, ..LogOptions::default() }).unwrap_err();
        assert_eq!(refused.corruption(), opened.corruption());
    }

    #[test]
    fn inspection_of_a_torn_tail_labels_it_and_finds_nothing_else() {
        let d = golden_copy("v1-torn-tail");
        let ins = inspect_every_record(d.path()).unwrap();
        assert_eq!(ins.layout, Layout::Log);
        assert!(!ins.live);
        let f = ins.findings();
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].torn_tail);
        assert_eq!(f[0].label, Some("TAIL_PAYLOAD_TRUNCATE"));
        assert!(ins.actions().iter().any(|a| a.contains("[TAIL_PAYLOAD_TRUNCATE]")));
    }
}
