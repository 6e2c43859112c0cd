//! Hostile clients against every sidecar listener: slow, idle and oversized clients are cut
//! within the configured timeouts, connections over a cap are refused, and legitimate requests
//! are served meanwhile. Timeouts are set short for the tests (`--client-timeout-seconds`).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nautilus_protocol::transport::{self, Endpoint};
use nautilus_protocol::wire::{Component, Message, PROTOCOL_VERSION};
use nautilus_sidecar::Running;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Slack on top of a timeout for the server to act and the test to notice.
const SLACK: Duration = Duration::from_secs(2);

async fn start(dir: &Path, api_upstream: &str, extra: &[&str]) -> Running {
    let boot_path = write_boot_config(dir, &boot_config(5));
    let agent = Endpoint::Unix(dir.join("no-agent.sock"));
    nautilus_sidecar::start(args(&boot_path, &agent, api_upstream, extra))
        .await
        .expect("sidecar starts")
}

/// Resident memory of this process (the sidecar runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Wait until the server closes `stream` (EOF or reset); everything it sent before.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for {within:?}"),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client that announces a `len`-byte body and sends one byte every `every` until the
/// server answers or closes. Returns the answer and how long the server let it drip.
async fn drip(addr: std::net::SocketAddr, len: usize, every: Duration) -> (String, Duration) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /attest HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let dripping = tokio::spawn(async move {
        for _ in 0..len {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer).await;
    let elapsed = started.elapsed();
    dripping.abort();
    (String::from_utf8_lossy(&answer).into_owned(), elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripping_bodies_are_cut_at_the_body_timeout_without_growing_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start(
        dir.path(),
        "tcp://127.0.0.1:9",
        &["--client-timeout-seconds", "3"],
    )
    .await;
    let addr = running.http_addr();
    let timeout = Duration::from_secs(3);
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let before = rss_kib();

    // Ten clients, one byte every 5 ms each: 600 one-byte reads per client before the cut.
    let clients: Vec<_> = (0..10)
        .map(|_| tokio::spawn(drip(addr, 4_000, Duration::from_millis(5))))
        .collect();
    let peak = Arc::new(Mutex::new(before));
    let watcher = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                {
                    let mut peak = peak.lock().expect("lock");
                    *peak = (*peak).max(rss_kib());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Legitimate requests are served meanwhile.
    let started = Instant::now();
    while started.elapsed() < timeout {
        let (status, _) = get(addr, "/healthz").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for client in clients {
        let (answer, elapsed) = client.await.expect("client");
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "expected 408, got {answer:?}"
        );
        assert!(
            elapsed >= timeout - Duration::from_millis(100) && elapsed <= timeout + SLACK,
            "cut after {elapsed:?}, the body timeout is {timeout:?}"
        );
    }
    watcher.abort();
    let grown_kib = peak.lock().expect("lock").saturating_sub(before);
    assert!(
        grown_kib < 16 * 1024,
        "grew by {grown_kib} KiB under ten dripping clients"
    );

    let (_, metrics) = get(addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "nautilus_sidecar_listener_timeouts_total{listener=\"http\",phase=\"body\"}"
        ),
        10,
        "{metrics}"
    );
    // A body over the limit is refused from its announced length, before it is read.
    let stream_head = "POST /attest HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 5000\r\n\r\n";
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(stream_head.as_bytes())
        .await
        .expect("head");
    let answer = closed_by_server(&mut stream, SLACK).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 413 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_http_connections_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start(
        dir.path(),
        "tcp://127.0.0.1:9",
        &[
            "--client-timeout-seconds",
            "1",
            "--http-max-connections",
            "4",
        ],
    )
    .await;
    let addr = running.http_addr();
    let timeout = Duration::from_secs(1);

    // Three silent clients and one with half a request head: cut at the header timeout.
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: si")
        .await
        .expect("write");
    // The cap is reached: a fifth connection is closed at once, without an answer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut excess = TcpStream::connect(addr).await.expect("connect");
    let refused_after = Instant::now();
    assert!(closed_by_server(&mut excess, SLACK).await.is_empty());
    assert!(refused_after.elapsed() < timeout, "not refused at once");

    idle.push(partial);
    for stream in &mut idle {
        closed_by_server(stream, timeout + SLACK).await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout - Duration::from_millis(100),
        "cut after {elapsed:?}, before the timeout"
    );
    // The slots are free again.
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &metrics,
            "nautilus_sidecar_listener_refused_total{listener=\"http\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "nautilus_sidecar_listener_timeouts_total{listener=\"http\",phase=\"header\"}"
        ),
        4,
        "{metrics}"
    );
    running.shutdown().await.expect("shutdown");
}

/// An echo server; returns its endpoint.
async fn echo_server() -> Endpoint {
    let listener = transport::bind(&"tcp://127.0.0.1:0".parse().expect("endpoint"))
        .await
        .expect("bind echo");
    let bound = listener.endpoint().clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    bound
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxies_cut_silent_and_idle_clients_and_serve_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = echo_server().await;
    let echo_port = match &echo {
        Endpoint::Tcp(addr) => addr.rsplit_once(':').expect("port").1.to_owned(),
        other => panic!("not tcp: {other}"),
    };
    let running = start(
        dir.path(),
        &echo.to_string(),
        &[
            "--client-timeout-seconds",
            "1",
            "--api-idle-timeout-seconds",
            "2",
            "--egress-idle-timeout-seconds",
            "2",
            "--egress-allow",
            &format!("localhost:{echo_port}"),
        ],
    )
    .await;
    let api = running.api_addr().expect("tcp api listener");
    let egress = match running.egress_endpoint() {
        Endpoint::Tcp(addr) => addr.parse::<std::net::SocketAddr>().expect("addr"),
        other => panic!("not tcp: {other}"),
    };

    // API proxy: a client that never sends its ClientHello is cut at the client timeout; one
    // that goes quiet after some traffic at the idle timeout; an active one is served.
    let started = Instant::now();
    let mut silent = TcpStream::connect(api).await.expect("connect");
    let mut quiet = TcpStream::connect(api).await.expect("connect");
    quiet.write_all(b"\x16\x03\x01hello").await.expect("write");
    let mut echoed = [0u8; 8];
    quiet.read_exact(&mut echoed).await.expect("echo");
    let mut active = TcpStream::connect(api).await.expect("connect");
    active.write_all(b"ping").await.expect("write");
    let mut egress_silent = TcpStream::connect(egress).await.expect("connect");
    let mut egress_slow_head = TcpStream::connect(egress).await.expect("connect");
    egress_slow_head
        .write_all(b"CONNECT localhost:")
        .await
        .expect("write");

    closed_by_server(&mut silent, Duration::from_secs(1) + SLACK).await;
    closed_by_server(&mut egress_silent, Duration::from_secs(1) + SLACK).await;
    closed_by_server(&mut egress_slow_head, Duration::from_secs(1) + SLACK).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The active client keeps talking past both timeouts.
    for i in 0..6 {
        if i > 0 {
            active.write_all(b"ping").await.expect("write");
        }
        let mut pong = [0u8; 4];
        tokio::time::timeout(SLACK, active.read_exact(&mut pong))
            .await
            .expect("echo in time")
            .expect("echo");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(active);
    closed_by_server(&mut quiet, SLACK).await;
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Egress targets are compared after strict parsing: forms that only match the allowed
    // `localhost:PORT` after lenient parsing are refused.
    for target in [
        format!("localhost:+{echo_port}"),
        format!("LOCALHOST:0{echo_port}"),
        format!("localhost.:{echo_port}"),
    ] {
        let mut stream = TcpStream::connect(egress).await.expect("connect");
        stream
            .write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let answer = closed_by_server(&mut stream, SLACK).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 400 "),
            "{target}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // The canonical form is tunnelled, and cut once idle.
    let mut tunnel = TcpStream::connect(egress).await.expect("connect");
    tunnel
        .write_all(format!("CONNECT LocalHost:{echo_port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 39];
    tunnel.read_exact(&mut head).await.expect("answer");
    assert!(head.starts_with(b"HTTP/1.1 200 "), "{head:?}");
    let tunnelled = Instant::now();
    closed_by_server(&mut tunnel, Duration::from_secs(2) + SLACK).await;
    assert!(tunnelled.elapsed() >= Duration::from_millis(1900));

    let (_, metrics) = get(running.http_addr(), "/metrics").await;
    assert_series(
        &metrics,
        "nautilus_sidecar_listener_timeouts_total",
        &[
            ("listener=\"api\",phase=\"handshake\"", 1),
            ("listener=\"api\",phase=\"idle\"", 1),
            ("listener=\"egress\",phase=\"header\"", 2),
            ("listener=\"egress\",phase=\"idle\"", 1),
        ],
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_frame_drops_the_link_and_the_link_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(dir.path(), 5, &["--client-timeout-seconds", "1"]).await;

    // Announce a 1,000-byte Report and send 10 bytes of it.
    let mut conn = agent.accept().await;
    let mut partial = PROTOCOL_VERSION.to_be_bytes().to_vec();
    partial.extend([3, 0]);
    partial.extend(1_000u32.to_be_bytes());
    partial.extend([b'{'; 10]);
    let stalled = Instant::now();
    conn.send_raw(&partial).await;
    conn.expect_closed().await;
    let elapsed = stalled.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed <= Duration::from_secs(1) + SLACK,
        "dropped after {elapsed:?}"
    );

    // The link dials again and works.
    let mut conn = agent.accept().await;
    conn.attest(&agent, b"n").await;
    let report = conn.report(now_ms(), &[]);
    conn.send_report(&agent.signer, &report).await;
    readyz_becomes(&running, 200).await;
    let (_, metrics) = get(running.http_addr(), "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "nautilus_sidecar_link_drops_total{reason=\"timeout\"}"
        ),
        1,
        "{metrics}"
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rejected_reports_is_counted_but_logged_once() {
    // `&File` is a writer, so an `Arc<File>` is a MakeWriter: no capture type needed.
    let logs = tempfile::NamedTempFile::new().expect("log file");
    let subscriber = tracing_subscriber::fmt()
        .with_writer(Arc::new(logs.reopen().expect("log file")))
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_global_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(dir.path(), 5, &[]).await;
    let mut conn = agent.accept().await;
    // Reports before any attestation: every one is rejected (one signature, sent 1,000 times:
    // the sidecar rejects them before it checks anything).
    let signed = agent
        .signer
        .sign(&conn.report(now_ms(), &[Component::Scheduler]));
    for _ in 0..1_000 {
        conn.send(Message::Report(signed.clone())).await;
    }
    let metrics = eventually(STEP, "1,000 rejections counted", || async {
        let (_, metrics) = get(running.http_addr(), "/metrics").await;
        (metric(
            &metrics,
            "nautilus_sidecar_reports_rejected_total{reason=\"no_attestation\"}",
        ) == 1_000)
            .then_some(metrics)
    })
    .await;
    assert!(metrics.contains("reports_received_total 1000"), "{metrics}");
    let text = std::fs::read_to_string(logs.path()).expect("log");
    let lines = text
        .lines()
        .filter(|l| l.contains("report rejected"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} 'report rejected' lines for 1,000 rejections:\n{text}"
    );
    running.shutdown().await.expect("shutdown");
}

/// Send `bytes` on a new connection and return what the server sent before it closed (within
/// `SLACK` plus the client timeout: a refusal never hangs).
async fn refused(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it read everything.
    let _ = stream.write_all(bytes).await;
    let got = closed_by_server(&mut stream, Duration::from_secs(1) + SLACK).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn garbage_and_oversized_requests_are_refused_and_counted_on_every_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = echo_server().await;
    let running = start(
        dir.path(),
        &echo.to_string(),
        &["--client-timeout-seconds", "1"],
    )
    .await;
    let http = running.http_addr();
    let api = running.api_addr().expect("tcp api listener");
    let egress = match running.egress_endpoint() {
        Endpoint::Tcp(addr) => addr.parse::<std::net::SocketAddr>().expect("addr"),
        other => panic!("not tcp: {other}"),
    };
    let pad = "a".repeat(64 * 1024);
    let huge_head = |line: &str| format!("{line}\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    let big_body = format!(
        "POST /attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
        1024 * 1024
    );
    let bad_json = "POST /attest HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nnot json!";

    // HTTP API: hyper answers an unparsable head 400 and an oversized one 431; the body
    // reader answers 413 before reading an announced body over 4 KiB; bad JSON is 400.
    for (what, bytes, status) in [
        (
            "garbage",
            b"\x16\x03\x01\x00\xff garbage\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "huge head",
            huge_head("GET /healthz HTTP/1.1").into_bytes(),
            "431",
        ),
        ("huge body", big_body.clone().into_bytes(), "413"),
        ("bad json", bad_json.as_bytes().to_vec(), "400"),
    ] {
        let answer = refused(http, &bytes).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "http {what}: {answer}"
        );
    }
    // The API port's challenge route: the same body limit. Other bytes are the enclave's
    // to judge (TLS ends there): they are relayed, not parsed.
    let big_challenge = big_body.replace("POST /attest", "POST /challenge");
    let answer = refused(api, big_challenge.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "api challenge: {answer}"
    );
    // Egress proxy: 400 for garbage, 431 for a head over 8 KiB.
    for (what, bytes, status) in [
        ("garbage", b"\x00\x01\x02garbage\r\n\r\n".to_vec(), "400"),
        (
            "huge head",
            huge_head("CONNECT localhost:1 HTTP/1.1").into_bytes(),
            "431",
        ),
    ] {
        let answer = refused(egress, &bytes).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "egress {what}: {answer}"
        );
    }

    let metrics = get(http, "/metrics").await.1;
    assert_series(
        &metrics,
        "nautilus_sidecar_rejected_requests_total",
        &[
            ("listener=\"http\",reason=\"malformed_head\"", 1),
            ("listener=\"http\",reason=\"head_too_large\"", 1),
            ("listener=\"http\",reason=\"body_too_large\"", 1),
            ("listener=\"http\",reason=\"malformed_body\"", 1),
            ("listener=\"api\",reason=\"body_too_large\"", 1),
        ],
    );
    let egress_rejected: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("nautilus_sidecar_rejected_requests_total{listener=\"egress\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(egress_rejected, 2, "{metrics}");
    // Still serving.
    assert_eq!(get(http, "/healthz").await.0, 200);
}
