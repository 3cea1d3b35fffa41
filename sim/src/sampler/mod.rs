//! The event sampler: the receiver's detection records and every ONU's pulse records,
//! consistent with [`crate::model`], at a cost proportional to the number of detections.
//!
//! # How it works
//!
//! Within a run of gates owned by one ONU every gate clicks (before dead time and
//! afterpulses) with the same mean probability D̄ = Σ p_k·p(b_s)·p(b_r)·D_{k,b_s,b_r},
//! independently of every other gate. The sampler therefore first generates the
//! *candidate* clicks of a whole frame: the points of a unit-rate Poisson process in
//! cumulative-hazard space (a running sum of Exp(1) variates; each segment contributes
//! −ln(1−D̄) per gate), each mapped to its gate through a bucket index over the frame's
//! cumulative hazard. A gate is a candidate when at least one point falls in it, which
//! happens with probability 1 − e^{−λ} = D̄. Frames without any point are skipped by
//! division, so gates are never visited one by one, and the candidate loop does not depend
//! on the detections, which keeps the CPU's pipelines full.
//!
//! The candidates then become detections in gate order: one in a gate where the receiver
//! is dead (within `dead_time` gates of the last detection) is dropped, which is exact
//! because the gates after a dead window are independent of everything before it. At a
//! detection in an ONU's gate one 64-bit word settles everything: its top 32 bits draw the
//! intensity class, both bases and the detector outcome (correct, wrong, double) jointly
//! from the click-conditional distribution (one alias table over 12 × 3 entries, shared by
//! the ONUs whose tables are equal, so that it stays in L1), and its low bits give the
//! encoded bit, the coin of a double click and the afterpulse decision — no data-dependent
//! branch (a basis mismatch makes the outcome a coin flip, which a branch mispredicts).
//! The drawn entry and the two low bits index tables of ready-made pulse and detection
//! records, so the sampler copies the ONU's pulse record and the detection record from
//! them, setting the pulse index and the gate. The common case (no afterpulse pending, an
//! ONU's gate) runs in a loop of its own, `detect_run`, that makes no call. With
//! probability p_ap a detection queues an afterpulse `dead_time + 1 + m` gates later (m
//! from the afterpulse kernel); an afterpulse that lands in a live gate is a detection with a random bit, on
//! whatever pulse owns that gate — the same ONU's or the next slot's.
//!
//! Pulses that did not click are never generated. If an ONU is asked about one, its record
//! is drawn from the no-click conditional distribution with a hash of (seed, ONU, pulse)
//! as randomness, so the answer is the same however often it is asked.
//!
//! Randomness: two wyrand streams (see `FastRng`) seeded (through SplitMix64) from the
//! scenario seed — fast simulation generators, not key material: one for the candidates' Exp(1)
//! variates (a ziggurat, [`exp`]), one for everything drawn at a detection; each is drawn
//! into a buffer in a loop of its own and consumed in order. A frame's candidates are
//! generated only once the caller's horizon reaches it (several frames per call when the
//! horizon reaches several), so given the seed and the same sequence of calls the output
//! is identical, and splitting a run into different poll chunks gives exactly the same
//! records. A schedule change (see [`Sampler::configure`]) restarts the
//! candidate process where it takes effect with a fresh variate, which is exact because
//! gates are independent.
//!
//! Probabilities are resolved to 2⁻³⁰ or better (2⁻³² for the joint class/basis/outcome
//! draw and for dark counts in guard and idle gates, 2⁻³⁰ for the afterpulse decision).

pub mod bench;
mod exp;

