//! What the `onu` binary reports about itself: one [`OnuStatus`] snapshot, served as
//! Prometheus text on `/metrics`, as JSON on `/status`, and printed by `onu status`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The ONU at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OnuStatus {
    /// ONU id.
    pub onu: u16,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Whether the connection to the OLT is up.
    pub connected: bool,
    /// Connections established so far.
    pub connections: u64,
    /// Finished blocks.
    pub blocks: u64,
    /// Secret bits made.
    pub secret_bits: u64,
    /// Secret bits per second since start.
    pub key_rate_bits_per_s: f64,
    /// Unused bits in the pool.
    pub pool_bits: u64,
    /// Blocks committed to the pool (from the store: since the store was created).
    #[serde(default)]
    pub committed_blocks: u64,
    /// Bytes consumed from the pool, by purpose (from the store; empty for an in-memory
    /// pool).
    #[serde(default)]
    pub consumed_bytes: BTreeMap<String, u64>,
    /// Authentication key spent, bits.
    pub auth_bits_spent: u64,
    /// Blocks discarded because the OLT did not commit them (from the store: since the
    /// store was created).
    pub discarded: u64,
    /// Frames refused (bad tags, replays, malformed).
    pub refused_frames: u64,
    /// Pulse look-ups the source could not serve.
    pub source_errors: u64,
    /// Aborted blocks by reason.
    pub aborted: BTreeMap<String, u64>,
    /// Downstream keys installed from the OLT's announcements.
    pub downstream_keys: u64,
}

impl qpon_node::StatusPage for OnuStatus {
    fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let onu = self.onu;
        let mut one = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP qpon_onu_{name} {help}\n# TYPE qpon_onu_{name} {kind}");
            let _ = writeln!(out, "qpon_onu_{name}{{onu=\"{onu}\"}} {v}");
        };
        one(
            "connected",
            "gauge",
            "1 while the connection to the OLT is up.",
            f64::from(u8::from(self.connected)),
        );
        one("connections_total", "counter", "Connections to the OLT established.", self.connections as f64);
        one("blocks_total", "counter", "Finished key blocks.", self.blocks as f64);
        one("secret_bits_total", "counter", "Secret key bits made.", self.secret_bits as f64);
        one(
            "key_rate_bits_per_second",
            "gauge",
            "Secret bits per second since start.",
            self.key_rate_bits_per_s,
        );
        one("pool_bits", "gauge", "Unused key bits in the pool.", self.pool_bits as f64);
        one(
            "pool_committed_blocks_total",
            "counter",
            "Blocks committed to the pool.",
            self.committed_blocks as f64,
        );
        one(
            "auth_bits_spent_total",
            "counter",
            "Authentication key spent, bits.",
            self.auth_bits_spent as f64,
        );
        one("discarded_blocks_total", "counter", "Blocks the OLT did not commit.", self.discarded as f64);
        one("refused_frames_total", "counter", "Classical frames refused.", self.refused_frames as f64);
        one(
            "source_errors_total",
            "counter",
            "Pulse look-ups the source could not serve.",
            self.source_errors as f64,
        );
        one(
            "downstream_keys_total",
            "counter",
            "Downstream keys installed from the OLT's announcements.",
            self.downstream_keys as f64,
        );
        one("uptime_seconds", "gauge", "Seconds since start.", self.uptime_s);
        let _ = writeln!(out, "# HELP qpon_onu_pool_consumed_bytes_total Key bytes consumed, by purpose.");
        let _ = writeln!(out, "# TYPE qpon_onu_pool_consumed_bytes_total counter");
        for (p, n) in &self.consumed_bytes {
            let _ = writeln!(out, "qpon_onu_pool_consumed_bytes_total{{onu=\"{onu}\",purpose=\"{p}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP qpon_onu_aborted_blocks_total Aborted blocks by reason.");
        let _ = writeln!(out, "# TYPE qpon_onu_aborted_blocks_total counter");
        for (r, n) in &self.aborted {
            let _ = writeln!(out, "qpon_onu_aborted_blocks_total{{onu=\"{onu}\",reason=\"{r}\"}} {n}");
        }
        out
    }
}

impl OnuStatus {
    /// A table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, String); 14] = [
            ("onu", self.onu.to_string()),
            ("connection", if self.connected { "up".into() } else { "down".into() }),
            ("connections", self.connections.to_string()),
            ("blocks", self.blocks.to_string()),
            ("secret bits", self.secret_bits.to_string()),
            ("key rate, bit/s", format!("{:.0}", self.key_rate_bits_per_s)),
            ("pool bits", self.pool_bits.to_string()),
            ("committed blocks", self.committed_blocks.to_string()),
            ("auth bits spent", self.auth_bits_spent.to_string()),
            ("discarded blocks", self.discarded.to_string()),
            ("refused frames", self.refused_frames.to_string()),
            ("source errors", self.source_errors.to_string()),
            ("downstream keys", self.downstream_keys.to_string()),
            ("uptime, s", format!("{:.1}", self.uptime_s)),
        ];
        for (k, v) in rows {
            let _ = writeln!(out, "{k:>24}  {v}");
        }
        for (p, n) in &self.consumed_bytes {
            let _ = writeln!(out, "{:>24}  {n}", format!("consumed {p}"));
        }
        for (r, n) in &self.aborted {
            let _ = writeln!(out, "{:>24}  {n}", format!("aborted {r}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qpon_node::StatusPage;

    #[test]
    fn pool_figures_in_metrics_table_and_json() {
        let s = OnuStatus {
            onu: 2,
            committed_blocks: 5,
            discarded: 1,
            consumed_bytes: BTreeMap::from([("api".to_string(), 64), ("downstream".to_string(), 0)]),
            ..OnuStatus::default()
        };
        let t = s.to_prometheus();
        assert!(t.contains("qpon_onu_pool_committed_blocks_total{onu=\"2\"} 5"), "{t}");
        assert!(t.contains("qpon_onu_pool_consumed_bytes_total{onu=\"2\",purpose=\"api\"} 64"), "{t}");
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(t.contains(&format!("# TYPE {name} ")), "{name} undeclared");
        }
        assert!(s.to_table().contains("consumed api"), "{}", s.to_table());
        let back: OnuStatus = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
