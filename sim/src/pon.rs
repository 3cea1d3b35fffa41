//! The whole-PON emulation: the real OLT and ONU drivers, the sampler as their hardware,
//! a simulated medium, one discrete-event clock (DESIGN.md §7).
//!
//! - **Clock.** Virtual nanoseconds. The receiver is polled every `tick` (its records
//!   are handed to the OLT driver), frames on the medium arrive after the ONU's fibre
//!   delay (5 µs/km), and session timers fire when due. CPU work takes zero virtual time;
//!   work spread over threads is joined before the clock moves, so a run is reproducible
//!   from its seed whatever the threads did.
//! - **Medium.** Each frame is delivered after the fibre delay of its ONU, or dropped by a
//!   seeded fault injector with probability `drop_chance`; the sessions retransmit.
//!   (Deviation from DESIGN.md §6 for now: frames travel as datagrams on the simulated
//!   medium, not over a smoltcp TCP/IP stack.)
//! - **Agreement.** Both ends' pools are compared at the end: every block the ONU holds
//!   must be in the OLT's pool with the same key.

use crate::sampler::{GATES_PER_KM_AT_1GHZ, SimPon, SimSource};
use crate::scenario::Pon;
use qpon_hw::DetectorSource;
use qpon_kms::MemoryPool;
use qpon_mux::{OnuId, Slot, SlotMap, SlotMapSchedule};
use qpon_olt::{OltDriver, OnuLink};
use qpon_onu::OnuDriver;
use qpon_qkd::finite_key::DecoyParams;
use qpon_qkd::rng::{ChaCha20Rng, seeded};
use qpon_qkd::secret::SecretBytes;
use qpon_qkd::session::{AuthMaterial, MemoryLedger, OltSession, OnuSession, SessionConfig};
use qpon_qkd::time::{Duration, Instant};
use rand::RngExt;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

/// Options of one emulation run.
#[derive(Clone, Debug)]
pub struct PonOptions {
    /// Virtual seconds to run.
    pub seconds: f64,
    /// Seed of the medium's fault injector, the sessions' RNGs and the pre-shared secrets
    /// (the sampler has its own seed in the scenario).
    pub seed: u64,
    /// Probability that a frame on the medium is lost.
    pub drop_chance: f64,
    /// Worker threads for the ONUs' work.
    pub workers: usize,
    /// How often the receiver is polled, virtual seconds.
    pub tick_s: f64,
    /// Sessions' configuration template (the ONU id, decoy parameters and equalisation
    /// offset are filled in per ONU).
    pub session: SessionConfig,
}

impl Default for PonOptions {
    fn default() -> Self {
        Self {
            seconds: 30.0,
            seed: 1,
            drop_chance: 0.0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tick_s: 0.01,
            // Frames travel as datagrams here (no TCP underneath), so the sessions' own
            // retransmission timer must be short against the block time; the round trip
            // is ~0.1 ms.
            session: SessionConfig { rto: Duration::from_millis(5), ..SessionConfig::default() },
        }
    }
}

/// One ONU's line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct OnuReport {
    /// ONU index.
    pub onu: usize,
    /// Share of the receiver's gates the ONU owns.
    pub slot_share: f64,
    /// Detections attributed to it.
    pub detections: u64,
    /// Key-basis QBER found by reconciliation (over finished blocks).
    pub qber: f64,
    /// Finished blocks (in the OLT's pool).
    pub blocks: u64,
    /// Secret bits in the OLT's pool.
    pub secret_bits: u64,
    /// Secret bits per virtual second.
    pub key_rate_bits_per_s: f64,
    /// Authentication bits the OLT spent on this ONU (hash keys and pads).
    pub auth_bits_spent: u64,
    /// Pool level at the OLT, bits.
    pub pool_bits: u64,
    /// Blocks held identically by both ends (the rest are in flight at the end).
    pub blocks_agreeing: u64,
    /// Aborted blocks by reason.
    pub aborted: std::collections::BTreeMap<String, u64>,
    /// Alarms raised for this ONU.
    pub alarms: Vec<String>,
}

/// Totals over all ONUs.
#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    /// ONUs.
    pub onus: usize,
    /// Virtual seconds.
    pub seconds: f64,
    /// Detections (all ONUs).
    pub detections: u64,
    /// Finished blocks.
    pub blocks: u64,
    /// Secret bits.
    pub secret_bits: u64,
    /// Secret bits per virtual second.
    pub key_rate_bits_per_s: f64,
    /// Frames sent on the medium / dropped by the fault injector.
    pub frames: u64,
    /// See `frames`.
    pub frames_dropped: u64,
    /// Blocks where the two ends disagree (must be 0).
    pub blocks_disagreeing: u64,
}

