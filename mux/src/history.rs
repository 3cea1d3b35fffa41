//! Which slot map applies at which frame.
//!
//! The OLT computes a new map once per scheduling period and sends it, with the frame from
//! which it applies, to every ONU over the authenticated channel (DESIGN.md §3 item 1). Both
//! ends keep a [`SlotMapSchedule`]: the old map applies until the new one's
//! `active_from_frame`, then the new one. The OLT attributes each detection with
//! [`SlotMapSchedule::owner_of`]; an ONU decides from the same schedule whether to fire.
//!
//! A map is accepted only if it keeps the schedule consistent:
//!
//! - same frame length as the maps before (frame numbers are `gate / frame_len`, so a new
//!   length would renumber the past);
//! - a higher version *and* a later `active_from_frame` than the latest map (a map for a
//!   frame that has already begun, or a reordered older map, is refused — applying it late
//!   would make the two ends attribute gates differently);
//! - across the switch-over, the old map's last slot and the new map's first slot are
//!   separated by the new map's guard when their owners differ (maps from
//!   [`crate::scheduler::schedule`] always are: their guard sits at the end of the frame).
//!
//! Receiving the same map twice (a retransmission) is harmless: [`Inserted::Duplicate`].

use crate::slot_map::{OnuId, SlotMap};

/// Why a map could not join the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The map's frame length differs from the schedule's.
    #[error("frame length {got} differs from the schedule's {expected}")]
    FrameLenMismatch {
        /// The schedule's frame length.
        expected: u32,
        /// The map's.
        got: u32,
    },
    /// Version not above the latest map's, or `active_from_frame` not after it.
    #[error(
        "map version {version} from frame {from_frame} is not newer than the latest map (version {latest_version} from frame {latest_from_frame})"
    )]
    Stale {
        /// The map's version.
        version: u32,
        /// The map's first frame.
        from_frame: u64,
        /// The latest map's version.
        latest_version: u32,
        /// The latest map's first frame.
        latest_from_frame: u64,
    },
    /// A different map under a version the schedule already holds.
    #[error("a different map with version {0} is already scheduled")]
    VersionConflict(u32),
    /// The map would start at or before the frame in progress.
    #[error("map applies from frame {from_frame}, but frame {current_frame} has already begun")]
    TooLate {
        /// The map's first frame.
        from_frame: u64,
        /// The caller's current frame.
        current_frame: u64,
    },
    /// The switch-over would put slots of two owners closer than the guard.
    #[error("switching maps leaves only {gap} guard gates between {before} and {after}")]
    TransitionGuard {
        /// Owner of the old map's last slot.
        before: OnuId,
        /// Owner of the new map's first slot.
        after: OnuId,
        /// The gap across the frame boundary.
        gap: u64,
    },
}

/// What [`SlotMapSchedule::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The map was new and now applies from its `active_from_frame`.
    New,
    /// The schedule already held this exact map (a retransmission); nothing changed.
    Duplicate,
}

/// The maps in force, ordered by `active_from_frame` (strictly increasing, as are versions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMapSchedule {
    maps: Vec<SlotMap>,
}

impl SlotMapSchedule {
    /// A schedule starting with `initial` (which applies from its `active_from_frame`).
    pub fn new(initial: SlotMap) -> Self {
        Self { maps: vec![initial] }
    }

    /// Gates per frame.
    pub fn frame_len(&self) -> u32 {
        self.maps[0].frame_len()
    }

    /// The newest map (possibly not yet in force).
    pub fn latest(&self) -> &SlotMap {
        self.maps.last().expect("a schedule is never empty")
    }

    /// The maps held, oldest first.
    pub fn maps(&self) -> &[SlotMap] {
        &self.maps
    }

    /// Adds `map`, to apply from `map.active_from_frame()`. `current_frame` is the frame in
    /// progress at the caller: the map must start strictly after it.
    pub fn insert(&mut self, map: SlotMap, current_frame: u64) -> Result<Inserted, ScheduleError> {
        if let Some(held) = self.maps.iter().find(|m| m.version() == map.version()) {
            return if *held == map {
                Ok(Inserted::Duplicate)
            } else {
                Err(ScheduleError::VersionConflict(map.version()))
            };
        }
        if map.frame_len() != self.frame_len() {
            return Err(ScheduleError::FrameLenMismatch { expected: self.frame_len(), got: map.frame_len() });
        }
        let latest = self.latest();
        if map.version() <= latest.version() || map.active_from_frame() <= latest.active_from_frame() {
            return Err(ScheduleError::Stale {
                version: map.version(),
                from_frame: map.active_from_frame(),
                latest_version: latest.version(),
                latest_from_frame: latest.active_from_frame(),
            });
        }
        if map.active_from_frame() <= current_frame {
            return Err(ScheduleError::TooLate { from_frame: map.active_from_frame(), current_frame });
        }
        if let (Some(last), Some(first)) = (latest.slots().last(), map.slots().first())
            && last.owner != first.owner
        {
            let gap = latest.frame_len() as u64 - last.end() + first.start as u64;
            if gap < map.guard() as u64 {
                return Err(ScheduleError::TransitionGuard { before: last.owner, after: first.owner, gap });
            }
        }
        self.maps.push(map);
        Ok(Inserted::New)
    }

    /// The map that applies at frame `frame`, or `None` before the first map's start.
    pub fn map_at(&self, frame: u64) -> Option<&SlotMap> {
        let i = self.maps.partition_point(|m| m.active_from_frame() <= frame);
        i.checked_sub(1).map(|i| &self.maps[i])
    }

