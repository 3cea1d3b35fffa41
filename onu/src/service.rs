//! The `onu` service: the sans-IO [`OnuDriver`] behind a TCP connection to the OLT and a
//! real clock, on one tokio task (an ONU runs one session; its CPU work per block is a few
//! milliseconds of privacy amplification).
//!
//! The connection opens with the [`Hello`] naming this ONU; after a lost connection the
//! service reconnects with exponential back-off (jittered, so a whole PON of ONUs does not
//! reconnect in lockstep after an OLT restart) and resets the session's link, which makes
//! the OLT re-send what is outstanding. Every session frame is authenticated by the session
//! itself; the stream adds only a length prefix.
//!
//! **Key store** ([`PoolSource::Config`], what the binary uses): `keys.redb` in the data
//! directory holds the pool and the pad ledger; the session is resumed from it
//! ([`qpon_kms::KeyStore::resume`]: material, ledger, last committed block and its share
//! length) before its first input. The ETSI GS QKD 014 API (`[api]`), when enabled,
//! serves `dec_keys` from the same store.
//!
//! **Shutdown** ([`OnuHandle::shutdown`]): the task stops between two frames and the API
//! stops; every handle on the store is released. Blocks become usable only when committed,
//! on the OLT's acknowledgement; the pool sync of the next connection settles a block in
//! flight at both ends.

use crate::OnuDriver;
use crate::config::OnuConfig;
use crate::status::OnuStatus;
use qpon_hw::PulseSource;
use qpon_kms::{End, KeyPool, KeyStore};
pub use qpon_node::StartError;
use qpon_node::api::{ApiServer, ApiSide};
pub use qpon_node::store::PoolSource;
use qpon_node::store::StoreSettings;
use qpon_node::{ConfigError, PoolFigures};
use qpon_qkd::session::stream::{Hello, StreamDecoder, encode_frame};
use qpon_qkd::session::{AuthMaterial, MemoryLedger, OnuSession};
use qpon_qkd::time::Instant;
use rand::RngExt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

/// A running ONU.
pub struct OnuHandle {
    /// Where `/metrics` and `/status` are served, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the ETSI GS QKD 014 API is served, if enabled.
    pub api_addr: Option<SocketAddr>,
    status: Arc<RwLock<OnuStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<OnuStatus>,
    http: Option<tokio::task::JoinHandle<()>>,
    api: Option<ApiServer>,
}

struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

