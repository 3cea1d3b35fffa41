//! Analytic planning: expected counts per ONU, the asymptotic and finite-key secret key
//! rates from `qkd`'s bound, block fill times, and a per-ONU optimiser of the source
//! parameters.
//!
//! For ONU i, per second: pulses = gate_rate × (owned gates / frame); for each intensity
//! class k the expected key-basis detections n_{Z,k} and errors m_{Z,k} (both ends in Z)
//! and the same in X, with the receiver's dead time and afterpulses folded in
//! ([`crate::model::FrameModel`]). The finite-key rate for a block of B sifted key-basis
//! detections evaluates Lim et al.'s bound on the counts expected while the block fills
//! (T = B / n_Z per second), with λ_EC = f_EC · n_Z · h(QBER_Z) — a planning estimate; real
//! blocks charge the measured leakage. The asymptotic rate is the same bound with zero
//! deviations and no ε terms (`Deviations::Asymptotic`).

use crate::model::{CellTable, FrameModel, SlotEffects, SourceModel, effective};
use crate::scenario::Pon;
use qpon_qkd::finite_key::{BoundInput, DecoyParams, Deviations, binary_entropy, evaluate};
use qpon_qkd::sift::BasisCounts;
use serde::Serialize;

/// Expected counts of one ONU, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Expected {
    /// Pulses the ONU sends per second.
    pub pulses_per_s: f64,
    /// Detections in the ONU's slots per second (all bases, afterpulses included).
    pub detections_per_s: f64,
    /// Double clicks in the ONU's slots per second.
    pub double_clicks_per_s: f64,
    /// Key basis (both ends Z): detections and errors per class, per second.
    pub key: BasisCounts,
    /// Test basis (both ends X).
    pub test: BasisCounts,
}

impl Expected {
    /// Detections per pulse sent.
    pub fn gain(&self) -> f64 {
        if self.pulses_per_s > 0.0 { self.detections_per_s / self.pulses_per_s } else { 0.0 }
    }
}

/// Expected counts per second of an ONU with outcome table `table`, slot effects `fx`,
/// owning `share` of all gates at `gate_rate` gates per second.
pub fn expected(table: &CellTable, fx: &SlotEffects, share: f64, gate_rate: f64) -> Expected {
    let pulses = gate_rate * share;
    let mut out = Expected { pulses_per_s: pulses, ..Default::default() };
    for k in 0..3 {
        for bs in 0..2 {
            for br in 0..2 {
                let w = table.weight[k][bs][br] * pulses;
                let cell = &table.cells[k][bs][br];
                let (q, e) = effective(cell, fx);
                out.detections_per_s += w * q;
                out.double_clicks_per_s += w * cell.both * fx.live;
                if bs == br {
                    let b = if bs == 0 { &mut out.key } else { &mut out.test };
                    b.n[k] += w * q;
                    b.m[k] += w * e;
                }
            }
        }
    }
    out
}

/// Secret key rates of one ONU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct KeyRates {
    /// Asymptotic rate, bits/s.
    pub asymptotic_bits_per_s: f64,
    /// Finite-key rate for the block size, bits/s.
    pub finite_bits_per_s: f64,
    /// Seconds to collect one block of sifted key-basis detections (`None`: never).
    pub block_fill_s: Option<f64>,
    /// Secret bits per block.
    pub bits_per_block: u64,
    /// Phase-error bound φ_Z of one block.
    pub phi: f64,
}

/// Scales both bases' counts.
fn scaled(c: &BasisCounts, s: f64) -> BasisCounts {
    BasisCounts { n: c.n.map(|x| x * s), m: c.m.map(|x| x * s) }
}

