//! `nautilus-standin`: a stand-in control plane, for tests only (never in an enclave image).
//!
//! Started by the agent in place of `k3s server`, it reads the agent's environment and serves
//! over TLS (the agent-issued `NAUTILUS_CP_TLS_CERT`/`NAUTILUS_CP_TLS_KEY`):
//! - on `NAUTILUS_CP_BIND_ADDRESS:NAUTILUS_CP_HTTPS_PORT`: `GET /livez`, `GET /readyz`, and
//!   `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`, which authenticates the bearer
//!   token by POSTing a real TokenReview to the webhook named in
//!   `NAUTILUS_CP_WEBHOOK_KUBECONFIG` (as kube-apiserver does) and answers with the user info,
//!   or 401 with a `Status`;
//! - on `127.0.0.1:NAUTILUS_CP_SCHEDULER_PORT` (10259) and
//!   `127.0.0.1:NAUTILUS_CP_CONTROLLER_MANAGER_PORT` (10257): `GET /healthz`.
//!
//! Health is switched by `$NAUTILUS_CP_DATA_DIR/standin-health.json`, re-read per request:
//! `{"scheduler": false}` makes the scheduler unhealthy; keys are `api-server` (both),
//! `livez`, `readyz`, `scheduler`, `controller-manager`. A missing file means all healthy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use nautilus_agent::client;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Debug)]
struct Webhook {
    addr: String,
    host: String,
    path: String,
    tls: Arc<rustls::ClientConfig>,
}

#[derive(Debug)]
struct State {
    health_file: PathBuf,
    webhook: Option<Webhook>,
}

impl State {
    fn healthy(&self, keys: &[&str]) -> bool {
        let Ok(text) = std::fs::read_to_string(&self.health_file) else {
            return true;
        };
        let Ok(map) = serde_json::from_str::<HashMap<String, bool>>(&text) else {
            tracing::warn!(file = %self.health_file.display(), "health file is not a map of booleans");
            return true;
        };
        keys.iter().all(|k| map.get(*k).copied().unwrap_or(true))
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

fn webhook_from_kubeconfig(path: &str) -> anyhow::Result<Webhook> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let config: Value = serde_yaml::from_str(&text).context("parsing the webhook kubeconfig")?;
    let cluster = &config["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .ok_or_else(|| anyhow!("kubeconfig has no server"))?;
    let ca = cluster["certificate-authority-data"]
        .as_str()
        .ok_or_else(|| anyhow!("kubeconfig has no certificate-authority-data"))?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca)
        .context("certificate-authority-data is not base64")?;
    let ca = String::from_utf8(ca).context("certificate-authority-data is not PEM")?;
    let uri: http::Uri = server.parse().context("webhook server url")?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("webhook url has no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    Ok(Webhook {
        addr: format!("{host}:{port}"),
        host,
        path: uri.path().to_owned(),
        tls: Arc::new(client::client_config(&[&ca], None)?),
    })
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn unauthorized(message: &str) -> Response<Full<Bytes>> {
    respond(
        StatusCode::UNAUTHORIZED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "Unauthorized", "code": 401}),
    )
}

async fn self_subject_review(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let token = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    // Drain (bounded) the request body; the review itself carries nothing we need.
    let _ = Limited::new(request.into_body(), 64 * 1024).collect().await;
    let Some(token) = token else {
        return unauthorized("Unauthorized");
    };
    let Some(webhook) = &state.webhook else {
        return unauthorized("no token webhook configured");
    };
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": token}});
    let answer = client::send(
        Arc::clone(&webhook.tls),
        client::Request {
            addr: &webhook.addr,
            server_name: &webhook.host,
            method: Method::POST,
            path: &webhook.path,
            headers: vec![(hyper::header::CONTENT_TYPE, "application/json".into())],
            body: review.to_string().into_bytes(),
        },
        Duration::from_secs(10),
    )
    .await;
    let body = match answer {
        Ok((status, body)) if status == StatusCode::OK => body,
        Ok((status, _)) => return unauthorized(&format!("token webhook answered {status}")),
        Err(e) => return unauthorized(&format!("token webhook unreachable: {e}")),
    };
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return unauthorized("token webhook answer is not JSON");
    };
    let status = &review["status"];
    if status["authenticated"] != json!(true) {
        return unauthorized("Unauthorized");
    }
    respond(
        StatusCode::CREATED,
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                "metadata": {}, "status": {"userInfo": status["user"].clone()}}),
    )
}

