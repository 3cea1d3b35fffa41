//! # qpon-onu — the ONU driver
//!
//! Will hold: the ONU driver library and the `onu` binary. Protocol logic belongs in
//! `qpon-qkd` and `qpon-mux`, not here.
//!
//! Nothing is implemented yet; see the README's features table.
#![forbid(unsafe_code)]
