//! The finite-key bound for decoy-state BB84 with three intensities.
//!
//! Lim, Curty, Walenta, Xu, Zbinden, "Concise security bounds for practical decoy-state
//! quantum key distribution", Phys. Rev. A 89, 022307 (2014), Eqs. (1)–(5), with Hoeffding
//! deviations. The paper takes key from X and tests in Z; qpon takes key from **Z** and
//! tests in **X**, so every `X` of the paper reads `Z` here and vice versa.
//!
//! Rules fixed by the issue and kept here (each has a test):
//! - the Hoeffding deviation of a basis's detection counts uses that basis's total
//!   detections `n_B`, and that of the test basis's error counts its total errors `m_X`;
//! - lower bounds on expected counts are clamped at 0 (expected counts are never negative);
//! - `s0` is clamped at 0 before it enters Eq. (3);
//! - `φ` is capped at 1/2, and `h(φ)` is evaluated on the capped value, so `h` never
//!   decreases as `φ` grows;
//! - a vacuous bound (no single-photon events proven in either basis) gives `ℓ = 0` and
//!   `φ = 1/2`;
//! - every output is finite (never NaN), `ℓ` is a floor and never negative;
//! - Eq. (1) is computed as printed, with its `log2(2/ε_cor)` verification term and the
//!   `6·log2(21/ε_sec)` term.
//!
//! One deviation, in the safe direction: when the measured test-basis single-photon error
//! rate `b = v_X1/s_X1` is exactly 0, the printed γ is of the form 0·∞ (its limit is 0). We
//! evaluate γ at `b = 1/s_X1` instead — the smallest non-zero error rate the sample can
//! show — which is larger, so it can only shorten the key.

use crate::error::InvalidInput;
use crate::sift::{BasisCounts, DecoyCounts};
use serde::{Deserialize, Serialize};

/// The decoy-state source: three intensities and the probabilities of choosing them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoyParams {
    /// Mean photon numbers μ1 > μ2 + μ3, μ2 > μ3 ≥ 0.
    pub mu: [f64; 3],
    /// Probabilities p1, p2, p3 of the three intensities, each in (0, 1], summing to 1.
    pub p: [f64; 3],
}

impl Default for DecoyParams {
    /// DESIGN.md §5: μ = 0.5 / 0.2 / 2e-4 with probabilities 0.30 / 0.45 / 0.25.
    fn default() -> Self {
        Self { mu: [0.5, 0.2, 2e-4], p: [0.30, 0.45, 0.25] }
    }
}

impl DecoyParams {
    /// Checks the conditions the bound needs (Lim et al. 2014, below Eq. (2)).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let [m1, m2, m3] = self.mu;
        if !self.mu.iter().all(|x| x.is_finite()) {
            return Err(InvalidInput::new("mu", "intensities must be finite numbers"));
        }
        if m3 < 0.0 {
            return Err(InvalidInput::new("mu", format!("μ3 = {m3} must be ≥ 0")));
        }
        if m2 <= m3 {
            return Err(InvalidInput::new("mu", format!("μ2 = {m2} must be > μ3 = {m3}")));
        }
        if m1 <= m2 + m3 {
            return Err(InvalidInput::new("mu", format!("μ1 = {m1} must be > μ2 + μ3 = {}", m2 + m3)));
        }
        if !self.p.iter().all(|&x| x.is_finite() && x > 0.0 && x <= 1.0) {
            return Err(InvalidInput::new("p", "each probability must be in (0, 1]"));
        }
        let sum: f64 = self.p.iter().sum();
        if (sum - 1.0).abs() > 1e-9 {
            return Err(InvalidInput::new(
                "p",
                format!("probabilities sum to {sum}, not 1 (tolerance 1e-9)"),
            ));
        }
        Ok(())
    }

    /// τ_n = Σ_k p_k e^{−μ_k} μ_k^n / n!: the probability that a pulse carries n photons
    /// (Lim et al. 2014, below Eq. (2)).
    pub fn tau(&self, n: u32) -> f64 {
        let fact: f64 = (1..=n).map(f64::from).product();
        self.mu.iter().zip(&self.p).map(|(&mu, &p)| p * (-mu).exp() * mu.powi(n as i32) / fact).sum()
    }
}

