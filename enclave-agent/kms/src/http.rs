//! The SDK's HTTP client: HTTP/1.1 (hyper) over TLS (rustls, ring) over a stream from the
//! agent's [`Dialer`], so TLS ends inside the enclave and the host only relays bytes.
//!
//! One connection per request: KMS is called at boot and when a key is made, never in a hot
//! path, and a connection kept open through the host's proxy would only be one more thing to
//! go stale. Only in-memory request bodies are sent (KMS's JSON); response bodies are read up
//! to [`MAX_RESPONSE_BYTES`]. Connect and read timeouts come from the SDK's settings, with
//! defaults when it gives none.

use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::Dialer;

/// Largest KMS response body read (a GenerateDataKey answer with a Recipient is about 1 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects through the [`Dialer`] and verifies the server against the given roots.
#[derive(Clone)]
pub(crate) struct TunnelClient {
    dialer: Arc<dyn Dialer>,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TunnelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelClient").finish_non_exhaustive()
    }
}

impl TunnelClient {
    pub(crate) fn new(
        dialer: Arc<dyn Dialer>,
        roots: rustls::RootCertStore,
    ) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            dialer,
            tls: Arc::new(tls),
        })
    }
}

impl HttpClient for TunnelClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(TunnelConnector {
            client: self.clone(),
            connect_timeout: settings
                .connect_timeout()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            read_timeout: settings.read_timeout().unwrap_or(DEFAULT_READ_TIMEOUT),
        })
    }
}

#[derive(Debug)]
struct TunnelConnector {
    client: TunnelClient,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl HttpConnector for TunnelConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        let (connect_timeout, read_timeout) = (self.connect_timeout, self.read_timeout);
        HttpConnectorFuture::new(async move {
            send(client, request, connect_timeout, read_timeout).await
        })
    }
}

fn user(reason: impl Into<String>) -> ConnectorError {
    ConnectorError::user(reason.into().into())
}

fn io(e: impl std::error::Error + Send + Sync + 'static) -> ConnectorError {
    ConnectorError::io(Box::new(e))
}

/// Aborts the connection task when the request ends or is cancelled (the SDK's operation
/// timeout drops the future), so no connection outlives its request.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send(
    client: TunnelClient,
    request: HttpRequest,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<HttpResponse, ConnectorError> {
    let request = request
        .try_into_http1x()
        .map_err(|e| user(format!("request: {e}")))?;
    let (mut parts, body) = request.into_parts();
    let body = Bytes::copy_from_slice(
        body.bytes()
            .ok_or_else(|| user("streaming request bodies are not supported"))?,
    );

    if parts.uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
        return Err(user(format!("{} is not an https url", parts.uri)));
    }
    let authority = parts
        .uri
        .authority()
        .cloned()
        .ok_or_else(|| user("url without a host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| user(format!("server name {host}: {e}")))?;

    // Origin-form request target; the Host header is the authority the SDK signed.
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    parts.uri = target
        .parse()
        .map_err(|e| user(format!("request target: {e}")))?;
    if !parts.headers.contains_key(http::header::HOST) {
        let value = http::HeaderValue::from_str(authority.as_str())
            .map_err(|e| user(format!("host header: {e}")))?;
        parts.headers.insert(http::header::HOST, value);
    }
    let request = http::Request::from_parts(parts, Full::new(body));

    let connect = async {
        let stream = client
            .dialer
            .dial(host.to_owned(), port)
            .await
            .map_err(io)?;
        let tls = TlsConnector::from(client.tls.clone())
            .connect(server_name, stream)
            .await
            .map_err(io)?;
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(io)
    };
    let (mut sender, connection) = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| ConnectorError::timeout(format!("connecting to {authority}").into()))??;
    let _guard = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "kms connection ended");
        }
    }));

    let exchange = async {
        let response = sender.send_request(request).await.map_err(io)?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(ConnectorError::io)?
            .to_bytes();
        Ok::<_, ConnectorError>(http::Response::from_parts(parts, SdkBody::from(body)))
    };
    let response = tokio::time::timeout(read_timeout, exchange)
        .await
        .map_err(|_| ConnectorError::timeout(format!("reading from {authority}").into()))??;
    HttpResponse::try_from(response).map_err(|e| user(format!("response: {e}")))
}
