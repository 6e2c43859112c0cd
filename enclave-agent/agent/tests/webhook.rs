//! The TokenReview webhook: real review bodies in, `authentication.k8s.io/v1` answers out, over
//! HTTPS as kube-apiserver calls it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nautilus_agent::stake::{ReadStake, StakeCache, StakeError};
use nautilus_agent::webhook::{
    Authenticator, MAX_BODY_BYTES, TokenReview, WEBHOOK_LIMITS, WebhookService, webhook_kubeconfig,
};
use nautilus_protocol::bounded::Limits;
use nautilus_seal::signer::generate_key;
use nautilus_seal::{
    Address, Identity, KeystoreKey, SealVerifier, SignatureScheme, Tier, Tiers, unix_now,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUDIENCE: &str = "team-a/demo";

/// Stake by address, held in memory: the seam under the webhook (the gRPC reader behind it is
/// tested in `stake.rs`).
#[derive(Default)]
struct Ledger {
    stakes: HashMap<Address, u64>,
    down: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
}

impl ReadStake for Ledger {
    async fn stake_of(&self, owner: Address) -> Result<u64, StakeError> {
        if self.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(StakeError::Rpc {
                method: "ListOwnedObjects",
                code: "Unavailable".into(),
                message: "down".into(),
            });
        }
        Ok(self.stakes.get(&owner).copied().unwrap_or(0))
    }
}

fn tiers() -> Tiers {
    Tiers::new(vec![
        Tier {
            name: "admin".into(),
            min_stake_mist: 10_000,
            groups: vec!["system:masters".into()],
            identity: Identity::User,
        },
        Tier {
            name: "worker".into(),
            min_stake_mist: 1_000,
            groups: Vec::new(),
            identity: Identity::Node,
        },
        Tier {
            name: "reader".into(),
            min_stake_mist: 100,
            groups: vec!["nautilus:readers".into()],
            identity: Identity::User,
        },
    ])
    .expect("valid tiers")
}

struct Fixture {
    auth: Arc<Authenticator<Ledger>>,
    admin: KeystoreKey,
    pauper: KeystoreKey,
    worker: KeystoreKey,
    down: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
}

fn fixture() -> Fixture {
    let admin = generate_key(SignatureScheme::Ed25519).expect("ed25519 key");
    let pauper = generate_key(SignatureScheme::Secp256r1).expect("secp256r1 key");
    let worker = generate_key(SignatureScheme::Secp256k1).expect("secp256k1 key");
    let mut ledger = Ledger::default();
    ledger.stakes.insert(admin.address(), 25_000);
    ledger.stakes.insert(pauper.address(), 99);
    ledger.stakes.insert(worker.address(), 1_500);
    let down = Arc::clone(&ledger.down);
    let stalled = Arc::clone(&ledger.stalled);
    let stakes = StakeCache::new(ledger, Duration::from_secs(30), 1024);
    let verifier = SealVerifier::new(AUDIENCE).with_max_lifetime(3600);
    Fixture {
        auth: Arc::new(
            Authenticator::new(verifier, tiers(), stakes).with_deadline(Duration::from_millis(300)),
        ),
        admin,
        pauper,
        worker,
        down,
        stalled,
    }
}

/// A review body as kube-apiserver (v1.33) sends it.
fn review_body(token: &str, audiences: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {"token": token, "audiences": audiences},
        "status": {"user": {}}
    }))
    .expect("json")
}

async fn review(f: &Fixture, body: &[u8]) -> Value {
    serde_json::to_value(f.auth.review(body, unix_now()).await).expect("serializes")
}

fn mint(key: &KeystoreKey, audience: &str, iat: u64, ttl: u64) -> String {
    key.mint_for(audience, iat, ttl).expect("mint")
}

#[tokio::test]
async fn admin_stake_is_authenticated_with_its_tier() {
    let f = fixture();
    let token = mint(&f.admin, AUDIENCE, unix_now(), 600);
    let answer = review(&f, &review_body(&token, &[])).await;
    let address = f.admin.address().to_string();
    assert_eq!(
        answer,
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {},
            "status": {
                "authenticated": true,
                "user": {
                    "username": format!("sui:{address}"),
                    "uid": address,
                    "groups": ["system:masters"],
                    "extra": {
                        "nautilus.k3s-daas.io/stake-mist": ["25000"],
                        "nautilus.k3s-daas.io/tier": ["admin"]
                    }
                }
            }
        })
    );
    assert!(
        !answer.to_string().contains(&token),
        "the answer never echoes the token"
    );
}

