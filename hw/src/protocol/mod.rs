//! The board wire protocol, version 1 (specified in `hw/PROTOCOL.md`; section numbers
//! below refer to it).
//!
//! One datagram = a 16-byte [`header`] + one message payload. All integers are
//! big-endian. A datagram is at most [`MAX_DATAGRAM_LEN`] = 1472 bytes, so it fits one UDP
//! datagram on a 1500-byte Ethernet MTU without IP fragmentation.
//!
//! # Two levels, as in smoltcp
//!
//! - [`Packet`] is a view over raw bytes. [`Packet::new_checked`] checks the lengths, magic,
//!   version and reserved bits; once it returns `Ok`, **no accessor panics**. Untrusted bytes
//!   must go through it. Emission uses [`Packet::new_unchecked`] over a buffer of exactly
//!   [`Repr::buffer_len`] bytes (a check on a reused buffer would pass or fail at random).
//! - [`Repr`] is the validated form: [`Repr::parse`] checks every length and field range of
//!   the payload and never panics after the check; [`Repr::emit`] never panics on a buffer
//!   of [`Repr::buffer_len`] bytes for a repr that passes [`Message::validate`] (every parsed
//!   repr does). [`Repr::from_bytes`] / [`Repr::to_bytes`] chain the steps.
//!
//! [`seq`] holds the sans-IO sequence-number bookkeeping (loss, duplication, reordering).
//!
//! # Errors
//!
//! Every parse error is the peer's fault (a malformed or foreign datagram): the receiver
//! drops the datagram, counts it, and — a board receiving a request — answers with a
//! [`Nak`]. [`ProtocolError`] names what was wrong.

use thiserror::Error;

pub mod control;
pub mod header;
pub mod records;
pub mod seq;

// The public interface is:
pub use control::{
    BoardKind, BoardState, ChannelBasis, ChannelStatus, ConfigureDetector, ConfigureSource,
    DetectorChannelConfig, FirmwareVersion, Hello, HelloAck, Nak, NakCode, StatusReport, negotiate,
};
pub use header::{FLAG_RETRANSMIT, HEADER_LEN, HeaderRepr, MAGIC, Packet};
pub use records::{DetectionBatch, PulseAnswer, PulseChoice, PulseQuery, PulseRange};
pub use seq::{Arrival, SeqCounter, SeqTracker};

/// The protocol version this crate speaks (the only one so far).
pub const VERSION: u8 = 1;
/// Lowest and highest version this crate can negotiate.
pub const SUPPORTED_VERSIONS: (u8, u8) = (VERSION, VERSION);
/// Largest datagram: 1500-byte MTU − 20 bytes IPv4 header − 8 bytes UDP header.
pub const MAX_DATAGRAM_LEN: usize = 1472;
/// Largest payload.
pub const MAX_PAYLOAD_LEN: usize = MAX_DATAGRAM_LEN - HEADER_LEN;

/// Message types (PROTOCOL.md §4). The high nibble groups them: `0x0_` session, `0x1_`
/// control, `0x2_` data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum MessageType {
    /// Host → board: version negotiation.
    Hello = 0x01,
    /// Board → host: the answer to [`Hello`](Self::Hello).
    HelloAck = 0x02,
    /// Board → host: a request was carried out.
    Ack = 0x03,
    /// Board → host: a request was refused.
    Nak = 0x04,
    /// Host → source board: clock, slot map, equalisation delay.
    ConfigureSource = 0x10,
    /// Host → detector board: clock, gate window, bias/threshold, dead time.
    ConfigureDetector = 0x11,
    /// Host → board: start gating / firing.
    Start = 0x12,
    /// Host → board: stop gating / firing.
    Stop = 0x13,
    /// Host → board: back to the unconfigured state, new epoch.
    Reset = 0x14,
    /// Host → board: send a status report.
    StatusRequest = 0x15,
    /// Board → host: the status report.
    StatusReport = 0x16,
    /// Detector board → host: a batch of detection records.
    DetectionBatch = 0x20,
    /// Host → source board: which pulses it wants the records of.
    PulseQuery = 0x21,
    /// Source board → host: the records asked for.
    PulseAnswer = 0x22,
}

