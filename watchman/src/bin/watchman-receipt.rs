//! `watchman-receipt`: checks a run's signed receipt with Watchman's public key.
//!
//! ```text
//! watchman-receipt --public-key watchman.pub.pem run.json
//! ```
//! `run.json` is a run as the jobs API returns it (HTTP `GET /v1/runs/{id}`), or just its
//! `receipt` object. With a whole run, its code, stdin and outputs must also be the ones signed.
//! Exit status 0 and the receipt's fields on stdout when it verifies; 1 and why when not.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use watchman::jobs::model::{Receipt, Run};
use watchman::jobs::receipt;

#[derive(Parser)]
#[command(about = "Verify a Watchman run receipt (Ed25519)")]
struct Cli {
    /// Watchman's public key (SPKI PEM), the half of its --signing-key.
    #[arg(long)]
    public_key: std::path::PathBuf,
    /// A run as the jobs API returns it, or its receipt object; `-` for standard input.
    file: std::path::PathBuf,
}

fn main() -> ExitCode {
    match check(&Cli::parse()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("receipt does not verify: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(cli: &Cli) -> anyhow::Result<String> {
    let pem = std::fs::read_to_string(&cli.public_key)
        .with_context(|| format!("reading {}", cli.public_key.display()))?;
    let key = session_token::VerifyingKey::from_pem(&pem)?;
    let text = if cli.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&cli.file)
            .with_context(|| format!("reading {}", cli.file.display()))?
    };
    let value: serde_json::Value = serde_json::from_str(&text).context("not JSON")?;
    // A file with a `receipt` is a run, and is checked as one: a run that does not parse is
    // refused, never checked as a bare receipt.
    let (receipt, run) = if value.get("receipt").is_some() {
        let run: Run = serde_json::from_value(value).context("not a run")?;
        (
            run.receipt
                .clone()
                .context("the run has no receipt (not finished?)")?,
            Some(run),
        )
    } else {
        (
            serde_json::from_value::<Receipt>(value)
                .context("neither a run nor a receipt (payload, signature, key_id)")?,
            None,
        )
    };
    let body = receipt::verify(&receipt, &key, run.as_ref())?;
    let checked = if run.is_some() {
        "the signature, and the run's code, stdin and outputs"
    } else {
        "the signature only (give the whole run to check its code, stdin and outputs)"
    };
    Ok(format!(
        "verified {checked}\n{}",
        serde_json::to_string_pretty(&body)?
    ))
}
