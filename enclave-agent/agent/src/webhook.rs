//! The seal-token TokenReview webhook: `authentication.k8s.io/v1` exactly as kube-apiserver's
//! `--authentication-token-webhook-config-file` calls it.
//!
//! The API server POSTs a `TokenReview` whose `spec.token` is the bearer token of a request (and
//! `spec.audiences` the audiences it wants). A seal token is verified offline (format, Sui
//! signature bound to the claimed address, audience, lifetime), then the signer's stake is read
//! from the chain and mapped to a tier. Anything else — not a seal token, a bad signature, an
//! unreachable chain, a stake below every tier — answers `authenticated: false`, so the API
//! server's other authenticators (client certificates) keep working and nothing is granted by
//! accident. Tokens are never logged; the address and the decision are. Rejected tokens are
//! logged at most once per [`LOG_EVERY`](nautilus_protocol::bounded::LOG_EVERY) with a count of the lines left out, since anyone who
//! can reach the API server can send them.
//!
//! **The contract with kube-apiserver.** Every review is answered `200` with a TokenReview,
//! within [`REVIEW_DEADLINE`]: a definite "no" (no stake, a stake below every tier, a bad token)
//! and a lookup that could not finish are both `authenticated: false`, never a 5xx, because
//! kube-apiserver retries a 5xx, a 429 or a timeout five times (500 ms backoff ×1.5) before it
//! gives up, which would multiply the load of every refused token on a slow chain. The API
//! server's side is set explicitly by the agent's flags: `authentication-token-webhook-cache-ttl`
//! ([`crate::flags::webhook_cache_ttl`]) and `authentication-token-webhook-version=v1`; its
//! per-call timeout has no flag (30 s, fixed in `webhookutil.LoadKubeconfig`), so the deadline
//! here keeps every answer well inside it. How long a withdrawn stake keeps access is in
//! `docs/architecture.md` ("The webhook contract").
//!
//! The server speaks HTTP/1.1 (its TLS configuration offers no ALPN, so kube-apiserver's client
//! uses HTTP/1.1). The listener is a [`BoundedListener`] ([`WEBHOOK_LIMITS`] unless told
//! otherwise): a cap on connections; the TLS handshake, each request head (so also the wait
//! for the next request on a kept-alive connection) and each whole body within 10 s, a body of
//! at most [`MAX_BODY_BYTES`] counted as it streams in; and a connection that moves no byte for
//! 60 s (a client that stops reading its answer) is closed. kube-apiserver's client reconnects
//! on its own when a kept-alive connection was closed.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use nautilus_protocol::bounded::{
    BoundedListener, Client, Conn, Limits, LogLimit, Phase, Unobserved,
};
use nautilus_protocol::transport::{self, Endpoint, TransportError};
use nautilus_seal::{SealVerifier, Tiers, UserInfo, unix_now};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::stake::{ReadStake, StakeCache};

/// The API version of every review this webhook answers.
pub const API_VERSION: &str = "authentication.k8s.io/v1";
/// The kind of every review this webhook answers.
pub const KIND: &str = "TokenReview";
/// The path the API server POSTs reviews to.
pub const PATH: &str = "/authenticate";
/// Largest request body read. Real reviews are a few KiB; seal tokens are at most 8 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Prefix that marks a seal token; other bearer tokens are declined without work.
pub const SEAL_PREFIX: &str = "sui-seal.";
/// The webhook's bounds: only the enclave's own API server calls it, over one or a few
/// kept-alive connections, so 256 connections are plenty; 10 s for the TLS handshake, the
/// head and the body each; 60 s of silence closes a connection.
pub const WEBHOOK_LIMITS: Limits = Limits::api(256);
/// hyper's HTTP/1 read buffer per connection.
const READ_BUFFER: usize = 16 * 1024;
/// Longest a review waits for the stake lookup before it answers `authenticated: false`
/// (kube-apiserver's fixed per-call timeout is 30 s; a timeout there would be retried).
pub const REVIEW_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the webhook server could not run.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Binding the listener failed.
    #[error("binding the webhook listener on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: TransportError,
    },
    /// Rendering the kubeconfig failed.
    #[error("rendering the webhook kubeconfig")]
    Kubeconfig(#[source] serde_json::Error),
}

