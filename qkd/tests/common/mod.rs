//! A quinn-style `Pair` harness: one OLT session and one ONU session joined by in-memory
//! queues with a virtual clock, a toy quantum channel, and knobs to drop, tamper with and
//! inject frames.
#![allow(dead_code, unreachable_pub)]

use qpon_qkd::records::{Basis, DetectionFlags, DetectionRecord, Intensity, PulseRecord};
use qpon_qkd::rng::{ChaCha20Rng, seeded};
use qpon_qkd::secret::SecretBytes;
use qpon_qkd::session::{
    AuthMaterial, Direction, Event, MemoryLedger, OltSession, OnuSession, SessionConfig,
};
use qpon_qkd::time::{Duration, Instant};
use rand::RngExt;
use std::collections::{HashMap, VecDeque};

/// The quantum side of a test link: what the receiver detected and what the source sent.
pub struct Quantum {
    pub detections: Vec<DetectionRecord>,
    pub pulses: HashMap<u64, PulseRecord>,
}

/// Detections with the intensity mix of a 1:32 PON ONU at 10 km with SNSPDs (the shipped
/// finite-key example), p_Z = 0.5 at both ends (small test blocks need a large test
/// basis to prove any key), error probability `qber` for matched
/// bases (0.5 for vacuum-class detections, which are dark counts). `eve` = intercept-resend
/// on every pulse with random bases (adds 25 % errors on matched bases).
pub fn quantum(n: usize, qber: f64, eve: bool, seed: u64) -> Quantum {
    let mut rng = seeded(seed);
    let weights = [0.6247, 0.3751, 0.0002];
    let mut detections = Vec::with_capacity(n);
    let mut pulses = HashMap::with_capacity(n);
    let mut gate = 1000u64;
    for _ in 0..n {
        gate += rng.random_range(1..200u64);
        let u: f64 = rng.random();
        let k = if u < weights[0] {
            Intensity::Signal
        } else if u < weights[0] + weights[1] {
            Intensity::Decoy
        } else {
            Intensity::Vacuum
        };
        let tx_basis = Basis::from_bit(rng.random_bool(0.5));
        let rx_basis = Basis::from_bit(rng.random_bool(0.5));
        let bit: bool = rng.random();
        let rx_bit = if tx_basis == rx_basis {
            let p_err = if k == Intensity::Vacuum {
                0.5
            } else if eve {
                0.25 + 0.5 * qber
            } else {
                qber
            };
            bit ^ rng.random_bool(p_err)
        } else {
            rng.random()
        };
        detections.push(DetectionRecord {
            gate,
            basis: rx_basis,
            bit: rx_bit,
            flags: DetectionFlags::default(),
        });
        pulses.insert(gate, PulseRecord { pulse: gate, basis: tx_basis, bit, intensity: k });
    }
    Quantum { detections, pulses }
}

/// What to do with a frame in flight.
pub enum Fate {
    Deliver,
    Drop,
    Replace(Vec<u8>),
}

type Filter = Box<dyn FnMut(Direction, usize, &[u8]) -> Fate>;

pub struct Pair {
    pub olt: OltSession<ChaCha20Rng>,
    pub onu: OnuSession,
    pub now: Instant,
    pub latency: Duration,
    pub to_onu: VecDeque<(Instant, Vec<u8>)>,
    pub to_olt: VecDeque<(Instant, Vec<u8>)>,
    pub pulses: HashMap<u64, PulseRecord>,
    pub olt_events: Vec<Event>,
    pub onu_events: Vec<Event>,
    /// Errors returned by `handle_frame`, per receiving side.
    pub olt_refused: Vec<String>,
    pub onu_refused: Vec<String>,
    /// All frames sent, per direction, in order.
    pub sent: Vec<(Direction, Vec<u8>)>,
    pub filter: Option<Filter>,
    pub olt_ledger: MemoryLedger,
    pub onu_ledger: MemoryLedger,
    pub psk: SecretBytes,
    pub cfg: SessionConfig,
    /// Each end's pool as a driver following the pool agreement would keep it (durably:
    /// it survives the `durable_restart_*` calls).
    pub olt_pool: Pool,
    pub onu_pool: Pool,
}

