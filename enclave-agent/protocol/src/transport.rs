//! Where the link runs: vsock between host and enclave, Unix or TCP sockets in development.
//!
//! An [`Endpoint`] is written as `vsock://CID:PORT`, `unix:/path/to/socket` or
//! `tcp://HOST:PORT`. [`connect`] and [`bind`] hand out boxed byte streams, so everything above
//! this module (framing, proxies, HTTP) is the same code on every transport. vsock cannot be
//! exercised on a machine without the vsock driver; Unix and TCP are what tests run.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

/// Why an endpoint could not be parsed, bound or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The text is not an endpoint.
    #[error(
        "invalid endpoint {text:?}: {reason} (expected vsock://CID:PORT, unix:/path or tcp://HOST:PORT)"
    )]
    Parse {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Binding failed.
    #[error("cannot listen on {endpoint}: {source}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Accepting a connection failed.
    #[error("accept on {endpoint} failed: {source}")]
    Accept {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A place to listen on or connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An AF_VSOCK address.
    Vsock {
        /// Context id: the enclave's CID, [`VSOCK_CID_HOST`](crate::constants::VSOCK_CID_HOST),
        /// or [`VSOCK_CID_ANY`](crate::constants::VSOCK_CID_ANY) to listen.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP `host:port` (an IPv6 host in brackets).
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = TransportError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| TransportError::Parse {
            text: text.to_owned(),
            reason,
        };
        if let Some(rest) = text.strip_prefix("vsock://") {
            let (cid, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
            let cid = cid.parse().map_err(|_| err("CID is not a 32-bit number"))?;
            let port = port
                .parse()
                .map_err(|_| err("port is not a 32-bit number"))?;
            Ok(Self::Vsock { cid, port })
        } else if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = text.strip_prefix("tcp://") {
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
            if host.is_empty() {
                return Err(err("empty host"));
            }
            port.parse::<u16>()
                .map_err(|_| err("port is not a number from 0 to 65535"))?;
            Ok(Self::Tcp(addr.to_owned()))
        } else {
            Err(err("unknown scheme"))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// A bidirectional byte stream on any transport.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// A boxed [`AsyncStream`].
pub type BoxedStream = Box<dyn AsyncStream>;

/// Connect to an endpoint.
pub async fn connect(endpoint: &Endpoint) -> Result<BoxedStream, TransportError> {
    let wrap = |source| TransportError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    Ok(match endpoint {
        Endpoint::Vsock { cid, port } => Box::new(
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                .await
                .map_err(wrap)?,
        ),
        Endpoint::Unix(path) => {
            Box::new(tokio::net::UnixStream::connect(path).await.map_err(wrap)?)
        }
        Endpoint::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map_err(wrap)?;
            // Frames and proxied TLS records are latency-bound, not throughput-bound.
            stream.set_nodelay(true).map_err(wrap)?;
            Box::new(stream)
        }
    })
}

/// A bound listener on any transport.
#[derive(Debug)]
pub struct Listener {
    endpoint: Endpoint,
    inner: ListenerInner,
}

#[derive(Debug)]
enum ListenerInner {
    Vsock(tokio_vsock::VsockListener),
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// Listen on an endpoint. A Unix socket path left behind by an earlier run is replaced; a TCP
/// port of 0 picks a free port ([`Listener::endpoint`] tells which).
pub async fn bind(endpoint: &Endpoint) -> Result<Listener, TransportError> {
    let wrap = |source| TransportError::Bind {
        endpoint: endpoint.to_string(),
        source,
    };
    let (inner, endpoint) = match endpoint {
        Endpoint::Vsock { cid, port } => {
            let listener =
                tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(*cid, *port))
                    .map_err(wrap)?;
            (ListenerInner::Vsock(listener), endpoint.clone())
        }
        Endpoint::Unix(path) => {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(wrap(err)),
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(wrap)?;
            (ListenerInner::Unix(listener), endpoint.clone())
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .map_err(wrap)?;
            let local = listener.local_addr().map_err(wrap)?;
            (
                ListenerInner::Tcp(listener),
                Endpoint::Tcp(local.to_string()),
            )
        }
    };
    Ok(Listener { endpoint, inner })
}

impl Listener {
    /// The endpoint actually bound (with the port chosen when 0 was asked for).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Wait for the next connection; returns it with a printable peer address.
    pub async fn accept(&self) -> Result<(BoxedStream, String), TransportError> {
        let wrap = |source| TransportError::Accept {
            endpoint: self.endpoint.to_string(),
            source,
        };
        Ok(match &self.inner {
            ListenerInner::Vsock(listener) => {
                let (stream, peer) = listener.accept().await.map_err(wrap)?;
                (
                    Box::new(stream),
                    format!("vsock://{}:{}", peer.cid(), peer.port()),
                )
            }
            ListenerInner::Unix(listener) => {
                let (stream, _) = listener.accept().await.map_err(wrap)?;
                (Box::new(stream), self.endpoint.to_string())
            }
            ListenerInner::Tcp(listener) => {
                let (stream, peer) = listener.accept().await.map_err(wrap)?;
                stream.set_nodelay(true).map_err(wrap)?;
                (Box::new(stream), format!("tcp://{peer}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn endpoints_parse_and_print_back() {
        for text in [
            "vsock://16:5000",
            "vsock://4294967295:6443",
            "unix:/run/nautilus/agent.sock",
            "tcp://127.0.0.1:8080",
            "tcp://[::1]:6443",
            "tcp://sidecar.local:8001",
        ] {
            let endpoint: Endpoint = text.parse().expect(text);
            assert_eq!(endpoint.to_string(), text);
        }
        for bad in [
            "vsock://16",
            "vsock://x:1",
            "vsock://1:99999999999",
            "unix:",
            "tcp://:80",
            "tcp://host",
            "tcp://host:70000",
            "http://host:80",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} must not parse");
        }
    }

    async fn echo_once(endpoint: Endpoint) {
        let listener = bind(&endpoint).await.expect("bind");
        let bound = listener.endpoint().clone();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await.expect("read");
            stream.write_all(&buf).await.expect("write");
        });
        let mut client = connect(&bound).await.expect("connect");
        client.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn tcp_and_unix_streams_carry_bytes() {
        echo_once("tcp://127.0.0.1:0".parse().expect("tcp")).await;
        let dir = std::env::temp_dir().join(format!("nautilus-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        echo_once(Endpoint::Unix(dir.join("echo.sock"))).await;
        // A stale socket file from an earlier run is replaced.
        echo_once(Endpoint::Unix(dir.join("echo.sock"))).await;
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn connecting_to_nothing_is_an_error() {
        let err = connect(&Endpoint::Unix("/nonexistent/nautilus.sock".into()))
            .await
            .err()
            .expect("must fail");
        assert!(
            err.to_string().contains("unix:/nonexistent/nautilus.sock"),
            "{err}"
        );
    }
}