/// The report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct PonReport {
    /// Per ONU.
    pub onus: Vec<OnuReport>,
    /// Totals.
    pub aggregate: Aggregate,
}

/// Builds the OLT's slot map (`qpon-mux`) from the sampler's.
fn mux_map(pon: &Pon) -> SlotMap {
    let frame = pon.map.frame_gates;
    let mut slots: Vec<Slot> = Vec::new();
    for (i, rs) in pon.map.slots.iter().enumerate() {
        for r in rs {
            slots.push(Slot { start: r.start as u32, len: (r.end - r.start) as u32, owner: OnuId(i as u16) });
        }
    }
    slots.sort_by_key(|s| s.start);
    // The guard is the smallest gap between consecutive slots (including across the
    // frame boundary).
    let mut guard = u64::MAX;
    for w in slots.windows(2) {
        guard = guard.min(u64::from(w[1].start) - u64::from(w[0].start + w[0].len));
    }
    if let (Some(f), Some(l)) = (slots.first(), slots.last()) {
        guard = guard.min(frame - u64::from(l.start + l.len) + u64::from(f.start));
    }
    let guard = if guard == u64::MAX { 0 } else { guard };
    SlotMap::new(frame as u32, guard as u32, 1, 0, slots).expect("the sampler's slot map is valid")
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    upstream: bool,
    onu: u16,
    bytes: Vec<u8>,
}

/// The pre-shared secret of ONU `k` in the emulation (both ends derive it from the seed).
fn psk(seed: u64, k: usize, bytes: usize) -> SecretBytes {
    let mut rng = seeded(seed ^ 0x5053_4b00 ^ ((k as u64) << 32));
    let mut v = vec![0u8; bytes];
    rand::Rng::fill_bytes(&mut rng, &mut v);
    SecretBytes::new(v)
}

/// Runs the emulation. `progress` is called with the virtual time reached (seconds).
pub fn run(pon: &Pon, opts: &PonOptions, mut progress: impl FnMut(f64)) -> PonReport {
    let n = pon.onus.len();
    let sim = SimPon::new(pon);
    let mut detector = sim.detector();
    let map = mux_map(pon);
    let mut olt: OltDriver<ChaCha20Rng> = OltDriver::new(SlotMapSchedule::new(map.clone()), opts.workers);
    let mut onus: Vec<OnuDriver<SimSource>> = Vec::with_capacity(n);
    let mut olt_pools = Vec::with_capacity(n);
    let mut onu_pools = Vec::with_capacity(n);
    let mut delays = Vec::with_capacity(n);
    for (k, o) in pon.onus.iter().enumerate() {
        let delay_gates = (o.length_km * GATES_PER_KM_AT_1GHZ * pon.gate_rate_hz / 1e9).round() as u64;
        let cfg = SessionConfig {
            onu: k as u16,
            decoy: DecoyParams { mu: o.model.source.mu, p: o.model.source.p },
            eps_sec: pon.security.eps_sec,
            eps_cor: pon.security.eps_cor,
            block_bits: pon.security.block as usize,
            pulse_offset: delay_gates as i64,
            ..opts.session.clone()
        };
        let key = psk(opts.seed, k, 64 * 1024);
        let olt_pool = Arc::new(Mutex::new(MemoryPool::new()));
        let onu_pool = Arc::new(Mutex::new(MemoryPool::new()));
        let session = OltSession::new(
            cfg.clone(),
            AuthMaterial::from_psk(&key),
            Box::new(MemoryLedger::new()),
            seeded(opts.seed.wrapping_mul(1_000_003).wrapping_add(k as u64)),
        );
        olt.add_onu(k as u16, OnuLink::new(session, Box::new(olt_pool.clone())));
        let onu_session = OnuSession::new(cfg, AuthMaterial::from_psk(&key), Box::new(MemoryLedger::new()));
        onus.push(OnuDriver::new(onu_session, sim.source(k), Box::new(onu_pool.clone())));
        olt_pools.push(olt_pool);
        onu_pools.push(onu_pool);
        // Fibre delay of the classical channel: 5 µs/km.
        delays.push(Duration::from_nanos((o.length_km * 5_000.0).round() as u64));
    }

    let mut fault = seeded(opts.seed ^ 0xFA17);
    let mut medium: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0u64;
    let (mut frames, mut dropped) = (0u64, 0u64);
    let end = Instant::from_nanos((opts.seconds * 1e9) as u64);
    let tick = Duration::from_nanos((opts.tick_s * 1e9).max(1.0) as u64);
    let mut next_tick = Instant::ZERO;
    let mut now = Instant::ZERO;
    let mut records = Vec::new();
    let mut last_progress = 0.0;

    loop {
        // Send what the drivers produced.
        let mut send = |upstream: bool, onu: u16, bytes: Vec<u8>, now: Instant| {
            frames += 1;
            if opts.drop_chance > 0.0 && fault.random_bool(opts.drop_chance.min(1.0)) {
                dropped += 1;
                return;
            }
            seq += 1;
            let at = now + delays[onu as usize];
            medium.push(Reverse(InFlight { at, seq, upstream, onu, bytes }));
        };
        while let Some((onu, f)) = olt.poll_transmit() {
            send(false, onu, f, now);
        }
        for (k, d) in onus.iter_mut().enumerate() {
            while let Some(f) = d.poll_transmit() {
                send(true, k as u16, f, now);
            }
        }

        let next_frame = medium.peek().map(|Reverse(f)| f.at);
        let next =
            [Some(next_tick), next_frame, olt.poll_timeout()].into_iter().flatten().min().unwrap_or(end);
        if next >= end {
            break;
        }
        now = now.max(next);
        if now.as_secs_f64() - last_progress >= 0.1 {
            last_progress = now.as_secs_f64();
            progress(last_progress);
        }

        // Frames due now.
        let mut up: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut down_by_onu: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
        while medium.peek().is_some_and(|Reverse(f)| f.at <= now) {
            let Some(Reverse(f)) = medium.pop() else { break };
            if f.upstream {
                up.push((f.onu, f.bytes));
            } else {
                down_by_onu[f.onu as usize].push(f.bytes);
            }
        }
        if !up.is_empty() {
            olt.handle_frames(now, up);
        }
        deliver_down(&mut onus, down_by_onu, now, opts.workers);

        if now >= next_tick {
            let until = (now.as_secs_f64() * pon.gate_rate_hz) as u64;
            records.clear();
            if detector.poll_detections(until, &mut records).is_ok() {
                olt.handle_detections(now, &records);
            }
            next_tick = now + tick;
        }
        if olt.poll_timeout().is_some_and(|t| t <= now) {
            olt.handle_timeout(now);
        }
    }
    progress(opts.seconds);
    report(pon, opts, &map, &olt, &olt_pools, &onu_pools, frames, dropped)
}

