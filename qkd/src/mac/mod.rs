//! Wegman–Carter message authentication for the classical channel.
//!
//! A tag is `h_k(m)` combined with a one-time pad: the hash key `k` is kept across
//! messages and refreshed by policy, the pad is used for one tag only (Wegman & Carter,
//! JCSS 22, 1981). Reusing the hash key with fresh pads stays secure (Portmann, IEEE TIT
//! 60(7), 2014); it should still be refreshed on a schedule and after any rejected tag,
//! because pads from QKD are only ε-close to uniform (Abidin & Larsson). See
//! REFERENCE.md §3 and DESIGN.md §3 item 9.
//!
//! Two families sit behind one trait, [`WcMac`]:
//!
//! * [`MacFamily::Poly1305`] ([`Poly1305Mac`]): hash key `r` (16 bytes, clamped as in
//!   RFC 8439), pad `s` (16 bytes), tag `(h_r(m) + s) mod 2^128` — exactly the Poly1305
//!   output for key `r‖s`. Forgery probability per attempt ≤ 8⌈L/16⌉/2^106 for messages of
//!   at most `L` bytes (Bernstein, "The Poly1305-AES message-authentication code",
//!   FSE 2005, §3). Never truncated: a truncated Poly1305 tag loses about
//!   2^(128−t) of that bound (CRATES.md).
//! * [`MacFamily::Gf128`] ([`Gf128Mac`]): hash key `H` (16 bytes), the RFC 8452 POLYVAL
//!   polynomial over GF(2^128) of the zero-padded message followed by a length block,
//!   truncated to `t` bits and XORed with a `t`-bit pad. Forgery probability per attempt
//!   ≤ (⌈L/16⌉ + 1)/2^t: the difference of two hashes is a non-zero polynomial of degree
//!   ≤ ⌈L/16⌉ + 1 in the key, with at most that many roots, and truncation to `t` bits
//!   merges 2^(128−t) outputs (the usual ε-AXU argument, e.g. McGrew & Viega, "The
//!   Security and Performance of the Galois/Counter Mode", 2004, and RFC 8452 §9).
//!
//! # Where keys and pads come from
//!
//! [`HashKey`] and [`Pad`] are secrets shared by both ends. They are constructed **only**
//! from secret bytes the caller supplies — the per-ONU pre-shared secret or the reserved
//! authentication share of the key pool — and **never** from an RNG: this module offers
//! no way to draw one. Both are zeroised on drop and print their length only.
//!
//! # What this module does not do
//!
//! It does not decide which pad is used for which message, count pad use or schedule
//! key refreshes: sessions and the pad ledger own that (a pad is fixed by ONU, direction
//! and sequence number, and its use is recorded before the message is sent). A
//! [`WegmanCarter`] holds one family and its current hash key, nothing more.
//!
//! # Performance
//!
//! Both families key their hash once per hash key and clone the keyed state per message;
//! pads are held inline (no allocation per message). For Poly1305 this means hashing
//! with key `r‖0` and adding `s` modulo 2^128 here, which is exactly equal to Poly1305
//! keyed with `r‖s` (tested against the crate). `examples/mac_throughput.rs` measures
//! tags/s. Note: with `poly1305` 0.9.1's default run-time-detected AVX2 backend every
//! tag costs about 1 µs whatever the key handling, because its `finalize` calls AVX2
//! intrinsics from a helper compiled without `#[target_feature(enable = "avx2")]`, so
//! they are not inlined; built with `--cfg poly1305_backend="soft"` Poly1305 reaches
//! about 8–10 M tags/s at 64 bytes. The GF(2^128) family (CLMUL) is unaffected.

use core::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::secret::SecretBytes;

pub(crate) mod gf128;
mod poly;

pub use gf128::Gf128Mac;
pub use poly::Poly1305Mac;

/// Length in bytes of every hash key in this module (Poly1305 `r`, GF(2^128) `H`).
pub const HASH_KEY_LEN: usize = 16;

/// Longest tag (and pad) in bytes.
pub const MAX_TAG_LEN: usize = 16;

/// Shortest admissible truncated GF(2^128) tag, in bits.
pub const GF128_MIN_TAG_BITS: u32 = 32;

/// Longest GF(2^128) tag, in bits (untruncated).
pub const GF128_MAX_TAG_BITS: u32 = 128;