/// Everything the bound needs. Counts may be integers or expected (real) counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoundInput {
    /// The source.
    #[serde(flatten)]
    pub params: DecoyParams,
    /// Key basis (Z) counts; its errors are not used by the bound.
    pub key: BasisCounts,
    /// Test basis (X) counts.
    pub test: BasisCounts,
    /// Secrecy parameter ε_sec.
    pub eps_sec: f64,
    /// Correctness parameter ε_cor.
    pub eps_cor: f64,
    /// Information leaked during error correction, λ_EC in bits, measured (plus any
    /// verification bits beyond Eq. (1)'s own log2(2/ε_cor) term).
    pub lambda_ec: f64,
}

/// Whether to apply the finite-size deviations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Deviations {
    /// The finite-key bound as printed.
    #[default]
    Finite,
    /// Zero deviations (δ = 0, γ = 0, and no ε terms in Eq. (1)): the asymptotic limit,
    /// for planning only.
    Asymptotic,
}

/// The bound's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoundOutput {
    /// s_{Z,0}: lower bound on vacuum events in the key basis (Eq. (2)).
    pub s0: f64,
    /// s_{Z,1}: lower bound on single-photon events in the key basis (Eq. (3)).
    pub s1: f64,
    /// s_{X,1}: lower bound on single-photon events in the test basis (Eq. (3)).
    pub test_s1: f64,
    /// v_{X,1}: upper bound on single-photon errors in the test basis (Eq. (4)).
    pub v1: f64,
    /// φ_Z: upper bound on the key basis's single-photon phase error rate (Eq. (5)),
    /// capped at 1/2.
    pub phi: f64,
    /// ℓ: secret key length in bits (Eq. (1)), floor, never negative.
    pub ell: u64,
}

impl BoundInput {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        self.params.validate()?;
        for (name, c) in [("key", &self.key), ("test", &self.test)] {
            for (k, (&n, &m)) in c.n.iter().zip(&c.m).enumerate() {
                if !(n.is_finite() && n >= 0.0) {
                    return Err(InvalidInput::new(
                        format!("{name}.n"),
                        format!("n[{k}] = {n} must be a number ≥ 0"),
                    ));
                }
                if !(m.is_finite() && m >= 0.0) {
                    return Err(InvalidInput::new(
                        format!("{name}.m"),
                        format!("m[{k}] = {m} must be a number ≥ 0"),
                    ));
                }
                if m > n {
                    return Err(InvalidInput::new(
                        format!("{name}.m"),
                        format!("m[{k}] = {m} errors exceed n[{k}] = {n} detections"),
                    ));
                }
            }
        }
        for (name, e) in [("eps_sec", self.eps_sec), ("eps_cor", self.eps_cor)] {
            if !(e.is_finite() && e > 0.0 && e < 1.0) {
                return Err(InvalidInput::new(name, format!("{e} must be in (0, 1)")));
            }
        }
        if !(self.lambda_ec.is_finite() && self.lambda_ec >= 0.0) {
            return Err(InvalidInput::new("lambda_ec", format!("{} must be a number ≥ 0", self.lambda_ec)));
        }
        Ok(())
    }

    /// Builds an input from sifted counts.
    pub fn from_counts(
        params: DecoyParams,
        counts: &DecoyCounts,
        eps_sec: f64,
        eps_cor: f64,
        lambda_ec: f64,
    ) -> Self {
        Self { params, key: counts.key, test: counts.test, eps_sec, eps_cor, lambda_ec }
    }
}