impl OnuHandle {
    /// Starts the service on the current tokio runtime, with `source` as the ONU's QKD
    /// source and its pool from `pools` (the binary: [`PoolSource::Config`], the store in
    /// `[onu] data_dir`; tests may pass an in-memory pool).
    pub async fn start<P: PulseSource + Send + 'static>(
        cfg: OnuConfig,
        source: P,
        pools: PoolSource<Box<dyn KeyPool>>,
    ) -> Result<OnuHandle, StartError> {
        cfg.validate()?;
        let (id, psk_path) = cfg.require_identity()?;
        let psk = qpon_node::read_psk(psk_path)?;
        let settings = StoreSettings {
            data_dir: &cfg.onu.data_dir,
            data_dir_field: "onu.data_dir",
            kek_file: &cfg.onu.kek_file,
            kek_field: "onu.kek_file",
        };
        let (store, session, pool): (Option<KeyStore>, OnuSession, Box<dyn KeyPool>) =
            match pools.open(&settings)? {
                Ok(store) => {
                    // Resumed before any input: the OLT's pool sync is checked against it.
                    let r = store
                        .resume(id, &psk, End::Onu)
                        .map_err(|e| StartError::Store(format!("resuming ONU {id}: {e}")))?;
                    let mut session = OnuSession::new(cfg.session(), r.material, Box::new(r.ledger));
                    session.restore_last_committed(r.last_committed);
                    (Some(store), session, Box::new(r.pool))
                }
                Err(pool) => {
                    let session = OnuSession::new(
                        cfg.session(),
                        AuthMaterial::from_psk(&psk),
                        Box::new(MemoryLedger::new()),
                    );
                    (None, session, pool)
                }
            };
        if cfg.api.enabled() && store.is_none() {
            return Err(ConfigError::field("api.listen", "the ETSI API needs the key store").into());
        }
        let mut driver = OnuDriver::new(session, source, pool);
        driver.set_downstream_overlap(cfg.downstream.overlap_superframes);
        let api = match &store {
            Some(store) => qpon_node::api::start_api(&cfg.api, ApiSide::Onu(id), store.clone(), None).await?,
            None => None,
        };
        let api_addr = api.as_ref().map(|a| a.addr);
        let status = Arc::new(RwLock::new(OnuStatus { onu: id, ..OnuStatus::default() }));
        let (metrics_addr, http) = if cfg.onu.metrics_listen.is_empty() {
            (None, None)
        } else {
            let l = match TcpListener::bind(&cfg.onu.metrics_listen).await {
                Ok(l) => l,
                Err(source) => {
                    if let Some(a) = api {
                        a.stop().await;
                    }
                    return Err(StartError::Listen { addr: cfg.onu.metrics_listen.clone(), source });
                }
            };
            (l.local_addr().ok(), Some(tokio::spawn(qpon_node::serve_status(l, status.clone()))))
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(cfg, driver, store, status.clone(), stop_rx));
        Ok(OnuHandle { metrics_addr, api_addr, status, stop, task, http, api })
    }

    /// Starts the service with an in-memory pool and pad ledger (tests; lost at exit).
    pub async fn start_in_memory<P: PulseSource + Send + 'static>(
        cfg: OnuConfig,
        source: P,
        pool: Box<dyn KeyPool>,
    ) -> Result<OnuHandle, StartError> {
        Self::start(cfg, source, PoolSource::Memory(pool)).await
    }

    /// The latest status snapshot.
    pub fn status(&self) -> OnuStatus {
        self.status.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the service and returns the final status. When it returns, the service holds
    /// no handle on the key store any more (it can be opened again).
    pub async fn shutdown(mut self) -> OnuStatus {
        let _ = self.stop.send(true);
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
        if let Some(h) = &self.http {
            h.abort();
        }
        match self.task.await {
            Ok(s) => s,
            Err(_) => self.status.read().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

fn snapshot<P: PulseSource>(
    d: &OnuDriver<P>,
    store: Option<&KeyStore>,
    id: u16,
    now: Instant,
    connected: bool,
    connections: u64,
) -> OnuStatus {
    let s = d.stats();
    let up = now.as_secs_f64();
    let mut pool = PoolFigures::from_pool(d.pool(), s.discarded);
    if let Some(store) = store {
        match PoolFigures::from_store(&store.pool(id)) {
            Ok(f) => pool = f,
            Err(e) => tracing::debug!(onu = id, error = %e, "pool figures unavailable"),
        }
    }
    OnuStatus {
        onu: id,
        uptime_s: up,
        connected,
        connections,
        blocks: s.blocks,
        secret_bits: s.secret_bits,
        key_rate_bits_per_s: if up > 0.0 { s.secret_bits as f64 / up } else { 0.0 },
        pool_bits: pool.pool_bits,
        committed_blocks: pool.committed_blocks,
        consumed_bytes: pool.consumed_bytes,
        auth_bits_spent: d.session().auth_bits_spent(),
        discarded: pool.discarded_blocks,
        refused_frames: s.refused,
        source_errors: s.source_errors,
        aborted: s.aborted.clone(),
        downstream_keys: d.downstream_stats().keys_installed,
    }
}

async fn run<P: PulseSource>(
    cfg: OnuConfig,
    mut driver: OnuDriver<P>,
    store: Option<KeyStore>,
    status: Arc<RwLock<OnuStatus>>,
    mut stop: watch::Receiver<bool>,
) -> OnuStatus {
    let clock = Clock(std::time::Instant::now());
    let id = cfg.onu.id.unwrap_or(0);
    let poll = Duration::from_millis(cfg.onu.poll_ms);
    let stats_every = Duration::from_millis(cfg.onu.stats_ms);
    let (min_backoff, max_backoff) =
        (Duration::from_millis(cfg.onu.reconnect_min_ms), Duration::from_millis(cfg.onu.reconnect_max_ms));
    let mut backoff = min_backoff;
    let mut connections = 0u64;
    let mut rng = qpon_qkd::rng::os_rng();
    let publish = |d: &OnuDriver<P>, connected: bool, connections: u64| {
        let s = snapshot(d, store.as_ref(), id, clock.now(), connected, connections);
        *status.write().unwrap_or_else(|e| e.into_inner()) = s.clone();
        s
    };
    loop {
        if *stop.borrow() {
            return publish(&driver, false, connections);
        }
        let stream = tokio::select! {
            r = TcpStream::connect(&cfg.onu.olt) => r,
            _ = stop.changed() => continue,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Jitter ±25 % (public randomness: only spreads reconnections in time).
                let wait = backoff.mul_f64(rng.random_range(0.75..1.25));
                warn!(olt = %cfg.onu.olt, error = %e, wait_ms = wait.as_millis() as u64, "cannot reach the OLT");
                publish(&driver, false, connections);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {},
                    _ = stop.changed() => {},
                }
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        connections += 1;
        info!(onu = id, olt = %cfg.onu.olt, "connected to the OLT");
        let why =
            connected(stream, &mut driver, &clock, id, poll, stats_every, &mut stop, &publish, connections)
                .await;
        match why {
            Ok(()) => return publish(&driver, false, connections),
            Err(e) => {
                warn!(onu = id, error = %e, "connection to the OLT lost");
                // A connection that worked resets the back-off.
                backoff = min_backoff;
                publish(&driver, false, connections);
            }
        }
    }
}

/// Serves one connection; `Ok` when asked to stop, `Err` when the connection failed.
#[allow(clippy::too_many_arguments)]
async fn connected<P: PulseSource>(
    stream: TcpStream,
    driver: &mut OnuDriver<P>,
    clock: &Clock,
    id: u16,
    poll: Duration,
    stats_every: Duration,
    stop: &mut watch::Receiver<bool>,
    publish: &impl Fn(&OnuDriver<P>, bool, u64) -> OnuStatus,
    connections: u64,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&Hello { onu: id }.to_bytes()).await.map_err(|e| format!("hello: {e}"))?;
    driver.reset_link(clock.now());
    let mut dec = StreamDecoder::new(u32::MAX >> 4);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats = tokio::time::interval(stats_every);
    loop {
        out.clear();
        while let Some(f) = driver.poll_transmit() {
            encode_frame(&f, &mut out);
        }
        if !out.is_empty() {
            wr.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
        }
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = r.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("the OLT closed the connection".into());
                }
                dec.push(&buf[..n]);
                let now = clock.now();
                while let Some(f) = dec.next_frame().map_err(|e| e.to_string())? {
                    // A refused frame is counted by the driver and otherwise ignored: the
                    // session's state is unchanged by it.
                    let _ = driver.handle_frame(now, &f);
                }
            }
            _ = tick.tick() => {
                driver.poll_source(clock.now());
                driver.advance_downstream(qpon_node::wall_superframe());
            }
            _ = stats.tick() => { publish(driver, true, connections); }
            _ = stop.changed() => return Ok(()),
        }
    }
}
