//! The `olt` configuration file (TOML). The commented default file, [`DEFAULT_CONFIG`], is
//! shipped in the binary (`olt show-config`); every key has the default it documents, and
//! an unknown key is an error naming it (a typo must not silently fall back to a default).

use crate::downstream::DownstreamConfig;
use crate::monitor::MonitorConfig;
use crate::scheduling::SchedulingConfig;
pub use qpon_node::ConfigError;
use qpon_node::api::ApiSide;
pub use qpon_node::api::{ApiSection, SaeEntry};
use qpon_node::parse_toml;
use qpon_qkd::finite_key::DecoyParams;
use qpon_qkd::session::SessionConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The commented default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../olt.toml");

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OltConfig {
    /// Process settings.
    #[serde(default)]
    pub olt: NodeSection,
    /// The quantum backend.
    #[serde(default)]
    pub backend: BackendSection,
    /// The slot scheduler (frame, guard, period, policy, pool target).
    #[serde(default)]
    pub scheduling: SchedulingConfig,
    /// Session parameters common to every ONU (`onu`, `decoy` and `pulse_offset` are
    /// taken from each [`OnuEntry`]).
    #[serde(default)]
    pub session: SessionConfig,
    /// The monitor's thresholds.
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// The ONUs served.
    #[serde(default)]
    pub onu: Vec<OnuEntry>,
    /// The ETSI GS QKD 014 key-delivery API (off by default).
    #[serde(default)]
    pub api: ApiSection,
    /// Downstream encryption keys from the pools, with key switching (off by default).
    #[serde(default)]
    pub downstream: DownstreamConfig,
}

/// `[olt]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Address the ONUs connect to.
    pub listen: SocketAddr,
    /// HTTP address of `/metrics` and `/status`; empty = disabled.
    pub metrics_listen: String,
    /// Data directory: holds the key store `keys.redb` (created with mode 0700 if absent;
    /// relative paths are relative to the config file).
    pub data_dir: PathBuf,
    /// File holding the key store's key-encryption key (64 hex digits, mode 0600); empty =
    /// the `QPON_KEK` environment variable if set, else an unencrypted store.
    pub kek_file: PathBuf,
    /// Worker threads (0 = one per core).
    pub workers: usize,
    /// Detector poll period, ms.
    pub poll_ms: u64,
    /// Statistics refresh period, ms.
    pub stats_ms: u64,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            metrics_listen: "127.0.0.1:9400".into(),
            data_dir: PathBuf::from("/var/lib/qpon/olt"),
            kek_file: PathBuf::new(),
            workers: 0,
            poll_ms: 10,
            stats_ms: 1000,
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
        Self { kind: BackendKind::Board, address: "192.0.2.10:5000".into() }
    }
}

/// Quantum backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The FPGA detector board.
    Board,
}

/// One `[[onu]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnuEntry {
    /// The ONU's id.
    pub id: u16,
    /// Its pre-shared secret (relative paths are relative to the config file).
    pub psk_file: PathBuf,
    /// Its equalisation delay in gates.
    #[serde(default)]
    pub pulse_offset: i64,
    /// Its source.
    #[serde(default)]
    pub decoy: DecoyParams,
}