/// Hands downstream frames to their ONUs, spreading ONUs over the workers.
fn deliver_down(onus: &mut [OnuDriver<SimSource>], frames: Vec<Vec<Vec<u8>>>, now: Instant, workers: usize) {
    let busy: Vec<(&mut OnuDriver<SimSource>, Vec<Vec<u8>>)> =
        onus.iter_mut().zip(frames).filter(|(_, f)| !f.is_empty()).collect();
    qpon_olt::run_parallel(busy, workers, |(d, fs)| {
        for f in fs {
            let _ = d.handle_frame(now, &f);
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn report(
    pon: &Pon,
    opts: &PonOptions,
    map: &SlotMap,
    olt: &OltDriver<ChaCha20Rng>,
    olt_pools: &[Arc<Mutex<MemoryPool>>],
    onu_pools: &[Arc<Mutex<MemoryPool>>],
    frames: u64,
    frames_dropped: u64,
) -> PonReport {
    let mut out = Vec::new();
    let mut disagreeing = 0;
    for k in 0..pon.onus.len() {
        let link = olt.onu(k as u16).expect("every ONU was added");
        let s = &link.stats;
        let olt_pool = olt_pools[k].lock().unwrap_or_else(|e| e.into_inner());
        let onu_pool = onu_pools[k].lock().unwrap_or_else(|e| e.into_inner());
        let mut agreeing = 0;
        for (id, key) in onu_pool.entries() {
            match olt_pool.entries().iter().find(|(i, _)| i == id) {
                Some((_, k2)) if k2 == key => agreeing += 1,
                _ => disagreeing += 1,
            }
        }
        out.push(OnuReport {
            onu: k,
            slot_share: map.share(OnuId(k as u16)),
            detections: s.detections,
            qber: s.qber(),
            blocks: s.blocks,
            secret_bits: s.secret_bits,
            key_rate_bits_per_s: s.secret_bits as f64 / opts.seconds,
            auth_bits_spent: link.session.auth_bits_spent(),
            pool_bits: qpon_kms::KeyPool::level_bits(&*olt_pool),
            blocks_agreeing: agreeing,
            aborted: s.aborted.clone(),
            alarms: Vec::new(),
        });
    }
    let aggregate = Aggregate {
        onus: out.len(),
        seconds: opts.seconds,
        detections: out.iter().map(|o| o.detections).sum(),
        blocks: out.iter().map(|o| o.blocks).sum(),
        secret_bits: out.iter().map(|o| o.secret_bits).sum(),
        key_rate_bits_per_s: out.iter().map(|o| o.key_rate_bits_per_s).sum(),
        frames,
        frames_dropped,
        blocks_disagreeing: disagreeing,
    };
    PonReport { onus: out, aggregate }
}
