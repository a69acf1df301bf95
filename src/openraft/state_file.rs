//! The openraft state file: what openraft asks its log store to keep beside the entries (the
//! vote, the committed log id) and what keel's log cannot say by itself in openraft's terms (the
//! last purged log id, with its node id; the truncation fence). Two fixed slots written
//! alternately, as the HardState file (`storage/hard_state.rs`) does, so a torn write loses at
//! most the newest update and never produces a mix. Layout in `segments/FORMAT.md` ("openraft
//! state file").
//!
//! Invariants:
//! - a write goes to the slot that does not hold the durable state, with sequence number + 1,
//!   so the durable state is never overwritten before its successor is synced;
//! - a committed-only change is written without fdatasync (as the HardState file's commit is):
//!   a process kill keeps it, a power loss may lose it, and it is never above the truth;
//! - the current state is the valid slot with the higher sequence number;
//! - the file is synced whole at open, and created whole (temporary name, fdatasync, rename,
//!   directory fsync).

use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::io::{DataFile, FileSystem};
use byteorder::{ByteOrder, LittleEndian as LE};
use std::path::{Path, PathBuf};

pub(crate) const FILE_NAME: &str = "openraft-state";
pub(crate) const SLOT_BYTES: usize = 4096;
pub(crate) const FILE_BYTES: usize = 2 * SLOT_BYTES;
pub(crate) const MAGIC: [u8; 8] = *b"KEELORST";
pub(crate) const VERSION: u32 = 1;

pub(crate) const OFF_MAGIC: usize = 0;
pub(crate) const OFF_VERSION: usize = OFF_MAGIC + 8;
pub(crate) const OFF_CRC: usize = OFF_VERSION + 4;
pub(crate) const OFF_SEQUENCE: usize = OFF_CRC + 4;
pub(crate) const OFF_FLAGS: usize = OFF_SEQUENCE + 8;
pub(crate) const OFF_RESERVED: usize = OFF_FLAGS + 4;
pub(crate) const OFF_VOTE_TERM: usize = OFF_RESERVED + 4;
pub(crate) const OFF_VOTE_NODE: usize = OFF_VOTE_TERM + 8;
pub(crate) const OFF_COMMITTED: usize = OFF_VOTE_NODE + 8;
pub(crate) const OFF_PURGED: usize = OFF_COMMITTED + LOG_ID_BYTES;
pub(crate) const OFF_FENCE: usize = OFF_PURGED + LOG_ID_BYTES;
pub(crate) const OFF_ZERO: usize = OFF_FENCE + 8;
/// A log id on disk: term, node id, index (each u64).
const LOG_ID_BYTES: usize = 24;
const _: () = assert!(OFF_ZERO == 104 && OFF_ZERO < SLOT_BYTES);

const FLAG_VOTE: u32 = 1;
const FLAG_VOTE_COMMITTED: u32 = 1 << 1;
const FLAG_COMMITTED: u32 = 1 << 2;
const FLAG_PURGED: u32 = 1 << 3;
const FLAG_FENCE: u32 = 1 << 4;
const FLAGS_KNOWN: u32 = (1 << 5) - 1;

#[cfg(test)]
pub(crate) const LAYOUT: &[(&str, usize, usize)] = &[
    ("magic", OFF_MAGIC, 8),
    ("version", OFF_VERSION, 4),
    ("slot_crc", OFF_CRC, 4),
    ("sequence", OFF_SEQUENCE, 8),
    ("flags", OFF_FLAGS, 4),
    ("reserved", OFF_RESERVED, 4),
    ("vote_term", OFF_VOTE_TERM, 8),
    ("vote_node_id", OFF_VOTE_NODE, 8),
    ("committed_term", OFF_COMMITTED, 8),
    ("committed_node_id", OFF_COMMITTED + 8, 8),
    ("committed_index", OFF_COMMITTED + 16, 8),
    ("purged_term", OFF_PURGED, 8),
    ("purged_node_id", OFF_PURGED + 8, 8),
    ("purged_index", OFF_PURGED + 16, 8),
    ("fence_index", OFF_FENCE, 8),
    ("zero", OFF_ZERO, SLOT_BYTES - OFF_ZERO),
];

/// A log id as the file keeps it: openraft's `LogId` with a `u64` node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawLogId {
    pub term: u64,
    pub node_id: u64,
    /// The openraft index (from 0).
    pub index: u64,
}

/// openraft's `Vote` with a `u64` node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawVote {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

/// What a slot holds besides its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct State {
    pub vote: Option<RawVote>,
    pub committed: Option<RawLogId>,
    pub purged: Option<RawLogId>,
    /// The openraft index of the first entry a `truncate` removed, until an append that
    /// replaced the entries from there is durable: log entries at or past it are not the
    /// store's (see `mod.rs`, "Truncation").
    pub fence: Option<u64>,
}

/// The content of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Slot {
    pub sequence: u64,
    pub state: State,
}

fn crc(slot: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&slot[..OFF_CRC]);
    h.update(&slot[OFF_SEQUENCE..SLOT_BYTES]);
    h.finalize()
}

