//! The OLT's scheduling step: activation, demands, the `mux` scheduler, and sending the
//! changed maps.
//!
//! Once per scheduling period (`SchedulerConfig::frames_per_period`, 1 s by default — not
//! per frame) [`crate::OltDriver::schedule`]:
//!
//! 1. advances every ONU's activation ([`qpon_mux::OnuActivation`]): a ranged ONU whose
//!    session has verified a tag from it since it was ranged is *authenticated*; one not
//!    heard for `lost_after_periods` periods is *lost* (its pending map is cancelled);
//! 2. updates every ONU's quality — secret bits per owned gate, smoothed
//!    ([`QualityEstimate`]), observed whenever its pool grew, over the gates it owned since
//!    it last made key — starting from the prior given when it was ranged;
//! 3. builds the demands (active = authenticated or active; deficit = target pool level −
//!    current level; quality) and runs [`qpon_mux::schedule`] with the previous map;
//! 4. when the map changed: inserts it into the driver's [`qpon_mux::SlotMapSchedule`] from
//!    `lead_frames` ahead (far enough for the message and a few retransmissions to arrive
//!    before it applies) and queues to every ONU whose own slots changed its *view* of the
//!    map (the map with only its slots) on the session's control path;
//! 5. re-sends a view an ONU has not acknowledged once its session gave up retrying.
//!
//! **Authentication of a joining ONU.** Ranging an ONU ([`crate::OltDriver::range_onu`])
//! sends it its view of the current map at once (usually no slots). Its acknowledgement is
//! tagged when nothing of a block is outstanding — always the case for a joining ONU — and a
//! valid Wegman–Carter tag proves it holds its pre-shared secret: at the next period it is
//! authenticated and the scheduler gives it slots. Tags on its block messages count too.

use qpon_mux::{
    ActivationConfig, Equalisation, Event as Activation, OnuActivation, OnuDemand, OnuId, Phase,
    QualityEstimate, ScheduleError, SchedulerConfig, SchedulerError, SlotMap, SlotMapSchedule,
};
use qpon_qkd::session::SlotMapUpdate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Settings of the scheduling step (every value configurable).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingConfig {
    /// The `mux` scheduler: frame, guard, period, policy.
    pub scheduler: SchedulerConfig,
    /// When a silent ONU is declared lost.
    pub activation: ActivationConfig,
    /// Pool level every ONU is driven towards, in bits (its deficit is this minus its
    /// current level).
    pub target_pool_bits: f64,
    /// A changed map applies this many frames after the period's frame: the time the
    /// message has to reach every ONU, retransmissions included.
    pub lead_frames: u64,
    /// Weight of the newest sample in the quality estimate, in `(0, 1]`.
    pub quality_alpha: f64,
}

impl Default for SchedulingConfig {
    /// The `mux` defaults (1 s periods, max-min fair), lost after 3 silent periods, a
    /// target of 8 Mbit per pool, 50 ms of lead (400 frames of 125 µs), smoothing 0.3.
    fn default() -> Self {
        Self {
            scheduler: SchedulerConfig::default(),
            activation: ActivationConfig::default(),
            target_pool_bits: 8e6,
            lead_frames: 400,
            quality_alpha: 0.3,
        }
    }
}

/// Why a scheduling step failed. Nothing changed: the previous map stays in force.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleStepError {
    /// The scheduler refused the round.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The new map does not fit the schedule (a bug: the scheduler's maps always do).
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

/// What the scheduling step keeps per ONU.
#[derive(Clone, Debug)]
pub struct OnuScheduling {
    /// Its activation state.
    pub activation: OnuActivation,
    /// Its smoothed quality, secret bits per owned gate.
    pub quality: QualityEstimate,
    /// The view of the newest map that changed its slots: what it must hold.
    pub required: Option<SlotMapUpdate>,
    pub(crate) heard: u64,
    heard_at_period: u64,
    tags_at_ranging: u64,
    secret_bits_seen: u64,
    gates_since_key: u64,
}

/// The state of the scheduling step (inside the driver).
#[derive(Clone, Debug)]
pub(crate) struct Scheduling {
    pub(crate) cfg: SchedulingConfig,
    pub(crate) onus: BTreeMap<u16, OnuScheduling>,
    /// The first frame at which the next step runs.
    next_frame: u64,
    /// The frame of the previous step (owned gates are counted from there).
    last_frame: u64,
    pub(crate) changes: u64,
}

