//! Ranging and equalisation: making every ONU appear at the same logical distance.
//!
//! As in GPON (ITU-T G.984.3, `Ranging_Time` / equalisation delay), the OLT measures each
//! ONU's round-trip delay `RTD_k` and assigns it an equalisation delay `EqD_k = T_eqd −
//! RTD_k`, where `T_eqd` (the *logical delay*, [`RangingConfig::logical_delay`]) is one
//! value for the whole PON, at least the largest round trip the PON supports. Every ONU then
//! behaves as if it were `T_eqd` away, and one slot map in OLT gates serves them all.
//!
//! # Pulse numbering (the convention the whole stack shares)
//!
//! The ONU recovers the OLT's gate clock and frame counter from the downstream signal. Its
//! pulse `p` is the pulse it associates with the OLT's gate `p` *as received downstream*;
//! it fires that pulse `EqD_k` ticks after receiving gate `p`'s clock edge. The pulse then
//! travels upstream and reaches the receiver in global gate
//!
//! ```text
//!     gate = p + d_down + EqD_k + d_up = p + RTD_k + EqD_k = p + T_eqd
//! ```
//!
//! [`Equalisation::pulse_clock`] returns the [`PulseClock`] holding that offset; the OLT
//! announces gates in its time base and the ONU recovers its pulses with
//! [`PulseClock::pulse_of_gate`] (DESIGN.md §3 item 3). An ONU fires pulse `p` only when
//! `gate_of_pulse(p)` is in one of its own slots under the map in force in that gate's frame
//! ([`PulseClock::fires`]). A source that numbers pulses differently (e.g. the simulator,
//! whose "equalisation delay" is simply its fibre delay) is described by a `PulseClock`
//! with its own offset: only the offset between pulse index and gate index matters.
//!
//! Round trips are whole gates here. Aligning a pulse inside its gate (tens of picoseconds)
//! is the hardware's fine delay and is out of this crate's scope.

use serde::{Deserialize, Serialize};

use crate::history::SlotMapSchedule;
use crate::slot_map::{OnuId, SlotMap};

/// One-way propagation delay in standard fibre, in nanoseconds per kilometre (DESIGN.md §7).
pub const FIBRE_DELAY_NS_PER_KM: f64 = 5_000.0;

/// Round-trip delay, in gates, of an ONU `distance_km` of fibre away from the OLT,
/// rounded to the nearest gate.
///
/// # Panics
/// If the distance or the gate rate is negative or not finite.
pub fn round_trip_gates(distance_km: f64, gate_rate_hz: f64) -> u64 {
    assert!(distance_km.is_finite() && distance_km >= 0.0, "distance {distance_km} km");
    assert!(gate_rate_hz.is_finite() && gate_rate_hz > 0.0, "gate rate {gate_rate_hz} Hz");
    (2.0 * distance_km * FIBRE_DELAY_NS_PER_KM * 1e-9 * gate_rate_hz).round() as u64
}

/// Why ranging failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangingError {
    /// The ONU's answer arrived before the request could have reached it and come back.
    #[error(
        "ranging response at gate {received} is earlier than request gate {sent} plus response time {response}"
    )]
    ImpossibleResponse {
        /// Gate the request left the OLT.
        sent: u64,
        /// Gate the response arrived.
        received: u64,
        /// The ONU's fixed response time, in gates.
        response: u64,
    },
    /// The ONU is farther away than the PON's logical delay allows.
    #[error("round trip of {round_trip} gates exceeds the logical delay of {logical_delay} gates")]
    BeyondReach {
        /// The measured round trip.
        round_trip: u64,
        /// The configured logical delay.
        logical_delay: u64,
    },
}

/// PON-wide ranging settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangingConfig {
    /// `T_eqd`: the round trip, in gates, every ONU is equalised to; must be at least the
    /// largest round trip on the PON.
    pub logical_delay: u64,
    /// The ONU's fixed delay between receiving a ranging request and sending its answer,
    /// in gates (subtracted from the measured interval).
    pub response_time: u64,
}

