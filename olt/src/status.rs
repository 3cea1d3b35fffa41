//! What the `olt` binary reports about itself: one [`OltStatus`] snapshot, refreshed by the
//! driver loop, served as Prometheus text on `/metrics`, as JSON on `/status`, and printed
//! as a table by `olt status`.

use crate::driver::OltDriver;
use qpon_mux::OnuId;
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
    /// Authentication key (hash keys and pads) spent, bits.
    pub auth_bits_spent: u64,
    /// Frames refused (bad tags, replays, malformed).
    pub refused_frames: u64,
    /// Aborted blocks by reason.
    pub aborted: BTreeMap<String, u64>,
    /// Alarms raised for it.
    pub alarms: Vec<String>,
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
                    pool_bits: l.pool.level_bits(),
                    auth_bits_spent: l.session.auth_bits_spent(),
                    refused_frames: l.refused(),
                    aborted: s.aborted.clone(),
                    alarms: driver.alarms(onu).map(|a| a.to_string()).collect(),
                }
            })
            .collect();
        OltStatus { uptime_s, unattributed: driver.unattributed(), onus }
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
            "{:>5} {:>4} {:>7} {:>12} {:>7} {:>7} {:>13} {:>11} {:>11} {:>10}  alarms",
            "onu",
            "conn",
            "share",
            "detections",
            "qber%",
            "blocks",
            "secret bits",
            "rate b/s",
            "pool bits",
            "auth bits"
        );
        for o in &self.onus {
            let _ = writeln!(
                out,
                "{:>5} {:>4} {:>7.4} {:>12} {:>7.3} {:>7} {:>13} {:>11.0} {:>11} {:>10}  {}",
                o.onu,
                if o.connected { "up" } else { "down" },
                o.slot_share,
                o.detections,
                o.qber * 100.0,
                o.blocks,
                o.secret_bits,
                o.key_rate_bits_per_s,
                o.pool_bits,
                o.auth_bits_spent,
                if o.alarms.is_empty() { "-".to_string() } else { o.alarms.join("; ") }
            );
        }
        let _ = writeln!(out, "uptime {:.1} s, unattributed detections {}", self.uptime_s, self.unattributed);
        out
    }
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
    }
}
