//! The ONU side of a session: the source's side of sifting, Cascade responder, and the
//! second check of everything the OLT decides.

use super::auth::{AuthLedger, AuthMaterial};
use super::frame::Direction;
use super::link::{Link, LinkError, Received};
use super::message::{
    Abort, AbortReason, Ack, Announce, Confirm, Estimate, Finish, Message, PoolUse, PoolUseAck,
    ReconcileAnswer, SlotMapAck,
};
use super::queue::Queues;
use super::{Alarm, BlockStats, Event, KeyBlock, SessionConfig, SessionError};
use crate::bits::BitBlock;
use crate::finite_key::{BoundInput, finite_key};
use crate::pa::{ToeplitzSeed, toeplitz_hash};
use crate::reconcile::{CascadeResponder, ReconcileReply, ReconcileRequest, ReconcileResponder};
use crate::records::PulseRecord;
use crate::sift::{self, Announcement, DecoyCounts, SiftedKey};
use crate::time::Instant;
use crate::verification;
use uuid::Uuid;

#[derive(Default)]
struct SenderAcc {
    key: SiftedKey,
    test_n: [f64; 3],
    batch: u32,
    /// Announcement waiting for the driver's pulse records.
    awaiting: Option<(u64, Announcement)>,
}

enum State {
    /// No block in progress.
    Idle,
    Sifting(SenderAcc),
    Reconciling {
        key: BitBlock,
        counts: DecoyCounts,
        responder: Box<CascadeResponder>,
    },
    Stopped,
}

struct Pending {
    id: Uuid,
    key: BitBlock,
    stats: BlockStats,
}

/// The ONU's session with its OLT. See the [module docs](super) for the method families
/// and the call order.
pub struct OnuSession {
    cfg: SessionConfig,
    link: Link,
    block: u64,
    state: State,
    next_request: u64,
    q: Queues,
    last_reply: Option<Vec<u8>>,
    pending: Option<Pending>,
    block_auth_start: u64,
    /// The newest slot-map version handed to the driver, and the newest it installed.
    slot_map_seen: Option<u32>,
    slot_map_installed: Option<u32>,
    /// After a new connection the OLT re-sends the map in force: accept it again.
    slot_map_resync: bool,
    /// Our last reply was tagged and the OLT may still make us re-send it (it has not
    /// sent anything new since): no tagged acknowledgement may overtake its pad.
    tagged_reply_unsettled: bool,
    /// This connection's pool sync is done (blocks run only after it).
    synced: bool,
    /// The last block we committed while the OLT may not have (its ID and share length):
    /// until the OLT names it as committed, a sync or estimate naming an earlier block
    /// discards it and takes its share back.
    unconfirmed: Option<(Uuid, usize)>,
    /// The last pool use handed to the driver, and the last it applied.
    uses_seen: u64,
    uses_applied: u64,
    /// An acknowledgement of `uses_applied` is owed to the OLT (sent when it may be tagged).
    use_ack_owed: bool,
}