use crate::model::{CellTable, DetectorModel, SlotMap};
use crate::planning::tables;
use crate::scenario::Pon;
use exp::Ziggurat;
use qpon_hw::{
    Basis, DetectionFlags, DetectionRecord, DetectorChannelStatus, DetectorSource, DetectorStatus, Intensity,
    PulseAnswer, PulseRecord, PulseSource, SourceError, SourceSchedule,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Gates of propagation delay per km of fibre at 1 GHz (5 µs/km, DESIGN.md §7).
pub const GATES_PER_KM_AT_1GHZ: f64 = 5000.0;

/// Wyrand (Wang Yi's generator from wyhash, final version 4.2, 2023;
/// <https://github.com/wangyi-fudan/wyhash>): the simulation's random stream. The state is
/// a 64-bit Weyl counter advanced by an odd constant; a word is the 64 × 64 → 128-bit
/// product of the counter and the counter xor a second constant, folded (high xor low).
/// It passes TestU01's BigCrush and PractRand (as reported by its author); its period is
/// 2⁶⁴ words — millennia at the sampler's rate.
///
/// It replaced xoshiro256++ (Blackman & Vigna 2018): one multiply and three other
/// instructions a word where xoshiro took eleven, and as successive words depend on each
/// other only through one addition, a buffer fill pipelines (xoshiro's chain of shifts and
/// xors serialised it). Seeded through SplitMix64, so that nearby scenario seeds give
/// unrelated streams.
///
/// Simulation only: it is not cryptographic and must never produce key material.
#[derive(Clone, Debug)]
struct FastRng {
    s: u64,
}

/// Wyrand's Weyl increment and its xor constant (wyhash's `_wyp[0]`, `_wyp[1]`).
const WY0: u64 = 0xa076_1d64_78bd_642f;
const WY1: u64 = 0xe703_7ed1_a0b4_28db;

impl FastRng {
    fn seed_from_u64(seed: u64) -> FastRng {
        FastRng { s: splitmix(seed) }
    }

    #[inline(always)]
    fn next_u64(&mut self) -> u64 {
        self.s = self.s.wrapping_add(WY0);
        wymix(self.s)
    }
}

/// Wyrand's output function of the counter value `s`.
#[inline(always)]
fn wymix(s: u64) -> u64 {
    let t = u128::from(s) * u128::from(s ^ WY1);
    (t >> 64) as u64 ^ t as u64
}

/// Exp(1) variates drawn per batch.
const EBUF: usize = 256;

/// Random words for detections drawn per batch.
const DBUF: usize = 256;

/// Candidates after which `generate` goes into no further frame.
const GEN_BATCH: usize = 4096;

/// Fills `buf` with words of `rng`.
#[inline(never)]
fn fill_u64(rng: &mut FastRng, buf: &mut [u64]) {
    // Word i depends on the one before only through the counter's addition, so the
    // multiplies of successive words overlap (the same stream as calling `next_u64`).
    // Four words a step, each from its own counter value, written as scalar code: left
    // to itself the loop vectoriser packs the counters into SSE registers and moves every
    // one out and back for the 128-bit multiply (13 instructions a word instead of 6).
    let mut c = rng.s;
    let mut chunks = buf.chunks_exact_mut(4);
    for w in &mut chunks {
        let (c1, c2, c3, c4) = (
            c.wrapping_add(WY0),
            c.wrapping_add(WY0.wrapping_mul(2)),
            c.wrapping_add(WY0.wrapping_mul(3)),
            c.wrapping_add(WY0.wrapping_mul(4)),
        );
        w[0] = wymix(c1);
        w[1] = wymix(c2);
        w[2] = wymix(c3);
        w[3] = wymix(c4);
        c = c4;
    }
    for x in chunks.into_remainder() {
        c = c.wrapping_add(WY0);
        *x = wymix(c);
    }
    rng.s = c;
}

/// 1.5·2⁵²: for 0 ≤ x < 2³¹, the low 32 bits of `(x + ROUND_MAGIC).to_bits()` are x
/// rounded to the nearest integer.
const ROUND_MAGIC: f64 = 6755399441055744.0;

/// "No such gate": beyond every horizon.
const NEVER: u64 = u64::MAX;

/// A candidate click: its gate and its segment (an index into `Sampler::seg_det`, which
/// holds what the detection needs; 16 bytes, where copying those fields made 24).
#[derive(Clone, Copy, Debug, Default)]
struct Cand {
    gate: u64,
    seg: u32,
}

/// Twelve categories (k, b_s, b_r) → index k·4 + b_s·2 + b_r.
const CATS: usize = 12;

/// Walker/Vose alias table over the twelve categories.
#[derive(Clone, Debug)]
struct Alias {
    /// Keep category i when the low 32 bits are below this (scaled to 2³²).
    keep: [u64; CATS],
    alias: [u8; CATS],
}

impl Alias {
    fn new(w: &[f64; CATS]) -> Alias {
        let sum: f64 = w.iter().sum();
        let mut keep = [1u64 << 32; CATS];
        let mut alias = [0u8; CATS];
        for (i, a) in alias.iter_mut().enumerate() {
            *a = i as u8;
        }
        if sum.is_nan() || sum <= 0.0 {
            return Alias { keep, alias };
        }
        let mut scaled: Vec<f64> = w.iter().map(|x| x / sum * CATS as f64).collect();
        let mut small: Vec<usize> = (0..CATS).filter(|&i| scaled[i] < 1.0).collect();
        let mut large: Vec<usize> = (0..CATS).filter(|&i| scaled[i] >= 1.0).collect();
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = (scaled[s] * 4294967296.0).round() as u64;
            alias[s] = l as u8;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Alias { keep, alias }
    }

    #[inline(always)]
    fn sample(&self, u: u64) -> usize {
        let i = (((u >> 32) * CATS as u64) >> 32) as usize;
        // Branch-free: the keep/alias decision is a coin flip the predictor cannot learn.
        let a = self.alias[i] as usize;
        let keep = ((u & 0xffff_ffff) < self.keep[i]) as usize;
        a ^ ((i ^ a) & keep.wrapping_neg())
    }
}

/// Entries of a [`ClickDraw`]: twelve categories × three outcomes, padded to a power of
/// two so that the entry index is six plain random bits.
const DRAW_N: usize = 64;

/// Outcomes of a click, as stored in a [`ClickDraw`] (bits 4–5 of an entry's `what`).
const CORRECT: u8 = 0;
const WRONG: u8 = 1;
const DOUBLE: u8 = 2;

/// What a detection needs: an alias table over the joint click-conditional distribution of
/// (category, outcome) — the category k·4 + b_s·2 + b_r (bits 0–3 of `what`) and whether
/// the receiver's bit is correct, wrong, or a double click (bits 4–5). One table lookup
/// and 32 random bits settle all of it, where drawing the category, then the outcome, took
/// three random words and a branch the predictor could not learn (a basis mismatch makes
/// the outcome a coin flip). Entry i, from the top six bits, keeps its own `what` when the
/// next 26 bits are below its threshold and takes its alias's otherwise: every probability
/// is resolved to 2⁻⁶ · 2⁻²⁶ = 2⁻³².
///
/// ONUs with equal tables share one (`Sampler::draws`), so that in the usual PON —
/// identical ONUs, or a few kinds — a detection reads tables that stay in L1 instead of a
/// cold per-ONU line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClickDraw {
    /// Entry i: bits 0–31 the keep threshold (scaled to 2²⁶), bits 32–39 its own `what`,
    /// bits 40–47 its alias's.
    entry: [u64; DRAW_N],
}

impl ClickDraw {
    /// From the joint weights, `w[cat·3 + outcome]` (any scale).
    fn new(w: &[f64; CATS * 3]) -> ClickDraw {
        const FULL: u64 = 1 << 26;
        let what = |i: usize| -> u64 { if i < CATS * 3 { (((i % 3) << 4) | (i / 3)) as u64 } else { 0 } };
        let sum: f64 = w.iter().sum();
        let mut keep = [FULL; DRAW_N];
        let mut alias: [usize; DRAW_N] = std::array::from_fn(|i| i);
        if sum.is_finite() && sum > 0.0 {
            let mut scaled: Vec<f64> =
                (0..DRAW_N).map(|i| if i < CATS * 3 { w[i] / sum * DRAW_N as f64 } else { 0.0 }).collect();
            let mut small: Vec<usize> = (0..DRAW_N).filter(|&i| scaled[i] < 1.0).collect();
            let mut large: Vec<usize> = (0..DRAW_N).filter(|&i| scaled[i] >= 1.0).collect();
            while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
                keep[s] = (scaled[s] * FULL as f64).round() as u64;
                alias[s] = l;
                scaled[l] -= 1.0 - scaled[s];
                if scaled[l] < 1.0 {
                    large.pop();
                    small.push(l);
                }
            }
        }
        ClickDraw { entry: std::array::from_fn(|i| keep[i] | what(i) << 32 | what(alias[i]) << 40) }
    }

    /// The `what` of a click (category | outcome << 4), from the top 32 of 64 random bits.
    #[inline(always)]
    fn sample(&self, u: u64) -> u8 {
        let e = self.entry[(u >> 58) as usize];
        let kept = ((u >> 32) & 0x3ff_ffff) < (e & 0xffff_ffff);
        // Branch-free: keep or alias is a coin flip the predictor cannot learn.
        (e >> (40 - 8 * u64::from(kept))) as u8
    }
}

/// Per-ONU sampling tables.
#[derive(Clone, Debug)]
struct OnuTables {
    no_click: Alias,
    mean_click: f64,
    blinded: bool,
}

impl OnuTables {
    fn new(t: &CellTable) -> (ClickDraw, OnuTables) {
        let mut wj = [0.0; CATS * 3];
        let mut wn = [0.0; CATS];
        for k in 0..3 {
            for bs in 0..2 {
                for br in 0..2 {
                    let i = k * 4 + bs * 2 + br;
                    let o = &t.cells[k][bs][br];
                    let p = t.weight[k][bs][br];
                    wj[3 * i + usize::from(CORRECT)] = p * o.c;
                    wj[3 * i + usize::from(WRONG)] = p * o.w;
                    wj[3 * i + usize::from(DOUBLE)] = p * o.both;
                    wn[i] = p * (1.0 - o.click());
                }
            }
        }
        let tables = OnuTables { no_click: Alias::new(&wn), mean_click: t.mean_click(), blinded: t.blinded };
        (ClickDraw::new(&wj), tables)
    }
}

