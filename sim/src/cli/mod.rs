//! The `qpon-sim` command line: one file per subcommand, shared I/O helpers in [`io`].
//!
//! Conventions for every subcommand: `--json [FILE]` writes the machine-readable result
//! (stdout when no file is given), `--input -` reads standard input, long runs show a
//! progress bar on stderr, and bad input exits with code 2 and a message naming the field.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod bench;
pub mod finite_key;
pub mod io;
pub mod pon;
pub mod rate;
pub mod sweep;

/// qpon-sim: plan, emulate and measure multi-user QKD in passive optical networks.
#[derive(Debug, Parser)]
#[command(name = "qpon-sim", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Emulate a whole PON: the OLT and ONU drivers on simulated hardware (the main job).
    Pon(pon::Args),
    /// Evaluate the decoy-state finite-key bound (Lim et al. 2014) on counts from a JSON file.
    FiniteKey(finite_key::Args),
    /// Measure single-thread throughput of each distillation stage.
    Bench(bench::Args),
    /// Per-ONU and aggregate key rates of a PON from the analytic model.
    Rate(rate::Args),
    /// Key rates over a grid of ONU counts, distances, detectors and blocks (TSV, JSON, PNG).
    Sweep(sweep::Args),
}

/// Exit code for bad input (a field that cannot be accepted, an unreadable file).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// Errors a subcommand reports; the exit code follows the blame.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The user's input is wrong; the message names the field.
    #[error("{0}")]
    BadInput(String),
    /// Something else failed.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::BadInput(_) => EXIT_BAD_INPUT,
            CliError::Other(_) => EXIT_FAILURE,
        }
    }
}

/// Parses the command line, runs the subcommand, prints any error, returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pon(a) => pon::run_cli(a),
        Command::FiniteKey(a) => finite_key::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Rate(a) => rate::run(a),
        Command::Sweep(a) => sweep::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qpon-sim: error: {e}");
            if let CliError::Other(e) = &e {
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::from(e.exit_code())
        }
    }
}
