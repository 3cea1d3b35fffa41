//! The whole-PON emulation: the real OLT and ONU drivers, the sampler as their hardware,
//! a simulated medium, one discrete-event clock (DESIGN.md §7).
//!
//! - **Clock.** Virtual nanoseconds. The receiver is polled every `tick` (its records
//!   are handed to the OLT driver), the medium is polled whenever it has a packet due or
//!   a TCP timer, and session timers fire when due. CPU work takes zero virtual time;
//!   work spread over threads is joined before the clock moves, so a run is reproducible
//!   from its seed whatever the threads did.
//! - **Medium** ([`crate::medium`]). The sessions' frames travel as length-prefixed
//!   messages over smoltcp TCP/IP: one OLT interface with a TCP connection per ONU, one
//!   interface per ONU, IP packets on a simulated PON (serialised at 10 Gb/s per
//!   direction, then the ONU's fibre delay of 5 µs/km), each packet lost with probability
//!   `drop_chance` by a seeded fault injector; TCP retransmits, so the sessions' own
//!   timeout ([`SessionConfig::rto`]) is only for a connection that broke. When a
//!   connection is re-established both sessions' links are reset at that instant. The
//!   report counts IP packets. [`Medium::Datagram`] instead sends each frame as one
//!   datagram (the sessions retransmit, so give them a short `rto`).
//! - **Agreement.** Both ends' pools are compared at the end: every block the ONU holds
//!   must be in the OLT's pool with the same key.
//! - **Slot maps.** The scenario's map applies from frame 0 (every ONU is provisioned with
//!   it); the OLT driver's scheduling step then runs once per scheduling period with
//!   [`PonOptions::policy`] and sends changed maps to the ONUs over the authenticated
//!   channel, from `map_lead_s` ahead; each ONU driver reconfigures its source. The default
//!   policy is equal gates, which reproduces the scenario's equal shares (what the planner,
//!   `qpon-sim rate`, assumes); max-min fair key rate is selectable. A scenario's unequal
//!   `slots.shares` hold until the first period ends, then the policy decides.
//! - **Joining and leaving.** [`PonOptions::churn`]: an ONU that leaves goes dark (its
//!   source stops firing, its frames are lost) without telling the OLT, which declares it
//!   lost after `lost_after_periods` silent periods and gives its slots to the others. An
//!   ONU that joins (or comes back) reconnects, is ranged (instantaneously here: its
//!   equalisation is its fibre delay), answers the OLT's map with a tagged acknowledgement
//!   that authenticates it, and gets slots at the next period. An ONU whose first event is
//!   a join starts dark.
//! - **Downstream traffic** ([`PonOptions::downstream`], off by default). Each tick the
//!   OLT seals `frames_per_s × tick` frames of random payload for every ONU under that
//!   ONU's current key (rotated from its pool every `rotate_every_superframes`, the switch
//!   announced over the authenticated channel; `qpon_olt::downstream`) in the superframe
//!   of the OLT's clock (125 µs). The splitter broadcasts: every ONU driver is handed every
//!   frame. Each ONU must open exactly its own (payload as sent) and refuse the others';
//!   an ONU also tries each other ONU's frame with its own key (the header's ONU id
//!   rewritten to its own) and must not get the plaintext. The report counts all of it
//!   per ONU ([`DownstreamReport`]), and compares both ends' pool ledgers.

