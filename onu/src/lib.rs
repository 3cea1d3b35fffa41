//! # qpon-onu — the ONU driver
//!
//! [`OnuDriver`] joins one [`qpon_qkd::session::OnuSession`] to the ONU's QKD source (any
//! [`qpon_hw::PulseSource`]: the simulator's, or a source board's driver) and to the ONU's
//! key pool. It is sans-IO like the session: the caller feeds it frames from the OLT and
//! sends what [`OnuDriver::poll_transmit`] returns; pulse look-ups go to the source and
//! their answers back to the session without the caller's help (call
//! [`OnuDriver::poll_source`] when a board may have answered). Protocol logic lives in
//! `qpon-qkd`, not here.
//!
//! [`service`] puts the driver behind a TCP connection to the OLT (tokio, reconnect with
//! back-off), a real clock and a status endpoint; the `onu` binary runs it from a
//! [`config`] file. Still to come (see the README's features table): the source-board
//! backend of the binary (hardware issue).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod downstream;
pub mod service;
pub mod status;

use downstream::{OnuDownstream, OnuDownstreamStats};
use qpon_hw::{PulseSource, SourceSchedule};
use qpon_kms::{KeyPool, Purpose};
use qpon_mux::DownstreamError;
use qpon_mux::{OnuId, SlotMap};
use qpon_qkd::session::{Event, OnuSession, SessionError};
use qpon_qkd::time::Instant;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// What the ONU knows about its key generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OnuDriverStats {
    /// Finished blocks.
    pub blocks: u64,
    /// Secret bits appended to the pool.
    pub secret_bits: u64,
    /// Blocks withdrawn (provisional or committed) because the OLT did not commit them.
    pub discarded: u64,
    /// The pool's last failure (the session then stopped).
    pub pool_error: Option<String>,
    /// Aborted blocks by reason.
    pub aborted: BTreeMap<String, u64>,
    /// Frames refused.
    pub refused: u64,
    /// Pulse look-ups the source could not serve.
    pub source_errors: u64,
    /// Slot maps installed in the source.
    pub slot_maps: u64,
    /// Slot maps refused (malformed, inconsistent, or refused by the source); the OLT
    /// gets no acknowledgement and sends them again.
    pub slot_maps_refused: u64,
    /// Pool uses of the OLT mirrored (consumed here too and acknowledged).
    pub pool_uses: u64,
}

/// The ONU driver.
pub struct OnuDriver<P: PulseSource> {
    session: OnuSession,
    source: P,
    pool: Box<dyn KeyPool>,
    stats: OnuDriverStats,
    /// Open look-ups: source request id → positions of `None` (gates before the source's
    /// first pulse) to re-insert into the answer, the answer's length, and the highest
    /// pulse asked.
    open: BTreeMap<u64, (Vec<usize>, usize, Option<u64>)>,
    outbox: VecDeque<Vec<u8>>,
    slot_map: Option<SlotMap>,
    downstream: OnuDownstream,
}

impl<P: PulseSource> OnuDriver<P> {
    /// A driver for `session`, reading pulses from `source`, appending to `pool`.
    pub fn new(mut session: OnuSession, source: P, pool: Box<dyn KeyPool>) -> Self {
        // After a restart the pool knows how many of the OLT's uses it mirrored (every
        // mirrored use is a consumption for a mirrored purpose here): the pool sync tells
        // the OLT, which re-sends the rest.
        if session.pool_uses() == (0, 0)
            && let Ok(done) = pool.consumptions_of(&Purpose::MIRRORED)
        {
            session.restore_pool_uses(done.len() as u64);
        }
        Self {
            source,
            pool,
            stats: OnuDriverStats::default(),
            open: BTreeMap::new(),
            outbox: VecDeque::new(),
            downstream: OnuDownstream::new(
                session.config().onu,
                qpon_mux::KeysConfig::default().overlap_superframes,
            ),
            session,
            slot_map: None,
        }
    }

    /// Sets how many superframes after a switch the old downstream key is still accepted
    /// (default 8). Call before the first key arrives (installed keys are dropped).
    pub fn set_downstream_overlap(&mut self, superframes: u64) {
        self.downstream = OnuDownstream::new(self.session.config().onu, superframes);
    }

