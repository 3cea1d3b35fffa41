//! Poly1305 (RFC 8439 §2.5) as a Wegman–Carter MAC with a reused `r` and one-time `s`.

use core::fmt;

use ::poly1305::{Key, Poly1305, universal_hash::KeyInit};
use zeroize::Zeroize;

use super::{HASH_KEY_LEN, HashKey, MacError, MacFamily, Pad, Tag, WcMac};

/// The clamp RFC 8439 §2.5.1 applies to `r` (read little-endian). Poly1305 clamps
/// internally; we use the mask only to refuse a key that clamps to zero.
const R_CLAMP: u128 = 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffff;

/// Poly1305 keyed with the hash key `r`; the one-time `s` is the pad.
///
/// Tag = `(h_r(m) + s) mod 2^128`, byte for byte the Poly1305 output for key `r‖s`
/// (RFC 8439 §2.5). The keyed state is built once with key `r‖0^16` — whose output is
/// `h_r(m) mod 2^128` — and cloned per message; `s` is added modulo 2^128 here. Because
/// `((h mod 2^128) + s) mod 2^128 = (h + s) mod 2^128`, this is exactly equal to keying
/// with `r‖s`, and skips the per-key set-up of the AVX2 backend (whose `finalize` still
/// costs about 1 µs in `poly1305` 0.9.1; see the module docs).
///
/// Forgery bound per attempt: 8⌈L/16⌉/2^106 for messages of at most `L` bytes
/// (Bernstein, "The Poly1305-AES message-authentication code", FSE 2005, §3), with a
/// fresh uniform `s` per message (Wegman–Carter). Never truncated.
pub struct Poly1305Mac {
    /// Keyed with `r‖0^16`. (The `poly1305` crate zeroises this state on drop only with
    /// its `zeroize` feature.)
    keyed: Poly1305,
}

impl Poly1305Mac {
    /// Keys Poly1305 with the 16-byte `r` in `key`. Errs on a wrong length or an `r` that
    /// clamps to zero.
    pub fn new(key: &HashKey) -> Result<Self, MacError> {
        let r = key.as_array()?;
        let mut clamped = u128::from_le_bytes(*r) & R_CLAMP;
        let zero = clamped == 0;
        clamped.zeroize();
        if zero {
            return Err(MacError::WeakKey);
        }
        Ok(Self::from_r(r))
    }

    /// Keys with `r` without the zero check (the RFC test vectors use `r = 0`).
    pub(super) fn from_r(r: &[u8; HASH_KEY_LEN]) -> Self {
        let mut k = Key::default();
        k[..HASH_KEY_LEN].copy_from_slice(r);
        let keyed = Poly1305::new(&k);
        k.as_mut_slice().zeroize();
        Self { keyed }
    }

    /// `h_r(msg) mod 2^128` (the Poly1305 output for key `r‖0`).
    fn hash(&self, msg: &[u8]) -> u128 {
        let mut out: [u8; 16] = self.keyed.clone().compute_unpadded(msg).into();
        let h = u128::from_le_bytes(out);
        out.zeroize();
        h
    }
}

impl WcMac for Poly1305Mac {
    fn family(&self) -> MacFamily {
        MacFamily::Poly1305
    }

    fn tag(&self, msg: &[u8], pad: &Pad) -> Result<Tag, MacError> {
        let mut s = [0u8; 16];
        s.copy_from_slice(pad.checked(16)?);
        let mut h = self.hash(msg);
        let t = Tag::full(h.wrapping_add(u128::from_le_bytes(s)).to_le_bytes());
        h.zeroize();
        s.zeroize();
        Ok(t)
    }
}

impl fmt::Debug for Poly1305Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Poly1305Mac { .. }")
    }
}
