//! `gateway`: the public edge (docs/gateway.md). Drains on SIGTERM or Ctrl-C.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = gateway::config::Args::parse();
    telemetry::init_logging(&args.log_format);
    let running = gateway::start(args).await?;
    shutdown_signal().await;
    running.drain().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "no SIGTERM handler; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
