//! `nautilusctl sui …`: check Sui signatures the way the enclave does.
//!
//! `verify-personal-message` runs the same function the seal-token verifier uses: the
//! signature must verify over the PersonalMessage intent and be made by the given address
//! (the key's address, the multisig committee's, or for zkLogin one derived from the issuer and
//! address seed). zkLogin needs its inputs on the command line (`--zklogin-jwks`,
//! `--zklogin-epoch`); passkey is refused.

use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Subcommand};
use nautilus_seal::personal_message::{decode_signature_base64, scheme_name};
use nautilus_seal::{Address, Jwk, JwkId, SignatureVerifier, ZkLoginKey};
use serde::Deserialize;

use crate::usage;

/// Sui subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify a Sui personal-message signature for an address; exit 0 if valid, 1 if not
    /// (reason on stderr).
    VerifyPersonalMessage(VerifyPersonalMessageArgs),
}

impl Command {
    /// Run the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::VerifyPersonalMessage(args) => args.run(),
        }
    }
}

/// The claimed signer, the message and the signature.
#[derive(Debug, Args)]
pub struct VerifyPersonalMessageArgs {
    /// The address that claims to have signed.
    #[arg(long, value_name = "ADDR", value_parser = crate::token::parse_address)]
    address: Address,
    /// The message bytes, base64 (standard alphabet).
    #[arg(long, value_name = "BASE64")]
    message_base64: String,
    /// The serialized Sui signature (flag || signature || public key, or multisig), base64,
    /// as wallets and `sui keytool sign` print it.
    #[arg(long, value_name = "BASE64")]
    signature: String,
    /// zkLogin: a JSON file of issuer keys, `[{"iss": "...", "kid": "...", "jwk": {"kty": "RSA",
    /// "e": "...", "n": "...", "alg": "RS256"}}]`, as the chain's authenticator state lists them.
    #[arg(long, value_name = "FILE", requires = "zklogin_epoch")]
    zklogin_jwks: Option<std::path::PathBuf>,
    /// zkLogin: the chain's current epoch; signatures whose max epoch is before it are expired.
    #[arg(long, value_name = "EPOCH", requires = "zklogin_jwks")]
    zklogin_epoch: Option<u64>,
    /// zkLogin: the Groth16 verifying key, `mainnet` or `dev` (localnet test issuers).
    #[arg(long, value_name = "KEY", default_value = "mainnet")]
    zklogin_key: ZkLoginKey,
}

/// One issuer key in a `--zklogin-jwks` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwkEntry {
    iss: String,
    kid: String,
    jwk: Jwk,
}

fn zklogin_verifier(
    path: &std::path::Path,
    epoch: u64,
    key: ZkLoginKey,
) -> anyhow::Result<SignatureVerifier> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read --zklogin-jwks {}: {e}",
            path.display()
        ))
    })?;
    let entries: Vec<JwkEntry> = serde_json::from_str(&text).map_err(|e| {
        usage(format!(
            "--zklogin-jwks {} is not a JWK list: {e}",
            path.display()
        ))
    })?;
    let jwks = entries
        .into_iter()
        .map(|JwkEntry { iss, kid, jwk }| (JwkId { iss, kid }, jwk));
    Ok(SignatureVerifier::with_zklogin_keys(key, jwks, epoch))
}

impl VerifyPersonalMessageArgs {
    fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            address,
            message_base64,
            signature,
            zklogin_jwks,
            zklogin_epoch,
            zklogin_key,
        } = self;
        let message = base64::engine::general_purpose::STANDARD
            .decode(message_base64.trim())
            .map_err(|e| usage(format!("--message-base64 is not base64: {e}")))?;
        let verifier = match (zklogin_jwks, zklogin_epoch) {
            (Some(path), Some(epoch)) => zklogin_verifier(&path, epoch, zklogin_key)?,
            _ => SignatureVerifier::default(),
        };
        let outcome = decode_signature_base64(signature.trim())
            .and_then(|signature| verifier.verify(&address, &message, &signature));
        match outcome {
            Ok(scheme) => {
                out!(
                    "valid {} personal-message signature by {address}",
                    scheme_name(scheme)
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                eprintln!("invalid signature: {err}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