pub use crate::medium::Medium;
use crate::medium::{Channel, Direction, MediumEvent};
use crate::sampler::{GATES_PER_KM_AT_1GHZ, SimPon, SimSource};
use crate::scenario::Pon;
use qpon_hw::DetectorSource;
use qpon_hw::{PulseSource, SourceSchedule};
use qpon_kms::MemoryPool;
/// The scheduler's policies (for [`PonOptions::policy`]).
pub use qpon_mux::Policy;
use qpon_mux::ranging::{RangingConfig, round_trip_gates};
use qpon_mux::{ActivationConfig, OnuId, SchedulerConfig, Slot, SlotMap, SlotMapSchedule, quality_prior};
use qpon_olt::{OltDriver, OnuLink, SchedulingConfig};
use qpon_onu::OnuDriver;
use qpon_qkd::finite_key::DecoyParams;
use qpon_qkd::rng::{ChaCha20Rng, seeded};
use qpon_qkd::secret::SecretBytes;
use qpon_qkd::session::{AuthMaterial, MemoryLedger, OltSession, OnuSession, SessionConfig};
use qpon_qkd::time::{Duration, Instant};
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// Options of one emulation run.
#[derive(Clone, Debug)]
pub struct PonOptions {
    /// Virtual seconds to run.
    pub seconds: f64,
    /// Seed of the medium's fault injector, the sessions' RNGs and the pre-shared secrets
    /// (the sampler has its own seed in the scenario).
    pub seed: u64,
    /// Probability that a packet on the medium is lost.
    pub drop_chance: f64,
    /// What carries the classical channel (TCP/IP by default).
    pub medium: Medium,
    /// Worker threads for the ONUs' work.
    pub workers: usize,
    /// How often the receiver is polled, virtual seconds.
    pub tick_s: f64,
    /// Sessions' configuration template (the ONU id, decoy parameters and equalisation
    /// offset are filled in per ONU).
    pub session: SessionConfig,
    /// How the scheduler shares the receiver (equal gates: the scenario's shares, which the
    /// planner assumes).
    pub policy: Policy,
    /// Scheduling period, virtual seconds (DESIGN.md §5: 1 s).
    pub scheduling_period_s: f64,
    /// How far ahead a changed map applies, virtual seconds.
    pub map_lead_s: f64,
    /// Silent periods after which the OLT declares an ONU lost.
    pub lost_after_periods: u32,
    /// ONUs leaving and joining during the run.
    pub churn: Vec<Churn>,
    /// Downstream traffic encrypted with pool keys, broadcast through the splitter (off
    /// by default).
    pub downstream: Option<DownstreamTraffic>,
}

/// Downstream traffic of the emulation (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DownstreamTraffic {
    /// Frames per second to each ONU.
    pub frames_per_s: f64,
    /// Payload bytes of each frame.
    pub payload_bytes: usize,
    /// Key rotation interval, superframes (125 µs).
    pub rotate_every_superframes: u64,
    /// How far ahead a new key applies, superframes.
    pub lead_superframes: u64,
    /// Frames per second to each ONU of a flow marked for one-time pads (0: none).
    pub otp_frames_per_s: f64,
    /// Payload bytes of each one-time-pad frame.
    pub otp_payload_bytes: usize,
}

impl Default for DownstreamTraffic {
    fn default() -> Self {
        Self {
            frames_per_s: 100.0,
            payload_bytes: 256,
            rotate_every_superframes: 8_000,
            lead_superframes: 400,
            otp_frames_per_s: 0.0,
            otp_payload_bytes: 64,
        }
    }
}

/// One ONU's downstream figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DownstreamReport {
    /// Frames the OLT sealed for this ONU.
    pub frames_sent: u64,
    /// Payloads the OLT refused to seal (no key yet, traffic stopped): never sent.
    pub frames_not_sent: u64,
    /// Own frames the ONU opened with exactly the payload sent.
    pub frames_opened: u64,
    /// Own frames the ONU refused or opened to something else (must be 0 once keyed).
    pub frames_lost: u64,
    /// Other ONUs' frames this ONU refused.
    pub others_refused: u64,
    /// Other ONUs' frames this ONU opened (must be 0).
    pub others_opened: u64,
    /// Other ONUs' frames tried with this ONU's own key (header rewritten to its id).
    pub others_tried_with_own_key: u64,
    /// Of those, how many gave the other ONU's plaintext (must be 0).
    pub others_plaintext_recovered: u64,
    /// Keys the OLT installed and announced.
    pub keys_installed: u64,
    /// Key switches the OLT made.
    pub switches: u64,
    /// Key switches the ONU saw in its frames.
    pub switches_seen: u64,
    /// Pool-empty alarms at the OLT.
    pub pool_empty_alarms: u64,
    /// Downstream bytes consumed from the pool at the OLT and at the ONU.
    pub olt_consumed_bytes: u64,
    /// (The ONU's may lag by the uses in flight at the end.)
    pub onu_consumed_bytes: u64,
    /// Whether the ONU's consumption ledger is a prefix of the OLT's (same purpose,
    /// block, offset and length, in the same order).
    pub ledgers_agree: bool,
    /// Uses announced by the OLT and not yet acknowledged at the end.
    pub uses_in_flight: u64,
    /// One-time-pad flow: frames sealed, refused for want of pad (never sent), opened by
    /// the ONU with exactly the payload sent, and refused or garbled there (must be 0).
    pub otp_frames_sent: u64,
    /// (See `otp_frames_sent`.)
    pub otp_frames_not_sent: u64,
    /// (See `otp_frames_sent`.)
    pub otp_frames_opened: u64,
    /// (See `otp_frames_sent`.)
    pub otp_frames_lost: u64,
    /// Own one-time-pad frames replayed to the ONU right after it opened them, and how
    /// many of those it opened again (must be 0).
    pub otp_replays: u64,
    /// (See `otp_replays`.)
    pub otp_replays_opened: u64,
    /// Pad runs the OLT took and announced.
    pub pad_runs: u64,
}

