//! The carry-less multiply instructions: the only `unsafe` code of privacy amplification.
//!
//! The base case of the middle-product recursion (see [`super::gf2x`]) with `pclmulqdq`
//! (one 64×64-bit product per instruction, 128-bit registers) or, where the CPU also has
//! `vpclmulqdq` and AVX2, with 256-bit registers (two products per instruction: twice the
//! throughput on AMD Zen 3, where the instruction issues at the same rate).
//!
//! The functions doing the work are `#[target_feature(enable = …)]`, so calling them is
//! `unsafe`: on a CPU without the instructions they would fault (undefined behaviour).
//! Soundness rests on one invariant: a [`ClmulToken`] exists only after
//! `is_x86_feature_detected!` confirmed `pclmulqdq`, and its `wide` flag is set only after it
//! confirmed `vpclmulqdq` and `avx2` too ([`ClmulToken::detect`] is the only constructor; the
//! test-only `ClmulToken::narrow` can only clear the flag). The safe wrappers take a token
//! and call the matching function. Inside, only intrinsics without pointers and
//! bounds-checked slice indexing are used: no raw pointers, no unchecked access.
//!
//! Tested against the portable multiplier in [`super::gf2x`] (random words, base cases of
//! every size through both widths, and whole hashes through every path).

use core::arch::x86_64::{
    __m128i, _mm_clmulepi64_si128, _mm_cvtsi64_si128, _mm_cvtsi128_si64, _mm_set_epi64x, _mm_setzero_si128,
    _mm_srli_si128, _mm_unpackhi_epi64, _mm_unpacklo_epi64, _mm_xor_si128, _mm256_castsi256_si128,
    _mm256_clmulepi64_epi128, _mm256_extracti128_si256, _mm256_set_epi64x, _mm256_setzero_si256,
    _mm256_xor_si256,
};

/// Proof that the running CPU has `pclmulqdq` (and, if `wide`, `vpclmulqdq` and AVX2); only
/// [`ClmulToken::detect`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClmulToken {
    wide: bool,
}

impl ClmulToken {
    /// A token if the CPU supports `pclmulqdq` (run-time check, cached by `std`).
    pub(crate) fn detect() -> Option<Self> {
        if !std::is_x86_feature_detected!("pclmulqdq") {
            return None;
        }
        let wide = std::is_x86_feature_detected!("vpclmulqdq") && std::is_x86_feature_detected!("avx2");
        Some(ClmulToken { wide })
    }

    /// Whether the 256-bit kernels are used.
    pub(crate) fn is_wide(self) -> bool {
        self.wide
    }

    /// The same token restricted to 128-bit `pclmulqdq` (to test that path too).
    #[cfg(test)]
    pub(crate) fn narrow(self) -> Self {
        ClmulToken { wide: false }
    }

    /// The 128-bit carry-less product `x·y`.
    #[cfg(test)]
    pub(crate) fn clmul(self, x: u64, y: u64) -> u128 {
        // SAFETY: the token proves the CPU supports pclmulqdq (see the module docs).
        unsafe { clmul_impl(x, y) }
    }

    /// `out ^= MP(a, b)` (see [`super::gf2x`]) for any `K = b.len()`, `a.len() = 2K`,
    /// `out.len() = K`; fastest for `K` a multiple of 4 up to 32 (unrolled kernels).
    ///
    /// # Panics
    /// On other lengths.
    pub(crate) fn mp_base(self, a: &[u64], b: &[u64], out: &mut [u64]) {
        let k = b.len();
        assert!(a.len() == 2 * k && out.len() == k, "mp_base: bad lengths");
        macro_rules! fixed {
            ($($n:literal)*) => {
                match k {
                    $($n => {
                        if self.wide {
                            // SAFETY: `wide` is set only if pclmulqdq, vpclmulqdq and avx2 were detected.
                            unsafe { mp_fixed_ymm::<$n>(a, b, out) }
                        } else {
                            // SAFETY: the token proves the CPU supports pclmulqdq.
                            unsafe { mp_fixed_xmm::<$n>(a, b, out) }
                        }
                        return;
                    })*
                    _ => {}
                }
            };
        }
        fixed!(4 8 12 16 20 24 28 32);
        // SAFETY: the token proves the CPU supports pclmulqdq.
        unsafe { mp_base_impl(a, b, out) }
    }
}

