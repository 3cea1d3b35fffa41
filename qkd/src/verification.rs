//! Verification of the reconciled keys with a public-seed universal hash.
//!
//! After reconciliation one side draws a **public** random seed (from an injected
//! [`CryptoRng`]: the OS RNG or a QRNG on hardware, seeded ChaCha in simulation), hashes
//! its key to a `t`-bit tag and sends seed and tag over the authenticated channel
//! ([`VerificationMessage::new`]); the other side recomputes the tag on its own key and
//! compares in constant time ([`VerificationMessage::check`]). A mismatch means
//! reconciliation failed: the block is discarded.
//!
//! # Hash and collision bound
//!
//! The hash is the GF(2^128) polynomial hash of [`crate::mac`] (RFC 8452 POLYVAL over the
//! key's LSB-first byte image zero-padded to 16-byte blocks, then the length block
//! `LE64(0) ‖ LE64(n)`), keyed by the seed `H` and truncated to its first `t` bits. Both
//! keys have the same length `n`, so they fill `k = ⌈n/128⌉` blocks and, if they differ,
//! the difference of their hashes is a non-zero polynomial of degree ≤ `k + 1` in the
//! uniform seed. Each of the 2^(128−t) full-width differences that truncate to zero is hit
//! with probability ≤ (k + 1)/2^128, so
//!
//! `Pr[tags collide | keys differ] ≤ (⌈n/128⌉ + 1)/2^t` ([`collision_bound`]).
//!
//! (This is the bound of our construction — a truncated GF(2^128) polynomial — rather than
//! the ≈ (n/t)/2^t of a polynomial over GF(2^t).) [`tag_bits`] picks the smallest
//! multiple of 8 with that bound ≤ ε_cor, which makes the protocol ε_cor-correct.
//!
//! # Leakage
//!
//! The tag discloses `t` bits about the key. Eq. (1) of Lim, Curty, Walenta, Xu &
//! Zbinden, "Concise security bounds for practical decoy-state quantum key distribution",
//! PRA 89, 022307 (2014) already subtracts `log2(2/ε_cor)` bits for verification; a tag
//! longer than that discloses [`excess_leakage_bits`] more, which the caller adds to
//! `λ_EC` (DESIGN.md §3 item 5).

use core::fmt;

use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::bits::BitBlock;
use crate::error::InvalidInput;
use crate::mac::gf128::Gf128Core;

/// Seed length in bytes (one GF(2^128) element).
pub const SEED_LEN: usize = 16;

/// Shortest tag, in bits.
pub const MIN_TAG_BITS: u32 = 8;

/// Longest tag, in bits (the untruncated hash).
pub const MAX_TAG_BITS: u32 = 128;

/// The public seed of the verification hash (the polynomial's evaluation point).
/// Not secret: drawn by one side from an injected RNG and sent in the clear
/// (authenticated).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationSeed([u8; SEED_LEN]);

impl VerificationSeed {
    /// Draws a seed from `rng`.
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut s = [0u8; SEED_LEN];
        rng.fill_bytes(&mut s);
        Self(s)
    }

    /// A seed from received bytes.
    pub fn from_bytes(bytes: [u8; SEED_LEN]) -> Self {
        Self(bytes)
    }

    /// The seed bytes.
    pub fn as_bytes(&self) -> &[u8; SEED_LEN] {
        &self.0
    }
}

impl fmt::Debug for VerificationSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerificationSeed(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// A verification tag: the first `t = 8·len` bits of the hash, 1 to 16 bytes. Public
/// once sent; equality is constant-time in the contents. Serialised as a byte sequence.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct VerificationTag {
    bytes: [u8; 16],
    len: u8,
}

impl VerificationTag {
    /// A tag from received bytes (1 to 16 of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidInput> {
        if bytes.is_empty() || bytes.len() > 16 {
            return Err(InvalidInput::new("verification.tag", format!("{} bytes; need 1..=16", bytes.len())));
        }
        let mut t = Self { bytes: [0; 16], len: bytes.len() as u8 };
        t.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(t)
    }

    /// The tag bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Tag length `t` in bits.
    pub fn bits(&self) -> u32 {
        8 * u32::from(self.len)
    }
}

impl PartialEq for VerificationTag {
    /// Constant-time in the contents (the length is public).
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && bool::from(self.as_bytes().ct_eq(other.as_bytes()))
    }
}

