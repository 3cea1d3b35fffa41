//! `qpon-sim pon`: the whole-PON emulation — the project's main job.
//!
//! The same OLT and ONU drivers as the binaries, the event sampler as their hardware,
//! smoltcp TCP/IP on a simulated PON medium with per-ONU fibre delay and seeded packet
//! loss, one discrete-event clock. Prints per ONU: slot share, detections, QBER, blocks, secret bits, key rate,
//! authentication bits spent, pool level, alarms; and the aggregates. The same seed gives
//! the same report.
//!
//! JSON (`--json [FILE]`): `{"onus":[{"onu":k, "slot_share":…, "detections":…, "qber":…,
//! "blocks":…, "secret_bits":…, "key_rate_bits_per_s":…, "auth_bits_spent":…,
//! "pool_bits":…, "alarms":[…]}, …], "aggregate":{…}}`.

use super::CliError;
use super::io::write_json;
use super::rate::{ScenarioArgs, resolve};
use crate::pon::{Churn, ChurnAction, Medium, PonOptions, PonReport, run};
use crate::scenario::DetectorProfile;
use std::path::PathBuf;

/// Arguments of `qpon-sim pon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of ONUs (overrides the scenario).
    #[arg(long, default_value_t = 32)]
    pub onus: usize,
    /// Virtual seconds to emulate.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Detector profile (snspd unless a scenario file says otherwise).
    #[arg(long, value_enum)]
    pub detector: Option<DetectorProfile>,
    /// Fibre length of every ONU, km (overrides the scenario's default length).
    #[arg(long, value_name = "KM", allow_negative_numbers = true)]
    pub fiber_km: Option<f64>,
    /// Block size: sifted key-basis detections per block (default 1e5).
    #[arg(long, value_name = "B")]
    pub block: Option<f64>,
    /// Seed of the emulation (medium faults, sessions' public randomness, pre-shared
    /// secrets); the sampler's seed is the scenario's.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Probability that a packet on the medium is lost.
    #[arg(long, default_value_t = 0.0)]
    pub drop_chance: f64,
    /// What carries the classical channel: TCP/IP (smoltcp) or one datagram per frame
    /// (the sessions retransmit, with a 5 ms timeout).
    #[arg(long, value_enum, default_value_t = Medium::Tcp)]
    pub medium: Medium,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How the scheduler shares the receiver: equal gates (the scenario's shares, which
    /// `qpon-sim rate` assumes) or max-min fair key rate.
    #[arg(long, value_enum, default_value_t = PolicyArg::EqualGates)]
    pub policy: PolicyArg,
    /// Scheduling period, virtual seconds (the slot map is recomputed once per period).
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub period: f64,
    /// An ONU goes dark at a virtual time: `ONU@SECONDS` (repeatable), e.g. `--leave 5@10`.
    #[arg(long, value_name = "ONU@S", value_parser = parse_churn)]
    pub leave: Vec<(usize, f64)>,
    /// An ONU joins (or comes back) at a virtual time: `ONU@SECONDS` (repeatable), e.g.
    /// `--join 5@20`. An ONU whose first event is a join starts dark.
    #[arg(long, value_name = "ONU@S", value_parser = parse_churn)]
    pub join: Vec<(usize, f64)>,
    /// Downstream traffic: this many frames per second to every ONU, encrypted with keys
    /// from its pool and broadcast through the splitter (0 = off).
    #[arg(long, value_name = "FPS", default_value_t = 0.0)]
    pub downstream_fps: f64,
    /// Downstream payload bytes per frame.
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub downstream_payload: usize,
    /// Downstream key rotation interval, superframes of 125 µs.
    #[arg(long, value_name = "SUPERFRAMES", default_value_t = 8_000)]
    pub rotate_superframes: u64,
    /// A downstream flow marked for one-time pads: this many frames per second to every
    /// ONU, each payload XORed with pool bytes used once (0 = off). Costs one key byte per
    /// payload byte.
    #[arg(long, value_name = "FPS", default_value_t = 0.0)]
    pub otp_fps: f64,
    /// Payload bytes per one-time-pad frame.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub otp_payload: usize,
    /// Scenario options (file, eavesdroppers).
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Write the report as JSON (to stdout when no file is given).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    #[allow(clippy::option_option)]
    pub json: Option<Option<PathBuf>>,
}