/// What an ONU does in a [`Churn`] event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChurnAction {
    /// It joins (or comes back): reconnects and asks for slots.
    Join,
    /// It goes dark without a word (power cut, fibre cut).
    Leave,
}

/// An ONU joining or leaving at a virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Churn {
    /// When, virtual seconds.
    pub at_s: f64,
    /// Which ONU (index).
    pub onu: usize,
    /// Join or leave.
    pub action: ChurnAction,
}

impl Default for PonOptions {
    fn default() -> Self {
        Self {
            seconds: 30.0,
            seed: 1,
            drop_chance: 0.0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tick_s: 0.01,
            medium: Medium::Tcp,
            // TCP retransmits lost packets; the sessions' own timeout (500 ms) only matters
            // when a connection stalls or breaks.
            session: SessionConfig::default(),
            policy: Policy::EqualGates,
            scheduling_period_s: 1.0,
            map_lead_s: 0.05,
            lost_after_periods: ActivationConfig::default().lost_after_periods,
            churn: Vec::new(),
            downstream: None,
        }
    }
}

/// One ONU's line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct OnuReport {
    /// ONU index.
    pub onu: usize,
    /// Share of the receiver's gates the ONU owns.
    pub slot_share: f64,
    /// Detections attributed to it.
    pub detections: u64,
    /// Key-basis QBER found by reconciliation (over finished blocks).
    pub qber: f64,
    /// Finished blocks (in the OLT's pool).
    pub blocks: u64,
    /// Secret bits in the OLT's pool.
    pub secret_bits: u64,
    /// Secret bits per virtual second.
    pub key_rate_bits_per_s: f64,
    /// Authentication bits the OLT spent on this ONU (hash keys and pads).
    pub auth_bits_spent: u64,
    /// Pool level at the OLT, bits.
    pub pool_bits: u64,
    /// Blocks held identically by both ends (the rest are in flight at the end).
    pub blocks_agreeing: u64,
    /// Aborted blocks by reason.
    pub aborted: std::collections::BTreeMap<String, u64>,
    /// Alarms raised for this ONU.
    pub alarms: Vec<String>,
    /// Downstream traffic figures (with [`PonOptions::downstream`]).
    pub downstream: Option<DownstreamReport>,
}

/// Totals over all ONUs.
#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    /// ONUs.
    pub onus: usize,
    /// Virtual seconds.
    pub seconds: f64,
    /// Detections (all ONUs).
    pub detections: u64,
    /// Finished blocks.
    pub blocks: u64,
    /// Secret bits.
    pub secret_bits: u64,
    /// Secret bits per virtual second.
    pub key_rate_bits_per_s: f64,
    /// Packets put on the medium (IP packets over TCP; one per frame with
    /// [`Medium::Datagram`]), including lost ones.
    pub frames: u64,
    /// Packets lost by the fault injector.
    pub frames_dropped: u64,
    /// Blocks where the two ends disagree (must be 0).
    pub blocks_disagreeing: u64,
    /// Slot maps the scheduler changed during the run.
    pub map_changes: u64,
}

/// One slot map the scheduler decided on during the run.
#[derive(Clone, Debug, Serialize)]
pub struct MapRecord {
    /// When it was decided, virtual seconds.
    pub at_s: f64,
    /// Its version.
    pub version: u32,
    /// The frame it applies from.
    pub from_frame: u64,
    /// Gates per frame each ONU owns under it (index = ONU).
    pub gates: Vec<u64>,
    /// Secret bits in each ONU's pool at the OLT when it was decided.
    pub secret_bits: Vec<u64>,
}

/// The report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct PonReport {
    /// Per ONU.
    pub onus: Vec<OnuReport>,
    /// Totals.
    pub aggregate: Aggregate,
    /// The slot maps the scheduler changed to, in order (empty when nothing changed).
    pub slot_maps: Vec<MapRecord>,
}

