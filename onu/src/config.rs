//! The `onu` configuration file (TOML). The commented default file, [`DEFAULT_CONFIG`], is
//! shipped in the binary (`onu show-config`); every key has the default it documents, and
//! an unknown key is an error naming it.

use qpon_node::parse_toml;
use qpon_qkd::finite_key::DecoyParams;
use qpon_qkd::session::SessionConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use qpon_node::ConfigError;
use qpon_node::api::ApiSide;
pub use qpon_node::api::{ApiSection, SaeEntry};

/// The commented default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../onu.toml");

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnuConfig {
    /// Process and identity settings.
    #[serde(default)]
    pub onu: NodeSection,
    /// The quantum backend.
    #[serde(default)]
    pub backend: BackendSection,
    /// Session parameters (`onu`, `decoy` and `pulse_offset` come from [`NodeSection`]).
    #[serde(default)]
    pub session: SessionConfig,
    /// The ETSI GS QKD 014 key-delivery API (off by default).
    #[serde(default)]
    pub api: ApiSection,
    /// Downstream decryption keys (installed as the OLT announces them).
    #[serde(default)]
    pub downstream: DownstreamSection,
}

/// `[downstream]`: the ONU installs every downstream key the OLT announces (whether or not
/// the OLT has downstream encryption on is the OLT's setting); this only tunes how long the
/// previous key stays usable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownstreamSection {
    /// Superframes (125 µs) after a key switch during which frames under the previous key
    /// are still opened (default 800 = 100 ms: frames in flight, clock skew between the
    /// ends); then the previous key is erased.
    pub overlap_superframes: u64,
}

impl Default for DownstreamSection {
    fn default() -> Self {
        Self { overlap_superframes: 800 }
    }
}

/// `[onu]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// This ONU's id (required to run).
    pub id: Option<u16>,
    /// The pre-shared secret (required to run).
    pub psk_file: Option<PathBuf>,
    /// The OLT's address.
    pub olt: String,
    /// HTTP address of `/metrics` and `/status`; empty = disabled.
    pub metrics_listen: String,
    /// Data directory: holds the key store `keys.redb` (created with mode 0700 if absent;
    /// relative paths are relative to the config file).
    pub data_dir: PathBuf,
    /// File holding the key store's key-encryption key (64 hex digits, mode 0600); empty =
    /// the `QPON_KEK` environment variable if set, else an unencrypted store.
    pub kek_file: PathBuf,
    /// Equalisation delay in gates.
    pub pulse_offset: i64,
    /// Reconnection back-off bounds, ms.
    pub reconnect_min_ms: u64,
    /// See `reconnect_min_ms`.
    pub reconnect_max_ms: u64,
    /// Source poll period, ms.
    pub poll_ms: u64,
    /// Statistics refresh period, ms.
    pub stats_ms: u64,
    /// The source.
    pub decoy: DecoyParams,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            id: None,
            psk_file: None,
            olt: "127.0.0.1:7400".into(),
            metrics_listen: "127.0.0.1:9401".into(),
            data_dir: PathBuf::from("/var/lib/qpon/onu"),
            kek_file: PathBuf::new(),
            pulse_offset: 0,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5000,
            poll_ms: 5,
            stats_ms: 1000,
            decoy: DecoyParams::default(),
        }
    }
}

/// `[backend]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendSection {
    /// `board` (the only kind a configuration file can select).
    pub kind: BackendKind,
    /// The board's UDP address.
    pub address: String,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self { kind: BackendKind::Board, address: "192.0.2.20:5000".into() }
    }
}

/// Quantum backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The FPGA source board.
    Board,
}

