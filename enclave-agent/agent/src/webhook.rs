//! The seal-token TokenReview webhook: `authentication.k8s.io/v1` exactly as kube-apiserver's
//! `--authentication-token-webhook-config-file` calls it.
//!
//! The API server POSTs a `TokenReview` whose `spec.token` is the bearer token of a request (and
//! `spec.audiences` the audiences it wants). A seal token is verified offline (format, Sui
//! signature bound to the claimed address, audience, lifetime), then the signer's stake is read
//! from the chain and mapped to a tier. Anything else — not a seal token, a bad signature, an
//! unreachable chain, a stake below every tier — answers `authenticated: false`, so the API
//! server's other authenticators (client certificates) keep working and nothing is granted by
//! accident. Tokens are never logged; the address and the decision are.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use nautilus_seal::{SealVerifier, Tiers, UserInfo, unix_now};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
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

/// Why the webhook server could not run.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Binding the listener failed.
    #[error("binding the webhook listener on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
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
        }
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
                info!(decision = "deny", reason = %e, "seal token rejected");
                return decline(e.to_string());
            }
        };
        let address = token.address;
        let stake = match self.stakes.stake_of(address).await {
            Ok(stake) => stake,
            Err(e) => {
                warn!(%address, jti = %token.id, decision = "deny", error = %e, "stake lookup failed");
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
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if request.method() != Method::POST || request.uri().path() != PATH {
        let status = answer(decline(format!("POST {PATH} only")));
        return Ok(json_response(StatusCode::NOT_FOUND, &status));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let status = answer(decline(format!("review body over {MAX_BODY_BYTES} bytes")));
            return Ok(json_response(StatusCode::PAYLOAD_TOO_LARGE, &status));
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
    /// Serves `auth` over HTTPS (`tls`) on `addr` until [`WebhookService::stop`].
    pub async fn start<R: ReadStake>(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        auth: Arc<Authenticator<R>>,
    ) -> Result<Self, WebhookError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WebhookError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| WebhookError::Bind { addr, source })?;
        let acceptor = TlsAcceptor::from(tls);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        warn!(error = %e, "webhook accept failed");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let auth = Arc::clone(&auth);
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            debug!(%peer, error = %e, "webhook TLS handshake failed");
                            return;
                        }
                    };
                    let service =
                        hyper::service::service_fn(move |req| handle(Arc::clone(&auth), req));
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    if let Err(e) = builder.serve_connection(io, service).await {
                        debug!(%peer, error = %e, "webhook connection ended with an error");
                    }
                });
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
