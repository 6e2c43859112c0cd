//! The sidecar's egress CONNECT proxy (`nautilus_sidecar::proxy::serve_egress`): reading the
//! request head from the socket (8 KiB limit), the request line, and the strict `host:port`
//! parser ([`nautilus_sidecar::HostPort`]) the allowlist is compared in.
//!
//! Input: the bytes the enclave sends on one connection before closing its sending half. The
//! allowlist and the kubelet rule (port 1, loopback networks only) name only closed loopback
//! ports, so an allowed target is dialled and refused (502) and nothing leaves the machine. Invariants beyond "no panic":
//! - the proxy answers and closes (no hang), with at most one well-formed response, and its
//!   status is exactly what `check_connect` decides for the head the input carries (431 when
//!   no head ends within the limit, no answer when the input ends first);
//! - a target that parses is in canonical form: printing and parsing it again is the identity,
//!   and only a target equal to an allowlist entry, or a loopback address on the kubelet port,
//!   is dialled.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use nautilus_fuzz::{block_on, bounded_listener, exchange, find, responses};
use nautilus_protocol::transport::Endpoint;
use nautilus_sidecar::HostPort;
use nautilus_sidecar::metrics::Metrics;
use nautilus_sidecar::proxy::{self, EgressRules, MAX_HEAD_BYTES};

fn allow() -> &'static EgressRules {
    static ALLOW: OnceLock<EgressRules> = OnceLock::new();
    ALLOW.get_or_init(|| EgressRules {
        allow: ["127.0.0.1:1", "[::1]:1", "localhost:1"]
            .iter()
            .map(|entry| entry.parse().expect("allowlist entry"))
            .collect(),
        kubelet_ports: vec![1],
        kubelet_networks: ["127.0.0.0/8", "::1/128"]
            .iter()
            .map(|net| net.parse().expect("network"))
            .collect(),
    })
}

fn server() -> &'static Endpoint {
    static SERVER: OnceLock<Endpoint> = OnceLock::new();
    SERVER.get_or_init(|| {
        block_on(async {
            let (listener, endpoint) = bounded_listener("egress").await;
            let metrics = Arc::new(Metrics::new());
            tokio::spawn(proxy::serve_egress(listener, allow().clone(), metrics));
            endpoint
        })
    })
}

fuzz_target!(|data: &[u8]| {
    // The strict parser on its own, on the request line's target.
    if let Some(line_end) = find(data, b"\r\n")
        && let Ok(line) = std::str::from_utf8(&data[..line_end])
        && let Some(target) = line.split(' ').nth(1)
        && let Ok(parsed) = target.parse::<HostPort>()
    {
        let printed = parsed.to_string();
        assert_eq!(printed.parse::<HostPort>().ok(), Some(parsed.clone()));
    }

    let answer = block_on(exchange(server(), data));
    let answers = responses(&answer);
    assert!(answers.len() <= 1, "more than one answer on one connection");
    let head_end = find(data, b"\r\n\r\n").map(|at| at + 4);
    let expected = match head_end {
        Some(end) if end <= MAX_HEAD_BYTES => {
            Some(match proxy::check_connect(&data[..end], allow()) {
                Ok(target) => {
                    let loopback = target
                        .host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.to_canonical().is_loopback());
                    assert!(
                        allow().allow.contains(&target) || (loopback && target.port == 1),
                        "{target}"
                    );
                    502
                }
                Err(refusal) => refusal.status,
            })
        }
        _ if data.len() > MAX_HEAD_BYTES => Some(431),
        _ => None,
    };
    assert_eq!(answers.first().map(|a| a.status), expected, "{:?}", answers);
});
