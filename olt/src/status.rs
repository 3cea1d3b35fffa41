//! What the `olt` binary reports about itself: one [`OltStatus`] snapshot, refreshed by the
//! driver loop, served as Prometheus text on `/metrics`, as JSON on `/status`, and printed
//! as a table by `olt status`.

use crate::driver::OltDriver;
use qpon_kms::KeyStore;
use qpon_mux::OnuId;
use qpon_node::PoolFigures;
use qpon_qkd::time::Instant;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The OLT at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OltStatus {
    /// Seconds since start.
    pub uptime_s: f64,
    /// Detections in guard or idle gates, or of ONUs not served.
    pub unattributed: u64,
    /// Per ONU, by id.
    pub onus: Vec<OnuStatus>,
}

/// One ONU as the OLT sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OnuStatus {
    /// ONU id.
    pub onu: u16,
    /// Whether its classical connection is up.
    pub connected: bool,
    /// Its activation phase (ranged, authenticated, active, lost; empty without
    /// scheduling).
    pub phase: String,
    /// Share of the receiver's gates it owns in the current slot map.
    pub slot_share: f64,
    /// Detections attributed to it.
    pub detections: u64,
    /// Key-basis QBER over finished blocks.
    pub qber: f64,
    /// Finished blocks.
    pub blocks: u64,
    /// Secret bits made.
    pub secret_bits: u64,
    /// Secret bits per second since start.
    pub key_rate_bits_per_s: f64,
    /// Unused bits in its pool.
    pub pool_bits: u64,
    /// Blocks committed to its pool (from the store: since the store was created).
    #[serde(default)]
    pub committed_blocks: u64,
    /// Blocks discarded from its pool (from the store: since the store was created).
    #[serde(default)]
    pub discarded_blocks: u64,
    /// Bytes consumed from its pool, by purpose (from the store; empty for in-memory
    /// pools).
    #[serde(default)]
    pub consumed_bytes: BTreeMap<String, u64>,
    /// Authentication key (hash keys and pads) spent, bits.
    pub auth_bits_spent: u64,
    /// Frames refused (bad tags, replays, malformed).
    pub refused_frames: u64,
    /// Aborted blocks by reason.
    pub aborted: BTreeMap<String, u64>,
    /// Alarms raised for it.
    pub alarms: Vec<String>,
    /// ETSI API keys issued from its pool.
    pub api_keys: u64,
    /// Downstream keys taken from its pool and announced (0 with downstream encryption off).
    pub downstream_keys: u64,
    /// The newest downstream alarm (e.g. pool empty when a rotation was due), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_alarm: Option<String>,
}

impl qpon_node::StatusPage for OltStatus {
    fn to_prometheus(&self) -> String {
        OltStatus::to_prometheus(self)
    }
}

impl OltStatus {
    /// A snapshot of `driver` at `now` (`connected` says which ONUs have a connection).
    pub fn capture<R: CryptoRng + Send>(
        driver: &OltDriver<R>,
        now: Instant,
        connected: impl Fn(u16) -> bool,
    ) -> Self {
        let uptime_s = now.as_secs_f64();
        let map = driver.slots().latest();
        let onus = driver
            .onus()
            .map(|(&onu, l)| {
                let s = &l.stats;
                let pool = PoolFigures::from_pool(l.pool.as_ref(), s.discarded);
                OnuStatus {
                    onu,
                    connected: connected(onu),
                    phase: driver.activation(onu).map(|a| format!("{:?}", a.phase())).unwrap_or_default(),
                    slot_share: map.share(OnuId(onu)),
                    detections: s.detections,
                    qber: s.qber(),
                    blocks: s.blocks,
                    secret_bits: s.secret_bits,
                    key_rate_bits_per_s: if uptime_s > 0.0 { s.secret_bits as f64 / uptime_s } else { 0.0 },
                    pool_bits: pool.pool_bits,
                    committed_blocks: pool.committed_blocks,
                    discarded_blocks: pool.discarded_blocks,
                    consumed_bytes: pool.consumed_bytes,
                    auth_bits_spent: l.session.auth_bits_spent(),
                    refused_frames: l.refused(),
                    aborted: s.aborted.clone(),
                    alarms: driver.alarms(onu).map(|a| a.to_string()).collect(),
                    api_keys: s.api_keys,
                    downstream_keys: l.downstream().map_or(0, |d| d.stats().keys_installed),
                    downstream_alarm: l.downstream().and_then(|d| d.stats().alarm).map(|a| format!("{a:?}")),
                }
            })
            .collect();
        OltStatus { uptime_s, unattributed: driver.unattributed(), onus }
    }

