//! The sans-IO distillation sessions between the OLT and one ONU.
//!
//! [`OltSession`] and [`OnuSession`] are state machines in quinn-proto's shape: they are
//! fed quantum records, received frames and the current time, and they produce frames to
//! send, a timer deadline and events (finished key blocks, aborted blocks, alarms). They do
//! no I/O, spawn nothing and read no clock; every random choice comes from an injected
//! RNG. The OLT runs one [`OltSession`] per ONU; the emulation and the binaries run the same
//! code with different transports.
//!
//! # Method families (both sessions)
//! - inputs: `handle_detections` (OLT) / `handle_pulses` (ONU), `handle_frame`,
//!   `handle_timeout`, `reset_link` (new connection);
//! - outputs: `poll_transmit` (a frame to send), `poll_timeout` (when to call
//!   `handle_timeout`), `poll_event`;
//! - getters: `stats`, `is_stopped`.
//!
//! Call order after any input: drain `poll_transmit`, drain `poll_event`, then sleep until
//! `poll_timeout` or the next input.
//!
//! # Flow of one block (DESIGN.md §3)
//! 1. **Sifting.** The OLT announces its detections in batches ([`message::Announce`]: gate
//!    indices in its time base, bases); the ONU translates each gate to its pulse index
//!    with its equalisation offset, asks its driver for the pulse records
//!    ([`Event::NeedPulses`]), and answers match + intensity, disclosing its test-basis
//!    bits ([`message::SiftAnswer`]). Batches continue until the OLT holds `block_bits`
//!    sifted key bits.
//! 2. **Estimation.** The OLT counts test-basis errors per intensity and runs the
//!    pre-check (the bound with the leakage of a perfect code, n·h(Q)); it sends the counts
//!    and its verdict, tagged ([`message::Estimate`]). The ONU checks the detection counts
//!    against its own.
//! 3. **Reconciliation** (Cascade, OLT = corrector, ONU = responder; every parity bit
//!    counted by both).
//! 4. **Verification, key length, privacy amplification.** The OLT tags its reconciled key
//!    with a public-seed hash sized from ε_cor, computes ℓ from the bound with the
//!    measured λ_EC plus the verification bits beyond the bound's own log2(2/ε_cor),
//!    draws the Toeplitz seed and names the block ([`message::Finish`], tagged). The ONU
//!    checks the verification tag, recomputes ℓ itself, amplifies, and answers
//!    [`message::Confirm`] (tagged).
//! 5. **Commit** (below).
//!
//! # Pool agreement
//! Both ends must hold the same blocks in the same order, also after either end was killed
//! at any instant. Each end stores a block *provisionally* (durable, not usable) as soon as
//! it has amplified it — the OLT before its `Finish`, the ONU before its `Confirm` — and
//! commits it in three steps: the OLT answers the `Confirm` with an [`message::Ack`]
//! (tagged, retransmitted), the ONU commits and answers [`message::Committed`] (tagged),
//! and the OLT commits on that. So a block committed at the OLT is committed at the ONU,
//! and the ONU is at most one block ahead. The session emits [`Event::Provisional`],
//! [`Event::Block`] (commit) and [`Event::Discarded`]; a frame that depends on one leaves
//! only after the driver has taken the event (see `queue.rs`), so a driver that performs
//! each event durably before taking the next gets the order right.
//!
//! Every connection opens with a pool sync ([`message::PoolSync`], tagged control): the
//! OLT names its last committed block and, if the connection broke while a block awaited
//! the ONU's `Committed`, offers it. The ONU keeps the offered block if it holds it and
//! discards everything else after the last committed block — a provisional block, or a
//! block it committed that the OLT never did (its authentication share is taken back) —
//! then answers [`message::PoolSyncAck`]; the OLT commits the offered block if kept,
//! discards it otherwise. After a restart the OLT's driver discards every provisional block
//! and offers nothing. Hence a `kill -9` of either end between privacy amplification and
//! the peer's acknowledgement leaves the block discarded (and recorded so) on both ends,
//! and no block is ever usable at one end only. No block runs before the sync is done.
//!
//! # Pool use
//! Consumers at the two ends must take the *same* bytes of the pool for the same purpose
//! (e.g. the next downstream key of an ONU). The OLT is the only end that decides a
//! consumption: its driver consumes (durably, recorded in its pool's ledger) and calls
//! [`OltSession::announce_use`]; the session sends a [`message::PoolUse`] (control, always
//! tagged: purpose, block, offset, length, and for a downstream key the slot and switch
//! superframe, like XGS-PON's Key_Control / Key_Switching_Time) numbered 1, 2, … without
//! gaps. The ONU session hands each use to its driver once, in order
//! ([`Event::PoolUse`]; a duplicate is re-acknowledged, a gap refused, an untagged or
//! forged use refused by the link); the driver consumes the named bytes with its own
//! cursor — a pool that is not at exactly that place has diverged and fails closed — and
//! calls [`OnuSession::ack_pool_use`]. One tagged [`message::PoolUseAck`] acknowledges
//! every use up to its number (several uses applied together cost one upstream pad). The
//! OLT re-sends unacknowledged uses every `rto` (fresh pad each time, at most
//! `max_retries` rounds, then it waits for an answer or a new connection), and after every
//! pool sync from the number the ONU reports applied in its [`message::PoolSyncAck`] (so
//! a restarted ONU that counts its mirrored consumptions, or a restarted OLT that
//! rebuilt its recent uses from the ledger with [`OltSession::restore_pool_uses`], catch
//! up without applying anything twice).
//!
//! **Authentication budget.** Each use costs one downstream pad (16 B with Poly1305) and
//! its acknowledgement one upstream pad, plus one of each per retransmission (several uses
//! applied together share one acknowledgement). A block with per-phase tags spends one
//! hash key, 3 downstream pads (`Estimate`, `Finish`, `Ack`) and 2 upstream pads
//! (`Confirm`, `Committed`); its authentication share, split by [`SPLIT`], must cover that
//! plus everything between blocks (pool syncs, slot maps, key switches and their
//! retransmissions). With the default 224-byte share split 2:3:2 (a spare hash key, 6 pads
//! down, 4 up) the surplus is 3 pads down and 2 up per block: **about two key switches
//! per block** with room to spare for slot maps and reconnections. The OLT holds uses while its
//! downstream reserve is at a block's floor (4 pads + 1), the ONU its acknowledgement at 3
//! pads, so uses never starve a block; a backlog then waits for the next block's share.
//! Rotate every few blocks, never every frame: a tag per switch makes that impossible.
//!
//! The first [`SessionConfig::auth_share_bytes`] of every block refill the
//! authentication reserve on both ends; the rest is the key block. A block whose ℓ does
//! not exceed the share is discarded (reason [`AbortReason::BoundZero`]).