impl MessageType {
    /// Every type, in code order.
    pub const ALL: [MessageType; 14] = [
        MessageType::Hello,
        MessageType::HelloAck,
        MessageType::Ack,
        MessageType::Nak,
        MessageType::ConfigureSource,
        MessageType::ConfigureDetector,
        MessageType::Start,
        MessageType::Stop,
        MessageType::Reset,
        MessageType::StatusRequest,
        MessageType::StatusReport,
        MessageType::DetectionBatch,
        MessageType::PulseQuery,
        MessageType::PulseAnswer,
    ];

    /// The type with code `code`, if version 1 defines one.
    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == code)
    }

    /// Whether the host sends this type (the others come from boards).
    pub const fn from_host(self) -> bool {
        matches!(
            self,
            MessageType::Hello
                | MessageType::ConfigureSource
                | MessageType::ConfigureDetector
                | MessageType::Start
                | MessageType::Stop
                | MessageType::Reset
                | MessageType::StatusRequest
                | MessageType::PulseQuery
        )
    }

    /// Whether this is a board's response to a host request (its header `seq` echoes the
    /// request's, PROTOCOL.md §6.2). [`DetectionBatch`](Self::DetectionBatch) is the one
    /// board message that is not.
    pub const fn is_response(self) -> bool {
        !self.from_host() && !matches!(self, MessageType::DetectionBatch)
    }
}

/// Why bytes were refused. Every variant is the sender's fault.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Fewer bytes than the header.
    #[error("truncated datagram: {got} bytes, at least {needed} needed")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// More than [`MAX_DATAGRAM_LEN`] bytes.
    #[error("oversized datagram: {0} bytes, at most {MAX_DATAGRAM_LEN}")]
    Oversized(usize),
    /// Not a board protocol datagram.
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    /// A version this crate does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A message type version 1 does not define.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// Reserved bits or bytes not zero.
    #[error("reserved bits set in {field}")]
    ReservedBits {
        /// Where.
        field: &'static str,
    },
    /// The header's payload length disagrees with the datagram's size.
    #[error("payload length field says {declared} bytes, datagram carries {actual}")]
    LengthMismatch {
        /// What the header says.
        declared: usize,
        /// What is there.
        actual: usize,
    },
    /// The payload's size is wrong for its type (given its own count fields).
    #[error("{msg_type:?} payload of {got} bytes, expected {expected}")]
    PayloadLength {
        /// The message type.
        msg_type: MessageType,
        /// The size its fields call for (the fixed part, when even that is missing).
        expected: usize,
        /// The size present.
        got: usize,
    },
    /// A field holds a value outside its documented range.
    #[error("field {field} out of range")]
    FieldOutOfRange {
        /// The field, named as in PROTOCOL.md.
        field: &'static str,
    },
    /// Records that must be strictly increasing are not.
    #[error("record {index} is not after the record before it")]
    NotIncreasing {
        /// Index of the offending record.
        index: usize,
    },
    /// The embedded slot map is malformed or invalid.
    #[error("slot map: {0}")]
    SlotMap(#[from] qpon_mux::WireError),
}

/// One message: the payload of a datagram, by type.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`HelloAck`].
    HelloAck(HelloAck),
    /// The request with the same `seq` was carried out (no payload).
    Ack,
    /// See [`Nak`].
    Nak(Nak),
    /// See [`ConfigureSource`].
    ConfigureSource(ConfigureSource),
    /// See [`ConfigureDetector`].
    ConfigureDetector(ConfigureDetector),
    /// Start gating / firing (no payload).
    Start,
    /// Stop gating / firing (no payload).
    Stop,
    /// Reset to the unconfigured state with a new epoch (no payload).
    Reset,
    /// Ask for a [`StatusReport`] (no payload).
    StatusRequest,
    /// See [`StatusReport`].
    StatusReport(StatusReport),
    /// See [`DetectionBatch`].
    DetectionBatch(DetectionBatch),
    /// See [`PulseQuery`].
    PulseQuery(PulseQuery),
    /// See [`PulseAnswer`].
    PulseAnswer(PulseAnswer),
}