/// Builds the OLT's slot map (`qpon-mux`) from the sampler's (the scenario's fixed
/// shares), so an OLT attributes detections exactly as the sampler generated them.
pub fn mux_map(pon: &Pon) -> SlotMap {
    let frame = pon.map.frame_gates;
    let mut slots: Vec<Slot> = Vec::new();
    for (i, rs) in pon.map.slots.iter().enumerate() {
        for r in rs {
            slots.push(Slot { start: r.start as u32, len: (r.end - r.start) as u32, owner: OnuId(i as u16) });
        }
    }
    slots.sort_by_key(|s| s.start);
    // The guard is the smallest gap between consecutive slots (including across the
    // frame boundary).
    let mut guard = u64::MAX;
    for w in slots.windows(2) {
        guard = guard.min(u64::from(w[1].start) - u64::from(w[0].start + w[0].len));
    }
    if let (Some(f), Some(l)) = (slots.first(), slots.last()) {
        guard = guard.min(frame - u64::from(l.start + l.len) + u64::from(f.start));
    }
    let guard = if guard == u64::MAX { 0 } else { guard };
    SlotMap::new(frame as u32, guard as u32, 1, 0, slots).expect("the sampler's slot map is valid")
}

/// The pre-shared secret of ONU `k` in the emulation (both ends derive it from the seed).
fn psk(seed: u64, k: usize, bytes: usize) -> SecretBytes {
    let mut rng = seeded(seed ^ 0x5053_4b00 ^ ((k as u64) << 32));
    let mut v = vec![0u8; bytes];
    rand::Rng::fill_bytes(&mut rng, &mut v);
    SecretBytes::new(v)
}

