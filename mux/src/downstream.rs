//! Downstream framing with per-ONU AES-128-CTR encryption, key index and key switching.
//!
//! Every ONU sees the whole downstream, so the OLT encrypts each ONU's frames under that
//! ONU's own key (DESIGN.md §1). This module follows the XG(S)-PON discipline of ITU-T
//! G.987.3 / G.9807.1 §15.4 (REFERENCE.md §5), simplified:
//!
//! - **Cipher.** AES-128 in counter mode over the frame payload. The header travels in
//!   clear (the ONU needs it to find its key and counter). CTR gives confidentiality only,
//!   as in XGS-PON: no integrity; whatever needs authenticity is authenticated above.
//! - **Key index.** A 2-bit field in every header: `00` clear, `01` key slot 1, `10` key
//!   slot 2, `11` reserved (refused on parse). Two slots let the OLT load the next key into
//!   the idle slot while the current one is in use, then switch index at a superframe
//!   boundary.
//! - **Counter block.** Built from the ONU id, the superframe counter, the frame's index
//!   within that superframe, and a block counter (layout below), so no (key, counter block)
//!   pair ever repeats.
//!
//! ## Frame layout (all integers big-endian)
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 0..2 | ONU id | the frame's destination (and the key's owner) |
//! | 2 | control | bits 7..6 key index; bits 5..0 reserved, must be 0 |
//! | 3 | reserved | must be 0 |
//! | 4..10 | superframe | 48-bit superframe counter of the frame |
//! | 10..12 | frame index | position of this frame among the ONU's frames in that superframe |
//! | 12..14 | length | payload length in bytes (0..=65 535) |
//! | 14..22 | pad reference | one-time-pad frames only (control bit 5 set): pad run (u32) and offset in it (u32) |
//! | 14.. or 22.. | payload | `length` bytes, encrypted unless the key index is clear |
//!
//! Control bit 5 marks a **one-time-pad frame** (a flow marked for information-theoretic
//! secrecy, see [`crate::otp`]): its key index must be `00`, and its payload is XORed with
//! pool bytes named by the pad reference instead of an AES keystream.
//!
//! A buffer may hold more bytes than the frame (frames are concatenated in a superframe):
//! [`Frame::total_len`] says where the next one starts. The panic contract is smoltcp's:
//! once [`Frame::new_checked`] returns `Ok`, no accessor panics.
//!
//! ## Counter block (128 bits, big-endian)
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | ONU id |
//! | 2..8 | superframe counter (48 bits) |
//! | 8..10 | frame index within the superframe |
//! | 10..12 | zero (reserved) |
//! | 12..16 | block counter, 0 for the payload's first 16-byte block |
//!
//! CTR is [`ctr::Ctr32BE`]: only the last 32 bits count. A payload is at most
//! [`MAX_PAYLOAD`] bytes = 4096 blocks < 2^32, so the block counter never wraps into the
//! fixed 96 bits, and within a frame every block gets its own counter block.
//!
//! **Why no counter block repeats under one key.** A key belongs to one ONU and one slot
//! of one [`DownstreamKeys`] (the pool hands out each key once). The sender allocates frame
//! positions `(superframe, frame index)` strictly increasing ([`DownstreamKeys::seal`]
//! refuses a superframe earlier than the last one used and refuses a 65 537th frame in one
//! superframe), so two frames under one key never share `(superframe, frame index)`; the
//! fixed 96 bits then differ, and blocks within a frame differ in the block counter. The
//! superframe counter is 48 bits (≈ 1100 years of 125 µs superframes); a superframe beyond
//! it is refused ([`DownstreamError::SuperframeOutOfRange`]) rather than wrapped. Nothing
//! here ever wraps silently: every exhausted counter is a typed error (fail closed). The ONU
//! id in the block is defence in depth: even if two ONUs were ever handed the same key,
//! their keystreams would differ.
//!
//! Differences from G.9807.1: the real counter block duplicates a (superframe, intra-frame
//! block) counter and counts blocks over the whole PHY frame; here each XGEM-like frame
//! carries its own position, which keeps the code sans-IO and independent of PHY framing.
//! Key exchange (Key_Control / Key_Switching_Time over the authenticated channel) is the
//! caller's; this module only holds the key state and applies it.
//!
//! ## Key switching
//!
//! [`DownstreamKeys`] is the same state at both ends. [`DownstreamKeys::install`] puts a key
//! (from the caller, later the kms pool with purpose Downstream) into the idle slot with the
//! superframe from which it applies. The sender ([`DownstreamKeys::seal`]) always uses the
//! newest key whose first superframe has been reached, so it switches exactly there. The
//! receiver ([`DownstreamKeys::open_in_place`]) picks the key the header's index names:
//! the new key from its first superframe on, the old key until `overlap` superframes after
//! the switch. [`DownstreamKeys::advance_to`] (driven by the caller's trusted superframe
//! clock, never by frame contents) erases the old key after the overlap window; the AES key
//! schedule is zeroized on drop.

use core::fmt;

use aes::Aes128;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::slot_map::OnuId;

/// Length of the frame header (of a keyed or clear frame; a one-time-pad frame adds
/// [`PAD_REF_LEN`]).
pub const HEADER_LEN: usize = field::LENGTH.end;
/// Length of a one-time-pad frame's pad reference, after the header.
pub const PAD_REF_LEN: usize = 8;
/// Largest payload a frame can carry (the length field is 16 bits).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// Largest superframe counter (48 bits); a later superframe is refused, never wrapped.
pub const MAX_SUPERFRAME: u64 = (1 << 48) - 1;
/// AES block size in bytes.
const BLOCK: usize = 16;

mod field {
    use core::ops::Range;
    pub(super) const ONU: Range<usize> = 0..2;
    pub(super) const CONTROL: usize = 2;
    pub(super) const RESERVED: usize = 3;
    pub(super) const SUPERFRAME: Range<usize> = 4..10;
    pub(super) const FRAME_INDEX: Range<usize> = 10..12;
    pub(super) const LENGTH: Range<usize> = 12..14;
    pub(super) const PAD_RUN: Range<usize> = 14..18;
    pub(super) const PAD_OFFSET: Range<usize> = 18..22;
}

const KEY_INDEX_SHIFT: u8 = 6;
/// Control bit 5: a one-time-pad frame.
const CONTROL_OTP: u8 = 0b0010_0000;
const CONTROL_RESERVED_MASK: u8 = 0b0001_1111;

/// Where a one-time-pad frame's pad lies: `offset` bytes into pad run `run` (the pool use
/// that delivered the run to both ends, see [`crate::otp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PadRef {
    /// The pad run (the sequence number of the pool use that announced it).
    pub run: u32,
    /// First pad byte within the run.
    pub offset: u32,
}

