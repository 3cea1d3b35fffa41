//! Pads through ETSI GS QKD 014: [`EtsiPads`], a [`PadSource`] that asks a KME for keys
//! instead of taking them from a local pool.
//!
//! # Roles
//!
//! * **Control end = master SAE.** [`PadSource::reserve`] is one `enc_keys` call (POST, to
//!   the OLT-side KME) for **one** key of exactly `batch_bytes` bytes: the KME's `key_size`
//!   must be `batch_bytes × 8` bits, so one key is one batch and one key ID names it.
//! * **Field end = slave SAE.** [`PadSource::mirror`] is one `dec_keys` call (POST, to the
//!   ONU-side KME) for the key ID the control end sent in band.
//!
//! # The key ID in band
//!
//! The batch descriptor ([`BatchDescriptor`], see [`crate::frame`]) carries the key ID in
//! its 16-byte block UUID field; the block offset is always 0 and the batch length is the
//! key length (= `batch_bytes`). A descriptor with another offset is refused
//! ([`PadError::Diverged`]) without asking the KME.
//!
//! # Batch ordinals without a pool ledger
//!
//! With a local pool the ordinal (`batch << 32 | n` sequence numbers, replay refusal across
//! restarts) is the count of the pool's durable `SensorAuth` consumptions. Over ETSI there is
//! no local ledger, so each end keeps its count in a **counter file** in `state_dir`
//! (`sensor-auth-master-<slave SAE>.ordinal` at the control end,
//! `sensor-auth-slave-<master SAE>.ordinal` at the field end: one decimal number, written
//! to a temporary file, fsynced, renamed over the old one and the directory fsynced; mode
//! 0600). The trait semantics are unchanged:
//!
//! * `batches_taken()` is the counter.
//! * `reserve` (control) calls `enc_keys` first and then durably increments the counter
//!   before the bytes are handed out. A failed call burns no ordinal (no gap the field end
//!   would have to skip); a crash between the call and the write loses one key, never an
//!   ordinal: nothing was sent under it. So a restarted control end never opens a batch
//!   with an ordinal it used before, and its sequence numbers keep increasing.
//! * `mirror` (field) calls `dec_keys`, then durably increments the counter. A replayed
//!   frame of an older batch is refused by the ordinal (below the counter) without asking
//!   the KME, also after a restart — as with a pool. Behind that, the KME delivers a key
//!   ID once (durably): should the counter file be lost, a replayed frame naming an old
//!   key is refused with HTTP 400, mapped to a refusal ([`PadError::Diverged`]). A frame
//!   without a descriptor under a batch this end has not mirrored is refused anyway
//!   (`UnknownBatch`): its key is not here.
//! * `skip` (field; a batch the control end reserved and never used) consumes nothing —
//!   the key stays undelivered at the ONU's KME — and only increments the counter. The
//!   library's skip allowance still bounds how far a (forged) frame can move the counter.
//!
//! Nothing falls back to unauthenticated operation: every failure (KME unreachable, 503,
//! 401, bad response, counter file not writable) is an error and no bytes.
//!
//! # HTTPS
//!
//! A small blocking HTTP/1.1 client (the trait is synchronous; one request per batch, i.e.
//! per a few hundred frames): `std::net::TcpStream` with connect/read/write timeouts, rustls
//! (ring, explicit provider) with the SAE's client certificate and the deployment CA, one
//! request per connection (`Connection: close`), `Content-Length` bodies. Responses are
//! read into a buffer that is zeroised on drop; keys are never logged, and `Debug` of every
//! type here shows no key bytes.
//!
//! Status mapping: 503 (keys exhausted, peer KME unreachable, store failure) →
//! [`EtsiError::Exhausted`] → [`PadError::Exhausted`] (the library's fail-closed
//! `PoolExhausted`); 400 on `dec_keys` → [`EtsiError::Refused`] → refusal of the frame; 401
//! → [`EtsiError::Unauthorized`] (a configuration error: certificate, SAE IDs); 400 on
//! `enc_keys` (e.g. the KME's key size is not `batch_bytes × 8`) → [`EtsiError::Config`].
//!
//! # Limits
//!
//! * The slave cannot ask its KME for a level (`status` is a master call), so the field
//!   end reports [`PadSource::level_bytes`] as 0 (it decides nothing by it). The master's
//!   level is the KME's `stored_key_count × key_size / 8`, read at most every
//!   [`LEVEL_REFRESH`] (and counted down by each reservation in between).
//! * A key skipped or lost at a crash stays undelivered in the ONU KME's table.
//! * One process per counter file (not locked).
//! * The calls block the calling thread for up to the configured timeouts (inside a
//!   multi-threaded tokio runtime through `block_in_place`; on a current-thread runtime
//!   they block it).