/// Runs the emulation. `progress` is called with the virtual time reached (seconds).
pub fn run(pon: &Pon, opts: &PonOptions, mut progress: impl FnMut(f64)) -> PonReport {
    let n = pon.onus.len();
    let mut churn: Vec<(Instant, Churn)> = opts
        .churn
        .iter()
        .filter(|c| c.onu < n && c.at_s.is_finite() && c.at_s >= 0.0)
        .map(|c| (Instant::from_nanos((c.at_s * 1e9) as u64), *c))
        .collect();
    churn.sort_by_key(|(at, c)| (*at, c.onu));
    let mut next_churn = 0;
    // An ONU whose first event is a join starts dark and owns nothing in the provisioned map.
    let mut online: Vec<bool> = (0..n)
        .map(|k| churn.iter().find(|(_, c)| c.onu == k).is_none_or(|(_, c)| c.action == ChurnAction::Leave))
        .collect();
    let mut provisioned = pon.clone();
    for (k, on) in online.iter().enumerate() {
        if !on {
            provisioned.map.slots[k].clear();
        }
    }
    let sim = SimPon::new(&provisioned);
    let mut detector = sim.detector();
    let map = mux_map(&provisioned);
    let mut olt: OltDriver<ChaCha20Rng> = OltDriver::new(SlotMapSchedule::new(map.clone()), opts.workers);
    olt.enable_scheduling(scheduling_config(pon, opts));
    // The monitor knows the receiver it watches: its dark-count floor, and the largest
    // transmittance × efficiency any ONU can have (the receiver's own).
    olt.monitor_mut().set_config(qpon_olt::monitor::MonitorConfig {
        dark_count: pon.detector.dark_count,
        max_transmittance: (pon.detector.efficiency * 10f64.powf(-pon.receiver_loss_db / 10.0)).min(1.0),
        ..qpon_olt::monitor::MonitorConfig::default()
    });
    let frame_gates = pon.map.frame_gates;
    let max_km = pon.onus.iter().map(|o| o.length_km).fold(0.0, f64::max);
    let ranging = RangingConfig::for_reach(max_km, pon.gate_rate_hz, 0, 0);
    let priors = quality_priors(pon);
    let mut onus: Vec<OnuDriver<SimSource>> = Vec::with_capacity(n);
    let mut olt_pools = Vec::with_capacity(n);
    let mut onu_pools = Vec::with_capacity(n);
    let mut delays = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    for (k, o) in pon.onus.iter().enumerate() {
        let delay_gates = (o.length_km * GATES_PER_KM_AT_1GHZ * pon.gate_rate_hz / 1e9).round() as u64;
        let cfg = SessionConfig {
            onu: k as u16,
            decoy: DecoyParams { mu: o.model.source.mu, p: o.model.source.p },
            eps_sec: pon.security.eps_sec,
            eps_cor: pon.security.eps_cor,
            block_bits: pon.security.block as usize,
            pulse_offset: delay_gates as i64,
            ..opts.session.clone()
        };
        let key = psk(opts.seed, k, 64 * 1024);
        let olt_pool = Arc::new(Mutex::new(MemoryPool::new()));
        let onu_pool = Arc::new(Mutex::new(MemoryPool::new()));
        let session = OltSession::new(
            cfg.clone(),
            AuthMaterial::from_psk(&key),
            Box::new(MemoryLedger::new()),
            seeded(opts.seed.wrapping_mul(1_000_003).wrapping_add(k as u64)),
        );
        olt.add_onu(k as u16, OnuLink::new(session, Box::new(olt_pool.clone())));
        let onu_session = OnuSession::new(cfg, AuthMaterial::from_psk(&key), Box::new(MemoryLedger::new()));
        onus.push(OnuDriver::new(onu_session, sim.source(k), Box::new(onu_pool.clone())));
        olt_pools.push(olt_pool);
        onu_pools.push(onu_pool);
        // Fibre delay of the classical channel: 5 µs/km.
        delays.push(Duration::from_nanos((o.length_km * 5_000.0).round() as u64));
        offsets.push(delay_gates);
    }
    // Ranging is instantaneous here: the round trip is the fibre's, the source's pulse
    // offset its one-way delay (the simulator's numbering; see `qpon_mux::ranging`).
    let equalisation = |k: usize| {
        ranging
            .equalise(round_trip_gates(pon.onus[k].length_km, pon.gate_rate_hz))
            .expect("within the PON's reach")
    };
    for k in (0..n).filter(|&k| online[k]) {
        olt.range_onu(Instant::ZERO, k as u16, equalisation(k), priors[k]);
    }
    let mut slot_maps: Vec<MapRecord> = Vec::new();
    let mut traffic = opts.downstream.map(|t| {
        olt.enable_downstream(qpon_olt::DownstreamConfig {
            enabled: true,
            rotate_every_superframes: t.rotate_every_superframes,
            lead_superframes: t.lead_superframes,
            ..qpon_olt::DownstreamConfig::default()
        });
        Traffic {
            cfg: t,
            rng: seeded(opts.seed ^ 0xd0_0d),
            owed: 0.0,
            otp_owed: 0.0,
            reports: vec![DownstreamReport::default(); n],
        }
    });

    let mut medium = Channel::new(opts.medium, delays, opts.drop_chance, opts.seed);
    let end = Instant::from_nanos((opts.seconds * 1e9) as u64);
    let tick = Duration::from_nanos((opts.tick_s * 1e9).max(1.0) as u64);
    let mut next_tick = Instant::ZERO;
    // The OLT's monitor reads the receiver's status once per virtual second.
    let mut next_status = Instant::ZERO + Duration::from_secs(1);
    let mut now = Instant::ZERO;
    let mut records = Vec::new();
    let mut last_progress = 0.0;
    let mut olt_deadline_cache: Option<Option<Instant>> = None;

    loop {
        // Hand what the drivers produced to the medium and run it at `now`: packets due
        // arrive, TCP timers fire, queued frames are written.
        // A dark ONU neither sends nor receives.
        while let Some((onu, f)) = olt.poll_transmit() {
            if online[usize::from(onu)] {
                let _ = medium.send_down(usize::from(onu), f);
            }
        }
        for (k, d) in onus.iter_mut().enumerate() {
            while let Some(f) = d.poll_transmit() {
                if online[k] {
                    let _ = medium.send_up(k, f);
                }
            }
        }
        medium.poll(now);

        // Frames completed now go to the drivers at once (CPU work takes no virtual time),
        // then round again: their answers go out at the same instant.
        let mut up: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut down_by_onu: Vec<Vec<Vec<u8>>> = Vec::new();
        while let Some((k, dir, bytes)) = medium.recv() {
            if !online[k] {
                continue;
            }
            match dir {
                Direction::Up => up.push((k as u16, bytes)),
                Direction::Down => {
                    if down_by_onu.is_empty() {
                        down_by_onu.resize(n, Vec::new());
                    }
                    down_by_onu[k].push(bytes);
                }
            }
        }
        let mut reconnected = Vec::new();
        while let Some(e) = medium.poll_event() {
            if let MediumEvent::Reconnected(k) = e {
                reconnected.push(k);
            }
        }
        if !up.is_empty() || !down_by_onu.is_empty() || !reconnected.is_empty() {
            if !up.is_empty() || !reconnected.is_empty() {
                olt_deadline_cache = None;
            }
            if !up.is_empty() {
                olt.handle_frames(now, up);
            }
            if !down_by_onu.is_empty() {
                deliver_down(&mut onus, down_by_onu, now, opts.workers);
            }
            // A new connection: both ends start their link afresh (after the frames of the
            // old one).
            for k in reconnected {
                olt.reset_link(k as u16, now);
                onus[k].reset_link(now);
            }
            continue;
        }

        let next_event = churn.get(next_churn).map(|(at, _)| *at);
        // The OLT's timers (a walk over every session), read again only after the OLT was
        // handed something; whatever it is handed at `now` sets its timers later than `now`.
        let olt_deadline = match olt_deadline_cache.take() {
            Some(d) => d,
            None => olt.poll_timeout(),
        };
        let next = [Some(next_tick), medium.poll_timeout(), olt_deadline, next_event]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        if next >= end {
            break;
        }
        now = now.max(next);
        // Most instants are packets arriving mid-message: then nothing below touches the
        // OLT and its timers stand. (Anything below that hands the OLT something must run
        // at one of the instants in `next`.)
        let quiet =
            now < next_tick && next_event.is_none_or(|t| t > now) && olt_deadline.is_none_or(|t| t > now);
        if quiet {
            olt_deadline_cache = Some(olt_deadline);
        }
        if now.as_secs_f64() - last_progress >= 0.1 {
            last_progress = now.as_secs_f64();
            progress(last_progress);
        }

        // ONUs leaving and joining now.
        while let Some(&(at, c)) = churn.get(next_churn)
            && at <= now
        {
            next_churn += 1;
            let k = c.onu;
            match c.action {
                ChurnAction::Leave if online[k] => {
                    online[k] = false;
                    let dark = SourceSchedule {
                        from_frame: 0,
                        frame_gates,
                        slots: Vec::new(),
                        equalisation_delay: offsets[k],
                    };
                    let _ = onus[k].source_mut().configure(&dark);
                }
                ChurnAction::Join if !online[k] => {
                    online[k] = true;
                    // Back on the fibre: a new link at both ends, then ranging.
                    onus[k].reset_link(now);
                    olt.reset_link(k as u16, now);
                    olt.range_onu(now, k as u16, equalisation(k), priors[k]);
                }
                _ => {}
            }
        }

        if now >= next_tick {
            let until = (now.as_secs_f64() * pon.gate_rate_hz) as u64;
            records.clear();
            if detector.poll_detections(until, &mut records).is_ok() {
                olt.handle_detections(now, &records);
            }
            // The scheduling step (it runs once per period).
            if let Ok(Some(version)) = olt.schedule(now, until / frame_gates) {
                let latest = olt.slots().latest();
                slot_maps.push(MapRecord {
                    at_s: now.as_secs_f64(),
                    version,
                    from_frame: latest.active_from_frame(),
                    gates: (0..n).map(|k| latest.owned_gates(OnuId(k as u16))).collect(),
                    secret_bits: (0..n)
                        .map(|k| olt.onu(k as u16).map_or(0, |l| l.stats.secret_bits))
                        .collect(),
                });
            }
            if now >= next_status {
                if let Ok(st) = detector.status() {
                    olt.handle_status(now, &st);
                }
                next_status = now + Duration::from_secs(1);
            }
            if let Some(t) = traffic.as_mut() {
                t.tick(now, opts.tick_s, &mut olt, &mut onus, &online);
            }
            next_tick = now + tick;
        }
        if olt_deadline.is_some_and(|t| t <= now) {
            olt.handle_timeout(now);
        }
    }
    progress(opts.seconds);
    let c = medium.counters();
    // Slot shares as they stand at the end of the run.
    let map = olt.slots().latest().clone();
    let mut r = report(pon, opts, &map, &olt, &olt_pools, &onu_pools, c.packets, c.dropped);
    r.slot_maps = slot_maps;
    if let Some(t) = traffic {
        for (k, (o, mut d)) in r.onus.iter_mut().zip(t.reports).enumerate() {
            let op = olt_pools[k].lock().unwrap_or_else(|e| e.into_inner());
            let up = onu_pools[k].lock().unwrap_or_else(|e| e.into_inner());
            let purpose = qpon_kms::Purpose::Downstream;
            d.olt_consumed_bytes = qpon_kms::KeyPool::consumed_bytes(&*op, purpose);
            d.onu_consumed_bytes = qpon_kms::KeyPool::consumed_bytes(&*up, purpose);
            d.ledgers_agree =
                up.ledger().len() <= op.ledger().len() && op.ledger()[..up.ledger().len()] == *up.ledger();
            if let Some(l) = olt.onu(k as u16) {
                d.uses_in_flight = l.session.pool_uses_unacked();
                if let Some(s) = l.downstream().map(|x| x.stats()) {
                    d.keys_installed = s.keys_installed;
                    d.switches = s.switches;
                    d.pool_empty_alarms = s.pool_empty_alarms;
                    d.pad_runs = s.pad_runs;
                }
            }
            d.switches_seen = onus[k].downstream_stats().switches_seen;
            o.downstream = Some(d);
        }
    }
    r
}