    /// Replaces the pool figures with the store's (lifetime totals, per-purpose
    /// consumption). An ONU whose figures cannot be read keeps the driver's.
    pub fn add_store_figures(&mut self, store: &KeyStore) {
        for o in &mut self.onus {
            match PoolFigures::from_store(&store.pool(o.onu)) {
                Ok(f) => o.set_pool(f),
                Err(e) => tracing::debug!(onu = o.onu, error = %e, "pool figures unavailable"),
            }
        }
    }

    /// Prometheus text exposition format (version 0.0.4), one series per ONU.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric =
            |name: &str, kind: &str, help: &str, values: &mut dyn Iterator<Item = (String, f64)>| {
                let _ = writeln!(out, "# HELP qpon_olt_{name} {help}");
                let _ = writeln!(out, "# TYPE qpon_olt_{name} {kind}");
                for (labels, v) in values {
                    let _ = writeln!(out, "qpon_olt_{name}{{{labels}}} {v}");
                }
            };
        let per_onu = |f: fn(&OnuStatus) -> f64| {
            let v: Vec<(String, f64)> =
                self.onus.iter().map(|o| (format!("onu=\"{}\"", o.onu), f(o))).collect();
            v.into_iter()
        };
        metric(
            "connected",
            "gauge",
            "1 while the ONU's classical connection is up.",
            &mut per_onu(|o| f64::from(u8::from(o.connected))),
        );
        metric(
            "slot_share",
            "gauge",
            "Share of the receiver's gates the ONU owns.",
            &mut per_onu(|o| o.slot_share),
        );
        metric(
            "detections_total",
            "counter",
            "Detections attributed to the ONU.",
            &mut per_onu(|o| o.detections as f64),
        );
        metric("qber", "gauge", "Key-basis QBER over finished blocks.", &mut per_onu(|o| o.qber));
        metric("blocks_total", "counter", "Finished key blocks.", &mut per_onu(|o| o.blocks as f64));
        metric(
            "secret_bits_total",
            "counter",
            "Secret key bits made.",
            &mut per_onu(|o| o.secret_bits as f64),
        );
        metric(
            "key_rate_bits_per_second",
            "gauge",
            "Secret bits per second since start.",
            &mut per_onu(|o| o.key_rate_bits_per_s),
        );
        metric(
            "pool_bits",
            "gauge",
            "Unused key bits in the ONU's pool.",
            &mut per_onu(|o| o.pool_bits as f64),
        );
        metric(
            "pool_committed_blocks_total",
            "counter",
            "Blocks committed to the ONU's pool.",
            &mut per_onu(|o| o.committed_blocks as f64),
        );
        metric(
            "pool_discarded_blocks_total",
            "counter",
            "Blocks discarded from the ONU's pool.",
            &mut per_onu(|o| o.discarded_blocks as f64),
        );
        metric(
            "api_keys_total",
            "counter",
            "ETSI GS QKD 014 keys issued from the ONU's pool.",
            &mut per_onu(|o| o.api_keys as f64),
        );
        metric(
            "downstream_keys_total",
            "counter",
            "Downstream encryption keys taken from the ONU's pool and announced.",
            &mut per_onu(|o| o.downstream_keys as f64),
        );
        let consumed: Vec<(String, f64)> = self
            .onus
            .iter()
            .flat_map(|o| {
                o.consumed_bytes
                    .iter()
                    .map(move |(p, n)| (format!("onu=\"{}\",purpose=\"{p}\"", o.onu), *n as f64))
            })
            .collect();
        metric(
            "pool_consumed_bytes_total",
            "counter",
            "Key bytes consumed from the ONU's pool, by purpose.",
            &mut consumed.into_iter(),
        );
        metric(
            "auth_bits_spent_total",
            "counter",
            "Authentication key spent (hash keys and pads), bits.",
            &mut per_onu(|o| o.auth_bits_spent as f64),
        );
        metric(
            "refused_frames_total",
            "counter",
            "Classical frames refused (bad tag, replay, malformed).",
            &mut per_onu(|o| o.refused_frames as f64),
        );
        metric("alarms", "gauge", "Alarms raised for the ONU.", &mut per_onu(|o| o.alarms.len() as f64));
        let aborted: Vec<(String, f64)> = self
            .onus
            .iter()
            .flat_map(|o| {
                o.aborted.iter().map(move |(r, n)| (format!("onu=\"{}\",reason=\"{r}\"", o.onu), *n as f64))
            })
            .collect();
        metric("aborted_blocks_total", "counter", "Aborted blocks by reason.", &mut aborted.into_iter());
        let _ =
            writeln!(out, "# HELP qpon_olt_unattributed_detections_total Detections in guard or idle gates.");
        let _ = writeln!(out, "# TYPE qpon_olt_unattributed_detections_total counter");
        let _ = writeln!(out, "qpon_olt_unattributed_detections_total {}", self.unattributed);
        let _ = writeln!(out, "# HELP qpon_olt_uptime_seconds Seconds since start.");
        let _ = writeln!(out, "# TYPE qpon_olt_uptime_seconds gauge");
        let _ = writeln!(out, "qpon_olt_uptime_seconds {}", self.uptime_s);
        out
    }

    /// A table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>5} {:>4} {:>7} {:>12} {:>7} {:>7} {:>13} {:>11} {:>11} {:>9} {:>9} {:>10}  {:<24}  alarms",
            "onu",
            "conn",
            "share",
            "detections",
            "qber%",
            "blocks",
            "secret bits",
            "rate b/s",
            "pool bits",
            "committed",
            "discarded",
            "auth bits",
            "consumed bytes"
        );
        for o in &self.onus {
            let _ = writeln!(
                out,
                "{:>5} {:>4} {:>7.4} {:>12} {:>7.3} {:>7} {:>13} {:>11.0} {:>11} {:>9} {:>9} {:>10}  {:<24}  {}",
                o.onu,
                if o.connected { "up" } else { "down" },
                o.slot_share,
                o.detections,
                o.qber * 100.0,
                o.blocks,
                o.secret_bits,
                o.key_rate_bits_per_s,
                o.pool_bits,
                o.committed_blocks,
                o.discarded_blocks,
                o.auth_bits_spent,
                consumed_summary(&o.consumed_bytes),
                if o.alarms.is_empty() { "-".to_string() } else { o.alarms.join("; ") }
            );
        }
        let _ = writeln!(out, "uptime {:.1} s, unattributed detections {}", self.uptime_s, self.unattributed);
        out
    }
}

