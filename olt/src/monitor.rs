//! The OLT's monitor: per-ONU statistics and the receiver's status checked against the
//! physics of an honest link, with alarms that name the ONU and the anomaly.
//!
//! # What it watches
//!
//! Per ONU, over a sliding window ([`Counts`], from [`OnuStats`]): the gates it owned
//! (pulses it sent), the detections attributed to it and their double clicks, and what
//! sifting revealed — basis-matched detections per intensity class and test-basis errors
//! per class. Receiver-wide: the detectors' bias currents ([`DetectorStatus`]).
//!
//! # The honest model the rules test against
//!
//! Lim et al., PRA 89, 022307 (2014), simulation section, which is also `qpon-sim`'s click
//! model: a pulse of class k puts a Poisson number of photons of mean x_k = η·μ_k on the
//! two detectors (η = channel × receiver × detector efficiency), each detector adds dark
//! counts p_dc, so the yield is Y_k = 1 − (1 − Y0)·e^{−x_k} with Y0 = 1 − (1 − p_dc)². Dead
//! time scales all classes' yields by the same live fraction and afterpulses add the same
//! background to every class (neither depends on the class of the current pulse). From
//! that:
//!
//! - **Decoy-yield curvature** ([`AlarmKind::DecoyYieldInconsistent`]). The ratio
//!   R = (Y2 − Y3)/(Y1 − Y3) cancels the background, the live fraction and the detection
//!   efficiency's scale; honestly R = (1 − e^{−η(μ2−μ3)})/(1 − e^{−η(μ1−μ3)}), which grows
//!   with η from (μ2 − μ3)/(μ1 − μ3) at η → 0. η cannot exceed the receiver's own
//!   transmittance × efficiency ([`MonitorConfig::max_transmittance`]). A faked-state
//!   (blinding) or intercept-resend attacker who measures at the ONU makes the yields
//!   follow 1 − e^{−μ_k}, i.e. R as if η = 1; a photon-number splitter who blocks single
//!   photons makes them follow the multi-photon probabilities, R far below the η → 0
//!   value. The OLT sees only basis-matched detections per class, but for honest and
//!   attacked pulses alike the click does not depend on the basis relation, so matched
//!   counts / p_k are proportional to Y_k and the common factor cancels in R.
//! - **Double clicks** ([`AlarmKind::NoDoubleClicks`]). With mismatched bases the photons
//!   split evenly between the detectors, so a click is a double click with probability at
//!   least g(x) = (1 − e^{−x/2})²/(1 − e^{−x}) ≈ x/4 (dead time cancels in this
//!   conditional probability). x_k is estimated from the absolute yields
//!   (Y1 − Y3 = η(μ1 − μ3) to first order, background removed), the mismatched detections
//!   from sifting's discards. A blinded receiver clicks only on the attacker's bright
//!   trigger pulses, in one detector: no double clicks at all.
//! - **Vacuum-class yield** ([`AlarmKind::VacuumYieldBelowDarkFloor`]). Y3 ≥ Y0 times the
//!   live fraction: dark counts cannot be switched off, except by blinding the detectors.
//! - **QBER per class** ([`AlarmKind::QberAbove`]). For the signal and decoy classes, the
//!   test-basis errors must be consistent with at most [`MonitorConfig::qber_max`] on the
//!   photon part plus ½ on the background part (dark counts and afterpulses, whose share
//!   of class k is estimated from the vacuum class). The weakest class is not tested on
//!   its own: its errors are mostly background at ½.
//! - **Bias current** ([`AlarmKind::BiasCurrentOutOfRange`]). Bright light pushes an APD's
//!   bias current far above nominal and latches an SNSPD (current near zero). The
//!   receiver is shared, so the anomaly is attributed to the ONUs whose own statistics
//!   show the blinding signature (any of the three tests above that a blinded receiver
//!   fails) at the lower [`MonitorConfig::attribution_sigmas`]; if none does, it is
//!   reported receiver-wide (`onu: None`).
//!
//! # Statistics and false alarms
//!
//! Every rule turns its deviation into a significance in σ: count tests use Chernoff
//! bounds on the tail probability, P ≤ e^{−E} (Poisson lower tail, binomial upper tail),
//! reported as z = √(2E), the Gaussian z with the same exponent (Chernoff overstates P, so
//! the true significance is higher); the curvature test uses the delta method on Poisson
//! counts. An alarm fires at z ≥ [`MonitorConfig::sigmas`] (default 8: P ≤ e^{−32} ≈
//! 1.3·10⁻¹⁴ per test). Multiple comparisons, Bonferroni: 128 ONUs × 6 tests, evaluated
//! once per status (1 s) for a year, is 2.4·10¹⁰ looks, so ≤ 3·10⁻⁴ expected false alarms
//! per year even if every look were independent (successive looks share most of their
//! counts, so far fewer). Each test also waits for a minimum count so the approximations
//! hold, and the honest model is always taken at its most permissive end (η at its
//! maximum, yields and background bounds in the direction that favours the honest
//! hypothesis, an explicit margin on expected counts).
//!
//! Windows: each ONU's counts are judged over the last one to two
//! [`MonitorConfig::window_s`] (two rolling windows), so an attack that starts after a
//! long honest run is not diluted by it.
//!
//! Alarms latch: each (ONU, kind) is raised once, with the time it was first seen.

