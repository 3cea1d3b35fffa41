//! The slot scheduler: a pure function from per-ONU demand to the next slot map.
//!
//! The OLT calls [`schedule`] once per scheduling period (DESIGN.md §5: 1 s = 8 000 frames
//! of 125 µs) with, for every known ONU, an [`OnuDemand`]: whether it is active (joined,
//! ranged, authenticated — see [`crate::activation`]), its *deficit* (target pool level
//! minus current level, in bits) and its *quality* `q_k` (secret bits per owned gate,
//! smoothed with a [`QualityEstimate`]; for an ONU without history the caller passes a prior
//! from its loss budget, e.g. from [`quality_prior`]). The result is a new map and a flag
//! telling whether it differs from the previous one: the OLT sends only changed maps.
//!
//! # Policy
//!
//! Every active ONU gets exactly **one contiguous slot per frame**, of at least
//! `min_slot` gates, followed by `guard` guard gates. The *budget* of gates to share is
//! `frame_len − n·guard` for `n` active ONUs; an ONU holding `g_k` gates per frame makes key
//! at rate `r_k = q_k·g_k` bits per frame.
//!
//! - [`Policy::MaxMinFair`] (the default) maximises the smallest key rate: it equalises
//!   rates, `g_k ∝ 1/q_k`, by *water-filling* on a common rate level `r` with `g_k(r) =
//!   clamp(r/q_k, min_slot, need_k)`:
//!   - `need_k` is what ONU `k` needs to clear its deficit within one period,
//!     `deficit_k / (q_k · frames_per_period)` gates per frame (at least `min_slot`; an ONU
//!     whose pool is at or above target needs only `min_slot`). Nobody is given gates beyond
//!     its need while another ONU still needs more.
//!   - If every need is met and gates are left over, the rest is again shared max-min
//!     fairly (`g_k(r) = max(need_k, r/q_k)`): gates are never left idle on purpose, since
//!     the pools keep being drawn from.
//!   - Quality is floored at `min_relative_quality` × the best active ONU's quality, so an
//!     ONU that makes (almost) no key — attacked, or far beyond the loss budget — gets at
//!     most `1/min_relative_quality` times the best ONU's gates instead of the whole frame.
//!     (The OLT's monitor deactivates an ONU under attack; this bound only limits the damage
//!     until it does.)
//! - [`Policy::EqualGates`] gives every active ONU the same number of gates, ignoring
//!   deficits and qualities.
//!
//! **Rounding.** Real-valued shares are rounded *down*; the remainder (fewer gates than
//! active ONUs) stays idle at the end of the frame. Rounding down keeps the allocation
//! monotone (see below), which largest-remainder rounding would not (the Alabama paradox).
//!
//! **Layout.** Slots are laid out from offset 0, each followed by its guard; idle gates sit
//! at the end of the frame, after the last guard. So the guard before the frame boundary
//! is always in place and any two maps from this scheduler can follow each other (the
//! switch-over check of [`crate::SlotMapSchedule::insert`] passes). ONUs keep their order:
//! ONUs of the previous map keep their relative order; ONUs new to the map are appended
//! in order of [`OnuId`]. The result depends only on the set of demands, not their order.
//!
//! **Joining and leaving "without disturbing the others".** When an ONU leaves (or is
//! lost) and the others' deficits and qualities are unchanged, every remaining ONU keeps
//! **at least as many gates as before** and the **same relative order** in the frame; the
//! leaver's gates and guard are shared among them. (Proof sketch: with fewer ONUs the
//! budget only grows, each `g_k(r)` is non-decreasing in `r`, so the water level — and each
//! share — can only rise; rounding down preserves that.) One exception: the quality floor
//! follows the best ONU, so if the leaver was the best and another ONU sat at the floor,
//! the floor drops and that ONU may grow at the others' expense. A joining ONU gets a slot of at
//! least `min_slot` gates at the end of the order; the others shrink as little as the
//! policy allows. Slot *positions* do shift when a share before them changes size; an ONU
//! learns its new position from the map, which applies from a common frame at both ends.
//!
//! **Hysteresis.** Qualities fluctuate from period to period. When the active set and order
//! are unchanged and every ONU's new share is within `hysteresis` (relative) of its old
//! one, the previous map is kept (`changed = false`), so the OLT does not re-send a map
//! every period for a few gates.
//!
//! [`schedule`] is deterministic and does bounded work: O(n log n) for n ONUs plus a fixed
//! number (128) of bisection steps of O(n) each.

