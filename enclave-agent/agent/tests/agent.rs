//! The agent binary end to end over real sockets: simulated NSM, stand-in control plane, and an
//! in-test fake sidecar speaking the wire protocol over a Unix socket.

mod common;

use std::time::Duration;

use common::*;
use nautilus_protocol::transport;
use nautilus_protocol::wire::{
    self, Component, Message, NonceRefresh, PROTOCOL_VERSION, ReportVerifier,
};
use tokio::io::AsyncWriteExt as _;

/// One HTTP/1.1 request through the agent's API forwarder, TLS verified with `ca_pem`.
async fn through_forwarder(
    agent: &AgentProcess,
    ca_pem: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let stream = transport::connect(&agent.api).await.expect("forwarder");
    https_request(
        stream,
        ca_pem,
        "kubernetes.default.svc",
        method,
        path,
        token,
        "{}",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_attests_reports_forwards_and_refreshes_the_nonce() {
    let agent = AgentProcess::start();
    let mut link = agent.connect().await;
    let nonce = b"operator-nonce-1".to_vec();
    let boot = agent.boot_config(&nonce);
    wire::write_message(&mut link, &Message::BootConfig(Box::new(boot.clone())))
        .await
        .expect("send boot config");

    // The attestation verifies and binds the config digest and the CA on disk.
    let evidence = next_attestation(&mut link).await;
    let document = verify_evidence(&evidence, &boot, &nonce);
    let ca_on_disk = std::fs::read_to_string(agent.work_file("ca.crt")).expect("ca.crt");
    assert_eq!(evidence.serving_ca_pem, ca_on_disk);
    assert!(evidence.serving_ca_pem.contains("BEGIN CERTIFICATE"));
    let k3s_ca = std::fs::read_to_string(agent.data_dir.join("server/tls/server-ca.crt"))
        .expect("server-ca.crt for k3s");
    assert_eq!(k3s_ca, ca_on_disk);
    // K3s applies the reader/editor group bindings from its manifests directory.
    let rbac = std::fs::read_to_string(agent.data_dir.join("server/manifests/nautilus-rbac.yaml"))
        .expect("rbac manifest for k3s");
    assert!(rbac.contains("nautilus:readers"), "{rbac}");
    let public_key = document.public_key.clone().expect("report key attested");

    // Reports arrive signed by the attested key, and turn all healthy.
    let mut verifier =
        ReportVerifier::new(&public_key, boot.config.digest_hex(), 30_000).expect("key");
    let healthy = report_where(&mut link, &mut verifier, "all healthy", |r| {
        r.all_healthy() && r.control_plane.running
    })
    .await;
    assert!(healthy.control_plane.pid.is_some());
    assert_eq!(healthy.control_plane.restarts, 0);
    assert!(!healthy.control_plane.startup_timed_out);
    let next = report_where(&mut link, &mut verifier, "another", |_| true).await;
    assert!(next.sequence > healthy.sequence);

    // The k3s config and the webhook kubeconfig were written for the control plane.
    let k3s = std::fs::read_to_string(agent.work_file("k3s-config.yaml")).expect("k3s config");
    assert!(
        k3s.contains(&format!("https-listen-port: {}", agent.https_port)),
        "{k3s}"
    );
    assert!(
        k3s.contains("authentication-token-webhook-config-file="),
        "{k3s}"
    );
    let kubeconfig =
        std::fs::read_to_string(agent.work_file("webhook-kubeconfig.yaml")).expect("kubeconfig");
    assert!(kubeconfig.contains("https://127.0.0.1:"), "{kubeconfig}");

    // The API forwarder reaches the API server, whose certificate chains to the attested CA.
    let (status, _) =
        through_forwarder(&agent, &evidence.serving_ca_pem, "GET", "/readyz", None).await;
    assert_eq!(status, 200);
    // The TokenReview path as kubectl calls it: a bearer token goes through the real webhook.
    for token in ["not-a-seal-token", "sui-seal.v1.e30.AAAA"] {
        let (status, body) = through_forwarder(
            &agent,
            &evidence.serving_ca_pem,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(token),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
        assert!(
            !body.contains("unreachable"),
            "the webhook answered: {body}"
        );
    }

    // A nonce refresh gives a new attestation with that nonce, same key and binding.
    let fresh = b"operator-nonce-2".to_vec();
    wire::write_message(
        &mut link,
        &Message::NonceRefresh(NonceRefresh {
            nonce: fresh.clone(),
        }),
    )
    .await
    .expect("refresh");
    let evidence2 = next_attestation(&mut link).await;
    let document2 = verify_evidence(&evidence2, &boot, &fresh);
    assert_eq!(document2.public_key, document.public_key);
    assert_eq!(evidence2.serving_ca_pem, evidence.serving_ca_pem);
    report_where(&mut link, &mut verifier, "reports go on", |_| true).await;

    // A user's challenge: one answer with the user's nonce, same key and binding, and the
    // evidence the operator verifies is not replaced (no Attestation message).
    let user_nonce = b"a user's own nonce".to_vec();
    wire::write_message(
        &mut link,
        &Message::Challenge(wire::Challenge {
            nonce: user_nonce.clone(),
        }),
    )
    .await
    .expect("challenge");
    let answer = loop {
        match common::next(&mut link).await {
            Message::ChallengeAnswer(answer) => break answer,
            Message::Report(_) => {}
            other => panic!("expected a ChallengeAnswer, got {:?}", other.kind()),
        }
    };
    assert_eq!(answer.nonce, user_nonce);
    let document3 = verify_evidence(&answer.attestation, &boot, &user_nonce);
    assert_eq!(document3.public_key, document.public_key);
    report_where(&mut link, &mut verifier, "reports go on", |_| true).await;
}

/// A host that sends refreshes and challenges as fast as it can gets documents at the agent's
/// rates only: the refreshes coalesce to the latest nonce, the challenges over the rate are
/// dropped, and both are counted in the signed report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_and_challenges_from_a_hostile_host_cost_the_agent_its_rates() {
    let agent = AgentProcess::start_with(|command, _| {
        command.args([
            "--nonce-refresh-rate",
            "0.5",
            "--nonce-refresh-burst",
            "1",
            "--challenge-rate",
            "0.001",
            "--challenge-burst",
            "2",
        ]);
    });
    let mut link = agent.connect().await;
    let nonce = b"boot nonce".to_vec();
    let boot = agent.boot_config(&nonce);
    wire::write_message(&mut link, &Message::BootConfig(Box::new(boot.clone())))
        .await
        .expect("send boot config");
    let evidence = next_attestation(&mut link).await;
    let document = verify_evidence(&evidence, &boot, &nonce);
    let public_key = document.public_key.clone().expect("report key attested");
    let mut verifier =
        ReportVerifier::new(&public_key, boot.config.digest_hex(), 30_000).expect("key");
    // Before anything was refused, reports carry no counters.
    let first = report_where(&mut link, &mut verifier, "a report", |_| true).await;
    assert_eq!(first.budget, None);

    for n in 0..20u8 {
        for message in [
            Message::NonceRefresh(NonceRefresh {
                nonce: vec![b'r', n],
            }),
            Message::Challenge(wire::Challenge {
                nonce: vec![b'c', n],
            }),
        ] {
            wire::write_message(&mut link, &message)
                .await
                .expect("flood");
        }
    }
    // Two documents for refreshes (the first at once, then the latest after one token's
    // wait), two answers (the burst), and then nothing more.
    let mut attested = Vec::new();
    let mut answered = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Ok(message) = tokio::time::timeout_at(deadline, wire::read_message(&mut link)).await {
        match message.expect("valid message") {
            Message::Attestation(evidence) => {
                let doc = nautilus_protocol::attestation::decode_unverified(&evidence.document)
                    .expect("document");
                attested.push(doc.nonce.unwrap_or_default());
            }
            Message::ChallengeAnswer(answer) => answered.push(answer.nonce),
            Message::Report(_) => {}
            other => panic!("unexpected {:?}", other.kind()),
        }
    }
    assert_eq!(attested, [vec![b'r', 0], vec![b'r', 19]]);
    assert_eq!(answered, [vec![b'c', 0], vec![b'c', 1]]);
    let counted = report_where(&mut link, &mut verifier, "counters", |r| r.budget.is_some())
        .await
        .budget
        .expect("counters");
    assert_eq!(
        counted,
        wire::BudgetCounters {
            challenges_answered: 2,
            challenges_refused: 18,
            nonce_refreshes: 2,
            nonce_refreshes_deferred: 19,
            ..wire::BudgetCounters::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_components_and_a_killed_control_plane_show_in_reports() {
    let agent = AgentProcess::start();
    let mut link = agent.connect().await;
    let boot = agent.boot_config(b"nonce");
    wire::write_message(&mut link, &Message::BootConfig(Box::new(boot.clone())))
        .await
        .expect("send boot config");
    let evidence = next_attestation(&mut link).await;
    let document = verify_evidence(&evidence, &boot, b"nonce");
    let mut verifier = ReportVerifier::new(
        &document.public_key.expect("key"),
        boot.config.digest_hex(),
        30_000,
    )
    .expect("key");
    let first = report_where(&mut link, &mut verifier, "all healthy", |r| r.all_healthy()).await;

    // Flip the scheduler's health: the report after the next probe round shows it.
    agent.set_health(r#"{"scheduler": false}"#);
    let flipped_at = std::time::Instant::now();
    let sick = report_where(&mut link, &mut verifier, "scheduler unhealthy", |r| {
        r.component(Component::Scheduler)
            .is_some_and(|c| !c.healthy)
    })
    .await;
    assert!(
        flipped_at.elapsed() < Duration::from_millis(2_500),
        "seen within one probe interval (1 s) plus a probe: {:?}",
        flipped_at.elapsed()
    );
    let message = sick
        .component(Component::Scheduler)
        .and_then(|c| c.message.clone())
        .expect("reason");
    assert!(message.contains("503"), "{message}");
    assert!(
        sick.component(Component::ApiServer)
            .is_some_and(|c| c.healthy)
    );
    agent.set_health("{}");
    report_where(&mut link, &mut verifier, "healthy again", |r| {
        r.all_healthy()
    })
    .await;

    // Kill the control plane: the report shows it, the supervisor restarts it, health recovers.
    let pid = first.control_plane.pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the stand-in");
    let killed_at = std::time::Instant::now();
    let down = report_where(&mut link, &mut verifier, "not running", |r| {
        !r.control_plane.running
    })
    .await;
    assert!(
        killed_at.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        killed_at.elapsed()
    );
    assert_eq!(down.control_plane.last_exit.as_deref(), Some("signal: 9"));
    assert!(!down.all_healthy());
    let back = report_where(&mut link, &mut verifier, "restarted and healthy", |r| {
        r.control_plane.running && r.control_plane.restarts == 1 && r.all_healthy()
    })
    .await;
    assert_ne!(back.control_plane.pid, Some(pid));
}

/// Reads until the agent closes the connection (messages already in flight are skipped).
async fn assert_closed(stream: &mut transport::BoxedStream, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let result = tokio::time::timeout_at(deadline, wire::read_message(stream))
            .await
            .unwrap_or_else(|_| panic!("{what}: the agent kept the connection open"));
        match result {
            Ok(_) => continue,
            Err(wire::WireError::Closed | wire::WireError::Io(_)) => return,
            Err(e) => panic!("{what}: expected a closed connection, got {e}"),
        }
    }
}

/// A frame of `kind` around `body`, as is.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = PROTOCOL_VERSION.to_be_bytes().to_vec();
    frame.extend([kind, 0]);
    frame.extend(u32::try_from(body.len()).expect("small").to_be_bytes());
    frame.extend(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_connection_and_the_agent_serves_the_next() {
    let agent = AgentProcess::start();
    let boot = agent.boot_config(b"nonce");

    // Another protocol version.
    let mut link = agent.connect().await;
    link.write_all(&[0, 9, 1, 0, 0, 0, 0, 2, b'{', b'}'])
        .await
        .expect("write");
    assert_closed(&mut link, "wrong version").await;

    // An oversized frame announcement.
    let mut link = agent.connect().await;
    let mut header = PROTOCOL_VERSION.to_be_bytes().to_vec();
    header.extend([1, 0]);
    header.extend(u32::MAX.to_be_bytes());
    link.write_all(&header).await.expect("write");
    assert_closed(&mut link, "oversized frame").await;

    // Garbage JSON and a BootConfig with an unknown field.
    let mut text = serde_json::to_value(&boot).expect("json");
    text["config"]["controlPlane"]["kubeletArgs"] = serde_json::json!(["--anything"]);
    for body in [
        b"not json".to_vec(),
        serde_json::to_vec(&text).expect("json"),
    ] {
        let mut link = agent.connect().await;
        link.write_all(&frame(1, &body)).await.expect("write");
        assert_closed(&mut link, "malformed BootConfig").await;
    }

    // A first message that is not a BootConfig.
    let mut link = agent.connect().await;
    wire::write_message(
        &mut link,
        &Message::NonceRefresh(NonceRefresh { nonce: vec![1] }),
    )
    .await
    .expect("write");
    assert_closed(&mut link, "NonceRefresh first").await;

    // A boot configuration that parses but cannot boot (an invalid TLS version), and nonces
    // outside 1..=512 bytes (which this crate's writer refuses to send, so they go raw). The
    // connection closes and nothing stays booted.
    // The agent says why before it closes (BootRefused), so the operator can show it.
    let mut bad_tls = boot.clone();
    bad_tls.config.control_plane.tls_min_version = "VersionTLS10".into();
    let mut bad_stake = boot.clone();
    bad_stake.config.auth.stake_type = "0x2::coin::Coin<not a type>".into();
    bad_stake.config.auth.stake_amount_field = Some("value".into());
    for (what, bad, needle) in [
        ("tls version", bad_tls, "VersionTLS10"),
        ("stake type", bad_stake, "invalid stake type"),
    ] {
        let mut link = agent.connect().await;
        wire::write_message(&mut link, &Message::BootConfig(Box::new(bad.clone())))
            .await
            .expect("write");
        match tokio::time::timeout(WAIT, wire::read_message(&mut link)).await {
            Ok(Ok(Message::BootRefused(refused))) => {
                assert_eq!(refused.config_digest, bad.config.digest_hex(), "{what}");
                assert!(
                    refused.reason.contains(needle),
                    "{what}: {}",
                    refused.reason
                );
            }
            other => panic!("{what}: expected BootRefused, got {other:?}"),
        }
        assert_closed(&mut link, what).await;
    }
    for (what, nonce) in [
        ("big nonce", "Bw".repeat(400)),
        ("empty nonce", String::new()),
    ] {
        let mut json = serde_json::to_value(&boot).expect("json");
        json["nonce"] = serde_json::json!(nonce);
        let mut link = agent.connect().await;
        link.write_all(&frame(1, &serde_json::to_vec(&json).expect("json")))
            .await
            .expect("write");
        assert_closed(&mut link, what).await;
    }
    assert!(
        !agent.work_file("k3s-config.yaml").exists(),
        "a refused boot wrote files"
    );

    // The agent is still there: a valid BootConfig boots it.
    let mut link = agent.connect().await;
    wire::write_message(&mut link, &Message::BootConfig(Box::new(boot.clone())))
        .await
        .expect("boot");
    let evidence = next_attestation(&mut link).await;
    let document = verify_evidence(&evidence, &boot, b"nonce");
    let mut verifier = ReportVerifier::new(
        &document.public_key.clone().expect("key"),
        boot.config.digest_hex(),
        30_000,
    )
    .expect("key");
    let before = report_where(&mut link, &mut verifier, "a report", |_| true).await;

    // Garbage after boot closes this connection only.
    link.write_all(&[0xff; 16]).await.expect("write");
    assert_closed(&mut link, "garbage after boot").await;

    // A sidecar restart: a different config is refused…
    let mut other = boot.clone();
    other.config.cluster = "test/another".into();
    let mut link = agent.connect().await;
    wire::write_message(&mut link, &Message::BootConfig(Box::new(other)))
        .await
        .expect("write");
    assert_closed(&mut link, "another BootConfig").await;

    // …the same config joins the running boot: same key and CA, reports continue.
    let mut link = agent.connect().await;
    wire::write_message(&mut link, &Message::BootConfig(Box::new(boot.clone())))
        .await
        .expect("write");
    let again = next_attestation(&mut link).await;
    let document2 = verify_evidence(&again, &boot, b"nonce");
    assert_eq!(document2.public_key, document.public_key);
    assert_eq!(again.serving_ca_pem, evidence.serving_ca_pem);
    let after = report_where(&mut link, &mut verifier, "a later report", |_| true).await;
    assert!(after.sequence > before.sequence);

    // An empty nonce is refused as the sidecar's HTTP API refuses it: the frame is malformed,
    // the connection closes, and nothing is attested.
    link.write_all(&frame(4, br#"{"nonce":""}"#))
        .await
        .expect("write");
    assert_closed(&mut link, "empty nonce").await;

    // A restarted sidecar with a new nonce gets an attestation carrying it.
    let mut link = agent.connect().await;
    let mut renewed = boot.clone();
    renewed.nonce = b"after-restart".to_vec();
    wire::write_message(&mut link, &Message::BootConfig(Box::new(renewed.clone())))
        .await
        .expect("write");
    let third = next_attestation(&mut link).await;
    verify_evidence(&third, &renewed, b"after-restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_is_reported_and_sigterm_leaves_no_orphan() {
    let mut agent = AgentProcess::start();
    // The API server never gets ready until the health file changes.
    agent.set_health(r#"{"readyz": false}"#);
    let mut link = agent.connect().await;
    let mut boot = agent.boot_config(b"nonce");
    boot.config.health.startup_timeout_seconds = 1;
    wire::write_message(&mut link, &Message::BootConfig(Box::new(boot.clone())))
        .await
        .expect("send boot config");
    let evidence = next_attestation(&mut link).await;
    let document = verify_evidence(&evidence, &boot, b"nonce");
    let mut verifier = ReportVerifier::new(
        &document.public_key.expect("key"),
        boot.config.digest_hex(),
        30_000,
    )
    .expect("key");
    let slow = report_where(&mut link, &mut verifier, "startup timed out", |r| {
        r.control_plane.startup_timed_out
    })
    .await;
    let api = slow.component(Component::ApiServer).expect("api server");
    assert!(!api.healthy);
    assert!(
        api.message
            .as_deref()
            .is_some_and(|m| m.contains("/readyz: 503")),
        "{api:?}"
    );
    agent.set_health("{}");
    let ok = report_where(&mut link, &mut verifier, "healthy after all", |r| {
        r.all_healthy()
    })
    .await;
    assert!(!ok.control_plane.startup_timed_out);

    // SIGTERM: the agent stops the control plane before it exits.
    let standin = nix::unistd::Pid::from_raw(ok.control_plane.pid.expect("pid") as i32);
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sigterm");
    let (status, agent) = tokio::task::spawn_blocking(move || {
        let status = agent.child.wait().expect("agent exits");
        (status, agent)
    })
    .await
    .expect("wait");
    assert!(status.success(), "{status:?}");
    drop(agent);
    assert!(
        nix::sys::signal::kill(standin, None).is_err(),
        "the stand-in outlived the agent"
    );
}
