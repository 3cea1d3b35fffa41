//! The `olt` service: the sans-IO [`OltDriver`] behind real sockets and a real clock.
//!
//! Threads and tasks (no thread per ONU):
//! - **the driver loop**, one OS thread: owns the driver and the detector; reads the
//!   detector every `poll_ms`, feeds it frames from the connections, fires timers, hands
//!   frames to the connections and refreshes the [`OltStatus`] every `stats_ms`. CPU work
//!   (reconciliation, privacy amplification) fans out to the driver's bounded worker pool
//!   from here, so it never blocks the network.
//! - **tokio** (a small multi-thread runtime): the TCP listener, one reader and one writer
//!   task per ONU connection, the HTTP endpoint for `/metrics` and `/status`.
//!
//! A connection starts with the ONU's [`Hello`]; a second connection for the same ONU
//! replaces the first (the ONU reconnected) and the session re-sends what is outstanding.
//! Frames for an ONU without a connection are dropped: the session retransmits them.
//!
//! **Key store** ([`PoolSource::Config`], what the binary uses): `keys.redb` in the data
//! directory holds every ONU's pool and the pad ledger. At start each ONU's session is
//! resumed from it ([`KeyStore::resume`]: authentication material = pre-shared secret +
//! committed shares, the persistent pad ledger, the last committed block; provisional
//! blocks are discarded) before it sees any input. The ETSI GS QKD 014 API (`[api]`), when
//! enabled, serves the same store.
//!
//! **Shutdown** ([`OltHandle::shutdown`]): the listener and the API stop, the driver loop
//! finishes the call it is in and stops, and every handle on the store is released. Blocks
//! become usable only when committed (the pool agreement); a block in flight stays
//! provisional and is discarded at the next start.

use crate::config::OltConfig;
use crate::driver::{OltDriver, OnuLink};
use crate::status::OltStatus;
use qpon_hw::{DetectionRecord, DetectorSource};
use qpon_kms::etsi::{IssuedKey, KeySupply, SupplyError};
use qpon_kms::{End, KeyPool, KeyStore, MemoryPool};
use qpon_mux::scheduler::{OnuDemand, Policy, SchedulerConfig, schedule};
use qpon_mux::{Equalisation, OnuId, RangingConfig, SlotMap, SlotMapSchedule};
pub use qpon_node::StartError;
use qpon_node::api::{ApiServer, ApiSide};
pub use qpon_node::store::PoolSource;
use qpon_node::store::StoreSettings;
use qpon_node::{ConfigError, read_psk};
use qpon_qkd::session::stream::{Hello, StreamDecoder, encode_frame};
use qpon_qkd::session::{AuthMaterial, MemoryLedger, OltSession};
use qpon_qkd::time::Instant;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tracing::{debug, info, warn};

/// Secret bits per owned gate assumed for an ONU that has made no key yet (the same for
/// all: without ranging data the OLT has no loss budget to scale it from).
const PRIOR_QUALITY: f64 = 1e-5;

/// How long a new connection has to present its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// In-memory pools by ONU id (missing ones get a fresh [`MemoryPool`]).
pub type MemoryPools = BTreeMap<u16, Box<dyn KeyPool>>;

/// What the service runs on besides its configuration.
pub struct OltParts {
    /// The receiver.
    pub detector: Box<dyn DetectorSource + Send>,
    /// The slot map to start with (`None`: equal shares among the configured ONUs).
    pub slot_map: Option<SlotMap>,
    /// Where the pools come from: the store in `[olt] data_dir` ([`PoolSource::Config`],
    /// the default), an open store, or in-memory pools and ledgers (tests).
    pub pools: PoolSource<MemoryPools>,
}

impl OltParts {
    /// `detector`, equal shares to start with, the configured key store.
    pub fn new(detector: Box<dyn DetectorSource + Send>) -> Self {
        Self { detector, slot_map: None, pools: PoolSource::Config }
    }
}