#[tokio::test]
async fn a_worker_stake_is_the_node_its_address_names() {
    let f = fixture();
    let token = mint(&f.worker, AUDIENCE, unix_now(), 600);
    let answer = review(&f, &review_body(&token, &[])).await;
    let address = f.worker.address();
    let hex = address.to_string();
    // `system:node:` + `sui-` + the address's first 56 hex digits: what the Node authorizer
    // and NodeRestriction read (pkg/auth/nodeidentifier), bound to the signer.
    let node = format!("sui-{}", &hex[2..58]);
    assert_eq!(nautilus_seal::node_name(&address), node);
    assert_eq!(
        answer["status"],
        json!({
            "authenticated": true,
            "user": {
                "username": format!("system:node:{node}"),
                "uid": hex,
                "groups": ["system:nodes"],
                "extra": {
                    "nautilus.k3s-daas.io/address": [hex],
                    "nautilus.k3s-daas.io/stake-mist": ["1500"],
                    "nautilus.k3s-daas.io/tier": ["worker"]
                }
            }
        })
    );
}

#[tokio::test]
async fn audiences_are_answered_with_the_tokens_own() {
    let f = fixture();
    let token = mint(&f.admin, AUDIENCE, unix_now(), 600);
    let asked = review(
        &f,
        &review_body(&token, &["https://kubernetes.default.svc", AUDIENCE]),
    )
    .await;
    assert_eq!(asked["status"]["audiences"], json!([AUDIENCE]));
    let implicit = review(
        &f,
        &review_body(&token, &["https://kubernetes.default.svc"]),
    )
    .await;
    assert_eq!(implicit["status"]["authenticated"], json!(true));
    assert!(
        implicit["status"].get("audiences").is_none(),
        "empty means the API server's own"
    );
}

#[tokio::test]
async fn stake_below_every_tier_is_denied() {
    let f = fixture();
    let token = mint(&f.pauper, AUDIENCE, unix_now(), 600);
    let answer = review(&f, &review_body(&token, &[])).await;
    assert_eq!(answer["status"]["authenticated"], json!(false));
    assert!(answer["status"].get("user").is_none());
    let error = answer["status"]["error"].as_str().expect("reason");
    assert!(error.contains("99 MIST, below every tier"), "{error}");
}

#[tokio::test]
async fn other_bearer_tokens_are_declined_quietly() {
    let f = fixture();
    let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6IiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln";
    let answer = review(&f, &review_body(jwt, &[])).await;
    assert_eq!(answer["status"], json!({"authenticated": false}));
}

#[tokio::test]
async fn chain_unreachable_denies() {
    let f = fixture();
    f.down.store(true, Ordering::SeqCst);
    let token = mint(&f.admin, AUDIENCE, unix_now(), 600);
    let answer = review(&f, &review_body(&token, &[])).await;
    assert_eq!(answer["status"]["authenticated"], json!(false));
    assert!(
        answer["status"]["error"]
            .as_str()
            .expect("reason")
            .contains("could not be read")
    );
}

#[tokio::test]
async fn a_stalled_chain_denies_within_the_deadline() {
    let f = fixture();
    f.stalled.store(true, Ordering::SeqCst);
    let token = mint(&f.admin, AUDIENCE, unix_now(), 600);
    let started = std::time::Instant::now();
    let answer = review(&f, &review_body(&token, &[])).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer["status"]["authenticated"], json!(false));
    let error = answer["status"]["error"].as_str().expect("reason");
    assert!(error.contains("could not be read within 300ms"), "{error}");
}

#[tokio::test]
async fn bad_tokens_and_bodies_are_denied_with_a_reason() {
    let f = fixture();
    let now = unix_now();
    let good = mint(&f.admin, AUDIENCE, now, 600);
    let mut tampered = good.clone().into_bytes();
    let mid = good.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("expired", review_body(&mint(&f.admin, AUDIENCE, now - 7200, 600), &[]), "expired"),
        ("future", review_body(&mint(&f.admin, AUDIENCE, now + 3600, 600), &[]), "in the future"),
        ("wrong audience", review_body(&mint(&f.admin, "team-b/other", now, 600), &[]), "audience"),
        ("too long-lived", review_body(&mint(&f.admin, AUDIENCE, now, 86_400), &[]), "lifetime"),
        ("tampered", review_body(&tampered, &[]), "token"),
        ("truncated", review_body(&good[..good.len() - 10], &[]), "token"),
        ("malformed json", b"{\"apiVersion\": ".to_vec(), "malformed TokenReview"),
        ("not an object", b"[1,2,3]".to_vec(), "malformed TokenReview"),
        (
            "wrong apiVersion",
            serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1beta1", "kind": "TokenReview", "spec": {"token": good}})).expect("json"),
            "unsupported review",
        ),
        ("oversize token", review_body(&format!("sui-seal.v1.{}", "A".repeat(20_000)), &[]), "limit"),
    ];
    for (name, body, reason) in cases {
        let answer = review(&f, &body).await;
        assert_eq!(
            answer["apiVersion"],
            json!("authentication.k8s.io/v1"),
            "{name}"
        );
        assert_eq!(answer["status"]["authenticated"], json!(false), "{name}");
        let error = answer["status"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{name}: {error:?} lacks {reason:?}");
    }
}

