//! Control messages (PROTOCOL.md §5): hello / hello-ack, nak, configure (source and
//! detector), status report. Start, Stop, Reset, StatusRequest and Ack have no payload and
//! are plain [`super::Message`] variants.
//!
//! Each message has a private `mod field` of byte offsets matching its table in
//! PROTOCOL.md, `parse(payload)` (checks the exact length before reading any field, then
//! [`validate`](Hello::validate)s), `buffer_len()` and `emit(buf)`.

use qpon_mux::SlotMap;
use qpon_mux::slot_map::OnuId;

use super::{MessageType, ProtocolError, be_u16, be_u32, be_u64, expect_len, expect_len_at_least, put};
use crate::{DetectorChannelStatus, DetectorStatus, SourceSchedule};

/// Most detector channels (single-photon detectors, or lasers on a source board) a board
/// describes: 4 detectors for passive basis choice, with room to spare.
pub const MAX_CHANNELS: usize = 8;

fn range_err(field: &'static str) -> ProtocolError {
    ProtocolError::FieldOutOfRange { field }
}

fn check_versions(min: u8, max: u8) -> Result<(), ProtocolError> {
    if min == 0 || min > max {
        return Err(range_err("min_version/max_version"));
    }
    Ok(())
}

/// The version two sides agree on: the highest in both ranges, or `None` (the board then
/// answers [`NakCode::UnsupportedVersion`]).
pub fn negotiate(host: (u8, u8), board: (u8, u8)) -> Option<u8> {
    let lo = host.0.max(board.0);
    let hi = host.1.min(board.1);
    (lo <= hi).then_some(hi)
}

/// Host → board: opens a session and offers a version range (PROTOCOL.md §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Lowest version the host speaks (≥ 1).
    pub min_version: u8,
    /// Highest version the host speaks (≥ `min_version`).
    pub max_version: u8,
}

mod hello {
    pub(super) const MIN: usize = 0;
    pub(super) const MAX: usize = 1;
    pub(super) const RESERVED: core::ops::Range<usize> = 2..4;
    pub(super) const LEN: usize = RESERVED.end;
}

impl Hello {
    /// Parses and validates a payload.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        expect_len(MessageType::Hello, p, hello::LEN)?;
        if be_u16(p, hello::RESERVED.start) != 0 {
            return Err(ProtocolError::ReservedBits { field: "hello reserved" });
        }
        let m = Hello { min_version: p[hello::MIN], max_version: p[hello::MAX] };
        m.validate()?;
        Ok(m)
    }
    /// Checks the field ranges.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_versions(self.min_version, self.max_version)
    }
    /// Payload bytes.
    pub const fn buffer_len(&self) -> usize {
        hello::LEN
    }
    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit(&self, b: &mut [u8]) {
        b[hello::MIN] = self.min_version;
        b[hello::MAX] = self.max_version;
        put(b, hello::RESERVED.start, &[0, 0]);
    }
}

/// What a board is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BoardKind {
    /// The OLT's receiver: gates the detectors, time-tags clicks.
    Detector = 1,
    /// An ONU's QKD source: drives the laser and modulators.
    Source = 2,
}

impl BoardKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(BoardKind::Detector),
            2 => Some(BoardKind::Source),
            _ => None,
        }
    }
}

/// A board's firmware version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FirmwareVersion {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Patch.
    pub patch: u16,
}

impl FirmwareVersion {
    fn read(b: &[u8], at: usize) -> Self {
        FirmwareVersion { major: b[at], minor: b[at + 1], patch: be_u16(b, at + 2) }
    }
    fn write(&self, b: &mut [u8], at: usize) {
        b[at] = self.major;
        b[at + 1] = self.minor;
        put(b, at + 2, &self.patch.to_be_bytes());
    }
}

