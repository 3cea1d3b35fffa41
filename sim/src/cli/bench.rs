//! `qpon-sim bench` (being written).

use super::CliError;

/// Arguments of `qpon-sim bench`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> Result<(), CliError> {
    Err(CliError::Other(anyhow::anyhow!("not yet")))
}
