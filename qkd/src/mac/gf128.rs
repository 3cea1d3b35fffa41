//! A polynomial hash over GF(2^128) with a length block, built on RFC 8452 POLYVAL
//! (CLMUL/PMULL-backed `polyval` crate). Shared by the Wegman–Carter MAC ([`Gf128Mac`])
//! and the public-seed verification hash ([`crate::verification`]).
//!
//! Construction: `h_H(m) = POLYVAL(H, X_1, …, X_k, X_len)` where `X_1..X_k` are `m`
//! zero-padded to whole 16-byte blocks (`k = ⌈L/16⌉`) and `X_len = LE64(0) ‖ LE64(bits)`
//! with `bits` the length of `m` in bits. This is exactly the POLYVAL input of
//! AES-GCM-SIV with empty AAD (RFC 8452 §4), so its Appendix C vectors apply.
//!
//! POLYVAL(H, X_1..X_s) = Σ X_i·H'^(s−i+1) with `H' = H·x^−128`, a bijection of `H`: a
//! polynomial of degree ≤ `k + 1` with zero constant term in a uniform `H'`. For two
//! different messages of at most `L` bytes (the length block separates different
//! lengths, so `m`, `0^16‖m` and `m‖0` all differ) and any constant `c`, the difference
//! minus `c` is a non-zero polynomial of degree ≤ ⌈L/16⌉ + 1, so
//! `Pr_H[h(m) ⊕ h(m') = c] ≤ (⌈L/16⌉ + 1)/2^128` (ε-AXU). Keeping only `t` bits merges
//! 2^(128−t) values of `c`: `(⌈L/16⌉ + 1)/2^t`.

use core::fmt;

use polyval::{Polyval, universal_hash::UniversalHash};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::{HASH_KEY_LEN, HashKey, MacError, MacFamily, Pad, Tag, WcMac};

/// The keyed polynomial hash `h_H` (full 128-bit output). Zeroised on drop (the
/// `polyval` crate's `zeroize` feature is on).
#[derive(Clone)]
pub(crate) struct Gf128Core {
    keyed: Polyval,
}

impl Gf128Core {
    /// Keys the hash with `H` (key powers are expanded once here).
    pub(crate) fn new(h: &[u8; 16]) -> Self {
        let mut k = polyval::Key::default();
        k.copy_from_slice(h);
        let keyed = Polyval::new(&k);
        k.as_mut_slice().zeroize();
        Self { keyed }
    }

    /// `h_H(data)` with the length block counting `8·data.len()` bits.
    pub(crate) fn hash_bytes(&self, data: &[u8]) -> [u8; 16] {
        let mut st = self.keyed.clone();
        st.update_padded(data);
        finish(st, (data.len() as u64).wrapping_mul(8))
    }

    /// `h_H` of a bit string of `bit_len` bits packed LSB-first in `words` (the
    /// [`crate::bits`] convention): equal to [`hash_bytes`](Self::hash_bytes) of its
    /// LSB-first byte image, but with `bit_len` in the length block. Bits beyond
    /// `bit_len` must be zero and `words` exactly `⌈bit_len/64⌉` long (as in a
    /// [`crate::BitBlock`]).
    pub(crate) fn hash_words(&self, words: &[u64], bit_len: u64) -> [u8; 16] {
        debug_assert_eq!(words.len() as u64, bit_len.div_ceil(64));
        let mut st = self.keyed.clone();
        // 8 words = 4 blocks, the backend's parallel width. Only the last chunk can be
        // partial; `update_padded` zero-pads it, which matches the byte image because
        // bits beyond `bit_len` are zero.
        let mut buf = [0u8; 64];
        for chunk in words.chunks(8) {
            for (dst, w) in buf.chunks_exact_mut(8).zip(chunk) {
                dst.copy_from_slice(&w.to_le_bytes());
            }
            st.update_padded(&buf[..8 * chunk.len()]);
        }
        buf.zeroize();
        finish(st, bit_len)
    }
}

/// Absorbs the length block `LE64(0) ‖ LE64(bit_len)` and finalises.
fn finish(mut st: Polyval, bit_len: u64) -> [u8; 16] {
    let mut len_block = polyval::Block::default();
    len_block[8..].copy_from_slice(&bit_len.to_le_bytes());
    st.update(&[len_block]);
    st.finalize().into()
}

/// POLYVAL-with-length-block Wegman–Carter MAC: tag = `trunc_t(h_H(m)) ⊕ pad`, with a
/// `t`-bit pad, `t` a multiple of 8 in 32..=128.
///
/// Forgery bound per attempt: (⌈L/16⌉ + 1)/2^t for messages of at most `L` bytes (see
/// the module docs and [`MacFamily::forgery_bound`]).
pub struct Gf128Mac {
    core: Gf128Core,
    tag_bits: u32,
}

impl Gf128Mac {
    /// Keys the hash with the 16-byte `H` in `key`, tags truncated to `tag_bits`. Errs on
    /// a bad `tag_bits`, a key of the wrong length or an all-zero key.
    pub fn new(key: &HashKey, tag_bits: u32) -> Result<Self, MacError> {
        MacFamily::Gf128 { tag_bits }.validate()?;
        let h = key.as_array()?;
        if bool::from(h.ct_eq(&[0u8; HASH_KEY_LEN])) {
            return Err(MacError::WeakKey);
        }
        Ok(Self { core: Gf128Core::new(h), tag_bits })
    }

    /// Keys without the zero-key check (test vectors).
    #[cfg(test)]
    pub(super) fn from_h(h: &[u8; HASH_KEY_LEN], tag_bits: u32) -> Self {
        Self { core: Gf128Core::new(h), tag_bits }
    }

    /// The untruncated `h_H(msg)` (tests).
    #[cfg(test)]
    pub(super) fn hash(&self, msg: &[u8]) -> [u8; 16] {
        self.core.hash_bytes(msg)
    }
}

impl WcMac for Gf128Mac {
    fn family(&self) -> MacFamily {
        MacFamily::Gf128 { tag_bits: self.tag_bits }
    }

    fn tag(&self, msg: &[u8], pad: &Pad) -> Result<Tag, MacError> {
        let n = (self.tag_bits / 8) as usize;
        let p = pad.checked(n)?;
        let mut h = self.core.hash_bytes(msg);
        for (a, b) in h.iter_mut().zip(p) {
            *a ^= b;
        }
        let t = Tag::prefix(&h, n);
        h.zeroize();
        Ok(t)
    }
}

impl fmt::Debug for Gf128Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gf128Mac").field("tag_bits", &self.tag_bits).finish_non_exhaustive()
    }
}
