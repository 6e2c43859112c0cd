//! The budgets of what anyone can reach, through the real sidecar over loopback: a challenge
//! flood from many addresses reaches the agent at the configured rate, one address at its own
//! rate, the operator's nonce refresh goes out first; new connections into the enclave are
//! bounded the same way. Clients bind their own loopback addresses (127.0.0.2, …), which
//! Linux routes like 127.0.0.1, so each is a peer of its own.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use nautilus_protocol::wire::{Message, read_message};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn body(nonce: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "nonce": base64::engine::general_purpose::STANDARD.encode(nonce)
    }))
    .expect("json")
}

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The first bytes of a TLS handshake (a record header and a few bytes of a ClientHello).
const HELLO: [u8; 10] = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];

/// The enclave's API port as the proxy sees it: counts the connections it accepts and reads
/// each until the client goes. Its address, the count, and the task to abort.
async fn counting_enclave_port() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("upstream");
    let addr = upstream.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn({
        let accepted = Arc::clone(&accepted);
        async move {
            loop {
                let Ok((mut stream, _)) = upstream.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink).await;
                });
            }
        }
    });
    (addr, accepted, task)
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    socket.connect(addr).await.expect("connect")
}

/// One POST from `source`; the status and the `Retry-After` value, if any.
async fn post_from(
    source: IpAddr,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
) -> (u16, Option<u64>) {
    let exchange = async {
        let mut stream = connect_from(source, addr).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).await.expect("write");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        response
    };
    let response = tokio::time::timeout(STEP, exchange)
        .await
        .expect("answer in time");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry_after = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().parse().ok())?
    });
    (status, retry_after)
}

/// A status and its `Retry-After`.
type Answer = (u16, Option<u64>);

