//! The classical-channel frame: a checked view over bytes and its validated form.
//!
//! Every message between an OLT session and an ONU session travels in one frame. Layout
//! (version 1, all integers big-endian):
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 0 | version | 1; any other value is refused |
//! | 1 | kind | message type code ([`super::message::Kind`]) |
//! | 2..4 | onu | ONU id the session belongs to |
//! | 4 | flags | bit 0: upstream (ONU→OLT); bit 1: tagged; other bits must be 0 |
//! | 5 | tag_len | 0 when untagged; the family's tag length (1..=16) when tagged |
//! | 6..10 | body_len | body length in bytes, at most the receiver's limit |
//! | 10..18 | seq | per-direction frame sequence number, strictly increasing |
//! | 18..22 | epoch | Wegman–Carter hash-key epoch (0 when untagged) |
//! | 22..30 | pad | one-time-pad index in this direction's pad stream (0 when untagged) |
//! | 30.. | body | postcard-encoded message payload |
//! | end−tag_len.. | tag | Wegman–Carter tag over the block transcript up to here |
//!
//! The panic contract is smoltcp's: once [`Frame::new_checked`] returns `Ok`, no accessor
//! panics; untrusted bytes must go through it. [`FrameRepr::emit`] writes a frame into a
//! buffer it sizes itself.

use core::fmt;

/// Frame format version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = field::PAD.end;
/// Largest tag a frame can carry.
pub const MAX_TAG_LEN: usize = 16;

mod field {
    use core::ops::Range;
    pub(super) const VERSION: usize = 0;
    pub(super) const KIND: usize = 1;
    pub(super) const ONU: Range<usize> = 2..4;
    pub(super) const FLAGS: usize = 4;
    pub(super) const TAG_LEN: usize = 5;
    pub(super) const BODY_LEN: Range<usize> = 6..10;
    pub(super) const SEQ: Range<usize> = 10..18;
    pub(super) const EPOCH: Range<usize> = 18..22;
    pub(super) const PAD: Range<usize> = 22..30;
}

const FLAG_UPSTREAM: u8 = 1 << 0;
const FLAG_TAGGED: u8 = 1 << 1;

/// Why a frame was refused by the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header, or than header + body + tag.
    #[error("truncated frame")]
    Truncated,
    /// More bytes than header + body + tag.
    #[error("trailing bytes after the frame")]
    Trailing,
    /// A version this crate does not speak.
    #[error("unknown frame version {0}")]
    UnknownVersion(u8),
    /// Reserved flag bits set, or a tag length inconsistent with the tagged flag.
    #[error("malformed frame header")]
    Malformed,
    /// The body is longer than the receiver accepts.
    #[error("frame body of {0} bytes exceeds the limit")]
    Oversized(u32),
}

/// Direction of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    /// OLT → ONU.
    Downstream = 0,
    /// ONU → OLT.
    Upstream = 1,
}

impl Direction {
    /// The other direction.
    pub fn reverse(self) -> Self {
        match self {
            Direction::Downstream => Direction::Upstream,
            Direction::Upstream => Direction::Downstream,
        }
    }
}

