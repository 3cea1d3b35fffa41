//! Data messages (PROTOCOL.md §5.8–§5.10): detection batches from the detector board, pulse
//! queries from the host and pulse answers from a source board.
//!
//! Records are fixed-size little structs so a board can write them with no arithmetic
//! beyond a subtraction: a detection is 5 bytes (gate offset from the batch's first gate +
//! one code byte), a pulse answer 1 byte.

use core::ops::Range;

use super::{
    MAX_PAYLOAD_LEN, MessageType, ProtocolError, be_u16, be_u32, be_u64, expect_len, expect_len_at_least, put,
};
use crate::{Basis, DetectionFlags, DetectionRecord, Intensity, PulseRecord};

fn range_err(field: &'static str) -> ProtocolError {
    ProtocolError::FieldOutOfRange { field }
}

mod batch {
    use core::ops::Range;
    pub(super) const START: Range<usize> = 0..8;
    pub(super) const END: Range<usize> = 8..16;
    pub(super) const COUNT: Range<usize> = 16..18;
    pub(super) const RESERVED: Range<usize> = 18..20;
    pub(super) const RECORDS: usize = RESERVED.end;
    pub(super) const REC_OFFSET: Range<usize> = 0..4;
    pub(super) const REC_CODE: usize = 4;
    pub(super) const REC_LEN: usize = REC_CODE + 1;
}

/// Most detection records in one batch (what fits a datagram).
pub const MAX_DETECTIONS_PER_BATCH: usize = (MAX_PAYLOAD_LEN - batch::RECORDS) / batch::REC_LEN;

/// Detection record code byte: bit 0 basis (1 = X), bit 1 the bit, bits 2–3 the
/// [`DetectionFlags`] (double click, afterpulse window), bits 4–7 zero.
mod code {
    pub(super) const BASIS_X: u8 = 1 << 0;
    pub(super) const BIT: u8 = 1 << 1;
    pub(super) const FLAGS_SHIFT: u32 = 2;
    pub(super) const KNOWN_FLAGS: u8 =
        crate::DetectionFlags::DOUBLE_CLICK | crate::DetectionFlags::AFTERPULSE_WINDOW;
}

/// Detector board → host: every detection with a gate in `start_gate..end_gate`
/// (PROTOCOL.md §5.8). Consecutive batches cover consecutive gate ranges, so a batch with
/// no records still says "nothing was detected here" and a lost batch leaves a hole the
/// host can name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DetectionBatch {
    /// First gate covered.
    pub start_gate: u64,
    /// One past the last gate covered (≥ `start_gate`).
    pub end_gate: u64,
    /// The detections, strictly increasing in gate, each in `start_gate..end_gate` and at
    /// most `u32::MAX` gates after `start_gate`; at most [`MAX_DETECTIONS_PER_BATCH`].
    pub records: Vec<DetectionRecord>,
}