use crate::stats::OnuStats;
use qpon_hw::DetectorStatus;
use qpon_mux::SlotMapSchedule;
use qpon_qkd::finite_key::DecoyParams;
use qpon_qkd::time::Instant;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Thresholds of the monitor. Defaults are documented per field; see the [module
/// docs](self) for the model and the false-alarm budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Significance, in σ, at which a per-ONU statistic raises an alarm (default 8: a
    /// tail probability ≤ 1.3·10⁻¹⁴ per look; see the module docs for the budget over
    /// 128 ONUs and a year).
    pub sigmas: f64,
    /// Significance at which an ONU's statistics count as showing the blinding signature
    /// while the receiver's bias current is abnormal (default 5). Lower than `sigmas`
    /// because it is only consulted when the receiver itself already reports an anomaly.
    pub attribution_sigmas: f64,
    /// Basis-matched detections in each of the signal and decoy classes before the
    /// decoy-yield curvature is judged (default 10 000: the delta method's Gaussian
    /// approximation is then good to far beyond 8σ at the curvature's scale).
    pub min_decoy_detections: u64,
    /// Test-basis detections in a class before its QBER is judged (default 500).
    pub min_test_detections: u64,
    /// Largest QBER of the photon (non-background) part of the signal and decoy classes
    /// an honest link may show (default 0.11: beyond it BB84 yields no key at all, so the
    /// link is either attacked or broken).
    pub qber_max: f64,
    /// Largest total transmittance η an ONU can have: the receiver's own internal
    /// transmittance × detector efficiency (fibre and splitter only lower it). Default 0.5:
    /// DESIGN.md §5's SNSPD (η_det 0.8) behind 2 dB of internal loss — the most permissive
    /// receiver of the project; an APD receiver (0.2 × 0.63 ≈ 0.13) may set less.
    pub max_transmittance: f64,
    /// Dark-count probability per gate and detector, p_dc, of the receiver (calibration).
    /// Default 1e-8, the lowest of DESIGN.md §5's profiles (SNSPD): a too-low value only
    /// weakens the vacuum test, never makes it fire on an honest ONU.
    pub dark_count: f64,
    /// Fraction of the dark-count floor Y0 an honest vacuum class must reach (default
    /// 0.5: dead time removes a few per cent of live gates at the count rates where keys
    /// are made; half the floor leaves a wide margin).
    pub dark_floor_fraction: f64,
    /// Fraction of the honest lower bound on double clicks an ONU must reach (default 0.5:
    /// covers a receiver whose beam splitting is not exactly 50/50 and background clicks
    /// counted as photon clicks).
    pub double_click_fraction: f64,
    /// Relative deviation of a detector's bias current from nominal, anywhere in the
    /// status interval, that counts as abnormal (default 0.25). Bias currents are
    /// readouts, not counts: blinding moves them by orders of magnitude (APD ×1000,
    /// SNSPD to ~0), drift and noise by a few per cent.
    pub bias_tolerance: f64,
    /// Length of the rolling windows, seconds (default 300): counts are judged over the
    /// last one to two windows.
    pub window_s: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            sigmas: 8.0,
            attribution_sigmas: 5.0,
            min_decoy_detections: 10_000,
            min_test_detections: 500,
            qber_max: 0.11,
            max_transmittance: 0.5,
            dark_count: 1e-8,
            dark_floor_fraction: 0.5,
            double_click_fraction: 0.5,
            bias_tolerance: 0.25,
            window_s: 300.0,
        }
    }
}

/// The anomaly an alarm names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AlarmKind {
    /// The vacuum-class yield is below the receiver's dark-count floor (dark counts cannot
    /// be switched off, except by blinding the detectors).
    VacuumYieldBelowDarkFloor,
    /// Far fewer double clicks than the photon flux implies (a blinded receiver clicks in
    /// one detector only).
    NoDoubleClicks,
    /// A detector's bias current left its range (attributed to the ONU whose statistics
    /// show the blinding signature, or receiver-wide).
    BiasCurrentOutOfRange,
    /// The test-basis QBER of a class exceeds what an honest link can show.
    QberAbove,
    /// The decoy yields do not fit any honest transmittance (intercept-resend, blinding,
    /// photon-number splitting).
    DecoyYieldInconsistent,
}

/// One alarm: the ONU (or `None`: the receiver as a whole), the anomaly, a human-readable
/// detail with the figures, and when it was first raised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alarm {
    /// The ONU, or `None` for the receiver as a whole.
    pub onu: Option<u16>,
    /// The anomaly.
    pub kind: AlarmKind,
    /// The figures behind it.
    pub detail: String,
    /// When it was first raised.
    #[serde(serialize_with = "secs")]
    pub at: Instant,
}