impl OltConfig {
    /// Parses a configuration; `base` resolves relative paths (the config file's folder).
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: OltConfig = parse_toml(text)?;
        for o in &mut cfg.onu {
            if o.psk_file.is_relative() {
                o.psk_file = base.join(&o.psk_file);
            }
        }
        for p in [&mut cfg.olt.data_dir, &mut cfg.olt.kek_file] {
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
        let bad = |field: &str, why: &str| Err(ConfigError::field(field, why));
        if self.olt.poll_ms == 0 || self.olt.poll_ms > 1000 {
            return bad("olt.poll_ms", "must be in 1..=1000");
        }
        if self.olt.stats_ms == 0 {
            return bad("olt.stats_ms", "must be at least 1");
        }
        if !self.olt.metrics_listen.is_empty() && self.olt.metrics_listen.parse::<SocketAddr>().is_err() {
            return bad("olt.metrics_listen", "must be host:port or empty");
        }
        if self.olt.data_dir.as_os_str().is_empty() {
            return bad("olt.data_dir", "must not be empty");
        }
        let ds = &self.downstream;
        if ds.enabled && ds.rotate_every_superframes == 0 && ds.rotate_every_bytes == 0 {
            return bad(
                "downstream.rotate_every_superframes",
                "with rotate_every_bytes = 0, keys would never rotate",
            );
        }
        if ds.otp_run_bytes == 0 || ds.otp_run_bytes > 1 << 20 {
            return bad("downstream.otp_run_bytes", "must be in 1..=1048576");
        }
        if ds.enabled && ds.lead_superframes == 0 {
            return bad(
                "downstream.lead_superframes",
                "must be at least 1 (the ONU needs the key before the switch)",
            );
        }
        let sch = &self.scheduling.scheduler;
        if let Err(e) = sch.validate() {
            return Err(ConfigError::field("scheduling.scheduler", e));
        }
        let n = self.onu.len() as u64;
        if n > 0 && n * (u64::from(sch.guard) + u64::from(sch.min_slot)) > u64::from(sch.frame_len) {
            return bad("scheduling.scheduler.frame_len", "too short for a minimum slot plus guard per ONU");
        }
        let target = self.scheduling.target_pool_bits;
        if target.is_nan() || target < 0.0 {
            return bad("scheduling.target_pool_bits", "must be ≥ 0");
        }
        if !(0.0..=1.0).contains(&self.scheduling.quality_alpha) || self.scheduling.quality_alpha == 0.0 {
            return bad("scheduling.quality_alpha", "must be in (0, 1]");
        }
        let mut ids: Vec<u16> = self.onu.iter().map(|o| o.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError(format!("invalid `onu`: id {} appears twice", w[0])));
        }
        for (i, o) in self.onu.iter().enumerate() {
            if let Err(e) = o.decoy.validate() {
                return Err(ConfigError(format!("invalid `onu[{i}].decoy`: {e}")));
            }
        }
        let ids: Vec<u16> = self.onu.iter().map(|o| o.id).collect();
        self.api.validate(ApiSide::Olt(&ids))?;
        Ok(())
    }

    /// The session configuration of ONU `entry`.
    pub fn session_for(&self, entry: &OnuEntry) -> SessionConfig {
        SessionConfig {
            onu: entry.id,
            decoy: entry.decoy,
            pulse_offset: entry.pulse_offset,
            ..self.session.clone()
        }
    }

    /// Worker threads to use.
    pub fn workers(&self) -> usize {
        match self.olt.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_parses_to_the_defaults() {
        let cfg = OltConfig::parse(DEFAULT_CONFIG, Path::new(".")).unwrap();
        assert_eq!(cfg.olt, NodeSection::default());
        assert_eq!(cfg.backend, BackendSection::default());
        assert_eq!(cfg.scheduling, SchedulingConfig::default());
        assert_eq!(cfg.session, SessionConfig::default());
        assert_eq!(cfg.monitor, MonitorConfig::default());
        assert!(cfg.onu.is_empty());
        // The shipped file's relative API paths resolve against its folder, like the
        // defaults do.
        let mut api = ApiSection::default();
        api.resolve_paths(Path::new("."));
        assert_eq!(cfg.api, api);
        assert!(!cfg.api.enabled());
    }

    #[test]
    fn errors_name_the_field() {
        let e = OltConfig::parse("[olt]\nlisen = \"x\"\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let e = OltConfig::parse("[session]\nblock_bits = -3\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("session.block_bits"), "{e}");
        let e = OltConfig::parse(
            "[[onu]]\nid = 1\npsk_file = \"a\"\n[[onu]]\nid = 1\npsk_file = \"b\"\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.0.contains("twice"), "{e}");
        let e = OltConfig::parse(
            "[[onu]]\nid = 1\npsk_file = \"a\"\ndecoy = { mu = [0.1, 0.2, 0.0], p = [0.3, 0.45, 0.25] }\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.0.contains("onu[0].decoy"), "{e}");
    }

    #[test]
    fn api_and_store_fields_are_checked() {
        let e = OltConfig::parse("[api]\nkey_size_bits = 12\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("api.key_size_bits"), "{e}");
        let onu = "[[onu]]\nid = 3\npsk_file = \"k\"\n";
        let e = OltConfig::parse(
            &format!("{onu}[[api.sae]]\nonu = 4\nmaster = \"a\"\nslave = \"b\"\n"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.0.contains("api.sae[0].onu"), "{e}");
        let e = OltConfig::parse("[api]\nlisten = \"x\"\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("api.listen"), "{e}");
        let e = OltConfig::parse("[olt]\ndata_dir = \"\"\n", Path::new(".")).unwrap_err();
        assert!(e.0.contains("olt.data_dir"), "{e}");
        let cfg = OltConfig::parse(
            &format!("[olt]\ndata_dir = \"d\"\nkek_file = \"kek\"\n{onu}[[api.sae]]\nonu = 3\nmaster = \"a\"\nslave = \"b\"\n"),
            Path::new("/etc/qpon"),
        )
        .unwrap();
        assert_eq!(cfg.olt.data_dir, PathBuf::from("/etc/qpon/d"));
        assert_eq!(cfg.olt.kek_file, PathBuf::from("/etc/qpon/kek"));
        assert_eq!(cfg.api.ca_file, PathBuf::from("/etc/qpon/certs/ca.pem"));
    }

    #[test]
    fn relative_psk_paths_follow_the_config_file() {
        let cfg =
            OltConfig::parse("[[onu]]\nid = 3\npsk_file = \"k/3.psk\"\n", Path::new("/etc/qpon")).unwrap();
        assert_eq!(cfg.onu[0].psk_file, PathBuf::from("/etc/qpon/k/3.psk"));
        assert_eq!(cfg.session_for(&cfg.onu[0]).onu, 3);
    }
}