use core::fmt;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use qpon_qkd::SecretBytes;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use crate::frame::BatchDescriptor;
use crate::pads::{PadError, PadSource, Reserved};

/// How often the master re-reads the KME's key level at most.
pub const LEVEL_REFRESH: Duration = Duration::from_secs(2);

/// Largest HTTP response accepted (a 65536-bit key is 11 KiB in base64).
const MAX_RESPONSE: usize = 64 * 1024;

/// Which SAE this end is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtsiRole {
    /// The control end: `enc_keys` at the OLT-side KME.
    Master,
    /// The field end: `dec_keys` at the ONU-side KME.
    Slave,
}

impl EtsiRole {
    fn name(self) -> &'static str {
        match self {
            EtsiRole::Master => "master",
            EtsiRole::Slave => "slave",
        }
    }
}

/// Settings of an [`EtsiPads`] (no secrets: the key file is read at [`EtsiPads::open`]).
#[derive(Clone, Debug)]
pub struct EtsiSettings {
    /// Master (control end) or slave (field end).
    pub role: EtsiRole,
    /// The KME, `host:port` (OLT side for the master, ONU side for the slave).
    pub kme: String,
    /// Name the KME's certificate must carry; empty: the host part of `kme`.
    pub server_name: String,
    /// The peer's SAE ID: the slave's (master role) or the master's (slave role).
    pub peer_sae: String,
    /// Deployment CA (PEM), the trust anchor for the KME's certificate.
    pub ca_file: PathBuf,
    /// This SAE's client certificate (PEM; its CN is this SAE's ID).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// Directory of the ordinal counter file (created with mode 0700 if missing).
    pub state_dir: PathBuf,
    /// Timeout of the TCP connect.
    pub connect_timeout: Duration,
    /// Timeout of a whole request (TLS handshake, request, response).
    pub timeout: Duration,
}