impl DetectionBatch {
    /// Parses and validates a payload.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        let mut records = Vec::new();
        let gates = Self::parse_into(p, &mut records)?;
        Ok(DetectionBatch { start_gate: gates.start, end_gate: gates.end, records })
    }

    /// Parses and validates a payload, appending its records to `out`, and returns the gate
    /// range the batch covers. This is the host's data path: records go straight into the
    /// caller's buffer, with no allocation per batch. On error `out` is left as it was.
    pub fn parse_into(p: &[u8], out: &mut Vec<DetectionRecord>) -> Result<Range<u64>, ProtocolError> {
        use batch as f;
        let msg_type = MessageType::DetectionBatch;
        expect_len_at_least(msg_type, p, f::RECORDS)?;
        let n = be_u16(p, f::COUNT.start) as usize;
        expect_len(msg_type, p, f::RECORDS + n * f::REC_LEN)?;
        if be_u16(p, f::RESERVED.start) != 0 {
            return Err(ProtocolError::ReservedBits { field: "detection batch reserved" });
        }
        if n > MAX_DETECTIONS_PER_BATCH {
            // Only reachable for a payload handed in directly: a datagram cannot hold more.
            return Err(range_err("record count"));
        }
        let start_gate = be_u64(p, f::START.start);
        let end_gate = be_u64(p, f::END.start);
        if end_gate < start_gate {
            return Err(range_err("end_gate"));
        }
        let before = out.len();
        let result = (|| {
            let mut prev: Option<u64> = None;
            for i in 0..n {
                let r = &p[f::RECORDS + i * f::REC_LEN..][..f::REC_LEN];
                let c = r[f::REC_CODE];
                if c >> (code::FLAGS_SHIFT + 2) != 0 {
                    return Err(ProtocolError::ReservedBits { field: "detection code" });
                }
                // The same checks, in the same order, as `validate`.
                let gate = start_gate.saturating_add(be_u32(r, f::REC_OFFSET.start) as u64);
                if prev.is_some_and(|p| gate <= p) {
                    return Err(ProtocolError::NotIncreasing { index: i });
                }
                if gate >= end_gate {
                    return Err(range_err("detection gate offset"));
                }
                prev = Some(gate);
                out.push(DetectionRecord {
                    gate,
                    basis: Basis::from_bit(c & code::BASIS_X != 0),
                    bit: c & code::BIT != 0,
                    flags: DetectionFlags(c >> code::FLAGS_SHIFT),
                });
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(start_gate..end_gate),
            Err(e) => {
                out.truncate(before);
                Err(e)
            }
        }
    }

    /// Checks the field ranges and the record order.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.end_gate < self.start_gate {
            return Err(range_err("end_gate"));
        }
        if self.records.len() > MAX_DETECTIONS_PER_BATCH {
            return Err(range_err("record count"));
        }
        let mut prev: Option<u64> = None;
        for (i, r) in self.records.iter().enumerate() {
            if prev.is_some_and(|p| r.gate <= p) {
                return Err(ProtocolError::NotIncreasing { index: i });
            }
            if r.gate < self.start_gate
                || r.gate >= self.end_gate
                || r.gate - self.start_gate > u32::MAX as u64
            {
                return Err(range_err("detection gate offset"));
            }
            if r.flags.0 & !code::KNOWN_FLAGS != 0 {
                return Err(ProtocolError::ReservedBits { field: "detection code" });
            }
            prev = Some(r.gate);
        }
        Ok(())
    }

    /// Payload bytes.
    pub fn buffer_len(&self) -> usize {
        batch::RECORDS + self.records.len() * batch::REC_LEN
    }

    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes. The repr
    /// must pass [`validate`](Self::validate) (offsets and flags would be cut otherwise).
    pub fn emit(&self, b: &mut [u8]) {
        use batch as f;
        put(b, f::START.start, &self.start_gate.to_be_bytes());
        put(b, f::END.start, &self.end_gate.to_be_bytes());
        put(b, f::COUNT.start, &(self.records.len() as u16).to_be_bytes());
        put(b, f::RESERVED.start, &[0, 0]);
        for (i, r) in self.records.iter().enumerate() {
            let rec = &mut b[f::RECORDS + i * f::REC_LEN..][..f::REC_LEN];
            let offset = r.gate.wrapping_sub(self.start_gate) as u32;
            put(rec, f::REC_OFFSET.start, &offset.to_be_bytes());
            let mut c = (r.flags.0 & code::KNOWN_FLAGS) << code::FLAGS_SHIFT;
            if r.basis == Basis::X {
                c |= code::BASIS_X;
            }
            if r.bit {
                c |= code::BIT;
            }
            rec[f::REC_CODE] = c;
        }
    }
}

/// A run of consecutive pulse indices `start .. start + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PulseRange {
    /// First pulse index (the source's own numbering).
    pub start: u64,
    /// Number of pulses, ≥ 1.
    pub len: u32,
}

mod query {
    use core::ops::Range;
    pub(super) const COUNT: Range<usize> = 0..2;
    pub(super) const RESERVED: Range<usize> = 2..4;
    pub(super) const RANGES: usize = RESERVED.end;
    pub(super) const R_START: Range<usize> = 0..8;
    pub(super) const R_LEN: Range<usize> = 8..12;
    pub(super) const R_SIZE: usize = R_LEN.end;
}

