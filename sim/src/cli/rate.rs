//! `qpon-sim rate`: per-ONU and aggregate gains, QBER, asymptotic and finite-key rates and
//! block fill times of one PON, from the analytic model.
//!
//! JSON (`--json [FILE]`): `{"onus":[{"onu":k, "qber":…, "gain":…,
//! "asymptotic_bits_per_s":…, "finite_bits_per_s":…, "block_fill_s":…, …}, …],
//! "aggregate":{…}}`, QBER as a fraction.

use super::CliError;
use super::io::{read_input, write_json};
use crate::planning::{RateReport, optimize, rate};
use crate::scenario::{self, DetectorProfile, EveCfg, Pon, Scenario};
use std::path::PathBuf;

/// Scenario options shared by `rate` and `sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Scenario TOML file (`-` reads standard input); without it, the DESIGN.md §5
    /// defaults (see sim/scenarios/pon.toml). Flags override the file.
    #[arg(long, value_name = "FILE", visible_alias = "input")]
    pub scenario: Option<PathBuf>,
    /// An eavesdropper, `ATTACK:onu=K[,key=value…]` with ATTACK one of
    /// intercept-resend (fraction, p_z, resend_mu), pns (block_single, transmittance),
    /// blinding (p_z, trigger). Repeatable.
    #[arg(long, value_name = "SPEC")]
    pub eve: Vec<String>,
    /// Choose μ1, μ2, the intensity probabilities and p_Z per ONU to maximise its
    /// finite-key rate.
    #[arg(long)]
    pub optimize: bool,
}

impl ScenarioArgs {
    /// Reads the scenario file (or the defaults) and adds the `--eve` attacks.
    pub fn load(&self) -> Result<Scenario, CliError> {
        let mut s = match &self.scenario {
            Some(p) => scenario::parse(&read_input(p)?).map_err(|e| CliError::BadInput(e.to_string()))?,
            None => Scenario::default(),
        };
        for spec in &self.eve {
            s.eve.push(EveCfg::parse_cli(spec).map_err(|e| CliError::BadInput(e.to_string()))?);
        }
        Ok(s)
    }
}

/// Arguments of `qpon-sim rate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of ONUs (overrides the scenario).
    #[arg(long)]
    pub onus: Option<usize>,
    /// Fibre length of every ONU, km (overrides the scenario's default length).
    #[arg(long, value_name = "KM", allow_negative_numbers = true)]
    pub fiber_km: Option<f64>,
    /// Detector profile (overrides the scenario).
    #[arg(long, value_enum)]
    pub detector: Option<DetectorProfile>,
    /// Block size: sifted key-basis detections per block (default 1e5).
    #[arg(long, value_name = "B")]
    pub block: Option<f64>,
    /// Scenario options.
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Write the report as JSON (to stdout when no file is given).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    #[allow(clippy::option_option)]
    pub json: Option<Option<PathBuf>>,
}

/// Applies the command-line overrides and resolves the scenario.
pub fn resolve(
    mut s: Scenario,
    onus: Option<usize>,
    km: Option<f64>,
    det: Option<DetectorProfile>,
    block: Option<f64>,
) -> Result<Pon, CliError> {
    if let Some(n) = onus {
        s.onus = n;
    }
    if let Some(km) = km {
        s.fiber.length_km = km;
    }
    if let Some(d) = det {
        s.receiver.detector = d;
    }
    if let Some(b) = block {
        s.security.block = b;
    }
    s.resolve().map_err(|e| CliError::BadInput(e.to_string()))
}

/// Computes the report for the arguments (no output).
pub fn report(args: &Args) -> Result<RateReport, CliError> {
    let mut pon = resolve(args.scenario.load()?, args.onus, args.fiber_km, args.detector, args.block)?;
    if args.scenario.optimize {
        optimize(&mut pon);
    }
    Ok(rate(&pon))
}

fn si(x: f64) -> String {
    let a = x.abs();
    if a >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if a >= 1e3 {
        format!("{:.2} k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

/// The human-readable table.
pub fn table(r: &RateReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:>4} {:>6} {:>8} {:>7} {:>9} {:>7} {:>10} {:>12} {:>12} {:>10}  {}\n",
        "onu",
        "km",
        "loss dB",
        "share",
        "gain",
        "QBER %",
        "sifted/s",
        "asym bit/s",
        "finite bit/s",
        "fill s",
        "eve"
    ));
    for o in &r.onus {
        s.push_str(&format!(
            "{:>4} {:>6.1} {:>8.2} {:>7.4} {:>9.2e} {:>7.2} {:>10} {:>12} {:>12} {:>10}  {}\n",
            o.onu,
            o.fiber_km,
            o.loss_db,
            o.slot_share,
            o.gain,
            100.0 * o.qber,
            si(o.sifted_key_per_s),
            si(o.asymptotic_bits_per_s),
            si(o.finite_bits_per_s),
            o.block_fill_s.map(|f| format!("{f:.3}")).unwrap_or_else(|| "never".into()),
            o.eve.as_deref().unwrap_or("-"),
        ));
    }
    let a = &r.aggregate;
    s.push_str(&format!(
        "aggregate ({} ONUs, {}, block {:.0e}): asymptotic {}bit/s, finite {}bit/s (min per ONU {}bit/s, {} ONUs with key), {}detections/s\n",
        a.onus,
        a.detector,
        a.block,
        si(a.asymptotic_bits_per_s),
        si(a.finite_bits_per_s),
        si(a.min_finite_bits_per_s),
        a.onus_with_key,
        si(a.detections_per_s),
    ));
    s
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), CliError> {
    let r = report(&args)?;
    if !write_json(&args.json, &r)? {
        print!("{}", table(&r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> Args {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        T::parse_from(std::iter::once("rate").chain(argv.iter().copied())).a
    }

    #[test]
    fn json_shape_and_attack() {
        let r = report(&parse(&["--onus", "8", "--detector", "snspd", "--eve", "intercept-resend:onu=2"]))
            .unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let onus = v["onus"].as_array().unwrap();
        assert_eq!(onus.len(), 8);
        for key in ["onu", "qber", "gain", "asymptotic_bits_per_s", "finite_bits_per_s", "block_fill_s"] {
            assert!(onus[0].get(key).is_some(), "missing {key}");
        }
        assert!(v["aggregate"]["finite_bits_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(onus[2]["finite_bits_per_s"].as_f64().unwrap(), 0.0);
        assert!((onus[2]["qber"].as_f64().unwrap() - 0.25).abs() < 0.01);
        assert!(table(&r).contains("intercept-resend"));
    }

    #[test]
    fn bad_input_names_the_field() {
        for (argv, field) in [
            (vec!["--fiber-km", "-3"], "fiber.length_km"),
            (vec!["--onus", "300"], "onus"),
            (vec!["--eve", "pns:onu=99"], "eve[0].onu"),
            (vec!["--eve", "teleport:onu=1"], "eve"),
            (vec!["--scenario", "/nonexistent/pon.toml"], "/nonexistent/pon.toml"),
        ] {
            match report(&parse(&argv)) {
                Err(CliError::BadInput(m)) => assert!(m.contains(field), "{m:?} lacks {field}"),
                other => panic!("{argv:?}: {other:?}"),
            }
        }
    }
}