/// Binary entropy h(x) = −x log2 x − (1−x) log2(1−x), with h(0) = h(1) = 0.
pub fn binary_entropy(x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    -x * x.log2() - (1.0 - x) * (1.0 - x).log2()
}

/// δ(x) = √((x/2)·ln(21/ε_sec)): the Hoeffding deviation of a total of x counts
/// (Lim et al. 2014, below Eq. (2)).
fn hoeffding(x: f64, eps_sec: f64) -> f64 {
    (x / 2.0 * (21.0 / eps_sec).ln()).sqrt()
}

/// Per-intensity bounds on the expected counts, n^±_k = (e^{μ_k}/p_k)·[n_k ± δ(total)]
/// (Lim et al. 2014, below Eq. (2)); lower bounds clamped at 0.
fn deviated(params: &DecoyParams, counts: &[f64; 3], delta: f64) -> ([f64; 3], [f64; 3]) {
    let mut lo = [0.0; 3];
    let mut hi = [0.0; 3];
    for k in 0..3 {
        let scale = params.mu[k].exp() / params.p[k];
        lo[k] = (scale * (counts[k] - delta)).max(0.0);
        hi[k] = scale * (counts[k] + delta);
    }
    (lo, hi)
}

/// Eq. (2) and Eq. (3) for one basis: (s_{B,0}, s_{B,1}), s0 clamped at 0 before Eq. (3),
/// s1 clamped at 0.
fn vacuum_and_single(params: &DecoyParams, n: &[f64; 3], delta: f64) -> (f64, f64) {
    let [m1, m2, m3] = params.mu;
    let (lo, hi) = deviated(params, n, delta);
    let tau0 = params.tau(0);
    let tau1 = params.tau(1);
    // Eq. (2): s_{B,0} ≥ τ0 (μ2 n⁻_{μ3} − μ3 n⁺_{μ2}) / (μ2 − μ3).
    let s0 = (tau0 * (m2 * lo[2] - m3 * hi[1]) / (m2 - m3)).max(0.0);
    // Eq. (3): s_{B,1} ≥ τ1 μ1 [n⁻_{μ2} − n⁺_{μ3} − (μ2²−μ3²)/μ1² (n⁺_{μ1} − s_{B,0}/τ0)]
    //                    / [μ1(μ2 − μ3) − μ2² + μ3²].
    let num = lo[1] - hi[2] - (m2 * m2 - m3 * m3) / (m1 * m1) * (hi[0] - s0 / tau0);
    let den = m1 * (m2 - m3) - m2 * m2 + m3 * m3;
    let s1 = (tau1 * m1 * num / den).max(0.0);
    (s0, s1)
}

/// γ(a, b, c, d) = √[ (c+d)(1−b)b / (c·d·ln 2) · log2( (c+d)/(c·d·(1−b)·b) · 21²/a² ) ]
/// (Lim et al. 2014, Eq. (5)); a negative radicand (possible only far outside the regime
/// of interest) is taken as 0.
fn gamma(a: f64, b: f64, c: f64, d: f64) -> f64 {
    let r = (c + d) * (1.0 - b) * b / (c * d * core::f64::consts::LN_2)
        * ((c + d) / (c * d * (1.0 - b) * b) * 441.0 / (a * a)).log2();
    if r.is_finite() && r > 0.0 { r.sqrt() } else { 0.0 }
}