use serde::{Deserialize, Serialize};

use crate::slot_map::{OnuId, Slot, SlotMap, SlotMapError};

/// How the frame is shared; see the module doc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Equalise key rates (gates ∝ 1/quality), water-filling on deficits.
    #[default]
    MaxMinFair,
    /// The same number of gates for every active ONU.
    EqualGates,
}

/// Scheduler settings (DESIGN.md §5 defaults in [`Default`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Gates per frame (125 000: 125 µs at 1 GHz).
    pub frame_len: u32,
    /// Guard gates after every slot: at least the detectors' dead time plus afterpulse
    /// window ([`SchedulerConfig::guard_for`]).
    pub guard: u32,
    /// Smallest slot an active ONU gets, in gates.
    pub min_slot: u32,
    /// Frames per scheduling period (8 000: 1 s of 125 µs frames); converts a deficit in
    /// bits into a need in gates per frame.
    pub frames_per_period: u64,
    /// The sharing policy.
    pub policy: Policy,
    /// Floor on an ONU's quality relative to the best active ONU's, in `(0, 1]`.
    pub min_relative_quality: f64,
    /// Relative change of every share below which the previous map is kept, in `[0, 1)`.
    pub hysteresis: f64,
}

impl SchedulerConfig {
    /// The guard a detector needs: its dead time plus its afterpulse window, in gates.
    pub const fn guard_for(dead_time: u32, afterpulse_window: u32) -> u32 {
        dead_time.saturating_add(afterpulse_window)
    }

    /// The first frame after `frame` at which a scheduling period starts (periods start at
    /// multiples of `frames_per_period`): when the OLT should call [`schedule`] next.
    pub fn next_period_frame(&self, frame: u64) -> u64 {
        let p = self.frames_per_period.max(1);
        (frame / p).saturating_add(1).saturating_mul(p)
    }

    /// Most ONUs one frame can hold (each with `min_slot` gates and a guard).
    pub fn max_onus(&self) -> usize {
        (self.frame_len as u64 / (self.min_slot as u64 + self.guard as u64).max(1)) as usize
    }

    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let bad =
            |field: &'static str, reason: &'static str| Err(SchedulerError::InvalidConfig { field, reason });
        if self.frame_len == 0 {
            return bad("frame_len", "must be at least 1");
        }
        if self.min_slot == 0 {
            return bad("min_slot", "must be at least 1");
        }
        if self.min_slot as u64 + self.guard as u64 > self.frame_len as u64 {
            return bad("min_slot", "min_slot + guard must fit in the frame");
        }
        if self.frames_per_period == 0 {
            return bad("frames_per_period", "must be at least 1");
        }
        if !(self.min_relative_quality > 0.0 && self.min_relative_quality <= 1.0) {
            return bad("min_relative_quality", "must be in (0, 1]");
        }
        if !(0.0..1.0).contains(&self.hysteresis) {
            return bad("hysteresis", "must be in [0, 1)");
        }
        Ok(())
    }
}

impl Default for SchedulerConfig {
    /// 125 000-gate frames, guard 60 (the `apd` profile: dead time 10 + afterpulse window
    /// 50; `snspd` needs 40), slots of at least 100 gates, 8 000 frames per 1 s period,
    /// max-min fair, quality floor 0.1 × the best, 2 % hysteresis.
    fn default() -> Self {
        Self {
            frame_len: 125_000,
            guard: Self::guard_for(10, 50),
            min_slot: 100,
            frames_per_period: 8_000,
            policy: Policy::MaxMinFair,
            min_relative_quality: 0.1,
            hysteresis: 0.02,
        }
    }
}

