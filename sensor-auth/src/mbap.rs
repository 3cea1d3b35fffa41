//! Modbus/TCP framing (MBAP), sans-IO: split a byte stream into ADUs, build gateway
//! exception responses, and sort requests into message classes.
//!
//! An ADU (application data unit) on Modbus/TCP is a 7-byte MBAP header followed by the PDU
//! (Modbus Application Protocol Specification V1.1b3 §4.1; Modbus Messaging on TCP/IP
//! Implementation Guide V1.0b §3.1.3):
//!
//! | bytes | field          | rule here                                              |
//! |-------|----------------|--------------------------------------------------------|
//! | 0–1   | transaction id | any; echoed in the response                            |
//! | 2–3   | protocol id    | must be 0 (Modbus)                                     |
//! | 4–5   | length         | bytes that follow (unit id + PDU): 2 ..= 254           |
//! | 6     | unit id        | any                                                    |
//! | 7..   | PDU            | function code (1 byte) + data; at most 253 bytes       |
//!
//! So an ADU is 8 ..= [`MAX_ADU_LEN`] (260) bytes. [`Splitter`] is strict: the header is
//! checked as soon as its 7 bytes are in, and the first violation is a typed
//! [`MbapError`] after which the splitter refuses everything (a Modbus/TCP stream cannot be
//! resynchronised: the caller closes the connection). Nothing here panics on any input,
//! and the splitter never buffers more than one partial ADU plus what the caller fed.
//!
//! [`classify`] maps a request's function code to the authentication [`Class`].

use crate::Class;

/// Length of the MBAP header (transaction id, protocol id, length, unit id).
pub const HEADER_LEN: usize = 7;
/// Largest Modbus/TCP ADU: 7-byte header + 253-byte PDU.
pub const MAX_ADU_LEN: usize = 260;
/// Smallest value of the length field (unit id + function code).
pub const MIN_LENGTH_FIELD: u16 = 2;
/// Largest value of the length field (unit id + 253-byte PDU).
pub const MAX_LENGTH_FIELD: u16 = 254;

/// Exception code 0x0A: gateway path unavailable (the gateway cannot reach the target:
/// unknown unit, link to the field proxy down, key pool exhausted).
pub const GATEWAY_PATH_UNAVAILABLE: u8 = 0x0A;
/// Exception code 0x0B: gateway target device failed to respond (no authenticated
/// answer in time, device unreachable, request sealed but not answered).
pub const GATEWAY_TARGET_FAILED: u8 = 0x0B;

/// Why bytes are not a well-formed Modbus/TCP ADU (stream).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MbapError {
    /// The protocol id is not 0 (not Modbus).
    #[error("MBAP protocol id {0:#06x} is not 0 (Modbus)")]
    ProtocolId(u16),
    /// The length field is below 2: no room for unit id and function code.
    #[error("MBAP length field {0} is below the minimum 2 (unit id + function code)")]
    LengthTooShort(u16),
    /// The length field is above 254: the ADU would exceed 260 bytes.
    #[error("MBAP length field {0} exceeds 254: ADU of {adu} bytes is over the 260-byte limit", adu = *.0 as usize + 6)]
    Oversized(u16),
    /// A buffer given as one ADU is shorter than its header says (or than a header).
    #[error("ADU truncated: {got} bytes, {need} expected")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes the header announces (or the header length).
        need: usize,
    },
    /// A buffer given as one ADU has bytes after the ADU its header announces.
    #[error("{0} trailing bytes after the ADU")]
    Trailing(usize),
}

/// One validated Modbus/TCP ADU (header checked, length consistent). Cheap accessors,
/// none of which panics.
#[derive(Clone, PartialEq, Eq)]
pub struct Adu {
    bytes: Vec<u8>,
}

impl core::fmt::Debug for Adu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Adu(tid {}, unit {}, fc {}, {} bytes)",
            self.transaction_id(),
            self.unit_id(),
            self.function_code(),
            self.bytes.len()
        )
    }
}

/// Checks a 7-byte header and returns the whole ADU's length.
fn check_header(h: &[u8; HEADER_LEN]) -> Result<usize, MbapError> {
    let protocol = u16::from_be_bytes([h[2], h[3]]);
    if protocol != 0 {
        return Err(MbapError::ProtocolId(protocol));
    }
    let length = u16::from_be_bytes([h[4], h[5]]);
    if length < MIN_LENGTH_FIELD {
        return Err(MbapError::LengthTooShort(length));
    }
    if length > MAX_LENGTH_FIELD {
        return Err(MbapError::Oversized(length));
    }
    Ok(HEADER_LEN - 1 + usize::from(length))
}

