//! Carry-less (GF(2)\[z\]) arithmetic on `u64` words: the engine behind [`super::toeplitz_hash`].
//!
//! A bit string `w` stands for the polynomial `Σ w[i]·z^i`, packed as in [`crate::bits`]
//! (bit `i` is bit `i % 64` of word `i / 64`). Everything here works on whole words.
//!
//! The one operation the Toeplitz hash needs is the *middle product*
//!
//! ```text
//! MP(a, b) = bits [64K, 128K) of a(z)·b(z),   a: 2K words, b: K words, result: K words,
//! ```
//!
//! i.e. `c[i] = XOR_{j<64K} a[i + 64K − j]·b[j]`: every term of those output bits is present in
//! the product (none is cut off at either end), so a `64K × 64K` Toeplitz block times a vector
//! is one middle product. It costs as much as one `K × K` product (not a `2K × K` one) with
//! the transposed Karatsuba recursion of Hanrot, Quercia and Zimmermann ("The middle product
//! algorithm I", 2004); over GF(2), with `b = b0 + z^(64H)·b1` and `A0, A1, A2` the words
//! `[0, 2H)`, `[H, 3H)`, `[2H, 4H)` of `a`:
//!
//! ```text
//! P    = MP(A1, b0 ⊕ b1)
//! c_lo = P ⊕ MP(A0 ⊕ A1, b1)
//! c_hi = P ⊕ MP(A1 ⊕ A2, b0)
//! ```
//!
//! (three half-size middle products instead of four). The recursion stops at a base case of
//! `B` words computed directly from 64×64-bit carry-less products: `pclmulqdq` on x86_64
//! when the CPU has it ([`super::clmul_x86`]), else the portable bit-sliced [`classes_mul_acc`].
//!
//! Nothing branches on or indexes by data, only on lengths: with `pclmulqdq` (or a
//! constant-time integer multiplier for the portable path) the running time does not
//! depend on the secret input.

use zeroize::Zeroize;

#[cfg(target_arch = "x86_64")]
use super::clmul_x86;

/// The largest base case (in words) the planner considers; larger ones still work, slowly.
pub(crate) const MAX_BASE: usize = 64;

/// Which 64×64-bit carry-less multiplier the base case of the recursion uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// Bit-sliced integer multiplication ([`classes_mul_acc`]); runs everywhere.
    Portable,
    /// `pclmulqdq`; the token proves the CPU supports it.
    #[cfg(target_arch = "x86_64")]
    Clmul(clmul_x86::ClmulToken),
}

impl Backend {
    /// The fastest backend this CPU supports (detected at run time).
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = clmul_x86::ClmulToken::detect() {
            return Backend::Clmul(t);
        }
        Backend::Portable
    }

    /// Cost model of one base case of `b` words, in arbitrary units (≈ one 64×64 product
    /// with `pclmulqdq`): the products plus the Karatsuba additions and call overhead
    /// charged to it (fitted to measurements).
    fn leaf_cost(self, b: usize) -> f64 {
        let b = b as f64;
        match self {
            Backend::Portable => 26.0 * b * (b + 1.0) + 2.0 * b + 8.0,
            #[cfg(target_arch = "x86_64")]
            Backend::Clmul(t) if t.is_wide() => 0.5 * b * (b + 1.0) + 2.0 * b + 12.0,
            #[cfg(target_arch = "x86_64")]
            Backend::Clmul(_) => b * (b + 1.0) + 2.0 * b + 8.0,
        }
    }

    /// Base-case sizes worth recursing down to for large blocks.
    fn big_bases(self) -> &'static [usize] {
        match self {
            Backend::Portable => &[2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16],
            #[cfg(target_arch = "x86_64")]
            Backend::Clmul(_) => &clmul_x86::FIXED,
        }
    }

    /// Every backend this CPU can run, slowest first (tests compare them).
    #[cfg(test)]
    pub(crate) fn all() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut v = vec![Backend::Portable];
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = clmul_x86::ClmulToken::detect() {
            v.push(Backend::Clmul(t.narrow()));
            if t.is_wide() {
                v.push(Backend::Clmul(t));
            }
        }
        v
    }

    /// `out ^= MP(a, b)` computed directly, in `O(b.len()²)` (meant for at most [`MAX_BASE`]
    /// words, correct for any length).
    fn mp_base(self, a: &[u64], b: &[u64], out: &mut [u64]) {
        match self {
            Backend::Portable => mp_base_portable(a, b, out),
            #[cfg(target_arch = "x86_64")]
            Backend::Clmul(t) => t.mp_base(a, b, out),
        }
    }
}