/// Key rates from expected counts per second.
pub fn key_rates(src: &SourceModel, e: &Expected, pon_sec: &crate::scenario::SecurityCfg) -> KeyRates {
    let params = DecoyParams { mu: src.mu, p: src.p };
    let n_z = e.key.n_total();
    if n_z.is_nan() || n_z <= 0.0 {
        return KeyRates { phi: 0.5, ..Default::default() };
    }
    let qber = (e.key.m_total() / n_z).min(0.5);
    let input = |s: f64| -> BoundInput {
        let key = scaled(&e.key, s);
        BoundInput {
            params,
            key,
            test: scaled(&e.test, s),
            eps_sec: pon_sec.eps_sec,
            eps_cor: pon_sec.eps_cor,
            lambda_ec: pon_sec.f_ec * key.n_total() * binary_entropy(qber),
        }
    };
    // Asymptotic: the bound is linear in the counts; evaluate on a long stretch so the
    // floor does not matter, then divide.
    let s_asy = 1e12 / n_z;
    let asy = evaluate(&input(s_asy), Deviations::Asymptotic).map(|o| o.ell as f64 / s_asy).unwrap_or(0.0);
    let fill = pon_sec.block / n_z;
    let fin = evaluate(&input(fill), Deviations::Finite).ok();
    let (bits, phi) = fin.map(|o| (o.ell, o.phi)).unwrap_or((0, 0.5));
    KeyRates {
        asymptotic_bits_per_s: asy,
        finite_bits_per_s: bits as f64 / fill,
        block_fill_s: Some(fill),
        bits_per_block: bits,
        phi,
    }
}

/// One ONU's line of the rate report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OnuRate {
    /// ONU index (0-based).
    pub onu: usize,
    /// Fibre length, km.
    pub fiber_km: f64,
    /// Channel loss ONU → receiver input, dB.
    pub loss_db: f64,
    /// Eavesdropper, if any (attack name).
    pub eve: Option<String>,
    /// Fraction of all gates the ONU owns.
    pub slot_share: f64,
    /// Detections per pulse sent (all bases and classes, afterpulses included).
    pub gain: f64,
    /// Sifted key-basis error rate (fraction).
    pub qber: f64,
    /// Sifted test-basis error rate (fraction).
    pub qber_test: f64,
    /// Detections per second in the ONU's slots.
    pub detections_per_s: f64,
    /// Double clicks per second.
    pub double_clicks_per_s: f64,
    /// Sifted key-basis detections per second.
    pub sifted_key_per_s: f64,
    /// Asymptotic secret key rate, bits/s.
    pub asymptotic_bits_per_s: f64,
    /// Finite-key secret key rate, bits/s.
    pub finite_bits_per_s: f64,
    /// Seconds to fill one block (`null`: never).
    pub block_fill_s: Option<f64>,
    /// Secret bits per block.
    pub bits_per_block: u64,
    /// Phase-error bound of a block.
    pub phi: f64,
    /// Source parameters used (after `--optimize`, the optimised ones).
    pub source: SourceModel,
}

/// Totals over all ONUs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Aggregate {
    /// Number of ONUs.
    pub onus: usize,
    /// Sum of asymptotic rates, bits/s.
    pub asymptotic_bits_per_s: f64,
    /// Sum of finite-key rates, bits/s.
    pub finite_bits_per_s: f64,
    /// Smallest per-ONU finite-key rate, bits/s.
    pub min_finite_bits_per_s: f64,
    /// Mean per-ONU finite-key rate, bits/s.
    pub mean_finite_bits_per_s: f64,
    /// ONUs with a positive finite-key rate.
    pub onus_with_key: usize,
    /// All detections per second, guards included.
    pub detections_per_s: f64,
    /// Block size used.
    pub block: f64,
    /// Detector profile.
    pub detector: String,
}

/// The output of `qpon-sim rate`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateReport {
    /// One record per ONU.
    pub onus: Vec<OnuRate>,
    /// Totals.
    pub aggregate: Aggregate,
}

/// Outcome tables of every ONU of the PON.
pub fn tables(pon: &Pon) -> Vec<CellTable> {
    pon.onus.iter().map(|o| o.model.cell_table(pon.receiver_loss_db, &pon.detector)).collect()
}

fn eve_name(e: &Option<crate::model::Eve>) -> Option<String> {
    e.map(|e| {
        match e {
            crate::model::Eve::InterceptResend { .. } => "intercept-resend",
            crate::model::Eve::Pns { .. } => "pns",
            crate::model::Eve::Blinding { .. } => "blinding",
        }
        .to_string()
    })
}

