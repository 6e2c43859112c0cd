//! `nautilusctl attestation …`: verify attestation documents and issue simulated ones.
//!
//! `verify` runs the full check of `nautilus_protocol`: COSE signature, certificate chain
//! to a pinned root at a chosen time, then the policy flags (PCRs, debug mode, nonce, age).
//! `simulate` writes a document from the simulated NSM and the root that signs it, for
//! development without Nitro hardware.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use nautilus_protocol::attestation::MAX_DOCUMENT_BYTES;
use nautilus_protocol::{
    AttestationDocument, Nsm, Policy, SimulatedNsm, TrustAnchor, Verifier, VerifyAt,
};
use serde::Serialize;

use crate::usage;

/// Attestation subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify an attestation document; exit 0 if valid, 1 if not (reason on stderr).
    ///
    /// FILE may hold the raw CBOR (COSE_Sign1, tagged or not), or that CBOR as hex or base64
    /// text (standard or URL-safe alphabet, line breaks allowed), as copied from logs.
    Verify(VerifyArgs),
    /// Write a simulated attestation document and the test root that signs it.
    ///
    /// The simulated NSM issues documents in the exact AWS format, signed by a freshly
    /// generated P-384 chain. They verify only with `verify --root ROOT_OUT`, never with the
    /// default AWS root. Unset PCRs are all zeros (debug mode).
    Simulate(SimulateArgs),
}

impl Command {
    /// Run the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Verify(args) => args.run(),
            Command::Simulate(args) => args.run(),
        }
    }
}

/// Output format of `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable lines.
    Text,
    /// One JSON object: valid, error, module_id, timestamp_ms, digest, pcrs, public_key,
    /// user_data, nonce, debug_mode.
    Json,
}

/// Expected PCR values (hex).
#[derive(Debug, Args)]
pub struct PcrArgs {
    /// Expected PCR0 (enclave image), hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pcr0: Option<Hex>,
    /// Expected PCR1 (kernel and boot ramdisk), hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pcr1: Option<Hex>,
    /// Expected PCR2 (application), hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pcr2: Option<Hex>,
    /// Expected PCR8 (signing certificate of the image), hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pcr8: Option<Hex>,
}

impl PcrArgs {
    pub(crate) fn into_map(self) -> BTreeMap<u8, Vec<u8>> {
        let Self {
            pcr0,
            pcr1,
            pcr2,
            pcr8,
        } = self;
        [(0, pcr0), (1, pcr1), (2, pcr2), (8, pcr8)]
            .into_iter()
            .filter_map(|(i, v)| bytes(v).map(|v| (i, v)))
            .collect()
    }
}

/// Arguments of `attestation verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The document: raw CBOR, or its hex or base64 text.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Trust anchor PEM (e.g. a simulated root). Default: the pinned AWS Nitro root G1.
    #[arg(long, value_name = "PEM")]
    root: Option<PathBuf>,
    /// Time at which certificates must be valid: `now`, `doc` (the document's own
    /// timestamp, for archived documents) or milliseconds since the Unix epoch.
    #[arg(long, value_name = "doc|now|UNIX_MS", default_value = "now", value_parser = parse_at)]
    at: VerifyAt,
    #[command(flatten)]
    pcrs: PcrArgs,
    /// Expected nonce (the challenge sent to the enclave), hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    nonce: Option<Hex>,
    /// Expected user_data (e.g. the agent's binding), hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    user_data: Option<Hex>,
    /// Maximum age of the document at the verification time, in seconds.
    #[arg(long, value_name = "SECONDS")]
    max_age: Option<u64>,
    /// Accept debug-mode enclaves (PCR0 all zeros), whose memory the host can read.
    #[arg(long)]
    allow_debug: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// What `verify --output json` prints.
#[derive(Debug, Default, Serialize)]
struct Report {
    valid: bool,
    error: Option<String>,
    module_id: Option<String>,
    timestamp_ms: Option<u64>,
    digest: Option<String>,
    pcrs: Option<BTreeMap<u8, String>>,
    public_key: Option<String>,
    user_data: Option<String>,
    nonce: Option<String>,
    debug_mode: Option<bool>,
}

