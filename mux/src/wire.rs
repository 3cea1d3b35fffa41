//! The wire encoding of a slot map: a checked view over bytes, and parse/emit.
//!
//! The OLT sends every changed map to the ONUs inside an authenticated classical message
//! (the message framing and the Wegman–Carter tag are the session layer's); this module
//! encodes the map itself. Layout (version 1, all integers big-endian):
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 0 | format | 1; any other value is refused |
//! | 1 | flags | reserved, must be 0 |
//! | 2..4 | count | number of slots `N` (≤ 65 535) |
//! | 4..8 | version | the map's version |
//! | 8..16 | from_frame | first frame the map applies to |
//! | 16..20 | frame_len | gates per frame (≥ 1) |
//! | 20..24 | guard | minimum guard between slots of different owners |
//! | 24.. | slots | `N` × 10 bytes: start (u32), len (u32), owner (u16) |
//!
//! The buffer must hold exactly `24 + 10·N` bytes: truncated and trailing bytes are both
//! errors. [`SlotMap::parse`] then checks every [`SlotMap`] invariant (sorted, disjoint,
//! inside the frame, guards), so a parsed map is as trustworthy as a constructed one.
//!
//! The panic contract is smoltcp's: once [`Packet::new_checked`] returns `Ok`, no accessor
//! panics; untrusted bytes must go through it. [`Packet::new_unchecked`] is for buffers
//! this crate sized itself ([`SlotMap::emit`]).

use core::fmt;

use crate::slot_map::{OnuId, Slot, SlotMap, SlotMapError};

/// Encoding format this crate speaks.
pub const FORMAT: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = field::GUARD.end;
/// Length of one encoded slot.
pub const SLOT_LEN: usize = field::SLOT_OWNER.end;

mod field {
    use core::ops::Range;
    pub(super) const FORMAT: usize = 0;
    pub(super) const FLAGS: usize = 1;
    pub(super) const COUNT: Range<usize> = 2..4;
    pub(super) const VERSION: Range<usize> = 4..8;
    pub(super) const FROM_FRAME: Range<usize> = 8..16;
    pub(super) const FRAME_LEN: Range<usize> = 16..20;
    pub(super) const GUARD: Range<usize> = 20..24;
    // Within one slot record, relative to its start.
    pub(super) const SLOT_START: Range<usize> = 0..4;
    pub(super) const SLOT_LEN: Range<usize> = 4..8;
    pub(super) const SLOT_OWNER: Range<usize> = 8..10;
}

/// Why bytes were refused as a slot map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the header, or than the header plus the announced slots.
    #[error("truncated slot map")]
    Truncated,
    /// More bytes than the header plus the announced slots.
    #[error("trailing bytes after the slot map")]
    Trailing,
    /// A format this crate does not speak.
    #[error("unknown slot map format {0}")]
    UnknownFormat(u8),
    /// Reserved flag bits set.
    #[error("reserved slot map flags {0:#04x} set")]
    ReservedFlags(u8),
    /// Well-formed bytes describing an impossible map.
    #[error("invalid slot map: {0}")]
    Invalid(#[from] SlotMapError),
}

