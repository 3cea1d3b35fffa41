//! Exp(1) variates for the candidate process: Marsaglia & Tsang's ziggurat (2000) with
//! 256 layers, the method `rand_distr::Exp1` uses, written here so that the common case
//! (98.9 % of draws) is one 64-bit word, one multiply and one compare with the generator
//! kept in registers: about 18 instructions a variate (4 of them the generator's, wyrand), where
//! `rand_distr`'s took about 36 (its generic float conversion, and the generator's state
//! spilled around the calls), a tenth of the sampler's time.
//!
//! The method is exact: a draw picks a layer i uniformly (low 8 bits) and a point x
//! uniformly across the layer's width X[i] (top 53 bits). Inside the part of the layer
//! that lies under the density, x is returned as is; the base layer's overhang is the tail
//! beyond R, drawn as R + Exp(1) (the exponential is memoryless); another layer's overhang
//! is accepted when a uniform point under the layer falls under e^{−x}.

use super::FastRng;

/// Layers.
const N: usize = 256;
/// Start of the tail: the rightmost layer edge X[1] (Marsaglia & Tsang's r for 256 layers).
const R: f64 = 7.697_117_470_131_05;
/// Area of every layer, including the base layer's tail (Marsaglia & Tsang's v).
const V: f64 = 0.003_949_659_822_581_557;
/// 2⁻⁵³.
const SCALE_53: f64 = 1.0 / 9007199254740992.0;

/// The layer tables.
#[derive(Debug)]
pub(super) struct Ziggurat {
    /// X[i]·2⁻⁵³: a 53-bit integer times this is uniform across layer i's width.
    xs: [f64; N],
    /// X[i + 1]: below it, layer i lies under the density.
    inner: [f64; N],
    /// e^{−X[i]}, i = 0..=N (e^{−X[0]} is unused).
    f: [f64; N + 1],
}

impl Ziggurat {
    pub(super) fn new() -> Ziggurat {
        // X[0] = V / f(R) is the width of a rectangle of area V at height f(R): the base
        // layer (rectangle [0, R]·f(R) plus the tail, area V) drawn as one strip;
        // X[i + 1] = f⁻¹(f(X[i]) + V / X[i]) stacks layers of area V; X[N] = 0.
        let mut x = [0.0f64; N + 1];
        x[0] = V / (-R).exp();
        x[1] = R;
        for i in 1..N - 1 {
            x[i + 1] = -(V / x[i] + (-x[i]).exp()).ln();
        }
        x[N] = 0.0;
        Ziggurat {
            xs: std::array::from_fn(|i| x[i] * SCALE_53),
            inner: std::array::from_fn(|i| x[i + 1]),
            f: std::array::from_fn(|i| (-x[i]).exp()),
        }
    }

    /// One Exp(1) variate.
    #[inline(always)]
    fn sample(&self, rng: &mut FastRng) -> f64 {
        let u = rng.next_u64();
        let i = (u & 0xff) as usize;
        // Bits 11–63 (disjoint from the layer's bits 0–7), below 2⁵³, so the conversion
        // is exact.
        let x = (u >> 11) as f64 * self.xs[i];
        if x < self.inner[i] { x } else { self.overhang(i, x, rng) }
    }

    /// The rare case: x lies in layer i's overhang.
    #[cold]
    #[inline(never)]
    fn overhang(&self, i: usize, x: f64, rng: &mut FastRng) -> f64 {
        if i == 0 {
            // The tail beyond R: R + Exp(1). 1 − U with U on the 2⁻⁵³ grid lies in (0, 1].
            let u = 1.0 - (rng.next_u64() >> 11) as f64 * SCALE_53;
            return R - u.ln();
        }
        let u = (rng.next_u64() >> 11) as f64 * SCALE_53;
        if self.f[i + 1] + (self.f[i] - self.f[i + 1]) * u < (-x).exp() { x } else { self.sample(rng) }
    }

    /// One variate of [`Self::fill`] from its local generator `r` (the common case never
    /// touches `rng`; the overhang is drawn from `rng`, synchronised with `r` around it).
    #[inline(always)]
    fn step(&self, r: &mut FastRng, rng: &mut FastRng) -> f64 {
        let u = r.next_u64();
        let i = (u & 0xff) as usize;
        let x = (u >> 11) as f64 * self.xs[i];
        if x < self.inner[i] {
            x
        } else {
            *rng = r.clone();
            let x = self.overhang(i, x, rng);
            *r = rng.clone();
            x
        }
    }