/// The 2-bit key index of a frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyIndex {
    /// `00`: payload in clear.
    Clear,
    /// `01`: key slot 1.
    Slot1,
    /// `10`: key slot 2.
    Slot2,
}

impl KeyIndex {
    /// Decodes the two bits; `11` (reserved) and values above 3 give `None`.
    pub fn from_bits(bits: u8) -> Option<KeyIndex> {
        match bits {
            0 => Some(KeyIndex::Clear),
            1 => Some(KeyIndex::Slot1),
            2 => Some(KeyIndex::Slot2),
            _ => None,
        }
    }

    /// The two bits of this index.
    pub fn bits(self) -> u8 {
        match self {
            KeyIndex::Clear => 0,
            KeyIndex::Slot1 => 1,
            KeyIndex::Slot2 => 2,
        }
    }

    /// Slot number 0 or 1 for a key slot, `None` for clear.
    fn slot(self) -> Option<usize> {
        match self {
            KeyIndex::Clear => None,
            KeyIndex::Slot1 => Some(0),
            KeyIndex::Slot2 => Some(1),
        }
    }

    fn of_slot(slot: usize) -> KeyIndex {
        if slot == 0 { KeyIndex::Slot1 } else { KeyIndex::Slot2 }
    }
}

impl fmt::Display for KeyIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyIndex::Clear => f.write_str("clear"),
            KeyIndex::Slot1 => f.write_str("key 1"),
            KeyIndex::Slot2 => f.write_str("key 2"),
        }
    }
}

/// Why bytes were refused as a frame, or a frame could not be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the header, or than the header plus the announced payload.
    #[error("truncated downstream frame")]
    Truncated,
    /// Key index `11`, which is reserved.
    #[error("reserved key index 11")]
    ReservedKeyIndex,
    /// Reserved header bits set (control bits 4..0, or the reserved byte).
    #[error("reserved header bits set")]
    ReservedBits,
    /// A one-time-pad frame with a key index other than `00`.
    #[error("one-time-pad frame with a key index")]
    PadWithKeyIndex,
    /// A superframe counter above [`MAX_SUPERFRAME`] cannot be encoded.
    #[error("superframe {0} beyond the 48-bit counter")]
    SuperframeOutOfRange(u64),
}

/// Why a frame was not sealed or opened, or a key not installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownstreamError {
    /// The bytes are not a well-formed frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A payload longer than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds the maximum")]
    PayloadTooLong(usize),
    /// The superframe counter would pass [`MAX_SUPERFRAME`]: refused, never wrapped.
    #[error("superframe {0} beyond the 48-bit counter")]
    SuperframeOutOfRange(u64),
    /// All 65 536 frame indices of this superframe are used under this ONU's keys.
    #[error("frame indices of superframe {0} exhausted")]
    FrameIndexExhausted(u64),
    /// The sender was asked for a superframe before the last one it used.
    #[error("superframe {requested} is before the last one used ({last})")]
    SuperframeWentBack {
        /// The last superframe a frame was sealed in.
        last: u64,
        /// The superframe asked for.
        requested: u64,
    },
    /// No key applies at this superframe: nothing is sent (never in clear).
    #[error("no downstream key active at superframe {0}")]
    NoKey(u64),
    /// The frame names a key slot that is empty (never filled, or erased).
    #[error("unknown or erased key index ({0})")]
    UnknownKey(KeyIndex),
    /// The frame names a key before the superframe from which that key applies.
    #[error("{index} applies from superframe {from}, frame is in {superframe}")]
    KeyNotYetActive {
        /// The key index in the header.
        index: KeyIndex,
        /// The key's first superframe.
        from: u64,
        /// The frame's superframe.
        superframe: u64,
    },
    /// The frame names the old key after its overlap window ended.
    #[error("{index} expired before superframe {superframe}")]
    KeyExpired {
        /// The key index in the header.
        index: KeyIndex,
        /// The frame's superframe.
        superframe: u64,
    },
    /// The frame is addressed to another ONU.
    #[error("frame for ONU {got}, this is ONU {expected}")]
    WrongOnu {
        /// This end's ONU.
        expected: OnuId,
        /// The header's ONU.
        got: OnuId,
    },
    /// A clear frame where encryption is required.
    #[error("clear frame refused: encryption required")]
    ClearRefused,
    /// No idle slot: both slots hold keys still in use (advance past the overlap first).
    #[error("no idle key slot")]
    SlotBusy,
    /// A new key must apply strictly after every key already installed.
    #[error("new key from superframe {from} is not after the installed key's {current}")]
    NotAfterCurrent {
        /// The new key's first superframe.
        from: u64,
        /// The latest installed key's first superframe.
        current: u64,
    },
    /// A one-time-pad frame given to the key path (open it with [`crate::otp::OtpPads`]),
    /// or a keyed frame given to the pads.
    #[error("wrong frame kind: {0}")]
    WrongKind(&'static str),
    /// No pad run holds enough unused bytes for the payload: nothing is sent.
    #[error("one-time pad exhausted: {0} bytes needed")]
    PadExhausted(usize),
    /// The frame names a pad run this end does not hold (never delivered, or dropped).
    #[error("unknown pad run {0}")]
    UnknownPad(u32),
    /// The frame's pad bytes were used before (a replay) or lie beyond the run.
    #[error("pad bytes {offset}+{len} of run {run} unusable (used before, or beyond the run)")]
    PadUnusable {
        /// The run.
        run: u32,
        /// First byte named.
        offset: u32,
        /// Bytes named.
        len: usize,
    },
    /// Pad runs must arrive in announcement order (increasing run numbers).
    #[error("pad run {got} after run {last}")]
    PadRunOutOfOrder {
        /// The newest run held.
        last: u32,
        /// The run offered.
        got: u32,
    },
    /// The output buffer cannot hold the frame.
    #[error("buffer of {got} bytes, frame needs {needed}")]
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
}

