//! # qpon-hw — the hardware boundary
//!
//! The OLT and ONU drivers read quantum records through two small traits, and nothing else
//! ("one code path for sim and hardware", DESIGN.md §4):
//!
//! - [`DetectorSource`] — the OLT's shared receiver: detection records in the OLT's time
//!   base (global gate index), polled up to a gate, plus the [`DetectorStatus`] the OLT's
//!   monitor watches (bias currents, click and double-click rates).
//! - [`PulseSource`] — one ONU's QKD source: it is told its slots and equalisation delay
//!   ([`SourceSchedule`]), and it answers, by pulse index, the pulses the ONU driver asks
//!   about ([`PulseAnswer`]). Nobody streams every pulse.
//!
//! Both traits are sans-IO friendly: no `async`, no clock, no I/O in their signatures.
//! Every call returns at once with what is available; a caller that wants more polls again
//! later. `qpon-sim`'s event sampler implements them in-process (its answers are ready
//! immediately); a board driver implements them over UDP by buffering datagrams between
//! polls (its answers arrive later, which is why pulse look-ups are request + poll).
//!
//! The record types are `qpon-qkd`'s, re-exported here so a driver needs only this crate.
//!
//! [`protocol`]: the versioned board wire protocol (v1, specified in `hw/PROTOCOL.md`) as
//! strict checked views and validated representations. Still to come (see the README's
//! features table): the host drivers over it (UDP via tokio, raw Ethernet via smoltcp) and
//! the board-side protocol server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use std::ops::Range;

pub mod protocol;

// The public interface is:
pub use qpon_qkd::records::{Basis, DetectionFlags, DetectionRecord, Intensity, PulseRecord};

/// Why a record source could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceError {
    /// The device does not answer (link down, board silent, reset in progress). The caller
    /// stops key generation for what depends on it and raises an alarm.
    Unavailable(String),
    /// A configuration was refused; `field` names the offending part.
    InvalidConfig {
        /// The offending field, e.g. `slots`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Unavailable(why) => write!(f, "record source unavailable: {why}"),
            SourceError::InvalidConfig { field, reason } => write!(f, "invalid `{field}`: {reason}"),
        }
    }
}

impl std::error::Error for SourceError {}

/// The OLT's receiver: a stream of detections in gate order, and a status for the monitor.
///
/// Call pattern: the OLT driver calls [`poll_detections`](Self::poll_detections) whenever
/// it wants more records (every few frames, say), demultiplexes them per ONU by its slot
/// map, and calls [`status`](Self::status) once per monitoring interval.
pub trait DetectorSource {
    /// Gate (clock) rate in Hz: global gate `g` is at time `g / gate_rate_hz` seconds after
    /// the receiver started.
    fn gate_rate_hz(&self) -> f64;

    /// Appends to `out`, in strictly increasing gate order, the detections not returned
    /// before, and returns the *horizon*: every detection with a gate below it has now been
    /// delivered (so the caller may close a frame or a block there).
    ///
    /// `until_gate` is what the caller would like to be complete. A simulated source
    /// generates exactly up to it (the horizon is `until_gate`); a hardware source returns
    /// what has arrived, and its horizon may be lower (never higher than it can vouch for).
    /// Detections a board lost in transit are never invented: they are simply missing.
    #[must_use = "the horizon says how far the records are complete"]
    fn poll_detections(
        &mut self,
        until_gate: u64,
        out: &mut Vec<DetectionRecord>,
    ) -> Result<u64, SourceError>;

    /// The receiver's current status (see [`DetectorStatus`]).
    fn status(&mut self) -> Result<DetectorStatus, SourceError>;
}

/// What the OLT's monitor can read from the receiver besides the records themselves.
/// Rates are averaged over the last status interval (the interval ends at `gate`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectorStatus {
    /// Gate at which the status was taken (the end of the interval it describes).
    pub gate: u64,
    /// Length of the interval, in gates.
    pub interval_gates: u64,
    /// One entry per detector.
    pub detectors: Vec<DetectorChannelStatus>,
    /// Gates in which both detectors clicked, per second.
    pub double_click_rate_hz: f64,
}

/// Status of one single-photon detector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectorChannelStatus {
    /// Mean bias current over the interval, in µA.
    pub bias_current_ua: f64,
    /// Lowest and highest bias current seen during the interval, in µA. A blinding attack
    /// pushes an APD's current far above nominal (bright light) and an SNSPD's towards zero
    /// (latched in its resistive state), if only during the attacked ONU's slots.
    pub bias_current_range_ua: (f64, f64),
    /// The current the detector draws when it works as intended, in µA.
    pub nominal_bias_current_ua: f64,
    /// Clicks of this detector per second.
    pub click_rate_hz: f64,
}

/// One ONU source's schedule: which receiver gates its pulses must land in, and how its
/// own pulse numbering relates to the OLT's gates.
///
/// Pulse `p` of the source arrives at the receiver in global gate `p + equalisation_delay`
/// (the delay comes from ranging). The source fires pulse `p` exactly when that gate lies,
/// within its frame, in one of `slots`, and the frame number is at least `from_frame`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSchedule {
    /// First frame (OLT time base, `gate / frame_gates`) the schedule applies to.
    pub from_frame: u64,
    /// Gates per frame (DESIGN.md §5: 125 000).
    pub frame_gates: u64,
    /// The gate ranges within each frame this ONU owns, sorted and disjoint, each within
    /// `0..frame_gates`. Empty: the source is silent (an ONU that left).
    pub slots: Vec<Range<u64>>,
    /// Equalisation delay in gates.
    pub equalisation_delay: u64,
}