/// The downstream traffic the flags ask for.
fn qpon_sim_downstream(args: &Args) -> crate::pon::DownstreamTraffic {
    crate::pon::DownstreamTraffic {
        frames_per_s: args.downstream_fps,
        payload_bytes: args.downstream_payload,
        rotate_every_superframes: args.rotate_superframes,
        otp_frames_per_s: args.otp_fps,
        otp_payload_bytes: args.otp_payload,
        ..crate::pon::DownstreamTraffic::default()
    }
}

/// `--policy` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// The same number of gates for every active ONU.
    EqualGates,
    /// Equalise key rates (gates ∝ 1/quality).
    MaxMin,
}

impl From<PolicyArg> for qpon_mux::Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::EqualGates => qpon_mux::Policy::EqualGates,
            PolicyArg::MaxMin => qpon_mux::Policy::MaxMinFair,
        }
    }
}

/// Parses `ONU@SECONDS`.
fn parse_churn(s: &str) -> Result<(usize, f64), String> {
    let (onu, at) = s.split_once('@').ok_or_else(|| format!("`{s}`: expected ONU@SECONDS, e.g. 5@10"))?;
    let onu: usize = onu.trim().parse().map_err(|_| format!("`{s}`: `{onu}` is not an ONU index"))?;
    let at: f64 = at.trim().parse().map_err(|_| format!("`{s}`: `{at}` is not a number of seconds"))?;
    if !(at.is_finite() && at >= 0.0) {
        return Err(format!("`{s}`: the time must be ≥ 0 seconds"));
    }
    Ok((onu, at))
}

/// The human-readable table.
pub fn table(r: &PonReport) -> String {
    let mut s = format!(
        "{:>4} {:>7} {:>11} {:>7} {:>7} {:>12} {:>12} {:>10} {:>12}  {}\n",
        "onu",
        "share",
        "detections",
        "QBER %",
        "blocks",
        "secret bits",
        "key bit/s",
        "auth bits",
        "pool bits",
        "aborted"
    );
    for o in &r.onus {
        let aborted: Vec<String> = o.aborted.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        s.push_str(&format!(
            "{:>4} {:>7.4} {:>11} {:>7.2} {:>7} {:>12} {:>12.1} {:>10} {:>12}  {}\n",
            o.onu,
            o.slot_share,
            o.detections,
            100.0 * o.qber,
            o.blocks,
            o.secret_bits,
            o.key_rate_bits_per_s,
            o.auth_bits_spent,
            o.pool_bits,
            aborted.join(" ")
        ));
    }
    let a = &r.aggregate;
    s.push_str(&format!(
        "aggregate ({} ONUs, {} s): {} detections, {} blocks, {} secret bits, {:.1} bit/s; {} packets ({} dropped); blocks disagreeing: {}\n",
        a.onus, a.seconds, a.detections, a.blocks, a.secret_bits, a.key_rate_bits_per_s, a.frames, a.frames_dropped, a.blocks_disagreeing
    ));
    for o in &r.onus {
        if let Some(d) = &o.downstream {
            s.push_str(&format!(
                "onu {} downstream: {} sent, {} opened, {} lost, others refused {} (opened {}, plaintext via own key {}), {} keys, {} switches ({} seen), {} pool-empty alarms, ledgers agree: {}\n",
                o.onu,
                d.frames_sent,
                d.frames_opened,
                d.frames_lost,
                d.others_refused,
                d.others_opened,
                d.others_plaintext_recovered,
                d.keys_installed,
                d.switches,
                d.switches_seen,
                d.pool_empty_alarms,
                d.ledgers_agree
            ));
            if d.otp_frames_sent + d.otp_frames_not_sent > 0 {
                s.push_str(&format!(
                    "onu {} one-time pad: {} sent, {} not sent (no pad), {} opened, {} lost, {} pad runs, replays opened {} of {}\n",
                    o.onu,
                    d.otp_frames_sent,
                    d.otp_frames_not_sent,
                    d.otp_frames_opened,
                    d.otp_frames_lost,
                    d.pad_runs,
                    d.otp_replays_opened,
                    d.otp_replays
                ));
            }
        }
    }
    for m in &r.slot_maps {
        let owners = m.gates.iter().filter(|&&g| g > 0).count();
        s.push_str(&format!(
            "slot map v{} decided at {:.2} s, from frame {}: {} ONUs with slots\n",
            m.version, m.at_s, m.from_frame, owners
        ));
    }
    s
}

