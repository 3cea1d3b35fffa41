//! ETSI GS QKD 014 v1.1.1 key delivery over mutual TLS, on both ends of the PON.
//!
//! Roles: an application at the OLT side (the *master* SAE) asks the OLT's KME for
//! `enc_keys` for the *slave* SAE behind ONU k; the slave asks the ONU's KME for the same
//! keys with `dec_keys`, naming the master. [`SaeMap`] (from the config) pairs the SAEs and
//! names the ONU whose [`StorePool`] serves the pair.
//!
//! Identity: the caller is the subject CN of its TLS client certificate, verified against
//! the deployment CA ([`serve_tls`] requires one; a client without is refused during the
//! handshake). axum-server puts the peer certificates into every request's extensions
//! ([`TlsInfo`]); handlers read the CN from there. A caller that is not the right member of
//! a pair named in the path gets 401, whether or not the other SAE exists.
//!
//! Key material and IDs: every ETSI key is `key_size / 8` bytes of the ONU's pool consumed
//! for [`Purpose::Api`]. Its ID is [`key_id`]`(block, slice)` with `slice` = the byte offset
//! of the key's first byte within the block, so both ends, holding the same bytes, name
//! them identically. Only one size is served (`min_key_size = max_key_size = key_size` in
//! the status; other sizes are refused with 400): the ONU side cuts its mirrored bytes into
//! keys with its own configured size, so both ends must be configured with the same one.
//!
//! Consumption is decided at the OLT only, like every consumption of an ONU's pool that both
//! ends make ([`Purpose::MIRRORED`]): `enc_keys` asks the OLT's [`KeySupply`] — the OLT
//! service's driver — which takes the keys from the pool (durably, in as few runs as the
//! blocks allow: one pool use per run, not per key) and announces each run to the ONU over
//! the authenticated classical channel as a pool use. The ONU's driver mirrors it with its
//! own cursor (same bytes, same order as the downstream keys around it) and acknowledges it.
//! Its KME serves `dec_keys` from those mirrored bytes: the keys of every Api consumption in
//! its pool's ledger that are not yet recorded as delivered form its **delivery table** —
//! durable, since the bytes stay in the store and the delivered marks are committed before a
//! response is written, so keys not yet fetched survive a restart. A requested ID not in the
//! table yet (the announcement may still be on its way) is waited for up to
//! [`KmeConfig::dec_wait_ms`], then refused with 400.
//!
//! Delivered once per side: the OLT side hands each consumed key to the master in the
//! `enc_keys` response and keeps nothing. The ONU side records a key as delivered (durably,
//! all keys of one request or none) before writing the response; asking again, even after a
//! restart, is refused. Spec choice: the specification has no 404, so an unknown **or**
//! already delivered key_ID is a 400 with a message saying which. A crash between the mark
//! and the response loses the delivery (recorded), never repeats it.
//!
//! One pair per ONU: keys are not tagged with their pair, so two slaves behind one ONU
//! could fetch each other's keys by ID; [`SaeMap::new`] refuses such configs.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
pub use axum_server::tls::TlsInfo;
use base64::Engine as _;
use qpon_qkd::SecretBytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::pool::PoolError;
use crate::store::{KeyStore, Purpose, StoreError, StorePool, key_id};

/// A master/slave SAE pair and the ONU whose pool serves it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SaePair {
    /// SAE ID (certificate CN) of the application at the OLT side, which calls `enc_keys`.
    pub master: String,
    /// SAE ID of the application behind the ONU, which calls `dec_keys`.
    pub slave: String,
    /// The ONU.
    pub onu: u16,
}

/// The configured SAE pairs, checked.
#[derive(Clone, Debug, Default)]
pub struct SaeMap {
    pairs: Vec<SaePair>,
}

/// Why an [`SaeMap`] or a certificate request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtsiConfigError {
    /// Two pairs on one ONU (they would share, and could read, each other's keys).
    #[error("ONU {0} has more than one SAE pair")]
    OnuShared(u16),
    /// An SAE ID that is empty, too long, or not `[A-Za-z0-9._-]` (IDs become file names).
    #[error("invalid SAE ID {0:?}")]
    BadSaeId(String),
    /// An SAE appears in two pairs, or as its own peer.
    #[error("SAE {0:?} appears more than once")]
    DuplicateSae(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// Writing or reading certificate files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A KME setting that cannot work (e.g. a key size not a positive multiple of 8).
    #[error("KME configuration: {0}")]
    Config(String),
    /// TLS configuration (bad PEM, key not matching, empty CA…).
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn check_sae_id(id: &str) -> Result<(), EtsiConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(EtsiConfigError::BadSaeId(id.into())) }
}