/// Board → host: the answer to a [`Hello`] the board accepted (PROTOCOL.md §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HelloAck {
    /// The version both sides use from now on (within both ranges).
    pub version: u8,
    /// Lowest version the board speaks.
    pub min_version: u8,
    /// Highest version the board speaks.
    pub max_version: u8,
    /// What the board is.
    pub kind: BoardKind,
    /// Its firmware.
    pub firmware: FirmwareVersion,
}

mod hello_ack {
    pub(super) const VERSION: usize = 0;
    pub(super) const MIN: usize = 1;
    pub(super) const MAX: usize = 2;
    pub(super) const KIND: usize = 3;
    pub(super) const FIRMWARE: core::ops::Range<usize> = 4..8;
    pub(super) const LEN: usize = FIRMWARE.end;
}

impl HelloAck {
    /// Parses and validates a payload.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        expect_len(MessageType::HelloAck, p, hello_ack::LEN)?;
        let kind = BoardKind::from_u8(p[hello_ack::KIND]).ok_or(range_err("kind"))?;
        let m = HelloAck {
            version: p[hello_ack::VERSION],
            min_version: p[hello_ack::MIN],
            max_version: p[hello_ack::MAX],
            kind,
            firmware: FirmwareVersion::read(p, hello_ack::FIRMWARE.start),
        };
        m.validate()?;
        Ok(m)
    }
    /// Checks the field ranges.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_versions(self.min_version, self.max_version)?;
        if self.version < self.min_version || self.version > self.max_version {
            return Err(range_err("version"));
        }
        Ok(())
    }
    /// Payload bytes.
    pub const fn buffer_len(&self) -> usize {
        hello_ack::LEN
    }
    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit(&self, b: &mut [u8]) {
        b[hello_ack::VERSION] = self.version;
        b[hello_ack::MIN] = self.min_version;
        b[hello_ack::MAX] = self.max_version;
        b[hello_ack::KIND] = self.kind as u8;
        self.firmware.write(b, hello_ack::FIRMWARE.start);
    }
}

/// Why a board refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum NakCode {
    /// The request did not parse (`detail`: payload byte offset of the bad field, or 0xFFFF).
    Malformed = 1,
    /// No common version (or a datagram in a version the board does not speak).
    UnsupportedVersion = 2,
    /// A well-formed field with a value the board cannot apply (`detail`: its payload offset).
    InvalidField = 3,
    /// Not possible in the board's state (e.g. Start before any Configure).
    WrongState = 4,
    /// The request's epoch is not the board's current one: the board was reset since the
    /// host's Hello. The host re-runs Hello and reconfigures.
    StaleEpoch = 5,
    /// The request is for the other kind of board (e.g. ConfigureSource to a detector).
    WrongBoardKind = 6,
    /// Asked pulses the board no longer (or never) keeps track of at all (PulseQuery beyond
    /// its history); the host treats every pulse asked as missing.
    Unavailable = 7,
    /// The board cannot serve the request now; retry later.
    Busy = 8,
}

impl NakCode {
    fn from_u8(v: u8) -> Option<Self> {
        use NakCode::*;
        [
            Malformed,
            UnsupportedVersion,
            InvalidField,
            WrongState,
            StaleEpoch,
            WrongBoardKind,
            Unavailable,
            Busy,
        ]
        .into_iter()
        .find(|c| *c as u8 == v)
    }
}

/// Board → host: the request with the same `seq` was refused (PROTOCOL.md §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nak {
    /// Why.
    pub code: NakCode,
    /// Lowest version the board speaks (always filled in, so a host learns the range).
    pub min_version: u8,
    /// Highest version the board speaks.
    pub max_version: u8,
    /// Code-specific detail (see [`NakCode`]); 0 when unused.
    pub detail: u16,
}

/// `Nak::detail` when the offending offset is unknown.
pub const NAK_DETAIL_UNKNOWN: u16 = 0xffff;

mod nak {
    pub(super) const CODE: usize = 0;
    pub(super) const MIN: usize = 1;
    pub(super) const MAX: usize = 2;
    pub(super) const RESERVED: usize = 3;
    pub(super) const DETAIL: core::ops::Range<usize> = 4..6;
    pub(super) const LEN: usize = DETAIL.end;
}

