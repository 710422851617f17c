use clap::Parser as _;
use middleman::config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    // A jail's init is this binary too; it must run before any thread or runtime starts (it
    // makes namespaces that a multi-threaded process cannot).
    if let Some(code) = kernel_sandbox::run_stage() {
        exit(code);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen(args) => middleman::cli::keygen(&args),
        Command::Token(args) => middleman::cli::token(&args),
        Command::KernelAgent(args) => {
            middleman::telemetry::init_logging(
                &std::env::var("MIDDLEMAN_LOG_FORMAT").unwrap_or_else(|_| "text".into()),
            );
            exit(kernel_sandbox::agent::server::main(*args))
        }
        Command::SandboxCheck(args) => exit(middleman::cli::sandbox_check(&args)),
        Command::Serve(args) => {
            middleman::telemetry::init_logging(&args.log_format);
            let runtime = match args.worker_threads {
                1 => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
                n => tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(usize::from(n))
                    .enable_all()
                    .build()?,
            };
            runtime.block_on(async {
                let running = middleman::start(*args).await?;
                let token = running.shutdown_token();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    token.cancel();
                    tracing::info!("shutdown signal received");
                });
                running.wait().await;
                Ok(())
            })
        }
    }
}

#[expect(
    clippy::exit,
    reason = "the agent and the jail stages end the process with their code"
)]
fn exit(code: i32) -> ! {
    std::process::exit(code)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