/// A view of a downstream frame in a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it (accessors may panic on a short buffer). Use
    /// only on buffers this code sized itself; untrusted bytes go through [`Frame::new_checked`].
    pub fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer after [`Frame::check`]: then no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, FrameError> {
        let frame = Frame::new_unchecked(buffer);
        frame.check()?;
        Ok(frame)
    }

    /// Checks lengths (header, pad reference, announced payload), the key index and the
    /// reserved bits.
    pub fn check(&self) -> Result<(), FrameError> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        if data.len() < self.header_len() + usize::from(self.payload_len()) {
            return Err(FrameError::Truncated);
        }
        let control = data[field::CONTROL];
        if control & CONTROL_RESERVED_MASK != 0 || data[field::RESERVED] != 0 {
            return Err(FrameError::ReservedBits);
        }
        match self.key_index() {
            None => return Err(FrameError::ReservedKeyIndex),
            Some(k) if self.is_otp() && k != KeyIndex::Clear => return Err(FrameError::PadWithKeyIndex),
            Some(_) => {}
        }
        Ok(())
    }

    /// Whether this is a one-time-pad frame (control bit 5).
    pub fn is_otp(&self) -> bool {
        self.buffer.as_ref()[field::CONTROL] & CONTROL_OTP != 0
    }

    /// Header length: [`HEADER_LEN`], plus [`PAD_REF_LEN`] for a one-time-pad frame.
    pub fn header_len(&self) -> usize {
        if self.is_otp() { HEADER_LEN + PAD_REF_LEN } else { HEADER_LEN }
    }

    /// The pad reference of a one-time-pad frame.
    pub fn pad_ref(&self) -> Option<PadRef> {
        if !self.is_otp() {
            return None;
        }
        let d = self.buffer.as_ref();
        let u = |r: core::ops::Range<usize>| {
            u32::from_be_bytes([d[r.start], d[r.start + 1], d[r.start + 2], d[r.start + 3]])
        };
        Some(PadRef { run: u(field::PAD_RUN), offset: u(field::PAD_OFFSET) })
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination ONU.
    pub fn onu_id(&self) -> OnuId {
        let d = &self.buffer.as_ref()[field::ONU];
        OnuId(u16::from_be_bytes([d[0], d[1]]))
    }

    /// The key index; `None` for the reserved `11` (never after [`Frame::new_checked`]).
    pub fn key_index(&self) -> Option<KeyIndex> {
        KeyIndex::from_bits(self.buffer.as_ref()[field::CONTROL] >> KEY_INDEX_SHIFT)
    }

    /// The superframe counter (48 bits).
    pub fn superframe(&self) -> u64 {
        let d = &self.buffer.as_ref()[field::SUPERFRAME];
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(d);
        u64::from_be_bytes(b)
    }

    /// The frame's index among its ONU's frames in the superframe.
    pub fn frame_index(&self) -> u16 {
        let d = &self.buffer.as_ref()[field::FRAME_INDEX];
        u16::from_be_bytes([d[0], d[1]])
    }

    /// The announced payload length.
    pub fn payload_len(&self) -> u16 {
        let d = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([d[0], d[1]])
    }

    /// Header plus payload: where the next frame of a concatenation starts.
    pub fn total_len(&self) -> usize {
        self.header_len() + usize::from(self.payload_len())
    }

    /// The payload (exactly [`Frame::payload_len`] bytes; trailing bytes excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination ONU.
    pub fn set_onu_id(&mut self, onu: OnuId) {
        self.buffer.as_mut()[field::ONU].copy_from_slice(&onu.0.to_be_bytes());
    }

    /// Sets the key index and clears the one-time-pad flag, the reserved bits and byte.
    pub fn set_key_index(&mut self, index: KeyIndex) {
        let d = self.buffer.as_mut();
        d[field::CONTROL] = index.bits() << KEY_INDEX_SHIFT;
        d[field::RESERVED] = 0;
    }

    /// Makes this a one-time-pad frame (key index `00`) with pad reference `pad`. The
    /// buffer must hold [`HEADER_LEN`] + [`PAD_REF_LEN`] bytes.
    pub fn set_pad_ref(&mut self, pad: PadRef) {
        let d = self.buffer.as_mut();
        d[field::CONTROL] = CONTROL_OTP;
        d[field::RESERVED] = 0;
        d[field::PAD_RUN].copy_from_slice(&pad.run.to_be_bytes());
        d[field::PAD_OFFSET].copy_from_slice(&pad.offset.to_be_bytes());
    }

    /// Sets the superframe counter (only its low 48 bits are stored).
    pub fn set_superframe(&mut self, superframe: u64) {
        self.buffer.as_mut()[field::SUPERFRAME].copy_from_slice(&superframe.to_be_bytes()[2..]);
    }

    /// Sets the frame index.
    pub fn set_frame_index(&mut self, index: u16) {
        self.buffer.as_mut()[field::FRAME_INDEX].copy_from_slice(&index.to_be_bytes());
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// A parsed, validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRepr {
    /// Destination ONU.
    pub onu: OnuId,
    /// Key index.
    pub key_index: KeyIndex,
    /// Superframe counter (≤ [`MAX_SUPERFRAME`]).
    pub superframe: u64,
    /// Frame index within the superframe.
    pub frame_index: u16,
    /// Payload length.
    pub payload_len: u16,
    /// The pad reference of a one-time-pad frame (then `key_index` is clear).
    pub pad: Option<PadRef>,
}

impl FrameRepr {
    /// Parses a header from a frame, checking it first.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<FrameRepr, FrameError> {
        frame.check()?;
        Ok(FrameRepr {
            onu: frame.onu_id(),
            key_index: frame.key_index().ok_or(FrameError::ReservedKeyIndex)?,
            superframe: frame.superframe(),
            frame_index: frame.frame_index(),
            payload_len: frame.payload_len(),
            pad: frame.pad_ref(),
        })
    }

    /// Header length (with the pad reference of a one-time-pad frame).
    pub fn header_len(&self) -> usize {
        if self.pad.is_some() { HEADER_LEN + PAD_REF_LEN } else { HEADER_LEN }
    }

    /// Bytes the whole frame occupies.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + usize::from(self.payload_len)
    }

    /// Writes the header into `frame` (the payload is the caller's, via
    /// [`Frame::payload_mut`]). Refuses an out-of-range superframe and a buffer shorter
    /// than [`FrameRepr::buffer_len`]; never panics.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) -> Result<(), FrameError> {
        if self.superframe > MAX_SUPERFRAME {
            return Err(FrameError::SuperframeOutOfRange(self.superframe));
        }
        if frame.buffer.as_ref().len() < self.buffer_len() {
            return Err(FrameError::Truncated);
        }
        if self.pad.is_some() && self.key_index != KeyIndex::Clear {
            return Err(FrameError::PadWithKeyIndex);
        }
        frame.set_onu_id(self.onu);
        match self.pad {
            Some(pad) => frame.set_pad_ref(pad),
            None => frame.set_key_index(self.key_index),
        }
        frame.set_superframe(self.superframe);
        frame.set_frame_index(self.frame_index);
        frame.set_payload_len(self.payload_len);
        Ok(())
    }
}

/// A 128-bit downstream key. Zeroized on drop; its `Debug` does not show the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DownstreamKey([u8; 16]);

impl DownstreamKey {
    /// Wraps key bytes (from the caller: later the kms pool, purpose Downstream).
    pub fn from_bytes(bytes: [u8; 16]) -> DownstreamKey {
        DownstreamKey(bytes)
    }

