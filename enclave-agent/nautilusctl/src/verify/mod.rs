//! `nautilusctl verify NAME`: check a control plane without trusting the host or the operator.
//!
//! ```text
//! user ── GET NautilusMaster NAME ──▶ host API server      the spec: trusted as the user's own
//!      ── POST /challenge {nonce} ──▶ endpoint (sidecar) ──▶ enclave: fresh document, own nonce
//!      ── TLS handshake ───────────▶ endpoint ──bytes──▶ enclave's API server
//!      ── kubeconfig (attested CA, seal-token exec plugin) ──▶ --write-kubeconfig FILE
//! ```
//!
//! Only the spec is taken from the host, and only because it is the user's own: the expected
//! PCRs (the flags override them) and the configuration the enclave must attest, recomputed
//! with the operator's canonical rendering. `status` is read for one thing, the endpoint, which
//! is routing and nothing else (`--endpoint` overrides it): the answer proves itself or fails.
//! The checks are in [`check`]; the network steps in [`net`]. Exit 0 verified, 1 refused (the
//! reason on stderr, and in `--output json`), 2 usage errors.

pub mod check;
pub mod net;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use kube::api::Api;
use nautilus_crds::NautilusMaster;
use nautilus_protocol::wire::ChallengeResponse;
use serde::Serialize;

use crate::attestation::{Output, PcrArgs};
use crate::usage;
use check::{Expected, Placed, Refusal, Verified};
use net::Endpoint;

/// How long the host API server may take to return the spec.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Which control plane, where, and what it must prove: the flags `verify` and `join` share.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The NautilusMaster.
    #[arg(value_name = "NAME")]
    name: String,
    /// Its namespace. Default: the kubeconfig context's namespace.
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// Kubeconfig of the host cluster, where the spec is read. Default: $KUBECONFIG, then
    /// ~/.kube/config, then the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The control plane's endpoint, `https://host:port`. Default: the resource's
    /// `status.endpoint` (routing only: nothing reached there is trusted before it verifies).
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    endpoint: Option<Endpoint>,
    /// Expected measurements; each given PCR overrides the spec's.
    #[command(flatten)]
    pcrs: PcrArgs,
    /// Accept a document from the simulated NSM of development mode (never in production).
    #[arg(long)]
    allow_simulated: bool,
    /// Accept a debug-mode enclave (PCR0 all zeros), whose memory the host can read.
    #[arg(long)]
    allow_debug: bool,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Once verified, write a kubeconfig for the endpoint pinned to the attested CA, with the
    /// `nautilusctl token exec-credential` plugin as its user (no credential in the file).
    #[arg(long, value_name = "FILE")]
    write_kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    url.parse()
}

/// What `verify --output json` prints (and `join`, with more beside it).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    verified: bool,
    /// The refusal's code (`PCRMismatch`, `NonceMismatch`, …).
    reason: Option<&'static str>,
    message: Option<String>,
    resource: String,
    endpoint: Option<String>,
    nonce: String,
    simulated: Option<bool>,
    debug_mode: Option<bool>,
    #[serde(rename = "moduleID")]
    module_id: Option<String>,
    document_timestamp_ms: Option<u64>,
    pcrs: Option<std::collections::BTreeMap<u8, String>>,
    config_digest: Option<String>,
    #[serde(rename = "servingCASHA256")]
    serving_ca_sha256: Option<String>,
    /// Fields the local development runtime placed (they differ from the spec's).
    placed: Vec<Placed>,
    /// The kubeconfig written (by `join`: the kubelet's).
    pub kubeconfig: Option<PathBuf>,
    /// Sealed state, from the enclave's latest report (signed by the attested key).
    state: Option<StateSummary>,
}

/// What the enclave's signed report says of its sealed state.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct StateSummary {
    /// The report verified against the fresh document's key and the expected configuration.
    /// When false, the other fields are absent: the relay sent none, or one that fails.
    report_verified: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    report_refused: Option<String>,
    /// Sequence of the snapshot restored at the start; absent when the enclave started empty.
    restored_sequence: Option<u64>,
    restored_taken_ms: Option<u64>,
    #[serde(rename = "restoredFromUID")]
    restored_from_uid: Option<String>,
    last_snapshot_sequence: Option<u64>,
    last_snapshot_taken_ms: Option<u64>,
}