    /// The owner of a global gate under the map in force in its frame. O(log maps +
    /// log slots), allocation-free.
    pub fn owner_of(&self, global_gate: u64) -> Option<OnuId> {
        let frame = global_gate / self.frame_len() as u64;
        self.map_at(frame)?.owner_of(global_gate)
    }

    /// The first frame ≥ `frame` at which a different map takes over, if one is scheduled.
    pub fn next_change_after(&self, frame: u64) -> Option<u64> {
        self.maps.iter().map(|m| m.active_from_frame()).find(|&f| f > frame)
    }

    /// The first global gate after `global_gate` at which attribution may change: the end
    /// of its segment under the map in force, or the start of the next map's first frame,
    /// whichever comes first. A sampler can treat `global_gate .. next_boundary(global_gate)`
    /// as one run with one owner (bounded work per call, smoltcp's `poll_at` style).
    pub fn next_boundary(&self, global_gate: u64) -> u64 {
        let frame_len = self.frame_len() as u64;
        let frame = global_gate / frame_len;
        let switch = self.next_change_after(frame).map_or(u64::MAX, |f| f.saturating_mul(frame_len));
        let within = match self.map_at(frame) {
            Some(m) => m.next_boundary(global_gate),
            // Before the first map: nothing is owned until it starts.
            None => switch,
        };
        within.min(switch)
    }

    /// Forgets the maps that no frame ≥ `frame` can use (keeps the one in force at `frame`).
    pub fn prune_before(&mut self, frame: u64) {
        let i = self.maps.partition_point(|m| m.active_from_frame() <= frame);
        if i > 1 {
            self.maps.drain(..i - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot_map::Slot;

    const A: OnuId = OnuId(1);
    const B: OnuId = OnuId(2);

    fn map(version: u32, from: u64, slots: &[(u32, u32, OnuId)]) -> SlotMap {
        let slots = slots.iter().map(|&(start, len, owner)| Slot { start, len, owner }).collect();
        SlotMap::new(100, 10, version, from, slots).unwrap()
    }

    #[test]
    fn old_map_until_the_switch_then_the_new_one() {
        let mut s = SlotMapSchedule::new(map(1, 0, &[(0, 40, A), (50, 40, B)]));
        assert_eq!(s.insert(map(2, 5, &[(0, 40, B), (50, 40, A)]), 3), Ok(Inserted::New));
        assert_eq!(s.map_at(4).unwrap().version(), 1);
        assert_eq!(s.map_at(5).unwrap().version(), 2);
        assert_eq!(s.map_at(u64::MAX).unwrap().version(), 2);
        // Gate 10 of frame 4 is A's, of frame 5 B's.
        assert_eq!(s.owner_of(4 * 100 + 10), Some(A));
        assert_eq!(s.owner_of(5 * 100 + 10), Some(B));
        assert_eq!(s.owner_of(5 * 100 + 45), None);
        assert_eq!(s.next_change_after(0), Some(5));
        assert_eq!(s.next_change_after(5), None);
        // Boundaries: within map 1, then the switch at frame 5, then within map 2.
        assert_eq!(s.next_boundary(4 * 100 + 10), 4 * 100 + 40);
        assert_eq!(s.next_boundary(4 * 100 + 95), 5 * 100);
        assert_eq!(s.next_boundary(5 * 100 + 10), 5 * 100 + 40);
        // A retransmission changes nothing.
        assert_eq!(s.insert(map(2, 5, &[(0, 40, B), (50, 40, A)]), 4), Ok(Inserted::Duplicate));
        assert_eq!(s.maps().len(), 2);
        s.prune_before(4);
        assert_eq!(s.maps().len(), 2, "map 1 still applies at frame 4");
        s.prune_before(5);
        assert_eq!(s.maps().len(), 1);
        assert_eq!(s.map_at(4), None, "pruned history no longer answers");
    }

    #[test]
    fn nothing_before_the_first_map() {
        let s = SlotMapSchedule::new(map(1, 10, &[(0, 40, A)]));
        assert_eq!(s.map_at(9), None);
        assert_eq!(s.owner_of(999), None);
        assert_eq!(s.owner_of(1000), Some(A));
        assert_eq!(s.next_boundary(5), 1000);
    }

    #[test]
    fn inconsistent_maps_are_refused() {
        let mut s = SlotMapSchedule::new(map(1, 0, &[(0, 40, A), (50, 40, B)]));
        s.insert(map(3, 10, &[(0, 40, A)]), 0).unwrap();
        assert!(matches!(s.insert(map(2, 20, &[]), 0), Err(ScheduleError::Stale { .. })));
        assert!(matches!(s.insert(map(4, 10, &[]), 0), Err(ScheduleError::Stale { .. })));
        assert_eq!(s.insert(map(3, 10, &[(0, 50, A)]), 0), Err(ScheduleError::VersionConflict(3)));
        assert_eq!(
            s.insert(map(4, 12, &[]), 12),
            Err(ScheduleError::TooLate { from_frame: 12, current_frame: 12 })
        );
        let other = SlotMap::idle(200, 10, 4, 20);
        assert_eq!(s.insert(other, 0), Err(ScheduleError::FrameLenMismatch { expected: 100, got: 200 }));
        // Latest map: A at 0..40 (tail gap 60). A map starting with B at 0 is fine...
        s.insert(map(4, 20, &[(0, 40, B), (50, 48, B)]), 0).unwrap();
        // ...but after it (B ends at 98), A starting at gate 3 leaves 5 < 10 guard gates.
        assert_eq!(
            s.insert(map(5, 30, &[(3, 40, A)]), 0),
            Err(ScheduleError::TransitionGuard { before: B, after: A, gap: 5 })
        );
        assert_eq!(s.latest().version(), 4);
    }
}
