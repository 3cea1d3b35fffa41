//! # qpon-olt — the OLT driver
//!
//! Will hold: the OLT driver library and the `olt` binary — one receiver, N ONU sessions,
//! the scheduler, pools, downstream keys, monitors, the key-delivery API and metrics.
//! Protocol logic belongs in `qpon-qkd` and `qpon-mux`, not here.
//!
//! Nothing is implemented yet; see the README's features table.
#![forbid(unsafe_code)]
