//! `qpon-sim bench`: single-thread throughput of each stage, measured, never asserted.
//!
//! Each stage runs its workload several times and reports the median, so one noisy run
//! does not move the figure. The JSON is one object with one array of records per stage;
//! units are in the field names (`mbit_per_s`, `tags_per_s`, …).

use super::CliError;
use super::io::{JsonTarget, write_json};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `qpon-sim bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only this stage (repeatable).
    #[arg(long, value_enum)]
    pub only: Vec<Stage>,
    /// Write the results as JSON (to stdout when no FILE is given).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub json: Option<Option<PathBuf>>,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Frames per QBER for the reconciliation stage (the frame error rate is measured over
    /// these; 1000 frames resolve a FER of 10⁻³ only as "at most a few").
    #[arg(long, default_value_t = 1000)]
    pub frames: usize,
}

/// A benchmark stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Sifting: detections per second through announce → answer → apply.
    Sifting,
    /// Finite-key bound evaluations per second.
    FiniteKey,
    /// Verification hash: Mbit/s of key hashed.
    Verification,
    /// Toeplitz privacy amplification: Mbit/s of input.
    PrivacyAmplification,
    /// Wegman–Carter tags per second.
    WcMac,
    /// Cascade on 10⁵-bit frames: efficiency, frame error rate, round trips, Mbit/s.
    Reconciliation,
    /// One link end to end through both sessions: sifted bits in → secret bits out.
    Distillation,
    /// The event sampler: detection events per second for a 128-ONU SNSPD PON at 1 GHz.
    Sampler,
    /// The persistent key store: durable consumptions per second, single vs batched.
    Store,
    /// The downstream cipher (AES-128-CTR framing): seal and open of 1500-byte frames, Gbit/s.
    Downstream,
}

impl Stage {
    /// All stages, in pipeline order.
    pub const ALL: &'static [Stage] = &[
        Stage::Sifting,
        Stage::FiniteKey,
        Stage::Verification,
        Stage::PrivacyAmplification,
        Stage::WcMac,
        Stage::Reconciliation,
        Stage::Distillation,
        Stage::Sampler,
        Stage::Store,
        Stage::Downstream,
    ];

    /// The JSON key of the stage.
    pub fn key(self) -> &'static str {
        match self {
            Stage::Sifting => "sifting",
            Stage::FiniteKey => "finite_key",
            Stage::Verification => "verification",
            Stage::PrivacyAmplification => "privacy_amplification",
            Stage::WcMac => "wc_mac",
            Stage::Reconciliation => "reconciliation",
            Stage::Distillation => "distillation",
            Stage::Sampler => "sampler",
            Stage::Store => "store",
            Stage::Downstream => "downstream",
        }
    }
}

/// Median wall time in seconds of `reps` runs of `f` (after one warm-up run).
pub fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn sifting(reps: usize) -> Vec<Value> {
    use qpon_qkd::records::{Basis, DetectionFlags, DetectionRecord, Intensity, PulseRecord};
    use qpon_qkd::sift;
    use rand::RngExt;
    let n = 1_000_000usize;
    let mut rng = qpon_qkd::rng::seeded(1);
    let dets: Vec<DetectionRecord> = (0..n)
        .map(|i| DetectionRecord {
            gate: i as u64 * 37,
            basis: Basis::from_bit(rng.random_bool(0.25)),
            bit: rng.random(),
            flags: DetectionFlags::default(),
        })
        .collect();
    let pulses: Vec<Option<PulseRecord>> = (0..n)
        .map(|i| {
            Some(PulseRecord {
                pulse: i as u64,
                basis: Basis::from_bit(rng.random_bool(0.25)),
                bit: rng.random(),
                intensity: Intensity::from_index(rng.random_range(0..3u8)).unwrap_or(Intensity::Signal),
            })
        })
        .collect();
    let secs = median_secs(reps, || {
        let ann = sift::announce(&dets);
        let (ans, _) = sift::answer(&ann, &pulses).expect("well-formed");
        let rx = sift::apply_answer(&dets, &ans).expect("well-formed");
        std::hint::black_box(rx);
    });
    vec![json!({"detections": n, "detections_per_s": n as f64 / secs})]
}

fn finite_key(reps: usize) -> Vec<Value> {
    use qpon_qkd::finite_key::{BoundInput, DecoyParams, finite_key};
    use qpon_qkd::sift::BasisCounts;
    let input = BoundInput {
        params: DecoyParams::default(),
        key: BasisCounts { n: [62466.0, 37513.0, 21.0], m: [625.0, 375.0, 0.0] },
        test: BasisCounts { n: [6941.0, 4168.0, 2.0], m: [69.0, 42.0, 0.0] },
        eps_sec: 1e-10,
        eps_cor: 1e-15,
        lambda_ec: 8887.0,
    };
    let iters = 100_000;
    let secs = median_secs(reps, || {
        for i in 0..iters {
            let mut x = input;
            x.lambda_ec += i as f64 * 1e-9;
            std::hint::black_box(finite_key(std::hint::black_box(&x)).ok());
        }
    });
    vec![json!({"evaluations_per_s": iters as f64 / secs})]
}

fn verification(reps: usize) -> Vec<Value> {
    use qpon_qkd::verification::{VerificationSeed, verification_tag};
    let mut rng = qpon_qkd::rng::seeded(3);
    [1_000_000usize, 10_000_000]
        .into_iter()
        .map(|n| {
            let key = qpon_qkd::BitBlock::random(n, &mut rng);
            let seed = VerificationSeed::random(&mut rng);
            let secs = median_secs(reps, || {
                std::hint::black_box(verification_tag(&key, &seed, 64).ok());
            });
            json!({"input_bits": n, "mbit_per_s": n as f64 / secs / 1e6})
        })
        .collect()
}

fn privacy_amplification(reps: usize) -> Vec<Value> {
    use qpon_qkd::pa::{ToeplitzSeed, toeplitz_hash};
    let mut rng = qpon_qkd::rng::seeded(4);
    [(1_000_000usize, 4usize), (1_000_000, 2), (10_000_000, 4)]
        .into_iter()
        .map(|(n, div)| {
            let m = n / div;
            let x = qpon_qkd::BitBlock::random(n, &mut rng);
            let seed = ToeplitzSeed::random(n, m, &mut rng).expect("valid sizes");
            let secs = median_secs(reps, || {
                std::hint::black_box(toeplitz_hash(&x, &seed, m).ok());
            });
            json!({"input_bits": n, "output_bits": m, "mbit_per_s": n as f64 / secs / 1e6})
        })
        .collect()
}

fn wc_mac(reps: usize) -> Vec<Value> {
    use qpon_qkd::mac::{HashKey, MacFamily, Pad, WcMac, WegmanCarter};
    let mut out = Vec::new();
    for family in [MacFamily::Poly1305, MacFamily::Gf128 { tag_bits: 128 }, MacFamily::Gf128 { tag_bits: 64 }]
    {
        let wc = WegmanCarter::new(family, HashKey::from_slice(&[0x5a; 16])).expect("valid key");
        for len in [64usize, 1500] {
            let msg = vec![0xa5u8; len];
            let pads: Vec<[u8; 16]> = (0..1024u32).map(|i| [i as u8; 16]).collect();
            let iters = 200_000;
            let pad_len = family.pad_len();
            let secs = median_secs(reps, || {
                for i in 0..iters {
                    let pad = Pad::from_slice(&pads[i % pads.len()][..pad_len]);
                    std::hint::black_box(wc.tag(std::hint::black_box(&msg), &pad).ok());
                }
            });
            let name = match family {
                MacFamily::Poly1305 => "poly1305".to_string(),
                MacFamily::Gf128 { tag_bits } => format!("gf128/{tag_bits}"),
            };
            out.push(json!({"family": name, "message_bytes": len, "tags_per_s": iters as f64 / secs}));
        }
    }
    out
}

fn reconciliation(frames: usize) -> Vec<Value> {
    use qpon_qkd::finite_key::binary_entropy;
    use qpon_qkd::reconcile::run_local;
    use rand::RngExt;
    let n = 100_000usize;
    let mut out = Vec::new();
    for qber in [0.01, 0.02, 0.05] {
        let mut rng = qpon_qkd::rng::seeded((qber * 1e6) as u64);
        let (mut leaked, mut ideal, mut fails, mut rounds, mut secs) = (0u64, 0.0, 0usize, 0u64, 0.0);
        for _ in 0..frames.max(1) {
            let reference = qpon_qkd::BitBlock::random(n, &mut rng);
            let mut noisy = reference.clone();
            for i in 0..n {
                if rng.random_bool(qber) {
                    noisy.flip(i);
                }
            }
            let q = noisy.hamming_distance(&reference) as f64 / n as f64;
            let mut seed = [0u8; 32];
            rand::Rng::fill_bytes(&mut rng, &mut seed);
            let t = Instant::now();
            let r = run_local(&noisy, &reference, qber, seed);
            secs += t.elapsed().as_secs_f64();
            match r {
                Ok(r) => {
                    leaked += r.leaked_bits;
                    rounds += u64::from(r.round_trips);
                    if r.key != reference {
                        fails += 1;
                    }
                }
                Err(_) => fails += 1,
            }
            ideal += n as f64 * binary_entropy(q);
        }
        let f = frames.max(1) as f64;
        out.push(json!({
            "qber": qber,
            "frame_bits": n,
            "frames": frames.max(1),
            "efficiency": leaked as f64 / ideal,
            "fer": fails as f64 / f,
            "round_trips": rounds as f64 / f,
            "mbit_per_s": f * n as f64 / secs / 1e6,
        }));
    }
    out
}

fn distillation(reps: usize) -> Vec<Value> {
    use crate::link::{run_link, synthetic_records};
    use qpon_qkd::session::SessionConfig;
    let mut out = Vec::new();
    for qber in [0.01, 0.02] {
        let cfg = SessionConfig { block_bits: 100_000, ..SessionConfig::default() };
        // p_Z = 0.75: about 1.8 detections per sifted key bit; two blocks' worth.
        let (dets, pulses) = synthetic_records(360_000, qber, 0.75, 9);
        let mut last = None;
        let secs = median_secs(reps.min(3), || {
            last = Some(run_link(&cfg, &dets, &pulses, 10));
        });
        let run = last.unwrap_or_default();
        out.push(json!({
            "qber": qber,
            "block_bits": cfg.block_bits,
            "blocks": run.blocks.len(),
            "sifted_bits": run.sifted_bits,
            "secret_bits": run.secret_bits,
            "sifted_mbit_per_s": run.sifted_bits as f64 / secs / 1e6,
            "secret_mbit_per_s": run.secret_bits as f64 / secs / 1e6,
        }));
    }
    out
}

fn sampler(reps: usize) -> Vec<Value> {
    use crate::sampler::bench::events_per_second;
    let runs: Vec<_> = (0..reps.clamp(1, 5)).map(|_| events_per_second(128, 10.0)).collect();
    // The median by wall time and by CPU time, each over the runs.
    let median = |f: fn(&crate::sampler::bench::SamplerBench) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = &runs[0];
    vec![json!({
        "onus": m.onus,
        "detector": m.detector,
        "gate_rate_hz": m.gate_rate_hz,
        "virtual_s": m.virtual_s,
        "detections": m.detections,
        "events_per_s": median(|r| r.events_per_s),
        "events_per_cpu_s": median(|r| r.events_per_cpu_s),
        "cpu_time": runs.iter().all(|r| r.cpu_time),
    })]
}

/// A fresh directory under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("qpon-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Durable consumptions of 32 bytes per second into a store in the temp dir: one
/// transaction (one fsync) per consumption, then batches of 64 in one transaction each.
fn store(reps: usize) -> Vec<Value> {
    use qpon_kms::{KeyStore, Purpose};
    const EACH: usize = 32;
    const BLOCK_BITS: usize = 100_000;
    // (consumptions per transaction, transactions per run)
    let modes = [(1usize, 200usize), (64, 20)];
    let runs = reps.max(1) + 1;
    let dir = match ScratchDir::new("store") {
        Ok(d) => d,
        Err(e) => return vec![json!({"error": e.to_string()})],
    };
    let store = match KeyStore::open(dir.0.join("bench.redb")) {
        Ok(s) => s,
        Err(e) => return vec![json!({"error": e.to_string()})],
    };
    let pool = store.pool(1);
    // Enough key for every run of every mode, with a block's worth of margin per run for tails.
    let need: usize = modes.iter().map(|&(batch, txns)| runs * (batch * txns * EACH + BLOCK_BITS / 8)).sum();
    let mut rng = qpon_qkd::rng::seeded(5);
    for i in 0..need.div_ceil(BLOCK_BITS / 8) {
        let block = qpon_qkd::BitBlock::random(BLOCK_BITS, &mut rng);
        if let Err(e) = pool.append_block(uuid::Uuid::from_u128(i as u128 + 1), &block) {
            return vec![json!({"error": e.to_string()})];
        }
    }
    let mut out = Vec::new();
    for (batch, txns) in modes {
        let mut failed = None;
        let secs = median_secs(reps, || {
            for _ in 0..txns {
                let r = if batch == 1 {
                    pool.consume(Purpose::Downstream, EACH).map(|c| vec![c])
                } else {
                    pool.consume_many(Purpose::Downstream, EACH, batch)
                };
                match r {
                    Ok(c) => {
                        std::hint::black_box(c);
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
        });
        let n = (batch * txns) as f64;
        out.push(json!({
            "mode": if batch == 1 { "consume" } else { "consume_many" },
            "bytes_each": EACH,
            "consumptions_per_commit": batch,
            "consumptions_per_s": n / secs,
            "commits_per_s": txns as f64 / secs,
            "error": failed,
        }));
    }
    out
}

/// The downstream cipher on one core: seal, then open, of 1500-byte payloads.
fn downstream(reps: usize) -> Vec<Value> {
    use qpon_mux::OnuId;
    use qpon_mux::downstream::{DownstreamKey, DownstreamKeys, HEADER_LEN, KeysConfig};
    const LEN: usize = 1500;
    const FRAMES: u64 = 100_000;
    const PER_SUPERFRAME: u64 = 1000;
    let onu = OnuId(1);
    let mut olt = DownstreamKeys::new(onu, KeysConfig { overlap_superframes: 0, require_encryption: true });
    let mut rx = DownstreamKeys::new(onu, KeysConfig::default());
    let key = [0x3c; 16];
    if olt.install(DownstreamKey::from_bytes(key), 0).is_err()
        || rx.install(DownstreamKey::from_bytes(key), 0).is_err()
    {
        return vec![json!({"error": "key install failed"})];
    }
    let payload = vec![0x5au8; LEN];
    let mut buf = vec![0u8; HEADER_LEN + LEN];
    // Frame positions only move forward, across runs too.
    let mut superframe = 0u64;
    let mut errors = 0u64;
    let seal = median_secs(reps, || {
        for i in 0..FRAMES {
            if olt.seal_into(superframe + i / PER_SUPERFRAME, &payload, &mut buf).is_err() {
                errors += 1;
            }
        }
        superframe += FRAMES / PER_SUPERFRAME + 1;
        std::hint::black_box(&buf);
    });
    let open = median_secs(reps, || {
        for _ in 0..FRAMES {
            // CTR is an involution: opening the same frame again costs the same.
            if rx.open_in_place(&mut buf).is_err() {
                errors += 1;
            }
        }
        std::hint::black_box(&buf);
    });
    let bits = (FRAMES * LEN as u64 * 8) as f64;
    ["seal", "open"]
        .into_iter()
        .zip([seal, open])
        .map(|(op, secs)| {
            json!({
                "op": op,
                "payload_bytes": LEN,
                "frames_per_s": FRAMES as f64 / secs,
                "gbit_per_s": bits / secs / 1e9,
                "errors": errors,
            })
        })
        .collect()
}

/// Runs one stage and returns its records.
pub fn run_stage(stage: Stage, args: &Args) -> Vec<Value> {
    let reps = args.reps;
    match stage {
        Stage::Sifting => sifting(reps),
        Stage::FiniteKey => finite_key(reps),
        Stage::Verification => verification(reps),
        Stage::PrivacyAmplification => privacy_amplification(reps),
        Stage::WcMac => wc_mac(reps),
        Stage::Reconciliation => reconciliation(args.frames),
        Stage::Distillation => distillation(reps),
        Stage::Sampler => sampler(reps),
        Stage::Store => store(reps),
        Stage::Downstream => downstream(reps),
    }
}

#[derive(Serialize)]
struct Report(Map<String, Value>);

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), CliError> {
    let stages: Vec<Stage> = if args.only.is_empty() { Stage::ALL.to_vec() } else { args.only.clone() };
    let bar = indicatif::ProgressBar::new(stages.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut report = Map::new();
    for s in &stages {
        bar.set_message(s.key());
        let records = run_stage(*s, &args);
        report.insert(s.key().to_string(), Value::Array(records));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let target: JsonTarget = args.json.clone();
    let to_stdout = write_json(&target, &Report(report.clone()))?;
    if !to_stdout {
        for (stage, records) in &report {
            for r in records.as_array().into_iter().flatten() {
                println!("{stage:<24} {}", r);
            }
        }
    }
    Ok(())
}