/// Most ranges in one query.
pub const MAX_QUERY_RANGES: usize = 120;
/// Most pulses one query may ask about (so the answer fits one datagram with room left).
pub const MAX_QUERY_PULSES: usize = 1024;

// The limits above are chosen so that the largest query and answer fit a datagram.
const _: () = assert!(query::RANGES + MAX_QUERY_RANGES * query::R_SIZE <= MAX_PAYLOAD_LEN);
const _: () = assert!(answer::CODES + MAX_QUERY_PULSES <= MAX_PAYLOAD_LEN);

/// Host → source board: the pulses whose records the host wants (PROTOCOL.md §5.9). A list
/// of single pulses is a list of ranges of length 1. Ranges may overlap or repeat; the
/// answer follows them in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PulseQuery {
    /// 1 ..= [`MAX_QUERY_RANGES`] ranges, asking about 1 ..= [`MAX_QUERY_PULSES`] pulses in
    /// total.
    pub ranges: Vec<PulseRange>,
}

impl PulseQuery {
    /// Parses and validates a payload.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        use query as f;
        let msg_type = MessageType::PulseQuery;
        expect_len_at_least(msg_type, p, f::RANGES)?;
        let n = be_u16(p, f::COUNT.start) as usize;
        expect_len(msg_type, p, f::RANGES + n * f::R_SIZE)?;
        if be_u16(p, f::RESERVED.start) != 0 {
            return Err(ProtocolError::ReservedBits { field: "pulse query reserved" });
        }
        let ranges = (0..n)
            .map(|i| {
                let r = &p[f::RANGES + i * f::R_SIZE..][..f::R_SIZE];
                PulseRange { start: be_u64(r, f::R_START.start), len: be_u32(r, f::R_LEN.start) }
            })
            .collect();
        let m = PulseQuery { ranges };
        m.validate()?;
        Ok(m)
    }

    /// Checks the field ranges.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.ranges.is_empty() || self.ranges.len() > MAX_QUERY_RANGES {
            return Err(range_err("range count"));
        }
        let mut total = 0u64;
        for r in &self.ranges {
            // The last index asked, start + len − 1, must exist.
            if r.len == 0 || r.start.checked_add(r.len as u64 - 1).is_none() {
                return Err(range_err("range length"));
            }
            total += r.len as u64;
        }
        if total > MAX_QUERY_PULSES as u64 {
            return Err(range_err("pulses asked"));
        }
        Ok(())
    }

    /// Number of pulses asked about (the answer's count).
    pub fn pulse_count(&self) -> usize {
        self.ranges.iter().map(|r| r.len as usize).sum()
    }

    /// The pulse indices asked about, in answer order.
    pub fn pulses(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| (0..r.len as u64).map(move |i| r.start + i))
    }

    /// Payload bytes.
    pub fn buffer_len(&self) -> usize {
        query::RANGES + self.ranges.len() * query::R_SIZE
    }

    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit(&self, b: &mut [u8]) {
        use query as f;
        put(b, f::COUNT.start, &(self.ranges.len() as u16).to_be_bytes());
        put(b, f::RESERVED.start, &[0, 0]);
        for (i, r) in self.ranges.iter().enumerate() {
            let rec = &mut b[f::RANGES + i * f::R_SIZE..][..f::R_SIZE];
            put(rec, f::R_START.start, &r.start.to_be_bytes());
            put(rec, f::R_LEN.start, &r.len.to_be_bytes());
        }
    }
}

/// What a source prepared for one pulse (a [`PulseRecord`] without its index, which the
/// query gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PulseChoice {
    /// Preparation basis.
    pub basis: Basis,
    /// Encoded bit.
    pub bit: bool,
    /// Intensity class.
    pub intensity: Intensity,
}

