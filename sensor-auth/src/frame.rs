//! The authenticated frame: wire layout, a checked view and a validated representation.
//!
//! Follows smoltcp's two-level wire API: [`Frame`] is a view over a byte buffer whose
//! accessors never panic once [`Frame::new_checked`] returned `Ok`; [`FrameRepr`] is the
//! small, validated form ([`FrameRepr::parse`] never panics, [`FrameRepr::emit`] never
//! panics on a buffer of [`FrameRepr::buffer_len`] bytes). Untrusted input must go
//! through `new_checked`.
//!
//! # Layout (all integers big-endian)
//!
//! ```text
//!  0       1       2       3       4               6               8
//! +-------+-------+-------+-------+---------------+---------------+
//! |version| kind  | flags | class |   total_len   |  payload_len  |
//! +-------+-------+-------+-------+---------------+---------------+
//!  8                              12
//! +-------------------------------+
//! |        device (u32)           |
//! +-------------------------------+-------------------------------+
//! 12  seq (u64): sender's sequence number                          |
//! +---------------------------------------------------------------+
//! 20  request_seq (u64): the request a response answers; 0 in a request
//! +---------------------------------------------------------------+
//! 28  time_ms (u64): the sender's clock when it sealed the frame   |
//! +---------------------------------------------------------------+
//! 36  batch (u64): ordinal of the pad batch the pads come from     |
//! +-------------------------------+-------------------------------+
//! 44  pad_offset (u32): first byte of this frame's pad in the batch
//! +-------------------------------+  = 48 bytes (HEADER_LEN)
//! 48  batch descriptor, present iff flags bit 0 (DESCRIPTOR_LEN = 28):
//!     block UUID (16) | block offset (u64) | batch length (u32)
//! +---------------------------------------------------------------+
//!     payload (payload_len bytes)
//! +---------------------------------------------------------------+
//!     tag (total_len − header − descriptor − payload_len bytes, 4..=16)
//! +---------------------------------------------------------------+
//! ```
//!
//! * `version` = [`VERSION`]; `kind` 1 = request, 2 = response; `class` 1 = command,
//!   2 = reading; `flags` bit 0 = batch descriptor present, the other bits must be 0.
//! * `total_len` makes the frame self-delimiting ([`frame_len`] needs the first 8 bytes);
//!   it is at most [`MAX_FRAME_LEN`].
//! * The tag covers every byte before it (header, descriptor, payload): a changed bit
//!   anywhere changes the hashed message or the tag.
//! * The batch descriptor names the pool bytes the batch was reserved from, so the field
//!   end can mirror the reservation (`KeyPool::take_named`). Requests carry it until the
//!   control end has seen a response under that batch; responses never carry it. With
//!   keys from ETSI GS QKD 014 ([`crate::etsi`]) a batch is one key: the block UUID is the
//!   key ID, the block offset 0, the batch length the key length.

use core::fmt;

use uuid::Uuid;

/// Wire format version.
pub const VERSION: u8 = 1;
/// Fixed header length in bytes.
pub const HEADER_LEN: usize = field::PAD_OFFSET.end;
/// Length of the optional batch descriptor.
pub const DESCRIPTOR_LEN: usize = 28;
/// Hard maximum frame length in bytes (header, descriptor, payload and tag). A Modbus/TCP
/// ADU (≤ 260 bytes) fits with room to spare; a longer frame is refused unread.
pub const MAX_FRAME_LEN: usize = 1024;
/// Shortest tag on the wire (a GF(2^128) tag truncated to 32 bits).
pub const MIN_TAG_LEN: usize = 4;
/// Longest tag on the wire.
pub const MAX_TAG_LEN: usize = 16;
/// Longest payload that always fits (with a descriptor and a full tag).
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - HEADER_LEN - DESCRIPTOR_LEN - MAX_TAG_LEN;
/// Bytes [`frame_len`] needs to see.
pub const PREFIX_LEN: usize = field::PAYLOAD_LEN.end;

/// Flag: the batch descriptor is present.
const FLAG_DESCRIPTOR: u8 = 0x01;