impl SaeMap {
    /// Checks the pairs: valid IDs, every SAE in one pair only, at most one pair per ONU.
    pub fn new(pairs: Vec<SaePair>) -> Result<Self, EtsiConfigError> {
        let mut saes = HashSet::new();
        let mut onus = HashSet::new();
        for p in &pairs {
            for id in [&p.master, &p.slave] {
                check_sae_id(id)?;
                if !saes.insert(id.as_str()) {
                    return Err(EtsiConfigError::DuplicateSae(id.clone()));
                }
            }
            if !onus.insert(p.onu) {
                return Err(EtsiConfigError::OnuShared(p.onu));
            }
        }
        Ok(Self { pairs })
    }

    /// The pairs.
    pub fn pairs(&self) -> &[SaePair] {
        &self.pairs
    }

    fn find(&self, master: &str, slave: &str) -> Option<&SaePair> {
        self.pairs.iter().find(|p| p.master == master && p.slave == slave)
    }
}

/// Which end of the PON a KME instance runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Side {
    /// The OLT: serves `status` and `enc_keys` to master SAEs.
    Olt,
    /// An ONU: serves `dec_keys` to the slave SAE behind it.
    Onu,
}

/// Settings of one KME instance.
#[derive(Clone, Debug)]
pub struct KmeConfig {
    /// This KME's ID (`source_KME_ID` in the status).
    pub kme_id: String,
    /// The peer KME's ID (`target_KME_ID`).
    pub peer_kme_id: String,
    /// Which end this instance serves.
    pub side: Side,
    /// The one key size served, in bits (a multiple of 8).
    pub key_size: u32,
    /// Most keys in one request.
    pub max_key_per_request: u32,
    /// Cap on the `stored_key_count` reported (and `max_key_count`).
    pub max_key_count: u32,
    /// ONU side: how long `dec_keys` waits for a requested key that is not in the delivery
    /// table yet (its announcement from the OLT may still be on its way), in ms.
    pub dec_wait_ms: u64,
}

impl KmeConfig {
    /// Defaults: 256-bit keys, 128 per request, 100 000 reported at most, `dec_keys` waits
    /// up to 2 s for a key still on its way.
    pub fn new(kme_id: impl Into<String>, peer_kme_id: impl Into<String>, side: Side) -> Self {
        Self {
            kme_id: kme_id.into(),
            peer_kme_id: peer_kme_id.into(),
            side,
            key_size: 256,
            max_key_per_request: 128,
            max_key_count: 100_000,
            dec_wait_ms: 2000,
        }
    }

    fn key_bytes(&self) -> usize {
        (self.key_size / 8) as usize
    }
}

/// One key issued at the OLT side: where its bytes came from and the bytes.
pub struct IssuedKey {
    /// The block.
    pub block: Uuid,
    /// The key's first byte within the block (its ID is [`key_id`]`(block, offset)`).
    pub offset: u64,
    /// The key.
    pub key: SecretBytes,
}

impl core::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IssuedKey({}@{}, {} bytes)", self.block, self.offset, self.key.len())
    }
}

/// Why a [`KeySupply`] issued nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SupplyError {
    /// Not enough key in the ONU's pool (nothing was consumed).
    #[error("fewer than {requested} keys available ({available})")]
    Exhausted {
        /// Keys asked for.
        requested: u64,
        /// Keys the pool could serve.
        available: u64,
    },
    /// The ONU cannot be told about a consumption now (not connected, not synced, its
    /// session stopped, too many uses unacknowledged); nothing was consumed.
    #[error("ONU {onu} cannot take key announcements now: {why}")]
    Unavailable {
        /// The ONU.
        onu: u16,
        /// Why.
        why: String,
    },
    /// The pool or the announcement failed (the ONU's session is stopped: fail closed).
    #[error("key supply failed: {0}")]
    Failed(String),
}