/// The downstream traffic generator and checker of a run.
struct Traffic {
    cfg: DownstreamTraffic,
    rng: ChaCha20Rng,
    /// Frames per ONU owed (fractional part carried between ticks).
    owed: f64,
    /// One-time-pad frames per ONU owed.
    otp_owed: f64,
    reports: Vec<DownstreamReport>,
}

/// Superframe length, ns (125 µs).
const SUPERFRAME_NS: u64 = 125_000;

impl Traffic {
    /// One tick: rotate keys, seal this tick's frames for every ONU, broadcast each to
    /// every ONU (the splitter) and check what each ONU gets out of it.
    fn tick(
        &mut self,
        now: Instant,
        tick_s: f64,
        olt: &mut OltDriver<ChaCha20Rng>,
        onus: &mut [OnuDriver<SimSource>],
        online: &[bool],
    ) {
        let sf = now.as_nanos() / SUPERFRAME_NS;
        olt.downstream_tick(now, sf);
        for d in onus.iter_mut() {
            d.advance_downstream(sf);
        }
        self.owed += self.cfg.frames_per_s * tick_s;
        let count = self.owed.floor() as usize;
        self.owed -= count as f64;
        let n = onus.len();
        self.otp_owed += self.cfg.otp_frames_per_s * tick_s;
        let otp_count = self.otp_owed.floor() as usize;
        self.otp_owed -= otp_count as f64;
        for _ in 0..otp_count {
            for k in 0..n {
                self.frame(k, sf, true, olt, onus, online);
            }
        }
        for _ in 0..count {
            for k in 0..n {
                self.frame(k, sf, false, olt, onus, online);
            }
        }
    }

