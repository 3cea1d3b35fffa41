//! Block-size schedules: how many Cascade passes, and the top-level block size of each.
//!
//! The schedule travels in [`CascadeStart`](super::CascadeStart) explicitly (not as a QBER
//! the responder would have to turn into sizes), so both ends agree bit for bit and the
//! session can show and check it. [`Schedule::for_qber`] is the default rule.
//!
//! ## The default rule
//!
//! It follows the findings of Martinez-Mateo, Pacher, Peev, Ciurana and Martin,
//! "Demystifying the information reconciliation protocol Cascade", QIC 15 (2015): block
//! sizes that are powers of two (bisection then costs exactly `log2 k` parities per
//! error), a first block of about `1/Q`, a second pass a few times larger, and then many
//! cheap passes of two blocks of half the key each. Those late passes (two random halves)
//! are BICONF-style confirmation checks: each costs one disclosed parity (the other half
//! is inferred from the total parity), catches any remaining error pattern with
//! probability 1/2, and when it catches one, bisection plus the cascade into the small
//! early blocks corrects it.
//!
//! The rule (tuned on 10⁵-bit frames with the crate's `reconcile_bench` example) is:
//!
//! | pass | block size |
//! |---|---|
//! | 1 | `k₁ = 2^round(log2(λ/Q))`, at least 8, with `λ = 0.7 + 10·(Q − 0.02)` clamped to `0.7..=1` expected errors per block |
//! | 2 | `4 · k₁`, or `2 · k₁` when `Q·k₁ ≥ 0.85` or for [`Profile::FewRounds`] |
//! | 3 | `64 · k₁` (`32 · k₁` for [`Profile::FewRounds`]) |
//! | 4 … 16 | `⌈N/2⌉` (confirmation) |
//!
//! e.g. 64, 256, 4096 at Q = 1 %; 32, 128, 2048 at 2 %; 16, 64, 1024 at 5 %. Passes 2
//! and 3 are dropped when their blocks would cover the whole key, and keys under 512 bits
//! get fewer confirmation passes (`⌊log2 n⌋ − 2`). `N` is the permuted length (the key
//! length rounded up to whole words for the default [`PermutationKind::WordSkew`]).
//!
//! The block sizes mostly trade disclosed bits against round trips: a second pass only
//! twice the first cuts the cascade's back-and-forth between the two smallest block sizes
//! (fewer rounds) but finds more errors at the price of the larger blocks
//! ([`Profile`]).

use super::error::ReconcileError;
use serde::{Deserialize, Serialize};

/// Largest key accepted, in bits (node ids must fit a `u32`).
pub const MAX_BITS: usize = 1 << 27;

/// Most passes a schedule may have. It bounds the memory a peer's `CascadeStart` can make
/// the responder allocate (one permuted copy of its key per pass).
pub const MAX_PASSES: usize = 32;

/// Confirmation passes (two blocks of half the key each) the default schedule ends with,
/// for keys of 512 bits and more.
pub const CONFIRMATION_PASSES: usize = 13;

/// Expected errors per first-pass block from which the default rule keeps the second
/// pass's blocks at twice (not four times) the first's.
const DENSE_FIRST_BLOCK: f64 = 0.85;

/// Lowest QBER the default rule plans for (a lower estimate is raised to it).
pub const MIN_PLANNING_QBER: f64 = 1e-4;

/// Highest QBER the default rule plans for (a higher estimate is lowered to it; beyond it
/// BB84 yields no key anyway).
pub const MAX_PLANNING_QBER: f64 = 0.25;

/// What the default rule optimises for. Both meet f ≤ 1.10 on 10⁵-bit frames at 1–5 %
/// QBER (see `reconcile_bench`); they trade disclosed bits against round trips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Fewest disclosed parities: passes of `k₁, 4k₁, 64k₁`; measured f ≈ 1.06–1.07 and
    /// 70–80 round trips per 10⁵-bit frame. Use with [`Profile::start_next_percent`] = 50.
    #[default]
    Efficient,
    /// Fewer round trips: passes of `k₁, 2k₁, 32k₁`; measured f ≈ 1.08–1.09 and about 50
    /// round trips. Use with [`Profile::start_next_percent`] = 20.
    FewRounds,
}

impl Profile {
    /// The corrector's [`start_next_percent`](super::CascadeOptions::start_next_percent)
    /// this profile was tuned with.
    pub fn start_next_percent(self) -> u16 {
        match self {
            Profile::Efficient => 50,
            Profile::FewRounds => 20,
        }
    }
}