impl EtsiSettings {
    /// Settings with 2 s connect and 10 s request timeouts (the ONU KME may wait for a key
    /// announcement still on its way, 2 s by default).
    pub fn new(
        role: EtsiRole,
        kme: impl Into<String>,
        peer_sae: impl Into<String>,
        ca_file: impl Into<PathBuf>,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            role,
            kme: kme.into(),
            server_name: String::new(),
            peer_sae: peer_sae.into(),
            ca_file: ca_file.into(),
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            state_dir: state_dir.into(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }

    /// The counter file's path.
    pub fn counter_path(&self) -> PathBuf {
        self.state_dir.join(format!("sensor-auth-{}-{}.ordinal", self.role.name(), self.peer_sae))
    }

    fn host(&self) -> &str {
        if !self.server_name.is_empty() {
            return &self.server_name;
        }
        let host = self.kme.rsplit_once(':').map_or(self.kme.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Why the KME (or the local state) could not serve. No variant carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtsiError {
    /// Settings that cannot work (bad SAE ID, TLS files, a request the KME finds invalid).
    #[error("ETSI configuration: {0}")]
    Config(String),
    /// The KME refused this SAE (HTTP 401): certificate or SAE IDs misconfigured.
    #[error("KME refused this SAE (401): {0}")]
    Unauthorized(String),
    /// The KME cannot serve keys now (HTTP 503: exhausted, peer KME unreachable, store).
    #[error("KME cannot serve keys (503): {0}")]
    Exhausted(String),
    /// `dec_keys` refused the key ID (HTTP 400: unknown, or delivered before — a replay).
    #[error("KME refused key {key_id} (400): {message}")]
    Refused {
        /// The key ID asked for.
        key_id: Uuid,
        /// The KME's message.
        message: String,
    },
    /// Another HTTP status.
    #[error("KME answered HTTP {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// The KME's message.
        message: String,
    },
    /// Connecting, TLS or I/O failed (including timeouts).
    #[error("KME {kme}: {reason}")]
    Io {
        /// The KME address.
        kme: String,
        /// What failed.
        reason: String,
    },
    /// The response is not what the specification says (or not what was asked for).
    #[error("KME response: {0}")]
    Protocol(String),
    /// The ordinal counter file could not be read or written.
    #[error("counter file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl EtsiError {
    /// The library's error for this (`requested` bytes were asked for).
    fn into_pad_error(self, requested: usize) -> PadError {
        match self {
            // Fail closed as an empty pool does: no frame, alarm raised.
            EtsiError::Exhausted(_) => PadError::Exhausted { requested: requested as u64, available: 0 },
            // The named key is not (or no longer) ours to take: nothing consumed, the frame
            // is refused (as a descriptor naming bytes not at our pool cursor is).
            e @ EtsiError::Refused { .. } => PadError::Diverged(e.to_string()),
            e => PadError::Store(e.to_string()),
        }
    }
}

/// The durable batch count (see the module docs).
#[derive(Debug)]
struct Counter {
    path: PathBuf,
    value: u64,
}

impl Counter {
    fn err(path: &Path, e: impl fmt::Display) -> EtsiError {
        EtsiError::State { path: path.into(), reason: e.to_string() }
    }

    /// Reads the counter, creating the directory (0700) and a zero counter if missing.
    fn open(dir: &Path, path: PathBuf) -> Result<Self, EtsiError> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir).map_err(|e| Self::err(dir, e))?;
        match fs::read_to_string(&path) {
            Ok(text) => {
                let value = text
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| Self::err(&path, "not a batch count (refusing to guess)"))?;
                Ok(Self { path, value })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut c = Self { path, value: 0 };
                c.store(0)?;
                Ok(c)
            }
            Err(e) => Err(Self::err(&path, e)),
        }
    }

    /// Writes `value` durably: temporary file (0600), fsync, rename, fsync of the directory.
    fn store(&mut self, value: u64) -> Result<(), EtsiError> {
        let path = self.path.clone();
        let err = |e: io::Error| Self::err(&path, e);
        let tmp = path.with_extension("ordinal.tmp");
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        #[cfg(unix)]
        {
            // A temporary file left by a crash keeps its old mode; make sure.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
        f.write_all(format!("{value}\n").as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(err)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        self.value = value;
        Ok(())
    }
}

/// The master's cached view of the KME's level.
#[derive(Debug, Default)]
struct Level {
    bytes: u64,
    read_at: Option<Instant>,
}

/// A [`PadSource`] over ETSI GS QKD 014 (see the module docs). `Debug` shows settings and
/// counters only.
pub struct EtsiPads {
    settings: EtsiSettings,
    tls: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    counter: Counter,
    /// Key bytes received in this process.
    consumed: u64,
    /// Interior mutability: `level_bytes` takes `&self` and refreshes the cache.
    level: Mutex<Level>,
}

impl fmt::Debug for EtsiPads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtsiPads")
            .field("role", &self.settings.role)
            .field("kme", &self.settings.kme)
            .field("peer_sae", &self.settings.peer_sae)
            .field("batches_taken", &self.counter.value)
            .field("consumed", &self.consumed)
            .finish_non_exhaustive()
    }
}

/// SAE IDs become part of a file name and a URL path: the KME's own rule.
fn check_sae_id(id: &str) -> Result<(), EtsiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(EtsiError::Config(format!("invalid peer SAE ID {id:?}"))) }
}

