//! The one error type of reconciliation.

use crate::error::InvalidInput;

/// Why a reconciliation step was refused.
///
/// Messages come from the peer before the phase transcript is authenticated, so every
/// field of every message is checked; anything wrong gives one of these, never a panic.
/// A rejected *message* changes no state (nothing is answered, nothing is counted), so a
/// session may drop it and carry on, or abort; [`ReconcileError::Inconsistent`] and the
/// limits are final for the run. No variant carries key bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// A parameter or message field is out of range or malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// A message arrived that the state machine does not expect now.
    #[error("unexpected `{got}` message while {state}")]
    Unexpected {
        /// The message kind received.
        got: &'static str,
        /// What the state machine was doing.
        state: &'static str,
    },
    /// Answering would disclose more parity bits than the limit allows (by default the key
    /// length: beyond it no key can be left).
    #[error("leakage limit: {requested} parity bits requested, {limit} allowed")]
    LeakageLimit {
        /// Bits disclosed so far plus the bits requested.
        requested: u64,
        /// The limit.
        limit: u64,
    },
    /// The corrector would need more round trips than its limit.
    #[error("round-trip limit of {limit} reached")]
    RoundLimit {
        /// The limit.
        limit: u32,
    },
    /// The answers contradict each other (a dishonest or broken peer): e.g. a bisection
    /// ends on a padding bit, or on a bit already corrected once.
    #[error("inconsistent parity answers: {0}")]
    Inconsistent(&'static str),
    /// The two ends counted different leakage.
    #[error("leakage mismatch: corrector counted {corrector} bits, responder {responder}")]
    LeakageMismatch {
        /// The corrector's count (from its `Done`).
        corrector: u64,
        /// The responder's own count.
        responder: u64,
    },
    /// The result was asked for before the protocol finished.
    #[error("reconciliation has not finished")]
    NotFinished,
}

impl ReconcileError {
    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid(InvalidInput::new(field, reason))
    }
}