impl Eq for VerificationTag {}

impl fmt::Debug for VerificationTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerificationTag(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

impl TryFrom<Vec<u8>> for VerificationTag {
    type Error = InvalidInput;
    fn try_from(v: Vec<u8>) -> Result<Self, InvalidInput> {
        Self::from_bytes(&v)
    }
}

impl From<VerificationTag> for Vec<u8> {
    fn from(t: VerificationTag) -> Self {
        t.as_bytes().to_vec()
    }
}

/// Why a verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerificationError {
    /// The tags differ: the reconciled keys are not equal. Discard the block.
    #[error("verification hash mismatch: reconciled keys differ")]
    Mismatch,
    /// The peer's tag is shorter than this side requires for its ε_cor.
    #[error("verification tag has {got} bits, {min} required")]
    TagTooShort {
        /// Bits received.
        got: u32,
        /// Bits required.
        min: u32,
    },
}

/// What the verifying side sends: seed and tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationMessage {
    /// The public seed drawn by the sender.
    pub seed: VerificationSeed,
    /// The sender's tag of its key under `seed`.
    pub tag: VerificationTag,
}

impl VerificationMessage {
    /// Draws a seed from `rng` and tags `key` with `tag_bits` bits (from [`tag_bits`]).
    pub fn new(key: &BitBlock, tag_bits: u32, rng: &mut impl CryptoRng) -> Result<Self, InvalidInput> {
        check_tag_bits(tag_bits)?;
        let seed = VerificationSeed::random(rng);
        let tag = verification_tag(key, &seed, tag_bits)?;
        Ok(Self { seed, tag })
    }

    /// Recomputes the tag on this side's `key` and compares. Refuses a tag shorter than
    /// `min_tag_bits` (this side's own [`tag_bits`] for the block) before comparing.
    pub fn check(&self, key: &BitBlock, min_tag_bits: u32) -> Result<(), VerificationError> {
        if self.tag.bits() < min_tag_bits {
            return Err(VerificationError::TagTooShort { got: self.tag.bits(), min: min_tag_bits });
        }
        check(key, &self.seed, &self.tag)
    }
}

fn check_tag_bits(t: u32) -> Result<(), InvalidInput> {
    if (MIN_TAG_BITS..=MAX_TAG_BITS).contains(&t) && t.is_multiple_of(8) {
        Ok(())
    } else {
        Err(InvalidInput::new("verification.tag_bits", format!("{t}; need a multiple of 8 in 8..=128")))
    }
}

/// The tag of `key` under `seed`: the first `tag_bits` bits (a multiple of 8 in 8..=128)
/// of the GF(2^128) polynomial hash with length block.
pub fn verification_tag(
    key: &BitBlock,
    seed: &VerificationSeed,
    tag_bits: u32,
) -> Result<VerificationTag, InvalidInput> {
    check_tag_bits(tag_bits)?;
    let mut h = Gf128Core::new(&seed.0).hash_words(key.words(), key.len() as u64);
    let t = VerificationTag::from_bytes(&h[..(tag_bits / 8) as usize]);
    // The untruncated hash says more about the key than the tag does.
    h.zeroize();
    t
}

/// Recomputes the tag of `key` under `seed` at the length of `tag` and compares in
/// constant time.
pub fn check(
    key: &BitBlock,
    seed: &VerificationSeed,
    tag: &VerificationTag,
) -> Result<(), VerificationError> {
    let mut h = Gf128Core::new(&seed.0).hash_words(key.words(), key.len() as u64);
    let ok = bool::from(h[..tag.len as usize].ct_eq(tag.as_bytes()));
    h.zeroize();
    if ok { Ok(()) } else { Err(VerificationError::Mismatch) }
}

/// Upper bound on the probability that two different `n_bits`-bit keys get equal
/// `tag_bits`-bit tags under a uniform seed: (⌈n/128⌉ + 1)/2^t (see the module docs).
pub fn collision_bound(n_bits: usize, tag_bits: u32) -> f64 {
    (n_bits.div_ceil(128) as f64 + 1.0) / 2f64.powi(tag_bits as i32)
}