fn to_u32_scale(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 4294967296.0).round() as u64
}

/// One segment of the current frame (the full description, for the rare paths; the hot
/// loops read the compact `SegGen` and `SegDet` tables built from it).
#[derive(Clone, Copy, Debug)]
struct Seg {
    /// Cumulative hazard of the frame at the segment's start and end.
    h0: f64,
    h1: f64,
    start: u64,
    end: u64,
    /// ONU index, or `u32::MAX` for idle/guard gates.
    owner: u32,
    /// Inverse of the hazard per gate −ln(1 − D̄) (0 when the hazard is 0).
    inv_lambda: f64,
    /// Equalisation delay of the owner during this frame (0 for idle segments).
    delay: u64,
    /// The owner's click-draw table (0 for idle segments).
    draw: u16,
    /// Clicks here spawn afterpulses / afterpulses here are detected.
    ap: bool,
}

const IDLE: u32 = u32::MAX;

/// Longest segment, in gates: a longer run of one owner is split, so that an offset
/// within a segment converts from `f64` as a `u32` (a saturating conversion that costs
/// two instructions, where one to `u64` costs five).
const MAX_SEG: u64 = 1 << 32;

/// What the candidate generator reads of a segment (40 bytes).
#[derive(Clone, Copy, Debug)]
struct SegGen {
    /// Cumulative hazard of the frame at the segment's start and end.
    h0: f64,
    h1: f64,
    /// Inverse of the hazard per gate (0 when the hazard is 0).
    inv_lambda: f64,
    /// First gate, in the frame.
    start: u64,
    /// Gates in the segment less one (below `MAX_SEG`).
    last: u64,
}

/// What a detection reads of its candidate's segment (24 bytes).
#[derive(Clone, Copy, Debug)]
struct SegDet {
    /// The owner's equalisation delay: gates below it come before the owner's first
    /// pulse arrives and are idle. `NEVER` for idle segments, so that one comparison sends
    /// every idle candidate to the slow path.
    from: u64,
    /// ONU index, or `IDLE`.
    owner: u32,
    /// Clicks here spawn an afterpulse when 30 random bits are below this: `p_ap`, or 0
    /// where the detector does not afterpulse (blinded).
    ap_th: u32,
    /// The owner's click-draw table.
    draw: u16,
}

impl SegDet {
    /// The owner and pulse index of a candidate in this segment at `gate`.
    #[inline(always)]
    fn owner_at(&self, gate: u64) -> (u32, u64) {
        if gate >= self.from { (self.owner, gate - self.from) } else { (IDLE, 0) }
    }
}

/// Per-ONU state (the records a detection writes are in `Sampler::records`).
#[derive(Debug)]
struct OnuState {
    tables: OnuTables,
    /// Index of the ONU's click-draw table in `Sampler::draws`.
    draw: u16,
    /// Schedules in force, by the frame they start at (the first one from frame 0).
    history: Vec<SourceSchedule>,
    /// Schedules waiting for their frame.
    pending: Vec<SourceSchedule>,
    /// Pulses below this have been released.
    released: u64,
    answers: VecDeque<PulseAnswer>,
}

impl OnuState {
    fn schedule_at(&self, frame: u64) -> Option<&SourceSchedule> {
        self.history.iter().rev().find(|s| s.from_frame <= frame)
    }
}

/// Counters for the detector status.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    clicks: [u64; 2],
    doubles: u64,
    since_gate: u64,
}

/// The sampler: a whole PON's quantum layer. Use it directly (tests, benchmarks) or
/// through [`SimPon`]'s handles, which implement the `hw` traits.
#[derive(Debug)]
pub struct Sampler {
    /// Draws made at detections, `DBUF` words at a time into `dbuf`; the next is
    /// `dbuf[dbuf_i]`. (Drawn in a loop of their own, the generator's state stays out of
    /// the detection loop's registers.)
    rng: FastRng,
    dbuf: Box<[u64; DBUF]>,
    dbuf_i: usize,
    /// Room for the detection records of `detect_run`, one per word of `dbuf`.
    scratch: Box<[DetectionRecord; DBUF]>,
    /// The candidates' Exp(1) variates, drawn `EBUF` at a time into `ebuf`; the next is
    /// `ebuf[ebuf_i]`.
    erng: FastRng,
    zig: Box<Ziggurat>,
    ebuf: Box<[f64; EBUF]>,
    ebuf_i: usize,
    seed: u64,
    gate_rate_hz: f64,
    frame_gates: u64,
    dead: u64,
    window: u64,
    det: DetectorModel,
    /// Afterpulse probability, scaled to 2³⁰ (`AP_MASK` + 1).
    p_ap: u64,
    /// Afterpulse delay CDF (scaled to 2³²), entry m = P(delay index ≤ m).
    ap_cdf: Vec<u64>,
    /// Idle gates: receiver P(Z) (2³²), P(both | dark click) (2³²), hazard.
    idle_basis: u64,
    idle_double: u64,
    idle_lambda: f64,
    onus: Vec<OnuState>,
    /// Per ONU, the records of the pulses that caused or received a detection, in pulse
    /// order. (Apart from `OnuState`, so that the vectors a detection pushes to lie in 24
    /// bytes per ONU, in L1, rather than one per cache line.)
    records: Vec<Vec<PulseRecord>>,
    /// The distinct click-draw tables of the ONUs.
    draws: Vec<ClickDraw>,
    segs: Vec<Seg>,
    seg_gen: Vec<SegGen>,
    seg_det: Vec<SegDet>,
    /// Cumulative hazard at the start of each segment (one more entry: the frame's total).
    hcum: Vec<f64>,
    /// Bucket index over the frame's hazard (M = 4 buckets per segment, M + 1 entries):
    /// `buckets[b]` is the first segment whose cumulative hazard at its end exceeds
    /// (b − ½)·H/M (less a margin), so a lookup at t, b = round(t·M/H), starts at its
    /// answer (or, rarely, just before it).
    buckets: Vec<u32>,
    /// M / H.
    bucket_scale: f64,
    /// Total hazard of one frame.
    frame_hazard: f64,
    /// The segment table holds for frames below this one (the first pending schedule).
    next_change: u64,
    blinded_per_frame: u64,
    /// Horizon: every gate below it has been generated.
    pos: u64,
    /// Candidate clicks generated and not yet consumed: `cand[cand_i..cand_n]`, in gate
    /// order (`cand` is kept at its full size, so the generator writes by index).
    cand: Vec<Cand>,
    cand_i: usize,
    cand_n: usize,
    /// Candidates are generated for every gate below this (a frame boundary, or `NEVER`
    /// when no gate will ever click), …
    gen_gate: u64,
    /// … and the next one lies this much cumulative hazard after it.
    e_res: f64,
    /// The receiver is live (not dead) from this gate on.
    live_from: u64,
    /// Afterpulses waiting, in gate order.
    pending_ap: Vec<u64>,
    /// Detections in gates below this are in the afterpulse window of the last detection:
    /// last detection + dead time + window + 1 (0 before the first detection).
    flag_until: u64,
    out: Vec<DetectionRecord>,
    counters: Counters,
    /// Detections made by `detect_run`, by click index (see [`CLICK_DET`]), not yet in
    /// `counters`: one increment per detection, folded into the counters when they are
    /// read, where counting the detectors' clicks took a pass over the records.
    click_hist: Box<[u64; 256]>,
}

