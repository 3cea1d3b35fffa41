//! The OLT side of a session: receiver of the quantum signals, announcer of sifting,
//! Cascade corrector, allocator of block IDs.

use super::auth::{AuthLedger, AuthMaterial};
use super::frame::Direction;
use super::link::{Link, LinkError, Received};
use super::message::{
    Abort, AbortReason, Ack, Announce, Estimate, Finish, Message, PoolUse, Reconcile, SlotMapAck,
    SlotMapUpdate,
};
use super::queue::Queues;
use super::{Alarm, BlockStats, Event, KeyBlock, SessionConfig, SessionError, SiftTotals};
use crate::bits::BitBlock;
use crate::finite_key::{BoundInput, binary_entropy, finite_key};
use crate::pa::{ToeplitzSeed, toeplitz_hash};
use crate::reconcile::{CascadeCorrector, MAX_PLANNING_QBER, MIN_PLANNING_QBER, Reconciler, Schedule};
use crate::records::DetectionRecord;
use crate::sift::{self, DecoyCounts, SiftedKey};
use crate::time::Instant;
use crate::verification::{self, VerificationMessage};
use rand::CryptoRng;
use std::collections::VecDeque;
use uuid::Uuid;

/// Sifting progress of the current block.
#[derive(Default)]
struct SiftAcc {
    key: SiftedKey,
    counts: DecoyCounts,
    batch: u32,
    /// The batch announced and not yet answered.
    outstanding: Option<Vec<DetectionRecord>>,
}

enum State {
    Sifting(SiftAcc),
    Reconciling {
        acc: SiftAcc,
        corrector: Box<CascadeCorrector>,
    },
    AwaitConfirm(Held),
    /// The ONU confirmed; our `Ack` awaits its `Committed`.
    AwaitCommitted(Held),
    Stopped,
}

/// A block after privacy amplification, held provisionally (in the pool, not usable) until
/// the ONU's `Committed`.
struct Held {
    /// The whole ℓ bits: the authentication share first, then the key block.
    key: BitBlock,
    block_id: Uuid,
    stats: BlockStats,
}

/// Progress of the pool sync that opens every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncState {
    /// Not sent yet on this connection.
    Needed,
    /// Sent, awaiting the ONU's acknowledgement.
    Sent { deadline: Instant, sent: u32 },
    /// Retransmitted `max_retries` times without an answer: wait for a new connection.
    GaveUp,
    /// Both pools agree; blocks may run.
    Done,
}

/// The request awaiting a reply, for retransmission.
struct InFlight {
    bytes: Vec<u8>,
    deadline: Instant,
    retries: u32,
    /// Whether the frame carries a tag (then no control tag may overtake it: see
    /// [`OltSession::send_slot_map`]).
    tagged: bool,
}

/// A slot map waiting to be sent or acknowledged.
struct ControlOut {
    update: SlotMapUpdate,
    /// When to send again (`None`: as soon as allowed).
    deadline: Option<Instant>,
    /// Transmissions so far.
    sent: u32,
}

/// Pool uses sent at most this far ahead of the ONU's acknowledgement.
pub const USE_WINDOW: u64 = 8;
/// Uses kept for re-sending after the ONU restarted (acknowledged ones included).
pub const USE_LOG: usize = 1024;

/// The pool uses announced to the ONU (see [`OltSession::announce_use`]).
#[derive(Default)]
struct Uses {
    /// The newest uses, in order, without gaps (acknowledged ones too, up to [`USE_LOG`]).
    log: VecDeque<PoolUse>,
    /// The next number to allocate − 1.
    last: u64,
    /// The last use the ONU acknowledged (tagged).
    acked: u64,
    /// The highest use sent on this connection.
    sent: u64,
    /// Retransmission timer of the unacknowledged uses.
    deadline: Option<Instant>,
    /// Retransmission rounds without progress.
    rounds: u32,
}

/// The OLT's session with one ONU. See the [module docs](super) for the method families
/// and the call order.
pub struct OltSession<R: CryptoRng> {
    cfg: SessionConfig,
    link: Link,
    rng: R,
    block: u64,
    state: State,
    pending: VecDeque<DetectionRecord>,
    last_gate: Option<u64>,
    sift_deadline: Option<Instant>,
    in_flight: Option<InFlight>,
    q: Queues,
    last_committed: Option<Uuid>,
    refresh_epoch: bool,
    blocks_in_epoch: u32,
    block_auth_start: u64,
    sifted: SiftTotals,
    control: Option<ControlOut>,
    slot_map_acked: Option<u32>,
    peer_tags: u64,
    sync: SyncState,
    /// A provisional block whose `Committed` the broken connection may have carried: offered
    /// to the ONU in the next pool sync.
    offer: Option<Held>,
    uses: Uses,
}

