//! Slot maps: which ONU owns which detector gates, from which frame on.
//!
//! A frame is `frame_len` consecutive detector gates (DESIGN.md §5: 125 µs at 1 GHz =
//! 125 000 gates). A [`SlotMap`] divides every frame the same way into *slots*
//! `(start, len, owner)`; gates outside every slot are unowned — *guard* gates right after a
//! slot (they absorb the detectors' dead time and afterpulses of that slot's clicks) or
//! *idle* gates. A map carries a `version` (strictly increasing per OLT) and the frame
//! number from which it applies (`active_from_frame`); [`crate::SlotMapSchedule`] keeps the
//! sequence of maps and answers which one applies at a given frame.
//!
//! # Invariants (checked by [`SlotMap::new`], so every `SlotMap` value satisfies them)
//!
//! - `frame_len ≥ 1`, at most [`MAX_SLOTS`] slots;
//! - every slot is non-empty and lies within `0..frame_len`;
//! - slots are sorted by start and disjoint, so every gate has at most one owner;
//! - two consecutive slots of the same owner are not adjacent (they would be one slot: the
//!   representation is canonical, so equal layouts compare equal);
//! - between consecutive slots of *different* owners there are at least `guard` unowned
//!   gates — cyclically too: the gap from the frame's last slot to the next frame's first
//!   slot counts `frame_len − last_end + first_start`.
//!
//! Lookups ([`SlotMap::owner_of`], [`SlotMap::owner_at_offset`]) are a binary search over
//! slot starts: O(log slots), no allocation.

use core::fmt;
use core::ops::Range;

use serde::{Deserialize, Serialize};

/// Most slots a map may hold (the wire format's slot count is a `u16`).
pub const MAX_SLOTS: usize = u16::MAX as usize;

/// An ONU's identifier on this PON (the classical frames' `onu` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OnuId(pub u16);

impl fmt::Display for OnuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "onu{}", self.0)
    }
}

/// One slot: `len` gates from offset `start` within every frame, owned by `owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slot {
    /// First gate of the slot, as an offset within the frame.
    pub start: u32,
    /// Number of gates.
    pub len: u32,
    /// The ONU that owns (and alone may fire into) these gates.
    pub owner: OnuId,
}

impl Slot {
    /// One past the slot's last offset (as `u64`, so it cannot overflow).
    pub const fn end(&self) -> u64 {
        self.start as u64 + self.len as u64
    }

    /// The slot's offsets within the frame.
    pub const fn range(&self) -> Range<u64> {
        self.start as u64..self.end()
    }

    /// Whether offset `offset` lies in the slot.
    pub const fn contains(&self, offset: u64) -> bool {
        offset >= self.start as u64 && offset < self.end()
    }
}

/// Why a slot map was refused. Indices name the offending slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlotMapError {
    /// `frame_len` is zero.
    #[error("frame length must be at least one gate")]
    EmptyFrame,
    /// More than [`MAX_SLOTS`] slots.
    #[error("{0} slots exceed the limit of {MAX_SLOTS}")]
    TooManySlots(usize),
    /// A slot of zero gates.
    #[error("slot {index} is empty")]
    EmptySlot {
        /// Index of the slot.
        index: usize,
    },
    /// A slot reaching past the end of the frame.
    #[error("slot {index} ends at {end}, past the frame of {frame_len} gates")]
    OutsideFrame {
        /// Index of the slot.
        index: usize,
        /// Where the slot ends.
        end: u64,
        /// The frame length.
        frame_len: u32,
    },
    /// A slot that starts before the previous one ends.
    #[error("slot {index} overlaps or precedes the slot before it")]
    Overlap {
        /// Index of the slot.
        index: usize,
    },
    /// A slot adjacent to a slot of the same owner (the two must be written as one).
    #[error("slot {index} touches the previous slot of the same owner (not canonical)")]
    NotCanonical {
        /// Index of the slot.
        index: usize,
    },
    /// Fewer than `guard` unowned gates between slots of different owners.
    #[error("only {gap} guard gates before slot {index}, at least {guard} required")]
    GuardTooShort {
        /// Index of the slot after the short gap (0 for the gap across the frame boundary).
        index: usize,
        /// The gap, in gates.
        gap: u64,
        /// The required guard.
        guard: u32,
    },
}