/// Errors of tagging and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MacError {
    /// The received tag does not match (wrong value or wrong length). The message must be
    /// dropped, and by policy the hash key refreshed.
    #[error("authentication tag refused")]
    BadTag,
    /// A hash key of the wrong length was supplied.
    #[error("hash key is {got} bytes, the family needs {expected}")]
    KeyLength {
        /// Bytes the family needs.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// A pad of the wrong length was supplied.
    #[error("pad is {got} bytes, the family needs {expected}")]
    PadLength {
        /// Bytes the family needs.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// The hash key is zero (after Poly1305 clamping): every message would hash to zero.
    /// A sign that the key source handed out unfilled memory.
    #[error("hash key is zero")]
    WeakKey,
    /// A GF(2^128) tag length outside 32..=128 bits or not a multiple of 8.
    #[error("unsupported tag length {0} bits (need a multiple of 8 in 32..=128)")]
    TagBits(u32),
}

/// Which universal-hash family authenticates a session, with its parameters. Public
/// configuration; both ends must agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum MacFamily {
    /// Poly1305 with a one-time `s`: 16-byte key, 16-byte pad, 16-byte tag.
    Poly1305,
    /// POLYVAL over GF(2^128) with a length block, truncated to `tag_bits`.
    Gf128 {
        /// Tag (and pad) length in bits: a multiple of 8 in 32..=128.
        tag_bits: u32,
    },
}

impl MacFamily {
    /// The GF(2^128) family with `tag_bits`-bit tags, checked.
    pub fn gf128(tag_bits: u32) -> Result<Self, MacError> {
        let f = Self::Gf128 { tag_bits };
        f.validate()?;
        Ok(f)
    }

    /// Checks the parameters (a deserialised value may carry any `tag_bits`).
    pub fn validate(&self) -> Result<(), MacError> {
        match *self {
            Self::Poly1305 => Ok(()),
            Self::Gf128 { tag_bits } => {
                if (GF128_MIN_TAG_BITS..=GF128_MAX_TAG_BITS).contains(&tag_bits) && tag_bits.is_multiple_of(8)
                {
                    Ok(())
                } else {
                    Err(MacError::TagBits(tag_bits))
                }
            }
        }
    }

    /// Hash key length in bytes.
    pub fn key_len(&self) -> usize {
        HASH_KEY_LEN
    }

    /// Pad length in bytes (one pad per tag).
    pub fn pad_len(&self) -> usize {
        self.tag_len()
    }

    /// Tag length in bytes.
    pub fn tag_len(&self) -> usize {
        match *self {
            Self::Poly1305 => 16,
            Self::Gf128 { tag_bits } => (tag_bits / 8) as usize,
        }
    }

    /// Upper bound on the probability that one forgery attempt is accepted, when the
    /// authentic and the forged message are at most `max_msg_len` bytes long (pass the
    /// largest length the receiver accepts).
    ///
    /// * Poly1305: 8⌈L/16⌉/2^106 (Bernstein, FSE 2005, §3).
    /// * GF(2^128), `t`-bit tags: (⌈L/16⌉ + 1)/2^t — ⌈L/16⌉ message blocks plus the length
    ///   block give a polynomial of that degree; truncation to `t` bits multiplies the
    ///   untruncated (⌈L/16⌉ + 1)/2^128 by 2^(128−t).
    ///
    /// Lengths below one block are counted as one block.
    pub fn forgery_bound(&self, max_msg_len: usize) -> f64 {
        let blocks = max_msg_len.div_ceil(16).max(1) as f64;
        match *self {
            Self::Poly1305 => 8.0 * blocks / 2f64.powi(106),
            Self::Gf128 { tag_bits } => (blocks + 1.0) / 2f64.powi(tag_bits as i32),
        }
    }
}

impl fmt::Display for MacFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Poly1305 => f.write_str("poly1305"),
            Self::Gf128 { tag_bits } => write!(f, "gf128/{tag_bits}"),
        }
    }
}

/// A Wegman–Carter hash key (secret, shared by both ends).
///
/// Constructed only from secret bytes the caller takes from the pre-shared secret or the
/// key pool — never from an RNG (there is deliberately no `random` constructor). Zeroised
/// on drop; `Debug` shows the length only; not `Clone`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct HashKey(SecretBytes);