/// How each pass's public permutation is built from the shared seed.
///
/// Both are deterministic expansions of the seed (see [`super`] for the exact recipe);
/// they differ in cost, not in what the protocol reveals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermutationKind {
    /// Word-level mixing: rotate every 64-bit word by a random amount, move bit plane `b`
    /// of every word `δ_b` words further (64 distinct random offsets), then permute the
    /// words at random. Any two bits land in independent, uniformly placed words, as with
    /// a full shuffle, at a fraction of the cost (tens of µs per pass for 10⁵ bits). The
    /// permuted order is `64·⌈n/64⌉` long; the padding bits beyond `n` are zero on both
    /// sides and never differ.
    #[default]
    WordSkew,
    /// A uniform Fisher–Yates shuffle of all `n` bit positions (about 10× slower per pass;
    /// kept as the reference the cheap kind was measured against).
    FisherYates,
}

impl PermutationKind {
    /// Length of the permuted order for an `n`-bit key.
    pub fn permuted_len(self, n: usize) -> usize {
        match self {
            PermutationKind::WordSkew => n.div_ceil(64) * 64,
            PermutationKind::FisherYates => n,
        }
    }
}

/// The passes of one Cascade run: one top-level block size per pass, and the kind of
/// permutation every pass uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schedule {
    /// Top-level block size of each pass, in bits of the permuted order. A size larger than
    /// the permuted length means one block. Each at least 2.
    pub block_sizes: Vec<u32>,
    /// How the per-pass permutations are built.
    pub permutation: PermutationKind,
}

impl Schedule {
    /// A schedule with the given block sizes and the default permutation kind.
    pub fn new(block_sizes: Vec<u32>) -> Self {
        Self { block_sizes, permutation: PermutationKind::default() }
    }

    /// The default schedule for an `n_bits` key whose error rate is estimated at `qber`
    /// (see the module docs for the rule). The estimate is clamped to
    /// [`MIN_PLANNING_QBER`]..=[`MAX_PLANNING_QBER`].
    ///
    /// # Errors
    /// If `qber` is not a finite number in `0..=0.5`, or `n_bits` is 0 or above
    /// [`MAX_BITS`].
    pub fn for_qber(qber: f64, n_bits: usize) -> Result<Self, ReconcileError> {
        Self::for_qber_with(qber, n_bits, PermutationKind::default())
    }

    /// [`Schedule::for_qber`] with an explicit permutation kind.
    ///
    /// # Errors
    /// As [`Schedule::for_qber`].
    pub fn for_qber_with(
        qber: f64,
        n_bits: usize,
        permutation: PermutationKind,
    ) -> Result<Self, ReconcileError> {
        Self::for_profile(qber, n_bits, permutation, Profile::Efficient)
    }

    /// The rule of the module docs for a [`Profile`].
    ///
    /// # Errors
    /// As [`Schedule::for_qber`].
    pub fn for_profile(
        qber: f64,
        n_bits: usize,
        permutation: PermutationKind,
        profile: Profile,
    ) -> Result<Self, ReconcileError> {
        if !qber.is_finite() || !(0.0..=0.5).contains(&qber) {
            return Err(ReconcileError::invalid("qber", format!("{qber} is not an error rate in 0..=0.5")));
        }
        check_len(n_bits)?;
        let q = qber.clamp(MIN_PLANNING_QBER, MAX_PLANNING_QBER);
        let n_perm = permutation.permuted_len(n_bits) as u64;
        // About 0.7 expected errors per first block at low QBER, rising to 1 at 5 %.
        let lambda = (0.7 + 10.0 * (q - 0.02)).clamp(0.7, 1.0);
        // At least 8 bits, and no more first-pass blocks than half the key length (tiny
        // keys, where padding would otherwise count).
        let floor = n_perm.div_ceil((n_bits as u64 / 2).max(1)).next_power_of_two();
        let k1 = pow2((lambda / q).log2().round().max(3.0)).max(floor).min(n_perm.max(2));
        let mut sizes = vec![k1];
        // With about one error per first block or more, a second block four times larger
        // holds so many errors that the cascade between the two takes long chains of round
        // trips; twice as large avoids that.
        let dense = q * k1 as f64 >= DENSE_FIRST_BLOCK;
        let (r2, r3) = match profile {
            Profile::Efficient => (if dense { 2 } else { 4 }, 64),
            Profile::FewRounds => (2, 32),
        };
        for k in [k1 * r2, k1 * r3] {
            if k < n_perm {
                sizes.push(k);
            }
        }
        // Confirmation passes: two blocks each; fewer for tiny keys, whose every disclosed
        // bit counts.
        let confirmations = if n_bits >= 512 {
            CONFIRMATION_PASSES
        } else {
            (n_bits.ilog2().saturating_sub(2) as usize).min(CONFIRMATION_PASSES)
        };
        let half = n_perm.div_ceil(2).max(2);
        sizes.extend(std::iter::repeat_n(half, confirmations));
        let block_sizes = sizes.into_iter().map(|k| k.clamp(2, u64::from(u32::MAX)) as u32).collect();
        Ok(Self { block_sizes, permutation })
    }