/// A validated slot map (see the module doc for its invariants).
///
/// Serialises as its fields; deserialising re-checks every invariant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawSlotMap")]
pub struct SlotMap {
    frame_len: u32,
    guard: u32,
    version: u32,
    active_from_frame: u64,
    slots: Vec<Slot>,
}

/// The unchecked field set a [`SlotMap`] is deserialised through.
#[derive(Deserialize)]
struct RawSlotMap {
    frame_len: u32,
    guard: u32,
    version: u32,
    active_from_frame: u64,
    slots: Vec<Slot>,
}

impl TryFrom<RawSlotMap> for SlotMap {
    type Error = SlotMapError;
    fn try_from(r: RawSlotMap) -> Result<Self, SlotMapError> {
        SlotMap::new(r.frame_len, r.guard, r.version, r.active_from_frame, r.slots)
    }
}

/// What a stretch of the frame is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// A slot owned by this ONU.
    Owned(OnuId),
    /// Unowned gates within `guard` gates after the end of a slot (cyclically): they absorb
    /// the previous slot's dead time and afterpulses.
    Guard,
    /// Any other unowned gate.
    Idle,
}

/// A maximal run of frame offsets of one [`SegmentKind`]; see [`SlotMap::segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// First offset.
    pub start: u64,
    /// Number of gates (≥ 1).
    pub len: u64,
    /// Its use.
    pub kind: SegmentKind,
}

impl Segment {
    /// One past the last offset.
    pub const fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// How a frame's gates are used; the three counts add up to the frame length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GateCounts {
    /// Gates in slots.
    pub owned: u64,
    /// Guard gates (see [`SegmentKind::Guard`]).
    pub guard: u64,
    /// Idle gates.
    pub idle: u64,
}

impl SlotMap {
    /// A checked map. `slots` must already be sorted (the order is part of what is checked).
    pub fn new(
        frame_len: u32,
        guard: u32,
        version: u32,
        active_from_frame: u64,
        slots: Vec<Slot>,
    ) -> Result<Self, SlotMapError> {
        validate(frame_len, guard, &slots)?;
        Ok(Self { frame_len, guard, version, active_from_frame, slots })
    }

    /// A map with no slots (every gate idle): what applies before any ONU is active.
    ///
    /// # Panics
    /// If `frame_len` is zero (caller misuse).
    pub fn idle(frame_len: u32, guard: u32, version: u32, active_from_frame: u64) -> Self {
        assert!(frame_len > 0, "frame length must be at least one gate");
        Self { frame_len, guard, version, active_from_frame, slots: Vec::new() }
    }

    /// Gates per frame.
    pub const fn frame_len(&self) -> u32 {
        self.frame_len
    }

    /// Minimum guard between slots of different owners, in gates.
    pub const fn guard(&self) -> u32 {
        self.guard
    }

    /// The map's version (strictly increasing along a [`crate::SlotMapSchedule`]).
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// First frame the map applies to.
    pub const fn active_from_frame(&self) -> u64 {
        self.active_from_frame
    }

    /// The slots, sorted by start.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Whether the two maps divide the frame identically (frame length, guard and slots),
    /// whatever their version and starting frame.
    pub fn same_layout(&self, other: &SlotMap) -> bool {
        self.frame_len == other.frame_len && self.guard == other.guard && self.slots == other.slots
    }

    /// The same layout under a new version, applying from `active_from_frame`.
    pub fn with_activation(&self, version: u32, active_from_frame: u64) -> SlotMap {
        SlotMap { version, active_from_frame, ..self.clone() }
    }

    /// The frame a global gate belongs to.
    pub const fn frame_of(&self, global_gate: u64) -> u64 {
        global_gate / self.frame_len as u64
    }

    /// A global gate's offset within its frame.
    pub const fn offset_of(&self, global_gate: u64) -> u32 {
        (global_gate % self.frame_len as u64) as u32
    }

    /// The first global gate of frame `frame` (saturating).
    pub const fn frame_start(&self, frame: u64) -> u64 {
        frame.saturating_mul(self.frame_len as u64)
    }

    /// Index of the slot containing `offset`, if any.
    fn slot_index_at(&self, offset: u64) -> Option<usize> {
        let i = self.slots.partition_point(|s| s.start as u64 <= offset);
        (i > 0 && self.slots[i - 1].contains(offset)).then(|| i - 1)
    }

    /// The owner of frame offset `offset` (offsets ≥ `frame_len` have none).
    pub fn owner_at_offset(&self, offset: u64) -> Option<OnuId> {
        self.slot_index_at(offset).map(|i| self.slots[i].owner)
    }

