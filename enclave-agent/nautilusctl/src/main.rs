//! `nautilusctl`: the user's command line for nautilus evidence: `verify` a control plane,
//! `join` it as a worker, check attestation documents, mint seal tokens.
//!
//! Each subcommand group lives in its own module with a clap `Subcommand` enum and a
//! `run(self) -> anyhow::Result<ExitCode>`; this file only parses and maps errors to exit
//! codes. Exit codes: 0 success, 1 the checked evidence is invalid (or an operation
//! failed), 2 usage errors (bad flags, bad hex, unreadable inputs).

/// `println!` for the command's output, which ends the process quietly when stdout is a closed
/// pipe (`nautilusctl … | head`) instead of panicking as `println!` does.
macro_rules! out {
    () => { $crate::write_stdout(format_args!("")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

mod attestation;
mod join;
mod sui;
mod token;
mod verify;

/// Write one line of output; exit 0 on a closed pipe (the reader has what it wanted), 1 on any
/// other write error.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
    {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {err}");
        std::process::exit(1);
    }
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The nautilus user CLI: check attestation evidence, mint and verify seal tokens, verify Sui signatures.
#[derive(Debug, Parser)]
#[command(name = "nautilusctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a NautilusMaster's control plane yourself: a fresh attestation for your own
    /// nonce, checked against your spec, and the endpoint's certificate against the attested
    /// CA; then, optionally, a kubeconfig pinned to that CA. Exit 0 verified, 1 refused (with
    /// the reason), 2 usage error.
    Verify(Box<verify::VerifyArgs>),
    /// Make this machine a node of a NautilusMaster: verify its control plane exactly as
    /// `verify` does, then write the kubelet's kubeconfig (pinned to the attested CA, seal
    /// tokens from the worker's key), its KubeletConfiguration and the CA, and print the node
    /// name and the kubelet command line. Nothing is written unless every check passed. Exit 0
    /// joined, 1 refused (with the reason), 2 usage error.
    Join(Box<join::JoinArgs>),
    /// Attestation documents: verify real or simulated ones, issue simulated ones.
    #[command(subcommand)]
    Attestation(attestation::Command),
    /// Seal tokens: mint, verify, and serve kubectl as an exec credential plugin.
    #[command(subcommand)]
    Token(token::Command),
    /// Sui signatures: verify personal-message signatures as the enclave does.
    #[command(subcommand)]
    Sui(sui::Command),
}

/// An error caused by how the command was invoked: exit code 2, like clap's own errors.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow::Error`.
fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Verify(args) => args.run(),
        Command::Join(args) => args.run(),
        Command::Attestation(cmd) => cmd.run(),
        Command::Token(cmd) => cmd.run(),
        Command::Sui(cmd) => cmd.run(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