/// A read-only view of a frame in a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Checks the buffer holds exactly one well-formed frame whose body is at most
    /// `max_body` bytes. After `Ok`, no accessor panics.
    pub fn new_checked(buffer: T, max_body: u32) -> Result<Self, FrameError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        if b[field::VERSION] != VERSION {
            return Err(FrameError::UnknownVersion(b[field::VERSION]));
        }
        let flags = b[field::FLAGS];
        let tag_len = b[field::TAG_LEN] as usize;
        if flags & !(FLAG_UPSTREAM | FLAG_TAGGED) != 0
            || (flags & FLAG_TAGGED != 0) != (tag_len != 0)
            || tag_len > MAX_TAG_LEN
        {
            return Err(FrameError::Malformed);
        }
        let body_len = u32::from_be_bytes(b[field::BODY_LEN].try_into().map_err(|_| FrameError::Truncated)?);
        if body_len > max_body {
            return Err(FrameError::Oversized(body_len));
        }
        let total = HEADER_LEN + body_len as usize + tag_len;
        if b.len() < total {
            return Err(FrameError::Truncated);
        }
        if b.len() > total {
            return Err(FrameError::Trailing);
        }
        let f = Self { buffer };
        if !f.tagged() && (f.epoch() != 0 || f.pad_index() != 0) {
            return Err(FrameError::Malformed);
        }
        Ok(f)
    }

    fn be<const N: usize>(&self, r: core::ops::Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buffer.as_ref()[r]);
        out
    }

    /// Message type code.
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    /// ONU id.
    pub fn onu(&self) -> u16 {
        u16::from_be_bytes(self.be(field::ONU))
    }

    /// Direction.
    pub fn direction(&self) -> Direction {
        if self.buffer.as_ref()[field::FLAGS] & FLAG_UPSTREAM != 0 {
            Direction::Upstream
        } else {
            Direction::Downstream
        }
    }

    /// True when the frame carries a tag.
    pub fn tagged(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_TAGGED != 0
    }

    /// Frame sequence number.
    pub fn seq(&self) -> u64 {
        u64::from_be_bytes(self.be(field::SEQ))
    }

    /// Hash-key epoch (0 when untagged).
    pub fn epoch(&self) -> u32 {
        u32::from_be_bytes(self.be(field::EPOCH))
    }

    /// Pad index (0 when untagged).
    pub fn pad_index(&self) -> u64 {
        u64::from_be_bytes(self.be(field::PAD))
    }

    fn body_len(&self) -> usize {
        u32::from_be_bytes(self.be(field::BODY_LEN)) as usize
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.body_len()]
    }

    /// The bytes the tag covers: header and body.
    pub fn authenticated_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + self.body_len()]
    }

    /// The tag (empty when untagged).
    pub fn tag(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN + self.body_len()..]
    }
}

/// The validated header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRepr {
    /// Message type code.
    pub kind: u8,
    /// ONU id.
    pub onu: u16,
    /// Direction.
    pub direction: Direction,
    /// Sequence number.
    pub seq: u64,
    /// `Some((epoch, pad index, tag length))` for a tagged frame.
    pub auth: Option<(u32, u64, u8)>,
}

