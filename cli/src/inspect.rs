//! `keel inspect DIR`: what is in a data directory and what opening it would do, changing
//! nothing. The library's `keel::inspect` does the reading; this module prints it. The exit
//! codes of `inspect`, `verify` and `dump` are defined here once.

use keel::inspect::{self, Finding, HeaderState, Inspection, Layout, SegmentState, SlotState};
use keel::storage::ConfState;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code: the directory is clean (or, for `inspect`, it could be read).
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: damage found (or, for `dump`, an entry could not be read or decoded).
pub const EXIT_DAMAGE: u8 = 1;
/// Exit code: a usage error, or the directory could not be read (I/O error).
pub const EXIT_ERROR: u8 = 2;

/// The text `inspect`, `verify` and `dump` print when a live process holds the directory.
pub const LIVE_NOTE: &str = "held open by a live process: the active segment's tail may still be growing; findings at \
                             the tail may be writes in flight";

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A DiskStorage directory (hardstate, snapshots, log/) or a bare log directory (segments).
    pub dir: PathBuf,
}

/// Prints an error that stopped a tool and returns the I/O-error exit code.
pub fn fail(tool: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("keel {tool}: {e}");
    ExitCode::from(EXIT_ERROR)
}

pub fn inspect(args: InspectArgs) -> ExitCode {
    let ins = match inspect::inspect(&args.dir) {
        Ok(i) => i,
        Err(e) => return fail("inspect", e),
    };
    print_inspection(&ins);
    let findings = ins.findings();
    println!();
    print_findings(&findings);
    ExitCode::from(EXIT_CLEAN)
}

fn name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn conf(cs: &ConfState) -> String {
    let mut s = format!("voters {:?}", cs.voters);
    if !cs.learners.is_empty() {
        s += &format!(", learners {:?}", cs.learners);
    }
    if !cs.voters_outgoing.is_empty() {
        s += &format!(", outgoing voters {:?} (joint)", cs.voters_outgoing);
    }
    if !cs.learners_next.is_empty() {
        s += &format!(", learners next {:?}", cs.learners_next);
    }
    if cs.auto_leave {
        s += ", auto leave";
    }
    s
}

/// The header lines every tool prints: what the directory is, and whether it is live.
pub fn print_preamble(ins: &Inspection) {
    let what = match ins.layout {
        Layout::Storage => "a DiskStorage directory (hardstate, snapshots, log/)",
        Layout::Log => "a bare log directory (segments only)",
    };
    println!("{}: {what}", ins.dir.display());
    if ins.live {
        println!("{LIVE_NOTE}");
    }
}

