//! One OLT⇄ONU link run in-process: the real sessions, frames passed directly between
//! them, pulse look-ups answered from a table. For the end-to-end distillation benchmark
//! and for quick experiments; the whole-PON emulation adds the medium, the clock and the
//! drivers around the same sessions.

use qpon_qkd::records::{Basis, DetectionFlags, DetectionRecord, Intensity, PulseRecord};
use qpon_qkd::rng::seeded;
use qpon_qkd::secret::SecretBytes;
use qpon_qkd::session::{
    AuthMaterial, BlockStats, Event, MemoryLedger, OltSession, OnuSession, SessionConfig,
};
use qpon_qkd::time::Instant;
use rand::RngExt;
use std::collections::HashMap;

/// Synthetic records of one link: `n` detections with the given error rate on matched
/// bases, basis probability `p_z` at both ends, and the intensity mix of a 1:32 PON ONU at
/// 10 km with SNSPDs (vacuum-class detections are dark counts, 50 % errors).
pub fn synthetic_records(
    n: usize,
    qber: f64,
    p_z: f64,
    seed: u64,
) -> (Vec<DetectionRecord>, HashMap<u64, PulseRecord>) {
    let mut rng = seeded(seed);
    let weights = [0.6247, 0.3751];
    let mut dets = Vec::with_capacity(n);
    let mut pulses = HashMap::with_capacity(n);
    let mut gate = 0u64;
    for _ in 0..n {
        gate += rng.random_range(1..200u64);
        let u: f64 = rng.random();
        let k = if u < weights[0] {
            Intensity::Signal
        } else if u < weights[0] + weights[1] {
            Intensity::Decoy
        } else {
            Intensity::Vacuum
        };
        let tx = Basis::from_bit(!rng.random_bool(p_z));
        let rx = Basis::from_bit(!rng.random_bool(p_z));
        let bit: bool = rng.random();
        let p_err = if k == Intensity::Vacuum { 0.5 } else { qber };
        let rx_bit = if tx == rx { bit ^ rng.random_bool(p_err) } else { rng.random() };
        dets.push(DetectionRecord { gate, basis: rx, bit: rx_bit, flags: DetectionFlags::default() });
        pulses.insert(gate, PulseRecord { pulse: gate, basis: tx, bit, intensity: k });
    }
    (dets, pulses)
}

/// What a link run produced.
#[derive(Clone, Debug, Default)]
pub struct LinkRun {
    /// Blocks both ends emitted (with identical keys; checked).
    pub blocks: Vec<BlockStats>,
    /// Secret bits emitted (after the authentication share).
    pub secret_bits: u64,
    /// Sifted key-basis bits that went into finished or aborted blocks.
    pub sifted_bits: u64,
    /// Aborted block attempts.
    pub aborted: u64,
}

/// Runs the two sessions on the given records until nothing is left to do. Panics if the
/// ends ever disagree on a key (a bug, not an outcome).
pub fn run_link(
    cfg: &SessionConfig,
    dets: &[DetectionRecord],
    pulses: &HashMap<u64, PulseRecord>,
    seed: u64,
) -> LinkRun {
    let psk = SecretBytes::new((0..64 * 1024).map(|i| (i * 131 + 7) as u8).collect());
    let mut olt = OltSession::new(
        cfg.clone(),
        AuthMaterial::from_psk(&psk),
        Box::new(MemoryLedger::new()),
        seeded(seed),
    );
    let mut onu = OnuSession::new(cfg.clone(), AuthMaterial::from_psk(&psk), Box::new(MemoryLedger::new()));
    let mut now = Instant::ZERO;
    olt.handle_detections(now, dets);
    let mut out = LinkRun::default();
    let mut olt_keys = HashMap::new();
    let mut onu_keys = Vec::new();
    loop {
        let mut progress = false;
        while let Some(f) = olt.poll_transmit() {
            progress = true;
            let _ = onu.handle_frame(now, &f);
            while let Some(e) = onu.poll_event() {
                match e {
                    Event::NeedPulses { request, pulses: ps } => {
                        let recs: Vec<_> =
                            ps.iter().map(|p| p.and_then(|p| pulses.get(&p).copied())).collect();
                        let _ = onu.handle_pulses(now, request, &recs);
                    }
                    Event::Block(b, _) => onu_keys.push(b),
                    _ => {}
                }
            }
            while let Some(g) = onu.poll_transmit() {
                let _ = olt.handle_frame(now, &g);
            }
        }
        while let Some(e) = olt.poll_event() {
            // Taking an event may release frames that waited for it.
            progress = true;
            match e {
                Event::Block(b, s) => {
                    out.secret_bits += b.key.len() as u64;
                    out.sifted_bits += s.key_bits;
                    olt_keys.insert(b.id, b.key);
                    out.blocks.push(s);
                }
                Event::Aborted { .. } => out.aborted += 1,
                _ => {}
            }
        }
        if progress {
            continue;
        }
        match olt.poll_timeout() {
            Some(t) if olt.pending_detections() > 0 => {
                now = now.max(t);
                olt.handle_timeout(now);
            }
            _ => break,
        }
    }
    for b in onu_keys {
        let k = olt_keys.get(&b.id).expect("ONU block the OLT does not have");
        assert!(*k == b.key, "the two ends disagree on block {}", b.id);
    }
    out
}
