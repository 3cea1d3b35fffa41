//! The proxy's configuration: a TOML file whose commented default is
//! [`DEFAULT_CONFIG`], every key optional, unknown keys refused, errors naming the field.

use crate::EndConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The commented default configuration file (`sensor-auth proxy --show-config` prints
/// the effective one).
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// Which end of the bump-in-the-wire a proxy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Beside the control station: Modbus/TCP clients connect to it; it seals requests.
    Control,
    /// Beside the device: the control proxy's link connects to it; it opens requests and
    /// forwards them to the Modbus/TCP device.
    Field,
}

/// The proxy configuration (see [`DEFAULT_CONFIG`] for every key's meaning and default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Control or field; required (file or `--role`).
    pub role: Option<Role>,
    /// Control: client listener; field: link listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Control: the field proxy's link address.
    pub peer: Option<SocketAddr>,
    /// Field: the Modbus/TCP device.
    pub device: Option<SocketAddr>,
    /// Unit ids forwarded (empty: all).
    pub allowed_units: Vec<u8>,
    /// Field: how long the device may take to answer.
    pub device_timeout_ms: u64,
    /// Timeout of one TCP connection attempt.
    pub connect_timeout_ms: u64,
    /// Control: pause between attempts to re-establish the link.
    pub reconnect_ms: u64,
    /// Concurrent client (control) or link (field) connections.
    pub max_connections: usize,
    /// Status endpoint (`/status` JSON, `/metrics` Prometheus); none if unset.
    pub status_listen: Option<SocketAddr>,
    /// Where the pads come from: a local key store's pool (used unless `etsi` is set).
    pub store: StoreConfig,
    /// Or keys through ETSI GS QKD 014 (the control proxy as master SAE, the field proxy
    /// as slave SAE); when set, `store` is not used.
    pub etsi: Option<EtsiConfig>,
    /// The authenticated stream's settings (the library's [`EndConfig`]; both proxies of
    /// a pair must agree on all but `low_water*`). `auth.response_timeout_ms` is also how
    /// long the control proxy's clients wait, `auth.max_outstanding` how many requests
    /// each proxy keeps in flight.
    pub auth: EndConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            role: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 1502)),
            peer: None,
            device: None,
            allowed_units: Vec::new(),
            device_timeout_ms: 1500,
            connect_timeout_ms: 1000,
            reconnect_ms: 500,
            max_connections: 64,
            status_listen: None,
            store: StoreConfig::default(),
            etsi: None,
            auth: EndConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// The key store section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The store file.
    pub path: PathBuf,
    /// Which ONU's pool.
    pub onu: u16,
    /// KEK file of an encrypted store (empty: `QPON_KEK` if set, else unencrypted).
    pub kek_file: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("keys.redb"), onu: 1, kek_file: PathBuf::new() }
    }
}

/// The `[etsi]` section: keys from a KME through ETSI GS QKD 014 (see [`crate::etsi`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtsiConfig {
    /// The KME, `host:port`: the OLT-side KME for the control role (master SAE, calls
    /// `enc_keys`), the ONU-side KME for the field role (slave SAE, calls `dec_keys`).
    pub kme: String,
    /// Name the KME's certificate must carry; empty: the host part of `kme`.
    pub server_name: String,
    /// The peer proxy's SAE ID: the slave's (control role) or the master's (field role).
    pub peer_sae: String,
    /// Deployment CA (PEM).
    pub ca_file: PathBuf,
    /// This proxy's SAE client certificate (PEM, CN = its SAE ID).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// Directory of the batch counter file (created 0700 if missing; keep it, see
    /// [`crate::etsi`]).
    pub state_dir: PathBuf,
    /// Timeout of one KME request (TLS handshake, request, response), ms.
    pub timeout_ms: u64,
}

impl Default for EtsiConfig {
    fn default() -> Self {
        Self {
            kme: String::new(),
            server_name: String::new(),
            peer_sae: String::new(),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            state_dir: PathBuf::from("sensor-auth-state"),
            timeout_ms: 10_000,
        }
    }
}

/// Largest ETSI key served by the KME (bits); a batch is one key.
pub const MAX_ETSI_KEY_BITS: usize = 65_536;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The log section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn field(field: &str, why: impl std::fmt::Display) -> Self {
        ConfigError(format!("invalid `{field}`: {why}"))
    }
}