impl HashKey {
    /// Wraps secret bytes taken from the pre-shared secret or the key pool.
    pub fn new(bytes: SecretBytes) -> Self {
        Self(bytes)
    }

    /// Copies secret bytes taken from the pre-shared secret or the key pool.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(SecretBytes::from_slice(bytes))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key as a 16-byte array, or `KeyLength`.
    fn as_array(&self) -> Result<&[u8; HASH_KEY_LEN], MacError> {
        self.0
            .expose()
            .try_into()
            .map_err(|_| MacError::KeyLength { expected: HASH_KEY_LEN, got: self.0.len() })
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashKey({} bytes)", self.0.len())
    }
}

/// A one-time pad for one tag (secret, shared by both ends).
///
/// Constructed only from secret bytes the caller takes from the pre-shared secret or the
/// key pool — never from an RNG. Which pad covers which message is the caller's business
/// (sessions and the pad ledger); a pad must never cover two different messages.
/// Held inline (no allocation per message); zeroised on drop; `Debug` shows the length
/// only; not `Clone`. Its length is checked against the family when it is used.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Pad {
    bytes: [u8; MAX_TAG_LEN],
    /// The length supplied, which may exceed `MAX_TAG_LEN` (then only checked and refused).
    len: usize,
}

impl Pad {
    /// Takes secret bytes from the pre-shared secret or the key pool (the buffer is
    /// zeroised when dropped here).
    pub fn new(bytes: SecretBytes) -> Self {
        Self::from_slice(bytes.expose())
    }

    /// Copies secret bytes taken from the pre-shared secret or the key pool.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut p = Self { bytes: [0; MAX_TAG_LEN], len: bytes.len() };
        let n = bytes.len().min(MAX_TAG_LEN);
        p.bytes[..n].copy_from_slice(&bytes[..n]);
        p
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pad bytes, checked to be `expected` (≤ 16) long.
    fn checked(&self, expected: usize) -> Result<&[u8], MacError> {
        if self.len == expected && expected <= MAX_TAG_LEN {
            Ok(&self.bytes[..expected])
        } else {
            Err(MacError::PadLength { expected, got: self.len })
        }
    }
}

impl fmt::Debug for Pad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pad({} bytes)", self.len)
    }
}

/// An authentication tag (public: it travels with the message), 1 to 16 bytes.
///
/// Equality is constant-time in the contents. Serialised as a byte sequence.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct Tag {
    bytes: [u8; MAX_TAG_LEN],
    len: u8,
}

impl Tag {
    /// A tag from received bytes; `BadTag` when empty or longer than 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MacError> {
        if bytes.is_empty() || bytes.len() > MAX_TAG_LEN {
            return Err(MacError::BadTag);
        }
        let mut buf = [0; MAX_TAG_LEN];
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Self::prefix(&buf, bytes.len()))
    }

    /// A full 16-byte tag.
    fn full(bytes: [u8; MAX_TAG_LEN]) -> Self {
        Self { bytes, len: MAX_TAG_LEN as u8 }
    }

    /// The first `n` (1..=16) bytes of `bytes`.
    fn prefix(bytes: &[u8; MAX_TAG_LEN], n: usize) -> Self {
        debug_assert!((1..=MAX_TAG_LEN).contains(&n));
        let mut t = Self { bytes: [0; MAX_TAG_LEN], len: n as u8 };
        t.bytes[..n].copy_from_slice(&bytes[..n]);
        t
    }

    /// The tag bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false (a tag has at least one byte); present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for Tag {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Tag {
    /// Constant-time in the contents (the length is public).
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && bool::from(self.as_bytes().ct_eq(other.as_bytes()))
    }
}