impl SourceSchedule {
    /// Checks the structure; the error names the field.
    pub fn validate(&self) -> Result<(), SourceError> {
        let bad =
            |field: &str, reason: String| Err(SourceError::InvalidConfig { field: field.into(), reason });
        if self.frame_gates == 0 {
            return bad("frame_gates", "must be > 0".into());
        }
        let mut end = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.start >= s.end || s.end > self.frame_gates {
                return bad(
                    "slots",
                    format!("slot {i} = {s:?} must be non-empty and within 0..{}", self.frame_gates),
                );
            }
            if i > 0 && s.start < end {
                return bad("slots", format!("slot {i} = {s:?} overlaps or precedes the slot before it"));
            }
            end = s.end;
        }
        Ok(())
    }

    /// Whether the source fires pulse `pulse` under this schedule (ignoring `from_frame`).
    pub fn fires(&self, pulse: u64) -> bool {
        let in_frame = (pulse + self.equalisation_delay) % self.frame_gates;
        self.slots.iter().any(|s| s.contains(&in_frame))
    }
}

/// The answer to one [`PulseSource::request_pulses`] call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PulseAnswer {
    /// The request's id.
    pub id: u64,
    /// One entry per requested pulse index, in request order: the record, or `None` when
    /// the source did not fire that pulse or no longer keeps it (see
    /// [`PulseSource::release_before`]). This is the shape `qkd::sift::answer` takes.
    pub records: Vec<Option<PulseRecord>>,
}

/// One ONU's QKD source (weak coherent pulses, decoy-state BB84).
///
/// Call pattern: [`configure`](Self::configure) whenever the OLT sends a new slot map;
/// for each sifting round, [`request_pulses`](Self::request_pulses) with the pulse indices
/// of the announced gates, then [`poll_pulses`](Self::poll_pulses) until the answer with
/// that id is there (an in-process source answers at once, a board after a round trip);
/// [`release_before`](Self::release_before) once a block no longer needs older pulses.
pub trait PulseSource {
    /// Installs a schedule from `schedule.from_frame` on. A schedule for a frame that has
    /// already begun applies from the next frame.
    fn configure(&mut self, schedule: &SourceSchedule) -> Result<(), SourceError>;

    /// Asks for the records of `pulses` (any order, duplicates allowed); the answer comes
    /// back through [`poll_pulses`](Self::poll_pulses) tagged with `id`.
    fn request_pulses(&mut self, id: u64, pulses: &[u64]) -> Result<(), SourceError>;

    /// A finished answer, if any (in request order).
    #[must_use]
    fn poll_pulses(&mut self) -> Option<PulseAnswer>;

    /// The caller will not ask about pulses below `pulse` again; the source may forget them.
    fn release_before(&mut self, pulse: u64);
}

impl<T: DetectorSource + ?Sized> DetectorSource for Box<T> {
    fn gate_rate_hz(&self) -> f64 {
        (**self).gate_rate_hz()
    }
    fn poll_detections(
        &mut self,
        until_gate: u64,
        out: &mut Vec<DetectionRecord>,
    ) -> Result<u64, SourceError> {
        (**self).poll_detections(until_gate, out)
    }
    fn status(&mut self) -> Result<DetectorStatus, SourceError> {
        (**self).status()
    }
}

impl<T: PulseSource + ?Sized> PulseSource for Box<T> {
    fn configure(&mut self, schedule: &SourceSchedule) -> Result<(), SourceError> {
        (**self).configure(schedule)
    }
    fn request_pulses(&mut self, id: u64, pulses: &[u64]) -> Result<(), SourceError> {
        (**self).request_pulses(id, pulses)
    }
    fn poll_pulses(&mut self) -> Option<PulseAnswer> {
        (**self).poll_pulses()
    }
    fn release_before(&mut self, pulse: u64) {
        (**self).release_before(pulse)
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // a slot list with one slot is what is meant
mod tests {
    use super::*;

    #[test]
    fn schedule_validation_names_the_field() {
        let ok = SourceSchedule {
            from_frame: 0,
            frame_gates: 100,
            slots: vec![0..10, 20..30],
            equalisation_delay: 7,
        };
        ok.validate().unwrap();
        let overlap = SourceSchedule { slots: vec![0..10, 5..30], ..ok.clone() };
        assert!(
            matches!(overlap.validate(), Err(SourceError::InvalidConfig { field, .. }) if field == "slots")
        );
        let outside = SourceSchedule { slots: vec![90..101], ..ok.clone() };
        assert!(outside.validate().is_err());
        let zero = SourceSchedule { frame_gates: 0, ..ok.clone() };
        assert!(
            matches!(zero.validate(), Err(SourceError::InvalidConfig { field, .. }) if field == "frame_gates")
        );
    }

    #[test]
    fn fires_follows_delay_and_frame() {
        let s =
            SourceSchedule { from_frame: 0, frame_gates: 100, slots: vec![10..20], equalisation_delay: 5 };
        assert!(s.fires(5)); // arrives at gate 10
        assert!(!s.fires(4));
        assert!(s.fires(14) && !s.fires(15));
        assert!(s.fires(105));
    }
}