impl Nak {
    /// Parses and validates a payload.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        expect_len(MessageType::Nak, p, nak::LEN)?;
        if p[nak::RESERVED] != 0 {
            return Err(ProtocolError::ReservedBits { field: "nak reserved" });
        }
        let code = NakCode::from_u8(p[nak::CODE]).ok_or(range_err("code"))?;
        let m = Nak {
            code,
            min_version: p[nak::MIN],
            max_version: p[nak::MAX],
            detail: be_u16(p, nak::DETAIL.start),
        };
        m.validate()?;
        Ok(m)
    }
    /// Checks the field ranges.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_versions(self.min_version, self.max_version)
    }
    /// Payload bytes.
    pub const fn buffer_len(&self) -> usize {
        nak::LEN
    }
    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit(&self, b: &mut [u8]) {
        b[nak::CODE] = self.code as u8;
        b[nak::MIN] = self.min_version;
        b[nak::MAX] = self.max_version;
        b[nak::RESERVED] = 0;
        put(b, nak::DETAIL.start, &self.detail.to_be_bytes());
    }
}

/// Host → source board: the clock, the equalisation delay and the slot map (PROTOCOL.md
/// §5.4). The board fires pulse `p` when gate `p + equalisation_delay` lies in a slot of
/// `onu` in a frame ≥ the map's `active_from_frame` (see [`SourceSchedule`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfigureSource {
    /// Pulse (= gate) rate in Hz, ≥ 1.
    pub clock_hz: u64,
    /// Equalisation delay in gates, from ranging.
    pub equalisation_delay: u64,
    /// The ONU this board belongs to: it fires only in slots owned by it.
    pub onu: OnuId,
    /// The slot map (frame length, guard, version, activation frame, slots), in `qpon-mux`'s
    /// slot-map encoding. It may hold other ONUs' slots too; they are ignored.
    pub slot_map: SlotMap,
}

mod cfg_source {
    use core::ops::Range;
    pub(super) const CLOCK: Range<usize> = 0..8;
    pub(super) const DELAY: Range<usize> = 8..16;
    pub(super) const ONU: Range<usize> = 16..18;
    pub(super) const RESERVED: Range<usize> = 18..20;
    pub(super) const MAP: usize = RESERVED.end;
}

