//! Typed reasons for every refusal, sorted by blame.

use crate::frame::{Class, FrameError};

/// Why a frame was refused or could not be produced. `Display` gives a loggable line (no
/// key bytes, ever). No variant leads to unauthenticated traffic: the caller drops the
/// frame (or does not send one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    // --- the peer or the network (possibly an attacker) ---
    /// Not a well-formed frame.
    #[error("malformed frame: {0}")]
    Malformed(#[from] FrameError),
    /// The tag does not verify: a forgery or corruption. The batch's hash key is retired.
    #[error("authentication tag refused (frame seq {seq}, batch {batch}); hash key retired")]
    BadTag {
        /// Sequence number claimed by the frame.
        seq: u64,
        /// Batch claimed by the frame.
        batch: u64,
    },
    /// A sequence number already accepted, or older than the replay window.
    #[error("replayed or too old: seq {seq} (highest accepted {highest})")]
    Replay {
        /// The frame's sequence number.
        seq: u64,
        /// Highest accepted so far.
        highest: u64,
    },
    /// A command older than the freshness deadline.
    #[error("stale command: seq {seq} is {age_ms} ms old (deadline {deadline_ms} ms)")]
    Stale {
        /// The frame's sequence number.
        seq: u64,
        /// Estimated age in ms.
        age_ms: u64,
        /// Configured deadline.
        deadline_ms: u64,
    },
    /// A response for a request that is not outstanding (unknown, answered, or expired).
    #[error("no outstanding request {request_seq}")]
    NoOutstandingRequest {
        /// The request it claims to answer.
        request_seq: u64,
    },
    /// A frame for another device.
    #[error("frame for device {got}, this end serves device {expected}")]
    WrongDevice {
        /// Device in the frame.
        got: u32,
        /// This end's device.
        expected: u32,
    },
    /// A response where a request was expected, or the reverse.
    #[error("unexpected frame kind (expected a {expected})")]
    WrongKind {
        /// What this call accepts.
        expected: &'static str,
    },
    /// The tag length does not match the class policy (commands need 128 bits).
    #[error("{class} frame with a {got}-byte tag, policy requires {expected}")]
    TagPolicy {
        /// Claimed class.
        class: Class,
        /// Tag length in the frame.
        got: usize,
        /// Tag length the policy requires.
        expected: usize,
    },
    /// The payload's own classification (e.g. a Modbus write) needs a stronger class
    /// than the frame claims.
    #[error("payload classified as {classified}, frame claims {claimed}")]
    ClassMismatch {
        /// Class claimed by the frame.
        claimed: Class,
        /// Class of the payload per the classifier.
        classified: Class,
    },
    /// A batch this end has retired or already passed (a replay of an old batch, or the
    /// peer has not yet noticed a retirement).
    #[error("batch {batch} is retired or already used")]
    BatchRetired {
        /// The batch named.
        batch: u64,
    },
    /// A frame under a batch this end has not mirrored, without a descriptor.
    #[error("unknown batch {batch}")]
    UnknownBatch {
        /// The batch named.
        batch: u64,
    },
    /// The frame names a batch too far ahead, with another length than configured, or a
    /// descriptor that disagrees with the mirrored batch.
    #[error("bad batch reference: {0}")]
    BatchReference(String),
    /// The frame's pads overlap pads already used in its batch.
    #[error("pad reuse at offset {offset} of batch {batch}")]
    PadReuse {
        /// Batch.
        batch: u64,
        /// Pad offset claimed.
        offset: u32,
    },
    /// The hash key taken from the pool is degenerate (all zero); the batch is retired.
    #[error("degenerate hash key in batch {batch}; batch retired")]
    WeakKey {
        /// The batch.
        batch: u64,
    },

    // --- resources (fail closed) ---
    /// Command refused: pads below the low-water mark (policy `Refuse`). Alarm raised.
    #[error("command refused: {remaining} pad bytes left, low-water mark {low_water}")]
    PoolLow {
        /// Pad bytes left (pool + current batch).
        remaining: u64,
        /// The mark.
        low_water: u64,
    },
    /// Command held: pads below the low-water mark (policy `Hold`); retry after refill.
    #[error("command held: {remaining} pad bytes left, low-water mark {low_water}")]
    Held {
        /// Pad bytes left (pool + current batch).
        remaining: u64,
        /// The mark.
        low_water: u64,
    },
    /// The pool cannot serve a batch. Alarm raised.
    #[error("key pool exhausted: {requested} bytes needed, {available} left")]
    PoolExhausted {
        /// Bytes requested.
        requested: u64,
        /// Bytes available.
        available: u64,
    },
    /// The two ends' pools disagree (mirroring refused). Alarm raised; needs operator
    /// action (pool sync).
    #[error("key pools diverged: {0}")]
    PoolDiverged(String),
    /// The key store failed; nothing was sent or accepted.
    #[error("key store failed: {0}")]
    Store(String),
    /// Too many requests awaiting a response.
    #[error("too many outstanding requests ({0})")]
    TooManyOutstanding(usize),

    // --- the caller ---
    /// Invalid configuration (names the field).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Payload longer than [`crate::frame::MAX_PAYLOAD_LEN`].
    #[error("payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Length given.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// A response class stronger than the request's (its pad was reserved for the
    /// request's tag length).
    #[error("response class {response} needs a longer tag than the {request} request reserved")]
    ResponseClass {
        /// The request's class.
        request: Class,
        /// The response's class.
        response: Class,
    },
}

impl AuthError {
    /// A short stable code per variant (counters, metrics labels, logs).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed",
            AuthError::BadTag { .. } => "bad_tag",
            AuthError::Replay { .. } => "replay",
            AuthError::Stale { .. } => "stale",
            AuthError::NoOutstandingRequest { .. } => "no_outstanding_request",
            AuthError::WrongDevice { .. } => "wrong_device",
            AuthError::WrongKind { .. } => "wrong_kind",
            AuthError::TagPolicy { .. } => "tag_policy",
            AuthError::ClassMismatch { .. } => "class_mismatch",
            AuthError::BatchRetired { .. } => "batch_retired",
            AuthError::UnknownBatch { .. } => "unknown_batch",
            AuthError::BatchReference(_) => "batch_reference",
            AuthError::PadReuse { .. } => "pad_reuse",
            AuthError::WeakKey { .. } => "weak_key",
            AuthError::PoolLow { .. } => "pool_low",
            AuthError::Held { .. } => "held",
            AuthError::PoolExhausted { .. } => "pool_exhausted",
            AuthError::PoolDiverged(_) => "pool_diverged",
            AuthError::Store(_) => "store",
            AuthError::TooManyOutstanding(_) => "too_many_outstanding",
            AuthError::Config(_) => "config",
            AuthError::PayloadTooLarge { .. } => "payload_too_large",
            AuthError::ResponseClass { .. } => "response_class",
        }
    }

    /// Whether the peer (or whoever is on the link) is to blame, as opposed to local
    /// resources or the caller.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            AuthError::Malformed(_)
                | AuthError::BadTag { .. }
                | AuthError::Replay { .. }
                | AuthError::Stale { .. }
                | AuthError::NoOutstandingRequest { .. }
                | AuthError::WrongDevice { .. }
                | AuthError::WrongKind { .. }
                | AuthError::TagPolicy { .. }
                | AuthError::ClassMismatch { .. }
                | AuthError::BatchRetired { .. }
                | AuthError::UnknownBatch { .. }
                | AuthError::BatchReference(_)
                | AuthError::PadReuse { .. }
        )
    }
}
