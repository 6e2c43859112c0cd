//! The API server's way to the kubelets: an egress selector whose `cluster` traffic goes through
//! the sidecar's CONNECT proxy, TLS with each kubelet end to end.
//!
//! ```text
//! kube-apiserver ──unix <work>/kubelet-egress.sock──► KubeletEgress ──--egress-proxy──► sidecar
//!   "CONNECT 10.0.0.7:10250" + TLS (kubelet's serving cert      (vsock 8001)      CONNECT proxy
//!    checked against server-ca.crt)                                                  └─TCP─► kubelet
//! ```
//!
//! kube-apiserver reads an `apiserver.k8s.io/v1beta1` `EgressSelectorConfiguration`
//! ([`egress_selector_config`]) whose `cluster` selection speaks `HTTPConnect` over a Unix socket
//! ([`SOCKET`] in the work directory). Everything the API server sends to the cluster's side
//! (kubelet logs, exec, attach, port-forward, the node, pod and service proxies) is dialled that
//! way; etcd and the token webhook (`etcd` and `controlplane` selections, not configured) stay
//! direct, on loopback. With `--kubelet-preferred-address-types=InternalIP,ExternalIP` the API
//! server names an address, never a host name, so the host resolves nothing for the enclave.
//!
//! [`KubeletEgress`] joins each connection on that socket byte for byte to a new connection to
//! `--egress-proxy` (whatever endpoint it names: vsock in production, a Unix socket or TCP in
//! development). It parses nothing: the API server speaks the CONNECT itself, reads the proxy's
//! answer, and runs TLS with the kubelet through the tunnel, so the host relays ciphertext. The
//! proxy is dialled once the API server's first bytes (its CONNECT request) arrived, within
//! [`BRIDGE_LIMITS`]' handshake timeout; connections are capped and cut when idle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::bounded::{BoundedListener, Limits, LogLimit, Unobserved};
use nautilus_protocol::transport::{self, Endpoint, TransportError};
use tokio::io::AsyncWriteExt as _;
use tracing::{debug, info, warn};

/// The Unix socket the API server dials for cluster traffic, in the socket directory
/// (`--socket-dir`, default the work directory).
pub const SOCKET: &str = nautilus_protocol::constants::KUBELET_EGRESS_SOCKET;
/// The egress selector configuration file, in the work directory.
pub const CONFIG: &str = "egress-selector.yaml";

/// Bounds of the bridge: as many tunnels as the sidecar's API proxy carries connections, the
/// CONNECT request within 10 s, and the API proxy's idle timeout (a quiet `kubectl logs -f` or
/// `exec` session; the sidecar's own `--egress-idle-timeout-seconds` applies as well).
pub const BRIDGE_LIMITS: Limits = Limits {
    max_connections: 256,
    handshake_timeout: Duration::from_secs(10),
    header_timeout: Duration::from_secs(10),
    body_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(1800),
};

/// Largest first read before the proxy is dialled (the API server's CONNECT request head).
const FIRST_READ: usize = 8 * 1024;
/// How long the egress proxy may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Copy buffer per direction and tunnel.
const BUFFER: usize = 64 * 1024;

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeletEgressError {
    /// The socket could not be bound.
    #[error("listening on {path} for the api server's kubelet traffic")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: TransportError,
    },
    /// The configuration could not be rendered.
    #[error("rendering the egress selector configuration")]
    Render(#[from] serde_json::Error),
}

/// The `EgressSelectorConfiguration` sending the `cluster` selection through `HTTPConnect` on
/// the Unix socket `uds` (JSON, which kube-apiserver reads as YAML).
pub fn egress_selector_config(uds: &Path) -> Result<String, KubeletEgressError> {
    let config = serde_json::json!({
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [{
            "name": "cluster",
            "connection": {
                "proxyProtocol": "HTTPConnect",
                "transport": {"uds": {"udsName": uds.display().to_string()}},
            },
        }],
    });
    Ok(serde_json::to_string_pretty(&config)?)
}

