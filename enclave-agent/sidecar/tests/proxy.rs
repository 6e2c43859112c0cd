//! The API byte proxy and the egress CONNECT proxy over real sockets.

mod common;

use std::path::Path;

use common::*;
use nautilus_protocol::transport::{self, BoxedStream, Endpoint};
use nautilus_sidecar::Running;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An echo server on `endpoint`; returns the bound endpoint.
async fn echo_server(endpoint: Endpoint) -> Endpoint {
    let listener = transport::bind(&endpoint).await.expect("bind echo");
    let bound = listener.endpoint().clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    bound
}

fn port(endpoint: &Endpoint) -> u16 {
    match endpoint {
        Endpoint::Tcp(addr) => addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("port"),
        other => panic!("not tcp: {other}"),
    }
}

async fn start(dir: &Path, api_upstream: &Endpoint, extra: &[&str]) -> Running {
    let boot_path = write_boot_config(dir, &boot_config(5));
    let agent = Endpoint::Unix(dir.join("no-agent.sock"));
    nautilus_sidecar::start(args(&boot_path, &agent, &api_upstream.to_string(), extra))
        .await
        .expect("sidecar starts")
}

async fn roundtrip(stream: &mut BoxedStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(STEP, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(back, bytes);
}

/// Send a request head (and maybe more) to the egress proxy; return the response head.
async fn connect_request(running: &Running, request: &[u8]) -> (BoxedStream, String) {
    let mut stream = transport::connect(running.egress_endpoint())
        .await
        .expect("connect to egress");
    stream.write_all(request).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, stream.read(&mut byte))
            .await
            .expect("answer in time")
            .expect("read");
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).expect("utf-8 head"))
}

#[tokio::test]
async fn the_egress_proxy_tunnels_only_allowlisted_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = echo_server("tcp://127.0.0.1:0".parse().expect("endpoint")).await;
    let other = echo_server("tcp://127.0.0.1:0".parse().expect("endpoint")).await;
    let allowed = format!("127.0.0.1:{}", port(&echo));
    let allowed_by_name = format!("LocalHost:{}", port(&echo));
    let running = start(
        dir.path(),
        &"tcp://127.0.0.1:9".parse().expect("endpoint"),
        &[
            "--egress-allow",
            &allowed,
            "--egress-allow",
            &allowed_by_name,
        ],
    )
    .await;

    // Allowed, with the first bytes pipelined behind the head.
    let (mut tunnel, head) = connect_request(
        &running,
        format!("CONNECT {allowed} HTTP/1.1\r\nHost: {allowed}\r\n\r\nearly").as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut early = [0u8; 5];
    tunnel
        .read_exact(&mut early)
        .await
        .expect("early bytes echoed");
    assert_eq!(&early, b"early");
    roundtrip(&mut tunnel, b"through the tunnel").await;

    // The host compares case-insensitively.
    let request = format!("CONNECT localhost:{} HTTP/1.1\r\n\r\n", port(&echo));
    let (mut tunnel, head) = connect_request(&running, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    roundtrip(&mut tunnel, b"by name").await;

    for (request, status) in [
        (
            format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", port(&other)),
            "403",
        ),
        (
            format!("CONNECT 127.0.0.2:{} HTTP/1.1\r\n\r\n", port(&echo)),
            "403",
        ),
        (
            format!("GET http://{allowed}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            "405",
        ),
        (
            format!(
                "CONNECT {allowed} HTTP/1.1\r\nX: {}\r\n\r\n",
                "a".repeat(9000)
            ),
            "431",
        ),
        ("HELLO\r\n\r\n".to_owned(), "400"),
    ] {
        let (mut stream, head) = connect_request(&running, request.as_bytes()).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status} expected: {head}"
        );
        if status == "405" {
            assert!(head.contains("Allow: CONNECT"), "{head}");
        }
        // Refused means closed: nothing is tunnelled.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut rest)).await;
        assert!(rest.is_empty());
    }

    let (_, metrics) = get(running.http_addr(), "/metrics").await;
    assert_series(
        &metrics,
        "nautilus_sidecar_egress_refused_total",
        &[
            ("reason=\"not_allowed\"", 2),
            ("reason=\"method\"", 1),
            ("reason=\"head_too_large\"", 1),
            ("reason=\"bad_request\"", 1),
        ],
    );
    assert_eq!(
        metric(
            &metrics,
            "nautilus_sidecar_proxy_connections_total{proxy=\"egress\"}"
        ),
        7
    );
    running.shutdown().await.expect("shutdown");
}

