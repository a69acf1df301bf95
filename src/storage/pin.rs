//! Snapshot pins: a snapshot handed out by `Storage::snapshot` keeps the log entries after it
//! until every clone of the handle is dropped.
//!
//! A leader sends a follower its newest snapshot and then the entries after it. If compaction
//! removed those entries while the snapshot was on its way, the follower, once caught up to the
//! snapshot, would need another snapshot, and again after that: a stall. So each handle carries
//! a [`Pin`] on its storage's [`Pins`], and `compact(index)` lowers `index` to one past the
//! lowest pinned snapshot index. (The snapshot's own data needs no pin: a snapshot file stays
//! readable through the handle's open file after it is removed, and memory stays while shared.)
//!
//! Invariants: the count of a pinned index is the number of live `Pin`s for it (no zero
//! counts are stored); `compact_limit` never raises an index.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The snapshot indexes pinned in one storage, with how many handles pin each.
#[derive(Clone, Default)]
pub(crate) struct Pins(Arc<Mutex<BTreeMap<u64, usize>>>);

impl Pins {
    /// Pins the entries after `index` until the returned pin (shared by every clone of the
    /// snapshot handle it goes into) is dropped.
    pub(crate) fn pin(&self, index: u64) -> Arc<Pin> {
        *self.0.lock().entry(index).or_insert(0) += 1;
        Arc::new(Pin { pins: self.clone(), index })
    }

    /// The index `compact(index)` may go up to: `index`, lowered to one past the lowest pinned
    /// snapshot index so that every entry after it stays.
    pub(crate) fn compact_limit(&self, index: u64) -> u64 {
        match self.0.lock().keys().next() {
            Some(&pinned) => index.min(pinned.saturating_add(1)),
            None => index,
        }
    }
}

impl fmt::Debug for Pins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.lock().iter()).finish()
    }
}

/// One handle's pin; unpins when dropped.
pub(crate) struct Pin {
    pins: Pins,
    index: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut map = self.pins.0.lock();
        let count = map.get_mut(&self.index).expect("a live pin is counted");
        *count -= 1;
        if *count == 0 {
            map.remove(&self.index);
        }
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({})", self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_live_pin_limits_compaction_until_its_last_clone_drops() {
        let pins = Pins::default();
        assert_eq!(pins.compact_limit(100), 100);
        let a = pins.pin(10);
        let a2 = Arc::clone(&a);
        let b = pins.pin(20);
        assert_eq!(pins.compact_limit(100), 11);
        assert_eq!(pins.compact_limit(5), 5, "a limit never raises the index");
        drop(a);
        assert_eq!(pins.compact_limit(100), 11, "a clone still pins");
        drop(a2);
        assert_eq!(pins.compact_limit(100), 21);
        drop(b);
        assert_eq!(pins.compact_limit(100), 100);
        assert!(pins.0.lock().is_empty());
    }
}
