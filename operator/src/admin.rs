//! The operator's own HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the
//! process serves) and `/readyz` (the CRD is installed and the controller started).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// How long a client may take to send a request head (and how long a kept-alive connection
/// may wait for the next one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read; hyper answers a longer one with 431.
pub const READ_BUFFER: usize = 16 * 1024;

/// Shared state of the admin endpoint.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The metrics served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Whether `/readyz` answers 200.
    pub ready: Arc<AtomicBool>,
}

impl Admin {
    /// The answer to one request.
    pub fn respond(&self, method: &http::Method, path: &str) -> http::Response<Full<Bytes>> {
        let (status, content_type, body) = match (method, path) {
            (&http::Method::GET, "/metrics") => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            (&http::Method::GET, "/healthz") => (200, "text/plain", "ok\n".to_owned()),
            (&http::Method::GET, "/readyz") if self.ready.load(Ordering::Relaxed) => {
                (200, "text/plain", "ready\n".to_owned())
            }
            (&http::Method::GET, "/readyz") => (503, "text/plain", "not ready\n".to_owned()),
            (&http::Method::GET, _) => (404, "text/plain", "not found\n".to_owned()),
            _ => (405, "text/plain", "method not allowed\n".to_owned()),
        };
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    }

    /// Serve connections from `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin endpoint: accept failed");
                    continue;
                }
            };
            let admin = self.clone();
            let metrics = Arc::clone(&self.metrics);
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let response = admin.respond(request.method(), request.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(READ_BUFFER)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    if let Some(reason) = nautilus_protocol::bounded::http_refusal(&err) {
                        // hyper has answered 400 or 431.
                        metrics.request_rejected(reason);
                        tracing::info!(%peer, reason, "admin endpoint: request refused");
                    }
                    tracing::debug!(error = %err, %peer, "admin endpoint: connection ended");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let admin = Admin {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(false)),
        };
        drop(admin.metrics.reconcile_started());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ready = admin.ready.clone();
        let task = tokio::spawn(admin.serve(listener));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.contains("nautilus_operator_reconciles_total 1"),
            "{metrics}"
        );
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }

    /// Send `bytes` and read until the server closes (bounded by a timeout: never a hang).
    async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The server may answer and close before it read everything.
        let _ = stream.write_all(bytes).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out));
        let _ = read.await.expect("the server closes the connection");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn garbage_and_oversized_heads_are_refused_and_counted() {
        let admin = Admin {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(true)),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(admin.serve(listener));

        let garbage = send_raw(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
            "a".repeat(READ_BUFFER * 4)
        );
        let oversized = send_raw(addr, huge.as_bytes()).await;
        assert!(oversized.starts_with("HTTP/1.1 431"), "{oversized}");

        let text = get(addr, "/metrics").await;
        for reason in ["malformed_head", "head_too_large"] {
            let series =
                format!("nautilus_operator_rejected_requests_total{{reason=\"{reason}\"}} 1");
            assert!(text.contains(&series), "{series} in {text}");
        }
        // The endpoint still serves.
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        task.abort();
    }
}
