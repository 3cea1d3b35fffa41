//! The `sampler` stage of `qpon-sim bench`: detection events generated per second on one
//! core, by wall time and by this thread's CPU time (on a shared machine the wall time
//! also counts other processes' turns).

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
    /// This thread's CPU seconds taken (the wall-clock seconds where the CPU time is
    /// unavailable; see `cpu_time`).
    pub cpu_s: f64,
    /// Detections per CPU second of this thread.
    pub events_per_cpu_s: f64,
    /// Whether `cpu_s` is the thread's CPU time (`/proc/thread-self/schedstat`); false
    /// when it fell back to wall time.
    pub cpu_time: bool,
}

/// This thread's CPU time (ns), from the scheduler's accounting (Linux only).
pub fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
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
    let c0 = thread_cpu_ns();
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
    let cpu = match (c0, thread_cpu_ns()) {
        (Some(c0), Some(c1)) if c1 >= c0 => Some(c1.saturating_sub(c0) as f64 * 1e-9),
        _ => None,
    };
    let rate = |secs: f64| if secs > 0.0 { detections as f64 / secs } else { 0.0 };
    SamplerBench {
        onus: pon.onus.len(),
        detector: pon.detector_profile.name().into(),
        gate_rate_hz: pon.gate_rate_hz,
        virtual_s: seconds_virtual,
        detections,
        wall_s: wall,
        events_per_s: rate(wall),
        cpu_s: cpu.unwrap_or(wall),
        events_per_cpu_s: rate(cpu.unwrap_or(wall)),
        cpu_time: cpu.is_some(),
    }
}

/// Detection events per second per core for an `onus`-ONU SNSPD PON at 1 GHz (10 km,
/// DESIGN.md §5 defaults) over `seconds_virtual` simulated seconds. Target: ≥ 50 M/s for
/// 128 ONUs.
pub fn events_per_second(onus: usize, seconds_virtual: f64) -> SamplerBench {
    run(&scenario(onus, DetectorProfile::Snspd), seconds_virtual)
}
