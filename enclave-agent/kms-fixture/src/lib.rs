//! A local AWS KMS for development and tests, never part of an enclave image (like the Sui
//! fixture). The agent's `aws-sdk-kms` client talks to it through the endpoint override.
//!
//! What it serves, and how, is what KMS does for sealing:
//!
//! - HTTPS (rustls, a development CA from [`DevTls`]) and HTTP/1.1, the AWS JSON 1.1
//!   protocol: `POST /`, `X-Amz-Target: TrentService.GenerateDataKey | TrentService.Decrypt`,
//!   `Content-Type: application/x-amz-json-1.1`, KMS's member names; errors as HTTP 400 with
//!   `{"__type": "...Exception", "message": "..."}`, so the SDK reports KMS's error codes;
//! - SigV4 recomputed with the configured credentials ([`sigv4`]);
//! - one symmetric key (id, ARN, a master key) whose `CiphertextBlob`s are [`blob`]s;
//! - a Recipient's attestation document verified with the project's verifier against the
//!   root it is given (the AWS Nitro root, or a simulated NSM's), no older than
//!   [`MAX_DOCUMENT_AGE`], carrying an RSA-2048 `public_key`;
//! - the key policy ([`policy`]) decides with the caller's ARN and the attested PCRs;
//! - with a Recipient the data key comes back only as `CiphertextForRecipient`, a CMS
//!   EnvelopedData to the attested key ([`envelope`]); without one, as `Plaintext`.
//!
//! [`LocalKms::handle`] is the whole request logic without the network; [`serve`] puts it
//! behind TLS.

pub mod blob;
pub mod envelope;
pub mod policy;
pub mod sigv4;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use nautilus_protocol::attestation::{
    AttestationDocument, TrustAnchor, Verifier, VerifyAt, now_unix_millis,
};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use blob::{BlobError, MasterKey};
use policy::{Decision, KeyPolicy, Operation, RequestContext};
use sigv4::{SigError, SigningCredentials};

/// Oldest Recipient attestation document accepted.
pub const MAX_DOCUMENT_AGE: Duration = Duration::from_secs(5 * 60);
/// How far in the future a document's timestamp may be (clock skew).
const MAX_DOCUMENT_FUTURE: Duration = Duration::from_secs(60);
/// Largest request body read.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
const JSON: &str = "application/x-amz-json-1.1";
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the local KMS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A setting is unusable.
    #[error("local kms configuration: {0}")]
    Config(String),
    /// The development certificates could not be made.
    #[error("local kms tls: {0}")]
    Tls(String),
    /// The listener failed.
    #[error("local kms listener: {0}")]
    Io(#[from] std::io::Error),
}

/// An error answer: KMS's error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `AccessDeniedException`, `InvalidCiphertextException`, ...
    pub code: &'static str,
    /// The message.
    pub message: String,
}

fn fault(code: &'static str, message: impl Into<String>) -> Fault {
    Fault {
        code,
        message: message.into(),
    }
}

/// What the local KMS is configured with.
#[derive(Debug)]
pub struct LocalKmsConfig {
    /// Region, e.g. `us-east-1` (in ARNs and the SigV4 scope).
    pub region: String,
    /// Account id, e.g. `111122223333`.
    pub account: String,
    /// The key's id (a UUID in AWS).
    pub key_id: String,
    /// The key's master key.
    pub master_key: [u8; 32],
    /// The credentials requests must be signed with.
    pub credentials: SigningCredentials,
    /// The ARN those credentials act as (what the policy's Principal names).
    pub caller_arn: String,
    /// The key policy.
    pub policy: KeyPolicy,
    /// The root Recipient attestation documents must chain to.
    pub root: TrustAnchor,
    /// Oldest Recipient document accepted ([`MAX_DOCUMENT_AGE`] unless a test shortens it).
    pub max_document_age: Duration,
}