mod field {
    use core::ops::Range;
    pub(super) const VERSION: usize = 0;
    pub(super) const KIND: usize = 1;
    pub(super) const FLAGS: usize = 2;
    pub(super) const CLASS: usize = 3;
    pub(super) const TOTAL_LEN: Range<usize> = 4..6;
    pub(super) const PAYLOAD_LEN: Range<usize> = 6..8;
    pub(super) const DEVICE: Range<usize> = 8..12;
    pub(super) const SEQ: Range<usize> = 12..20;
    pub(super) const REQUEST_SEQ: Range<usize> = 20..28;
    pub(super) const TIME_MS: Range<usize> = 28..36;
    pub(super) const BATCH: Range<usize> = 36..44;
    pub(super) const PAD_OFFSET: Range<usize> = 44..48;
    // Descriptor, relative to its start.
    pub(super) const D_BLOCK: Range<usize> = 0..16;
    pub(super) const D_OFFSET: Range<usize> = 16..24;
    pub(super) const D_LEN: Range<usize> = 24..28;
}

/// Why bytes are not a well-formed frame. Detail for logs; every variant fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the header or than `total_len` says.
    #[error("frame truncated: {got} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// More bytes than `total_len` says (the caller must split frames with [`frame_len`]).
    #[error("trailing bytes: frame says {total_len} bytes, buffer has {got}")]
    Trailing {
        /// `total_len` from the header.
        total_len: usize,
        /// Bytes given.
        got: usize,
    },
    /// Unknown wire version.
    #[error("unsupported frame version {0}")]
    Version(u8),
    /// `total_len` above [`MAX_FRAME_LEN`] or below the header.
    #[error("bad frame length {0} (max {MAX_FRAME_LEN})")]
    Length(usize),
    /// Unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Unknown class byte.
    #[error("unknown message class {0}")]
    Class(u8),
    /// Reserved flag bits set, or a descriptor on a response.
    #[error("bad flags {0:#04x}")]
    Flags(u8),
    /// `payload_len` does not leave a tag of 4..=16 bytes.
    #[error("payload length {payload_len} leaves a {tag_len}-byte tag (need 4..=16)")]
    TagLength {
        /// Payload length from the header.
        payload_len: usize,
        /// Tag length it implies (saturating).
        tag_len: usize,
    },
    /// `request_seq` set in a request.
    #[error("request carries a request_seq")]
    RequestSeq,
    /// Descriptor batch length impossible (shorter than a hash key and two pads, or
    /// a pad outside it).
    #[error("bad batch reference")]
    BatchRef,
}

/// Frame kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Control station → field device.
    Request,
    /// Field device → control station, answering one request.
    Response,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Request => 1,
            Kind::Response => 2,
        }
    }
    fn from_code(c: u8) -> Result<Self, FrameError> {
        match c {
            1 => Ok(Kind::Request),
            2 => Ok(Kind::Response),
            c => Err(FrameError::Kind(c)),
        }
    }
}

/// Message class; decides the tag length and whether a freshness deadline applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Writes, operate, restart: always full 128-bit tags and a freshness deadline.
    Command,
    /// Readings (and read requests): GF(2^128) tags may be truncated (≥ 32 bits).
    Reading,
}

impl Class {
    fn code(self) -> u8 {
        match self {
            Class::Command => 1,
            Class::Reading => 2,
        }
    }
    fn from_code(c: u8) -> Result<Self, FrameError> {
        match c {
            1 => Ok(Class::Command),
            2 => Ok(Class::Reading),
            c => Err(FrameError::Class(c)),
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Command => "command",
            Class::Reading => "reading",
        })
    }
}

/// Where a batch of pads was reserved in the pool: enough for the field end to mirror it.
/// (ETSI key source: `block` = key ID, `offset` = 0, `len` = key length.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchDescriptor {
    /// The pool block the batch was taken from.
    pub block: Uuid,
    /// First byte of the batch within the block.
    pub offset: u64,
    /// Batch length in bytes (hash key + pads).
    pub len: u32,
}

/// Total length of the frame that starts at `prefix`: `Ok(None)` when fewer than
/// [`PREFIX_LEN`] bytes are there yet, `Err` when the prefix is already malformed or the
/// frame would exceed [`MAX_FRAME_LEN`] (the stream must then be dropped: framing is lost).
pub fn frame_len(prefix: &[u8]) -> Result<Option<usize>, FrameError> {
    if prefix.len() < PREFIX_LEN {
        // Refuse a wrong version as early as the first byte, so garbage is not buffered.
        if let Some(&v) = prefix.first()
            && v != VERSION
        {
            return Err(FrameError::Version(v));
        }
        return Ok(None);
    }
    check_prefix(prefix).map(Some)
}

