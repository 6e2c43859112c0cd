//! Test fixtures shared by the operator's unit tests.
//!
//! - [`api_server`]: a mocked API server (a `tower-test` pair) whose verifier task expects a
//!   scenario of calls in order — method, path and query, content type, body — and answers each
//!   as the scenario says. A call the scenario does not list, or one it lists that never comes,
//!   fails the test; the scenario is awaited under a timeout. (The shape is kube-rs
//!   controller-rs's `fixtures.rs`: a verifier task per scenario, awaited after the reconcile.)
//! - Resources: [`mk_nm`] (the minimal spec), [`mk_sim_nm`] (the PCRs of [`FakeEnclave`],
//!   simulated attestation allowed), [`with_finalizer`], [`deleting`], [`running_pod`].
//! - [`FakeEnclave`]: a simulated NSM and report signer answering as the agent does.
//! - [`FakeSidecar`]: an HTTP server answering `/report` and recording `/attest`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use nautilus_crds::{NautilusMaster, NautilusMasterSpec};
use nautilus_protocol::attestation::now_unix_millis;
use nautilus_protocol::nsm::Nsm as _;
use nautilus_protocol::wire::{
    AttestationEvidence, Component, ComponentReport, EnclaveInfo, EvidenceBundle, ProcessState,
    Report, ReportSigner,
};
use nautilus_protocol::{Binding, SimulatedNsm};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::controller::FINALIZER;
use crate::desired;
use crate::verify::{self, IssuedNonces, Outcome, ReportState};

// ---------------------------------------------------------------------------------------------
// The mocked API server.

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How long a scenario may take to finish once the code under test returned.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(10);

/// Content type of a server-side apply.
pub(crate) const APPLY: &str = "application/apply-patch+yaml";
/// Content type of a JSON patch (the finalizer's).
pub(crate) const JSON_PATCH: &str = "application/json-patch+json";

/// One request as the API server received it.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    /// `GET`, `PATCH`, ...
    pub(crate) method: String,
    /// Path and query.
    pub(crate) uri: String,
    /// The `Content-Type` header, empty without one.
    pub(crate) content_type: String,
    /// The JSON body (`Null` when empty or not JSON).
    pub(crate) body: Value,
}

impl Received {
    async fn read(request: Request<Body>) -> Self {
        let method = request.method().to_string();
        let uri = request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Self {
            method,
            uri,
            content_type,
            body,
        }
    }

    /// The path without the query.
    pub(crate) fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The body as an object of type `K`.
    pub(crate) fn object<K: serde::de::DeserializeOwned>(&self) -> K {
        serde_json::from_value(self.body.clone()).unwrap_or_else(|e| {
            panic!("{} {}: not the expected object: {e}", self.method, self.uri)
        })
    }
}

impl std::fmt::Display for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.uri)
    }
}

/// What the API server answers.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// This status and JSON body.
    Json(u16, Value),
    /// The request's own body, with this status (what an apply or create returns, near enough).
    Echo(u16),
    /// This status and these bytes (a watch stream: one JSON event per line).
    Raw(u16, Vec<u8>),
    /// 200 with this object carrying the request body's `status` (what a status patch returns).
    WithStatus(Value),
}

impl Reply {
    fn response(&self, request: &Received) -> Response<Body> {
        let (status, bytes) = match self {
            Reply::Json(status, value) => (*status, serde_json::to_vec(value).expect("json")),
            Reply::Echo(status) => (*status, serde_json::to_vec(&request.body).expect("json")),
            Reply::Raw(status, bytes) => (*status, bytes.clone()),
            Reply::WithStatus(object) => {
                let mut object = object.clone();
                object["status"] = request.body["status"].clone();
                (200, serde_json::to_vec(&object).expect("json"))
            }
        };
        Response::builder()
            .status(status)
            .body(Body::from(bytes))
            .expect("response")
    }
}

/// The body of a 404 for `name`.
pub(crate) fn not_found() -> Reply {
    Reply::Json(
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// The body of a successful DELETE.
pub(crate) fn deleted() -> Reply {
    Reply::Json(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    )
}

/// A list of `items`.
pub(crate) fn list(items: Vec<Value>) -> Reply {
    Reply::Json(
        200,
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
               "items": items}),
    )
}