/// A view of an encoded slot map in a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it (accessors may panic on a short buffer).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the buffer holds exactly one map's worth of bytes in a known format. After
    /// `Ok`, no accessor panics. (The map's invariants are checked by [`SlotMap::parse`].)
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self { buffer };
        p.check_len()?;
        let b = p.buffer.as_ref();
        if b[field::FORMAT] != FORMAT {
            return Err(WireError::UnknownFormat(b[field::FORMAT]));
        }
        if b[field::FLAGS] != 0 {
            return Err(WireError::ReservedFlags(b[field::FLAGS]));
        }
        Ok(p)
    }

    /// Checks the length against the header and the slot count.
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let total = buffer_len(self.slot_count() as usize);
        match b.len().cmp(&total) {
            core::cmp::Ordering::Less => Err(WireError::Truncated),
            core::cmp::Ordering::Greater => Err(WireError::Trailing),
            core::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn be<const N: usize>(&self, r: core::ops::Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buffer.as_ref()[r]);
        out
    }

    /// Encoding format.
    pub fn format(&self) -> u8 {
        self.buffer.as_ref()[field::FORMAT]
    }

    /// Number of slots.
    pub fn slot_count(&self) -> u16 {
        u16::from_be_bytes(self.be(field::COUNT))
    }

    /// The map's version.
    pub fn version(&self) -> u32 {
        u32::from_be_bytes(self.be(field::VERSION))
    }

    /// First frame the map applies to.
    pub fn from_frame(&self) -> u64 {
        u64::from_be_bytes(self.be(field::FROM_FRAME))
    }

    /// Gates per frame.
    pub fn frame_len(&self) -> u32 {
        u32::from_be_bytes(self.be(field::FRAME_LEN))
    }

    /// Minimum guard.
    pub fn guard(&self) -> u32 {
        u32::from_be_bytes(self.be(field::GUARD))
    }

    /// Slot `index` as written (not yet validated against the others), or `None` past the
    /// slot count.
    pub fn slot(&self, index: usize) -> Option<Slot> {
        if index >= self.slot_count() as usize {
            return None;
        }
        let at = HEADER_LEN + index * SLOT_LEN;
        let rec = |r: core::ops::Range<usize>| at + r.start..at + r.end;
        Some(Slot {
            start: u32::from_be_bytes(self.be(rec(field::SLOT_START))),
            len: u32::from_be_bytes(self.be(rec(field::SLOT_LEN))),
            owner: OnuId(u16::from_be_bytes(self.be(rec(field::SLOT_OWNER)))),
        })
    }

    /// The slots as written.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        (0..self.slot_count() as usize).filter_map(|i| self.slot(i))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put(&mut self, r: core::ops::Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[r].copy_from_slice(bytes);
    }

    /// Writes the header fields (format 1, no flags).
    pub fn set_header(&mut self, count: u16, version: u32, from_frame: u64, frame_len: u32, guard: u32) {
        self.buffer.as_mut()[field::FORMAT] = FORMAT;
        self.buffer.as_mut()[field::FLAGS] = 0;
        self.put(field::COUNT, &count.to_be_bytes());
        self.put(field::VERSION, &version.to_be_bytes());
        self.put(field::FROM_FRAME, &from_frame.to_be_bytes());
        self.put(field::FRAME_LEN, &frame_len.to_be_bytes());
        self.put(field::GUARD, &guard.to_be_bytes());
    }

    /// Writes slot record `index`.
    pub fn set_slot(&mut self, index: usize, slot: Slot) {
        let at = HEADER_LEN + index * SLOT_LEN;
        self.put(at + field::SLOT_START.start..at + field::SLOT_START.end, &slot.start.to_be_bytes());
        self.put(at + field::SLOT_LEN.start..at + field::SLOT_LEN.end, &slot.len.to_be_bytes());
        self.put(at + field::SLOT_OWNER.start..at + field::SLOT_OWNER.end, &slot.owner.0.to_be_bytes());
    }
}

/// Bytes needed to encode a map of `slots` slots.
pub const fn buffer_len(slots: usize) -> usize {
    HEADER_LEN + slots * SLOT_LEN
}