fn tls_config(s: &EtsiSettings) -> Result<rustls::ClientConfig, EtsiError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &Path, e: &dyn fmt::Display| {
        EtsiError::Config(format!("{what} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&s.ca_file).map_err(|e| bad("CA file", &s.ca_file, &e))? {
        let c = c.map_err(|e| bad("CA file", &s.ca_file, &e))?;
        roots.add(c).map_err(|e| bad("CA certificate", &s.ca_file, &e))?;
    }
    if roots.is_empty() {
        return Err(bad("CA file", &s.ca_file, &"no certificate"));
    }
    let chain = CertificateDer::pem_file_iter(&s.cert_file)
        .map_err(|e| bad("certificate file", &s.cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate file", &s.cert_file, &e))?;
    let key = PrivateKeyDer::from_pem_file(&s.key_file).map_err(|e| bad("key file", &s.key_file, &e))?;
    let mut config = rustls::ClientConfig::builder_with_provider(qpon_kms::etsi::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| EtsiError::Config(format!("TLS protocol versions: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("client certificate", &s.cert_file, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `{"message": …, "details": […]}` of an error response, as one line (no key material:
/// error bodies carry none).
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let mut m = v["message"].as_str().unwrap_or("(no message)").to_string();
            if let Some(d) = v["details"].as_array() {
                for d in d {
                    m.push_str(&format!("; {}: {}", d["parameter"], d["reason"]));
                }
            }
            m
        }
        Err(_) => format!("({} bytes, not JSON)", body.len()),
    }
}

/// One key of a key container, borrowed from the (zeroised) response buffer.
#[allow(non_snake_case)] // the specification's field names
#[derive(serde::Deserialize)]
struct KeyEntry<'a> {
    #[serde(borrow)]
    key_ID: &'a str,
    #[serde(borrow)]
    key: &'a str,
}

#[derive(serde::Deserialize)]
struct KeyContainer<'a> {
    #[serde(borrow)]
    keys: Vec<KeyEntry<'a>>,
}

/// A response: status and body (zeroised on drop: it may hold a key).
struct Response {
    status: u16,
    body: Zeroizing<Vec<u8>>,
}

impl EtsiPads {
    /// Checks the settings, loads the TLS identity and reads (or creates) the counter file.
    /// Makes no request.
    pub fn open(settings: EtsiSettings) -> Result<Self, EtsiError> {
        check_sae_id(&settings.peer_sae)?;
        if settings.kme.is_empty() {
            return Err(EtsiError::Config("no KME address".into()));
        }
        let server_name = rustls::pki_types::ServerName::try_from(settings.host().to_string())
            .map_err(|e| EtsiError::Config(format!("server name {:?}: {e}", settings.host())))?;
        let tls = Arc::new(tls_config(&settings)?);
        let counter = Counter::open(&settings.state_dir, settings.counter_path())?;
        Ok(Self { settings, tls, server_name, counter, consumed: 0, level: Mutex::new(Level::default()) })
    }

    /// The settings.
    pub fn settings(&self) -> &EtsiSettings {
        &self.settings
    }

    /// Master: one `enc_keys` call for one key of `bytes` bytes; its ID and the key.
    pub fn enc_key(&self, bytes: usize) -> Result<(Uuid, SecretBytes), EtsiError> {
        self.require(EtsiRole::Master)?;
        let path = format!("/api/v1/keys/{}/enc_keys", self.settings.peer_sae);
        let body = serde_json::json!({ "number": 1, "size": bytes * 8 }).to_string();
        let r = self.request("POST", &path, &body)?;
        match r.status {
            200 => {
                let (id, key) = one_key(&r.body, None)?;
                check_len(&key, bytes)?;
                Ok((id, key))
            }
            400 => Err(EtsiError::Config(format!(
                "enc_keys refused: {} (the KME's key_size must be batch_bytes × 8 = {})",
                error_message(&r.body),
                bytes * 8
            ))),
            s => Err(status_error(s, &r.body)),
        }
    }

    /// Slave: one `dec_keys` call for key `id` of `bytes` bytes.
    pub fn dec_key(&self, id: Uuid, bytes: usize) -> Result<SecretBytes, EtsiError> {
        self.require(EtsiRole::Slave)?;
        let path = format!("/api/v1/keys/{}/dec_keys", self.settings.peer_sae);
        let body = serde_json::json!({ "key_IDs": [{ "key_ID": id.to_string() }] }).to_string();
        let r = self.request("POST", &path, &body)?;
        match r.status {
            200 => {
                let (_, key) = one_key(&r.body, Some(id))?;
                check_len(&key, bytes)?;
                Ok(key)
            }
            400 => Err(EtsiError::Refused { key_id: id, message: error_message(&r.body) }),
            s => Err(status_error(s, &r.body)),
        }
    }

    /// Master: the KME's `stored_key_count × key_size / 8` for this pair.
    pub fn stored_bytes(&self) -> Result<u64, EtsiError> {
        self.require(EtsiRole::Master)?;
        let path = format!("/api/v1/keys/{}/status", self.settings.peer_sae);
        let r = self.request("GET", &path, "")?;
        if r.status != 200 {
            return Err(status_error(r.status, &r.body));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| EtsiError::Protocol(format!("status: {e}")))?;
        let (Some(n), Some(bits)) = (v["stored_key_count"].as_u64(), v["key_size"].as_u64()) else {
            return Err(EtsiError::Protocol("status without stored_key_count or key_size".into()));
        };
        Ok(n.saturating_mul(bits / 8))
    }

    fn require(&self, role: EtsiRole) -> Result<(), EtsiError> {
        if self.settings.role == role {
            Ok(())
        } else {
            Err(EtsiError::Config(format!("this end is the {} SAE", self.settings.role.name())))
        }
    }

    /// One HTTP/1.1 request on a new mutual-TLS connection. Inside a multi-threaded tokio
    /// runtime (the proxy's core task) the worker is handed over to `block_in_place` first,
    /// so the other tasks are not stalled while this thread waits for the KME.
    fn request(&self, method: &str, path: &str, body: &str) -> Result<Response, EtsiError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.request_blocking(method, path, body))
            }
            _ => self.request_blocking(method, path, body),
        }
    }

    fn request_blocking(&self, method: &str, path: &str, body: &str) -> Result<Response, EtsiError> {
        let s = &self.settings;
        let io_err = |what: &str, e: &dyn fmt::Display| EtsiError::Io {
            kme: s.kme.clone(),
            reason: format!("{what}: {e}"),
        };
        let start = Instant::now();
        let addrs = s.kme.to_socket_addrs().map_err(|e| io_err("resolving", &e))?;
        let mut tcp = None;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, s.connect_timeout) {
                Ok(t) => {
                    tcp = Some(t);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| io_err("connecting", &last))?;
        tcp.set_read_timeout(Some(s.timeout)).map_err(|e| io_err("socket", &e))?;
        tcp.set_write_timeout(Some(s.timeout)).map_err(|e| io_err("socket", &e))?;
        let _ = tcp.set_nodelay(true);
        let conn = rustls::ClientConnection::new(Arc::clone(&self.tls), self.server_name.clone())
            .map_err(|e| io_err("TLS", &e))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            s.host(),
            body.len()
        );
        tls.write_all(req.as_bytes()).and_then(|()| tls.flush()).map_err(|e| io_err("sending", &e))?;
        // Pre-sized so the buffer holding the key is never reallocated (and left behind
        // unzeroised).
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_RESPONSE));
        let mut chunk = Zeroizing::new([0u8; 4096]);
        let mut framing: Option<(u16, usize, Option<usize>)> = None;
        loop {
            if start.elapsed() > s.timeout {
                return Err(io_err("response", &"timed out"));
            }
            let n = match tls.read(&mut chunk[..]) {
                Ok(n) => n,
                // Closed without close_notify: fine if the body is complete (checked below).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(io_err("receiving", &e)),
            };
            if n == 0 {
                break;
            }
            if buf.len() + n > MAX_RESPONSE {
                return Err(EtsiError::Protocol(format!("response longer than {MAX_RESPONSE} bytes")));
            }
            buf.extend_from_slice(&chunk[..n]);
            if framing.is_none() {
                framing = parse_head(&buf)?;
            }
            if let Some((_, head, Some(len))) = framing
                && buf.len() >= head + len
            {
                break;
            }
        }
        chunk.zeroize();
        let Some((status, head, len)) = framing else {
            return Err(EtsiError::Protocol(format!("incomplete HTTP response ({} bytes)", buf.len())));
        };
        let end = match len {
            Some(len) if buf.len() >= head + len => head + len,
            Some(len) => {
                return Err(EtsiError::Protocol(format!(
                    "body truncated: {} of {len} bytes",
                    buf.len() - head
                )));
            }
            None => buf.len(),
        };
        let mut body = Zeroizing::new(Vec::with_capacity(end - head));
        body.extend_from_slice(&buf[head..end]);
        Ok(Response { status, body })
    }
}

