//! The sidecar's HTTP API (`nautilus_sidecar::http::serve`): request heads as hyper parses
//! them with the sidecar's buffer and limits, the routing, and `POST /attest` bodies (size
//! limit as it streams in, JSON, base64, the nonce rule), on a real socket.
//!
//! Input: the bytes a client sends on one connection (any number of pipelined requests)
//! before closing its sending half. Invariants beyond "no panic":
//! - the server always answers and closes (no hang), with well-formed HTTP/1.x responses only;
//! - every nonce queued for the agent is 1 to 512 bytes (the agent would refuse any other and
//!   drop the link), and exactly one is queued per `202 Accepted`;
//! - `202` answers only a `POST /attest`, `200` only a `GET`.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use nautilus_fuzz::{block_on, bounded_listener, exchange, find, responses};
use nautilus_protocol::transport::Endpoint;
use nautilus_protocol::wire::check_nonce;
use nautilus_sidecar::challenge::Challenges;
use nautilus_sidecar::evidence::Evidence;
use nautilus_sidecar::metrics::Metrics;

/// The boot configuration the sidecar holds (a user's challenge is checked against it).
const CONFIG: &str = r#"{
  "cluster": "tenants/alpha",
  "controlPlane": {
    "bindAddress": "127.0.0.1", "httpsPort": 6443, "clusterCIDR": "10.42.0.0/16",
    "serviceCIDR": "10.43.0.0/16", "clusterDNS": "10.43.0.10",
    "dataDir": "/var/lib/nautilus", "encryptSecrets": true,
    "tlsMinVersion": "VersionTLS13", "cipherSuites": [], "logLevel": "info", "logFormat": "json"
  },
  "auth": {
    "suiRpcURL": "https://fullnode.testnet.sui.io:443",
    "stakeType": "0x3::staking_pool::StakedSui", "audience": "nautilus:tenants/alpha",
    "maxTokenLifetimeSeconds": 3600, "stakeCacheTTLSeconds": 60,
    "tiers": [{ "name": "admin", "minStakeMist": 1, "groups": ["system:masters"] }]
  },
  "health": { "probeIntervalSeconds": 5, "startupTimeoutSeconds": 120 }
}"#;
use tokio::sync::mpsc;

struct Server {
    endpoint: Endpoint,
    nonces: Mutex<mpsc::Receiver<Vec<u8>>>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        block_on(async {
            let (evidence, nonces) =
                Evidence::new("0".repeat(64), 30_000, Arc::new(Metrics::new()));
            evidence.set_link_up(true);
            let evidence = Arc::new(evidence);
            // No link task reads users' challenges: each `POST /challenge` with a good body is
            // refused at once (429), so every connection still ends within the bound below.
            let (challenges, inbox) = Challenges::new(
                serde_json::from_str(CONFIG).expect("config"),
                Arc::clone(&evidence),
            );
            drop(inbox);
            let (listener, endpoint) = bounded_listener("http").await;
            tokio::spawn(nautilus_sidecar::http::serve(
                listener,
                evidence,
                Arc::new(challenges),
            ));
            Server {
                endpoint,
                nonces: Mutex::new(nonces),
            }
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let server = server();
    let answer = block_on(exchange(&server.endpoint, data));
    let answers = responses(&answer);
    let mut queued = 0;
    {
        let mut nonces = server.nonces.lock().expect("not poisoned");
        while let Ok(nonce) = nonces.try_recv() {
            assert!(
                check_nonce(&nonce).is_ok(),
                "queued a nonce of {} bytes",
                nonce.len()
            );
            queued += 1;
        }
    }
    let accepted = answers.iter().filter(|a| a.status == 202).count();
    assert_eq!(queued, accepted, "nonces queued vs 202 answers");
    if accepted > 0 {
        assert!(find(data, b"POST /attest").is_some());
    }
    if answers.iter().any(|a| a.status == 200) {
        assert!(find(data, b"GET ").is_some());
    }
});
