//! What the agent makes on boot: the ephemeral report key, the control plane's CA and serving
//! certificates, and the attestation that binds them to the boot configuration.
//!
//! ```text
//! BootConfig ──► ReportSigner::generate()                    (report key, public half → public_key)
//!            ──► CA "nautilus <cluster> CA" (ECDSA P-256)    (its DER hash → Binding::v1)
//!                ├─ API server serving cert (bind address, 127.0.0.1, localhost, kubernetes…)
//!                ├─ webhook serving cert (127.0.0.1, localhost)
//!                └─ probe client cert (signed by the separate client CA)
//!            ──► Nsm::attest(user_data = Binding::v1(config.digest(), sha256(CA DER)),
//!                            nonce = BootConfig.nonce, public_key = report key)
//! ```
//!
//! Every key is generated inside the enclave and never leaves it. A nonce refresh attests again
//! with the same key and binding.

use std::net::IpAddr;
use std::sync::Arc;

use nautilus_protocol::Binding;
use nautilus_protocol::nsm::{Nsm, NsmError};
use nautilus_protocol::wire::{AttestationEvidence, EnclaveConfig, ReportSigner};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use sha2::{Digest as _, Sha256};

/// Why boot material could not be made or attested.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// rcgen could not generate a key or certificate.
    #[error("generating {what}: {reason}")]
    Certificate {
        /// Which certificate.
        what: &'static str,
        /// What rcgen reported.
        reason: String,
    },
    /// The NSM refused the attestation request.
    #[error("attestation request failed")]
    Nsm(#[from] NsmError),
    /// The blocking attestation task panicked or was cancelled.
    #[error("attestation task failed: {0}")]
    Task(String),
}

/// A CA: its certificate and the issuer that signs with its key.
pub struct CertificateAuthority {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_sha256", &hex::encode(Sha256::digest(&self.cert_der)))
            .finish_non_exhaustive()
    }
}

/// A leaf certificate and its key.
#[derive(Clone)]
pub struct LeafCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for LeafCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCertificate").finish_non_exhaustive()
    }
}

