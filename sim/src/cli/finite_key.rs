//! `qpon-sim finite-key`: the decoy-state finite-key bound on counts from a JSON file.
//!
//! Input (all fields required, unknown fields refused):
//! `{"mu":[μ1,μ2,μ3], "p":[p1,p2,p3], "key":{"n":[..3],"m":[..3]},
//!   "test":{"n":[..3],"m":[..3]}, "eps_sec":…, "eps_cor":…, "lambda_ec":…}`.
//! Output: `{"s0":…, "s1":…, "test_s1":…, "v1":…, "phi":…, "ell":…}` on stdout.

use super::CliError;
use super::io::{parse_json, read_input};
use qpon_qkd::finite_key::{BoundInput, BoundOutput, DecoyParams, finite_key};
use qpon_qkd::sift::BasisCounts;
use serde::Deserialize;
use std::path::PathBuf;

/// Arguments of `qpon-sim finite-key`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON file with the counts and parameters (`-` reads standard input).
    #[arg(long, short, value_name = "FILE")]
    pub input: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Counts {
    n: [f64; 3],
    m: [f64; 3],
}

/// The file format (kept separate from the library type so the schema is fixed here).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputFile {
    mu: [f64; 3],
    p: [f64; 3],
    key: Counts,
    test: Counts,
    eps_sec: f64,
    eps_cor: f64,
    lambda_ec: f64,
}

/// Parses and evaluates an input text; errors name the field.
pub fn evaluate_text(text: &str) -> Result<BoundOutput, CliError> {
    let f: InputFile = parse_json(text)?;
    let input = BoundInput {
        params: DecoyParams { mu: f.mu, p: f.p },
        key: BasisCounts { n: f.key.n, m: f.key.m },
        test: BasisCounts { n: f.test.n, m: f.test.m },
        eps_sec: f.eps_sec,
        eps_cor: f.eps_cor,
        lambda_ec: f.lambda_ec,
    };
    finite_key(&input).map_err(|e| CliError::BadInput(e.to_string()))
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), CliError> {
    let text = read_input(&args.input)?;
    let out = evaluate_text(&text)?;
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| CliError::Other(e.into()))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"mu":[0.5,0.2,0.0002],"p":[0.3,0.45,0.25],
        "key":{"n":[2500000,1400000,2000],"m":[25000,14000,1000]},
        "test":{"n":[280000,160000,230],"m":[2800,1600,115]},
        "eps_sec":1e-10,"eps_cor":1e-15,"lambda_ec":250000}"#;

    fn field_error(text: &str) -> String {
        match evaluate_text(text) {
            Err(CliError::BadInput(m)) => m,
            other => panic!("expected bad input, got {other:?}"),
        }
    }

    #[test]
    fn good_input_evaluates() {
        let o = evaluate_text(GOOD).unwrap();
        assert!(o.ell > 0 && o.phi < 0.5);
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let cases = [
            (GOOD.replace("[0.5,0.2,0.0002]", "[0.5,0.2]"), "`mu`"),
            (GOOD.replace("[0.3,0.45,0.25]", "[0.3,0.45,0.2]"), "`p`"),
            (GOOD.replace("[0.5,0.2,0.0002]", "[0.3,0.2,0.15]"), "`mu`"),
            (GOOD.replace("[0.5,0.2,0.0002]", "[0.5,0.2,0.2]"), "`mu`"),
            (GOOD.replace("[0.5,0.2,0.0002]", "[0.5,0.2,-0.1]"), "`mu`"),
            (GOOD.replace("[25000,14000,1000]", "[25000,14000,3000]"), "`key.m`"),
            (GOOD.replace("[280000,160000,230]", "[280000,-1,230]"), "`test.n`"),
            (GOOD.replace("[280000,160000,230]", "[280000,\"x\",230]"), "`test.n[1]`"),
            (GOOD.replace("\"lambda_ec\"", "\"lambda\""), "lambda"),
        ];
        for (text, field) in cases {
            let m = field_error(&text);
            assert!(m.contains(field), "message {m:?} does not name {field}");
        }
    }
}