/// Where a block stands in a [`Pool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Provisional,
    Committed,
    Discarded,
}

/// A durable pool model: every block ever staged, in order, with its stage.
#[derive(Default, Debug)]
pub struct Pool {
    pub blocks: Vec<(uuid::Uuid, Stage, qpon_qkd::BitBlock, Vec<u8>)>,
    /// A pool sync named a block this pool does not hold committed.
    pub diverged: bool,
    /// The OLT's pool uses this (ONU) pool mirrored, in the order applied (durable, like
    /// the blocks: a restarted ONU reports how many).
    pub uses: Vec<qpon_qkd::session::PoolUse>,
}

impl Pool {
    /// Applies one event the way a driver must (before taking the next).
    pub fn apply(&mut self, e: &Event) {
        let set = |blocks: &mut Vec<(uuid::Uuid, Stage, qpon_qkd::BitBlock, Vec<u8>)>, id, st| {
            if let Some(b) = blocks.iter_mut().find(|b| b.0 == id) {
                b.1 = st;
            }
        };
        match e {
            Event::Provisional(b) => {
                assert!(self.blocks.iter().all(|x| x.0 != b.id), "block staged twice");
                self.blocks.push((b.id, Stage::Provisional, b.key.clone(), b.share.expose().to_vec()));
            }
            Event::Block(b, _) => {
                let x = self.blocks.iter_mut().find(|x| x.0 == b.id).expect("commit of a block never staged");
                assert_ne!(x.1, Stage::Discarded, "commit of a discarded block");
                assert_eq!(x.2, b.key, "committed key differs from the staged one");
                x.1 = Stage::Committed;
            }
            Event::Discarded { id } => set(&mut self.blocks, *id, Stage::Discarded),
            Event::PoolSync { last_committed } => {
                let keep = match last_committed {
                    None => 0,
                    Some(id) => {
                        match self.blocks.iter().position(|b| b.0 == *id && b.1 == Stage::Committed) {
                            Some(k) => k + 1,
                            None => {
                                self.diverged = true;
                                return;
                            }
                        }
                    }
                };
                for b in &mut self.blocks[keep..] {
                    b.1 = Stage::Discarded;
                }
            }
            Event::PoolUse(u) => self.uses.push(u.clone()),
            _ => {}
        }
    }

    /// The committed blocks (ID and key), in order.
    pub fn committed(&self) -> Vec<(uuid::Uuid, qpon_qkd::BitBlock)> {
        self.blocks.iter().filter(|b| b.1 == Stage::Committed).map(|b| (b.0, b.2.clone())).collect()
    }

    pub fn stage_of(&self, id: uuid::Uuid) -> Option<Stage> {
        self.blocks.iter().find(|b| b.0 == id).map(|b| b.1)
    }

    /// The authentication material a restarted end rebuilds: the pre-shared secret, then the
    /// committed blocks' shares in order.
    pub fn material(&self, psk: &SecretBytes) -> AuthMaterial {
        let mut m = AuthMaterial::from_psk(psk);
        for b in self.blocks.iter().filter(|b| b.1 == Stage::Committed) {
            m.append_share(&b.3);
        }
        m
    }

    fn last_committed(&self) -> Option<(uuid::Uuid, usize)> {
        self.blocks.iter().rev().find(|b| b.1 == Stage::Committed).map(|b| (b.0, b.3.len()))
    }
}

pub fn psk(bytes: usize) -> SecretBytes {
    let mut rng = seeded(0xC0FFEE);
    let mut v = vec![0u8; bytes];
    rand::Rng::fill_bytes(&mut rng, &mut v);
    SecretBytes::new(v)
}