    /// One frame to ONU `k` (of its one-time-pad flow if `otp`, else of its AES flow),
    /// sealed at the OLT and broadcast to every online ONU (the splitter); counts what
    /// each ONU gets out of it.
    fn frame(
        &mut self,
        k: usize,
        sf: u64,
        otp: bool,
        olt: &mut OltDriver<ChaCha20Rng>,
        onus: &mut [OnuDriver<SimSource>],
        online: &[bool],
    ) {
        let mut payload = vec![0u8; if otp { self.cfg.otp_payload_bytes } else { self.cfg.payload_bytes }];
        rand::Rng::fill_bytes(&mut self.rng, &mut payload);
        let sealed = if otp {
            olt.seal_downstream_otp(k as u16, sf, &payload)
        } else {
            olt.seal_downstream(k as u16, sf, &payload)
        };
        let r = &mut self.reports[k];
        let Ok(frame) = sealed else {
            *(if otp { &mut r.otp_frames_not_sent } else { &mut r.frames_not_sent }) += 1;
            return;
        };
        *(if otp { &mut r.otp_frames_sent } else { &mut r.frames_sent }) += 1;
        for (j, d) in onus.iter_mut().enumerate() {
            if !online[j] {
                continue;
            }
            let r = &mut self.reports[j];
            if j == k {
                let good = d.open_downstream(&frame).is_ok_and(|p| p == payload);
                match (otp, good) {
                    (false, true) => r.frames_opened += 1,
                    (false, false) => r.frames_lost += 1,
                    (true, true) => r.otp_frames_opened += 1,
                    (true, false) => r.otp_frames_lost += 1,
                }
                if otp {
                    // A pad frame opens once: the same frame again must be refused.
                    r.otp_replays += 1;
                    if d.open_downstream(&frame).is_ok() {
                        r.otp_replays_opened += 1;
                    }
                }
                continue;
            }
            match d.open_downstream(&frame) {
                Ok(_) => r.others_opened += 1,
                Err(_) => r.others_refused += 1,
            }
            // The same frame with its header claiming to be ours: our own key (or pad run
            // of the same number) on another ONU's ciphertext.
            let mut forged = frame.clone();
            forged[0..2].copy_from_slice(&(j as u16).to_be_bytes());
            r.others_tried_with_own_key += 1;
            if d.peek_downstream(&forged).is_ok_and(|p| p == payload) {
                r.others_plaintext_recovered += 1;
            }
        }
    }
}

