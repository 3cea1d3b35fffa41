//! The OLT driver: one receiver, one session per ONU, a bounded worker pool.
//!
//! Call pattern (sans-IO, the same in the emulation and the binary):
//! 1. [`OltDriver::handle_detections`] with each batch the receiver delivered: records are
//!    attributed to ONUs by the slot map in force at their gate (a gate no ONU owns — a
//!    guard — is dropped: no ONU's key may depend on it).
//! 2. [`OltDriver::handle_frames`] with every frame that arrived from the ONUs, and
//!    [`OltDriver::handle_timeout`] at [`OltDriver::poll_timeout`]. Both spread the work of
//!    different ONUs over up to `workers` threads and join them before returning, so the
//!    result does not depend on thread timing.
//! 3. Drain [`OltDriver::poll_transmit`] and send each frame to its ONU.
//!
//! Finished blocks go into the ONU's pool; [`OltDriver::stats`] has the per-ONU figures.
//!
//! Downstream encryption ([`crate::downstream`], off by default): after
//! [`OltDriver::enable_downstream`], call [`OltDriver::downstream_tick`] regularly with the
//! superframe in progress (it rotates each ONU's key when due, announcing the switch over
//! the ONU's session) and seal each ONU's payloads with [`OltDriver::seal_downstream`].

use crate::downstream::{DownstreamConfig, DownstreamStats, OltDownstream, Rotation, SealError};
use crate::monitor::{Alarm, Counts, Monitor};
use crate::scheduling::{Action, LinkView, OnuScheduling, ScheduleStepError, Scheduling, SchedulingConfig};
use crate::stats::OnuStats;
use qpon_hw::{DetectionRecord, DetectorStatus};
use qpon_kms::etsi::{IssuedKey, SupplyError, api_keys_available, api_runs, split_run};
use qpon_kms::{KeyPool, Purpose};
use qpon_mux::{Equalisation, OnuActivation, OnuId, SlotMapSchedule};
use qpon_qkd::session::{Event, OltSession, PoolUse};
use qpon_qkd::time::Instant;
use rand::CryptoRng;
use std::collections::{BTreeMap, VecDeque};

/// One ONU as the OLT driver holds it.
pub struct OnuLink<R: CryptoRng> {
    /// Its distillation session.
    pub session: OltSession<R>,
    /// Its key pool at the OLT.
    pub pool: Box<dyn KeyPool>,
    /// Its statistics.
    pub stats: OnuStats,
    batch: Vec<DetectionRecord>,
    inbox: Vec<Vec<u8>>,
    refused: u64,
    downstream: Option<OltDownstream>,
}

impl<R: CryptoRng> OnuLink<R> {
    /// Wraps a session and its pool.
    pub fn new(mut session: OltSession<R>, pool: Box<dyn KeyPool>) -> Self {
        // After a restart: the uses made so far (every announced use is a consumption for a
        // mirrored purpose: downstream keys, API keys), and the newest of them to re-send
        // to an ONU that missed them.
        if session.pool_uses() == (0, 0)
            && let Ok((n, recent)) = qpon_kms::recent_uses(pool.as_ref(), qpon_qkd::session::USE_LOG)
            && n > 0
        {
            session.restore_pool_uses(n, recent);
        }
        Self {
            session,
            pool,
            stats: OnuStats::default(),
            batch: Vec::new(),
            inbox: Vec::new(),
            refused: 0,
            downstream: None,
        }
    }

    /// Its downstream key state, when downstream encryption is on.
    pub fn downstream(&self) -> Option<&OltDownstream> {
        self.downstream.as_ref()
    }

    /// Rotates the ONU's downstream key if due: the key is taken from the pool (durably)
    /// and the switch announced on the session. Only while the session can announce it at
    /// once (synced, running, few uses unacknowledged), so a consumption is never made that
    /// the ONU cannot be told about.
    fn rotate_downstream(&mut self, now: Instant, superframe: u64) {
        let can_announce = self.can_announce();
        let Some(ds) = self.downstream.as_mut() else { return };
        ds.advance_to(superframe);
        if !ds.due(superframe) || !can_announce {
            return;
        }
        match ds.rotate(superframe, self.pool.as_mut()) {
            Rotation::Announce(u) => {
                self.announce(now, u);
            }
            Rotation::Failed(e) => self.pool_failure(now, e.to_string()),
            Rotation::NotDue | Rotation::PoolEmpty => {}
        }
    }

