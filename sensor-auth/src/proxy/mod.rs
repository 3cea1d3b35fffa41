//! The Modbus/TCP bump-in-the-wire: a pair of proxies between which every ADU is
//! authenticated with the crate's Wegman–Carter frames.
//!
//! ```text
//!  SCADA master ──Modbus/TCP──▶ control proxy ══authenticated link══▶ field proxy ──Modbus/TCP──▶ device
//!   (client)                   (ControlEnd:                          (FieldEnd:                  (server)
//!                               seal_request, open_response)          open_request, seal_response)
//! ```
//!
//! **Control role** ([`Role::Control`]): accepts Modbus/TCP clients on `listen`; keeps one
//! TCP link to the field proxy at `peer` (re-established every `reconnect_ms` while down).
//! Each request ADU is classified ([`crate::mbap::classify`]), sealed whole and sent on the
//! link; the authenticated response is matched by its request sequence number to the
//! client connection and transaction id it came from, checked to answer that request (same
//! unit, same function code, same class) and returned with the client's transaction id.
//!
//! **Field role** ([`Role::Field`]): accepts link connections on `listen` (any number; one
//! [`crate::FieldEnd`] serves them all, so its replay window spans connections); opens each
//! frame; forwards accepted request ADUs to the device at `device` over one connection
//! (opened on demand, renumbered transaction ids so requests from several links never
//! collide) and seals the device's response bound to the request's sequence number.
//!
//! **Failure behaviour** (fail closed; nothing unauthenticated is ever forwarded):
//!
//! | event | what happens |
//! |-------|--------------|
//! | malformed MBAP from a client or the device | logged with the reason, that connection closed |
//! | malformed link frame header | logged, that link connection closed |
//! | frame refused by the library (bad tag, replay, stale command, retired batch, …) | logged with the reason, dropped; the client's proxy times out → 0x0B and tells the library, which moves to a new batch (at once if the field end had answered under the old one, else after [`crate::UNACKED_TIMEOUTS`] silent requests) |
//! | command carried in a reading-class frame | refused by the library's classifier ([`crate::mbap::classify_adu`]) and again by the proxy: a weaker tag never authorises a write |
//! | unit not in `allowed_units` | exception 0x0A at once (control: unsealed, field: sealed) |
//! | sealing refused (pool exhausted, below low-water with `low_water = "refuse"`, store failure) | 0x0A to the client at once, reason logged |
//! | below low-water with `low_water = "hold"` | commands queued in order and retried every 100 ms once the pool is refilled; 0x0A at `auth.response_timeout_ms`; readings go on |
//! | field end cannot seal a response (should not happen: its pad was reserved with the request) | logged; the client times out → 0x0B |
//! | link down (control) | 0x0A at once; requests in flight when it drops get 0x0B |
//! | no authenticated response in `auth.response_timeout_ms` (control) | 0x0B; a late response is dropped |
//! | device unreachable or silent for `device_timeout_ms` (field) | sealed 0x0B |
//! | `auth.max_outstanding` requests in flight | 0x06 (server busy) |
//! | `max_connections` reached | the new connection is closed |
//!
//! Exception 0x0A thus means the request was not forwarded to the device; 0x0B that it
//! may have been. Errors of one connection never stop the proxy.

pub mod cli;
mod config;
mod control;
mod field;
mod link;
mod status;

pub use config::{
    ConfigError, DEFAULT_CONFIG, EtsiConfig, LogConfig, LogFormat, MAX_ETSI_KEY_BITS, ProxyConfig, Role,
    StoreConfig,
};
pub use status::ProxyStatus;

use crate::{PadSource, Status};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The task holding the authentication state stopped (a bug): the proxy stops rather
    /// than run without it.
    #[error("proxy core task failed: {0}")]
    Core(String),
    /// The ETSI GS QKD 014 key source could not be set up (TLS files, counter file).
    #[error("ETSI key source (KME {kme}): {reason}")]
    Etsi {
        /// The KME address.
        kme: String,
        /// The cause.
        reason: String,
    },
    /// The key store could not be opened.
    #[error("key store {path}: {reason}")]
    Store {
        /// The store file.
        path: String,
        /// The cause.
        reason: String,
    },
}

/// A bound proxy of either role: [`bind`](Self::bind), read [`local_addr`](Self::local_addr),
/// then [`serve`](Self::serve) until shutdown.
pub struct Proxy {
    role: Role,
    config: Arc<ProxyConfig>,
    listener: TcpListener,
    local_addr: SocketAddr,
    pads: Box<dyn PadSource>,
    link_up: watch::Sender<bool>,
    status: watch::Sender<Status>,
    status_listener: Option<(TcpListener, SocketAddr)>,
}

