//! The messages of one OLT⇄ONU distillation session, and their compact encoding.
//!
//! Each message travels in one [frame](super::frame); the frame's `kind` byte names the
//! message and its body is the [postcard](https://docs.rs/postcard) encoding of the
//! payload struct (varint integers, length-prefixed sequences; bit blocks as a length and
//! LSB-first bytes). Decoding is strict: the kind must be known and expected in the
//! receiver's direction, the body must decode completely with no trailing bytes, and every
//! sequence is bounded by the frame's body limit.
//!
//! | kind | direction | message | tagged (per-phase policy) |
//! |---|---|---|---|
//! | 1 | OLT → ONU | [`Announce`]: one sift batch | no |
//! | 2 | OLT → ONU | [`Estimate`]: counts, pre-check, first reconciliation flight | yes |
//! | 3 | OLT → ONU | [`Reconcile`]: reconciliation requests | no |
//! | 4 | OLT → ONU | [`Finish`]: verification, ℓ, PA seed, block ID | yes |
//! | 5 | OLT → ONU | [`Ack`]: the ONU may commit the block | yes |
//! | 6, 20 | both | [`Abort`]: the block is abandoned, with a reason | no |
//! | 7 | OLT → ONU | [`SlotMapUpdate`]: the ONU's view of a new slot map (control) | always |
//! | 8 | OLT → ONU | [`PoolSync`]: pool resynchronisation on a new connection (control) | always |
//! | 9 | OLT → ONU | [`PoolUse`]: a consumption of the ONU's pool to mirror (control) | always |
//! | 17 | ONU → OLT | [`SiftAnswer`]: match + intensity codes, test bits | no |
//! | 18 | ONU → OLT | [`ReconcileAnswer`]: reconciliation replies | no |
//! | 19 | ONU → OLT | [`Confirm`]: the ONU holds the block | yes |
//! | 21 | ONU → OLT | [`SlotMapAck`]: the ONU installed a slot map (control) | when safe |
//! | 22 | ONU → OLT | [`Committed`]: the ONU committed the block; the OLT commits it | yes |
//! | 23 | ONU → OLT | [`PoolSyncAck`]: the ONU's pool agrees with the OLT's (control) | always |
//! | 24 | ONU → OLT | [`PoolUseAck`]: the ONU applied every use up to a number (control) | always |
//!
//! Kinds 7, 8, 9, 21, 23 and 24 are *control* messages: they belong to no block and stay out of the
//! block transcripts (see [`super::link`] for how they are authenticated and why the
//! acknowledgement is tagged only when that cannot disturb a block).

use super::frame::Direction;
use crate::bits::BitBlock;
use crate::reconcile::{ReconcileReply, ReconcileRequest};
use crate::sift::DecoyCounts;
use crate::verification::VerificationMessage;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A sift batch: detections announced by the OLT (gate indices in its time base and its
/// measurement bases).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Block attempt number (strictly increasing per session; a new number starts a new
    /// block and abandons any unfinished one).
    pub block: u64,
    /// Batch number within the block, from 0.
    pub batch: u32,
    /// Gates, delta-coded: the first is absolute, each next one is the difference to its
    /// predecessor (≥ 1).
    pub gate_deltas: Vec<u64>,
    /// Bases, bit `i` set = X.
    pub bases: BitBlock,
}

/// The ONU's answer to one sift batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiftAnswer {
    /// Block attempt number.
    pub block: u64,
    /// Batch answered.
    pub batch: u32,
    /// The sift answer (2-bit codes, disclosed test bits).
    pub answer: crate::sift::SiftAnswer,
}

/// Why a block was abandoned. Aborts are a normal outcome (noise, attacks, losses), not a
/// crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AbortReason {
    /// The pre-check found that even an ideal reconciliation would leave no key.
    PrecheckNoKey,
    /// The finite-key bound with the measured leakage proved no key (ℓ ≤ the
    /// authentication share).
    BoundZero,
    /// The verification hashes differ.
    VerificationFailed,
    /// A Wegman–Carter tag was refused.
    BadTag,
    /// Reconciliation failed (an inconsistent or malformed exchange).
    ReconciliationFailed,
    /// The peer did not answer in time.
    Timeout,
    /// The peer's counts or key length disagree with ours.
    Inconsistent,
    /// The authentication reserve is below its floor; the session stops.
    AuthReserveLow,
    /// The source has no pulse records for the announced gates.
    PulsesUnavailable,
    /// A message broke the protocol.
    Protocol,
    /// The key pool could not record a block durably (or no longer matches the peer's):
    /// nothing may be confirmed, the session stops.
    PoolStore,
}