/// One call a scenario expects.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    method: &'static str,
    uri: String,
    content_type: Option<&'static str>,
    /// What the body must hold (see [`includes`]).
    body: Option<Value>,
    reply: Reply,
    optional: bool,
}

impl Call {
    fn new(method: &'static str, uri: impl Into<String>, reply: Reply) -> Self {
        Self {
            method,
            uri: uri.into(),
            content_type: None,
            body: None,
            reply,
            optional: false,
        }
    }

    /// `GET uri` (path and query, exactly; a `uri` ending in `*` matches every URI it
    /// begins with), answered 404 unless [`Self::reply`] says otherwise.
    pub(crate) fn get(uri: impl Into<String>) -> Self {
        Self::new("GET", uri, not_found())
    }

    /// A server-side apply (`PATCH`, `application/apply-patch+yaml`) to `uri`, answered with the
    /// applied object.
    pub(crate) fn apply(uri: impl Into<String>) -> Self {
        Self::new("PATCH", uri, Reply::Echo(200)).content_type(APPLY)
    }

    /// `PATCH uri`, answered with the patch body.
    pub(crate) fn patch(uri: impl Into<String>) -> Self {
        Self::new("PATCH", uri, Reply::Echo(200))
    }

    /// `POST uri`, answered 201 with the posted object.
    pub(crate) fn post(uri: impl Into<String>) -> Self {
        Self::new("POST", uri, Reply::Echo(201))
    }

    /// `DELETE uri`, answered 200 `Success`.
    pub(crate) fn delete(uri: impl Into<String>) -> Self {
        Self::new("DELETE", uri, deleted())
    }

    /// The request must carry this `Content-Type`.
    pub(crate) fn content_type(mut self, content_type: &'static str) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// The request body must hold `expected` (see [`includes`]).
    pub(crate) fn body(mut self, expected: Value) -> Self {
        self.body = Some(expected);
        self
    }

    /// Answer with `reply`.
    pub(crate) fn reply(mut self, reply: Reply) -> Self {
        self.reply = reply;
        self
    }

    /// The call may be left out (where timing outside the test's control decides, such as a
    /// real process answering): when the next request is not this call, the scenario moves on.
    pub(crate) fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    fn is(&self, request: &Received) -> bool {
        request.method == self.method
            && match self.uri.strip_suffix('*') {
                Some(prefix) => request.uri.starts_with(prefix),
                None => request.uri == self.uri,
            }
    }

    /// Panics, saying what differs, unless `request` is this call.
    fn check(&self, request: &Received, position: usize) {
        assert!(
            self.is(request),
            "call {position}: expected {} {}, got {request}",
            self.method,
            self.uri
        );
        if let Some(content_type) = self.content_type {
            assert_eq!(
                request.content_type, content_type,
                "call {position}: content type of {request}"
            );
        }
        if let Some(expected) = &self.body
            && let Err(at) = includes(&request.body, expected, "")
        {
            panic!(
                "call {position}: body of {request} differs at {at}\nexpected (included): \
                 {expected:#}\nreceived: {:#}",
                request.body
            );
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.uri)?;
        if self.optional {
            write!(f, " (optional)")?;
        }
        Ok(())
    }
}

/// `Ok` when `actual` holds `expected`: objects hold each expected key (recursively), arrays
/// have the same length and hold each expected element in place, other values are equal. `Err`
/// names the first place that differs.
pub(crate) fn includes(actual: &Value, expected: &Value, at: &str) -> Result<(), String> {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            for (key, value) in expected {
                let here = format!("{at}/{key}");
                match actual.get(key) {
                    Some(a) => includes(a, value, &here)?,
                    None => return Err(here),
                }
            }
            Ok(())
        }
        (Value::Array(actual), Value::Array(expected)) => {
            if actual.len() != expected.len() {
                return Err(format!(
                    "{at} (length {} instead of {})",
                    actual.len(),
                    expected.len()
                ));
            }
            for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
                includes(a, e, &format!("{at}/{i}"))?;
            }
            Ok(())
        }
        (a, e) if a == e => Ok(()),
        _ => Err(if at.is_empty() { "/".into() } else { at.into() }),
    }
}

/// Answers requests outside the ordered scenario (the watches' lists and watches, which run
/// concurrently and are retried at the watcher's pace); `None` leaves the request to the
/// scenario. It sees every request first.
pub(crate) type Background = Box<dyn FnMut(&Received) -> Option<Reply> + Send>;