fn tls_pair() -> (Arc<rustls::ServerConfig>, rustls::RootCertStore) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    (Arc::new(server), roots)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // As Go's client (kube-apiserver's) does: the head and the body are two TLS records, and
    // with Nagle the second waits for the server's delayed ACK (40 ms).
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

async fn post(
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    path: &str,
    body: &[u8],
) -> (u16, Value) {
    let mut tls = tls_connect(addr, roots).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("write head");
    // The server may answer (413) before reading a huge body; ignore a reset while writing.
    let _ = tls.write_all(body).await;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let json = text
        .split("\r\n\r\n")
        .nth(1)
        .map(|b| serde_json::from_str(b).expect("json body"))
        .expect("body");
    (status, json)
}

#[tokio::test]
async fn serves_reviews_over_https_as_kube_apiserver_calls_it() {
    let f = fixture();
    let (server, roots) = tls_pair();
    let service = WebhookService::start(
        "127.0.0.1:0".parse().expect("addr"),
        server,
        Arc::clone(&f.auth),
    )
    .await
    .expect("webhook starts");
    let addr = service.local_addr();
    let token = mint(&f.admin, AUDIENCE, unix_now(), 600);

    let (status, answer) = post(
        addr,
        roots.clone(),
        "/authenticate",
        &review_body(&token, &[]),
    )
    .await;
    assert_eq!(status, 200);
    let review: TokenReview = serde_json::from_value(answer.clone()).expect("a TokenReview");
    assert_eq!(review.api_version, "authentication.k8s.io/v1");
    assert_eq!(
        answer["status"]["user"]["groups"],
        json!(["system:masters"])
    );

    // A definite "no" (stake below every tier) and a chain that does not answer in time are
    // 200s too: kube-apiserver would retry a 5xx five times.
    let poor = mint(&f.pauper, AUDIENCE, unix_now(), 600);
    let (status, answer) = post(
        addr,
        roots.clone(),
        "/authenticate",
        &review_body(&poor, &[]),
    )
    .await;
    assert_eq!(
        (status, &answer["status"]["authenticated"]),
        (200, &json!(false))
    );
    f.stalled.store(true, Ordering::SeqCst);
    let uncached = generate_key(SignatureScheme::Ed25519).expect("key");
    let uncached = mint(&uncached, AUDIENCE, unix_now(), 600);
    let (status, answer) = post(
        addr,
        roots.clone(),
        "/authenticate",
        &review_body(&uncached, &[]),
    )
    .await;
    assert_eq!(
        (status, &answer["status"]["authenticated"]),
        (200, &json!(false)),
        "{answer}"
    );
    assert!(
        answer["status"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("within")),
        "{answer}"
    );
    f.stalled.store(false, Ordering::SeqCst);

    let (status, answer) = post(addr, roots.clone(), "/other", &review_body(&token, &[])).await;
    assert_eq!(
        (status, &answer["status"]["authenticated"]),
        (404, &json!(false))
    );

    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, answer) = post(addr, roots.clone(), "/authenticate", &huge).await;
    assert_eq!(
        (status, &answer["status"]["authenticated"]),
        (413, &json!(false))
    );

    // Garbage inside TLS gets hyper's 400, a head over the read buffer 431 (both logged as
    // "request refused" with the reason: the agent has no metrics endpoint); garbage instead
    // of a TLS handshake is closed. None waits past the listener's timeouts.
    let pad = "a".repeat(64 * 1024);
    for (what, bytes, status) in [
        ("garbage", b"\x00\x01 garbage\r\n\r\n".to_vec(), "400"),
        (
            "huge head",
            format!("POST /authenticate HTTP/1.1\r\nHost: localhost\r\nX-Pad: {pad}\r\n\r\n")
                .into_bytes(),
            "431",
        ),
    ] {
        let mut tls = tls_connect(addr, roots.clone()).await;
        let _ = tls.write_all(&bytes).await;
        let got = closed_by_server(&mut tls, Duration::from_secs(15)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {text}"
        );
    }
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    closed_by_server(&mut plain, Duration::from_secs(15)).await;
    service.stop();
}