/// Where an OLT-side KME gets its keys: `number` keys of `unit` bytes for `onu`, consumed
/// from the ONU's pool at the OLT for [`Purpose::Api`] *and announced* to the ONU (see the
/// module docs), all or none. The OLT service implements it over its driver.
pub trait KeySupply: Send + Sync {
    /// Issues the keys, in consumption order.
    fn issue(&self, onu: u16, unit: usize, number: usize) -> Result<Vec<IssuedKey>, SupplyError>;
}

/// A [`KeySupply`] for two stores in one process: takes each run from the OLT-side
/// store's pool and mirrors it into the ONU-side store's pool at once — what the OLT
/// driver's announcement and the ONU driver's mirroring do over the classical channel in
/// the services. For tests and single-host demonstrations (both KMEs on one machine); the
/// `olt` service issues through its driver.
pub struct MirrorSupply {
    olt: KeyStore,
    onu: KeyStore,
}

impl MirrorSupply {
    /// Issues from `olt`'s pools, mirroring into `onu`'s (two stores holding the same
    /// blocks).
    pub fn new(olt: KeyStore, onu: KeyStore) -> Self {
        Self { olt, onu }
    }
}

impl core::fmt::Debug for MirrorSupply {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MirrorSupply({} -> {})", self.olt.path().display(), self.onu.path().display())
    }
}

impl KeySupply for MirrorSupply {
    fn issue(&self, onu: u16, unit: usize, number: usize) -> Result<Vec<IssuedKey>, SupplyError> {
        use crate::KeyPool as _;
        let (mut a, mut b) = (self.olt.pool(onu), self.onu.pool(onu));
        let fail = |e: PoolError| SupplyError::Failed(e.to_string());
        let runs = a.unused_runs().map_err(fail)?;
        let plan = api_runs(&runs, unit as u64, number as u64).ok_or(SupplyError::Exhausted {
            requested: number as u64,
            available: api_keys_available(&runs, unit as u64, u64::MAX),
        })?;
        let mut out = Vec::new();
        for len in plan {
            let (block, offset, bytes) = a.take(Purpose::Api, len as usize).map_err(fail)?;
            b.take_named(Purpose::Api, block, offset, len as usize).map_err(fail)?;
            out.extend(split_run(block, offset, &bytes, unit));
        }
        Ok(out)
    }
}

/// The runs an Api request of `number` keys of `unit` bytes takes from a pool with these
/// unused runs ([`crate::KeyPool::unused_runs`]): as many whole keys from each block as it
/// holds, in cursor order, so that each run is one [`crate::KeyPool::take`] of the returned
/// size (a tail shorter than a key is skipped by the next take). `None` if the pool cannot
/// serve all `number` keys.
pub fn api_runs(runs: &[(Uuid, u64, u64)], unit: u64, number: u64) -> Option<Vec<u64>> {
    if unit == 0 {
        return None;
    }
    let mut left = number;
    let mut out = Vec::new();
    for &(_, _, bytes) in runs {
        if left == 0 {
            break;
        }
        let k = (bytes / unit).min(left);
        if k > 0 {
            out.push(k * unit);
            left -= k;
        }
    }
    (left == 0).then_some(out)
}

/// Keys that fit in these runs (for the status's `stored_key_count`), at most `max`.
pub fn api_keys_available(runs: &[(Uuid, u64, u64)], unit: u64, max: u64) -> u64 {
    if unit == 0 {
        return 0;
    }
    runs.iter().map(|r| r.2 / unit).sum::<u64>().min(max)
}

/// Cuts one run of consumed bytes (`bytes` taken at `offset` of `block`) into keys of
/// `unit` bytes (a shorter remainder, which [`api_runs`] never produces, is left out).
pub fn split_run(block: Uuid, offset: u64, bytes: &SecretBytes, unit: usize) -> Vec<IssuedKey> {
    if unit == 0 {
        return Vec::new();
    }
    bytes
        .expose()
        .chunks_exact(unit)
        .enumerate()
        .map(|(i, k)| IssuedKey {
            block,
            offset: offset + (i * unit) as u64,
            key: SecretBytes::from_slice(k),
        })
        .collect()
}