    /// Number of passes.
    pub fn passes(&self) -> usize {
        self.block_sizes.len()
    }

    /// Checks the schedule against a key of `n_bits` bits (used on values received from the
    /// peer).
    ///
    /// # Errors
    /// No passes or more than [`MAX_PASSES`], a block size below 2, or a bad key length.
    pub fn validate(&self, n_bits: usize) -> Result<(), ReconcileError> {
        check_len(n_bits)?;
        if self.block_sizes.is_empty() || self.block_sizes.len() > MAX_PASSES {
            return Err(ReconcileError::invalid(
                "schedule.block_sizes",
                format!("{} passes, expected 1..={MAX_PASSES}", self.block_sizes.len()),
            ));
        }
        if let Some(k) = self.block_sizes.iter().find(|&&k| k < 2) {
            return Err(ReconcileError::invalid("schedule.block_sizes", format!("block size {k} below 2")));
        }
        Ok(())
    }
}

/// The default block-size schedule for a QBER estimate and key length: what
/// [`Schedule::for_qber`] returns, as plain sizes, so a session can show or check it.
///
/// # Errors
/// As [`Schedule::for_qber`].
pub fn expected_schedule(qber: f64, n_bits: usize) -> Result<Vec<u32>, ReconcileError> {
    Schedule::for_qber(qber, n_bits).map(|s| s.block_sizes)
}

fn check_len(n_bits: usize) -> Result<(), ReconcileError> {
    if n_bits == 0 || n_bits > MAX_BITS {
        return Err(ReconcileError::invalid("n_bits", format!("{n_bits} bits, expected 1..={MAX_BITS}")));
    }
    Ok(())
}

fn pow2(e: f64) -> u64 {
    1u64 << (e as u32).min(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_shape() {
        let s = Schedule::for_qber(0.01, 100_000).unwrap();
        assert_eq!(s.passes(), 3 + CONFIRMATION_PASSES);
        assert_eq!(&s.block_sizes[..3], &[64, 256, 4096]);
        assert!(s.block_sizes[3..].iter().all(|&k| k == 50_016));
        assert_eq!(&Schedule::for_qber(0.02, 100_000).unwrap().block_sizes[..3], &[32, 128, 2048]);
        assert_eq!(&Schedule::for_qber(0.05, 100_000).unwrap().block_sizes[..3], &[16, 64, 1024]);
        let s = Schedule::for_qber_with(0.05, 100_000, PermutationKind::FisherYates).unwrap();
        assert_eq!(s.block_sizes[3], 50_000);
        s.validate(100_000).unwrap();
        // tiny keys: no pass that covers everything twice, few confirmations
        assert_eq!(Schedule::for_qber(0.05, 1).unwrap().block_sizes, vec![64]);
        assert_eq!(Schedule::for_qber(0.05, 63).unwrap().block_sizes, vec![16, 32, 32, 32]);
        assert_eq!(
            Schedule::for_qber_with(0.05, 1, PermutationKind::FisherYates).unwrap().block_sizes,
            vec![2]
        );
    }

    #[test]
    fn tiny_and_extreme_inputs() {
        for n in [1usize, 2, 63, 64, 65, 1000] {
            for q in [0.0, 1e-6, 0.01, 0.11, 0.5] {
                let s = Schedule::for_qber(q, n).unwrap();
                s.validate(n).unwrap();
            }
        }
        assert!(Schedule::for_qber(f64::NAN, 100).is_err());
        assert!(Schedule::for_qber(0.6, 100).is_err());
        assert!(Schedule::for_qber(0.01, 0).is_err());
        assert!(Schedule::new(vec![]).validate(10).is_err());
        assert!(Schedule::new(vec![1]).validate(10).is_err());
        assert!(Schedule::new(vec![8; MAX_PASSES + 1]).validate(10).is_err());
    }
}