/// The 128-bit carry-less product of two words by [`classes_mul_acc`] (tests only).
#[cfg(test)]
pub(crate) fn clmul_portable(x: u64, y: u64) -> u128 {
    let mut z = [0u128; 5];
    classes_mul_acc(&mut z, x, y);
    classes_fold(&z)
}

/// Bit positions ≡ `c` (mod 5) of a 128-bit word.
const fn class_mask(c: u32) -> u128 {
    let mut m = 0u128;
    let mut i = c;
    while i < 128 {
        m |= 1 << i;
        i += 5;
    }
    m
}

const CLASS: [u128; 5] = [class_mask(0), class_mask(1), class_mask(2), class_mask(3), class_mask(4)];

/// Carry-less products of words without a carry-less multiply instruction.
///
/// Bit-sliced integer multiplication (the idea of BearSSL's `ghash_ctmul64`, with five bit
/// classes instead of four so that the full 128-bit product comes out of one pass): `x` and
/// `y` are split into the classes of bit positions ≡ 0…4 (mod 5). The integer product of two
/// classes has, at each position of its class, the *count* of bit pairs meeting there — at
/// most 13 (a class has ≤ 13 of the 64 positions) — which fits in the 5-bit gap before the next
/// position of that class, so its low bit is exactly the GF(2) sum and the carries only
/// touch positions of other classes, masked off afterwards. 25 integer multiplications and
/// no table look-ups: constant time wherever the integer multiplier is.
///
/// `z[c] ^=` the unmasked integer products of the classes of `x` and `y` meeting in class `c`.
/// Only the class-`c` bits of `z[c]` are meaningful, and they are exact GF(2) sums, so many
/// products can be accumulated before one [`classes_fold`] gives their XOR.
#[inline(always)]
fn classes_mul_acc(z: &mut [u128; 5], x: u64, y: u64) {
    #[inline(always)]
    fn mul(a: u64, b: u64) -> u128 {
        (a as u128) * (b as u128)
    }
    let xs = [
        x & CLASS[0] as u64,
        x & CLASS[1] as u64,
        x & CLASS[2] as u64,
        x & CLASS[3] as u64,
        x & CLASS[4] as u64,
    ];
    let ys = [
        y & CLASS[0] as u64,
        y & CLASS[1] as u64,
        y & CLASS[2] as u64,
        y & CLASS[3] as u64,
        y & CLASS[4] as u64,
    ];
    for (c, zc) in z.iter_mut().enumerate() {
        // Pairs (i, j) with i + j ≡ c (mod 5).
        for (i, &xi) in xs.iter().enumerate() {
            *zc ^= mul(xi, ys[(c + 5 - i) % 5]);
        }
    }
}

/// The carry-less product from the class accumulators of [`classes_mul_acc`].
#[inline(always)]
fn classes_fold(z: &[u128; 5]) -> u128 {
    z.iter().zip(&CLASS).fold(0, |r, (&zc, &m)| r | (zc & m))
}

/// Reference 128-bit carry-less product, one bit at a time (tests only).
#[cfg(test)]
pub(crate) fn clmul_bitwise(x: u64, y: u64) -> u128 {
    (0..64).filter(|i| (y >> i) & 1 == 1).fold(0u128, |acc, i| acc ^ ((x as u128) << i))
}

