//! One end of the authenticated classical channel of a session: framing, sequence numbers,
//! the block transcript, Wegman–Carter tags and retransmission state. The OLT and ONU
//! sessions each own one [`Link`] and speak only [`Message`]s through it.
//!
//! **Transcript authentication.** Every frame of a block, in both directions, in order, is
//! appended to the block's transcript (a tagged frame without its own tag). A tag covers
//! the whole transcript of the block up to and including its own frame, so one tag vouches
//! for everything before it: with the per-phase policy the OLT tags its `Estimate` and
//! `Finish` (and `Ack`), the ONU its `Confirm`; nothing irreversible — using the counts,
//! emitting key — happens before the covering tag has been checked. With the per-message
//! policy every frame is tagged. Each tag uses a fresh pad: pad `i` of its direction's
//! stream, recorded in the ledger before use; the hash key is that of the block's epoch.
//!
//! **Sequence numbers.** Each direction numbers its frames; a receiver accepts only
//! numbers above the last accepted one. A byte-identical copy of the last accepted frame is
//! a retransmission: it is not processed again (the session re-sends its cached reply). A
//! link that is [reset](Link::reset) (a new connection) accepts any first number; replays
//! across resets still fail, because their tags' pads are below the ledger's high-water
//! mark and their untagged frames break the next tag.
//!
//! **Control messages** (slot maps, pool syncs, pool uses and their acknowledgements, kinds
//! 7, 8, 9, 21, 23 and 24) belong to no block: they may arrive in the middle of one, be lost and retransmitted on their own
//! schedule, so they stay out of every transcript (otherwise a lost slot map would make
//! the two ends' transcripts differ and break the block's next tag). A tagged control frame
//! carries its own tag over its header and body alone, with the next pad of its direction's
//! stream (recorded in the ledger first, like every pad) and the hash key of the current
//! epoch; it takes a sequence number but neither checks nor moves the block path's
//! replay state. Its replay protection is the pad: a copy of a checked frame names a pad
//! below the ledger's high-water mark and is refused, and every retransmission is a new
//! frame with a fresh pad. A slot map must be tagged; an acknowledgement may be untagged
//! (it only stops retransmissions: forging one achieves no more than dropping the map).
//! Pool syncs, pool uses and their acknowledgements must be tagged: they move pools.
//!
//! Pads of one direction are taken in increasing order and a receiver refuses any pad below
//! its high-water mark, so a control tag must never overtake a tagged block frame that may
//! still be retransmitted byte-identically (its pad would then be refused). The sessions
//! ensure this: the OLT sends a slot map only while no tagged request of its own awaits a
//! reply, and the ONU tags an acknowledgement only while no tagged reply of its own may
//! still be re-sent.

use super::auth::{AuthError, AuthLedger, AuthMaterial, LedgerEntry, Purpose, Stream};
use super::frame::{Direction, Frame, FrameError, FrameRepr};
use super::message::{DecodeError, Message};
use crate::mac::{HASH_KEY_LEN, HashKey, MacError, MacFamily, Pad, WcMac, WegmanCarter};
use serde::{Deserialize, Serialize};

/// When frames carry tags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthPolicy {
    /// Tags on the frames that close a phase: the OLT's `Estimate`, `Finish` and `Ack`,
    /// the ONU's `Confirm` (the default: ~4 tags per block).
    #[default]
    PerPhase,
    /// A tag on every block frame. (Control frames follow their own rule whatever the
    /// policy: slot maps are always tagged, acknowledgements when safe; see the module doc.)
    PerMessage,
}

impl AuthPolicy {
    /// Whether `msg` is tagged under this policy.
    pub fn tags(self, msg: &Message) -> bool {
        match self {
            AuthPolicy::PerMessage => true,
            AuthPolicy::PerPhase => {
                matches!(
                    msg,
                    Message::Estimate(_)
                        | Message::Finish(_)
                        | Message::Ack(_)
                        | Message::Confirm(_)
                        | Message::Committed(_)
                )
            }
        }
    }
}

/// How far above the high-water mark a received pad index or epoch may jump. A peer is
/// never legitimately more than a few units ahead; a forged frame claiming a far-away index
/// must not make us skip (and so waste) the reserve.
pub const MAX_AHEAD: u64 = 64;