impl Report {
    /// Fields of a document whose signature and chain verified.
    fn from_document(doc: &AttestationDocument) -> Self {
        Self {
            valid: false,
            error: None,
            module_id: Some(doc.module_id.clone()),
            timestamp_ms: Some(doc.timestamp_ms),
            digest: Some(doc.digest.clone()),
            pcrs: Some(doc.pcrs.iter().map(|(i, v)| (*i, hex::encode(v))).collect()),
            public_key: doc.public_key.as_ref().map(hex::encode),
            user_data: doc.user_data.as_ref().map(hex::encode),
            nonce: doc.nonce.as_ref().map(hex::encode),
            debug_mode: Some(doc.debug_mode()),
        }
    }

    fn print_text(&self) {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "null".to_owned());
        if let Some(module_id) = &self.module_id {
            out!("module_id:    {module_id}");
        }
        if let Some(ts) = self.timestamp_ms {
            out!("timestamp_ms: {ts}");
        }
        if let Some(digest) = &self.digest {
            out!("digest:       {digest}");
        }
        if let Some(debug) = self.debug_mode {
            out!("debug_mode:   {debug}");
        }
        for (index, value) in self.pcrs.iter().flatten() {
            out!("pcr{index:<10} {value}");
        }
        if self.module_id.is_some() {
            out!("public_key:   {}", opt(&self.public_key));
            out!("user_data:    {}", opt(&self.user_data));
            out!("nonce:        {}", opt(&self.nonce));
        }
        out!("valid:        {}", self.valid);
    }
}

impl VerifyArgs {
    fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            file,
            root,
            at,
            pcrs,
            nonce,
            user_data,
            max_age,
            allow_debug,
            output,
        } = self;
        let anchor = match root {
            Some(path) => {
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| usage(format!("cannot read root {}: {e}", path.display())))?;
                TrustAnchor::from_pem(&pem)
                    .map_err(|e| usage(format!("root {}: {e}", path.display())))?
            }
            None => TrustAnchor::aws_nitro_root_g1(),
        };
        let max_age_ms = max_age
            .map(|s| {
                s.checked_mul(1000)
                    .ok_or_else(|| usage("--max-age is too large"))
            })
            .transpose()?;
        let policy = Policy {
            pcrs: pcrs.into_map(),
            allow_debug,
            challenge: bytes(nonce),
            binding: bytes(user_data),
            max_age_ms,
            ..Policy::default()
        };
        let bytes = read_document(&file)?;

        let report = match Verifier::new(anchor).verify(&bytes, at) {
            Err(e) => Report {
                error: Some(e.to_string()),
                ..Report::default()
            },
            Ok(doc) => {
                let mut report = Report::from_document(&doc);
                let checked = at
                    .unix_millis(doc.timestamp_ms)
                    .map_err(|e| e.to_string())
                    .and_then(|at_ms| policy.check(&doc, at_ms).map_err(|e| e.to_string()));
                match checked {
                    Ok(()) => report.valid = true,
                    Err(e) => report.error = Some(e),
                }
                report
            }
        };

        match output {
            Output::Json => {
                out!("{}", serde_json::to_string_pretty(&report)?);
            }
            Output::Text => report.print_text(),
        }
        if let Some(error) = &report.error {
            eprintln!("invalid: {error}");
        }
        Ok(if report.valid {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// Read FILE and undo a hex or base64 text encoding if there is one.
fn read_document(path: &Path) -> anyhow::Result<Vec<u8>> {
    // Text encodings are at most twice the size; anything larger is refused by the verifier
    // anyway, so do not read more than needed to know that.
    let limit = 2 * MAX_DOCUMENT_BYTES + 1024;
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(u64::try_from(limit + 1).unwrap_or(u64::MAX))
                .read_to_end(&mut raw)
        })
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(decode_text(raw))
}

/// CBOR heads of an untagged COSE_Sign1 (array of 4) and of tag 18.
fn looks_like_cose(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x84 | 0xd2))
}