impl Pair {
    pub fn new(cfg: SessionConfig, q: &Quantum, seed: u64) -> Self {
        let psk = psk(64 * 1024);
        let olt_ledger = MemoryLedger::new();
        let onu_ledger = MemoryLedger::new();
        let mut olt = OltSession::new(
            cfg.clone(),
            AuthMaterial::from_psk(&psk),
            Box::new(olt_ledger.clone()),
            seeded(seed),
        );
        let onu = OnuSession::new(cfg.clone(), AuthMaterial::from_psk(&psk), Box::new(onu_ledger.clone()));
        olt.handle_detections(Instant::ZERO, &q.detections);
        Self {
            olt,
            onu,
            now: Instant::ZERO,
            latency: Duration::from_micros(100),
            to_onu: VecDeque::new(),
            to_olt: VecDeque::new(),
            pulses: q.pulses.clone(),
            olt_events: Vec::new(),
            onu_events: Vec::new(),
            olt_refused: Vec::new(),
            onu_refused: Vec::new(),
            sent: Vec::new(),
            filter: None,
            olt_ledger,
            onu_ledger,
            psk,
            cfg,
            olt_pool: Pool::default(),
            onu_pool: Pool::default(),
        }
    }

    /// Kills the OLT and starts it again as its driver would after `kill -9`: provisional
    /// blocks discarded, material rebuilt from the pool, the session told its last committed
    /// block. Frames in flight are lost and the ONU sees a new connection.
    pub fn durable_restart_olt(&mut self, seed: u64) {
        for b in &mut self.olt_pool.blocks {
            if b.1 == Stage::Provisional {
                b.1 = Stage::Discarded;
            }
        }
        self.olt = OltSession::new(
            self.cfg.clone(),
            self.olt_pool.material(&self.psk),
            Box::new(self.olt_ledger.clone()),
            seeded(seed),
        );
        self.olt.restore_last_committed(self.olt_pool.last_committed().map(|(id, _)| id));
        self.onu.reset_link();
        self.to_olt.clear();
        self.to_onu.clear();
    }

    /// Kills the ONU and starts it again likewise (its provisional blocks stay until the
    /// pool sync says what to do with them).
    pub fn durable_restart_onu(&mut self) {
        self.onu = OnuSession::new(
            self.cfg.clone(),
            self.onu_pool.material(&self.psk),
            Box::new(self.onu_ledger.clone()),
        );
        self.onu.restore_last_committed(self.onu_pool.last_committed());
        self.onu.restore_pool_uses(self.onu_pool.uses.len() as u64);
        self.olt.reset_link(self.now);
        self.to_olt.clear();
        self.to_onu.clear();
    }

    /// A new connection without a restart (the TCP connection broke).
    pub fn reconnect(&mut self) {
        self.to_olt.clear();
        self.to_onu.clear();
        self.onu.reset_link();
        self.olt.reset_link(self.now);
    }

    /// Restarts the OLT session (same ledger, material rebuilt from the pre-shared secret,
    /// a new RNG), as after a process restart; both links are reset as on a new connection.
    pub fn restart_olt(&mut self, seed: u64) {
        self.olt = OltSession::new(
            self.cfg.clone(),
            AuthMaterial::from_psk(&self.psk),
            Box::new(self.olt_ledger.clone()),
            seeded(seed),
        );
        self.onu.reset_link();
        self.to_olt.clear();
        self.to_onu.clear();
    }

    /// Restarts the ONU session likewise.
    pub fn restart_onu(&mut self) {
        self.onu = OnuSession::new(
            self.cfg.clone(),
            AuthMaterial::from_psk(&self.psk),
            Box::new(self.onu_ledger.clone()),
        );
        self.olt.reset_link(self.now);
        self.to_olt.clear();
        self.to_onu.clear();
    }

