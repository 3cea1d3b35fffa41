//! Physics of the PON: splitter tree and fibre loss, weak-coherent decoy sources, the
//! shared gated receiver, and eavesdroppers — as per-pulse outcome probabilities.
//!
//! # The click model
//!
//! Lim et al., PRA 89, 022307 (2014), simulation section, with η = channel transmittance
//! × receiver internal transmittance × detector efficiency and two detectors behind an
//! active basis choice: Y0 = 1−(1−p_dc)², D_k = 1−(1−Y0)e^{−ημ_k}. We keep D_k exactly and
//! derive everything from one finer model: photons reach the two detectors as independent
//! Poisson streams (mean ημ(1−e_mis) on the detector of the encoded bit and ημ·e_mis on the
//! other when bases match, ημ/2 each when they do not), each detector also fires a dark
//! count with probability p_dc, and a double click gets a random bit. Documented
//! deviations from the paper's closed forms:
//!
//! - The error probability per pulse is the exact one of that model,
//!   P_w − P_w·P_c/2 with P_{c,w} the two detectors' click probabilities, instead of the
//!   paper's first-order Y0/2 + e_mis(1−e^{−ημ}); they differ by O(p_dc·ημ).
//! - Afterpulses are not charged to the pulse that caused them (the paper's p_ap·D_k): a
//!   click spawns an afterpulse with probability p_ap, delayed by the dead time plus a
//!   number of gates drawn from a truncated exponential (the afterpulse window), and it
//!   lands on whatever pulse — of the same ONU or of the next slot's ONU — occupies that
//!   gate, with a random bit. Averaged over intensity classes this gives the paper's
//!   p_ap·D̄ extra detections at error ½; per class, the afterpulse rate follows the *mean*
//!   click rate of the preceding gates. Dead time (no click for `dead_time` gates after
//!   any click) reduces the gain and is what saturates the count rate. See [`FrameModel`].
//!
//! # Eavesdroppers
//!
//! Each ONU may have one [`Eve`]; she changes that ONU's outcome table only (and, for
//! blinding, the receiver's behaviour during that ONU's slots).

// The (k, b_s, b_r) indices address several parallel tables at once; index loops read
// better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use serde::{Deserialize, Serialize};

/// Single-photon detector parameters (both detectors of the receiver are alike).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorModel {
    /// Detection efficiency η_det.
    pub efficiency: f64,
    /// Dark-count probability per gate per detector, p_dc.
    pub dark_count: f64,
    /// Afterpulse probability per click, p_ap (total over the window).
    pub afterpulse: f64,
    /// Afterpulse window, in gates after the dead time.
    pub afterpulse_window: u32,
    /// Decay constant of the afterpulse probability within the window, in gates.
    pub afterpulse_decay: f64,
    /// Dead time after any click, in gates (no click is possible in them).
    pub dead_time: u32,
    /// Bias current when the detector works as intended, µA (reported to the monitor).
    pub bias_current_ua: f64,
    /// Bias current while blinded by bright light, µA: far above nominal for an APD, near
    /// zero for an SNSPD latched in its resistive state.
    pub blinded_bias_current_ua: f64,
}

impl DetectorModel {
    /// DESIGN.md §5 `apd`: η 0.20, dark 1e-5 per gate, afterpulse 0.04 spread over 50
    /// gates (decay 10 gates), dead time 10 gates.
    pub const APD: DetectorModel = DetectorModel {
        efficiency: 0.20,
        dark_count: 1e-5,
        afterpulse: 0.04,
        afterpulse_window: 50,
        afterpulse_decay: 10.0,
        dead_time: 10,
        bias_current_ua: 2.0,
        blinded_bias_current_ua: 2000.0,
    };
    /// DESIGN.md §5 `snspd`: η 0.80, dark 1e-8 per gate, no afterpulses, dead time 40
    /// gates.
    pub const SNSPD: DetectorModel = DetectorModel {
        efficiency: 0.80,
        dark_count: 1e-8,
        afterpulse: 0.0,
        afterpulse_window: 0,
        afterpulse_decay: 1.0,
        dead_time: 40,
        bias_current_ua: 12.0,
        blinded_bias_current_ua: 0.0,
    };

