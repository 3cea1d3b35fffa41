//! Throughput of Toeplitz privacy amplification ([`qpon_qkd::pa::toeplitz_hash`]), single
//! thread.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-pa cargo run --release -p qpon-qkd --example pa_throughput [SAMPLES [N...]]
//! ```
//!
//! For each input length `n` (default 10^4, 10^5, 10^6, 10^7) and `m = n/10, n/4, n/2, n`,
//! hashes one random block `SAMPLES` times (default 11, at most 7 for `n ≥ 10^7`; short hashes
//! are repeated within a sample so that a sample takes at least 2 ms) after a warm-up run,
//! and prints the median and minimum wall time per hash, the input throughput at the median,
//! and — on Linux — the mean on-CPU time of the thread per hash (from
//! `/proc/thread-self/schedstat`), which other processes competing for the cores do not
//! inflate.

use std::time::Instant;

use qpon_qkd::BitBlock;
use qpon_qkd::pa::{ToeplitzSeed, toeplitz_hash};

/// Nanoseconds this thread has run on a CPU, if the kernel says (Linux). The kernel updates
/// the figure when the thread passes through the scheduler, hence the yield first.
fn thread_cpu_ns() -> Option<u64> {
    std::thread::yield_now();
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let samples: usize = args.next().map_or(11, |s| s.parse().expect("SAMPLES must be a number")).max(1);
    let sizes: Vec<usize> = args.map(|s| s.parse().expect("N must be a number")).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000, 1_000_000, 10_000_000] } else { sizes };
    let mut rng = qpon_qkd::rng::seeded(42);
    println!(
        "{:>10} {:>10} {:>5} {:>11} {:>11} {:>12} {:>11} {:>12}",
        "n", "m", "m/n", "median ms", "min ms", "Mbit/s(med)", "cpu ms", "Mbit/s(cpu)"
    );
    for &n in &sizes {
        let samples = if n >= 10_000_000 { samples.min(7) } else { samples };
        for &(num, den) in &[(1usize, 10usize), (1, 4), (1, 2), (1, 1)] {
            let m = (n * num / den).max(1);
            let x = BitBlock::random(n, &mut rng);
            let seed = ToeplitzSeed::random(n, m, &mut rng).expect("valid lengths");
            let t = Instant::now();
            let y = toeplitz_hash(&x, &seed, m).expect("valid lengths"); // warm-up
            assert_eq!(y.len(), m);
            let inner = (2e-3 / t.elapsed().as_secs_f64().max(1e-9)).ceil().max(1.0) as usize;
            let cpu0 = thread_cpu_ns();
            let mut times: Vec<f64> = (0..samples)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..inner {
                        std::hint::black_box(toeplitz_hash(&x, &seed, m).expect("valid lengths"));
                    }
                    t.elapsed().as_secs_f64() / inner as f64
                })
                .collect();
            let cpu =
                cpu0.zip(thread_cpu_ns()).map(|(a, b)| (b - a) as f64 * 1e-9 / (samples * inner) as f64);
            times.sort_by(f64::total_cmp);
            let med = times[times.len() / 2];
            let (cpu_ms, cpu_rate) = cpu.map_or(("-".into(), "-".into()), |c| {
                (format!("{:.3}", c * 1e3), format!("{:.1}", n as f64 / c / 1e6))
            });
            println!(
                "{n:>10} {m:>10} {:>5.2} {:>11.3} {:>11.3} {:>12.1} {cpu_ms:>11} {cpu_rate:>12}",
                m as f64 / n as f64,
                med * 1e3,
                times[0] * 1e3,
                n as f64 / med / 1e6,
            );
        }
    }
}
