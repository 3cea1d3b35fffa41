//! Cascade on 10⁵-bit frames: efficiency, frame error rate, round trips, throughput.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-cascade cargo run --release -p qpon-qkd --example reconcile_bench -- \
//!     [--frames 1000] [--n 100000] [--qber 0.01,0.02,0.05] [--profile efficient|few-rounds] [--theta PERCENT] [--probes true] [--kind skew|fy] \
//!     [--schedule k1,k2,...] [--estimate true|nominal|sample] [--seed 1]
//! ```
//!
//! Per QBER `Q`: every frame is a fresh random reference key, the noisy key has iid
//! Bernoulli(`Q`) errors, and fresh shuffles (a new seed). Both ends run in this one
//! thread ([`run_local_with`]: corrector and responder set-up, every round, no
//! serialisation). The schedule is planned from the estimate: `nominal` = `Q`, `true` =
//! the frame's actual error fraction, `sample` = the error fraction of 10⁴ bits sampled
//! at random (a parameter-estimation-sized sample).
//!
//! Printed per `Q`: efficiency `f = λ_EC / (n·h(Q_frame))` (mean, median, 99th
//! percentile) with `Q_frame` the frame's actual error fraction, frame error rate (frames
//! whose corrected key differs from the reference), round trips (mean, median, max), and
//! throughput in Mbit/s of key per core: total `n` over the total CPU time of this thread
//! spent in reconciliation (read from `/proc/thread-self/schedstat`, tick-granular but
//! unbiased over many frames, so that other load on the machine does not count; wall time
//! where that file does not exist), and the median over frames of `n` / wall time (equal
//! on a quiet machine).

use std::time::Instant;

use qpon_qkd::BitBlock;
use qpon_qkd::reconcile::{CascadeOptions, PermutationKind, Profile, Schedule, run_local_with};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn h2(q: f64) -> f64 {
    if q <= 0.0 || q >= 1.0 { 0.0 } else { -q * q.log2() - (1.0 - q) * (1.0 - q).log2() }
}

struct Args {
    frames: usize,
    n: usize,
    qbers: Vec<f64>,
    theta: Option<u16>,
    probes: bool,
    profile: Profile,
    kind: PermutationKind,
    schedule: Option<Vec<u32>>,
    estimate: String,
    seed: u64,
}

fn parse() -> Args {
    let mut a = Args {
        frames: 1000,
        n: 100_000,
        qbers: vec![0.01, 0.02, 0.05],
        theta: None,
        probes: true,
        profile: Profile::Efficient,
        kind: PermutationKind::WordSkew,
        schedule: None,
        estimate: "nominal".into(),
        seed: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--frames" => a.frames = v.parse().expect("--frames"),
            "--n" => a.n = v.parse().expect("--n"),
            "--qber" => a.qbers = v.split(',').map(|x| x.parse().expect("--qber")).collect(),
            "--theta" => a.theta = Some(v.parse().expect("--theta")),
            "--profile" => {
                a.profile = match v.as_str() {
                    "efficient" => Profile::Efficient,
                    "few-rounds" => Profile::FewRounds,
                    _ => panic!("--profile efficient|few-rounds"),
                }
            }
            "--probes" => a.probes = v.parse().expect("--probes"),
            "--kind" => {
                a.kind = match v.as_str() {
                    "skew" => PermutationKind::WordSkew,
                    "fy" => PermutationKind::FisherYates,
                    _ => panic!("--kind skew|fy"),
                }
            }
            "--schedule" => a.schedule = Some(v.split(',').map(|x| x.parse().expect("--schedule")).collect()),
            "--estimate" => a.estimate = v.clone(),
            "--seed" => a.seed = v.parse().expect("--seed"),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

/// This thread's CPU time in seconds (Linux `schedstat`), so other load on the machine
/// does not count; falls back to wall time elsewhere.
fn cpu_secs(start: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
        .map_or_else(|| start.elapsed().as_secs_f64(), |ns| ns as f64 * 1e-9)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let a = parse();
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let origin = Instant::now();
    println!(
        "n={} frames={} profile={:?} start_next_percent={} probes={} kind={:?} estimate={}",
        a.n,
        a.frames,
        a.profile,
        a.theta.unwrap_or(a.profile.start_next_percent()),
        a.probes,
        a.kind,
        a.estimate
    );
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>8} {:>11} {:>7} {:>6} {:>6} {:>8} {:>8}  schedule",
        "Q", "f mean", "f med", "f p99", "FER", "fails", "rt mean", "rt med", "rt max", "Mbit/s", "wall med"
    );
    for &q in &a.qbers {
        let mut fs = Vec::with_capacity(a.frames);
        let mut rts = Vec::with_capacity(a.frames);
        let mut fails = 0usize;
        let mut secs = 0.0f64;
        let mut rates = Vec::with_capacity(a.frames);
        let mut shown = String::new();
        for _ in 0..a.frames {
            let reference = BitBlock::random(a.n, &mut rng);
            let mut noisy = reference.clone();
            let mut errors = 0usize;
            for i in 0..a.n {
                if rng.random::<f64>() < q {
                    noisy.flip(i);
                    errors += 1;
                }
            }
            let q_frame = errors as f64 / a.n as f64;
            let est = match a.estimate.as_str() {
                "true" => q_frame,
                "sample" => {
                    let m = 10_000;
                    let hits = (0..m).filter(|_| {
                        let i = rng.random_range(0..a.n);
                        noisy.get(i) != reference.get(i)
                    });
                    hits.count() as f64 / m as f64
                }
                _ => q,
            };
            let mut schedule = Schedule::for_profile(est, a.n, a.kind, a.profile).expect("schedule");
            if let Some(s) = &a.schedule {
                schedule.block_sizes = s.clone();
            }
            if shown.is_empty() {
                shown = format!("{:?}", schedule.block_sizes);
            }
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let opts = CascadeOptions {
                start_next_percent: a.theta.unwrap_or(a.profile.start_next_percent()),
                probes: a.probes,
                ..CascadeOptions::default()
            };
            let t0 = cpu_secs(origin);
            let wall = origin.elapsed().as_secs_f64();
            let r = run_local_with(&noisy, &reference, schedule, seed, opts).expect("reconciliation");
            rates.push(a.n as f64 / (origin.elapsed().as_secs_f64() - wall) / 1e6);
            secs += cpu_secs(origin) - t0;
            if r.key != reference {
                fails += 1;
            }
            if errors > 0 {
                fs.push(r.leaked_bits as f64 / (a.n as f64 * h2(q_frame)));
            }
            rts.push(f64::from(r.round_trips));
        }
        let f_mean = fs.iter().sum::<f64>() / fs.len().max(1) as f64;
        let rt_mean = rts.iter().sum::<f64>() / rts.len() as f64;
        let f_med = pct(&mut fs, 0.5);
        let f_99 = pct(&mut fs, 0.99);
        let rt_med = pct(&mut rts, 0.5);
        let rt_max = pct(&mut rts, 1.0);
        let rate_med = pct(&mut rates, 0.5);
        println!(
            "{q:>6} {f_mean:>8.4} {f_med:>8.4} {f_99:>8.4} {:>8.1e} {:>5}/{:<5} {rt_mean:>7.1} {rt_med:>6} {rt_max:>6} {:>8.1} {rate_med:>8.1}  {shown}",
            fails as f64 / a.frames as f64,
            fails,
            a.frames,
            (a.n * a.frames) as f64 / secs / 1e6,
        );
    }
}