/// The inputs the step reads from one ONU's link.
pub(crate) struct LinkView {
    pub(crate) tags_verified: u64,
    pub(crate) secret_bits: u64,
    pub(crate) pool_bits: u64,
}

/// What the step asks the driver to do with one ONU's session.
pub(crate) enum Action {
    Send(SlotMapUpdate),
    Cancel,
}

/// A step's result: the new map's version when it changed, and the actions per ONU.
pub(crate) type StepOutcome = (Option<u32>, Vec<(u16, Action)>);

/// The ONU's view of `map`: the same frame, guard, version and starting frame, its slots
/// only, in the `mux` wire format.
pub(crate) fn view(map: &SlotMap, onu: u16) -> SlotMapUpdate {
    let slots = map.slots_of(OnuId(onu)).collect();
    let bytes = SlotMap::new(map.frame_len(), map.guard(), map.version(), map.active_from_frame(), slots)
        .map(|v| v.to_bytes())
        // A subset of a valid map's slots is a valid map.
        .unwrap_or_else(|_| {
            SlotMap::idle(map.frame_len(), map.guard(), map.version(), map.active_from_frame()).to_bytes()
        });
    SlotMapUpdate { version: map.version(), from_frame: map.active_from_frame(), map: bytes }
}

/// Gates `onu` owned in frames `from..to` under `slots`.
pub(crate) fn owned_gates(slots: &SlotMapSchedule, onu: u16, from: u64, to: u64) -> u64 {
    let maps = slots.maps();
    let mut total = 0u64;
    for (i, m) in maps.iter().enumerate() {
        let start = m.active_from_frame().max(from);
        let end = maps.get(i + 1).map_or(to, |n| n.active_from_frame().min(to));
        if end > start {
            total = total.saturating_add((end - start).saturating_mul(m.owned_gates(OnuId(onu))));
        }
    }
    total
}

impl Scheduling {
    pub(crate) fn new(cfg: SchedulingConfig) -> Self {
        // The first step runs at the end of the first period: ONUs ranged at start-up have
        // authenticated by then and keep the slots they were provisioned with.
        let next_frame = cfg.scheduler.frames_per_period.max(1);
        Self { cfg, onus: BTreeMap::new(), next_frame, last_frame: 0, changes: 0 }
    }

    /// Ranges `onu` (a newcomer, a lost ONU back, or a repeated ranging before
    /// authentication) and returns its challenge: its view of `latest`.
    pub(crate) fn range(
        &mut self,
        onu: u16,
        equalisation: Equalisation,
        prior: f64,
        tags_verified: u64,
        latest: &SlotMap,
    ) -> Option<SlotMapUpdate> {
        let prior = if prior.is_finite() { prior.max(0.0) } else { 0.0 };
        let alpha = self.cfg.quality_alpha.clamp(f64::MIN_POSITIVE, 1.0);
        let activation = self.cfg.activation;
        let s = self.onus.entry(onu).or_insert_with(|| OnuScheduling {
            activation: OnuActivation::discovered(OnuId(onu), activation),
            quality: QualityEstimate::new(prior, alpha),
            required: None,
            heard: 0,
            heard_at_period: 0,
            tags_at_ranging: 0,
            secret_bits_seen: 0,
            gates_since_key: 0,
        });
        match s.activation.phase() {
            Phase::Lost => {
                let _ = s.activation.handle(Activation::Rediscovered);
            }
            // A reconnection of an ONU never declared lost: it keeps its slots (the new
            // connection re-sends its view).
            Phase::Authenticated | Phase::Active => return None,
            Phase::Discovered | Phase::Ranged => {}
        }
        s.activation.handle(Activation::Ranged(equalisation)).ok()?;
        s.tags_at_ranging = tags_verified;
        s.heard_at_period = s.heard;
        let challenge = view(latest, onu);
        s.required = Some(challenge.clone());
        Some(challenge)
    }

    /// Whether the step is due at `frame`.
    pub(crate) fn due(&self, frame: u64) -> bool {
        frame >= self.next_frame
    }