/// One KME instance: config, SAE pairs, key store, and the OLT's key supply or the ONU's
/// delivery table.
pub struct Kme {
    config: KmeConfig,
    saes: SaeMap,
    store: KeyStore,
    supply: Option<Arc<dyn KeySupply>>,
    /// Held for a whole `dec_keys` (look-up, reads, delivered marks), so concurrent
    /// requests cannot both deliver one key.
    table: Mutex<DeliveryTable>,
}

impl core::fmt::Debug for Kme {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Kme({} {:?})", self.config.kme_id, self.config.side)
    }
}

/// ONU side: where each key of the ONU's Api consumptions lies, by key ID — an index over
/// the pool's ledger, extended on demand (the durable state is the ledger, the bytes in the
/// store and the store's delivered marks; this is rebuilt from them after a restart).
#[derive(Default)]
struct DeliveryTable {
    /// Per ONU: Api consumptions indexed so far.
    scanned: HashMap<u16, usize>,
    /// Key ID → (ONU, block, offset).
    keys: HashMap<Uuid, (u16, Uuid, u64)>,
}

impl DeliveryTable {
    /// Indexes the Api consumptions of `pool` made since the last call.
    fn refresh(&mut self, pool: &StorePool, unit: u64) -> Result<(), StoreError> {
        let all = pool.consumptions(Purpose::Api)?;
        let done = self.scanned.entry(pool.onu()).or_insert(0);
        for &(block, offset, len) in all.iter().skip(*done) {
            for i in 0..len / unit {
                let o = offset + i * unit;
                self.keys.insert(key_id(block, o), (pool.onu(), block, o));
            }
        }
        *done = all.len();
        Ok(())
    }
}

impl Kme {
    /// A KME serving `saes` from the pools of `store`. The OLT side issues keys through
    /// `supply` (required there); the ONU side serves what its pool mirrored (`None`).
    pub fn new(
        config: KmeConfig,
        saes: SaeMap,
        store: KeyStore,
        supply: Option<Arc<dyn KeySupply>>,
    ) -> Result<Self, EtsiConfigError> {
        if config.key_size == 0 || !config.key_size.is_multiple_of(8) {
            return Err(EtsiConfigError::Config(format!(
                "key_size {} is not a positive multiple of 8",
                config.key_size
            )));
        }
        match (config.side, supply.is_some()) {
            (Side::Olt, false) => {
                return Err(EtsiConfigError::Config("an OLT-side KME needs a key supply".into()));
            }
            (Side::Onu, true) => {
                return Err(EtsiConfigError::Config("an ONU-side KME issues no keys (no key supply)".into()));
            }
            _ => {}
        }
        Ok(Self { config, saes, store, supply, table: Mutex::new(DeliveryTable::default()) })
    }