/// OLT → ONU, tagged: the block's counts, the pre-check verdict, and — when it proceeds —
/// the first reconciliation flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Block attempt number.
    pub block: u64,
    /// The last block the OLT committed (acked), so an ONU that missed the ack can settle
    /// a pending block.
    pub last_committed: Option<Uuid>,
    /// Per-intensity key-basis detections and test-basis detections and errors, as the OLT
    /// counted them; the ONU checks the detections against its own.
    pub counts: DecoyCounts,
    /// `None` to proceed; `Some(reason)` when the pre-check aborts the block.
    pub abort: Option<AbortReason>,
    /// The first reconciliation requests (empty on abort).
    pub requests: Vec<ReconcileRequest>,
}

/// OLT → ONU: reconciliation requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {
    /// Block attempt number.
    pub block: u64,
    /// Requests, in order.
    pub requests: Vec<ReconcileRequest>,
}

/// ONU → OLT: reconciliation replies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileAnswer {
    /// Block attempt number.
    pub block: u64,
    /// Replies, in order.
    pub replies: Vec<ReconcileReply>,
}

/// OLT → ONU, tagged: the end of reconciliation, verification, the key length and the
/// privacy amplification seed; the OLT names the block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finish {
    /// Block attempt number.
    pub block: u64,
    /// Last reconciliation requests (the `Done` that closes the run).
    pub requests: Vec<ReconcileRequest>,
    /// Verification seed and the OLT's tag of its reconciled key.
    pub verification: VerificationMessage,
    /// ℓ: the key length the bound proves, in bits.
    pub ell: u64,
    /// The Toeplitz seed (n + ℓ − 1 bits).
    pub pa_seed: BitBlock,
    /// The block's ID, allocated by the OLT (the only allocator).
    pub block_id: Uuid,
}

/// ONU → OLT, tagged: the ONU verified everything and holds the block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm {
    /// Block attempt number.
    pub block: u64,
    /// The block's ID.
    pub block_id: Uuid,
}

/// OLT → ONU, tagged: the OLT holds the block (provisionally) and the ONU may commit it.
/// Retransmitted until the ONU answers [`Committed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Block attempt number.
    pub block: u64,
    /// The block's ID.
    pub block_id: Uuid,
}

/// Either direction: the block is abandoned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    /// Block attempt number.
    pub block: u64,
    /// Why.
    pub reason: AbortReason,
}

/// OLT → ONU, control, always tagged: the ONU's view of a slot map — the map with only the
/// ONU's own slots — and the frame from which it applies. Retransmitted (each time as a new
/// frame with a fresh pad) until acknowledged or superseded by a newer version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMapUpdate {
    /// The map's version (strictly increasing per OLT; the ONU refuses older ones).
    pub version: u32,
    /// First frame (OLT time base) the map applies to.
    pub from_frame: u64,
    /// The map in `qpon-mux`'s wire format (opaque here: the session only orders versions;
    /// the ONU driver parses and checks it, and must find the same version and frame).
    pub map: Vec<u8>,
}

/// ONU → OLT, control: the ONU installed slot map `version`. Tagged when no tagged reply
/// of the ONU may still be re-sent (a tagged acknowledgement also proves the ONU holds
/// its pre-shared secret, which is how the OLT authenticates a joining ONU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMapAck {
    /// The version installed.
    pub version: u32,
}

/// ONU → OLT, tagged: the ONU committed the block durably; the OLT commits it on this.
/// Until then the OLT's copy is provisional (see [`super`], "Pool agreement").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Block attempt number.
    pub block: u64,
    /// The block's ID.
    pub block_id: Uuid,
}

