//! Sealed state through the real sidecar: the snapshots a (fake) agent streams out are stored
//! under `--state-dir/snapshots` with retention, and the newest is offered back, whole, with
//! the relayed credentials, on the next connection. A stream cut by a dropped link stores
//! nothing; a refused key is offered again later, a rejected snapshot never. A stopping sidecar
//! asks the agent to stop and stores the last snapshot it hands over before closing the link.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::*;
use nautilus_protocol::sealed::{FORMAT_VERSION, Sealer, SnapshotHeader};
use nautilus_protocol::wire::{
    BootRefused, EvidenceBundle, KmsConfig, Message, RefusalKind, SnapshotChunk, StateConfig,
    chunks_of,
};

fn sealed(sequence: u64, body: usize) -> Vec<u8> {
    let header = SnapshotHeader {
        format_version: FORMAT_VERSION,
        resource_uid: "uid-1".into(),
        sequence,
        taken_unix_ms: now_ms(),
        pcrs: [(0u8, "00".repeat(48))].into(),
        ca_generation: 0,
        distribution: "kubernetes".into(),
        etcd_revision: 7,
        kms_key_id: "alias/test".into(),
        ciphertext_blob: vec![1; 100],
        salt: vec![2; 32],
    };
    let mut sealer = Sealer::new(&header, &[3; 32], Vec::new()).expect("sealer");
    sealer.write_all(&vec![4; body]).expect("write");
    sealer.finish().expect("finish").0
}

async fn start(dir: &std::path::Path, retain: u32) -> (nautilus_sidecar::Running, FakeAgent) {
    start_with(dir, retain, &[]).await
}

async fn start_with(
    dir: &std::path::Path,
    retain: u32,
    extra: &[&str],
) -> (nautilus_sidecar::Running, FakeAgent) {
    let mut agent = FakeAgent::bind(dir, 5).await;
    agent.boot.config.state = Some(StateConfig {
        resource_uid: "uid-1".into(),
        restore_from_uids: vec![],
        accepted_measurements: vec![],
        backup_interval_seconds: 60,
        retain,
        ca_generation: 0,
        kms: KmsConfig {
            key_id: "alias/test".into(),
            region: "local".into(),
            endpoint: None,
        },
    });
    let credentials = dir.join("aws-credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIATEST\naws_secret_access_key = c2VjcmV0\n",
    )
    .expect("credentials");
    let boot_path = write_boot_config(dir, &agent.boot);
    let state_dir = dir.join("state");
    let (state_dir, credentials) = (
        state_dir.display().to_string(),
        credentials.display().to_string(),
    );
    let mut argv = vec![
        "--state-dir",
        &state_dir,
        "--aws-credentials-file",
        &credentials,
    ];
    argv.extend_from_slice(extra);
    let running = nautilus_sidecar::start(args(
        &boot_path,
        agent.endpoint(),
        "tcp://127.0.0.1:9",
        &argv,
    ))
    .await
    .expect("sidecar starts");
    (running, agent)
}

async fn stored(running: &nautilus_sidecar::Running, count: u64) {
    let addr = running.http_addr();
    eventually(STEP, "snapshots stored", || async move {
        let (_, metrics) = get(addr, "/metrics").await;
        (metric(&metrics, "nautilus_sidecar_snapshots_received_total") >= count).then_some(())
    })
    .await;
}

