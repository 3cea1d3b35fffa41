//! Counters and levels of one end, for `sensor-auth status`, metrics and logs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The control station (deciding end).
    #[default]
    Control,
    /// The field device (mirroring end).
    Field,
}

/// Why the alarm is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alarm {
    /// Pads below the low-water mark.
    LowWater,
    /// The pool could not serve a batch.
    Exhausted,
    /// The two ends' pools disagree.
    PoolDiverged,
    /// The key store failed.
    Store,
}

/// A snapshot of one end. Contains no key bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Control or field.
    pub role: Role,
    /// Device served.
    pub device: u32,
    /// Frames this end produced.
    pub frames_sealed: u64,
    /// Frames this end accepted.
    pub frames_opened: u64,
    /// Refusals by reason ([`crate::AuthError::code`]).
    pub rejected: BTreeMap<String, u64>,
    /// Pad bytes assigned to frames (a request's two pads: its own and its response's).
    pub pad_bytes_used: u64,
    /// Bytes this end took from its pool (batches: hash keys, pads, unused rests, skips).
    pub batch_bytes_taken: u64,
    /// Batches (hash keys) taken.
    pub batches: u64,
    /// Batches the field end skipped (reserved by the control end and never used).
    pub batches_skipped: u64,
    /// Batches retired because a tag failed under their hash key.
    pub retired_after_forgery: u64,
    /// The batch new frames use, if any.
    pub current_batch: Option<u64>,
    /// Unused bytes left in the current batch.
    pub batch_remaining_bytes: u64,
    /// Unused bytes left in the pool.
    pub pool_remaining_bytes: u64,
    /// Σ over every tag verification of its per-attempt forgery bound at the verified
    /// message's length: (⌈L/16⌉ + 1)/2^t for GF(2^128) `t`-bit tags, 8⌈L/16⌉/2^106 for
    /// Poly1305 (`qkd::mac::MacFamily::forgery_bound`). Union bound over attempts.
    pub forgery_bound_total: f64,
    /// The same sum with every attempt charged at the longest admissible frame (a forger
    /// may substitute a longer message than the one sent).
    pub forgery_bound_worst_case: f64,
    /// Tag verifications performed (accepted and refused).
    pub verifications: u64,
    /// Requests awaiting a response (control) or a sealed response (field).
    pub outstanding: usize,
    /// The alarm, if raised.
    pub alarm: Option<Alarm>,
}