    /// Y0 = 1−(1−p_dc)²: the probability that a gate with no light gives a click.
    pub fn y0(&self) -> f64 {
        1.0 - (1.0 - self.dark_count).powi(2)
    }

    /// Guard gates that keep one slot's dead time and afterpulses out of the next:
    /// dead time + afterpulse window (DESIGN.md §5).
    pub fn guard_gates(&self) -> u64 {
        u64::from(self.dead_time) + if self.afterpulse > 0.0 { u64::from(self.afterpulse_window) } else { 0 }
    }

    /// Afterpulse delay distribution: entry `m` is the probability that an afterpulse
    /// lands `dead_time + 1 + m` gates after the click that caused it. Empty when there
    /// are no afterpulses.
    pub fn afterpulse_kernel(&self) -> Vec<f64> {
        if self.afterpulse <= 0.0 || self.afterpulse_window == 0 {
            return Vec::new();
        }
        let r = (-1.0 / self.afterpulse_decay.max(1e-9)).exp();
        let w: Vec<f64> = (0..self.afterpulse_window).map(|m| r.powi(m as i32)).collect();
        let s: f64 = w.iter().sum();
        w.into_iter().map(|x| x / s).collect()
    }
}

/// A weak-coherent decoy-state BB84 source.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceModel {
    /// Intensities μ1 > μ2 + μ3, μ2 > μ3 ≥ 0.
    pub mu: [f64; 3],
    /// Their probabilities.
    pub p: [f64; 3],
    /// Probability of the key basis Z, at the source and (during this ONU's slots) at the
    /// receiver's active basis choice.
    pub p_z: f64,
    /// Optical misalignment e_mis: probability that a photon reaches the wrong detector
    /// when the bases match.
    pub misalignment: f64,
}

impl Default for SourceModel {
    /// DESIGN.md §5.
    fn default() -> Self {
        Self { mu: [0.5, 0.2, 2e-4], p: [0.30, 0.45, 0.25], p_z: 0.75, misalignment: 0.01 }
    }
}

impl SourceModel {
    /// Probability of basis index `b` (0 = Z, 1 = X).
    pub fn basis_p(&self, b: usize) -> f64 {
        if b == 0 { self.p_z } else { 1.0 - self.p_z }
    }
}

/// An eavesdropper on one ONU's pulses.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "attack", rename_all = "kebab-case")]
pub enum Eve {
    /// Intercept-resend: Eve measures a `fraction` of the pulses right after the ONU with
    /// an ideal detector, in Z with probability `p_z`, and resends her result as a
    /// coherent pulse of mean `resend_mu` photons (default: the ONU's signal μ1) through
    /// the rest of the channel; if she saw nothing she sends nothing. With `p_z` = ½ and
    /// `fraction` = 1 the sifted QBER is ≈ 25 %.
    InterceptResend {
        /// Fraction of pulses intercepted.
        fraction: f64,
        /// Probability that Eve measures in Z.
        p_z: f64,
        /// Mean photon number of the resent pulse (`None`: the ONU's μ1).
        resend_mu: Option<f64>,
    },
    /// Photon-number splitting: a quantum non-demolition count of the photons; a
    /// `block_single` fraction of one-photon pulses is blocked; of every multi-photon
    /// pulse Eve keeps one photon and forwards the rest through a channel of transmittance
    /// `transmittance` (up to and including the detector efficiency). `None`: chosen so
    /// the signal gain matches the honest one (what a careful Eve does), capped at the
    /// receiver's own transmittance (a lossless fibre and splitter).
    Pns {
        /// Fraction of one-photon pulses blocked.
        block_single: f64,
        /// Eve's channel transmittance for the forwarded photons.
        transmittance: Option<f64>,
    },
    /// Detector blinding (faked states): during this ONU's slots the detectors are
    /// blinded by bright light (no dark counts, no afterpulses, bias current abnormal);
    /// Eve measures each pulse with an ideal detector in Z with probability `p_z` and, with
    /// probability `trigger`, sends a bright pulse that makes the detector of her result
    /// click when the receiver's basis equals hers (and none when it does not). `None`:
    /// `trigger` chosen so the signal gain matches the honest one. The sifted QBER is ≈ 0
    /// and Eve knows the key: only the monitor can catch it.
    Blinding {
        /// Probability that Eve measures in Z.
        p_z: f64,
        /// Probability of a trigger pulse after a detection.
        trigger: Option<f64>,
    },
}

