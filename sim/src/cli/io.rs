//! Input and output helpers shared by the subcommands.

use super::CliError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Reads a whole input: a file path, or `-` for standard input.
pub fn read_input(path: &Path) -> Result<String, CliError> {
    let mut s = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::BadInput(format!("reading stdin: {e}")))?;
    } else {
        s = std::fs::read_to_string(path)
            .map_err(|e| CliError::BadInput(format!("reading {}: {e}", path.display())))?;
    }
    Ok(s)
}

/// Parses JSON into `T`, naming the offending field (`mu`, `key.n[1]`, …) on error.
pub fn parse_json<T: DeserializeOwned>(text: &str) -> Result<T, CliError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            CliError::BadInput(format!("invalid JSON input: {inner}"))
        } else {
            CliError::BadInput(format!("invalid `{path}`: {inner}"))
        }
    })
}

/// Where `--json` output goes: `None` = not requested, `Some(None)` = stdout,
/// `Some(Some(path))` = that file.
pub type JsonTarget = Option<Option<PathBuf>>;

/// Writes `value` as pretty JSON to the `--json` target, if any. Returns whether JSON went
/// to stdout (so the caller skips its human-readable table there).
pub fn write_json<T: Serialize>(target: &JsonTarget, value: &T) -> Result<bool, CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Other(e.into()))?;
    match target {
        None => Ok(false),
        Some(None) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").map_err(|e| CliError::Other(e.into()))?;
            Ok(true)
        }
        Some(Some(path)) => {
            std::fs::write(path, text + "\n")
                .map_err(|e| CliError::Other(anyhow::anyhow!("writing {}: {e}", path.display())))?;
            Ok(false)
        }
    }
}