/// A running OLT.
pub struct OltHandle {
    /// Where ONUs connect.
    pub local_addr: SocketAddr,
    /// Where `/metrics` and `/status` are served, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the ETSI GS QKD 014 API is served, if enabled.
    pub api_addr: Option<SocketAddr>,
    status: Arc<RwLock<OltStatus>>,
    inputs: mpsc::Sender<Input>,
    driver: Option<std::thread::JoinHandle<OltStatus>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    api: Option<ApiServer>,
}

enum Input {
    Connected {
        onu: u16,
        conn: u64,
        tx: UnboundedSender<Vec<u8>>,
    },
    /// The ETSI API's `enc_keys`: keys to issue from an ONU's pool (see [`DriverSupply`]).
    IssueKeys {
        onu: u16,
        unit: usize,
        number: usize,
        reply: mpsc::Sender<Result<Vec<IssuedKey>, SupplyError>>,
    },
    Frame {
        onu: u16,
        conn: u64,
        bytes: Vec<u8>,
    },
    Closed {
        onu: u16,
        conn: u64,
    },
    Shutdown,
}

/// How long `enc_keys` waits for the driver loop to issue its keys.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The OLT's [`KeySupply`] for the ETSI API: asks the driver loop, which owns the pools and
/// the sessions, to take the keys and announce them to the ONU (so both ends consume the
/// same bytes in the same order as the downstream keys around them).
struct DriverSupply {
    inputs: std::sync::Mutex<mpsc::Sender<Input>>,
}

impl KeySupply for DriverSupply {
    fn issue(&self, onu: u16, unit: usize, number: usize) -> Result<Vec<IssuedKey>, SupplyError> {
        let (reply, answer) = mpsc::channel();
        let sent =
            self.inputs.lock().map(|tx| tx.send(Input::IssueKeys { onu, unit, number, reply }).is_ok());
        if !matches!(sent, Ok(true)) {
            return Err(SupplyError::Unavailable { onu, why: "the OLT is shutting down".into() });
        }
        // The driver answers within one loop turn; a timeout means it is stuck (the keys,
        // if it issues them later, stay consumed and announced: recorded, not delivered).
        answer
            .recv_timeout(ISSUE_TIMEOUT)
            .map_err(|_| SupplyError::Unavailable { onu, why: "the driver did not answer".into() })?
    }
}

/// Equal shares of the frame among `onus` (what applies before the scheduler has data).
pub fn equal_map(frame_gates: u32, guard: u32, onus: &[u16]) -> SlotMap {
    let cfg = SchedulerConfig {
        frame_len: frame_gates,
        guard,
        min_slot: 1,
        policy: Policy::EqualGates,
        ..SchedulerConfig::default()
    };
    let demands: Vec<OnuDemand> = onus
        .iter()
        .map(|&o| OnuDemand { onu: OnuId(o), active: true, deficit_bits: 0.0, quality: 1.0 })
        .collect();
    let idle = SlotMap::idle(frame_gates, guard, 0, 0);
    match schedule(&cfg, &idle, &demands, 0) {
        Ok(out) => out.map,
        Err(_) => idle,
    }
}

