//! The enclave agent's AWS KMS client: `GenerateDataKey` and `Decrypt` with a Nitro
//! `Recipient`, so that KMS releases a data key only to an enclave whose attested measurements
//! the key policy allows, and only inside it.
//!
//! Each call makes a fresh RSA-2048 key ([`recipient::RecipientKey`]), asks the agent's
//! [`RecipientAttester`] for an attestation document carrying its public key, sends the call
//! with the real `aws-sdk-kms` client, and opens the `CiphertextForRecipient` KMS answers with
//! ([`envelope`]: a CMS EnvelopedData, RSAES-OAEP-SHA256 key transport, AES-256-CBC content).
//! KMS never returns `Plaintext` to a Recipient call; an answer that carries one is refused.
//!
//! The SDK runs without `aws-config` or its default HTTPS client: its private `http` module gives it hyper over
//! rustls over a byte stream from the agent's [`Dialer`] (the CONNECT tunnel through the
//! sidecar's egress proxy), so TLS ends in the enclave. That matters: `CiphertextForRecipient`
//! is not signed, and without TLS to KMS the host could answer `GenerateDataKey` with a key of
//! its own, encrypted to the public key it saw in the request.
//!
//! This crate knows neither the NSM nor the agent: the agent passes the attester, the dialer,
//! the TLS roots, the key and the credentials.

pub mod ber;
pub mod envelope;
mod http;
pub mod recipient;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyEncryptionMechanism, RecipientInfo};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroizing;

pub use envelope::{DATA_KEY_BYTES, EnvelopeError};

use recipient::RecipientKey;

/// Largest `CiphertextBlob` accepted from KMS (AWS's are under 200 bytes; the API allows
/// 6144).
pub const MAX_CIPHERTEXT_BLOB_BYTES: usize = 6144;
/// Whole-call timeout, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// One attempt's timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// A 32-byte data key (AES-256). Zeroized on drop; neither `Debug` nor anything else prints
/// its bytes.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_BYTES]>);

impl DataKey {
    /// The key bytes.
    pub fn expose(&self) -> &[u8; DATA_KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// AWS credentials (the instance role's, relayed by the sidecar). `Debug` shows the access key
/// id only.
#[derive(Clone)]
pub struct Credentials {
    /// `AKIA…`/`ASIA…`.
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Which KMS key, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsTarget {
    /// Key id, key ARN, alias name or alias ARN.
    pub key_id: String,
    /// AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// An `https://host[:port]` URL instead of `https://kms.<region>.amazonaws.com` (a VPC
    /// endpoint, a FIPS endpoint, or the local KMS in development).
    pub endpoint: Option<String>,
}

/// A byte stream to the KMS endpoint (TLS is layered on it by this crate).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Dials `host:port` and returns a raw byte stream (the agent's CONNECT tunnel through the
/// sidecar's egress proxy); TLS is done by this crate.
pub trait Dialer: Send + Sync + 'static {
    /// Open a stream to `host:port`.
    fn dial(&self, host: String, port: u16)
    -> BoxFuture<'static, std::io::Result<Box<dyn Stream>>>;
}

/// Makes a fresh attestation document whose `public_key` is `public_key_der`
/// (SubjectPublicKeyInfo DER of the RSA-2048 key made for this call).
pub trait RecipientAttester: Send + Sync {
    /// The COSE_Sign1 document bytes, or why none could be made.
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, String>;
}

/// Why a KMS call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The target, credentials or TLS roots are unusable.
    #[error("kms client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// KMS said no (AccessDeniedException for a policy or attestation refusal,
    /// InvalidCiphertextException, NotFoundException, ...).
    #[error("kms refused: {code}: {message}")]
    Refused {
        /// The AWS error code.
        code: String,
        /// KMS's message.
        message: String,
    },
    /// No answer: dialing, TLS, HTTP or a timeout.
    #[error("kms unreachable: {reason}")]
    Transport {
        /// What failed.
        reason: String,
    },
    /// The attester could not make a document.
    #[error("recipient attestation failed: {reason}")]
    Attestation {
        /// What the attester said.
        reason: String,
    },
    /// The Recipient key could not be made, or `CiphertextForRecipient` did not parse, check
    /// or decrypt.
    #[error("ciphertext for recipient: {0}")]
    Recipient(#[from] EnvelopeError),
    /// KMS answered, but not as a Recipient call is answered.
    #[error("unexpected kms response: {reason}")]
    Response {
        /// What is missing or extra.
        reason: String,
    },
}

fn config_err(reason: impl Into<String>) -> KmsError {
    KmsError::Config {
        reason: reason.into(),
    }
}

fn response_err(reason: impl Into<String>) -> KmsError {
    KmsError::Response {
        reason: reason.into(),
    }
}

fn sdk_err<E, R>(e: SdkError<E, R>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            KmsError::Refused {
                code: err.code().unwrap_or("Unknown").to_owned(),
                message: err.message().unwrap_or_default().to_owned(),
            }
        }
        _ => KmsError::Transport {
            reason: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
        },
    }
}

/// A region is a DNS label's worth of lower-case letters, digits and hyphens.
fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