/// One ONU's input to a scheduling round.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnuDemand {
    /// The ONU.
    pub onu: OnuId,
    /// Whether it may own slots (authenticated and present). Inactive ONUs get none.
    pub active: bool,
    /// Target pool level minus current level, in bits (≤ 0: the pool is full enough).
    pub deficit_bits: f64,
    /// Secret bits per owned gate (smoothed, or a prior), ≥ 0.
    pub quality: f64,
}

/// Why scheduling failed. Nothing is changed on error: keep the previous map.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// A configuration field is out of range.
    #[error("invalid scheduler config `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A demand with a NaN or infinite deficit, or a negative or non-finite quality.
    #[error("invalid demand for {onu}: `{field}` must be finite (and quality ≥ 0)")]
    InvalidDemand {
        /// The ONU.
        onu: OnuId,
        /// The field.
        field: &'static str,
    },
    /// The same ONU twice in one round.
    #[error("{0} appears twice in the demands")]
    DuplicateOnu(OnuId),
    /// More active ONUs than the frame can hold.
    #[error("{active} active ONUs exceed the {max} a frame can hold")]
    TooManyOnus {
        /// Active ONUs asked for.
        active: usize,
        /// [`SchedulerConfig::max_onus`].
        max: usize,
    },
    /// The previous map has another frame length than the configuration.
    #[error("previous map has {got} gates per frame, the configuration {expected}")]
    FrameLenMismatch {
        /// The configuration's frame length.
        expected: u32,
        /// The previous map's.
        got: u32,
    },
    /// A changed map must apply after the previous map's first frame.
    #[error(
        "new map would apply from frame {apply_from}, not after the previous map's frame {previous_from}"
    )]
    ApplyFrameTooEarly {
        /// Requested first frame.
        apply_from: u64,
        /// The previous map's first frame.
        previous_from: u64,
    },
    /// The previous map's version is `u32::MAX`.
    #[error("slot map versions exhausted")]
    VersionExhausted,
    /// The computed layout broke a map invariant (a bug in the scheduler).
    #[error("scheduler produced an invalid map: {0}")]
    Layout(SlotMapError),
}

/// The result of one scheduling round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleOutcome {
    /// The map to use from now on: the previous one when nothing changed, otherwise a new
    /// map with the next version, applying from the requested frame.
    pub map: SlotMap,
    /// Whether `map` differs from the previous map (and must be sent to the ONUs).
    pub changed: bool,
}

/// One scheduling round (see the module doc for the policy).
///
/// `previous` is the latest map (also the one the OLT's schedule ends with);
/// `apply_from_frame` is the frame from which a changed map applies — far enough ahead
/// for the message to reach every ONU. ONUs absent from `demands` count as inactive.
pub fn schedule(
    config: &SchedulerConfig,
    previous: &SlotMap,
    demands: &[OnuDemand],
    apply_from_frame: u64,
) -> Result<ScheduleOutcome, SchedulerError> {
    config.validate()?;
    if previous.frame_len() != config.frame_len {
        return Err(SchedulerError::FrameLenMismatch {
            expected: config.frame_len,
            got: previous.frame_len(),
        });
    }
    let active = ordered_active(previous, demands)?;
    let max = config.max_onus();
    if active.len() > max {
        return Err(SchedulerError::TooManyOnus { active: active.len(), max });
    }
    let gates = allocate(config, &active);
    let unchanged = previous.guard() == config.guard
        && previous.owners().iter().eq(active.iter().map(|d| &d.onu))
        && active.iter().zip(&gates).all(|(d, &g)| {
            let old = previous.owned_gates(d.onu) as f64;
            (g as f64 - old).abs() <= config.hysteresis * old
        });
    if unchanged {
        return Ok(ScheduleOutcome { map: previous.clone(), changed: false });
    }
    let mut slots = Vec::with_capacity(active.len());
    let mut pos = 0u32;
    for (d, &g) in active.iter().zip(&gates) {
        // allocate() keeps Σ gates ≤ frame_len − n·guard, so none of this overflows.
        let len = g as u32;
        slots.push(Slot { start: pos, len, owner: d.onu });
        pos += len + config.guard;
    }
    let layout = SlotMap::new(config.frame_len, config.guard, 0, 0, slots).map_err(SchedulerError::Layout)?;
    if layout.same_layout(previous) {
        return Ok(ScheduleOutcome { map: previous.clone(), changed: false });
    }
    if apply_from_frame <= previous.active_from_frame() {
        return Err(SchedulerError::ApplyFrameTooEarly {
            apply_from: apply_from_frame,
            previous_from: previous.active_from_frame(),
        });
    }
    let version = previous.version().checked_add(1).ok_or(SchedulerError::VersionExhausted)?;
    Ok(ScheduleOutcome { map: layout.with_activation(version, apply_from_frame), changed: true })
}