#[derive(Debug, Clone, Copy)]
enum Role {
    ApiServer,
    Scheduler,
    ControllerManager,
}

async fn handle(
    role: Role,
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let health = |keys: &[&str]| {
        if state.healthy(keys) {
            text(StatusCode::OK, "ok")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy (stand-in health file)",
            )
        }
    };
    Ok(match (role, method, path.as_str()) {
        (Role::ApiServer, Method::GET, "/livez") => health(&["api-server", "livez"]),
        (Role::ApiServer, Method::GET, "/readyz") => health(&["api-server", "readyz"]),
        (Role::ApiServer, Method::POST, "/apis/authentication.k8s.io/v1/selfsubjectreviews") => {
            self_subject_review(&state, request).await
        }
        (Role::Scheduler, Method::GET, "/healthz") => health(&["scheduler"]),
        (Role::ControllerManager, Method::GET, "/healthz") => health(&["controller-manager"]),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}

async fn serve(
    role: Role,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<State>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(?role, %addr, "stand-in listening");
    loop {
        let (tcp, _) = listener.accept().await.context("accept")?;
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |req| handle(role, Arc::clone(&state), req));
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

fn tls_acceptor(cert_path: &str, key_path: &str) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading {cert_path}"))?
        .collect::<Result<Vec<_>, _>>()
        .context("certificate PEM")?;
    let key =
        PrivateKeyDer::from_pem_file(key_path).with_context(|| format!("reading {key_path}"))?;
    let config = rustls::ServerConfig::builder_with_provider(client::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let bind = env("NAUTILUS_CP_BIND_ADDRESS")?;
    let port: u16 = env("NAUTILUS_CP_HTTPS_PORT")?
        .parse()
        .context("NAUTILUS_CP_HTTPS_PORT")?;
    let port_of = |name: &str, default: u16| -> anyhow::Result<u16> {
        match std::env::var(name) {
            Ok(v) => v.parse().with_context(|| name.to_owned()),
            Err(_) => Ok(default),
        }
    };
    let scheduler = port_of("NAUTILUS_CP_SCHEDULER_PORT", 10259)?;
    let manager = port_of("NAUTILUS_CP_CONTROLLER_MANAGER_PORT", 10257)?;
    let data_dir = PathBuf::from(env("NAUTILUS_CP_DATA_DIR")?);
    let acceptor = tls_acceptor(&env("NAUTILUS_CP_TLS_CERT")?, &env("NAUTILUS_CP_TLS_KEY")?)?;
    let webhook = match std::env::var("NAUTILUS_CP_WEBHOOK_KUBECONFIG") {
        Ok(path) => Some(webhook_from_kubeconfig(&path)?),
        Err(_) => None,
    };
    let state = Arc::new(State {
        health_file: data_dir.join("standin-health.json"),
        webhook,
    });
    let api_addr: SocketAddr = format!("{bind}:{port}")
        .parse()
        .or_else(|_| format!("[{bind}]:{port}").parse())
        .context("NAUTILUS_CP_BIND_ADDRESS")?;
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    tokio::try_join!(
        serve(
            Role::ApiServer,
            api_addr,
            acceptor.clone(),
            Arc::clone(&state)
        ),
        serve(
            Role::Scheduler,
            loopback(scheduler),
            acceptor.clone(),
            Arc::clone(&state)
        ),
        serve(Role::ControllerManager, loopback(manager), acceptor, state),
    )?;
    Ok(())
}