impl ConfigureSource {
    /// Parses and validates a payload (the slot map with every `SlotMap` invariant).
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        if p.len() < cfg_source::MAP + qpon_mux::wire::HEADER_LEN {
            return Err(ProtocolError::PayloadLength {
                msg_type: MessageType::ConfigureSource,
                expected: cfg_source::MAP + qpon_mux::wire::HEADER_LEN,
                got: p.len(),
            });
        }
        if be_u16(p, cfg_source::RESERVED.start) != 0 {
            return Err(ProtocolError::ReservedBits { field: "configure-source reserved" });
        }
        // The map runs to the end of the payload; mux's checked view refuses truncated and
        // trailing bytes alike.
        let slot_map = SlotMap::from_bytes(&p[cfg_source::MAP..])?;
        let m = ConfigureSource {
            clock_hz: be_u64(p, cfg_source::CLOCK.start),
            equalisation_delay: be_u64(p, cfg_source::DELAY.start),
            onu: OnuId(be_u16(p, cfg_source::ONU.start)),
            slot_map,
        };
        m.validate()?;
        Ok(m)
    }
    /// Checks the field ranges (the slot map is valid by construction).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.clock_hz == 0 {
            return Err(range_err("clock_hz"));
        }
        Ok(())
    }
    /// Payload bytes.
    pub fn buffer_len(&self) -> usize {
        cfg_source::MAP + self.slot_map.buffer_len()
    }
    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit(&self, b: &mut [u8]) {
        put(b, cfg_source::CLOCK.start, &self.clock_hz.to_be_bytes());
        put(b, cfg_source::DELAY.start, &self.equalisation_delay.to_be_bytes());
        put(b, cfg_source::ONU.start, &self.onu.0.to_be_bytes());
        put(b, cfg_source::RESERVED.start, &[0, 0]);
        self.slot_map.emit(&mut qpon_mux::wire::Packet::new_unchecked(&mut b[cfg_source::MAP..]));
    }

    /// The message a host driver sends for [`crate::PulseSource::configure`]: `schedule`
    /// as a one-owner slot map of version `map_version` (the driver's own counter), with
    /// touching slots merged (a slot map is canonical) and no guard (one owner needs none).
    /// The error names the schedule field that does not fit the wire format.
    pub fn from_schedule(
        clock_hz: u64,
        onu: OnuId,
        map_version: u32,
        schedule: &SourceSchedule,
    ) -> Result<Self, ProtocolError> {
        schedule.validate().map_err(|_| ProtocolError::FieldOutOfRange { field: "schedule" })?;
        let frame_len = u32::try_from(schedule.frame_gates).map_err(|_| range_err("frame_len"))?;
        let mut slots: Vec<qpon_mux::Slot> = Vec::with_capacity(schedule.slots.len());
        for r in &schedule.slots {
            // `validate` bounds every slot by frame_gates, which fits a u32.
            let (start, end) = (r.start as u32, r.end as u32);
            match slots.last_mut() {
                Some(last) if last.end() == r.start => last.len += end - start,
                _ => slots.push(qpon_mux::Slot { start, len: end - start, owner: onu }),
            }
        }
        let slot_map = SlotMap::new(frame_len, 0, map_version, schedule.from_frame, slots)
            .map_err(qpon_mux::WireError::from)?;
        let m = ConfigureSource { clock_hz, equalisation_delay: schedule.equalisation_delay, onu, slot_map };
        m.validate()?;
        Ok(m)
    }

    /// The schedule the board applies, in the shape [`crate::PulseSource::configure`] takes.
    pub fn schedule(&self) -> SourceSchedule {
        SourceSchedule {
            from_frame: self.slot_map.active_from_frame(),
            frame_gates: self.slot_map.frame_len() as u64,
            slots: self.slot_map.ranges_of(self.onu).collect(),
            equalisation_delay: self.equalisation_delay,
        }
    }
}

/// How a detector channel's clicks map to a basis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelBasis {
    /// The channel sits behind the Z analyser (passive basis choice).
    Z,
    /// The channel sits behind the X analyser (passive basis choice).
    X,
    /// Active basis choice: the basis is the modulator setting of the gate.
    Active,
}

impl ChannelBasis {
    fn to_u8(self) -> u8 {
        match self {
            ChannelBasis::Z => 0,
            ChannelBasis::X => 1,
            ChannelBasis::Active => 0xff,
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(ChannelBasis::Z),
            1 => Some(ChannelBasis::X),
            0xff => Some(ChannelBasis::Active),
            _ => None,
        }
    }
}

/// One detector channel's settings and its place in the basis/bit map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DetectorChannelConfig {
    /// Bias current set point in nA (an SNSPD's ~10 µA is 10 000).
    pub bias_setpoint_na: u32,
    /// Discriminator threshold in mV (signed: pulses may be negative).
    pub threshold_mv: i16,
    /// Which basis a click on this channel means.
    pub basis: ChannelBasis,
    /// Which bit a click on this channel means.
    pub bit: bool,
}

/// Host → detector board: clock, gate window, dead time, per-channel bias/threshold and the
/// detector → (basis, bit) map (PROTOCOL.md §5.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfigureDetector {
    /// Gate rate in Hz, ≥ 1.
    pub clock_hz: u64,
    /// Delay of the gate window after the clock edge, in ps (< one clock period).
    pub gate_offset_ps: u32,
    /// Width of the gate window, in ps (1 ..= one clock period).
    pub gate_width_ps: u32,
    /// Dead time after a click, in gates.
    pub dead_time_gates: u32,
    /// Gates after a click whose detections are flagged `AFTERPULSE_WINDOW`.
    pub afterpulse_window_gates: u32,
    /// 1 ..= [`MAX_CHANNELS`] channels.
    pub channels: Vec<DetectorChannelConfig>,
}