/// OLT → ONU, control, always tagged: the first message on every new connection, before
/// any block. Names the last block the OLT committed and, when the connection broke while
/// a block awaited the ONU's [`Committed`], that block: the ONU keeps it if it holds it,
/// and discards every block of its own after the last one both hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSync {
    /// The last block committed at the OLT (`None`: none yet).
    pub last_committed: Option<Uuid>,
    /// A block the OLT holds provisionally and will commit if the ONU holds it.
    pub offer: Option<Uuid>,
}

/// ONU → OLT, control, always tagged: the ONU's pool now ends with the OLT's last
/// committed block, or with `kept` (the offered block, which the OLT then commits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSyncAck {
    /// The offered block, if the ONU held it and committed it.
    pub kept: Option<Uuid>,
    /// The number of the last [`PoolUse`] the ONU has applied (0: none): the OLT re-sends
    /// the uses after it (e.g. after either end restarted).
    pub uses_applied: u64,
}

/// A key switch carried by a [`PoolUse`] (XGS-PON's Key_Control / Key_Switching_Time in
/// one): the consumed bytes are the next downstream key, loaded into key slot `slot`
/// (0 or 1: key index `01` or `10`) and used from superframe `from_superframe` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySwitch {
    /// Key slot, 0 or 1.
    pub slot: u8,
    /// First superframe (OLT time base) under the new key.
    pub from_superframe: u64,
}

/// OLT → ONU, control, always tagged: the OLT consumed `len` bytes of the ONU's pool at
/// (`block`, `offset`) for `purpose`; the ONU consumes the same bytes (its cursor must be
/// exactly there, or the pools have diverged) and acknowledges. Numbered from 1 without
/// gaps; retransmitted (each time with a fresh pad) until acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUse {
    /// Use number (1, 2, … per ONU; the ONU applies them in this order, each once).
    pub seq: u64,
    /// What the bytes are for (`qpon-kms`'s purpose code).
    pub purpose: u8,
    /// The block the bytes come from.
    pub block: Uuid,
    /// First byte within the block.
    pub offset: u64,
    /// Number of bytes.
    pub len: u32,
    /// For a downstream key: the slot and the switch superframe.
    pub switch: Option<KeySwitch>,
}

/// ONU → OLT, control, always tagged: the ONU applied (durably) every [`PoolUse`] up to
/// and including `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUseAck {
    /// The last use applied.
    pub seq: u64,
}

/// Any session message.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Message {
    Announce(Announce),
    Estimate(Estimate),
    Reconcile(Reconcile),
    Finish(Finish),
    Ack(Ack),
    AbortDown(Abort),
    SiftAnswer(SiftAnswer),
    ReconcileAnswer(ReconcileAnswer),
    Confirm(Confirm),
    AbortUp(Abort),
    SlotMap(SlotMapUpdate),
    SlotMapAck(SlotMapAck),
    Committed(Committed),
    PoolSync(PoolSync),
    PoolSyncAck(PoolSyncAck),
    PoolUse(PoolUse),
    PoolUseAck(PoolUseAck),
}

/// Why a body could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Unknown kind, or a kind that does not travel in this direction.
    #[error("unknown message kind {0} for this direction")]
    UnknownKind(u8),
    /// The body does not decode as the kind's payload, or has trailing bytes.
    #[error("malformed {0} body")]
    Malformed(&'static str),
}

