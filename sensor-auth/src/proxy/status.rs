//! The proxy's status endpoint (`status_listen`): `GET /status` (JSON) and `GET /metrics`
//! (Prometheus text), served with `qpon-node`'s endpoint. While a proxy runs its key store
//! is locked, so this is where its pad budget and forgery bound are read.

use super::Role;
use crate::Status;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// What `/status` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProxyStatus {
    /// `control` or `field`.
    pub role: String,
    /// The outward connection: link to the field proxy (control), device connection (field).
    pub link_up: bool,
    /// The library end's counters and levels.
    pub auth: Status,
}

impl qpon_node::StatusPage for ProxyStatus {
    fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let role = &self.role;
        let mut metric = |name: &str, kind: &str, help: &str, values: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP qpon_sensor_auth_{name} {help}");
            let _ = writeln!(out, "# TYPE qpon_sensor_auth_{name} {kind}");
            for (labels, v) in values {
                let sep = if labels.is_empty() { "" } else { "," };
                let _ = writeln!(out, "qpon_sensor_auth_{name}{{role=\"{role}\"{sep}{labels}}} {v}");
            }
        };
        let one = |v: f64| [(String::new(), v)];
        let s = &self.auth;
        metric(
            "link_up",
            "gauge",
            "Outward connection up (1) or down (0).",
            &one(f64::from(u8::from(self.link_up))),
        );
        metric("frames_sealed_total", "counter", "Frames sealed.", &one(s.frames_sealed as f64));
        metric("frames_opened_total", "counter", "Frames accepted.", &one(s.frames_opened as f64));
        let rejected: Vec<(String, f64)> =
            s.rejected.iter().map(|(k, v)| (format!("reason=\"{k}\""), *v as f64)).collect();
        metric("rejected_total", "counter", "Refusals by reason.", &rejected);
        metric("verifications_total", "counter", "Tag verifications.", &one(s.verifications as f64));
        metric(
            "forgery_bound_total",
            "gauge",
            "Union bound on the probability that any verification accepted a forgery.",
            &one(s.forgery_bound_total),
        );
        metric(
            "forgery_bound_worst_case",
            "gauge",
            "The same, every attempt charged at the longest frame.",
            &one(s.forgery_bound_worst_case),
        );
        metric(
            "pool_remaining_bytes",
            "gauge",
            "Unused bytes in the pool.",
            &one(s.pool_remaining_bytes as f64),
        );
        metric(
            "batch_remaining_bytes",
            "gauge",
            "Unused bytes in the current batch.",
            &one(s.batch_remaining_bytes as f64),
        );
        metric("batches_total", "counter", "Batches taken from the pool.", &one(s.batches as f64));
        metric("outstanding", "gauge", "Requests in flight.", &one(s.outstanding as f64));
        let alarm = s.alarm.map(|a| format!("{a:?}").to_lowercase()).unwrap_or_else(|| "none".into());
        metric(
            "alarm",
            "gauge",
            "The alarm (1 while raised).",
            &[(format!("alarm=\"{alarm}\""), f64::from(u8::from(s.alarm.is_some())))],
        );
        out
    }
}

/// Keeps `page` in step with the hub's published status and link state.
pub(super) async fn follow(
    role: Role,
    mut status: watch::Receiver<Status>,
    mut link: watch::Receiver<bool>,
    page: Arc<RwLock<ProxyStatus>>,
) {
    let role = match role {
        Role::Control => "control",
        Role::Field => "field",
    };
    loop {
        {
            let snapshot = ProxyStatus {
                role: role.into(),
                link_up: *link.borrow_and_update(),
                auth: status.borrow_and_update().clone(),
            };
            *page.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
        }
        tokio::select! {
            r = status.changed() => if r.is_err() { return },
            r = link.changed() => if r.is_err() { return },
        }
    }
}
