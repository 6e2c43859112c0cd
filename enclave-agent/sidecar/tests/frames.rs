//! Malformed and oversized frames: the link drops with a logged reason and reconnects.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use nautilus_protocol::wire::MAX_FRAME_BODY;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

fn frame(kind: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 1, kind, 0];
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

#[tokio::test]
async fn bad_frames_drop_the_link_with_a_reason_and_it_reconnects() {
    let logs = Capture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init()
        .expect("the only subscriber in this binary");

    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(dir.path(), 5, &[]).await;

    // A report frame whose body is not JSON.
    let mut conn = agent.accept().await;
    conn.send_raw(&frame(3, 8, b"not json")).await;
    conn.expect_closed().await;

    // A header announcing a body over the limit: refused before any allocation.
    let mut conn = agent.accept().await;
    let len = u32::try_from(MAX_FRAME_BODY + 1).expect("fits");
    conn.send_raw(&frame(2, len, b"")).await;
    conn.expect_closed().await;

    // A frame of another protocol version, and a kind the sidecar never receives.
    let mut conn = agent.accept().await;
    conn.send_raw(&[0, 2, 3, 0, 0, 0, 0, 0]).await;
    conn.expect_closed().await;
    let mut conn = agent.accept().await;
    conn.send_raw(&frame(4, 16, br#"{"nonce":"AA=="}"#)).await;
    conn.expect_closed().await;

    // The link still works, and so does the sidecar.
    let mut conn = agent.accept().await;
    conn.attest(&agent, b"n").await;
    let report = conn.report(now_ms(), &[]);
    conn.send_report(&agent.signer, &report).await;
    readyz_becomes(&running, 200).await;

    let (_, metrics) = get(running.http_addr(), "/metrics").await;
    assert_series(
        &metrics,
        "nautilus_sidecar_link_drops_total",
        &[
            ("reason=\"malformed\"", 1),
            ("reason=\"too_large\"", 1),
            ("reason=\"version\"", 1),
            ("reason=\"unexpected\"", 1),
        ],
    );
    assert_eq!(
        metric(&metrics, "nautilus_sidecar_link_reconnects_total"),
        4
    );

    let logs = logs.text();
    for expected in [
        "malformed Report message",
        "exceeds the 65536-byte limit",
        "unsupported protocol version 2",
        "unexpected NonceRefresh message",
    ] {
        assert!(
            logs.lines().any(|l| l.contains("WARN")
                && l.contains("agent link dropped")
                && l.contains(expected)),
            "no warning with {expected:?} in:\n{logs}"
        );
    }
    running.shutdown().await.expect("shutdown");
}
