//! The files of a `DiskStorage` directory besides the log, read without changing them: the
//! HardState file's two slots, the snapshot files, and temporary files open would remove.

use crate::error::{Error, Result};
use crate::io::FileSystem;
use crate::storage::hard_state::{self, FILE_BYTES, SLOT_BYTES};
use crate::storage::snapshot::{self, SnapshotFile};
use crate::storage::{ConfState, HardState};
use std::path::{Path, PathBuf};

/// One slot of the HardState file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// A valid slot.
    Valid {
        /// Higher is newer.
        sequence: u64,
        /// The HardState it holds.
        hard_state: HardState,
        /// The ConfState it holds.
        conf_state: ConfState,
    },
    /// All zeros: never written (slot 1 of a new file).
    Empty,
    /// Damaged: the evidence.
    Damaged(String),
}

/// The HardState file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardStateInfo {
    /// The file.
    pub path: PathBuf,
    /// Its size now (8192 when whole).
    pub file_bytes: u64,
    /// Slots 0 and 1, at offsets 0 and 4096.
    pub slots: [SlotState; 2],
    /// The slot open would use: the valid one with the higher sequence.
    pub current: Option<usize>,
}

impl HardStateInfo {
    /// The slot open would use, with its content.
    pub fn current_slot(&self) -> Option<(usize, u64, &HardState, &ConfState)> {
        let k = self.current?;
        match &self.slots[k] {
            SlotState::Valid { sequence, hard_state, conf_state } => Some((k, *sequence, hard_state, conf_state)),
            _ => None,
        }
    }
}

/// Reads both slots of `<dir>/hardstate`; `None` if there is no such file.
pub(crate) fn read_hard_state(fs: &dyn FileSystem, dir: &Path) -> Result<Option<HardStateInfo>> {
    let path = dir.join(hard_state::FILE_NAME);
    let file = match fs.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let file_bytes = file.len().map_err(|e| Error::io("stat", &path, e))?;
    let mut bytes = vec![0u8; FILE_BYTES];
    let readable = file_bytes.min(FILE_BYTES as u64) as usize;
    file.read_at(&mut bytes[..readable], 0).map_err(|e| Error::io("read", &path, e))?;
    let slot = |k: usize| -> SlotState {
        let b = &bytes[k * SLOT_BYTES..(k + 1) * SLOT_BYTES];
        if b.iter().all(|&x| x == 0) {
            return SlotState::Empty;
        }
        match hard_state::decode_slot(b, &path) {
            Ok(Ok(s)) => SlotState::Valid { sequence: s.sequence, hard_state: s.hard_state, conf_state: s.conf_state },
            Ok(Err(kind)) => SlotState::Damaged(kind.to_string()),
            Err(e) => SlotState::Damaged(e.to_string()),
        }
    };
    let slots = [slot(0), slot(1)];
    let seq = |s: &SlotState| match s {
        SlotState::Valid { sequence, .. } => Some(*sequence),
        _ => None,
    };
    let current = match (seq(&slots[0]), seq(&slots[1])) {
        (Some(a), Some(b)) => Some(if b > a { 1 } else { 0 }),
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(1),
        (None, None) => None,
    };
    Ok(Some(HardStateInfo { path, file_bytes, slots, current }))
}

/// One snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The file.
    pub path: PathBuf,
    /// Its size now.
    pub file_bytes: u64,
    /// Index and term its name gives.
    pub name_index: u64,
    /// See `name_index`.
    pub name_term: u64,
    /// What its header says, if it checks out.
    pub header: Option<SnapshotHeader>,
    /// Whether the data checksum verifies (`None` if the header did not check out).
    pub data_verified: Option<bool>,
    /// The damage found: (offset, end, evidence), the extent of the damaged structure.
    pub damage: Option<(u64, u64, String)>,
}

/// A snapshot file's checked header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The last index the snapshot covers.
    pub index: u64,
    /// The term of `index`.
    pub term: u64,
    /// Its ConfState.
    pub conf_state: ConfState,
    /// Received from a leader (`apply_snapshot`) rather than created locally.
    pub installed: bool,
    /// Where the data starts.
    pub data_offset: u64,
    /// Bytes of data.
    pub data_bytes: u64,
    /// The stored CRC-32 of the data.
    pub data_crc: u32,
}

/// Reads and checks every snapshot file in `dir` (named in `names`), oldest first, its data
/// checksum included.
pub(crate) fn read_snapshots(fs: &dyn FileSystem, dir: &Path, names: &[String]) -> Result<Vec<SnapshotInfo>> {
    let mut found: Vec<(crate::storage::SnapshotId, &String)> =
        names.iter().filter_map(|n| snapshot::parse_file_name(n).map(|id| (id, n))).collect();
    found.sort();
    let mut out = Vec::new();
    for (id, name) in found {
        let path = dir.join(name);
        let file_bytes = std::fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?.len();
        let mut info = SnapshotInfo {
            path: path.clone(),
            file_bytes,
            name_index: id.index,
            name_term: id.term,
            header: None,
            data_verified: None,
            damage: None,
        };
        match SnapshotFile::open(fs, &path) {
            Ok(sf) => {
                let data_end = sf.data_offset + sf.data_len;
                info.header = Some(SnapshotHeader {
                    index: sf.metadata.index,
                    term: sf.metadata.term,
                    conf_state: sf.metadata.conf_state.clone(),
                    installed: sf.installed,
                    data_offset: sf.data_offset,
                    data_bytes: sf.data_len,
                    data_crc: sf.data_crc,
                });
                match sf.verify() {
                    Ok(()) => info.data_verified = Some(true),
                    Err(Error::Corruption(c)) => {
                        info.data_verified = Some(false);
                        // The data and the checksum after it: the damaged byte is somewhere in there.
                        info.damage = Some((sf.data_offset, data_end + 4, c.kind.to_string()));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Error::Corruption(c)) => {
                let end = header_end(fs, &path).unwrap_or(file_bytes).max(c.offset + 1);
                info.damage = Some((c.offset, end, c.kind.to_string()));
            }
            Err(e @ Error::IncompatibleVersion { .. }) => info.damage = Some((0, 0, e.to_string())),
            Err(e) => return Err(e),
        }
        out.push(info);
    }
    Ok(out)
}

/// Where a snapshot's header ends, as its (unchecked) header_len field says, if plausible.
fn header_end(fs: &dyn FileSystem, path: &Path) -> Option<u64> {
    let f = fs.open(path).ok()?;
    let mut b = [0u8; 4];
    f.read_at(&mut b, snapshot::OFF_HEADER_LEN as u64).ok()?;
    let len = u64::from(u32::from_le_bytes(b));
    (len >= snapshot::FIXED_HEADER_BYTES as u64 && len <= f.len().ok()?).then_some(len)
}

/// Whether `name` is a temporary file that `DiskStorage::open` removes.
pub(crate) fn is_temp_file_name(name: &str) -> bool {
    snapshot::is_temp_file_name(name) || name.strip_suffix(".tmp") == Some(hard_state::FILE_NAME)
}