/// Evaluates the bound. Invalid input gives an error naming the field; valid input always
/// gives finite outputs.
pub fn evaluate(input: &BoundInput, dev: Deviations) -> Result<BoundOutput, InvalidInput> {
    input.validate()?;
    let p = &input.params;
    let finite = dev == Deviations::Finite;
    let delta = |x: f64| if finite { hoeffding(x, input.eps_sec) } else { 0.0 };

    // Detection counts deviate with their own basis's total (Lim et al. 2014, Eq. (2)–(3)).
    let (s0, s1) = vacuum_and_single(p, &input.key.n, delta(input.key.n_total()));
    let (_, test_s1) = vacuum_and_single(p, &input.test.n, delta(input.test.n_total()));

    // Eq. (4): v_{X,1} ≤ τ1 (m⁺_{μ2} − m⁻_{μ3}) / (μ2 − μ3), error counts deviating with
    // the test basis's total errors m_X. An upper bound on a count is at least 0.
    let (m_lo, m_hi) = deviated(p, &input.test.m, delta(input.test.m_total()));
    let v1 = (p.tau(1) * (m_hi[1] - m_lo[2]) / (p.mu[1] - p.mu[2])).max(0.0);

    let vacuous = s1 <= 0.0 || test_s1 <= 0.0;
    let phi = if vacuous {
        0.5
    } else {
        let b = (v1 / test_s1).min(0.5);
        // Eq. (5): φ_Z ≤ v_{X,1}/s_{X,1} + γ(ε_sec, v_{X,1}/s_{X,1}, s_{X,1}, s_{Z,1}).
        let g = if finite {
            gamma(input.eps_sec, if b > 0.0 { b } else { 1.0 / test_s1 }, test_s1, s1)
        } else {
            0.0
        };
        (b + g).min(0.5)
    };

    // Eq. (1): ℓ = ⌊s_{Z,0} + s_{Z,1}(1 − h(φ_Z)) − λ_EC − 6 log2(21/ε_sec) − log2(2/ε_cor)⌋.
    let ell = if vacuous {
        0
    } else {
        let eps_terms =
            if finite { 6.0 * (21.0 / input.eps_sec).log2() + (2.0 / input.eps_cor).log2() } else { 0.0 };
        let l = s0 + s1 * (1.0 - binary_entropy(phi)) - input.lambda_ec - eps_terms;
        if l.is_finite() && l > 0.0 { l.floor() as u64 } else { 0 }
    };
    Ok(BoundOutput { s0, s1, test_s1, v1, phi, ell })
}