    /// Whether a consumption decided now can be announced at once (synced, running, few
    /// uses unacknowledged): the condition for taking a downstream key or pad run, so no
    /// consumption is made that the ONU cannot be told about.
    fn can_announce(&self) -> bool {
        !self.session.is_stopped() && self.session.is_synced() && self.session.pool_uses_unacked() < 4
    }

    /// Announces a consumption already made; its number, or `None` when the session refused
    /// it — then the pools would diverge, so the session is stopped (fail closed).
    fn announce(&mut self, now: Instant, u: PoolUse) -> Option<u64> {
        match self.session.announce_use(now, u) {
            Ok(seq) => Some(seq),
            Err(e) => {
                self.pool_failure(now, format!("pool use not announced: {e}"));
                None
            }
        }
    }

    /// The pool (or an announcement of its use) failed: recorded, and the session stops.
    fn pool_failure(&mut self, now: Instant, why: String) {
        self.stats.pool_error = Some(why);
        self.session.pool_failed(now);
    }

    /// One-time pads: makes the runs the ONU acknowledged usable, and takes and announces
    /// another run while the reserve is low (under the same conditions as a rotation, so a
    /// run is never taken that the ONU cannot be told about).
    fn refill_pads(&mut self, now: Instant) {
        let can_announce = self.can_announce();
        let Some(ds) = self.downstream.as_mut() else { return };
        ds.pads_acked(self.session.pool_uses().1);
        if !ds.pads_low() || !can_announce {
            return;
        }
        match ds.take_pad_run(self.pool.as_mut()) {
            Ok((u, bytes)) => {
                if let Some(seq) = self.announce(now, u)
                    && let Some(ds) = self.downstream.as_mut()
                {
                    ds.pad_run_announced(seq, bytes);
                }
            }
            // An empty pool only leaves the pad flow without pads (its frames are refused).
            Err(qpon_kms::PoolError::Exhausted { .. }) => {}
            Err(e) => self.pool_failure(now, e.to_string()),
        }
    }

    /// Issues `number` ETSI API keys of `unit` bytes (see [`qpon_kms::etsi`]): taken from
    /// the pool durably, in as few runs as its blocks allow, each run announced to the ONU
    /// as a pool use so its pool mirrors it. Only while the session can announce them at
    /// once (synced, running, the use log far from full); otherwise nothing is consumed. A
    /// pool or announcement failure part-way stops the session (fail closed): the runs
    /// already taken stay consumed and announced, recorded in the ledger, not returned.
    fn issue_api_keys(
        &mut self,
        now: Instant,
        unit: usize,
        number: usize,
    ) -> Result<Vec<IssuedKey>, SupplyError> {
        let onu = self.session.config().onu;
        let unavailable = |why: &str| SupplyError::Unavailable { onu, why: why.into() };
        if self.session.is_stopped() {
            return Err(unavailable("its session is stopped"));
        }
        if !self.session.is_synced() {
            return Err(unavailable("not connected, or its pool sync has not finished"));
        }
        let runs = self.pool.unused_runs().map_err(|e| SupplyError::Failed(e.to_string()))?;
        let plan = api_runs(&runs, unit as u64, number as u64).ok_or(SupplyError::Exhausted {
            requested: number as u64,
            available: api_keys_available(&runs, unit as u64, u64::MAX),
        })?;
        if self.session.pool_uses_unacked() + plan.len() as u64 > (qpon_qkd::session::USE_LOG / 2) as u64 {
            return Err(unavailable("too many pool uses await its acknowledgement"));
        }
        let mut keys = Vec::with_capacity(number);
        for len in plan {
            let (block, offset, bytes) = match self.pool.take(Purpose::Api, len as usize) {
                Ok(t) => t,
                Err(e) => {
                    self.pool_failure(now, e.to_string());
                    return Err(SupplyError::Failed(e.to_string()));
                }
            };
            let u =
                PoolUse { seq: 0, purpose: Purpose::Api as u8, block, offset, len: len as u32, switch: None };
            if self.announce(now, u).is_none() {
                return Err(SupplyError::Failed(self.stats.pool_error.clone().unwrap_or_default()));
            }
            keys.extend(split_run(block, offset, &bytes, unit));
        }
        self.stats.api_keys += keys.len() as u64;
        Ok(keys)
    }