mod auth;
mod frame;
mod link;
mod message;
mod olt;
mod onu;
mod queue;
pub mod stream;

pub use auth::{AuthError, AuthLedger, AuthMaterial, LedgerEntry, MemoryLedger, Purpose, SPLIT, Stream};
pub use frame::{Direction, Frame, FrameError, FrameRepr, HEADER_LEN, MAX_TAG_LEN, VERSION};
pub use link::{AuthPolicy, Link, LinkError, MAX_AHEAD, Received};
pub use message::{
    Abort, AbortReason, Ack, Announce, Committed, Confirm, DecodeError, Estimate, Finish, KeySwitch, Message,
    PoolSync, PoolSyncAck, PoolUse, PoolUseAck, Reconcile, ReconcileAnswer, SiftAnswer, SlotMapAck,
    SlotMapUpdate,
};
pub use olt::{OltSession, USE_LOG, USE_WINDOW};
pub use onu::OnuSession;

use crate::bits::BitBlock;
use crate::finite_key::DecoyParams;
use crate::mac::MacFamily;
use crate::reconcile::CascadeOptions;
use crate::time::Duration;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Parameters both ends of a session must agree on, plus each end's own timers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// The ONU's id on this OLT.
    pub onu: u16,
    /// The decoy-state source (intensities and their probabilities).
    pub decoy: DecoyParams,
    /// Sifted key-basis bits per block, n_Z (the block closes at the first sift batch
    /// that reaches it).
    pub block_bits: usize,
    /// ε_sec of the finite-key bound.
    pub eps_sec: f64,
    /// ε_cor (sizes the verification hash).
    pub eps_cor: f64,
    /// Wegman–Carter family for the classical channel.
    pub mac: MacFamily,
    /// Which frames carry tags.
    pub auth_policy: AuthPolicy,
    /// Bytes of every block that refill the authentication reserve.
    pub auth_share_bytes: usize,
    /// Largest frame body accepted, in bytes.
    pub max_body: u32,
    /// Largest sift batch, in detections.
    pub sift_batch: usize,
    /// Longest wait before pending detections are announced.
    #[serde(with = "duration_ms")]
    pub sift_interval: Duration,
    /// Retransmission timeout of the OLT's requests.
    #[serde(with = "duration_ms")]
    pub rto: Duration,
    /// Retransmissions before the block is aborted.
    pub max_retries: u32,
    /// Refresh the hash key every this many blocks (and always after an abort).
    pub hash_key_refresh_blocks: u32,
    /// Run the pre-check (abort early when even a perfect code would leave no key).
    pub precheck: bool,
    /// ONU: pulse index = gate − this (the equalisation offset from ranging).
    pub pulse_offset: i64,
    /// Cascade tuning (corrector side).
    #[serde(skip)]
    pub cascade: CascadeOptions,
}

