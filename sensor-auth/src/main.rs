//! `sensor-auth`: benchmark the authenticated framing, inspect a pool's sensor-auth budget,
//! and (see `proxy`) run the Modbus/TCP bump-in-the-wire.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qpon_kms::{KEK_ENV, Kek, KeyStore, Purpose, StoreOptions};
use qpon_sensor_auth::bench::{self, BenchOptions, BenchReport};
use qpon_sensor_auth::frame::{DESCRIPTOR_LEN, HEADER_LEN, MAX_FRAME_LEN};
use qpon_sensor_auth::{Class, EndConfig};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "sensor-auth",
    version,
    about = "Wegman–Carter authenticated SCADA/sensor streams keyed from QKD pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Framing + tag + verification throughput (no transport) for 16/64/256-byte payloads.
    Bench(BenchArgs),
    /// A key store pool's level and sensor-auth consumption.
    Status(StatusArgs),
    // PROXY-SUBCOMMAND: the proxy helper adds its variant here, e.g.
    // `Proxy(qpon_sensor_auth::proxy::cli::ProxyArgs),` and its arm in `main` below.
    /// Modbus/TCP bump-in-the-wire: `--role control` beside the SCADA master, `--role field` beside the device.
    Proxy(qpon_sensor_auth::proxy::cli::ProxyArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Round trips (two frames each) per measurement.
    #[arg(long, default_value_t = 200_000)]
    round_trips: u64,
    /// Measurements per row (median reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Pool key rate in bits/s for the "sustained frames/s" column.
    #[arg(long, default_value_t = 1.0e6)]
    key_rate: f64,
    /// Reading tag length in bits (GF(2^128) rows).
    #[arg(long, default_value_t = 64)]
    reading_tag_bits: u32,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    sizes: Vec<usize>,
    /// Tags per measurement in the bare-MAC table.
    #[arg(long, default_value_t = 1_000_000)]
    mac_tags: u64,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The key store file (a qpon kms store). Encrypted stores need the KEK in $QPON_KEK.
    #[arg(long)]
    store: PathBuf,
    /// The ONU whose pool feeds the sensor stream.
    #[arg(long)]
    onu: u16,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Bench(a) => run_bench(a),
        Command::Status(a) => run_status(a),
        Command::Proxy(a) => qpon_sensor_auth::proxy::cli::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sensor-auth: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_bench(a: BenchArgs) -> anyhow::Result<()> {
    if a.sizes.iter().any(|&s| s > qpon_sensor_auth::MAX_PAYLOAD_LEN) {
        anyhow::bail!("--sizes: each at most {} bytes", qpon_sensor_auth::MAX_PAYLOAD_LEN);
    }
    EndConfig { reading_tag_bits: a.reading_tag_bits, ..EndConfig::default() }
        .validate()
        .map_err(|e| anyhow::anyhow!("--reading-tag-bits: {e}"))?;
    let opts = BenchOptions {
        payload_sizes: a.sizes,
        round_trips: a.round_trips.max(1),
        repeats: a.repeats.max(1),
        reading_tag_bits: a.reading_tag_bits,
        key_rate_bps: a.key_rate,
        mac_tags: a.mac_tags,
        ..BenchOptions::default()
    };
    let report = bench::run(&opts);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_bench(&report);
    }
    Ok(())
}

fn print_bench(r: &BenchReport) {
    println!(
        "framing + tag + verification per frame (one core; request and response; median of {}; {} round trips each)",
        r.options.repeats, r.options.round_trips
    );
    println!(
        "{:<9} {:<8} {:>4} {:>7} {:>6} {:>12} {:>9} {:>10} {:>14} {:>10}",
        "family",
        "class",
        "tag",
        "payload",
        "frame",
        "frames/s",
        "µs/frame",
        "keybit/fr",
        "sustained f/s",
        "commit/fr"
    );
    for f in &r.frames {
        println!(
            "{:<9} {:<8} {:>4} {:>7} {:>6} {:>12.0} {:>9.3} {:>10.1} {:>14.0} {:>10.2e}",
            format!("{:?}", f.family).to_lowercase(),
            f.class.to_string(),
            f.tag_bits,
            f.payload,
            f.frame_bytes,
            f.frames_per_s,
            f.us_per_frame,
            f.key_bits_per_frame,
            f.sustained_frames_per_s,
            f.commits_per_frame
        );
    }
    println!("(sustained f/s: at a pool key rate of {} bit/s)", r.options.key_rate_bps);
    println!();
    println!("bare MAC, one-time pad per tag");
    println!("{:<12} {:>5} {:>20} {:>20}", "family", "msg", "recycled key tags/s", "fresh key tags/s");
    for m in &r.macs {
        println!(
            "{:<12} {:>5} {:>20.0} {:>20.0}",
            m.family, m.msg, m.recycled_key_tags_per_s, m.fresh_key_tags_per_s
        );
    }
}