impl OnuConfig {
    /// Parses a configuration; `base` resolves a relative `psk_file`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: OnuConfig = parse_toml(text)?;
        if let Some(p) = &mut cfg.onu.psk_file
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        for p in [&mut cfg.onu.data_dir, &mut cfg.onu.kek_file] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.api.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let o = &self.onu;
        if o.poll_ms == 0 || o.poll_ms > 1000 {
            return Err(ConfigError::field("onu.poll_ms", "must be in 1..=1000"));
        }
        if o.stats_ms == 0 {
            return Err(ConfigError::field("onu.stats_ms", "must be at least 1"));
        }
        if o.reconnect_min_ms == 0 || o.reconnect_max_ms < o.reconnect_min_ms {
            return Err(ConfigError::field(
                "onu.reconnect_max_ms",
                "need 0 < reconnect_min_ms ≤ reconnect_max_ms",
            ));
        }
        if !o.metrics_listen.is_empty() && o.metrics_listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::field("onu.metrics_listen", "must be host:port or empty"));
        }
        if o.olt.is_empty() {
            return Err(ConfigError::field("onu.olt", "must be host:port"));
        }
        o.decoy.validate().map_err(|e| ConfigError::field("onu.decoy", e))?;
        if o.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::field("onu.data_dir", "must not be empty"));
        }
        // Without an id (required to run) the pair's own `onu`, if any, stands in.
        let own = o.id.or_else(|| self.api.sae.first().and_then(|e| e.onu)).unwrap_or(0);
        self.api.validate(ApiSide::Onu(own))?;
        Ok(())
    }

    /// Checks that the keys needed to run are present.
    pub fn require_identity(&self) -> Result<(u16, &Path), ConfigError> {
        let id = self.onu.id.ok_or_else(|| ConfigError::field("onu.id", "required"))?;
        let psk =
            self.onu.psk_file.as_deref().ok_or_else(|| ConfigError::field("onu.psk_file", "required"))?;
        Ok((id, psk))
    }

    /// The session configuration.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            onu: self.onu.id.unwrap_or(0),
            decoy: self.onu.decoy,
            pulse_offset: self.onu.pulse_offset,
            ..self.session.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_parses_to_the_defaults() {
        let cfg = OnuConfig::parse(DEFAULT_CONFIG, Path::new(".")).unwrap();
        assert_eq!(cfg.onu, NodeSection::default());
        assert_eq!(cfg.backend, BackendSection::default());
        assert_eq!(cfg.session, SessionConfig::default());
        let mut api = ApiSection::default();
        api.resolve_paths(Path::new("."));
        assert_eq!(cfg.api, api);
        assert!(cfg.require_identity().unwrap_err().0.contains("onu.id"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = OnuConfig::parse("[onu]\nid = 70000\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("onu.id"), "{e}");
        let e = OnuConfig::parse("[onu]\nreconnect_min_ms = 0\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("reconnect"), "{e}");
        let e = OnuConfig::parse("[backend]\nkind = \"usb\"\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("backend.kind"), "{e}");
    }

    #[test]
    fn api_fields_are_checked() {
        let e = OnuConfig::parse(
            "[onu]\nid = 2\n[[api.sae]]\nonu = 3\nmaster = \"a\"\nslave = \"b\"\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.0.contains("api.sae[0].onu"), "{e}");
        let two = "[[api.sae]]\nmaster = \"a\"\nslave = \"b\"\n[[api.sae]]\nmaster = \"c\"\nslave = \"d\"\n";
        let e = OnuConfig::parse(&format!("[onu]\nid = 2\n{two}"), Path::new(".")).unwrap_err();
        assert!(e.0.contains("`api.sae`"), "{e}");
        let e = OnuConfig::parse("[api]\nkey_size_bits = 0\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("api.key_size_bits"), "{e}");
        let cfg = OnuConfig::parse("[onu]\nid = 2\ndata_dir = \"d\"\n", Path::new("/srv")).unwrap();
        assert_eq!(cfg.onu.data_dir, PathBuf::from("/srv/d"));
    }

    #[test]
    fn identity_and_relative_psk() {
        let cfg = OnuConfig::parse("[onu]\nid = 9\npsk_file = \"k.psk\"\n", Path::new("/etc/qpon")).unwrap();
        let (id, psk) = cfg.require_identity().unwrap();
        assert_eq!((id, psk), (9, Path::new("/etc/qpon/k.psk")));
        assert_eq!(cfg.session().onu, 9);
    }
}
