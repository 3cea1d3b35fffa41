//! `qpon-sim sweep`: the rate over a grid of ONU counts, fibre lengths, detectors and
//! block sizes; writes `DIR/sweep.tsv`, `DIR/sweep.json`, `DIR/rate_vs_onus.png` and
//! `DIR/rate_vs_distance.png`.

use super::CliError;
use super::rate::{ScenarioArgs, resolve};
use crate::planning::{optimize, rate};
use crate::plot::{Series, line_plot};
use crate::scenario::DetectorProfile;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Arguments of `qpon-sim sweep`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// ONU counts.
    #[arg(long, value_delimiter = ',', default_values_t = vec![8usize, 16, 32, 64, 128])]
    pub onus: Vec<usize>,
    /// Fibre lengths, km.
    #[arg(long, value_name = "KM", value_delimiter = ',', default_values_t = vec![10.0f64])]
    pub fiber_km: Vec<f64>,
    /// Detector profiles.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![DetectorProfile::Apd, DetectorProfile::Snspd])]
    pub detector: Vec<DetectorProfile>,
    /// Block sizes (sifted key-basis detections).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1e5f64])]
    pub block: Vec<f64>,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Scenario options.
    #[command(flatten)]
    pub scenario: ScenarioArgs,
}

/// One grid point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    /// Detector profile.
    pub detector: String,
    /// Block size.
    pub block: f64,
    /// ONUs.
    pub onus: usize,
    /// Fibre length, km.
    pub fiber_km: f64,
    /// Mean per-ONU finite-key rate, bits/s.
    pub finite_bits_per_s_per_onu: f64,
    /// Mean per-ONU asymptotic rate, bits/s.
    pub asymptotic_bits_per_s_per_onu: f64,
    /// Smallest per-ONU finite-key rate, bits/s.
    pub min_finite_bits_per_s: f64,
    /// Aggregate finite-key rate, bits/s.
    pub aggregate_finite_bits_per_s: f64,
    /// Aggregate asymptotic rate, bits/s.
    pub aggregate_asymptotic_bits_per_s: f64,
    /// Mean key-basis QBER (fraction).
    pub qber: f64,
    /// Mean gain (detections per pulse).
    pub gain: f64,
    /// Longest block fill time over the ONUs, s (`null`: some ONU never fills a block).
    pub block_fill_s: Option<f64>,
}