/// The OLT's scheduling settings for the emulation: the scenario's frame and guard, the
/// options' policy, period, lead and loss detection.
fn scheduling_config(pon: &Pon, opts: &PonOptions) -> SchedulingConfig {
    let frame_gates = pon.map.frame_gates;
    let frames_per_s = pon.gate_rate_hz / frame_gates as f64;
    let n = pon.onus.len().max(1) as u64;
    let guard = mux_map(pon).guard();
    let budget = frame_gates.saturating_sub(n * u64::from(guard)) / n;
    SchedulingConfig {
        scheduler: SchedulerConfig {
            frame_len: frame_gates as u32,
            guard,
            // Never more than an equal share, so the scenario's ONUs always fit.
            min_slot: budget.clamp(1, 100) as u32,
            frames_per_period: ((opts.scheduling_period_s * frames_per_s).round() as u64).max(1),
            policy: opts.policy,
            ..SchedulerConfig::default()
        },
        activation: ActivationConfig { lost_after_periods: opts.lost_after_periods.max(1) },
        lead_frames: ((opts.map_lead_s * frames_per_s).ceil() as u64).max(1),
        ..SchedulingConfig::default()
    }
}

/// Each ONU's quality prior (secret bits per owned gate) from its loss budget, scaled with
/// [`quality_prior`] from the planner's best unattacked ONU.
fn quality_priors(pon: &Pon) -> Vec<f64> {
    let plan = crate::planning::rate(pon);
    let reference = plan
        .onus
        .iter()
        .filter(|o| o.eve.is_none() && o.slot_share > 0.0 && o.finite_bits_per_s > 0.0)
        .map(|o| (o.finite_bits_per_s / (o.slot_share * pon.gate_rate_hz), o.loss_db))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    plan.onus
        .iter()
        .map(|o| match reference {
            Some((q, loss)) => quality_prior(q, loss, o.loss_db),
            None => 0.0,
        })
        .collect()
}

/// Hands downstream frames to their ONUs, spreading ONUs over the workers.
fn deliver_down(onus: &mut [OnuDriver<SimSource>], frames: Vec<Vec<Vec<u8>>>, now: Instant, workers: usize) {
    let busy: Vec<(&mut OnuDriver<SimSource>, Vec<Vec<u8>>)> =
        onus.iter_mut().zip(frames).filter(|(_, f)| !f.is_empty()).collect();
    qpon_olt::run_parallel(busy, workers, |(d, fs)| {
        for f in fs {
            let _ = d.handle_frame(now, &f);
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn report(
    pon: &Pon,
    opts: &PonOptions,
    map: &SlotMap,
    olt: &OltDriver<ChaCha20Rng>,
    olt_pools: &[Arc<Mutex<MemoryPool>>],
    onu_pools: &[Arc<Mutex<MemoryPool>>],
    frames: u64,
    frames_dropped: u64,
) -> PonReport {
    let mut out = Vec::new();
    let mut disagreeing = 0;
    for k in 0..pon.onus.len() {
        let link = olt.onu(k as u16).expect("every ONU was added");
        let s = &link.stats;
        let olt_pool = olt_pools[k].lock().unwrap_or_else(|e| e.into_inner());
        let onu_pool = onu_pools[k].lock().unwrap_or_else(|e| e.into_inner());
        let mut agreeing = 0;
        for (id, key) in onu_pool.entries() {
            match olt_pool.entries().iter().find(|(i, _)| i == id) {
                Some((_, k2)) if k2 == key => agreeing += 1,
                _ => disagreeing += 1,
            }
        }
        out.push(OnuReport {
            onu: k,
            slot_share: map.share(OnuId(k as u16)),
            detections: s.detections,
            qber: s.qber(),
            blocks: s.blocks,
            secret_bits: s.secret_bits,
            key_rate_bits_per_s: s.secret_bits as f64 / opts.seconds,
            auth_bits_spent: link.session.auth_bits_spent(),
            pool_bits: qpon_kms::KeyPool::level_bits(&*olt_pool),
            blocks_agreeing: agreeing,
            aborted: s.aborted.clone(),
            alarms: olt.alarms(k as u16).map(|a| a.to_string()).collect(),
            downstream: None,
        });
    }
    let aggregate = Aggregate {
        onus: out.len(),
        seconds: opts.seconds,
        detections: out.iter().map(|o| o.detections).sum(),
        blocks: out.iter().map(|o| o.blocks).sum(),
        secret_bits: out.iter().map(|o| o.secret_bits).sum(),
        key_rate_bits_per_s: out.iter().map(|o| o.key_rate_bits_per_s).sum(),
        frames,
        frames_dropped,
        blocks_disagreeing: disagreeing,
        map_changes: olt.map_changes(),
    };
    PonReport { onus: out, aggregate, slot_maps: Vec::new() }
}
