//! The API forwarder: the enclave's API server port on the vsock side (`--api-listen`, vsock
//! 6443), joined byte for byte to the API server inside the enclave (`bindAddress:httpsPort`).
//!
//! ```text
//! sidecar API proxy ──vsock 6443──► ApiForwarder ──TCP──► kube-apiserver / k3s (TLS ends here)
//! ```
//!
//! It sees only bytes: TLS terminates in the API server, so the host relays ciphertext. The
//! upstream is dialled once the client's first bytes arrived (within [`API_LIMITS`]'s handshake
//! timeout), so a silent connection costs the API server nothing. Until the agent has booted
//! there is no upstream, and connections are closed as they come.

use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::bounded::{BoundedListener, Limits, Phase, Unobserved};
use nautilus_protocol::transport::Listener;
use tokio::sync::watch;
use tracing::debug;

/// Bounds of the API forwarder (the sidecar's API proxy's connections): the same as the
/// sidecar's defaults for its API proxy; the first bytes (a ClientHello) within 10 s.
pub const API_LIMITS: Limits = Limits {
    max_connections: 1024,
    handshake_timeout: Duration::from_secs(10),
    header_timeout: Duration::from_secs(10),
    body_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(1800),
};

/// Copy buffer per direction and connection, as the sidecar's API proxy has: a TLS record
/// (up to 16 KiB) or several in one read and one write, where tokio's default (8 KiB) takes two
/// of each for a full record.
const BUFFER: usize = 64 * 1024;

/// The running forwarder.
#[derive(Debug)]
pub struct ApiForwarder {
    task: tokio::task::JoinHandle<()>,
    closing: watch::Sender<bool>,
}

impl ApiForwarder {
    /// Forward every connection on `listener` to the `host:port` that `target` holds when the
    /// connection arrives (`None`, before boot: the connection is closed).
    pub fn start(listener: Listener, target: watch::Receiver<Option<String>>) -> Self {
        let (closing, closed) = watch::channel(false);
        let task = tokio::spawn(serve(listener, target, closed));
        Self { task, closing }
    }

    /// Stop accepting, and close the connections already forwarded: a stopping agent takes its
    /// last snapshot after this, so no client's write can land after it and be lost.
    pub fn stop(&self) {
        self.task.abort();
        self.closing.send_replace(true);
    }
}

/// Returns once the forwarder is stopping.
async fn closing(closed: &mut watch::Receiver<bool>) {
    while !*closed.borrow_and_update() {
        if closed.changed().await.is_err() {
            return;
        }
    }
}

async fn serve(
    listener: Listener,
    target: watch::Receiver<Option<String>>,
    closed: watch::Receiver<bool>,
) {
    let listener = BoundedListener::new(listener, "api", API_LIMITS, Arc::new(Unobserved));
    loop {
        let mut stream = listener.accept().await;
        let target = target.borrow().clone();
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let peer = stream.peer().to_owned();
            let Some(target) = target else {
                debug!(%peer, "api connection before boot: closed");
                return;
            };
            let mut first = vec![0u8; 4096];
            let read = tokio::time::timeout(
                API_LIMITS.handshake_timeout,
                tokio::io::AsyncReadExt::read(&mut stream, &mut first),
            )
            .await;
            let n = match read {
                Ok(Ok(n)) if n > 0 => n,
                Ok(_) => return,
                Err(_) => {
                    stream.tag().timed_out(Phase::Handshake, &peer);
                    return;
                }
            };
            match tokio::net::TcpStream::connect(&target).await {
                Ok(mut upstream) => {
                    let _ = upstream.set_nodelay(true);
                    let forwarded = async {
                        tokio::io::AsyncWriteExt::write_all(&mut upstream, &first[..n]).await?;
                        drop(first);
                        tokio::io::copy_bidirectional_with_sizes(
                            &mut stream,
                            &mut upstream,
                            BUFFER,
                            BUFFER,
                        )
                        .await
                    };
                    tokio::select! {
                        result = forwarded => if let Err(e) = result {
                            debug!(%peer, error = %e, "api connection ended");
                        },
                        () = closing(&mut closed) => debug!(%peer, "api connection closed: stopping"),
                    }
                }
                Err(e) => debug!(%peer, %target, error = %e, "api server unreachable"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nautilus_protocol::transport::{self, Endpoint};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn within<F: std::future::Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), future)
            .await
            .expect("in time")
    }

    #[tokio::test]
    async fn closes_before_boot_then_forwards_bytes_both_ways_until_stopped_then_closes() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("upstream");
        let listener = transport::bind(&Endpoint::Tcp("127.0.0.1:0".into()))
            .await
            .expect("listener");
        let at = listener.endpoint().clone();
        let (target, rx) = watch::channel(None);
        let forwarder = ApiForwarder::start(listener, rx);

        // Before the boot there is nowhere to go: closed at once.
        let mut early = transport::connect(&at).await.expect("connect");
        let mut buf = [0u8; 16];
        let read = within(early.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        target.send_replace(Some(upstream.local_addr().expect("addr").to_string()));
        let mut client = transport::connect(&at).await.expect("connect");
        client.write_all(b"hello").await.expect("write");
        let (mut server, _) = within(upstream.accept()).await.expect("accept");
        let mut hello = [0u8; 5];
        server.read_exact(&mut hello).await.expect("read");
        assert_eq!(&hello, b"hello");
        server.write_all(b"world").await.expect("write back");
        let mut world = [0u8; 5];
        client.read_exact(&mut world).await.expect("read back");
        assert_eq!(&world, b"world");

        // Stopped: the port no longer accepts.
        forwarder.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while transport::connect(&at).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // … and the connection already forwarded is closed, both ways.
        let read = within(client.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let read = within(server.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