/// `B` values with unrolled kernels.
pub(crate) const FIXED: [usize; 8] = [4, 8, 12, 16, 20, 24, 28, 32];

#[cfg(test)]
#[target_feature(enable = "pclmulqdq")]
fn clmul_impl(x: u64, y: u64) -> u128 {
    let p = _mm_clmulepi64_si128::<0x00>(_mm_cvtsi64_si128(x as i64), _mm_cvtsi64_si128(y as i64));
    let lo = _mm_cvtsi128_si64(p) as u64;
    let hi = _mm_cvtsi128_si64(_mm_unpackhi_epi64(p, p)) as u64;
    (lo as u128) | ((hi as u128) << 64)
}

/// Same algorithm as `gf2x::mp_base_portable`: diagonal sums `D[d] = XOR_j a[d−j]·b[j]`
/// as dot products of the window `a[d+1−k ..= d]` with `b` reversed, two words (one
/// 128-bit lane pair) at a time; output word `w` is `lo(D[k+w]) ⊕ hi(D[k+w−1])`.
#[target_feature(enable = "pclmulqdq")]
fn mp_base_impl(a: &[u64], b: &[u64], out: &mut [u64]) {
    let k = b.len();
    if k == 0 {
        return;
    }
    let diag = |d: usize| -> __m128i {
        let win = &a[d + 1 - k..=d];
        let (mut acc0, mut acc1) = (_mm_setzero_si128(), _mm_setzero_si128());
        let chunks = win.chunks_exact(2);
        let rem = chunks.remainder();
        // rchunks_exact(2) of b gives [b[k−2], b[k−1]], [b[k−4], b[k−3]], …: reversed b in pairs.
        for (c, r) in chunks.zip(b.rchunks_exact(2)) {
            let ap = _mm_set_epi64x(c[1] as i64, c[0] as i64);
            let bp = _mm_set_epi64x(r[0] as i64, r[1] as i64);
            acc0 = _mm_xor_si128(acc0, _mm_clmulepi64_si128::<0x00>(ap, bp));
            acc1 = _mm_xor_si128(acc1, _mm_clmulepi64_si128::<0x11>(ap, bp));
        }
        if let [x] = rem {
            let p =
                _mm_clmulepi64_si128::<0x00>(_mm_cvtsi64_si128(*x as i64), _mm_cvtsi64_si128(b[0] as i64));
            acc0 = _mm_xor_si128(acc0, p);
        }
        _mm_xor_si128(acc0, acc1)
    };
    let mut prev = diag(k - 1);
    for (w, o) in out.iter_mut().enumerate() {
        let cur = diag(k + w);
        let word = _mm_xor_si128(cur, _mm_srli_si128::<8>(prev));
        *o ^= _mm_cvtsi128_si64(word) as u64;
        prev = cur;
    }
}