/// Probabilities of the three click outcomes for one pulse, relative to the encoded bit:
/// only the detector of the correct bit (`c`), only the other (`w`), or both (`both`,
/// resolved by a random bit).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Only the detector of the encoded bit clicked.
    pub c: f64,
    /// Only the other detector clicked.
    pub w: f64,
    /// Both clicked.
    pub both: f64,
}

impl Outcome {
    /// From photon-level no-click probabilities (no photon on the correct detector, none on
    /// the wrong one, none at all) and the dark-count probability per detector.
    pub fn from_no_click(no_c: f64, no_w: f64, none: f64, p_dc: f64) -> Self {
        let q = 1.0 - p_dc;
        let nc = q * no_c;
        let nw = q * no_w;
        let nn = q * q * none;
        Self { c: (nw - nn).max(0.0), w: (nc - nn).max(0.0), both: (1.0 - nc - nw + nn).max(0.0) }
    }

    /// Two independent Poisson photon streams with means `a` (correct) and `b` (wrong).
    pub fn poisson(a: f64, b: f64, p_dc: f64) -> Self {
        Self::from_no_click((-a).exp(), (-b).exp(), (-(a + b)).exp(), p_dc)
    }

    /// Click probability.
    pub fn click(&self) -> f64 {
        self.c + self.w + self.both
    }

    /// Probability of a wrong bit (double clicks count half).
    pub fn error(&self) -> f64 {
        self.w + 0.5 * self.both
    }

    fn add_scaled(&mut self, o: &Outcome, s: f64) {
        self.c += s * o.c;
        self.w += s * o.w;
        self.both += s * o.both;
    }

    fn symmetric(self) -> Self {
        let h = 0.5 * (self.c + self.w);
        Self { c: h, w: h, both: self.both }
    }
}

/// One ONU's channel as the receiver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnuModel {
    /// Total loss from the ONU to the receiver's input, dB (fibre + splitters + excess).
    pub channel_loss_db: f64,
    /// The source.
    pub source: SourceModel,
    /// An eavesdropper, if any.
    pub eve: Option<Eve>,
}

/// The outcome table of one ONU: for each intensity class k, source basis b_s and receiver
/// basis b_r, the outcome probabilities of a pulse, and the weight p_k·p(b_s)·p(b_r).
#[derive(Clone, Debug, PartialEq)]
pub struct CellTable {
    /// `cells[k][b_s][b_r]`.
    pub cells: [[[Outcome; 2]; 2]; 3],
    /// `weight[k][b_s][b_r]` = p_k · p(b_s) · p(b_r).
    pub weight: [[[f64; 2]; 2]; 3],
    /// The receiver is blinded during this ONU's slots (no dark counts, no afterpulses).
    pub blinded: bool,
}

impl CellTable {
    /// D̄ = Σ weight · click: the mean click probability per gate of this ONU's slots.
    pub fn mean_click(&self) -> f64 {
        let mut s = 0.0;
        for k in 0..3 {
            for bs in 0..2 {
                for br in 0..2 {
                    s += self.weight[k][bs][br] * self.cells[k][bs][br].click();
                }
            }
        }
        s
    }
}