/// Checks the first [`PREFIX_LEN`] bytes; returns `total_len`.
fn check_prefix(b: &[u8]) -> Result<usize, FrameError> {
    if b[field::VERSION] != VERSION {
        return Err(FrameError::Version(b[field::VERSION]));
    }
    let kind = Kind::from_code(b[field::KIND])?;
    Class::from_code(b[field::CLASS])?;
    let flags = b[field::FLAGS];
    if flags & !FLAG_DESCRIPTOR != 0 || (kind == Kind::Response && flags & FLAG_DESCRIPTOR != 0) {
        return Err(FrameError::Flags(flags));
    }
    let total = be_u16(&b[field::TOTAL_LEN]) as usize;
    let fixed = HEADER_LEN + if flags & FLAG_DESCRIPTOR != 0 { DESCRIPTOR_LEN } else { 0 };
    if total > MAX_FRAME_LEN || total < fixed + MIN_TAG_LEN {
        return Err(FrameError::Length(total));
    }
    let payload_len = be_u16(&b[field::PAYLOAD_LEN]) as usize;
    let tag_len = total.saturating_sub(fixed + payload_len);
    if fixed + payload_len > total || !(MIN_TAG_LEN..=MAX_TAG_LEN).contains(&tag_len) {
        return Err(FrameError::TagLength { payload_len, tag_len });
    }
    Ok(total)
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

/// A checked view over one whole frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` after checking that it holds exactly one well-formed frame: after
    /// `Ok`, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        let b = buffer.as_ref();
        if b.len() < PREFIX_LEN {
            return Err(FrameError::Truncated { got: b.len(), need: PREFIX_LEN });
        }
        let total = check_prefix(b)?;
        if b.len() < total {
            return Err(FrameError::Truncated { got: b.len(), need: total });
        }
        if b.len() > total {
            return Err(FrameError::Trailing { total_len: total, got: b.len() });
        }
        let f = Self { buffer };
        if f.kind() == Kind::Request && f.request_seq() != 0 {
            return Err(FrameError::RequestSeq);
        }
        Ok(f)
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Frame kind.
    pub fn kind(&self) -> Kind {
        Kind::from_code(self.b()[field::KIND]).unwrap_or(Kind::Request)
    }
    /// Message class.
    pub fn class(&self) -> Class {
        Class::from_code(self.b()[field::CLASS]).unwrap_or(Class::Command)
    }
    /// Whether the batch descriptor is present.
    pub fn has_descriptor(&self) -> bool {
        self.b()[field::FLAGS] & FLAG_DESCRIPTOR != 0
    }
    /// Device id.
    pub fn device(&self) -> u32 {
        be_u32(&self.b()[field::DEVICE])
    }
    /// Sender's sequence number.
    pub fn seq(&self) -> u64 {
        be_u64(&self.b()[field::SEQ])
    }
    /// The request a response answers (0 in requests).
    pub fn request_seq(&self) -> u64 {
        be_u64(&self.b()[field::REQUEST_SEQ])
    }
    /// Sender's clock in ms.
    pub fn time_ms(&self) -> u64 {
        be_u64(&self.b()[field::TIME_MS])
    }
    /// Batch ordinal.
    pub fn batch(&self) -> u64 {
        be_u64(&self.b()[field::BATCH])
    }
    /// Offset of this frame's pad in its batch.
    pub fn pad_offset(&self) -> u32 {
        be_u32(&self.b()[field::PAD_OFFSET])
    }
    fn body_start(&self) -> usize {
        HEADER_LEN + if self.has_descriptor() { DESCRIPTOR_LEN } else { 0 }
    }
    /// The batch descriptor, if present.
    pub fn descriptor(&self) -> Option<BatchDescriptor> {
        if !self.has_descriptor() {
            return None;
        }
        let d = &self.b()[HEADER_LEN..HEADER_LEN + DESCRIPTOR_LEN];
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[field::D_BLOCK]);
        Some(BatchDescriptor {
            block: Uuid::from_bytes(id),
            offset: be_u64(&d[field::D_OFFSET]),
            len: be_u32(&d[field::D_LEN]),
        })
    }
    /// Payload length.
    pub fn payload_len(&self) -> usize {
        be_u16(&self.b()[field::PAYLOAD_LEN]) as usize
    }
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        let s = self.body_start();
        &self.b()[s..s + self.payload_len()]
    }
    /// The authenticated bytes: everything before the tag.
    pub fn authenticated(&self) -> &[u8] {
        &self.b()[..self.body_start() + self.payload_len()]
    }
    /// The tag.
    pub fn tag(&self) -> &[u8] {
        &self.b()[self.body_start() + self.payload_len()..]
    }
    /// The whole frame.
    pub fn as_bytes(&self) -> &[u8] {
        self.b()
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Frame<T> {
    /// A one-line, tcpdump-like summary (no tag or payload bytes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} dev={} seq={} req={} t={} batch={}@{} payload={}B tag={}B{}",
            self.kind(),
            self.class(),
            self.device(),
            self.seq(),
            self.request_seq(),
            self.time_ms(),
            self.batch(),
            self.pad_offset(),
            self.payload_len(),
            self.tag().len(),
            if self.has_descriptor() { " +descriptor" } else { "" }
        )
    }
}