/// The local KMS; see the crate documentation.
#[derive(Debug)]
pub struct LocalKms {
    region: String,
    key_id: String,
    key_arn: String,
    master: MasterKey,
    credentials: SigningCredentials,
    caller_arn: String,
    policy: KeyPolicy,
    verifier: Verifier,
    max_document_age: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct RecipientJson {
    key_encryption_algorithm: Option<String>,
    attestation_document: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct GenerateDataKeyJson {
    key_id: String,
    key_spec: Option<String>,
    number_of_bytes: Option<u32>,
    encryption_context: Option<BTreeMap<String, String>>,
    #[allow(dead_code)]
    grant_tokens: Option<Vec<String>>,
    recipient: Option<RecipientJson>,
    dry_run: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct DecryptJson {
    ciphertext_blob: String,
    key_id: Option<String>,
    encryption_context: Option<BTreeMap<String, String>>,
    #[allow(dead_code)]
    grant_tokens: Option<Vec<String>>,
    encryption_algorithm: Option<String>,
    recipient: Option<RecipientJson>,
    dry_run: Option<bool>,
}

impl LocalKms {
    /// A local KMS with `config`.
    pub fn new(config: LocalKmsConfig) -> Result<Self, FixtureError> {
        let LocalKmsConfig {
            region,
            account,
            key_id,
            master_key,
            credentials,
            caller_arn,
            policy,
            root,
            max_document_age,
        } = config;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FixtureError::Config(format!(
                "account {account:?} is not 12 digits"
            )));
        }
        if key_id.is_empty() || key_id.contains(['/', ':']) {
            return Err(FixtureError::Config(format!("key id {key_id:?}")));
        }
        let key_arn = format!("arn:aws:kms:{region}:{account}:key/{key_id}");
        Ok(Self {
            master: MasterKey::new(&master_key).map_err(|e| FixtureError::Config(e.to_string()))?,
            region,
            key_id,
            key_arn,
            credentials,
            caller_arn,
            policy,
            verifier: Verifier::new(root),
            max_document_age,
        })
    }

    /// The key's ARN, as responses name it.
    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }

    /// Verify a Recipient's attestation document as a request does, with certificate validity
    /// checked at `at` and freshness against `now_ms`: [`LocalKms::check_document`], then an
    /// RSA-2048 `public_key`.
    pub fn verify_recipient(
        &self,
        document: &[u8],
        at: VerifyAt,
        now_ms: u64,
    ) -> Result<AttestationDocument, Fault> {
        let doc = self.check_document(document, at, now_ms)?;
        let public_key = doc.public_key.as_deref().ok_or_else(|| {
            fault(
                "ValidationException",
                "The attestation document in the Recipient has no public key.",
            )
        })?;
        envelope::recipient_key(public_key)
            .map_err(|e| fault("ValidationException", e.to_string()))?;
        Ok(doc)
    }

    /// The document checks: the chain to the configured root and the signature (validity at
    /// `at`), and an age of at most the configured maximum at `now_ms`.
    pub fn check_document(
        &self,
        document: &[u8],
        at: VerifyAt,
        now_ms: u64,
    ) -> Result<AttestationDocument, Fault> {
        let doc = self.verifier.verify(document, at).map_err(|e| {
            fault(
                "ValidationException",
                format!("The attestation document in the Recipient is not valid: {e}"),
            )
        })?;
        let age_ms = now_ms.saturating_sub(doc.timestamp_ms);
        if u128::from(age_ms) > self.max_document_age.as_millis() {
            return Err(fault(
                "ValidationException",
                format!(
                    "The attestation document in the Recipient is {} ms old; at most {} ms is accepted.",
                    age_ms,
                    self.max_document_age.as_millis()
                ),
            ));
        }
        if u128::from(doc.timestamp_ms) > u128::from(now_ms) + MAX_DOCUMENT_FUTURE.as_millis() {
            return Err(fault(
                "ValidationException",
                "The attestation document in the Recipient is dated in the future.",
            ));
        }
        Ok(doc)
    }

    fn recipient(
        &self,
        recipient: Option<&RecipientJson>,
    ) -> Result<Option<AttestationDocument>, Fault> {
        let Some(recipient) = recipient else {
            return Ok(None);
        };
        match recipient.key_encryption_algorithm.as_deref() {
            Some("RSAES_OAEP_SHA_256") => {}
            other => {
                return Err(fault(
                    "ValidationException",
                    format!("KeyEncryptionAlgorithm {other:?} is not RSAES_OAEP_SHA_256"),
                ));
            }
        }
        let document = recipient.attestation_document.as_deref().ok_or_else(|| {
            fault(
                "ValidationException",
                "Recipient without AttestationDocument",
            )
        })?;
        let document = B64
            .decode(document)
            .map_err(|_| fault("ValidationException", "AttestationDocument is not base64"))?;
        let now_ms = now_unix_millis().map_err(|e| fault("KMSInternalException", e.to_string()))?;
        self.verify_recipient(&document, VerifyAt::UnixMillis(now_ms), now_ms)
            .map(Some)
    }

    fn check_key_id(&self, key_id: &str) -> Result<(), Fault> {
        if key_id == self.key_id || key_id == self.key_arn {
            Ok(())
        } else {
            Err(fault(
                "NotFoundException",
                format!("Key '{key_id}' does not exist"),
            ))
        }
    }