/// Once the head is complete: (status, head length, Content-Length).
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, Option<usize>)>, EtsiError> {
    let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err(EtsiError::Protocol("HTTP head too long".into()));
        }
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&buf[..i]).map_err(|_| EtsiError::Protocol("HTTP head not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(EtsiError::Protocol(format!("bad status line {status_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(EtsiError::Protocol(format!("bad status line {status_line:?}")));
    }
    let status = code.parse::<u16>().map_err(|_| EtsiError::Protocol(format!("bad status {code:?}")))?;
    let mut len = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            len = Some(value.parse::<usize>().map_err(|_| EtsiError::Protocol("bad Content-Length".into()))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            return Err(EtsiError::Protocol(format!("unsupported Transfer-Encoding {value:?}")));
        }
    }
    Ok(Some((status, i + 4, len)))
}

fn status_error(status: u16, body: &[u8]) -> EtsiError {
    let message = error_message(body);
    match status {
        401 => EtsiError::Unauthorized(message),
        503 => EtsiError::Exhausted(message),
        status => EtsiError::Http { status, message },
    }
}

/// The one key of a key container (with ID `want`, if given).
fn one_key(body: &[u8], want: Option<Uuid>) -> Result<(Uuid, SecretBytes), EtsiError> {
    // Never put serde's message into the error: it may quote the input.
    let c: KeyContainer<'_> =
        serde_json::from_slice(body).map_err(|_| EtsiError::Protocol("not a key container".into()))?;
    let [k] = c.keys.as_slice() else {
        return Err(EtsiError::Protocol(format!("{} keys for a request of one", c.keys.len())));
    };
    let id = Uuid::parse_str(k.key_ID)
        .map_err(|_| EtsiError::Protocol(format!("key_ID {:?} is not a UUID", k.key_ID)))?;
    if want.is_some_and(|w| w != id) {
        return Err(EtsiError::Protocol(format!("asked for key {}, got {id}", want.unwrap_or(id))));
    }
    let mut key = Vec::with_capacity(k.key.len() / 4 * 3 + 3);
    if base64::engine::general_purpose::STANDARD.decode_vec(k.key, &mut key).is_err() {
        key.zeroize();
        return Err(EtsiError::Protocol("key is not base64".into()));
    }
    Ok((id, SecretBytes::new(key)))
}