/// What the fake agent saw while it answered every challenge.
#[derive(Debug, Default)]
struct Seen {
    challenges: Vec<Instant>,
    refreshes: Vec<(Instant, Vec<u8>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_flood_reaches_the_agent_at_the_budget_and_the_operators_refresh_goes_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(
        dir.path(),
        5,
        &[
            "--challenge-rate",
            "5",
            "--challenge-burst",
            "4",
            "--challenge-peer-rate",
            "2",
            "--challenge-peer-burst",
            "2",
        ],
    )
    .await;
    let http_addr = running.http_addr();
    let api_addr = running.api_addr().expect("api proxy on tcp");
    let mut conn = agent.accept().await;
    let boot_nonce = conn.boot_nonce.clone();
    conn.attest(&agent, &boot_nonce).await;

    // The fake agent answers every challenge it gets (a real simulated document each) and
    // notes when each frame arrived, until told to stop.
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            let message = tokio::select! {
                _ = &mut stop => break,
                message = read_message(&mut conn.stream) => message.expect("frame"),
            };
            match message {
                Message::Challenge(challenge) => {
                    seen.challenges.push(Instant::now());
                    conn.answer(&agent, &challenge.nonce).await;
                }
                Message::NonceRefresh(refresh) => {
                    seen.refreshes.push((Instant::now(), refresh.nonce));
                }
                other => panic!("unexpected {:?}", other.kind()),
            }
        }
        seen
    });

    // 16 addresses, each asking back to back for 3 s, half on the HTTP API, half on the API
    // port: 32/s of peer budget against 5/s global.
    let started = Instant::now();
    let flood_for = Duration::from_secs(3);
    let statuses: Arc<std::sync::Mutex<Vec<Answer>>> = Arc::default();
    let mut flooders = Vec::new();
    for peer in 0..16u8 {
        let statuses = Arc::clone(&statuses);
        let addr = if peer % 2 == 0 { http_addr } else { api_addr };
        flooders.push(tokio::spawn(async move {
            let mut i = 0u32;
            while started.elapsed() < flood_for {
                i += 1;
                let nonce = format!("peer {peer} nonce {i}");
                let answer = post_from(
                    loopback(10 + peer),
                    addr,
                    "/challenge",
                    &body(nonce.as_bytes()),
                )
                .await;
                statuses.lock().expect("lock").push(answer);
            }
        }));
    }
    // The operator re-attests in the middle of the flood.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refresh_nonce = b"operator nonce".to_vec();
    let asked = Instant::now();
    let (status, _) = post_from(loopback(1), http_addr, "/attest", &body(&refresh_nonce)).await;
    assert_eq!(status, 202);
    for flooder in flooders {
        flooder.await.expect("flooder");
    }
    let elapsed = started.elapsed();
    let metrics = get(http_addr, "/metrics").await.1;
    let _ = stop_tx.send(());
    let seen = agent_task.await.expect("agent task");

    // At most the burst plus the rate reached the agent, and the budget did let that through.
    let ceiling = 4 + (5.0 * elapsed.as_secs_f64()).ceil() as usize;
    let reached = seen.challenges.len();
    assert!(
        reached <= ceiling,
        "{reached} challenges reached the agent in {elapsed:?}"
    );
    assert!(
        reached >= 4, // the burst: the fake agent, making real documents on a loaded machine, may be slower than the rate
        "only {reached} challenges reached the agent in {elapsed:?}"
    );
    let statuses = std::mem::take(&mut *statuses.lock().expect("lock"));
    let answered = statuses.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(
        answered, reached,
        "every challenge let through was answered"
    );
    assert!(limited.len() > 10 * reached, "{} refused", limited.len());
    // A refusal of the budget says when to retry; only a full set of slots (`busy`) does not.
    let busy = metric(
        &metrics,
        "nautilus_sidecar_challenges_total{outcome=\"busy\"}",
    );
    let without_retry = limited.iter().filter(|(_, retry)| retry.is_none()).count();
    assert_eq!(without_retry as u64, busy, "{metrics}");
    assert!(
        limited
            .iter()
            .all(|(_, retry)| matches!(retry, None | Some(1..=3))),
        "{limited:?}"
    );
    assert_eq!(statuses.len(), answered + limited.len(), "only 200 and 429");
    assert_series(
        &metrics,
        "nautilus_sidecar_challenges_total",
        &[("outcome=\"answered\"", reached as u64)],
    );
    let refused = metric(
        &metrics,
        "nautilus_sidecar_challenges_total{outcome=\"global_rate\"}",
    ) + metric(
        &metrics,
        "nautilus_sidecar_challenges_total{outcome=\"peer_rate\"}",
    ) + busy;
    assert_eq!(refused, limited.len() as u64, "{metrics}");

    // The operator's refresh reached the agent at once, flood or not.
    let [(arrived, nonce)] = seen.refreshes.as_slice() else {
        panic!("expected one refresh, got {:?}", seen.refreshes.len());
    };
    assert_eq!(nonce, &refresh_nonce);
    // It waited at most behind the challenges already in flight when it was asked for
    // (MAX_IN_FLIGHT, each a document the agent makes in turn), never behind the flood.
    let ahead = seen
        .challenges
        .iter()
        .filter(|at| **at > asked && *at < arrived)
        .count();
    assert!(
        ahead <= nautilus_sidecar::challenge::MAX_IN_FLIGHT,
        "{ahead} challenges reached the agent between the operator's request and its refresh"
    );
    let delay = arrived.duration_since(asked);
    assert!(delay < Duration::from_secs(5), "refresh took {delay:?}");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn one_address_gets_its_own_rate_and_leaves_the_rest_to_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(
        dir.path(),
        5,
        &[
            "--challenge-peer-rate",
            "0.001",
            "--challenge-peer-burst",
            "3",
        ],
    )
    .await;
    let addr = running.http_addr();
    let mut conn = agent.accept().await;
    let boot_nonce = conn.boot_nonce.clone();
    conn.attest(&agent, &boot_nonce).await;
    let answering = conn.answer_every_challenge(agent);
    let mut answers = Vec::new();
    for i in 0..10u8 {
        answers.push(post_from(loopback(20), addr, "/challenge", &body(&[i + 1])).await);
    }
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 3, "{answers:?}");
    // The refusal says how long the peer must wait: up to 1,000 s at 0.001/s, less the time
    // the first answers took (exactly, on a clock stepped by hand, in the unit test
    // `challenge::tests::one_address_gets_its_burst_then_waits_its_rate_and_others_are_not_affected`).
    assert!(
        answers[3..]
            .iter()
            .all(|a| matches!(a, (429, Some(900..=1000)))),
        "{answers:?}"
    );
    // Another address is not affected.
    assert_eq!(
        post_from(loopback(21), addr, "/challenge", &body(b"other"))
            .await
            .0,
        200
    );
    let metrics = get(addr, "/metrics").await.1;
    assert_series(
        &metrics,
        "nautilus_sidecar_challenges_total",
        &[("outcome=\"answered\"", 4), ("outcome=\"peer_rate\"", 7)],
    );
    answering.abort();
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_into_the_enclave_are_bounded_per_address_and_in_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (upstream_addr, accepted, upstream_task) = counting_enclave_port().await;
    let agent = FakeAgent::bind(dir.path(), 5).await;
    let boot_path = write_boot_config(dir.path(), &agent.boot);
    let running = nautilus_sidecar::start(args(
        &boot_path,
        agent.endpoint(),
        &format!("tcp://{upstream_addr}"),
        &[
            "--api-connection-rate",
            "10",
            "--api-connection-burst",
            "10",
            "--api-connection-peer-rate",
            "0.001",
            "--api-connection-peer-burst",
            "3",
            "--api-connection-reserve",
            "0",
        ],
    ))
    .await
    .expect("sidecar starts");
    let api_addr = running.api_addr().expect("api proxy on tcp");

    // A handshake's first bytes, from `source`; whether the proxy kept the connection.
    async fn hello(source: IpAddr, addr: SocketAddr) -> tokio::net::TcpStream {
        let mut stream = connect_from(source, addr).await;
        stream.write_all(&HELLO).await.expect("write");
        stream
    }

    // One address: its burst of 3, no more.
    let t0 = Instant::now();
    let mut kept = Vec::new();
    for _ in 0..10 {
        kept.push(hello(loopback(30), api_addr).await);
    }
    let reached = || accepted.load(Ordering::SeqCst);
    eventually(STEP, "three connections upstream", || async {
        (reached() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(reached(), 3);

    // 40 addresses at once: the global burst (10, 3 spent, refilled meanwhile) and its rate
    // since the start are what passes.
    for peer in 0..40u8 {
        kept.push(hello(loopback(40 + peer), api_addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ceiling = 10 + (10.0 * t0.elapsed().as_secs_f64()).ceil() as usize;
    assert!((10..=ceiling).contains(&reached()), "{} reached", reached());
    let metrics = get(running.http_addr(), "/metrics").await.1;
    let peer = metric(
        &metrics,
        "nautilus_sidecar_connections_rate_limited_total{listener=\"api\",scope=\"peer\"}",
    );
    let global = metric(
        &metrics,
        "nautilus_sidecar_connections_rate_limited_total{listener=\"api\",scope=\"global\"}",
    );
    assert_eq!(peer, 7, "{metrics}");
    assert_eq!(peer + global + reached() as u64, 50, "{metrics}");
    drop(kept);
    upstream_task.abort();
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_address_connects_while_many_flood_at_their_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (upstream_addr, accepted, upstream_task) = counting_enclave_port().await;
    let agent = FakeAgent::bind(dir.path(), 5).await;
    let boot_path = write_boot_config(dir.path(), &agent.boot);
    let running = nautilus_sidecar::start(args(
        &boot_path,
        agent.endpoint(),
        &format!("tcp://{upstream_addr}"),
        &[
            "--api-connection-rate",
            "5",
            "--api-connection-burst",
            "10",
            "--api-connection-reserve",
            "5",
            "--api-connection-peer-rate",
            "1",
            "--api-connection-peer-burst",
            "2",
        ],
    ))
    .await
    .expect("sidecar starts");
    let api_addr = running.api_addr().expect("api proxy on tcp");

    // 16 addresses, each opening a connection every 10 ms (100 times its rate, and far above it
    // however slow a loaded machine makes the loop), until told.
    let t0 = Instant::now();
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut floods = Vec::new();
    for peer in 0..16u8 {
        let flooding = Arc::clone(&flooding);
        floods.push(tokio::spawn(async move {
            while flooding.load(Ordering::SeqCst) {
                let mut stream = connect_from(loopback(60 + peer), api_addr).await;
                let _ = stream.write_all(&HELLO).await;
                drop(stream);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    // A second for the flood to turn busy and the reserve to refill behind it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The quiet address: 5 connections, 1.3 s apart (below its own rate). Each is joined: the
    // proxy closes a refused connection at once, and a joined one only when the client goes.
    for i in 0..5 {
        let mut stream = connect_from(loopback(90), api_addr).await;
        stream.write_all(&HELLO).await.expect("write");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await;
        if read.is_ok() {
            let metrics = get(running.http_addr(), "/metrics").await.1;
            panic!("connection {i} was closed: {read:?}\n{metrics}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    flooding.store(false, Ordering::SeqCst);
    for flood in floods {
        flood.await.expect("flood task");
    }
    // The flood was refused, and everyone together stayed within the global budget.
    let metrics = get(running.http_addr(), "/metrics").await.1;
    let global = metric(
        &metrics,
        "nautilus_sidecar_connections_rate_limited_total{listener=\"api\",scope=\"global\"}",
    );
    assert!(global > 0, "{metrics}");
    let reached = accepted.load(Ordering::SeqCst);
    let ceiling = 10 + (5.0 * t0.elapsed().as_secs_f64()).ceil() as usize;
    assert!(reached <= ceiling, "{reached} reached, at most {ceiling}");
    upstream_task.abort();
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_open_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = FakeAgent::bind(dir.path(), 5).await;
    let boot_path = write_boot_config(dir.path(), &agent.boot);
    // Nothing listens upstream: the connections stay in their first-bytes wait, counted.
    let running = nautilus_sidecar::start(args(
        &boot_path,
        agent.endpoint(),
        "tcp://127.0.0.1:9",
        &["--api-peer-max-connections", "2"],
    ))
    .await
    .expect("sidecar starts");
    let api_addr = running.api_addr().expect("api proxy on tcp");
    /// Whether the proxy closed `stream` within 500 ms.
    async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }
    let mut first = connect_from(loopback(100), api_addr).await;
    let mut second = connect_from(loopback(100), api_addr).await;
    let mut third = connect_from(loopback(100), api_addr).await;
    assert!(
        closed(&mut third).await,
        "a third open connection is closed"
    );
    assert!(!closed(&mut first).await && !closed(&mut second).await);
    // Another address is not affected; a place given back is taken again.
    let mut other = connect_from(loopback(101), api_addr).await;
    assert!(!closed(&mut other).await);
    drop(first);
    let mut again = None;
    for _ in 0..20 {
        let mut stream = connect_from(loopback(100), api_addr).await;
        if !closed(&mut stream).await {
            again = Some(stream);
            break;
        }
    }
    assert!(
        again.is_some(),
        "the place of a closed connection is given back"
    );
    let metrics = get(running.http_addr(), "/metrics").await.1;
    assert!(
        metric(
            &metrics,
            "nautilus_sidecar_connections_rate_limited_total{listener=\"api\",scope=\"peer_open\"}"
        ) >= 1,
        "{metrics}"
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_challenge_on_the_api_port_spends_one_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, agent) = sidecar(
        dir.path(),
        5,
        &[
            "--challenge-peer-rate",
            "0.001",
            "--challenge-peer-burst",
            "1",
        ],
    )
    .await;
    let api_addr = running.api_addr().expect("api proxy on tcp");
    let mut conn = agent.accept().await;
    let boot_nonce = conn.boot_nonce.clone();
    conn.attest(&agent, &boot_nonce).await;
    let answering = conn.answer_every_challenge(agent);
    // The budget is charged once, before any HTTP, not again by the route behind it.
    let first = post_from(loopback(120), api_addr, "/challenge", &body(b"one")).await;
    assert_eq!(first.0, 200, "{first:?}");
    let second = post_from(loopback(120), api_addr, "/challenge", &body(b"two")).await;
    assert!(matches!(second, (429, Some(900..=1000))), "{second:?}");
    answering.abort();
    running.shutdown().await.expect("shutdown");
}
