//! The `[api]` section both services share: ETSI GS QKD 014 key delivery over mutual TLS
//! from the service's key store (`qpon_kms::etsi`), and the `certs` subcommand that writes
//! a development CA and certificates for it.
//!
//! At the OLT every `[[api.sae]]` pair names the ONU whose pool serves it; at an ONU the
//! one pair is served from the ONU's own pool (`onu` may be omitted, and must be the ONU's
//! own id if given). Relative file names are relative to the configuration file.

use crate::StartError;
use crate::config::ConfigError;
use qpon_kms::KeyStore;
use qpon_kms::etsi::{KeySupply, Kme, KmeConfig, SaeMap, SaePair, Side};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// HTTPS address of the ETSI GS QKD 014 API; empty = disabled.
    pub listen: String,
    /// The CA that issues the SAEs' client certificates (PEM).
    pub ca_file: PathBuf,
    /// This KME's server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The one key size served, in bits (a positive multiple of 8).
    pub key_size_bits: u32,
    /// Most keys in one request.
    pub max_keys_per_request: u32,
    /// The SAE pairs served.
    pub sae: Vec<SaeEntry>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: String::new(),
            ca_file: PathBuf::from("certs/ca.pem"),
            cert_file: PathBuf::from("certs/server.pem"),
            key_file: PathBuf::from("certs/server.key"),
            key_size_bits: 256,
            max_keys_per_request: 128,
            sae: Vec::new(),
        }
    }
}

/// One `[[api.sae]]`: the master SAE (certificate CN of the application at the OLT side),
/// the slave SAE (behind the ONU) and the ONU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeEntry {
    /// The ONU (required at the OLT; at an ONU its own id, which is the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onu: Option<u16>,
    /// SAE ID of the application at the OLT side (calls `enc_keys`).
    pub master: String,
    /// SAE ID of the application behind the ONU (calls `dec_keys`).
    pub slave: String,
}

/// Which service the section belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiSide<'a> {
    /// The OLT, serving these ONUs.
    Olt(&'a [u16]),
    /// The ONU with this id.
    Onu(u16),
}

impl ApiSection {
    /// Makes relative file names relative to `base` (the configuration file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Whether the API is enabled.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// When the API is enabled, checks that its TLS files can be opened (naming the field
    /// of the first that cannot).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        for (field, p) in [
            ("api.ca_file", &self.ca_file),
            ("api.cert_file", &self.cert_file),
            ("api.key_file", &self.key_file),
        ] {
            std::fs::File::open(p).map_err(|e| ConfigError::field(field, format!("{}: {e}", p.display())))?;
        }
        Ok(())
    }

    /// Checks the section and returns its SAE pairs; errors name the field (`api.…`).
    pub fn validate(&self, side: ApiSide<'_>) -> Result<SaeMap, ConfigError> {
        if self.enabled() && self.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::field("api.listen", "must be host:port or empty"));
        }
        if self.key_size_bits == 0 || !self.key_size_bits.is_multiple_of(8) || self.key_size_bits > 65536 {
            return Err(ConfigError::field("api.key_size_bits", "must be a multiple of 8 in 8..=65536"));
        }
        if self.max_keys_per_request == 0 {
            return Err(ConfigError::field("api.max_keys_per_request", "must be at least 1"));
        }
        if self.enabled() {
            for (field, p) in [
                ("api.ca_file", &self.ca_file),
                ("api.cert_file", &self.cert_file),
                ("api.key_file", &self.key_file),
            ] {
                if p.as_os_str().is_empty() {
                    return Err(ConfigError::field(field, "required when `api.listen` is set"));
                }
            }
        }
        let mut pairs = Vec::with_capacity(self.sae.len());
        for (i, e) in self.sae.iter().enumerate() {
            let onu = match (side, e.onu) {
                (ApiSide::Olt(_), None) => {
                    return Err(ConfigError::field(&format!("api.sae[{i}].onu"), "required at the OLT"));
                }
                (ApiSide::Olt(known), Some(o)) if !known.contains(&o) => {
                    return Err(ConfigError::field(
                        &format!("api.sae[{i}].onu"),
                        format!("ONU {o} is not configured ([[onu]])"),
                    ));
                }
                (ApiSide::Onu(own), Some(o)) if o != own => {
                    return Err(ConfigError::field(
                        &format!("api.sae[{i}].onu"),
                        format!("this ONU is {own}; it serves its own pair only"),
                    ));
                }
                (ApiSide::Onu(own), _) => own,
                (ApiSide::Olt(_), Some(o)) => o,
            };
            pairs.push(SaePair { master: e.master.clone(), slave: e.slave.clone(), onu });
        }
        if matches!(side, ApiSide::Onu(_)) && pairs.len() > 1 {
            return Err(ConfigError::field("api.sae", "an ONU serves one SAE pair"));
        }
        SaeMap::new(pairs).map_err(|e| ConfigError::field("api.sae", e))
    }
}

/// A running ETSI API.
pub struct ApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Stops serving (connections in progress end with the task) and waits for the task
    /// to be dropped, so the store handle it held is released.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts the ETSI API of `section` on the current tokio runtime when it is enabled