    /// The owner of a global gate under this map, or `None` when the gate is unowned or its
    /// frame precedes `active_from_frame` (this map does not speak for earlier frames; ask
    /// the [`crate::SlotMapSchedule`]).
    pub fn owner_of(&self, global_gate: u64) -> Option<OnuId> {
        if self.frame_of(global_gate) < self.active_from_frame {
            return None;
        }
        self.owner_at_offset(self.offset_of(global_gate) as u64)
    }

    /// The slots owned by `onu`, in frame order.
    pub fn slots_of(&self, onu: OnuId) -> impl Iterator<Item = Slot> + '_ {
        self.slots.iter().copied().filter(move |s| s.owner == onu)
    }

    /// The frame offsets owned by `onu`, in order (the shape `hw::SourceSchedule::slots` takes).
    pub fn ranges_of(&self, onu: OnuId) -> impl Iterator<Item = Range<u64>> + '_ {
        self.slots_of(onu).map(|s| s.range())
    }

    /// Gates per frame owned by `onu`.
    pub fn owned_gates(&self, onu: OnuId) -> u64 {
        self.slots_of(onu).map(|s| s.len as u64).sum()
    }

    /// `onu`'s share of the frame, in `0.0..=1.0`.
    pub fn share(&self, onu: OnuId) -> f64 {
        self.owned_gates(onu) as f64 / self.frame_len as f64
    }

    /// The distinct owners in order of their first slot in the frame.
    pub fn owners(&self) -> Vec<OnuId> {
        let mut out: Vec<OnuId> = Vec::new();
        for s in &self.slots {
            if !out.contains(&s.owner) {
                out.push(s.owner);
            }
        }
        out
    }

    /// Whether `onu` owns any gate.
    pub fn has_owner(&self, onu: OnuId) -> bool {
        self.slots.iter().any(|s| s.owner == onu)
    }

    /// The whole frame as consecutive [`Segment`]s from offset 0 to `frame_len`: slots,
    /// guard gates (the first `guard` unowned gates after each slot, continuing across the
    /// frame boundary into the next frame's head) and idle gates. Allocation-free.
    pub fn segments(&self) -> Segments<'_> {
        Segments { map: self, pos: 0, next_slot: 0 }
    }

    /// How many gates per frame are owned, guard and idle (they sum to `frame_len`).
    pub fn gate_counts(&self) -> GateCounts {
        let mut c = GateCounts::default();
        for s in self.segments() {
            match s.kind {
                SegmentKind::Owned(_) => c.owned += s.len,
                SegmentKind::Guard => c.guard += s.len,
                SegmentKind::Idle => c.idle += s.len,
            }
        }
        c
    }

    /// The segment holding frame offset `offset`.
    ///
    /// # Panics
    /// If `offset ≥ frame_len`.
    pub fn segment_at_offset(&self, offset: u64) -> Segment {
        assert!(offset < self.frame_len as u64, "offset {offset} outside the frame of {}", self.frame_len);
        let i = self.slots.partition_point(|s| s.start as u64 <= offset);
        let mut it = Segments { map: self, pos: 0, next_slot: 0 };
        // Start the walk at the slot at or before `offset` (or the frame head).
        if i > 0 {
            it.pos = self.slots[i - 1].start as u64;
            it.next_slot = i - 1;
        }
        it.find(|s| s.end() > offset).expect("segments cover the frame")
    }

    /// The first global gate after `global_gate` at which the segment kind may change (the
    /// end of the segment holding `global_gate`). A sampler can process `global_gate ..
    /// next_boundary(global_gate)` as one run with one owner.
    pub fn next_boundary(&self, global_gate: u64) -> u64 {
        let frame_start = global_gate - self.offset_of(global_gate) as u64;
        frame_start.saturating_add(self.segment_at_offset(self.offset_of(global_gate) as u64).end())
    }
}

/// Iterator over a map's [`Segment`]s; see [`SlotMap::segments`].
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    map: &'a SlotMap,
    pos: u64,
    next_slot: usize,
}

