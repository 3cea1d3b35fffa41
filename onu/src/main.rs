//! `onu`: the ONU service. See `onu --help`.

use clap::{Parser, Subcommand};
use qpon_hw::PulseSource;
use qpon_node::logging::{self, LogFormat};
use qpon_onu::config::{BackendKind, DEFAULT_CONFIG, OnuConfig};
use qpon_onu::service::{OnuHandle, PoolSource};
use qpon_onu::status::OnuStatus;
use std::path::PathBuf;
use std::process::ExitCode;

/// The qpon ONU: a QKD source, one distillation session with the OLT, a key pool.
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
    /// Runs the ONU until SIGINT or SIGTERM.
    Run {
        /// Configuration file (`onu show-config` prints a commented default).
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
    /// Prints a running ONU's figures (from its status endpoint).
    Status {
        /// The ONU's `metrics_listen` address.
        #[arg(long, default_value = "127.0.0.1:9401")]
        addr: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
            eprintln!("onu: {msg}");
            ExitCode::from(code)
        }
    }
}

/// The source the configuration selects.
fn backend(cfg: &OnuConfig) -> Result<Box<dyn PulseSource + Send>, (u8, String)> {
    match cfg.backend.kind {
        // The source-board driver is the hardware issue's; until it lands the service runs
        // only in-process, with the simulator as its source.
        BackendKind::Board => Err((
            2,
            format!(
                "backend `board` ({}): the source-board driver is not implemented yet; \
                 use `qpon-sim pon` to emulate a whole PON",
                cfg.backend.address
            ),
        )),
    }
}

fn run(cmd: Cmd) -> Result<(), (u8, String)> {
    match cmd {
        Cmd::ShowConfig { config: None } => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        Cmd::ShowConfig { config: Some(path) } => {
            let cfg = OnuConfig::load(&path).map_err(|e| (2, e.to_string()))?;
            print!("{}", toml::to_string_pretty(&cfg).map_err(|e| (1, e.to_string()))?);
            Ok(())
        }
        Cmd::Certs { out, saes } => {
            let text = qpon_node::api::write_dev_certs(&out, &saes, "onu").map_err(|e| (1, e))?;
            print!("{text}");
            Ok(())
        }
        Cmd::Status { addr, json } => {
            qpon_node::print_status(&addr, json, OnuStatus::to_table).map_err(|e| (1, e))
        }
        Cmd::Run { config } => {
            let cfg = OnuConfig::load(&config).map_err(|e| (2, e.to_string()))?;
            cfg.require_identity().map_err(|e| (2, e.to_string()))?;
            // What can be checked without starting: the KEK and the API's files.
            qpon_node::resolve_kek(&cfg.onu.kek_file, "onu.kek_file").map_err(|e| (2, e.to_string()))?;
            cfg.api.check_files().map_err(|e| (2, e.to_string()))?;
            let source = backend(&cfg)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| (1, format!("starting the runtime: {e}")))?;
            rt.block_on(async move {
                let onu = OnuHandle::start(cfg, source, PoolSource::Config)
                    .await
                    .map_err(|e| (2, e.to_string()))?;
                qpon_node::shutdown_signal().await;
                let fin = onu.shutdown().await;
                tracing::info!(blocks = fin.blocks, secret_bits = fin.secret_bits, "stopped");
                Ok(())
            })
        }
    }
}