/// Pulse answer code byte: bits 0–1 intensity class (0 signal, 1 decoy, 2 vacuum,
/// 3 = no record), bit 2 basis (1 = X), bit 3 the bit, bits 4–7 zero. "No record" is
/// exactly 0x03.
mod pcode {
    pub(super) const INTENSITY: u8 = 0b11;
    pub(super) const NONE: u8 = 0b11;
    pub(super) const BASIS_X: u8 = 1 << 2;
    pub(super) const BIT: u8 = 1 << 3;
}

mod answer {
    use core::ops::Range;
    pub(super) const COUNT: Range<usize> = 0..2;
    pub(super) const RESERVED: Range<usize> = 2..4;
    pub(super) const CODES: usize = RESERVED.end;
}

/// Source board → host: one entry per pulse asked, in query order (PROTOCOL.md §5.10).
/// `None`: the source did not fire that pulse, or no longer keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PulseAnswer {
    /// At most [`MAX_QUERY_PULSES`] entries.
    pub records: Vec<Option<PulseChoice>>,
}

impl PulseAnswer {
    /// Parses and validates a payload.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        use answer as f;
        let msg_type = MessageType::PulseAnswer;
        expect_len_at_least(msg_type, p, f::CODES)?;
        let n = be_u16(p, f::COUNT.start) as usize;
        if n > MAX_QUERY_PULSES {
            return Err(range_err("answer count"));
        }
        expect_len(msg_type, p, f::CODES + n)?;
        if be_u16(p, f::RESERVED.start) != 0 {
            return Err(ProtocolError::ReservedBits { field: "pulse answer reserved" });
        }
        let records = p[f::CODES..].iter().map(|&c| decode_choice(c)).collect::<Result<_, _>>()?;
        Ok(PulseAnswer { records })
    }

    /// Checks the field ranges.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.records.len() > MAX_QUERY_PULSES {
            return Err(range_err("answer count"));
        }
        Ok(())
    }

    /// Payload bytes.
    pub fn buffer_len(&self) -> usize {
        answer::CODES + self.records.len()
    }

    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit(&self, b: &mut [u8]) {
        use answer as f;
        put(b, f::COUNT.start, &(self.records.len() as u16).to_be_bytes());
        put(b, f::RESERVED.start, &[0, 0]);
        for (slot, r) in b[f::CODES..].iter_mut().zip(&self.records) {
            *slot = match r {
                None => pcode::NONE,
                Some(c) => encode_choice(c),
            };
        }
    }

    /// The answer as [`PulseRecord`]s, pairing entries with the pulses of `query` (the
    /// shape [`crate::PulseAnswer::records`] takes). `None` when the counts disagree: the
    /// answer is not for this query, and the caller must not guess.
    pub fn to_records(&self, query: &PulseQuery) -> Option<Vec<Option<PulseRecord>>> {
        if self.records.len() != query.pulse_count() {
            return None;
        }
        Some(
            query
                .pulses()
                .zip(&self.records)
                .map(|(pulse, r)| {
                    r.map(|c| PulseRecord { pulse, basis: c.basis, bit: c.bit, intensity: c.intensity })
                })
                .collect(),
        )
    }
}

fn encode_choice(c: &PulseChoice) -> u8 {
    let mut code = c.intensity as u8;
    if c.basis == Basis::X {
        code |= pcode::BASIS_X;
    }
    if c.bit {
        code |= pcode::BIT;
    }
    code
}

fn decode_choice(c: u8) -> Result<Option<PulseChoice>, ProtocolError> {
    if c & 0xf0 != 0 {
        return Err(ProtocolError::ReservedBits { field: "pulse code" });
    }
    if c & pcode::INTENSITY == pcode::NONE {
        // "No record" has one spelling, so answers compare byte for byte.
        return if c == pcode::NONE { Ok(None) } else { Err(range_err("pulse code")) };
    }
    Ok(Some(PulseChoice {
        basis: Basis::from_bit(c & pcode::BASIS_X != 0),
        bit: c & pcode::BIT != 0,
        intensity: Intensity::from_index(c & pcode::INTENSITY).ok_or(range_err("pulse code"))?,
    }))
}