    fn cipher(&self) -> Aes128 {
        Aes128::new(&self.0.into())
    }
}

impl fmt::Debug for DownstreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DownstreamKey(..)")
    }
}

/// The counter block of a frame's first payload block (layout in the module docs).
pub fn counter_block(onu: OnuId, superframe: u64, frame_index: u16) -> Result<[u8; 16], DownstreamError> {
    if superframe > MAX_SUPERFRAME {
        return Err(DownstreamError::SuperframeOutOfRange(superframe));
    }
    let mut block = [0u8; 16];
    block[0..2].copy_from_slice(&onu.0.to_be_bytes());
    block[2..8].copy_from_slice(&superframe.to_be_bytes()[2..]);
    block[8..10].copy_from_slice(&frame_index.to_be_bytes());
    // 10..12 reserved zero, 12..16 block counter starting at 0.
    Ok(block)
}

/// XORs the AES-128-CTR keystream starting at `counter` into `data`. The counter's last 32
/// bits are the block counter (big-endian); the first 96 bits stay fixed. Refuses data
/// that would make the 32-bit block counter wrap.
fn xor_keystream(cipher: &Aes128, counter: [u8; 16], data: &mut [u8]) -> Result<(), DownstreamError> {
    let start = u64::from(u32::from_be_bytes([counter[12], counter[13], counter[14], counter[15]]));
    let blocks = data.len().div_ceil(BLOCK) as u64;
    if start + blocks > 1 << 32 {
        return Err(DownstreamError::PayloadTooLong(data.len()));
    }
    let mut ctr = ctr::Ctr32BE::<&Aes128>::from_core(ctr::CtrCore::inner_iv_init(cipher, &counter.into()));
    ctr.try_apply_keystream(data).map_err(|_| DownstreamError::PayloadTooLong(data.len()))
}

/// Encrypts or decrypts (the same operation) a payload of the frame at
/// (`onu`, `superframe`, `frame_index`) under `key`. This is the primitive
/// [`DownstreamKeys`] uses; it does not track positions, so the caller must never use one
/// position twice under one key.
pub fn apply_keystream(
    key: &DownstreamKey,
    onu: OnuId,
    superframe: u64,
    frame_index: u16,
    data: &mut [u8],
) -> Result<(), DownstreamError> {
    if data.len() > MAX_PAYLOAD {
        return Err(DownstreamError::PayloadTooLong(data.len()));
    }
    let counter = counter_block(onu, superframe, frame_index)?;
    xor_keystream(&key.cipher(), counter, data)
}

/// Policy of a [`DownstreamKeys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeysConfig {
    /// Superframes after a switch during which the receiver still accepts the old key;
    /// then [`DownstreamKeys::advance_to`] erases it. 0 at the OLT (it never sends with the
    /// old key after the switch).
    pub overlap_superframes: u64,
    /// Refuse clear frames addressed to this ONU ([`DownstreamError::ClearRefused`]).
    pub require_encryption: bool,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig { overlap_superframes: 8, require_encryption: true }
    }
}

struct Slot {
    /// Key schedule; zeroized on drop (aes `zeroize` feature).
    cipher: Aes128,
    /// First superframe under this key.
    from: u64,
}

/// One ONU's downstream key state, the same type at the OLT (sealing) and the ONU
/// (opening). Holds at most two keys, one per key-index slot.
pub struct DownstreamKeys {
    onu: OnuId,
    config: KeysConfig,
    slots: [Option<Slot>; 2],
    /// Last (superframe, frame index) sealed: positions only move forward.
    last_tx: Option<(u64, u16)>,
    /// Latest superframe passed to `advance_to`.
    now: u64,
}

impl fmt::Debug for DownstreamKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = |s: &Option<Slot>| s.as_ref().map(|s| s.from);
        f.debug_struct("DownstreamKeys")
            .field("onu", &self.onu)
            .field("config", &self.config)
            .field("slot1_from", &from(&self.slots[0]))
            .field("slot2_from", &from(&self.slots[1]))
            .field("last_tx", &self.last_tx)
            .field("now", &self.now)
            .finish()
    }
}

impl DownstreamKeys {
    /// Empty key state for `onu`.
    pub fn new(onu: OnuId, config: KeysConfig) -> DownstreamKeys {
        DownstreamKeys { onu, config, slots: [None, None], last_tx: None, now: 0 }
    }

    /// The ONU these keys belong to.
    pub fn onu(&self) -> OnuId {
        self.onu
    }

    /// The policy.
    pub fn config(&self) -> KeysConfig {
        self.config
    }

    /// First superframe of the key in `index`, if that slot holds one.
    pub fn key_from(&self, index: KeyIndex) -> Option<u64> {
        index.slot().and_then(|s| self.slots[s].as_ref()).map(|s| s.from)
    }

    /// Installs `key` into the idle slot, applying from `from_superframe`; returns the slot's
    /// index (announce it with the superframe to the peer). Refused when both slots are in
    /// use, or when `from_superframe` is not after every installed key's.
    pub fn install(&mut self, key: DownstreamKey, from_superframe: u64) -> Result<KeyIndex, DownstreamError> {
        if from_superframe > MAX_SUPERFRAME {
            return Err(DownstreamError::SuperframeOutOfRange(from_superframe));
        }
        let latest = self.slots.iter().flatten().map(|s| s.from).max();
        if let Some(current) = latest
            && from_superframe <= current
        {
            return Err(DownstreamError::NotAfterCurrent { from: from_superframe, current });
        }
        let idle = self.slots.iter().position(Option::is_none).ok_or(DownstreamError::SlotBusy)?;
        self.slots[idle] = Some(Slot { cipher: key.cipher(), from: from_superframe });
        Ok(KeyIndex::of_slot(idle))
    }

