//! What the agent proves and what the sidecar hands on.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::report::SignedReport;

/// The agent's attestation: the NSM document and the serving CA its `user_data` binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttestationEvidence {
    /// The COSE_Sign1 attestation document, as the NSM returned it.
    #[serde(with = "super::b64")]
    pub document: Vec<u8>,
    /// PEM of the CA that signs the control plane's serving certificates.
    pub serving_ca_pem: String,
    /// Development only: the root certificate (PEM) of a simulated NSM that signed `document`.
    /// Host-supplied and so worth nothing as evidence; a verifier uses it only where the
    /// resource's spec allows simulated attestation, and then says so in the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated_root_pem: Option<String>,
}

impl AttestationEvidence {
    /// SHA-256 of the serving CA's DER (the second input of [`crate::Binding::v1`]), or
    /// `None` when the PEM holds no certificate.
    pub fn serving_ca_digest(&self) -> Option<[u8; 32]> {
        ca_der_digest(&self.serving_ca_pem)
    }
}

/// SHA-256 of the DER of the first certificate in a PEM text.
pub(crate) fn ca_der_digest(pem: &str) -> Option<[u8; 32]> {
    use der::pem::PemLabel as _;
    use x509_cert::Certificate;
    let (label, der) = der::pem::decode_vec(pem.trim().as_bytes()).ok()?;
    if label != Certificate::PEM_LABEL {
        return None;
    }
    Some(Sha256::digest(der).into())
}

/// Where and how the enclave runs, as the sidecar's launcher tells it. Host-reported, so
/// informational only: nothing trusted is derived from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnclaveInfo {
    /// `nitro` or `process`.
    pub launcher: String,
    /// nitro-cli's `EnclaveID`, or the agent's process id.
    pub enclave_id: Option<String>,
    /// The enclave's vsock CID.
    #[serde(rename = "enclaveCID")]
    pub enclave_cid: Option<u32>,
    /// Whether the enclave (or process) is running.
    pub running: bool,
    /// How the launcher last saw it end, if it did.
    pub last_exit: Option<String>,
}

/// The sidecar's `/report` answer: the evidence as relayed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceBundle {
    /// Hex digest of the boot configuration the sidecar sent.
    pub boot_config_digest: Option<String>,
    /// The latest attestation.
    pub attestation: Option<AttestationEvidence>,
    /// The latest signed report.
    pub report: Option<SignedReport>,
    /// The launcher's view of the enclave.
    pub enclave: EnclaveInfo,
    /// Why the boot configuration was refused ([`super::BootRefused`]), if it was: the agent
    /// will refuse it again. Unsigned, as relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_refused: Option<String>,
    /// What [`EvidenceBundle::boot_refused`] refused, when it was not the configuration itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_refused_kind: Option<super::RefusalKind>,
}