    /// The key policy's decision for the configured caller, with the Recipient's PCRs.
    pub fn authorize(
        &self,
        operation: Operation,
        recipient: Option<&AttestationDocument>,
    ) -> Result<(), Fault> {
        let context = RequestContext {
            principal: self.caller_arn.clone(),
            recipient_pcrs: recipient.map(|doc| doc.pcrs.clone()),
        };
        let decision = self.policy.evaluate(operation, &context);
        let why = match &decision {
            Decision::Allow { sid } => {
                tracing::info!(action = operation.action(), sid = ?sid, recipient = recipient.is_some(), "allowed");
                return Ok(());
            }
            Decision::ExplicitDeny { sid } => format!(
                "with an explicit deny in a resource-based policy (statement {})",
                sid.as_deref().unwrap_or("without Sid")
            ),
            Decision::ImplicitDeny => format!(
                "because no resource-based policy allows the {} action",
                operation.action()
            ),
        };
        tracing::info!(action = operation.action(), recipient = recipient.is_some(), pcr0 = ?recipient.and_then(|d| d.pcr(0)).map(|p| hex::encode(&p[..8.min(p.len())])), "denied");
        Err(fault(
            "AccessDeniedException",
            format!(
                "User: {} is not authorized to perform: {} on resource: {} {why}",
                self.caller_arn,
                operation.action(),
                self.key_arn
            ),
        ))
    }

    fn data_key_answer(
        &self,
        plaintext: &[u8],
        recipient: Option<&AttestationDocument>,
        mut answer: serde_json::Map<String, serde_json::Value>,
    ) -> Result<serde_json::Value, Fault> {
        answer.insert("KeyId".into(), json!(self.key_arn));
        match recipient.and_then(|doc| doc.public_key.as_deref()) {
            Some(public_key) => {
                let sealed = envelope::seal(public_key, plaintext)
                    .map_err(|e| fault("KMSInternalException", e.to_string()))?;
                answer.insert("CiphertextForRecipient".into(), json!(B64.encode(sealed)));
            }
            None => {
                answer.insert("Plaintext".into(), json!(B64.encode(plaintext)));
            }
        }
        Ok(serde_json::Value::Object(answer))
    }

    fn generate_data_key(&self, body: &[u8]) -> Result<serde_json::Value, Fault> {
        let request: GenerateDataKeyJson = serde_json::from_slice(body)
            .map_err(|e| fault("SerializationException", e.to_string()))?;
        self.check_key_id(&request.key_id)?;
        let len = match (request.key_spec.as_deref(), request.number_of_bytes) {
            (Some("AES_256"), None) => 32,
            (Some("AES_128"), None) => 16,
            (None, Some(n)) if (1..=1024).contains(&n) => n as usize,
            _ => {
                return Err(fault(
                    "ValidationException",
                    "Exactly one of KeySpec (AES_256, AES_128) and NumberOfBytes (1-1024) is required",
                ));
            }
        };
        let recipient = self.recipient(request.recipient.as_ref())?;
        self.authorize(Operation::GenerateDataKey, recipient.as_ref())?;
        if request.dry_run == Some(true) {
            return Err(fault(
                "DryRunOperationException",
                "The request would have succeeded",
            ));
        }
        let mut plaintext = vec![0u8; len];
        aws_lc_rs::rand::fill(&mut plaintext)
            .map_err(|_| fault("KMSInternalException", "random"))?;
        let context = request.encryption_context.unwrap_or_default();
        let blob = self
            .master
            .seal(&self.key_arn, &context, &plaintext)
            .map_err(|e| fault("KMSInternalException", e.to_string()))?;
        let mut answer = serde_json::Map::new();
        answer.insert("CiphertextBlob".into(), json!(B64.encode(blob)));
        let result = self.data_key_answer(&plaintext, recipient.as_ref(), answer);
        plaintext.fill(0);
        result
    }