/// Read the relayed report's sealed state, once the document verified: the report must be
/// signed by the document's key and name the configuration the document binds. Never a
/// refusal (the document is what is verified); a missing or failing report is said so.
fn state_summary(answer: &ChallengeResponse, verified: &Verified, now_ms: u64) -> StateSummary {
    /// Reports are made every probe interval; an older one is still the enclave's word.
    const MAX_REPORT_AGE_MS: u64 = 10 * 60 * 1000;
    let refused = |why: String| StateSummary {
        report_refused: Some(why),
        ..StateSummary::default()
    };
    let Some(signed) = &answer.report else {
        return refused("the relay sent no report".into());
    };
    let Some(key) = verified.document.public_key.as_deref() else {
        return refused("the document attests no report key".into());
    };
    let report = nautilus_protocol::wire::ReportVerifier::new(
        key,
        verified.config.digest_hex(),
        MAX_REPORT_AGE_MS,
    )
    .and_then(|mut v| v.verify(signed, now_ms));
    let report = match report {
        Ok(report) => report,
        Err(e) => return refused(e.to_string()),
    };
    let state = report.state.unwrap_or_default();
    StateSummary {
        report_verified: true,
        report_refused: None,
        restored_sequence: state.restored.as_ref().map(|r| r.sequence),
        restored_taken_ms: state.restored.as_ref().map(|r| r.taken_unix_ms),
        restored_from_uid: state.restored.map(|r| r.resource_uid),
        last_snapshot_sequence: state.last_snapshot.as_ref().map(|s| s.sequence),
        last_snapshot_taken_ms: state.last_snapshot.map(|s| s.taken_unix_ms),
    }
}

/// A control plane that passed every check of `verify`.
#[derive(Debug)]
pub struct Attested {
    /// The resource, as its owner wrote it.
    pub nm: NautilusMaster,
    /// Where it was reached, and where its clients connect.
    pub endpoint: Endpoint,
    /// What the enclave proved.
    pub verified: Verified,
}

impl TargetArgs {
    /// Verify the control plane: read the spec, challenge the enclave with a fresh nonce, check
    /// the answer and the endpoint's certificate. `Err` for usage errors; otherwise the
    /// summary of what was established and the attested control plane or why it is refused.
    pub fn attest(self) -> anyhow::Result<(Summary, Result<Attested, Refusal>)> {
        let Self {
            name,
            namespace,
            kubeconfig,
            endpoint,
            pcrs,
            allow_simulated,
            allow_debug,
        } = self;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let read = runtime.block_on(read_spec(&name, namespace, kubeconfig.as_deref()))?;
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let mut summary = Summary {
            resource: name.clone(),
            nonce: hex::encode(nonce),
            ..Summary::default()
        };
        let nm = match read {
            Ok(nm) => nm,
            Err(refusal) => return Ok((summary, Err(refusal))),
        };
        summary.resource = format!(
            "{}/{name}",
            nm.metadata.namespace.as_deref().unwrap_or_default()
        );
        let expected = expected(&nm, pcrs, allow_simulated, allow_debug)?;
        let endpoint = match endpoint {
            Some(endpoint) => endpoint,
            None => status_endpoint(&nm)?,
        };
        summary.endpoint = Some(endpoint.url.clone());
        let verified = verify(&expected, &endpoint, &nonce, &mut summary);
        summary.verified = verified.is_ok();
        Ok((
            summary,
            verified.map(|verified| Attested {
                nm,
                endpoint,
                verified,
            }),
        ))
    }
}