mod cfg_detector {
    use core::ops::Range;
    pub(super) const CLOCK: Range<usize> = 0..8;
    pub(super) const GATE_OFFSET: Range<usize> = 8..12;
    pub(super) const GATE_WIDTH: Range<usize> = 12..16;
    pub(super) const DEAD_TIME: Range<usize> = 16..20;
    pub(super) const AFTERPULSE: Range<usize> = 20..24;
    pub(super) const COUNT: usize = 24;
    pub(super) const RESERVED: Range<usize> = 25..28;
    pub(super) const CHANNELS: usize = RESERVED.end;
    // Within one channel record.
    pub(super) const CH_BIAS: Range<usize> = 0..4;
    pub(super) const CH_THRESHOLD: Range<usize> = 4..6;
    pub(super) const CH_BASIS: usize = 6;
    pub(super) const CH_BIT: usize = 7;
    pub(super) const CH_LEN: usize = CH_BIT + 1;
}

/// One second in picoseconds.
const PS_PER_S: u128 = 1_000_000_000_000;

impl ConfigureDetector {
    /// Parses and validates a payload.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        use cfg_detector as f;
        let msg_type = MessageType::ConfigureDetector;
        expect_len_at_least(msg_type, p, f::CHANNELS)?;
        let n = p[f::COUNT] as usize;
        expect_len(msg_type, p, f::CHANNELS + n * f::CH_LEN)?;
        if p[f::RESERVED].iter().any(|&x| x != 0) {
            return Err(ProtocolError::ReservedBits { field: "configure-detector reserved" });
        }
        let mut channels = Vec::with_capacity(n.min(MAX_CHANNELS));
        for i in 0..n {
            let c = &p[f::CHANNELS + i * f::CH_LEN..][..f::CH_LEN];
            let bit = match c[f::CH_BIT] {
                0 => false,
                1 => true,
                _ => return Err(range_err("channel bit")),
            };
            channels.push(DetectorChannelConfig {
                bias_setpoint_na: be_u32(c, f::CH_BIAS.start),
                threshold_mv: be_u16(c, f::CH_THRESHOLD.start) as i16,
                basis: ChannelBasis::from_u8(c[f::CH_BASIS]).ok_or(range_err("channel basis"))?,
                bit,
            });
        }
        let m = ConfigureDetector {
            clock_hz: be_u64(p, f::CLOCK.start),
            gate_offset_ps: be_u32(p, f::GATE_OFFSET.start),
            gate_width_ps: be_u32(p, f::GATE_WIDTH.start),
            dead_time_gates: be_u32(p, f::DEAD_TIME.start),
            afterpulse_window_gates: be_u32(p, f::AFTERPULSE.start),
            channels,
        };
        m.validate()?;
        Ok(m)
    }
    /// Checks the field ranges.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.clock_hz == 0 {
            return Err(range_err("clock_hz"));
        }
        // Compare width·rate with 1 s instead of dividing: exact, and u128 cannot overflow.
        let period_ps_times_rate = PS_PER_S;
        if self.gate_width_ps == 0
            || self.gate_width_ps as u128 * self.clock_hz as u128 > period_ps_times_rate
        {
            return Err(range_err("gate_width_ps"));
        }
        if self.gate_offset_ps as u128 * self.clock_hz as u128 >= period_ps_times_rate {
            return Err(range_err("gate_offset_ps"));
        }
        if self.channels.is_empty() || self.channels.len() > MAX_CHANNELS {
            return Err(range_err("channel count"));
        }
        Ok(())
    }
    /// Payload bytes.
    pub fn buffer_len(&self) -> usize {
        cfg_detector::CHANNELS + self.channels.len() * cfg_detector::CH_LEN
    }
    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes.
    ///
    /// # Panics
    /// With more than 255 channels (caller misuse; [`validate`](Self::validate) allows 8).
    pub fn emit(&self, b: &mut [u8]) {
        use cfg_detector as f;
        put(b, f::CLOCK.start, &self.clock_hz.to_be_bytes());
        put(b, f::GATE_OFFSET.start, &self.gate_offset_ps.to_be_bytes());
        put(b, f::GATE_WIDTH.start, &self.gate_width_ps.to_be_bytes());
        put(b, f::DEAD_TIME.start, &self.dead_time_gates.to_be_bytes());
        put(b, f::AFTERPULSE.start, &self.afterpulse_window_gates.to_be_bytes());
        b[f::COUNT] = u8::try_from(self.channels.len()).expect("channel count checked by validate");
        put(b, f::RESERVED.start, &[0, 0, 0]);
        for (i, ch) in self.channels.iter().enumerate() {
            let c = &mut b[f::CHANNELS + i * f::CH_LEN..][..f::CH_LEN];
            put(c, f::CH_BIAS.start, &ch.bias_setpoint_na.to_be_bytes());
            put(c, f::CH_THRESHOLD.start, &ch.threshold_mv.to_be_bytes());
            c[f::CH_BASIS] = ch.basis.to_u8();
            c[f::CH_BIT] = ch.bit as u8;
        }
    }
}

