//! Configuration shared by both ends (both must use the same values, except `low_water*`
//! which only the control end applies).

use qpon_qkd::mac::{GF128_MAX_TAG_BITS, GF128_MIN_TAG_BITS, MacFamily};
use serde::{Deserialize, Serialize};

use crate::frame::{Class, MAX_TAG_LEN};

/// What the control end does with a command when the pads left (pool + current batch)
/// are below the low-water mark. Either way the alarm is raised and no frame is produced;
/// nothing is ever sent unauthenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowWaterPolicy {
    /// Refuse the command ([`crate::AuthError::PoolLow`]).
    #[default]
    Refuse,
    /// Tell the caller to hold the command and retry once the pool has been refilled
    /// ([`crate::AuthError::Held`]).
    Hold,
}

/// The universal-hash family of the Wegman–Carter tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashFamily {
    /// POLYVAL over GF(2^128) with a length block (CLMUL); readings may be truncated.
    /// The default: fastest with a hash key recycled per batch (see `bench`).
    #[default]
    Gf128,
    /// Poly1305 with a one-time `s`; never truncated, so readings use 128-bit tags too.
    Poly1305,
}

/// Configuration of one end of a device's authenticated stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndConfig {
    /// The field device this stream belongs to (carried in every frame). Default 1.
    pub device: u32,
    /// Hash family. Default [`HashFamily::Gf128`].
    pub family: HashFamily,
    /// Tag length of [`Class::Reading`] frames in bits: a multiple of 8 in 32..=128, only
    /// with [`HashFamily::Gf128`] (Poly1305 is never truncated: a truncated Poly1305 tag
    /// loses 2^(128−t), CRATES.md). Per-attempt forgery bound (⌈L/16⌉ + 1)/2^t. Default 64.
    pub reading_tag_bits: u32,
    /// Bytes reserved from the pool per batch (one durable store commit each): a 16-byte
    /// hash key followed by pads. A request uses two pads of its tag length (its own and
    /// its response's): 32 bytes for a command, 2·t/8 for a reading. Default 4096.
    pub batch_bytes: usize,
    /// Low-water mark in bytes (unused pool + rest of the current batch); below it the
    /// alarm is raised and commands follow [`Self::low_water`]. Default 16384.
    pub low_water_bytes: u64,
    /// What to do with commands below the low-water mark. Default `Refuse`.
    pub low_water: LowWaterPolicy,
    /// A command older than this on arrival is refused (see the crate docs on clocks). In
    /// ms; default 2000.
    pub command_deadline_ms: u64,
    /// Replay window in sequence numbers at the field end: a multiple of 64 in 64..=4096.
    /// Default 128.
    pub replay_window: u32,
    /// Requests awaiting a response (control end) or a sealed response (field end) at
    /// most. Default 64.
    pub max_outstanding: usize,
    /// The control end forgets a request with no response after this long (ms) and moves
    /// to a new batch (see `ControlEnd::expire`). Default 5000.
    pub response_timeout_ms: u64,
    /// The field end mirrors at most this many batches the control end reserved but
    /// never used (lost at a control crash, or opened while the link was down) before the
    /// one a frame names, plus one per `response_timeout_ms` it has heard nothing. It
    /// bounds the key a forged frame can make the field end skip. Default 4.
    pub max_batch_skip: u32,
    /// Cap on the silence part of the skip allowance (batches). A forged frame can make
    /// the field end skip at most `max_batch_skip + max_silence_skip` batches, and only
    /// after that many `response_timeout_ms` without an accepted request; the control end
    /// opens at most one batch per [`crate::UNACKED_TIMEOUTS`] timeouts while unanswered,
    /// so the default covers an outage of about an hour with continuous polling.
    /// Default 240.
    pub max_silence_skip: u32,
    /// If the two clocks are synchronised (GPS, PTP) to within this many ms, the field end
    /// also checks a command's timestamp against its own clock. Default `None`.
    pub max_clock_skew_ms: Option<u64>,
    /// Largest relative drift of the two clocks, in parts per million, that the learned
    /// clock offset follows. Default 200.
    pub clock_drift_ppm: u32,
}

impl Default for EndConfig {
    fn default() -> Self {
        Self {
            device: 1,
            family: HashFamily::Gf128,
            reading_tag_bits: 64,
            batch_bytes: 4096,
            low_water_bytes: 16384,
            low_water: LowWaterPolicy::Refuse,
            command_deadline_ms: 2000,
            replay_window: 128,
            max_outstanding: 64,
            response_timeout_ms: 5000,
            max_batch_skip: 4,
            max_silence_skip: 240,
            max_clock_skew_ms: None,
            clock_drift_ppm: 200,
        }
    }
}

/// Largest batch: sequence numbers are `batch << 32 | n`, and a batch holds fewer than
/// 2^31 requests (each takes at least 8 bytes).
pub const MAX_BATCH_BYTES: usize = 1 << 31;

impl EndConfig {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.reading_tag_bits;
        if !(GF128_MIN_TAG_BITS..=GF128_MAX_TAG_BITS).contains(&t) || !t.is_multiple_of(8) {
            return Err(format!("reading_tag_bits = {t}: need a multiple of 8 in 32..=128"));
        }
        if self.family == HashFamily::Poly1305 && t != 128 {
            return Err(format!("reading_tag_bits = {t}: Poly1305 tags are never truncated, use 128"));
        }
        if self.batch_bytes < crate::batch::HASH_KEY_LEN + 2 * MAX_TAG_LEN
            || self.batch_bytes > MAX_BATCH_BYTES
        {
            return Err(format!(
                "batch_bytes = {}: need {}..={MAX_BATCH_BYTES}",
                self.batch_bytes,
                crate::batch::HASH_KEY_LEN + 2 * MAX_TAG_LEN
            ));
        }
        let w = self.replay_window;
        if !(64..=4096).contains(&w) || !w.is_multiple_of(64) {
            return Err(format!("replay_window = {w}: need a multiple of 64 in 64..=4096"));
        }
        if self.max_outstanding == 0 {
            return Err("max_outstanding = 0: need at least 1".into());
        }
        Ok(())
    }

    /// The MAC family (with its tag length) for `class`.
    pub fn mac_family(&self, class: Class) -> MacFamily {
        match (self.family, class) {
            (HashFamily::Poly1305, _) => MacFamily::Poly1305,
            (HashFamily::Gf128, Class::Command) => MacFamily::Gf128 { tag_bits: 128 },
            (HashFamily::Gf128, Class::Reading) => MacFamily::Gf128 { tag_bits: self.reading_tag_bits },
        }
    }

    /// Tag length in bytes for `class` (commands always 16).
    pub fn tag_len(&self, class: Class) -> usize {
        self.mac_family(class).tag_len()
    }
}