impl Adu {
    /// Parses exactly one ADU; strict (no missing, no trailing bytes).
    pub fn parse(bytes: &[u8]) -> Result<Self, MbapError> {
        let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(MbapError::Truncated { got: bytes.len(), need: HEADER_LEN });
        };
        let need = check_header(h)?;
        match bytes.len().cmp(&need) {
            core::cmp::Ordering::Less => Err(MbapError::Truncated { got: bytes.len(), need }),
            core::cmp::Ordering::Greater => Err(MbapError::Trailing(bytes.len() - need)),
            core::cmp::Ordering::Equal => Ok(Self { bytes: bytes.to_vec() }),
        }
    }

    /// Builds an ADU from its fields; `None` if the PDU is empty or longer than 253 bytes.
    pub fn new(transaction_id: u16, unit_id: u8, pdu: &[u8]) -> Option<Self> {
        if pdu.is_empty() || pdu.len() > usize::from(MAX_LENGTH_FIELD) - 1 {
            return None;
        }
        let length = u16::try_from(pdu.len() + 1).ok()?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + pdu.len());
        bytes.extend_from_slice(&transaction_id.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.push(unit_id);
        bytes.extend_from_slice(pdu);
        Some(Self { bytes })
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    /// Replaces the transaction id (a proxy renumbers requests on its own connection).
    pub fn set_transaction_id(&mut self, tid: u16) {
        self.bytes[..2].copy_from_slice(&tid.to_be_bytes());
    }

    /// The unit id.
    pub fn unit_id(&self) -> u8 {
        self.bytes[HEADER_LEN - 1]
    }

    /// The function code (first PDU byte; bit 7 set on an exception response).
    pub fn function_code(&self) -> u8 {
        self.bytes[HEADER_LEN]
    }

    /// The PDU (function code + data).
    pub fn pdu(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The whole ADU on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole ADU, consumed.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Whether this (response) ADU is an exception response; its code if so.
    pub fn exception_code(&self) -> Option<u8> {
        (self.function_code() & 0x80 != 0).then(|| self.bytes.get(HEADER_LEN + 1).copied()).flatten()
    }

    /// Whether `self` can be the response to `request`: same unit id and the same function
    /// code, with or without the exception bit.
    pub fn answers(&self, request: &Adu) -> bool {
        self.unit_id() == request.unit_id() && self.function_code() & 0x7f == request.function_code() & 0x7f
    }

    /// The exception response to this request with `code` (function code | 0x80), echoing
    /// its transaction id and unit id.
    pub fn exception(&self, code: u8) -> Adu {
        exception_response(self.transaction_id(), self.unit_id(), self.function_code(), code)
    }
}

/// An exception response ADU: function code `function | 0x80`, then `code` (e.g.
/// [`GATEWAY_PATH_UNAVAILABLE`], [`GATEWAY_TARGET_FAILED`]), echoing the request's
/// transaction id and unit id.
pub fn exception_response(transaction_id: u16, unit_id: u8, function: u8, code: u8) -> Adu {
    let mut bytes = Vec::with_capacity(HEADER_LEN + 2);
    bytes.extend_from_slice(&transaction_id.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 3, unit_id, function | 0x80, code]);
    Adu { bytes }
}

/// Splits a Modbus/TCP byte stream into ADUs. Feed bytes with [`push`](Self::push), take
/// ADUs with [`next_adu`](Self::next_adu) until it returns `Ok(None)` (more bytes needed).
/// After an error the splitter is poisoned: it returns the same error forever.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    failed: Option<MbapError>,
}

impl Splitter {
    /// An empty splitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered and not yet returned as an ADU.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete ADU, `Ok(None)` if more bytes are needed, or the reason the
    /// stream is malformed (then the splitter is poisoned and its buffer dropped).
    pub fn next_adu(&mut self) -> Result<Option<Adu>, MbapError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(h) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let need = match check_header(h) {
            Ok(n) => n,
            Err(e) => {
                self.buf = Vec::new();
                self.failed = Some(e.clone());
                return Err(e);
            }
        };
        if self.buf.len() < need {
            return Ok(None);
        }
        let rest = self.buf.split_off(need);
        let bytes = core::mem::replace(&mut self.buf, rest);
        Ok(Some(Adu { bytes }))
    }
}

