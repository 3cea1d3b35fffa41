//! # qpon-olt — the OLT driver
//!
//! [`OltDriver`] runs one shared receiver for many ONUs: it demultiplexes the detector's
//! records by slot map into one [`qpon_qkd::session::OltSession`] per ONU, runs the
//! sessions' work on a bounded set of worker threads, appends finished blocks to each
//! ONU's pool and keeps the per-ONU statistics the monitor and the metrics read. Like the
//! sessions it drives, it is sans-IO: the caller (the `qpon-sim pon` emulation today, the
//! `olt` binary later) feeds it detections, frames and the time, and sends what it
//! returns. Protocol logic lives in `qpon-qkd` and `qpon-mux`, not here.
//!
//! Still to come (see the README's features table): the `olt` binary (TCP, config,
//! metrics endpoint) and the monitor's alarms.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod driver;
pub mod stats;

// The public interface is:
pub use driver::{OltDriver, OnuLink, run_parallel};
pub use stats::OnuStats;
