//! Response helpers shared by the HTTP API ([`crate::http`]) and the challenge route
//! ([`crate::challenge`], also served on the API port): plain text, JSON, and a JSON request
//! body read within [`MAX_BODY_BYTES`] and the client's body deadline.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use nautilus_protocol::bounded::Client;

/// Largest request body read.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// A plain-text answer with `status` (a newline is added).
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = body.into();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A 200 with `value` as JSON, or a 500 saying why it could not be serialized.
pub(crate) fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(json) => {
            let mut response = Response::new(Full::new(Bytes::from(json)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The body of `request` as JSON, read within `MAX_BODY_BYTES` and the client's body deadline,
/// or the answer that refuses it: the read's status with `Connection: close` (the rest of the
/// body is not read, so the connection ends with this answer), or 400 naming `expected`.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    client: &Client,
    request: Request<Incoming>,
    expected: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let body = match client.read_body(request.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = text(status, e.to_string());
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return Err(response);
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        client.tag().rejected("malformed_body", client.peer());
        text(StatusCode::BAD_REQUEST, format!("expected {expected}: {e}"))
    })
}