/// (`None` otherwise), serving `side`'s pairs from `store`: the OLT issues keys through
/// `supply` (its driver, which announces them to the ONUs), an ONU serves what its pool
/// mirrored (`supply` is `None`). The TLS files are read now, so a bad one fails the
/// start, naming its field.
pub async fn start_api(
    section: &ApiSection,
    side: ApiSide<'_>,
    store: KeyStore,
    supply: Option<Arc<dyn KeySupply>>,
) -> Result<Option<ApiServer>, StartError> {
    if !section.enabled() {
        return Ok(None);
    }
    let saes = section.validate(side)?;
    section.check_files()?;
    let tls = qpon_kms::etsi::server_config(&section.ca_file, &section.cert_file, &section.key_file)
        .map_err(|e| ConfigError::field("api", e))?;
    let (kme_side, kme_id, peer) = match side {
        ApiSide::Olt(_) => (Side::Olt, "qpon-olt".to_string(), "qpon-onu".to_string()),
        ApiSide::Onu(id) => (Side::Onu, format!("qpon-onu-{id}"), "qpon-olt".to_string()),
    };
    let mut kc = KmeConfig::new(kme_id, peer, kme_side);
    kc.key_size = section.key_size_bits;
    kc.max_key_per_request = section.max_keys_per_request;
    let kme = Kme::new(kc, saes, store, supply).map_err(|e| ConfigError::field("api", e))?;
    let listen = section.listen.clone();
    let listener = std::net::TcpListener::bind(&listen)
        .map_err(|source| StartError::Listen { addr: listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: listen.clone(), source })?;
    let router = qpon_kms::etsi::router(Arc::new(kme));
    let task = tokio::spawn(async move {
        if let Err(e) = qpon_kms::etsi::serve_tls_with(listener, router, Arc::new(tls)).await {
            tracing::warn!(error = %e, "ETSI API stopped");
        }
    });
    tracing::info!(%addr, "ETSI GS QKD 014 API listening");
    Ok(Some(ApiServer { addr, task }))
}

/// The `certs` subcommand of both services: writes a development CA, a server certificate
/// for the KME (localhost) and a client certificate per SAE into `out` (files mode 0600,
/// never overwritten), and returns the configuration lines to paste.
pub fn write_dev_certs(out: &Path, saes: &[String], service: &str) -> Result<String, String> {
    let ids: Vec<&str> = saes.iter().map(String::as_str).collect();
    let certs = qpon_kms::etsi::dev_certs(out, &ids).map_err(|e| e.to_string())?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(s, "# Development certificates (not for production) in {}:", abs(out));
    for (id, c, k) in &certs.saes {
        let _ = writeln!(s, "#   SAE {id}: {} {}", abs(c), abs(k));
    }
    let _ = writeln!(s, "# Paste into {service}.toml (both services may use the same CA and server files):");
    let _ = writeln!(s, "[api]");
    let _ = writeln!(s, "listen = \"127.0.0.1:{}\"", if service == "olt" { 8443 } else { 8444 });
    let _ = writeln!(s, "ca_file = {:?}", abs(&certs.ca));
    let _ = writeln!(s, "cert_file = {:?}", abs(&certs.server_cert));
    let _ = writeln!(s, "key_file = {:?}", abs(&certs.server_key));
    for (k, pair) in saes.chunks(2).enumerate() {
        let _ = writeln!(s, "[[api.sae]]");
        if service == "olt" {
            let _ = writeln!(s, "onu = {k}                  # edit: the ONU the slave SAE sits behind");
        }
        let _ = writeln!(s, "master = {:?}", pair[0]);
        let _ = writeln!(s, "slave = {:?}", pair.get(1).map_or("<slave SAE>", |x| x.as_str()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sae(onu: Option<u16>, m: &str, s: &str) -> SaeEntry {
        SaeEntry { onu, master: m.into(), slave: s.into() }
    }

    #[test]
    fn validation_names_the_field() {
        let mut a = ApiSection::default();
        assert!(a.validate(ApiSide::Olt(&[1])).unwrap().pairs().is_empty());
        a.key_size_bits = 100;
        assert!(a.validate(ApiSide::Olt(&[])).unwrap_err().0.contains("api.key_size_bits"));
        a.key_size_bits = 256;
        a.listen = "nope".into();
        assert!(a.validate(ApiSide::Olt(&[])).unwrap_err().0.contains("api.listen"));
        a.listen = String::new();
        a.sae = vec![sae(None, "m", "s")];
        assert!(a.validate(ApiSide::Olt(&[1])).unwrap_err().0.contains("api.sae[0].onu"));
        assert_eq!(a.validate(ApiSide::Onu(4)).unwrap().pairs()[0].onu, 4);
        a.sae = vec![sae(Some(2), "m", "s")];
        assert!(a.validate(ApiSide::Olt(&[1])).unwrap_err().0.contains("not configured"));
        assert!(a.validate(ApiSide::Onu(4)).unwrap_err().0.contains("api.sae[0].onu"));
        a.sae = vec![sae(Some(1), "m", "s"), sae(Some(1), "m2", "s2")];
        assert!(a.validate(ApiSide::Olt(&[1])).unwrap_err().0.contains("api.sae"));
        a.sae = vec![sae(Some(1), "m", "m")];
        assert!(a.validate(ApiSide::Olt(&[1])).unwrap_err().0.contains("more than once"));
    }
}