    /// Frames refused so far (malformed, replayed, bad tags…).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Runs everything queued for this ONU: detections, frames, timers; then collects
    /// events into the pool and the statistics.
    fn run(&mut self, now: Instant) {
        if !self.batch.is_empty() {
            self.session.handle_detections(now, &self.batch);
            self.batch.clear();
        }
        for f in std::mem::take(&mut self.inbox) {
            if self.session.handle_frame(now, &f).is_err() {
                self.refused += 1;
            }
        }
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        self.take_events(now);
    }

    /// Applies the session's events to the pool and the statistics.
    fn take_events(&mut self, now: Instant) {
        // Each event's pool effect is durable before the next event is taken (frames that
        // depend on it are released only then: see the session's "Pool agreement"). A pool
        // that fails stops the session: nothing is confirmed that is not stored.
        while let Some(e) = self.session.poll_event() {
            let stored = match e {
                Event::Provisional(b) => self.pool.stage(&b),
                Event::Block(b, s) => {
                    let r = self.pool.append(b.id, &b.key);
                    if r.is_ok() {
                        self.stats.on_block(b.key.len() as u64, &s);
                    }
                    r
                }
                Event::Discarded { id } => {
                    self.stats.discarded += 1;
                    self.pool.discard(id)
                }
                Event::Aborted { reason, .. } => {
                    self.stats.on_abort(&reason);
                    Ok(())
                }
                Event::Stopped(reason) => {
                    self.stats.on_abort(&reason);
                    Ok(())
                }
                _ => Ok(()),
            };
            if let Err(e) = stored {
                self.pool_failure(now, e.to_string());
            }
        }
    }

    /// Takes the session's events, then queues the frames they released for `onu`.
    fn flush(&mut self, now: Instant, onu: u16, outbox: &mut VecDeque<(u16, Vec<u8>)>) {
        self.take_events(now);
        while let Some(f) = self.session.poll_transmit() {
            outbox.push_back((onu, f));
        }
    }
}

/// Runs `f` on every item, spreading the items over up to `workers` scoped threads in
/// contiguous chunks and joining them before returning (inline for one worker or one
/// item). Callers make the result independent of thread timing by giving each item its
/// own state.
pub fn run_parallel<T: Send>(items: Vec<T>, workers: usize, f: impl Fn(T) + Sync) {
    if items.len() <= 1 || workers <= 1 {
        items.into_iter().for_each(f);
        return;
    }
    let per = items.len().div_ceil(workers);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(workers);
    let mut it = items.into_iter();
    loop {
        let c: Vec<T> = it.by_ref().take(per).collect();
        if c.is_empty() {
            break;
        }
        chunks.push(c);
    }
    let f = &f;
    std::thread::scope(|s| {
        for chunk in chunks {
            s.spawn(move || chunk.into_iter().for_each(f));
        }
    });
}

/// The OLT driver. Generic over the RNG of the sessions' public random choices (the OS
/// RNG in the binary, seeded ChaCha in the emulation).
pub struct OltDriver<R: CryptoRng> {
    onus: BTreeMap<u16, OnuLink<R>>,
    slots: SlotMapSchedule,
    workers: usize,
    outbox: VecDeque<(u16, Vec<u8>)>,
    unattributed: u64,
    monitor: Monitor,
    scheduling: Option<Scheduling>,
    downstream: Option<DownstreamConfig>,
}

impl<R: CryptoRng + Send> OltDriver<R> {
    /// A driver with the slot maps in `slots`, running ONU work on up to `workers` threads
    /// (1 = inline).
    pub fn new(slots: SlotMapSchedule, workers: usize) -> Self {
        Self {
            onus: BTreeMap::new(),
            slots,
            workers: workers.max(1),
            outbox: VecDeque::new(),
            unattributed: 0,
            monitor: Monitor::default(),
            scheduling: None,
            downstream: None,
        }
    }