/// What a board is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BoardState {
    /// After power-up or Reset: nothing configured.
    #[default]
    Unconfigured = 0,
    /// Configured, not gating / firing.
    Stopped = 1,
    /// Gating / firing.
    Running = 2,
    /// Stopped by a fault (see the error flags); needs Reset.
    Fault = 3,
}

impl BoardState {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(BoardState::Unconfigured),
            1 => Some(BoardState::Stopped),
            2 => Some(BoardState::Running),
            3 => Some(BoardState::Fault),
            _ => None,
        }
    }
}

/// Status of one channel: a detector on a detector board, a laser on a source board.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelStatus {
    /// Temperature in mK (an SNSPD at 2.1 K reads 2100; a cooled APD at −40 °C 233 150).
    pub temperature_mk: u32,
    /// Mean bias current over the interval, nA.
    pub bias_mean_na: u32,
    /// Lowest bias current seen in the interval, nA (≤ mean).
    pub bias_min_na: u32,
    /// Highest bias current seen in the interval, nA (≥ mean).
    pub bias_max_na: u32,
    /// The current the channel draws when it works as intended, nA.
    pub bias_nominal_na: u32,
    /// Events in the interval: clicks (detector) or pulses fired (source).
    pub events: u64,
}

/// Error flag bits of a [`StatusReport`] (PROTOCOL.md §5.7); the others are reserved.
pub mod error_flags {
    /// The clock / PLL is not locked.
    pub const CLOCK_UNLOCKED: u32 = 1 << 0;
    /// A temperature is outside its operating range.
    pub const TEMPERATURE: u32 = 1 << 1;
    /// A bias current is outside its allowed range (blinding alarm on a detector, laser
    /// fault on a source).
    pub const BIAS: u32 = 1 << 2;
    /// The record buffer overflowed (records were dropped, see `records_dropped`).
    pub const OVERFLOW: u32 = 1 << 3;
    /// The random number generator failed its health test (source board).
    pub const RNG: u32 = 1 << 4;
    /// Every bit version 1 defines.
    pub const KNOWN: u32 = CLOCK_UNLOCKED | TEMPERATURE | BIAS | OVERFLOW | RNG;
}