/// Base case `out ^= MP(a, b)` with the bit-sliced products of [`classes_mul_acc`].
///
/// Output word `w` is `lo(D[B+w]) ⊕ hi(D[B+w−1])` with the diagonal sums
/// `D[d] = XOR_j a[d−j]·b[j]` (128-bit products); with `b` reversed each diagonal is a
/// dot product of the window `a[d+1−B ..= d]` with the reversed `b`.
fn mp_base_portable(a: &[u64], b: &[u64], out: &mut [u64]) {
    let k = b.len();
    assert!(a.len() == 2 * k && out.len() == k, "mp_base: bad lengths");
    if k == 0 {
        return;
    }
    let diag = |d: usize| -> u128 {
        let mut z = [0u128; 5];
        for (&x, &y) in a[d + 1 - k..=d].iter().zip(b.iter().rev()) {
            classes_mul_acc(&mut z, x, y);
        }
        classes_fold(&z)
    };
    let mut prev = diag(k - 1);
    for (w, o) in out.iter_mut().enumerate() {
        let cur = diag(k + w);
        *o ^= (cur as u64) ^ ((prev >> 64) as u64);
        prev = cur;
    }
}

/// `out ^= MP(a, b)` by the transposed Karatsuba recursion, down to base cases of at most
/// `base` words. `K = b.len()`, `a.len() = 2K`, `out.len() = K`; `scratch` needs
/// [`scratch_len`]`(K)` words (its contents are garbage before and after).
pub(crate) fn mp_acc(be: Backend, base: usize, a: &[u64], b: &[u64], out: &mut [u64], scratch: &mut [u64]) {
    let k = b.len();
    debug_assert!(a.len() == 2 * k && out.len() == k);
    if k <= base || k % 2 == 1 {
        be.mp_base(a, b, out);
        return;
    }
    let h = k / 2;
    let (b0, b1) = b.split_at(h);
    let (lo, hi) = out.split_at_mut(h);
    let (sums, rest) = scratch.split_at_mut(3 * h);
    // Add P to both halves with one product: hi ^= lo; lo ^= P; hi ^= lo.
    xor_into(hi, lo);
    {
        let bs = &mut sums[..h];
        for ((s, &x), &y) in bs.iter_mut().zip(b0).zip(b1) {
            *s = x ^ y;
        }
        mp_acc(be, base, &a[h..3 * h], bs, lo, rest);
    }
    xor_into(hi, lo);
    // sums[i] = a[i] ^ a[i + h] for i < 3h: A0 ⊕ A1 = sums[0..2h), A1 ⊕ A2 = sums[h..3h).
    for ((s, &x), &y) in sums.iter_mut().zip(&a[..3 * h]).zip(&a[h..]) {
        *s = x ^ y;
    }
    mp_acc(be, base, &sums[..2 * h], b1, lo, rest);
    mp_acc(be, base, &sums[h..], b0, hi, rest);
}

/// Scratch words [`mp_acc`] needs for `k`-word operands.
pub(crate) fn scratch_len(k: usize) -> usize {
    if k % 2 == 1 { 0 } else { 3 * (k / 2) + scratch_len(k / 2) }
}

#[inline]
fn xor_into(dst: &mut [u64], src: &[u64]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// How a Toeplitz product is cut into middle products: `rows × cols` tiles of `k = base·2^L`
/// words each, the recursion stopping at `base` words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Tile size in words.
    pub(crate) k: usize,
    /// Base-case size in words.
    pub(crate) base: usize,
    /// Tiles along the output.
    pub(crate) rows: usize,
    /// Tiles along the input.
    pub(crate) cols: usize,
}

impl Plan {
    /// The cheapest plan (by the backend's cost model) for `in_words` input words and
    /// `out_words` output words (both ≥ 1).
    pub(crate) fn choose(be: Backend, in_words: usize, out_words: usize) -> Self {
        let mut best: Option<(f64, Plan)> = None;
        let big = be.big_bases();
        for base in 1..=MAX_BASE {
            // Other bases only make sense for tiles that are small anyway.
            let mut k = base;
            let mut leaves = 1.0;
            loop {
                if k > base && !big.contains(&base) {
                    break;
                }
                let rows = out_words.div_ceil(k);
                let cols = in_words.div_ceil(k);
                let cost = (rows * cols) as f64 * leaves * be.leaf_cost(base);
                let plan = Plan { k, base, rows, cols };
                if best.is_none_or(|(c, _)| cost < c) {
                    best = Some((cost, plan));
                }
                // Past one tile row, doubling k triples the leaves but at most halves the tiles.
                if rows == 1 {
                    break;
                }
                k *= 2;
                leaves *= 3.0;
            }
        }
        best.expect("at least one plan").1
    }
}

