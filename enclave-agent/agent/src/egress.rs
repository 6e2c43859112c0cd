//! Outbound connections from the enclave: the Sui full node's gRPC, through the sidecar's HTTP
//! CONNECT proxy, with TLS verified inside the enclave.
//!
//! The enclave has no network of its own. [`EgressConnector`] dials the proxy's transport
//! endpoint (vsock in production), asks for a tunnel with `CONNECT host:port HTTP/1.1`, checks
//! for a 200, and then runs the TLS handshake with the full node itself, through the tunnel,
//! against the Mozilla roots of `webpki-roots` (or a configured CA for development fixtures).
//! The host sees only ciphertext and cannot impersonate the node. With no proxy (development)
//! it dials the node directly and still verifies TLS the same way.
//!
//! `sui_rpc::Client` is built from a `tonic` endpoint and has no connector hook, so the client
//! gets a request layer that routes every call into a `tonic` channel over this connector; the
//! client's own lazily-connecting channel is never used.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use nautilus_protocol::transport::{self, BoxedStream, Endpoint, TransportError};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Largest CONNECT response head read from the proxy.
const MAX_CONNECT_RESPONSE: usize = 8 * 1024;

/// Why an outbound connection failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The Sui RPC URL is not `https://host[:port]` (or `http://` for development).
    #[error("invalid sui rpc url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Reaching the proxy (or the node, with no proxy) failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The proxy stream failed.
    #[error("egress proxy stream: {0}")]
    Io(#[from] std::io::Error),
    /// The proxy refused the tunnel or answered something else than HTTP.
    #[error("egress proxy refused CONNECT {target}: {status}")]
    Refused {
        /// `host:port` asked for.
        target: String,
        /// The proxy's status line.
        status: String,
    },
    /// The TLS handshake with the node failed.
    #[error("tls handshake with {target}: {source}")]
    Tls {
        /// `host:port`.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The trust roots could not be loaded.
    #[error("tls roots: {0}")]
    Roots(String),
}

/// The parts of a Sui RPC URL the connector needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port (443 by default for https).
    pub port: u16,
    /// Whether TLS is used (`https`).
    pub tls: bool,
}

