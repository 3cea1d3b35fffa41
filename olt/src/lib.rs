//! # qpon-olt — the OLT driver and service
//!
//! [`OltDriver`] runs one shared receiver for many ONUs: it demultiplexes the detector's
//! records by slot map into one [`qpon_qkd::session::OltSession`] per ONU, runs the
//! sessions' work on a bounded set of worker threads, appends finished blocks to each
//! ONU's pool and keeps the per-ONU statistics the monitor and the metrics read. Like the
//! sessions it drives, it is sans-IO: the caller (the `qpon-sim pon` emulation, or
//! [`service`]) feeds it detections, frames and the time, and sends what it returns.
//! Protocol logic lives in `qpon-qkd` and `qpon-mux`, not here.
//!
//! [`service`] puts the driver behind TCP (tokio), a real clock and a status endpoint; the
//! `olt` binary runs it from a [`config`] file.
//!
//! [`monitor`] watches every ONU's statistics and the receiver's status and raises
//! alarms naming the ONU and the anomaly (detector blinding, intercept-resend, …).
//!
//! Still to come (see the README's features table): the detector-board backend of the
//! binary (hardware issue).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod downstream;
pub mod driver;
pub mod monitor;
pub mod scheduling;
pub mod service;
pub mod stats;
pub mod status;

// The public interface is:
pub use downstream::{DownstreamConfig, DownstreamStats, OltDownstream, OnPoolEmpty, SealError};
pub use driver::{OltDriver, OnuLink, run_parallel};
pub use monitor::{Alarm, AlarmKind, Monitor, MonitorConfig};
pub use scheduling::{OnuScheduling, ScheduleStepError, SchedulingConfig};
pub use stats::OnuStats;
