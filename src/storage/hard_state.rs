//! The HardState file: two fixed slots, written alternately, so a torn write loses at most the
//! newest update and never produces a mix. Layout in `segments/FORMAT.md` ("HardState file").
//!
//! Invariants:
//! - a write goes to the slot that does not hold the durable state, with sequence number + 1,
//!   so the durable state is never overwritten before its successor is synced;
//! - a commit-only change is written without fdatasync (etcd's rule): a process kill keeps it
//!   (the page cache survives), a power loss may lose it; later ones overwrite it in the same
//!   slot, and the next synced write does too;
//! - the current state is the valid slot with the higher sequence number;
//! - the file is synced whole at open, so what a killed process left in the page cache is
//!   durable before anything is built on it;
//! - the file is created whole (temporary name, fdatasync, rename, directory fsync).

use super::types::{ConfState, HardState};
use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::io::{DataFile, FileSystem};
use byteorder::{ByteOrder, LittleEndian as LE};
use std::path::{Path, PathBuf};

pub(crate) const FILE_NAME: &str = "hardstate";
pub(crate) const SLOT_BYTES: usize = 4096;
pub(crate) const FILE_BYTES: usize = 2 * SLOT_BYTES;
pub(crate) const MAGIC: [u8; 8] = *b"KEELHRDS";
pub(crate) const VERSION: u32 = 1;

pub(crate) const OFF_MAGIC: usize = 0;
pub(crate) const OFF_VERSION: usize = OFF_MAGIC + 8;
pub(crate) const OFF_CRC: usize = OFF_VERSION + 4;
pub(crate) const OFF_SEQUENCE: usize = OFF_CRC + 4;
pub(crate) const OFF_TERM: usize = OFF_SEQUENCE + 8;
pub(crate) const OFF_VOTE: usize = OFF_TERM + 8;
pub(crate) const OFF_COMMIT: usize = OFF_VOTE + 8;
pub(crate) const OFF_AUTO_LEAVE: usize = OFF_COMMIT + 8;
pub(crate) const OFF_RESERVED_A: usize = OFF_AUTO_LEAVE + 1;
pub(crate) const OFF_VOTERS: usize = OFF_RESERVED_A + 3;
pub(crate) const OFF_LEARNERS: usize = OFF_VOTERS + 4;
pub(crate) const OFF_VOTERS_OUTGOING: usize = OFF_LEARNERS + 4;
pub(crate) const OFF_LEARNERS_NEXT: usize = OFF_VOTERS_OUTGOING + 4;
pub(crate) const OFF_RESERVED_B: usize = OFF_LEARNERS_NEXT + 4;
pub(crate) const OFF_IDS: usize = OFF_RESERVED_B + 4;
/// Node ids a slot holds, all four ConfState lists together.
pub const CONF_IDS_MAX: usize = (SLOT_BYTES - OFF_IDS) / 8;

// A slot's ConfState, from auto_leave to the ids, is the layout snapshot headers share
// (`encode_conf_state`); its fields as offsets from its start.
const CONF_RESERVED_A: usize = OFF_RESERVED_A - OFF_AUTO_LEAVE;
const CONF_COUNTS: usize = OFF_VOTERS - OFF_AUTO_LEAVE;
const CONF_RESERVED_B: usize = OFF_RESERVED_B - OFF_AUTO_LEAVE;
/// Bytes of an encoded ConfState before its node ids.
pub(crate) const CONF_STATE_FIXED_BYTES: usize = OFF_IDS - OFF_AUTO_LEAVE;
// Format v1 is frozen (it is in slots and snapshot headers alike).
const _: () = assert!(CONF_STATE_FIXED_BYTES == 24 && CONF_COUNTS == 4 && CONF_RESERVED_B == 20);

#[cfg(test)]
pub(crate) const LAYOUT: &[(&str, usize, usize)] = &[
    ("magic", OFF_MAGIC, 8),
    ("version", OFF_VERSION, 4),
    ("slot_crc", OFF_CRC, 4),
    ("sequence", OFF_SEQUENCE, 8),
    ("term", OFF_TERM, 8),
    ("vote", OFF_VOTE, 8),
    ("commit", OFF_COMMIT, 8),
    ("auto_leave", OFF_AUTO_LEAVE, 1),
    ("reserved", OFF_RESERVED_A, 3),
    ("voters_count", OFF_VOTERS, 4),
    ("learners_count", OFF_LEARNERS, 4),
    ("voters_outgoing_count", OFF_VOTERS_OUTGOING, 4),
    ("learners_next_count", OFF_LEARNERS_NEXT, 4),
    ("reserved", OFF_RESERVED_B, 4),
    ("ids", OFF_IDS, SLOT_BYTES - OFF_IDS),
];

/// The content of a slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    pub sequence: u64,
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

fn crc(slot: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&slot[..OFF_CRC]);
    h.update(&slot[OFF_SEQUENCE..SLOT_BYTES]);
    h.finalize()
}