#[tokio::test]
async fn snapshots_are_stored_and_the_newest_offered_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = start(dir.path(), 2).await;

    // First connection: nothing stored yet, the credentials relayed.
    let mut conn = agent.accept().await;
    match conn.recv().await {
        Message::StateOffer(offer) => {
            assert_eq!(offer.snapshot, None);
            let credentials = offer.credentials.expect("credentials relayed");
            assert_eq!(credentials.access_key_id, "AKIATEST");
            assert_eq!(credentials.session_token, None);
        }
        other => panic!("expected StateOffer, got {:?}", other.kind()),
    }
    // The agent seals three snapshots; the sidecar keeps two.
    let snapshots: Vec<Vec<u8>> = (1..=3).map(|s| sealed(s, 150_000 + s as usize)).collect();
    for (i, bytes) in snapshots.iter().enumerate() {
        for chunk in chunks_of(i as u64 + 1, bytes) {
            conn.send(Message::SnapshotChunk(chunk)).await;
        }
    }
    stored(&running, 3).await;
    let dir_listing = |d: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d.join("state/snapshots"))
            .expect("snapshots dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        dir_listing(dir.path()),
        vec![
            "snapshot-00000000000000000002.sealed",
            "snapshot-00000000000000000003.sealed"
        ]
    );
    // A fourth, cut by a dropped link: not stored.
    let cut = sealed(4, 200_000);
    let chunks = chunks_of(4, &cut);
    conn.send(Message::SnapshotChunk(chunks[0].clone())).await;
    drop(conn);

    // The next connection is offered the newest (3), whole.
    let mut conn = agent.accept().await;
    let offer = match conn.recv().await {
        Message::StateOffer(offer) => offer.snapshot.expect("a snapshot offered"),
        other => panic!("expected StateOffer, got {:?}", other.kind()),
    };
    assert_eq!(offer.sequence, 3);
    assert_eq!(offer.bytes, snapshots[2].len() as u64);
    let mut received = Vec::new();
    loop {
        match conn.recv().await {
            Message::SnapshotChunk(SnapshotChunk {
                sequence,
                offset,
                data,
                last,
            }) => {
                assert_eq!((sequence, offset), (3, received.len() as u64));
                received.extend_from_slice(&data);
                if last {
                    break;
                }
            }
            other => panic!("expected SnapshotChunk, got {:?}", other.kind()),
        }
    }
    assert_eq!(received, snapshots[2], "offered byte for byte as stored");
    assert_eq!(
        dir_listing(dir.path()).len(),
        2,
        "the cut stream left nothing"
    );
    let (_, metrics) = get(running.http_addr(), "/metrics").await;
    assert_eq!(metric(&metrics, "nautilus_sidecar_snapshots_stored"), 2);
    assert_eq!(
        metric(&metrics, "nautilus_sidecar_last_snapshot_sequence"),
        3
    );
    assert_eq!(
        metric(&metrics, "nautilus_sidecar_snapshots_offered_total"),
        1
    );

    // Not a sealed snapshot: refused and counted, nothing stored.
    for chunk in chunks_of(9, &[0u8; 1000]) {
        conn.send(Message::SnapshotChunk(chunk)).await;
    }
    let addr = running.http_addr();
    eventually(STEP, "a refused stream", || async move {
        let (_, metrics) = get(addr, "/metrics").await;
        (metric(
            &metrics,
            "nautilus_sidecar_snapshots_refused_total{reason=\"header\"}",
        ) == 1)
            .then_some(())
    })
    .await;
    assert_eq!(dir_listing(dir.path()).len(), 2);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_refused_key_is_offered_again_a_rejected_snapshot_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = start(dir.path(), 3).await;
    let mut conn = agent.accept().await;
    assert!(matches!(conn.recv().await, Message::StateOffer(_)));
    let refusal = |kind| {
        Message::BootRefused(
            BootRefused::new(&agent.boot.config, "kms: AccessDeniedException").of_kind(kind),
        )
    };
    conn.send(refusal(RefusalKind::KeyRefused)).await;
    let addr = running.http_addr();
    let bundle: EvidenceBundle = eventually(STEP, "the refusal relayed", || async move {
        let (_, body) = get(addr, "/report").await;
        let bundle: EvidenceBundle = serde_json::from_str(&body).expect("bundle");
        bundle.boot_refused.is_some().then_some(bundle)
    })
    .await;
    assert_eq!(bundle.boot_refused_kind, Some(RefusalKind::KeyRefused));
    // Offered again after a while (30 s), not at once.
    let again = tokio::time::timeout(Duration::from_secs(2), agent.listener_accept()).await;
    assert!(again.is_err(), "not offered again at once");
    running.shutdown().await.expect("shutdown");

    // A rejected snapshot: the same configuration is never offered again.
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = start(dir.path(), 3).await;
    let mut conn = agent.accept().await;
    assert!(matches!(conn.recv().await, Message::StateOffer(_)));
    conn.send(Message::BootRefused(
        BootRefused::new(
            &agent.boot.config,
            "snapshot 3 refused: chunk 0 does not authenticate",
        )
        .of_kind(RefusalKind::SnapshotRejected),
    ))
    .await;
    let addr = running.http_addr();
    let bundle: EvidenceBundle = eventually(STEP, "the refusal relayed", || async move {
        let (_, body) = get(addr, "/report").await;
        let bundle: EvidenceBundle = serde_json::from_str(&body).expect("bundle");
        bundle.boot_refused.is_some().then_some(bundle)
    })
    .await;
    assert_eq!(
        bundle.boot_refused_kind,
        Some(RefusalKind::SnapshotRejected)
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_stopping_sidecar_asks_the_agent_to_stop_and_keeps_its_last_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = start_with(dir.path(), 3, &["--stop-grace-seconds", "30"]).await;
    let mut conn = agent.accept().await;
    assert!(matches!(conn.recv().await, Message::StateOffer(_)));

    // SIGTERM's path: the sidecar sends Stop and keeps the link until the agent closes it.
    let stopping = tokio::spawn(running.shutdown());
    match conn.recv().await {
        Message::Stop(_) => {}
        other => panic!("expected Stop, got {:?}", other.kind()),
    }
    let last = sealed(7, 100_000);
    for chunk in chunks_of(7, &last) {
        conn.send(Message::SnapshotChunk(chunk)).await;
    }
    drop(conn);
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the stop ends once the agent closed the link, not at the grace")
        .expect("join")
        .expect("shutdown");
    let kept = dir
        .path()
        .join("state/snapshots/snapshot-00000000000000000007.sealed");
    assert_eq!(
        std::fs::read(&kept).expect("the last snapshot is stored"),
        last
    );
}

#[tokio::test]
async fn an_agent_that_does_not_stop_is_stopped_after_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = start_with(dir.path(), 3, &["--stop-grace-seconds", "1"]).await;
    let mut conn = agent.accept().await;
    assert!(matches!(conn.recv().await, Message::StateOffer(_)));
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(running.shutdown());
    assert!(matches!(conn.recv().await, Message::Stop(_)));
    // The fake agent keeps the link open and never answers.
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the grace bounds the stop")
        .expect("join")
        .expect("shutdown");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "stopped before the grace: {:?}",
        started.elapsed()
    );
    drop(conn);
}
