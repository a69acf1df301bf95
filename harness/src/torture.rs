//! The crash torture harness: workloads of storage calls run on `DiskStorage` over the
//! simulated disk ([`crate::sim`]) and on `MemStorage` as the model, with every recovered
//! state checked. Driven by `tests/torture.rs` (seeded) and the `storage_model` fuzz target
//! (choices from the input).
//!
//! Every workload step is one storage call. The simulated disk captures a crash image before
//! every sync and before a random tenth of the writes; each image is turned into power-loss
//! states (unsynced writes kept, dropped or torn per sector; unsynced directory operations
//! lost), and `DiskStorage` must open each in the default recovery mode and hold exactly the
//! state after the last completed call or after the call in progress: every acknowledged entry,
//! HardState and snapshot identical, nothing that was never written, no entry of a truncated
//! suffix. (Two things a power loss may legitimately undo: a commit-only HardState change, which
//! is not synced by design, and a compaction, whose entries must then come back intact.) After
//! recovery the storage must take an append.
//!
//! Each image also stands for a process kill (`CrashImage::restart`: the page cache is kept),
//! after which nothing may be undone, not even those two. Three futures follow a kill: the
//! restarted open alone; the open and then a power loss; and the fourth, the open, a random run
//! of further calls on the restarted storage (each synced and acknowledged, the model continued
//! from the recovered state), then a power loss at the end or at any sync of that run. In the
//! fourth, nothing acknowledged before the kill, nothing the restarted open read (the node builds
//! on it) and nothing acknowledged after may be lost, and a term or vote never goes back.
//!
//! Fault cases inject `EIO` on an fdatasync or a write, a short write, or `ENOSPC`, check that
//! the failing call reports a typed error, that no later write is acknowledged, and that after
//! reopening (with and without a crash) the state is one of those two again and appends work.

use crate::Rng;
use crate::sim::{CrashImage, FaultModel, SimFileSystem, WriteFault};
use keel::Error;
use keel::storage::{
    ConfState, DiskStorage, Entry, EntryType, HardState, MemStorage, SnapshotMetadata, Storage, StorageMut,
    StorageOptions,
};
use keel::wal::LogOptions;
use std::collections::BTreeMap;
use std::sync::Arc;

const DIR: &str = "/keel";
/// Power-loss states made from each captured image.
const STATES_PER_IMAGE: u64 = 3;

fn options(fs: &SimFileSystem) -> StorageOptions {
    let log = LogOptions { segment_bytes: 8192, fs: Arc::new(fs.clone()), ..LogOptions::default() };
    // A small reserve: the simulated disk copies whole files into its crash images.
    StorageOptions { log, reserve_bytes: 16 << 10, ..StorageOptions::default() }
}

/// A storage state as Raft reads it.
#[derive(Debug, Clone, PartialEq)]
struct State {
    hard_state: HardState,
    conf_state: ConfState,
    first: u64,
    last: u64,
    entries: Vec<Entry>,
    snapshot: Option<(SnapshotMetadata, Vec<u8>)>,
}

/// What the model allows after a crash at one state.
#[derive(Debug, Clone)]
struct Expected {
    state: State,
    /// The commit index last written to the HardState file: a crash may fall back to it.
    commit_floor: u64,
    /// Entries compacted away since the log last restarted: an unsynced compaction may bring
    /// them back after a crash, and then they must be exactly these.
    compacted: BTreeMap<u64, Entry>,
    /// The model and the workload's term at this state, to continue the workload from it after
    /// a process kill (the fourth future).
    model: MemStorage,
    term: u64,
}

impl Expected {
    /// What a process kill (page cache kept) allows: exactly this state, unsynced commit and
    /// unsynced compaction included, because the restarted open reads and syncs them.
    fn after_kill(&self) -> Expected {
        Expected { commit_floor: self.state.hard_state.commit, compacted: BTreeMap::new(), ..self.clone() }
    }
}

/// One storage call's outcome on the disk and on the model.
struct Call {
    disk: keel::Result<()>,
    model: keel::Result<()>,
    /// The call writes the HardState file, so a crash can no longer fall below its commit.
    writes_hard_state: bool,
}