impl Sampler {
    /// A sampler for `pon`, every ONU firing in its slot of `pon.map` with an equalisation
    /// delay equal to its fibre delay, seeded with `pon.seed`.
    pub fn new(pon: &Pon) -> Sampler {
        let tabs = tables(pon);
        let delays: Vec<u64> = pon
            .onus
            .iter()
            .map(|o| (o.length_km * GATES_PER_KM_AT_1GHZ * pon.gate_rate_hz / 1e9).round() as u64)
            .collect();
        Self::with_tables(pon, &tabs, &pon.map, &delays)
    }

    fn with_tables(pon: &Pon, tabs: &[CellTable], map: &SlotMap, delays: &[u64]) -> Sampler {
        let det = pon.detector;
        let kernel = det.afterpulse_kernel();
        let mut acc = 0.0;
        let ap_cdf = kernel
            .iter()
            .map(|p| {
                acc += p;
                to_u32_scale(acc)
            })
            .collect();
        let y0 = det.y0();
        let records = vec![Vec::new(); tabs.len()];
        let mut draws: Vec<ClickDraw> = Vec::new();
        let onus = tabs
            .iter()
            .enumerate()
            .map(|(i, t)| (i, OnuTables::new(t)))
            .map(|(i, (click, tables))| OnuState {
                draw: match draws.iter().position(|d| *d == click) {
                    Some(k) => k as u16,
                    None => {
                        draws.push(click);
                        u16::try_from(draws.len() - 1).expect("at most 65 536 distinct ONU tables")
                    }
                },
                tables,
                history: vec![SourceSchedule {
                    from_frame: 0,
                    frame_gates: map.frame_gates,
                    slots: map.slots[i].clone(),
                    equalisation_delay: delays[i],
                }],
                pending: Vec::new(),
                released: 0,
                answers: VecDeque::new(),
            })
            .collect();
        let mut s = Sampler {
            rng: FastRng::seed_from_u64(pon.seed),
            dbuf: Box::new([0; DBUF]),
            dbuf_i: DBUF,
            scratch: Box::new(
                [DetectionRecord { gate: 0, basis: Basis::Z, bit: false, flags: DetectionFlags(0) }; DBUF],
            ),
            erng: FastRng::seed_from_u64(splitmix(pon.seed ^ 0x6a09_e667_f3bc_c908)),
            zig: Box::new(Ziggurat::new()),
            ebuf: Box::new([0.0; EBUF]),
            ebuf_i: EBUF,
            seed: pon.seed,
            gate_rate_hz: pon.gate_rate_hz,
            frame_gates: map.frame_gates,
            dead: u64::from(det.dead_time),
            window: kernel.len() as u64,
            det,
            p_ap: (det.afterpulse.clamp(0.0, 1.0) * (AP_MASK + 1) as f64).round() as u64,
            ap_cdf,
            idle_basis: to_u32_scale(pon.receiver_p_z),
            idle_double: if y0 > 0.0 { to_u32_scale(det.dark_count * det.dark_count / y0) } else { 0 },
            idle_lambda: -(-y0).ln_1p(),
            onus,
            records,
            draws,
            segs: Vec::new(),
            seg_gen: Vec::new(),
            seg_det: Vec::new(),
            hcum: Vec::new(),
            buckets: Vec::new(),
            bucket_scale: 0.0,
            frame_hazard: 0.0,
            next_change: NEVER,
            blinded_per_frame: 0,
            pos: 0,
            cand: Vec::new(),
            cand_i: 0,
            cand_n: 0,
            gen_gate: 0,
            e_res: 0.0,
            live_from: 0,
            pending_ap: Vec::new(),
            flag_until: 0,
            out: Vec::new(),
            counters: Counters::default(),
            click_hist: Box::new([0; 256]),
        };
        s.rebuild(0);
        s.e_res = s.exp();
        s
    }

    /// The next random word for a detection.
    #[inline]
    fn det_u64(&mut self) -> u64 {
        if self.dbuf_i == DBUF {
            fill_u64(&mut self.rng, &mut self.dbuf[..]);
            self.dbuf_i = 0;
        }
        self.dbuf_i += 1;
        self.dbuf[self.dbuf_i - 1]
    }

    #[inline]
    fn exp(&mut self) -> f64 {
        if self.ebuf_i == EBUF {
            self.zig.fill(&mut self.erng, &mut self.ebuf[..]);
            self.ebuf_i = 0;
        }
        self.ebuf_i += 1;
        self.ebuf[self.ebuf_i - 1]
    }

    /// Rebuilds the segment table for `frame`, applying schedules due by then.
    fn rebuild(&mut self, frame: u64) {
        let mut slots = Vec::with_capacity(self.onus.len());
        let mut next = u64::MAX;
        for o in &mut self.onus {
            while o.pending.first().is_some_and(|s| s.from_frame <= frame) {
                let mut s = o.pending.remove(0);
                s.from_frame = s.from_frame.max(frame);
                o.history.push(s);
            }
            if let Some(p) = o.pending.first() {
                next = next.min(p.from_frame);
            }
            slots.push(o.schedule_at(frame).map(|s| s.slots.clone()).unwrap_or_default());
        }
        let map = SlotMap { frame_gates: self.frame_gates, slots };
        self.segs.clear();
        self.hcum.clear();
        self.hcum.push(0.0);
        self.frame_hazard = 0.0;
        self.blinded_per_frame = 0;
        for seg in map.segments() {
            let (owner, lambda, ap, draw) = match seg.owner {
                crate::model::Owner::Onu(i) => {
                    let t = &self.onus[i].tables;
                    if t.blinded {
                        self.blinded_per_frame += seg.len();
                    }
                    (i as u32, -(-t.mean_click).ln_1p(), !t.blinded, self.onus[i].draw)
                }
                crate::model::Owner::Idle => (IDLE, self.idle_lambda, true, 0),
            };
            let delay = match seg.owner {
                crate::model::Owner::Onu(i) => {
                    self.onus[i].schedule_at(frame).map(|s| s.equalisation_delay).unwrap_or(0)
                }
                crate::model::Owner::Idle => 0,
            };
            let inv_lambda = if lambda > 0.0 { 1.0 / lambda } else { 0.0 };
            let mut start = seg.start;
            while start < seg.end {
                let end = seg.end.min(start.saturating_add(MAX_SEG));
                let h0 = *self.hcum.last().unwrap_or(&0.0);
                let h1 = h0 + lambda * (end - start) as f64;
                self.hcum.push(h1);
                self.segs.push(Seg { h0, h1, start, end, owner, inv_lambda, delay, draw, ap });
                start = end;
            }
        }
        // The frame's total is the last segment's end (equal to the sum above but for
        // rounding), so that every t below it falls in a segment.
        self.frame_hazard = *self.hcum.last().unwrap_or(&0.0);
        self.seg_gen.clear();
        self.seg_det.clear();
        for s in &self.segs {
            self.seg_gen.push(SegGen {
                h0: s.h0,
                h1: s.h1,
                inv_lambda: s.inv_lambda,
                start: s.start,
                last: s.end - s.start - 1,
            });
            let from = if s.owner == IDLE { NEVER } else { s.delay };
            let ap_th = if s.ap { u32::try_from(self.p_ap).unwrap_or(u32::MAX) } else { 0 };
            self.seg_det.push(SegDet { from, owner: s.owner, ap_th, draw: s.draw });
        }
        let m = 4 * self.segs.len();
        self.buckets.clear();
        self.bucket_scale = if self.frame_hazard > 0.0 { m as f64 / self.frame_hazard } else { 0.0 };
        let mut j = 0usize;
        // Lookups round t·M/H to the nearest integer b, so t·M/H ≥ b − ½: bucket b starts
        // (with a margin for rounding) half a bucket early.
        for b in 0..=m {
            let h = (b as f64 - 0.53) * self.frame_hazard / m as f64;
            while j + 1 < self.segs.len() && self.hcum[j + 1] <= h {
                j += 1;
            }
            self.buckets.push(j as u32);
        }
        self.next_change = next;
    }