    /// Turns on downstream encryption with `config` for every ONU (present and added
    /// later); `config.enabled == false` turns it off (frames are then refused, never sent
    /// in clear).
    pub fn enable_downstream(&mut self, config: DownstreamConfig) {
        for (&onu, l) in self.onus.iter_mut() {
            l.downstream = Some(OltDownstream::new(onu, config));
        }
        self.downstream = Some(config);
    }

    /// The downstream step: call it regularly with the superframe in progress (the OLT's
    /// clock). Rotates every ONU's key that is due and sends the announcements.
    pub fn downstream_tick(&mut self, now: Instant, superframe: u64) {
        if self.downstream.is_none() {
            return;
        }
        for (&onu, l) in self.onus.iter_mut() {
            l.rotate_downstream(now, superframe);
            l.refill_pads(now);
            l.flush(now, onu, &mut self.outbox);
        }
    }

    /// Seals `payload` for `onu` in `superframe` under its current key; returns the frame
    /// to broadcast. Refused — never sent in clear — without downstream encryption, before
    /// the ONU's first key, or while its traffic is stopped (pool empty).
    pub fn seal_downstream(
        &mut self,
        onu: u16,
        superframe: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let ds =
            self.onus.get_mut(&onu).and_then(|l| l.downstream.as_mut()).ok_or(SealError::NotEnabled(onu))?;
        ds.seal(onu, superframe, payload)
    }

    /// Issues `number` ETSI API keys of `unit` bytes from `onu`'s pool, announced to the ONU
    /// (see `OnuLink`'s `issue_api_keys`); the announcements are queued for
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn issue_api_keys(
        &mut self,
        now: Instant,
        onu: u16,
        unit: usize,
        number: usize,
    ) -> Result<Vec<IssuedKey>, SupplyError> {
        let link = self
            .onus
            .get_mut(&onu)
            .ok_or_else(|| SupplyError::Unavailable { onu, why: "not configured at this OLT".into() })?;
        let r = link.issue_api_keys(now, unit, number);
        link.flush(now, onu, &mut self.outbox);
        r
    }

    /// Seals `payload` of a flow to `onu` marked for one-time pads (see
    /// [`crate::downstream`]): refused — never sent otherwise — without downstream
    /// encryption or before the ONU holds an acknowledged pad run with room. The first
    /// request turns the ONU's pad reserve on; [`downstream_tick`](Self::downstream_tick)
    /// keeps it filled.
    pub fn seal_downstream_otp(
        &mut self,
        onu: u16,
        superframe: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let link = self.onus.get_mut(&onu).ok_or(SealError::NotEnabled(onu))?;
        let ds = link.downstream.as_mut().ok_or(SealError::NotEnabled(onu))?;
        ds.pads_acked(link.session.pool_uses().1);
        ds.seal_otp(superframe, payload)
    }

    /// `onu`'s downstream counters, when downstream encryption is on.
    pub fn downstream_stats(&self, onu: u16) -> Option<&DownstreamStats> {
        self.onus.get(&onu)?.downstream.as_ref().map(|d| d.stats())
    }

    /// Turns on the scheduling step (see [`crate::scheduling`]): from now on
    /// [`schedule`](Self::schedule) recomputes the slot map once per period, and an ONU gets
    /// slots only once it is ranged ([`range_onu`](Self::range_onu)) and authenticated.
    /// Without it the slot maps are whatever the caller installs.
    pub fn enable_scheduling(&mut self, config: SchedulingConfig) {
        self.scheduling = Some(Scheduling::new(config));
    }

    /// The scheduling settings, when scheduling is on.
    pub fn scheduling_config(&self) -> Option<&SchedulingConfig> {
        self.scheduling.as_ref().map(|s| &s.cfg)
    }

    /// What the scheduling step knows about `onu` (activation, quality), once ranged.
    pub fn onu_scheduling(&self, onu: u16) -> Option<&OnuScheduling> {
        self.scheduling.as_ref()?.onus.get(&onu)
    }

    /// `onu`'s activation state, once ranged.
    pub fn activation(&self, onu: u16) -> Option<&OnuActivation> {
        self.onu_scheduling(onu).map(|s| &s.activation)
    }