    /// ONU side: keys mirrored for the API and not delivered yet, over all pairs.
    pub fn undelivered(&self) -> Result<usize, StoreError> {
        let mut t = self.lock();
        let unit = self.config.key_bytes() as u64;
        for p in self.saes.pairs() {
            t.refresh(&self.store.pool(p.onu), unit)?;
        }
        let mut n = 0;
        for (id, (onu, _, _)) in &t.keys {
            if !self.store.pool(*onu).is_delivered(*id)? {
                n += 1;
            }
        }
        Ok(n)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeliveryTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Key store unavailable").detail("store", e.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// Wire types (field names as in the specification).

#[allow(non_snake_case)] // the specification's field names
#[derive(Serialize)]
struct Status {
    source_KME_ID: String,
    target_KME_ID: String,
    master_SAE_ID: String,
    slave_SAE_ID: String,
    key_size: u32,
    stored_key_count: u64,
    max_key_count: u32,
    max_key_per_request: u32,
    max_key_size: u32,
    min_key_size: u32,
    max_SAE_ID_count: u32,
}

#[derive(Serialize)]
struct KeyContainer {
    keys: Vec<KeyEntry>,
}

#[allow(non_snake_case)] // the specification's field names
#[derive(Serialize)]
struct KeyEntry {
    key_ID: Uuid,
    key: String,
}

#[allow(non_snake_case)] // the specification's field names
#[derive(Deserialize, Default)]
#[serde(default)]
struct KeyRequest {
    number: Option<u64>,
    size: Option<u64>,
    additional_slave_SAE_IDs: Vec<String>,
    extension_mandatory: Vec<Value>,
    #[allow(dead_code)]
    extension_optional: Vec<Value>,
}

#[allow(non_snake_case)] // the specification's field names
#[derive(Deserialize)]
struct KeyIds {
    key_IDs: Vec<KeyIdEntry>,
}

#[allow(non_snake_case)] // the specification's field names
#[derive(Deserialize)]
struct KeyIdEntry {
    key_ID: String,
}

/// A specification error: HTTP status and `{"message", "details"}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<Value>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), details: Vec::new() }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized")
    }
    fn detail(mut self, parameter: &str, reason: impl Into<String>) -> Self {
        self.details.push(json!({ "parameter": parameter, "reason": reason.into() }));
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = match e {
            StoreError::Exhausted { .. } => "Keys are being exhausted",
            _ => "Key store failure",
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).detail("store", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.details.is_empty() {
            json!({ "message": self.message })
        } else {
            json!({ "message": self.message, "details": self.details })
        };
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

// ---------------------------------------------------------------------------------------
// Router and handlers.

/// The ETSI GS QKD 014 routes of `kme`. Serve it with [`serve_tls`] (the handlers need the
/// [`TlsInfo`] extension; without it every request is 401).
pub fn router(kme: Arc<Kme>) -> Router {
    Router::new()
        .route("/api/v1/keys/{slave_SAE_ID}/status", get(status))
        .route("/api/v1/keys/{slave_SAE_ID}/enc_keys", get(enc_keys_get).post(enc_keys_post))
        .route("/api/v1/keys/{master_SAE_ID}/dec_keys", get(dec_keys_get).post(dec_keys_post))
        .with_state(kme)
}

/// The SAE ID of the caller: subject CN of its (CA-verified) client certificate.
fn caller(tls: Option<Extension<Arc<TlsInfo>>>) -> Result<String, ApiError> {
    let Some(Extension(info)) = tls else { return Err(ApiError::unauthorized()) };
    info.peer_certificates.first().and_then(|der| subject_cn(der)).ok_or_else(ApiError::unauthorized)
}

/// The pair in which the caller is the master and `slave` the slave, at an OLT-side KME.
fn master_pair(kme: &Kme, who: &str, slave: &str) -> Result<SaePair, ApiError> {
    match (kme.config.side, kme.saes.find(who, slave)) {
        (Side::Olt, Some(p)) => Ok(p.clone()),
        _ => Err(ApiError::unauthorized()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map(axum::Json),
        Err(e) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Internal error")
                .detail("task", e.to_string()))
        }
    }
}

async fn status(
    State(kme): State<Arc<Kme>>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    UrlPath(slave): UrlPath<String>,
) -> ApiResult<Status> {
    let who = caller(tls)?;
    let pair = master_pair(&kme, &who, &slave)?;
    blocking(move || {
        let c = &kme.config;
        let pool = kme.store.pool(pair.onu);
        let runs = crate::KeyPool::unused_runs(&pool)?;
        let count = api_keys_available(&runs, c.key_bytes() as u64, u64::from(c.max_key_count));
        Ok(Status {
            source_KME_ID: c.kme_id.clone(),
            target_KME_ID: c.peer_kme_id.clone(),
            master_SAE_ID: pair.master,
            slave_SAE_ID: pair.slave,
            key_size: c.key_size,
            stored_key_count: count,
            max_key_count: c.max_key_count,
            max_key_per_request: c.max_key_per_request,
            max_key_size: c.key_size,
            min_key_size: c.key_size,
            max_SAE_ID_count: 0,
        })
    })
    .await
}

/// Parses `a=1&b=2` (values are numbers or UUIDs here: no percent-decoding needed).
fn query_pairs(q: &Option<String>) -> Vec<(&str, &str)> {
    q.as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|s| s.split_once('=').unwrap_or((s, "")))
        .collect()
}

fn parse_number(name: &str, v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::bad("Invalid request parameter").detail(name, "not a non-negative integer"))
}