/// `authentication.k8s.io/v1` `TokenReview`, the fields this webhook reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReview {
    /// `authentication.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `TokenReview`.
    #[serde(default)]
    pub kind: String,
    /// The review request.
    #[serde(default)]
    pub spec: TokenReviewSpec,
    /// The answer. Whatever a request carries here is ignored (kube-apiserver sends
    /// `"status": {"user": {}}`).
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub status: Option<TokenReviewStatus>,
}

/// `TokenReviewSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenReviewSpec {
    /// The opaque bearer token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Audiences the API server wants the token to be valid for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// `TokenReviewStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenReviewStatus {
    /// Whether the token was authenticated.
    pub authenticated: bool,
    /// Who the token belongs to, when authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserInfo>,
    /// The requested audiences the token is valid for; empty means the API server's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Why authentication failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Decides TokenReviews: seal-token verification, then stake, then tier.
pub struct Authenticator<R> {
    verifier: SealVerifier,
    tiers: Tiers,
    stakes: StakeCache<R>,
    /// Rejections and failed lookups are logged once per interval, with a count.
    rejections: LogLimit,
    lookups: LogLimit,
    deadline: std::time::Duration,
}

impl<R> std::fmt::Debug for Authenticator<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("audience", &self.verifier.audience())
            .finish()
    }
}

fn decline(error: impl Into<String>) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: false,
        error: error.into(),
        ..TokenReviewStatus::default()
    }
}

impl<R: ReadStake> Authenticator<R> {
    /// An authenticator for tokens verified by `verifier`, granted by `tiers` on `stakes`.
    pub fn new(verifier: SealVerifier, tiers: Tiers, stakes: StakeCache<R>) -> Self {
        Self {
            verifier,
            tiers,
            stakes,
            rejections: LogLimit::default(),
            lookups: LogLimit::default(),
            deadline: REVIEW_DEADLINE,
        }
    }

    /// The same with another stake-lookup deadline than [`REVIEW_DEADLINE`] (tests).
    pub fn with_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Answers one review body at time `now` (Unix seconds). Never fails: every problem is an
    /// unauthenticated answer with a reason in `status.error`.
    pub async fn review(&self, body: &[u8], now: u64) -> TokenReview {
        let request: TokenReview = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => return answer(decline(format!("malformed TokenReview: {e}"))),
        };
        if request.api_version != API_VERSION || request.kind != KIND {
            return answer(decline(format!(
                "unsupported review {}/{}: this webhook speaks {API_VERSION} {KIND}",
                request.api_version, request.kind
            )));
        }
        answer(self.authenticate(&request.spec, now).await)
    }

    async fn authenticate(&self, spec: &TokenReviewSpec, now: u64) -> TokenReviewStatus {
        if !spec.token.starts_with(SEAL_PREFIX) {
            // Not ours: let the API server's other authenticators decide, without noise.
            return TokenReviewStatus::default();
        }
        let audience = self.verifier.audience();
        // An empty answer means "valid for the API server's own audiences"; when specific
        // audiences are asked for, answer with the ones this token is bound to.
        let audiences: Vec<String> = spec
            .audiences
            .iter()
            .filter(|a| a.as_str() == audience)
            .cloned()
            .collect();
        let token = match self.verifier.verify(&spec.token, now) {
            Ok(token) => token,
            Err(e) => {
                if let Some(suppressed) = self.rejections.check() {
                    info!(decision = "deny", reason = %e, suppressed, "seal token rejected");
                }
                return decline(e.to_string());
            }
        };
        let address = token.address;
        let lookup = tokio::time::timeout(self.deadline, self.stakes.stake_of(address)).await;
        let stake = match lookup {
            Ok(Ok(stake)) => stake,
            Err(_) => {
                if let Some(suppressed) = self.lookups.check() {
                    warn!(%address, jti = %token.id, decision = "deny", deadline = ?self.deadline, suppressed, "stake lookup too slow");
                }
                return decline(format!(
                    "stake of {address} could not be read within {:?}",
                    self.deadline
                ));
            }
            Ok(Err(e)) => {
                if let Some(suppressed) = self.lookups.check() {
                    warn!(%address, jti = %token.id, decision = "deny", error = %e, suppressed, "stake lookup failed");
                }
                return decline(format!("stake of {address} could not be read: {e}"));
            }
        };
        match self.tiers.user_info(&address, stake) {
            Some(user) => {
                info!(%address, jti = %token.id, stake_mist = stake, groups = ?user.groups, decision = "allow", "seal token accepted");
                TokenReviewStatus {
                    authenticated: true,
                    user: Some(user),
                    audiences,
                    error: String::new(),
                }
            }
            None => {
                info!(%address, jti = %token.id, stake_mist = stake, decision = "deny", "stake below every tier");
                decline(format!(
                    "stake of {address} is {stake} MIST, below every tier"
                ))
            }
        }
    }
}