/// Converts dB of loss to a transmittance.
pub fn db_to_transmittance(db: f64) -> f64 {
    10f64.powf(-db / 10.0)
}

/// Poisson probability of n photons at mean μ.
fn poisson(mu: f64, n: u32) -> f64 {
    let mut p = (-mu).exp();
    for i in 1..=n {
        p *= mu / f64::from(i);
    }
    p
}

/// Outcome for `m` photons each reaching the detectors with transmittance `t`, landing on
/// the wrong detector with probability `e` (the photons are independent).
fn photons(m: u32, t: f64, e: f64, p_dc: f64) -> Outcome {
    let mi = m as i32;
    Outcome::from_no_click((1.0 - t * (1.0 - e)).powi(mi), (1.0 - t * e).powi(mi), (1.0 - t).powi(mi), p_dc)
}

impl OnuModel {
    /// The honest outcome table, before any eavesdropper: `eta` is the total transmittance
    /// (channel × receiver × detector efficiency).
    fn honest(&self, eta: f64, p_dc: f64) -> [[[Outcome; 2]; 2]; 3] {
        let e = self.source.misalignment;
        let mut cells = [[[Outcome::default(); 2]; 2]; 3];
        for k in 0..3 {
            let n = eta * self.source.mu[k];
            for bs in 0..2 {
                for br in 0..2 {
                    cells[k][bs][br] = if bs == br {
                        Outcome::poisson(n * (1.0 - e), n * e, p_dc)
                    } else {
                        Outcome::poisson(n / 2.0, n / 2.0, p_dc)
                    };
                }
            }
        }
        cells
    }

    /// Total transmittance η from the ONU to a click: channel × receiver × efficiency.
    pub fn eta(&self, receiver_loss_db: f64, det: &DetectorModel) -> f64 {
        db_to_transmittance(self.channel_loss_db + receiver_loss_db) * det.efficiency
    }