impl Default for SessionConfig {
    /// DESIGN.md §5: ε_sec = 1e-10, ε_cor = 1e-15, n_Z = 10⁵, default decoy source,
    /// Poly1305 tags once per phase.
    fn default() -> Self {
        Self {
            onu: 0,
            decoy: DecoyParams::default(),
            block_bits: 100_000,
            eps_sec: 1e-10,
            eps_cor: 1e-15,
            mac: MacFamily::Poly1305,
            auth_policy: AuthPolicy::PerPhase,
            auth_share_bytes: 224,
            max_body: 8 << 20,
            sift_batch: 16_384,
            sift_interval: Duration::from_millis(10),
            rto: Duration::from_millis(500),
            max_retries: 4,
            hash_key_refresh_blocks: 1,
            precheck: true,
            pulse_offset: 0,
            cascade: CascadeOptions::default(),
        }
    }
}

mod duration_ms {
    //! Durations as (fractional) milliseconds in config files.
    use super::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(serde::de::Error::custom("a duration must be a number of milliseconds ≥ 0"));
        }
        Ok(Duration::from_secs_f64(ms / 1e3))
    }
}

/// Statistics of one finished (or aborted) block.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockStats {
    /// Block attempt number.
    pub block: u64,
    /// Sifted key-basis bits (n_Z).
    pub key_bits: u64,
    /// Test-basis QBER over all intensities.
    pub test_qber: f64,
    /// Key-basis QBER found by reconciliation (OLT side; 0 at the ONU).
    pub key_qber: f64,
    /// Parity bits disclosed by reconciliation.
    pub lambda_ec: u64,
    /// Verification tag bits.
    pub verification_bits: u32,
    /// ℓ proven by the bound (including the authentication share).
    pub ell: u64,
    /// Bits of ℓ that went to the authentication reserve.
    pub auth_share_bits: u64,
    /// Reconciliation round trips.
    pub round_trips: u32,
    /// Authentication bits this end spent on the block (hash key and pads).
    pub auth_bits_spent: u64,
    /// Phase-error bound φ.
    pub phi: f64,
}

/// What sifting has shown the OLT about one ONU so far, over every block (finished,
/// aborted or in progress): the per-intensity statistics the OLT's monitor watches
/// (decoy yields, test-basis QBER per class). Cumulative since the session started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiftTotals {
    /// Detections announced and answered (matched or discarded).
    pub announced: u64,
    /// Basis-matched detections per intensity class in both bases, and test-basis errors
    /// per class (`key.m` stays 0: key-basis errors are known per finished block only).
    pub counts: crate::sift::DecoyCounts,
}