    /// Sends what both sessions release and applies their events, until neither has
    /// anything more (taking an event may release a frame that waited for it).
    fn pump_outputs(&mut self) {
        loop {
            let mut progress = false;
            while let Some(f) = self.olt.poll_transmit() {
                progress = true;
                self.send(Direction::Downstream, f);
            }
            while let Some(f) = self.onu.poll_transmit() {
                progress = true;
                self.send(Direction::Upstream, f);
            }
            while let Some(e) = self.olt.poll_event() {
                progress = true;
                self.olt_pool.apply(&e);
                self.olt_events.push(e);
            }
            while let Some(e) = self.onu.poll_event() {
                progress = true;
                if let Event::NeedPulses { request, pulses } = &e {
                    let recs: Vec<Option<PulseRecord>> =
                        pulses.iter().map(|p| p.and_then(|p| self.pulses.get(&p).copied())).collect();
                    self.onu.handle_pulses(self.now, *request, &recs).expect("pulses for an open request");
                }
                // A driver installs every slot map at once (the ONU acknowledges it then).
                if let Event::SlotMap(u) = &e {
                    self.onu.ack_slot_map(u.version).expect("ack of the newest slot map");
                }
                // A driver applies a pool use durably, then acknowledges it.
                self.onu_pool.apply(&e);
                if let Event::PoolUse(u) = &e {
                    self.onu.ack_pool_use(u.seq).expect("ack of the next pool use");
                }
                self.onu_events.push(e);
            }
            if !progress {
                return;
            }
        }
    }

    fn send(&mut self, dir: Direction, frame: Vec<u8>) {
        let idx = self.sent.iter().filter(|(d, _)| *d == dir).count();
        self.sent.push((dir, frame.clone()));
        let fate = match self.filter.as_mut() {
            Some(f) => f(dir, idx, &frame),
            None => Fate::Deliver,
        };
        let frame = match fate {
            Fate::Deliver => frame,
            Fate::Drop => return,
            Fate::Replace(b) => b,
        };
        let at = self.now + self.latency;
        match dir {
            Direction::Downstream => self.to_onu.push_back((at, frame)),
            Direction::Upstream => self.to_olt.push_back((at, frame)),
        }
    }

    /// Sends what the sessions release, then injects `frame` and delivers everything due.
    pub fn pump_and_inject(&mut self, dir: Direction, frame: Vec<u8>) {
        self.pump_outputs();
        self.inject(dir, frame);
        self.now = self.now + self.latency;
        while self.to_onu.front().is_some_and(|x| x.0 <= self.now)
            || self.to_olt.front().is_some_and(|x| x.0 <= self.now)
        {
            self.step();
        }
    }

    pub fn inject(&mut self, dir: Direction, frame: Vec<u8>) {
        let at = self.now + self.latency;
        match dir {
            Direction::Downstream => self.to_onu.push_back((at, frame)),
            Direction::Upstream => self.to_olt.push_back((at, frame)),
        }
    }

    /// One step: deliver what is due, or advance the clock to the next deadline. False
    /// when nothing is left to do.
    pub fn step(&mut self) -> bool {
        self.pump_outputs();
        if let Some((at, _)) = self.to_onu.front()
            && *at <= self.now
        {
            let (_, f) = self.to_onu.pop_front().unwrap();
            if let Err(e) = self.onu.handle_frame(self.now, &f) {
                self.onu_refused.push(e.to_string());
            }
            return true;
        }
        if let Some((at, _)) = self.to_olt.front()
            && *at <= self.now
        {
            let (_, f) = self.to_olt.pop_front().unwrap();
            if let Err(e) = self.olt.handle_frame(self.now, &f) {
                self.olt_refused.push(e.to_string());
            }
            return true;
        }
        if let Some(t) = self.olt.poll_timeout()
            && t <= self.now
        {
            self.olt.handle_timeout(self.now);
            return true;
        }
        let next =
            [self.to_onu.front().map(|x| x.0), self.to_olt.front().map(|x| x.0), self.olt.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
        match next {
            Some(t) => {
                self.now = t.max(self.now);
                true
            }
            None => false,
        }
    }

    /// Runs until idle, at most `max_steps` steps.
    pub fn drive(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if !self.step() {
                self.pump_outputs();
                return;
            }
        }
        panic!("drive: still busy after {max_steps} steps (livelock?)");
    }

    pub fn blocks(events: &[Event]) -> Vec<(uuid::Uuid, qpon_qkd::BitBlock, qpon_qkd::session::BlockStats)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Block(b, s) => Some((b.id, b.key.clone(), s.clone())),
                _ => None,
            })
            .collect()
    }
}
