//! Per-pass public permutations, expanded deterministically from the shared seed.
//!
//! Pass `p` draws from ChaCha8 keyed with the 32-byte seed, stream `p`
//! (`ChaCha8Rng::from_seed(seed)` then `set_stream(p)`). A bounded draw `below(m)` is
//! `(next_u32 · m) >> 32`. Then:
//!
//! * [`PermutationKind::WordSkew`], with `W = ⌈n/64⌉` words:
//!   1. `ρ[v]` for each word `v`: one byte of successive `next_u64` outputs
//!      (little-endian, 8 per output) masked to 6 bits;
//!   2. 12 shift stages `(Δ_i, M_i)`, each drawn as `Δ_i = below(W)` then `M_i`: the bit
//!      planes `b` with bit `i` of `b` set for `i < 6`, `next_u64()` (not drawn for
//!      `i < 6`) for `i ≥ 6`. Plane `b`'s offset is `δ[b] = Σ_{i : b ∈ M_i} Δ_i mod W`
//!      (two planes sharing an offset is as likely as two bits sharing a word under a full
//!      shuffle, and harmless);
//!   3. `σ`, a Fisher–Yates shuffle of `0..W` (`for i in (1..W).rev() { swap(i,
//!      below(i+1)) }`).
//!
//!   Permuted position `64·J + b` holds original bit `c` of word `v`, where
//!   `v = (σ[J] + δ[b]) mod W` and `c = (b − ρ[v]) mod 64`. Positions that land at or
//!   beyond `n` are padding (zero on both sides). Every word's bits go to 64 different
//!   words, and the words are then shuffled, so any two bits end up in independent,
//!   uniformly placed words, as with a full shuffle; applying it costs 12 word-wise
//!   passes instead of a per-bit gather.
//! * [`PermutationKind::FisherYates`]: `π`, a Fisher–Yates shuffle of `0..n` as above;
//!   permuted position `j` holds original bit `π[j]`.
//!
//! The permutations are public: they only decide which parities are compared, and every
//! disclosed parity is counted whatever they are.

use super::schedule::PermutationKind;
use crate::bits::BitBlock;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One pass's permutation, with what is needed to map positions both ways.
#[derive(Clone)]
pub(crate) enum PassPermutation {
    /// See [`PermutationKind::WordSkew`].
    WordSkew(Box<Skew>),
    /// See [`PermutationKind::FisherYates`]; `inv` is empty when not needed.
    FisherYates { perm: Vec<u32>, inv: Vec<u32> },
}

/// The tables of one word-skew permutation.
#[derive(Clone)]
pub(crate) struct Skew {
    w: u32,
    rho: Vec<u8>,
    stages: [(u32, u64); STAGES],
    delta: [u32; 64],
    sigma: Vec<u32>,
    sigma_inv: Vec<u32>,
}

/// Shift stages of the word skew.
const STAGES: usize = 12;

/// `PLANE_BIT[i]`: the bit planes `b` (0..64) with bit `i` of `b` set.
const PLANE_BIT: [u64; 6] = [
    0xAAAA_AAAA_AAAA_AAAA,
    0xCCCC_CCCC_CCCC_CCCC,
    0xF0F0_F0F0_F0F0_F0F0,
    0xFF00_FF00_FF00_FF00,
    0xFFFF_0000_FFFF_0000,
    0xFFFF_FFFF_0000_0000,
];

#[inline]
fn below(rng: &mut ChaCha8Rng, m: u32) -> u32 {
    ((u64::from(rng.next_u32()) * u64::from(m)) >> 32) as u32
}

fn fisher_yates(rng: &mut ChaCha8Rng, len: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..len).collect();
    for i in (1..len).rev() {
        let j = below(rng, i + 1);
        v.swap(i as usize, j as usize);
    }
    v
}

fn invert(perm: &[u32]) -> Vec<u32> {
    let mut inv = vec![0u32; perm.len()];
    for (j, &x) in perm.iter().enumerate() {
        inv[x as usize] = j as u32;
    }
    inv
}

impl PassPermutation {
    /// Expands pass `pass`'s permutation of an `n`-bit key (`1 ≤ n ≤ MAX_BITS`). The
    /// inverse map is built only when `with_inverse` (the corrector needs it to propagate
    /// corrections; the responder does not).
    pub(crate) fn generate(
        kind: PermutationKind,
        seed: &[u8; 32],
        pass: u32,
        n: usize,
        with_inverse: bool,
    ) -> Self {
        let mut rng = ChaCha8Rng::from_seed(*seed);
        rng.set_stream(u64::from(pass));
        match kind {
            PermutationKind::WordSkew => {
                let w = n.div_ceil(64) as u32;
                let mut rho = vec![0u8; w as usize];
                for chunk in rho.chunks_mut(8) {
                    let r = rng.next_u64().to_le_bytes();
                    for (x, y) in chunk.iter_mut().zip(r) {
                        *x = y & 63;
                    }
                }
                let mut stages = [(0u32, 0u64); STAGES];
                for (i, st) in stages.iter_mut().enumerate() {
                    let d = below(&mut rng, w);
                    let m = if i < 6 { PLANE_BIT[i] } else { rng.next_u64() };
                    *st = (d, m);
                }
                let mut delta = [0u32; 64];
                for (b, dl) in delta.iter_mut().enumerate() {
                    let sum: u64 =
                        stages.iter().filter(|(_, m)| m >> b & 1 == 1).map(|&(d, _)| u64::from(d)).sum();
                    *dl = (sum % u64::from(w)) as u32;
                }
                let sigma = fisher_yates(&mut rng, w);
                let sigma_inv = if with_inverse { invert(&sigma) } else { Vec::new() };
                PassPermutation::WordSkew(Box::new(Skew { w, rho, stages, delta, sigma, sigma_inv }))
            }
            PermutationKind::FisherYates => {
                let perm = fisher_yates(&mut rng, n as u32);
                let inv = if with_inverse { invert(&perm) } else { Vec::new() };
                PassPermutation::FisherYates { perm, inv }
            }
        }
    }

