//! `keel verify DIR`: every checksum of every file (segment headers, every record's header and
//! payload, footers, both HardState slots, every snapshot), reported by file, offset and label.

use crate::inspect::{EXIT_CLEAN, EXIT_DAMAGE, fail, print_findings, print_preamble};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// A DiskStorage directory (hardstate, snapshots, log/) or a bare log directory (segments).
    pub dir: PathBuf,
}

pub fn verify(args: VerifyArgs) -> ExitCode {
    let ins = match keel::inspect::inspect_every_record(&args.dir) {
        Ok(i) => i,
        Err(e) => return fail("verify", e),
    };
    print_preamble(&ins);
    let records: u64 = ins.segments.iter().map(|s| s.entry_records + s.markers.len() as u64).sum();
    println!(
        "checked {} segments ({records} records), {} HardState slots, {} snapshots",
        ins.segments.len(),
        if ins.hard_state.is_some() { 2 } else { 0 },
        ins.snapshots.len()
    );
    let findings = ins.findings();
    print_findings(&findings);
    if findings.is_empty() { ExitCode::from(EXIT_CLEAN) } else { ExitCode::from(EXIT_DAMAGE) }
}