impl VerifyArgs {
    /// Run the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            target,
            write_kubeconfig,
            output,
        } = self;
        let (mut summary, attested) = target.attest()?;
        let Attested {
            nm,
            endpoint,
            verified,
        } = match attested {
            Ok(attested) => attested,
            Err(refusal) => return Ok(refused(summary, &refusal, output)),
        };
        if let Some(path) = &write_kubeconfig {
            let text =
                nautilus_crds::render::kubeconfig(&nm, &endpoint.url, &verified.serving_ca_pem)?;
            write_files(&[(path, text.as_str(), 0o600)])?;
            summary.kubeconfig = Some(path.clone());
        }
        match output {
            Output::Json => out!("{}", serde_json::to_string_pretty(&summary)?),
            Output::Text => print_text(&summary),
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Challenge, check, then the endpoint's certificate; fills `summary` as facts are established.
fn verify(
    expected: &Expected,
    endpoint: &Endpoint,
    nonce: &[u8],
    summary: &mut Summary,
) -> Result<Verified, Refusal> {
    let answer = net::challenge(endpoint, nonce)?;
    let now_ms = nautilus_protocol::attestation::now_unix_millis()
        .map_err(|e| Refusal::Unreachable(format!("clock: {e}")))?;
    let verified = check::check(expected, nonce, &answer, now_ms)?;
    let doc = &verified.document;
    summary.simulated = Some(verified.simulated);
    summary.debug_mode = Some(doc.debug_mode());
    summary.module_id = Some(doc.module_id.clone());
    summary.document_timestamp_ms = Some(doc.timestamp_ms);
    summary.pcrs = Some(doc.pcrs.iter().map(|(i, v)| (*i, hex::encode(v))).collect());
    summary.config_digest = Some(verified.config.digest_hex());
    summary.serving_ca_sha256 = Some(hex::encode(verified.serving_ca_sha256));
    summary.placed = verified.placed.clone();
    if verified.config.state.is_some() {
        summary.state = Some(state_summary(&answer, &verified, now_ms));
    }
    net::check_certificate(endpoint, &verified.serving_ca_pem)?;
    Ok(verified)
}

/// Report a refusal (on stderr, and as JSON on stdout with `--output json`): exit 1.
pub fn refused(mut summary: Summary, refusal: &Refusal, output: Output) -> ExitCode {
    if output == Output::Json {
        summary.reason = Some(refusal.reason());
        summary.message = Some(refusal.to_string());
        out!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    }
    eprintln!("refused: {}: {refusal}", refusal.reason());
    ExitCode::FAILURE
}

/// The summary as text lines.
pub fn print_text(summary: &Summary) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    out!("resource:          {}", summary.resource);
    out!("endpoint:          {}", opt(&summary.endpoint));
    out!("nonce:             {}", summary.nonce);
    out!("config digest:     {}", opt(&summary.config_digest));
    out!("serving CA sha256: {}", opt(&summary.serving_ca_sha256));
    for (index, value) in summary.pcrs.iter().flatten() {
        if [0, 1, 2, 8].contains(index) {
            out!("pcr{index}:              {value}");
        }
    }
    if summary.simulated == Some(true) {
        out!("simulated:         true (development enclave, accepted by --allow-simulated)");
    }
    for p in &summary.placed {
        out!(
            "placed:            {} {} (spec: {}; local runtime)",
            p.field,
            p.attested,
            p.spec
        );
    }
    if let Some(state) = &summary.state {
        let time = |ms: Option<u64>| {
            ms.and_then(|ms| i64::try_from(ms).ok())
                .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        match (&state.report_refused, state.restored_sequence) {
            (Some(why), _) => out!("sealed state:      unknown ({why})"),
            (None, Some(sequence)) => out!(
                "restored:          snapshot {sequence} taken {} of {} (a host can offer an older one: compare with the last you saw)",
                time(state.restored_taken_ms),
                state.restored_from_uid.clone().unwrap_or_default()
            ),
            (None, None) => {
                out!("restored:          nothing (the enclave started an empty cluster)")
            }
        }
        if let Some(sequence) = state.last_snapshot_sequence {
            out!(
                "last snapshot:     {sequence} taken {}",
                time(state.last_snapshot_taken_ms)
            );
        }
    }
    if let Some(path) = &summary.kubeconfig {
        out!("kubeconfig:        {}", path.display());
    }
    out!("verified:          true");
}

/// The resource as its owner wrote it, from the host API server: a usage error when no
/// client can be made, a refusal when the API server does not hand it over.
async fn read_spec(
    name: &str,
    namespace: Option<String>,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<Result<NautilusMaster, Refusal>> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| usage(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| usage(format!("no kubeconfig for the host cluster: {e}")))?,
    };
    let client = kube::Client::try_from(config).map_err(|e| usage(e.to_string()))?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<NautilusMaster> = Api::namespaced(client, &namespace);
    let got = tokio::time::timeout(API_TIMEOUT, api.get(name)).await;
    let refuse = |what: String| {
        Refusal::Unreachable(format!("reading nautilusmaster {namespace}/{name}: {what}"))
    };
    Ok(match got {
        Ok(Ok(nm)) => Ok(nm),
        Ok(Err(e)) => Err(refuse(e.to_string())),
        Err(_) => Err(refuse(format!("no answer within {API_TIMEOUT:?}"))),
    })
}