impl RangingConfig {
    /// A logical delay covering `max_reach_km` of fibre at `gate_rate_hz`, plus
    /// `margin_gates` (e.g. for the receiver's internal delays).
    pub fn for_reach(max_reach_km: f64, gate_rate_hz: f64, margin_gates: u64, response_time: u64) -> Self {
        Self { logical_delay: round_trip_gates(max_reach_km, gate_rate_hz) + margin_gates, response_time }
    }

    /// The round trip measured by a ranging exchange: request sent in gate `sent`, answer
    /// received in gate `received`, less the ONU's response time.
    pub fn measure(&self, sent: u64, received: u64) -> Result<u64, RangingError> {
        received
            .checked_sub(sent)
            .and_then(|d| d.checked_sub(self.response_time))
            .ok_or(RangingError::ImpossibleResponse { sent, received, response: self.response_time })
    }

    /// The equalisation for an ONU with round trip `round_trip` gates.
    pub fn equalise(&self, round_trip: u64) -> Result<Equalisation, RangingError> {
        if round_trip > self.logical_delay {
            return Err(RangingError::BeyondReach { round_trip, logical_delay: self.logical_delay });
        }
        Ok(Equalisation { round_trip, delay: self.logical_delay - round_trip })
    }
}

impl Default for RangingConfig {
    /// 20 km reach (DESIGN.md §5: ONUs up to 20 km) at 1 GHz, no margin, no response time.
    fn default() -> Self {
        Self::for_reach(20.0, 1e9, 0, 0)
    }
}

/// One ONU's ranging result: its round trip and the equalisation delay assigned to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Equalisation {
    round_trip: u64,
    delay: u64,
}

impl Equalisation {
    /// Measured round trip `RTD`, in gates.
    pub const fn round_trip(&self) -> u64 {
        self.round_trip
    }

    /// Assigned equalisation delay `EqD = T_eqd − RTD`, in gates (sent to the ONU).
    pub const fn delay(&self) -> u64 {
        self.delay
    }

    /// `RTD + EqD = T_eqd`: the same for every ONU on the PON.
    pub const fn logical_delay(&self) -> u64 {
        self.round_trip + self.delay
    }

    /// The pulse ↔ gate mapping this equalisation produces (see the module doc).
    pub const fn pulse_clock(&self) -> PulseClock {
        PulseClock::new(self.logical_delay())
    }
}

/// Maps an ONU's pulse indices to the OLT's global gate indices: `gate = pulse + offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PulseClock {
    offset: u64,
}

impl PulseClock {
    /// A clock whose pulse `p` lands in gate `p + offset`.
    pub const fn new(offset: u64) -> Self {
        Self { offset }
    }

    /// Gates between a pulse's index and the gate it lands in.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// The gate pulse `pulse` lands in (`None` on overflow).
    pub const fn gate_of_pulse(&self, pulse: u64) -> Option<u64> {
        pulse.checked_add(self.offset)
    }

    /// The pulse that lands in gate `gate` (`None` for gates before the ONU's pulse 0).
    pub const fn pulse_of_gate(&self, gate: u64) -> Option<u64> {
        gate.checked_sub(self.offset)
    }

    /// Whether `onu` fires pulse `pulse` under `schedule`: the gate it lands in belongs to
    /// `onu` under the map in force in that gate's frame.
    pub fn fires(&self, schedule: &SlotMapSchedule, onu: OnuId, pulse: u64) -> bool {
        self.gate_of_pulse(pulse).is_some_and(|g| schedule.owner_of(g) == Some(onu))
    }