/// The finite-key bound (shorthand for [`evaluate`] with [`Deviations::Finite`]).
pub fn finite_key(input: &BoundInput) -> Result<BoundOutput, InvalidInput> {
    evaluate(input, Deviations::Finite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Expected counts of a simple lossy channel with transmittance `eta`, dark-count
    /// yield `y0`, misalignment `e_mis`, `pulses` pulses and basis probability `pb` at both
    /// ends; the standard model of Lim et al. 2014's simulation section.
    fn channel(eta: f64, y0: f64, e_mis: f64, pulses: f64, pb: f64) -> BasisCounts {
        let params = DecoyParams::default();
        let mut c = BasisCounts::default();
        for k in 0..3 {
            let mu = params.mu[k];
            let d = 1.0 - (1.0 - y0) * (-eta * mu).exp();
            let e = y0 / 2.0 + e_mis * (1.0 - (-eta * mu).exp());
            c.n[k] = pulses * params.p[k] * pb * pb * d;
            c.m[k] = pulses * params.p[k] * pb * pb * e;
        }
        c
    }

    fn input_for(eta: f64, pulses: f64, lambda: f64) -> BoundInput {
        BoundInput {
            params: DecoyParams::default(),
            key: channel(eta, 2e-8, 0.01, pulses, 0.75),
            test: channel(eta, 2e-8, 0.01, pulses, 0.25),
            eps_sec: 1e-10,
            eps_cor: 1e-15,
            lambda_ec: lambda,
        }
    }

    #[test]
    fn tau_is_a_photon_number_distribution() {
        let p = DecoyParams::default();
        let total: f64 = (0..30).map(|n| p.tau(n)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let expect0: f64 = (0..3).map(|k| p.p[k] * (-p.mu[k]).exp()).sum();
        assert!((p.tau(0) - expect0).abs() < 1e-15);
    }

    #[test]
    fn asymptotic_single_photon_bounds_hold_for_the_true_channel() {
        // In the asymptotic limit, the decoy bounds must not exceed the true single-photon
        // yields of the channel they were computed from, and must be close to them.
        let eta = 1e-2;
        let y0 = 2e-8;
        let pulses = 1e10;
        let inp = input_for(eta, pulses, 0.0);
        let out = evaluate(&inp, Deviations::Asymptotic).unwrap();
        let p = DecoyParams::default();
        let y1 = 1.0 - (1.0 - y0) * (1.0 - eta);
        let true_s1 = pulses * 0.75 * 0.75 * p.tau(1) * y1;
        assert!(out.s1 <= true_s1 * (1.0 + 1e-9), "s1 {} > true {}", out.s1, true_s1);
        assert!(out.s1 >= 0.9 * true_s1, "s1 {} too loose vs {}", out.s1, true_s1);
        let true_s0 = pulses * 0.75 * 0.75 * p.tau(0) * y0;
        assert!(out.s0 <= true_s0 * (1.0 + 1e-6));
        // single-photon error rate about e_mis
        assert!(out.phi >= 0.009 && out.phi < 0.02, "phi {}", out.phi);
    }

    #[test]
    fn finite_bound_is_below_asymptotic_and_approaches_it() {
        let mut last_ratio = 0.0;
        for pulses in [1e8, 1e9, 1e10, 1e11] {
            let inp = input_for(1e-2, pulses, 0.0);
            let fin = finite_key(&inp).unwrap();
            let asy = evaluate(&inp, Deviations::Asymptotic).unwrap();
            assert!(fin.ell as f64 <= asy.ell as f64 + 1.0);
            assert!(fin.s1 <= asy.s1 && fin.phi >= asy.phi);
            let ratio = fin.ell as f64 / asy.ell as f64;
            assert!(ratio > last_ratio, "ratio {ratio} did not grow");
            last_ratio = ratio;
        }
        assert!(last_ratio > 0.9);
    }

    #[test]
    fn equation_one_terms_are_charged_exactly() {
        let inp = input_for(1e-2, 1e10, 0.0);
        let o = finite_key(&inp).unwrap();
        let raw = o.s0 + o.s1 * (1.0 - binary_entropy(o.phi))
            - 6.0 * (21.0f64 / 1e-10).log2()
            - (2.0f64 / 1e-15).log2();
        assert_eq!(o.ell, raw.floor() as u64);
        // leakage reduces ℓ bit for bit
        let o2 = finite_key(&BoundInput { lambda_ec: 1000.0, ..inp }).unwrap();
        assert!((o.ell - o2.ell).abs_diff(1000) <= 1);
    }

    #[test]
    fn intercept_resend_gives_nothing() {
        // 25 % error in every class (full intercept-resend with 50/50 bases): the phase
        // error bound is far above the 11 % BB84 threshold, and with the leakage any
        // reconciliation must pay at 25 % (≥ n·h(0.25)) nothing is left.
        let mut inp = input_for(1e-2, 1e10, 0.0);
        for k in 0..3 {
            inp.test.m[k] = 0.25 * inp.test.n[k];
        }
        inp.lambda_ec = inp.key.n_total() * binary_entropy(0.25);
        let o = finite_key(&inp).unwrap();
        assert!(o.phi > 0.25, "phi {}", o.phi);
        assert_eq!(o.ell, 0);
    }

    #[test]
    fn vacuous_bounds_give_zero_and_half() {
        let inp = BoundInput {
            params: DecoyParams::default(),
            key: BasisCounts::default(),
            test: BasisCounts::default(),
            eps_sec: 1e-10,
            eps_cor: 1e-15,
            lambda_ec: 0.0,
        };
        let o = finite_key(&inp).unwrap();
        assert_eq!((o.ell, o.phi), (0, 0.5));
        assert!(o.s0.is_finite() && o.s1.is_finite() && o.v1.is_finite() && o.test_s1.is_finite());
    }

    #[test]
    fn zero_test_errors_do_not_give_a_free_phase_error() {
        let mut inp = input_for(1e-2, 1e9, 0.0);
        inp.test.m = [0.0; 3];
        let o = finite_key(&inp).unwrap();
        assert!(o.phi > 0.0, "γ must be charged even with no observed errors");
    }

    #[test]
    fn invalid_inputs_name_the_field() {
        let good = input_for(1e-2, 1e9, 0.0);
        let cases: Vec<(&str, BoundInput)> = vec![
            ("mu", BoundInput { params: DecoyParams { mu: [0.3, 0.2, 0.2], ..good.params }, ..good }),
            ("mu", BoundInput { params: DecoyParams { mu: [0.5, 0.2, 0.25], ..good.params }, ..good }),
            ("mu", BoundInput { params: DecoyParams { mu: [0.5, 0.2, -0.01], ..good.params }, ..good }),
            ("mu", BoundInput { params: DecoyParams { mu: [0.5, 0.2, 0.2], ..good.params }, ..good }),
            ("p", BoundInput { params: DecoyParams { p: [0.3, 0.3, 0.3], ..good.params }, ..good }),
            ("p", BoundInput { params: DecoyParams { p: [1.0, 0.0, 0.0], ..good.params }, ..good }),
            ("key.n", BoundInput { key: BasisCounts { n: [-1.0, 1.0, 1.0], m: [0.0; 3] }, ..good }),
            ("test.m", BoundInput { test: BasisCounts { n: [1.0, 1.0, 1.0], m: [2.0, 0.0, 0.0] }, ..good }),
            ("test.n", BoundInput { test: BasisCounts { n: [f64::NAN, 1.0, 1.0], m: [0.0; 3] }, ..good }),
            ("eps_sec", BoundInput { eps_sec: 0.0, ..good }),
            ("eps_cor", BoundInput { eps_cor: 1.5, ..good }),
            ("lambda_ec", BoundInput { lambda_ec: -3.0, ..good }),
        ];
        for (field, inp) in cases {
            assert_eq!(finite_key(&inp).unwrap_err().field, field);
        }
    }

    proptest! {
        /// Every valid input gives finite outputs and φ in [0, 1/2].
        #[test]
        fn outputs_always_finite(
            n in proptest::array::uniform6(0.0f64..1e9),
            frac in proptest::array::uniform6(0.0f64..1.0),
            lambda in 0.0f64..1e7,
            le in -20.0f64..-1.0,
        ) {
            let key = BasisCounts { n: [n[0], n[1], n[2]], m: [n[0] * frac[0], n[1] * frac[1], n[2] * frac[2]] };
            let test = BasisCounts { n: [n[3], n[4], n[5]], m: [n[3] * frac[3], n[4] * frac[4], n[5] * frac[5]] };
            let inp = BoundInput { params: DecoyParams::default(), key, test, eps_sec: 10f64.powf(le), eps_cor: 1e-15, lambda_ec: lambda };
            for dev in [Deviations::Finite, Deviations::Asymptotic] {
                let o = evaluate(&inp, dev).unwrap();
                prop_assert!(o.s0.is_finite() && o.s1.is_finite() && o.test_s1.is_finite() && o.v1.is_finite());
                prop_assert!(o.phi.is_finite() && (0.0..=0.5).contains(&o.phi));
                prop_assert!(o.s0 >= 0.0 && o.s1 >= 0.0 && o.v1 >= 0.0);
            }
        }

        /// More test-basis errors never give more key.
        #[test]
        fn monotone_in_errors(extra in 0.0f64..1e5, lambda in 0.0f64..1e4) {
            let a = input_for(1e-2, 1e9, lambda);
            let mut b = a;
            b.test.m[1] = (b.test.m[1] + extra).min(b.test.n[1]);
            prop_assert!(finite_key(&b).unwrap().ell <= finite_key(&a).unwrap().ell);
        }
    }
}