impl core::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Proxy({:?} on {})", self.role, self.local_addr)
    }
}

impl Proxy {
    /// Checks `config` and binds its listener (port 0 picks a free port); the pads come
    /// from `pads` (see [`open_pads`] for the configured store).
    pub async fn bind(config: ProxyConfig, pads: Box<dyn PadSource>) -> Result<Self, ProxyError> {
        let role = config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ProxyError::Listen { addr: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| ProxyError::Listen { addr: config.listen, source })?;
        let status_listener = match config.status_listen {
            Some(addr) => {
                let l =
                    TcpListener::bind(addr).await.map_err(|source| ProxyError::Listen { addr, source })?;
                let a = l.local_addr().map_err(|source| ProxyError::Listen { addr, source })?;
                Some((l, a))
            }
            None => None,
        };
        let (link_up, _) = watch::channel(false);
        let (status, _) = watch::channel(Status::default());
        Ok(Self {
            role,
            config: Arc::new(config),
            listener,
            local_addr,
            pads,
            link_up,
            status,
            status_listener,
        })
    }

    /// The bound listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound status endpoint's address (`status_listen`), if any.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status_listener.as_ref().map(|(_, a)| *a)
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the proxy's outward connection is up: the link to the field proxy
    /// (control), the device connection (field).
    pub fn link_state(&self) -> watch::Receiver<bool> {
        self.link_up.subscribe()
    }

    /// The library end's counters and levels ([`Status`]: frames, refusals by reason,
    /// pool level, forgery bound, alarm), updated after every event while serving.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Serves until `shutdown` completes; then every connection is closed and every task
    /// of the proxy stopped. Errors of single connections are logged, never returned.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ProxyError> {
        tracing::info!(role = ?self.role, listen = %self.local_addr, "sensor-auth proxy serving");
        // Stopped (dropped) when serving ends.
        let mut endpoint = tokio::task::JoinSet::new();
        if let Some((listener, addr)) = self.status_listener.take() {
            tracing::info!(%addr, "status endpoint: /status, /metrics");
            let page = Arc::new(std::sync::RwLock::new(ProxyStatus::default()));
            endpoint.spawn(status::follow(
                self.role,
                self.status.subscribe(),
                self.link_up.subscribe(),
                page.clone(),
            ));
            endpoint.spawn(qpon_node::serve_status(listener, page));
        }
        match self.role {
            Role::Control => control::serve(self, shutdown).await,
            Role::Field => field::serve(self, shutdown).await,
        }
    }
}

/// The configured key source: with an `[etsi]` section, [`crate::EtsiPads`] (master SAE for
/// the control role, slave SAE for the field role; no request is made here); else the key
/// store (KEK resolved as `qpon-node` does: `store.kek_file`, else `QPON_KEK`, else
/// unencrypted) and pads from `store.onu`'s pool.
pub fn open_pads(config: &ProxyConfig) -> Result<Box<dyn PadSource>, ProxyError> {
    if let Some(e) = &config.etsi {
        let role = match config.role()? {
            Role::Control => crate::EtsiRole::Master,
            Role::Field => crate::EtsiRole::Slave,
        };
        let mut s = crate::EtsiSettings::new(
            role,
            &e.kme,
            &e.peer_sae,
            &e.ca_file,
            &e.cert_file,
            &e.key_file,
            &e.state_dir,
        );
        s.server_name = e.server_name.clone();
        s.connect_timeout = std::time::Duration::from_millis(config.connect_timeout_ms);
        s.timeout = std::time::Duration::from_millis(e.timeout_ms);
        let pads = crate::EtsiPads::open(s)
            .map_err(|err| ProxyError::Etsi { kme: e.kme.clone(), reason: err.to_string() })?;
        return Ok(Box::new(pads));
    }
    let kek =
        qpon_node::resolve_kek(&config.store.kek_file, "store.kek_file").map_err(|e| ConfigError(e.0))?;
    let store =
        qpon_kms::KeyStore::open_with(&config.store.path, qpon_kms::StoreOptions { kek }).map_err(|e| {
            ProxyError::Store { path: config.store.path.display().to_string(), reason: e.to_string() }
        })?;
    Ok(Box::new(crate::PoolPads::new(store.pool(config.store.onu))))
}

/// Sends `bytes` to a connection's writer without waiting; a full or closed writer loses
/// them (logged): one stuck peer never stalls the proxy.
fn deliver(to: &tokio::sync::mpsc::Sender<Vec<u8>>, bytes: Vec<u8>, what: &str) -> bool {
    match to.try_send(bytes) {
        Ok(()) => true,
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!("{what}: connection not reading, message dropped");
            false
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
            tracing::debug!("{what}: connection already closed");
            false
        }
    }
}
