use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = watchman::Args::parse();
    watchman::init_logging(args.log_format);
    let running = watchman::start(args).await?;
    let token = running.shutdown_token();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
        tracing::info!("shutdown signal received");
    });
    running.wait().await;
    Ok(())
}