/// Raw CBOR is returned unchanged; hex or base64 text is decoded when it yields CBOR.
/// Anything else is returned unchanged, for the verifier to reject with its reason.
fn decode_text(raw: Vec<u8>) -> Vec<u8> {
    if looks_like_cose(&raw) {
        return raw;
    }
    let Ok(text) = std::str::from_utf8(&raw) else {
        return raw;
    };
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let hex_body = compact.strip_prefix("0x").unwrap_or(&compact);
    if let Ok(bytes) = hex::decode(hex_body)
        && looks_like_cose(&bytes)
    {
        return bytes;
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(bytes) = engine.decode(&compact)
            && looks_like_cose(&bytes)
        {
            return bytes;
        }
    }
    raw
}

/// Arguments of `attestation simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Where to write the document (raw CBOR).
    #[arg(long, value_name = "DOC")]
    out: PathBuf,
    /// Where to write the PEM root that signs it.
    #[arg(long, value_name = "PEM")]
    root_out: PathBuf,
    #[command(flatten)]
    pcrs: PcrArgs,
    /// Nonce to include, hex (omitted: null).
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    nonce: Option<Hex>,
    /// user_data to include, hex (omitted: null; "" gives an empty byte string).
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    user_data: Option<Hex>,
    /// public_key to include, hex (omitted: null).
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    public_key: Option<Hex>,
}

impl SimulateArgs {
    fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            out,
            root_out,
            pcrs,
            nonce,
            user_data,
            public_key,
        } = self;
        let mut nsm = SimulatedNsm::new().context("starting the simulated nsm")?;
        for (index, value) in pcrs.into_map() {
            nsm = nsm
                .with_pcr(index, &value)
                .map_err(|e| usage(format!("--pcr{index}: {e}")))?;
        }
        let document = nsm
            .attest(
                bytes(user_data).as_deref(),
                bytes(nonce).as_deref(),
                bytes(public_key).as_deref(),
            )
            .map_err(|e| usage(e.to_string()))?;
        std::fs::write(&out, &document).with_context(|| format!("writing {}", out.display()))?;
        std::fs::write(&root_out, nsm.root_pem())
            .with_context(|| format!("writing {}", root_out.display()))?;
        out!(
            "wrote a simulated document ({} bytes) to {} and its root to {}",
            document.len(),
            out.display(),
            root_out.display()
        );
        out!(
            "verify with: nautilusctl attestation verify {} --root {}",
            out.display(),
            root_out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Bytes given as hex on the command line (a newtype, so clap takes one value, not a list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hex(Vec<u8>);

/// Hex with optional `0x` prefix; the empty string is an empty byte string.
fn parse_hex(s: &str) -> Result<Hex, String> {
    let body = s.strip_prefix("0x").unwrap_or(s);
    hex::decode(body)
        .map(Hex)
        .map_err(|e| format!("not hex: {e}"))
}

fn bytes(hex: Option<Hex>) -> Option<Vec<u8>> {
    hex.map(|Hex(b)| b)
}

fn parse_at(s: &str) -> Result<VerifyAt, String> {
    match s {
        "now" => Ok(VerifyAt::Now),
        "doc" => Ok(VerifyAt::DocumentTimestamp),
        ms => ms
            .parse::<u64>()
            .map(VerifyAt::UnixMillis)
            .map_err(|_| "expected `now`, `doc` or milliseconds since the unix epoch".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_encodings_are_undone() {
        let cbor = vec![0x84, 0x44, 0xa1, 0x01, 0x38, 0x22];
        assert_eq!(decode_text(cbor.clone()), cbor);
        assert_eq!(decode_text(hex::encode(&cbor).into_bytes()), cbor);
        assert_eq!(
            decode_text(format!("0x{}\n", hex::encode(&cbor)).into_bytes()),
            cbor
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&cbor);
        assert_eq!(decode_text(format!("  {b64}\n").into_bytes()), cbor);
        // Not a document in any encoding: passed through for the verifier to reject.
        assert_eq!(decode_text(b"hello".to_vec()), b"hello".to_vec());
    }

    #[test]
    fn at_values() {
        assert_eq!(parse_at("doc"), Ok(VerifyAt::DocumentTimestamp));
        assert_eq!(parse_at("now"), Ok(VerifyAt::Now));
        assert_eq!(parse_at("17"), Ok(VerifyAt::UnixMillis(17)));
        assert!(parse_at("yesterday").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(parse_hex(""), Ok(Hex(vec![])));
        assert_eq!(parse_hex("0x0a"), Ok(Hex(vec![10])));
    }
}
