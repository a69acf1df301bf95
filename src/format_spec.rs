//! Checks the code's offsets and decision table against `segments/FORMAT.md`.

use crate::limits;
use crate::storage::{hard_state, snapshot};
use crate::wal::recovery_table::{Action, Damaged, Position, RULES};
use crate::wal::{record, segment};

fn spec() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/segments/FORMAT.md")).expect("read FORMAT.md")
}

/// The rows of the first table after the line starting with `marker`.
fn table_after(spec: &str, marker: &str) -> Vec<Vec<String>> {
    let mut lines = spec.lines().skip_while(|l| !l.starts_with(marker));
    assert!(lines.next().is_some(), "FORMAT.md has no line starting with {marker:?}");
    lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

fn check_layout(marker: &str, layout: &[(&str, usize, usize)], total: u64) {
    let rows = table_after(&spec(), marker);
    let got: Vec<(String, usize, usize)> =
        rows.iter().map(|r| (r[2].clone(), r[0].parse().unwrap(), r[1].parse().unwrap())).collect();
    let want: Vec<(String, usize, usize)> = layout.iter().map(|&(n, o, s)| (n.to_string(), o, s)).collect();
    assert_eq!(got, want, "FORMAT.md table after {marker:?} disagrees with the code");
    let last = layout.last().unwrap();
    assert_eq!((last.1 + last.2) as u64, total, "{marker}: fields do not fill the structure");
}

#[test]
fn offsets_match_the_spec() {
    check_layout("### Segment header", segment::HEADER_LAYOUT, limits::SEGMENT_HEADER_BYTES);
    check_layout("### Record", record::LAYOUT, limits::RECORD_HEADER_BYTES);
    check_layout("Footer entry:", segment::FOOTER_ENTRY_LAYOUT, limits::FOOTER_ENTRY_BYTES);
    check_layout("Footer trailer", segment::FOOTER_TRAILER_LAYOUT, limits::FOOTER_TRAILER_BYTES);
    check_layout("### HardState slot", hard_state::LAYOUT, hard_state::SLOT_BYTES as u64);
    #[cfg(feature = "openraft")]
    check_layout(
        "### openraft state slot",
        crate::openraft::state_file::LAYOUT,
        crate::openraft::state_file::SLOT_BYTES as u64,
    );
    check_layout("### Snapshot header", snapshot::LAYOUT, snapshot::FIXED_HEADER_BYTES as u64);
}

#[test]
fn magics_and_version_match_the_spec() {
    let s = spec();
    assert!(s.contains("| 0 | 8 | magic | `KEELSEG\\0` |"));
    assert_eq!(&segment::SEGMENT_MAGIC, b"KEELSEG\0");
    assert!(s.contains("| 0 | 8 | magic | `KEELSEAL` |"));
    assert_eq!(&segment::FOOTER_MAGIC, b"KEELSEAL");
    assert!(s.contains(&format!("| {} | 0.1.0 | first version |", segment::FORMAT_VERSION)));
    assert!(s.contains("| 0 | 8 | magic | `KEELHRDS` |"));
    assert_eq!(&hard_state::MAGIC, b"KEELHRDS");
    assert!(s.contains("| 0 | 8 | magic | `KEELSNAP` |"));
    assert_eq!(&snapshot::MAGIC, b"KEELSNAP");
}

#[test]
fn decision_table_matches_the_spec() {
    let rows = table_after(&spec(), "### Recovery decision table");
    assert_eq!(rows.len(), RULES.len());
    for (row, rule) in rows.iter().zip(RULES) {
        let position = match rule.position {
            Position::Tail => "tail",
            Position::Middle => "middle",
        };
        let damaged = match rule.damaged {
            Damaged::RecordHeader => "record header",
            Damaged::RecordPayload => "record payload",
            Damaged::SegmentHeader => "segment header",
            Damaged::Footer => "footer",
        };
        let mode = rule.mode.map_or("any".to_string(), |m| format!("{m:?}"));
        let action = match rule.action {
            Action::Truncate => "truncate",
            Action::Refuse => "refuse",
        };
        assert_eq!(row, &[rule.label, position, damaged, &mode, action], "row {}", rule.label);
    }
}
