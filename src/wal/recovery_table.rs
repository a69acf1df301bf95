//! The recovery decision table: what `open` does with each kind of damage it finds.
//!
//! The same table, with the same labels, is in `segments/FORMAT.md` ("Recovery decision table");
//! a test checks that the two agree. Every truncation in a recovery report and every corruption
//! error from recovery carries the label of the row that decided it.
//!
//! *Position* is decided by evidence, never by guessing: damage is in the **middle** when a valid
//! record exists after it that proves the damaged bytes had been synced (a later record in the
//! same segment whose `synced_offset` lies past the damage, or any valid record in a later
//! segment, because a segment is synced and sealed before the next one receives a record).
//! Otherwise the damage is at the **tail**: bytes of a write that was never acknowledged.

use crate::wal::RecoveryMode;

/// Where damage lies relative to the durable log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Nothing valid after it was ever known durable: an unacknowledged, torn write.
    Tail,
    /// Valid records after it prove it was durable: real corruption.
    Middle,
}

/// Which structure is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damaged {
    /// A record header: bad header checksum, impossible field, or zeros followed by data.
    RecordHeader,
    /// A record payload: the header is valid, the whole-record checksum is not.
    RecordPayload,
    /// A segment header (magic, checksum, id, size).
    SegmentHeader,
    /// A sealed segment's footer.
    Footer,
}

/// What recovery does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Drop the damaged bytes and everything after them (zeroed on disk), and report it.
    Truncate,
    /// Refuse to open, with a typed corruption error.
    Refuse,
}

/// One row of the table. `mode: None` means any mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub label: &'static str,
    pub position: Position,
    pub damaged: Damaged,
    pub mode: Option<RecoveryMode>,
    pub action: Action,
}

use Action::*;
use Damaged::*;
use Position::*;
use RecoveryMode::*;

/// The table, in the order `FORMAT.md` lists it.
pub const RULES: &[Rule] = &[
    Rule {
        label: "TAIL_HEADER_TRUNCATE",
        position: Tail,
        damaged: RecordHeader,
        mode: Some(TolerateTailCorruption),
        action: Truncate,
    },
    Rule {
        label: "TAIL_PAYLOAD_TRUNCATE",
        position: Tail,
        damaged: RecordPayload,
        mode: Some(TolerateTailCorruption),
        action: Truncate,
    },
    Rule {
        label: "TAIL_SEGMENT_HEADER_TRUNCATE",
        position: Tail,
        damaged: SegmentHeader,
        mode: Some(TolerateTailCorruption),
        action: Truncate,
    },
    Rule {
        label: "TAIL_HEADER_REFUSE",
        position: Tail,
        damaged: RecordHeader,
        mode: Some(AbsoluteConsistency),
        action: Refuse,
    },
    Rule {
        label: "TAIL_PAYLOAD_REFUSE",
        position: Tail,
        damaged: RecordPayload,
        mode: Some(AbsoluteConsistency),
        action: Refuse,
    },
    Rule {
        label: "TAIL_SEGMENT_HEADER_REFUSE",
        position: Tail,
        damaged: SegmentHeader,
        mode: Some(AbsoluteConsistency),
        action: Refuse,
    },
    Rule { label: "MIDDLE_HEADER_REFUSE", position: Middle, damaged: RecordHeader, mode: None, action: Refuse },
    Rule { label: "MIDDLE_PAYLOAD_REFUSE", position: Middle, damaged: RecordPayload, mode: None, action: Refuse },
    Rule {
        label: "MIDDLE_SEGMENT_HEADER_REFUSE",
        position: Middle,
        damaged: SegmentHeader,
        mode: None,
        action: Refuse,
    },
    Rule { label: "MIDDLE_FOOTER_REFUSE", position: Middle, damaged: Footer, mode: None, action: Refuse },
];

/// The label of reads that find a damaged record after open (sealed or not): always an error.
pub const READ_RECORD_REFUSE: &str = "READ_RECORD_REFUSE";

/// The row for this damage. A damaged footer with nothing valid after it is not looked up here:
/// the segment is simply read record by record, as if it had never been sealed.
pub fn decide(position: Position, damaged: Damaged, mode: RecoveryMode) -> &'static Rule {
    RULES
        .iter()
        .find(|r| r.position == position && r.damaged == damaged && r.mode.is_none_or(|m| m == mode))
        .unwrap_or_else(|| panic!("recovery table has no row for {position:?} {damaged:?} {mode:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_has_exactly_one_row() {
        for position in [Tail, Middle] {
            for damaged in [RecordHeader, RecordPayload, SegmentHeader, Footer] {
                for mode in [TolerateTailCorruption, AbsoluteConsistency] {
                    let n = RULES
                        .iter()
                        .filter(|r| r.position == position && r.damaged == damaged && r.mode.is_none_or(|m| m == mode))
                        .count();
                    let expected = usize::from(!(position == Tail && damaged == Footer));
                    assert_eq!(n, expected, "{position:?} {damaged:?} {mode:?}");
                }
            }
        }
    }

    #[test]
    fn middle_damage_is_never_truncated() {
        assert!(RULES.iter().filter(|r| r.position == Middle).all(|r| r.action == Refuse));
        assert!(RULES.iter().filter(|r| r.mode == Some(AbsoluteConsistency)).all(|r| r.action == Refuse));
    }
}