    /// The outcome table of this ONU at the given receiver.
    pub fn cell_table(&self, receiver_loss_db: f64, det: &DetectorModel) -> CellTable {
        let eta = self.eta(receiver_loss_db, det);
        let p_dc = det.dark_count;
        let src = &self.source;
        let mut weight = [[[0.0; 2]; 2]; 3];
        for (k, wk) in weight.iter_mut().enumerate() {
            for (bs, wb) in wk.iter_mut().enumerate() {
                for (br, w) in wb.iter_mut().enumerate() {
                    *w = src.p[k] * src.basis_p(bs) * src.basis_p(br);
                }
            }
        }
        let honest = self.honest(eta, p_dc);
        let mean_click = |cells: &[[[Outcome; 2]; 2]; 3], k: usize| -> f64 {
            let mut s = 0.0;
            for bs in 0..2 {
                for br in 0..2 {
                    s += src.basis_p(bs) * src.basis_p(br) * cells[k][bs][br].click();
                }
            }
            s
        };
        let e = src.misalignment;
        let mut blinded = false;
        let cells = match self.eve {
            None => honest,
            Some(Eve::InterceptResend { fraction, p_z, resend_mu }) => {
                let mu_e = resend_mu.unwrap_or(src.mu[0]);
                let n = eta * mu_e;
                // Bob's outcome relative to Eve's resent bit, by whether his basis is hers.
                let same = Outcome::poisson(n * (1.0 - e), n * e, p_dc);
                let other = Outcome::poisson(n / 2.0, n / 2.0, p_dc);
                let dark = Outcome::poisson(0.0, 0.0, p_dc);
                let mut cells = honest;
                for k in 0..3 {
                    let seen = 1.0 - (-src.mu[k]).exp();
                    for bs in 0..2 {
                        for br in 0..2 {
                            let mut caught = Outcome::default();
                            caught.add_scaled(&dark, 1.0 - seen);
                            for be in 0..2 {
                                let pe = if be == 0 { p_z } else { 1.0 - p_z };
                                // Relative to the true bit: Eve's bit is right when her basis
                                // is the source's, random otherwise.
                                let o = if br == be {
                                    if be == bs { same } else { same.symmetric() }
                                } else {
                                    other.symmetric()
                                };
                                caught.add_scaled(&o, seen * pe);
                            }
                            let mut mixed = Outcome::default();
                            mixed.add_scaled(&honest[k][bs][br], 1.0 - fraction);
                            mixed.add_scaled(&caught, fraction);
                            cells[k][bs][br] = mixed;
                        }
                    }
                }
                cells
            }
            Some(Eve::Pns { block_single, transmittance }) => {
                let cap = eta / db_to_transmittance(self.channel_loss_db);
                let build = |t_eve: f64| -> [[[Outcome; 2]; 2]; 3] {
                    let mut cells = [[[Outcome::default(); 2]; 2]; 3];
                    for k in 0..3 {
                        let mu = src.mu[k];
                        for bs in 0..2 {
                            for br in 0..2 {
                                let ee = if bs == br { e } else { 0.5 };
                                let mut o = Outcome::default();
                                o.add_scaled(&photons(0, 0.0, ee, p_dc), poisson(mu, 0));
                                let p1 = poisson(mu, 1);
                                o.add_scaled(&photons(0, 0.0, ee, p_dc), p1 * block_single);
                                o.add_scaled(&photons(1, eta, ee, p_dc), p1 * (1.0 - block_single));
                                let mut n = 2;
                                loop {
                                    let pn = poisson(mu, n);
                                    if pn < 1e-18 || n > 60 {
                                        break;
                                    }
                                    o.add_scaled(&photons(n - 1, t_eve, ee, p_dc), pn);
                                    n += 1;
                                }
                                cells[k][bs][br] = o;
                            }
                        }
                    }
                    cells
                };
                let t_eve = match transmittance {
                    Some(t) => t,
                    None => {
                        // Match the honest signal gain, by bisection on Eve's transmittance.
                        let target = mean_click(&honest, 0);
                        let (mut lo, mut hi) = (0.0, cap);
                        if mean_click(&build(hi), 0) <= target {
                            hi
                        } else {
                            for _ in 0..60 {
                                let mid = 0.5 * (lo + hi);
                                if mean_click(&build(mid), 0) < target { lo = mid } else { hi = mid }
                            }
                            0.5 * (lo + hi)
                        }
                    }
                };
                build(t_eve)
            }
            Some(Eve::Blinding { p_z, trigger }) => {
                blinded = true;
                let p_match = |br: usize| if br == 0 { p_z } else { 1.0 - p_z };
                let t = trigger.unwrap_or_else(|| {
                    let seen = 1.0 - (-src.mu[0]).exp();
                    let reach: f64 = (0..2).map(|br| src.basis_p(br) * p_match(br)).sum();
                    (mean_click(&honest, 0) / (seen * reach)).min(1.0)
                });
                let mut cells = [[[Outcome::default(); 2]; 2]; 3];
                for k in 0..3 {
                    let seen = 1.0 - (-src.mu[k]).exp();
                    for bs in 0..2 {
                        for br in 0..2 {
                            let p = seen * t * p_match(br);
                            // The receiver clicks only in Eve's basis; when that is the
                            // source's basis her bit is right, otherwise random.
                            cells[k][bs][br] = if bs == br {
                                Outcome { c: p, w: 0.0, both: 0.0 }
                            } else {
                                Outcome { c: p / 2.0, w: p / 2.0, both: 0.0 }
                            };
                        }
                    }
                }
                cells
            }
        };
        CellTable { cells, weight, blinded }
    }
}

/// What occupies a run of gates in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// An ONU's slot (index into the ONU list).
    Onu(usize),
    /// A guard or idle gate: no light, only dark counts and afterpulses.
    Idle,
}

/// A run of gates `start..end` (within the frame) owned by one owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First gate within the frame.
    pub start: u64,
    /// One past the last gate.
    pub end: u64,
    /// Owner.
    pub owner: Owner,
}