    /// Slot maps the scheduling step has changed so far.
    pub fn map_changes(&self) -> u64 {
        self.scheduling.as_ref().map_or(0, |s| s.changes)
    }

    /// `onu` was ranged with `equalisation` (its session's pulse offset must match). It is
    /// sent its view of the current map at once; its tagged acknowledgement (or any tag of
    /// its session) authenticates it, and the next scheduling step gives it slots.
    /// `prior_quality` (secret bits per owned gate, e.g. from [`qpon_mux::quality_prior`]
    /// and its loss budget) stands for its quality until it has made key. A lost ONU coming
    /// back goes through this again; an ONU that is still active (it reconnected before
    /// being declared lost) is not re-ranged. No effect without scheduling, or for an ONU
    /// without a session.
    pub fn range_onu(&mut self, now: Instant, onu: u16, equalisation: Equalisation, prior_quality: f64) {
        let (Some(sch), Some(link)) = (self.scheduling.as_mut(), self.onus.get_mut(&onu)) else { return };
        let tags = link.session.peer_tags_verified();
        if let Some(challenge) = sch.range(onu, equalisation, prior_quality, tags, self.slots.latest()) {
            let _ = link.session.send_slot_map(now, challenge);
            link.flush(now, onu, &mut self.outbox);
        }
    }

    /// The scheduling step, when due: call it regularly (e.g. every time the receiver is
    /// polled) with the frame in progress; it runs once per scheduling period (see
    /// [`crate::scheduling`]). Returns the new map's version when the map changed. Without
    /// scheduling, or before the period ends, it does nothing.
    pub fn schedule(&mut self, now: Instant, current_frame: u64) -> Result<Option<u32>, ScheduleStepError> {
        let Some(sch) = self.scheduling.as_mut() else { return Ok(None) };
        if !sch.due(current_frame) {
            return Ok(None);
        }
        let links: BTreeMap<u16, LinkView> = self
            .onus
            .iter()
            .map(|(&o, l)| {
                let v = LinkView {
                    tags_verified: l.session.peer_tags_verified(),
                    secret_bits: l.stats.secret_bits,
                    pool_bits: l.pool.level_bits(),
                };
                (o, v)
            })
            .collect();
        let pending = self
            .onus
            .iter()
            .map(|(&o, l)| (o, (l.session.slot_map_acked(), l.session.slot_map_pending())))
            .collect();
        let (changed, actions) = sch.step(current_frame, &mut self.slots, &links, &pending)?;
        for (onu, action) in actions {
            let Some(link) = self.onus.get_mut(&onu) else { continue };
            match action {
                Action::Send(update) => {
                    let _ = link.session.send_slot_map(now, update);
                }
                Action::Cancel => link.session.cancel_slot_map(),
            }
            link.flush(now, onu, &mut self.outbox);
        }
        Ok(changed)
    }

    /// Adds (or replaces) an ONU.
    pub fn add_onu(&mut self, onu: u16, mut link: OnuLink<R>) {
        if let Some(cfg) = self.downstream {
            link.downstream = Some(OltDownstream::new(onu, cfg));
        }
        self.onus.insert(onu, link);
    }

    /// Removes an ONU; its slots should be given away by the next slot map (the scheduling
    /// step, when on, does so at its next period).
    pub fn remove_onu(&mut self, onu: u16) -> Option<OnuLink<R>> {
        if let Some(s) = self.scheduling.as_mut() {
            s.onus.remove(&onu);
        }
        self.onus.remove(&onu)
    }

    /// The slot-map history.
    pub fn slots(&self) -> &SlotMapSchedule {
        &self.slots
    }

    /// A new classical connection to `onu`: its session re-sends what is outstanding.
    pub fn reset_link(&mut self, onu: u16, now: Instant) {
        // Frames queued for the old connection are not sent on the new one.
        self.outbox.retain(|(o, _)| *o != onu);
        if let Some(l) = self.onus.get_mut(&onu) {
            l.session.reset_link(now);
            // The ONU may have restarted: it gets the view of the map it must hold again.
            if let Some(u) = self.scheduling.as_ref().and_then(|s| s.onus.get(&onu)?.required.clone()) {
                let _ = l.session.send_slot_map(now, u);
            }
            l.flush(now, onu, &mut self.outbox);
        }
    }

