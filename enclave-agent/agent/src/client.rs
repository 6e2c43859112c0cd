//! A small HTTPS client for one request per connection: the health prober's and the stand-in
//! control plane's (which calls the token webhook with it).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Largest response body read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("tls handshake with {addr}: {source}")]
    Tls {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(String),
    /// The whole request took longer than the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TLS configuration is unusable.
    #[error("tls configuration: {0}")]
    Config(String),
}

/// The ring crypto provider every TLS configuration of the agent uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `roots_pem` (PEM certificates), optionally presenting a
/// client certificate.
pub fn client_config(
    roots_pem: &[&str],
    client_cert: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| ClientError::Config(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(e.to_string()))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_der, key_der)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert_der.to_vec())],
                PrivateKeyDer::try_from(key_der.to_vec())
                    .map_err(|e| ClientError::Config(e.to_owned()))?,
            )
            .map_err(|e| ClientError::Config(e.to_string())),
    }
}

/// A client configuration that does NOT verify the server's certificate chain or name (it
/// still checks the handshake signature against the presented key).
///
/// Only for reading health over loopback inside the enclave from kube-scheduler and
/// kube-controller-manager, whose K3s serving certificates are self-signed at start: nothing
/// sent over these connections is secret, and nothing received grants anything.
pub fn loopback_unverified_config() -> Result<rustls::ClientConfig, ClientError> {
    let provider = provider();
    let verifier = Arc::new(LoopbackUnverified(
        provider.signature_verification_algorithms,
    ));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Debug)]
struct LoopbackUnverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for LoopbackUnverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// One HTTPS request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `host:port` to connect to.
    pub addr: &'a str,
    /// The name the server's certificate must carry (and the `Host` header).
    pub server_name: &'a str,
    /// `GET`, `POST`…
    pub method: http::Method,
    /// Path and query.
    pub path: &'a str,
    /// Extra headers.
    pub headers: Vec<(http::header::HeaderName, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Send `request` over a fresh TLS connection; the status and body (at most
/// [`MAX_RESPONSE_BYTES`]), all within `timeout`.
pub async fn send(
    tls: Arc<rustls::ClientConfig>,
    request: Request<'_>,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), ClientError> {
    tokio::time::timeout(timeout, send_inner(tls, request))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

async fn send_inner(
    tls: Arc<rustls::ClientConfig>,
    request: Request<'_>,
) -> Result<(http::StatusCode, Bytes), ClientError> {
    let addr = request.addr.to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(request.server_name.to_owned())
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| ClientError::Tls {
            addr: addr.clone(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(request.method)
        .uri(request.path)
        .header(http::header::HOST, request.server_name);
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let http_request = builder
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(http_request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}