fn put_log_id(b: &mut [u8], id: RawLogId) {
    LE::write_u64(&mut b[0..], id.term);
    LE::write_u64(&mut b[8..], id.node_id);
    LE::write_u64(&mut b[16..], id.index);
}

fn get_log_id(b: &[u8]) -> RawLogId {
    RawLogId { term: LE::read_u64(&b[0..]), node_id: LE::read_u64(&b[8..]), index: LE::read_u64(&b[16..]) }
}

pub(crate) fn encode_slot(slot: &Slot) -> Vec<u8> {
    let s = &slot.state;
    let mut b = vec![0u8; SLOT_BYTES];
    b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
    LE::write_u32(&mut b[OFF_VERSION..], VERSION);
    LE::write_u64(&mut b[OFF_SEQUENCE..], slot.sequence);
    let mut flags = 0;
    if let Some(v) = s.vote {
        flags |= FLAG_VOTE;
        if v.committed {
            flags |= FLAG_VOTE_COMMITTED;
        }
        LE::write_u64(&mut b[OFF_VOTE_TERM..], v.term);
        LE::write_u64(&mut b[OFF_VOTE_NODE..], v.node_id);
    }
    if let Some(c) = s.committed {
        flags |= FLAG_COMMITTED;
        put_log_id(&mut b[OFF_COMMITTED..], c);
    }
    if let Some(p) = s.purged {
        flags |= FLAG_PURGED;
        put_log_id(&mut b[OFF_PURGED..], p);
    }
    if let Some(f) = s.fence {
        flags |= FLAG_FENCE;
        LE::write_u64(&mut b[OFF_FENCE..], f);
    }
    LE::write_u32(&mut b[OFF_FLAGS..], flags);
    let c = crc(&b);
    LE::write_u32(&mut b[OFF_CRC..], c);
    b
}

/// A slot's content, or why it is not valid. A valid slot of another format version is an
/// error of its own ([`Error::IncompatibleVersion`]), not damage.
pub(crate) fn decode_slot(b: &[u8], path: &Path) -> Result<std::result::Result<Slot, CorruptionKind>> {
    use CorruptionKind::{Checksum, Malformed};
    if b[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
        return Ok(Err(Malformed("openraft state slot magic is wrong".into())));
    }
    let stored = LE::read_u32(&b[OFF_CRC..]);
    let actual = crc(b);
    if stored != actual {
        return Ok(Err(Checksum { what: "openraft state slot", expected: stored, actual }));
    }
    let version = LE::read_u32(&b[OFF_VERSION..]);
    if version != VERSION {
        return Err(Error::IncompatibleVersion { path: path.to_path_buf(), found: version, supported: VERSION });
    }
    let flags = LE::read_u32(&b[OFF_FLAGS..]);
    if flags & !FLAGS_KNOWN != 0
        || LE::read_u32(&b[OFF_RESERVED..]) != 0
        || b[OFF_ZERO..SLOT_BYTES].iter().any(|&x| x != 0)
        || (flags & FLAG_VOTE_COMMITTED != 0 && flags & FLAG_VOTE == 0)
    {
        return Ok(Err(Malformed(format!("openraft state slot flags {flags:#x} or reserved bytes are invalid"))));
    }
    let has = |f: u32| flags & f != 0;
    // Indexes are openraft's (keel's minus one): beyond keel's range they would overflow the
    // mapping (a panic at open), so a slot holding one is malformed, as is a sequence that
    // cannot be followed.
    let index_ok = |at: usize| LE::read_u64(&b[at..]) < crate::limits::INDEX_MAX;
    if (has(FLAG_COMMITTED) && !index_ok(OFF_COMMITTED + 16))
        || (has(FLAG_PURGED) && !index_ok(OFF_PURGED + 16))
        || (has(FLAG_FENCE) && !index_ok(OFF_FENCE))
        || LE::read_u64(&b[OFF_SEQUENCE..]) == u64::MAX
    {
        return Ok(Err(Malformed("openraft state slot holds an index or sequence out of range".into())));
    }
    let state = State {
        vote: has(FLAG_VOTE).then(|| RawVote {
            term: LE::read_u64(&b[OFF_VOTE_TERM..]),
            node_id: LE::read_u64(&b[OFF_VOTE_NODE..]),
            committed: has(FLAG_VOTE_COMMITTED),
        }),
        committed: has(FLAG_COMMITTED).then(|| get_log_id(&b[OFF_COMMITTED..])),
        purged: has(FLAG_PURGED).then(|| get_log_id(&b[OFF_PURGED..])),
        fence: has(FLAG_FENCE).then(|| LE::read_u64(&b[OFF_FENCE..])),
    };
    Ok(Ok(Slot { sequence: LE::read_u64(&b[OFF_SEQUENCE..]), state }))
}

/// The open state file.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    file: Box<dyn DataFile>,
    current: Slot,
    /// Which slot (0 or 1) holds `current`.
    current_slot: usize,
    /// Which slot holds the newest synced state: `current_slot` unless `current` is unsynced.
    durable_slot: usize,
}