/// Writes a ConfState in the disk layout that HardState slots and snapshot headers share
/// (`segments/FORMAT.md`); `out` starts at its auto_leave field.
pub(crate) fn encode_conf_state(out: &mut [u8], cs: &ConfState) {
    out[0] = u8::from(cs.auto_leave);
    let lists = [&cs.voters, &cs.learners, &cs.voters_outgoing, &cs.learners_next];
    for (k, list) in lists.iter().enumerate() {
        LE::write_u32(&mut out[CONF_COUNTS + 4 * k..], list.len() as u32);
    }
    let mut at = CONF_STATE_FIXED_BYTES;
    for id in lists.iter().flat_map(|l| l.iter()) {
        LE::write_u64(&mut out[at..], *id);
        at += 8;
    }
}

/// Decodes a ConfState laid out as in `encode_conf_state`; `Err` names what is impossible.
pub(crate) fn decode_conf_state(bytes: &[u8]) -> std::result::Result<ConfState, String> {
    if bytes.len() < CONF_STATE_FIXED_BYTES {
        return Err("conf state is cut short".into());
    }
    if bytes[0] > 1
        || bytes[CONF_RESERVED_A..CONF_COUNTS].iter().any(|&b| b != 0)
        || bytes[CONF_RESERVED_B..CONF_STATE_FIXED_BYTES].iter().any(|&b| b != 0)
    {
        return Err("conf state flags or reserved bytes are invalid".into());
    }
    let counts: Vec<usize> = (0..4).map(|k| LE::read_u32(&bytes[CONF_COUNTS + 4 * k..]) as usize).collect();
    let total: usize = counts.iter().sum();
    if total > (bytes.len() - CONF_STATE_FIXED_BYTES) / 8 {
        return Err(format!("conf state lists {total} node ids, more than fit"));
    }
    let mut at = CONF_STATE_FIXED_BYTES;
    let mut take = |n: usize| {
        let v: Vec<u64> = (0..n).map(|i| LE::read_u64(&bytes[at + 8 * i..])).collect();
        at += 8 * n;
        v
    };
    Ok(ConfState {
        auto_leave: bytes[0] == 1,
        voters: take(counts[0]),
        learners: take(counts[1]),
        voters_outgoing: take(counts[2]),
        learners_next: take(counts[3]),
    })
}

pub(crate) fn encode_slot(slot: &Slot) -> Vec<u8> {
    assert!(slot.conf_state.id_count() <= CONF_IDS_MAX, "conf state checked before encoding");
    let mut b = vec![0u8; SLOT_BYTES];
    b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
    LE::write_u32(&mut b[OFF_VERSION..], VERSION);
    LE::write_u64(&mut b[OFF_SEQUENCE..], slot.sequence);
    LE::write_u64(&mut b[OFF_TERM..], slot.hard_state.term);
    LE::write_u64(&mut b[OFF_VOTE..], slot.hard_state.vote);
    LE::write_u64(&mut b[OFF_COMMIT..], slot.hard_state.commit);
    encode_conf_state(&mut b[OFF_AUTO_LEAVE..], &slot.conf_state);
    let c = crc(&b);
    LE::write_u32(&mut b[OFF_CRC..], c);
    b
}

/// A slot's content, or why it is not valid.
pub(crate) fn decode_slot(b: &[u8], path: &Path) -> Result<std::result::Result<Slot, CorruptionKind>> {
    use CorruptionKind::{Checksum, Malformed};
    if b[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
        return Ok(Err(Malformed("HardState slot magic is wrong".into())));
    }
    let stored = LE::read_u32(&b[OFF_CRC..]);
    let actual = crc(b);
    if stored != actual {
        return Ok(Err(Checksum { what: "HardState slot", expected: stored, actual }));
    }
    let version = LE::read_u32(&b[OFF_VERSION..]);
    if version != VERSION {
        return Err(Error::IncompatibleVersion { path: path.to_path_buf(), found: version, supported: VERSION });
    }
    let conf_state = match decode_conf_state(&b[OFF_AUTO_LEAVE..SLOT_BYTES]) {
        Ok(cs) => cs,
        Err(m) => return Ok(Err(Malformed(m))),
    };
    Ok(Ok(Slot {
        sequence: LE::read_u64(&b[OFF_SEQUENCE..]),
        hard_state: HardState {
            term: LE::read_u64(&b[OFF_TERM..]),
            vote: LE::read_u64(&b[OFF_VOTE..]),
            commit: LE::read_u64(&b[OFF_COMMIT..]),
        },
        conf_state,
    }))
}

/// The open HardState file.
#[derive(Debug)]
pub(crate) struct HardStateFile {
    pub path: PathBuf,
    file: Box<dyn DataFile>,
    current: Slot,
    /// Which slot (0 or 1) holds `current`.
    current_slot: usize,
    /// Which slot holds the newest synced state: `current_slot` unless `current` is unsynced.
    durable_slot: usize,
}