/// Why a received frame was refused. The link's state is unchanged, except that a refused
/// tag burns its pad and its hash-key epoch (both recorded in the ledger).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The bytes are not a well-formed frame.
    #[error("invalid frame: {0}")]
    Frame(#[from] FrameError),
    /// The body does not decode.
    #[error("invalid message: {0}")]
    Decode(#[from] DecodeError),
    /// A frame for another ONU, or travelling the wrong way (a reflection).
    #[error("frame for onu {onu} {dir:?} refused by the session of onu {expected}")]
    WrongEndpoint {
        /// ONU id in the frame.
        onu: u16,
        /// Direction in the frame.
        dir: Direction,
        /// Our ONU id.
        expected: u16,
    },
    /// A sequence number at or below the last accepted one (a replay or reordering).
    #[error("sequence number {got} refused (last accepted {last})")]
    Replay {
        /// Received number.
        got: u64,
        /// Last accepted.
        last: u64,
    },
    /// The policy requires a tag and the frame has none.
    #[error("untagged {0} frame refused: the policy requires a tag")]
    MissingTag(&'static str),
    /// A tag whose epoch or pad index is outside the acceptable window.
    #[error("tag refused: epoch {epoch} / pad {pad} outside the acceptable window")]
    AuthWindow {
        /// Epoch in the frame.
        epoch: u32,
        /// Pad index in the frame.
        pad: u64,
    },
    /// A message of a block older than the current one.
    #[error("message of block {got} refused: block {current} is current")]
    StaleBlock {
        /// Block in the message.
        got: u64,
        /// Current block.
        current: u64,
    },
    /// The Wegman–Carter tag does not match.
    #[error("authentication tag refused")]
    BadTag,
    /// Authentication material could not be used (exhausted, ledger failure).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A frame accepted by [`Link::receive`].
#[derive(Debug)]
pub enum Received {
    /// A new message.
    Message {
        /// The message.
        msg: Message,
        /// Whether its tag was checked (a tagged frame vouches for the transcript so far).
        authenticated: bool,
    },
    /// A byte-identical copy of the last accepted frame.
    Duplicate,
}

/// One end of the channel.
pub struct Link {
    onu: u16,
    dir: Direction,
    policy: AuthPolicy,
    family: MacFamily,
    max_body: u32,
    material: AuthMaterial,
    ledger: Box<dyn AuthLedger>,
    mac: Option<(u32, WegmanCarter)>,
    /// Epochs below this are never used again (used, skipped or burned).
    min_epoch: u64,
    next_seq: u64,
    last_recv: Option<(u64, Vec<u8>)>,
    transcript: Vec<u8>,
    /// Block the transcript belongs to; a message of a later block starts a new one.
    block: u64,
    /// Tag units this end has used, for accounting (bits of pads + hash keys).
    auth_bits_spent: u64,
}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Link")
            .field("onu", &self.onu)
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .field("next_seq", &self.next_seq)
            .field("min_epoch", &self.min_epoch)
            .field("material", &self.material)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link for `onu` sending in `dir`, starting after whatever the ledger already
    /// recorded (so a restarted session never reuses a unit).
    pub fn new(
        onu: u16,
        dir: Direction,
        policy: AuthPolicy,
        family: MacFamily,
        max_body: u32,
        material: AuthMaterial,
        ledger: Box<dyn AuthLedger>,
    ) -> Self {
        let min_epoch = ledger.high_water(onu, Stream::HashKeys);
        Self {
            onu,
            dir,
            policy,
            family,
            max_body,
            material,
            ledger,
            mac: None,
            min_epoch,
            next_seq: 1,
            last_recv: None,
            transcript: Vec::new(),
            block: 0,
            auth_bits_spent: 0,
        }
    }

    /// Forgets the peer's sequence numbers and the block in progress (call on a new
    /// connection).
    pub fn reset(&mut self) {
        self.last_recv = None;
        self.transcript.clear();
        self.block = 0;
    }

    /// A message of a later block starts that block's transcript.
    fn enter_block(&mut self, block: u64) {
        if block > self.block {
            self.block = block;
            self.transcript.clear();
        }
    }

    /// The current epoch, if a hash key is loaded.
    pub fn epoch(&self) -> Option<u32> {
        self.mac.as_ref().map(|(e, _)| *e)
    }

    /// The lowest epoch this end will still use.
    pub fn min_epoch(&self) -> u64 {
        self.min_epoch
    }

    /// Raises the lowest usable epoch (the peer told us it is ahead; bounded by
    /// [`MAX_AHEAD`]).
    pub fn raise_min_epoch(&mut self, to: u64) {
        if to > self.min_epoch && to <= self.min_epoch + MAX_AHEAD {
            self.min_epoch = to;
            if self.epoch().is_some_and(|e| u64::from(e) < to) {
                self.mac = None;
            }
        }
    }

    /// Burns the current hash key: it is never used again (after a rejected tag or an
    /// aborted block).
    pub fn burn_epoch(&mut self) {
        if let Some((e, _)) = self.mac.take() {
            self.min_epoch = self.min_epoch.max(u64::from(e) + 1);
        }
    }

    /// Loads the hash key of `epoch` (recording it, and any epochs skipped, in the ledger).
    fn load_epoch(&mut self, epoch: u64) -> Result<(), LinkError> {
        if self.epoch().is_some_and(|e| u64::from(e) == epoch) {
            return Ok(());
        }
        let e32 = u32::try_from(epoch).map_err(|_| LinkError::AuthWindow { epoch: u32::MAX, pad: 0 })?;
        let hw = self.ledger.high_water(self.onu, Stream::HashKeys);
        if epoch < self.min_epoch || epoch < hw {
            return Err(LinkError::AuthWindow { epoch: e32, pad: 0 });
        }
        if epoch > hw {
            self.ledger
                .record(self.onu, LedgerEntry::Skipped { stream: Stream::HashKeys, from: hw, to: epoch })?;
        }
        self.ledger.record(
            self.onu,
            LedgerEntry::Used { stream: Stream::HashKeys, index: epoch, purpose: Purpose::HashKey },
        )?;
        let key = self.material.take(Stream::HashKeys, epoch, HASH_KEY_LEN)?;
        self.auth_bits_spent += 8 * HASH_KEY_LEN as u64;
        self.min_epoch = epoch;
        let wc = WegmanCarter::new(self.family, HashKey::new(key)).map_err(|e| match e {
            MacError::WeakKey => {
                LinkError::Auth(AuthError::Ledger("hash key from the reserve is zero".into()))
            }
            _ => LinkError::BadTag,
        })?;
        self.mac = Some((e32, wc));
        Ok(())
    }

    /// Chooses (and loads) the epoch for a new block, as the block's initiator: the lowest
    /// usable one, or the next one when `refresh`.
    pub fn start_epoch(&mut self, refresh: bool) -> Result<u32, LinkError> {
        let hw = self.ledger.high_water(self.onu, Stream::HashKeys).max(self.min_epoch);
        let epoch = match self.epoch() {
            Some(e) if !refresh && u64::from(e) >= hw.saturating_sub(1) => u64::from(e),
            _ => hw,
        };
        self.load_epoch(epoch)?;
        Ok(self.epoch().unwrap_or(0))
    }

    /// Bytes of authentication material still available for the next block in each
    /// stream: (hash keys, this end's sending pads, receiving pads).
    pub fn reserve(&self) -> (u64, u64, u64) {
        let hk = self.material.available(Stream::HashKeys, self.min_epoch * HASH_KEY_LEN as u64);
        let pl = self.family.pad_len() as u64;
        let tx = Stream::Pads(self.dir);
        let rx = Stream::Pads(self.dir.reverse());
        (
            hk,
            self.material.available(tx, self.ledger.high_water(self.onu, tx) * pl),
            self.material.available(rx, self.ledger.high_water(self.onu, rx) * pl),
        )
    }

    /// Appends a committed block's authentication share.
    pub fn append_share(&mut self, share: &[u8]) {
        self.material.append_share(share);
    }

    /// Takes back the last appended share of `len` bytes (its block was discarded at a pool
    /// sync). Units of it already used stay used.
    pub fn remove_last_share(&mut self, len: usize) {
        self.material.remove_last_share(len);
    }

    /// Authentication bits this end has consumed (hash keys and pads).
    pub fn auth_bits_spent(&self) -> u64 {
        self.auth_bits_spent
    }

    /// The MAC family.
    pub fn family(&self) -> MacFamily {
        self.family
    }

    /// The policy.
    pub fn policy(&self) -> AuthPolicy {
        self.policy
    }

    /// Frames `msg`, tagging it if the policy says so, appends it to the transcript and
    /// returns the bytes to send. The pad's use is in the ledger before this returns.
    pub fn send(&mut self, msg: &Message) -> Result<Vec<u8>, LinkError> {
        debug_assert_eq!(msg.direction(), self.dir, "message sent in the wrong direction");
        let tagged = self.policy.tags(msg);
        self.enter_block(msg.block());
        let mut body = Vec::new();
        msg.encode_body(&mut body);
        let mut out = Vec::new();
        let auth = if tagged {
            let Some((epoch, _)) = self.mac.as_ref() else {
                return Err(LinkError::Auth(AuthError::Ledger(
                    "no hash key loaded for a tagged frame".into(),
                )));
            };
            let stream = Stream::Pads(self.dir);
            let index = self.ledger.high_water(self.onu, stream);
            Some((*epoch, index, self.family.tag_len() as u8))
        } else {
            None
        };
        let repr =
            FrameRepr { kind: msg.kind(), onu: self.onu, direction: self.dir, seq: self.next_seq, auth };
        repr.emit_header_and_body(&body, &mut out);
        if let Some((_, index, _)) = auth {
            let stream = Stream::Pads(self.dir);
            self.ledger.record(self.onu, LedgerEntry::Used { stream, index, purpose: Purpose::TagSent })?;
            let pad = Pad::new(self.material.take(stream, index, self.family.pad_len())?);
            self.auth_bits_spent += 8 * self.family.pad_len() as u64;
            self.transcript.extend_from_slice(&out);
            let Some((_, wc)) = self.mac.as_ref() else { unreachable!("checked above") };
            let tag = wc.tag(&self.transcript, &pad).map_err(|_| LinkError::BadTag)?;
            out.extend_from_slice(tag.as_bytes());
            self.transcript.extend_from_slice(tag.as_bytes());
        } else {
            self.transcript.extend_from_slice(&out);
        }
        self.next_seq += 1;
        Ok(out)
    }

    /// Frames a control message (see the module doc): outside every block and transcript.
    /// When `tagged`, the tag covers this frame's header and body only, with the next pad of
    /// this direction (recorded in the ledger before use) and the current epoch's hash key;
    /// fails without a loaded hash key.
    pub fn send_control(&mut self, msg: &Message, tagged: bool) -> Result<Vec<u8>, LinkError> {
        debug_assert!(msg.is_control(), "send_control with a block message");
        debug_assert_eq!(msg.direction(), self.dir, "message sent in the wrong direction");
        let mut body = Vec::new();
        msg.encode_body(&mut body);
        let stream = Stream::Pads(self.dir);
        let auth = if tagged {
            let Some((epoch, _)) = self.mac.as_ref() else {
                return Err(LinkError::Auth(AuthError::Ledger(
                    "no hash key loaded for a tagged control frame".into(),
                )));
            };
            Some((*epoch, self.ledger.high_water(self.onu, stream), self.family.tag_len() as u8))
        } else {
            None
        };
        let repr =
            FrameRepr { kind: msg.kind(), onu: self.onu, direction: self.dir, seq: self.next_seq, auth };
        let mut out = Vec::new();
        repr.emit_header_and_body(&body, &mut out);
        if let Some((_, index, _)) = auth {
            self.ledger.record(self.onu, LedgerEntry::Used { stream, index, purpose: Purpose::TagSent })?;
            let pad = Pad::new(self.material.take(stream, index, self.family.pad_len())?);
            self.auth_bits_spent += 8 * self.family.pad_len() as u64;
            let Some((_, wc)) = self.mac.as_ref() else { unreachable!("checked above") };
            let tag = wc.tag(&out, &pad).map_err(|_| LinkError::BadTag)?;
            out.extend_from_slice(tag.as_bytes());
        }
        self.next_seq += 1;
        Ok(out)
    }

    /// The control path of [`receive`](Self::receive): checks the frame's own tag (a slot
    /// map must have one) and leaves the block state alone.
    fn receive_control(&mut self, frame: &Frame<&[u8]>, repr: &FrameRepr) -> Result<Received, LinkError> {
        let msg = Message::decode(repr.kind, repr.direction, frame.body())?;
        let Some((epoch, index, _)) = repr.auth else {
            // Whoever can inject frames must not be able to move an ONU's slots.
            // Nor make either end's pool move (pool uses and their acknowledgements).
            if matches!(
                msg,
                Message::SlotMap(_)
                    | Message::PoolSync(_)
                    | Message::PoolSyncAck(_)
                    | Message::PoolUse(_)
                    | Message::PoolUseAck(_)
            ) {
                return Err(LinkError::MissingTag(msg.name()));
            }
            return Ok(Received::Message { msg, authenticated: false });
        };
        let stream = Stream::Pads(repr.direction);
        let hw = self.ledger.high_water(self.onu, stream);
        let e = u64::from(epoch);
        if index < hw || index > hw + MAX_AHEAD || e < self.min_epoch || e > self.min_epoch + MAX_AHEAD {
            return Err(LinkError::AuthWindow { epoch, pad: index });
        }
        let pad = self.take_rx_pad(e, stream, hw, index)?;
        let ok = self
            .mac
            .as_ref()
            .is_some_and(|(_, wc)| wc.verify(frame.authenticated_bytes(), &pad, frame.tag()).is_ok());
        if !ok {
            // As for any rejected tag: the hash key is never used again.
            self.burn_epoch();
            return Err(LinkError::BadTag);
        }
        Ok(Received::Message { msg, authenticated: true })
    }

    /// Loads the epoch and takes the pad of a received tag, recording both first.
    fn take_rx_pad(&mut self, epoch: u64, stream: Stream, hw: u64, index: u64) -> Result<Pad, LinkError> {
        self.load_epoch(epoch)?;
        if index > hw {
            self.ledger.record(self.onu, LedgerEntry::Skipped { stream, from: hw, to: index })?;
        }
        self.ledger.record(self.onu, LedgerEntry::Used { stream, index, purpose: Purpose::TagChecked })?;
        let pad = Pad::new(self.material.take(stream, index, self.family.pad_len())?);
        self.auth_bits_spent += 8 * self.family.pad_len() as u64;
        Ok(pad)
    }

    /// Checks and decodes a received frame (block or control). On `Err` nothing changed,
    /// except that a refused tag burns its pad and epoch.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Received, LinkError> {
        let frame = Frame::new_checked(bytes, self.max_body)?;
        let repr = FrameRepr::parse(&frame);
        if repr.onu != self.onu || repr.direction != self.dir.reverse() {
            return Err(LinkError::WrongEndpoint { onu: repr.onu, dir: repr.direction, expected: self.onu });
        }
        if Message::is_control_kind(repr.kind) {
            return self.receive_control(&frame, &repr);
        }
        if let Some((last, last_bytes)) = &self.last_recv
            && repr.seq <= *last
        {
            if repr.seq == *last && last_bytes.as_slice() == bytes {
                return Ok(Received::Duplicate);
            }
            return Err(LinkError::Replay { got: repr.seq, last: *last });
        }
        let msg = Message::decode(repr.kind, repr.direction, frame.body())?;
        if msg.block() < self.block {
            return Err(LinkError::StaleBlock { got: msg.block(), current: self.block });
        }
        let saved = (self.block, self.transcript.len());
        let transcript_backup = (msg.block() > self.block).then(|| core::mem::take(&mut self.transcript));
        self.enter_block(msg.block());
        let restore = |link: &mut Self| {
            link.block = saved.0;
            if let Some(t) = transcript_backup.clone() {
                link.transcript = t;
            }
            link.transcript.truncate(saved.1);
        };
        let authenticated = match repr.auth {
            None => {
                if self.policy.tags(&msg) {
                    restore(self);
                    return Err(LinkError::MissingTag(msg.name()));
                }
                false
            }
            Some((epoch, index, _)) => {
                let stream = Stream::Pads(repr.direction);
                let hw = self.ledger.high_water(self.onu, stream);
                let e = u64::from(epoch);
                if index < hw
                    || index > hw + MAX_AHEAD
                    || e < self.min_epoch
                    || e > self.min_epoch + MAX_AHEAD
                {
                    restore(self);
                    return Err(LinkError::AuthWindow { epoch, pad: index });
                }
                let pad = match self.take_rx_pad(e, stream, hw, index) {
                    Ok(p) => p,
                    Err(err) => {
                        restore(self);
                        return Err(err);
                    }
                };
                let start = self.transcript.len();
                self.transcript.extend_from_slice(frame.authenticated_bytes());
                let ok = self
                    .mac
                    .as_ref()
                    .is_some_and(|(_, wc)| wc.verify(&self.transcript, &pad, frame.tag()).is_ok());
                if !ok {
                    restore(self);
                    // Refresh the hash key after any rejected tag (DESIGN.md §3 item 9).
                    self.burn_epoch();
                    return Err(LinkError::BadTag);
                }
                self.transcript.truncate(start);
                true
            }
        };
        self.transcript.extend_from_slice(bytes);
        self.last_recv = Some((repr.seq, bytes.to_vec()));
        Ok(Received::Message { msg, authenticated })
    }
}