    /// Moves the downstream key state to `superframe` of the ONU's own clock (old keys past
    /// their overlap window are erased). Call regularly, e.g. with every received frame.
    pub fn advance_downstream(&mut self, superframe: u64) {
        self.downstream.advance_to(superframe);
    }

    /// Opens a downstream frame from the splitter (every ONU sees every ONU's frames): the
    /// plaintext if it is addressed to this ONU under a key it holds; refused otherwise
    /// (another ONU's frame, a clear frame, an unknown or expired key).
    pub fn open_downstream(&mut self, frame: &[u8]) -> Result<Vec<u8>, DownstreamError> {
        self.downstream.open(frame)
    }

    /// Opens a frame with this ONU's keys without counting it (diagnostics and tests).
    pub fn peek_downstream(&self, frame: &[u8]) -> Result<Vec<u8>, DownstreamError> {
        self.downstream.peek(frame)
    }

    /// The downstream counters.
    pub fn downstream_stats(&self) -> &OnuDownstreamStats {
        self.downstream.stats()
    }

    /// Mirrors one of the OLT's pool uses: the same bytes are consumed here (durably) —
    /// exactly where the OLT took them, or the pools diverged and the session stops (fail
    /// closed) — a downstream key is installed as announced, and the use is acknowledged.
    fn apply_pool_use(&mut self, u: &qpon_qkd::session::PoolUse) {
        let Some(purpose) = Purpose::from_code(u.purpose) else {
            self.pool_failed(qpon_kms::PoolError::Store(format!(
                "unknown purpose {} in a pool use",
                u.purpose
            )));
            return;
        };
        match self.pool.take_named(purpose, u.block, u.offset, u.len as usize) {
            Ok(key) => {
                if purpose == Purpose::Downstream {
                    // A key (with its switch) or a one-time-pad run (without). One that
                    // cannot be installed is counted; the pool still followed.
                    let _ = match u.switch {
                        Some(sw) => self.downstream.install(sw, key.expose()),
                        None => self.downstream.add_pad_run(u.seq, key.expose()),
                    };
                }
                if self.session.ack_pool_use(u.seq).is_ok() {
                    self.stats.pool_uses += 1;
                }
            }
            Err(e) => self.pool_failed(e),
        }
    }

    /// The newest slot map installed (this ONU's view: its own slots only).
    pub fn slot_map(&self) -> Option<&SlotMap> {
        self.slot_map.as_ref()
    }

    /// Turns an authenticated slot map from the OLT into the source's schedule: this ONU's
    /// slots from the map's frame on, shifted by the session's equalisation offset (pulse
    /// `p` lands in gate `p + pulse_offset`). The map is acknowledged only once the source
    /// took it, so a source that refuses it makes the OLT send it again.
    fn install_slot_map(&mut self, u: &qpon_qkd::session::SlotMapUpdate) {
        let cfg = self.session.config();
        let onu = OnuId(cfg.onu);
        let offset = cfg.pulse_offset;
        let map = match SlotMap::from_bytes(&u.map) {
            Ok(m) if m.version() == u.version && m.active_from_frame() == u.from_frame => m,
            _ => {
                self.stats.slot_maps_refused += 1;
                return;
            }
        };
        let Ok(equalisation_delay) = u64::try_from(offset) else {
            self.stats.slot_maps_refused += 1;
            return;
        };
        let schedule = SourceSchedule {
            from_frame: map.active_from_frame(),
            frame_gates: u64::from(map.frame_len()),
            slots: map.ranges_of(onu).collect(),
            equalisation_delay,
        };
        match self.source.configure(&schedule) {
            Ok(()) if self.session.ack_slot_map(u.version).is_ok() => {
                self.stats.slot_maps += 1;
                self.slot_map = Some(map);
            }
            _ => self.stats.slot_maps_refused += 1,
        }
    }

    fn pool_failed(&mut self, e: qpon_kms::PoolError) {
        self.stats.pool_error = Some(e.to_string());
        self.session.pool_failed();
    }