/// Computes the grid (no output besides the progress bar).
pub fn points(args: &Args) -> Result<Vec<SweepPoint>, CliError> {
    let base = args.scenario.load()?;
    let total = (args.detector.len() * args.block.len() * args.fiber_km.len() * args.onus.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} sweep [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut out = Vec::new();
    for &det in &args.detector {
        for &block in &args.block {
            for &km in &args.fiber_km {
                for &n in &args.onus {
                    let mut pon = resolve(base.clone(), Some(n), Some(km), Some(det), Some(block))?;
                    if args.scenario.optimize {
                        optimize(&mut pon);
                    }
                    let r = rate(&pon);
                    let nn = r.onus.len() as f64;
                    let mean =
                        |f: &dyn Fn(&crate::planning::OnuRate) -> f64| r.onus.iter().map(f).sum::<f64>() / nn;
                    out.push(SweepPoint {
                        detector: det.name().into(),
                        block,
                        onus: n,
                        fiber_km: km,
                        finite_bits_per_s_per_onu: mean(&|o| o.finite_bits_per_s),
                        asymptotic_bits_per_s_per_onu: mean(&|o| o.asymptotic_bits_per_s),
                        min_finite_bits_per_s: r.aggregate.min_finite_bits_per_s,
                        aggregate_finite_bits_per_s: r.aggregate.finite_bits_per_s,
                        aggregate_asymptotic_bits_per_s: r.aggregate.asymptotic_bits_per_s,
                        qber: mean(&|o| o.qber),
                        gain: mean(&|o| o.gain),
                        block_fill_s: r
                            .onus
                            .iter()
                            .map(|o| o.block_fill_s)
                            .try_fold(0.0f64, |m, f| f.map(|f| m.max(f))),
                    });
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The TSV table.
pub fn tsv(points: &[SweepPoint]) -> String {
    let mut s = String::from(
        "detector\tblock\tonus\tfiber_km\tfinite_bits_per_s_per_onu\tasymptotic_bits_per_s_per_onu\tmin_finite_bits_per_s\taggregate_finite_bits_per_s\taggregate_asymptotic_bits_per_s\tqber\tgain\tblock_fill_s\n",
    );
    for p in points {
        let _ = writeln!(
            s,
            "{}\t{:e}\t{}\t{}\t{:.6e}\t{:.6e}\t{:.6e}\t{:.6e}\t{:.6e}\t{:.6}\t{:.6e}\t{}",
            p.detector,
            p.block,
            p.onus,
            p.fiber_km,
            p.finite_bits_per_s_per_onu,
            p.asymptotic_bits_per_s_per_onu,
            p.min_finite_bits_per_s,
            p.aggregate_finite_bits_per_s,
            p.aggregate_asymptotic_bits_per_s,
            p.qber,
            p.gain,
            p.block_fill_s.map(|f| format!("{f:.6e}")).unwrap_or_else(|| "inf".into()),
        );
    }
    s
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), CliError> {
    if args.onus.is_empty() || args.fiber_km.is_empty() || args.detector.is_empty() || args.block.is_empty() {
        return Err(CliError::BadInput("every sweep axis needs at least one value".into()));
    }
    let pts = points(&args)?;
    let dir = &args.out;
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Other(anyhow::anyhow!("creating {}: {e}", dir.display())))?;
    let write = |name: &str, text: String| -> Result<(), CliError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| CliError::Other(anyhow::anyhow!("writing {}: {e}", p.display())))
    };
    write("sweep.tsv", tsv(&pts))?;
    write("sweep.json", serde_json::to_string_pretty(&pts).map_err(|e| CliError::Other(e.into()))? + "\n")?;

    let label = |p: &SweepPoint| format!("{}, block {:.0e}", p.detector, p.block);
    let mut by_n: Vec<Series> = Vec::new();
    let mut by_km: Vec<Series> = Vec::new();
    for p in &pts {
        let a = format!("{}, {} km", label(p), p.fiber_km);
        match by_n.iter_mut().find(|s| s.label == a) {
            Some(s) => s.points.push((p.onus as f64, p.finite_bits_per_s_per_onu)),
            None => {
                by_n.push(Series { label: a, points: vec![(p.onus as f64, p.finite_bits_per_s_per_onu)] })
            }
        }
        let b = format!("{}, {} ONUs", label(p), p.onus);
        match by_km.iter_mut().find(|s| s.label == b) {
            Some(s) => s.points.push((p.fiber_km, p.finite_bits_per_s_per_onu)),
            None => by_km.push(Series { label: b, points: vec![(p.fiber_km, p.finite_bits_per_s_per_onu)] }),
        }
    }
    for s in by_n.iter_mut().chain(by_km.iter_mut()) {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let plot = |name: &str, title: &str, x: &str, series: &[Series], log_x: bool| -> Result<(), CliError> {
        line_plot(&dir.join(name), title, x, "finite-key rate per ONU (bit/s)", series, log_x)
            .map_err(|e| CliError::Other(e.context(format!("plotting {name}"))))
    };
    plot("rate_vs_onus.png", "Secret key rate per ONU vs number of ONUs", "ONUs", &by_n, true)?;
    plot(
        "rate_vs_distance.png",
        "Secret key rate per ONU vs fibre length",
        "fibre length (km)",
        &by_km,
        false,
    )?;
    eprintln!(
        "qpon-sim sweep: {} points → {}/sweep.tsv, sweep.json, rate_vs_onus.png, rate_vs_distance.png",
        pts.len(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn sweep_writes_its_files() {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        let dir = std::env::temp_dir().join(format!("qpon-sweep-{}", std::process::id()));
        let d = dir.to_str().unwrap();
        let a =
            T::parse_from(["sweep", "--onus", "8,32", "--fiber-km", "1,20", "--block", "1e6", "--out", d]).a;
        run(a).unwrap();
        let tsv = std::fs::read_to_string(dir.join("sweep.tsv")).unwrap();
        assert_eq!(tsv.lines().count(), 1 + 2 * 2 * 2);
        let json: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
        assert_eq!(json.len(), 8);
        for png in ["rate_vs_onus.png", "rate_vs_distance.png"] {
            assert_eq!(&std::fs::read(dir.join(png)).unwrap()[1..4], b"PNG");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