/// The authentication class of a request with function code `fc` (Modbus Application
/// Protocol V1.1b3 §6). Readings are the pure data reads:
///
/// | code | function                          | class     |
/// |------|-----------------------------------|-----------|
/// | 1    | read coils                        | Reading   |
/// | 2    | read discrete inputs              | Reading   |
/// | 3    | read holding registers            | Reading   |
/// | 4    | read input registers              | Reading   |
/// | 20   | read file record                  | Reading   |
/// | 24   | read FIFO queue                   | Reading   |
/// | 5, 6, 15, 16 | write coil(s)/register(s) | Command   |
/// | 21, 22, 23   | write file record, mask write, read/write registers | Command |
/// | 7, 8, 11, 12, 17, 43 | diagnostics, event counters/log, report server id, encapsulated transport (device identification, CANopen) | Command |
/// | anything else (user-defined, unknown, exception bit set) | | Command |
///
/// Diagnostics (8) can restart the communications option or clear counters, and 43 carries
/// other protocols, so they take the stricter class; unknown codes do too: a shorter
/// reading tag is only used where a forged message can at worst misreport a value, never
/// change the plant.
pub fn classify(fc: u8) -> Class {
    match fc {
        1 | 2 | 3 | 4 | 20 | 24 => Class::Reading,
        _ => Class::Command,
    }
}