impl Message {
    /// The frame `kind` code.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Announce(_) => 1,
            Message::Estimate(_) => 2,
            Message::Reconcile(_) => 3,
            Message::Finish(_) => 4,
            Message::Ack(_) => 5,
            Message::AbortDown(_) => 6,
            Message::SlotMap(_) => 7,
            Message::SiftAnswer(_) => 17,
            Message::ReconcileAnswer(_) => 18,
            Message::Confirm(_) => 19,
            Message::AbortUp(_) => 20,
            Message::SlotMapAck(_) => 21,
            Message::PoolSync(_) => 8,
            Message::Committed(_) => 22,
            Message::PoolSyncAck(_) => 23,
            Message::PoolUse(_) => 9,
            Message::PoolUseAck(_) => 24,
        }
    }

    /// Whether frames of `kind` carry control messages (slot maps, pool syncs, pool uses and their
    /// acknowledgements): outside every block and its transcript.
    pub fn is_control_kind(kind: u8) -> bool {
        matches!(kind, 7 | 8 | 9 | 21 | 23 | 24)
    }

    /// Whether this is a control message (see [`Message::is_control_kind`]).
    pub fn is_control(&self) -> bool {
        Self::is_control_kind(self.kind())
    }

    /// A short name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Announce(_) => "announce",
            Message::Estimate(_) => "estimate",
            Message::Reconcile(_) => "reconcile",
            Message::Finish(_) => "finish",
            Message::Ack(_) => "ack",
            Message::AbortDown(_) | Message::AbortUp(_) => "abort",
            Message::SiftAnswer(_) => "sift_answer",
            Message::ReconcileAnswer(_) => "reconcile_answer",
            Message::Confirm(_) => "confirm",
            Message::SlotMap(_) => "slot_map",
            Message::SlotMapAck(_) => "slot_map_ack",
            Message::Committed(_) => "committed",
            Message::PoolSync(_) => "pool_sync",
            Message::PoolSyncAck(_) => "pool_sync_ack",
            Message::PoolUse(_) => "pool_use",
            Message::PoolUseAck(_) => "pool_use_ack",
        }
    }

    /// The direction this message travels in.
    pub fn direction(&self) -> Direction {
        if self.kind() < 16 { Direction::Downstream } else { Direction::Upstream }
    }

    /// Block attempt number the message belongs to (0 for control messages, which belong
    /// to none).
    pub fn block(&self) -> u64 {
        match self {
            Message::Announce(m) => m.block,
            Message::Estimate(m) => m.block,
            Message::Reconcile(m) => m.block,
            Message::Finish(m) => m.block,
            Message::Ack(m) => m.block,
            Message::AbortDown(m) | Message::AbortUp(m) => m.block,
            Message::SiftAnswer(m) => m.block,
            Message::ReconcileAnswer(m) => m.block,
            Message::Confirm(m) => m.block,
            Message::Committed(m) => m.block,
            Message::SlotMap(_)
            | Message::SlotMapAck(_)
            | Message::PoolSync(_)
            | Message::PoolSyncAck(_)
            | Message::PoolUse(_)
            | Message::PoolUseAck(_) => 0,
        }
    }

    /// Appends the body encoding to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        fn enc<T: Serialize>(v: &T, out: &mut Vec<u8>) {
            // postcard cannot fail on these types (no maps with non-string keys, no
            // unsized sequences); an error here is a bug.
            let bytes = postcard::to_allocvec(v).expect("postcard encoding of a session message");
            out.extend_from_slice(&bytes);
        }
        match self {
            Message::Announce(m) => enc(m, out),
            Message::Estimate(m) => enc(m, out),
            Message::Reconcile(m) => enc(m, out),
            Message::Finish(m) => enc(m, out),
            Message::Ack(m) => enc(m, out),
            Message::AbortDown(m) | Message::AbortUp(m) => enc(m, out),
            Message::SiftAnswer(m) => enc(m, out),
            Message::ReconcileAnswer(m) => enc(m, out),
            Message::Confirm(m) => enc(m, out),
            Message::SlotMap(m) => enc(m, out),
            Message::SlotMapAck(m) => enc(m, out),
            Message::Committed(m) => enc(m, out),
            Message::PoolSync(m) => enc(m, out),
            Message::PoolSyncAck(m) => enc(m, out),
            Message::PoolUse(m) => enc(m, out),
            Message::PoolUseAck(m) => enc(m, out),
        }
    }

    /// Decodes a body of `kind` travelling in `dir`.
    pub fn decode(kind: u8, dir: Direction, body: &[u8]) -> Result<Message, DecodeError> {
        fn dec<'a, T: Deserialize<'a>>(body: &'a [u8], name: &'static str) -> Result<T, DecodeError> {
            match postcard::take_from_bytes::<T>(body) {
                Ok((v, [])) => Ok(v),
                _ => Err(DecodeError::Malformed(name)),
            }
        }
        let m = match (dir, kind) {
            (Direction::Downstream, 1) => Message::Announce(dec(body, "announce")?),
            (Direction::Downstream, 2) => Message::Estimate(dec(body, "estimate")?),
            (Direction::Downstream, 3) => Message::Reconcile(dec(body, "reconcile")?),
            (Direction::Downstream, 4) => Message::Finish(dec(body, "finish")?),
            (Direction::Downstream, 5) => Message::Ack(dec(body, "ack")?),
            (Direction::Downstream, 6) => Message::AbortDown(dec(body, "abort")?),
            (Direction::Downstream, 7) => Message::SlotMap(dec(body, "slot_map")?),
            (Direction::Upstream, 17) => Message::SiftAnswer(dec(body, "sift_answer")?),
            (Direction::Upstream, 18) => Message::ReconcileAnswer(dec(body, "reconcile_answer")?),
            (Direction::Upstream, 19) => Message::Confirm(dec(body, "confirm")?),
            (Direction::Upstream, 20) => Message::AbortUp(dec(body, "abort")?),
            (Direction::Upstream, 21) => Message::SlotMapAck(dec(body, "slot_map_ack")?),
            (Direction::Downstream, 8) => Message::PoolSync(dec(body, "pool_sync")?),
            (Direction::Upstream, 22) => Message::Committed(dec(body, "committed")?),
            (Direction::Upstream, 23) => Message::PoolSyncAck(dec(body, "pool_sync_ack")?),
            (Direction::Downstream, 9) => Message::PoolUse(dec(body, "pool_use")?),
            (Direction::Upstream, 24) => Message::PoolUseAck(dec(body, "pool_use_ack")?),
            _ => return Err(DecodeError::UnknownKind(kind)),
        };
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_every_kind() {
        let msgs = vec![
            Message::Announce(Announce {
                block: 3,
                batch: 1,
                gate_deltas: vec![100, 7, 9],
                bases: BitBlock::from_bools(&[true, false, true]),
            }),
            Message::Reconcile(Reconcile { block: 3, requests: vec![] }),
            Message::Ack(Ack { block: 3, block_id: Uuid::from_u128(7) }),
            Message::AbortDown(Abort { block: 3, reason: AbortReason::Timeout }),
            Message::Confirm(Confirm { block: 3, block_id: Uuid::from_u128(9) }),
            Message::AbortUp(Abort { block: 4, reason: AbortReason::BadTag }),
            Message::SlotMap(SlotMapUpdate { version: 5, from_frame: 8_400, map: vec![1, 0, 0, 0, 9] }),
            Message::SlotMapAck(SlotMapAck { version: 5 }),
            Message::Committed(Committed { block: 3, block_id: Uuid::from_u128(9) }),
            Message::PoolSync(PoolSync { last_committed: Some(Uuid::from_u128(8)), offer: None }),
            Message::PoolSync(PoolSync { last_committed: None, offer: Some(Uuid::from_u128(9)) }),
            Message::PoolSyncAck(PoolSyncAck { kept: Some(Uuid::from_u128(9)), uses_applied: 4 }),
            Message::PoolUse(PoolUse {
                seq: 3,
                purpose: 1,
                block: Uuid::from_u128(5),
                offset: 48,
                len: 16,
                switch: Some(KeySwitch { slot: 1, from_superframe: 80_000 }),
            }),
            Message::PoolUse(PoolUse {
                seq: 4,
                purpose: 1,
                block: Uuid::from_u128(5),
                offset: 64,
                len: 16,
                switch: None,
            }),
            Message::PoolUseAck(PoolUseAck { seq: 4 }),
        ];
        for m in msgs {
            let mut body = Vec::new();
            m.encode_body(&mut body);
            let d = Message::decode(m.kind(), m.direction(), &body).unwrap();
            assert_eq!(d, m);
            // trailing bytes are refused
            body.push(0);
            assert!(Message::decode(m.kind(), m.direction(), &body).is_err());
            // wrong direction is refused
            assert!(Message::decode(m.kind(), m.direction().reverse(), &body[..body.len() - 1]).is_err());
        }
    }

    proptest! {
        #[test]
        fn decoder_never_panics(kind: u8, up: bool, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let dir = if up { Direction::Upstream } else { Direction::Downstream };
            let _ = Message::decode(kind, dir, &body);
        }
    }
}
