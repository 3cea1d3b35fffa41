//! The 16-byte datagram header (PROTOCOL.md §3): a checked view and its validated form.

use core::fmt;

use super::{MAX_DATAGRAM_LEN, MAX_PAYLOAD_LEN, MessageType, ProtocolError, VERSION, be_u16, be_u32};

/// The two magic bytes every datagram starts with: ASCII `"QP"`.
pub const MAGIC: u16 = 0x5150;
/// Length of the header.
pub const HEADER_LEN: usize = field::SEQ.end;

/// Header flag: the host sets it on a retransmitted request (informative; the board treats
/// a retransmission like the original, see PROTOCOL.md §6.2).
pub const FLAG_RETRANSMIT: u8 = 0x01;
/// Every flag bit version 1 defines; the others must be zero.
pub const KNOWN_FLAGS: u8 = FLAG_RETRANSMIT;

mod field {
    use core::ops::Range;
    pub(super) const MAGIC: Range<usize> = 0..2;
    pub(super) const VERSION: usize = 2;
    pub(super) const TYPE: usize = 3;
    pub(super) const FLAGS: usize = 4;
    pub(super) const RESERVED: usize = 5;
    pub(super) const LENGTH: Range<usize> = 6..8;
    pub(super) const BOARD: Range<usize> = 8..10;
    pub(super) const EPOCH: Range<usize> = 10..12;
    pub(super) const SEQ: Range<usize> = 12..16;
}