impl StateFile {
    /// Opens the file in `dir`, creating it durably (empty state) if it does not exist.
    pub(crate) fn open_or_create(fs: &dyn FileSystem, dir: &Path) -> Result<StateFile> {
        let path = dir.join(FILE_NAME);
        let names = fs.list(dir).map_err(Error::at("list", dir))?;
        if !names.iter().any(|n| n.to_str() == Some(FILE_NAME)) {
            Self::create(fs, dir)?;
        }
        Self::open(fs, &path)
    }

    fn create(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let _ = fs.remove(&tmp);
        let file = fs.create(&tmp).map_err(Error::at("create", &tmp))?;
        let mut bytes = encode_slot(&Slot { sequence: 1, state: State::default() });
        bytes.resize(FILE_BYTES, 0);
        file.write_at(&bytes, 0).map_err(Error::at("write", &tmp))?;
        file.sync_data().map_err(Error::at("fdatasync", &tmp))?;
        drop(file);
        fs.rename(&tmp, &path).map_err(Error::at("rename", &path))?;
        fs.sync_dir(dir).map_err(Error::at("fsync directory", dir))
    }

    fn open(fs: &dyn FileSystem, path: &Path) -> Result<StateFile> {
        let file = fs.open(path).map_err(Error::at("open", path))?;
        let len = file.len().map_err(Error::at("stat", path))?;
        let mut bytes = vec![0u8; FILE_BYTES];
        // The size is metadata, trusted only as a bound: a short file leaves zeros (no magic).
        let readable = (len.min(FILE_BYTES as u64)) as usize;
        file.read_at(&mut bytes[..readable], 0).map_err(Error::at("read", path))?;
        let mut best: Option<(usize, Slot)> = None;
        let mut damage = Vec::new();
        for k in 0..2 {
            match decode_slot(&bytes[k * SLOT_BYTES..(k + 1) * SLOT_BYTES], path)? {
                Ok(slot) if best.as_ref().is_none_or(|(_, b)| slot.sequence > b.sequence) => best = Some((k, slot)),
                Ok(_) => {}
                Err(kind) => damage.push((k, kind)),
            }
        }
        match best {
            Some((current_slot, current)) => {
                // What was read may exist only in the page cache (a killed process's last,
                // unsynced write): make it durable before anything is built on it.
                file.sync_data().map_err(Error::at("fdatasync", path))?;
                Ok(StateFile { path: path.to_path_buf(), file, current, current_slot, durable_slot: current_slot })
            }
            None => {
                let (k, kind) = damage.into_iter().next().expect("two slots, none valid");
                let mut c = Corruption::new(path, (k * SLOT_BYTES) as u64, kind);
                c.rule = Some("OPENRAFT_STATE_BOTH_SLOTS_INVALID");
                Err(c.into_error())
            }
        }
    }

    pub(crate) fn state(&self) -> State {
        self.current.state
    }

    /// Writes `state` to the slot not holding the durable state and, if `sync`, fdatasyncs it
    /// (the current state changes only once that succeeded). Without `sync` the durable slot is
    /// untouched: a power loss returns to it. On error the caller must latch: the slot may be
    /// torn and the kernel may have dropped the pages.
    pub(crate) fn write(&mut self, state: State, sync: bool) -> Result<()> {
        let next = Slot { sequence: self.current.sequence + 1, state };
        let target = 1 - self.durable_slot;
        let bytes = encode_slot(&next);
        self.file.write_at(&bytes, (target * SLOT_BYTES) as u64).map_err(Error::at("write", &self.path))?;
        if sync {
            self.file.sync_data().map_err(Error::at("fdatasync", &self.path))?;
            self.durable_slot = target;
        }
        (self.current, self.current_slot) = (next, target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Slot {
        Slot {
            sequence: 7,
            state: State {
                vote: Some(RawVote { term: 5, node_id: 2, committed: true }),
                committed: Some(RawLogId { term: 4, node_id: 1, index: 30 }),
                purged: Some(RawLogId { term: 3, node_id: 1, index: 9 }),
                fence: Some(31),
            },
        }
    }

    #[test]
    fn slot_round_trip() {
        for slot in [sample(), Slot { sequence: 1, state: State::default() }] {
            let b = encode_slot(&slot);
            assert_eq!(decode_slot(&b, Path::new("x")).unwrap().unwrap(), slot);
        }
    }

    #[test]
    fn every_flipped_bit_invalidates_the_slot() {
        let b = encode_slot(&sample());
        for bit in (0..SLOT_BYTES * 8).step_by(7) {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(!matches!(decode_slot(&c, Path::new("x")), Ok(Ok(_))), "bit {bit}");
        }
    }

    #[test]
    fn layout_is_contiguous_and_fills_the_slot() {
        let mut at = 0;
        for &(name, offset, len) in LAYOUT {
            assert_eq!(offset, at, "{name}");
            at += len;
        }
        assert_eq!(at, SLOT_BYTES);
    }
}
