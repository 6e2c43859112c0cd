//! The HTTP API the operator reads: health, readiness, evidence, metrics, nonce refresh.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 only while the latest report verifies, is fresh and says every component is healthy; else 503 and a one-line reason |
//! | GET | `/report` | the [`EvidenceBundle`](nautilus_protocol::wire::EvidenceBundle) as JSON, its revision in the `Nautilus-Revision` header |
//! | GET | `/report?after=R&waitSeconds=N` | the same, once the revision is no longer `R` or after `N` seconds (at most [`MAX_REPORT_WAIT`]): a long poll, so the operator hears of a change at once |
//! | GET | `/metrics` | Prometheus text |
//! | POST | `/attest` | `{"nonce":"<base64>"}` (1–512 bytes): 202 once the agent is asked to attest again; 503 without a link |
//! | POST | `/challenge` | `{"nonce":"<base64>"}`: 200 and a [`ChallengeResponse`](nautilus_protocol::wire::ChallengeResponse) for a user, leaving `/report` as it is ([`crate::challenge`]) |
//!
//! Plain HTTP/1.1, no credentials. The listener is a
//! [`BoundedListener`]: a cap on connections, the request head within the header timeout, a
//! request body of at most [`MAX_BODY_BYTES`] within the body timeout (counted as it streams
//! in; a late body gets 408 and the connection is closed), and the idle timeout between
//! requests.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nautilus_protocol::bounded::{BoundedListener, Client};
use serde::Deserialize;
use tracing::{debug, info};

use crate::challenge::{self, Challenges};
use crate::evidence::{Evidence, MAX_REPORT_WAIT, NonceError, now_ms};
use crate::respond::{json, json_body, text};

pub use crate::respond::MAX_BODY_BYTES;
/// hyper's read buffer per connection (its minimum is 8 KiB).
const READ_BUFFER: usize = 16 * 1024;

/// `POST /attest` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestRequest {
    nonce: String,
}

async fn attest(
    evidence: &Evidence,
    client: &Client,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let req: AttestRequest = match json_body(client, request, "{\"nonce\":\"<base64>\"}").await {
        Ok(req) => req,
        Err(refusal) => return refusal,
    };
    let nonce = match base64::engine::general_purpose::STANDARD.decode(req.nonce.as_bytes()) {
        Ok(nonce) => nonce,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("nonce is not base64: {e}")),
    };
    match evidence.request_nonce(nonce) {
        Ok(()) => text(StatusCode::ACCEPTED, "attestation requested"),
        Err(e @ NonceError::Size(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ NonceError::Busy) => text(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The header carrying the revision of the evidence a `/report` answer holds.
pub const REVISION_HEADER: &str = "nautilus-revision";

/// `GET /report[?after=R&waitSeconds=N]`. Unknown or malformed parameters are a 400: a caller
/// that meant to wait must not be answered as if it polled.
async fn report(evidence: &Evidence, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut after = None;
    let mut wait = std::time::Duration::ZERO;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let parsed = match pair.split_once('=') {
            Some(("after", v)) => v.parse::<u64>().map(|v| after = Some(v)).is_ok(),
            Some(("waitSeconds", v)) => v
                .parse::<u64>()
                .map(|v| wait = std::time::Duration::from_secs(v).min(MAX_REPORT_WAIT))
                .is_ok(),
            _ => false,
        };
        if !parsed {
            return text(
                StatusCode::BAD_REQUEST,
                "/report takes after=<revision> and waitSeconds=<seconds>",
            );
        }
    }
    if let Some(seen) = after {
        evidence.changed_since(seen, wait).await;
    }
    let (revision, bundle) = evidence.revision_and_bundle();
    let mut response = json(&bundle);
    response
        .headers_mut()
        .insert(REVISION_HEADER, HeaderValue::from(revision));
    response
}

/// Answer one request.
pub async fn handle(
    evidence: Arc<Evidence>,
    challenges: Arc<Challenges>,
    client: Client,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => match evidence.readiness(now_ms()) {
            Ok(()) => text(StatusCode::OK, "ok"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        (&Method::GET, "/report") => report(&evidence, request.uri().query()).await,
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(evidence.metrics().encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::POST, "/attest") => attest(&evidence, &client, request).await,
        (&Method::POST, challenge::PATH) => challenge::handle(&challenges, &client, request).await,
        (_, "/healthz" | "/readyz" | "/report" | "/metrics" | "/attest" | challenge::PATH) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    debug!(%method, %path, status = response.status().as_u16(), "http request");
    Ok(response)
}

/// Serve the API on `listener` until the task is dropped.
pub async fn serve(
    listener: BoundedListener,
    evidence: Arc<Evidence>,
    challenges: Arc<Challenges>,
) {
    info!(addr = %listener.endpoint(), limits = ?listener.limits(), "http api listening");
    let header_timeout = listener.limits().header_timeout;
    loop {
        let conn = listener.accept().await;
        let client = conn.client();
        let evidence = Arc::clone(&evidence);
        let challenges = Arc::clone(&challenges);
        tokio::spawn(async move {
            let service_client = client.clone();
            let service = hyper::service::service_fn(move |req| {
                handle(
                    Arc::clone(&evidence),
                    Arc::clone(&challenges),
                    service_client.clone(),
                    req,
                )
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(READ_BUFFER)
                .serve_connection(TokioIo::new(conn), service)
                .await;
            if let Err(e) = result {
                client.http_failed(&e);
                debug!(peer = %client.peer(), error = %e, "http connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn evidence() -> Evidence {
        Evidence::new("ab".repeat(32), 3_000, Arc::default()).0
    }

    #[tokio::test(start_paused = true)]
    async fn report_names_its_revision_and_waits_only_when_asked() {
        let evidence = evidence();
        let plain = report(&evidence, None).await;
        assert_eq!(plain.status(), StatusCode::OK);
        let revision: u64 = plain.headers()[REVISION_HEADER]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("a number");

        let start = tokio::time::Instant::now();
        let older = report(
            &evidence,
            Some(&format!("after={}&waitSeconds=20", revision - 1)),
        )
        .await;
        assert_eq!(older.status(), StatusCode::OK);
        assert_eq!(start.elapsed(), Duration::ZERO, "changed since: at once");

        let waited = report(&evidence, Some(&format!("after={revision}&waitSeconds=20"))).await;
        assert_eq!(waited.status(), StatusCode::OK);
        assert_eq!(
            waited.headers()[REVISION_HEADER],
            revision.to_string().as_str()
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(20),
            "unchanged: the whole wait"
        );

        for bad in ["after=x", "waitSeconds=-1", "after=1&since=2", "after"] {
            assert_eq!(
                report(&evidence, Some(bad)).await.status(),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }
}