async fn enc_keys_get(
    State(kme): State<Arc<Kme>>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    UrlPath(slave): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<KeyContainer> {
    let who = caller(tls)?;
    let pair = master_pair(&kme, &who, &slave)?;
    let mut req = KeyRequest::default();
    for (k, v) in query_pairs(&q) {
        match k {
            "number" => req.number = Some(parse_number(k, v)?),
            "size" => req.size = Some(parse_number(k, v)?),
            _ => return Err(ApiError::bad("Invalid request parameter").detail(k, "unknown parameter")),
        }
    }
    enc_keys(kme, pair, req).await
}

async fn enc_keys_post(
    State(kme): State<Arc<Kme>>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    UrlPath(slave): UrlPath<String>,
    body: Bytes,
) -> ApiResult<KeyContainer> {
    let who = caller(tls)?;
    let pair = master_pair(&kme, &who, &slave)?;
    let req: KeyRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("Invalid request body").detail("body", e.to_string()))?;
    enc_keys(kme, pair, req).await
}

async fn enc_keys(kme: Arc<Kme>, pair: SaePair, req: KeyRequest) -> ApiResult<KeyContainer> {
    let c = &kme.config;
    let number = req.number.unwrap_or(1);
    let size = req.size.unwrap_or(u64::from(c.key_size));
    if number == 0 || number > u64::from(c.max_key_per_request) {
        return Err(ApiError::bad("Invalid request parameter")
            .detail("number", format!("must be 1..={}", c.max_key_per_request)));
    }
    if size != u64::from(c.key_size) {
        return Err(ApiError::bad("Invalid request parameter")
            .detail("size", format!("this KME serves {}-bit keys only", c.key_size)));
    }
    if !req.additional_slave_SAE_IDs.is_empty() {
        return Err(ApiError::bad("Invalid request parameter")
            .detail("additional_slave_SAE_IDs", "not supported (max_SAE_ID_count = 0)"));
    }
    if !req.extension_mandatory.is_empty() {
        return Err(ApiError::bad("Not all extension_mandatory parameters are supported")
            .detail("extension_mandatory", "no extensions are supported"));
    }
    blocking(move || {
        let unit = kme.config.key_bytes();
        let supply = kme
            .supply
            .as_ref()
            .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "This KME issues no keys"))?;
        let issued = supply.issue(pair.onu, unit, number as usize).map_err(|e| match e {
            SupplyError::Exhausted { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Keys are being exhausted")
                    .detail("number", e.to_string())
            }
            SupplyError::Unavailable { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Peer KME unreachable")
                    .detail("onu", e.to_string())
            }
            SupplyError::Failed(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Key supply failed")
                .detail("onu", e.to_string()),
        })?;
        if issued.len() as u64 != number {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Key supply failed")
                .detail("number", format!("{} keys issued for {number}", issued.len())));
        }
        let keys =
            issued.iter().map(|k| KeyEntry { key_ID: key_id(k.block, k.offset), key: b64(&k.key) }).collect();
        Ok(KeyContainer { keys })
    })
    .await
}

fn b64(k: &SecretBytes) -> String {
    base64::engine::general_purpose::STANDARD.encode(k.expose())
}

/// The pair in which the caller is the slave and `master` the master, at an ONU-side KME.
fn slave_pair(kme: &Kme, who: &str, master: &str) -> Result<SaePair, ApiError> {
    match (kme.config.side, kme.saes.find(master, who)) {
        (Side::Onu, Some(p)) => Ok(p.clone()),
        _ => Err(ApiError::unauthorized()),
    }
}

fn parse_key_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::bad("Invalid request parameter").detail("key_ID", "not a UUID"))
}

async fn dec_keys_get(
    State(kme): State<Arc<Kme>>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    UrlPath(master): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<KeyContainer> {
    let who = caller(tls)?;
    let pair = slave_pair(&kme, &who, &master)?;
    let mut ids = Vec::new();
    for (k, v) in query_pairs(&q) {
        match k {
            "key_ID" => ids.push(parse_key_id(v)?),
            _ => return Err(ApiError::bad("Invalid request parameter").detail(k, "unknown parameter")),
        }
    }
    dec_keys(kme, pair, ids).await
}

async fn dec_keys_post(
    State(kme): State<Arc<Kme>>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    UrlPath(master): UrlPath<String>,
    body: Bytes,
) -> ApiResult<KeyContainer> {
    let who = caller(tls)?;
    let pair = slave_pair(&kme, &who, &master)?;
    let req: KeyIds = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("Invalid request body").detail("body", e.to_string()))?;
    let ids = req.key_IDs.iter().map(|e| parse_key_id(&e.key_ID)).collect::<Result<Vec<_>, _>>()?;
    dec_keys(kme, pair, ids).await
}