/// `y = T·x` for the Toeplitz matrix of the module docs, on words: `x` holds `n` bits
/// (`ceil(n/64)` words, tail clear), `seed` holds `n + m − 1` bits; returns `ceil(m/64)`
/// words with the tail clear. Requires `1 ≤ m ≤ n`.
pub(crate) fn toeplitz_words(
    be: Backend,
    plan: Option<Plan>,
    x: &crate::BitBlock,
    seed: &crate::BitBlock,
    m: usize,
) -> Vec<u64> {
    let n = x.len();
    debug_assert!(1 <= m && m <= n && seed.len() == n + m - 1);
    let (in_words, out_words) = (n.div_ceil(64), m.div_ceil(64));
    let Plan { k, base, rows, cols } = plan.unwrap_or_else(|| Plan::choose(be, in_words, out_words));
    debug_assert!(k * rows >= out_words && k * cols >= in_words);

    // With r[v] = seed[(v − (n−1)) mod N] (N = n+m−1), y_i = XOR_j r[i + n−1 − j]·x_j: bits
    // [n−1, n−1+m) of r·x. Tile (p, q) (output words [pk, pk+k), input words [qk, qk+k)) is
    // MP(window, x_q) with window = bits [(p−q+cols−1)·64k, +128k) of
    // rp = 0^(64·k·cols − (n−1)) ‖ seed[m..N) ‖ seed[0..m) ‖ 0…  (zeros only ever meet
    // padding of x or output rows ≥ m).
    let big_n = n + m - 1;
    let mut rp = crate::BitBlock::zeros(64 * k * cols - (n - 1));
    rp.extend_from(&seed.slice(m, big_n));
    rp.extend_from(&seed.slice(0, m));
    let mut rp = rp.words().to_vec();
    rp.resize((rows + cols) * k, 0);

    let xw = x.words();
    let mut last = vec![0u64; k];
    let mut y = vec![0u64; rows * k];
    let mut scratch = vec![0u64; scratch_len(k)];
    for q in 0..cols {
        let xq: &[u64] = if (q + 1) * k <= xw.len() {
            &xw[q * k..(q + 1) * k]
        } else {
            let part = &xw[q * k..];
            last[..part.len()].copy_from_slice(part);
            &last
        };
        for p in 0..rows {
            let off = (p + cols - 1 - q) * k;
            mp_acc(be, base, &rp[off..off + 2 * k], xq, &mut y[p * k..(p + 1) * k], &mut scratch);
        }
    }
    last.zeroize();
    scratch.zeroize();
    y[out_words..].zeroize();
    y.truncate(out_words);
    if !m.is_multiple_of(64) {
        y[out_words - 1] &= (1u64 << (m % 64)) - 1;
    }
    y
}