/// The rate report of a PON.
pub fn rate(pon: &Pon) -> RateReport {
    let tabs = tables(pon);
    let frame = FrameModel::compute(&pon.map, &tabs, &pon.detector);
    let mut onus = Vec::with_capacity(pon.onus.len());
    for (i, o) in pon.onus.iter().enumerate() {
        let share = pon.map.owned(i) as f64 / pon.map.frame_gates as f64;
        let e = expected(&tabs[i], &frame.effects[i], share, pon.gate_rate_hz);
        let r = key_rates(&o.model.source, &e, &pon.security);
        let nz = e.key.n_total();
        onus.push(OnuRate {
            onu: i,
            fiber_km: o.length_km,
            loss_db: o.model.channel_loss_db,
            eve: eve_name(&o.model.eve),
            slot_share: share,
            gain: e.gain(),
            qber: if nz > 0.0 { e.key.m_total() / nz } else { 0.0 },
            qber_test: e.test.qber(),
            detections_per_s: e.detections_per_s,
            double_clicks_per_s: e.double_clicks_per_s,
            sifted_key_per_s: nz,
            asymptotic_bits_per_s: r.asymptotic_bits_per_s,
            finite_bits_per_s: r.finite_bits_per_s,
            block_fill_s: r.block_fill_s,
            bits_per_block: r.bits_per_block,
            phi: r.phi,
            source: o.model.source,
        });
    }
    let n = onus.len();
    let fin: Vec<f64> = onus.iter().map(|o| o.finite_bits_per_s).collect();
    let aggregate = Aggregate {
        onus: n,
        asymptotic_bits_per_s: onus.iter().map(|o| o.asymptotic_bits_per_s).sum(),
        finite_bits_per_s: fin.iter().sum(),
        min_finite_bits_per_s: fin.iter().copied().fold(f64::INFINITY, f64::min),
        mean_finite_bits_per_s: fin.iter().sum::<f64>() / n as f64,
        onus_with_key: fin.iter().filter(|&&x| x > 0.0).count(),
        detections_per_s: frame.clicks_per_gate * pon.gate_rate_hz,
        block: pon.security.block,
        detector: pon.detector_profile.name().to_string(),
    };
    RateReport { onus, aggregate }
}

/// Chooses, for every ONU, μ1, μ2, the three probabilities and p_Z that maximise its
/// finite-key rate (μ3 is kept: it is the vacuum-like decoy the hardware can make), and
/// writes them into `pon`. Nelder–Mead on unconstrained coordinates (log μ, softmax
/// weights, logit p_Z) with the receiver's dead-time and afterpulse effects held at their
/// current values; two rounds, recomputing those effects in between. ONUs under attack are
/// left alone (there is nothing to optimise for an honest planner there).
pub fn optimize(pon: &mut Pon) {
    for _round in 0..2 {
        let tabs = tables(pon);
        let frame = FrameModel::compute(&pon.map, &tabs, &pon.detector);
        let mut cache: Vec<(u64, SourceModel)> = Vec::new();
        for i in 0..pon.onus.len() {
            if pon.onus[i].model.eve.is_some() {
                continue;
            }
            let share = pon.map.owned(i) as f64 / pon.map.frame_gates as f64;
            let fx = frame.effects[i];
            let model = pon.onus[i].model;
            // Identical channels give identical answers: reuse them.
            let key = model.channel_loss_db.to_bits()
                ^ fx.live.to_bits().rotate_left(17)
                ^ share.to_bits().rotate_left(33);
            if let Some((_, s)) = cache.iter().find(|(k, _)| *k == key) {
                pon.onus[i].model.source = *s;
                continue;
            }
            let objective = |x: &[f64]| -> f64 {
                let Some(src) = decode(x, &model.source) else { return f64::INFINITY };
                let mut m = model;
                m.source = src;
                let t = m.cell_table(pon.receiver_loss_db, &pon.detector);
                let e = expected(&t, &fx, share, pon.gate_rate_hz);
                -smooth_finite_rate(&src, &e, &pon.security)
            };
            let start = encode(&model.source);
            let best = nelder_mead(&objective, &start, 0.4, 600);
            let actual = |src: &SourceModel| -> f64 {
                let mut m = model;
                m.source = *src;
                let t = m.cell_table(pon.receiver_loss_db, &pon.detector);
                let e = expected(&t, &fx, share, pon.gate_rate_hz);
                key_rates(src, &e, &pon.security).finite_bits_per_s
            };
            if let Some(src) = decode(&best, &model.source)
                && (actual(&src) > actual(&model.source)
                    || (actual(&model.source) == 0.0 && objective(&best) < objective(&start)))
            {
                pon.onus[i].model.source = src;
            }
            cache.push((key, pon.onus[i].model.source));
        }
    }
}