impl Eq for Tag {}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tag(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

impl TryFrom<Vec<u8>> for Tag {
    type Error = MacError;
    fn try_from(v: Vec<u8>) -> Result<Self, MacError> {
        Self::from_bytes(&v)
    }
}

impl From<Tag> for Vec<u8> {
    fn from(t: Tag) -> Self {
        t.as_bytes().to_vec()
    }
}

/// Compares a computed tag with received bytes in constant time (the lengths are
/// public); any mismatch, including a length mismatch, is `BadTag`.
fn check_tag(expected: &Tag, received: &[u8]) -> Result<(), MacError> {
    let e = expected.as_bytes();
    if e.len() == received.len() && bool::from(e.ct_eq(received)) { Ok(()) } else { Err(MacError::BadTag) }
}

/// A keyed ε-almost-XOR/Δ-universal hash used as a Wegman–Carter MAC: the hash key is
/// inside the value, the one-time pad is passed per message.
pub trait WcMac {
    /// The family and its parameters.
    fn family(&self) -> MacFamily;

    /// `h_k(msg)` combined with `pad`. Errs only on a pad of the wrong length.
    fn tag(&self, msg: &[u8], pad: &Pad) -> Result<Tag, MacError>;

    /// Recomputes the tag of `msg` with `pad` and compares it with `tag` in constant time.
    /// `BadTag` on any mismatch (including a tag of the wrong length); never panics,
    /// whatever the lengths of `msg` and `tag`.
    fn verify(&self, msg: &[u8], pad: &Pad, tag: &[u8]) -> Result<(), MacError> {
        let expected = self.tag(msg, pad)?;
        check_tag(&expected, tag)
    }

    /// Hash key length in bytes.
    fn key_len(&self) -> usize {
        self.family().key_len()
    }

    /// Pad length in bytes.
    fn pad_len(&self) -> usize {
        self.family().pad_len()
    }

    /// Tag length in bytes.
    fn tag_len(&self) -> usize {
        self.family().tag_len()
    }

    /// See [`MacFamily::forgery_bound`].
    fn forgery_bound(&self, max_msg_len: usize) -> f64 {
        self.family().forgery_bound(max_msg_len)
    }
}

/// The keyed hash of either family.
enum Keyed {
    /// Boxed: the AVX2 Poly1305 state is several hundred bytes.
    Poly1305(Box<Poly1305Mac>),
    Gf128(Gf128Mac),
}

impl Keyed {
    fn new(family: MacFamily, key: &HashKey) -> Result<Self, MacError> {
        family.validate()?;
        Ok(match family {
            MacFamily::Poly1305 => Self::Poly1305(Box::new(Poly1305Mac::new(key)?)),
            MacFamily::Gf128 { tag_bits } => Self::Gf128(Gf128Mac::new(key, tag_bits)?),
        })
    }

    fn as_mac(&self) -> &dyn WcMac {
        match self {
            Self::Poly1305(m) => &**m,
            Self::Gf128(m) => m,
        }
    }
}

/// A session's Wegman–Carter authenticator: one family and its current hash key.
///
/// Pads are supplied per call; which pad belongs to which message, and when to call
/// [`refresh_key`](Self::refresh_key), is decided by the session and its pad ledger.
/// `Debug` shows the family and key generation only; not `Clone` (build each end from
/// its own copy of the key bytes).
pub struct WegmanCarter {
    keyed: Keyed,
    generation: u64,
}

impl WegmanCarter {
    /// An authenticator for `family` keyed with `key` (taken from the pre-shared secret or
    /// the key pool). Errs on invalid parameters, a key of the wrong length or a zero key.
    pub fn new(family: MacFamily, key: HashKey) -> Result<Self, MacError> {
        Ok(Self { keyed: Keyed::new(family, &key)?, generation: 0 })
    }

    /// Replaces the hash key (same family). On error the old key stays in place.
    pub fn refresh_key(&mut self, key: HashKey) -> Result<(), MacError> {
        self.keyed = Keyed::new(self.family(), &key)?;
        self.generation += 1;
        Ok(())
    }

    /// How many times the hash key has been refreshed since construction.
    pub fn key_generation(&self) -> u64 {
        self.generation
    }
}

impl WcMac for WegmanCarter {
    fn family(&self) -> MacFamily {
        self.keyed.as_mac().family()
    }

    fn tag(&self, msg: &[u8], pad: &Pad) -> Result<Tag, MacError> {
        self.keyed.as_mac().tag(msg, pad)
    }

    fn verify(&self, msg: &[u8], pad: &Pad, tag: &[u8]) -> Result<(), MacError> {
        self.keyed.as_mac().verify(msg, pad, tag)
    }
}

impl fmt::Debug for WegmanCarter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WegmanCarter")
            .field("family", &self.family())
            .field("key_generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