impl ProxyConfig {
    /// Parses a configuration file's text (unknown keys refused, errors name the field).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        qpon_node::parse_toml(text).map_err(|e| ConfigError(e.0))
    }

    /// The role, or an error naming the field if none was given.
    pub fn role(&self) -> Result<Role, ConfigError> {
        self.role.ok_or_else(|| ConfigError::field("role", "not set (\"control\" or \"field\"; --role)"))
    }

    /// Checks the fields the role needs; errors name the field.
    pub fn validate(&self) -> Result<Role, ConfigError> {
        let role = self.role()?;
        match role {
            Role::Control if self.peer.is_none() => {
                return Err(ConfigError::field(
                    "peer",
                    "the control role needs the field proxy's address (--peer)",
                ));
            }
            Role::Field if self.device.is_none() => {
                return Err(ConfigError::field(
                    "device",
                    "the field role needs the device's address (--device)",
                ));
            }
            _ => {}
        }
        self.auth.validate().map_err(|e| ConfigError::field("auth", e))?;
        if self.auth.response_timeout_ms == 0 {
            return Err(ConfigError::field("auth.response_timeout_ms", "must be positive"));
        }
        for (name, v) in [
            ("device_timeout_ms", self.device_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("reconnect_ms", self.reconnect_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::field(name, "must be positive"));
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::field("max_connections", "must be positive"));
        }
        if let Some(e) = &self.etsi {
            for (name, empty) in [
                ("etsi.kme", e.kme.is_empty()),
                ("etsi.peer_sae", e.peer_sae.is_empty()),
                ("etsi.ca_file", e.ca_file.as_os_str().is_empty()),
                ("etsi.cert_file", e.cert_file.as_os_str().is_empty()),
                ("etsi.key_file", e.key_file.as_os_str().is_empty()),
                ("etsi.state_dir", e.state_dir.as_os_str().is_empty()),
            ] {
                if empty {
                    return Err(ConfigError::field(name, "required with [etsi]"));
                }
            }
            if e.timeout_ms == 0 {
                return Err(ConfigError::field("etsi.timeout_ms", "must be positive"));
            }
            if self.auth.batch_bytes * 8 > MAX_ETSI_KEY_BITS {
                return Err(ConfigError::field(
                    "auth.batch_bytes",
                    format!(
                        "with [etsi] a batch is one key: at most {} bytes ({MAX_ETSI_KEY_BITS} bits); \
                         the KME's key_size must be batch_bytes × 8",
                        MAX_ETSI_KEY_BITS / 8
                    ),
                ));
            }
        }
        Ok(role)
    }

    /// Whether unit `unit` may be forwarded.
    pub fn unit_allowed(&self, unit: u8) -> bool {
        self.allowed_units.is_empty() || self.allowed_units.contains(&unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_is_the_default() {
        assert_eq!(ProxyConfig::from_toml(DEFAULT_CONFIG).unwrap(), ProxyConfig::default());
    }

    #[test]
    fn errors_name_the_field() {
        let e = ProxyConfig::from_toml("role = \"middle\"").unwrap_err();
        assert!(e.0.contains("`role`"), "{e}");
        let e = ProxyConfig::from_toml("[store]\nonu = -1").unwrap_err();
        assert!(e.0.contains("`store.onu`"), "{e}");
        let e = ProxyConfig::from_toml("listen = \"nowhere\"").unwrap_err();
        assert!(e.0.contains("`listen`"), "{e}");
        let e = ProxyConfig::from_toml("lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let c = ProxyConfig::from_toml("role = \"control\"").unwrap();
        assert!(c.validate().unwrap_err().0.contains("`peer`"));
        let c = ProxyConfig::from_toml("role = \"field\"\ndevice = \"127.0.0.1:502\"").unwrap();
        assert_eq!(c.validate().unwrap(), Role::Field);
        assert!(ProxyConfig::default().validate().unwrap_err().0.contains("`role`"));
    }

    #[test]
    fn auth_section_overrides_only_what_it_sets() {
        let c = ProxyConfig::from_toml("[auth]\ndevice = 42\nlow_water = \"hold\"").unwrap();
        assert_eq!(c.auth.device, 42);
        assert_eq!(c.auth.low_water, crate::LowWaterPolicy::Hold);
        assert_eq!(c.auth.replay_window, EndConfig::default().replay_window);
        let e = ProxyConfig::from_toml("[auth]\nreplay_windw = 64").unwrap_err();
        assert!(e.0.contains("replay_windw"), "{e}");
        let mut c =
            ProxyConfig::from_toml("role = \"field\"\ndevice = \"127.0.0.1:1\"\n[auth]\nreplay_window = 65")
                .unwrap();
        assert!(c.validate().unwrap_err().0.contains("replay_window"));
        c.auth.replay_window = 64;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn etsi_section_selects_the_key_source() {
        assert_eq!(ProxyConfig::default().etsi, None);
        let base = "role = \"field\"\ndevice = \"127.0.0.1:502\"\n";
        let c = ProxyConfig::from_toml(&format!(
            "{base}[etsi]\nkme = \"kme.example:8443\"\npeer_sae = \"scada\"\nca_file = \"ca.pem\"\n\
             cert_file = \"rtu.pem\"\nkey_file = \"rtu.key\"\n[auth]\nbatch_bytes = 8192"
        ))
        .unwrap();
        let e = c.etsi.as_ref().unwrap();
        assert_eq!((e.kme.as_str(), e.timeout_ms), ("kme.example:8443", 10_000));
        assert_eq!(e.state_dir, PathBuf::from("sensor-auth-state"));
        assert_eq!(c.validate().unwrap(), Role::Field);
        let mut big = c.clone();
        big.auth.batch_bytes = 8193;
        assert!(big.validate().unwrap_err().0.contains("`auth.batch_bytes`"));
        let e =
            ProxyConfig::from_toml(&format!("{base}[etsi]\nkme = \"k:1\"")).unwrap().validate().unwrap_err();
        assert!(e.0.contains("`etsi.peer_sae`"), "{e}");
        let e = ProxyConfig::from_toml("[etsi]\nkmee = \"k:1\"").unwrap_err();
        assert!(e.0.contains("kmee"), "{e}");
        // Printed (--show-config) and read back.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(ProxyConfig::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn units() {
        let mut c = ProxyConfig::default();
        assert!(c.unit_allowed(0) && c.unit_allowed(255));
        c.allowed_units = vec![1, 7];
        assert!(c.unit_allowed(7) && !c.unit_allowed(2));
    }
}