/// The running bridge.
#[derive(Debug)]
pub struct KubeletEgress {
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl KubeletEgress {
    /// Listen on the Unix socket `socket` (a leftover file is replaced) and join each
    /// connection to `proxy`.
    pub async fn start(socket: &Path, proxy: Endpoint) -> Result<Self, KubeletEgressError> {
        Self::start_with(socket, proxy, BRIDGE_LIMITS).await
    }

    /// [`KubeletEgress::start`] with other bounds (tests).
    pub async fn start_with(
        socket: &Path,
        proxy: Endpoint,
        limits: Limits,
    ) -> Result<Self, KubeletEgressError> {
        let listener = transport::bind(&Endpoint::Unix(socket.to_path_buf()))
            .await
            .map_err(|source| KubeletEgressError::Bind {
                path: socket.to_path_buf(),
                source,
            })?;
        let listener =
            BoundedListener::new(listener, "kubelet-egress", limits, Arc::new(Unobserved));
        info!(socket = %socket.display(), %proxy, "kubelet egress bridge listening");
        let task = tokio::spawn(serve(listener, Arc::new(proxy)));
        Ok(Self {
            socket: socket.to_path_buf(),
            task,
        })
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stop accepting; tunnels already open run to their end.
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn serve(listener: BoundedListener, proxy: Arc<Endpoint>) {
    let first_bytes = listener.limits().handshake_timeout;
    let unreachable = Arc::new(LogLimit::default());
    loop {
        let mut client = listener.accept().await;
        let proxy = Arc::clone(&proxy);
        let unreachable = Arc::clone(&unreachable);
        tokio::spawn(async move {
            let Some(first) = client.read_first(FIRST_READ, first_bytes).await else {
                return;
            };
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, transport::connect(&proxy))
                .await
                .map_err(|_| "connection attempt timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let mut upstream = match connected {
                Ok(upstream) => upstream,
                Err(error) => {
                    if let Some(suppressed) = unreachable.check() {
                        warn!(proxy = %proxy, %error, suppressed, "egress proxy unreachable for the api server's kubelet traffic");
                    }
                    return;
                }
            };
            if upstream.write_all(&first).await.is_err() {
                return;
            }
            drop(first);
            match tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                BUFFER,
                BUFFER,
            )
            .await
            {
                Ok((up, down)) => debug!(up, down, "kubelet tunnel closed"),
                Err(e) => debug!(error = %e, "kubelet tunnel ended"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    async fn within<F: std::future::Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), future)
            .await
            .expect("in time")
    }

    #[test]
    fn the_configuration_sends_only_cluster_traffic_over_http_connect_on_the_socket() {
        let text = egress_selector_config(Path::new("/work/kubelet-egress.sock")).expect("config");
        let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        assert_eq!(value["apiVersion"], "apiserver.k8s.io/v1beta1");
        assert_eq!(value["kind"], "EgressSelectorConfiguration");
        let selections = value["egressSelections"].as_sequence().expect("list");
        assert_eq!(selections.len(), 1, "etcd and controlplane stay direct");
        assert_eq!(selections[0]["name"], "cluster");
        let connection = &selections[0]["connection"];
        assert_eq!(connection["proxyProtocol"], "HTTPConnect");
        assert_eq!(
            connection["transport"]["uds"]["udsName"],
            "/work/kubelet-egress.sock"
        );
    }

    #[tokio::test]
    async fn joins_each_connection_to_a_new_proxy_connection_byte_for_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy");
        let proxy_at = Endpoint::Tcp(proxy.local_addr().expect("addr").to_string());
        let socket = dir.path().join(SOCKET);
        let bridge = KubeletEgress::start(&socket, proxy_at)
            .await
            .expect("bridge");

        for round in 0..2 {
            let mut api = tokio::net::UnixStream::connect(&socket)
                .await
                .expect("connect");
            let head =
                format!("CONNECT 10.213.0.{round}:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            api.write_all(head.as_bytes()).await.expect("write");
            let (mut upstream, _) = within(proxy.accept())
                .await
                .expect("a new proxy connection");
            let mut got = vec![0u8; head.len()];
            within(upstream.read_exact(&mut got)).await.expect("read");
            assert_eq!(got, head.as_bytes(), "the request, unchanged");
            upstream
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03")
                .await
                .expect("answer");
            let mut answer = vec![0u8; 42];
            within(api.read_exact(&mut answer))
                .await
                .expect("answer back");
            assert!(answer.starts_with(b"HTTP/1.1 200 "));
            assert!(answer.ends_with(b"\x16\x03\x03"));
        }
        bridge.stop();
    }

    #[tokio::test]
    async fn a_silent_client_costs_no_proxy_connection_and_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy");
        let proxy_at = Endpoint::Tcp(proxy.local_addr().expect("addr").to_string());
        let socket = dir.path().join(SOCKET);
        let limits = Limits {
            handshake_timeout: Duration::from_millis(300),
            ..BRIDGE_LIMITS
        };
        let _bridge = KubeletEgress::start_with(&socket, proxy_at, limits)
            .await
            .expect("bridge");
        let mut silent = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        let mut buf = [0u8; 1];
        let read = within(silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "cut: {read:?}");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), proxy.accept())
                .await
                .is_err(),
            "no proxy connection for a silent client"
        );
    }

    #[tokio::test]
    async fn an_unreachable_proxy_closes_the_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join(SOCKET);
        let _bridge = KubeletEgress::start(&socket, Endpoint::Unix(dir.path().join("absent.sock")))
            .await
            .expect("bridge");
        let mut api = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        api.write_all(b"CONNECT 10.213.0.1:10250 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1];
        let read = within(api.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    }
}