fn read_state(s: &impl Storage) -> Result<State, String> {
    let rs = s.initial_state().map_err(|e| format!("initial_state: {e}"))?;
    let first = s.first_index().map_err(|e| format!("first_index: {e}"))?;
    let last = s.last_index().map_err(|e| format!("last_index: {e}"))?;
    let entries = s.entries(first, last + 1, u64::MAX).map_err(|e| format!("entries({first}, {}): {e}", last + 1))?;
    let snapshot = match s.snapshot(0) {
        Ok(snap) if snap.metadata.index > 0 => {
            let data = snap.read_to_vec().map_err(|e| format!("snapshot data: {e}"))?;
            Some((snap.metadata.clone(), data))
        }
        Ok(_) | Err(Error::SnapshotTemporarilyUnavailable) => None,
        Err(e) => return Err(format!("snapshot: {e}")),
    };
    Ok(State { hard_state: rs.hard_state, conf_state: rs.conf_state, first, last, entries, snapshot })
}

fn check_against(got: &State, want: &Expected) -> Result<(), String> {
    let w = &want.state;
    let (gh, wh) = (&got.hard_state, &w.hard_state);
    if (gh.term, gh.vote) != (wh.term, wh.vote) || gh.commit < want.commit_floor || gh.commit > wh.commit {
        return Err(format!("HardState {gh:?}, want {wh:?} with commit at least {}", want.commit_floor));
    }
    if got.conf_state != w.conf_state {
        return Err(format!("ConfState {:?}, want {:?}", got.conf_state, w.conf_state));
    }
    if got.snapshot != w.snapshot {
        let meta = |s: &Option<(SnapshotMetadata, Vec<u8>)>| s.as_ref().map(|(m, d)| (m.index, m.term, d.len()));
        return Err(format!("snapshot {:?}, want {:?}", meta(&got.snapshot), meta(&w.snapshot)));
    }
    if got.last != w.last || got.first > w.first {
        return Err(format!("log {}..={}, want {}..={}", got.first, got.last, w.first, w.last));
    }
    for e in &got.entries {
        let expected =
            if e.index < w.first { want.compacted.get(&e.index) } else { w.entries.get((e.index - w.first) as usize) };
        if Some(e) != expected {
            return Err(format!(
                "entry {} (term {}) differs from the model's {:?}",
                e.index,
                e.term,
                expected.map(|x| x.term)
            ));
        }
    }
    Ok(())
}

/// Checks a recovered storage against the states before and after the call in progress.
fn check_recovered(d: &DiskStorage, allowed: &[&Expected]) -> Result<(), String> {
    let got = read_state(d)?;
    let mut why = Vec::new();
    for want in allowed {
        match check_against(&got, want) {
            Ok(()) => return Ok(()),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; or "))
}

/// The recovered storage takes an append and reads it back.
fn check_appendable(d: &mut DiskStorage) -> Result<(), String> {
    let next = d.last_index().map_err(|e| e.to_string())? + 1;
    let term = d.initial_state().map_err(|e| e.to_string())?.hard_state.term.max(1) + 1000;
    let e = Entry::new(next, term, b"after recovery".to_vec());
    d.append(std::slice::from_ref(&e)).map_err(|e| format!("append after recovery: {e}"))?;
    match d.entries(next, next + 1, u64::MAX) {
        Ok(got) if got == [e] => Ok(()),
        other => Err(format!("reading the append after recovery: {other:?}")),
    }
}

/// A failure injected by [`fault_case`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `EIO` from an fdatasync or directory fsync.
    SyncEio,
    /// `EIO` from a write.
    WriteEio,
    /// A write that lands in part, then fails.
    ShortWrite,
    /// `ENOSPC` once a random byte budget is spent.
    NoSpace,
}

/// Where a workload's choices come from: a seeded generator, or fuzz input bytes (a choice
/// below 256 takes one byte, a larger one two; the workload ends when the bytes do).
#[derive(Debug)]
enum Choices<'a> {
    Rng(Rng),
    Bytes { data: &'a [u8], exhausted: bool },
}

impl Choices<'_> {
    fn below(&mut self, n: u64) -> u64 {
        match self {
            Choices::Rng(r) => r.below(n),
            Choices::Bytes { data, exhausted } => {
                let width = if n <= 256 { 1 } else { 2 };
                if data.len() < width {
                    *exhausted = true;
                    *data = &[];
                    return 0;
                }
                let v = data[..width].iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
                *data = &data[width..];
                if n == 0 { 0 } else { v % n }
            }
        }
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }

    /// Bits that shape no decision (payload contents): never consume input.
    fn filler(&mut self, salt: u64) -> u64 {
        match self {
            Choices::Rng(r) => r.next_u64(),
            Choices::Bytes { .. } => Rng::new(salt).next_u64(),
        }
    }

    fn exhausted(&self) -> bool {
        matches!(self, Choices::Bytes { exhausted: true, .. })
    }
}