/// What the user expects, from the spec and the flags.
fn expected(
    nm: &NautilusMaster,
    flags: PcrArgs,
    allow_simulated: bool,
    allow_debug: bool,
) -> anyhow::Result<Expected> {
    let config = nautilus_crds::render::enclave_config(nm).map_err(|e| usage(e.to_string()))?;
    let enclave = &nm.spec.enclave;
    let mut pcrs = std::collections::BTreeMap::new();
    for (index, value) in [
        (0u8, Some(&enclave.pcr0)),
        (1, Some(&enclave.pcr1)),
        (2, Some(&enclave.pcr2)),
        (8, enclave.pcr8.as_ref()),
    ] {
        if let Some(value) = value {
            let bytes = hex::decode(value)
                .map_err(|e| usage(format!("spec.enclave.pcr{index} is not hex: {e}")))?;
            pcrs.insert(index, bytes);
        }
    }
    pcrs.extend(flags.into_map());
    Ok(Expected {
        config,
        pcrs,
        allow_simulated,
        allow_debug,
        max_age_ms: u64::from(nm.spec.attestation.max_document_age_seconds) * 1000,
    })
}

fn status_endpoint(nm: &NautilusMaster) -> anyhow::Result<Endpoint> {
    let url = nm
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .ok_or_else(|| {
            usage(
                "the resource publishes no status.endpoint yet: pass --endpoint https://host:port",
            )
        })?;
    url.parse::<Endpoint>()
        .map_err(|e| usage(format!("status.endpoint: {e}")))
}

/// Write each `(path, text, mode)`: all through temporary files in the same directories first,
/// then renamed into place, so a failure leaves no half-written file (and, unless a rename
/// fails, none of them changed). Modes as kubectl writes kubeconfigs: 0600 for anything naming
/// credentials.
pub fn write_files(files: &[(&Path, &str, u32)]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut staged: Vec<(PathBuf, &Path)> = Vec::new();
    let unstage = |staged: &[(PathBuf, &Path)]| {
        for (tmp, _) in staged {
            let _ = std::fs::remove_file(tmp);
        }
    };
    for (path, text, mode) in files {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let Some(file_name) = path.file_name() else {
            unstage(&staged);
            return Err(usage(format!("{}: no file name", path.display())));
        };
        let tmp = dir
            .unwrap_or_else(|| Path::new("."))
            .join(format!(".{}.tmp", file_name.to_string_lossy()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(*mode)
            .open(&tmp)
            .and_then(|mut f| {
                // `mode` applies to new files only; a stale temporary file keeps its own.
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(*mode))?;
                f.write_all(text.as_bytes()).and_then(|()| f.sync_all())
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            unstage(&staged);
            return Err(usage(format!("cannot write {}: {e}", path.display())));
        }
        staged.push((tmp, path));
    }
    for (index, (tmp, path)) in staged.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            unstage(&staged[index..]);
            return Err(usage(format!("cannot write {}: {e}", path.display())));
        }
    }
    Ok(())
}
