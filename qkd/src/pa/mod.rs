//! Privacy amplification by Toeplitz hashing.
//!
//! # Convention (that of `randextract`)
//!
//! Hashing an `n`-bit input `x` down to `m` bits (`1 ≤ m ≤ n`) uses a public seed `s` of
//! `N = n + m − 1` bits and the `m × n` Toeplitz matrix
//!
//! ```text
//! T[i][j] = s[(i − j) mod N]        (row i = output bit 0..m, column j = input bit 0..n)
//! y_i     = XOR_j T[i][j] · x_j
//! ```
//!
//! so the first column is `s[0], s[1], …, s[m−1]` and the first row is
//! `s[0], s[N−1], s[N−2], …, s[m]`. This is exactly
//! `randextract.ToeplitzHashing(input_length=n, output_length=m).extract(x, s)` (and
//! `cryptomite`'s Toeplitz), with one bit per array element, element 0 first. Worked example
//! (`n = 8`, `m = 4`): `x = 10110010`, `s = 11010001101` → `y = 0010`.
//!
//! # Packing
//!
//! Inputs, seeds and outputs are [`BitBlock`]s: bit `i` is bit `i % 64` of word `i / 64`
//! (least significant first), and as bytes bit `i % 8` of byte `i / 8` (see [`crate::bits`]).
//! Bit `i` above is element `i` of the `randextract` arrays. The test vectors in
//! `qkd/vectors/toeplitz/` use the same LSB-first byte packing, in hex.
//!
//! # Algorithm
//!
//! A Toeplitz matrix–vector product is a slice of a polynomial product over GF(2): with
//! `r[k] = s[(k − (n−1)) mod N]` (the seed rotated: `r = s[m..N) ‖ s[0..m)`),
//! `y_i` is the coefficient of `z^(i+n−1)` in `r(z)·x(z)`, and every term of those
//! coefficients is present (a *middle product*). [`toeplitz_hash`] cuts the matrix into
//! square tiles of `64·k` bits (`k ≥ m/64` when that is cheapest, so one row of about `n/m`
//! tiles) and computes each tile as a middle product by the transposed Karatsuba recursion
//! on `u64` words: `O(n·m^0.585)` word operations instead of `O(n·m)`. The recursion stops
//! at base cases of 4–32 words, multiplied with `vpclmulqdq` (256-bit, where the CPU has it
//! and AVX2) or `pclmulqdq` on x86_64 (detected at run time), else with a portable
//! bit-sliced multiplier; all paths give identical results. The arithmetic is exact and the
//! work done depends only on `n` and `m`, not on the input bits (no data-dependent branches
//! or table look-ups). About 3 ms for `n = 10^6`, `m = n/4` on one AMD Zen 3 core
//! (`qkd/examples/pa_throughput.rs`). See `gf2x` (private) for the details.
//!
//! The pieces are pure: the seed is drawn from an injected [`CryptoRng`] and a [`PaJob`]
//! carries everything one hash needs, so a driver can run it on any thread.

use rand::CryptoRng;

use crate::bits::{BitBlock, words_for};
use crate::error::InvalidInput;

#[allow(unsafe_code)] // pclmulqdq intrinsics behind a run-time CPU check; see its docs.
#[cfg(target_arch = "x86_64")]
mod clmul_x86;
mod gf2x;

/// Seed length `n + m − 1` for hashing `n` bits to `m` bits; `0` when `m = 0` (an empty
/// output needs no seed).
pub const fn seed_len(input_len: usize, out_len: usize) -> usize {
    if out_len == 0 { 0 } else { input_len + out_len - 1 }
}

fn check_lengths(input_len: usize, out_len: usize) -> Result<(), InvalidInput> {
    if out_len > input_len {
        return Err(InvalidInput::new(
            "out_len",
            format!(
                "cannot hash {input_len} bits to {out_len} bits: the output must not be longer than the input"
            ),
        ));
    }
    Ok(())
}

/// The public random seed of one Toeplitz hash, `n + m − 1` bits for `n` input bits and `m`
/// output bits (the lengths are part of the seed, so it cannot be applied to other sizes).
///
/// The seed is not secret: one side draws it and sends it to the other in the clear
/// ([`ToeplitzSeed::as_bits`] / [`ToeplitzSeed::to_bytes`]); the receiver rebuilds it with
/// [`ToeplitzSeed::from_bits`] / [`ToeplitzSeed::from_bytes`], which check the length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToeplitzSeed {
    bits: BitBlock,
    input_len: usize,
    out_len: usize,
}