    /// One step (see the module doc). `links` has one entry per ONU with a session;
    /// returns the new map's version when the map changed, and the actions per ONU.
    pub(crate) fn step(
        &mut self,
        frame: u64,
        slots: &mut SlotMapSchedule,
        links: &BTreeMap<u16, LinkView>,
        pending: &BTreeMap<u16, (Option<u32>, Option<u32>)>,
    ) -> Result<StepOutcome, ScheduleStepError> {
        let mut actions = Vec::new();
        let (from, to) = (self.last_frame, frame);
        // The period is consumed even if the round fails below: activation counts periods,
        // so a failing round retried at every poll would declare everyone lost.
        self.next_frame = self.cfg.scheduler.next_period_frame(frame);
        let mut demands = Vec::with_capacity(self.onus.len());
        for (&onu, s) in self.onus.iter_mut() {
            let Some(l) = links.get(&onu) else { continue };
            if s.activation.phase() == Phase::Ranged && l.tags_verified > s.tags_at_ranging {
                let _ = s.activation.handle(Activation::Authenticated);
            }
            let heard = s.heard > s.heard_at_period;
            s.heard_at_period = s.heard;
            let was_lost = s.activation.phase() == Phase::Lost;
            let _ = s.activation.handle(Activation::Period { heard });
            if !was_lost && s.activation.phase() == Phase::Lost {
                s.required = None;
                actions.push((onu, Action::Cancel));
            }
            // Quality: observed when the pool grew, over the gates owned since the last key.
            s.gates_since_key = s.gates_since_key.saturating_add(owned_gates(slots, onu, from, to));
            let made = l.secret_bits.saturating_sub(s.secret_bits_seen);
            s.secret_bits_seen = l.secret_bits;
            if made > 0 {
                s.quality.observe(made as f64, s.gates_since_key);
                s.gates_since_key = 0;
            }
            demands.push(OnuDemand {
                onu: OnuId(onu),
                active: s.activation.schedulable(),
                deficit_bits: self.cfg.target_pool_bits - l.pool_bits as f64,
                quality: s.quality.value(),
            });
        }
        let previous = slots.latest().clone();
        let apply_from =
            frame.saturating_add(self.cfg.lead_frames.max(1)).max(previous.active_from_frame() + 1);
        let outcome = qpon_mux::schedule(&self.cfg.scheduler, &previous, &demands, apply_from)?;
        let mut changed = None;
        if outcome.changed {
            slots.insert(outcome.map.clone(), frame)?;
            changed = Some(outcome.map.version());
            self.changes += 1;
            for (&onu, s) in self.onus.iter_mut() {
                let affected = !previous.slots_of(OnuId(onu)).eq(outcome.map.slots_of(OnuId(onu)));
                if affected && s.activation.phase() != Phase::Lost {
                    s.required = Some(view(&outcome.map, onu));
                }
            }
        }
        let latest = slots.latest();
        for (&onu, s) in self.onus.iter_mut() {
            if s.activation.phase() == Phase::Authenticated && latest.has_owner(OnuId(onu)) {
                let _ = s.activation.handle(Activation::SlotsGranted { map_version: latest.version() });
            }
            // Send what the ONU must hold and has not acknowledged, unless its session is
            // still trying.
            let (acked, in_progress) = pending.get(&onu).copied().unwrap_or((None, None));
            if let Some(r) = &s.required
                && acked.is_none_or(|a| a < r.version)
                && in_progress.is_none_or(|p| p < r.version)
                && s.activation.phase() != Phase::Lost
            {
                actions.push((onu, Action::Send(r.clone())));
            }
        }
        // Keep what the quality accounting (one period back) and the monitor (its status
        // interval, seconds) may still ask about; at most one map per period is added.
        slots.prune_before(frame.saturating_sub(16 * self.cfg.scheduler.frames_per_period));
        self.last_frame = frame;
        Ok((changed, actions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qpon_mux::ranging::{RangingConfig, round_trip_gates};
    use qpon_mux::{Policy, SlotMapSchedule};

    fn cfg(policy: Policy) -> SchedulingConfig {
        SchedulingConfig {
            scheduler: SchedulerConfig {
                frame_len: 1_000,
                guard: 10,
                min_slot: 10,
                frames_per_period: 100,
                policy,
                ..SchedulerConfig::default()
            },
            activation: ActivationConfig { lost_after_periods: 2 },
            lead_frames: 5,
            ..SchedulingConfig::default()
        }
    }

    fn eq(km: f64) -> Equalisation {
        RangingConfig::default().equalise(round_trip_gates(km, 1e9)).unwrap()
    }

    /// A PON for the pure step: the schedule, and per ONU its tags, bits and pool.
    struct Pon {
        sch: Scheduling,
        slots: SlotMapSchedule,
        links: BTreeMap<u16, LinkView>,
        acked: BTreeMap<u16, u32>,
        frame: u64,
    }

    impl Pon {
        fn new(policy: Policy) -> Self {
            Self {
                sch: Scheduling::new(cfg(policy)),
                slots: SlotMapSchedule::new(SlotMap::idle(1_000, 10, 1, 0)),
                links: BTreeMap::new(),
                acked: BTreeMap::new(),
                frame: 0,
            }
        }

        /// Ranges `onu`, which then answers its challenge with a tag.
        fn join(&mut self, onu: u16, prior: f64) {
            let l =
                self.links.entry(onu).or_insert(LinkView { tags_verified: 0, secret_bits: 0, pool_bits: 0 });
            let c = self.sch.range(onu, eq(10.0), prior, l.tags_verified, self.slots.latest()).unwrap();
            assert_eq!(c.version, self.slots.latest().version());
            l.tags_verified += 1;
            self.acked.insert(onu, c.version);
            self.sch.onus.get_mut(&onu).unwrap().heard += 1;
        }

        /// One period: the ONUs in `alive` are heard (and acknowledge what they are sent);
        /// returns the new version, if any, and who was sent a map.
        fn period(&mut self, alive: &[u16]) -> (Option<u32>, Vec<u16>) {
            self.frame += 100;
            for o in alive {
                self.sch.onus.get_mut(o).unwrap().heard += 1;
            }
            let pending = self.links.keys().map(|o| (*o, (self.acked.get(o).copied(), None))).collect();
            let (v, actions) = self.sch.step(self.frame, &mut self.slots, &self.links, &pending).unwrap();
            let mut sent = Vec::new();
            for (o, a) in actions {
                if let Action::Send(u) = a {
                    let map = SlotMap::from_bytes(&u.map).unwrap();
                    assert!(map.owners().iter().all(|x| x.0 == o), "a view holds only its ONU's slots");
                    if v == Some(u.version) {
                        assert!(
                            u.from_frame > self.frame,
                            "a new map must apply after the frame in progress"
                        );
                    }
                    if alive.contains(&o) {
                        self.acked.insert(o, u.version);
                    }
                    sent.push(o);
                }
            }
            (v, sent)
        }

        fn gates(&self, onu: u16) -> u64 {
            self.slots.latest().owned_gates(OnuId(onu))
        }

        fn phase(&self, onu: u16) -> Phase {
            self.sch.onus[&onu].activation.phase()
        }
    }

    #[test]
    fn ranged_onus_authenticate_then_get_slots() {
        let mut p = Pon::new(Policy::EqualGates);
        for o in 0..3 {
            p.join(o, 1e-3);
            assert_eq!(p.phase(o), Phase::Ranged);
        }
        // Nothing before the end of the first period.
        assert!(!p.sch.due(99));
        let (v, sent) = p.period(&[0, 1, 2]);
        assert_eq!(v, Some(2));
        assert_eq!(sent, vec![0, 1, 2]);
        let budget = 1_000 - 3 * 10;
        for o in 0..3 {
            assert_eq!(p.phase(o), Phase::Active);
            assert_eq!(p.gates(o), budget / 3);
        }
        assert_eq!(p.slots.latest().active_from_frame(), 105);
        // The old map stays in force until then.
        assert_eq!(p.slots.map_at(104).unwrap().version(), 1);
        // Nothing changes: nothing is sent.
        assert_eq!(p.period(&[0, 1, 2]), (None, vec![]));
    }

    #[test]
    fn an_unauthenticated_onu_gets_no_slots() {
        let mut p = Pon::new(Policy::EqualGates);
        p.join(0, 1e-3);
        p.links.insert(1, LinkView { tags_verified: 0, secret_bits: 0, pool_bits: 0 });
        p.sch.range(1, eq(3.0), 1e-3, 0, p.slots.latest()).unwrap();
        // ONU 1 never tags anything: it stays ranged, without slots, and is challenged again.
        let (_, sent) = p.period(&[0, 1]);
        assert_eq!(p.phase(1), Phase::Ranged);
        assert_eq!(p.gates(1), 0);
        assert!(sent.contains(&1));
        assert_eq!(p.gates(0), 990);
    }

    #[test]
    fn a_silent_onu_is_lost_its_slots_go_to_the_others_and_it_comes_back() {
        let mut p = Pon::new(Policy::EqualGates);
        for o in 0..4 {
            p.join(o, 1e-3);
        }
        p.period(&[0, 1, 2, 3]);
        let before: Vec<u64> = (0..4).map(|o| p.gates(o)).collect();
        let order = p.slots.latest().owners();
        // ONU 2 goes silent: lost after two silent periods, then dropped from the map.
        assert_eq!(p.period(&[0, 1, 3]), (None, vec![]));
        assert_eq!(p.phase(2), Phase::Active);
        let (v, sent) = p.period(&[0, 1, 3]);
        assert_eq!(p.phase(2), Phase::Lost);
        assert!(v.is_some());
        assert!(!sent.contains(&2), "nothing is sent to a lost ONU");
        assert_eq!(p.gates(2), 0);
        for o in [0, 1, 3] {
            assert!(p.gates(o) > before[o as usize], "onu {o} did not get the leaver's gates");
            assert!(sent.contains(&o));
        }
        let kept: Vec<OnuId> = order.iter().copied().filter(|o| o.0 != 2).collect();
        assert_eq!(p.slots.latest().owners(), kept, "the others keep their order");
        // It comes back: ranged, authenticated by its tagged acknowledgement, given slots
        // at the end of the frame; the others return to their first share, never less.
        p.join(2, 1e-3);
        assert_eq!(p.phase(2), Phase::Ranged);
        let (v, _) = p.period(&[0, 1, 2, 3]);
        assert!(v.is_some());
        assert_eq!(p.phase(2), Phase::Active);
        for o in 0..4 {
            assert_eq!(p.gates(o), before[o as usize]);
        }
        assert_eq!(p.slots.latest().owners().last(), Some(&OnuId(2)));
    }

    #[test]
    fn an_unacknowledged_map_is_sent_again() {
        let mut p = Pon::new(Policy::EqualGates);
        p.join(0, 1e-3);
        p.join(1, 1e-3);
        // ONU 1 is heard but does not acknowledge (its acknowledgements are lost).
        p.period(&[0, 1]);
        p.acked.insert(1, 1);
        let (_, sent) = p.period(&[0, 1]);
        assert_eq!(sent, vec![1]);
    }

    /// Closed loop: the ONUs make key at their true quality on the gates they own; under
    /// max-min fairness the key rates of a near and a far ONU end up within 10 %, under
    /// equal gates they do not.
    fn run_two(policy: Policy) -> (f64, f64) {
        let mut p = Pon::new(policy);
        let q_true = [2e-3, 2e-3 * 10f64.powf(-0.33 * 18.0 / 10.0)]; // 2 km vs 20 km
        p.join(0, 1e-3);
        p.join(1, 1e-3);
        let mut rates = (0.0, 0.0);
        for _ in 0..30 {
            let from = p.frame;
            p.period(&[0, 1]);
            for (o, q) in q_true.iter().enumerate() {
                let g = owned_gates(&p.slots, o as u16, from, p.frame);
                let l = p.links.get_mut(&(o as u16)).unwrap();
                l.secret_bits += (q * g as f64) as u64;
                l.pool_bits = l.secret_bits;
            }
            rates = (q_true[0] * p.gates(0) as f64, q_true[1] * p.gates(1) as f64);
        }
        rates
    }

    #[test]
    fn max_min_equalises_a_near_and_a_far_onu() {
        let (a, b) = run_two(Policy::MaxMinFair);
        assert!((a - b).abs() <= 0.1 * a.max(b), "max-min: {a} vs {b}");
        let (a, b) = run_two(Policy::EqualGates);
        assert!((a - b).abs() > 0.5 * a.max(b), "equal gates: {a} vs {b}");
    }

    /// The real thing: the driver, its sessions and two ONU sessions exchanging frames.
    #[test]
    fn the_driver_authenticates_onus_by_their_tagged_acks_and_sends_their_views() {
        use crate::{OltDriver, OnuLink};
        use qpon_qkd::rng::{ChaCha20Rng, seeded};
        use qpon_qkd::secret::SecretBytes;
        use qpon_qkd::session::{AuthMaterial, Event, MemoryLedger, OltSession, OnuSession, SessionConfig};
        use qpon_qkd::time::Instant;

        let mut olt: OltDriver<ChaCha20Rng> =
            OltDriver::new(SlotMapSchedule::new(SlotMap::idle(1_000, 10, 1, 0)), 1);
        olt.enable_scheduling(cfg(Policy::EqualGates));
        let mut onus = Vec::new();
        for o in 0..2u16 {
            let c = SessionConfig { onu: o, ..SessionConfig::default() };
            let psk = SecretBytes::new(vec![o as u8 + 1; 4096]);
            let s = OltSession::new(
                c.clone(),
                AuthMaterial::from_psk(&psk),
                Box::new(MemoryLedger::new()),
                seeded(9),
            );
            olt.add_onu(o, OnuLink::new(s, Box::new(qpon_kms::MemoryPool::new())));
            onus.push(OnuSession::new(c, AuthMaterial::from_psk(&psk), Box::new(MemoryLedger::new())));
        }
        let mut maps: Vec<Vec<SlotMap>> = vec![Vec::new(); 2];
        let pump =
            |olt: &mut OltDriver<ChaCha20Rng>, onus: &mut Vec<OnuSession>, maps: &mut Vec<Vec<SlotMap>>| {
                let now = Instant::ZERO;
                while let Some((o, f)) = olt.poll_transmit() {
                    let onu = &mut onus[o as usize];
                    onu.handle_frame(now, &f).unwrap();
                    while let Some(e) = onu.poll_event() {
                        if let Event::SlotMap(u) = e {
                            maps[o as usize].push(SlotMap::from_bytes(&u.map).unwrap());
                            onu.ack_slot_map(u.version).unwrap();
                        }
                    }
                    let up: Vec<(u16, Vec<u8>)> =
                        std::iter::from_fn(|| onu.poll_transmit()).map(|f| (o, f)).collect();
                    olt.handle_frames(now, up);
                }
            };
        for o in 0..2 {
            olt.range_onu(Instant::ZERO, o, eq(5.0), 1e-3);
        }
        pump(&mut olt, &mut onus, &mut maps);
        for o in 0..2u16 {
            assert_eq!(olt.activation(o).unwrap().phase(), Phase::Ranged);
            assert_eq!(olt.onu(o).unwrap().session.peer_tags_verified(), 1, "the ack was tagged");
            assert_eq!(maps[o as usize].len(), 1, "the challenge: its view of the current map");
        }
        assert_eq!(olt.schedule(Instant::ZERO, 50).unwrap(), None, "not before the period ends");
        assert_eq!(olt.schedule(Instant::ZERO, 100).unwrap(), Some(2));
        pump(&mut olt, &mut onus, &mut maps);
        for o in 0..2u16 {
            assert_eq!(olt.activation(o).unwrap().phase(), Phase::Active);
            let m = maps[o as usize].last().unwrap();
            assert_eq!((m.version(), m.active_from_frame()), (2, 105));
            assert_eq!(m.owners(), vec![OnuId(o)], "a view holds the ONU's own slots only");
            assert_eq!(m.owned_gates(OnuId(o)), 490);
            assert_eq!(olt.onu(o).unwrap().session.slot_map_acked(), Some(2));
        }
        assert_eq!(olt.map_changes(), 1);
        assert_eq!(olt.slots().owner_of(105 * 1_000 + 1), Some(OnuId(0)));
    }

    #[test]
    fn owned_gates_follow_the_map_in_force() {
        let mut s = SlotMapSchedule::new(SlotMap::idle(100, 5, 1, 0));
        let m2 =
            SlotMap::new(100, 5, 2, 10, vec![qpon_mux::Slot { start: 0, len: 20, owner: OnuId(4) }]).unwrap();
        s.insert(m2, 0).unwrap();
        assert_eq!(owned_gates(&s, 4, 0, 10), 0);
        assert_eq!(owned_gates(&s, 4, 5, 15), 5 * 20);
        assert_eq!(owned_gates(&s, 3, 5, 15), 0);
    }
}