impl Iterator for Segments<'_> {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        let m = self.map;
        let frame = m.frame_len as u64;
        if self.pos >= frame {
            return None;
        }
        if let Some(s) = m.slots.get(self.next_slot)
            && s.start as u64 == self.pos
        {
            self.pos = s.end();
            self.next_slot += 1;
            return Some(Segment {
                start: s.start as u64,
                len: s.len as u64,
                kind: SegmentKind::Owned(s.owner),
            });
        }
        let gap_end = m.slots.get(self.next_slot).map_or(frame, |s| s.start as u64);
        // Guard gates still owed at `pos`: right after a slot, the full guard; at the frame
        // head, what the tail gap after the last slot did not cover.
        let guard_left = if self.next_slot > 0 {
            let prev_end = m.slots[self.next_slot - 1].end();
            (prev_end + m.guard as u64).saturating_sub(self.pos)
        } else if let Some(last) = m.slots.last() {
            (m.guard as u64).saturating_sub(frame - last.end()).saturating_sub(self.pos)
        } else {
            0
        };
        let start = self.pos;
        let (len, kind) = if guard_left > 0 {
            ((gap_end - start).min(guard_left), SegmentKind::Guard)
        } else {
            (gap_end - start, SegmentKind::Idle)
        };
        self.pos += len;
        Some(Segment { start, len, kind })
    }
}