/// The active demands in layout order: previous map's owners first (their order), then the
/// newcomers by id. Checks every demand.
fn ordered_active(previous: &SlotMap, demands: &[OnuDemand]) -> Result<Vec<OnuDemand>, SchedulerError> {
    let mut sorted: Vec<OnuDemand> = demands.to_vec();
    sorted.sort_by_key(|d| d.onu);
    for w in sorted.windows(2) {
        if w[0].onu == w[1].onu {
            return Err(SchedulerError::DuplicateOnu(w[0].onu));
        }
    }
    for d in &sorted {
        if !d.deficit_bits.is_finite() {
            return Err(SchedulerError::InvalidDemand { onu: d.onu, field: "deficit_bits" });
        }
        if !(d.quality.is_finite() && d.quality >= 0.0) {
            return Err(SchedulerError::InvalidDemand { onu: d.onu, field: "quality" });
        }
    }
    sorted.retain(|d| d.active);
    let find = |onu: OnuId| sorted.binary_search_by_key(&onu, |d| d.onu).ok().map(|i| sorted[i]);
    let mut out: Vec<OnuDemand> = previous.owners().into_iter().filter_map(find).collect();
    for d in &sorted {
        if !previous.has_owner(d.onu) {
            out.push(*d);
        }
    }
    Ok(out)
}

/// Gates per frame for each of `active` (in order); see the module doc. The sum is at
/// most `frame_len − n·guard`, each entry at least `min_slot`.
fn allocate(config: &SchedulerConfig, active: &[OnuDemand]) -> Vec<u64> {
    let n = active.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let budget = config.frame_len as u64 - n * config.guard as u64;
    let floor = config.min_slot as f64;
    if config.policy == Policy::EqualGates {
        return vec![budget / n; active.len()];
    }
    let best = active.iter().map(|d| d.quality).fold(0.0, f64::max);
    // With no quality information at all, every ONU counts the same.
    let q: Vec<f64> = if best > 0.0 {
        active.iter().map(|d| d.quality.max(config.min_relative_quality * best) / best).collect()
    } else {
        vec![1.0; active.len()]
    };
    let budget_f = budget as f64;
    // Gates per frame that clear the deficit within one period, within [min_slot, budget].
    // Quality is normalised to the best ONU; only ratios matter for the shares, but the
    // need uses the real quality (the same floor applied).
    let need: Vec<f64> = active
        .iter()
        .zip(&q)
        .map(|(d, &qn)| {
            let real_q = if best > 0.0 { qn * best } else { 0.0 };
            let need = if d.deficit_bits <= 0.0 {
                floor
            } else if real_q > 0.0 {
                (d.deficit_bits / (real_q * config.frames_per_period as f64)).ceil()
            } else {
                budget_f
            };
            need.clamp(floor, budget_f.max(floor))
        })
        .collect();
    let total_need: f64 = need.iter().sum();
    let shares: Vec<f64> = if total_need >= budget_f {
        // Phase 1: water-fill up to each ONU's need.
        let level =
            water_level(budget_f, |r| q.iter().zip(&need).map(|(&qk, &nk)| (r / qk).clamp(floor, nk)).sum());
        q.iter().zip(&need).map(|(&qk, &nk)| (level / qk).clamp(floor, nk)).collect()
    } else {
        // Phase 2: every need met; share the rest max-min fairly on top.
        let level = water_level(budget_f, |r| q.iter().zip(&need).map(|(&qk, &nk)| (r / qk).max(nk)).sum());
        q.iter().zip(&need).map(|(&qk, &nk)| (level / qk).max(nk)).collect()
    };
    let mut gates: Vec<u64> =
        shares.iter().map(|&s| (s.floor() as u64).max(config.min_slot as u64)).collect();
    // Defensive: floating-point error can never push the sum over the budget by a whole
    // gate, but if it did, take it from the largest shares (never below min_slot).
    let mut excess = gates.iter().sum::<u64>().saturating_sub(budget);
    while excess > 0 {
        let (i, _) = gates.iter().enumerate().max_by_key(|&(i, &g)| (g, usize::MAX - i)).expect("n > 0");
        if gates[i] <= config.min_slot as u64 {
            break;
        }
        gates[i] -= 1;
        excess -= 1;
    }
    gates
}