impl OltHandle {
    /// Starts the service on the current tokio runtime.
    pub async fn start(cfg: OltConfig, mut parts: OltParts) -> Result<OltHandle, StartError> {
        cfg.validate()?;
        let ids: Vec<u16> = cfg.onu.iter().map(|o| o.id).collect();
        let sch = &cfg.scheduling.scheduler;
        let map = parts.slot_map.take().unwrap_or_else(|| equal_map(sch.frame_len, sch.guard, &ids));
        let frame_len = u64::from(map.frame_len());
        let mut driver = OltDriver::new(SlotMapSchedule::new(map), cfg.workers());
        // Ranging proper needs the boards (hardware issue): until then each ONU's
        // equalisation comes from its configured pulse offset, and every ONU starts from
        // the same quality prior, so the first maps share the frame evenly until measured
        // qualities take over. An ONU is ranged when it connects (see `driver_loop`).
        let ranging = RangingConfig::default();
        let equalisations: HashMap<u16, Equalisation> = cfg
            .onu
            .iter()
            .filter_map(|e| {
                let rt = u64::try_from(e.pulse_offset).unwrap_or(0).saturating_mul(2);
                ranging.equalise(rt).or_else(|_| ranging.equalise(0)).ok().map(|eq| (e.id, eq))
            })
            .collect();
        driver.monitor_mut().set_config(cfg.monitor.clone());
        driver.enable_scheduling(cfg.scheduling);
        if cfg.downstream.enabled {
            driver.enable_downstream(cfg.downstream);
        }
        let settings = StoreSettings {
            data_dir: &cfg.olt.data_dir,
            data_dir_field: "olt.data_dir",
            kek_file: &cfg.olt.kek_file,
            kek_field: "olt.kek_file",
        };
        let (store, mut memory) = match parts.pools.open(&settings)? {
            Ok(store) => (Some(store), MemoryPools::new()),
            Err(memory) => (None, memory),
        };
        if cfg.api.enabled() && store.is_none() {
            return Err(ConfigError::field("api.listen", "the ETSI API needs the key store").into());
        }
        for entry in &cfg.onu {
            let psk = read_psk(&entry.psk_file)?;
            let link = match &store {
                Some(store) => {
                    // Resumed before any input: the pool sync of the first connection
                    // names the last committed block.
                    let r = store
                        .resume(entry.id, &psk, End::Olt)
                        .map_err(|e| StartError::Store(format!("resuming ONU {}: {e}", entry.id)))?;
                    if !r.discarded.is_empty() {
                        info!(onu = entry.id, blocks = r.discarded.len(), "provisional blocks discarded");
                    }
                    let mut session = OltSession::new(
                        cfg.session_for(entry),
                        r.material,
                        Box::new(r.ledger),
                        qpon_qkd::rng::os_rng(),
                    );
                    session.restore_last_committed(r.last_committed.map(|(id, _)| id));
                    OnuLink::new(session, Box::new(r.pool))
                }
                None => {
                    let session = OltSession::new(
                        cfg.session_for(entry),
                        AuthMaterial::from_psk(&psk),
                        Box::new(MemoryLedger::new()),
                        qpon_qkd::rng::os_rng(),
                    );
                    let pool = memory.remove(&entry.id).unwrap_or_else(|| Box::new(MemoryPool::new()));
                    OnuLink::new(session, pool)
                }
            };
            driver.add_onu(entry.id, link);
        }
        let listener = TcpListener::bind(cfg.olt.listen)
            .await
            .map_err(|source| StartError::Listen { addr: cfg.olt.listen.to_string(), source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr: cfg.olt.listen.to_string(), source })?;
        let (inputs, rx) = mpsc::channel();
        let api = match &store {
            Some(store) => {
                let supply: Arc<dyn KeySupply> =
                    Arc::new(DriverSupply { inputs: std::sync::Mutex::new(inputs.clone()) });
                qpon_node::api::start_api(&cfg.api, ApiSide::Olt(&ids), store.clone(), Some(supply)).await?
            }
            None => None,
        };
        let api_addr = api.as_ref().map(|a| a.addr);
        let status = Arc::new(RwLock::new(OltStatus::default()));
        let mut tasks = Vec::new();

        let metrics_addr = if cfg.olt.metrics_listen.is_empty() {
            None
        } else {
            let l = match TcpListener::bind(&cfg.olt.metrics_listen).await {
                Ok(l) => l,
                Err(source) => {
                    if let Some(a) = api {
                        a.stop().await;
                    }
                    return Err(StartError::Listen { addr: cfg.olt.metrics_listen.clone(), source });
                }
            };
            let addr = l.local_addr().ok();
            tasks.push(tokio::spawn(qpon_node::serve_status(l, status.clone())));
            addr
        };
        info!(%local_addr, ?metrics_addr, ?api_addr, onus = ids.len(), store = ?store, "olt listening");

        let known: Arc<Vec<u16>> = Arc::new(ids);
        tasks.push(tokio::spawn(accept_loop(listener, inputs.clone(), known)));

        let poll = Duration::from_millis(cfg.olt.poll_ms);
        let stats_every = Duration::from_millis(cfg.olt.stats_ms);
        let st = status.clone();
        let detector = parts.detector;
        let driver = std::thread::Builder::new()
            .name("olt-driver".into())
            .spawn(move || {
                let lp = LoopParts { driver, detector, rx, status: st, store };
                driver_loop(lp, poll, stats_every, frame_len, equalisations)
            })
            .map_err(|source| StartError::Listen { addr: "driver thread".into(), source })?;
        Ok(OltHandle { local_addr, metrics_addr, api_addr, status, inputs, driver: Some(driver), tasks, api })
    }

