//! Per-pass public permutations, expanded deterministically from the shared seed.
//!
//! Pass `p` draws from ChaCha8 keyed with the 32-byte seed, stream `p`
//! (`ChaCha8Rng::from_seed(seed)` then `set_stream(p)`). A bounded draw `below(m)` is
//! `(next_u32 · m) >> 32`. Then:
//!
//! * [`PermutationKind::WordSkew`], with `W = ⌈n/64⌉` words: `ρ[v]` for each word `v` is
//!   one byte of successive `next_u64` outputs (little-endian, 8 per output) masked to 6
//!   bits; then the 64 offsets `δ[0..64]`, each `below(W)`, redrawn while equal to an
//!   earlier one (when `W ≥ 64`); then `σ`, a Fisher–Yates shuffle of `0..W`
//!   (`for i in (1..W).rev() { swap(i, below(i+1)) }`). Permuted position `64·J + b`
//!   holds original bit `c` of word `v`, where `v = (σ[J] + δ[b]) mod W` and
//!   `c = (b − ρ[v]) mod 64`. Positions that land at or beyond `n` are padding (zero on
//!   both sides).
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
    WordSkew { w: u32, rho: Vec<u8>, delta: [u32; 64], sigma: Vec<u32>, sigma_inv: Vec<u32> },
    /// See [`PermutationKind::FisherYates`]; `inv` is empty when not needed.
    FisherYates { perm: Vec<u32>, inv: Vec<u32> },
}

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
    pub(crate) fn generate(kind: PermutationKind, seed: &[u8; 32], pass: u32, n: usize, with_inverse: bool) -> Self {
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
                let mut delta = [0u32; 64];
                for i in 0..64 {
                    let mut d = below(&mut rng, w);
                    while w >= 64 && delta[..i].contains(&d) {
                        d = below(&mut rng, w);
                    }
                    delta[i] = d;
                }
                let sigma = fisher_yates(&mut rng, w);
                let sigma_inv = if with_inverse { invert(&sigma) } else { Vec::new() };
                PassPermutation::WordSkew { w, rho, delta, sigma, sigma_inv }
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
            PassPermutation::WordSkew { w, rho, delta, sigma, .. } => {
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
            PassPermutation::WordSkew { w, rho, delta, sigma_inv, .. } => {
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
            PassPermutation::WordSkew { w, rho, delta, sigma, .. } => {
                let w = *w as usize;
                let src = key.words();
                debug_assert_eq!(src.len(), w);
                let rotated: Vec<u64> = src.iter().zip(rho).map(|(&x, &r)| x.rotate_left(u32::from(r))).collect();
                let mut skewed = vec![0u64; w];
                for (b, &d) in delta.iter().enumerate() {
                    let m = 1u64 << b;
                    let d = d as usize;
                    let (lo, hi) = rotated.split_at(d);
                    let (head, tail) = skewed.split_at_mut(w - d);
                    for (o, &x) in head.iter_mut().zip(hi) {
                        *o |= x & m;
                    }
                    for (o, &x) in tail.iter_mut().zip(lo) {
                        *o |= x & m;
                    }
                }
                let out: Vec<u64> = sigma.iter().map(|&u| skewed[u as usize]).collect();
                zeroize::Zeroize::zeroize(&mut skewed);
                let mut rotated = rotated;
                zeroize::Zeroize::zeroize(&mut rotated);
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

    const PINNED_SKEW: [u32; 8] = [0; 8];
    const PINNED_FY: [u32; 8] = [0; 8];
}
