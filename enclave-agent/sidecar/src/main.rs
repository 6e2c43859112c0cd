//! `nautilus-sidecar`: see the library documentation and `--help`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use nautilus_sidecar::{Args, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut running = nautilus_sidecar::start(args).await?;
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: stopping the enclave"),
        _ = tokio::signal::ctrl_c() => info!("interrupted: stopping the enclave"),
        err = running.wait() => {
            if let Err(stop) = running.shutdown().await {
                error!(error = format!("{:#}", anyhow::Error::from(stop)), "stopping after a failure");
            }
            return Err(err.into());
        }
    }
    running.shutdown().await?;
    Ok(())
}

fn main() -> ExitCode {
    // First, before the runtime's threads: the hidden mode that starts the agent with a
    // parent-death signal (see nautilus_lifetime::tether) never returns.
    nautilus_lifetime::exec_if_requested();
    sidecar()
}

#[tokio::main]
async fn sidecar() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
