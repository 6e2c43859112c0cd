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
use nautilus_protocol::wire::{
    AttestationEvidence, ControlPlaneConfig, EnclaveConfig, ReportSigner,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use sha2::{Digest as _, Sha256};

/// Why boot material could not be made or attested.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
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
    /// The private key, SEC1 PEM (`EC PRIVATE KEY`), the form K3s' custom-CA files take.
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
    /// The private key, PKCS#8 DER (what rustls takes).
    pub key_der: Vec<u8>,
    /// The private key, SEC1 PEM (what every Kubernetes component and etcd read).
    pub key_pem: String,
}

impl std::fmt::Debug for LeafCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCertificate").finish_non_exhaustive()
    }
}

fn cert_err(what: &'static str) -> impl Fn(rcgen::Error) -> MaterialError {
    move |e| MaterialError::Certificate {
        what,
        reason: e.to_string(),
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    dn_in(common_name, &["nautilus"])
}

/// A name with `organizations` (for client certificates: the Kubernetes groups) and
/// `common_name` (the user).
fn dn_in(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for organization in organizations {
        dn.push(DnType::OrganizationName, *organization);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// `key` as SEC1 PEM (`-----BEGIN EC PRIVATE KEY-----`, named curve included).
///
/// kube-apiserver's `--service-account-key-file` (client-go `keyutil.ParsePublicKeysPEM`)
/// reads an EC private key only in this form (PKCS#8 only for RSA), and K3s' custom-CA
/// documentation makes its EC CA keys this way (`openssl ecparam -genkey -noout`).
pub fn sec1_pem(key: &KeyPair) -> Result<String, MaterialError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    use p256::pkcs8::DecodePrivateKey as _;
    use sec1::der::{Encode as _, pem::LineEnding};
    let err = |reason: String| MaterialError::Certificate {
        what: "a SEC1 key encoding",
        reason,
    };
    let secret =
        p256::SecretKey::from_pkcs8_der(&key.serialize_der()).map_err(|e| err(e.to_string()))?;
    let private_key = secret.to_bytes();
    let public_key = secret.public_key().to_encoded_point(false);
    // `p256`'s own `to_sec1_pem` leaves the parameters out, which Go refuses for a SEC1 key
    // read on its own ("x509: unknown elliptic curve"); name the curve (prime256v1).
    let der = sec1::EcPrivateKey {
        private_key: &private_key,
        parameters: Some(sec1::EcParameters::NamedCurve(
            sec1::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"),
        )),
        public_key: Some(public_key.as_bytes()),
    }
    .to_der()
    .map_err(|e| err(e.to_string()))?;
    sec1::der::pem::encode_string("EC PRIVATE KEY", LineEnding::LF, &der)
        .map_err(|e| err(e.to_string()))
}

impl CertificateAuthority {
    /// A fresh self-signed CA named `common_name` (ECDSA P-256, valid 10 years).
    pub fn generate(common_name: &str) -> Result<Self, MaterialError> {
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
            key_pem: sec1_pem(&key)?,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA restored from a sealed snapshot: its certificate (PEM) and its SEC1 key (PEM), as
    /// [`CertificateAuthority::generate`] made them. The key must be the certificate's, and the
    /// issuer name of what it signs is the certificate's subject, attribute for attribute.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, MaterialError> {
        use p256::pkcs8::EncodePrivateKey as _;
        use x509_cert::der::{Decode as _, DecodePem as _, Encode as _};
        let err = |reason: String| MaterialError::Certificate {
            what: "a restored certificate authority",
            reason,
        };
        let cert = x509_cert::Certificate::from_pem(cert_pem.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        let cert_der = cert.to_der().map_err(|e| err(e.to_string()))?;
        let secret = p256::SecretKey::from_sec1_pem(key_pem).map_err(|e| err(e.to_string()))?;
        let pkcs8 = secret.to_pkcs8_der().map_err(|e| err(e.to_string()))?;
        let key = KeyPair::try_from(pkcs8.as_bytes()).map_err(|e| err(e.to_string()))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| err(e.to_string()))?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != spki {
            return Err(err("the key is not the certificate's".into()));
        }
        let mut name = DistinguishedName::new();
        for rdn in cert.tbs_certificate.subject.0.iter() {
            for atv in rdn.0.iter() {
                let kind = match atv.oid.to_string().as_str() {
                    "2.5.4.3" => DnType::CommonName,
                    "2.5.4.10" => DnType::OrganizationName,
                    other => return Err(err(format!("unexpected name attribute {other}"))),
                };
                let der = atv.value.to_der().map_err(|e| err(e.to_string()))?;
                let value = x509_cert::der::asn1::Utf8StringRef::from_der(&der)
                    .map_err(|e| err(format!("a name attribute is not UTF-8: {e}")))?;
                name.push(kind, value.as_str());
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
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
    ) -> Result<LeafCertificate, MaterialError> {
        self.issue_named(common_name, names, false)
    }

    /// A certificate for `names` usable both to serve and as a client (etcd members dial each
    /// other and themselves with their serving certificate), valid one year.
    pub fn issue_server_and_client(
        &self,
        common_name: &str,
        names: &[String],
    ) -> Result<LeafCertificate, MaterialError> {
        self.issue_named(common_name, names, true)
    }

    fn issue_named(
        &self,
        common_name: &str,
        names: &[String],
        client_too: bool,
    ) -> Result<LeafCertificate, MaterialError> {
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
        if client_too {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        self.issue(params, err)
    }

    /// A client certificate for user `common_name` (organization `nautilus`).
    pub fn issue_client(&self, common_name: &str) -> Result<LeafCertificate, MaterialError> {
        self.issue_client_in(common_name, &["nautilus"])
    }

    /// A client certificate for user `common_name` in the Kubernetes groups `groups` (the
    /// certificate's organizations).
    pub fn issue_client_in(
        &self,
        common_name: &str,
        groups: &[&str],
    ) -> Result<LeafCertificate, MaterialError> {
        let err = cert_err("a client certificate");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn_in(common_name, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, err)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        err: impl Fn(rcgen::Error) -> MaterialError,
    ) -> Result<LeafCertificate, MaterialError> {
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
            key_pem: sec1_pem(&key)?,
        })
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The first address of `service_cidr`: the `kubernetes` Service's cluster IP, which
/// in-cluster clients reach the API server by.
pub fn kubernetes_service_ip(service_cidr: &str) -> Option<IpAddr> {
    let (network, _) = service_cidr.split_once('/')?;
    Some(match network.parse::<IpAddr>().ok()? {
        IpAddr::V4(ip) => IpAddr::V4(u32::from(ip).checked_add(1)?.into()),
        IpAddr::V6(ip) => IpAddr::V6(u128::from(ip).checked_add(1)?.into()),
    })
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

/// Every name in the API server's serving certificate for `config`: [`api_server_names`] of
/// the bind address, the `kubernetes` Service's cluster IP ([`kubernetes_service_ip`]) and the
/// configuration's `tlsSANs` (the host Service's names, which the operator's published endpoint
/// uses). All of them come from the measured configuration, so the host cannot add a name.
/// Public so that the boot-configuration fuzz target issues exactly these.
pub fn api_server_sans(config: &ControlPlaneConfig) -> Vec<String> {
    let mut names = api_server_names(&config.bind_address);
    if let Some(ip) = kubernetes_service_ip(&config.service_cidr) {
        names.push(ip.to_string());
    }
    for name in config.tls_sans.iter().chain(&config.advertise_address) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The certificates the agent issues when it runs the components itself (the `kubernetes`
/// distribution), named after the files K3s makes for the same purpose.
#[derive(Debug)]
pub struct ComponentCertificates {
    /// etcd's serving (and self-dialling) certificate, from the etcd server CA
    /// (`etcd/server-client`).
    pub etcd_server: LeafCertificate,
    /// etcd's peer certificate, from the etcd peer CA (`etcd/peer-server-client`).
    pub etcd_peer: LeafCertificate,
    /// The client certificate kube-apiserver and the agent present to etcd (`etcd/client`).
    pub etcd_client: LeafCertificate,
    /// `system:kube-scheduler`, from the client CA (`client-scheduler`).
    pub scheduler: LeafCertificate,
    /// `system:kube-controller-manager`, from the client CA (`client-controller`).
    pub controller_manager: LeafCertificate,
    /// `nautilus-agent` in `system:masters`, from the client CA: the agent's own admin
    /// identity, used only to create the tier groups' RoleBindings (`client-admin`).
    pub admin: LeafCertificate,
    /// kube-apiserver's client certificate towards kubelets (`client-kube-apiserver`), from
    /// the *serving* CA: the one CA a worker learns from the attestation, so a kubelet trusts
    /// (`authentication.x509.clientCAFile`) only callers that attested enclave vouches for,
    /// without a second CA to fetch over a channel the host could alter.
    pub kubelet_client: LeafCertificate,
    /// The front proxy's client certificate, from the request-header CA (`client-auth-proxy`).
    pub auth_proxy: LeafCertificate,
}

/// The user kube-apiserver is to kubelets (as K3s names it), bound to `system:kubelet-api-admin`.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver";

/// The user the request-header CA's client certificate names (as K3s does).
pub const REQUEST_HEADER_CN: &str = "system:auth-proxy";

impl ComponentCertificates {
    fn generate(
        serving_ca: &CertificateAuthority,
        client_ca: &CertificateAuthority,
        request_header_ca: &CertificateAuthority,
        etcd_server_ca: &CertificateAuthority,
        etcd_peer_ca: &CertificateAuthority,
    ) -> Result<Self, MaterialError> {
        let loopback = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        Ok(Self {
            etcd_server: etcd_server_ca.issue_server_and_client("etcd-server", &loopback)?,
            etcd_peer: etcd_peer_ca.issue_server_and_client("etcd-peer", &loopback)?,
            etcd_client: etcd_server_ca.issue_client_in("etcd-client", &[])?,
            scheduler: client_ca.issue_client_in("system:kube-scheduler", &[])?,
            controller_manager: client_ca.issue_client_in("system:kube-controller-manager", &[])?,
            admin: client_ca.issue_client_in("nautilus-agent", &["system:masters"])?,
            kubelet_client: serving_ca.issue_client_in(KUBELET_CLIENT_CN, &[])?,
            auth_proxy: request_header_ca.issue_client_in(REQUEST_HEADER_CN, &[])?,
        })
    }
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
    /// The service-account signing key (k3s `service.key`), SEC1 PEM.
    pub service_account_key_pem: String,
    /// Certificates of the `kubernetes` distribution's components (K3s makes its own).
    pub components: ComponentCertificates,
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

/// A CA as a sealed snapshot keeps it: certificate and SEC1 key, PEM.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeptCa {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (SEC1).
    pub key_pem: String,
}

impl std::fmt::Debug for KeptCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptCa").finish_non_exhaustive()
    }
}

impl KeptCa {
    fn of(ca: &CertificateAuthority) -> Self {
        Self {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
        }
    }

    fn restore(&self) -> Result<CertificateAuthority, MaterialError> {
        CertificateAuthority::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// The five CAs of a control plane, as kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeptCas {
    /// `server-ca` (bound into the attestation).
    pub serving: KeptCa,
    /// `client-ca`.
    pub client: KeptCa,
    /// `request-header-ca`.
    pub request_header: KeptCa,
    /// `etcd/server-ca`.
    pub etcd_server: KeptCa,
    /// `etcd/peer-ca`.
    pub etcd_peer: KeptCa,
}

/// What of the PKI a sealed snapshot keeps: everything [`BootMaterial::generate`] would make
/// afresh except the report key (ephemeral by design) and the leaf certificates (issued again
/// from the kept CAs).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeptPki {
    /// The CAs; `None` when they are to be made afresh (`caGeneration` rose).
    pub cas: Option<KeptCas>,
    /// The service-account signing key (SEC1 PEM): tokens stay valid across restarts.
    pub service_account_key_pem: String,
    /// The secrets encryption configuration, when secrets are encrypted: without it the
    /// restored Secrets cannot be read.
    #[serde(default)]
    pub encryption_config: Option<String>,
}

impl std::fmt::Debug for KeptPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptPki")
            .field("cas", &self.cas.is_some())
            .field("encryption_config", &self.encryption_config.is_some())
            .finish_non_exhaustive()
    }
}

impl BootMaterial {
    /// Generate the keys and certificates for `config`.
    pub fn generate(config: &EnclaveConfig) -> Result<Self, MaterialError> {
        Self::generate_with(config, None)
    }

    /// What a sealed snapshot keeps of this material (the encryption configuration is read by
    /// the caller, from the file the control plane uses).
    pub fn kept(&self, encryption_config: Option<String>) -> KeptPki {
        KeptPki {
            cas: Some(KeptCas {
                serving: KeptCa::of(&self.serving_ca),
                client: KeptCa::of(&self.client_ca),
                request_header: KeptCa::of(&self.request_header_ca),
                etcd_server: KeptCa::of(&self.etcd_server_ca),
                etcd_peer: KeptCa::of(&self.etcd_peer_ca),
            }),
            service_account_key_pem: self.service_account_key_pem.clone(),
            encryption_config,
        }
    }

    /// [`BootMaterial::generate`], with the CAs and the service-account key of `kept` (a
    /// restored snapshot) instead of new ones where it has them. The report key and every leaf
    /// certificate are new either way.
    pub fn generate_with(
        config: &EnclaveConfig,
        kept: Option<&KeptPki>,
    ) -> Result<Self, MaterialError> {
        let signer = ReportSigner::generate();
        let cluster = &config.cluster;
        let (serving_ca, client_ca, request_header_ca, etcd_server_ca, etcd_peer_ca) = match kept
            .and_then(|k| k.cas.as_ref())
        {
            Some(cas) => (
                cas.serving.restore()?,
                cas.client.restore()?,
                cas.request_header.restore()?,
                cas.etcd_server.restore()?,
                cas.etcd_peer.restore()?,
            ),
            None => (
                CertificateAuthority::generate(&format!("nautilus {cluster} CA"))?,
                CertificateAuthority::generate(&format!("nautilus {cluster} client CA"))?,
                CertificateAuthority::generate(&format!("nautilus {cluster} request-header CA"))?,
                CertificateAuthority::generate(&format!("nautilus {cluster} etcd server CA"))?,
                CertificateAuthority::generate(&format!("nautilus {cluster} etcd peer CA"))?,
            ),
        };
        let service_account_key_pem = match kept {
            Some(kept) => {
                // Checked here, not when kube-apiserver first reads it.
                p256::SecretKey::from_sec1_pem(&kept.service_account_key_pem).map_err(|e| {
                    MaterialError::Certificate {
                        what: "the restored service-account key",
                        reason: e.to_string(),
                    }
                })?;
                kept.service_account_key_pem.clone()
            }
            None => sec1_pem(
                &KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .map_err(cert_err("the service-account key"))?,
            )?,
        };
        let components = ComponentCertificates::generate(
            &serving_ca,
            &client_ca,
            &request_header_ca,
            &etcd_server_ca,
            &etcd_peer_ca,
        )?;
        let api_server =
            serving_ca.issue_server("kube-apiserver", &api_server_sans(&config.control_plane))?;
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
            components,
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
    ) -> Result<AttestationEvidence, MaterialError> {
        let user_data = self.binding.clone();
        let public_key = self.signer.public_key_der();
        let nonce = nonce.to_vec();
        let document = tokio::task::spawn_blocking(move || {
            nsm.attest(Some(&user_data), Some(&nonce), Some(&public_key))
        })
        .await
        .map_err(|e| MaterialError::Task(e.to_string()))??;
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

    /// The published endpoint's host passes a client's hostname check (what kubectl and
    /// `nautilusctl verify` do against `status.endpoint`), and a name the configuration does
    /// not carry does not.
    #[test]
    fn the_api_server_certificate_names_the_services_endpoint() {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let config = crate::k3s::tests::mk_config();
        let material = BootMaterial::generate(&config).expect("material");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(material.serving_ca.cert_der.clone()))
            .expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::client::provider(),
        )
        .build()
        .expect("verifier");
        let leaf = CertificateDer::from(material.api_server.cert_der.clone());
        let check = |host: &str| {
            verifier.verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(host.to_owned()).expect("name"),
                &[],
                UnixTime::now(),
            )
        };
        for host in &config.control_plane.tls_sans {
            check(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        check("127.0.0.1").expect("loopback");
        assert!(check("other.default.svc").is_err(), "an unlisted name");
    }

    /// A restored CA is the same CA: same certificate, and what it issues verifies against
    /// the original certificate (issuer name and key identifier as before).
    #[test]
    fn a_kept_pki_restores_the_same_cas() {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let config = crate::k3s::tests::mk_config();
        let first = BootMaterial::generate(&config).expect("material");
        let kept = first.kept(Some("{}".into()));
        let json = serde_json::to_string(&kept).expect("json");
        let kept: KeptPki = serde_json::from_str(&json).expect("parses");
        let again = BootMaterial::generate_with(&config, Some(&kept)).expect("restored");
        assert_eq!(again.serving_ca.cert_der, first.serving_ca.cert_der);
        assert_eq!(
            again.binding, first.binding,
            "the attestation binds the same CA"
        );
        assert_eq!(again.service_account_key_pem, first.service_account_key_pem);
        assert_ne!(
            again.signer.public_key_der(),
            first.signer.public_key_der(),
            "the report key stays ephemeral"
        );
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(first.serving_ca.cert_der.clone()))
            .expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::client::provider(),
        )
        .build()
        .expect("verifier");
        verifier
            .verify_server_cert(
                &CertificateDer::from(again.api_server.cert_der.clone()),
                &[],
                &ServerName::try_from("127.0.0.1").expect("name"),
                &[],
                UnixTime::now(),
            )
            .expect("a leaf of the restored CA verifies against the original");
        // Rotation: new CAs, the same service-account key.
        let rotated = KeptPki {
            cas: None,
            ..kept.clone()
        };
        let rotated = BootMaterial::generate_with(&config, Some(&rotated)).expect("rotated");
        assert_ne!(rotated.serving_ca.cert_der, first.serving_ca.cert_der);
        assert_eq!(
            rotated.service_account_key_pem,
            first.service_account_key_pem
        );
        // A key that is not the certificate's is refused.
        let mut swapped = kept.clone();
        if let Some(cas) = swapped.cas.as_mut() {
            cas.serving.key_pem = cas.client.key_pem.clone();
        }
        assert!(BootMaterial::generate_with(&config, Some(&swapped)).is_err());
    }

    #[test]
    fn the_kubernetes_service_ip_is_the_first_of_the_range() {
        assert_eq!(
            kubernetes_service_ip("10.43.0.0/16").map(|ip| ip.to_string()),
            Some("10.43.0.1".into())
        );
        assert_eq!(
            kubernetes_service_ip("fd00:43::/112").map(|ip| ip.to_string()),
            Some("fd00:43::1".into())
        );
        assert_eq!(kubernetes_service_ip("nonsense"), None);
    }

    #[test]
    fn private_keys_are_sec1_with_the_named_curve() {
        use p256::pkcs8::DecodePrivateKey as _;
        let ca = CertificateAuthority::generate("test CA").expect("ca");
        let leaf = ca.issue_client_in("u", &["g"]).expect("leaf");
        for pem in [&ca.key_pem, &leaf.key_pem] {
            assert!(pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"), "{pem}");
            // Go's x509.ParseECPrivateKey needs the curve inside the SEC1 structure when it
            // is read on its own: the DER carries the P-256 OID (1.2.840.10045.3.1.7).
            use base64::Engine as _;
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .expect("base64");
            let oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            assert!(der.windows(oid.len()).any(|w| w == oid), "curve named");
            p256::SecretKey::from_sec1_der(&der).expect("sec1");
        }
        // The PKCS#8 DER rustls takes is the same key.
        let pkcs8 = p256::SecretKey::from_pkcs8_der(&leaf.key_der).expect("pkcs8");
        assert_eq!(
            pkcs8,
            p256::SecretKey::from_sec1_pem(&leaf.key_pem).expect("sec1")
        );
    }
}
