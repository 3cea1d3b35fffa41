//! # qpon-node — plumbing shared by the qpon binaries
//!
//! `olt`, `onu` (and later `sensor-auth`) are long-running services with the same needs:
//! TOML configuration files whose errors name the field, pre-shared secrets on disk,
//! structured logs, clean shutdown on SIGINT/SIGTERM, and an HTTP endpoint serving
//! Prometheus `/metrics` and a JSON `/status` that their `status` subcommand prints, the
//! persistent key store in their data directory ([`store`]) and the ETSI GS QKD 014 API
//! they serve from it ([`api`]). None of this is protocol logic; it lives here once instead
//! of in each binary.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod http;
pub mod logging;
pub mod psk;
pub mod store;

pub use config::{ConfigError, parse_toml};
pub use http::{StatusPage, fetch, serve_status};
pub use psk::{MIN_PSK_BYTES, read_psk, write_psk};
pub use store::{PoolFigures, PoolSource, StoreSettings, open_store, resolve_kek};

/// Length of a (XG)S-PON superframe: 125 µs.
pub const SUPERFRAME_NS: u64 = 125_000;

/// The services' downstream superframe counter: UNIX time in 125 µs superframes. Both ends
/// read it from their own clock (kept close by NTP), it never goes back across restarts
/// (a restarted OLT's counters stay ahead of every block it used before), and a key
/// announced to apply from superframe S switches at nearly the same instant at both ends.
/// The boards (hardware issue) will carry the PON's own superframe counter instead.
pub fn wall_superframe() -> u64 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    ns / SUPERFRAME_NS
}

/// Why a service did not start (the `olt` and `onu` services share these causes).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket (or the service's thread) could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address (or what could not be started).
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key store could not be read to resume a session.
    #[error("key store: {0}")]
    Store(String),
}

/// The `status` subcommand of a service: fetches `/status` from `addr` and prints it as
/// JSON (`json`) or as the table `table` makes of it. The error is for standard error.
pub fn print_status<T: serde::de::DeserializeOwned>(
    addr: &str,
    json: bool,
    table: impl FnOnce(&T) -> String,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let body = rt.block_on(fetch(addr, "/status"))?;
    if json {
        println!("{body}");
    } else {
        let s: T = serde_json::from_str(&body).map_err(|e| format!("bad status from {addr}: {e}"))?;
        print!("{}", table(&s));
    }
    Ok(())
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM; Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
