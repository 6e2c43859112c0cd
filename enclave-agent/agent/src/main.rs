//! `nautilus-agent`: see [`nautilus_agent::cli::Args`].

use clap::Parser as _;
use nautilus_agent::cli::{Args, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // First, before the runtime's threads: the hidden mode that starts a control-plane
    // component with a parent-death signal (see nautilus_lifetime::tether) never returns.
    nautilus_lifetime::exec_if_requested();
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Err(e) = args.run().await {
        tracing::error!(error = %format!("{:#}", anyhow::Error::from(e)), "agent failed");
        std::process::exit(1);
    }
    Ok(())
}
