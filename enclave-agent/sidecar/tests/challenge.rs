//! Users' challenges through the real sidecar and a fake agent producing real evidence: on the
//! HTTP API and on the API port, answered without replacing the operator's evidence.

mod common;

use std::net::SocketAddr;

use base64::Engine as _;
use common::*;
use nautilus_protocol::attestation::decode_unverified;
use nautilus_protocol::transport::Endpoint;
use nautilus_protocol::wire::{ChallengeResponse, EvidenceBundle, Message};

fn body(nonce: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "nonce": base64::engine::general_purpose::STANDARD.encode(nonce)
    }))
    .expect("json")
}

/// POST /challenge at `addr` while the fake agent answers it; returns the parsed answer.
async fn challenge(
    addr: SocketAddr,
    conn: &mut AgentConn,
    agent: &FakeAgent,
    nonce: &[u8],
) -> ChallengeResponse {
    let request = tokio::spawn({
        let body = body(nonce);
        async move { http(addr, "POST", "/challenge", &body).await }
    });
    match conn.recv().await {
        Message::Challenge(c) => assert_eq!(c.nonce, nonce),
        other => panic!("expected a Challenge, got {:?}", other.kind()),
    }
    // A stray answer (another nonce) satisfies nobody; the right one is handed over.
    conn.answer(agent, b"somebody else").await;
    conn.answer(agent, nonce).await;
    let (status, text) = request.await.expect("request task");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("a ChallengeResponse")
}

#[tokio::test]
async fn a_challenge_gets_its_own_document_and_leaves_the_operators_evidence_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every request spends the budget before its body is read (a refusal costs no parsing), so
    // this one client's bad requests get a burst of their own.
    let (running, agent) = sidecar(dir.path(), 5, &["--challenge-peer-burst", "20"]).await;
    let addr = running.http_addr();
    let mut conn = agent.accept().await;
    let boot_nonce = conn.boot_nonce.clone();
    conn.attest(&agent, &boot_nonce).await;

    let answer = challenge(addr, &mut conn, &agent, b"user nonce one").await;
    assert_eq!(answer.config, agent.boot.config);
    let doc = decode_unverified(&answer.attestation.document).expect("document");
    assert_eq!(doc.nonce.as_deref(), Some(&b"user nonce one"[..]));

    // The API port (the resource's endpoint) answers the same route.
    let Endpoint::Tcp(api) = running.api_endpoint() else {
        panic!("api proxy not on tcp");
    };
    let api: SocketAddr = api.parse().expect("api addr");
    let answer = challenge(api, &mut conn, &agent, b"user nonce two").await;
    let doc = decode_unverified(&answer.attestation.document).expect("document");
    assert_eq!(doc.nonce.as_deref(), Some(&b"user nonce two"[..]));

    // /report still serves the document answering the operator's nonce.
    let (status, text) = get(addr, "/report").await;
    assert_eq!(status, 200);
    let bundle: EvidenceBundle = serde_json::from_str(&text).expect("bundle");
    let served = bundle.attestation.expect("attestation");
    let doc = decode_unverified(&served.document).expect("document");
    assert_eq!(doc.nonce.as_deref(), Some(boot_nonce.as_slice()));

    // Bad requests are refused before the agent is asked.
    for bad in [&b"{}"[..], br#"{"nonce":""}"#, b"not json"] {
        let (status, _) = http(addr, "POST", "/challenge", bad).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(get(addr, "/challenge").await.0, 405);
    running.shutdown().await.expect("shutdown");
}