/// One workload: the model, the disk, and what each step left.
struct Case<'a> {
    /// Names the case in failure messages (and seeds its crashes).
    seed: u64,
    rng: Choices<'a>,
    fs: SimFileSystem,
    disk: Option<DiskStorage>,
    model: MemStorage,
    term: u64,
    commit_floor: u64,
    compacted: BTreeMap<u64, Entry>,
    /// `expected[k]`: the state after step k (`expected[0]`: empty).
    expected: Vec<Expected>,
    /// The injected fault surfaced as `Error::NoSpace` (nothing written, nothing latched).
    last_error_was_no_space: bool,
}

impl<'a> Case<'a> {
    fn new(seed: u64, rng: Choices<'a>) -> Case<'a> {
        let fs = SimFileSystem::new();
        let (disk, _) = DiskStorage::open(DIR, options(&fs)).unwrap_or_else(|e| panic!("seed {seed}: open: {e}"));
        let mut case = Case {
            seed,
            rng,
            fs,
            disk: Some(disk),
            model: MemStorage::new(),
            term: 1,
            commit_floor: 0,
            compacted: BTreeMap::new(),
            expected: Vec::new(),
            last_error_was_no_space: false,
        };
        case.record();
        case
    }

    fn disk(&mut self) -> &mut DiskStorage {
        self.disk.as_mut().expect("storage is open")
    }

    fn record(&mut self) {
        let state = read_state(&self.model).expect("the model reads");
        self.expected.push(Expected {
            state,
            commit_floor: self.commit_floor,
            compacted: self.compacted.clone(),
            model: self.model.clone(),
            term: self.term,
        });
    }

    /// Runs one random call on disk and model; returns the disk's error if only the disk failed.
    fn step(&mut self) -> Option<Error> {
        let (first, last) = (self.model.first_index().unwrap(), self.model.last_index().unwrap());
        let pick = self.rng.below(20);
        let call = match pick {
            0..=8 => self.append(first, last),
            9..=11 => self.set_hard_state(last),
            12 => self.set_conf_state(),
            13 | 14 => self.create_snapshot(first, last),
            15 => self.apply_snapshot(last),
            16..=18 => self.compact(first, last),
            _ => match self.reopen() {
                Ok(call) => call,
                Err(e) => return Some(e), // only with an injected fault; the case ends here
            },
        };
        let Call { disk: d, model: m, writes_hard_state } = call;
        if std::env::var_os("KEEL_TORTURE_TRACE").is_some() {
            let hs = self.model.initial_state().map(|s| s.hard_state);
            let disk_hs = self.disk.as_ref().map(|d| d.initial_state().map(|s| s.hard_state));
            eprintln!(
                "call {pick}: disk {d:?}, model {m:?}; model now {hs:?}, disk {disk_hs:?}, floor {}",
                self.commit_floor
            );
        }
        let result = match (d, m) {
            (Ok(()), Ok(())) => None,
            (Err(d), Err(m)) if std::mem::discriminant(&d) == std::mem::discriminant(&m) => None,
            (Err(d), Ok(())) => Some(d),
            (d, m) => panic!("seed {}: disk and model disagree: disk {d:?}, model {m:?}", self.seed),
        };
        if result.is_none() && writes_hard_state {
            self.commit_floor = self.model.initial_state().unwrap().hard_state.commit;
        }
        result
    }

    /// 1-12 entries from up to 3 below the last index (a Raft truncation under a new term).
    fn append(&mut self, first: u64, last: u64) -> Call {
        let back = self.rng.below(4);
        if back > 0 {
            self.term += 1;
        }
        let start = (last + 1).saturating_sub(back).max(first);
        let count = 1 + self.rng.below(12);
        let entries: Vec<Entry> = (start..start + count)
            .map(|index| {
                let len = self.rng.below(600) as usize;
                let fill = self.rng.filler(index ^ (self.term << 32));
                let data: Vec<u8> = (0..len).map(|i| (fill >> (i % 8 * 8)) as u8 ^ i as u8).collect();
                let entry_type = if self.rng.chance(10) { EntryType::ConfChangeV2 } else { EntryType::Normal };
                // Some entries carry a context (raft-rs's `Entry::context`), stored beside the data.
                let context: Vec<u8> = if self.rng.chance(20) {
                    (0..1 + index % 9).map(|i| (i ^ index) as u8).collect()
                } else {
                    Vec::new()
                };
                Entry { index, term: self.term, entry_type, data: data.into(), context: context.into() }
            })
            .collect();
        Call { disk: self.disk().append(&entries), model: self.model.append(&entries), writes_hard_state: false }
    }

    /// A commit-only change (not synced by design) or a new term and vote.
    fn set_hard_state(&mut self, last: u64) -> Call {
        let hs = self.model.initial_state().unwrap().hard_state;
        let commit_only = self.rng.chance(50);
        let mut new = hs;
        new.commit = hs.commit + self.rng.below(last.saturating_sub(hs.commit) + 1);
        if !commit_only {
            self.term = self.term.max(hs.term) + 1;
            new.term = self.term;
            new.vote = self.rng.below(5);
        }
        let (disk, model) = (self.disk().set_hard_state(&new), self.model.set_hard_state(&new));
        Call { disk, model, writes_hard_state: !commit_only }
    }

    fn set_conf_state(&mut self) -> Call {
        let voters = 1 + self.rng.below(5);
        let cs = ConfState { voters: (1..=voters).collect(), learners: vec![9], ..ConfState::default() };
        Call { disk: self.disk().set_conf_state(&cs), model: self.model.set_conf_state(&cs), writes_hard_state: true }
    }

    /// A local snapshot at an index above the newest one.
    fn create_snapshot(&mut self, first: u64, last: u64) -> Call {
        let newest_snapshot = self.model.snapshot(0).map(|s| s.metadata.index).unwrap_or(0);
        let lo = first.max(newest_snapshot + 1);
        let index = lo + self.rng.below((last + 1).saturating_sub(lo).max(1));
        let data: Vec<u8> = (0..self.rng.below(3000)).map(|i| (i ^ index) as u8).collect();
        let cs = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
        let disk = self.disk().create_snapshot(index, &cs, &mut &data[..]);
        Call { disk, model: self.model.create_snapshot(index, &cs, &mut &data[..]), writes_hard_state: false }
    }

    /// A leader's snapshot past the last index, under a new term.
    fn apply_snapshot(&mut self, last: u64) -> Call {
        self.term += 1;
        let index = last + 1 + self.rng.below(20);
        let conf_state = ConfState { voters: vec![1, 4], ..ConfState::default() };
        let meta = SnapshotMetadata { index, term: self.term, conf_state };
        let data: Vec<u8> = (0..self.rng.below(3000)).map(|i| ((i * 7) ^ index) as u8).collect();
        let disk = self.disk().apply_snapshot(&meta, &mut &data[..]);
        let model = self.model.apply_snapshot(&meta, &mut &data[..]);
        if model.is_ok() {
            self.compacted.clear();
        }
        Call { disk, model, writes_hard_state: true }
    }

    /// Compaction at any index from the first to one past the last (which must fail).
    fn compact(&mut self, first: u64, last: u64) -> Call {
        let index = first + self.rng.below(last + 2 - first);
        if index > first && index <= last + 1 {
            for e in self.model.entries(first, index, u64::MAX).unwrap() {
                self.compacted.insert(e.index, e);
            }
        }
        Call { disk: self.disk().compact(index), model: self.model.compact(index), writes_hard_state: false }
    }

    /// A clean close and reopen; an error only with an injected fault.
    fn reopen(&mut self) -> Result<Call, Error> {
        self.disk.take().expect("storage is open").close()?;
        let (disk, _) = DiskStorage::open(DIR, options(&self.fs))?;
        self.disk = Some(disk);
        // The close wrote any unsynced commit.
        Ok(Call { disk: Ok(()), model: Ok(()), writes_hard_state: true })
    }

    fn fail(&self, step: u64, what: &str) -> ! {
        match self.rng {
            Choices::Rng(_) => {
                panic!("torture failure: {what}\n  replay with KEEL_TORTURE_SEED={} (step {step})", self.seed)
            }
            Choices::Bytes { .. } => panic!("torture failure on fuzz input: {what} (step {step})"),
        }
    }
}

/// Opens the storage a crash image makes under `crash_seed`, and checks it.
fn check_image(case: &Case, tag: u64, image: &CrashImage, crash_seed: u64, model: &FaultModel) {
    let fs = image.materialize(crash_seed, model).expect("materialize");
    let before = &case.expected[tag.saturating_sub(1) as usize];
    let after = &case.expected[(tag as usize).min(case.expected.len() - 1)];
    let what = |e: String| format!("crash during step {tag} (crash seed {crash_seed}): {e}");
    match DiskStorage::open(DIR, options(&fs)) {
        Ok((mut d, report)) => {
            if let Err(e) = check_recovered(&d, &[before, after]) {
                case.fail(tag, &what(format!("{e}\n  recovery report: {report}")));
            }
            if let Err(e) = check_appendable(&mut d) {
                case.fail(tag, &what(e));
            }
        }
        Err(e) => case.fail(tag, &what(format!("recovery refused: {e}"))),
    }
}

/// The process is killed at the image's moment and restarted (recovery sees the page cache),
/// and then power is lost: both recoveries must show the state before or after the call.
fn check_restart_then_crash(case: &Case, tag: u64, image: &CrashImage, crash_seed: u64, model: &FaultModel) {
    let before = &case.expected[tag.saturating_sub(1) as usize];
    let after = &case.expected[(tag as usize).min(case.expected.len() - 1)];
    let what = |stage: &str, e: String| format!("kill during step {tag}, {stage} (crash seed {crash_seed}): {e}");
    let fs = image.restart().expect("restart");
    match DiskStorage::open(DIR, options(&fs)) {
        Ok((d, report)) => {
            if let Err(e) = check_recovered(&d, &[&before.after_kill(), &after.after_kill()]) {
                case.fail(tag, &what("restarted", format!("{e}\n  recovery report: {report}")));
            }
        }
        Err(e) => case.fail(tag, &what("restarted", format!("recovery refused: {e}"))),
    }
    fs.crash(crash_seed, model).expect("crash");
    match DiskStorage::open(DIR, options(&fs)) {
        Ok((mut d, report)) => {
            if let Err(e) = check_recovered(&d, &[before, after]) {
                case.fail(tag, &what("then power lost", format!("{e}\n  recovery report: {report}")));
            }
            if let Err(e) = check_appendable(&mut d) {
                case.fail(tag, &what("then power lost", e));
            }
        }
        Err(e) => case.fail(tag, &what("then power lost", format!("recovery refused: {e}"))),
    }
}

/// The fourth future: the process is killed at the image's moment and restarted, the restarted
/// storage opens and takes a run of further calls, each synced and acknowledged, and then power
/// is lost, at the end or at any sync during the open or the calls. Nothing acknowledged before
/// the kill may be lost, nor anything the restarted node read at open and built on, nor any
/// call acknowledged after it; a term or vote never goes backwards. Returns the power-loss
/// states checked.
fn check_restart_work_then_crash(
    case: &Case,
    tag: u64,
    image: &CrashImage,
    crash_seed: u64,
    model: &FaultModel,
) -> u64 {
    let before = &case.expected[tag.saturating_sub(1) as usize];
    let after = &case.expected[(tag as usize).min(case.expected.len() - 1)];
    let what = |stage: &str, e: String| format!("kill during step {tag}, {stage} (crash seed {crash_seed}): {e}");
    let fs = image.restart().expect("restart");
    fs.capture_crash_points(true, 10, crash_seed);
    fs.set_tag(0);
    let (disk, report) = match DiskStorage::open(DIR, options(&fs)) {
        Ok(opened) => opened,
        Err(e) => case.fail(tag, &what("restarted", format!("recovery refused: {e}"))),
    };
    let got = read_state(&disk).unwrap_or_else(|e| case.fail(tag, &what("restarted", e)));
    let base =
        [before, after].into_iter().find(|w| check_against(&got, &w.after_kill()).is_ok()).unwrap_or_else(|| {
            case.fail(tag, &what("restarted", format!("matches neither state; recovery report: {report}")))
        });
    // Continue the workload from the recovered state, on the restarted disk.
    let mut work = Case {
        seed: case.seed, // failure messages name the seed that replays the whole run
        rng: Choices::Rng(Rng::new(crash_seed)),
        fs: fs.clone(),
        disk: Some(disk),
        model: base.model.clone(),
        term: base.term,
        commit_floor: got.hard_state.commit, // synced by the open
        compacted: BTreeMap::new(),
        expected: Vec::new(),
        last_error_was_no_space: false,
    };
    work.record();
    let steps = 1 + work.rng.below(8);
    for step in 1..=steps {
        fs.set_tag(step);
        if let Some(e) = work.step() {
            case.fail(tag, &what("working after the restart", format!("step {step} failed: {e}")));
        }
        work.record();
    }
    let mut images = fs.take_captures();
    images.push((steps, fs.image()));
    // Bound the cost: the final image and up to three of the others, chosen by the seed.
    let mut pick = Rng::new(crash_seed ^ 0x4B11);
    let last = images.pop().expect("the final image");
    images.retain(|_| pick.chance(30));
    images.truncate(3);
    images.push(last);
    for (n, (work_tag, image)) in images.iter().enumerate() {
        // During the open (tag 0) nothing new was acknowledged yet: the states allowed at the
        // kill. After it, the restarted state and every call acknowledged since.
        let allowed: Vec<&Expected> = if *work_tag == 0 {
            vec![before, after]
        } else {
            vec![&work.expected[*work_tag as usize - 1], &work.expected[*work_tag as usize]]
        };
        let stage = format!("restarted, {} calls, then power lost during call {work_tag}", steps);
        let lost = image.materialize(crash_seed ^ ((n as u64) << 32), model).expect("materialize");
        match DiskStorage::open(DIR, options(&lost)) {
            Ok((mut d, report)) => {
                if let Err(e) = check_recovered(&d, &allowed) {
                    case.fail(tag, &what(&stage, format!("{e}\n  recovery report: {report}")));
                }
                if let Err(e) = check_appendable(&mut d) {
                    case.fail(tag, &what(&stage, e));
                }
            }
            Err(e) => case.fail(tag, &what(&stage, format!("recovery refused: {e}"))),
        }
    }
    drop(work.disk.take());
    images.len() as u64
}

/// With misdirected writes, synced data may be destroyed, so only this holds: recovery either
/// refuses with `Error::Corruption` or opens, and then every read returns `Error::Corruption` or
/// an entry that was written at that index at some point of the workload: never bytes that were
/// not an entry there. (When the damage hits the last synced write of the active segment,
/// recovery cannot tell it from a write torn by the crash and drops it as a tail: see
/// ARCHITECTURE.md, "Torn tail or corruption". If that write was a Raft truncation, the
/// suffix it replaced is what reads return.)
fn check_image_misdirected(case: &Case, tag: u64, image: &CrashImage, crash_seed: u64, model: &FaultModel) {
    let fs = image.materialize(crash_seed, model).expect("materialize");
    let what = |e: String| format!("misdirected writes, crash during step {tag} (crash seed {crash_seed}): {e}");
    let d = match DiskStorage::open(DIR, options(&fs)) {
        Ok((d, _)) => d,
        Err(Error::Corruption(_)) => return,
        Err(e) => case.fail(tag, &what(format!("recovery failed with {e}, not a corruption report"))),
    };
    let history = &case.expected[..=(tag as usize).min(case.expected.len() - 1)];
    let (first, last) = (d.first_index().unwrap(), d.last_index().unwrap());
    for index in first..=last {
        match d.entries(index, index + 1, u64::MAX) {
            Ok(got) => {
                let written = history.iter().any(|want| {
                    let w = &want.state;
                    let at = if index < w.first {
                        want.compacted.get(&index)
                    } else {
                        w.entries.get((index - w.first) as usize)
                    };
                    at == got.first()
                });
                if !written {
                    case.fail(tag, &what(format!("entry {index} was returned but never written: {:?}", got.first())));
                }
            }
            Err(Error::Corruption(_)) => {}
            Err(e) => case.fail(tag, &what(format!("reading entry {index}: {e}, not a corruption report"))),
        }
    }
}

/// A crash-point case: a seeded workload of 10-49 steps; returns the power-loss states checked.
pub fn crash_case(seed: u64, misdirect: bool) -> u64 {
    let mut case = Case::new(seed, Choices::Rng(Rng::new(seed)));
    let steps = 10 + case.rng.below(40);
    crash_run(case, steps, misdirect, STATES_PER_IMAGE)
}

/// Runs up to `steps` calls capturing crash images before every sync and a tenth of the writes,
/// then checks `per_image` power-loss states of each.
fn crash_run(mut case: Case<'_>, steps: u64, misdirect: bool, per_image: u64) -> u64 {
    case.fs.capture_crash_points(true, 10, case.seed ^ 0xC0FFEE);
    let mut done = 0;
    for step in 1..=steps {
        if case.rng.exhausted() {
            break; // a fuzz input ran out (its last step ran with zeros for the missing choices)
        }
        case.fs.set_tag(step);
        if let Some(e) = case.step() {
            case.fail(step, &format!("a call failed with no fault injected: {e}"));
        }
        case.record();
        done = step;
    }
    drop(case.disk.take());
    let mut images: Vec<(u64, CrashImage)> =
        case.fs.take_captures().into_iter().filter(|(tag, _)| *tag <= done).collect();
    images.push((done, case.fs.image())); // power lost after the last call returned
    let model = FaultModel { misdirect_percent: if misdirect { 20 } else { 0 }, ..FaultModel::default() };
    let mut states = 0;
    for (n, (tag, image)) in images.iter().enumerate() {
        for k in 0..per_image {
            let crash_seed = case.seed.wrapping_mul(1_000_003) ^ (n as u64 * per_image + k);
            // Of every six states: four power losses, one kill then power loss, one kill, more
            // synced work, then power loss (which counts each power-loss state it checks).
            if misdirect {
                check_image_misdirected(&case, *tag, image, crash_seed, &model);
            } else if (n as u64 + k) % 6 == 2 {
                check_restart_then_crash(&case, *tag, image, crash_seed, &model);
            } else if (n as u64 + k) % 6 == 5 {
                states += check_restart_work_then_crash(&case, *tag, image, crash_seed, &model) - 1;
            } else {
                check_image(&case, *tag, image, crash_seed, &model);
            }
            states += 1;
        }
    }
    states
}

/// A fault case: a failure is injected during one step; the rest of the run must refuse writes.
pub fn fault_case(seed: u64, fault: Fault) {
    let mut case = Case::new(seed, Choices::Rng(Rng::new(seed)));
    let steps = 5 + case.rng.below(30);
    fault_run(case, fault, steps);
}

fn fault_run(mut case: Case<'_>, fault: Fault, steps: u64) {
    let seed = case.seed;
    let arm_at = 1 + case.rng.below(steps);
    let mut failed_step = None;
    for step in 1..=steps {
        if step == arm_at {
            let n = 1 + case.rng.below(3);
            match fault {
                Fault::SyncEio => case.fs.fail_nth_sync(n),
                Fault::WriteEio => case.fs.fail_nth_write(n, WriteFault::Eio),
                Fault::ShortWrite => case.fs.fail_nth_write(n, WriteFault::Short),
                Fault::NoSpace => case.fs.set_space_budget(Some(case.rng.below(20_000))),
            }
        }
        if case.rng.exhausted() {
            return; // a fuzz input ran out before its fault was reached
        }
        if let Some(e) = case.step() {
            let typed = match fault {
                // A preparation that ran out of space is `NoSpace` (nothing written, not
                // latched); a write into a file that ran out is an I/O error (latched).
                Fault::NoSpace => match &e {
                    Error::NoSpace { path, .. } => !path.as_os_str().is_empty(),
                    Error::Io { source, path, .. } => {
                        source.kind() == std::io::ErrorKind::StorageFull && !path.as_os_str().is_empty()
                    }
                    _ => false,
                },
                _ => matches!(&e, Error::Io { .. }),
            };
            if !typed {
                case.fail(step, &format!("the injected {fault:?} surfaced as {e:?}, not a typed I/O error"));
            }
            failed_step = Some(step);
            case.last_error_was_no_space = matches!(e, Error::NoSpace { .. });
            case.record();
            break;
        }
        case.record();
    }
    let Some(k) = failed_step else { return }; // the fault was never reached
    // No later write is acknowledged, even once the fault is gone (unless the failure was in
    // opening, which leaves nothing open to write through).
    case.fs.clear_faults();
    if let Some(disk) = case.disk.as_mut() {
        if case.last_error_was_no_space {
            // Nothing was written and nothing latched: the log takes writes again by itself
            // (not tried here, so that the durable state stays one of the two expected).
            if disk.log().is_failed() {
                case.fail(k, "a segment preparation that ran out of space latched the log");
            }
        } else {
            let late = Entry::new(disk.last_index().unwrap() + 1, case.term, b"after failure".to_vec());
            match disk.append(&[late]) {
                Err(Error::Failed { .. }) => {}
                other => case.fail(k, &format!("an append after the failure returned {other:?}, not Error::Failed")),
            }
        }
    }
    drop(case.disk.take());
    let (before, after) = (&case.expected[k as usize - 1], &case.expected[k as usize]);
    // Two futures of the same disk: the process restarts (the page cache shows writes whose
    // fdatasync failed, which may not be on disk: the state may be either), or power is lost.
    // (A restart and then a power loss can expose a state no buffered-I/O engine can prevent:
    // recovery may build on cached bytes that a failed fdatasync never wrote. See
    // ARCHITECTURE.md, "Failure latch".)
    let image = case.fs.image();
    for crash in [false, true] {
        let fs =
            if crash { image.materialize(seed ^ 0xDEAD, &FaultModel::default()).unwrap() } else { case.fs.clone() };
        match DiskStorage::open(DIR, options(&fs)) {
            Ok((mut d, _)) => {
                // Both futures take appends again (for ENOSPC: once space is freed).
                if let Err(e) = check_recovered(&d, &[before, after]).and_then(|()| check_appendable(&mut d)) {
                    case.fail(k, &format!("after {fault:?} (crash: {crash}): {e}"));
                }
            }
            Err(e) => case.fail(k, &format!("reopening after {fault:?} (crash: {crash}) failed: {e}")),
        }
    }
}

/// The fuzz target over the storage model: the first byte picks the mode (plain crash points,
/// misdirected writes, or one of the four injected faults), the rest makes every choice of a
/// workload of up to 64 calls. Crash images are checked one power-loss state each.
pub fn model_case(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let seed = u64::from(crc32fast::hash(data));
    let case = Case::new(seed, Choices::Bytes { data: rest, exhausted: false });
    match mode % 6 {
        0 => drop(crash_run(case, 64, false, 1)),
        1 => drop(crash_run(case, 64, true, 1)),
        2 => fault_run(case, Fault::SyncEio, 64),
        3 => fault_run(case, Fault::WriteEio, 64),
        4 => fault_run(case, Fault::ShortWrite, 64),
        _ => fault_run(case, Fault::NoSpace, 64),
    }
}