/// The smallest tag length `t` (a multiple of 8 in 8..=128) with
/// [`collision_bound`]`(n_bits, t) ≤ eps_cor`, or an error when `eps_cor` is not in
/// (0, 1) or no `t ≤ 128` suffices.
pub fn try_tag_bits(n_bits: usize, eps_cor: f64) -> Result<u32, InvalidInput> {
    if !(eps_cor > 0.0 && eps_cor < 1.0) {
        return Err(InvalidInput::new("eps_cor", format!("{eps_cor}; need 0 < eps_cor < 1")));
    }
    (MIN_TAG_BITS..=MAX_TAG_BITS).step_by(8).find(|&t| collision_bound(n_bits, t) <= eps_cor).ok_or_else(
        || {
            InvalidInput::new(
                "eps_cor",
                format!("{eps_cor} needs a verification tag over 128 bits for {n_bits}-bit blocks"),
            )
        },
    )
}

/// [`try_tag_bits`] for a validated configuration.
///
/// # Panics
/// If `eps_cor` is not in (0, 1) or needs more than 128 bits (below about
/// (⌈n/128⌉ + 1)/2^128 — far beyond any practical setting); validate configurations with
/// [`try_tag_bits`].
pub fn tag_bits(n_bits: usize, eps_cor: f64) -> u32 {
    match try_tag_bits(n_bits, eps_cor) {
        Ok(t) => t,
        Err(e) => panic!("tag_bits: {e}"),
    }
}