/// Board → host: the answer to a StatusRequest (PROTOCOL.md §5.7).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatusReport {
    /// What the board is doing.
    pub state: BoardState,
    /// Its firmware.
    pub firmware: FirmwareVersion,
    /// Gate at which the status was taken (end of the interval).
    pub gate: u64,
    /// Length of the interval, in gates.
    pub interval_gates: u64,
    /// Gates in the interval in which two or more detectors clicked (0 on a source board).
    pub double_clicks: u64,
    /// Board temperature in mK.
    pub board_temperature_mk: u32,
    /// Current fault conditions ([`error_flags`]).
    pub error_flags: u32,
    /// Records dropped on the board since the epoch began (buffer overflow).
    pub records_dropped: u32,
    /// Malformed datagrams the board received since the epoch began.
    pub malformed_received: u32,
    /// 0 ..= [`MAX_CHANNELS`] channels.
    pub channels: Vec<ChannelStatus>,
}

mod status {
    use core::ops::Range;
    pub(super) const STATE: usize = 0;
    pub(super) const COUNT: usize = 1;
    pub(super) const RESERVED: Range<usize> = 2..4;
    pub(super) const FIRMWARE: Range<usize> = 4..8;
    pub(super) const GATE: Range<usize> = 8..16;
    pub(super) const INTERVAL: Range<usize> = 16..24;
    pub(super) const DOUBLE_CLICKS: Range<usize> = 24..32;
    pub(super) const BOARD_TEMP: Range<usize> = 32..36;
    pub(super) const ERROR_FLAGS: Range<usize> = 36..40;
    pub(super) const DROPPED: Range<usize> = 40..44;
    pub(super) const MALFORMED: Range<usize> = 44..48;
    pub(super) const CHANNELS: usize = MALFORMED.end;
    pub(super) const CH_TEMP: Range<usize> = 0..4;
    pub(super) const CH_BIAS_MEAN: Range<usize> = 4..8;
    pub(super) const CH_BIAS_MIN: Range<usize> = 8..12;
    pub(super) const CH_BIAS_MAX: Range<usize> = 12..16;
    pub(super) const CH_BIAS_NOMINAL: Range<usize> = 16..20;
    pub(super) const CH_EVENTS: Range<usize> = 20..28;
    pub(super) const CH_LEN: usize = CH_EVENTS.end;
}

// A report with the most channels fits a datagram.
const _: () = assert!(status::CHANNELS + MAX_CHANNELS * status::CH_LEN <= super::MAX_PAYLOAD_LEN);