/// Kubelets: IP literals on a kubelet port, inside the configured networks; no host name, no
/// other port, and (by default) no loopback.
#[tokio::test]
async fn the_egress_proxy_tunnels_to_kubelet_addresses_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubelet = echo_server("tcp://127.0.0.2:0".parse().expect("endpoint")).await;
    let other = echo_server("tcp://127.0.0.2:0".parse().expect("endpoint")).await;
    let kubelet_port = port(&kubelet).to_string();
    let running = start(
        dir.path(),
        &"tcp://127.0.0.1:9".parse().expect("endpoint"),
        &[
            "--egress-allow-kubelet-port",
            &kubelet_port,
            "--egress-kubelet-cidr",
            "127.0.0.2/32",
        ],
    )
    .await;
    let target = format!("127.0.0.2:{kubelet_port}");
    let (mut tunnel, head) = connect_request(
        &running,
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    roundtrip(
        &mut tunnel,
        b"\x16\x03\x01 a ClientHello, as far as the proxy knows",
    )
    .await;
    for (request, status) in [
        (
            format!("CONNECT localhost:{kubelet_port} HTTP/1.1\r\n\r\n"),
            "403",
        ),
        (
            format!("CONNECT 127.0.0.2:{} HTTP/1.1\r\n\r\n", port(&other)),
            "403",
        ),
        (
            format!("CONNECT 127.0.0.1:{kubelet_port} HTTP/1.1\r\n\r\n"),
            "403",
        ),
    ] {
        let (_, head) = connect_request(&running, request.as_bytes()).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request}: {head}"
        );
    }
    let (_, metrics) = get(running.http_addr(), "/metrics").await;
    assert_series(
        &metrics,
        "nautilus_sidecar_egress_refused_total",
        &[
            ("reason=\"not_allowed\"", 2),
            ("reason=\"kubelet_address\"", 1),
        ],
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_api_proxy_forwards_bytes_to_a_unix_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = echo_server(Endpoint::Unix(dir.path().join("api.sock"))).await;
    let running = start(dir.path(), &upstream, &[]).await;
    let addr = running.api_addr().expect("tcp api listener");
    let mut client: BoxedStream = Box::new(
        tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the api proxy"),
    );
    let record = b"\x16\x03\x01 a TLS record, as far as the proxy knows";
    roundtrip(&mut client, record).await;
    let bulk: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    roundtrip(&mut client, &bulk).await;
    drop(client);

    let total = (256 * 1024 + record.len()) as u64;
    let metrics = eventually(STEP, "byte counters", || async {
        let (_, metrics) = get(running.http_addr(), "/metrics").await;
        (metric(
            &metrics,
            "nautilus_sidecar_proxy_bytes_total{proxy=\"api\",direction=\"upstream\"}",
        ) == total)
            .then_some(metrics)
    })
    .await;
    assert_eq!(
        metric(
            &metrics,
            "nautilus_sidecar_proxy_bytes_total{proxy=\"api\",direction=\"downstream\"}"
        ),
        total
    );
    assert_eq!(
        metric(
            &metrics,
            "nautilus_sidecar_proxy_connections_total{proxy=\"api\"}"
        ),
        1
    );
    running.shutdown().await.expect("shutdown");
}