/// The mocked API server between scenarios.
pub(crate) struct ApiServer {
    handle: Handle,
}

/// A client and the mocked API server it talks to.
pub(crate) fn api_server() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer { handle })
}

impl ApiServer {
    /// Expect `calls`, in this order and nothing else, until [`Scenario::verified`].
    pub(crate) fn expect(self, calls: Vec<Call>) -> Scenario {
        self.expect_with(calls, Box::new(|_| None))
    }

    /// [`Self::expect`], with `background` answering the requests it claims first.
    pub(crate) fn expect_with(self, calls: Vec<Call>, mut background: Background) -> Scenario {
        let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
        let mut handle = self.handle;
        let task = tokio::spawn(async move {
            let mut pending = calls.into_iter().enumerate().peekable();
            let mut received = Vec::new();
            loop {
                let next = tokio::select! {
                    biased;
                    next = handle.next_request() => next,
                    _ = &mut finished => break,
                };
                let Some((request, send)) = next else { break };
                let request = Received::read(request).await;
                if let Some(reply) = background(&request) {
                    send.send_response(reply.response(&request));
                    continue;
                }
                while pending
                    .peek()
                    .is_some_and(|(_, call)| call.optional && !call.is(&request))
                {
                    pending.next();
                }
                let Some((position, call)) = pending.next() else {
                    panic!(
                        "unexpected call {request} after the scenario's last call; received: \
                         {received:#?}",
                        received = received.iter().map(Received::to_string).collect::<Vec<_>>()
                    );
                };
                call.check(&request, position);
                send.send_response(call.reply.response(&request));
                received.push(request);
            }
            let missing: Vec<String> = pending
                .filter(|(_, call)| !call.optional)
                .map(|(position, call)| format!("{position}: {call}"))
                .collect();
            assert!(
                missing.is_empty(),
                "calls that never came: {missing:#?}; received: {:#?}",
                received.iter().map(Received::to_string).collect::<Vec<_>>()
            );
            (ApiServer { handle }, received)
        });
        Scenario { done, task }
    }
}

/// A scenario in progress.
pub(crate) struct Scenario {
    done: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(ApiServer, Vec<Received>)>,
}