impl Segment {
    /// Number of gates.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for an empty run.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// A slot map for planning and sampling: the frame length and each ONU's slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMap {
    /// Gates per frame.
    pub frame_gates: u64,
    /// `slots[i]` = the gate ranges ONU `i` owns in each frame (sorted, disjoint).
    pub slots: Vec<Vec<std::ops::Range<u64>>>,
}

impl SlotMap {
    /// Equal shares: each of `n` ONUs gets one contiguous slot of
    /// ⌊(frame − n·guard)/n⌋ gates followed by `guard` guard gates; leftover gates idle.
    /// `shares`, when given (one weight per ONU), splits the usable gates in proportion.
    pub fn equal(frame_gates: u64, n: usize, guard: u64, shares: Option<&[f64]>) -> SlotMap {
        let usable = frame_gates.saturating_sub(n as u64 * guard);
        let total: f64 = shares.map(|s| s.iter().sum()).unwrap_or(n as f64);
        let mut slots = Vec::with_capacity(n);
        let mut pos = 0u64;
        for i in 0..n {
            let w = shares.map(|s| s[i]).unwrap_or(1.0);
            let len = (usable as f64 * w / total).floor() as u64;
            slots.push(if len > 0 { std::iter::once(pos..pos + len).collect() } else { Vec::new() });
            pos += len + guard;
        }
        SlotMap { frame_gates, slots }
    }

    /// The frame as a sequence of segments covering `0..frame_gates`. Where slots of two
    /// ONUs overlap, the lower-numbered ONU owns the gate.
    pub fn segments(&self) -> Vec<Segment> {
        let mut owned: Vec<(u64, u64, usize)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            for r in s {
                owned.push((r.start.min(self.frame_gates), r.end.min(self.frame_gates), i));
            }
        }
        owned.sort_by_key(|&(s, _, i)| (s, i));
        let mut segs = Vec::new();
        let mut pos = 0;
        for (s, e, i) in owned {
            let s = s.max(pos);
            if s >= e {
                continue;
            }
            if s > pos {
                segs.push(Segment { start: pos, end: s, owner: Owner::Idle });
            }
            segs.push(Segment { start: s, end: e, owner: Owner::Onu(i) });
            pos = e;
        }
        if pos < self.frame_gates {
            segs.push(Segment { start: pos, end: self.frame_gates, owner: Owner::Idle });
        }
        segs
    }

    /// Gates owned by ONU `i` per frame.
    pub fn owned(&self, i: usize) -> u64 {
        self.slots[i].iter().map(|r| r.end - r.start).sum()
    }
}

/// Slot-averaged effects of the shared receiver on one ONU, from [`FrameModel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotEffects {
    /// Mean probability that the receiver is live (not dead) at one of this ONU's gates.
    pub live: f64,
    /// Mean of live × (probability that an afterpulse lands in the gate).
    pub live_afterpulse: f64,
    /// The part of `live_afterpulse` caused by clicks in *other ONUs'* slots (spill from
    /// the previous slot through a too-short guard; afterpulses of dark counts in guard
    /// gates are not counted here).
    pub spill_afterpulse: f64,
}

/// The periodic steady state of the receiver over one frame: dead time and afterpulses
/// gate by gate, to first order in the (small) click probability of a gate but exact in
/// the geometry of slots and guards.
///
/// Per gate t: R(t) = L(t)·[1 − (1−P(t))(1−A(t))], with P(t) the mean primary click
/// probability of the gate's owner, L(t) = 1 − Σ_{j=1..d} R(t−j) the probability the
/// receiver is live (at most one click fits in a dead window, so this is exact), and
/// A(t) = p_ap Σ_m a_m R(t−d−1−m) the probability an afterpulse lands in it (zero where the
/// receiver is blinded, and blinded clicks spawn none).
pub struct FrameModel {
    /// Per ONU.
    pub effects: Vec<SlotEffects>,
    /// Mean clicks per gate over the whole frame (all owners, guards included).
    pub clicks_per_gate: f64,
}