/// The validated header of a frame (everything except payload and tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRepr {
    /// Request or response.
    pub kind: Kind,
    /// Message class.
    pub class: Class,
    /// Device id.
    pub device: u32,
    /// Sender's sequence number.
    pub seq: u64,
    /// For responses, the request answered; 0 in requests.
    pub request_seq: u64,
    /// Sender's clock (ms).
    pub time_ms: u64,
    /// Batch ordinal.
    pub batch: u64,
    /// This frame's pad offset within the batch.
    pub pad_offset: u32,
    /// Batch descriptor (requests only).
    pub descriptor: Option<BatchDescriptor>,
    /// Payload length.
    pub payload_len: usize,
    /// Tag length.
    pub tag_len: usize,
}

impl FrameRepr {
    /// Reads the header of a checked frame. Never panics.
    pub fn parse<T: AsRef<[u8]>>(f: &Frame<T>) -> Result<Self, FrameError> {
        let r = Self {
            kind: f.kind(),
            class: f.class(),
            device: f.device(),
            seq: f.seq(),
            request_seq: f.request_seq(),
            time_ms: f.time_ms(),
            batch: f.batch(),
            pad_offset: f.pad_offset(),
            descriptor: f.descriptor(),
            payload_len: f.payload_len(),
            tag_len: f.tag().len(),
        };
        if let Some(d) = r.descriptor {
            let pad_end = u64::from(r.pad_offset) + 2 * r.tag_len as u64;
            if (d.len as usize) < crate::batch::HASH_KEY_LEN + 2 * MIN_TAG_LEN
                || u64::from(r.pad_offset) < crate::batch::HASH_KEY_LEN as u64
                || pad_end > u64::from(d.len)
            {
                return Err(FrameError::BatchRef);
            }
        }
        Ok(r)
    }