impl Target {
    /// Parse `https://host[:port]` (or `http://host:port`, for local fixtures only).
    pub fn parse(url: &str) -> Result<Self, EgressError> {
        let err = |reason: &str| EgressError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| err(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(err("scheme must be https")),
        };
        let host = uri.host().ok_or_else(|| err("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { host, port, tls })
    }

    /// `host:port`, brackets around an IPv6 host.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Dials the target through the egress proxy (or directly), then TLS inside the enclave.
#[derive(Clone)]
pub struct EgressConnector {
    proxy: Option<Endpoint>,
    target: Target,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for EgressConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressConnector")
            .field("proxy", &self.proxy)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The TLS client configuration for the node: webpki roots plus `extra_ca_pem`, ALPN `h2`.
pub fn node_tls_config(extra_ca_pem: Option<&str>) -> Result<rustls::ClientConfig, EgressError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| EgressError::Roots(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| EgressError::Roots(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(EgressError::Roots(
                "the CA file holds no certificate".into(),
            ));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::client::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| EgressError::Roots(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl EgressConnector {
    /// A connector to `target` through `proxy` (`None`: direct), verifying TLS with `tls`.
    pub fn new(proxy: Option<Endpoint>, target: Target, tls: Arc<rustls::ClientConfig>) -> Self {
        let tls = target.tls.then(|| tokio_rustls::TlsConnector::from(tls));
        Self { proxy, target, tls }
    }

    /// Open one connection to the target.
    pub async fn connect(&self) -> Result<BoxedStream, EgressError> {
        let authority = self.target.authority();
        let stream = match &self.proxy {
            Some(proxy) => {
                let mut stream = transport::connect(proxy).await?;
                tunnel(&mut stream, &authority).await?;
                stream
            }
            None => transport::connect(&Endpoint::Tcp(authority.clone())).await?,
        };
        match &self.tls {
            None => Ok(stream),
            Some(tls) => {
                let name = ServerName::try_from(self.target.host.clone()).map_err(|e| {
                    EgressError::Url {
                        url: self.target.host.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let stream =
                    tls.connect(name, stream)
                        .await
                        .map_err(|source| EgressError::Tls {
                            target: authority,
                            source,
                        })?;
                Ok(Box::new(stream))
            }
        }
    }
}

/// Ask an HTTP proxy on `stream` for a tunnel to `authority`; the stream carries the tunnel
/// afterwards. The response head is read byte by byte so nothing of the tunnel is consumed.
pub async fn tunnel(stream: &mut BoxedStream, authority: &str) -> Result<(), EgressError> {
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_RESPONSE {
            return Err(EgressError::Refused {
                target: authority.to_owned(),
                status: format!("response head over {MAX_CONNECT_RESPONSE} bytes"),
            });
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(EgressError::Refused {
                target: authority.to_owned(),
                status: "connection closed before a response".into(),
            });
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default().to_owned();
    let mut parts = status_line.split_whitespace();
    let ok = matches!(
        (parts.next(), parts.next()),
        (Some("HTTP/1.1" | "HTTP/1.0"), Some("200"))
    );
    if ok {
        Ok(())
    } else {
        Err(EgressError::Refused {
            target: authority.to_owned(),
            status: status_line.chars().take(200).collect(),
        })
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<BoxedStream>, EgressError>> + Send>>;

impl tower::Service<http::Uri> for EgressConnector {
    type Response = TokioIo<BoxedStream>;
    type Error = EgressError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// A `sui_rpc::Client` for `url` whose connections go through `connector`.
pub fn sui_client(
    target: &Target,
    connector: EgressConnector,
    connect_timeout: Duration,
) -> Result<sui_rpc::Client, EgressError> {
    let url_err = |reason: String| EgressError::Url {
        url: target.authority(),
        reason,
    };
    let scheme = if target.tls { "https" } else { "http" };
    let origin: http::Uri = format!("{scheme}://{}", target.authority())
        .parse()
        .map_err(|e: http::uri::InvalidUri| url_err(e.to_string()))?;
    // The endpoint's own scheme is http: TLS is the connector's job, not tonic's. The origin
    // keeps `:scheme` and `:authority` as the node expects them.
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", target.authority()))
            .map_err(|e| url_err(e.to_string()))?
            .origin(origin)
            .connect_timeout(connect_timeout);
    let channel = endpoint.connect_with_connector_lazy(connector);
    Ok(sui_rpc::Client::from_endpoint(&endpoint)
        .request_layer(tower::layer::layer_fn(move |_unused| channel.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("https://fullnode.testnet.sui.io").expect("url");
        assert_eq!(
            t,
            Target {
                host: "fullnode.testnet.sui.io".into(),
                port: 443,
                tls: true
            }
        );
        assert_eq!(t.authority(), "fullnode.testnet.sui.io:443");
        let t = Target::parse("http://127.0.0.1:9000").expect("url");
        assert!(!t.tls);
        assert_eq!(t.authority(), "127.0.0.1:9000");
        let t = Target::parse("https://[::1]:8443").expect("url");
        assert_eq!(t.authority(), "[::1]:8443");
        for bad in ["ftp://x", "fullnode", "https://"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    async fn proxy_answering(answer: &'static [u8]) -> (Endpoint, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.expect("read");
            s.write_all(answer).await.expect("write");
            s.write_all(b"tunnel-bytes").await.expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (Endpoint::Tcp(addr.to_string()), task)
    }

    #[tokio::test]
    async fn a_tunnel_is_asked_for_and_its_bytes_left_unread() {
        let (proxy, task) = proxy_answering(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        let mut stream = transport::connect(&proxy).await.expect("connect");
        tunnel(&mut stream, "fullnode.example:443")
            .await
            .expect("tunnel");
        let mut rest = [0u8; 12];
        stream.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"tunnel-bytes");
        let request = task.await.expect("proxy");
        assert!(
            request.starts_with("CONNECT fullnode.example:443 HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_refused_tunnel_is_an_error() {
        let (proxy, _task) = proxy_answering(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        let mut stream = transport::connect(&proxy).await.expect("connect");
        let err = tunnel(&mut stream, "evil.example:443")
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("403 Forbidden"), "{err}");
    }
}
