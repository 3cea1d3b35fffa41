//! `olt`: the OLT service. See `olt --help`.

use clap::{Parser, Subcommand};
use qpon_hw::DetectorSource;
use qpon_node::logging::{self, LogFormat};
use qpon_olt::config::{BackendKind, DEFAULT_CONFIG, OltConfig};
use qpon_olt::service::{OltHandle, OltParts};
use qpon_olt::status::OltStatus;
use std::path::PathBuf;
use std::process::ExitCode;

/// The qpon OLT: one shared receiver, a distillation session and a key pool per ONU.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format on standard error (level from RUST_LOG, default info).
    #[arg(long, global = true, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the OLT until SIGINT or SIGTERM.
    Run {
        /// Configuration file (`olt show-config` prints a commented default).
        #[arg(long)]
        config: PathBuf,
    },
    /// Prints the commented default configuration, or with --config the configuration a
    /// file resolves to (defaults filled in).
    ShowConfig {
        /// Configuration file to resolve.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Prints a running OLT's per-ONU figures (from its status endpoint).
    Status {
        /// The OLT's `metrics_listen` address.
        #[arg(long, default_value = "127.0.0.1:9400")]
        addr: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Writes a fresh pre-shared secret (mode 0600) for one ONU; copy it to the ONU over a
    /// trusted path and name it in both configs.
    GenPsk {
        /// Output file (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Length in bytes.
        #[arg(long, default_value_t = 16 * 1024)]
        bytes: usize,
    },
    /// Writes development certificates for the ETSI API (a CA, a server certificate for
    /// localhost and a client certificate per SAE; mode 0600, never overwritten) and prints
    /// the `[api]` lines to paste. Not for production.
    Certs {
        /// Output directory (created if absent).
        #[arg(long)]
        out: PathBuf,
        /// An SAE ID (the client certificate's CN); repeat for each SAE.
        #[arg(long = "sae")]
        saes: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("olt: {msg}");
            ExitCode::from(code)
        }
    }
}

/// The receiver the configuration selects.
fn backend(cfg: &OltConfig) -> Result<Box<dyn DetectorSource + Send>, (u8, String)> {
    match cfg.backend.kind {
        // The detector-board driver is the hardware issue's; until it lands the service
        // runs only in-process, with the simulator as its receiver (`tests/`, `qpon-sim`).
        BackendKind::Board => Err((
            2,
            format!(
                "backend `board` ({}): the detector-board driver is not implemented yet; \
                 use `qpon-sim pon` to emulate a whole PON",
                cfg.backend.address
            ),
        )),
    }
}

fn run(cmd: Cmd) -> Result<(), (u8, String)> {
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| (1, format!("starting the runtime: {e}")))
    };
    match cmd {
        Cmd::ShowConfig { config: None } => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        Cmd::ShowConfig { config: Some(path) } => {
            let cfg = OltConfig::load(&path).map_err(|e| (2, e.to_string()))?;
            print!("{}", toml::to_string_pretty(&cfg).map_err(|e| (1, e.to_string()))?);
            Ok(())
        }
        Cmd::GenPsk { out, bytes } => {
            if bytes < qpon_node::MIN_PSK_BYTES {
                return Err((2, format!("--bytes must be at least {}", qpon_node::MIN_PSK_BYTES)));
            }
            qpon_node::write_psk(&out, bytes).map_err(|e| (1, format!("{}: {e}", out.display())))?;
            println!("wrote {bytes} bytes to {}", out.display());
            Ok(())
        }
        Cmd::Certs { out, saes } => {
            let text = qpon_node::api::write_dev_certs(&out, &saes, "olt").map_err(|e| (1, e))?;
            print!("{text}");
            Ok(())
        }
        Cmd::Status { addr, json } => {
            qpon_node::print_status(&addr, json, OltStatus::to_table).map_err(|e| (1, e))
        }
        Cmd::Run { config } => {
            let cfg = OltConfig::load(&config).map_err(|e| (2, e.to_string()))?;
            if cfg.onu.is_empty() {
                return Err((2, "invalid `onu`: configure at least one ONU".into()));
            }
            // What can be checked without starting: the KEK and the API's files.
            qpon_node::resolve_kek(&cfg.olt.kek_file, "olt.kek_file").map_err(|e| (2, e.to_string()))?;
            cfg.api.check_files().map_err(|e| (2, e.to_string()))?;
            let detector = backend(&cfg)?;
            rt()?.block_on(async move {
                let parts = OltParts::new(detector);
                let olt = OltHandle::start(cfg, parts).await.map_err(|e| (2, e.to_string()))?;
                qpon_node::shutdown_signal().await;
                let fin = olt.shutdown().await;
                tracing::info!(
                    onus = fin.onus.len(),
                    blocks = fin.onus.iter().map(|o| o.blocks).sum::<u64>(),
                    "stopped"
                );
                Ok(())
            })
        }
    }
}