    /// The receiver's form of [`DownstreamKeys::install`]: puts `key` into the slot the
    /// sender announced (`index`, a key slot), applying from `from_superframe`. The slot
    /// must be idle or hold an *older* key than the other slot (that key's overlap window
    /// is cut short: it is erased now); the slot holding the newest key is never replaced.
    /// `from_superframe` must be after every installed key's. Nothing changes on `Err`.
    pub fn install_at(
        &mut self,
        index: KeyIndex,
        key: DownstreamKey,
        from_superframe: u64,
    ) -> Result<(), DownstreamError> {
        if from_superframe > MAX_SUPERFRAME {
            return Err(DownstreamError::SuperframeOutOfRange(from_superframe));
        }
        let Some(slot) = index.slot() else { return Err(DownstreamError::UnknownKey(index)) };
        let latest = self.slots.iter().flatten().map(|s| s.from).max();
        if let Some(current) = latest
            && from_superframe <= current
        {
            return Err(DownstreamError::NotAfterCurrent { from: from_superframe, current });
        }
        let newest_here = match (&self.slots[slot], &self.slots[1 - slot]) {
            (Some(mine), Some(other)) => mine.from >= other.from,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newest_here {
            return Err(DownstreamError::SlotBusy);
        }
        self.slots[slot] = Some(Slot { cipher: key.cipher(), from: from_superframe });
        Ok(())
    }

    /// The key index the sender uses at `superframe`: the newest key already applying.
    pub fn active_at(&self, superframe: u64) -> Option<KeyIndex> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().filter(|s| s.from <= superframe).map(|s| (i, s.from)))
            .max_by_key(|&(_, from)| from)
            .map(|(i, _)| KeyIndex::of_slot(i))
    }

    /// The superframe from which the key in `slot` stops being accepted: the newer key's
    /// first superframe plus the overlap, or `None` while no newer key applies.
    fn expiry(&self, slot: usize) -> Option<u64> {
        let mine = self.slots[slot].as_ref()?.from;
        let other = self.slots[1 - slot].as_ref()?.from;
        (other > mine).then(|| other.saturating_add(self.config.overlap_superframes))
    }

    /// Moves this end's superframe clock to `superframe` (from the caller's trusted clock,
    /// never from frame contents) and erases (zeroizes) an old key whose overlap window has
    /// ended; returns the erased slot.
    pub fn advance_to(&mut self, superframe: u64) -> Option<KeyIndex> {
        self.now = self.now.max(superframe);
        for slot in 0..2 {
            if self.expiry(slot).is_some_and(|end| self.now >= end) {
                // Dropping the Aes128 key schedule zeroizes it.
                self.slots[slot] = None;
                return Some(KeyIndex::of_slot(slot));
            }
        }
        None
    }

    /// Seals `payload` into a new frame in `superframe` under the key active there, written
    /// to the start of `out`; returns the frame's length. The frame index is allocated
    /// here (0 for the first frame of a superframe, then +1), so no position repeats.
    pub fn seal_into(
        &mut self,
        superframe: u64,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DownstreamError> {
        let len = u16::try_from(payload.len()).map_err(|_| DownstreamError::PayloadTooLong(payload.len()))?;
        if superframe > MAX_SUPERFRAME {
            return Err(DownstreamError::SuperframeOutOfRange(superframe));
        }
        let frame_index = match self.last_tx {
            None => 0,
            Some((last, _)) if superframe < last => {
                return Err(DownstreamError::SuperframeWentBack { last, requested: superframe });
            }
            Some((last, index)) if superframe == last => {
                index.checked_add(1).ok_or(DownstreamError::FrameIndexExhausted(superframe))?
            }
            Some(_) => 0,
        };
        let key_index = self.active_at(superframe).ok_or(DownstreamError::NoKey(superframe))?;
        let Some(slot) = key_index.slot().and_then(|s| self.slots[s].as_ref()) else {
            return Err(DownstreamError::NoKey(superframe));
        };
        let repr =
            FrameRepr { onu: self.onu, key_index, superframe, frame_index, payload_len: len, pad: None };
        let needed = repr.buffer_len();
        let Some(buf) = out.get_mut(..needed) else {
            return Err(DownstreamError::BufferTooSmall { needed, got: out.len() });
        };
        let mut frame = Frame::new_unchecked(buf);
        repr.emit(&mut frame)?;
        let body = frame.payload_mut();
        body.copy_from_slice(payload);
        let counter = counter_block(self.onu, superframe, frame_index)?;
        if let Err(e) = xor_keystream(&slot.cipher, counter, body) {
            body.zeroize();
            return Err(e);
        }
        self.last_tx = Some((superframe, frame_index));
        Ok(needed)
    }

    /// [`DownstreamKeys::seal_into`] into a new vector.
    pub fn seal(&mut self, superframe: u64, payload: &[u8]) -> Result<Vec<u8>, DownstreamError> {
        let mut out = vec![0u8; HEADER_LEN + payload.len().min(MAX_PAYLOAD)];
        let n = self.seal_into(superframe, payload, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Opens the frame at the start of `buf` in place: checks it, checks it is for this
    /// ONU and names a key valid at its superframe, and decrypts its payload (which then
    /// lies at `buf[HEADER_LEN..repr.buffer_len()]`). A clear frame is returned as is unless
    /// encryption is required. Does not change the key state.
    pub fn open_in_place(&self, buf: &mut [u8]) -> Result<FrameRepr, DownstreamError> {
        let repr = FrameRepr::parse(&Frame::new_unchecked(&*buf))?;
        if repr.onu != self.onu {
            return Err(DownstreamError::WrongOnu { expected: self.onu, got: repr.onu });
        }
        if repr.pad.is_some() {
            return Err(DownstreamError::WrongKind("a one-time-pad frame is opened with the pads"));
        }
        let Some(slot_no) = repr.key_index.slot() else {
            if self.config.require_encryption {
                return Err(DownstreamError::ClearRefused);
            }
            return Ok(repr);
        };
        let Some(slot) = self.slots[slot_no].as_ref() else {
            return Err(DownstreamError::UnknownKey(repr.key_index));
        };
        if repr.superframe < slot.from {
            return Err(DownstreamError::KeyNotYetActive {
                index: repr.key_index,
                from: slot.from,
                superframe: repr.superframe,
            });
        }
        if self.expiry(slot_no).is_some_and(|end| repr.superframe >= end) {
            return Err(DownstreamError::KeyExpired { index: repr.key_index, superframe: repr.superframe });
        }
        let counter = counter_block(repr.onu, repr.superframe, repr.frame_index)?;
        let body = &mut buf[HEADER_LEN..repr.buffer_len()];
        xor_keystream(&slot.cipher, counter, body)?;
        Ok(repr)
    }

    /// Opens a copy of the frame at the start of `bytes`; returns its header and plaintext.
    pub fn open(&self, bytes: &[u8]) -> Result<(FrameRepr, Vec<u8>), DownstreamError> {
        let frame = Frame::new_checked(bytes)?;
        let mut buf = bytes[..frame.total_len()].to_vec();
        let repr = self.open_in_place(&mut buf)?;
        buf.drain(..HEADER_LEN);
        Ok((repr, buf))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn key(n: u8) -> DownstreamKey {
        DownstreamKey::from_bytes([n; 16])
    }

    const NIST_KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
    const NIST_CTR: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    const NIST_PT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                           30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710";
    const NIST_CT: &str = "874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff
                           5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee";

    #[test]
    fn install_at_replaces_only_an_older_key() {
        let mut rx = DownstreamKeys::new(OnuId(3), KeysConfig::default());
        rx.install_at(KeyIndex::Slot1, key(1), 10).unwrap();
        // The slot with the newest key is never replaced.
        assert_eq!(rx.install_at(KeyIndex::Slot1, key(2), 20).unwrap_err(), DownstreamError::SlotBusy);
        rx.install_at(KeyIndex::Slot2, key(2), 20).unwrap();
        assert!(matches!(
            rx.install_at(KeyIndex::Slot1, key(3), 15),
            Err(DownstreamError::NotAfterCurrent { .. })
        ));
        // Slot 1 holds the older key: it may be replaced (its overlap cut short).
        rx.install_at(KeyIndex::Slot1, key(3), 30).unwrap();
        assert_eq!(rx.key_from(KeyIndex::Slot1), Some(30));
        assert_eq!(rx.key_from(KeyIndex::Slot2), Some(20));
        assert!(rx.install_at(KeyIndex::Clear, key(4), 40).is_err());
    }

    fn nist_key() -> DownstreamKey {
        DownstreamKey::from_bytes(hex(NIST_KEY).try_into().unwrap())
    }

    /// NIST SP 800-38A F.5.1/F.5.2 (CTR-AES128) through the same keystream function the
    /// frame path uses.
    #[test]
    fn nist_sp800_38a_f5_1_through_counter_path() {
        let cipher = nist_key().cipher();
        let ctr: [u8; 16] = hex(NIST_CTR).try_into().unwrap();
        let mut data = hex(NIST_PT);
        xor_keystream(&cipher, ctr, &mut data).unwrap();
        assert_eq!(data, hex(NIST_CT));
        xor_keystream(&cipher, ctr, &mut data).unwrap();
        assert_eq!(data, hex(NIST_PT));
        // Partial last block and the stream position carry across blocks.
        let mut short = hex(NIST_PT)[..37].to_vec();
        xor_keystream(&cipher, ctr, &mut short).unwrap();
        assert_eq!(short, hex(NIST_CT)[..37]);
    }

    /// The frame primitive feeds the counter block documented in the module docs: a frame
    /// whose position encodes to the NIST counter's first 12 bytes gets the NIST keystream
    /// shifted by the NIST counter's block number.
    #[test]
    fn counter_block_layout_and_frame_path() {
        let cb = counter_block(OnuId(0x0102), 0x0304_0506_0708, 0x090a).unwrap();
        assert_eq!(cb, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            counter_block(OnuId(0), MAX_SUPERFRAME + 1, 0),
            Err(DownstreamError::SuperframeOutOfRange(MAX_SUPERFRAME + 1))
        );

        // apply_keystream(onu, sf, idx) == CTR keystream from counter_block(onu, sf, idx).
        let k = nist_key();
        let (onu, sf, idx) = (OnuId(0xf0f1), 0xf2f3_f4f5_f6f7, 0xf8f9);
        let mut via_frame = hex(NIST_PT);
        apply_keystream(&k, onu, sf, idx, &mut via_frame).unwrap();
        let mut via_ctr = hex(NIST_PT);
        let mut expected_cb = hex("f0f1f2f3f4f5f6f7f8f9 0000 00000000");
        assert_eq!(counter_block(onu, sf, idx).unwrap().to_vec(), expected_cb);
        let mut c = ctr::Ctr128BE::<Aes128>::new(&hex(NIST_KEY)[..].try_into().unwrap(), &{
            let a: [u8; 16] = expected_cb.clone().try_into().unwrap();
            a.into()
        });
        c.apply_keystream(&mut via_ctr);
        assert_eq!(via_frame, via_ctr);

        // And a block-by-block check: block i uses counter block with last 32 bits = i.
        let cipher = k.cipher();
        for i in 0..4u8 {
            expected_cb[15] = i;
            let mut b = aes::Block::from(<[u8; 16]>::try_from(expected_cb.clone()).unwrap());
            aes::cipher::BlockCipherEncrypt::encrypt_block(&cipher, &mut b);
            let pt = &hex(NIST_PT)[16 * i as usize..16 * (i as usize + 1)];
            let ct: Vec<u8> = pt.iter().zip(b.iter()).map(|(p, k)| p ^ k).collect();
            assert_eq!(ct, via_frame[16 * i as usize..16 * (i as usize + 1)]);
        }
    }

    use aes::cipher::KeyIvInit;

    #[test]
    fn frame_repr_round_trip_and_golden_bytes() {
        let repr = FrameRepr {
            onu: OnuId(0x1234),
            key_index: KeyIndex::Slot2,
            superframe: 0x0000_abcd_ef01,
            frame_index: 7,
            payload_len: 3,
            pad: None,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        let mut f = Frame::new_unchecked(&mut buf[..]);
        repr.emit(&mut f).unwrap();
        f.payload_mut().copy_from_slice(b"abc");
        assert_eq!(buf, hex("1234 80 00 0000abcdef01 0007 0003 616263"));
        let f = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(FrameRepr::parse(&f).unwrap(), repr);
        assert_eq!(f.payload(), b"abc");
        // A one-time-pad frame: control bit 5, key index 00, pad reference after the header.
        let otp = FrameRepr { key_index: KeyIndex::Clear, pad: Some(PadRef { run: 9, offset: 16 }), ..repr };
        let mut obuf = vec![0u8; otp.buffer_len()];
        let mut of = Frame::new_unchecked(&mut obuf[..]);
        otp.emit(&mut of).unwrap();
        of.payload_mut().copy_from_slice(b"abc");
        assert_eq!(obuf, hex("1234 20 00 0000abcdef01 0007 0003 00000009 00000010 616263"));
        let of = Frame::new_checked(&obuf[..]).unwrap();
        assert_eq!((FrameRepr::parse(&of).unwrap(), of.payload()), (otp, &b"abc"[..]));
        assert_eq!(Frame::new_checked(&obuf[..obuf.len() - 1]).unwrap_err(), FrameError::Truncated);
        obuf[2] |= 0x40;
        assert_eq!(Frame::new_checked(&obuf[..]).unwrap_err(), FrameError::PadWithKeyIndex);
        let keyed_pad = FrameRepr { key_index: KeyIndex::Slot1, ..otp };
        assert_eq!(
            keyed_pad.emit(&mut Frame::new_unchecked(&mut obuf[..])),
            Err(FrameError::PadWithKeyIndex)
        );
        // Reserved key index, reserved bits, truncation.
        let mut bad = buf.clone();
        bad[2] = 0xc0;
        assert_eq!(Frame::new_checked(&bad[..]).unwrap_err(), FrameError::ReservedKeyIndex);
        bad[2] = 0x81;
        assert_eq!(Frame::new_checked(&bad[..]).unwrap_err(), FrameError::ReservedBits);
        let mut bad = buf.clone();
        bad[3] = 1;
        assert_eq!(Frame::new_checked(&bad[..]).unwrap_err(), FrameError::ReservedBits);
        assert_eq!(Frame::new_checked(&buf[..buf.len() - 1]).unwrap_err(), FrameError::Truncated);
        assert_eq!(Frame::new_checked(&buf[..5]).unwrap_err(), FrameError::Truncated);
        // Emit refuses short buffers and out-of-range superframes.
        let mut short = [0u8; HEADER_LEN];
        assert_eq!(repr.emit(&mut Frame::new_unchecked(&mut short[..])), Err(FrameError::Truncated));
        let far = FrameRepr { superframe: MAX_SUPERFRAME + 1, ..repr };
        assert_eq!(
            far.emit(&mut Frame::new_unchecked(&mut buf[..])),
            Err(FrameError::SuperframeOutOfRange(MAX_SUPERFRAME + 1))
        );
    }

    fn pair(onu: OnuId, overlap: u64) -> (DownstreamKeys, DownstreamKeys) {
        let olt = DownstreamKeys::new(onu, KeysConfig { overlap_superframes: 0, require_encryption: true });
        let onu =
            DownstreamKeys::new(onu, KeysConfig { overlap_superframes: overlap, require_encryption: true });
        (olt, onu)
    }

    #[test]
    fn key_switch_old_then_new_then_erased() {
        let (mut olt, mut onu) = pair(OnuId(5), 4);
        assert_eq!(olt.seal(0, b"x"), Err(DownstreamError::NoKey(0)));
        assert_eq!(olt.install(key(1), 0), Ok(KeyIndex::Slot1));
        assert_eq!(onu.install(key(1), 0), Ok(KeyIndex::Slot1));
        let before = olt.seal(9, b"before switch").unwrap();
        // Next key announced for superframe 10, loaded into the idle slot at both ends.
        assert_eq!(olt.install(key(2), 10), Ok(KeyIndex::Slot2));
        assert_eq!(onu.install(key(2), 10), Ok(KeyIndex::Slot2));
        let still_old = olt.seal(9, b"still old").unwrap();
        let after = olt.seal(10, b"after switch").unwrap();
        assert_eq!(Frame::new_checked(&before[..]).unwrap().key_index(), Some(KeyIndex::Slot1));
        assert_eq!(Frame::new_checked(&still_old[..]).unwrap().key_index(), Some(KeyIndex::Slot1));
        assert_eq!(Frame::new_checked(&after[..]).unwrap().key_index(), Some(KeyIndex::Slot2));
        assert_eq!(onu.open(&before).unwrap().1, b"before switch");
        assert_eq!(onu.open(&still_old).unwrap().1, b"still old");
        assert_eq!(onu.open(&after).unwrap().1, b"after switch");
        // The OLT (overlap 0) erases its old key at the switch.
        assert_eq!(olt.advance_to(10), Some(KeyIndex::Slot1));
        assert_eq!(olt.key_from(KeyIndex::Slot1), None);
        // The ONU keeps the old key during the overlap window, then erases it.
        assert_eq!(onu.advance_to(13), None);
        assert_eq!(onu.open(&before).unwrap().1, b"before switch");
        assert_eq!(onu.advance_to(14), Some(KeyIndex::Slot1));
        assert_eq!(onu.open(&before), Err(DownstreamError::UnknownKey(KeyIndex::Slot1)));
        assert_eq!(onu.open(&after).unwrap().1, b"after switch");
        // A third key goes into the freed slot 1.
        assert_eq!(olt.install(key(3), 20), Ok(KeyIndex::Slot1));
        assert_eq!(onu.install(key(3), 20), Ok(KeyIndex::Slot1));
        let third = olt.seal(20, b"third").unwrap();
        assert_eq!(onu.open(&third).unwrap().1, b"third");
        // The new key is not accepted before its superframe; a frame naming the old key
        // after the window is refused even before advance_to erased it.
        let mut early = third.clone();
        Frame::new_unchecked(&mut early[..]).set_superframe(19);
        assert_eq!(
            onu.open(&early),
            Err(DownstreamError::KeyNotYetActive { index: KeyIndex::Slot1, from: 20, superframe: 19 })
        );
        let mut late = after.clone();
        Frame::new_unchecked(&mut late[..]).set_superframe(24);
        assert_eq!(
            onu.open(&late),
            Err(DownstreamError::KeyExpired { index: KeyIndex::Slot2, superframe: 24 })
        );
    }

    #[test]
    fn refusals_are_typed() {
        let (mut olt, onu) = pair(OnuId(1), 2);
        olt.install(key(1), 0).unwrap();
        // Unknown key index at the ONU (never installed).
        let f = olt.seal(0, b"secret").unwrap();
        assert_eq!(onu.open(&f), Err(DownstreamError::UnknownKey(KeyIndex::Slot1)));
        // Wrong ONU.
        let mut other = DownstreamKeys::new(OnuId(2), KeysConfig::default());
        other.install(key(1), 0).unwrap();
        assert_eq!(other.open(&f), Err(DownstreamError::WrongOnu { expected: OnuId(2), got: OnuId(1) }));
        // Clear frames: refused where encryption is required, passed through otherwise.
        let repr = FrameRepr {
            onu: OnuId(1),
            key_index: KeyIndex::Clear,
            superframe: 0,
            frame_index: 0,
            payload_len: 2,
            pad: None,
        };
        let mut clear = vec![0u8; repr.buffer_len()];
        let mut fr = Frame::new_unchecked(&mut clear[..]);
        repr.emit(&mut fr).unwrap();
        fr.payload_mut().copy_from_slice(b"hi");
        assert_eq!(onu.open(&clear), Err(DownstreamError::ClearRefused));
        let lax =
            DownstreamKeys::new(OnuId(1), KeysConfig { overlap_superframes: 0, require_encryption: false });
        assert_eq!(lax.open(&clear).unwrap().1, b"hi");
        // Installation rules.
        assert_eq!(olt.install(key(2), 0), Err(DownstreamError::NotAfterCurrent { from: 0, current: 0 }));
        olt.install(key(2), 5).unwrap();
        assert_eq!(olt.install(key(3), 9), Err(DownstreamError::SlotBusy));
        assert_eq!(
            olt.install(key(3), MAX_SUPERFRAME + 1),
            Err(DownstreamError::SuperframeOutOfRange(MAX_SUPERFRAME + 1))
        );
        // Sender fail-closed paths.
        assert_eq!(
            olt.seal(MAX_SUPERFRAME + 1, b""),
            Err(DownstreamError::SuperframeOutOfRange(MAX_SUPERFRAME + 1))
        );
        assert_eq!(
            olt.seal(0, &vec![0; MAX_PAYLOAD + 1]),
            Err(DownstreamError::PayloadTooLong(MAX_PAYLOAD + 1))
        );
        olt.seal(3, b"").unwrap();
        assert_eq!(olt.seal(2, b""), Err(DownstreamError::SuperframeWentBack { last: 3, requested: 2 }));
        olt.last_tx = Some((4, u16::MAX - 1));
        olt.seal(4, b"last index").unwrap();
        assert_eq!(olt.seal(4, b"one too many"), Err(DownstreamError::FrameIndexExhausted(4)));
        assert_eq!(olt.last_tx, Some((4, u16::MAX)));
        let f = olt.seal(5, b"next superframe").unwrap();
        assert_eq!(Frame::new_checked(&f[..]).unwrap().frame_index(), 0);
        let mut small = [0u8; HEADER_LEN + 2];
        assert_eq!(
            olt.seal_into(6, b"abc", &mut small),
            Err(DownstreamError::BufferTooSmall { needed: HEADER_LEN + 3, got: HEADER_LEN + 2 })
        );
        // Largest payload and superframe work.
        let (mut a, mut b) = pair(OnuId(9), 0);
        a.install(key(7), MAX_SUPERFRAME).unwrap();
        b.install(key(7), MAX_SUPERFRAME).unwrap();
        let big = vec![0xa5; MAX_PAYLOAD];
        let f = a.seal(MAX_SUPERFRAME, &big).unwrap();
        assert_eq!(b.open(&f).unwrap().1, big);
    }

    /// Over a long run with several key switches, every 16-byte block sealed under one
    /// key has its own counter block.
    #[test]
    fn no_counter_block_repeats_under_a_key() {
        let (mut olt, mut onu) = pair(OnuId(3), 2);
        let mut generation = 0u32;
        let mut current_gen = [u32::MAX; 2];
        let mut seen: HashSet<(u32, [u8; 16])> = HashSet::new();
        let mut blocks = 0usize;
        for sf in 0..1000u64 {
            if sf % 250 == 0 {
                let idx = olt.install(key((sf / 250) as u8 + 1), sf).unwrap();
                onu.install(key((sf / 250) as u8 + 1), sf).unwrap();
                current_gen[idx.slot().unwrap()] = generation;
                generation += 1;
            }
            olt.advance_to(sf);
            onu.advance_to(sf);
            for n in 0..(sf % 7) as usize {
                let payload = vec![n as u8; 1 + (sf as usize * 13 + n * 31) % 100];
                let f = olt.seal(sf, &payload).unwrap();
                let repr = FrameRepr::parse(&Frame::new_checked(&f[..]).unwrap()).unwrap();
                let g = current_gen[repr.key_index.slot().unwrap()];
                let base = counter_block(repr.onu, repr.superframe, repr.frame_index).unwrap();
                for b in 0..payload.len().div_ceil(16) as u32 {
                    let mut cb = base;
                    cb[12..].copy_from_slice(&b.to_be_bytes());
                    assert!(seen.insert((g, cb)), "counter block reused at sf {sf}");
                    blocks += 1;
                }
                assert_eq!(onu.open(&f).unwrap().1, payload);
            }
        }
        assert_eq!(generation, 4);
        assert_eq!(seen.len(), blocks);
        assert!(blocks > 8000, "{blocks}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(
            payload in proptest::collection::vec(any::<u8>(), 0..600),
            sf in 0..=MAX_SUPERFRAME,
            prior in 0u16..4,
            onu_id in any::<u16>(),
            k in any::<[u8; 16]>(),
        ) {
            let (mut olt, onu) = {
                let (mut a, mut b) = pair(OnuId(onu_id), 1);
                a.install(DownstreamKey::from_bytes(k), 0).unwrap();
                b.install(DownstreamKey::from_bytes(k), 0).unwrap();
                (a, b)
            };
            for _ in 0..prior {
                olt.seal(sf, b"").unwrap();
            }
            let f = olt.seal(sf, &payload).unwrap();
            let repr = FrameRepr::parse(&Frame::new_checked(&f[..]).unwrap()).unwrap();
            prop_assert_eq!(repr.frame_index, prior);
            prop_assert_eq!(repr.superframe, sf);
            if payload.len() >= 16 {
                prop_assert_ne!(&f[HEADER_LEN..], &payload[..]);
            }
            let (r, pt) = onu.open(&f).unwrap();
            prop_assert_eq!(r, repr);
            prop_assert_eq!(pt, payload);
        }

        #[test]
        fn new_checked_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut keys = DownstreamKeys::new(OnuId(u16::from_be_bytes([bytes.first().copied().unwrap_or(0), bytes.get(1).copied().unwrap_or(0)])), KeysConfig::default());
            keys.install(key(1), 0).unwrap();
            keys.install(key(2), 1).unwrap();
            if let Ok(f) = Frame::new_checked(&bytes[..]) {
                let _ = (f.onu_id(), f.key_index(), f.superframe(), f.frame_index(), f.payload());
                prop_assert!(f.total_len() <= bytes.len());
                prop_assert!(FrameRepr::parse(&f).is_ok());
            }
            let _ = keys.open(&bytes);
            let mut copy = bytes.clone();
            let _ = keys.open_in_place(&mut copy);
        }
    }

    /// Throughput of the seal path (not asserted). Run with
    /// `cargo test -p qpon-mux --release downstream::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        let (mut olt, mut onu) = pair(OnuId(1), 0);
        olt.install(key(1), 0).unwrap();
        onu.install(key(1), 0).unwrap();
        let payload = vec![0x5a; 1500];
        let mut out = vec![0u8; HEADER_LEN + 1500];
        let frames = 400_000u64;
        let t = std::time::Instant::now();
        for i in 0..frames {
            olt.seal_into(i / 1000, &payload, &mut out).unwrap();
        }
        let s = t.elapsed().as_secs_f64();
        let bytes = (frames * 1500) as f64;
        println!(
            "seal 1500 B frames: {:.0} MB/s = {:.2} Gbit/s ({:.0} ns/frame)",
            bytes / s / 1e6,
            bytes * 8.0 / s / 1e9,
            s * 1e9 / frames as f64
        );
        let t = std::time::Instant::now();
        for _ in 0..frames {
            // Decrypting the same frame repeatedly: CTR is an involution, cost is the same.
            onu.open_in_place(&mut out).unwrap();
        }
        let s = t.elapsed().as_secs_f64();
        println!("open 1500 B frames: {:.0} MB/s = {:.2} Gbit/s", bytes / s / 1e6, bytes * 8.0 / s / 1e9);
        std::hint::black_box(&out);
    }
}