    /// Gates per second.
    pub fn gate_rate_hz(&self) -> f64 {
        self.gate_rate_hz
    }

    /// Every gate below this has been generated.
    pub fn horizon(&self) -> u64 {
        self.pos
    }

    /// Takes the detection records generated so far (in gate order).
    pub fn take_detections(&mut self, out: &mut Vec<DetectionRecord>) {
        if out.is_empty() {
            // Hand over the buffer instead of copying it (the caller's empty one, with
            // its capacity, becomes the next buffer).
            std::mem::swap(out, &mut self.out);
        } else {
            out.append(&mut self.out);
        }
    }

    /// Number of detection records generated and not yet taken.
    pub fn pending_detections(&self) -> usize {
        self.out.len()
    }

    /// Forgets ONU `onu`'s pulse records below `pulse`.
    pub fn release_before(&mut self, onu: usize, pulse: u64) {
        let o = &mut self.onus[onu];
        if pulse <= o.released {
            return;
        }
        o.released = pulse;
        let records = &mut self.records[onu];
        let cut = records.partition_point(|r| r.pulse < pulse);
        records.drain(..cut);
    }

    /// Forgets every ONU's pulse records for gates below `gate`.
    pub fn release_gates_before(&mut self, gate: u64) {
        for i in 0..self.onus.len() {
            let d = self.onus[i].history.last().map(|s| s.equalisation_delay).unwrap_or(0);
            self.release_before(i, gate.saturating_sub(d));
        }
    }

    /// Installs a schedule for ONU `onu` (see [`PulseSource::configure`]).
    pub fn configure(&mut self, onu: usize, schedule: &SourceSchedule) -> Result<(), SourceError> {
        schedule.validate()?;
        if schedule.frame_gates != self.frame_gates {
            return Err(SourceError::InvalidConfig {
                field: "frame_gates".into(),
                reason: format!(
                    "{} differs from the receiver's frame of {} gates",
                    schedule.frame_gates, self.frame_gates
                ),
            });
        }
        let mut s = schedule.clone();
        let now = self.pos / self.frame_gates;
        if s.from_frame <= now {
            s.from_frame = now + 1;
        }
        let o = &mut self.onus[onu];
        o.pending.retain(|p| p.from_frame < s.from_frame);
        o.pending.push(s);
        o.pending.sort_by_key(|p| p.from_frame);
        self.next_change = self.next_change.min(self.onus[onu].pending[0].from_frame);
        // Candidates exist only for frames up to the horizon's, which the change does not
        // touch; but frames skipped beyond it with the old table are void: the candidate
        // process restarts where the change takes effect with a fresh variate (exact, as
        // gates are independent).
        let g = self.next_change.saturating_mul(self.frame_gates);
        if self.gen_gate > g {
            self.gen_gate = g;
            self.e_res = self.exp();
        }
        Ok(())
    }

    /// Generates every detection with a gate below `until`.
    pub fn advance(&mut self, until: u64) {
        if until <= self.pos {
            return;
        }
        loop {
            if self.cand_i == self.cand_n {
                // Generate the next frame once every afterpulse before it is handled (the
                // segment table may change with the frame).
                if self.gen_gate < until && self.pending_ap.first().is_none_or(|&a| a >= self.gen_gate) {
                    self.cand_n = 0;
                    self.cand_i = 0;
                    self.generate(until);
                    continue;
                }
            } else if self.pending_ap.is_empty() {
                // Fast path: the next events are candidates.
                self.detect_run(until);
                if self.cand_i < self.cand_n && self.pending_ap.is_empty() {
                    // `detect_run` stopped at the horizon, or before a candidate it
                    // leaves to `primary` (idle gate).
                    let cand = self.cand[self.cand_i];
                    if cand.gate >= until {
                        break;
                    }
                    self.cand_i += 1;
                    if cand.gate >= self.live_from {
                        self.primary(cand);
                    }
                }
                continue;
            }
            let c = if self.cand_i < self.cand_n { self.cand[self.cand_i].gate } else { NEVER };
            let a = self.pending_ap.first().copied().unwrap_or(NEVER);
            if c.min(a) >= until {
                break;
            }
            if c <= a {
                let cand = self.cand[self.cand_i];
                self.cand_i += 1;
                if c == a {
                    // A primary click and an afterpulse in the same gate: one detection.
                    self.pending_ap.remove(0);
                }
                if c >= self.live_from {
                    self.primary(cand);
                }
            } else {
                self.pending_ap.remove(0);
                if a >= self.live_from {
                    self.afterpulse(a);
                }
            }
        }
        self.pos = until;
    }