    /// The slot-map history (to install a new map).
    pub fn slots_mut(&mut self) -> &mut SlotMapSchedule {
        &mut self.slots
    }

    /// The ONUs.
    pub fn onus(&self) -> impl Iterator<Item = (&u16, &OnuLink<R>)> {
        self.onus.iter()
    }

    /// One ONU.
    pub fn onu(&self, onu: u16) -> Option<&OnuLink<R>> {
        self.onus.get(&onu)
    }

    /// Detections in guard or idle gates, or of ONUs not (or no longer) served.
    pub fn unattributed(&self) -> u64 {
        self.unattributed
    }

    /// The receiver's status (read once per monitoring interval, e.g. 1 s): credits each
    /// ONU with the gates it owned in the status interval, refreshes its sifting
    /// statistics, and runs the monitor. Returns how many alarms were newly raised.
    pub fn handle_status(&mut self, now: Instant, status: &DetectorStatus) -> usize {
        let from = status.gate.saturating_sub(status.interval_gates);
        let owned = crate::monitor::owned_gates(&self.slots, from, status.gate);
        for (onu, link) in self.onus.iter_mut() {
            link.stats.owned_gates += owned.get(onu).copied().unwrap_or(0);
            link.stats.sift = *link.session.sift_totals();
        }
        let onus: Vec<(u16, Counts, &qpon_qkd::finite_key::DecoyParams)> =
            self.onus.iter().map(|(&o, l)| (o, Counts::from(&l.stats), &l.session.config().decoy)).collect();
        self.monitor.evaluate(now, Some(status), onus)
    }

    /// The monitor (its thresholds and every alarm raised, receiver-wide ones included).
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// The monitor, to change its thresholds.
    pub fn monitor_mut(&mut self) -> &mut Monitor {
        &mut self.monitor
    }

    /// The alarms naming `onu` (latched: each kind once, with the time it was raised).
    pub fn alarms(&self, onu: u16) -> impl Iterator<Item = &Alarm> {
        self.monitor.alarms_of(onu)
    }

    /// Attributes detections to ONUs by slot map and hands them to the sessions.
    pub fn handle_detections(&mut self, now: Instant, records: &[DetectionRecord]) {
        for r in records {
            match self.slots.owner_of(r.gate).and_then(|OnuId(o)| self.onus.get_mut(&o)) {
                Some(link) => {
                    link.stats.detections += 1;
                    if r.flags.double_click() {
                        link.stats.double_clicks += 1;
                    }
                    link.batch.push(*r);
                }
                None => self.unattributed += 1,
            }
        }
        self.run_all(now);
    }

    /// Frames from ONUs (`(onu, bytes)`), processed per ONU in arrival order.
    pub fn handle_frames(&mut self, now: Instant, frames: Vec<(u16, Vec<u8>)>) {
        for (onu, f) in frames {
            if let Some(link) = self.onus.get_mut(&onu) {
                link.inbox.push(f);
                // A sign of life for the activation's silence count.
                if let Some(s) = self.scheduling.as_mut().and_then(|s| s.onus.get_mut(&onu)) {
                    s.heard += 1;
                }
            }
        }
        self.run_all(now);
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_all(now);
    }

    /// The earliest session timer.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.onus.values().filter_map(|l| l.session.poll_timeout()).min()
    }

    /// The next frame to send, with the ONU it goes to.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(u16, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// Runs every ONU with pending work, spread over the workers, then collects their
    /// frames in ONU order (deterministic whatever the threads did).
    fn run_all(&mut self, now: Instant) {
        let busy: Vec<&mut OnuLink<R>> = self
            .onus
            .values_mut()
            .filter(|l| {
                !l.batch.is_empty()
                    || !l.inbox.is_empty()
                    || l.session.poll_timeout().is_some_and(|t| t <= now)
            })
            .collect();
        run_parallel(busy, self.workers, |l| l.run(now));
        for (&onu, l) in self.onus.iter_mut() {
            while let Some(f) = l.session.poll_transmit() {
                self.outbox.push_back((onu, f));
            }
        }
    }
}
