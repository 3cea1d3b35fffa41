//! The `sampler` stage of `qpon-sim bench`: detection events generated per second of wall
//! time on one core.

use super::Sampler;
use crate::scenario::{DetectorProfile, Pon, Scenario};
use qpon_hw::DetectionRecord;
use serde::Serialize;
use std::time::Instant;

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SamplerBench {
    /// ONUs in the PON.
    pub onus: usize,
    /// Detector profile.
    pub detector: String,
    /// Gate rate, Hz.
    pub gate_rate_hz: f64,
    /// Simulated seconds.
    pub virtual_s: f64,
    /// Detection records generated.
    pub detections: u64,
    /// Wall-clock seconds taken.
    pub wall_s: f64,
    /// Detections per wall-clock second (one thread).
    pub events_per_s: f64,
}

/// The benchmark scenario: `onus` ONUs at 10 km behind one splitter, 1 GHz gates, the
/// given detector profile, everything else at its default.
pub fn scenario(onus: usize, detector: DetectorProfile) -> Pon {
    let mut s = Scenario { onus, ..Default::default() };
    s.receiver.detector = detector;
    s.resolve().expect("the benchmark scenario is valid")
}

/// Runs the sampler over `seconds_virtual` of `pon`, taking the records in 1 ms chunks
/// (as a driver would) and releasing pulse records older than 10 ms every 16 ms, and measures it.
pub fn run(pon: &Pon, seconds_virtual: f64) -> SamplerBench {
    let mut s = Sampler::new(pon);
    let total = (seconds_virtual * pon.gate_rate_hz) as u64;
    let chunk = (pon.gate_rate_hz * 1e-3).max(1.0) as u64;
    let mut buf: Vec<DetectionRecord> = Vec::with_capacity(1 << 16);
    let mut detections = 0u64;
    let t0 = Instant::now();
    let mut g = 0;
    while g < total {
        g = (g + chunk).min(total);
        s.advance(g);
        s.take_detections(&mut buf);
        detections += buf.len() as u64;
        buf.clear();
        if (g / chunk).is_multiple_of(16) {
            s.release_gates_before(g.saturating_sub(10 * chunk));
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    SamplerBench {
        onus: pon.onus.len(),
        detector: pon.detector_profile.name().into(),
        gate_rate_hz: pon.gate_rate_hz,
        virtual_s: seconds_virtual,
        detections,
        wall_s: wall,
        events_per_s: if wall > 0.0 { detections as f64 / wall } else { 0.0 },
    }
}

/// Detection events per second per core for an `onus`-ONU SNSPD PON at 1 GHz (10 km,
/// DESIGN.md §5 defaults) over `seconds_virtual` simulated seconds. Target: ≥ 50 M/s for
/// 128 ONUs.
pub fn events_per_second(onus: usize, seconds_virtual: f64) -> SamplerBench {
    run(&scenario(onus, DetectorProfile::Snspd), seconds_virtual)
}