fn answer(status: TokenReviewStatus) -> TokenReview {
    TokenReview {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        spec: TokenReviewSpec::default(),
        status: Some(status),
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle<R: ReadStake>(
    auth: Arc<Authenticator<R>>,
    client: Client,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if request.method() != Method::POST || request.uri().path() != PATH {
        let status = answer(decline(format!("POST {PATH} only")));
        return Ok(json_response(StatusCode::NOT_FOUND, &status));
    }
    let body = match client.read_body(request.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = json_response(status, &answer(decline(e.to_string())));
            // The rest of the body is not read: end the connection with this answer.
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return Ok(response);
        }
    };
    let review = auth.review(&body, unix_now()).await;
    Ok(json_response(StatusCode::OK, &review))
}

/// A running webhook server.
#[derive(Debug)]
pub struct WebhookService {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookService {
    /// Serves `auth` over HTTPS (`tls`) on `addr` within [`WEBHOOK_LIMITS`] until
    /// [`WebhookService::stop`].
    pub async fn start<R: ReadStake>(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        auth: Arc<Authenticator<R>>,
    ) -> Result<Self, WebhookError> {
        Self::start_with(addr, tls, auth, WEBHOOK_LIMITS).await
    }

    /// [`WebhookService::start`] with other limits (tests use short timeouts).
    pub async fn start_with<R: ReadStake>(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        auth: Arc<Authenticator<R>>,
        limits: Limits,
    ) -> Result<Self, WebhookError> {
        let listener = transport::bind(&Endpoint::Tcp(addr.to_string()))
            .await
            .map_err(|source| WebhookError::Bind { addr, source })?;
        let addr = match listener.endpoint() {
            Endpoint::Tcp(bound) => bound.parse().unwrap_or(addr),
            _ => addr,
        };
        // The agent has no metrics endpoint: the listener logs refusals and cuts itself.
        let listener = BoundedListener::new(listener, "webhook", limits, Arc::new(Unobserved));
        let acceptor = TlsAcceptor::from(tls);
        let task = tokio::spawn(async move {
            loop {
                let conn = listener.accept().await;
                let acceptor = acceptor.clone();
                let auth = Arc::clone(&auth);
                tokio::spawn(serve_connection(conn, acceptor, auth, limits));
            }
        });
        Ok(Self { addr, task })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting reviews.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn serve_connection<R: ReadStake>(
    conn: Conn,
    acceptor: TlsAcceptor,
    auth: Arc<Authenticator<R>>,
    limits: Limits,
) {
    let client = conn.client();
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(conn)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(peer = %client.peer(), error = %e, "webhook TLS handshake failed");
            return;
        }
        Err(_) => {
            client.tag().timed_out(Phase::Handshake, client.peer());
            return;
        }
    };
    let service_client = client.clone();
    let service = hyper::service::service_fn(move |req| {
        handle(Arc::clone(&auth), service_client.clone(), req)
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
    if let Err(e) = result {
        client.http_failed(&e);
        debug!(peer = %client.peer(), error = %e, "webhook connection ended with an error");
    }
}

/// The kubeconfig kube-apiserver reads through `--authentication-token-webhook-config-file`:
/// the webhook's URL and the CA that signed its serving certificate. JSON is valid kubeconfig.
pub fn webhook_kubeconfig(server_url: &str, ca_pem: &str) -> Result<String, WebhookError> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "seal-token-webhook", "cluster": {
            "server": server_url,
            "certificate-authority-data": ca,
        }}],
        "users": [{"name": "kube-apiserver", "user": {}}],
        "contexts": [{"name": "webhook", "context": {"cluster": "seal-token-webhook", "user": "kube-apiserver"}}],
        "current-context": "webhook",
    });
    serde_json::to_string_pretty(&config).map_err(WebhookError::Kubeconfig)
}
