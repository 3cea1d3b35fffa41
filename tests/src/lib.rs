//! # qpon-tests — end-to-end tests across crates and processes
//!
//! Cross-crate scenarios live in `tests/` beside this file (the root manifest is a
//! virtual workspace, so this is a crate of its own rather than Cargo's `tests/` folder of
//! one crate). The helpers here build the emulated PONs the scenarios share.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use qpon_sim::planning::{RateReport, rate};
use qpon_sim::pon::{PonOptions, PonReport, run};
use qpon_sim::scenario::{DetectorProfile, EveCfg, Pon, Scenario};

/// A resolved scenario: `onus` ONUs at the defaults (10 km, 1:N splitter), SNSPDs,
/// blocks of 10⁵, with the given eavesdroppers (`--eve` syntax).
pub fn scenario(onus: usize, eve: &[&str]) -> Pon {
    let mut s = Scenario { onus, ..Scenario::default() };
    s.receiver.detector = DetectorProfile::Snspd;
    for e in eve {
        s.eve.push(EveCfg::parse_cli(e).expect("valid eve spec"));
    }
    s.resolve().expect("valid scenario")
}

/// Runs the emulation for `seconds` with frame loss `drop_chance`, on two workers.
pub fn emulate(pon: &Pon, seconds: f64, drop_chance: f64, seed: u64) -> PonReport {
    let opts = PonOptions { seconds, seed, drop_chance, workers: 2, ..PonOptions::default() };
    run(pon, &opts, |_| {})
}

/// The analytic planning report for the same PON.
pub fn plan(pon: &Pon) -> RateReport {
    rate(pon)
}