/// Schoolbook full product (`a.len() + b.len()` words) with `clmul_portable` (tests only).
#[cfg(test)]
pub(crate) fn mul_schoolbook(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; a.len() + b.len()];
    for (i, &x) in a.iter().enumerate() {
        for (j, &y) in b.iter().enumerate() {
            let p = clmul_portable(x, y);
            out[i + j] ^= p as u64;
            out[i + j + 1] ^= (p >> 64) as u64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backends() -> Vec<Backend> {
        Backend::all()
    }

    /// Random (a, b) of 2K and K words, K in 1..=max_k.
    fn operands(max_k: usize) -> impl Strategy<Value = (Vec<u64>, Vec<u64>)> {
        (1..=max_k).prop_flat_map(|k| {
            (proptest::collection::vec(any::<u64>(), 2 * k), proptest::collection::vec(any::<u64>(), k))
        })
    }

    fn mp_reference(a: &[u64], b: &[u64]) -> Vec<u64> {
        let k = b.len();
        mul_schoolbook(a, b)[k..2 * k].to_vec()
    }

    proptest! {
        #[test]
        fn clmul_portable_matches_bitwise(x in any::<u64>(), y in any::<u64>()) {
            prop_assert_eq!(clmul_portable(x, y), clmul_bitwise(x, y));
        }

        #[test]
        fn clmul_portable_extremes(x in prop_oneof![Just(u64::MAX), Just(1u64 << 63), any::<u64>()],
                                   y in prop_oneof![Just(u64::MAX), Just(1u64 << 63), any::<u64>()]) {
            prop_assert_eq!(clmul_portable(x, y), clmul_bitwise(x, y));
        }

        #[test]
        fn base_cases_match_schoolbook((a, b) in operands(MAX_BASE), init in any::<u64>()) {
            let want = mp_reference(&a, &b);
            for be in backends() {
                let mut out: Vec<u64> = (0..b.len() as u64).map(|i| init.rotate_left(i as u32)).collect();
                let before = out.clone();
                be.mp_base(&a, &b, &mut out);
                for (o, (w, s)) in out.iter().zip(want.iter().zip(&before)) {
                    prop_assert_eq!(*o, w ^ s, "{:?}", be);
                }
            }
        }

        #[test]
        fn karatsuba_matches_schoolbook((a, b) in operands(200), base in 1usize..=8) {
            let want = mp_reference(&a, &b);
            for be in backends() {
                let mut out = vec![0u64; b.len()];
                let mut scratch = vec![0u64; scratch_len(b.len())];
                mp_acc(be, base, &a, &b, &mut out, &mut scratch);
                prop_assert_eq!(&out, &want, "{:?} base {}", be, base);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    proptest! {
        /// The unrolled kernels (128- and 256-bit) against the portable base case.
        #[test]
        fn fixed_kernels_match_portable(
            k in proptest::sample::select(clmul_x86::FIXED.to_vec()),
            seed in any::<u64>(),
        ) {
            use rand::SeedableRng;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let a = crate::BitBlock::random(128 * k, &mut rng);
            let b = crate::BitBlock::random(64 * k, &mut rng);
            let init = crate::BitBlock::random(64 * k, &mut rng);
            let mut want = init.words().to_vec();
            mp_base_portable(a.words(), b.words(), &mut want);
            for be in backends() {
                let mut out = init.words().to_vec();
                be.mp_base(a.words(), b.words(), &mut out);
                prop_assert_eq!(&out, &want, "{:?}", be);
            }
        }

        #[test]
        fn pclmulqdq_matches_portable(x in any::<u64>(), y in any::<u64>()) {
            if let Some(t) = clmul_x86::ClmulToken::detect() {
                prop_assert_eq!(t.clmul(x, y), clmul_portable(x, y));
            }
        }
    }

    #[test]
    fn karatsuba_deep_recursion_matches_schoolbook() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for &(base, levels) in &[
            (1usize, 9u32),
            (3, 6),
            (4, 6),
            (8, 5),
            (12, 3),
            (16, 4),
            (20, 2),
            (24, 2),
            (28, 1),
            (31, 2),
            (32, 2),
        ] {
            let k = base << levels;
            let a = crate::BitBlock::random(128 * k, &mut rng);
            let b = crate::BitBlock::random(64 * k, &mut rng);
            let want = mp_reference(a.words(), b.words());
            for be in backends() {
                let mut out = vec![0u64; k];
                let mut scratch = vec![0u64; scratch_len(k)];
                mp_acc(be, base, a.words(), b.words(), &mut out, &mut scratch);
                assert_eq!(out, want, "{be:?} base {base} levels {levels}");
            }
        }
    }

    #[test]
    fn plans_cover_and_prefer_one_row() {
        for be in backends() {
            for &(i, o) in &[(1usize, 1usize), (157, 40), (15625, 3907), (156250, 39063), (1000, 1), (64, 64)]
            {
                let p = Plan::choose(be, i, o);
                assert!(p.k * p.rows >= o && p.k * p.cols >= i, "{be:?} {i} {o} {p:?}");
                assert!(p.k.is_multiple_of(p.base) && (p.k / p.base).is_power_of_two());
                assert!(p.base <= MAX_BASE);
            }
        }
    }
}

/// Measurements behind the cost model and the kernel sizes; ignored by default. Run with
/// `CARGO_TARGET_DIR=/work/target-pa cargo test --release -p qpon-qkd --lib tune_ -- --ignored --nocapture`
/// (`tune_plans` takes `TUNE_N`, `TUNE_M`, `TUNE_BASES=8,16,…`, `TUNE_BACKEND=0|1|2`). On a shared
/// machine compare minimum times: medians move with the load.
#[cfg(test)]
mod tuning {
    use super::*;

    /// Times plans around the chosen one at one size.
    #[test]
    #[ignore]
    fn tune_plans() {
        let n: usize = std::env::var("TUNE_N").map_or(1_000_000, |s| s.parse().unwrap());
        let m: usize = std::env::var("TUNE_M").map_or(n / 4, |s| s.parse().unwrap());
        let mut rng = crate::rng::seeded(5);
        let x = crate::BitBlock::random(n, &mut rng);
        let seed = crate::BitBlock::random(n + m - 1, &mut rng);
        // TUNE_BACKEND=0 (portable), 1 (128-bit pclmulqdq), 2 (256-bit, where available).
        let all = Backend::all();
        let be = std::env::var("TUNE_BACKEND")
            .map_or(Backend::detect(), |s| all[s.parse::<usize>().unwrap().min(all.len() - 1)]);
        let (iw, ow) = (n.div_ceil(64), m.div_ceil(64));
        let chosen = Plan::choose(be, iw, ow);
        let time = |plan: Plan| {
            let mut ts: Vec<f64> = (0..15)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(toeplitz_words(be, Some(plan), &x, &seed, m));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ts.sort_by(f64::total_cmp);
            let levels = (plan.k / plan.base).trailing_zeros() as i32;
            let leaves = (plan.rows * plan.cols) as f64 * 3f64.powi(levels);
            let clmuls = leaves * (plan.base * (plan.base + 1)) as f64;
            println!(
                "{plan:?}: min {:.2} ms (median {:.2}), {:.1} M clmul, {:.2} ns/clmul, model {:.3e}",
                ts[0],
                ts[7],
                clmuls / 1e6,
                ts[0] * 1e6 / clmuls,
                leaves * be.leaf_cost(plan.base)
            );
        };
        print!("{be:?} chosen ");
        time(chosen);
        // Other bases (TUNE_BASES, comma-separated; empty for none): the smallest tile with one
        // row and the one below it.
        let bases: Vec<usize> = std::env::var("TUNE_BASES").map_or(vec![4, 8, 12, 16, 20, 24, 28, 32], |s| {
            s.split(',').filter_map(|b| b.trim().parse().ok()).filter(|&b| b > 0).collect()
        });
        for base in bases {
            let mut k = base;
            while k < ow {
                k *= 2;
            }
            for kk in [k / 2, k] {
                if kk >= base {
                    time(Plan { k: kk, base, rows: ow.div_ceil(kk), cols: iw.div_ceil(kk) });
                }
            }
        }
    }

    /// Time per base case (data in L1) for every backend and size.
    #[test]
    #[ignore]
    fn tune_leaf() {
        for be in Backend::all() {
            for b in [2usize, 4, 6, 8, 12, 16, 20, 24, 28, 32] {
                let a: Vec<u64> = (0..2 * b as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
                let bb: Vec<u64> = (0..b as u64).map(|i| i.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 7).collect();
                let mut out = vec![0u64; b];
                let reps = 200_000 / (b * b);
                let mut best = f64::MAX;
                for _ in 0..200 {
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        be.mp_base(std::hint::black_box(&a), &bb, &mut out);
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{be:?} base {b}: {:.3} ns/clmul ({:.1} ns/leaf)",
                    best * 1e9 / (reps * b * (b + 1)) as f64,
                    best * 1e9 / reps as f64
                );
            }
        }
    }
}
