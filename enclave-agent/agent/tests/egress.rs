//! Sui RPC from the enclave: through an HTTP CONNECT proxy on a Unix socket (as the sidecar's
//! vsock egress port), TLS with the full node verified inside, against the fixture node.

use std::sync::Arc;

use nautilus_agent::egress::{self, EgressConnector, Target};
use nautilus_agent::stake::{ReadStake as _, StakeConfig, SuiStakeReader};
use nautilus_protocol::transport::Endpoint;
use nautilus_sui_fixture::{Chain, TestCa, serve_tls};
use sui_sdk_types::Address;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// A CONNECT proxy on a Unix socket that allows only `allowed`; reports each request line.
async fn connect_proxy(
    dir: &std::path::Path,
    allowed: String,
) -> (Endpoint, mpsc::UnboundedReceiver<String>) {
    let path = dir.join("egress.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let allowed = allowed.clone();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let line = text.lines().next().unwrap_or_default().to_owned();
                let _ = seen_tx.send(line.clone());
                let target = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                if target != allowed {
                    let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                    return;
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (Endpoint::Unix(path), seen)
}

fn reader(proxy: Option<Endpoint>, url: &str, ca_pem: Option<&str>) -> SuiStakeReader {
    let target = Target::parse(url).expect("url");
    let tls = Arc::new(egress::node_tls_config(ca_pem).expect("tls"));
    let connector = EgressConnector::new(proxy, target.clone(), tls);
    let client =
        egress::sui_client(&target, connector, std::time::Duration::from_secs(5)).expect("client");
    SuiStakeReader::new(
        client,
        StakeConfig {
            expected_chain_id: Some(nautilus_sui_fixture::CHAIN_ID.into()),
            ..StakeConfig::default()
        },
    )
    .expect("reader")
}

#[tokio::test]
async fn stake_is_read_through_the_proxy_with_tls_verified_inside() {
    let owner = Address::new([7; 32]);
    let chain = Arc::new(Chain::default().with_stake(owner, 40).with_stake(owner, 2));
    let ca = TestCa::generate();
    let node = serve_tls(Arc::clone(&chain), &ca).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (proxy, mut seen) = connect_proxy(dir.path(), format!("localhost:{}", node.port())).await;
    let url = format!("https://localhost:{}", node.port());

    let stake = reader(Some(proxy.clone()), &url, Some(&ca.ca_pem))
        .stake_of(owner)
        .await
        .expect("stake through the tunnel");
    assert_eq!(stake, 42);
    assert_eq!(
        seen.recv().await.expect("a CONNECT"),
        format!("CONNECT localhost:{} HTTP/1.1", node.port())
    );

    // Without the fixture's CA the node is not trusted (webpki roots only): fail closed.
    let err = reader(Some(proxy.clone()), &url, None)
        .stake_of(owner)
        .await
        .expect_err("unknown CA");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // A host the proxy does not allow.
    let other = format!("https://127.0.0.1:{}", node.port());
    let err = reader(Some(proxy), &other, Some(&ca.ca_pem))
        .stake_of(owner)
        .await
        .expect_err("refused by the proxy");
    assert!(err.to_string().contains("403 Forbidden"), "{err}");

    // Direct (development, `--egress-proxy none`) still verifies TLS.
    let stake = reader(None, &url, Some(&ca.ca_pem))
        .stake_of(owner)
        .await
        .expect("direct");
    assert_eq!(stake, 42);
}