fn secs<S: serde::Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(t.as_secs_f64())
}

impl fmt::Display for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.onu {
            Some(o) => write!(f, "onu {o}: ")?,
            None => write!(f, "receiver: ")?,
        }
        write!(f, "{:?} at {:.3} s: {}", self.kind, self.at.as_secs_f64(), self.detail)
    }
}

/// What the OLT has observed of one ONU: cumulative counters (the monitor takes window
/// differences). Class index 0 = signal μ1, 1 = decoy μ2, 2 = weakest ("vacuum") μ3.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    /// Gates the ONU owned (pulses it sent), up to the last status.
    pub gates: u64,
    /// Detections attributed to it.
    pub detections: u64,
    /// Of which double clicks.
    pub double_clicks: u64,
    /// Detections answered by sifting (matched or discarded).
    pub announced: u64,
    /// Basis-matched detections per class (both bases).
    pub matched: [u64; 3],
    /// Test-basis matched detections per class.
    pub test: [u64; 3],
    /// Test-basis errors per class.
    pub test_errors: [u64; 3],
}

impl Counts {
    fn minus(&self, o: &Counts) -> Counts {
        let d3 = |a: [u64; 3], b: [u64; 3]| std::array::from_fn(|k| a[k].saturating_sub(b[k]));
        Counts {
            gates: self.gates.saturating_sub(o.gates),
            detections: self.detections.saturating_sub(o.detections),
            double_clicks: self.double_clicks.saturating_sub(o.double_clicks),
            announced: self.announced.saturating_sub(o.announced),
            matched: d3(self.matched, o.matched),
            test: d3(self.test, o.test),
            test_errors: d3(self.test_errors, o.test_errors),
        }
    }

    /// True when some counter went backwards (the ONU was replaced: start afresh).
    fn went_back(&self, o: &Counts) -> bool {
        self.gates < o.gates || self.detections < o.detections || self.announced < o.announced
    }

    fn matched_total(&self) -> u64 {
        self.matched.iter().sum()
    }
}

impl From<&OnuStats> for Counts {
    fn from(s: &OnuStats) -> Counts {
        let c = &s.sift.counts;
        let u = |x: f64| x.max(0.0).round() as u64;
        Counts {
            gates: s.owned_gates,
            detections: s.detections,
            double_clicks: s.double_clicks,
            announced: s.sift.announced,
            matched: std::array::from_fn(|k| u(c.key.n[k] + c.test.n[k])),
            test: std::array::from_fn(|k| u(c.test.n[k])),
            test_errors: std::array::from_fn(|k| u(c.test.m[k])),
        }
    }
}

/// The significance of each rule for one ONU, in σ towards the anomaly (0 = no evidence
/// or not enough counts), with the figures for the alarm's detail.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assessment {
    /// `QberAbove`, signal and decoy classes.
    pub qber: [(f64, String); 2],
    /// `DecoyYieldInconsistent`: curvature above the honest range (blinding,
    /// intercept-resend).
    pub decoy_high: (f64, String),
    /// `DecoyYieldInconsistent`: curvature below the honest range (photon-number
    /// splitting).
    pub decoy_low: (f64, String),
    /// `NoDoubleClicks`.
    pub double_clicks: (f64, String),
    /// `VacuumYieldBelowDarkFloor`.
    pub vacuum: (f64, String),
}

impl Assessment {
    /// The strongest evidence of blinding: a blinded receiver fails the curvature (high
    /// side), double-click and vacuum-floor tests.
    pub fn blinding_signature(&self) -> (f64, &str) {
        [&self.decoy_high, &self.double_clicks, &self.vacuum]
            .into_iter()
            .map(|(z, d)| (*z, d.as_str()))
            .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a })
    }
}

/// The σ-equivalent of a tail bound P ≤ e^{−e}: the Gaussian z with the same exponent.
fn sigma_of_exponent(e: f64) -> f64 {
    (2.0 * e.max(0.0)).sqrt()
}

/// Chernoff exponent of the Poisson lower tail: P(X ≤ k | λ) ≤ e^{−E},
/// E = λ − k + k·ln(k/λ) for k < λ (0 otherwise).
pub fn poisson_lower_exponent(k: f64, lambda: f64) -> f64 {
    if lambda.is_nan() || lambda <= 0.0 || k >= lambda {
        0.0
    } else if k <= 0.0 {
        lambda
    } else {
        lambda - k + k * (k / lambda).ln()
    }
}

/// Chernoff exponent of the binomial upper tail: P(M ≥ m | n, q) ≤ e^{−n·KL(m/n ‖ q)}
/// for m/n > q (0 otherwise).
pub fn binomial_upper_exponent(m: f64, n: f64, q: f64) -> f64 {
    if n.is_nan() || n <= 0.0 || m <= q * n || q >= 1.0 {
        return 0.0;
    }
    let a = (m / n).min(1.0);
    let t = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() } else { 0.0 };
    n * (t(a, q) + t(1.0 - a, 1.0 - q))
}