/// Runs the subcommand.
pub fn run_cli(args: Args) -> Result<(), CliError> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(CliError::BadInput(format!("invalid `seconds`: {} must be > 0", args.seconds)));
    }
    if !(0.0..=1.0).contains(&args.drop_chance) {
        return Err(CliError::BadInput(format!(
            "invalid `drop_chance`: {} must be in [0, 1]",
            args.drop_chance
        )));
    }
    let detector =
        args.detector.or(if args.scenario.scenario.is_none() { Some(DetectorProfile::Snspd) } else { None });
    let pon = resolve(args.scenario.load()?, Some(args.onus), args.fiber_km, detector, args.block)?;
    if !(args.period.is_finite() && args.period > 0.0) {
        return Err(CliError::BadInput(format!("invalid `period`: {} must be > 0", args.period)));
    }
    let mut churn = Vec::new();
    for (list, action, field) in
        [(&args.leave, ChurnAction::Leave, "leave"), (&args.join, ChurnAction::Join, "join")]
    {
        for &(onu, at_s) in list {
            if onu >= pon.onus.len() {
                return Err(CliError::BadInput(format!(
                    "invalid `{field}`: ONU {onu} does not exist (the PON has {})",
                    pon.onus.len()
                )));
            }
            churn.push(Churn { at_s, onu, action });
        }
    }
    if !(args.downstream_fps.is_finite() && args.downstream_fps >= 0.0) {
        return Err(CliError::BadInput(format!(
            "invalid `downstream_fps`: {} must be a number ≥ 0",
            args.downstream_fps
        )));
    }
    if !(args.otp_fps.is_finite() && args.otp_fps >= 0.0) {
        return Err(CliError::BadInput(format!("invalid `otp_fps`: {} must be a number ≥ 0", args.otp_fps)));
    }
    if args.otp_payload == 0 || args.otp_payload > 4096 {
        return Err(CliError::BadInput(format!(
            "invalid `otp_payload`: {} must be in 1..=4096 (one pad run)",
            args.otp_payload
        )));
    }
    if args.downstream_payload > qpon_mux::downstream::MAX_PAYLOAD {
        return Err(CliError::BadInput(format!(
            "invalid `downstream_payload`: {} is above {}",
            args.downstream_payload,
            qpon_mux::downstream::MAX_PAYLOAD
        )));
    }
    if args.rotate_superframes == 0 {
        return Err(CliError::BadInput("invalid `rotate_superframes`: must be > 0".into()));
    }
    let downstream = (args.downstream_fps > 0.0 || args.otp_fps > 0.0).then(|| qpon_sim_downstream(&args));
    let mut opts = PonOptions {
        downstream,
        seconds: args.seconds,
        seed: args.seed,
        drop_chance: args.drop_chance,
        policy: args.policy.into(),
        scheduling_period_s: args.period,
        churn,
        medium: args.medium,
        ..PonOptions::default()
    };
    if args.medium == Medium::Datagram {
        // Nothing below the sessions retransmits: their timer must be short against the
        // block time (the round trip is ~0.2 ms).
        opts.session.rto = qpon_qkd::time::Duration::from_millis(5);
    }
    if let Some(w) = args.workers {
        opts.workers = w.max(1);
    }
    let bar = indicatif::ProgressBar::new((args.seconds * 10.0).ceil() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {msg} virtual s  [{elapsed_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = run(&pon, &opts, |t| {
        bar.set_position((t * 10.0) as u64);
        bar.set_message(format!("{t:.1}/{}", args.seconds));
    });
    bar.finish_and_clear();
    let to_stdout = write_json(&args.json, &report)?;
    if !to_stdout {
        print!("{}", table(&report));
    }
    if report.aggregate.blocks_disagreeing > 0 {
        return Err(CliError::Other(anyhow::anyhow!(
            "{} blocks differ between the two ends (a bug)",
            report.aggregate.blocks_disagreeing
        )));
    }
    Ok(())
}