impl FrameModel {
    /// Computes the steady state. `tables[i]` is ONU `i`'s outcome table.
    pub fn compute(map: &SlotMap, tables: &[CellTable], det: &DetectorModel) -> FrameModel {
        let segs = map.segments();
        let f = map.frame_gates as usize;
        let d = det.dead_time as usize;
        let kernel = det.afterpulse_kernel();
        let w = kernel.len();
        let p_ap = det.afterpulse;
        let y0 = det.y0();
        // Per-gate primary probability, afterpulse generation/sensitivity, owner.
        let mut seg_p = Vec::with_capacity(segs.len());
        for s in &segs {
            match s.owner {
                Owner::Onu(i) => seg_p.push((tables[i].mean_click(), !tables[i].blinded)),
                Owner::Idle => seg_p.push((y0, true)),
            }
        }
        let hist = d + 1 + w;
        let ring = hist.max(1) + 1;
        // R history and "spawned afterpulse" history (R × generation), plus a tag of
        // which segment each gate belonged to (for the spill split).
        let mut r_hist = vec![0.0f64; ring];
        let mut x_hist = vec![0.0f64; ring];
        let mut owner_hist = vec![usize::MAX; ring];
        let mut dead_sum = 0.0f64;
        let mut acc = vec![(0.0f64, 0.0f64, 0.0f64); map.slots.len()];
        let mut total_r = 0.0;
        let mut t_abs = 0usize;
        for lap in 0..2 {
            for (si, s) in segs.iter().enumerate() {
                let (p, sensitive) = seg_p[si];
                let me = match s.owner {
                    Owner::Onu(i) => i,
                    Owner::Idle => usize::MAX,
                };
                for _ in s.start..s.end {
                    let idx = t_abs % ring;
                    // Live: 1 − Σ_{j=1..d} R(t−j); dead_sum holds that sum.
                    let live = (1.0 - dead_sum).max(0.0);
                    let mut a = 0.0;
                    let mut a_other = 0.0;
                    if sensitive && w > 0 {
                        for (m, km) in kernel.iter().enumerate() {
                            let back = d + 1 + m;
                            if back <= t_abs {
                                let j = (t_abs - back) % ring;
                                let v = p_ap * km * x_hist[j];
                                a += v;
                                if owner_hist[j] != me && owner_hist[j] != usize::MAX {
                                    a_other += v;
                                }
                            }
                        }
                    }
                    let r = live * (1.0 - (1.0 - p) * (1.0 - a));
                    r_hist[idx] = r;
                    x_hist[idx] = if sensitive { r } else { 0.0 };
                    owner_hist[idx] = me;
                    dead_sum += r;
                    if d > 0 {
                        if t_abs >= d {
                            dead_sum -= r_hist[(t_abs - d) % ring];
                        }
                    } else {
                        dead_sum = 0.0;
                    }
                    if lap == 1 {
                        total_r += r;
                        if let Owner::Onu(i) = s.owner {
                            acc[i].0 += live;
                            acc[i].1 += live * a;
                            acc[i].2 += live * a_other;
                        }
                    }
                    t_abs += 1;
                }
            }
            let _ = f;
        }
        let effects = acc
            .iter()
            .enumerate()
            .map(|(i, &(l, la, lo))| {
                let n = map.owned(i) as f64;
                if n > 0.0 {
                    SlotEffects { live: l / n, live_afterpulse: la / n, spill_afterpulse: lo / n }
                } else {
                    SlotEffects::default()
                }
            })
            .collect();
        FrameModel { effects, clicks_per_gate: total_r / map.frame_gates as f64 }
    }
}