/// The honest decoy-yield curvature (Y2 − Y3)/(Y1 − Y3) at total transmittance `eta`.
pub fn honest_curvature(mu: [f64; 3], eta: f64) -> f64 {
    let (a, b) = (mu[1] - mu[2], mu[0] - mu[2]);
    if eta <= 0.0 { a / b } else { (-eta * a).exp_m1() / (-eta * b).exp_m1() }
}

/// P(double click | click) for a pulse of mean `x` photons split evenly over two
/// detectors (dark counts ignored: a lower bound).
fn even_split_double(x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let h = (-x / 2.0).exp_m1();
    h * h / -(-x).exp_m1()
}

/// Judges one ONU's window counts. Pure: the same counts always give the same answer.
pub fn assess(cfg: &MonitorConfig, decoy: &DecoyParams, c: &Counts) -> Assessment {
    let mut out = Assessment::default();
    let (mu, p) = (decoy.mu, decoy.p);
    let n: [f64; 3] = c.matched.map(|x| x as f64);

    // QBER per class, background-corrected: the background share of class k is bounded
    // by the vacuum class's rate (its photon part included, which only raises the
    // allowance), taken at a 3σ upper value.
    let n3 = c.test[2] as f64;
    let bg_rate = (n3 + 3.0 * n3.sqrt() + 3.0) / p[2];
    for (k, slot) in out.qber.iter_mut().enumerate() {
        let (nk, mk) = (c.test[k] as f64, c.test_errors[k] as f64);
        if c.test[k] < cfg.min_test_detections {
            continue;
        }
        let bg = (bg_rate * p[k] / nk).min(1.0);
        let q0 = (cfg.qber_max + (0.5 - cfg.qber_max) * bg).min(0.5);
        let z = sigma_of_exponent(binomial_upper_exponent(mk, nk, q0));
        *slot = (
            z,
            format!(
                "class {} test-basis QBER {:.4} ({mk} of {nk}), honest ≤ {q0:.4} ({z:.1}σ)",
                k + 1,
                mk / nk
            ),
        );
    }

    // Decoy-yield curvature R = (b − c)/(a − c), a, b, c = matched counts / p_k ∝ Y_k.
    if c.matched[0] >= cfg.min_decoy_detections && c.matched[1] >= cfg.min_decoy_detections {
        let (a, b, cc) = (n[0] / p[0], n[1] / p[1], n[2] / p[2]);
        if a > cc {
            let r = (b - cc) / (a - cc);
            let (va, vb, vc) = (n[0] / (p[0] * p[0]), n[1] / (p[1] * p[1]), n[2] / (p[2] * p[2]));
            let d = a - cc;
            let var = va * ((b - cc) / (d * d)).powi(2) + vb / (d * d) + vc * ((b - a) / (d * d)).powi(2);
            let sd = var.sqrt().max(f64::MIN_POSITIVE);
            let hi = honest_curvature(mu, cfg.max_transmittance);
            let lo = honest_curvature(mu, 0.0);
            let detail = |z: f64| {
                format!(
                    "decoy-yield curvature (Y2−Y3)/(Y1−Y3) = {r:.4} ± {sd:.4}, honest range \
                     [{lo:.4}, {hi:.4}] for η ≤ {} ({z:.1}σ)",
                    cfg.max_transmittance
                )
            };
            let zh = ((r - hi) / sd).max(0.0);
            let zl = ((lo - r) / sd).max(0.0);
            out.decoy_high = (zh, detail(zh));
            out.decoy_low = (zl, detail(zl));
        }
    }

    // Absolute yields need the pulses sent and the basis-match fraction.
    let matched = c.matched_total() as f64;
    if c.gates == 0 || c.announced == 0 || matched <= 0.0 {
        return out;
    }
    let p_match = matched / c.announced as f64;
    let yield_of = |k: usize| n[k] / (c.gates as f64 * p[k] * p_match);

    // Double clicks: η from the background-free yield difference, x_k = η·μ_k; the
    // mismatched detections (sifting's discards) apportioned by class like the matched.
    let eta = ((yield_of(0) - yield_of(2)) / (mu[0] - mu[2])).clamp(0.0, 1.0);
    let mismatched = c.announced.saturating_sub(c.matched_total()) as f64;
    let expect: f64 = (0..3).map(|k| mismatched * (n[k] / matched) * even_split_double(eta * mu[k])).sum();
    let lambda = cfg.double_click_fraction * expect;
    let k = c.double_clicks as f64;
    let z = sigma_of_exponent(poisson_lower_exponent(k, lambda));
    out.double_clicks = (
        z,
        format!(
            "{k} double clicks in {} detections, honest ≥ {lambda:.1} (η ≈ {eta:.2e}) ({z:.1}σ)",
            c.detections
        ),
    );

    // Vacuum class against the dark-count floor.
    let y0 = 1.0 - (1.0 - cfg.dark_count).powi(2);
    let lambda = cfg.dark_floor_fraction * y0 * c.gates as f64 * p[2] * p_match;
    let z = sigma_of_exponent(poisson_lower_exponent(n[2], lambda));
    out.vacuum = (
        z,
        format!(
            "vacuum-class yield {:.2e} below the dark-count floor Y0 = {y0:.2e} ({} detections, \
             honest ≥ {lambda:.1}) ({z:.1}σ)",
            yield_of(2),
            c.matched[2]
        ),
    );
    out
}