/// The largest level `r` (to within float precision) with `total(r) ≤ budget`, for a
/// non-decreasing `total` with `total(0) ≤ budget`: bisection, a fixed 128 steps at most.
fn water_level(budget: f64, total: impl Fn(f64) -> f64) -> f64 {
    // Normalised qualities are ≤ 1, so r = budget puts every ONU at ≥ budget gates.
    let (mut lo, mut hi) = (0.0f64, budget.max(1.0));
    for _ in 0..128 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if total(mid) <= budget {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A smoothed estimate of an ONU's quality (secret bits per owned gate).
///
/// Start from a prior (e.g. [`quality_prior`]); feed it, whenever key is made, the secret
/// bits and the gates the ONU owned while they were produced — typically once per
/// finished block, with the gates owned since the previous block. The estimate is an
/// exponentially weighted moving average with weight `alpha` on the newest sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityEstimate {
    value: f64,
    alpha: f64,
}

impl QualityEstimate {
    /// Starts at `prior` bits per gate, with smoothing weight `alpha` in `(0, 1]`.
    ///
    /// # Panics
    /// If `prior` is negative or not finite, or `alpha` is outside `(0, 1]` (caller misuse).
    pub fn new(prior: f64, alpha: f64) -> Self {
        assert!(prior.is_finite() && prior >= 0.0, "quality prior {prior}");
        assert!(alpha > 0.0 && alpha <= 1.0, "smoothing weight {alpha}");
        Self { value: prior, alpha }
    }

    /// Current estimate, in secret bits per owned gate.
    pub const fn value(&self) -> f64 {
        self.value
    }

    /// Folds in `secret_bits` made from `owned_gates` gates. Zero gates carry no
    /// information and are ignored; a negative or non-finite bit count is ignored too.
    pub fn observe(&mut self, secret_bits: f64, owned_gates: u64) {
        if owned_gates == 0 || !(secret_bits.is_finite() && secret_bits >= 0.0) {
            return;
        }
        let sample = secret_bits / owned_gates as f64;
        self.value += self.alpha * (sample - self.value);
    }
}

/// A quality prior for an ONU whose loss budget is `loss_db`, scaled from a reference ONU
/// of quality `reference_quality` at `reference_loss_db`: proportional to the channel
/// transmittance, which is how decoy-state BB84's key rate scales in the loss-limited
/// regime (it underestimates the penalty close to the maximum loss).
pub fn quality_prior(reference_quality: f64, reference_loss_db: f64, loss_db: f64) -> f64 {
    reference_quality * 10f64.powf(-(loss_db - reference_loss_db) / 10.0)
}

#[cfg(test)]
mod tests;