fn print_inspection(ins: &Inspection) {
    print_preamble(ins);
    println!("\nsegments in {}:", ins.log_dir.display());
    if ins.segments.is_empty() {
        println!("  none");
    }
    for s in &ins.segments {
        let size = match &s.header {
            HeaderState::Valid { segment_bytes } => format!("{segment_bytes} bytes"),
            HeaderState::Version(v) => {
                format!("{} bytes, format version {v} (not readable by this build)", s.file_bytes)
            }
            HeaderState::Damaged(why) => format!("{} bytes, header DAMAGED: {why}", s.file_bytes),
        };
        let state = match &s.state {
            SegmentState::Sealed => "sealed".to_string(),
            SegmentState::Unsealed => "unsealed (active)".to_string(),
            SegmentState::FooterDamaged { footer_start, .. } => {
                format!("footer DAMAGED (starts at offset {footer_start}; records scanned)")
            }
            SegmentState::NotRead => "not read".to_string(),
        };
        let range = s.index_range.map_or("no entries".into(), |(lo, hi)| format!("indexes {lo}..={hi}"));
        println!(
            "  {} (id {}): {size}, {state}, {} entry records, {range}, {} markers{}",
            name(&s.path),
            s.id,
            s.entry_records,
            s.markers.len(),
            s.records_end.map_or(String::new(), |e| format!(", records end at {e}"))
        );
        for m in &s.markers {
            println!(
                "    {} marker at offset {}: index {}, term of index-1 {}, oldest segment needed {}",
                if m.reset { "reset" } else { "compaction" },
                m.record_offset,
                m.index,
                m.term,
                m.boundary_segment.map_or("unreadable".into(), |b| b.to_string())
            );
        }
    }
    if ins.layout == Layout::Storage {
        println!("\nhardstate:");
        match &ins.hard_state {
            None => println!("  missing"),
            Some(h) => {
                for (k, slot) in h.slots.iter().enumerate() {
                    let text = match slot {
                        SlotState::Valid { sequence, hard_state: hs, conf_state } => format!(
                            "sequence {sequence}: term {}, vote {}, commit {}; {}",
                            hs.term,
                            hs.vote,
                            hs.commit,
                            conf(conf_state)
                        ),
                        SlotState::Empty => "empty (never written)".into(),
                        SlotState::Damaged(why) => format!("DAMAGED: {why}"),
                    };
                    let current = if h.current == Some(k) { " (current)" } else { "" };
                    println!("  slot {k} at offset {}{current}: {text}", k * 4096);
                }
            }
        }
        println!("\nsnapshots:");
        if ins.snapshots.is_empty() {
            println!("  none");
        }
        for s in &ins.snapshots {
            match &s.header {
                Some(h) => println!(
                    "  {}: index {}, term {}, {} bytes ({} data bytes at offset {}), data crc {:#010x} {}{}; {}",
                    name(&s.path),
                    h.index,
                    h.term,
                    s.file_bytes,
                    h.data_bytes,
                    h.data_offset,
                    h.data_crc,
                    if s.data_verified == Some(true) { "verifies" } else { "DOES NOT VERIFY" },
                    if h.installed { ", installed from a leader" } else { "" },
                    conf(&h.conf_state)
                ),
                None => println!(
                    "  {}: {} bytes, DAMAGED: {}",
                    name(&s.path),
                    s.file_bytes,
                    s.damage.as_ref().map_or("", |d| d.2.as_str())
                ),
            }
        }
        println!("\ntemporary files:");
        if ins.temp_files.is_empty() {
            println!("  none");
        }
        for t in &ins.temp_files {
            println!("  {}", name(t));
        }
    }
    match &ins.plan {
        Some(Ok(p)) => {
            let r = &p.report;
            if r.entries_recovered == 0 {
                println!("\nlog after recovery: no entries, next index {}", r.first_index);
            } else {
                println!(
                    "\nlog after recovery: {} entries, indexes {}..={}",
                    r.entries_recovered, r.first_index, r.last_index
                );
            }
            if let Some((index, term)) = p.newest_reset {
                println!("  reset by a snapshot install to start at {index} (term of {} is {term})", index - 1);
            }
        }
        Some(Err(_)) => println!("\nlog after recovery: open would refuse (below)"),
        None => println!("\nlog after recovery: no log directory"),
    }
    println!("\nopen would (default recovery mode, TolerateTailCorruption; nothing has been done):");
    let actions = ins.actions();
    if actions.is_empty() {
        println!("  repair nothing (every open also fdatasyncs the files it keeps and fsyncs the directories)");
    }
    for a in &actions {
        println!("  - {a}");
    }
    if ins.live && !actions.is_empty() {
        println!("  (the directory is held open by a live process: its own state decides, not this dry run)");
    }
}

/// Prints the findings: one line each, naming file, offset, extent and label, then what open
/// would do about it.
pub fn print_findings(findings: &[Finding]) {
    if findings.is_empty() {
        println!("findings: none");
        return;
    }
    println!("findings: {}", findings.len());
    for f in findings {
        let tag = if f.torn_tail { "TORN TAIL" } else { "DAMAGE" };
        let label = f.label.map_or(String::new(), |l| format!(" [{l}]"));
        let extent = if f.end > f.offset { format!(" (bytes {}..{})", f.offset, f.end) } else { String::new() };
        println!("{tag} {} offset {}{extent}{label}: {}", f.path.display(), f.offset, f.what);
        println!("    -> {}", f.consequence);
    }
}
