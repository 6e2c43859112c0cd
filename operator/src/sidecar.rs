//! A small HTTP/1.1 client for the sidecar's API: `GET /report` (also as a long poll) and
//! `POST /attest`.
//!
//! Plain HTTP on purpose: nothing the sidecar says is trusted until [`crate::verify`] checked
//! it, so TLS to the sidecar would add nothing. Answers are read with a size limit and every
//! call has a timeout; a misbehaving sidecar yields an error, never a hang or a panic.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nautilus_protocol::wire::EvidenceBundle;

/// Largest `/report` answer read (an evidence bundle is about 10 KiB).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Time allowed for one call, connection included (a long poll: this beyond its wait).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The header naming the revision of the evidence a `/report` answer holds.
pub const REVISION_HEADER: &str = "nautilus-revision";

/// Why a call to the sidecar failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// Connecting, sending or receiving failed.
    #[error("{method} http://{addr}{path}: {reason}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// The sidecar's address.
        addr: SocketAddr,
        /// Path called.
        path: &'static str,
        /// What failed.
        reason: String,
    },
    /// The call took longer than [`CALL_TIMEOUT`] (beyond a long poll's wait).
    #[error("{method} http://{addr}{path}: no answer within {timeout:?}")]
    Timeout {
        /// HTTP method.
        method: &'static str,
        /// The sidecar's address.
        addr: SocketAddr,
        /// Path called.
        path: &'static str,
        /// The time allowed.
        timeout: Duration,
    },
    /// The sidecar answered with an unexpected status.
    #[error("{method} http://{addr}{path}: status {status}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// The sidecar's address.
        addr: SocketAddr,
        /// Path called.
        path: &'static str,
        /// The status code.
        status: u16,
    },
    /// The `/report` body is not an evidence bundle.
    #[error("/report from {addr} is not an evidence bundle: {reason}")]
    Malformed {
        /// The sidecar's address.
        addr: SocketAddr,
        /// What the parser reported.
        reason: String,
    },
}

/// One answer: status, the revision header if any, body.
struct Answer {
    status: u16,
    revision: Option<u64>,
    body: Bytes,
}

/// `method path[?query]`, within `timeout`.
async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
    query: Option<String>,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Answer, SidecarError> {
    let transport = |reason: String| SidecarError::Transport {
        method,
        addr,
        path,
        reason,
    };
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let uri = match &query {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, addr.to_string());
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        // Anything but a decimal number is no revision: the answer is then treated as an
        // older sidecar's.
        let revision = response
            .headers()
            .get(REVISION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the body: {e}")))?
            .to_bytes();
        driver.abort();
        Ok(Answer {
            status,
            revision,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| SidecarError::Timeout {
            method,
            addr,
            path,
            timeout,
        })?
}

/// `GET /report`: the evidence bundle the sidecar relays.
pub async fn fetch_report(addr: SocketAddr) -> Result<EvidenceBundle, SidecarError> {
    let answer = call(addr, "GET", "/report", None, None, CALL_TIMEOUT).await?;
    report_of(addr, answer).map(|(_, bundle)| bundle)
}

/// `GET /report?after=<revision>&waitSeconds=<wait>`: the bundle once its revision is no
/// longer `after` (at once without one), or after `wait`; with its revision, `None` from a
/// sidecar without the long poll (it answered at once).
pub async fn wait_report(
    addr: SocketAddr,
    after: Option<u64>,
    wait: Duration,
) -> Result<(Option<u64>, EvidenceBundle), SidecarError> {
    let query = after.map(|after| format!("after={after}&waitSeconds={}", wait.as_secs()));
    let timeout = CALL_TIMEOUT
        + if after.is_some() {
            wait
        } else {
            Duration::ZERO
        };
    let answer = call(addr, "GET", "/report", query, None, timeout).await?;
    report_of(addr, answer)
}

fn report_of(
    addr: SocketAddr,
    Answer {
        status,
        revision,
        body,
    }: Answer,
) -> Result<(Option<u64>, EvidenceBundle), SidecarError> {
    if status != 200 {
        return Err(SidecarError::Status {
            method: "GET",
            addr,
            path: "/report",
            status,
        });
    }
    let bundle = serde_json::from_slice(&body).map_err(|e| SidecarError::Malformed {
        addr,
        reason: e.to_string(),
    })?;
    Ok((revision, bundle))
}

/// `POST /attest` with a fresh nonce; the sidecar answers 202 and the enclave attests again.
pub async fn request_attestation(addr: SocketAddr, nonce: &[u8]) -> Result<(), SidecarError> {
    let body = serde_json::json!({
        "nonce": base64::engine::general_purpose::STANDARD.encode(nonce),
    });
    let Answer { status, .. } = call(
        addr,
        "POST",
        "/attest",
        None,
        Some(body.to_string().into_bytes()),
        CALL_TIMEOUT,
    )
    .await?;
    if status != 202 && status != 200 {
        return Err(SidecarError::Status {
            method: "POST",
            addr,
            path: "/attest",
            status,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeSidecar;

    #[tokio::test]
    async fn fetches_the_report_and_posts_a_nonce() {
        let bundle = EvidenceBundle {
            boot_config_digest: Some("ab".repeat(32)),
            ..EvidenceBundle::default()
        };
        let sidecar = FakeSidecar::start(&bundle).await;
        let got = fetch_report(sidecar.addr).await.expect("report");
        assert_eq!(got, bundle);
        request_attestation(sidecar.addr, &[1, 2, 3])
            .await
            .expect("attest");
        let attests = sidecar.attests.lock().expect("lock").clone();
        assert_eq!(attests, [r#"{"nonce":"AQID"}"#]);
    }

    #[tokio::test]
    async fn garbage_and_closed_ports_are_errors() {
        let sidecar = FakeSidecar::start(&EvidenceBundle::default()).await;
        *sidecar.bundle.lock().expect("lock") = "not json".into();
        assert!(matches!(
            fetch_report(sidecar.addr).await,
            Err(SidecarError::Malformed { .. })
        ));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(matches!(
            fetch_report(closed).await,
            Err(SidecarError::Transport { .. })
        ));
    }
}