/// `status` output.
#[derive(Serialize)]
struct PoolStatus {
    store: PathBuf,
    onu: u16,
    blocks: u64,
    level_bytes: u64,
    sensor_auth_consumed_bytes: u64,
    sensor_auth_batches: u64,
    /// With the default configuration: batches and requests the level still covers.
    default_batch_bytes: usize,
    batches_left: u64,
    commands_left: u64,
    readings_left: u64,
    low_water_bytes: u64,
    below_low_water: bool,
    /// Per-attempt forgery bounds at the longest frame (the union bound sums them).
    forgery_bound_per_command: f64,
    forgery_bound_per_reading: f64,
}

fn run_status(a: StatusArgs) -> anyhow::Result<()> {
    if !a.store.exists() {
        anyhow::bail!("--store: {} does not exist", a.store.display());
    }
    let options = match std::env::var_os(KEK_ENV) {
        Some(_) => {
            StoreOptions { kek: Some(Kek::from_env(KEK_ENV).map_err(|e| anyhow::anyhow!("{KEK_ENV}: {e}"))?) }
        }
        None => StoreOptions::default(),
    };
    let store = KeyStore::open_with(&a.store, options).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let pool = store.pool(a.onu);
    let totals = pool.totals()?;
    let batches = pool.consumptions(Purpose::SensorAuth)?.len() as u64;
    let c = EndConfig::default();
    let per_batch = |class: Class| ((c.batch_bytes - 16) / (2 * c.tag_len(class))) as u64;
    let batches_left = totals.level / c.batch_bytes as u64;
    let longest = |class: Class| MAX_FRAME_LEN - c.tag_len(class);
    let _ = (HEADER_LEN, DESCRIPTOR_LEN);
    let s = PoolStatus {
        store: a.store.clone(),
        onu: a.onu,
        blocks: totals.blocks,
        level_bytes: totals.level,
        sensor_auth_consumed_bytes: totals.consumed_for(Purpose::SensorAuth),
        sensor_auth_batches: batches,
        default_batch_bytes: c.batch_bytes,
        batches_left,
        commands_left: batches_left * per_batch(Class::Command),
        readings_left: batches_left * per_batch(Class::Reading),
        low_water_bytes: c.low_water_bytes,
        below_low_water: totals.level < c.low_water_bytes,
        forgery_bound_per_command: c.mac_family(Class::Command).forgery_bound(longest(Class::Command)),
        forgery_bound_per_reading: c.mac_family(Class::Reading).forgery_bound(longest(Class::Reading)),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("store {} ONU {}", s.store.display(), s.onu);
        println!("  blocks                 {}", s.blocks);
        println!("  level                  {} bytes", s.level_bytes);
        println!(
            "  sensor-auth consumed   {} bytes in {} batches",
            s.sensor_auth_consumed_bytes, s.sensor_auth_batches
        );
        println!(
            "  left (default config)  {} batches of {} B: {} commands or {} readings (request + response)",
            s.batches_left, s.default_batch_bytes, s.commands_left, s.readings_left
        );
        println!(
            "  low-water mark         {} bytes{}",
            s.low_water_bytes,
            if s.below_low_water { "  ** BELOW: commands refused, alarm **" } else { "" }
        );
        println!(
            "  forgery bound/attempt  command {:.3e}, reading {:.3e} (longest frame)",
            s.forgery_bound_per_command, s.forgery_bound_per_reading
        );
    }
    Ok(())
}