    /// The latest status snapshot.
    pub fn status(&self) -> OltStatus {
        self.status.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the service and returns the final status. When it returns, the service holds
    /// no handle on the key store any more (it can be opened again).
    pub async fn shutdown(mut self) -> OltStatus {
        let _ = self.inputs.send(Input::Shutdown);
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        let driver = self.driver.take();
        let fin = tokio::task::spawn_blocking(move || driver.map(|d| d.join()))
            .await
            .ok()
            .flatten()
            .and_then(Result::ok);
        fin.unwrap_or_else(|| self.status())
    }
}

async fn accept_loop(listener: TcpListener, inputs: mpsc::Sender<Input>, known: Arc<Vec<u16>>) {
    let mut next_conn = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_conn += 1;
        let conn = next_conn;
        let inputs = inputs.clone();
        let known = known.clone();
        tokio::spawn(async move {
            if let Err(why) = connection(stream, conn, inputs, &known).await {
                warn!(%peer, %why, "connection closed");
            }
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    conn: u64,
    inputs: mpsc::Sender<Input>,
    known: &[u16],
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let mut hello = [0u8; Hello::LEN];
    tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut hello))
        .await
        .map_err(|_| "no hello within 5 s".to_string())?
        .map_err(|e| format!("reading hello: {e}"))?;
    let Hello { onu } = Hello::parse(&hello).map_err(|e| e.to_string())?;
    if !known.contains(&onu) {
        return Err(format!("hello from unknown onu {onu}"));
    }
    info!(onu, conn, "onu connected");
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = unbounded_channel::<Vec<u8>>();
    inputs.send(Input::Connected { onu, conn, tx }).map_err(|_| "shutting down")?;
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(f) = rx.recv().await {
            buf.clear();
            encode_frame(&f, &mut buf);
            // Batch whatever else is queued into one write.
            while let Ok(f) = rx.try_recv() {
                encode_frame(&f, &mut buf);
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut dec = StreamDecoder::new(u32::MAX >> 4);
    let mut buf = vec![0u8; 64 * 1024];
    let result = loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(format!("read: {e}")),
        };
        dec.push(&buf[..n]);
        loop {
            match dec.next_frame() {
                Ok(Some(bytes)) => {
                    if inputs.send(Input::Frame { onu, conn, bytes }).is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    writer.abort();
    let _ = inputs.send(Input::Closed { onu, conn });
    info!(onu, conn, "onu disconnected");
    result
}

/// What the driver loop owns.
struct LoopParts {
    driver: OltDriver<qpon_qkd::rng::OsRng>,
    detector: Box<dyn DetectorSource + Send>,
    rx: mpsc::Receiver<Input>,
    status: Arc<RwLock<OltStatus>>,
    /// The key store, for the pool figures of the status (`None` with in-memory pools).
    store: Option<KeyStore>,
}

fn driver_loop(
    parts: LoopParts,
    poll: Duration,
    stats_every: Duration,
    frame_len: u64,
    equalisations: HashMap<u16, Equalisation>,
) -> OltStatus {
    let LoopParts { mut driver, mut detector, rx, status, store } = parts;
    let start = std::time::Instant::now();
    let now = || Instant::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
    let gate_rate = detector.gate_rate_hz();
    let mut conns: HashMap<u16, (u64, UnboundedSender<Vec<u8>>)> = HashMap::new();
    let mut records: Vec<DetectionRecord> = Vec::new();
    let mut next_poll = Instant::ZERO;
    let mut next_stats = Instant::ZERO;
    let mut detector_failed = false;
    let publish =
        |driver: &OltDriver<_>, conns: &HashMap<u16, (u64, UnboundedSender<Vec<u8>>)>, t: Instant| {
            let mut s = OltStatus::capture(driver, t, |o| conns.contains_key(&o));
            if let Some(store) = &store {
                s.add_store_figures(store);
            }
            *status.write().unwrap_or_else(|e| e.into_inner()) = s.clone();
            s
        };
    loop {
        let t = now();
        let deadline = [Some(next_poll), Some(next_stats), driver.poll_timeout()].into_iter().flatten().min();
        let wait = deadline.map_or(poll, |d| d.saturating_duration_since(t));
        let first = match rx.recv_timeout(wait) {
            Ok(i) => Some(i),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Input::Shutdown),
        };
        let t = now();
        let mut frames = Vec::new();
        let mut stop = false;
        for input in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match input {
                Input::Connected { onu, conn, tx } => {
                    conns.insert(onu, (conn, tx));
                    driver.reset_link(onu, t);
                    // Ranged (and challenged) as it connects: its map acknowledgement, the
                    // first frame it answers on the fresh link, carries the tag that
                    // authenticates it. An ONU still active is not re-ranged.
                    if let Some(eq) = equalisations.get(&onu) {
                        driver.range_onu(t, onu, *eq, PRIOR_QUALITY);
                    }
                }
                Input::Frame { onu, conn, bytes } => {
                    if conns.get(&onu).is_some_and(|(c, _)| *c == conn) {
                        frames.push((onu, bytes));
                    }
                }
                Input::Closed { onu, conn } => {
                    if conns.get(&onu).is_some_and(|(c, _)| *c == conn) {
                        conns.remove(&onu);
                    }
                }
                Input::IssueKeys { onu, unit, number, reply } => {
                    let r = driver.issue_api_keys(t, onu, unit, number);
                    if let Err(e) = &r {
                        debug!(onu, error = %e, "API keys not issued");
                    }
                    let _ = reply.send(r);
                }
                Input::Shutdown => stop = true,
            }
            if frames.len() >= 4096 {
                break;
            }
        }
        if stop {
            info!("driver loop stopping");
            return publish(&driver, &conns, t);
        }
        if !frames.is_empty() {
            driver.handle_frames(t, frames);
        }
        if t >= next_poll {
            let until = (t.as_secs_f64() * gate_rate) as u64;
            records.clear();
            match detector.poll_detections(until, &mut records) {
                Ok(_) => {
                    detector_failed = false;
                    driver.handle_detections(t, &records);
                }
                Err(e) => {
                    if !detector_failed {
                        warn!(error = %e, "detector read failed");
                    }
                    detector_failed = true;
                }
            }
            // The scheduling step runs once per period; between periods this is a no-op.
            match driver.schedule(t, until / frame_len) {
                Ok(Some(version)) => info!(version, "new slot map"),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "scheduling step failed; the previous map stays"),
            }
            // Downstream keys: rotations due are taken from the pools and announced.
            driver.downstream_tick(t, qpon_node::wall_superframe());
            next_poll = t + poll;
        }
        if driver.poll_timeout().is_some_and(|d| d <= t) {
            driver.handle_timeout(t);
        }
        while let Some((onu, f)) = driver.poll_transmit() {
            match conns.get(&onu) {
                Some((_, tx)) => {
                    let _ = tx.send(f);
                }
                None => debug!(onu, "no connection: frame dropped, the session retransmits"),
            }
        }
        if t >= next_stats {
            // The detector's status feeds the monitor once per statistics period.
            match detector.status() {
                Ok(st) => {
                    if driver.handle_status(t, &st) > 0 {
                        for a in driver.monitor().alarms().iter().rev().take(8) {
                            warn!(alarm = %a, "monitor alarm");
                        }
                    }
                }
                Err(e) => debug!(error = %e, "detector status unavailable"),
            }
            publish(&driver, &conns, t);
            next_stats = t + stats_every;
        }
    }
}