/// [`mp_base_impl`] for a fixed even `B ≤ 32`, unrolled, reversed `b` held in registers.
#[target_feature(enable = "pclmulqdq")]
fn mp_fixed_xmm<const B: usize>(a: &[u64], b: &[u64], out: &mut [u64]) {
    let (a, b, out) = (&a[..2 * B], &b[..B], &mut out[..B]);
    let mut bp = [_mm_setzero_si128(); 16];
    for (t, p) in bp[..B / 2].iter_mut().enumerate() {
        *p = _mm_set_epi64x(b[B - 2 - 2 * t] as i64, b[B - 1 - 2 * t] as i64);
    }
    let mut prev = _mm_setzero_si128();
    // w = 0 computes D[B−1] (only its high half is used), w ≥ 1 gives out[w − 1].
    for w in 0..=B {
        let (mut acc0, mut acc1) = (_mm_setzero_si128(), _mm_setzero_si128());
        for (t, &q) in bp[..B / 2].iter().enumerate() {
            let i = w + 2 * t;
            let p = _mm_set_epi64x(a[i + 1] as i64, a[i] as i64);
            acc0 = _mm_xor_si128(acc0, _mm_clmulepi64_si128::<0x00>(p, q));
            acc1 = _mm_xor_si128(acc1, _mm_clmulepi64_si128::<0x11>(p, q));
        }
        let cur = _mm_xor_si128(acc0, acc1);
        if w > 0 {
            let word = _mm_xor_si128(cur, _mm_srli_si128::<8>(prev));
            out[w - 1] ^= _mm_cvtsi128_si64(word) as u64;
        }
        prev = cur;
    }
}

/// [`mp_fixed_xmm`] with 256-bit registers: four words of the window and of reversed `b`
/// per register, two products per instruction (`B` a multiple of 4, at most 32). Output
/// word `w` is `lo(D[w+1]) ⊕ hi(D[w])`, diagonals numbered from `B − 1`.
#[target_feature(enable = "pclmulqdq,vpclmulqdq,avx2")]
fn mp_fixed_ymm<const B: usize>(a: &[u64], b: &[u64], out: &mut [u64]) {
    let (a, b, out) = (&a[..2 * B], &b[..B], &mut out[..B]);
    let mut bq = [_mm256_setzero_si256(); 8];
    for (t, q) in bq[..B / 4].iter_mut().enumerate() {
        // Lanes (low first): b[B−1−4t], b[B−2−4t], b[B−3−4t], b[B−4−4t] = brev[4t .. 4t+4].
        let r = &b[B - 4 - 4 * t..B - 4 * t];
        *q = _mm256_set_epi64x(r[0] as i64, r[1] as i64, r[2] as i64, r[3] as i64);
    }
    // D[B−1+w] (a macro, not a closure: a closure is not always inlined for the larger B).
    macro_rules! diag {
        ($w:expr) => {{
            let w: usize = $w;
            let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for (t, &q) in bq[..B / 4].iter().enumerate() {
                let c = &a[w + 4 * t..w + 4 * t + 4];
                let p = _mm256_set_epi64x(c[3] as i64, c[2] as i64, c[1] as i64, c[0] as i64);
                // Per 128-bit half: 0x00 multiplies the low words, 0x11 the high words.
                acc0 = _mm256_xor_si256(acc0, _mm256_clmulepi64_epi128::<0x00>(p, q));
                acc1 = _mm256_xor_si256(acc1, _mm256_clmulepi64_epi128::<0x11>(p, q));
            }
            let acc = _mm256_xor_si256(acc0, acc1);
            _mm_xor_si128(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc))
        }};
    }
    let mut prev = diag!(0);
    if B <= 20 {
        // Two diagonals per step (shared fold, more independent work): out[w−1] and out[w]
        // from D[w−1] (prev), D[w] and D[w+1] (diagonals numbered from B−1).
        for w in (1..=B).step_by(2) {
            let (c0, c1) = (diag!(w), diag!(w + 1));
            let both = _mm_xor_si128(_mm_unpacklo_epi64(c0, c1), _mm_unpackhi_epi64(prev, c0));
            let o = &mut out[w - 1..w + 1];
            o[0] ^= _mm_cvtsi128_si64(both) as u64;
            o[1] ^= _mm_cvtsi128_si64(_mm_unpackhi_epi64(both, both)) as u64;
            prev = c1;
        }
    } else {
        // Larger kernels run out of registers with two diagonals in flight.
        for (w, o) in out.iter_mut().enumerate() {
            let cur = diag!(w + 1);
            *o ^= _mm_cvtsi128_si64(_mm_xor_si128(cur, _mm_srli_si128::<8>(prev))) as u64;
            prev = cur;
        }
    }
}
