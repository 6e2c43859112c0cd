//! `nautilusctl sui …`: check Sui signatures the way the enclave does.
//!
//! `verify-personal-message` runs the same function the seal-token verifier uses: the
//! signature must verify over the PersonalMessage intent and be made by the given address
//! (the key's address, or the multisig committee's). zkLogin and passkey are refused.

use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Subcommand};
use nautilus_seal::Address;
use nautilus_seal::personal_message::{scheme_name, verify_personal_message_base64};

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
}

impl VerifyPersonalMessageArgs {
    fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            address,
            message_base64,
            signature,
        } = self;
        let message = base64::engine::general_purpose::STANDARD
            .decode(message_base64.trim())
            .map_err(|e| usage(format!("--message-base64 is not base64: {e}")))?;
        match verify_personal_message_base64(&address, &message, signature.trim()) {
            Ok(scheme) => {
                println!(
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