impl StatusReport {
    /// Parses and validates a payload.
    pub fn parse(p: &[u8]) -> Result<Self, ProtocolError> {
        use status as f;
        let msg_type = MessageType::StatusReport;
        expect_len_at_least(msg_type, p, f::CHANNELS)?;
        let n = p[f::COUNT] as usize;
        expect_len(msg_type, p, f::CHANNELS + n * f::CH_LEN)?;
        if be_u16(p, f::RESERVED.start) != 0 {
            return Err(ProtocolError::ReservedBits { field: "status reserved" });
        }
        let channels = (0..n)
            .map(|i| {
                let c = &p[f::CHANNELS + i * f::CH_LEN..][..f::CH_LEN];
                ChannelStatus {
                    temperature_mk: be_u32(c, f::CH_TEMP.start),
                    bias_mean_na: be_u32(c, f::CH_BIAS_MEAN.start),
                    bias_min_na: be_u32(c, f::CH_BIAS_MIN.start),
                    bias_max_na: be_u32(c, f::CH_BIAS_MAX.start),
                    bias_nominal_na: be_u32(c, f::CH_BIAS_NOMINAL.start),
                    events: be_u64(c, f::CH_EVENTS.start),
                }
            })
            .collect();
        let m = StatusReport {
            state: BoardState::from_u8(p[f::STATE]).ok_or(range_err("state"))?,
            firmware: FirmwareVersion::read(p, f::FIRMWARE.start),
            gate: be_u64(p, f::GATE.start),
            interval_gates: be_u64(p, f::INTERVAL.start),
            double_clicks: be_u64(p, f::DOUBLE_CLICKS.start),
            board_temperature_mk: be_u32(p, f::BOARD_TEMP.start),
            error_flags: be_u32(p, f::ERROR_FLAGS.start),
            records_dropped: be_u32(p, f::DROPPED.start),
            malformed_received: be_u32(p, f::MALFORMED.start),
            channels,
        };
        m.validate()?;
        Ok(m)
    }
    /// Checks the field ranges.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.channels.len() > MAX_CHANNELS {
            return Err(range_err("channel count"));
        }
        if self.interval_gates > self.gate {
            return Err(range_err("interval_gates"));
        }
        if self.error_flags & !error_flags::KNOWN != 0 {
            return Err(ProtocolError::ReservedBits { field: "error_flags" });
        }
        for c in &self.channels {
            if !(c.bias_min_na <= c.bias_mean_na && c.bias_mean_na <= c.bias_max_na) {
                return Err(range_err("channel bias min/mean/max"));
            }
        }
        Ok(())
    }
    /// Payload bytes.
    pub fn buffer_len(&self) -> usize {
        status::CHANNELS + self.channels.len() * status::CH_LEN
    }
    /// Writes the payload into a buffer of [`buffer_len`](Self::buffer_len) bytes.
    ///
    /// # Panics
    /// With more than 255 channels (caller misuse; [`validate`](Self::validate) allows 8).
    pub fn emit(&self, b: &mut [u8]) {
        use status as f;
        b[f::STATE] = self.state as u8;
        b[f::COUNT] = u8::try_from(self.channels.len()).expect("channel count checked by validate");
        put(b, f::RESERVED.start, &[0, 0]);
        self.firmware.write(b, f::FIRMWARE.start);
        put(b, f::GATE.start, &self.gate.to_be_bytes());
        put(b, f::INTERVAL.start, &self.interval_gates.to_be_bytes());
        put(b, f::DOUBLE_CLICKS.start, &self.double_clicks.to_be_bytes());
        put(b, f::BOARD_TEMP.start, &self.board_temperature_mk.to_be_bytes());
        put(b, f::ERROR_FLAGS.start, &self.error_flags.to_be_bytes());
        put(b, f::DROPPED.start, &self.records_dropped.to_be_bytes());
        put(b, f::MALFORMED.start, &self.malformed_received.to_be_bytes());
        for (i, ch) in self.channels.iter().enumerate() {
            let c = &mut b[f::CHANNELS + i * f::CH_LEN..][..f::CH_LEN];
            put(c, f::CH_TEMP.start, &ch.temperature_mk.to_be_bytes());
            put(c, f::CH_BIAS_MEAN.start, &ch.bias_mean_na.to_be_bytes());
            put(c, f::CH_BIAS_MIN.start, &ch.bias_min_na.to_be_bytes());
            put(c, f::CH_BIAS_MAX.start, &ch.bias_max_na.to_be_bytes());
            put(c, f::CH_BIAS_NOMINAL.start, &ch.bias_nominal_na.to_be_bytes());
            put(c, f::CH_EVENTS.start, &ch.events.to_be_bytes());
        }
    }

    /// The report as the OLT monitor reads it ([`DetectorStatus`]), given the gate rate the
    /// board was configured with. Counts become rates over the interval; an empty interval
    /// gives rates of zero.
    pub fn to_detector_status(&self, clock_hz: u64) -> DetectorStatus {
        let seconds = self.interval_gates as f64 / clock_hz.max(1) as f64;
        let rate = |n: u64| if seconds > 0.0 { n as f64 / seconds } else { 0.0 };
        let ua = |na: u32| na as f64 / 1000.0;
        DetectorStatus {
            gate: self.gate,
            interval_gates: self.interval_gates,
            detectors: self
                .channels
                .iter()
                .map(|c| DetectorChannelStatus {
                    bias_current_ua: ua(c.bias_mean_na),
                    bias_current_range_ua: (ua(c.bias_min_na), ua(c.bias_max_na)),
                    nominal_bias_current_ua: ua(c.bias_nominal_na),
                    click_rate_hz: rate(c.events),
                })
                .collect(),
            double_click_rate_hz: rate(self.double_clicks),
        }
    }
}
