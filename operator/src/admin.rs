//! The operator's own HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the
//! process serves) and `/readyz` (the CRD is installed and the controller started).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

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
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let response = admin.respond(request.method(), request.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
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
}