fn check_len(key: &SecretBytes, bytes: usize) -> Result<(), EtsiError> {
    if key.len() == bytes {
        Ok(())
    } else {
        Err(EtsiError::Protocol(format!("key of {} bytes, batch_bytes is {bytes}", key.len())))
    }
}

impl PadSource for EtsiPads {
    fn reserve(&mut self, len: usize) -> Result<Reserved, PadError> {
        let blen = u32::try_from(len).map_err(|_| PadError::Store("batch too long".into()))?;
        let (id, bytes) = self.enc_key(len).map_err(|e| e.into_pad_error(len))?;
        // Durable before the bytes are used: a restarted control end never reuses this
        // ordinal (its sequence numbers keep increasing). If this fails the key is dropped
        // (zeroised) unused.
        self.counter.store(self.counter.value + 1).map_err(|e| e.into_pad_error(len))?;
        self.consumed += len as u64;
        let mut level = self.level.lock().unwrap_or_else(|e| e.into_inner());
        level.bytes = level.bytes.saturating_sub(len as u64);
        Ok(Reserved { descriptor: BatchDescriptor { block: id, offset: 0, len: blen }, bytes })
    }

    fn mirror(&mut self, b: &BatchDescriptor) -> Result<SecretBytes, PadError> {
        let len = b.len as usize;
        if b.offset != 0 {
            return Err(PadError::Diverged(format!(
                "descriptor offset {} (ETSI batches are whole keys: offset 0)",
                b.offset
            )));
        }
        let bytes = self.dec_key(b.block, len).map_err(|e| e.into_pad_error(len))?;
        // The KME has recorded the delivery; now our count, before the bytes are used.
        self.counter.store(self.counter.value + 1).map_err(|e| e.into_pad_error(len))?;
        self.consumed += len as u64;
        Ok(bytes)
    }