    /// Fills `buf` with Exp(1) variates (the same as calling [`Self::sample`] for each).
    #[inline(never)]
    pub(super) fn fill(&self, rng: &mut FastRng, buf: &mut [f64]) {
        // A local copy of the generator stays in registers, as long as its address never
        // escapes: the rare overhang gets `rng`, synchronised around the call.
        let mut r = rng.clone();
        // Two variates a step (the loop's counter and branch shared by both).
        let mut pairs = buf.chunks_exact_mut(2);
        for w in &mut pairs {
            w[0] = self.step(&mut r, rng);
            w[1] = self.step(&mut r, rng);
        }
        for out in pairs.into_remainder() {
            *out = self.step(&mut r, rng);
        }
        *rng = r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` variates, drawn the way the sampler draws them.
    fn draw(z: &Ziggurat, seed: u64, n: usize) -> Vec<f64> {
        let mut rng = FastRng::seed_from_u64(seed);
        let mut v = vec![0.0; n];
        for chunk in v.chunks_mut(256) {
            z.fill(&mut rng, chunk);
        }
        v
    }

    /// The layers stack up to the top of the density: X[N − 1] (the last computed edge)
    /// must leave a top layer of area V, i.e. X[N−1]·(1 − f(X[N−1])) ≈ V.
    #[test]
    fn layers_close_at_the_top() {
        let z = Ziggurat::new();
        let x_top = z.xs[N - 1] / SCALE_53;
        let area = x_top * (1.0 - (-x_top).exp());
        assert!((area - V).abs() < 1e-9 * V.max(1.0) + 1e-12, "top layer area {area} vs {V}");
        // Widths decrease.
        assert!(z.xs.windows(2).all(|w| w[0] > w[1]));
    }

    /// The variates follow Exp(1): Kolmogorov–Smirnov over 2·10⁶ draws, a χ² over 200
    /// equiprobable bins, and the tail beyond R (which the ziggurat draws separately) and
    /// beyond the layers' inner edges (the overhangs' acceptance test), each against the
    /// exact distribution with a fixed seed and generous thresholds.
    #[test]
    fn variates_follow_the_exponential_distribution() {
        let z = Ziggurat::new();
        let v = draw(&z, 20261128, 2_000_000);
        let n = v.len();
        let mut v = v;
        assert!(v.iter().all(|&x| x.is_finite() && x >= 0.0));
        v.sort_by(f64::total_cmp);

        // KS: sqrt(n)·D < 1.95 at p ≈ 0.001.
        let mut d = 0.0f64;
        for (k, &x) in v.iter().enumerate() {
            let cdf = -(-x).exp_m1();
            d = d.max((cdf - k as f64 / n as f64).abs()).max(((k + 1) as f64 / n as f64 - cdf).abs());
        }
        assert!(d * (n as f64).sqrt() < 1.95, "KS D = {d}");

        // χ² over 200 equiprobable bins: bin of x is floor(200·F(x)).
        let bins = 200usize;
        let mut count = vec![0u64; bins];
        for &x in &v {
            let b = ((-(-x).exp_m1()) * bins as f64) as usize;
            count[b.min(bins - 1)] += 1;
        }
        let e = n as f64 / bins as f64;
        let chi2: f64 = count.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
        // 199 degrees of freedom: mean 199, sd ≈ 20; 199 + 5·20 is p < 10⁻⁵.
        assert!(chi2 < 300.0, "χ² = {chi2}");

        // The tail: P(X > R) = e^{−R} ≈ 4.5·10⁻⁴, ~900 draws; and within it, memoryless.
        let tail: Vec<f64> = v.iter().copied().filter(|&x| x > R).collect();
        let exp_tail = n as f64 * (-R).exp();
        assert!(
            (tail.len() as f64 - exp_tail).abs() < 5.0 * exp_tail.sqrt(),
            "tail {} vs {exp_tail}",
            tail.len()
        );
        let beyond = tail.iter().filter(|&&x| x > R + 1.0).count() as f64;
        let exp_beyond = tail.len() as f64 * (-1.0f64).exp();
        assert!((beyond - exp_beyond).abs() < 5.0 * exp_beyond.sqrt() + 1.0, "{beyond} vs {exp_beyond}");

        // Mean and variance (both 1).
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 5.0 / (n as f64).sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (8.0 / n as f64).sqrt(), "variance {var}");
    }

    /// The overhangs (where the acceptance test runs) hold the right mass: over [0, 2),
    /// where the layers are narrow and their overhangs largest relative to them, the
    /// counts in fine bins match the exact density.
    #[test]
    fn fine_bins_near_zero_match() {
        let z = Ziggurat::new();
        let v = draw(&z, 7, 4_000_000);
        let n = v.len();
        // 400 bins of width 0.005 over [0, 2): where most layers' overhangs lie.
        let w = 0.005;
        let bins = 400usize;
        let mut count = vec![0u64; bins];
        for &x in &v {
            let b = (x / w) as usize;
            if b < bins {
                count[b] += 1;
            }
        }
        let chi2: f64 = (0..bins)
            .map(|b| {
                let p = (-(b as f64 * w)).exp() - (-((b + 1) as f64 * w)).exp();
                let e = n as f64 * p;
                (count[b] as f64 - e).powi(2) / e
            })
            .sum();
        // 400 degrees of freedom: mean 400, sd ≈ 28; 400 + 5·28.
        assert!(chi2 < 540.0, "χ² = {chi2}");
    }
}