    /// Bytes before the payload.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + if self.descriptor.is_some() { DESCRIPTOR_LEN } else { 0 }
    }

    /// Whole frame length.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len + self.tag_len
    }

    /// Appends the header (not payload or tag) to `out`. The caller guarantees the
    /// lengths are in range (the ends check before emitting); `total_len` is written from
    /// `payload_len` and `tag_len`.
    pub fn emit_header(&self, out: &mut Vec<u8>) {
        let total = self.buffer_len();
        debug_assert!(total <= MAX_FRAME_LEN);
        // Built in a fixed array and appended once (hot path: one copy, no reallocation
        // when `out` has capacity).
        let mut h = [0u8; HEADER_LEN + DESCRIPTOR_LEN];
        h[field::VERSION] = VERSION;
        h[field::KIND] = self.kind.code();
        h[field::FLAGS] = if self.descriptor.is_some() { FLAG_DESCRIPTOR } else { 0 };
        h[field::CLASS] = self.class.code();
        h[field::TOTAL_LEN].copy_from_slice(&(total as u16).to_be_bytes());
        h[field::PAYLOAD_LEN].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
        h[field::DEVICE].copy_from_slice(&self.device.to_be_bytes());
        h[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        h[field::REQUEST_SEQ].copy_from_slice(&self.request_seq.to_be_bytes());
        h[field::TIME_MS].copy_from_slice(&self.time_ms.to_be_bytes());
        h[field::BATCH].copy_from_slice(&self.batch.to_be_bytes());
        h[field::PAD_OFFSET].copy_from_slice(&self.pad_offset.to_be_bytes());
        if let Some(d) = self.descriptor {
            let x = &mut h[HEADER_LEN..];
            x[field::D_BLOCK].copy_from_slice(d.block.as_bytes());
            x[field::D_OFFSET].copy_from_slice(&d.offset.to_be_bytes());
            x[field::D_LEN].copy_from_slice(&d.len.to_be_bytes());
        }
        out.extend_from_slice(&h[..self.header_len()]);
    }

    /// Writes header and payload followed by a zero tag into `out` (cleared first).
    pub fn emit(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        self.emit_header(out);
        out.extend_from_slice(payload);
        out.resize(out.len() + self.tag_len, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn repr(descriptor: bool) -> FrameRepr {
        FrameRepr {
            kind: Kind::Request,
            class: Class::Reading,
            device: 0x0102_0304,
            seq: 7,
            request_seq: 0,
            time_ms: 1000,
            batch: 3,
            pad_offset: 16,
            descriptor: descriptor.then_some(BatchDescriptor {
                block: Uuid::from_u128(0xAA),
                offset: 64,
                len: 4096,
            }),
            payload_len: 5,
            tag_len: 4,
        }
    }

    #[test]
    fn emit_parse_round_trip() {
        for d in [false, true] {
            let r = repr(d);
            let mut out = Vec::new();
            r.emit(b"hello", &mut out);
            assert_eq!(out.len(), r.buffer_len());
            assert_eq!(frame_len(&out), Ok(Some(out.len())));
            let f = Frame::new_checked(&out[..]).unwrap();
            assert_eq!(FrameRepr::parse(&f).unwrap(), r);
            assert_eq!(f.payload(), b"hello");
            assert_eq!(f.tag(), &[0; 4]);
            assert_eq!(f.authenticated().len(), out.len() - 4);
            assert!(f.to_string().contains("seq=7"));
        }
    }

    #[test]
    fn golden_bytes() {
        let mut out = Vec::new();
        repr(false).emit(b"hello", &mut out);
        let head: [u8; 48] = [
            1, 1, 0, 2, 0, 57, 0, 5, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0x03, 0xE8, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 16,
        ];
        assert_eq!(&out[..48], &head);
        assert_eq!(out.len(), 48 + 5 + 4);
    }

    #[test]
    fn impossible_lengths_refused() {
        let mut out = Vec::new();
        repr(false).emit(b"hello", &mut out);
        assert_eq!(frame_len(&out[..3]), Ok(None));
        assert_eq!(frame_len(&[9]), Err(FrameError::Version(9)));
        // total_len beyond the maximum.
        let mut big = out.clone();
        big[4..6].copy_from_slice(&(MAX_FRAME_LEN as u16 + 1).to_be_bytes());
        assert_eq!(frame_len(&big), Err(FrameError::Length(MAX_FRAME_LEN + 1)));
        // payload_len eating the tag.
        let mut t = out.clone();
        t[6..8].copy_from_slice(&8u16.to_be_bytes());
        assert!(matches!(frame_len(&t), Err(FrameError::TagLength { .. })));
        // Truncated and trailing.
        assert!(matches!(Frame::new_checked(&out[..out.len() - 1]), Err(FrameError::Truncated { .. })));
        let mut long = out.clone();
        long.push(0);
        assert!(matches!(Frame::new_checked(&long[..]), Err(FrameError::Trailing { .. })));
        // Reserved flags; descriptor on a response; request_seq in a request.
        let mut fl = out.clone();
        fl[2] = 0x80;
        assert_eq!(frame_len(&fl), Err(FrameError::Flags(0x80)));
        let mut rs = out.clone();
        rs[27] = 1;
        assert_eq!(Frame::new_checked(&rs[..]).err(), Some(FrameError::RequestSeq));
        let mut resp = Vec::new();
        let mut r = repr(true);
        r.kind = Kind::Response;
        r.emit(b"x", &mut resp);
        assert_eq!(frame_len(&resp), Err(FrameError::Flags(1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = frame_len(&bytes);
            if let Ok(f) = Frame::new_checked(&bytes[..]) {
                let r = FrameRepr::parse(&f);
                let _ = f.to_string();
                prop_assert_eq!(f.authenticated().len() + f.tag().len(), bytes.len());
                if let Ok(r) = r { prop_assert_eq!(r.buffer_len(), bytes.len()); }
            }
        }

        #[test]
        fn random_tail_after_valid_header_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..200),
            total in 0u16..1100, pl in 0u16..1100, flags in 0u8..3, kind in 0u8..4, class in 0u8..4,
        ) {
            let mut b = vec![VERSION, kind, flags, class];
            b.extend_from_slice(&total.to_be_bytes());
            b.extend_from_slice(&pl.to_be_bytes());
            b.extend_from_slice(&tail);
            let _ = frame_len(&b);
            if let Ok(f) = Frame::new_checked(&b[..]) {
                let _ = FrameRepr::parse(&f);
                let _ = (f.payload(), f.tag(), f.descriptor());
            }
        }
    }
}