    /// Original position held by permuted position `j`.
    #[inline]
    pub(crate) fn forward(&self, j: u32) -> u32 {
        match self {
            PassPermutation::WordSkew(sk) => {
                let Skew { w, rho, delta, sigma, .. } = &**sk;
                let (jw, b) = (j >> 6, j & 63);
                let mut v = sigma[jw as usize] + delta[b as usize];
                if v >= *w {
                    v -= w;
                }
                let c = b.wrapping_sub(u32::from(rho[v as usize])) & 63;
                (v << 6) | c
            }
            PassPermutation::FisherYates { perm, .. } => perm[j as usize],
        }
    }

    /// Permuted position of original position `x` (needs the inverse map).
    #[inline]
    pub(crate) fn inverse(&self, x: u32) -> u32 {
        match self {
            PassPermutation::WordSkew(sk) => {
                let Skew { w, rho, delta, sigma_inv, .. } = &**sk;
                let (v, c) = (x >> 6, x & 63);
                let b = (c + u32::from(rho[v as usize])) & 63;
                let d = delta[b as usize];
                let u = if v >= d { v - d } else { v + w - d };
                (sigma_inv[u as usize] << 6) | b
            }
            PassPermutation::FisherYates { inv, .. } => inv[x as usize],
        }
    }

    /// The key in this pass's order (`permuted_len` bits).
    pub(crate) fn gather(&self, key: &BitBlock) -> BitBlock {
        match self {
            PassPermutation::WordSkew(sk) => {
                let Skew { w, rho, stages, sigma, .. } = &**sk;
                let w = *w as usize;
                let src = key.words();
                debug_assert_eq!(src.len(), w);
                let mut a: Vec<u64> =
                    src.iter().zip(rho).map(|(&x, &r)| x.rotate_left(u32::from(r))).collect();
                let mut t = vec![0u64; w];
                // Stage (Δ, M): the planes in M move Δ words down (cyclically).
                for &(d, m) in stages {
                    let d = d as usize;
                    let (lo, hi) = a.split_at(d);
                    let (t_head, t_tail) = t.split_at_mut(w - d);
                    for ((o, &x), &y) in t_head.iter_mut().zip(&a[..w - d]).zip(hi) {
                        *o = (x & !m) | (y & m);
                    }
                    for ((o, &x), &y) in t_tail.iter_mut().zip(&a[w - d..]).zip(lo) {
                        *o = (x & !m) | (y & m);
                    }
                    std::mem::swap(&mut a, &mut t);
                }
                let out: Vec<u64> = sigma.iter().map(|&u| a[u as usize]).collect();
                zeroize::Zeroize::zeroize(&mut a);
                zeroize::Zeroize::zeroize(&mut t);
                BitBlock::from_words(out, w * 64)
            }
            PassPermutation::FisherYates { perm, .. } => key.gather(perm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: PermutationKind, n: usize, seed: u8) {
        let seed = [seed; 32];
        let p = PassPermutation::generate(kind, &seed, 3, n, true);
        let nn = kind.permuted_len(n);
        // a bijection on 0..N whose inverse matches
        let mut hit = vec![false; nn];
        for j in 0..nn as u32 {
            let x = p.forward(j);
            assert!((x as usize) < nn);
            assert!(!hit[x as usize]);
            hit[x as usize] = true;
            assert_eq!(p.inverse(x), j);
        }
        // gather agrees with forward
        let mut rng = crate::rng::seeded(u64::from(seed[0]));
        let key = BitBlock::random(n, &mut rng);
        let g = p.gather(&key);
        assert_eq!(g.len(), nn);
        for j in 0..nn as u32 {
            let x = p.forward(j) as usize;
            assert_eq!(g.get(j as usize), x < n && key.get(x));
        }
        // deterministic, and different per pass
        let q = PassPermutation::generate(kind, &seed, 3, n, false);
        assert_eq!(q.gather(&key), g);
        let r = PassPermutation::generate(kind, &seed, 4, n, false);
        if n > 200 {
            assert_ne!(r.gather(&key), g);
        }
    }

    #[test]
    fn permutations_are_bijections_and_gather_matches() {
        for kind in [PermutationKind::WordSkew, PermutationKind::FisherYates] {
            for (n, s) in [(1, 1), (5, 2), (64, 3), (100, 4), (4095, 5), (4096, 6), (10_007, 7)] {
                check(kind, n, s);
            }
        }
    }

    /// Pin the expansion so an accidental change (which would break interoperability)
    /// shows up.
    #[test]
    fn expansion_is_pinned() {
        let p = PassPermutation::generate(PermutationKind::WordSkew, &[7; 32], 0, 10_000, false);
        let f: Vec<u32> = (0..8).map(|j| p.forward(j)).collect();
        let q = PassPermutation::generate(PermutationKind::FisherYates, &[7; 32], 1, 10_000, false);
        let g: Vec<u32> = (0..8).map(|j| q.forward(j)).collect();
        assert_eq!((f, g), (PINNED_SKEW.to_vec(), PINNED_FY.to_vec()));
    }

    const PINNED_SKEW: [u32; 8] = [4915, 5540, 6174, 4028, 4420, 6639, 4247, 2094];
    const PINNED_FY: [u32; 8] = [7954, 2419, 4570, 8060, 6788, 5929, 49, 5705];
}
