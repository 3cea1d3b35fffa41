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

/// The configuration text of an OLT service for the in-process service tests: the
/// scenario's ONUs (their pulse offsets from the fibre lengths, their decoy sources), its
/// frame and guard, fast timers, blocks of 10⁵ bits; `olt_extra` is appended to the `[olt]`
/// section and `tail` to the end (e.g. an `[api]` section).
pub fn olt_config_text(pon: &Pon, olt_extra: &str, tail: &str) -> String {
    let map = qpon_sim::pon::mux_map(pon);
    let mut text = format!(
        "[olt]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nworkers = 2\npoll_ms = 5\nstats_ms = 50\n\
         {olt_extra}\
         [session]\nblock_bits = 100000\nauth_share_bytes = 128\n\
         [scheduling.scheduler]\nframe_len = {}\nguard = {}\nframes_per_period = 8000\npolicy = \"equal-gates\"\n",
        map.frame_len(),
        map.guard()
    );
    for (k, o) in pon.onus.iter().enumerate() {
        let delay =
            (o.length_km * qpon_sim::sampler::GATES_PER_KM_AT_1GHZ * pon.gate_rate_hz / 1e9).round() as i64;
        let d = o.model.source;
        text.push_str(&format!(
            "[[onu]]\nid = {k}\npsk_file = \"onu-{k}.psk\"\npulse_offset = {delay}\n\
             decoy = {{ mu = {:?}, p = {:?} }}\n",
            d.mu, d.p
        ));
    }
    text.push_str(tail);
    text
}

/// The configuration text of ONU `k`'s service, matching its entry in the OLT's
/// configuration `olt`, connecting to `addr`; `onu_extra` is appended to the `[onu]`
/// section and `tail` to the end.
pub fn onu_config_text(
    olt: &qpon_olt::config::OltConfig,
    k: u16,
    addr: std::net::SocketAddr,
    onu_extra: &str,
    tail: &str,
) -> String {
    let e = &olt.onu[usize::from(k)];
    format!(
        "[onu]\nid = {k}\npsk_file = \"onu-{k}.psk\"\nolt = \"{addr}\"\n{onu_extra}\
         pulse_offset = {}\ndecoy = {{ mu = {:?}, p = {:?} }}\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n\
         poll_ms = 2\nstats_ms = 50\n[session]\nblock_bits = 100000\nauth_share_bytes = 128\n{tail}",
        e.pulse_offset, e.decoy.mu, e.decoy.p
    )
}

/// Waits (polling every 25 ms) until `f` holds; panics naming `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