impl ToeplitzSeed {
    /// A fresh uniformly random seed for hashing `input_len` bits to `out_len` bits.
    ///
    /// # Errors
    /// If `out_len > input_len`.
    pub fn random(input_len: usize, out_len: usize, rng: &mut impl CryptoRng) -> Result<Self, InvalidInput> {
        check_lengths(input_len, out_len)?;
        let bits = BitBlock::random(seed_len(input_len, out_len), rng);
        Ok(Self { bits, input_len, out_len })
    }

    /// A seed from bits received from the peer (or a test vector).
    ///
    /// # Errors
    /// If `out_len > input_len` or `bits` is not [`seed_len`]`(input_len, out_len)` long.
    pub fn from_bits(bits: BitBlock, input_len: usize, out_len: usize) -> Result<Self, InvalidInput> {
        check_lengths(input_len, out_len)?;
        let want = seed_len(input_len, out_len);
        if bits.len() != want {
            return Err(InvalidInput::new(
                "seed",
                format!("a seed for {input_len} → {out_len} bits has {want} bits, got {}", bits.len()),
            ));
        }
        Ok(Self { bits, input_len, out_len })
    }

    /// A seed from LSB-first bytes (as [`ToeplitzSeed::to_bytes`] writes them).
    ///
    /// # Errors
    /// If the lengths are inconsistent, `bytes` is not exactly `ceil(seed_len / 8)` long, or
    /// the padding bits of the last byte are not zero.
    pub fn from_bytes(bytes: &[u8], input_len: usize, out_len: usize) -> Result<Self, InvalidInput> {
        check_lengths(input_len, out_len)?;
        let want = seed_len(input_len, out_len);
        if bytes.len() != want.div_ceil(8) {
            return Err(InvalidInput::new(
                "seed",
                format!(
                    "a seed for {input_len} → {out_len} bits takes {} bytes, got {}",
                    want.div_ceil(8),
                    bytes.len()
                ),
            ));
        }
        if !want.is_multiple_of(8) && bytes[bytes.len() - 1] >> (want % 8) != 0 {
            return Err(InvalidInput::new("seed", "padding bits of the last byte are not zero"));
        }
        Self::from_bits(BitBlock::from_bytes(bytes, want), input_len, out_len)
    }

    /// The seed bits (`seed_len(n, m)` of them).
    pub fn as_bits(&self) -> &BitBlock {
        &self.bits
    }

    /// The seed bits, consuming the seed.
    pub fn into_bits(self) -> BitBlock {
        self.bits
    }

    /// The seed as LSB-first bytes, `ceil(seed_len / 8)` of them, padding bits zero.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits.to_bytes()
    }

    /// Input length `n` the seed is for.
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Output length `m` the seed is for.
    pub fn out_len(&self) -> usize {
        self.out_len
    }
}

/// Toeplitz hash of `input` (`n` bits) to `out_len` (`m`) bits with `seed`, in the
/// `randextract` convention of the [module docs](self). `m = 0` gives an empty block.
///
/// # Errors
/// If `out_len > input.len()`, or `seed` was made for other lengths than
/// `(input.len(), out_len)`.
pub fn toeplitz_hash(
    input: &BitBlock,
    seed: &ToeplitzSeed,
    out_len: usize,
) -> Result<BitBlock, InvalidInput> {
    hash_with(gf2x::Backend::detect(), None, input, seed, out_len)
}

fn hash_with(
    backend: gf2x::Backend,
    plan: Option<gf2x::Plan>,
    input: &BitBlock,
    seed: &ToeplitzSeed,
    out_len: usize,
) -> Result<BitBlock, InvalidInput> {
    let n = input.len();
    check_lengths(n, out_len)?;
    if seed.input_len != n || seed.out_len != out_len {
        return Err(InvalidInput::new(
            "seed",
            format!(
                "seed made for {} → {} bits, used for {n} → {out_len} bits",
                seed.input_len, seed.out_len
            ),
        ));
    }
    debug_assert_eq!(seed.bits.len(), seed_len(n, out_len));
    if out_len == 0 {
        return Ok(BitBlock::zeros(0));
    }
    let words = gf2x::toeplitz_words(backend, plan, input, &seed.bits, out_len);
    debug_assert_eq!(words.len(), words_for(out_len));
    Ok(BitBlock::from_words(words, out_len))
}

/// One privacy-amplification hash as a self-contained job (no I/O, no shared state), for a
/// driver to run on a worker pool: [`PaJob::run`] is [`toeplitz_hash`].
#[derive(Clone, Debug)]
pub struct PaJob {
    /// The reconciled, verified key block (secret; zeroised when dropped).
    pub input: BitBlock,
    /// The public seed, made for `(input.len(), out_len)`.
    pub seed: ToeplitzSeed,
    /// The number of output (final key) bits.
    pub out_len: usize,
}

impl PaJob {
    /// A job hashing `input` to `out_len` bits with `seed`.
    pub fn new(input: BitBlock, seed: ToeplitzSeed, out_len: usize) -> Self {
        Self { input, seed, out_len }
    }