impl core::fmt::Debug for OnuSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OnuSession")
            .field("onu", &self.cfg.onu)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl OnuSession {
    /// A session for `cfg.onu` with its authentication material and pad ledger. The ONU
    /// makes no random choices.
    pub fn new(cfg: SessionConfig, material: AuthMaterial, ledger: Box<dyn AuthLedger>) -> Self {
        let link =
            Link::new(cfg.onu, Direction::Upstream, cfg.auth_policy, cfg.mac, cfg.max_body, material, ledger);
        Self {
            cfg,
            link,
            block: 0,
            state: State::Idle,
            next_request: 0,
            q: Queues::default(),
            last_reply: None,
            pending: None,
            block_auth_start: 0,
            slot_map_seen: None,
            slot_map_installed: None,
            slot_map_resync: false,
            tagged_reply_unsettled: false,
            synced: false,
            unconfirmed: None,
            uses_seen: 0,
            uses_applied: 0,
            use_ack_owed: false,
        }
    }

    /// After a restart: the number of pool uses this ONU's pool has applied (its mirrored
    /// consumptions). The pool sync tells the OLT, which re-sends the ones after it. Call
    /// before the first input.
    pub fn restore_pool_uses(&mut self, applied: u64) {
        self.uses_seen = applied;
        self.uses_applied = applied;
    }

    /// The last pool use handed to the driver and the last one it applied.
    pub fn pool_uses(&self) -> (u64, u64) {
        (self.uses_seen, self.uses_applied)
    }

    /// The driver applied pool use `seq` (from [`Event::PoolUse`], in order) durably:
    /// acknowledge it. Acknowledgements are cumulative and sent when they may be tagged
    /// (at the next [`poll_transmit`](Self::poll_transmit) that allows it), so uses applied
    /// together cost one pad.
    pub fn ack_pool_use(&mut self, seq: u64) -> Result<(), SessionError> {
        if self.is_stopped() {
            return Err(SessionError::Stopped);
        }
        if seq != self.uses_applied + 1 || seq > self.uses_seen {
            return Err(SessionError::ApiMisuse("pool uses must be acknowledged once each, in order"));
        }
        self.uses_applied = seq;
        self.use_ack_owed = true;
        Ok(())
    }

    /// Sends the owed use acknowledgement if it can be tagged now without overtaking a
    /// tagged reply that may still be re-sent, and keeping the upstream reserve's block
    /// floor. Otherwise it waits (the OLT's retransmission or the next block frame gives
    /// another chance).
    fn flush_use_ack(&mut self) {
        if !self.use_ack_owed || self.is_stopped() || !self.synced {
            return;
        }
        let pad = self.cfg.mac.pad_len() as u64;
        let (_, tx, _) = self.link.reserve();
        if self.tagged_reply_unsettled || self.link.epoch().is_none() || tx < 3 * pad {
            return;
        }
        let msg = Message::PoolUseAck(PoolUseAck { seq: self.uses_applied });
        match self.link.send_control(&msg, true) {
            Ok(b) => {
                self.use_ack_owed = false;
                self.q.frame(b);
            }
            Err(e) => self.stop(link_stop_reason(&e)),
        }
    }

    /// An authenticated pool use from the OLT.
    fn on_pool_use(&mut self, u: PoolUse) -> Result<(), SessionError> {
        if !self.synced {
            return Err(SessionError::Unexpected { got: "pool_use", expected: "the pool sync first" });
        }
        // The OLT sends a use only while none of its tagged requests awaits a reply, and
        // the link accepted this one's pad (so it was sent after every tagged request we
        // answered): no tagged reply of ours can be asked for again.
        self.tagged_reply_unsettled = false;
        if u.seq <= self.uses_seen {
            // A retransmission: our acknowledgement was lost, or is still owed.
            if self.uses_applied > 0 && u.seq <= self.uses_applied {
                self.use_ack_owed = true;
            }
            return Ok(());
        }
        if u.seq != self.uses_seen + 1 {
            return Err(SessionError::Unexpected { got: "pool_use", expected: "the next pool use in order" });
        }
        self.uses_seen = u.seq;
        self.q.event(Event::PoolUse(u));
        Ok(())
    }

    /// After a restart: the last block committed in this ONU's pool and the length of its
    /// authentication share (the material was rebuilt from the pre-shared secret and the
    /// committed shares). The OLT may not have committed it; the pool sync decides. Call
    /// before the first input.
    pub fn restore_last_committed(&mut self, last: Option<(Uuid, usize)>) {
        self.unconfirmed = last;
    }

    /// Whether this connection's pool sync is done.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The driver could not store a block, or its pool lacks the block the OLT named in a
    /// pool sync: stop, sending nothing more (fail closed).
    pub fn pool_failed(&mut self) {
        if !self.is_stopped() {
            self.q.drop_frames();
            self.stop(AbortReason::PoolStore);
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

    /// Authentication bits spent so far by this end.
    pub fn auth_bits_spent(&self) -> u64 {
        self.link.auth_bits_spent()
    }

    /// The next frame to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if let Some(f) = self.q.poll_transmit() {
            return Some(f);
        }
        self.flush_use_ack();
        self.q.poll_transmit()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.q.poll_event()
    }

    /// The ONU only reacts to the OLT; it has no timers.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Nothing to do: the ONU has no timers.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// A new connection to the OLT.
    pub fn reset_link(&mut self) {
        // Frames not yet sent belonged to the old connection.
        self.q.drop_frames();
        self.link.reset();
        self.last_reply = None;
        self.tagged_reply_unsettled = false;
        self.slot_map_resync = true;
        self.synced = false;
        if !self.is_stopped() {
            self.state = State::Idle;
        }
    }

    fn reply(&mut self, msg: &Message) -> Result<(), LinkError> {
        let bytes = self.link.send(msg)?;
        self.tagged_reply_unsettled = self.link.policy().tags(msg);
        self.last_reply = Some(bytes.clone());
        self.q.frame(bytes);
        Ok(())
    }

    /// Abandons the block in progress, telling the OLT why.
    fn abort(&mut self, reason: AbortReason) {
        let _ = self.reply(&Message::AbortUp(Abort { block: self.block, reason: reason.clone() }));
        self.q.event(Event::Aborted { block: self.block, reason, by_peer: false });
        self.state = State::Idle;
    }

    fn stop(&mut self, reason: AbortReason) {
        if reason == AbortReason::AuthReserveLow {
            self.q.event(Event::Alarm(Alarm::AuthReserveLow));
        }
        let _ = self.reply(&Message::AbortUp(Abort { block: self.block, reason: reason.clone() }));
        if let Some(p) = self.pending.take() {
            self.q.event(Event::Discarded { id: p.id });
        }
        self.state = State::Stopped;
        self.q.event(Event::Stopped(reason));
    }

    /// A frame from the OLT. On `Err` the frame was refused and nothing changed (a refused
    /// tag also burns its pad and hash key and abandons the block).
    pub fn handle_frame(&mut self, _now: Instant, bytes: &[u8]) -> Result<(), SessionError> {
        if self.is_stopped() {
            return Err(SessionError::Stopped);
        }
        let (msg, authenticated) = match self.link.receive(bytes) {
            Ok(Received::Message { msg, authenticated }) => (msg, authenticated),
            Ok(Received::Duplicate) => {
                // The OLT retransmitted: our reply was lost. Send it again, byte-identical.
                let waiting = matches!(&self.state, State::Sifting(a) if a.awaiting.is_some());
                if let (false, Some(r)) = (waiting, self.last_reply.clone()) {
                    self.q.frame(r);
                }
                return Ok(());
            }
            Err(LinkError::BadTag) => {
                self.q.event(Event::Alarm(Alarm::TagRefused));
                if !matches!(self.state, State::Idle) {
                    self.abort(AbortReason::BadTag);
                }
                return Err(LinkError::BadTag.into());
            }
            Err(e) => return Err(e.into()),
        };
        if msg.is_control() {
            return self.on_control(msg, authenticated);
        }
        if !self.synced {
            return Err(SessionError::Unexpected { got: msg.name(), expected: "the pool sync first" });
        }
        // A new block message: the OLT has our last reply and will not ask for it again.
        self.tagged_reply_unsettled = false;
        let block = msg.block();
        match msg {
            Message::Announce(a) => self.on_announce(a),
            Message::Estimate(e) if authenticated && block == self.block => self.on_estimate(e),
            Message::Reconcile(r) if block == self.block => {
                let requests = r.requests;
                self.on_requests(&requests)
            }
            Message::Finish(f) if authenticated && block == self.block => self.on_finish(f),
            Message::Ack(a) if authenticated => {
                self.on_ack(a);
                Ok(())
            }
            Message::AbortDown(a) => {
                if block == self.block && !matches!(self.state, State::Idle) {
                    self.state = State::Idle;
                    self.q.event(Event::Aborted { block, reason: a.reason, by_peer: true });
                }
                Ok(())
            }
            other => Err(SessionError::Unexpected {
                got: other.name(),
                expected: "a message of the current block (estimate, finish and ack authenticated)",
            }),
        }
    }

    fn on_control(&mut self, msg: Message, authenticated: bool) -> Result<(), SessionError> {
        let u = match msg {
            Message::SlotMap(u) => u,
            Message::PoolSync(p) if authenticated => return self.on_pool_sync(p),
            Message::PoolUse(u) if authenticated => return self.on_pool_use(u),
            other => {
                return Err(SessionError::Unexpected {
                    got: other.name(),
                    expected: "an authenticated slot map, pool sync or pool use",
                });
            }
        };
        if !authenticated {
            // The link refuses untagged slot maps; this is a second line.
            return Err(SessionError::Unexpected { got: "slot_map", expected: "an authenticated slot map" });
        }
        match self.slot_map_seen {
            Some(v) if u.version < v => {
                return Err(SessionError::Unexpected {
                    got: "slot_map",
                    expected: "a slot map newer than the one installed",
                });
            }
            Some(v) if u.version == v && !self.slot_map_resync => {
                // A retransmission: our acknowledgement was lost (or the driver has not
                // installed the map yet, and will acknowledge it when it does).
                if self.slot_map_installed == Some(v) {
                    self.send_slot_map_ack(v);
                }
                return Ok(());
            }
            _ => {}
        }
        self.slot_map_seen = Some(u.version);
        self.slot_map_resync = false;
        self.q.event(Event::SlotMap(u));
        Ok(())
    }

    /// The pool sync that opens a connection (see [`super`], "Pool agreement"). Idempotent:
    /// a retransmitted sync gets the same answer.
    fn on_pool_sync(&mut self, p: super::message::PoolSync) -> Result<(), SessionError> {
        let kept = match (p.offer, self.pending.as_ref()) {
            (Some(o), Some(h)) if h.id == o => {
                let Some(h) = self.pending.take() else { unreachable!("matched above") };
                self.commit(h);
                Some(o)
            }
            (Some(o), _) if self.unconfirmed.is_some_and(|(u, _)| u == o) => Some(o),
            _ => None,
        };
        if let Some(h) = self.pending.take() {
            self.q.event(Event::Discarded { id: h.id });
        }
        self.settle_unconfirmed(kept.or(p.last_committed));
        self.q.event(Event::PoolSync { last_committed: kept.or(p.last_committed) });
        self.synced = true;
        self.state = State::Idle;
        // Block numbers are the OLT's; a restarted OLT counts from 1 again.
        self.block = 0;
        let ack = Message::PoolSyncAck(super::message::PoolSyncAck { kept, uses_applied: self.uses_applied });
        // The sync's answer says how far we got: the OLT re-sends from there.
        self.use_ack_owed = false;
        match self.link.send_control(&ack, true) {
            Ok(bytes) => self.q.frame(bytes),
            Err(e) => self.stop(link_stop_reason(&e)),
        }
        Ok(())
    }

    /// The OLT says `last` is the last block it committed: a block we committed after it is
    /// discarded and its authentication share taken back.
    fn settle_unconfirmed(&mut self, last: Option<Uuid>) {
        if let Some((u, share_len)) = self.unconfirmed.take()
            && last != Some(u)
        {
            self.link.remove_last_share(share_len);
            self.q.event(Event::Discarded { id: u });
        }
    }

    /// The driver installed slot map `version` (from [`Event::SlotMap`]): acknowledge it to
    /// the OLT, which then stops retransmitting it.
    pub fn ack_slot_map(&mut self, version: u32) -> Result<(), SessionError> {
        if self.is_stopped() {
            return Err(SessionError::Stopped);
        }
        if self.slot_map_seen != Some(version) {
            return Err(SessionError::ApiMisuse("acknowledging a slot map that is not the newest received"));
        }
        self.slot_map_installed = Some(version);
        self.send_slot_map_ack(version);
        Ok(())
    }

    /// The newest slot-map version received (handed to the driver as [`Event::SlotMap`]).
    pub fn slot_map_version(&self) -> Option<u32> {
        self.slot_map_seen
    }

    /// Sends the acknowledgement, tagged when that is safe (see [`super::link`]): no tagged
    /// reply may still be re-sent, and the upstream reserve keeps the block's floor. A
    /// tagged acknowledgement also authenticates this ONU to the OLT.
    fn send_slot_map_ack(&mut self, version: u32) {
        let msg = Message::SlotMapAck(SlotMapAck { version });
        let pad = self.cfg.mac.pad_len() as u64;
        let (_, tx, _) = self.link.reserve();
        let tag = !self.tagged_reply_unsettled && self.link.epoch().is_some() && tx >= 3 * pad;
        let bytes = match self.link.send_control(&msg, tag) {
            Ok(b) => Ok(b),
            // Authentication could not be used: the ack only stops retransmissions, so it
            // goes untagged rather than not at all.
            Err(_) if tag => self.link.send_control(&msg, false),
            Err(e) => Err(e),
        };
        if let Ok(b) = bytes {
            self.q.frame(b);
        }
    }

    fn on_announce(&mut self, a: Announce) -> Result<(), SessionError> {
        if a.block < self.block {
            return Err(SessionError::Unexpected {
                got: "announce",
                expected: "a message of the current block",
            });
        }
        if a.block > self.block || matches!(self.state, State::Idle) {
            if a.batch != 0 {
                return Err(SessionError::Unexpected { got: "announce", expected: "batch 0 of a new block" });
            }
            if a.block > self.block && !matches!(self.state, State::Idle) {
                // The OLT moved on without us hearing its abort.
                self.q.event(Event::Aborted {
                    block: self.block,
                    reason: AbortReason::Timeout,
                    by_peer: true,
                });
            }
            self.block = a.block;
            self.block_auth_start = self.link.auth_bits_spent();
            let (hk, tx, rx) = self.link.reserve();
            let pad = self.cfg.mac.pad_len() as u64;
            if hk < crate::mac::HASH_KEY_LEN as u64 || tx < 2 * pad || rx < 4 * pad {
                self.stop(AbortReason::AuthReserveLow);
                return Ok(());
            }
            self.state = State::Sifting(SenderAcc::default());
        }
        let State::Sifting(acc) = &mut self.state else {
            return Err(SessionError::Unexpected {
                got: "announce",
                expected: "a message of the current phase",
            });
        };
        if a.batch != acc.batch || acc.awaiting.is_some() {
            return Err(SessionError::Unexpected { got: "announce", expected: "the next sift batch" });
        }
        let mut gates = Vec::with_capacity(a.gate_deltas.len());
        let mut g: u64 = 0;
        for (i, &d) in a.gate_deltas.iter().enumerate() {
            if i > 0 && d == 0 {
                return Err(SessionError::PeerMisbehaved("announced gates not strictly increasing".into()));
            }
            g = if i == 0 {
                d
            } else {
                g.checked_add(d).ok_or(SessionError::PeerMisbehaved("gate overflow".into()))?
            };
            gates.push(g);
        }
        let ann = Announcement { gates, bases: a.bases };
        ann.validate().map_err(|e| SessionError::PeerMisbehaved(e.to_string()))?;
        let offset = self.cfg.pulse_offset;
        let pulses = ann
            .gates
            .iter()
            .map(|&g| {
                let p = i128::from(g) - i128::from(offset);
                u64::try_from(p).ok()
            })
            .collect();
        let request = self.next_request;
        self.next_request += 1;
        acc.awaiting = Some((request, ann));
        self.q.event(Event::NeedPulses { request, pulses });
        Ok(())
    }

    /// The driver's answer to [`Event::NeedPulses`]: the pulse record of each requested
    /// pulse, in order (`None` where the source has none).
    pub fn handle_pulses(
        &mut self,
        _now: Instant,
        request: u64,
        records: &[Option<PulseRecord>],
    ) -> Result<(), SessionError> {
        let State::Sifting(acc) = &mut self.state else {
            return Err(SessionError::ApiMisuse("pulses for a request that is no longer open"));
        };
        let Some((req, ann)) = acc.awaiting.as_ref() else {
            return Err(SessionError::ApiMisuse("pulses without an open request"));
        };
        if *req != request {
            return Err(SessionError::ApiMisuse("pulses for a request that is no longer open"));
        }
        let (answer, tx) =
            sift::answer(ann, records).map_err(|_| SessionError::ApiMisuse("pulse count differs"))?;
        acc.awaiting = None;
        acc.key.bits.extend_from(&tx.key.bits);
        acc.key.intensities.extend_from_slice(&tx.key.intensities);
        for k in 0..3 {
            acc.test_n[k] += tx.test_n[k];
        }
        let batch = acc.batch;
        acc.batch += 1;
        let msg = Message::SiftAnswer(super::message::SiftAnswer { block: self.block, batch, answer });
        if let Err(e) = self.reply(&msg) {
            self.stop(link_stop_reason(&e));
        }
        Ok(())
    }

    /// Settles the blocks in doubt once the OLT says (authenticated) which block it
    /// committed last: a pending block is discarded (the OLT commits only after our
    /// `Committed`, so it cannot be the one), a committed one kept only if named.
    fn settle_pending(&mut self, committed: Option<Uuid>) {
        if let Some(p) = self.pending.take() {
            self.q.event(Event::Discarded { id: p.id });
        }
        self.settle_unconfirmed(committed);
    }

    fn commit(&mut self, p: Pending) {
        let share_bits = p.stats.auth_share_bits as usize;
        self.link.append_share(&p.key.slice(0, share_bits).to_bytes());
        let out = p.key.slice(share_bits, p.key.len());
        self.unconfirmed = Some((p.id, share_bits / 8));
        self.q.event(Event::Block(KeyBlock { id: p.id, key: out }, p.stats));
    }

    fn on_estimate(&mut self, e: Estimate) -> Result<(), SessionError> {
        let State::Sifting(acc) = &self.state else {
            return Err(SessionError::Unexpected { got: "estimate", expected: "sift batches" });
        };
        if acc.awaiting.is_some() {
            return Err(SessionError::Unexpected {
                got: "estimate",
                expected: "the answer to the open batch first",
            });
        }
        self.settle_pending(e.last_committed);
        let State::Sifting(acc) = &self.state else { unreachable!("checked above") };
        // The OLT's detection counts must be ours; its error counts must be possible.
        let own_key = acc.key.counts();
        let consistent = e.counts.key.n == own_key
            && e.counts.test.n == acc.test_n
            && BoundInput::from_counts(self.cfg.decoy, &e.counts, self.cfg.eps_sec, self.cfg.eps_cor, 0.0)
                .validate()
                .is_ok();
        if !consistent {
            self.abort(AbortReason::Inconsistent);
            return Ok(());
        }
        if let Some(reason) = e.abort {
            self.q.event(Event::Aborted { block: self.block, reason, by_peer: true });
            self.state = State::Idle;
            return Ok(());
        }
        let State::Sifting(acc) = core::mem::replace(&mut self.state, State::Idle) else { unreachable!() };
        let key = acc.key.bits;
        let responder = Box::new(CascadeResponder::new(key.clone()));
        self.state = State::Reconciling { key, counts: e.counts, responder };
        if self.on_requests(&e.requests).is_err() {
            self.abort(AbortReason::ReconciliationFailed);
        }
        Ok(())
    }

    /// Answers reconciliation requests (one reply expected per flight).
    fn on_requests(&mut self, requests: &[ReconcileRequest]) -> Result<(), SessionError> {
        let State::Reconciling { responder, .. } = &mut self.state else {
            return Err(SessionError::Unexpected {
                got: "reconcile",
                expected: "reconciliation to be running",
            });
        };
        let mut replies: Vec<ReconcileReply> = Vec::new();
        for r in requests {
            match responder.handle_request(r) {
                Ok(Some(rep)) => replies.push(rep),
                Ok(None) => {}
                // The responder refuses a malformed or unexpected request without
                // answering or counting anything; the OLT will retransmit the real one.
                Err(e) => return Err(SessionError::PeerMisbehaved(e.to_string())),
            }
        }
        if replies.is_empty() {
            return Ok(());
        }
        let msg = Message::ReconcileAnswer(ReconcileAnswer { block: self.block, replies });
        if let Err(e) = self.reply(&msg) {
            self.stop(link_stop_reason(&e));
        }
        Ok(())
    }

    fn on_finish(&mut self, f: Finish) -> Result<(), SessionError> {
        if !matches!(self.state, State::Reconciling { .. }) {
            return Err(SessionError::Unexpected { got: "finish", expected: "reconciliation to be running" });
        }
        // The finish is authenticated: a request the responder refuses here is a real
        // disagreement, not tampering.
        if self.on_requests(&f.requests).is_err() {
            self.abort(AbortReason::ReconciliationFailed);
            return Ok(());
        }
        let State::Reconciling { key, counts, responder } = core::mem::replace(&mut self.state, State::Idle)
        else {
            // on_requests aborted the block
            return Ok(());
        };
        if !responder.is_finished() {
            self.abort(AbortReason::ReconciliationFailed);
            return Ok(());
        }
        let n = key.len();
        let tag_bits = verification::tag_bits(n, self.cfg.eps_cor);
        if f.verification.check(&key, tag_bits).is_err() {
            self.abort(AbortReason::VerificationFailed);
            return Ok(());
        }
        // Recompute ℓ ourselves from the authenticated counts and our own leakage count.
        let lambda =
            responder.leaked_bits() as f64 + verification::excess_leakage_bits(tag_bits, self.cfg.eps_cor);
        let input =
            BoundInput::from_counts(self.cfg.decoy, &counts, self.cfg.eps_sec, self.cfg.eps_cor, lambda);
        let share_bits = 8 * self.cfg.auth_share_bytes as u64;
        let bound = match finite_key(&input) {
            Ok(o) if o.ell == f.ell && o.ell > share_bits => o,
            _ => {
                self.abort(AbortReason::Inconsistent);
                return Ok(());
            }
        };
        let ell = f.ell as usize;
        let Ok(seed) = ToeplitzSeed::from_bits(f.pa_seed, n, ell) else {
            self.abort(AbortReason::Inconsistent);
            return Ok(());
        };
        let Ok(out) = toeplitz_hash(&key, &seed, ell) else {
            self.abort(AbortReason::Inconsistent);
            return Ok(());
        };
        let stats = BlockStats {
            block: self.block,
            key_bits: n as u64,
            test_qber: counts.test.qber(),
            key_qber: 0.0,
            lambda_ec: responder.leaked_bits(),
            verification_bits: tag_bits,
            ell: f.ell,
            auth_share_bits: share_bits,
            round_trips: 0,
            auth_bits_spent: 0,
            phi: bound.phi,
        };
        // Into the pool, provisionally, before the Confirm lets the OLT rely on it (the frame
        // leaves only after the driver took this event).
        self.q.event(Event::Provisional(super::olt::provisional(f.block_id, &out, share_bits as usize)));
        if let Err(e) = self.reply(&Message::Confirm(Confirm { block: self.block, block_id: f.block_id })) {
            self.stop(link_stop_reason(&e));
            return Ok(());
        }
        let mut stats = stats;
        stats.auth_bits_spent = self.link.auth_bits_spent() - self.block_auth_start;
        self.pending = Some(Pending { id: f.block_id, key: out, stats });
        Ok(())
    }

    /// The OLT holds the block: commit it (the driver makes it durable before our
    /// `Committed` leaves) and tell the OLT, which commits on that.
    fn on_ack(&mut self, a: Ack) {
        let ours = match self.pending.take() {
            Some(p) if p.id == a.block_id => {
                self.commit(p);
                true
            }
            other => {
                self.pending = other;
                self.unconfirmed.is_some_and(|(u, _)| u == a.block_id)
            }
        };
        if ours {
            let msg = Message::Committed(super::message::Committed { block: a.block, block_id: a.block_id });
            if let Err(e) = self.reply(&msg) {
                self.stop(link_stop_reason(&e));
            }
        }
    }
}

fn link_stop_reason(e: &LinkError) -> AbortReason {
    match e {
        LinkError::Auth(_) => AbortReason::AuthReserveLow,
        _ => AbortReason::Protocol,
    }
}