    /// The statistics.
    pub fn stats(&self) -> &OnuDriverStats {
        &self.stats
    }

    /// The session (for its counters).
    pub fn session(&self) -> &OnuSession {
        &self.session
    }

    /// The pool.
    pub fn pool(&self) -> &dyn KeyPool {
        self.pool.as_ref()
    }

    /// The source (e.g. to configure its schedule).
    pub fn source_mut(&mut self) -> &mut P {
        &mut self.source
    }

    /// A frame from the OLT.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Result<(), SessionError> {
        let r = self.session.handle_frame(now, bytes);
        if r.is_err() {
            self.stats.refused += 1;
        }
        self.process(now);
        r
    }

    /// A new connection to the OLT.
    pub fn reset_link(&mut self, now: Instant) {
        self.session.reset_link();
        self.open.clear();
        self.process(now);
    }

    /// Collects answers the source has finished (a board answers after a round trip).
    pub fn poll_source(&mut self, now: Instant) {
        self.process(now);
    }

    /// The next frame to send to the OLT.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    fn process(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(e) = self.session.poll_event() {
                progress = true;
                match e {
                    Event::NeedPulses { request, pulses } => {
                        let none: Vec<usize> =
                            pulses.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| i).collect();
                        let ask: Vec<u64> = pulses.iter().flatten().copied().collect();
                        match self.source.request_pulses(request, &ask) {
                            Ok(()) => {
                                self.open.insert(request, (none, pulses.len(), ask.iter().max().copied()));
                            }
                            Err(_) => {
                                // The source cannot answer: every detection of the batch is
                                // discarded (answered as "no record"), never guessed.
                                self.stats.source_errors += 1;
                                let empty = vec![None; pulses.len()];
                                let _ = self.session.handle_pulses(now, request, &empty);
                            }
                        }
                    }
                    // Each pool effect is durable before the next event is taken: the frame
                    // that depends on it (Confirm, Committed, the sync's answer) is released
                    // only then. A pool that fails stops the session (fail closed).
                    Event::Provisional(b) => {
                        if let Err(e) = self.pool.stage(&b) {
                            self.pool_failed(e);
                        }
                    }
                    Event::Block(b, _) => match self.pool.append(b.id, &b.key) {
                        Ok(()) => {
                            self.stats.blocks += 1;
                            self.stats.secret_bits += b.key.len() as u64;
                        }
                        Err(e) => self.pool_failed(e),
                    },
                    Event::Discarded { id } => {
                        self.stats.discarded += 1;
                        if let Err(e) = self.pool.discard(id) {
                            self.pool_failed(e);
                        }
                    }
                    Event::PoolSync { last_committed } => {
                        if let Err(e) = self.pool.truncate_after(last_committed) {
                            self.pool_failed(e);
                        }
                    }
                    Event::SlotMap(u) => self.install_slot_map(&u),
                    Event::PoolUse(u) => self.apply_pool_use(&u),
                    Event::Aborted { reason, .. } | Event::Stopped(reason) => {
                        *self.stats.aborted.entry(format!("{reason:?}")).or_default() += 1;
                    }
                    _ => {}
                }
            }
            while let Some(a) = self.source.poll_pulses() {
                progress = true;
                let Some((none, total, max_pulse)) = self.open.remove(&a.id) else { continue };
                let mut recs = Vec::with_capacity(total);
                let mut it = a.records.into_iter();
                let mut ni = none.iter().peekable();
                for i in 0..total {
                    if ni.peek() == Some(&&i) {
                        ni.next();
                        recs.push(None);
                    } else {
                        recs.push(it.next().flatten());
                    }
                }
                let _ = self.session.handle_pulses(now, a.id, &recs);
                // Announced gates only grow and an answered batch is never looked up
                // again (a retransmitted announcement gets the cached answer), so the
                // source may forget every pulse up to this batch's last.
                if let Some(p) = max_pulse {
                    self.source.release_before(p + 1);
                }
            }
            while let Some(f) = self.session.poll_transmit() {
                self.outbox.push_back(f);
            }
            if !progress {
                break;
            }
        }
    }
}
