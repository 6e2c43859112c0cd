//! The control link and the HTTP API against a fake agent producing real evidence.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use nautilus_protocol::attestation::decode_unverified;
use nautilus_protocol::wire::{BootRefused, Component, EvidenceBundle, Message, ReportSigner};
use nautilus_sidecar::SidecarError;

fn rejected(metrics: &str, reason: &str) -> u64 {
    metric(
        metrics,
        &format!("nautilus_sidecar_reports_rejected_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn readyz_follows_health_and_freshness_of_verified_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Probe interval 1 s: reports count for 3 s.
    let (running, agent) = sidecar(dir.path(), 1, &[]).await;
    let addr = running.http_addr();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.trim()), (503, "no report received yet"));

    let mut conn = agent.accept().await;
    assert_eq!(conn.boot_nonce, b"operator nonce 0");
    conn.attest(&agent, &conn.boot_nonce.clone()).await;
    let report = conn.report(now_ms(), &[]);
    conn.send_report(&agent.signer, &report).await;
    assert_eq!(readyz_becomes(&running, 200).await.trim(), "ok");

    let report = conn.report(now_ms(), &[Component::Scheduler]);
    conn.send_report(&agent.signer, &report).await;
    let reason = readyz_becomes(&running, 503).await;
    assert_eq!(
        reason.trim(),
        "not healthy: scheduler (GET /healthz: connection refused)"
    );

    // A healthy report two seconds old verifies, then goes stale a second later.
    let report = conn.report(now_ms() - 2_000, &[]);
    conn.send_report(&agent.signer, &report).await;
    readyz_becomes(&running, 200).await;
    let reason = readyz_becomes(&running, 503).await;
    assert!(reason.contains("ms old, the limit is 3000 ms"), "{reason}");

    let (status, body) = get(addr, "/report").await;
    assert_eq!(status, 200);
    let bundle: EvidenceBundle = serde_json::from_str(&body).expect("bundle json");
    assert_eq!(
        bundle.boot_config_digest.as_deref(),
        Some(conn.digest.as_str())
    );
    let relayed = bundle
        .report
        .expect("report")
        .unverified_report()
        .expect("parses");
    assert_eq!(relayed.sequence, 3);
    let document = bundle.attestation.expect("attestation").document;
    let decoded = decode_unverified(&document).expect("document");
    assert_eq!(decoded.public_key, Some(agent.signer.public_key_der()));
    assert!(bundle.enclave.running);
    assert_eq!(bundle.enclave.launcher, "process");

    let (_, metrics) = get(addr, "/metrics").await;
    assert_eq!(
        metric(&metrics, "nautilus_sidecar_reports_received_total"),
        3
    );
    assert_eq!(
        metric(&metrics, "nautilus_sidecar_attestations_received_total"),
        1
    );
    assert_eq!(metric(&metrics, "nautilus_sidecar_link_up"), 1);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_report_altered_on_the_link_makes_readyz_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(dir.path(), 5, &[]).await;
    let mut conn = agent.accept().await;
    conn.attest(&agent, b"n").await;
    let report = conn.report(now_ms(), &[]);
    let signed = agent.signer.sign(&report);
    // A host between enclave and sidecar flips one byte of the signed bytes.
    let mut altered = signed.clone();
    let middle = altered.report.len() / 2;
    altered.report[middle] ^= 0x01;
    conn.send(Message::Report(altered.clone())).await;
    let reason = readyz_becomes(&running, 503).await;
    assert!(reason.contains("signature does not verify"), "{reason}");

    let (_, body) = get(running.http_addr(), "/report").await;
    let bundle: EvidenceBundle = serde_json::from_str(&body).expect("bundle json");
    let relayed = bundle.report.expect("report");
    assert_eq!(relayed, altered, "/report serves what was relayed");
    assert_ne!(relayed.report, signed.report);
    let (_, metrics) = get(running.http_addr(), "/metrics").await;
    assert_eq!(rejected(&metrics, "bad_signature"), 1);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn reports_signed_by_another_key_or_replayed_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(dir.path(), 5, &[]).await;
    let mut conn = agent.accept().await;
    conn.attest(&agent, b"n").await;
    let first = conn.report(now_ms(), &[]);
    conn.send_report(&agent.signer, &first).await;
    readyz_becomes(&running, 200).await;

    let intruder = ReportSigner::generate();
    let forged = conn.report(now_ms(), &[]);
    conn.send_report(&intruder, &forged).await;
    let reason = readyz_becomes(&running, 503).await;
    assert!(reason.contains("signature does not verify"), "{reason}");

    let next = conn.report(now_ms(), &[]);
    conn.send_report(&agent.signer, &next).await;
    readyz_becomes(&running, 200).await;

    // The same signed report again: a replay.
    conn.send_report(&agent.signer, &next).await;
    let reason = readyz_becomes(&running, 503).await;
    assert!(
        reason.contains("sequence 3 is not after the last accepted 3"),
        "{reason}"
    );

    let (_, metrics) = get(running.http_addr(), "/metrics").await;
    assert_eq!(rejected(&metrics, "bad_signature"), 1);
    assert_eq!(rejected(&metrics, "replayed"), 1);
    assert_eq!(
        metric(&metrics, "nautilus_sidecar_reports_received_total"),
        4
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn attest_sends_a_nonce_refresh_and_the_next_evidence_carries_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(dir.path(), 5, &[]).await;
    let addr = running.http_addr();
    let nonce = b"fresh operator challenge".to_vec();
    let body = format!(
        "{{\"nonce\":\"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(&nonce)
    );
    let mut conn = agent.accept().await;
    eventually(STEP, "link up", || async {
        running.evidence().link_up().then_some(())
    })
    .await;
    let (status, _) = http(addr, "POST", "/attest", body.as_bytes()).await;
    assert_eq!(status, 202);
    match conn.recv().await {
        Message::NonceRefresh(refresh) => assert_eq!(refresh.nonce, nonce),
        other => panic!("expected NonceRefresh, got {:?}", other.kind()),
    }
    conn.attest(&agent, &nonce).await;
    let document = eventually(STEP, "attestation in /report", || async {
        let (_, body) = get(addr, "/report").await;
        let bundle: EvidenceBundle = serde_json::from_str(&body).expect("bundle json");
        bundle.attestation.map(|a| a.document)
    })
    .await;
    assert_eq!(
        decode_unverified(&document).expect("document").nonce,
        Some(nonce.clone())
    );

    for (bad, want) in [
        (&br#"{"nonce":"%%%"}"#[..], 400),
        (br#"{"nonce":"AAAA","extra":1}"#, 400),
        (br#"{"nonce":""}"#, 400),
        (b"not json", 400),
    ] {
        assert_eq!(http(addr, "POST", "/attest", bad).await.0, want);
    }
    let too_long = format!(
        "{{\"nonce\":\"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode([1u8; 513])
    );
    assert_eq!(
        http(addr, "POST", "/attest", too_long.as_bytes()).await.0,
        400
    );
    let huge = format!("{{\"nonce\":\"{}\"}}", "A".repeat(8192));
    assert_eq!(http(addr, "POST", "/attest", huge.as_bytes()).await.0, 413);
    assert_eq!(get(addr, "/attest").await.0, 405);
    assert_eq!(get(addr, "/nothing").await.0, 404);

    // After a reconnect, BootConfig carries the latest nonce.
    drop(conn);
    let conn = agent.accept().await;
    assert_eq!(conn.boot_nonce, nonce);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_unknown_boot_config_field_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut json = serde_json::to_value(boot_config(5)).expect("json");
    json["config"]["health"]["probeEveryMs"] = 100.into();
    let path = dir.path().join("boot-config.json");
    std::fs::write(&path, json.to_string()).expect("write");
    let agent = nautilus_protocol::transport::Endpoint::Unix(dir.path().join("agent.sock"));

    let err = nautilus_sidecar::start(args(&path, &agent, "tcp://127.0.0.1:9", &[]))
        .await
        .expect_err("must refuse");
    assert!(matches!(err, SidecarError::BootConfig { .. }), "{err}");
    assert!(
        err.to_string().contains("unknown field `probeEveryMs`"),
        "{err}"
    );

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_nautilus-sidecar"))
        .args(["--boot-config", &path.display().to_string()])
        .args(["--launcher", "process", "--agent-command", "sleep"])
        .args([
            "--agent",
            &agent.to_string(),
            "--api-upstream",
            "tcp://127.0.0.1:9",
        ])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--egress-listen", "tcp://127.0.0.1:0"])
        .output()
        .await
        .expect("run the binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `probeEveryMs`"), "{stderr}");
}

#[tokio::test]
async fn an_agent_that_ends_or_never_answers_is_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let boot_path = write_boot_config(dir.path(), &boot_config(5));
    let agent = nautilus_protocol::transport::Endpoint::Unix(dir.path().join("nobody.sock"));

    let mut argv = args(&boot_path, &agent, "tcp://127.0.0.1:9", &[]);
    argv.agent_command = Some("sh".into());
    argv.agent_args = vec!["-c".into(), "exit 3".into()];
    let mut running = nautilus_sidecar::start(argv).await.expect("starts");
    let err = tokio::time::timeout(STEP, running.wait())
        .await
        .expect("fatal in time");
    assert!(
        matches!(&err, SidecarError::EnclaveExited { last_exit } if last_exit == "exit status: 3"),
        "{err}"
    );
    let reason = readyz_becomes(&running, 503).await;
    assert_eq!(reason.trim(), "enclave is not running (exit status: 3)");
    running.shutdown().await.expect("shutdown");

    let argv = args(
        &boot_path,
        &agent,
        "tcp://127.0.0.1:9",
        &["--link-timeout-seconds", "1"],
    );
    let mut running = nautilus_sidecar::start(argv).await.expect("starts");
    // Nobody listens: no link, so no nonce refresh either.
    let (status, text) = http(
        running.http_addr(),
        "POST",
        "/attest",
        br#"{"nonce":"AAAA"}"#,
    )
    .await;
    assert_eq!((status, text.trim()), (503, "no link to the agent"));
    let err = tokio::time::timeout(STEP, running.wait())
        .await
        .expect("fatal in time");
    assert!(matches!(err, SidecarError::Link(_)), "{err}");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn sigterm_stops_the_agent_process_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let boot_path = write_boot_config(dir.path(), &boot_config(5));
    let pid_file = dir.path().join("agent.pid");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nautilus-sidecar"))
        .args(["--boot-config", &boot_path.display().to_string()])
        .args([
            "--launcher",
            "process",
            "--agent-command",
            "sh",
            "--agent-arg",
            "-c",
        ])
        .arg("--agent-arg")
        .arg(format!("echo $$ > {}; exec sleep 600", pid_file.display()))
        .args([
            "--agent",
            &format!("unix:{}", dir.path().join("a.sock").display()),
        ])
        .args(["--api-upstream", "tcp://127.0.0.1:9"])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--egress-listen", "tcp://127.0.0.1:0"])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the binary");
    let pid: i32 = eventually(STEP, "agent pid file", || async {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let sidecar_pid = child.id().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(sidecar_pid).expect("pid fits")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .expect("exits in time")
        .expect("status");
    assert!(status.success(), "{status}");
    eventually(Duration::from_secs(5), "agent process gone", || async {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_refused_boot_configuration_is_served_and_not_offered_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(dir.path(), 1, &[]).await;
    let mut conn = agent.accept().await;
    conn.send(Message::BootRefused(BootRefused::new(
        &agent.boot.config,
        "control-plane flags: invalid tls cipher suite \"TLS_FAKE\"",
    )))
    .await;
    conn.expect_closed().await;

    let body = readyz_becomes(&running, 503).await;
    assert!(body.contains("boot configuration refused"), "{body}");
    assert!(body.contains("TLS_FAKE"), "{body}");
    let (status, report) = get(running.http_addr(), "/report").await;
    assert_eq!(status, 200);
    let bundle: EvidenceBundle = serde_json::from_str(&report).expect("bundle");
    assert!(
        bundle
            .boot_refused
            .as_deref()
            .is_some_and(|r| r.contains("TLS_FAKE")),
        "{report}"
    );
    let metrics = get(running.http_addr(), "/metrics").await.1;
    assert_series(
        &metrics,
        "nautilus_sidecar_link_drops_total",
        &[("reason=\"boot_refused\"", 1)],
    );

    // The same configuration would be refused again: the link does not dial back (its backoff
    // would have brought it back within 0.2 s).
    assert!(
        tokio::time::timeout(Duration::from_secs(2), agent.listener_accept())
            .await
            .is_err(),
        "the sidecar offered the refused configuration again"
    );
    assert_eq!(
        get(running.http_addr(), "/healthz").await.0,
        200,
        "still up"
    );
}