impl SlotMap {
    /// The map in a checked packet, with every invariant re-checked.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<SlotMap, WireError> {
        let slots = packet.slots().collect();
        Ok(SlotMap::new(packet.frame_len(), packet.guard(), packet.version(), packet.from_frame(), slots)?)
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        buffer_len(self.slots().len())
    }

    /// Writes the map into `packet`, whose buffer must be exactly
    /// [`buffer_len`](Self::buffer_len) bytes.
    ///
    /// # Panics
    /// If the buffer has the wrong length (caller misuse).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        assert_eq!(packet.buffer.as_ref().len(), self.buffer_len(), "slot map buffer of the wrong length");
        // SlotMap::new bounds the slot count by MAX_SLOTS = u16::MAX.
        let count = u16::try_from(self.slots().len()).expect("slot count bounded by MAX_SLOTS");
        packet.set_header(count, self.version(), self.active_from_frame(), self.frame_len(), self.guard());
        for (i, s) in self.slots().iter().enumerate() {
            packet.set_slot(i, *s);
        }
    }

    /// The encoded map as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf
    }

    /// Parses untrusted bytes: [`Packet::new_checked`] then [`SlotMap::parse`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SlotMap, WireError> {
        SlotMap::parse(&Packet::new_checked(bytes)?)
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    /// A one-line summary (header fields only), in the style of tcpdump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slotmap v{} version={} from_frame={} frame_len={} guard={} slots={}",
            self.format(),
            self.version(),
            self.from_frame(),
            self.frame_len(),
            self.guard(),
            self.slot_count()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static MAP_BYTES: [u8; 24 + 2 * 10] = [
        0x01, 0x00, 0x00, 0x02, // format, flags, count = 2
        0x00, 0x00, 0x00, 0x07, // version 7
        0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, // from_frame 65536
        0x00, 0x01, 0xe8, 0x48, // frame_len 125000
        0x00, 0x00, 0x00, 0x3c, // guard 60
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x05, // slot 0..1000 → onu 5
        0x00, 0x00, 0x04, 0x24, 0x00, 0x00, 0x07, 0xd0, 0x01, 0x02, // slot 1060..3060 → onu 258
    ];

    fn golden_map() -> SlotMap {
        SlotMap::new(
            125_000,
            60,
            7,
            65_536,
            vec![
                Slot { start: 0, len: 1000, owner: OnuId(5) },
                Slot { start: 1060, len: 2000, owner: OnuId(258) },
            ],
        )
        .unwrap()
    }

    #[test]
    fn test_deconstruct() {
        let p = Packet::new_checked(&MAP_BYTES[..]).unwrap();
        assert_eq!((p.format(), p.slot_count(), p.version(), p.from_frame()), (1, 2, 7, 65_536));
        assert_eq!((p.frame_len(), p.guard()), (125_000, 60));
        assert_eq!(p.slot(1), Some(Slot { start: 1060, len: 2000, owner: OnuId(258) }));
        assert_eq!(p.slot(2), None);
        assert_eq!(SlotMap::parse(&p).unwrap(), golden_map());
        assert_eq!(p.to_string(), "slotmap v1 version=7 from_frame=65536 frame_len=125000 guard=60 slots=2");
    }

    #[test]
    fn test_emit() {
        assert_eq!(&golden_map().to_bytes()[..], &MAP_BYTES[..]);
        let idle = SlotMap::idle(10, 2, 1, 3);
        let bytes = idle.to_bytes();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(SlotMap::from_bytes(&bytes).unwrap(), idle);
    }

    #[test]
    fn test_impossible_len() {
        assert_eq!(Packet::new_checked(&MAP_BYTES[..23]).unwrap_err(), WireError::Truncated);
        assert_eq!(Packet::new_checked(&MAP_BYTES[..43]).unwrap_err(), WireError::Truncated);
        let mut long = MAP_BYTES.to_vec();
        long.push(0);
        assert_eq!(Packet::new_checked(&long[..]).unwrap_err(), WireError::Trailing);
        // A count promising more slots than the bytes hold.
        let mut more = MAP_BYTES;
        more[3] = 3;
        assert_eq!(Packet::new_checked(&more[..]).unwrap_err(), WireError::Truncated);
        more[3] = 1;
        assert_eq!(Packet::new_checked(&more[..]).unwrap_err(), WireError::Trailing);
    }

    #[test]
    fn test_bad_header_and_bad_map() {
        let mut b = MAP_BYTES;
        b[0] = 2;
        assert_eq!(SlotMap::from_bytes(&b).unwrap_err(), WireError::UnknownFormat(2));
        let mut b = MAP_BYTES;
        b[1] = 0x80;
        assert_eq!(SlotMap::from_bytes(&b).unwrap_err(), WireError::ReservedFlags(0x80));
        // Second slot moved to 1030: only 30 guard gates between different owners.
        let mut b = MAP_BYTES;
        b[24 + 10 + 3] = 0x06;
        assert!(matches!(
            SlotMap::from_bytes(&b).unwrap_err(),
            WireError::Invalid(SlotMapError::GuardTooShort { index: 1, gap: 30, guard: 60 })
        ));
        // Frame length zero.
        let mut b = MAP_BYTES;
        b[16..20].copy_from_slice(&[0; 4]);
        assert_eq!(SlotMap::from_bytes(&b).unwrap_err(), WireError::Invalid(SlotMapError::EmptyFrame));
    }

    fn arb_map() -> impl Strategy<Value = SlotMap> {
        // Random (gap, len, owner) triples laid out in order; guard ≤ every gap between owners.
        (
            1u32..5000,
            0u32..50,
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec((0u32..100, 1u32..500, 0u16..4), 0..40),
        )
            .prop_map(|(extra, guard, version, from, parts)| {
                let mut slots: Vec<Slot> = Vec::new();
                let mut pos = 0u32;
                for (gap, len, owner) in parts {
                    let owner = OnuId(owner);
                    let gap = match slots.last() {
                        Some(p) if p.owner == owner => gap.max(1),
                        Some(_) => gap.max(guard),
                        None => gap,
                    };
                    slots.push(Slot { start: pos + gap, len, owner });
                    pos += gap + len;
                }
                let frame_len = pos + guard + extra;
                SlotMap::new(frame_len, guard, version, from, slots).unwrap()
            })
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = p.to_string();
                prop_assert_eq!(buffer_len(p.slot_count() as usize), bytes.len());
                if let Ok(m) = SlotMap::parse(&p) {
                    prop_assert_eq!(m.to_bytes(), bytes);
                }
            }
        }

        #[test]
        fn parser_never_panics_on_plausible_headers(count in 0u16..8, rest in proptest::collection::vec(any::<u8>(), 22..110)) {
            // Most random buffers fail the length check; these pass it more often.
            let mut bytes = vec![FORMAT, 0];
            bytes.extend_from_slice(&count.to_be_bytes());
            bytes.extend_from_slice(&rest);
            bytes.truncate(buffer_len(count as usize));
            let _ = SlotMap::from_bytes(&bytes);
        }

        #[test]
        fn emit_parse_roundtrip(m in arb_map()) {
            let bytes = m.to_bytes();
            prop_assert_eq!(bytes.len(), m.buffer_len());
            prop_assert_eq!(SlotMap::from_bytes(&bytes).unwrap(), m);
        }
    }
}