impl Message {
    /// The message's type code.
    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::HelloAck(_) => MessageType::HelloAck,
            Message::Ack => MessageType::Ack,
            Message::Nak(_) => MessageType::Nak,
            Message::ConfigureSource(_) => MessageType::ConfigureSource,
            Message::ConfigureDetector(_) => MessageType::ConfigureDetector,
            Message::Start => MessageType::Start,
            Message::Stop => MessageType::Stop,
            Message::Reset => MessageType::Reset,
            Message::StatusRequest => MessageType::StatusRequest,
            Message::StatusReport(_) => MessageType::StatusReport,
            Message::DetectionBatch(_) => MessageType::DetectionBatch,
            Message::PulseQuery(_) => MessageType::PulseQuery,
            Message::PulseAnswer(_) => MessageType::PulseAnswer,
        }
    }

    /// Parses a payload of type `msg_type`, checking every length and range.
    pub fn parse(msg_type: MessageType, payload: &[u8]) -> Result<Message, ProtocolError> {
        let empty = |m: Message| {
            if payload.is_empty() {
                Ok(m)
            } else {
                Err(ProtocolError::PayloadLength { msg_type, expected: 0, got: payload.len() })
            }
        };
        let m = match msg_type {
            MessageType::Hello => Message::Hello(Hello::parse(payload)?),
            MessageType::HelloAck => Message::HelloAck(HelloAck::parse(payload)?),
            MessageType::Ack => empty(Message::Ack)?,
            MessageType::Nak => Message::Nak(Nak::parse(payload)?),
            MessageType::ConfigureSource => Message::ConfigureSource(ConfigureSource::parse(payload)?),
            MessageType::ConfigureDetector => Message::ConfigureDetector(ConfigureDetector::parse(payload)?),
            MessageType::Start => empty(Message::Start)?,
            MessageType::Stop => empty(Message::Stop)?,
            MessageType::Reset => empty(Message::Reset)?,
            MessageType::StatusRequest => empty(Message::StatusRequest)?,
            MessageType::StatusReport => Message::StatusReport(StatusReport::parse(payload)?),
            MessageType::DetectionBatch => Message::DetectionBatch(DetectionBatch::parse(payload)?),
            MessageType::PulseQuery => Message::PulseQuery(PulseQuery::parse(payload)?),
            MessageType::PulseAnswer => Message::PulseAnswer(PulseAnswer::parse(payload)?),
        };
        Ok(m)
    }

    /// Checks every field range [`parse`](Self::parse) checks, and that the message fits a
    /// datagram. A repr built by hand should pass this before [`Repr::emit`].
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.payload_len() > MAX_PAYLOAD_LEN {
            return Err(ProtocolError::Oversized(HEADER_LEN + self.payload_len()));
        }
        match self {
            Message::Hello(m) => m.validate(),
            Message::HelloAck(m) => m.validate(),
            Message::Nak(m) => m.validate(),
            Message::ConfigureSource(m) => m.validate(),
            Message::ConfigureDetector(m) => m.validate(),
            Message::StatusReport(m) => m.validate(),
            Message::DetectionBatch(m) => m.validate(),
            Message::PulseQuery(m) => m.validate(),
            Message::PulseAnswer(m) => m.validate(),
            Message::Ack | Message::Start | Message::Stop | Message::Reset | Message::StatusRequest => Ok(()),
        }
    }

    /// Bytes of payload [`emit`](Self::emit) writes.
    pub fn payload_len(&self) -> usize {
        match self {
            Message::Hello(m) => m.buffer_len(),
            Message::HelloAck(m) => m.buffer_len(),
            Message::Nak(m) => m.buffer_len(),
            Message::ConfigureSource(m) => m.buffer_len(),
            Message::ConfigureDetector(m) => m.buffer_len(),
            Message::StatusReport(m) => m.buffer_len(),
            Message::DetectionBatch(m) => m.buffer_len(),
            Message::PulseQuery(m) => m.buffer_len(),
            Message::PulseAnswer(m) => m.buffer_len(),
            Message::Ack | Message::Start | Message::Stop | Message::Reset | Message::StatusRequest => 0,
        }
    }

    /// Writes the payload into `buf` (exactly [`payload_len`](Self::payload_len) bytes);
    /// [`Repr::emit`] writes the header around it.
    pub fn emit(&self, buf: &mut [u8]) {
        match self {
            Message::Hello(m) => m.emit(buf),
            Message::HelloAck(m) => m.emit(buf),
            Message::Nak(m) => m.emit(buf),
            Message::ConfigureSource(m) => m.emit(buf),
            Message::ConfigureDetector(m) => m.emit(buf),
            Message::StatusReport(m) => m.emit(buf),
            Message::DetectionBatch(m) => m.emit(buf),
            Message::PulseQuery(m) => m.emit(buf),
            Message::PulseAnswer(m) => m.emit(buf),
            Message::Ack | Message::Start | Message::Stop | Message::Reset | Message::StatusRequest => {}
        }
    }
}