/// Expected per-pulse detection and error probabilities of one ONU's cells, once the
/// receiver's dead time and afterpulses are folded in: Q = D·L + (1−D)·LA and
/// E = err·L + (1−D)·LA/2 (an afterpulse has a random bit; a primary click and an
/// afterpulse in the same gate count as the primary click).
pub fn effective(cell: &Outcome, fx: &SlotEffects) -> (f64, f64) {
    let d = cell.click();
    let q = d * fx.live + (1.0 - d) * fx.live_afterpulse;
    let e = cell.error() * fx.live + (1.0 - d) * fx.live_afterpulse * 0.5;
    (q, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn onu(loss: f64) -> OnuModel {
        OnuModel { channel_loss_db: loss, source: SourceModel::default(), eve: None }
    }

    #[test]
    fn click_probability_is_lims_d() {
        let det = DetectorModel::APD;
        let o = onu(20.0);
        let t = o.cell_table(2.0, &det);
        let eta = o.eta(2.0, &det);
        for k in 0..3 {
            let d = 1.0 - (1.0 - det.y0()) * (-eta * o.source.mu[k]).exp();
            for bs in 0..2 {
                for br in 0..2 {
                    assert!((t.cells[k][bs][br].click() - d).abs() < 1e-15);
                }
            }
            // Error probability within O(p_dc·ημ) of Lim's first-order form.
            let lim = det.y0() / 2.0 + 0.01 * (1.0 - (-eta * o.source.mu[k]).exp());
            let ours = t.cells[k][0][0].error();
            assert!(
                (ours - lim).abs() < 4.0 * det.dark_count * eta * o.source.mu[k] + 1e-12,
                "{ours} vs {lim}"
            );
        }
    }

    #[test]
    fn mismatched_bases_give_half_errors() {
        let t = onu(15.0).cell_table(2.0, &DetectorModel::APD);
        let c = t.cells[0][0][1];
        assert!((c.error() / c.click() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn intercept_resend_gives_a_quarter() {
        let mut o = onu(15.0);
        o.eve = Some(Eve::InterceptResend { fraction: 1.0, p_z: 0.5, resend_mu: None });
        let t = o.cell_table(2.0, &DetectorModel::SNSPD);
        for k in 0..2 {
            let c = t.cells[k][0][0];
            let q = c.error() / c.click();
            assert!((q - 0.25).abs() < 0.01, "class {k}: QBER {q}");
        }
    }

    #[test]
    fn blinding_matches_the_signal_gain_with_no_errors() {
        let honest = onu(15.0).cell_table(2.0, &DetectorModel::APD);
        let mut o = onu(15.0);
        o.eve = Some(Eve::Blinding { p_z: 0.75, trigger: None });
        let t = o.cell_table(2.0, &DetectorModel::APD);
        assert!(t.blinded);
        let g = |t: &CellTable, k: usize| -> f64 {
            (0..2)
                .flat_map(|a| (0..2).map(move |b| (a, b)))
                .map(|(a, b)| t.weight[k][a][b] * t.cells[k][a][b].click())
                .sum()
        };
        assert!((g(&t, 0) / g(&honest, 0) - 1.0).abs() < 1e-9);
        assert_eq!(t.cells[0][0][0].error(), 0.0);
        // The vacuum-class yield collapses without dark counts: a monitor signature.
        assert!(g(&t, 2) < 0.2 * g(&honest, 2));
    }

    #[test]
    fn guard_removes_spill_in_the_frame_model() {
        let det = DetectorModel { afterpulse: 0.2, ..DetectorModel::APD };
        let tables = vec![onu(5.0).cell_table(2.0, &det), onu(25.0).cell_table(2.0, &det)];
        let short = SlotMap::equal(4000, 2, u64::from(det.dead_time), None);
        let long = SlotMap::equal(4000, 2, det.guard_gates(), None);
        let fs = FrameModel::compute(&short, &tables, &det);
        let fl = FrameModel::compute(&long, &tables, &det);
        assert!(fs.effects[1].spill_afterpulse > 0.0);
        assert!(fl.effects[1].spill_afterpulse < 1e-15 && fl.effects[0].spill_afterpulse < 1e-15);
    }
}