    /// Generates the candidate clicks of the frame starting at `gen_gate` and of the
    /// following ones that start below `until` under the same segment table, or skips the
    /// frames without any (at most up to the next schedule change).
    ///
    /// (Not inlined: once per poll or so, and on its own the loop keeps its state in
    /// registers.)
    #[inline(never)]
    fn generate(&mut self, until: u64) {
        let f = self.frame_gates;
        let frame = self.gen_gate / f;
        if frame >= self.next_change {
            self.rebuild(frame);
        }
        let h = self.frame_hazard;
        if self.e_res >= h {
            // No candidate in this frame: skip every frame the variate outlasts.
            let k = if h > 0.0 { (self.e_res / h) as u64 } else { NEVER };
            let k = k.min(self.next_change - frame);
            self.gen_gate = match frame.checked_add(k).and_then(|x| x.checked_mul(f)) {
                Some(g) if k != NEVER => g,
                _ => NEVER,
            };
            if k != NEVER {
                self.e_res = (self.e_res - k as f64 * h).max(0.0);
            }
            return;
        }
        let mut base = self.gen_gate;
        // Later frames are generated in the same call while they start below `until` and
        // the segment table holds for them, so that the calls' costs are shared by more
        // candidates (a frame holds a few dozen): up to the start of the first frame
        // that may not be generated yet.
        let lim = until.min(self.next_change.saturating_mul(f));
        // Locals, so that the tables stay in registers while candidates are written.
        let mut cand = std::mem::take(&mut self.cand);
        if cand.len() < 64 {
            cand.resize(64, Cand::default());
        }
        let mut n = self.cand_n;
        let ebuf = &mut *self.ebuf;
        let zig = &*self.zig;
        let erng = &mut self.erng;
        let mut ei = self.ebuf_i;
        let (gens, buckets) = (&self.seg_gen[..], &self.buckets[..]);
        let scale = self.bucket_scale;
        let mut t = self.e_res;
        loop {
            if ei == EBUF {
                zig.fill(erng, ebuf);
                ei = 0;
            }
            if n == cand.len() {
                let len = cand.len();
                cand.resize(2 * len, Cand::default());
            }
            // The inner loop makes no call (the refill and the growth are above), so that
            // `t` and the tables' pointers stay in registers; it runs until the last
            // frame's end, the variates' end or the room's end.
            let room = (cand.len() - n).min(EBUF - ei);
            let mut k = 0;
            for (slot, &e) in cand[n..n + room].iter_mut().zip(&ebuf[ei..ei + room]) {
                if t >= h {
                    // Into the next frame, if it may be generated now and has a candidate
                    // (else the next call skips the empty frames by division), unless the
                    // batch is large enough (a long poll would hold them all in memory).
                    if t - h < h && base + f < lim && n + k < GEN_BATCH {
                        t -= h;
                        base += f;
                    } else {
                        break;
                    }
                }
                // round(t·M/H) by the 1.5·2⁵² trick (0 ≤ t·M/H ≤ M < 2³¹): no float-to-integer
                // conversion.
                let b = ((t * scale + ROUND_MAGIC).to_bits() as u32) as usize;
                // t < H = the last segment's h1, so j stays in range; the loop rarely runs
                // more than once.
                let mut j = buckets[b] as usize;
                while gens[j].h1 <= t {
                    j += 1;
                }
                let s = &gens[j];
                // Saturating: a negative offset (rounding at the segment's start) gives 0,
                // one past the end (rounding at its end) is clamped to the last gate.
                let o = ((t - s.h0) * s.inv_lambda) as u32;
                *slot = Cand { gate: base + s.start + u64::from(o).min(s.last), seg: j as u32 };
                t += e;
                k += 1;
            }
            n += k;
            ei += k;
            if t >= h {
                break;
            }
        }
        self.ebuf_i = ei;
        self.cand = cand;
        self.cand_n = n;
        self.e_res = t - h;
        self.gen_gate = base + f;
    }

    fn seg_at(&self, gate: u64) -> Seg {
        let in_frame = gate % self.frame_gates;
        let i = self.segs.partition_point(|s| s.end <= in_frame).min(self.segs.len() - 1);
        self.segs[i]
    }

    #[inline]
    fn flags_for(&self, gate: u64) -> u8 {
        if gate < self.flag_until { DetectionFlags::AFTERPULSE_WINDOW } else { 0 }
    }

    /// After a detection at `gate`: dead time and afterpulse.
    #[inline(always)]
    fn after_detection(&mut self, gate: u64, spawn: bool) {
        let resume = gate + self.dead + 1;
        self.flag_until = resume.saturating_add(self.window);
        while self.pending_ap.first().is_some_and(|&a| a < resume) {
            self.pending_ap.remove(0);
        }
        if spawn {
            self.queue_afterpulse(resume);
        }
        self.live_from = resume;
    }

    /// Queues an afterpulse of a detection after which the receiver is live from `resume`.
    fn queue_afterpulse(&mut self, resume: u64) {
        let u = self.det_u64() & 0xffff_ffff;
        let m = self.ap_cdf.partition_point(|&c| c <= u).min(self.ap_cdf.len() - 1) as u64;
        let a = resume + m;
        let at = self.pending_ap.partition_point(|&x| x < a);
        if self.pending_ap.get(at) != Some(&a) {
            self.pending_ap.insert(at, a);
        }
    }

    /// Detects the candidates below `until` while no afterpulse is pending — the common
    /// case, with the receiver's state in registers. Stops at the
    /// horizon, after a detection that queues an afterpulse (the general loop in `advance`
    /// then merges the two streams), and before a candidate it leaves to
    /// [`Self::primary`]: one in an idle gate, or one that needs a call (a refill of the
    /// random words, a vector to grow). The loop makes no call, so that nothing is
    /// spilled around one. Draws exactly what `primary` would.
    fn detect_run(&mut self, until: u64) {
        // A detector without afterpulses (no afterpulse window, probability 0) has a loop
        // of its own without the window flag and the afterpulse decision, which would
        // never fire: the same records, fewer instructions and registers.
        if self.window == 0 && self.p_ap == 0 {
            self.detect_run_as::<false>(until);
        } else {
            self.detect_run_as::<true>(until);
        }
    }

    /// [`Self::detect_run`], for a detector with afterpulses (`AP`) or without.
    #[inline(never)]
    fn detect_run_as<const AP: bool>(&mut self, until: u64) {
        let cands = &self.cand[self.cand_i..self.cand_n];
        // The candidates below the horizon (a search per call, not a test per candidate).
        let end = cands.partition_point(|c| c.gate < until);
        if DBUF - self.dbuf_i < end.min(DBUF) {
            // Too few random words left for the run: move them to the front and draw the
            // rest, so that the loop stops for a refill less often. (The stream is the
            // same as if the words were drawn one batch after another.)
            let left = DBUF - self.dbuf_i;
            self.dbuf.copy_within(self.dbuf_i.., 0);
            fill_u64(&mut self.rng, &mut self.dbuf[left..]);
            self.dbuf_i = 0;
        }
        let (segs, draws) = (&self.seg_det[..], &self.draws[..]);
        let records = &mut self.records[..];
        // The detection records are written next to the random words they were drawn
        // from, `scratch[di]` for `dbuf[di]`, and appended to `out` after the loop: no
        // capacity test, no call, and no bounds test beyond the words' own in the loop.
        let scratch = &mut *self.scratch;
        let hist = &mut *self.click_hist;
        let dbuf = &*self.dbuf;
        let di0 = self.dbuf_i;
        let mut di = di0;
        let mut live_from = self.live_from;
        let mut flag_until = self.flag_until;
        let dead1 = self.dead + 1;
        let dead_window = dead1.saturating_add(self.window);
        let mut it = cands[..end].iter();
        // Stopped before the candidate last taken from `it` (left to `primary`).
        let mut stopped = false;
        let mut spawn = false;
        for cand in it.by_ref() {
            let c = cand.gate;
            if c < live_from {
                continue; // dead
            }
            let s = &segs[cand.seg as usize];
            // Idle (or before the owner's first pulse), or a call needed (a vector to grow,
            // random words to draw): `primary`.
            if c < s.from {
                stopped = true;
                break;
            }
            let recs = &mut records[s.owner as usize];
            let Some(&u) = dbuf.get(di) else {
                stopped = true;
                break;
            };
            if recs.len() == recs.capacity() {
                stopped = true;
                break;
            }
            let i = click(&draws[usize::from(s.draw)], u);
            recs.push(PulseRecord { pulse: c - s.from, ..CLICK_PULSE[i] });
            hist[i] += 1;
            // (Without afterpulses the window is empty: `flag_until` is `live_from`, at
            // or before c.)
            let window = AP && c < flag_until;
            scratch[di] = DetectionRecord { gate: c, ..CLICK_DET[i | usize::from(window) << 8] };
            di += 1;
            live_from = c + dead1;
            // (No overflow: a gate index would need 584 years at 1 GHz to come near it.)
            flag_until = c + dead_window;
            if AP && (u >> 2) & AP_MASK < u64::from(s.ap_th) {
                spawn = true;
                break;
            }
        }
        self.cand_i += end - it.len() - usize::from(stopped);
        self.dbuf_i = di;
        self.live_from = live_from;
        self.flag_until = flag_until;
        self.out.extend_from_slice(&self.scratch[di0..di]);
        if spawn {
            self.queue_afterpulse(live_from);
        }
    }

