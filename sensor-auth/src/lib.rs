//! # qpon-sensor-auth — authenticated SCADA and sensor command streams
//!
//! Wegman–Carter authenticated framing for the stream between a control station and one
//! field device, keyed from the QKD key pools: information-theoretic authenticity, no
//! PKI. Sans-IO: the two ends ([`ControlEnd`], [`FieldEnd`]) take bytes and a time value
//! and return bytes or a typed refusal ([`AuthError`]); transports (the Modbus/TCP proxy)
//! sit on top. The wire format is in [`frame`].
//!
//! # Keys: batches, hash keys and pads
//!
//! * The control end is the deciding end. It reserves pool bytes in **batches** of
//!   `batch_bytes` (one durable `KeyPool::take` each: no store commit per frame) and names
//!   each batch in band (ordinal, block, offset, length); the field end mirrors it with
//!   `take_named` on its own pool ([`pads`] explains why the ordinal survives crashes).
//!   Or, through ETSI GS QKD 014 ([`etsi::EtsiPads`]): the control end as master SAE takes
//!   one `enc_keys` key of `batch_bytes` per batch and names it in band by its key ID;
//!   the field end fetches it with `dec_keys`.
//! * A batch's first 16 bytes are its **hash key**, recycled for every frame under the
//!   batch in both directions (Wegman & Carter, JCSS 22, 1981: a hash key may be reused
//!   with fresh one-time pads; Portmann, IEEE TIT 60(7), 2014, for key recycling). The
//!   rest are **pads**. Each request takes two consecutive pads of its tag length: its own
//!   and its response's, so the response's pad is fixed by the request and both
//!   directions draw from the control end's reservations.
//! * Hash-key refresh: on schedule, with every batch; and after any rejected tag (pads
//!   from QKD are only ε-close to uniform, Abidin & Larsson; REFERENCE.md §3). The field
//!   end, on a bad request tag, retires the batch and accepts nothing more under it,
//!   saying nothing in band. The control end, on a bad response tag, or seeing no
//!   response within `response_timeout_ms`, retires the batch too and its next request
//!   opens a new batch with a new hash key (after a timeout: at once if the field end had
//!   answered under that batch, else after [`UNACKED_TIMEOUTS`] timeouts, so that an
//!   outage does not make it run many batches ahead). So both ends agree without a
//!   signal: a retired batch is never used again by either. Responses to requests the
//!   field end accepted before the rejection are still sealed with their reserved pads.
//! * A replayed frame of an old batch is refused by the ordinal, which is the count of
//!   the pool's durable `SensorAuth` consumptions (with ETSI keys: a durable counter file
//!   at each end, backed by the KME's once-only delivery): also after a restart of either
//!   end.
//!
//! # Message classes and the forgery budget
//!
//! [`Class::Command`] frames always carry full 128-bit tags and face a freshness deadline;
//! [`Class::Reading`] frames may carry GF(2^128) tags truncated to `reading_tag_bits`
//! (≥ 32; Poly1305 is never truncated). Per verification the forgery probability is at
//! most (⌈L/16⌉ + 1)/2^t for a `t`-bit GF(2^128) tag over `L` bytes (the polynomial-hash
//! bound, CRATES.md; `qkd::mac::MacFamily::forgery_bound`), 8⌈L/16⌉/2^106 for Poly1305
//! (Bernstein 2005). [`Status::forgery_bound_total`] sums it over every verification
//! (union bound); [`Status::forgery_bound_worst_case`] charges each at the longest frame.
//!
//! # Replay, ordering and clocks
//!
//! * Request sequence numbers are `batch << 32 | n` (n = 1, 2, … within the batch), so
//!   they increase across control-end restarts without state of their own; the field end
//!   keeps a sliding replay window (`replay_window`, ≥ 64) and refuses a pad used twice.
//! * A response is accepted only for an outstanding request, once, and only with the pad
//!   that request reserved.
//! * Commands carry the control end's clock (`time_ms`). The clocks are not assumed
//!   synchronised: the field end learns the offset as the minimum, over accepted frames,
//!   of (local receipt time − frame time) — the frame with the least delay — let it drift
//!   by at most `clock_drift_ppm`, and refuses a command whose delay exceeds that minimum
//!   by more than `command_deadline_ms`. An attacker can delay frames, never hasten
//!   them, so a held-back command shows up as late. The first frame after a field-end
//!   start calibrates the offset and is judged only by `max_clock_skew_ms` (when the
//!   clocks are synchronised and it is set).
//!
//! # Failing closed
//!
//! Below `low_water_bytes` of pads the alarm is raised and commands are refused or held
//! ([`LowWaterPolicy`]); an empty pool gives [`AuthError::PoolExhausted`]; every refusal
//! has a typed reason and no frame. Nothing is ever sent or accepted unauthenticated.
//!
//! # Limits
//!
//! * One stream per pool pair, and every other consumption of the two pools mirrored
//!   (the pool cursor is shared by all purposes).
//! * The field end must take a new batch from its pool before it can check the tag of
//!   the frame that names it (the `KeyPool` API has no read-without-consume). A forged
//!   frame naming the next batch therefore costs one batch of key, or up to
//!   `1 + max_batch_skip` (plus one per `response_timeout_ms` of silence, at most
//!   `max_silence_skip`) if it claims that batches were skipped; it cannot cause a pad to
//!   be reused or the pools to diverge for good (the control end catches up by
//!   timeouts). A read-without-consume in `KeyPool` would let the field end verify first.
//! * If the control end ran further ahead than the field end may skip (a long outage
//!   with heavy polling), the field end refuses with [`AuthError::BatchReference`] until
//!   its silence allowance has grown past the gap, which it does three times faster than
//!   the control end can open batches by timeouts — up to `max_silence_skip`; beyond
//!   that an operator raises it (or re-syncs the pools).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod bench;
mod common;
pub mod config;
mod control;
pub mod error;
pub mod etsi;
mod field;
pub mod frame;
pub mod pads;
pub mod replay;
pub mod status;

// The public interface is:
pub use config::{EndConfig, HashFamily, LowWaterPolicy};
pub use control::{ControlEnd, UNACKED_TIMEOUTS};
pub use error::AuthError;
pub use etsi::{EtsiError, EtsiPads, EtsiRole, EtsiSettings};
pub use field::{Classifier, FieldEnd};
pub use frame::{BatchDescriptor, Class, FrameError, Kind, MAX_FRAME_LEN, MAX_PAYLOAD_LEN, frame_len};
pub use pads::{PadError, PadSource, PoolPads, Reserved};
pub use status::{Alarm, Role, Status};

// Modules of the Modbus/TCP proxy (its own helper adds `pub mod mbap; pub mod proxy;`):
// PROXY-MODULES-BELOW
pub mod mbap;
pub mod proxy;

/// A sealed frame, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Its sequence number (for a request: what the response will name).
    pub seq: u64,
    /// The whole frame.
    pub bytes: Vec<u8>,
}

/// An accepted frame's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The sender's sequence number.
    pub seq: u64,
    /// For a response, the request it answers.
    pub request_seq: Option<u64>,
    /// Message class.
    pub class: Class,
    /// The authenticated payload.
    pub payload: Vec<u8>,
}

/// An accepted frame, borrowing its payload from the frame (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedRef<'a> {
    /// The sender's sequence number (of a request: pass it to `seal_response`).
    pub seq: u64,
    /// For a response, the request it answers.
    pub request_seq: Option<u64>,
    /// Message class.
    pub class: Class,
    /// The authenticated payload.
    pub payload: &'a [u8],
}