impl FrameRepr {
    /// The header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(f: &Frame<T>) -> Self {
        Self {
            kind: f.kind(),
            onu: f.onu(),
            direction: f.direction(),
            seq: f.seq(),
            auth: f.tagged().then(|| (f.epoch(), f.pad_index(), f.tag().len() as u8)),
        }
    }

    /// Appends header and body to `out`, leaving room for nothing else: the caller
    /// appends the tag (of the announced length) after computing it over what was written.
    ///
    /// # Panics
    /// If the body exceeds `u32::MAX` bytes or the tag length is out of range (caller
    /// misuse).
    pub fn emit_header_and_body(&self, body: &[u8], out: &mut Vec<u8>) {
        let body_len = u32::try_from(body.len()).expect("frame body over 4 GiB");
        let (flags_tag, tag_len, epoch, pad) = match self.auth {
            Some((e, p, t)) => {
                assert!(t >= 1 && t as usize <= MAX_TAG_LEN, "tag length {t} out of range");
                (FLAG_TAGGED, t, e, p)
            }
            None => (0, 0, 0, 0),
        };
        let flags = flags_tag | if self.direction == Direction::Upstream { FLAG_UPSTREAM } else { 0 };
        out.reserve(HEADER_LEN + body.len() + tag_len as usize);
        out.push(VERSION);
        out.push(self.kind);
        out.extend_from_slice(&self.onu.to_be_bytes());
        out.push(flags);
        out.push(tag_len);
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&pad.to_be_bytes());
        out.extend_from_slice(body);
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Frame<T> {
    /// A one-line summary in the style of tcpdump (never the body).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "qpon v{} onu={} {:?} seq={} kind={} len={}",
            VERSION,
            self.onu(),
            self.direction(),
            self.seq(),
            self.kind(),
            self.body().len()
        )?;
        if self.tagged() {
            write!(f, " epoch={} pad={} tag_len={}", self.epoch(), self.pad_index(), self.tag().len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static FRAME_BYTES: [u8; 30 + 3 + 4] = [
        0x01, 0x07, 0x00, 0x2a, 0x03, 0x04, 0x00, 0x00, 0x00,
        0x03, // version kind onu flags tag_len body_len
        0, 0, 0, 0, 0, 0, 0x01, 0x02, // seq = 258
        0, 0, 0, 0x05, // epoch 5
        0, 0, 0, 0, 0, 0, 0, 0x09, // pad 9
        0xaa, 0xbb, 0xcc, // body
        0xde, 0xad, 0xbe, 0xef, // tag
    ];

    #[test]
    fn test_deconstruct() {
        let f = Frame::new_checked(&FRAME_BYTES[..], 1024).unwrap();
        assert_eq!((f.kind(), f.onu(), f.direction(), f.seq()), (7, 42, Direction::Upstream, 258));
        assert!(f.tagged());
        assert_eq!((f.epoch(), f.pad_index()), (5, 9));
        assert_eq!(f.body(), &[0xaa, 0xbb, 0xcc]);
        assert_eq!(f.tag(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(f.authenticated_bytes().len(), 33);
    }

    #[test]
    fn test_emit() {
        let repr =
            FrameRepr { kind: 7, onu: 42, direction: Direction::Upstream, seq: 258, auth: Some((5, 9, 4)) };
        let mut out = Vec::new();
        repr.emit_header_and_body(&[0xaa, 0xbb, 0xcc], &mut out);
        out.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&out[..], &FRAME_BYTES[..]);
        assert_eq!(FrameRepr::parse(&Frame::new_checked(&out, 1024).unwrap()), repr);
    }

    #[test]
    fn test_impossible_len() {
        assert_eq!(Frame::new_checked(&FRAME_BYTES[..29], 1024).unwrap_err(), FrameError::Truncated);
        assert_eq!(Frame::new_checked(&FRAME_BYTES[..36], 1024).unwrap_err(), FrameError::Truncated);
        let mut long = FRAME_BYTES.to_vec();
        long.push(0);
        assert_eq!(Frame::new_checked(&long[..], 1024).unwrap_err(), FrameError::Trailing);
        assert_eq!(Frame::new_checked(&FRAME_BYTES[..], 2).unwrap_err(), FrameError::Oversized(3));
        let mut v2 = FRAME_BYTES;
        v2[0] = 2;
        assert_eq!(Frame::new_checked(&v2[..], 1024).unwrap_err(), FrameError::UnknownVersion(2));
        let mut bad = FRAME_BYTES;
        bad[4] |= 0x80;
        assert_eq!(Frame::new_checked(&bad[..], 1024).unwrap_err(), FrameError::Malformed);
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(f) = Frame::new_checked(&bytes[..], 64) {
                let _ = FrameRepr::parse(&f);
                let _ = f.to_string();
                prop_assert_eq!(f.authenticated_bytes().len() + f.tag().len(), bytes.len());
            }
        }

        #[test]
        fn emit_parse_roundtrip(kind: u8, onu: u16, up: bool, seq: u64, auth in proptest::option::of((any::<u32>(), any::<u64>(), 1u8..=16)), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let repr = FrameRepr { kind, onu, direction: if up { Direction::Upstream } else { Direction::Downstream }, seq, auth };
            let mut out = Vec::new();
            repr.emit_header_and_body(&body, &mut out);
            out.resize(out.len() + auth.map_or(0, |a| a.2 as usize), 0);
            let f = Frame::new_checked(&out, 64).unwrap();
            prop_assert_eq!(FrameRepr::parse(&f), repr);
            prop_assert_eq!(f.body(), &body[..]);
        }
    }
}