    /// A primary click (signal or dark), the receiver live.
    #[inline(always)]
    fn primary(&mut self, cand: Cand) {
        let c = cand.gate;
        let s = self.seg_det[cand.seg as usize];
        let (owner, pulse) = s.owner_at(c);
        let u = self.det_u64();
        let mut flags = self.flags_for(c);
        let (basis, bit, spawn) = if owner != IDLE {
            let i = click(&self.draws[usize::from(s.draw)], u);
            let det = CLICK_DET[i];
            flags |= det.flags.0;
            self.records[owner as usize].push(PulseRecord { pulse, ..CLICK_PULSE[i] });
            (det.basis, det.bit, (u >> 2) & AP_MASK < u64::from(s.ap_th))
        } else {
            // Dark count in a guard or idle gate (rare).
            let u2 = self.det_u64();
            let basis = Basis::from_bit((u & 0xffff_ffff) >= self.idle_basis);
            if (u >> 32) < self.idle_double {
                flags |= DetectionFlags::DOUBLE_CLICK;
            }
            (basis, (u2 >> 33) & 1 == 1, u2 & AP_MASK < u64::from(s.ap_th))
        };
        self.emit(c, basis, bit, flags);
        self.after_detection(c, spawn);
    }

    /// An afterpulse at gate `a`, the receiver live (`a` is below `gen_gate`, so the
    /// current segment table holds for it).
    fn afterpulse(&mut self, a: u64) {
        let seg = self.seg_at(a);
        if !seg.ap {
            return; // blinded: the detector does not afterpulse
        }
        let u1 = self.det_u64();
        let u2 = self.det_u64();
        let flags = self.flags_for(a) | DetectionFlags::AFTERPULSE_WINDOW;
        let bit = (u2 >> 33) & 1 == 1;
        let basis = if seg.owner != IDLE {
            let o = &self.onus[seg.owner as usize];
            let delay = seg.delay;
            let cat = o.tables.no_click.sample(u1);
            let (k, bs, br) = (cat / 4, (cat / 2) % 2, cat % 2);
            if a >= delay {
                let Some(intensity) = Intensity::from_index(k as u8) else { unreachable!() };
                let x = (u2 >> 32) & 1 == 1;
                self.records[seg.owner as usize].push(PulseRecord {
                    pulse: a - delay,
                    basis: Basis::from_bit(bs == 1),
                    bit: x,
                    intensity,
                });
            }
            Basis::from_bit(br == 1)
        } else {
            Basis::from_bit((u1 & 0xffff_ffff) >= self.idle_basis)
        };
        self.emit(a, basis, bit, flags);
        self.after_detection(a, u2 & AP_MASK < self.p_ap);
    }

    #[inline]
    fn emit(&mut self, gate: u64, basis: Basis, bit: bool, flags: u8) {
        if flags & DetectionFlags::DOUBLE_CLICK != 0 {
            self.counters.doubles += 1;
            self.counters.clicks[0] += 1;
            self.counters.clicks[1] += 1;
        } else {
            self.counters.clicks[bit as usize] += 1;
        }
        self.out.push(DetectionRecord { gate, basis, bit, flags: DetectionFlags(flags) });
    }

    /// Looks up ONU `onu`'s records of `pulses`.
    pub fn lookup(&self, onu: usize, pulses: &[u64]) -> Vec<Option<PulseRecord>> {
        let o = &self.onus[onu];
        pulses
            .iter()
            .map(|&p| {
                if p < o.released {
                    return None;
                }
                let records = &self.records[onu];
                if let Ok(i) = records.binary_search_by_key(&p, |r| r.pulse) {
                    return Some(records[i]);
                }
                // Did the source fire this pulse, and has it been generated?
                let mut found = None;
                for s in o.history.iter().rev() {
                    let gate = p + s.equalisation_delay;
                    if gate / self.frame_gates >= s.from_frame {
                        found = Some((s, gate));
                        break;
                    }
                }
                let (s, gate) = found?;
                if gate >= self.horizon() || !s.fires(p) {
                    return None;
                }
                // A pulse that did not click: drawn from the no-click distribution with
                // a hash of (seed, onu, pulse) as randomness.
                let h1 = splitmix(self.seed ^ splitmix(onu as u64 ^ splitmix(p)));
                let h2 = splitmix(h1);
                let cat = o.tables.no_click.sample(h1);
                let Some(intensity) = Intensity::from_index((cat / 4) as u8) else { unreachable!() };
                Some(PulseRecord {
                    pulse: p,
                    basis: Basis::from_bit((cat / 2) % 2 == 1),
                    bit: h2 & 1 == 1,
                    intensity,
                })
            })
            .collect()
    }

    /// The receiver status since the last call.
    pub fn status(&mut self) -> DetectorStatus {
        let now = self.horizon();
        // Fold in the detections counted by click index.
        for (i, n) in self.click_hist.iter_mut().enumerate() {
            let d = CLICK_DET[i];
            if d.flags.has(DetectionFlags::DOUBLE_CLICK) {
                self.counters.doubles += *n;
                self.counters.clicks[0] += *n;
                self.counters.clicks[1] += *n;
            } else {
                self.counters.clicks[usize::from(d.bit)] += *n;
            }
            *n = 0;
        }
        let c = std::mem::take(&mut self.counters);
        self.counters.since_gate = now;
        let gates = now.saturating_sub(c.since_gate);
        let secs = gates as f64 / self.gate_rate_hz;
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        // Share of the interval spent blinded, from the current slot map.
        let frac = self.blinded_per_frame as f64 / self.frame_gates as f64;
        let nom = self.det.bias_current_ua;
        let bl = self.det.blinded_bias_current_ua;
        let range = if frac > 0.0 { (nom.min(bl), nom.max(bl)) } else { (nom, nom) };
        let ch = |i: usize| DetectorChannelStatus {
            bias_current_ua: nom * (1.0 - frac) + bl * frac,
            bias_current_range_ua: range,
            nominal_bias_current_ua: nom,
            click_rate_hz: rate(c.clicks[i]),
        };
        DetectorStatus {
            gate: now,
            interval_gates: gates,
            detectors: vec![ch(0), ch(1)],
            double_click_rate_hz: rate(c.doubles),
        }
    }