    fn decrypt(&self, body: &[u8]) -> Result<serde_json::Value, Fault> {
        let request: DecryptJson = serde_json::from_slice(body)
            .map_err(|e| fault("SerializationException", e.to_string()))?;
        if let Some(key_id) = &request.key_id {
            self.check_key_id(key_id)?;
        }
        if !matches!(
            request.encryption_algorithm.as_deref(),
            None | Some("SYMMETRIC_DEFAULT")
        ) {
            return Err(fault(
                "InvalidKeyUsageException",
                "The key is a symmetric key: EncryptionAlgorithm must be SYMMETRIC_DEFAULT",
            ));
        }
        let blob = B64
            .decode(&request.ciphertext_blob)
            .map_err(|_| fault("SerializationException", "CiphertextBlob is not base64"))?;
        match MasterKey::key_arn_of(&blob) {
            Ok(arn) if arn == self.key_arn => {}
            Ok(arn) if request.key_id.is_some() => {
                return Err(fault(
                    "IncorrectKeyException",
                    format!(
                        "The ciphertext refers to a customer master key that does not exist, does not exist in this region, or you are not allowed to access: {arn}"
                    ),
                ));
            }
            _ => return Err(fault("InvalidCiphertextException", "")),
        }
        let recipient = self.recipient(request.recipient.as_ref())?;
        self.authorize(Operation::Decrypt, recipient.as_ref())?;
        if request.dry_run == Some(true) {
            return Err(fault(
                "DryRunOperationException",
                "The request would have succeeded",
            ));
        }
        let context = request.encryption_context.unwrap_or_default();
        let mut plaintext =
            self.master
                .open(&self.key_arn, &context, &blob)
                .map_err(|e| match e {
                    BlobError::OtherKey(_) => fault("IncorrectKeyException", e.to_string()),
                    BlobError::Format | BlobError::Invalid => {
                        fault("InvalidCiphertextException", "")
                    }
                })?;
        let mut answer = serde_json::Map::new();
        answer.insert("EncryptionAlgorithm".into(), json!("SYMMETRIC_DEFAULT"));
        let result = self.data_key_answer(&plaintext, recipient.as_ref(), answer);
        plaintext.fill(0);
        result
    }

    /// Answer one request: status and JSON body. `now` is the Unix time for SigV4's skew
    /// check.
    pub fn handle(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> (StatusCode, Vec<u8>) {
        let result = self.dispatch(method, path_and_query, headers, body, now);
        match result {
            Ok(value) => (StatusCode::OK, value.to_string().into_bytes()),
            Err(Fault { code, message }) => {
                tracing::info!(code, %message, "refused");
                (
                    StatusCode::BAD_REQUEST,
                    json!({"__type": code, "message": message})
                        .to_string()
                        .into_bytes(),
                )
            }
        }
    }

    fn dispatch(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<serde_json::Value, Fault> {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let operation = match target {
            "TrentService.GenerateDataKey" => Operation::GenerateDataKey,
            "TrentService.Decrypt" => Operation::Decrypt,
            _ => {
                return Err(fault(
                    "UnknownOperationException",
                    format!("operation {target:?} is not served by the local kms"),
                ));
            }
        };
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if content_type != Some(JSON) {
            return Err(fault(
                "SerializationException",
                format!("Content-Type must be {JSON}"),
            ));
        }
        sigv4::verify(
            &self.credentials,
            &self.region,
            method,
            path_and_query,
            headers,
            body,
            now,
        )
        .map_err(|e| match e {
            SigError::UnknownAccessKey => fault("UnrecognizedClientException", e.to_string()),
            SigError::Invalid(_) | SigError::Expired(_) => {
                fault("InvalidSignatureException", e.to_string())
            }
        })?;
        match operation {
            Operation::GenerateDataKey => self.generate_data_key(body),
            Operation::Decrypt => self.decrypt(body),
        }
    }
}

/// A development CA and a server certificate it signed, for the names given.
#[derive(Debug, Clone)]
pub struct DevTls {
    /// The CA certificate (PEM): what the client is told to trust.
    pub ca_pem: String,
    /// The server's TLS configuration.
    pub server_config: Arc<rustls::ServerConfig>,
}

impl DevTls {
    /// A fresh CA and a certificate for `names` (DNS names or IP addresses).
    pub fn generate(names: &[String]) -> Result<Self, FixtureError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let tls = |e: rcgen::Error| FixtureError::Tls(e.to_string());
        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name.push(
            DnType::CommonName,
            "nautilus local kms CA (development only)",
        );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).map_err(tls)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "nautilus local kms");
        let cert = params.signed_by(&key, &issuer).map_err(tls)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FixtureError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(|e| FixtureError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca.pem(),
            server_config: Arc::new(config),
        })
    }
}

/// A running local KMS; stopped (with every connection) when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`, the endpoint override for the SDK.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Serve until the task is cancelled (for the binary).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

async fn answer(
    kms: Arc<LocalKms>,
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = request.into_parts();
    let (status, body) = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            kms.handle(
                parts.method.as_str(),
                path,
                &parts.headers,
                &body,
                unix_now(),
            )
        }
        Err(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"__type": "ValidationException", "message": "request body too large"})
                .to_string()
                .into_bytes(),
        ),
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(JSON),
    );
    Ok(response)
}

/// Serve `kms` on `listener` with `tls`.
pub fn serve(
    kms: Arc<LocalKms>,
    listener: TcpListener,
    tls: &DevTls,
) -> Result<Server, FixtureError> {
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let acceptor = acceptor.clone();
            let kms = kms.clone();
            connections.spawn(async move {
                let tls =
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let service =
                    hyper::service::service_fn(move |request| answer(kms.clone(), request));
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
    });
    Ok(Server { addr, task })
}