/// A validated datagram: header fields and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Board id, epoch, sequence number, flags.
    pub header: HeaderRepr,
    /// The payload.
    pub message: Message,
}

impl Repr {
    /// The datagram in a checked packet, with every payload field checked.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, ProtocolError> {
        let msg_type =
            MessageType::from_u8(packet.msg_type()).ok_or(ProtocolError::UnknownType(packet.msg_type()))?;
        let message = Message::parse(msg_type, packet.payload())?;
        Ok(Repr { header: HeaderRepr::parse(packet), message })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.message.payload_len()
    }

    /// Writes the datagram into `packet`, whose buffer must be exactly
    /// [`buffer_len`](Self::buffer_len) bytes.
    ///
    /// # Panics
    /// On a buffer of another length, or a repr that fails [`Message::validate`]'s size
    /// limit (caller misuse: a board protocol datagram is never larger than the MTU).
    pub fn emit(&self, packet: &mut Packet<&mut [u8]>) {
        let payload_len = self.message.payload_len();
        assert!(payload_len <= MAX_PAYLOAD_LEN, "message of {payload_len} bytes exceeds the datagram limit");
        assert_eq!(packet.datagram_len(), self.buffer_len(), "datagram buffer of the wrong length");
        // The assert above bounds the payload by MAX_PAYLOAD_LEN < u16::MAX.
        packet.set_header(&self.header, self.message.msg_type(), payload_len as u16);
        self.message.emit(packet.payload_mut());
    }

    /// Parses untrusted bytes: [`Packet::new_checked`] then [`Repr::parse`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Repr, ProtocolError> {
        Repr::parse(&Packet::new_checked(bytes)?)
    }

    /// The datagram as a new buffer, after [`Message::validate`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        self.message.validate()?;
        if self.header.flags & !header::KNOWN_FLAGS != 0 {
            return Err(ProtocolError::ReservedBits { field: "header flags/reserved" });
        }
        let mut buf = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut buf[..]));
        Ok(buf)
    }
}

// Big-endian field access. Callers have checked the length, so indexing cannot fail; the
// helpers keep the byte order in one place.
pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
pub(crate) fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Checks that `payload` is exactly `expected` bytes for a fixed-size message.
pub(crate) fn expect_len(
    msg_type: MessageType,
    payload: &[u8],
    expected: usize,
) -> Result<(), ProtocolError> {
    if payload.len() == expected {
        Ok(())
    } else {
        Err(ProtocolError::PayloadLength { msg_type, expected, got: payload.len() })
    }
}

/// Checks that `payload` holds at least the `fixed` part of a variable-size message.
pub(crate) fn expect_len_at_least(
    msg_type: MessageType,
    payload: &[u8],
    fixed: usize,
) -> Result<(), ProtocolError> {
    if payload.len() < fixed {
        return Err(ProtocolError::PayloadLength { msg_type, expected: fixed, got: payload.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