    /// Number of ONUs.
    pub fn onus(&self) -> usize {
        self.onus.len()
    }
}

/// Bits of the afterpulse decision (compared with `Sampler::p_ap`).
const AP_MASK: u64 = 0x3fff_ffff;

/// The intensity classes by index (the fourth entry is never drawn; it makes the lookup
/// by two bits need no bounds check).
const INTENSITY: [Intensity; 4] = [Intensity::Signal, Intensity::Decoy, Intensity::Vacuum, Intensity::Vacuum];

/// The records of a click, by `what | x << 6 | r << 7` (`what` from a [`ClickDraw`], x
/// the encoded bit, r the coin of a double click): the pulse record (its `pulse` left 0)
/// and, in the entry 256 further when the gate lies in the afterpulse window, the
/// detection record (its `gate` left 0). Copying a record from here and setting one field
/// takes a few instructions, where the bit logic and the byte stores took twenty.
const CLICK_PULSE: [PulseRecord; 256] = click_pulse();
const CLICK_DET: [DetectionRecord; 512] = click_det();

/// A click's (receiver basis, receiver bit, double click, sender basis, encoded bit,
/// intensity index) by `what | x << 6 | r << 7`.
const fn click_fields(i: usize) -> (bool, bool, bool, bool, bool, usize) {
    // what = br | bs << 1 | k << 2 | (outcome == WRONG) << 4 | (outcome == DOUBLE) << 5.
    let (what, x, r) = (i & 63, (i >> 6) & 1, (i >> 7) & 1);
    let (br, bs, k) = (what & 1, (what >> 1) & 1, (what >> 2) & 3);
    let (wrong, double) = ((what >> 4) & 1, (what >> 5) & 1);
    // Correct: x; wrong: x ^ 1; double: x ^ r, a fair coin independent of x (as the
    // squashing model wants).
    let bit = x ^ wrong ^ (r & double);
    (br == 1, bit == 1, double == 1, bs == 1, x == 1, k)
}

const fn click_pulse() -> [PulseRecord; 256] {
    let mut t = [PulseRecord { pulse: 0, basis: Basis::Z, bit: false, intensity: Intensity::Signal }; 256];
    let mut i = 0;
    while i < 256 {
        let (_, _, _, bs, x, k) = click_fields(i);
        t[i] = PulseRecord { pulse: 0, basis: Basis::from_bit(bs), bit: x, intensity: INTENSITY[k] };
        i += 1;
    }
    t
}

const fn click_det() -> [DetectionRecord; 512] {
    let mut t = [DetectionRecord { gate: 0, basis: Basis::Z, bit: false, flags: DetectionFlags(0) }; 512];
    let mut i = 0;
    while i < 512 {
        let (br, bit, double, _, _, _) = click_fields(i & 255);
        let window = if i >= 256 { DetectionFlags::AFTERPULSE_WINDOW } else { 0 };
        let dbl = if double { DetectionFlags::DOUBLE_CLICK } else { 0 };
        t[i] =
            DetectionRecord { gate: 0, basis: Basis::from_bit(br), bit, flags: DetectionFlags(window | dbl) };
        i += 1;
    }
    t
}

/// A click in an ONU's gate from one 64-bit word, as an index into [`CLICK_PULSE`] and
/// [`CLICK_DET`]: the top 32 bits pick (category, outcome) from the joint alias table,
/// bit 0 is the encoded bit, bit 1 the coin of a double click (bits 2–31 are left for the
/// afterpulse decision).
#[inline(always)]
fn click(draw: &ClickDraw, u: u64) -> usize {
    usize::from(draw.sample(u) & 63) | ((u & 3) << 6) as usize
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A simulated PON shared by handles that implement the `hw` traits: one
/// [`SimDetector`] for the OLT and one [`SimSource`] per ONU.
#[derive(Clone, Debug)]
pub struct SimPon {
    core: Arc<Mutex<Sampler>>,
}

impl SimPon {
    /// A simulated PON for a resolved scenario.
    pub fn new(pon: &Pon) -> SimPon {
        SimPon { core: Arc::new(Mutex::new(Sampler::new(pon))) }
    }

    /// The OLT's receiver.
    pub fn detector(&self) -> SimDetector {
        SimDetector { core: self.core.clone() }
    }

    /// ONU `onu`'s source.
    ///
    /// # Panics
    /// If there is no such ONU.
    pub fn source(&self, onu: usize) -> SimSource {
        assert!(onu < lock(&self.core).onus(), "no ONU {onu}");
        SimSource { core: self.core.clone(), onu }
    }

    /// Direct access to the sampler (tests, the emulation's clock).
    pub fn with<R>(&self, f: impl FnOnce(&mut Sampler) -> R) -> R {
        f(&mut lock(&self.core))
    }
}

fn lock(m: &Mutex<Sampler>) -> MutexGuard<'_, Sampler> {
    // A panic while holding the lock leaves the sampler usable (its state is always
    // consistent between events).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The OLT's receiver in a [`SimPon`].
#[derive(Clone, Debug)]
pub struct SimDetector {
    core: Arc<Mutex<Sampler>>,
}

impl DetectorSource for SimDetector {
    fn gate_rate_hz(&self) -> f64 {
        lock(&self.core).gate_rate_hz()
    }

    fn poll_detections(
        &mut self,
        until_gate: u64,
        out: &mut Vec<DetectionRecord>,
    ) -> Result<u64, SourceError> {
        let mut s = lock(&self.core);
        s.advance(until_gate);
        s.take_detections(out);
        Ok(until_gate)
    }

    fn status(&mut self) -> Result<DetectorStatus, SourceError> {
        Ok(lock(&self.core).status())
    }
}

/// One ONU's source in a [`SimPon`].
#[derive(Clone, Debug)]
pub struct SimSource {
    core: Arc<Mutex<Sampler>>,
    onu: usize,
}

impl PulseSource for SimSource {
    fn configure(&mut self, schedule: &SourceSchedule) -> Result<(), SourceError> {
        lock(&self.core).configure(self.onu, schedule)
    }

    fn request_pulses(&mut self, id: u64, pulses: &[u64]) -> Result<(), SourceError> {
        let mut s = lock(&self.core);
        let records = s.lookup(self.onu, pulses);
        s.onus[self.onu].answers.push_back(PulseAnswer { id, records });
        Ok(())
    }

    fn poll_pulses(&mut self) -> Option<PulseAnswer> {
        lock(&self.core).onus[self.onu].answers.pop_front()
    }

    fn release_before(&mut self, pulse: u64) {
        lock(&self.core).release_before(self.onu, pulse);
    }
}

#[cfg(test)]
mod tests;