/// Bits a `tag_bits`-bit tag discloses beyond the `log2(2/ε_cor)` that Eq. (1) of Lim et
/// al. 2014 already charges for verification: `max(0, t − log2(2/ε_cor))`. Add this to
/// `λ_EC`.
pub fn excess_leakage_bits(tag_bits: u32, eps_cor: f64) -> f64 {
    (f64::from(tag_bits) - (2.0 / eps_cor).log2()).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;
    use proptest::prelude::*;

    #[test]
    fn equal_keys_verify() {
        let mut rng = seeded(1);
        for n in [0usize, 1, 7, 8, 63, 64, 65, 127, 128, 129, 1000, 100_000] {
            let key = BitBlock::random(n, &mut rng);
            let t = tag_bits(n.max(1), 1e-15);
            let msg = VerificationMessage::new(&key, t, &mut rng).unwrap();
            assert_eq!(msg.tag.bits(), t);
            assert_eq!(msg.check(&key.clone(), t), Ok(()), "n = {n}");
        }
    }

    #[test]
    fn hash_words_equals_hash_of_byte_image() {
        // The verification hash is the MAC's hash of the key's LSB-first byte image, with
        // the bit length in the length block: equal to `hash_bytes` when n is a multiple
        // of 8.
        let mut rng = seeded(2);
        for n in (0..300).step_by(8).chain([1000, 4096]) {
            let key = BitBlock::random(n, &mut rng);
            let core = Gf128Core::new(VerificationSeed::random(&mut rng).as_bytes());
            assert_eq!(core.hash_words(key.words(), n as u64), core.hash_bytes(&key.to_bytes()), "n = {n}");
        }
    }

    #[test]
    fn length_is_bound_into_the_tag() {
        // Same bytes, different bit lengths (trailing zero bits): different tags.
        let mut rng = seeded(3);
        let seed = VerificationSeed::random(&mut rng);
        let a = BitBlock::from_bools(&[true, false, true]);
        let b = BitBlock::from_bools(&[true, false, true, false]);
        assert_eq!(a.words(), b.words());
        assert_ne!(verification_tag(&a, &seed, 128).unwrap(), verification_tag(&b, &seed, 128).unwrap());
    }

    #[test]
    fn wrong_tag_and_short_tag_refused() {
        let mut rng = seeded(4);
        let key = BitBlock::random(1000, &mut rng);
        let msg = VerificationMessage::new(&key, 64, &mut rng).unwrap();
        assert_eq!(msg.check(&key, 72), Err(VerificationError::TagTooShort { got: 64, min: 72 }));
        let mut bad = msg;
        let mut bytes = bad.tag.as_bytes().to_vec();
        bytes[7] ^= 0x80;
        bad.tag = VerificationTag::from_bytes(&bytes).unwrap();
        assert_eq!(bad.check(&key, 64), Err(VerificationError::Mismatch));
        // A different seed with the same tag fails too.
        let mut other = msg;
        other.seed = VerificationSeed::random(&mut rng);
        assert_eq!(other.check(&key, 64), Err(VerificationError::Mismatch));
        // A key of another length fails.
        let mut longer = key.clone();
        longer.push(false);
        assert_eq!(msg.check(&longer, 64), Err(VerificationError::Mismatch));
    }

    #[test]
    fn tag_bits_grows_with_n_and_shrinks_with_eps() {
        let mut last = 0;
        for n in [1usize, 1_000, 100_000, 1_000_000, 10_000_000, 1_000_000_000] {
            let t = tag_bits(n, 1e-15);
            assert!(t >= last, "n = {n}");
            last = t;
        }
        assert!(tag_bits(1_000_000_000, 1e-15) > tag_bits(1, 1e-15));
        let mut last = u32::MAX;
        for eps in [1e-30, 1e-20, 1e-15, 1e-10, 1e-6, 1e-3, 0.1] {
            let t = tag_bits(100_000, eps);
            assert!(t <= last, "eps = {eps}");
            last = t;
        }
        assert!(tag_bits(100_000, 0.1) < tag_bits(100_000, 1e-30));
        // The design default: n = 1e5, ε_cor = 1e-15 → 783/2^t ≤ 1e-15 → t ≥ 59.4 → 64.
        assert_eq!(tag_bits(100_000, 1e-15), 64);
    }

    #[test]
    fn chosen_t_is_tight() {
        for n in [1usize, 128, 129, 10_000, 100_000, 1_000_000, 10_000_000] {
            for eps in [1e-30, 1e-20, 1e-15, 1e-12, 1e-9, 1e-6, 1e-3, 0.5] {
                let t = tag_bits(n, eps);
                assert_eq!(t % 8, 0);
                assert!(collision_bound(n, t) <= eps, "n {n} eps {eps} t {t}");
                assert!(collision_bound(n, t - 8) > eps, "n {n} eps {eps}: t − 8 = {} also fits", t - 8);
            }
        }
    }

    #[test]
    fn invalid_parameters() {
        for eps in [0.0, -1.0, 1.0, 2.0, f64::NAN, f64::INFINITY] {
            assert!(try_tag_bits(1000, eps).is_err(), "eps {eps}");
        }
        // Needs more than 128 bits.
        assert!(try_tag_bits(1000, 1e-40).is_err());
        let key = BitBlock::zeros(10);
        let seed = VerificationSeed::from_bytes([1; 16]);
        for t in [0, 4, 12, 136, 256] {
            assert!(verification_tag(&key, &seed, t).is_err(), "t {t}");
        }
        assert!(VerificationTag::from_bytes(&[]).is_err());
        assert!(VerificationTag::from_bytes(&[0; 17]).is_err());
    }

    #[test]
    fn excess_leakage() {
        let eps: f64 = 1e-15;
        let base = (2.0 / eps).log2(); // 50.83
        assert_eq!(excess_leakage_bits(40, eps), 0.0);
        assert!((excess_leakage_bits(64, eps) - (64.0 - base)).abs() < 1e-12);
        assert!((excess_leakage_bits(tag_bits(100_000, eps), eps) - 13.17).abs() < 0.01);
    }

    #[test]
    fn serde_roundtrip() {
        let mut rng = seeded(5);
        let key = BitBlock::random(500, &mut rng);
        let msg = VerificationMessage::new(&key, 64, &mut rng).unwrap();
        let json = serde_json::to_string(&msg).unwrap();
        let back: VerificationMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.check(&key, 64), Ok(()));
        let bad = r#"{"seed":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"tag":[]}"#;
        assert!(serde_json::from_str::<VerificationMessage>(bad).is_err());
    }

    proptest! {
        #[test]
        fn any_single_bit_difference_is_caught(
            n in 1usize..3000,
            flip in any::<proptest::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let mut rng = seeded(seed);
            let alice = BitBlock::random(n, &mut rng);
            let mut bob = alice.clone();
            bob.flip(flip.index(n));
            let t = tag_bits(n, 1e-15);
            let msg = VerificationMessage::new(&alice, t, &mut rng).unwrap();
            prop_assert_eq!(msg.check(&alice, t), Ok(()));
            prop_assert_eq!(msg.check(&bob, t), Err(VerificationError::Mismatch));
        }
    }
}