impl OnuStatus {
    fn set_pool(&mut self, f: PoolFigures) {
        self.pool_bits = f.pool_bits;
        self.committed_blocks = f.committed_blocks;
        self.discarded_blocks = f.discarded_blocks;
        self.consumed_bytes = f.consumed_bytes;
    }
}

/// `api=64 classical_auth=0…` without the zeros; `-` when nothing was consumed.
pub(crate) fn consumed_summary(c: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = c.iter().filter(|(_, n)| **n > 0).map(|(p, n)| format!("{p}={n}")).collect();
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OltStatus {
        OltStatus {
            uptime_s: 2.0,
            unattributed: 5,
            onus: vec![OnuStatus {
                onu: 7,
                connected: true,
                blocks: 3,
                committed_blocks: 4,
                consumed_bytes: BTreeMap::from([("api".to_string(), 64), ("downstream".to_string(), 0)]),
                aborted: BTreeMap::from([("BoundZero".to_string(), 2)]),
                ..OnuStatus::default()
            }],
        }
    }

    #[test]
    fn prometheus_text_has_help_type_and_labelled_series() {
        let t = sample().to_prometheus();
        assert!(t.contains("# TYPE qpon_olt_blocks_total counter\nqpon_olt_blocks_total{onu=\"7\"} 3\n"));
        assert!(t.contains("qpon_olt_aborted_blocks_total{onu=\"7\",reason=\"BoundZero\"} 2"));
        assert!(t.contains("qpon_olt_connected{onu=\"7\"} 1"));
        assert!(t.contains("qpon_olt_pool_committed_blocks_total{onu=\"7\"} 4"));
        assert!(t.contains("qpon_olt_pool_consumed_bytes_total{onu=\"7\",purpose=\"api\"} 64"));
        // Every sample line belongs to a declared metric.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(t.contains(&format!("# TYPE {name} ")), "{name} undeclared");
        }
    }

    #[test]
    fn status_round_trips_as_json() {
        let s = sample();
        let back: OltStatus = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(s.to_table().contains("BoundZero") || s.to_table().contains("   7"));
        assert!(s.to_table().contains("api=64"), "{}", s.to_table());
    }
}
