//! Where randomness comes from.
//!
//! Every random choice in `qkd` is drawn from an RNG the caller injects; nothing here
//! constructs one behind the caller's back. On hardware the public choices (privacy
//! amplification seeds, verification-hash seeds, Cascade permutations) come from
//! [`os_rng`] (or a QRNG wrapped as a [`rand::CryptoRng`]); seeded ChaCha ([`seeded`]) is
//! for simulation and tests only. Secrets shared by both ends — Wegman–Carter hash keys and
//! one-time pads — never come from an RNG at all: they come from the pre-shared secret or
//! the key pool.

pub use rand::{CryptoRng, Rng};
pub use rand_chacha::ChaCha20Rng;

/// The type [`os_rng`] returns.
pub type OsRng = rand::rand_core::UnwrapErr<rand::rngs::SysRng>;

/// The operating system's RNG, as an infallible [`CryptoRng`]. A failing OS RNG panics
/// (there is no safe fallback to continue with).
pub fn os_rng() -> OsRng {
    rand::rand_core::UnwrapErr(rand::rngs::SysRng)
}

/// A deterministic ChaCha20 generator for simulation and tests.
pub fn seeded(seed: u64) -> ChaCha20Rng {
    use rand::SeedableRng;
    ChaCha20Rng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takes_crypto(r: &mut impl CryptoRng) -> u64 {
        r.next_u64()
    }

    #[test]
    fn both_sources_are_crypto_rngs() {
        let a = takes_crypto(&mut seeded(7));
        assert_eq!(a, takes_crypto(&mut seeded(7)));
        let _ = takes_crypto(&mut os_rng());
    }
}
