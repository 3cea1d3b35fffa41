//! `qpon-sim pon`: the whole-PON emulation — the project's main job.
//!
//! The same OLT and ONU drivers as the binaries, the event sampler as their hardware, a
//! simulated medium with per-ONU fibre delay and seeded frame loss, one discrete-event
//! clock. Prints per ONU: slot share, detections, QBER, blocks, secret bits, key rate,
//! authentication bits spent, pool level, alarms; and the aggregates. The same seed gives
//! the same report.
//!
//! JSON (`--json [FILE]`): `{"onus":[{"onu":k, "slot_share":…, "detections":…, "qber":…,
//! "blocks":…, "secret_bits":…, "key_rate_bits_per_s":…, "auth_bits_spent":…,
//! "pool_bits":…, "alarms":[…]}, …], "aggregate":{…}}`.

use super::CliError;
use super::io::write_json;
use super::rate::{ScenarioArgs, resolve};
use crate::pon::{PonOptions, PonReport, run};
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
    /// Probability that a frame on the medium is lost.
    #[arg(long, default_value_t = 0.0)]
    pub drop_chance: f64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Scenario options (file, eavesdroppers).
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Write the report as JSON (to stdout when no file is given).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    #[allow(clippy::option_option)]
    pub json: Option<Option<PathBuf>>,
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
        "aggregate ({} ONUs, {} s): {} detections, {} blocks, {} secret bits, {:.1} bit/s; {} frames ({} dropped); blocks disagreeing: {}\n",
        a.onus, a.seconds, a.detections, a.blocks, a.secret_bits, a.key_rate_bits_per_s, a.frames, a.frames_dropped, a.blocks_disagreeing
    ));
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
    let mut opts = PonOptions {
        seconds: args.seconds,
        seed: args.seed,
        drop_chance: args.drop_chance,
        ..PonOptions::default()
    };
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