/// A view of one datagram (header + payload) in a byte buffer.
///
/// The panic contract is smoltcp's: once [`Packet::new_checked`] returns `Ok`, no accessor
/// panics. Untrusted bytes must go through it; [`Packet::new_unchecked`] is for buffers the
/// caller sized itself (emission).
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it (accessors may panic on a short buffer).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the length fields and the header's constant parts (magic, version, reserved
    /// bits). After `Ok`, no accessor panics and [`payload`](Self::payload) is exactly the
    /// payload the header announces. The message type is checked by [`super::Repr::parse`].
    pub fn new_checked(buffer: T) -> Result<Self, ProtocolError> {
        let p = Self { buffer };
        p.check_len()?;
        if p.magic() != MAGIC {
            return Err(ProtocolError::BadMagic(p.magic()));
        }
        if p.version() != VERSION {
            return Err(ProtocolError::UnsupportedVersion(p.version()));
        }
        if p.flags() & !KNOWN_FLAGS != 0 || p.reserved() != 0 {
            return Err(ProtocolError::ReservedBits { field: "header flags/reserved" });
        }
        Ok(p)
    }

    /// Checks that the buffer holds the header and exactly the announced payload, and no
    /// more than [`MAX_DATAGRAM_LEN`] bytes.
    pub fn check_len(&self) -> Result<(), ProtocolError> {
        let len = self.buffer.as_ref().len();
        if len > MAX_DATAGRAM_LEN {
            return Err(ProtocolError::Oversized(len));
        }
        if len < HEADER_LEN {
            return Err(ProtocolError::Truncated { needed: HEADER_LEN, got: len });
        }
        let declared = self.payload_len() as usize;
        if declared > MAX_PAYLOAD_LEN {
            return Err(ProtocolError::FieldOutOfRange { field: "payload length" });
        }
        if declared != len - HEADER_LEN {
            return Err(ProtocolError::LengthMismatch { declared, actual: len - HEADER_LEN });
        }
        Ok(())
    }

    /// Length of the whole buffer (header + payload).
    pub fn datagram_len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Magic number (must be [`MAGIC`]).
    pub fn magic(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::MAGIC.start)
    }
    /// Protocol version of this datagram.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    /// Raw message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// Flag bits.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// The reserved byte (must be zero).
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED]
    }
    /// Declared payload length in bytes.
    pub fn payload_len(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::LENGTH.start)
    }
    /// Board identifier.
    pub fn board_id(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::BOARD.start)
    }
    /// The board's boot epoch.
    pub fn epoch(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::EPOCH.start)
    }
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be_u32(self.buffer.as_ref(), field::SEQ.start)
    }
    /// The payload (after [`new_checked`](Self::new_checked): exactly `payload_len` bytes).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes every header field (magic and the reserved byte included).
    pub fn set_header(&mut self, repr: &HeaderRepr, msg_type: MessageType, payload_len: u16) {
        let b = self.buffer.as_mut();
        b[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        b[field::VERSION] = VERSION;
        b[field::TYPE] = msg_type as u8;
        b[field::FLAGS] = repr.flags;
        b[field::RESERVED] = 0;
        b[field::LENGTH].copy_from_slice(&payload_len.to_be_bytes());
        b[field::BOARD].copy_from_slice(&repr.board_id.to_be_bytes());
        b[field::EPOCH].copy_from_slice(&repr.epoch.to_be_bytes());
        b[field::SEQ].copy_from_slice(&repr.seq.to_be_bytes());
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The validated header fields that vary between datagrams. Magic, version and payload
/// length are implied; the message type comes from the message (see [`super::Repr`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderRepr {
    /// Flag bits (only [`KNOWN_FLAGS`] may be set).
    pub flags: u8,
    /// The board this datagram is from or for.
    pub board_id: u16,
    /// The board's boot epoch (PROTOCOL.md §3.2).
    pub epoch: u16,
    /// Sequence number (PROTOCOL.md §6).
    pub seq: u32,
}

impl HeaderRepr {
    /// The header of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Self {
        Self { flags: packet.flags(), board_id: packet.board_id(), epoch: packet.epoch(), seq: packet.seq() }
    }

    /// Whether the RETRANSMIT flag is set.
    pub const fn retransmit(&self) -> bool {
        self.flags & FLAG_RETRANSMIT != 0
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    /// A one-line summary in the style of tcpdump (call only on a checked packet).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "qpon-hw v{} type={:#04x} board={} epoch={} seq={} len={}",
            self.version(),
            self.msg_type(),
            self.board_id(),
            self.epoch(),
            self.seq(),
            self.payload_len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written from PROTOCOL.md §3: a Start (0x12) for board 7, epoch 0x0102, seq 5, no payload.
    static START: [u8; 16] = [
        0x51, 0x50, // magic "QP"
        0x01, // version 1
        0x12, // type Start
        0x00, 0x00, // flags, reserved
        0x00, 0x00, // payload length 0
        0x00, 0x07, // board 7
        0x01, 0x02, // epoch
        0x00, 0x00, 0x00, 0x05, // seq 5
    ];

    #[test]
    fn test_deconstruct() {
        let p = Packet::new_checked(&START[..]).unwrap();
        assert_eq!((p.magic(), p.version(), p.msg_type(), p.flags()), (MAGIC, 1, 0x12, 0));
        assert_eq!((p.board_id(), p.epoch(), p.seq(), p.payload_len()), (7, 0x0102, 5, 0));
        assert!(p.payload().is_empty());
        let h = HeaderRepr::parse(&p);
        assert_eq!(h, HeaderRepr { flags: 0, board_id: 7, epoch: 0x0102, seq: 5 });
        assert_eq!(MessageType::from_u8(p.msg_type()), Some(MessageType::Start));
        assert_eq!(p.to_string(), "qpon-hw v1 type=0x12 board=7 epoch=258 seq=5 len=0");
    }

    #[test]
    fn test_impossible_len() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&START[..n]).unwrap_err(),
                ProtocolError::Truncated { needed: HEADER_LEN, got: n }
            );
        }
        let mut b = START.to_vec();
        b.push(0); // one byte more than the header announces
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ProtocolError::LengthMismatch { declared: 0, actual: 1 }
        );
        let mut b = START;
        b[7] = 1; // announces one byte that is not there
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ProtocolError::LengthMismatch { declared: 1, actual: 0 }
        );
        let big = vec![0u8; MAX_DATAGRAM_LEN + 1];
        assert_eq!(
            Packet::new_checked(&big[..]).unwrap_err(),
            ProtocolError::Oversized(MAX_DATAGRAM_LEN + 1)
        );
        // A length field above the maximum payload is refused even before the comparison.
        let mut b = START;
        b[6..8].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ProtocolError::FieldOutOfRange { field: "payload length" }
        );
    }

    #[test]
    fn test_bad_constants() {
        let mut b = START;
        b[0] = 0x52;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), ProtocolError::BadMagic(0x5250));
        for v in [0u8, 2, 0xff] {
            let mut b = START;
            b[2] = v;
            assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), ProtocolError::UnsupportedVersion(v));
        }
        let mut b = START;
        b[4] = 0x02;
        assert!(matches!(Packet::new_checked(&b[..]), Err(ProtocolError::ReservedBits { .. })));
        let mut b = START;
        b[5] = 0x01;
        assert!(matches!(Packet::new_checked(&b[..]), Err(ProtocolError::ReservedBits { .. })));
    }
}
