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
//! With `α = log2(1/Q)`, the rule (tuned on 10⁵-bit frames, see the crate's
//! `reconcile_bench` example) is:
//!
//! | pass | block size |
//! |---|---|
//! | 1 | `2^round(α − 0.5)`, at least 8 |
//! | 2 | `4 · k₁` |
//! | 3 | `8 · k₂`, at most `N/4` |
//! | 4 … 16 | `⌈N/2⌉` (confirmation) |
//!
//! where `N` is the permuted length (the key length rounded up to whole words for the
//! default [`PermutationKind::WordSkew`]).

use super::error::ReconcileError;
use serde::{Deserialize, Serialize};

/// Largest key accepted, in bits (node ids must fit a `u32`).
pub const MAX_BITS: usize = 1 << 27;

/// Most passes a schedule may have. It bounds the memory a peer's `CascadeStart` can make
/// the responder allocate (one permuted copy of its key per pass).
pub const MAX_PASSES: usize = 32;

/// Total passes of the default schedule.
pub const DEFAULT_PASSES: usize = 16;

/// Lowest QBER the default rule plans for (a lower estimate is raised to it).
pub const MIN_PLANNING_QBER: f64 = 1e-4;

/// Highest QBER the default rule plans for (a higher estimate is lowered to it; beyond it
/// BB84 yields no key anyway).
pub const MAX_PLANNING_QBER: f64 = 0.25;

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
    pub fn for_qber_with(qber: f64, n_bits: usize, permutation: PermutationKind) -> Result<Self, ReconcileError> {
        if !qber.is_finite() || !(0.0..=0.5).contains(&qber) {
            return Err(ReconcileError::invalid("qber", format!("{qber} is not an error rate in 0..=0.5")));
        }
        check_len(n_bits)?;
        let q = qber.clamp(MIN_PLANNING_QBER, MAX_PLANNING_QBER);
        let n_perm = permutation.permuted_len(n_bits) as u64;
        let alpha = (1.0 / q).log2();
        let k1 = pow2((alpha - 0.5).round().max(3.0));
        let k2 = k1 * 4;
        let k3 = (k2 * 8).min(pow2_floor(n_perm / 4)).max(k2);
        let half = n_perm.div_ceil(2).max(2);
        let mut sizes = vec![k1, k2, k3];
        sizes.resize(DEFAULT_PASSES, half);
        let block_sizes = sizes.into_iter().map(|k| k.clamp(2, half.max(2)) as u32).collect();
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

fn pow2_floor(x: u64) -> u64 {
    if x == 0 { 1 } else { 1 << (63 - x.leading_zeros()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_shape() {
        let s = Schedule::for_qber(0.01, 100_000).unwrap();
        assert_eq!(s.passes(), DEFAULT_PASSES);
        assert_eq!(&s.block_sizes[..3], &[128, 512, 4096]);
        assert!(s.block_sizes[3..].iter().all(|&k| k == 50_016));
        let s = Schedule::for_qber(0.05, 100_000).unwrap();
        assert_eq!(s.block_sizes[0], 16);
        s.validate(100_000).unwrap();
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