    /// Runs the hash, consuming the job (the input block is zeroised on return).
    ///
    /// # Errors
    /// As [`toeplitz_hash`].
    pub fn run(self) -> Result<BitBlock, InvalidInput> {
        toeplitz_hash(&self.input, &self.seed, self.out_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, one bit at a time: O(n·m).
    fn naive(x: &[bool], s: &[bool], m: usize) -> Vec<bool> {
        let (n, big_n) = (x.len(), s.len());
        (0..m).map(|i| (0..n).fold(false, |acc, j| acc ^ (x[j] & s[(i + big_n - j) % big_n]))).collect()
    }

    fn bits(s: &str) -> BitBlock {
        BitBlock::from_bools(&s.bytes().map(|c| c == b'1').collect::<Vec<_>>())
    }

    fn all_backends() -> Vec<gf2x::Backend> {
        gf2x::Backend::all()
    }

    #[test]
    fn worked_example() {
        let x = bits("10110010");
        let seed = ToeplitzSeed::from_bits(bits("11010001101"), 8, 4).unwrap();
        assert_eq!(toeplitz_hash(&x, &seed, 4).unwrap(), bits("0010"));
        assert_eq!(naive(&x.to_bools(), &seed.as_bits().to_bools(), 4), bits("0010").to_bools());
        for be in all_backends() {
            assert_eq!(hash_with(be, None, &x, &seed, 4).unwrap(), bits("0010"));
        }
    }

    #[test]
    fn length_checks() {
        let mut rng = crate::rng::seeded(1);
        let x = BitBlock::random(100, &mut rng);
        assert_eq!(ToeplitzSeed::random(100, 101, &mut rng).unwrap_err().field, "out_len");
        let seed = ToeplitzSeed::random(100, 30, &mut rng).unwrap();
        assert_eq!(seed.as_bits().len(), 129);
        assert_eq!(toeplitz_hash(&x, &seed, 31).unwrap_err().field, "seed");
        assert_eq!(toeplitz_hash(&x.slice(0, 99), &seed, 30).unwrap_err().field, "seed");
        assert_eq!(toeplitz_hash(&x.slice(0, 20), &seed, 30).unwrap_err().field, "out_len");
        assert_eq!(ToeplitzSeed::from_bits(BitBlock::zeros(128), 100, 30).unwrap_err().field, "seed");
        // same total length, other split: still refused
        let other = ToeplitzSeed::from_bits(seed.as_bits().clone(), 99, 31).unwrap();
        assert!(toeplitz_hash(&x, &other, 30).is_err());
        // bytes round trip and checks
        let b = seed.to_bytes();
        assert_eq!(b.len(), 17);
        assert_eq!(ToeplitzSeed::from_bytes(&b, 100, 30).unwrap(), seed);
        assert!(ToeplitzSeed::from_bytes(&b[..16], 100, 30).is_err());
        let mut bad = b.clone();
        bad[16] |= 0x80;
        assert!(ToeplitzSeed::from_bytes(&bad, 100, 30).is_err());
        // m = 0: empty seed, empty output
        let empty = ToeplitzSeed::random(100, 0, &mut rng).unwrap();
        assert_eq!(empty.as_bits().len(), 0);
        assert_eq!(toeplitz_hash(&x, &empty, 0).unwrap(), BitBlock::zeros(0));
        let e0 = ToeplitzSeed::random(0, 0, &mut rng).unwrap();
        assert_eq!(toeplitz_hash(&BitBlock::zeros(0), &e0, 0).unwrap().len(), 0);
    }

    #[test]
    fn job_runs_the_hash() {
        let mut rng = crate::rng::seeded(2);
        let x = BitBlock::random(5000, &mut rng);
        let seed = ToeplitzSeed::random(5000, 1234, &mut rng).unwrap();
        let want = toeplitz_hash(&x, &seed, 1234).unwrap();
        let job = PaJob::new(x, seed, 1234);
        let got = std::thread::spawn(move || job.run()).join().unwrap().unwrap();
        assert_eq!(got, want);
    }

    /// Every backend and a spread of tilings (forced plans with several rows and columns,
    /// tiny and odd bases) agree, at sizes around word and tile boundaries.
    #[test]
    fn backends_and_plans_agree() {
        let mut rng = crate::rng::seeded(3);
        for &(n, m) in
            &[(64, 64), (65, 1), (640, 63), (1000, 999), (4097, 1500), (20_000, 5000), (70_001, 17_777)]
        {
            let x = BitBlock::random(n, &mut rng);
            let seed = ToeplitzSeed::random(n, m, &mut rng).unwrap();
            let want = hash_with(gf2x::Backend::Portable, None, &x, &seed, m).unwrap();
            let (iw, ow) = (n.div_ceil(64), m.div_ceil(64));
            for be in all_backends() {
                assert_eq!(hash_with(be, None, &x, &seed, m).unwrap(), want, "{be:?} n={n} m={m}");
                for (k, base) in [(1, 1), (4, 2), (6, 3), (16, 8), (40, 5)] {
                    let plan = gf2x::Plan { k, base, rows: ow.div_ceil(k), cols: iw.div_ceil(k) };
                    assert_eq!(hash_with(be, Some(plan), &x, &seed, m).unwrap(), want, "{be:?} {plan:?}");
                }
            }
        }
    }

    /// A large block: every backend agrees, and sampled rows match the definition.
    #[test]
    fn large_block_spot_checks() {
        let (n, m) = (300_007, 120_001);
        let mut rng = crate::rng::seeded(4);
        let x = BitBlock::random(n, &mut rng);
        let seed = ToeplitzSeed::random(n, m, &mut rng).unwrap();
        let y = toeplitz_hash(&x, &seed, m).unwrap();
        for be in all_backends() {
            assert_eq!(hash_with(be, None, &x, &seed, m).unwrap(), y, "{be:?}");
        }
        let (xb, sb) = (x.to_bools(), seed.as_bits().to_bools());
        let big_n = n + m - 1;
        for i in (0..m).step_by(3001).chain([1, m - 2, m - 1]) {
            let want = (0..n).fold(false, |acc, j| acc ^ (xb[j] & sb[(i + big_n - j) % big_n]));
            assert_eq!(y.get(i), want, "row {i}");
        }
    }

    /// The randextract vectors (see `qkd/tests/pa_vectors.rs`) through every backend.
    #[test]
    fn vectors_on_every_backend() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../vectors/toeplitz/toeplitz_vectors.json")).unwrap();
        let vs = doc["vectors"].as_array().unwrap();
        assert!(vs.len() >= 10);
        for v in vs {
            let hexfield = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
            let (n, m) = (v["n"].as_u64().unwrap() as usize, v["m"].as_u64().unwrap() as usize);
            let x = BitBlock::from_bytes(&hexfield("input"), n);
            let seed = ToeplitzSeed::from_bytes(&hexfield("seed"), n, m).unwrap();
            for be in all_backends() {
                let y = hash_with(be, None, &x, &seed, m).unwrap();
                assert_eq!(y.to_bytes(), hexfield("output"), "{} {be:?}", v["name"]);
            }
        }
    }

    /// Sizes 1..=n_max, m random in 1..=n, with the input and seed as bools.
    fn case(n_max: usize) -> impl Strategy<Value = (Vec<bool>, Vec<bool>, usize)> {
        (1..=n_max).prop_flat_map(|n| {
            (1..=n).prop_flat_map(move |m| {
                (
                    proptest::collection::vec(any::<bool>(), n),
                    proptest::collection::vec(any::<bool>(), n + m - 1),
                    Just(m),
                )
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn fast_matches_naive((x, s, m) in case(2000)) {
            let n = x.len();
            let seed = ToeplitzSeed::from_bits(BitBlock::from_bools(&s), n, m).unwrap();
            let want = naive(&x, &s, m);
            for be in all_backends() {
                let got = hash_with(be, None, &BitBlock::from_bools(&x), &seed, m).unwrap();
                prop_assert_eq!(got.to_bools(), want.clone(), "{:?}", be);
            }
        }

        #[test]
        fn small_sizes_match_naive((x, s, m) in case(140)) {
            let n = x.len();
            let seed = ToeplitzSeed::from_bits(BitBlock::from_bools(&s), n, m).unwrap();
            let got = toeplitz_hash(&BitBlock::from_bools(&x), &seed, m).unwrap();
            prop_assert_eq!(got.to_bools(), naive(&x, &s, m));
        }

        #[test]
        fn linear_in_the_input(n in 1usize..3000, frac in 0.0f64..1.0, seed_no in any::<u64>()) {
            let m = ((n as f64 * frac) as usize).max(1);
            let mut rng = crate::rng::seeded(seed_no);
            let a = BitBlock::random(n, &mut rng);
            let b = BitBlock::random(n, &mut rng);
            let seed = ToeplitzSeed::random(n, m, &mut rng).unwrap();
            let mut ab = a.clone();
            ab.xor_assign(&b);
            let mut want = toeplitz_hash(&a, &seed, m).unwrap();
            want.xor_assign(&toeplitz_hash(&b, &seed, m).unwrap());
            prop_assert_eq!(toeplitz_hash(&ab, &seed, m).unwrap(), want);
            prop_assert_eq!(toeplitz_hash(&BitBlock::zeros(n), &seed, m).unwrap(), BitBlock::zeros(m));
        }
    }
}