    /// Whether `onu` fires pulse `pulse` under the single map `map` (from its
    /// `active_from_frame` on).
    pub fn fires_under(&self, map: &SlotMap, onu: OnuId, pulse: u64) -> bool {
        self.gate_of_pulse(pulse).is_some_and(|g| map.owner_of(g) == Some(onu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot_map::Slot;

    #[test]
    fn round_trip_from_distance() {
        // 10 µs per km round trip: 10 000 gates per km at 1 GHz.
        assert_eq!(round_trip_gates(1.0, 1e9), 10_000);
        assert_eq!(round_trip_gates(20.0, 1e9), 200_000);
        assert_eq!(round_trip_gates(0.0, 1e9), 0);
        assert_eq!(round_trip_gates(2.5, 1e8), 2_500);
        assert_eq!(RangingConfig::default().logical_delay, 200_000);
    }

    #[test]
    fn every_onu_appears_at_the_same_logical_distance() {
        let cfg = RangingConfig::for_reach(20.0, 1e9, 500, 0);
        let clocks: Vec<PulseClock> = [0.3, 2.0, 10.0, 19.9, 20.0]
            .iter()
            .map(|&km| cfg.equalise(round_trip_gates(km, 1e9)).unwrap())
            .inspect(|e| assert_eq!(e.round_trip() + e.delay(), cfg.logical_delay))
            .map(|e| e.pulse_clock())
            .collect();
        assert!(clocks.windows(2).all(|w| w[0] == w[1]));
        // Farther ONUs wait less.
        let near = cfg.equalise(round_trip_gates(2.0, 1e9)).unwrap();
        let far = cfg.equalise(round_trip_gates(20.0, 1e9)).unwrap();
        assert_eq!(near.delay() - far.delay(), far.round_trip() - near.round_trip());
        assert_eq!(
            cfg.equalise(round_trip_gates(21.0, 1e9)),
            Err(RangingError::BeyondReach { round_trip: 210_000, logical_delay: 200_500 })
        );
    }

    #[test]
    fn measuring_a_round_trip() {
        let cfg = RangingConfig { logical_delay: 300_000, response_time: 1_000 };
        // An ONU 12 km away answers after 1 000 gates: the OLT sees it 121 000 gates later.
        let sent = 5_000_000;
        let rtd = cfg.measure(sent, sent + round_trip_gates(12.0, 1e9) + 1_000).unwrap();
        assert_eq!(rtd, round_trip_gates(12.0, 1e9));
        assert!(matches!(cfg.measure(sent, sent + 999), Err(RangingError::ImpossibleResponse { .. })));
        assert!(cfg.measure(sent, sent - 1).is_err());
    }

    #[test]
    fn pulse_gate_translation_round_trips() {
        let clock = PulseClock::new(200_000);
        for p in [0u64, 1, 124_999, 1 << 40] {
            let g = clock.gate_of_pulse(p).unwrap();
            assert_eq!(g - p, 200_000);
            assert_eq!(clock.pulse_of_gate(g), Some(p));
        }
        assert_eq!(clock.pulse_of_gate(199_999), None);
        assert_eq!(clock.gate_of_pulse(u64::MAX), None);
    }

    #[test]
    fn an_onu_fires_only_into_its_own_slots() {
        let a = OnuId(1);
        let b = OnuId(2);
        let map = SlotMap::new(
            1_000,
            20,
            1,
            0,
            vec![Slot { start: 0, len: 400, owner: a }, Slot { start: 500, len: 400, owner: b }],
        )
        .unwrap();
        let schedule = SlotMapSchedule::new(map.clone());
        let clock = PulseClock::new(2_345);
        for p in 0..5_000u64 {
            let g = p + 2_345;
            let off = g % 1_000;
            assert_eq!(clock.fires(&schedule, a, p), off < 400, "pulse {p}");
            assert_eq!(clock.fires(&schedule, b, p), (500..900).contains(&off));
            assert_eq!(clock.fires_under(&map, a, p), clock.fires(&schedule, a, p));
            assert!(!(clock.fires(&schedule, a, p) && clock.fires(&schedule, b, p)));
        }
    }
}