/// The class of a payload that is a whole Modbus/TCP request ADU (a
/// [`crate::Classifier`] for [`crate::FieldEnd::set_classifier`]): `None` if it is not a
/// well-formed ADU (the proxy refuses those anyway).
pub fn classify_adu(payload: &[u8]) -> Option<Class> {
    let h = payload.first_chunk::<HEADER_LEN>()?;
    let need = check_header(h).ok()?;
    (payload.len() == need).then(|| classify(payload[HEADER_LEN]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_holding(tid: u16, unit: u8) -> Vec<u8> {
        // Read holding registers: address 0x006B, 3 registers.
        let mut v = tid.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 0, 6, unit, 0x03, 0x00, 0x6B, 0x00, 0x03]);
        v
    }

    #[test]
    fn splits_a_known_request() {
        let mut s = Splitter::new();
        s.push(&read_holding(0x1234, 17));
        let adu = s.next_adu().unwrap().unwrap();
        assert_eq!(adu.transaction_id(), 0x1234);
        assert_eq!(adu.unit_id(), 17);
        assert_eq!(adu.function_code(), 3);
        assert_eq!(adu.pdu(), &[0x03, 0x00, 0x6B, 0x00, 0x03]);
        assert_eq!(s.next_adu().unwrap(), None);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn byte_at_a_time_and_back_to_back() {
        let mut stream = read_holding(1, 1);
        stream.extend(read_holding(2, 2));
        let mut s = Splitter::new();
        let mut got = Vec::new();
        for b in &stream {
            s.push(&[*b]);
            while let Some(a) = s.next_adu().unwrap() {
                got.push(a.transaction_id());
            }
        }
        assert_eq!(got, [1, 2]);
    }

    #[test]
    fn refuses_bad_headers_with_reasons() {
        let cases: [(&[u8], MbapError); 4] = [
            (&[0, 1, 0, 1, 0, 6, 1], MbapError::ProtocolId(1)),
            (&[0, 1, 0, 0, 0, 1, 1], MbapError::LengthTooShort(1)),
            (&[0, 1, 0, 0, 0, 0, 1], MbapError::LengthTooShort(0)),
            (&[0, 1, 0, 0, 0, 255, 1], MbapError::Oversized(255)),
        ];
        for (bytes, want) in cases {
            let mut s = Splitter::new();
            s.push(bytes);
            assert_eq!(s.next_adu().unwrap_err(), want);
            // Poisoned: a valid ADU after it is refused too.
            s.push(&read_holding(1, 1));
            assert_eq!(s.next_adu().unwrap_err(), want);
            assert_eq!(Adu::parse(bytes).unwrap_err(), want);
        }
        assert!(MbapError::Oversized(255).to_string().contains("261"));
    }

    #[test]
    fn largest_adu_is_accepted_and_one_more_refused() {
        let pdu = vec![0x10; 253];
        let adu = Adu::new(7, 1, &pdu).unwrap();
        assert_eq!(adu.as_bytes().len(), MAX_ADU_LEN);
        assert_eq!(Adu::parse(adu.as_bytes()).unwrap(), adu);
        assert!(Adu::new(7, 1, &[0x10; 254]).is_none());
        assert!(Adu::new(7, 1, &[]).is_none());
        let mut big = adu.into_bytes();
        big[5] = 255;
        big.push(0);
        assert_eq!(Adu::parse(&big).unwrap_err(), MbapError::Oversized(255));
    }

    #[test]
    fn parse_is_exact() {
        let mut v = read_holding(1, 1);
        assert!(Adu::parse(&v).is_ok());
        v.push(0);
        assert_eq!(Adu::parse(&v).unwrap_err(), MbapError::Trailing(1));
        assert!(matches!(Adu::parse(&v[..8]).unwrap_err(), MbapError::Truncated { got: 8, need: 12 }));
        assert!(matches!(Adu::parse(&v[..3]).unwrap_err(), MbapError::Truncated { got: 3, need: 7 }));
    }

    #[test]
    fn exception_echoes_transaction_and_unit() {
        let req = Adu::parse(&read_holding(0xBEEF, 9)).unwrap();
        let ex = req.exception(GATEWAY_PATH_UNAVAILABLE);
        assert_eq!(ex.as_bytes(), &[0xBE, 0xEF, 0, 0, 0, 3, 9, 0x83, 0x0A]);
        assert_eq!(ex.exception_code(), Some(0x0A));
        assert!(ex.answers(&req));
        assert_eq!(Adu::parse(ex.as_bytes()).unwrap(), ex);
        assert_eq!(req.exception_code(), None);
        let ex = exception_response(1, 2, 0x10, GATEWAY_TARGET_FAILED);
        assert_eq!(ex.pdu(), &[0x90, 0x0B]);
    }

    #[test]
    fn classes() {
        for fc in [1, 2, 3, 4, 20, 24] {
            assert_eq!(classify(fc), Class::Reading, "fc {fc}");
        }
        for fc in [5, 6, 7, 8, 11, 12, 15, 16, 17, 21, 22, 23, 43, 0, 65, 100, 0x83, 255] {
            assert_eq!(classify(fc), Class::Command, "fc {fc}");
        }
        assert_eq!(classify_adu(&read_holding(1, 1)), Some(Class::Reading));
        let write = Adu::new(1, 1, &[6, 0, 1, 0, 42]).unwrap();
        assert_eq!(classify_adu(write.as_bytes()), Some(Class::Command));
        assert_eq!(classify_adu(&write.as_bytes()[..8]), None);
        assert_eq!(classify_adu(&[]), None);
    }

    fn arb_adu() -> impl Strategy<Value = Vec<u8>> {
        (any::<u16>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 1..=253))
            .prop_map(|(t, u, pdu)| Adu::new(t, u, &pdu).unwrap().into_bytes())
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut s = Splitter::new();
            for c in &chunks {
                s.push(c);
                loop {
                    match s.next_adu() {
                        Ok(Some(a)) => {
                            prop_assert!(a.as_bytes().len() <= MAX_ADU_LEN);
                            prop_assert!(a.as_bytes().len() > HEADER_LEN);
                            prop_assert_eq!(Adu::parse(a.as_bytes()).unwrap(), a);
                        }
                        Ok(None) => break,
                        Err(_) => { prop_assert!(s.next_adu().is_err()); break; }
                    }
                }
                prop_assert!(s.buffered() < MAX_ADU_LEN + 300);
            }
            for c in &chunks { let _ = Adu::parse(c); }
        }

        #[test]
        fn any_split_of_valid_stream_gives_the_same_adus(
            adus in proptest::collection::vec(arb_adu(), 1..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let stream: Vec<u8> = adus.concat();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut s = Splitter::new();
            let mut got = Vec::new();
            for w in points.windows(2) {
                s.push(&stream[w[0]..w[1]]);
                while let Some(a) = s.next_adu().unwrap() {
                    got.push(a.into_bytes());
                }
            }
            prop_assert_eq!(got, adus);
            prop_assert_eq!(s.buffered(), 0);
        }
    }
}