/// The finite-key rate without the floor and the clamp at zero (negative where no key is
/// proven), so the optimiser sees a slope even where the rate is zero.
fn smooth_finite_rate(src: &SourceModel, e: &Expected, sec: &crate::scenario::SecurityCfg) -> f64 {
    let n_z = e.key.n_total();
    if n_z.is_nan() || n_z <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let fill = sec.block / n_z;
    let qber = (e.key.m_total() / n_z).min(0.5);
    let key = scaled(&e.key, fill);
    let input = BoundInput {
        params: DecoyParams { mu: src.mu, p: src.p },
        key,
        test: scaled(&e.test, fill),
        eps_sec: sec.eps_sec,
        eps_cor: sec.eps_cor,
        lambda_ec: sec.f_ec * key.n_total() * binary_entropy(qber),
    };
    let Ok(o) = evaluate(&input, Deviations::Finite) else { return f64::NEG_INFINITY };
    let raw = o.s0 + o.s1 * (1.0 - binary_entropy(o.phi))
        - input.lambda_ec
        - 6.0 * (21.0 / sec.eps_sec).log2()
        - (2.0 / sec.eps_cor).log2();
    raw / fill
}

fn encode(s: &SourceModel) -> Vec<f64> {
    vec![s.mu[0].ln(), s.mu[1].ln(), s.p[0].ln(), s.p[1].ln(), s.p[2].ln(), (s.p_z / (1.0 - s.p_z)).ln()]
}

fn decode(x: &[f64], base: &SourceModel) -> Option<SourceModel> {
    let mu1 = x[0].exp();
    let mu2 = x[1].exp();
    let mu3 = base.mu[2];
    let w = [x[2].exp(), x[3].exp(), x[4].exp()];
    let sum: f64 = w.iter().sum();
    let p = w.map(|v| v / sum);
    let p_z = 1.0 / (1.0 + (-x[5]).exp());
    let s = SourceModel { mu: [mu1, mu2, mu3], p, p_z, misalignment: base.misalignment };
    let ok = mu1 <= 1.5
        && mu2 > mu3
        && mu1 > mu2 + mu3
        && p.iter().all(|&v| v > 1e-4)
        && (0.01..=0.99).contains(&p_z)
        && DecoyParams { mu: s.mu, p: s.p }.validate().is_ok();
    ok.then_some(s)
}