fn validate(frame_len: u32, guard: u32, slots: &[Slot]) -> Result<(), SlotMapError> {
    if frame_len == 0 {
        return Err(SlotMapError::EmptyFrame);
    }
    if slots.len() > MAX_SLOTS {
        return Err(SlotMapError::TooManySlots(slots.len()));
    }
    let mut prev: Option<&Slot> = None;
    for (index, s) in slots.iter().enumerate() {
        if s.len == 0 {
            return Err(SlotMapError::EmptySlot { index });
        }
        if s.end() > frame_len as u64 {
            return Err(SlotMapError::OutsideFrame { index, end: s.end(), frame_len });
        }
        if let Some(p) = prev {
            if (s.start as u64) < p.end() {
                return Err(SlotMapError::Overlap { index });
            }
            let gap = s.start as u64 - p.end();
            if p.owner == s.owner {
                if gap == 0 {
                    return Err(SlotMapError::NotCanonical { index });
                }
            } else if gap < guard as u64 {
                return Err(SlotMapError::GuardTooShort { index, gap, guard });
            }
        }
        prev = Some(s);
    }
    if let (Some(first), Some(last)) = (slots.first(), slots.last())
        && first.owner != last.owner
    {
        let gap = frame_len as u64 - last.end() + first.start as u64;
        if gap < guard as u64 {
            return Err(SlotMapError::GuardTooShort { index: 0, gap, guard });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: OnuId = OnuId(1);
    const B: OnuId = OnuId(2);

    fn slot(start: u32, len: u32, owner: OnuId) -> Slot {
        Slot { start, len, owner }
    }

    fn two_slot_map() -> SlotMap {
        // | A 0..40 | guard 40..50 | idle 50..60 | B 60..90 | guard 90..100 |
        SlotMap::new(100, 10, 3, 7, vec![slot(0, 40, A), slot(60, 30, B)]).unwrap()
    }

    #[test]
    fn lookup_by_offset_and_global_gate() {
        let m = two_slot_map();
        for off in 0..100u64 {
            let expected = if off < 40 {
                Some(A)
            } else if (60..90).contains(&off) {
                Some(B)
            } else {
                None
            };
            assert_eq!(m.owner_at_offset(off), expected, "offset {off}");
            // Any frame from active_from_frame on gives the same answer.
            assert_eq!(m.owner_of(7 * 100 + off), expected);
            assert_eq!(m.owner_of(1234 * 100 + off), expected);
            // Earlier frames: this map does not apply.
            assert_eq!(m.owner_of(6 * 100 + off), None);
        }
        assert_eq!(m.owner_at_offset(100), None);
        assert_eq!(m.owner_at_offset(u64::MAX), None);
    }

    #[test]
    fn segments_cover_the_frame_and_classify_guards() {
        let m = two_slot_map();
        let segs: Vec<Segment> = m.segments().collect();
        let kinds: Vec<(u64, u64, SegmentKind)> = segs.iter().map(|s| (s.start, s.len, s.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0, 40, SegmentKind::Owned(A)),
                (40, 10, SegmentKind::Guard),
                (50, 10, SegmentKind::Idle),
                (60, 30, SegmentKind::Owned(B)),
                (90, 10, SegmentKind::Guard),
            ]
        );
        let c = m.gate_counts();
        assert_eq!(c.owned + c.guard + c.idle, 100);
        assert_eq!((c.owned, c.guard), (70, 20));
        for off in 0..100 {
            let s = m.segment_at_offset(off);
            assert!(s.start <= off && off < s.end());
            assert!(segs.contains(&s));
        }
        assert_eq!(m.next_boundary(700 + 45), 750);
        assert_eq!(m.next_boundary(700 + 95), 800);
    }

    #[test]
    fn guard_wraps_into_the_frame_head() {
        // Last slot ends 3 gates before the frame end: 7 of its 10 guard gates lie at the head.
        let m = SlotMap::new(100, 10, 0, 0, vec![slot(20, 40, A), slot(70, 27, B)]).unwrap();
        let segs: Vec<_> = m.segments().map(|s| (s.start, s.len, s.kind)).collect();
        assert_eq!(segs[0], (0, 7, SegmentKind::Guard));
        assert_eq!(segs[1], (7, 13, SegmentKind::Idle));
        let c = m.gate_counts();
        assert_eq!(c.owned + c.guard + c.idle, 100);
        assert_eq!(c.guard, 20);
        for off in 0..100 {
            let s = m.segment_at_offset(off);
            assert!(s.start <= off && off < s.end(), "offset {off} in {s:?}");
            assert_eq!(m.next_boundary(500 + off), 500 + s.end());
        }
        assert_eq!(m.segment_at_offset(3).kind, SegmentKind::Guard);
    }

    #[test]
    fn per_onu_views() {
        let m = SlotMap::new(100, 5, 0, 0, vec![slot(0, 10, A), slot(15, 10, B), slot(30, 10, A)]).unwrap();
        assert_eq!(m.ranges_of(A).collect::<Vec<_>>(), vec![0..10, 30..40]);
        assert_eq!(m.owned_gates(A), 20);
        assert_eq!(m.owned_gates(OnuId(9)), 0);
        assert!((m.share(B) - 0.1).abs() < 1e-12);
        assert_eq!(m.owners(), vec![A, B]);
        assert!(m.has_owner(B) && !m.has_owner(OnuId(9)));
    }

    #[test]
    fn invalid_maps_are_refused() {
        let e = |frame, guard, slots| SlotMap::new(frame, guard, 0, 0, slots).unwrap_err();
        assert_eq!(e(0, 0, vec![]), SlotMapError::EmptyFrame);
        assert_eq!(e(100, 0, vec![slot(0, 0, A)]), SlotMapError::EmptySlot { index: 0 });
        assert_eq!(
            e(100, 0, vec![slot(90, 11, A)]),
            SlotMapError::OutsideFrame { index: 0, end: 101, frame_len: 100 }
        );
        assert_eq!(e(100, 0, vec![slot(10, 10, A), slot(15, 10, B)]), SlotMapError::Overlap { index: 1 });
        assert_eq!(e(100, 0, vec![slot(10, 10, A), slot(5, 1, B)]), SlotMapError::Overlap { index: 1 });
        assert_eq!(e(100, 0, vec![slot(0, 10, A), slot(10, 10, A)]), SlotMapError::NotCanonical { index: 1 });
        assert_eq!(
            e(100, 10, vec![slot(0, 10, A), slot(15, 10, B)]),
            SlotMapError::GuardTooShort { index: 1, gap: 5, guard: 10 }
        );
        // Cyclic: B ends at 95, A starts at 2 → 7 gates across the boundary.
        assert_eq!(
            e(100, 10, vec![slot(2, 10, A), slot(30, 65, B)]),
            SlotMapError::GuardTooShort { index: 0, gap: 7, guard: 10 }
        );
        // Same owner across the boundary needs no guard; one ONU may own the whole frame.
        assert!(SlotMap::new(100, 10, 0, 0, vec![slot(0, 10, A), slot(20, 80, A)]).is_ok());
        assert!(SlotMap::new(100, 10, 0, 0, vec![slot(0, 100, A)]).is_ok());
        let u32max = SlotMap::new(u32::MAX, 0, 0, 0, vec![slot(u32::MAX - 1, 1, A)]).unwrap();
        assert_eq!(u32max.owner_of(u32::MAX as u64 - 1), Some(A));
    }

    #[test]
    fn serde_rechecks_invariants() {
        let m = two_slot_map();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<SlotMap>(&json).unwrap(), m);
        let bad = json.replace("\"start\":60", "\"start\":45");
        assert!(serde_json::from_str::<SlotMap>(&bad).is_err());
    }
}