fn check_endpoint(endpoint: &str) -> Result<(), KmsError> {
    let uri: ::http::Uri = endpoint
        .parse()
        .map_err(|e| config_err(format!("endpoint {endpoint:?}: {e}")))?;
    if uri.scheme() != Some(&::http::uri::Scheme::HTTPS) {
        return Err(config_err(format!("endpoint {endpoint:?} is not https")));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| config_err(format!("endpoint {endpoint:?} has no host")))?;
    if authority.as_str().contains('@') {
        return Err(config_err(format!(
            "endpoint {endpoint:?} has user information"
        )));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(config_err(format!(
            "endpoint {endpoint:?} has a path or query"
        )));
    }
    Ok(())
}

/// The KMS client; see the crate documentation. Cheap to share behind an `Arc`; each call
/// opens its own connection.
#[derive(Debug, Clone)]
pub struct KmsClient {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl KmsClient {
    /// A client for `target` with `credentials`, dialing through `dialer` and verifying the
    /// endpoint's certificate against `roots` (webpki-roots for AWS; the local KMS's CA in
    /// development). Makes no connection.
    pub fn new(
        target: KmsTarget,
        credentials: Credentials,
        dialer: Arc<dyn Dialer>,
        roots: rustls::RootCertStore,
    ) -> Result<Self, KmsError> {
        if target.key_id.is_empty() || target.key_id.len() > 2048 {
            return Err(config_err("key id must be 1 to 2048 characters"));
        }
        if !valid_region(&target.region) {
            return Err(config_err(format!(
                "region {:?} is not valid",
                target.region
            )));
        }
        if credentials.access_key_id.is_empty() || credentials.secret_access_key.is_empty() {
            return Err(config_err("credentials are empty"));
        }
        if roots.is_empty() {
            return Err(config_err("no tls roots"));
        }
        let http =
            http::TunnelClient::new(dialer, roots).map_err(|e| config_err(format!("tls: {e}")))?;
        let creds = aws_sdk_kms::config::Credentials::new(
            credentials.access_key_id,
            credentials.secret_access_key,
            credentials.session_token,
            None,
            "nautilus-agent",
        );
        let mut config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(target.region))
            .credentials_provider(creds)
            .http_client(http)
            .sleep_impl(aws_smithy_async::rt::sleep::TokioSleep::new())
            .time_source(aws_smithy_async::time::SystemTimeSource::new())
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(OPERATION_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = target.endpoint {
            check_endpoint(&endpoint)?;
            config = config.endpoint_url(endpoint);
        }
        Ok(Self {
            client: aws_sdk_kms::Client::from_conf(config.build()),
            key_id: target.key_id,
        })
    }

    /// The underlying SDK client, for calls this crate does not wrap (the local KMS's tests
    /// use it to send a request without a Recipient).
    pub fn sdk(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// `GenerateDataKey` (KeySpec AES_256) with a Recipient: the `CiphertextBlob` to store
    /// beside the sealed data, and the plaintext key opened from `CiphertextForRecipient`.
    pub async fn generate_data_key(
        &self,
        attester: &dyn RecipientAttester,
    ) -> Result<(Vec<u8>, DataKey), KmsError> {
        let (key, recipient) = recipient_for(attester).await?;
        let output = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .recipient(recipient)
            .send()
            .await
            .map_err(sdk_err)?;
        if output.plaintext().is_some() {
            return Err(response_err("plaintext returned to a recipient call"));
        }
        let blob = output
            .ciphertext_blob()
            .ok_or_else(|| response_err("no CiphertextBlob"))?
            .as_ref();
        if blob.is_empty() || blob.len() > MAX_CIPHERTEXT_BLOB_BYTES {
            return Err(response_err(format!(
                "CiphertextBlob of {} bytes",
                blob.len()
            )));
        }
        let sealed = output
            .ciphertext_for_recipient()
            .ok_or_else(|| response_err("no CiphertextForRecipient"))?;
        let data_key = key.open(sealed.as_ref())?;
        Ok((blob.to_vec(), DataKey(data_key)))
    }

    /// `Decrypt` of a `CiphertextBlob` under this client's key with a Recipient: the data key.
    pub async fn decrypt(
        &self,
        ciphertext_blob: &[u8],
        attester: &dyn RecipientAttester,
    ) -> Result<DataKey, KmsError> {
        if ciphertext_blob.is_empty() || ciphertext_blob.len() > MAX_CIPHERTEXT_BLOB_BYTES {
            return Err(config_err(format!(
                "CiphertextBlob of {} bytes (1 to {MAX_CIPHERTEXT_BLOB_BYTES})",
                ciphertext_blob.len()
            )));
        }
        let (key, recipient) = recipient_for(attester).await?;
        let output = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(ciphertext_blob))
            .recipient(recipient)
            .send()
            .await
            .map_err(sdk_err)?;
        if output.plaintext().is_some() {
            return Err(response_err("plaintext returned to a recipient call"));
        }
        let sealed = output
            .ciphertext_for_recipient()
            .ok_or_else(|| response_err("no CiphertextForRecipient"))?;
        Ok(DataKey(key.open(sealed.as_ref())?))
    }
}

/// A fresh key (made off the async runtime) and the Recipient naming it.
async fn recipient_for(
    attester: &dyn RecipientAttester,
) -> Result<(RecipientKey, RecipientInfo), KmsError> {
    let key = tokio::task::spawn_blocking(RecipientKey::generate)
        .await
        .map_err(|e| KmsError::Attestation {
            reason: format!("key generation task: {e}"),
        })??;
    let document = attester
        .attest(key.public_key_der())
        .map_err(|reason| KmsError::Attestation { reason })?;
    let recipient = RecipientInfo::builder()
        .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
        .attestation_document(Blob::new(document))
        .build();
    Ok((key, recipient))
}