/// Minimises `f` from `x0` with the Nelder–Mead simplex (standard coefficients), initial
/// step `step` in every coordinate, at most `max_evals` evaluations.
pub fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, x0: &[f64], step: f64, max_evals: usize) -> Vec<f64> {
    let n = x0.len();
    let mut pts: Vec<Vec<f64>> = vec![x0.to_vec()];
    for i in 0..n {
        let mut p = x0.to_vec();
        p[i] += step;
        pts.push(p);
    }
    let mut vals: Vec<f64> = pts.iter().map(|p| f(p)).collect();
    let mut evals = n + 1;
    while evals < max_evals {
        let mut idx: Vec<usize> = (0..=n).collect();
        idx.sort_by(|&a, &b| vals[a].total_cmp(&vals[b]));
        pts = idx.iter().map(|&i| pts[i].clone()).collect();
        vals = idx.iter().map(|&i| vals[i]).collect();
        if (vals[n] - vals[0]).abs() <= 1e-9 * vals[0].abs().max(1e-12) && evals > 4 * n {
            break;
        }
        let centroid: Vec<f64> =
            (0..n).map(|j| pts[..n].iter().map(|p| p[j]).sum::<f64>() / n as f64).collect();
        let along =
            |t: f64| -> Vec<f64> { (0..n).map(|j| centroid[j] + t * (pts[n][j] - centroid[j])).collect() };
        let xr = along(-1.0);
        let fr = f(&xr);
        evals += 1;
        if fr < vals[0] {
            let xe = along(-2.0);
            let fe = f(&xe);
            evals += 1;
            if fe < fr {
                pts[n] = xe;
                vals[n] = fe;
            } else {
                pts[n] = xr;
                vals[n] = fr;
            }
        } else if fr < vals[n - 1] {
            pts[n] = xr;
            vals[n] = fr;
        } else {
            let xc = if fr < vals[n] { along(-0.5) } else { along(0.5) };
            let fc = f(&xc);
            evals += 1;
            if fc < vals[n].min(fr) {
                pts[n] = xc;
                vals[n] = fc;
            } else {
                // Shrink towards the best point.
                for i in 1..=n {
                    pts[i] = (0..n).map(|j| pts[0][j] + 0.5 * (pts[i][j] - pts[0][j])).collect();
                    vals[i] = f(&pts[i]);
                }
                evals += n;
            }
        }
    }
    let best = (0..=n).min_by(|&a, &b| vals[a].total_cmp(&vals[b])).unwrap_or(0);
    pts[best].clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{DetectorProfile, EveCfg, Scenario};

    fn pon(n: usize, km: f64, det: DetectorProfile) -> Pon {
        let mut s = Scenario { onus: n, ..Default::default() };
        s.security.block = 1e6;
        s.fiber.length_km = km;
        s.receiver.detector = det;
        s.resolve().unwrap()
    }

    #[test]
    fn rates_fall_with_onus_and_distance() {
        for det in [DetectorProfile::Apd, DetectorProfile::Snspd] {
            let mut last = f64::INFINITY;
            let mut last_agg = f64::INFINITY;
            for n in [8, 16, 32, 64, 128] {
                let r = rate(&pon(n, 10.0, det));
                let per = r.onus[0].finite_bits_per_s;
                // Strictly falling while there is key; zero stays zero.
                assert!(per < last || (per == 0.0 && last == 0.0), "{det:?} N={n}: {per} !< {last}");
                assert!(n > 8 || per > 0.0);
                let agg = r.aggregate.finite_bits_per_s;
                assert!(agg < last_agg || (agg == 0.0 && last_agg == 0.0));
                // Equal ONUs get equal rates (up to the slot edge next to the frame's idle tail).
                assert!(r.onus.iter().all(|o| (o.finite_bits_per_s - per).abs() <= 1e-3 * per), "equal ONUs");
                last = per;
                last_agg = agg;
            }
            let mut last = f64::INFINITY;
            for km in [1.0, 5.0, 10.0, 20.0] {
                let r = rate(&pon(32, km, det));
                let a = r.onus[0].asymptotic_bits_per_s;
                assert!(a > 0.0 && a < last, "{det:?} {km} km");
                last = a;
            }
        }
    }

    #[test]
    fn finite_rate_approaches_asymptotic_with_block() {
        let mut p = pon(32, 10.0, DetectorProfile::Snspd);
        let mut last = 0.0;
        let mut ratio = 0.0;
        for b in [1e4, 1e5, 1e6, 1e7, 1e8, 1e9] {
            p.security.block = b;
            let r = rate(&p);
            let o = &r.onus[0];
            assert!(o.finite_bits_per_s <= o.asymptotic_bits_per_s);
            assert!(o.finite_bits_per_s >= last, "block {b}");
            last = o.finite_bits_per_s;
            ratio = o.finite_bits_per_s / o.asymptotic_bits_per_s;
        }
        assert!(ratio > 0.85, "ratio {ratio}");
    }

    #[test]
    fn intercept_resend_kills_only_that_onu() {
        let mut s = Scenario { onus: 8, ..Default::default() };
        s.receiver.detector = DetectorProfile::Snspd;
        s.eve.push(EveCfg::parse_cli("intercept-resend:onu=3").unwrap());
        let r = rate(&s.resolve().unwrap());
        let o = &r.onus[3];
        assert!((o.qber - 0.25).abs() < 0.01, "QBER {}", o.qber);
        assert_eq!(o.finite_bits_per_s, 0.0);
        assert_eq!(o.asymptotic_bits_per_s, 0.0);
        for (i, o) in r.onus.iter().enumerate() {
            if i != 3 {
                assert!(o.finite_bits_per_s > 0.0 && o.qber < 0.03);
            }
        }
    }

    #[test]
    fn pns_is_caught_by_the_decoys() {
        let mut s = Scenario { onus: 8, ..Default::default() };
        s.receiver.detector = DetectorProfile::Snspd;
        s.eve.push(EveCfg::parse_cli("pns:onu=2").unwrap());
        let r = rate(&s.resolve().unwrap());
        // Same signal gain, low QBER, but the decoy bound sees no single photons.
        assert!(r.onus[2].qber < 0.05);
        assert_eq!(r.onus[2].finite_bits_per_s, 0.0);
        assert!(r.onus[1].finite_bits_per_s > 0.0);
    }

    #[test]
    fn optimiser_does_not_lose_key() {
        let mut p = pon(32, 20.0, DetectorProfile::Apd);
        let before = rate(&p).onus[0].finite_bits_per_s;
        optimize(&mut p);
        let after = rate(&p).onus[0].finite_bits_per_s;
        assert!(after >= before * 0.999, "{after} < {before}");
        assert!(after > before * 1.01, "the defaults are not optimal at 20 km: {after} vs {before}");
    }
}