    fn skip(&mut self, len: usize) -> Result<(), PadError> {
        if self.settings.role != EtsiRole::Slave {
            return Err(PadError::Store("skip at the master SAE".into()));
        }
        // Nothing to consume: the skipped batch's key simply stays undelivered at the KME.
        self.counter.store(self.counter.value + 1).map_err(|e| e.into_pad_error(len))
    }

    fn batches_taken(&mut self) -> Result<u64, PadError> {
        Ok(self.counter.value)
    }

    fn level_bytes(&self) -> u64 {
        if self.settings.role != EtsiRole::Master {
            return 0;
        }
        let mut level = self.level.lock().unwrap_or_else(|e| e.into_inner());
        if level.read_at.is_none_or(|t| t.elapsed() >= LEVEL_REFRESH) {
            // Unknown counts as empty (fail closed); retried after LEVEL_REFRESH, not on
            // every call, so a KME outage does not stall every status read.
            level.bytes = self.stored_bytes().unwrap_or(0);
            level.read_at = Some(Instant::now());
        }
        level.bytes
    }

    fn consumed_bytes(&self) -> u64 {
        self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n").unwrap(), None);
        let h = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 7\r\nX: y\r\n\r\n{\"a\":1}";
        assert_eq!(parse_head(h).unwrap(), Some((503, h.len() - 7, Some(7))));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"SMTP 200\r\n\r\n").is_err());
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap(), Some((200, 19, None)));
    }

    #[test]
    fn key_containers() {
        let id = Uuid::from_u128(7);
        let body = format!(r#"{{"keys":[{{"key_ID":"{id}","key":"AAECAw=="}}]}}"#);
        let (got, key) = one_key(body.as_bytes(), Some(id)).unwrap();
        assert_eq!((got, key.expose()), (id, &[0u8, 1, 2, 3][..]));
        assert!(one_key(body.as_bytes(), Some(Uuid::from_u128(8))).is_err());
        let two =
            format!(r#"{{"keys":[{{"key_ID":"{id}","key":"AA=="}},{{"key_ID":"{id}","key":"AA=="}}]}}"#);
        assert!(one_key(two.as_bytes(), None).is_err());
        let e = one_key(br#"{"keys":[{"key_ID":"x","key":"c2VjcmV0"}]}"#, None).unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        let e = one_key(br#"{"keys":[{"key_ID":1,"key":"c2VjcmV0"}]}"#, None).unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        assert_eq!(
            error_message(
                br#"{"message":"Key already delivered","details":[{"parameter":"key_ID","reason":"x"}]}"#
            ),
            "Key already delivered; \"key_ID\": \"x\""
        );
    }

    #[test]
    fn counter_file_is_durable_and_private() {
        let dir = std::env::temp_dir().join(format!("qpon-sa-etsi-counter-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("c.ordinal");
        let mut c = Counter::open(&dir, path.clone()).unwrap();
        assert_eq!(c.value, 0);
        c.store(41).unwrap();
        c.store(42).unwrap();
        assert_eq!(Counter::open(&dir, path.clone()).unwrap().value, 42);
        assert_eq!(fs::read_to_string(&path).unwrap(), "42\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(Counter::open(&dir, path), Err(EtsiError::State { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