impl HardStateFile {
    /// Creates the file with an initial (default) state, durably.
    pub(crate) fn create(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let _ = fs.remove(&tmp);
        let file = fs.create(&tmp).map_err(Error::at("create", &tmp))?;
        let mut bytes = encode_slot(&Slot { sequence: 1, ..Slot::default() });
        bytes.resize(FILE_BYTES, 0);
        file.write_at(&bytes, 0).map_err(Error::at("write", &tmp))?;
        file.sync_data().map_err(Error::at("fdatasync", &tmp))?;
        drop(file);
        fs.rename(&tmp, &path).map_err(Error::at("rename", &path))?;
        fs.sync_dir(dir).map_err(Error::at("fsync directory", dir))
    }

    /// Opens the file and picks the newest valid slot.
    pub(crate) fn open(fs: &dyn FileSystem, dir: &Path) -> Result<HardStateFile> {
        let path = dir.join(FILE_NAME);
        let file = fs.open(&path).map_err(|e| Error::io("open", &path, e))?;
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        let mut bytes = vec![0u8; FILE_BYTES];
        let readable = (len as usize).min(FILE_BYTES);
        file.read_at(&mut bytes[..readable], 0).map_err(|e| Error::io("read", &path, e))?;
        let mut best: Option<(usize, Slot)> = None;
        let mut damage = Vec::new();
        for k in 0..2 {
            match decode_slot(&bytes[k * SLOT_BYTES..(k + 1) * SLOT_BYTES], &path)? {
                Ok(slot) if best.as_ref().is_none_or(|(_, b)| slot.sequence > b.sequence) => best = Some((k, slot)),
                Ok(_) => {}
                Err(kind) => damage.push((k, kind)),
            }
        }
        match best {
            Some((current_slot, current)) => {
                // What recovery read may exist only in the page cache (a killed process's last,
                // unsynced write): make it durable before a vote or a term is built on it.
                file.sync_data().map_err(|e| Error::io("fdatasync", &path, e))?;
                Ok(HardStateFile { path, file, current, current_slot, durable_slot: current_slot })
            }
            None => {
                let (k, kind) = damage.into_iter().next().expect("two slots, none valid");
                let mut c = Corruption::new(&path, (k * SLOT_BYTES) as u64, kind);
                c.rule = Some("HARDSTATE_BOTH_SLOTS_INVALID");
                Err(c.into_error())
            }
        }
    }

    pub(crate) fn current(&self) -> &Slot {
        &self.current
    }

    /// Writes `hard_state` and `conf_state` to the slot not holding the durable state and
    /// fdatasyncs it; the current state changes only once that succeeded. On error the caller
    /// must latch: the slot may be torn and the kernel may have dropped the pages.
    pub(crate) fn write(&mut self, hard_state: HardState, conf_state: ConfState) -> Result<()> {
        let (next, target) = self.write_slot(hard_state, conf_state)?;
        self.file.sync_data().map_err(|e| Error::io("fdatasync", &self.path, e))?;
        (self.current, self.current_slot, self.durable_slot) = (next, target, target);
        Ok(())
    }

    /// Writes like [`HardStateFile::write`] without the fdatasync: for a change Raft can
    /// relearn (the commit index). The durable slot is untouched.
    pub(crate) fn write_unsynced(&mut self, hard_state: HardState, conf_state: ConfState) -> Result<()> {
        let (next, target) = self.write_slot(hard_state, conf_state)?;
        (self.current, self.current_slot) = (next, target);
        Ok(())
    }

    /// Writes the successor of the current state to the slot not holding the durable state.
    fn write_slot(&self, hard_state: HardState, conf_state: ConfState) -> Result<(Slot, usize)> {
        let next = Slot { sequence: self.current.sequence + 1, hard_state, conf_state };
        let target = 1 - self.durable_slot;
        let bytes = encode_slot(&next);
        self.file.write_at(&bytes, (target * SLOT_BYTES) as u64).map_err(|e| Error::io("write", &self.path, e))?;
        Ok((next, target))
    }

    /// Whether the current state was written without an fdatasync since.
    pub(crate) fn unsynced(&self) -> bool {
        self.current_slot != self.durable_slot
    }

    /// Makes the current state durable (nothing to do if it is).
    pub(crate) fn sync(&mut self) -> Result<()> {
        if self.unsynced() {
            self.file.sync_data().map_err(|e| Error::io("fdatasync", &self.path, e))?;
            self.durable_slot = self.current_slot;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Slot {
        Slot {
            sequence: 9,
            hard_state: HardState { term: 5, vote: 2, commit: 40 },
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                learners: vec![4],
                voters_outgoing: vec![1, 2],
                learners_next: vec![],
                auto_leave: true,
            },
        }
    }

    #[test]
    fn slot_round_trip() {
        let b = encode_slot(&sample());
        assert_eq!(decode_slot(&b, Path::new("x")).unwrap().unwrap(), sample());
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
}
