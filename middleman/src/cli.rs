//! The `keygen` and `token` subcommands (development key handling).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;

use anyhow::Context as _;
use session_token::{Claims, SigningKey};

use crate::config::{KeygenArgs, SandboxCheckArgs, TokenArgs};

/// Writes `signing.pem` (0600) and `public.pem` into `args.out_dir`. Refuses to overwrite an
/// existing key.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let key = SigningKey::generate();
    let private = args.out_dir.join("signing.pem");
    let public = args.out_dir.join("public.pem");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| {
            format!(
                "creating {} (remove it first to make a new key)",
                private.display()
            )
        })?;
    f.write_all(key.to_pem()?.as_bytes())?;
    std::fs::write(&public, key.verifying_key().to_pem()?)
        .with_context(|| format!("writing {}", public.display()))?;
    eprintln!("wrote {} and {}", private.display(), public.display());
    Ok(())
}

/// Mints a token and prints it on stdout.
pub fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let key = SigningKey::from_pem(&pem)?;
    let name = args.name.clone().unwrap_or_else(|| args.user.clone());
    let claims = Claims::new(
        "middleman-dev",
        &args.user,
        &name,
        &args.doc,
        &args.pod,
        args.role,
        args.ttl_secs,
    );
    println!("{}", key.mint(&claims)?);
    Ok(())
}

/// Prints which sandbox layers hold for kernels started with `args.agent`, as JSON; returns 0
/// when `args.require` is met, 3 when it is not, 1 when the check could not run.
pub fn sandbox_check(args: &SandboxCheckArgs) -> i32 {
    match kernel_sandbox::agent::server::check(&args.agent) {
        Ok(report) => {
            let missing = report.missing(args.require);
            let out = serde_json::json!({
                "level": report.level(),
                "required": args.require,
                "missing": missing,
                "layers": report.layers,
            });
            println!("{out}");
            if missing.is_empty() { 0 } else { 3 }
        }
        Err(error) => {
            eprintln!("sandbox check: {error}");
            1
        }
    }
}