impl<R: CryptoRng> core::fmt::Debug for OltSession<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OltSession")
            .field("onu", &self.cfg.onu)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl<R: CryptoRng> OltSession<R> {
    /// A session for `cfg.onu` with its authentication material (pre-shared secret plus any
    /// committed shares), its pad ledger, and the RNG for public random choices (the OS
    /// RNG on hardware).
    pub fn new(cfg: SessionConfig, material: AuthMaterial, ledger: Box<dyn AuthLedger>, rng: R) -> Self {
        let link = Link::new(
            cfg.onu,
            Direction::Downstream,
            cfg.auth_policy,
            cfg.mac,
            cfg.max_body,
            material,
            ledger,
        );
        Self {
            cfg,
            link,
            rng,
            block: 1,
            state: State::Sifting(SiftAcc::default()),
            pending: VecDeque::new(),
            last_gate: None,
            sift_deadline: None,
            in_flight: None,
            q: Queues::default(),
            last_committed: None,
            refresh_epoch: true,
            blocks_in_epoch: 0,
            block_auth_start: 0,
            sifted: SiftTotals::default(),
            control: None,
            slot_map_acked: None,
            peer_tags: 0,
            sync: SyncState::Needed,
            offer: None,
            uses: Uses::default(),
        }
    }

    /// After a restart: the last block committed in this ONU's pool at the OLT (the driver
    /// discards its provisional blocks first). The pool sync names it to the ONU, which
    /// discards whatever it holds beyond it. Call before the first input.
    pub fn restore_last_committed(&mut self, id: Option<Uuid>) {
        self.last_committed = id;
    }

    /// The last block committed at this end.
    pub fn last_committed(&self) -> Option<Uuid> {
        self.last_committed
    }

    /// Whether this connection's pool sync is done (blocks run only after it).
    pub fn is_synced(&self) -> bool {
        self.sync == SyncState::Done
    }

    /// The driver could not store a block (or the pool failed otherwise): stop, sending
    /// nothing that would let the ONU rely on it (fail closed).
    pub fn pool_failed(&mut self, now: Instant) {
        if !self.is_stopped() {
            self.q.drop_frames();
            self.stop(now, AbortReason::PoolStore);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// True once the session has stopped for good.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    /// Current block attempt number.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Authentication bits spent so far by this end.
    pub fn auth_bits_spent(&self) -> u64 {
        self.link.auth_bits_spent()
    }

    /// Sifting statistics over every block so far (for the OLT's monitor).
    pub fn sift_totals(&self) -> &SiftTotals {
        &self.sifted
    }

    /// Detections not yet announced.
    pub fn pending_detections(&self) -> usize {
        self.pending.len()
    }

    /// Feeds this ONU's detections (in increasing gate order; detections at or before an
    /// earlier one are dropped, as the receiver cannot have produced them).
    pub fn handle_detections(&mut self, now: Instant, detections: &[DetectionRecord]) {
        if self.is_stopped() {
            return;
        }
        for d in detections {
            if self.last_gate.is_some_and(|g| d.gate <= g) {
                continue;
            }
            self.last_gate = Some(d.gate);
            self.pending.push_back(*d);
        }
        if !self.pending.is_empty() && self.sift_deadline.is_none() {
            self.sift_deadline = Some(now + self.cfg.sift_interval);
        }
        if self.pending.len() >= self.cfg.sift_batch {
            self.try_announce(now);
        }
    }

    /// A new connection to the ONU: forget its sequence numbers and abandon the block in
    /// progress.
    pub fn reset_link(&mut self, now: Instant) {
        // Frames not yet sent belonged to the old connection; nothing of a block may go out
        // on the new one before its pool sync.
        self.q.drop_frames();
        self.link.reset();
        self.sync = SyncState::Needed;
        if !self.is_stopped() {
            self.in_flight = None;
            match core::mem::replace(&mut self.state, State::Stopped) {
                // The ONU may hold (or even have committed) this block: offer it in the sync
                // rather than lose it; the ONU's answer decides.
                State::AwaitConfirm(h) | State::AwaitCommitted(h) => {
                    self.discard_offer();
                    self.offer = Some(h);
                    self.refresh_epoch = true;
                    self.link.burn_epoch();
                    self.next_block(now);
                }
                other => {
                    self.state = other;
                    self.abort_block(now, AbortReason::Timeout, false, false);
                }
            }
            self.flush_sync(now, true);
        }
        // Unacknowledged pool uses go out again once the new connection's sync is done.
        self.uses.sent = self.uses.acked;
        self.uses.deadline = None;
        self.uses.rounds = 0;
        // A slot map not yet acknowledged goes out again on the new connection.
        if let Some(c) = self.control.as_mut() {
            c.deadline = None;
            c.sent = 0;
        }
        self.flush_control(now);
    }

    /// Sends `update` (the ONU's view of a new slot map) on the control path: tagged, out of
    /// every block, retransmitted every `rto` — each time as a new frame with a fresh pad —
    /// until the ONU acknowledges it, up to `max_retries` times (then it is dropped and
    /// [`slot_map_pending`](Self::slot_map_pending) says so; the caller may send it again).
    /// A newer update replaces one not yet acknowledged.
    ///
    /// The map never waits for a block, and a block never waits for it, with one
    /// exception: it is held while a *tagged* request of the block awaits its reply (at
    /// most one round trip), because its pad would overtake that request's pad and a
    /// byte-identical retransmission of the request would then be refused.
    pub fn send_slot_map(&mut self, now: Instant, update: SlotMapUpdate) -> Result<(), SessionError> {
        if self.is_stopped() {
            return Err(SessionError::Stopped);
        }
        self.control = Some(ControlOut { update, deadline: None, sent: 0 });
        self.flush_control(now);
        Ok(())
    }

    /// The version of the slot map waiting to be sent or acknowledged, if any.
    pub fn slot_map_pending(&self) -> Option<u32> {
        self.control.as_ref().map(|c| c.update.version)
    }

    /// Announces a consumption of the ONU's pool that the driver has just made (durably) at
    /// this end: the ONU mirrors it, in order, so both pools' cursors and ledgers stay
    /// identical (see [`super`], "Pool use"). The session numbers it (`u.seq` is ignored)
    /// and returns its number. Sent on the control path — tagged, out of every block —
    /// once the connection's pool sync is done, and re-sent (fresh pad each time) until
    /// the ONU acknowledges it; held, like slot maps, while a tagged request awaits its
    /// reply, and while this end's pad reserve is at the block's floor.
    ///
    /// Refused (nothing announced) when the session has stopped or [`USE_LOG`] uses await
    /// acknowledgement: check [`pool_uses_unacked`](Self::pool_uses_unacked) before
    /// consuming.
    pub fn announce_use(&mut self, now: Instant, mut u: PoolUse) -> Result<u64, SessionError> {
        if self.is_stopped() {
            return Err(SessionError::Stopped);
        }
        if self.pool_uses_unacked() >= USE_LOG as u64 {
            return Err(SessionError::ApiMisuse("too many pool uses await acknowledgement"));
        }
        self.uses.last += 1;
        u.seq = self.uses.last;
        self.uses.log.push_back(u);
        while self.uses.log.len() > USE_LOG {
            self.uses.log.pop_front();
        }
        if self.uses.deadline.is_none() {
            self.uses.rounds = 0;
        }
        self.flush_uses(now);
        Ok(self.uses.last)
    }

    /// After a restart: the number of pool uses made so far for this ONU and the newest of
    /// them (rebuilt from the pool's ledger, without key switches), so uses the ONU has not
    /// applied can be re-sent once its pool sync says how far it got. Call before the
    /// first input.
    pub fn restore_pool_uses(&mut self, last: u64, recent: Vec<PoolUse>) {
        self.uses.last = last;
        self.uses.acked = last;
        self.uses.sent = last;
        self.uses.log = recent.into_iter().filter(|u| u.seq <= last).collect();
    }

    /// The last pool use announced and the last one the ONU acknowledged.
    pub fn pool_uses(&self) -> (u64, u64) {
        (self.uses.last, self.uses.acked)
    }

    /// Pool uses announced and not yet acknowledged.
    pub fn pool_uses_unacked(&self) -> u64 {
        self.uses.last - self.uses.acked
    }

    fn flush_uses(&mut self, now: Instant) {
        if let Err(e) = self.try_flush_uses(now) {
            self.fail(now, e);
        }
    }

    /// Sends the uses due: new ones (up to [`USE_WINDOW`] beyond the acknowledged one), or
    /// all unacknowledged ones when the retransmission timer fired.
    fn try_flush_uses(&mut self, now: Instant) -> Result<(), LinkError> {
        if self.is_stopped() || self.tagged_in_flight() || self.sync != SyncState::Done {
            return Ok(());
        }
        let u = &self.uses;
        if u.last <= u.acked {
            self.uses.deadline = None;
            return Ok(());
        }
        let due = u.deadline.is_some_and(|d| now >= d);
        if due && u.rounds >= self.cfg.max_retries {
            // Hold until the ONU answers or a new connection (every retransmission costs a
            // pad at both ends).
            self.uses.deadline = None;
            return Ok(());
        }
        let from = if due { u.acked + 1 } else { u.sent.max(u.acked) + 1 };
        let to = u.last.min(u.acked + USE_WINDOW);
        if from > to {
            return Ok(());
        }
        let pad = self.cfg.mac.pad_len() as u64;
        for seq in from..=to {
            // Keep the pads a block needs (see `reserve_ok`).
            if self.link.reserve().1 < 5 * pad {
                break;
            }
            let Some(msg) = self.uses.log.iter().find(|x| x.seq == seq).cloned() else {
                // Not in the log (too old): the ONU cannot catch up (fail closed).
                self.pool_failed(now);
                return Ok(());
            };
            let bytes = self.send_control(&Message::PoolUse(msg), due && seq == from)?;
            self.q.frame(bytes);
            self.uses.sent = self.uses.sent.max(seq);
        }
        if due {
            self.uses.rounds += 1;
        }
        self.uses.deadline = Some(now + self.cfg.rto);
        Ok(())
    }

    /// The ONU applied every use up to `seq` (authenticated).
    fn on_use_ack(&mut self, now: Instant, seq: u64) -> Result<(), SessionError> {
        if seq > self.uses.last {
            return Err(SessionError::PeerMisbehaved(format!(
                "pool use {seq} acknowledged, only {} announced",
                self.uses.last
            )));
        }
        if seq > self.uses.acked {
            self.uses.acked = seq;
            self.uses.rounds = 0;
            self.uses.deadline = None;
            self.flush_uses(now);
        }
        Ok(())
    }

    /// Forgets the slot map waiting to be acknowledged (e.g. the ONU was declared lost).
    pub fn cancel_slot_map(&mut self) {
        self.control = None;
    }

    /// The newest slot-map version the ONU acknowledged.
    pub fn slot_map_acked(&self) -> Option<u32> {
        self.slot_map_acked
    }

    /// Tagged frames from the ONU whose tags checked out (each proves the ONU holds its
    /// authentication material: the OLT's evidence that a joining ONU is authentic).
    pub fn peer_tags_verified(&self) -> u64 {
        self.peer_tags
    }

    fn tagged_in_flight(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.tagged)
    }

    /// Sends the pending slot map if it is due and no tagged request awaits its reply; a
    /// failure (authentication material exhausted) stops the session (fail closed).
    fn flush_control(&mut self, now: Instant) {
        if let Err(e) = self.try_flush_control(now) {
            self.fail(now, e);
        }
    }

    fn try_flush_control(&mut self, now: Instant) -> Result<(), LinkError> {
        if self.is_stopped() || self.tagged_in_flight() {
            return Ok(());
        }
        let Some(c) = self.control.as_ref() else { return Ok(()) };
        if c.deadline.is_some_and(|d| now < d) {
            return Ok(());
        }
        if c.sent > self.cfg.max_retries {
            self.control = None;
            return Ok(());
        }
        let msg = Message::SlotMap(c.update.clone());
        let bytes = self.send_control(&msg, c.sent > 0)?;
        let Some(c) = self.control.as_mut() else { return Ok(()) };
        c.sent += 1;
        c.deadline = Some(now + self.cfg.rto);
        self.q.frame(bytes);
        Ok(())
    }

    /// Frames a tagged control message, loading a hash key if none is loaded.
    fn send_control(&mut self, msg: &Message, retransmission: bool) -> Result<Vec<u8>, LinkError> {
        let between_blocks =
            self.in_flight.is_none() && matches!(&self.state, State::Sifting(acc) if acc.batch == 0);
        if retransmission && between_blocks {
            // No acknowledgement: the ONU may have refused a forged frame and burnt this hash
            // key without telling us (outside a block it has nobody to tell). A fresh key
            // for the retransmission gets through either way; no block uses this one yet.
            self.link.burn_epoch();
        }
        if self.link.epoch().is_none() {
            // Between blocks after an abort the hash key is burnt: load a fresh one. It is
            // new (never used by an aborted block), so the next block may keep it.
            self.link.start_epoch(false)?;
            self.refresh_epoch = false;
            self.blocks_in_epoch = 0;
        }
        self.link.send_control(msg, true)
    }

    /// Sends the pool sync when it is due (see [`super`], "Pool agreement"): the first time
    /// only when `start` (a new connection, or blocks are waiting to run), then on its
    /// retransmission timer. A failure (authentication material exhausted) stops the
    /// session.
    fn flush_sync(&mut self, now: Instant, start: bool) {
        let sent = match self.sync {
            _ if self.is_stopped() => return,
            SyncState::Needed if start => 0,
            SyncState::Sent { deadline, sent } if now >= deadline => {
                if sent > self.cfg.max_retries {
                    self.sync = SyncState::GaveUp;
                    return;
                }
                sent
            }
            _ => return,
        };
        let msg = Message::PoolSync(super::message::PoolSync {
            last_committed: self.last_committed,
            offer: self.offer.as_ref().map(|h| h.block_id),
        });
        match self.send_control(&msg, sent > 0) {
            Ok(bytes) => {
                self.q.frame(bytes);
                self.sync = SyncState::Sent { deadline: now + self.cfg.rto, sent: sent + 1 };
            }
            Err(e) => self.fail(now, e),
        }
    }

    /// The ONU answered the pool sync: commit or discard the offered block, and let blocks
    /// run.
    fn on_sync_ack(&mut self, now: Instant, kept: Option<Uuid>, applied: u64) -> Result<(), SessionError> {
        if !matches!(self.sync, SyncState::Sent { .. } | SyncState::GaveUp) {
            // A late duplicate: the sync is settled.
            return Ok(());
        }
        if let Some(h) = self.offer.take() {
            if kept == Some(h.block_id) {
                self.commit(h);
            } else {
                self.q.event(Event::Discarded { id: h.block_id });
            }
        } else if kept.is_some() {
            return Err(SessionError::PeerMisbehaved("pool sync kept a block that was not offered".into()));
        }
        if applied > self.uses.last {
            // The ONU mirrored consumptions this end never made: the pools have diverged.
            self.pool_failed(now);
            return Err(SessionError::PeerMisbehaved(format!(
                "the ONU applied pool use {applied}, only {} announced",
                self.uses.last
            )));
        }
        // Re-send from what the ONU applied (it may have restarted, or we did).
        self.uses.acked = applied;
        self.uses.sent = applied;
        self.uses.deadline = None;
        self.uses.rounds = 0;
        self.sync = SyncState::Done;
        self.flush_uses(now);
        self.try_announce(now);
        Ok(())
    }

    /// Drops the offered block, if any (it is discarded).
    fn discard_offer(&mut self) {
        if let Some(h) = self.offer.take() {
            self.q.event(Event::Discarded { id: h.block_id });
        }
    }

    fn on_control(&mut self, now: Instant, msg: Message, authenticated: bool) -> Result<(), SessionError> {
        match msg {
            Message::PoolSyncAck(a) if authenticated => self.on_sync_ack(now, a.kept, a.uses_applied),
            Message::PoolUseAck(a) if authenticated => self.on_use_ack(now, a.seq),
            Message::SlotMapAck(SlotMapAck { version }) => {
                if self.control.as_ref().is_some_and(|c| c.update.version == version) {
                    self.control = None;
                    self.slot_map_acked = Some(version);
                } else if self.slot_map_acked.is_none_or(|v| version > v) && authenticated {
                    // Only an authenticated ack may vouch for a version we no longer track.
                    self.slot_map_acked = Some(version);
                }
                Ok(())
            }
            other => Err(SessionError::Unexpected {
                got: other.name(),
                expected: "an acknowledgement of a slot map, a pool sync or a pool use (uses and syncs tagged)",
            }),
        }
    }

    /// The next frame to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.q.poll_transmit()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.q.poll_event()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_stopped() {
            return None;
        }
        let rt = self.in_flight.as_ref().map(|f| f.deadline);
        // A held slot map goes out when the tagged request is answered (a frame, not a
        // timer); otherwise at its retransmission deadline.
        let ctl = match &self.control {
            Some(c) if !self.tagged_in_flight() => Some(c.deadline.unwrap_or(Instant::ZERO)),
            _ => None,
        };
        let rt = match (rt, ctl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let uses = self.uses.deadline.filter(|_| !self.tagged_in_flight() && self.sync == SyncState::Done);
        let rt = match (rt, uses) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let rt = match (rt, self.sync) {
            (Some(a), SyncState::Sent { deadline, .. }) => Some(a.min(deadline)),
            (None, SyncState::Sent { deadline, .. }) => Some(deadline),
            (a, _) => a,
        };
        let sift = match &self.state {
            State::Sifting(acc)
                if self.sync == SyncState::Done && acc.outstanding.is_none() && !self.pending.is_empty() =>
            {
                self.sift_deadline
            }
            _ => None,
        };
        match (rt, sift) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Timers: retransmission and the sift interval.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_stopped() {
            return;
        }
        if let Some(f) = self.in_flight.as_mut()
            && now >= f.deadline
        {
            if f.retries >= self.cfg.max_retries {
                self.in_flight = None;
                self.abort_block(now, AbortReason::Timeout, false, true);
            } else {
                f.retries += 1;
                f.deadline = now + self.cfg.rto;
                self.q.frame(f.bytes.clone());
            }
        }
        if self.sift_deadline.is_some_and(|d| now >= d) {
            self.try_announce(now);
        }
        self.flush_sync(now, false);
        self.flush_control(now);
        self.flush_uses(now);
    }

    /// A frame from the ONU. On `Err` the frame was refused and nothing changed (a refused
    /// tag also burns its pad and hash key and abandons the block).
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Result<(), SessionError> {
        let r = self.handle_frame_inner(now, bytes);
        // The frame may have answered the tagged request a slot map was waiting for.
        self.flush_control(now);
        self.flush_uses(now);
        r
    }

    fn handle_frame_inner(&mut self, now: Instant, bytes: &[u8]) -> Result<(), SessionError> {
        if self.is_stopped() {
            return Err(SessionError::Stopped);
        }
        let (msg, authenticated) = match self.link.receive(bytes) {
            Ok(Received::Message { msg, authenticated }) => (msg, authenticated),
            Ok(Received::Duplicate) => return Ok(()),
            Err(LinkError::BadTag) => {
                self.q.event(Event::Alarm(Alarm::TagRefused));
                self.in_flight = None;
                self.abort_block(now, AbortReason::BadTag, false, true);
                return Err(LinkError::BadTag.into());
            }
            Err(e) => return Err(e.into()),
        };
        if authenticated {
            self.peer_tags += 1;
        }
        if msg.is_control() {
            return self.on_control(now, msg, authenticated);
        }
        if msg.block() != self.block {
            // An answer to an earlier block (e.g. a late retransmission): stale, ignored.
            return Err(SessionError::Unexpected {
                got: msg.name(),
                expected: "a message of the current block",
            });
        }
        match msg {
            Message::SiftAnswer(a) => self.on_sift_answer(now, a),
            Message::ReconcileAnswer(a) => self.on_reconcile_answer(now, a),
            Message::Confirm(c) if authenticated => self.on_confirm(now, c),
            Message::Committed(c) if authenticated => self.on_committed(now, c),
            Message::AbortUp(a) => {
                self.in_flight = None;
                self.abort_block(now, a.reason, true, false);
                Ok(())
            }
            other => Err(SessionError::Unexpected { got: other.name(), expected: self.expecting() }),
        }
    }

    fn expecting(&self) -> &'static str {
        match &self.state {
            State::Sifting(_) => "sift_answer",
            State::Reconciling { .. } => "reconcile_answer",
            State::AwaitConfirm(_) => "an authenticated confirm",
            State::AwaitCommitted(_) => "an authenticated committed",
            State::Stopped => "nothing",
        }
    }

    fn send(&mut self, now: Instant, msg: &Message, expect_reply: bool) -> Result<(), LinkError> {
        let tagged = self.link.policy().tags(msg);
        if expect_reply && tagged {
            // Last chance for a due slot map before this request holds it back.
            self.in_flight = None;
            self.try_flush_control(now)?;
            self.try_flush_uses(now)?;
        }
        let bytes = self.link.send(msg)?;
        if expect_reply {
            self.in_flight =
                Some(InFlight { bytes: bytes.clone(), deadline: now + self.cfg.rto, retries: 0, tagged });
        }
        self.q.frame(bytes);
        Ok(())
    }

    /// Sends the next sift batch if sifting and nothing is outstanding.
    fn try_announce(&mut self, now: Instant) {
        if self.sync != SyncState::Done {
            // Nothing runs before both pools agree; the first detections start the sync.
            self.flush_sync(now, true);
            return;
        }
        let State::Sifting(acc) = &self.state else { return };
        if acc.outstanding.is_some() || self.pending.is_empty() {
            return;
        }
        if acc.batch == 0 && !(self.reserve_ok(now) && self.begin_epoch(now)) {
            return;
        }
        let State::Sifting(acc) = &mut self.state else { return };
        let n = self.pending.len().min(self.cfg.sift_batch);
        let dets: Vec<DetectionRecord> = self.pending.drain(..n).collect();
        let ann = sift::announce(&dets);
        let mut gate_deltas = Vec::with_capacity(ann.gates.len());
        let mut prev = 0;
        for (i, &g) in ann.gates.iter().enumerate() {
            gate_deltas.push(if i == 0 { g } else { g - prev });
            prev = g;
        }
        let msg = Message::Announce(Announce {
            block: self.block,
            batch: acc.batch,
            gate_deltas,
            bases: ann.bases,
        });
        acc.batch += 1;
        acc.outstanding = Some(dets);
        self.sift_deadline = if self.pending.is_empty() { None } else { Some(now + self.cfg.sift_interval) };
        if let Err(e) = self.send(now, &msg, true) {
            self.fail(now, e);
        }
    }

    /// Checks the authentication reserve covers one more block; stops the session with an
    /// alarm otherwise (fail closed).
    fn reserve_ok(&mut self, now: Instant) -> bool {
        let (hk, tx, rx) = self.link.reserve();
        let pad = self.cfg.mac.pad_len() as u64;
        // One hash key; per-phase tags: Estimate, Finish, Ack down (and a margin of one for
        // a control frame), Confirm and Committed up.
        if hk >= crate::mac::HASH_KEY_LEN as u64 && tx >= 4 * pad && rx >= 2 * pad {
            return true;
        }
        self.stop(now, AbortReason::AuthReserveLow);
        false
    }

    /// Loads the hash key for a new block: a fresh epoch after an abort or every
    /// `hash_key_refresh_blocks` blocks.
    fn begin_epoch(&mut self, now: Instant) -> bool {
        let refresh = self.refresh_epoch || self.blocks_in_epoch >= self.cfg.hash_key_refresh_blocks.max(1);
        match self.link.start_epoch(refresh) {
            Ok(_) => {
                if refresh {
                    self.blocks_in_epoch = 0;
                }
                self.refresh_epoch = false;
                self.blocks_in_epoch += 1;
                true
            }
            Err(e) => {
                self.fail(now, e);
                false
            }
        }
    }

    fn stop(&mut self, now: Instant, reason: AbortReason) {
        if reason == AbortReason::AuthReserveLow {
            self.q.event(Event::Alarm(Alarm::AuthReserveLow));
        }
        let _ =
            self.send(now, &Message::AbortDown(Abort { block: self.block, reason: reason.clone() }), false);
        self.in_flight = None;
        self.control = None;
        if let State::AwaitConfirm(h) | State::AwaitCommitted(h) =
            core::mem::replace(&mut self.state, State::Stopped)
        {
            self.q.event(Event::Discarded { id: h.block_id });
        }
        self.discard_offer();
        self.q.event(Event::Stopped(reason));
    }

    fn fail(&mut self, now: Instant, e: LinkError) {
        let reason = match e {
            LinkError::Auth(_) => AbortReason::AuthReserveLow,
            _ => AbortReason::Protocol,
        };
        self.stop(now, reason);
    }

    /// Abandons the current block and starts the next one.
    fn abort_block(&mut self, now: Instant, reason: AbortReason, by_peer: bool, tell_peer: bool) {
        if self.is_stopped() {
            return;
        }
        if tell_peer {
            let _ = self.send(
                now,
                &Message::AbortDown(Abort { block: self.block, reason: reason.clone() }),
                false,
            );
        }
        if let State::AwaitConfirm(h) | State::AwaitCommitted(h) = &self.state {
            self.q.event(Event::Discarded { id: h.block_id });
        }
        self.q.event(Event::Aborted { block: self.block, reason, by_peer });
        self.refresh_epoch = true;
        self.link.burn_epoch();
        self.next_block(now);
    }

    fn next_block(&mut self, now: Instant) {
        self.block += 1;
        self.state = State::Sifting(SiftAcc::default());
        self.block_auth_start = self.link.auth_bits_spent();
        if !self.pending.is_empty() {
            self.sift_deadline = Some(now);
            self.try_announce(now);
        }
    }

    fn on_sift_answer(&mut self, now: Instant, a: super::message::SiftAnswer) -> Result<(), SessionError> {
        let State::Sifting(acc) = &mut self.state else {
            return Err(SessionError::Unexpected { got: "sift_answer", expected: self.expecting() });
        };
        if acc.batch == 0 || a.batch != acc.batch - 1 {
            return Err(SessionError::Unexpected {
                got: "sift_answer",
                expected: "the answer to the last batch",
            });
        }
        let Some(dets) = acc.outstanding.as_ref() else {
            return Err(SessionError::Unexpected {
                got: "sift_answer",
                expected: "no answer (nothing outstanding)",
            });
        };
        let rx =
            sift::apply_answer(dets, &a.answer).map_err(|e| SessionError::PeerMisbehaved(e.to_string()))?;
        let announced = dets.len() as u64;
        acc.outstanding = None;
        self.in_flight = None;
        acc.key.bits.extend_from(&rx.key.bits);
        acc.key.intensities.extend_from_slice(&rx.key.intensities);
        self.sifted.announced += announced;
        for k in 0..3 {
            self.sifted.counts.key.n[k] += rx.counts.key.n[k];
            self.sifted.counts.test.n[k] += rx.counts.test.n[k];
            self.sifted.counts.test.m[k] += rx.counts.test.m[k];
            acc.counts.key.n[k] += rx.counts.key.n[k];
            acc.counts.test.n[k] += rx.counts.test.n[k];
            acc.counts.test.m[k] += rx.counts.test.m[k];
        }
        if acc.key.bits.len() >= self.cfg.block_bits {
            self.finish_sifting(now);
        } else if self.pending.len() >= self.cfg.sift_batch || self.sift_deadline.is_some_and(|d| now >= d) {
            self.try_announce(now);
        }
        Ok(())
    }

    fn bound_input(&self, counts: &DecoyCounts, lambda: f64) -> BoundInput {
        BoundInput::from_counts(self.cfg.decoy, counts, self.cfg.eps_sec, self.cfg.eps_cor, lambda)
    }

    fn finish_sifting(&mut self, now: Instant) {
        let State::Sifting(acc) = core::mem::replace(&mut self.state, State::Stopped) else { return };
        let n = acc.key.bits.len();
        let q_test = acc.counts.test.qber();
        // Pre-check (DESIGN.md §3 item 4): even a perfect code leaks n·h(Q); if the bound
        // proves nothing beyond the authentication share with that, stop here.
        let share_bits = 8 * self.cfg.auth_share_bytes as u64;
        let tag_bits = verification::tag_bits(n, self.cfg.eps_cor);
        let excess = verification::excess_leakage_bits(tag_bits, self.cfg.eps_cor);
        let precheck_fail = self.cfg.precheck && {
            let ideal = n as f64 * binary_entropy(q_test.min(0.5)) + excess;
            finite_key(&self.bound_input(&acc.counts, ideal)).map_or(true, |o| o.ell <= share_bits)
        };
        let mut est = Estimate {
            block: self.block,
            last_committed: self.last_committed,
            counts: acc.counts,
            abort: None,
            requests: Vec::new(),
        };
        if precheck_fail {
            est.abort = Some(AbortReason::PrecheckNoKey);
            self.state = State::Sifting(acc);
            if let Err(e) = self.send(now, &Message::Estimate(est), false) {
                self.fail(now, e);
                return;
            }
            self.q.event(Event::Aborted {
                block: self.block,
                reason: AbortReason::PrecheckNoKey,
                by_peer: false,
            });
            self.next_block(now);
            return;
        }
        let qber = q_test.clamp(MIN_PLANNING_QBER, MAX_PLANNING_QBER);
        let corrector = Schedule::for_qber(qber, n).and_then(|s| {
            CascadeCorrector::new(acc.key.bits.clone(), s, &mut self.rng, self.cfg.cascade.clone())
        });
        let mut corrector = match corrector {
            Ok(c) => Box::new(c),
            Err(_) => {
                self.state = State::Sifting(acc);
                self.abort_block(now, AbortReason::ReconciliationFailed, false, true);
                return;
            }
        };
        while let Ok(Some(r)) = corrector.poll_request() {
            est.requests.push(r);
        }
        self.state = State::Reconciling { acc, corrector };
        if let Err(e) = self.send(now, &Message::Estimate(est), true) {
            self.fail(now, e);
        }
    }

    fn on_reconcile_answer(
        &mut self,
        now: Instant,
        a: super::message::ReconcileAnswer,
    ) -> Result<(), SessionError> {
        let State::Reconciling { corrector, .. } = &mut self.state else {
            return Err(SessionError::Unexpected { got: "reconcile_answer", expected: self.expecting() });
        };
        if a.replies.len() != 1 {
            return Err(SessionError::PeerMisbehaved(format!(
                "{} reconciliation replies, expected 1",
                a.replies.len()
            )));
        }
        // A reply that does not fit is refused without changing anything; the request is
        // retransmitted on the timer.
        corrector.handle_reply(&a.replies[0]).map_err(|e| SessionError::PeerMisbehaved(e.to_string()))?;
        self.in_flight = None;
        let mut requests = Vec::new();
        loop {
            match corrector.poll_request() {
                Ok(Some(r)) => requests.push(r),
                Ok(None) => break,
                Err(_) => {
                    self.abort_block(now, AbortReason::ReconciliationFailed, false, true);
                    return Ok(());
                }
            }
        }
        if corrector.is_finished() {
            self.finish_block(now, requests);
        } else if let Err(e) =
            self.send(now, &Message::Reconcile(Reconcile { block: self.block, requests }), true)
        {
            self.fail(now, e);
        }
        Ok(())
    }

    /// Verification, key length, privacy amplification, and the `Finish` message.
    fn finish_block(&mut self, now: Instant, done: Vec<crate::reconcile::ReconcileRequest>) {
        let State::Reconciling { acc, corrector } = core::mem::replace(&mut self.state, State::Stopped)
        else {
            return;
        };
        let rec = match corrector.finish() {
            Ok(r) => r,
            Err(_) => {
                self.state = State::Sifting(SiftAcc::default());
                self.abort_block(now, AbortReason::ReconciliationFailed, false, true);
                return;
            }
        };
        let n = rec.key.len();
        let tag_bits = verification::tag_bits(n, self.cfg.eps_cor);
        // Lim et al. 2014 Eq. (1) charges log2(2/ε_cor) for verification; a longer tag's
        // excess is leakage too (DESIGN.md §3 item 5).
        let lambda = rec.leaked_bits as f64 + verification::excess_leakage_bits(tag_bits, self.cfg.eps_cor);
        let bound = finite_key(&self.bound_input(&acc.counts, lambda));
        let share_bits = 8 * self.cfg.auth_share_bytes as u64;
        let mut stats = BlockStats {
            block: self.block,
            key_bits: n as u64,
            test_qber: acc.counts.test.qber(),
            key_qber: if n > 0 { rec.corrected_bits as f64 / n as f64 } else { 0.0 },
            lambda_ec: rec.leaked_bits,
            verification_bits: tag_bits,
            round_trips: rec.round_trips,
            ..BlockStats::default()
        };
        let ell = match bound {
            Ok(o) if o.ell > share_bits => {
                stats.phi = o.phi;
                o.ell
            }
            _ => {
                self.state = State::Sifting(SiftAcc::default());
                self.abort_block(now, AbortReason::BoundZero, false, true);
                return;
            }
        };
        let verification = match VerificationMessage::new(&rec.key, tag_bits, &mut self.rng) {
            Ok(v) => v,
            Err(_) => {
                self.state = State::Sifting(SiftAcc::default());
                self.abort_block(now, AbortReason::Protocol, false, true);
                return;
            }
        };
        let ell_usize = ell as usize;
        let seed = match ToeplitzSeed::random(n, ell_usize, &mut self.rng) {
            Ok(s) => s,
            Err(_) => {
                self.state = State::Sifting(SiftAcc::default());
                self.abort_block(now, AbortReason::Protocol, false, true);
                return;
            }
        };
        let Ok(key) = toeplitz_hash(&rec.key, &seed, ell_usize) else {
            self.state = State::Sifting(SiftAcc::default());
            self.abort_block(now, AbortReason::Protocol, false, true);
            return;
        };
        let mut id_bytes = [0u8; 16];
        self.rng.fill_bytes(&mut id_bytes);
        let block_id = uuid::Builder::from_random_bytes(id_bytes).into_uuid();
        stats.ell = ell;
        stats.auth_share_bits = share_bits;
        // Into the pool, provisionally, before the Finish lets the ONU amplify (the frame
        // below leaves only after the driver took this event).
        self.q.event(Event::Provisional(provisional(block_id, &key, share_bits as usize)));
        let msg = Message::Finish(Finish {
            block: self.block,
            requests: done,
            verification,
            ell,
            pa_seed: seed.as_bits().clone(),
            block_id,
        });
        self.state = State::AwaitConfirm(Held { key, block_id, stats });
        if let Err(e) = self.send(now, &msg, true) {
            self.fail(now, e);
        }
    }

    fn on_confirm(&mut self, now: Instant, c: super::message::Confirm) -> Result<(), SessionError> {
        let State::AwaitConfirm(h) = &self.state else {
            return Err(SessionError::Unexpected { got: "confirm", expected: self.expecting() });
        };
        if c.block_id != h.block_id {
            self.in_flight = None;
            self.abort_block(now, AbortReason::Inconsistent, false, true);
            return Err(SessionError::PeerMisbehaved("confirm names another block".into()));
        }
        self.in_flight = None;
        let State::AwaitConfirm(h) = core::mem::replace(&mut self.state, State::Stopped) else {
            unreachable!("matched above")
        };
        let ack = Message::Ack(Ack { block: self.block, block_id: h.block_id });
        self.state = State::AwaitCommitted(h);
        if let Err(e) = self.send(now, &ack, true) {
            self.fail(now, e);
        }
        Ok(())
    }

    fn on_committed(&mut self, now: Instant, c: super::message::Committed) -> Result<(), SessionError> {
        let State::AwaitCommitted(h) = &self.state else {
            return Err(SessionError::Unexpected { got: "committed", expected: self.expecting() });
        };
        if c.block_id != h.block_id {
            self.in_flight = None;
            self.abort_block(now, AbortReason::Inconsistent, false, true);
            return Err(SessionError::PeerMisbehaved("committed names another block".into()));
        }
        self.in_flight = None;
        let State::AwaitCommitted(h) =
            core::mem::replace(&mut self.state, State::Sifting(SiftAcc::default()))
        else {
            unreachable!("matched above")
        };
        self.commit(h);
        self.next_block(now);
        Ok(())
    }

    /// Commits a held block: its share joins the authentication material, the driver
    /// commits it in the pool ([`Event::Block`]).
    fn commit(&mut self, h: Held) {
        let Held { key, block_id, mut stats } = h;
        let share_bits = stats.auth_share_bits as usize;
        self.link.append_share(&key.slice(0, share_bits).to_bytes());
        self.last_committed = Some(block_id);
        stats.auth_bits_spent = self.link.auth_bits_spent() - self.block_auth_start;
        let out = key.slice(share_bits, key.len());
        self.q.event(Event::Block(KeyBlock { id: block_id, key: out }, stats));
    }
}

/// The provisional form of a block of ℓ bits whose first `share_bits` are the
/// authentication share.
pub(super) fn provisional(id: Uuid, key: &BitBlock, share_bits: usize) -> super::ProvisionalBlock {
    super::ProvisionalBlock {
        id,
        key: key.slice(share_bits, key.len()),
        share: crate::secret::SecretBytes::new(key.slice(0, share_bits).to_bytes()),
    }
}