impl Scenario {
    /// End the scenario (the code under test has returned) and check it: every call came, in
    /// order, and nothing else. Returns the server for the next scenario and the requests the
    /// scenario matched, in order. Panics with the verifier's message otherwise.
    pub(crate) async fn verified(self) -> (ApiServer, Vec<Received>) {
        // The verifier may have ended already (it panicked): then nobody receives this.
        let _ = self.done.send(());
        match tokio::time::timeout(SCENARIO_TIMEOUT, self.task).await {
            Ok(Ok(done)) => done,
            Ok(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Ok(Err(err)) => panic!("the verifier was cancelled: {err}"),
            Err(_) => panic!("the scenario did not finish within {SCENARIO_TIMEOUT:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resources.

/// A PCR value (any 48 bytes, hex).
pub(crate) const PCR: &str = "3aa0e6e6ed7d8301655fced7e6ddcc443a3e57bf62f070caa6becf337069e859c0f03d68136440ff1cab8adefd20634c";

/// A NautilusMaster `name` in `team-a` as the API server would hand it over: the minimal spec,
/// a uid, generation 1.
pub(crate) fn mk_nm(name: &str) -> NautilusMaster {
    let spec: NautilusMasterSpec = serde_json::from_value(json!({
        "enclave": {
            "image": "registry.example.com/nautilus/enclave:v1",
            "pcr0": PCR, "pcr1": PCR, "pcr2": PCR,
        },
    }))
    .expect("minimal spec");
    let mut nm = NautilusMaster::new(name, spec);
    nm.metadata.namespace = Some("team-a".into());
    nm.metadata.uid = Some("0a1b2c3d-0000-4000-8000-000000000001".into());
    nm.metadata.generation = Some(1);
    nm
}

/// PCR0 of [`FakeEnclave`].
pub(crate) const PCR0: [u8; 48] = [0x10; 48];
/// PCR1 of [`FakeEnclave`].
pub(crate) const PCR1: [u8; 48] = [0x11; 48];
/// PCR2 of [`FakeEnclave`].
pub(crate) const PCR2: [u8; 48] = [0x12; 48];

/// `demo` with the PCRs of [`FakeEnclave`], simulated attestation allowed.
pub(crate) fn mk_sim_nm() -> NautilusMaster {
    let mut nm = mk_nm("demo");
    nm.spec.enclave.pcr0 = hex::encode(PCR0);
    nm.spec.enclave.pcr1 = hex::encode(PCR1);
    nm.spec.enclave.pcr2 = hex::encode(PCR2);
    nm.spec.attestation.allow_simulated = true;
    nm
}

/// `nm` carrying the operator's finalizer.
pub(crate) fn with_finalizer(mut nm: NautilusMaster) -> NautilusMaster {
    nm.metadata.finalizers = Some(vec![FINALIZER.into()]);
    nm
}

/// `nm` with the finalizer, being deleted.
pub(crate) fn deleting(nm: NautilusMaster) -> NautilusMaster {
    let mut nm = with_finalizer(nm);
    nm.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    nm
}

/// The enclave pod of `demo`, running on `nitro-1` at `ip`, its sidecar ready.
pub(crate) fn running_pod(ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "demo-enclave-0", "namespace": "team-a"},
        "spec": {"nodeName": "nitro-1", "containers": [{"name": "nautilus-sidecar"}]},
        "status": {
            "phase": "Running", "podIP": ip,
            "containerStatuses": [{
                "name": "nautilus-sidecar", "ready": true, "restartCount": 0,
                "image": "x", "imageID": "x",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            }]
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The enclave and its sidecar.

/// A resource, an enclave answering for it, and the challenges issued to it: what
/// [`verify::verify`] needs.
pub(crate) struct VerifyCase {
    pub(crate) nm: NautilusMaster,
    pub(crate) enclave: FakeEnclave,
    pub(crate) digest: [u8; 32],
    pub(crate) nonces: IssuedNonces,
    pub(crate) now: u64,
    /// The operator's policy on simulated attestation (allowed, as for the local runtime).
    pub(crate) simulated_allowed: bool,
}

/// [`mk_sim_nm`] and a [`FakeEnclave`]; the challenge `[1; 32]`, issued a minute ago.
pub(crate) fn verify_case() -> VerifyCase {
    let nm = mk_sim_nm();
    let digest = desired::enclave_config(&nm).expect("config").digest();
    let now = now_unix_millis().expect("clock");
    VerifyCase {
        nm,
        enclave: FakeEnclave::new(),
        digest,
        nonces: IssuedNonces::new(vec![1; 32], now - 60_000, 10_000),
        now,
        simulated_allowed: true,
    }
}

impl VerifyCase {
    /// Verify `bundle` as the operator would for this case.
    pub(crate) fn run(&self, bundle: &EvidenceBundle, reports: &mut ReportState) -> Outcome {
        verify::verify(
            &verify::Input {
                nm: &self.nm,
                bundle,
                nonces: &self.nonces,
                config_digest: self.digest,
                now_ms: self.now,
                simulated_allowed: self.simulated_allowed,
            },
            reports,
        )
    }
}

/// An enclave made of a simulated NSM and a report signer, answering like the agent does.
pub(crate) struct FakeEnclave {
    pub(crate) nsm: SimulatedNsm,
    pub(crate) signer: ReportSigner,
    pub(crate) serving_ca_pem: String,
}

impl FakeEnclave {
    pub(crate) fn new() -> Self {
        let nsm = SimulatedNsm::new()
            .and_then(|n| n.with_pcr(0, &PCR0))
            .and_then(|n| n.with_pcr(1, &PCR1))
            .and_then(|n| n.with_pcr(2, &PCR2))
            .expect("simulated nsm");
        // Any certificate will do as the serving CA: another simulator's root.
        let serving_ca_pem = SimulatedNsm::new().expect("ca").root_pem().to_owned();
        Self {
            nsm,
            signer: ReportSigner::generate(),
            serving_ca_pem,
        }
    }

    pub(crate) fn evidence(&self, digest: [u8; 32], nonce: &[u8]) -> AttestationEvidence {
        let ca = AttestationEvidence {
            document: Vec::new(),
            serving_ca_pem: self.serving_ca_pem.clone(),
            simulated_root_pem: None,
        }
        .serving_ca_digest()
        .expect("ca digest");
        let document = self
            .nsm
            .attest(
                Some(&Binding::v1(digest, ca)),
                Some(nonce),
                Some(&self.signer.public_key_der()),
            )
            .expect("attest");
        AttestationEvidence {
            document,
            serving_ca_pem: self.serving_ca_pem.clone(),
            simulated_root_pem: Some(self.nsm.root_pem().to_owned()),
        }
    }

    pub(crate) fn report(&self, sequence: u64, digest_hex: &str, now_ms: u64) -> Report {
        Report {
            sequence,
            time_unix_ms: now_ms,
            boot_config_digest: digest_hex.to_owned(),
            components: Component::ALL
                .iter()
                .map(|&component| ComponentReport {
                    component,
                    healthy: true,
                    checked_unix_ms: now_ms,
                    latency_ms: Some(2),
                    message: None,
                })
                .collect(),
            control_plane: ProcessState {
                running: true,
                pid: Some(7),
                ..ProcessState::default()
            },
            state: None,
            budget: None,
        }
    }

    pub(crate) fn bundle(
        &self,
        digest: [u8; 32],
        nonce: &[u8],
        sequence: u64,
        now_ms: u64,
    ) -> EvidenceBundle {
        let digest_hex = hex::encode(digest);
        EvidenceBundle {
            boot_config_digest: Some(digest_hex.clone()),
            attestation: Some(self.evidence(digest, nonce)),
            report: Some(
                self.signer
                    .sign(&self.report(sequence, &digest_hex, now_ms)),
            ),
            enclave: EnclaveInfo {
                launcher: "process".into(),
                enclave_id: Some("4242".into()),
                enclave_cid: None,
                running: true,
                last_exit: None,
            },
            boot_refused: None,
            boot_refused_kind: None,
        }
    }
}

/// A fake sidecar: answers `/report` with `bundle` and records `/attest` bodies. Started
/// with [`FakeSidecar::start_with_revisions`], it also names a revision (bumped by
/// [`FakeSidecar::set_bundle`]) as the sidecar's long poll does, though it never waits.
pub(crate) struct FakeSidecar {
    pub(crate) addr: SocketAddr,
    pub(crate) attests: Arc<Mutex<Vec<String>>>,
    pub(crate) bundle: Arc<Mutex<String>>,
    revision: Arc<std::sync::atomic::AtomicU64>,
    report_requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSidecar {
    pub(crate) async fn start(bundle: &EvidenceBundle) -> Self {
        Self::serve(bundle, false).await
    }

    pub(crate) async fn start_with_revisions(bundle: &EvidenceBundle) -> Self {
        Self::serve(bundle, true).await
    }

    async fn serve(bundle: &EvidenceBundle, revisions: bool) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let revision = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let report_requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, n) = (revision.clone(), report_requests.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let attests = Arc::new(Mutex::new(Vec::new()));
        let bundle = Arc::new(Mutex::new(
            serde_json::to_string(bundle).expect("bundle json"),
        ));
        let (a, b) = (attests.clone(), bundle.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = 0;
                // Read until the headers and the announced body are in.
                loop {
                    let n = stream.read(&mut buf[got..]).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got += n;
                    let text = String::from_utf8_lossy(&buf[..got]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf[..got]).to_string();
                let mut header = String::new();
                let (status, body) = if text.starts_with("GET /report") {
                    n.fetch_add(1, SeqCst);
                    if revisions {
                        header = format!("nautilus-revision: {}\r\n", r.load(SeqCst));
                    }
                    ("200 OK", b.lock().expect("lock").clone())
                } else if text.starts_with("POST /attest") {
                    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
                    a.lock().expect("lock").push(body.to_owned());
                    ("202 Accepted", String::new())
                } else {
                    ("404 Not Found", String::new())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\n{header}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        Self {
            addr,
            attests,
            bundle,
            revision,
            report_requests,
            task,
        }
    }

    /// Serve `bundle` from now on (a new revision).
    pub(crate) fn set_bundle(&self, bundle: &EvidenceBundle) {
        *self.bundle.lock().expect("lock") = serde_json::to_string(bundle).expect("json");
        self.revision
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// `GET /report` requests answered so far.
    pub(crate) fn report_requests(&self) -> usize {
        self.report_requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The nonces posted to `/attest`, decoded.
    pub(crate) fn attested_nonces(&self) -> Vec<Vec<u8>> {
        self.attests
            .lock()
            .expect("lock")
            .iter()
            .map(|body| {
                let v: Value = serde_json::from_str(body).expect("json");
                base64::engine::general_purpose::STANDARD
                    .decode(v["nonce"].as_str().expect("nonce"))
                    .expect("base64")
            })
            .collect()
    }
}

mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;

    /// GET the ConfigMap `name` in `team-a`, then PATCH it with `data`.
    async fn get_then_patch(client: Client, name: &str, data: Value) {
        let api: Api<ConfigMap> = Api::namespaced(client, "team-a");
        let _ = api.get_opt(name).await;
        let patch = kube::api::Patch::Merge(json!({"data": data}));
        let _ = api.patch(name, &Default::default(), &patch).await;
    }

    fn calls() -> Vec<Call> {
        vec![
            Call::get("/api/v1/namespaces/team-a/configmaps/a"),
            Call::patch("/api/v1/namespaces/team-a/configmaps/a?")
                .content_type("application/merge-patch+json")
                .body(json!({"data": {"k": "v"}})),
        ]
    }

    #[tokio::test]
    async fn the_expected_calls_pass() {
        let (client, server) = api_server();
        let scenario = server.expect(calls());
        get_then_patch(client, "a", json!({"k": "v", "other": "x"})).await;
        let (_, received) = scenario.verified().await;
        assert_eq!(received.len(), 2);
        assert_eq!(received[1].body["data"]["other"], "x");
    }

    #[tokio::test]
    #[should_panic(expected = "calls that never came")]
    async fn a_missing_call_fails() {
        let (client, server) = api_server();
        let mut expected = calls();
        expected.push(Call::delete("/api/v1/namespaces/team-a/configmaps/a?"));
        let scenario = server.expect(expected);
        get_then_patch(client, "a", json!({"k": "v"})).await;
        scenario.verified().await;
    }

    #[tokio::test]
    #[should_panic(expected = "unexpected call PATCH")]
    async fn an_unexpected_call_fails() {
        let (client, server) = api_server();
        let scenario = server.expect(calls().into_iter().take(1).collect());
        get_then_patch(client, "a", json!({"k": "v"})).await;
        scenario.verified().await;
    }

    #[tokio::test]
    #[should_panic(expected = "expected GET /api/v1/namespaces/team-a/configmaps/a, got GET")]
    async fn another_path_fails() {
        let (client, server) = api_server();
        let scenario = server.expect(calls());
        get_then_patch(client, "b", json!({"k": "v"})).await;
        scenario.verified().await;
    }

    #[tokio::test]
    #[should_panic(expected = "differs at /data/k")]
    async fn another_body_fails() {
        let (client, server) = api_server();
        let scenario = server.expect(calls());
        get_then_patch(client, "a", json!({"k": "w"})).await;
        scenario.verified().await;
    }

    #[tokio::test]
    async fn an_optional_call_may_be_left_out() {
        let (client, server) = api_server();
        let mut expected = calls();
        expected.insert(
            1,
            Call::delete("/api/v1/namespaces/team-a/configmaps/a?").optional(),
        );
        let scenario = server.expect(expected);
        get_then_patch(client, "a", json!({"k": "v"})).await;
        assert_eq!(scenario.verified().await.1.len(), 2);
    }

    #[test]
    fn includes_checks_keys_lengths_and_values() {
        let actual = json!({"a": 1, "b": [{"x": 1, "y": 2}, {"x": 3}], "c": "s"});
        assert_eq!(includes(&actual, &json!({"a": 1}), ""), Ok(()));
        assert_eq!(includes(&actual, &json!({"b": [{"x": 1}, {}]}), ""), Ok(()));
        assert_eq!(includes(&actual, &json!({"a": 2}), ""), Err("/a".into()));
        assert_eq!(includes(&actual, &json!({"d": 1}), ""), Err("/d".into()));
        assert_eq!(
            includes(&actual, &json!({"b": [{"x": 1}]}), ""),
            Err("/b (length 2 instead of 1)".into())
        );
        assert_eq!(
            includes(&actual, &json!({"b": [{}, {"x": 4}]}), ""),
            Err("/b/1/x".into())
        );
    }
}
