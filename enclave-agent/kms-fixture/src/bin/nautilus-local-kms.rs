//! `nautilus-local-kms`: the local KMS for development (never in an enclave image).
//!
//! - `serve`: HTTPS on `--listen` with a fresh development CA written to `--ca-out` (give it
//!   to the agent as the KMS endpoint's trust root), one key, the key policy from
//!   `--key-policy`, Recipient documents verified against `--root-pem` (or the AWS Nitro root
//!   with `--aws-root`).
//! - `gen-root`: a P-384 root key for the simulated NSM (`nautilus-agent --nsm simulated
//!   --simulated-root-key KEY`) and its root certificate (`serve --root-pem CERT`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use nautilus_kms_fixture::policy::KeyPolicy;
use nautilus_kms_fixture::sigv4::SigningCredentials;
use nautilus_kms_fixture::{DevTls, LocalKms, LocalKmsConfig, MAX_DOCUMENT_AGE, serve};
use nautilus_protocol::attestation::TrustAnchor;
use nautilus_protocol::nsm::{generate_root_key, root_pem_for_key};

/// A local AWS KMS (GenerateDataKey and Decrypt with a Nitro Recipient) for development.
#[derive(Debug, Parser)]
#[command(name = "nautilus-local-kms", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the AWS JSON 1.1 KMS protocol over HTTPS.
    Serve(Box<Serve>),
    /// Write a simulated-NSM root key (PKCS#8 PEM, P-384) and its root certificate.
    GenRoot {
        /// Where the key goes (mode 0600; refused if it exists).
        #[arg(long)]
        key: PathBuf,
        /// Where the root certificate goes.
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Debug, Parser)]
struct Serve {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4566")]
    listen: SocketAddr,
    /// DNS names and IP addresses for the server certificate (repeatable).
    #[arg(long = "tls-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    tls_names: Vec<String>,
    /// Where the development CA certificate (PEM) is written.
    #[arg(long)]
    ca_out: PathBuf,
    /// The key policy (AWS JSON).
    #[arg(long)]
    key_policy: PathBuf,
    /// Root certificate (PEM) Recipient documents must chain to, e.g. `gen-root --cert`.
    #[arg(
        long,
        conflicts_with = "aws_root",
        required_unless_present = "aws_root"
    )]
    root_pem: Option<PathBuf>,
    /// Trust the AWS Nitro Enclaves root G1 instead.
    #[arg(long)]
    aws_root: bool,
    /// Region (ARNs and the SigV4 scope).
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Account id in ARNs.
    #[arg(long, default_value = "111122223333")]
    account: String,
    /// The key's id.
    #[arg(long, default_value = "00000000-0000-4000-8000-000000000001")]
    key_id: String,
    /// The key's master key (32 bytes); generated and written (mode 0600) if absent.
    #[arg(long)]
    master_key: PathBuf,
    /// Access key id requests must be signed with.
    #[arg(long, env = "NAUTILUS_LOCAL_KMS_ACCESS_KEY_ID")]
    access_key_id: String,
    /// Its secret key.
    #[arg(
        long,
        env = "NAUTILUS_LOCAL_KMS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    secret_access_key: String,
    /// Its session token, when the credentials are temporary.
    #[arg(long, env = "NAUTILUS_LOCAL_KMS_SESSION_TOKEN", hide_env_values = true)]
    session_token: Option<String>,
    /// The ARN those credentials act as (the key policy's Principal).
    #[arg(
        long,
        default_value = "arn:aws:iam::111122223333:role/nautilus-enclave-instance"
    )]
    caller_arn: String,
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn master_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .as_slice()
            .try_into()
            .with_context(|| format!("{} must hold exactly 32 bytes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("random"))?;
            write_private(path, &key)?;
            tracing::info!(path = %path.display(), "generated a master key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

async fn run_serve(args: Serve) -> anyhow::Result<()> {
    let policy_text = std::fs::read_to_string(&args.key_policy)
        .with_context(|| format!("reading {}", args.key_policy.display()))?;
    let policy = KeyPolicy::from_json(&policy_text)?;
    let root = match (&args.root_pem, args.aws_root) {
        (Some(path), false) => TrustAnchor::from_pem(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        (None, true) => TrustAnchor::aws_nitro_root_g1(),
        _ => bail!("give exactly one of --root-pem and --aws-root"),
    };
    let fingerprint = root.sha256_fingerprint();
    let kms = LocalKms::new(LocalKmsConfig {
        region: args.region,
        account: args.account,
        key_id: args.key_id,
        master_key: master_key(&args.master_key)?,
        credentials: SigningCredentials {
            access_key_id: args.access_key_id,
            secret_access_key: args.secret_access_key,
            session_token: args.session_token,
        },
        caller_arn: args.caller_arn,
        policy,
        root,
        max_document_age: MAX_DOCUMENT_AGE,
    })?;
    let tls = DevTls::generate(&args.tls_names)?;
    std::fs::write(&args.ca_out, &tls.ca_pem)
        .with_context(|| format!("writing {}", args.ca_out.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let key_arn = kms.key_arn().to_owned();
    let server = serve(Arc::new(kms), listener, &tls)?;
    tracing::info!(
        endpoint = %server.endpoint(),
        key = %key_arn,
        root_sha256 = %fingerprint,
        ca = %args.ca_out.display(),
        "local kms serving (development only)"
    );
    tokio::select! {
        () = server.wait() => bail!("the server stopped"),
        _ = tokio::signal::ctrl_c() => {}
        () = sigterm() => {}
    }
    Ok(())
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn gen_root(key: &Path, cert: &Path) -> anyhow::Result<()> {
    let pem = generate_root_key()?;
    let root = root_pem_for_key(&pem)?;
    write_private(key, pem.as_bytes())?;
    std::fs::write(cert, root).with_context(|| format!("writing {}", cert.display()))?;
    println!(
        "root key: {}\nroot certificate: {}",
        key.display(),
        cert.display()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => run_serve(*args).await,
        Command::GenRoot { key, cert } => gen_root(&key, &cert),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