async fn dec_keys(kme: Arc<Kme>, pair: SaePair, ids: Vec<Uuid>) -> ApiResult<KeyContainer> {
    let max = kme.config.max_key_per_request as usize;
    if ids.is_empty() || ids.len() > max {
        return Err(
            ApiError::bad("Invalid request parameter").detail("key_ID", format!("give 1..={max} key IDs"))
        );
    }
    if ids.iter().collect::<HashSet<_>>().len() != ids.len() {
        return Err(ApiError::bad("Invalid request parameter").detail("key_ID", "a key ID is repeated"));
    }
    blocking(move || {
        let c = &kme.config;
        let unit = c.key_bytes() as u64;
        let pool = kme.store.pool(pair.onu);
        let mut table = kme.lock();
        // Find every requested key, waiting a little for announcements still on their way.
        let deadline = Instant::now() + Duration::from_millis(c.dec_wait_ms);
        let mut found = Vec::with_capacity(ids.len());
        for id in &ids {
            let at = loop {
                match table.keys.get(id) {
                    Some(&(onu, block, offset)) if onu == pair.onu => break (block, offset),
                    _ => {}
                }
                if pool.is_delivered(*id)? {
                    return Err(ApiError::bad("Key already delivered").detail("key_ID", id.to_string()));
                }
                if Instant::now() >= deadline {
                    return Err(ApiError::bad("Unknown key_ID (not issued for this SAE pair)")
                        .detail("key_ID", id.to_string()));
                }
                table.refresh(&pool, unit)?;
                if !table.keys.contains_key(id) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            found.push((*id, at));
        }
        // Read every key, then mark them all delivered (durably, all or none), then answer.
        let mut keys = Vec::with_capacity(found.len());
        for &(id, (block, offset)) in &found {
            keys.push(KeyEntry { key_ID: id, key: b64(&pool.read_consumed(block, offset, unit)?) });
        }
        match pool.mark_delivered(&ids) {
            Ok(()) => {}
            Err(StoreError::AlreadyDelivered(id)) => {
                return Err(ApiError::bad("Key already delivered").detail("key_ID", id.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        for id in &ids {
            table.keys.remove(id);
        }
        Ok(KeyContainer { keys })
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Certificates and TLS.

/// Minimal DER reader: (tag, content, rest) of the first element of `b`.
fn der_next(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The subject common name of a DER certificate (already verified by rustls).
fn subject_cn(cert: &[u8]) -> Option<String> {
    const SEQ: u8 = 0x30;
    let (SEQ, cert, _) = der_next(cert)? else { return None };
    let (SEQ, tbs, _) = der_next(cert)? else { return None };
    let mut rest = tbs;
    let (tag, _, r) = der_next(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = der_next(rest)?.2;
    }
    let (SEQ, mut rdns, _) = der_next(rest)? else { return None };
    while !rdns.is_empty() {
        let (_, mut set, r) = der_next(rdns)?;
        rdns = r;
        while !set.is_empty() {
            let (_, atv, r) = der_next(set)?;
            set = r;
            let (_, oid, value) = der_next(atv)?;
            if oid == [0x55, 0x04, 0x03] {
                let (_, s, _) = der_next(value)?;
                return String::from_utf8(s.to_vec()).ok();
            }
        }
    }
    None
}

/// Files written by [`dev_certs`].
#[derive(Clone, Debug)]
pub struct DevCerts {
    /// Development CA certificate (trust anchor for both servers and clients).
    pub ca: PathBuf,
    /// Server certificate (SAN localhost, 127.0.0.1, ::1) and its key.
    pub server_cert: PathBuf,
    /// Server private key (mode 0600).
    pub server_key: PathBuf,
    /// Per SAE: (SAE ID, certificate, private key), CN = SAE ID.
    pub saes: Vec<(String, PathBuf, PathBuf)>,
}

/// Writes a new file, mode 0600 on Unix; an existing file is never overwritten.
fn write_file(path: &Path, text: &str) -> Result<(), EtsiConfigError> {
    let io = |source| EtsiConfigError::Io { path: path.into(), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    io::Write::write_all(&mut f, text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Writes a development CA (`ca.pem`), a server certificate for localhost (`server.pem`,
/// `server.key`) and one client certificate per SAE (`<SAE ID>.pem`, `<SAE ID>.key`, CN =
/// SAE ID) into `dir` (created if needed). Every file is new and mode 0600 (on Unix); if
/// any of them exists, nothing is written. For trying things out only:
/// the CA key is not kept, so the set cannot be extended later — make a new set in another
/// directory instead.
pub fn dev_certs(dir: &Path, sae_ids: &[&str]) -> Result<DevCerts, EtsiConfigError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    for id in sae_ids {
        check_sae_id(id)?;
        if *id == "ca" || *id == "server" {
            return Err(EtsiConfigError::BadSaeId((*id).into()));
        }
    }
    let mut unique = HashSet::new();
    for id in sae_ids {
        if !unique.insert(*id) {
            return Err(EtsiConfigError::DuplicateSae((*id).into()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| EtsiConfigError::Io { path: dir.into(), source })?;
    // Nothing is written if any file of the set exists already: never overwritten, and no
    // half-replaced set (a new CA with old leaves).
    let names = ["ca.pem", "server.pem", "server.key"].into_iter().map(String::from);
    let leaves = sae_ids.iter().flat_map(|id| [format!("{id}.pem"), format!("{id}.key")]);
    for name in names.chain(leaves) {
        let path = dir.join(name);
        if path.exists() {
            let source = io::Error::new(io::ErrorKind::AlreadyExists, "exists; never overwritten");
            return Err(EtsiConfigError::Io { path, source });
        }
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "qpon development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let ca_path = dir.join("ca.pem");
    write_file(&ca_path, &ca.pem())?;

    let leaf = |sans: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose, name: &str| {
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca)?;
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        write_file(&c, &cert.pem())?;
        write_file(&k, &key.serialize_pem())?;
        Ok::<_, EtsiConfigError>((c, k))
    };
    let sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let (server_cert, server_key) = leaf(sans, "qpon KME", ExtendedKeyUsagePurpose::ServerAuth, "server")?;
    let mut saes = Vec::new();
    for id in sae_ids {
        let (c, k) = leaf(Vec::new(), id, ExtendedKeyUsagePurpose::ClientAuth, id)?;
        saes.push(((*id).to_string(), c, k));
    }
    Ok(DevCerts { ca: ca_path, server_cert, server_key, saes })
}

fn tls_err(what: &str, e: impl core::fmt::Display) -> EtsiConfigError {
    let mut s = String::new();
    let _ = write!(s, "{what}: {e}");
    EtsiConfigError::Tls(s)
}

/// The rustls crypto provider used here (ring), passed explicitly so no process-wide
/// default is needed or consulted.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config requiring a client certificate issued by the CA in `ca` (PEM),
/// presenting `cert`/`key` (PEM).
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ServerConfig, EtsiConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| tls_err("CA file", e))? {
        roots.add(c.map_err(|e| tls_err("CA file", e))?).map_err(|e| tls_err("CA certificate", e))?;
    }
    let provider = crypto_provider();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| tls_err("client verifier", e))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err("certificate file", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err("certificate file", e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err("key file", e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err("server certificate", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` on `listener` with mutual TLS (client certificates from `ca` required)
/// until the task is dropped or the listener fails.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    router: Router,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(), EtsiConfigError> {
    let config = server_config(ca, cert, key)?;
    serve_tls_with(listener, router, Arc::new(config)).await
}

/// [`serve_tls`] with a server config already built by [`server_config`] (so a service can
/// check its TLS files when it starts rather than in the serving task).
pub async fn serve_tls_with(
    listener: std::net::TcpListener,
    router: Router,
    config: Arc<rustls::ServerConfig>,
) -> Result<(), EtsiConfigError> {
    let io = |source| EtsiConfigError::Io { path: PathBuf::from("<listener>"), source };
    listener.set_nonblocking(true).map_err(io)?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(config);
    axum_server::from_tcp_rustls(listener, tls)
        .map_err(io)?
        .serve(router.into_make_service())
        .await
        .map_err(io)
}

#[cfg(test)]
mod tests;