fn cert_err(what: &'static str) -> impl Fn(rcgen::Error) -> BootError {
    move |e| BootError::Certificate {
        what,
        reason: e.to_string(),
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "nautilus");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl CertificateAuthority {
    /// A fresh self-signed CA named `common_name` (ECDSA P-256, valid 10 years).
    pub fn generate(common_name: &str) -> Result<Self, BootError> {
        let err = cert_err("a certificate authority");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(&err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let now = time_now();
        params.not_before = now - std::time::Duration::from_secs(300);
        params.not_after = now + std::time::Duration::from_secs(10 * 365 * 24 * 3600);
        let cert = params.self_signed(&key).map_err(&err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// SHA-256 of the certificate's DER: the second input of [`Binding::v1`].
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.cert_der).into()
    }

    /// A serving certificate for `names` (DNS names or IP addresses), valid one year.
    pub fn issue_server(
        &self,
        common_name: &str,
        names: &[String],
    ) -> Result<LeafCertificate, BootError> {
        let err = cert_err("a serving certificate");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        let mut sans = Vec::new();
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into().map_err(&err)?),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, err)
    }

    /// A client certificate for user `common_name`.
    pub fn issue_client(&self, common_name: &str) -> Result<LeafCertificate, BootError> {
        let err = cert_err("a client certificate");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, err)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        err: impl Fn(rcgen::Error) -> BootError,
    ) -> Result<LeafCertificate, BootError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(&err)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time_now();
        params.not_before = now - std::time::Duration::from_secs(300);
        params.not_after = now + std::time::Duration::from_secs(365 * 24 * 3600);
        let cert = params.signed_by(&key, &self.issuer).map_err(&err)?;
        Ok(LeafCertificate {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The names the API server's certificate is valid for.
pub fn api_server_names(bind_address: &str) -> Vec<String> {
    let mut names = Vec::new();
    // An unspecified address (0.0.0.0) is not a name anyone connects to.
    if bind_address
        .parse::<IpAddr>()
        .map_or(true, |ip| !ip.is_unspecified())
    {
        names.push(bind_address.to_owned());
    }
    for name in [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Everything made on boot; see the module documentation.
#[derive(Debug)]
pub struct BootMaterial {
    /// The report-signing key.
    pub signer: ReportSigner,
    /// The serving CA (bound into the attestation; k3s `server-ca`).
    pub serving_ca: CertificateAuthority,
    /// The client CA (k3s `client-ca`); signs the prober's client certificate.
    pub client_ca: CertificateAuthority,
    /// The request-header CA (k3s `request-header-ca`).
    pub request_header_ca: CertificateAuthority,
    /// The etcd server CA (k3s `etcd/server-ca`).
    pub etcd_server_ca: CertificateAuthority,
    /// The etcd peer CA (k3s `etcd/peer-ca`).
    pub etcd_peer_ca: CertificateAuthority,
    /// The service-account signing key (k3s `service.key`), PKCS#8 PEM.
    pub service_account_key_pem: String,
    /// The API server's serving certificate (for stand-ins; k3s issues its own from the CA).
    pub api_server: LeafCertificate,
    /// The webhook's serving certificate.
    pub webhook: LeafCertificate,
    /// The prober's client certificate, signed by the client CA.
    pub probe_client: LeafCertificate,
    /// [`EnclaveConfig::digest`].
    pub config_digest: [u8; 32],
    /// [`Binding::v1`] of the digest and the serving CA.
    pub binding: Vec<u8>,
}

impl BootMaterial {
    /// Generate the keys and certificates for `config`.
    pub fn generate(config: &EnclaveConfig) -> Result<Self, BootError> {
        let signer = ReportSigner::generate();
        let cluster = &config.cluster;
        let serving_ca = CertificateAuthority::generate(&format!("nautilus {cluster} CA"))?;
        let client_ca = CertificateAuthority::generate(&format!("nautilus {cluster} client CA"))?;
        let request_header_ca =
            CertificateAuthority::generate(&format!("nautilus {cluster} request-header CA"))?;
        let etcd_server_ca =
            CertificateAuthority::generate(&format!("nautilus {cluster} etcd server CA"))?;
        let etcd_peer_ca =
            CertificateAuthority::generate(&format!("nautilus {cluster} etcd peer CA"))?;
        let service_account_key_pem = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("the service-account key"))?
            .serialize_pem();
        let api_server = serving_ca.issue_server(
            "kube-apiserver",
            &api_server_names(&config.control_plane.bind_address),
        )?;
        let webhook = serving_ca.issue_server(
            "nautilus-token-webhook",
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
        )?;
        let probe_client = client_ca.issue_client("nautilus-agent-prober")?;
        let config_digest = config.digest();
        let binding = Binding::v1(config_digest, serving_ca.digest());
        Ok(Self {
            signer,
            serving_ca,
            client_ca,
            request_header_ca,
            etcd_server_ca,
            etcd_peer_ca,
            service_account_key_pem,
            api_server,
            webhook,
            probe_client,
            config_digest,
            binding,
        })
    }

    /// Ask `nsm` for a document binding this material, with `nonce`; wrap it as evidence.
    /// `simulated_root_pem` is set only for a simulated NSM.
    pub async fn attest(
        &self,
        nsm: Arc<dyn Nsm>,
        nonce: &[u8],
        simulated_root_pem: Option<String>,
    ) -> Result<AttestationEvidence, BootError> {
        let user_data = self.binding.clone();
        let public_key = self.signer.public_key_der();
        let nonce = nonce.to_vec();
        let document = tokio::task::spawn_blocking(move || {
            nsm.attest(Some(&user_data), Some(&nonce), Some(&public_key))
        })
        .await
        .map_err(|e| BootError::Task(e.to_string()))??;
        Ok(AttestationEvidence {
            document,
            serving_ca_pem: self.serving_ca.cert_pem.clone(),
            simulated_root_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_server_names_cover_the_service_and_loopback() {
        let names = api_server_names("10.0.0.5");
        assert_eq!(names[0], "10.0.0.5");
        for n in ["127.0.0.1", "localhost", "kubernetes.default.svc"] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
        let names = api_server_names("0.0.0.0");
        assert!(!names.iter().any(|x| x == "0.0.0.0"));
        let names = api_server_names("127.0.0.1");
        assert_eq!(names.iter().filter(|x| *x == "127.0.0.1").count(), 1);
    }
}