/// Whether a detector status shows a bias current out of range; the detail if so.
pub fn bias_anomaly(cfg: &MonitorConfig, status: &DetectorStatus) -> Option<String> {
    let mut bad = Vec::new();
    for (i, d) in status.detectors.iter().enumerate() {
        let nom = d.nominal_bias_current_ua;
        let tol = cfg.bias_tolerance * nom.abs().max(f64::MIN_POSITIVE);
        let (lo, hi) = d.bias_current_range_ua;
        if lo < nom - tol || hi > nom + tol || (d.bias_current_ua - nom).abs() > tol {
            bad.push(format!(
                "detector {i} bias {lo:.2}–{hi:.2} µA (mean {:.2}), nominal {nom:.2} µA",
                d.bias_current_ua
            ));
        }
    }
    if bad.is_empty() { None } else { Some(bad.join("; ")) }
}

/// Gates each ONU owned in `from..to` under the slot maps in force: the pulses its source
/// fired there (whole frames exact, a partial frame at either end pro rata).
pub fn owned_gates(slots: &SlotMapSchedule, from: u64, to: u64) -> BTreeMap<u16, u64> {
    let mut out = BTreeMap::new();
    let frame_len = u64::from(slots.frame_len()).max(1);
    let mut g = from;
    while g < to {
        let frame = g / frame_len;
        let end = slots.next_change_after(frame).map_or(to, |f| f.saturating_mul(frame_len).min(to));
        let end = end.max(g + 1);
        if let Some(map) = slots.map_at(frame) {
            for s in map.slots() {
                let n = (end - g) as u128 * u128::from(s.len) / u128::from(frame_len);
                *out.entry(s.owner.0).or_insert(0) += n as u64;
            }
        }
        g = end;
    }
    out
}

/// One ONU's rolling windows.
#[derive(Clone, Debug)]
struct Watch {
    /// Counts at the start of the previous window (the judged span starts here).
    prev: Counts,
    /// Counts at the start of the current window.
    cur: Counts,
    since: Instant,
}

/// The monitor: per-ONU windows, latched alarms.
#[derive(Clone, Debug)]
pub struct Monitor {
    cfg: MonitorConfig,
    watches: BTreeMap<u16, Watch>,
    alarms: Vec<Alarm>,
    raised: BTreeSet<(Option<u16>, AlarmKind)>,
    /// The last abnormal bias reading: when, and what.
    bias: Option<(Instant, String)>,
}

impl Monitor {
    /// A monitor with these thresholds.
    pub fn new(cfg: MonitorConfig) -> Self {
        Self { cfg, watches: BTreeMap::new(), alarms: Vec::new(), raised: BTreeSet::new(), bias: None }
    }

    /// The thresholds.
    pub fn config(&self) -> &MonitorConfig {
        &self.cfg
    }

    /// Replaces the thresholds (alarms already raised stay).
    pub fn set_config(&mut self, cfg: MonitorConfig) {
        self.cfg = cfg;
    }

    /// Every alarm raised so far, in order.
    pub fn alarms(&self) -> &[Alarm] {
        &self.alarms
    }

    /// The alarms naming `onu`.
    pub fn alarms_of(&self, onu: u16) -> impl Iterator<Item = &Alarm> {
        self.alarms.iter().filter(move |a| a.onu == Some(onu))
    }

    fn raise(&mut self, now: Instant, onu: Option<u16>, kind: AlarmKind, detail: String) -> bool {
        if !self.raised.insert((onu, kind)) {
            return false;
        }
        self.alarms.push(Alarm { onu, kind, detail, at: now });
        true
    }

