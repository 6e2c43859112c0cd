//! `nautilusctl token …`: mint and verify seal tokens, and act as a kubectl credential plugin.
//!
//! Tokens are `sui-seal.v1` tokens (see `docs/seal-tokens.md`), signed with a key from a Sui
//! CLI keystore. `verify` is offline: format, signature, address binding, audience and time
//! window. Stake, and so the groups a token grants, is checked only by the cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use nautilus_seal::personal_message::scheme_name;
use nautilus_seal::{Address, Keystore, SealVerifier, VerifiedToken, unix_now};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::usage;

/// Longest `--ttl` accepted when minting.
const MAX_TTL_SECS: u64 = 24 * 60 * 60;

/// Seal-token subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint a seal token signed by a key of a Sui keystore and print it.
    Mint(MintArgs),
    /// Verify a seal token offline; exit 0 if valid, 1 if not (reason on stderr).
    ///
    /// Checks the format, the Sui signature over the payload, that the signer is the claimed
    /// address, the audience and the time window. Stake is not checked (that needs the chain).
    Verify(VerifyArgs),
    /// Print a `client.authentication.k8s.io/v1` ExecCredential holding a fresh token, for use
    /// as a kubectl credential plugin (`users[].user.exec` in a kubeconfig).
    ExecCredential(MintArgs),
}

impl Command {
    /// Run the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Mint(args) => {
                let minted = args.mint()?;
                out!("{}", minted.token);
                Ok(ExitCode::SUCCESS)
            }
            Command::Verify(args) => args.run(),
            Command::ExecCredential(args) => {
                let minted = args.mint()?;
                out!("{}", exec_credential(&minted)?);
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Which key signs, for whom, for how long.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// Sui CLI keystore file (`~/.sui/sui_config/sui.keystore`).
    #[arg(long, env = "NAUTILUS_SUI_KEYSTORE", value_name = "PATH")]
    keystore: PathBuf,
    /// Address of the key to sign with; default: the keystore's first key.
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    address: Option<Address>,
    /// Audience: the cluster the token is for, exactly as the cluster is configured.
    #[arg(long, value_name = "AUD")]
    audience: String,
    /// Lifetime of the token, e.g. `900`, `90s`, `15m`, `1h` (at most 24h; clusters accept
    /// 1h by default).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    ttl: u64,
}

/// A freshly minted token and its expiry.
#[derive(Debug)]
struct Minted {
    token: String,
    expires_at: u64,
}

impl MintArgs {
    fn mint(self) -> anyhow::Result<Minted> {
        let Self {
            keystore,
            address,
            audience,
            ttl,
        } = self;
        if audience.is_empty() {
            return Err(usage("--audience must not be empty"));
        }
        if ttl == 0 || ttl > MAX_TTL_SECS {
            return Err(usage(format!(
                "--ttl must be between 1s and {MAX_TTL_SECS}s, got {ttl}s"
            )));
        }
        let store =
            Keystore::load(&keystore).map_err(|e| usage(format!("{:#}", anyhow::Error::new(e))))?;
        let key = store.select(address.as_ref())?;
        let now = unix_now();
        let token = key
            .mint_for(&audience, now, ttl)
            .context("cannot mint token")?;
        Ok(Minted {
            token,
            expires_at: now + ttl,
        })
    }
}

/// The ExecCredential JSON kubectl reads from a credential plugin.
fn exec_credential(minted: &Minted) -> anyhow::Result<String> {
    let expiration = i64::try_from(minted.expires_at)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .context("expiry out of range")?
        .format(&Rfc3339)
        .context("cannot format expiry")?;
    let credential = serde_json::json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {
            "token": minted.token,
            "expirationTimestamp": expiration,
        },
    });
    Ok(serde_json::to_string_pretty(&credential)?)
}

/// Output format of `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable lines.
    Text,
    /// One JSON object: valid, error, address, audience, issuedAt, expiresAt, notBefore, id,
    /// scheme.
    Json,
}

/// What to verify and against which expectations.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The token (`sui-seal.v1.…`).
    token: String,
    /// The audience the token must carry.
    #[arg(long, value_name = "AUD")]
    audience: String,
    /// Longest accepted lifetime (`exp - iat`), e.g. `1h`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    max_lifetime: u64,
    /// Allowance for clock differences, e.g. `30s`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    clock_skew: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `verify --output json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audience: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<&'static str>,
}

impl Report {
    fn valid(token: &VerifiedToken) -> Self {
        Self {
            valid: true,
            error: None,
            address: Some(token.address.to_string()),
            audience: Some(token.audience.clone()),
            issued_at: Some(token.issued_at),
            expires_at: Some(token.expires_at),
            not_before: token.not_before,
            id: Some(token.id.clone()),
            scheme: Some(scheme_name(token.scheme)),
        }
    }

    fn invalid(error: String) -> Self {
        Self {
            valid: false,
            error: Some(error),
            address: None,
            audience: None,
            issued_at: None,
            expires_at: None,
            not_before: None,
            id: None,
            scheme: None,
        }
    }
}

impl VerifyArgs {
    fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            token,
            audience,
            max_lifetime,
            clock_skew,
            output,
        } = self;
        let verifier = SealVerifier::new(audience)
            .with_max_lifetime(max_lifetime)
            .with_clock_skew(clock_skew);
        match verifier.verify(token.trim(), unix_now()) {
            Ok(verified) => {
                match output {
                    Output::Json => {
                        out!(
                            "{}",
                            serde_json::to_string_pretty(&Report::valid(&verified))?
                        )
                    }
                    Output::Text => {
                        out!("valid seal token");
                        out!("address:    {}", verified.address);
                        out!("scheme:     {}", scheme_name(verified.scheme));
                        out!("audience:   {}", verified.audience);
                        out!("issued at:  {}", rfc3339(verified.issued_at));
                        out!("expires at: {}", rfc3339(verified.expires_at));
                        if let Some(nbf) = verified.not_before {
                            out!("not before: {}", rfc3339(nbf));
                        }
                        out!("id:         {}", verified.id);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                let reason = format!("{:#}", anyhow::Error::new(err));
                eprintln!("invalid token: {reason}");
                if output == Output::Json {
                    out!(
                        "{}",
                        serde_json::to_string_pretty(&Report::invalid(reason))?
                    );
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Parse a Sui address (`0x` and up to 64 hex digits).
pub fn parse_address(text: &str) -> Result<Address, String> {
    Address::from_str(text).map_err(|_| format!("{text:?} is not a sui address (0x and hex)"))
}

/// Parse `90`, `90s`, `15m`, `1h` into seconds.
fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m or 1h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?}: unit must be s, m or h")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("900"), Ok(900));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h"), Ok(3600));
        for bad in ["", "m", "1d", "-1s", "1.5h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exec_credential_shape() {
        let json = exec_credential(&Minted {
            token: "sui-seal.v1.x.y".into(),
            expires_at: 1_700_000_000,
        })
        .expect("formats");
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(
            value["status"]["expirationTimestamp"],
            "2023-11-14T22:13:20Z"
        );
    }
}