/// Wait until the server closes the stream (EOF or an error); fail after `within`.
async fn closed_by_server<S: AsyncReadExt + Unpin>(stream: &mut S, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("the webhook kept a connection open for {within:?}"),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_while_reviews_are_answered() {
    let f = fixture();
    let (server, roots) = tls_pair();
    let timeout = Duration::from_secs(1);
    let slack = Duration::from_secs(2);
    let limits = Limits {
        handshake_timeout: timeout,
        header_timeout: timeout,
        body_timeout: timeout,
        ..WEBHOOK_LIMITS
    };
    let service = WebhookService::start_with(
        "127.0.0.1:0".parse().expect("addr"),
        server,
        Arc::clone(&f.auth),
        limits,
    )
    .await
    .expect("webhook starts");
    let addr = service.local_addr();
    let token = mint(&f.admin, AUDIENCE, unix_now(), 600);
    let started = std::time::Instant::now();

    // Fifty TCP connections that never start TLS.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // TLS, then half a request head; TLS, then a body dripped one byte every 20 ms.
    let mut half_head = tls_connect(addr, roots.clone()).await;
    half_head
        .write_all(b"POST /authenticate HTTP/1.1\r\nHost: lo")
        .await
        .expect("write");
    let mut dripping = tls_connect(addr, roots.clone()).await;
    dripping
        .write_all(
            b"POST /authenticate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n",
        )
        .await
        .expect("write");
    let (mut drip_reader, mut drip_writer) = tokio::io::split(dripping);
    let drip = tokio::spawn(async move {
        for _ in 0..1000 {
            if drip_writer.write_all(b" ").await.is_err() || drip_writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Legitimate reviews are answered all along.
    let mut slowest = Duration::ZERO;
    while started.elapsed() < timeout + Duration::from_millis(500) {
        let sent = std::time::Instant::now();
        let (status, answer) = post(
            addr,
            roots.clone(),
            "/authenticate",
            &review_body(&token, &[]),
        )
        .await;
        slowest = slowest.max(sent.elapsed());
        assert_eq!(
            (status, &answer["status"]["authenticated"]),
            (200, &json!(true))
        );
    }
    assert!(slowest < slack, "a review took {slowest:?}");

    for stream in &mut idle {
        closed_by_server(stream, timeout + slack).await;
    }
    closed_by_server(&mut half_head, timeout + slack).await;
    let answer = closed_by_server(&mut drip_reader, timeout + slack).await;
    drip.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"authenticated\":false"), "{answer}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout - Duration::from_millis(100) && elapsed <= timeout * 2 + slack,
        "cut after {elapsed:?}"
    );
    // Still serving.
    let (status, _) = post(addr, roots, "/authenticate", &review_body(&token, &[])).await;
    assert_eq!(status, 200);
    service.stop();
}

#[tokio::test]
async fn rejected_tokens_are_logged_once_per_interval_and_never_in_part() {
    let f = fixture();
    // `&File` is a writer, so an `Arc<File>` is a MakeWriter: no capture type needed.
    let logs = tempfile::NamedTempFile::new().expect("log file");
    let subscriber = tracing_subscriber::fmt()
        .with_writer(Arc::new(logs.reopen().expect("log file")))
        .with_ansi(false)
        .finish();
    // This runtime has one thread, the test's: the subscriber sees every line of the reviews.
    let _guard = tracing::subscriber::set_default(subscriber);
    let secret = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY";
    let forged = review_body(&format!("sui-seal.v1.{secret}.{secret}"), &[]);
    for _ in 0..1_000 {
        let answer = review(&f, &forged).await;
        assert_eq!(answer["status"]["authenticated"], json!(false));
    }
    let text = std::fs::read_to_string(logs.path()).expect("log");
    let lines = text
        .lines()
        .filter(|l| l.contains("seal token rejected"))
        .count();
    assert_eq!(lines, 1, "{text}");
    assert!(
        !text.contains(&secret[..12]),
        "token material in the log: {text}"
    );
}

#[test]
fn kubeconfig_points_the_api_server_at_the_webhook() {
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let config: Value = serde_json::from_str(
        &webhook_kubeconfig("https://127.0.0.1:10443/authenticate", ca).expect("renders"),
    )
    .expect("kubeconfig is JSON");
    let cluster = &config["clusters"][0]["cluster"];
    assert_eq!(
        cluster["server"],
        json!("https://127.0.0.1:10443/authenticate")
    );
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(
            cluster["certificate-authority-data"]
                .as_str()
                .expect("ca data"),
        )
        .expect("base64");
    assert_eq!(decoded, ca.as_bytes());
    assert_eq!(config["current-context"], json!("webhook"));
}