    /// One evaluation: the receiver's status (if one was read) and every ONU's cumulative
    /// counts with its decoy source. Returns how many alarms were newly raised.
    pub fn evaluate<'a>(
        &mut self,
        now: Instant,
        status: Option<&DetectorStatus>,
        onus: impl IntoIterator<Item = (u16, Counts, &'a DecoyParams)>,
    ) -> usize {
        let before = self.alarms.len();
        let window = qpon_qkd::time::Duration::from_secs_f64(self.cfg.window_s.max(0.0));
        let mut signatures: Vec<(u16, f64, String)> = Vec::new();
        for (onu, counts, decoy) in onus {
            let w = self.watches.entry(onu).or_insert(Watch {
                prev: Counts::default(),
                cur: Counts::default(),
                since: now,
            });
            if counts.went_back(&w.cur) {
                *w = Watch { prev: counts, cur: counts, since: now };
            }
            if now - w.since >= window {
                w.prev = w.cur;
                w.cur = counts;
                w.since = now;
            }
            let span = counts.minus(&w.prev);
            let a = assess(&self.cfg, decoy, &span);
            let s = self.cfg.sigmas;
            for (z, d) in &a.qber {
                if *z >= s {
                    self.raise(now, Some(onu), AlarmKind::QberAbove, d.clone());
                }
            }
            for (z, d) in [&a.decoy_high, &a.decoy_low] {
                if *z >= s {
                    self.raise(now, Some(onu), AlarmKind::DecoyYieldInconsistent, d.clone());
                }
            }
            if a.double_clicks.0 >= s {
                self.raise(now, Some(onu), AlarmKind::NoDoubleClicks, a.double_clicks.1.clone());
            }
            if a.vacuum.0 >= s {
                self.raise(now, Some(onu), AlarmKind::VacuumYieldBelowDarkFloor, a.vacuum.1.clone());
            }
            let (z, d) = a.blinding_signature();
            signatures.push((onu, z, d.to_string()));
        }
        let anomaly = status.and_then(|st| bias_anomaly(&self.cfg, st));
        if let Some(d) = &anomaly {
            self.bias = Some((now, d.clone()));
        }
        // A bias anomaly seen within the window is attributed to the ONUs that show the
        // blinding signature (their slots are when the receiver was blinded).
        if let Some((seen, what)) = self.bias.clone()
            && now - seen <= window
        {
            let mut attributed = false;
            for (onu, z, d) in &signatures {
                if *z >= self.cfg.attribution_sigmas {
                    attributed = true;
                    self.raise(
                        now,
                        Some(*onu),
                        AlarmKind::BiasCurrentOutOfRange,
                        format!("{what}; this ONU shows the blinding signature: {d}"),
                    );
                }
            }
            if !attributed && anomaly.is_some() {
                self.raise(
                    now,
                    None,
                    AlarmKind::BiasCurrentOutOfRange,
                    format!("{what}; no ONU's statistics show the blinding signature yet"),
                );
            }
        }
        self.alarms.len() - before
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new(MonitorConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qpon_hw::DetectorChannelStatus;

    /// Expected (noise-free) counts of an ONU under the honest model, or blinded: `gates`
    /// pulses, transmittance `eta`, p_z = 0.75 at both ends, misalignment 1 %, dark count
    /// `p_dc`, live fraction 0.95.
    fn expected(gates: f64, eta: f64, p_dc: f64, blinded: bool) -> Counts {
        let d = DecoyParams::default();
        let y0 = 1.0 - (1.0 - p_dc).powi(2);
        let p_match = 0.625;
        let live = 0.95;
        // Blinding: yields follow 1 − e^{−μ}, scaled to the honest signal gain.
        let scale = (1.0 - (1.0 - y0) * (-eta * d.mu[0]).exp()) / (1.0 - (-d.mu[0]).exp());
        let y: [f64; 3] = std::array::from_fn(|k| {
            live * if blinded {
                scale * (1.0 - (-d.mu[k]).exp())
            } else {
                1.0 - (1.0 - y0) * (-eta * d.mu[k]).exp()
            }
        });
        let det: [f64; 3] = std::array::from_fn(|k| gates * d.p[k] * y[k]);
        let total: f64 = det.iter().sum();
        let matched: [u64; 3] = std::array::from_fn(|k| (det[k] * p_match) as u64);
        let test: [u64; 3] = std::array::from_fn(|k| (det[k] * p_match * 0.1) as u64);
        let e = |k: usize| if blinded { 0.0 } else { 0.01 + 0.5 * y0 / y[k] };
        let test_errors: [u64; 3] = std::array::from_fn(|k| (test[k] as f64 * e(k)) as u64);
        // Double clicks of the honest model: mismatched pulses split evenly.
        let dc: f64 = if blinded {
            0.0
        } else {
            (0..3).map(|k| det[k] * 0.375 * even_split_double(eta * d.mu[k])).sum()
        };
        Counts {
            gates: gates as u64,
            detections: total as u64,
            double_clicks: dc as u64,
            announced: total as u64,
            matched,
            test,
            test_errors,
        }
    }

    #[test]
    fn tail_bounds() {
        // Poisson: P(X ≤ 0 | 32) = e^{−32} exactly; symmetric cases give nothing.
        assert!((poisson_lower_exponent(0.0, 32.0) - 32.0).abs() < 1e-12);
        assert_eq!(poisson_lower_exponent(40.0, 32.0), 0.0);
        assert!((sigma_of_exponent(32.0) - 8.0).abs() < 1e-12);
        // The Chernoff bound is above the exact tail: P(X ≤ 5 | 20) = 7.2e-5.
        let e = poisson_lower_exponent(5.0, 20.0);
        assert!((-e).exp() >= 7.2e-5);
        // Binomial: 25 % errors in 1000 against 11 %.
        let e = binomial_upper_exponent(250.0, 1000.0, 0.11);
        assert!(e > 70.0, "{e}");
        assert_eq!(binomial_upper_exponent(100.0, 1000.0, 0.11), 0.0);
    }

    #[test]
    fn curvature_grows_with_transmittance() {
        let mu = DecoyParams::default().mu;
        let mut last = 0.0;
        for i in 0..=100 {
            let r = honest_curvature(mu, i as f64 / 100.0);
            assert!(r > last);
            last = r;
        }
        assert!((honest_curvature(mu, 0.0) - 0.1998 / 0.4998).abs() < 1e-12);
        assert!((honest_curvature(mu, 1e-12) - honest_curvature(mu, 0.0)).abs() < 1e-9);
        // A blinding attacker's yields look like η = 1: above the default η ≤ 0.5 range.
        assert!(honest_curvature(mu, 1.0) > honest_curvature(mu, 0.5) + 0.02);
    }

    #[test]
    fn honest_onus_at_large_counts_raise_nothing() {
        let cfg = MonitorConfig::default();
        let d = DecoyParams::default();
        // SNSPD and APD receivers, near and far ONUs, up to 10^12 gates (hours at 1/128
        // of 1 GHz), plus a 1 % shortfall of every count (detections still in flight).
        for (p_dc, eta) in [(1e-8, 0.0117), (1e-8, 1e-4), (1e-5, 0.0029), (1e-5, 2e-4), (1e-8, 0.3)] {
            let cfg = MonitorConfig { dark_count: p_dc, ..cfg.clone() };
            for gates in [1e8, 1e10, 1e12] {
                let c = expected(gates, eta, p_dc, false);
                let a = assess(&cfg, &d, &c);
                let all = [&a.qber[0], &a.qber[1], &a.decoy_high, &a.decoy_low, &a.double_clicks, &a.vacuum];
                for (z, detail) in all {
                    assert!(*z < 1.0, "p_dc {p_dc} η {eta} gates {gates:e}: {z} — {detail}");
                }
            }
        }
    }

    #[test]
    fn blinded_counts_are_caught() {
        let d = DecoyParams::default();
        for (p_dc, eta) in [(1e-8, 0.0117), (1e-5, 0.0029)] {
            let cfg = MonitorConfig { dark_count: p_dc, ..MonitorConfig::default() };
            // Five virtual seconds of a 16-ONU PON at 1 GHz.
            let c = expected(3e8, eta, p_dc, true);
            let a = assess(&cfg, &d, &c);
            assert!(a.decoy_high.0 >= cfg.sigmas, "{}", a.decoy_high.1);
            if p_dc > 1e-6 {
                // An APD's dark counts are far above a blinded vacuum class's yield (its
                // low η makes honest double clicks rare: that test needs longer).
                assert!(a.vacuum.0 >= cfg.sigmas, "{}", a.vacuum.1);
            } else {
                // An SNSPD's dark counts are below the vacuum class's photon yield, but
                // its high η makes double clicks frequent.
                assert!(a.double_clicks.0 >= cfg.sigmas, "{}", a.double_clicks.1);
            }
            assert!(a.blinding_signature().0 >= cfg.sigmas);
            assert!(a.qber[0].0 == 0.0 && a.qber[1].0 == 0.0);
        }
    }

    #[test]
    fn intercept_resend_qber_is_caught() {
        let cfg = MonitorConfig::default();
        let d = DecoyParams::default();
        let mut c = expected(6e7, 0.0117, 1e-8, false);
        for k in 0..3 {
            c.test_errors[k] = c.test[k] / 4;
        }
        let a = assess(&cfg, &d, &c);
        assert!(a.qber[0].0 >= cfg.sigmas && a.qber[1].0 >= cfg.sigmas, "{:?}", a.qber);
        // Too few counts: no judgement.
        let small = Counts { test: [100, 100, 10], test_errors: [25, 25, 5], ..c };
        assert_eq!(assess(&cfg, &d, &small).qber[0].0, 0.0);
    }

    #[test]
    fn owned_gates_follow_the_slot_maps() {
        use qpon_mux::{OnuId, Slot, SlotMap};
        let map = |version: u32, from: u64, slots: &[(u32, u32, u16)]| {
            let slots = slots.iter().map(|&(start, len, o)| Slot { start, len, owner: OnuId(o) }).collect();
            SlotMap::new(100, 10, version, from, slots).unwrap()
        };
        let mut s = SlotMapSchedule::new(map(1, 0, &[(0, 10, 1), (20, 30, 2)]));
        let g = owned_gates(&s, 0, 1000);
        assert_eq!((g[&1], g[&2]), (100, 300));
        // From frame 5 on, ONU 2 owns 60 gates per frame and ONU 1 none.
        s.insert(map(2, 5, &[(20, 60, 2)]), 0).unwrap();
        let g = owned_gates(&s, 200, 1000);
        assert_eq!((g[&1], g[&2]), (30, 90 + 300));
        assert!(!owned_gates(&s, 500, 1000).contains_key(&1));
    }

    fn status(lo: f64, hi: f64, nominal: f64) -> DetectorStatus {
        let ch = DetectorChannelStatus {
            bias_current_ua: nominal,
            bias_current_range_ua: (lo, hi),
            nominal_bias_current_ua: nominal,
            click_rate_hz: 1e5,
        };
        DetectorStatus {
            gate: 1_000_000_000,
            interval_gates: 1_000_000_000,
            detectors: vec![ch.clone(), ch],
            double_click_rate_hz: 10.0,
        }
    }

    #[test]
    fn bias_anomaly_is_attributed_to_the_blinded_onu_and_alarms_latch() {
        let d = DecoyParams::default();
        let mut m = Monitor::default();
        let honest = expected(6e7, 0.0117, 1e-8, false);
        let blinded = expected(6e7, 0.0117, 1e-8, true);
        let t1 = Instant::from_millis(1000);
        // A normal status and honest ONUs: nothing.
        let n = m.evaluate(t1, Some(&status(12.0, 12.0, 12.0)), [(0, honest, &d), (1, honest, &d)]);
        assert_eq!(n, 0);
        // Latched SNSPD (current to 0) while ONU 1 is blinded.
        let t2 = Instant::from_millis(2000);
        let twice = |c: Counts| Counts {
            gates: 2 * c.gates,
            detections: 2 * c.detections,
            double_clicks: 2 * c.double_clicks,
            announced: 2 * c.announced,
            matched: c.matched.map(|x| 2 * x),
            test: c.test.map(|x| 2 * x),
            test_errors: c.test_errors.map(|x| 2 * x),
        };
        let mixed = Counts { ..twice(blinded) };
        m.evaluate(t2, Some(&status(0.0, 12.0, 12.0)), [(0, twice(honest), &d), (1, mixed, &d)]);
        assert_eq!(m.alarms_of(0).count(), 0, "{:?}", m.alarms());
        let kinds: Vec<AlarmKind> = m.alarms_of(1).map(|a| a.kind).collect();
        assert!(kinds.contains(&AlarmKind::BiasCurrentOutOfRange), "{kinds:?}");
        assert!(kinds.contains(&AlarmKind::NoDoubleClicks));
        assert!(kinds.contains(&AlarmKind::DecoyYieldInconsistent));
        assert!(m.alarms().iter().all(|a| a.onu.is_some()));
        // Latched: the same again raises nothing new, and the time stays the first one.
        let t3 = Instant::from_millis(3000);
        assert_eq!(
            m.evaluate(t3, Some(&status(0.0, 12.0, 12.0)), [(0, twice(honest), &d), (1, twice(blinded), &d)]),
            0
        );
        assert!(m.alarms().iter().all(|a| a.at == t2));
        assert!(m.alarms()[0].to_string().starts_with("onu 1: "));
    }

    #[test]
    fn unattributed_bias_anomaly_is_receiver_wide() {
        let d = DecoyParams::default();
        let mut m = Monitor::default();
        let honest = expected(6e7, 0.0117, 1e-8, false);
        m.evaluate(Instant::from_millis(1000), Some(&status(2.0, 2000.0, 2.0)), [(0, honest, &d)]);
        assert_eq!(m.alarms().len(), 1);
        assert_eq!(m.alarms()[0].onu, None);
        assert_eq!(m.alarms()[0].kind, AlarmKind::BiasCurrentOutOfRange);
        assert!(m.alarms()[0].to_string().starts_with("receiver: "));
    }

    #[test]
    fn windows_roll_so_a_late_attack_is_not_diluted() {
        let d = DecoyParams::default();
        let cfg = MonitorConfig { window_s: 10.0, ..MonitorConfig::default() };
        let mut m = Monitor::new(cfg);
        let honest = expected(6e7, 0.0117, 1e-8, false);
        let blinded = expected(6e7, 0.0117, 1e-8, true);
        let add = |a: Counts, b: Counts, times: u64| Counts {
            gates: a.gates + times * b.gates,
            detections: a.detections + times * b.detections,
            double_clicks: a.double_clicks + times * b.double_clicks,
            announced: a.announced + times * b.announced,
            matched: std::array::from_fn(|k| a.matched[k] + times * b.matched[k]),
            test: std::array::from_fn(|k| a.test[k] + times * b.test[k]),
            test_errors: std::array::from_fn(|k| a.test_errors[k] + times * b.test_errors[k]),
        };
        // 1000 honest seconds, evaluated every 10 s.
        let mut acc = Counts::default();
        for s in 0..100u64 {
            acc = add(acc, honest, 10);
            m.evaluate(Instant::from_millis(10_000 * (s + 1)), None, [(0, acc, &d)]);
        }
        assert!(m.alarms().is_empty());
        // Then blinding: caught within two windows although the honest past is 100× longer.
        for s in 100..102u64 {
            acc = add(acc, blinded, 10);
            m.evaluate(Instant::from_millis(10_000 * (s + 1)), None, [(0, acc, &d)]);
        }
        assert!(m.alarms_of(0).any(|a| a.kind == AlarmKind::NoDoubleClicks), "{:?}", m.alarms());
    }
}