/// A finished key block, identical at both ends. `Debug` shows its length only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBlock {
    /// The block ID, allocated by the OLT.
    pub id: Uuid,
    /// The secret key (ℓ minus the authentication share).
    pub key: BitBlock,
}

/// A block after privacy amplification, to be stored provisionally (durable, not usable)
/// until [`Event::Block`] commits it or [`Event::Discarded`] withdraws it. `Debug` shows
/// lengths only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionalBlock {
    /// The block ID.
    pub id: Uuid,
    /// The key block (what [`Event::Block`] will carry).
    pub key: BitBlock,
    /// The block's authentication share (joins the authentication material on commit; a
    /// restarted end rebuilds its material from the pre-shared secret and these).
    pub share: crate::secret::SecretBytes,
}

/// An alarm a session raises for its operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Alarm {
    /// The authentication reserve is below its floor: the session stopped (fail closed;
    /// re-keying needs a new pre-shared secret).
    AuthReserveLow,
    /// A tag was refused (possible active attack on the classical channel).
    TagRefused,
}

/// What a session reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Store this block provisionally before taking the next event (see "Pool agreement").
    Provisional(ProvisionalBlock),
    /// Commit this block (provisionally stored before): it is usable. A driver without
    /// provisional storage appends it now.
    Block(KeyBlock, BlockStats),
    /// A block was abandoned (a normal outcome: noise, attack, loss). No key from it.
    Aborted {
        /// Block attempt number.
        block: u64,
        /// Why.
        reason: AbortReason,
        /// Whether the peer told us (unauthenticated) rather than our own checks.
        by_peer: bool,
    },
    /// A provisional or committed block this end holds is withdrawn (the peer may lack it):
    /// record it as discarded, never use it.
    Discarded {
        /// The block's ID.
        id: Uuid,
    },
    /// ONU: the driver must look up these pulse indices and call `handle_pulses`.
    NeedPulses {
        /// Request number to quote back.
        request: u64,
        /// Pulse indices (the source's numbering), `None` where the gate maps before the
        /// source's first pulse.
        pulses: Vec<Option<u64>>,
    },
    /// An alarm.
    Alarm(Alarm),
    /// ONU: the OLT sent a new slot map (authenticated). The driver reconfigures its source
    /// from `from_frame` on and then calls `OnuSession::ack_slot_map`.
    SlotMap(message::SlotMapUpdate),
    /// ONU, pool sync: after the events before this one, the pool must end with
    /// `last_committed` (`None`: be empty). Discard every block after it (e.g. one left
    /// provisional by a restart); if the pool lacks it, call `OnuSession::pool_failed`.
    PoolSync {
        /// The last block both ends hold committed.
        last_committed: Option<Uuid>,
    },
    /// ONU: the OLT consumed these bytes of the pool (authenticated; each use once, in
    /// order). The driver consumes the same bytes — exactly at `block`/`offset`, or the
    /// pools diverged — applies the use (e.g. installs the downstream key), and then calls
    /// `OnuSession::ack_pool_use(seq)`.
    PoolUse(message::PoolUse),
    /// The session stopped and will do nothing more.
    Stopped(AbortReason),
}

/// Why an input was refused. A refused input changes nothing (a refused tag additionally
/// burns its pad and hash key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The frame was refused by the link (malformed, replayed, bad tag, …).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A message that does not fit the session's state (names what was expected).
    #[error("unexpected {got} message: expected {expected}")]
    Unexpected {
        /// What arrived.
        got: &'static str,
        /// What the state allows.
        expected: &'static str,
    },
    /// The message contradicts the protocol or our own data.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(String),
    /// The session has stopped.
    #[error("session stopped")]
    Stopped,
    /// The driver called a method out of order (e.g. pulses for a request never made).
    #[error("api misuse: {0}")]
    ApiMisuse(&'static str),
}
