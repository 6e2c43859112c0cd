//! Byte proxies: the API server port into the enclave, and the enclave's only way out.
//!
//! - [`serve_api`]: every connection accepted on `--api-listen` is joined byte for byte to a
//!   new connection to `--api-upstream` (the agent's vsock port 6443) once the client's first
//!   bytes (its TLS ClientHello) arrived within the handshake timeout, so a silent client
//!   never costs a connection into the enclave. TLS stays end to end between the client and
//!   the API server in the enclave. The one exception, when given [`Challenges`]: a
//!   connection that starts `POST /challenge ` is a user's challenge, answered by the sidecar
//!   ([`crate::challenge`]) so that the resource's endpoint is all a user needs. A connection
//!   bound for the enclave also spends the connection budget ([`DEFAULT_CONNECTION_RATES`],
//!   flags `--api-connection-rate`, `--api-connection-burst`, `--api-connection-peer-rate`,
//!   `--api-connection-peer-burst`): once its first bytes are there, and before the enclave
//!   is dialled, a connection beyond its peer's or the global rate of new connections is
//!   closed and counted in `connections_rate_limited_total{listener="api",scope}`, so a
//!   handshake flood costs the enclave's API server at most that many TLS handshakes a
//!   second. The global bucket keeps a reserve ([`DEFAULT_CONNECTION_RESERVE`],
//!   `--api-connection-reserve`) that only quiet addresses may take (those below half their own
//!   burst), so addresses flooding at their own rate leave a user's next connection alone.
//!   Connections already joined are never touched, and challenges spend their own budget
//!   instead. One address holds at most [`DEFAULT_PEER_MAX_CONNECTIONS`]
//!   (`--api-peer-max-connections`) connections open on the port, counted from accept, so it
//!   cannot take the listener's cap from everyone else either (`scope="peer_open"`).
//! - [`serve_egress`]: an HTTP/1.1 `CONNECT` proxy for the enclave (which has no network).
//!   Only `CONNECT host:port` to an `--egress-allow` entry (the Sui full node) or to a kubelet
//!   ([`EgressRules`]: an IP literal on an `--egress-allow-kubelet-port`, inside the
//!   `--egress-kubelet-cidr` networks) is tunnelled, compared after strict parsing in
//!   canonical form ([`HostPort`]); another target gets 403, a target that does not parse
//!   strictly 400, another method 405, a request head over [`MAX_HEAD_BYTES`] 431, a head not
//!   complete within the header timeout nothing (the connection is closed). The enclave
//!   verifies the far end's TLS itself: the agent the full node's, the API server each
//!   kubelet's serving certificate.
//!
//! Both listen through a [`BoundedListener`] (connection cap, idle timeout); a refusal is
//! counted in `egress_refused_total{reason}` and logged at most once per
//! [`LOG_EVERY`](nautilus_protocol::bounded::LOG_EVERY).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nautilus_protocol::bounded::{BoundedListener, Conn, LogLimit, Phase};
use nautilus_protocol::budget::{Budget, Rate, Rates, peer_key};
use nautilus_protocol::transport::{self, BoxedStream, Endpoint};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use crate::addr::{Cidr, HostPort};
use crate::challenge::{self, Challenges};
use crate::metrics::Metrics;

/// Largest CONNECT request head read.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Copy buffer per direction and connection.
const BUFFER: usize = 64 * 1024;
/// How long a target (the enclave's API port, an egress target) may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest first read of an API client before the upstream is dialled (a ClientHello).
const FIRST_READ: usize = 4 * 1024;

/// New connections into the enclave a second, all clients together (`--api-connection-rate`):
/// each is a TLS handshake the enclave's API server pays for.
pub const DEFAULT_CONNECTION_RATE: f64 = 100.0;
/// New connections saved up for a burst (`--api-connection-burst`): everyone reconnecting at
/// once after an API server restart.
pub const DEFAULT_CONNECTION_BURST: u32 = 500;
/// New connections a second from one peer address (`--api-connection-peer-rate`).
pub const DEFAULT_CONNECTION_PEER_RATE: f64 = 20.0;
/// New connections one peer address may save up (`--api-connection-peer-burst`).
pub const DEFAULT_CONNECTION_PEER_BURST: u32 = 40;
/// New connections of the global burst kept for quiet addresses (`--api-connection-reserve`):
/// a second of the global rate.
pub const DEFAULT_CONNECTION_RESERVE: u32 = 100;
/// Connections one address may hold open through the API port (`--api-peer-max-connections`):
/// an eighth of the listener's default cap, so one address cannot take the port's connections
/// from everyone else, and far above what a NATed office of kubectl users holds.
pub const DEFAULT_PEER_MAX_CONNECTIONS: usize = 128;
/// The default connection budget of the API port.
pub const DEFAULT_CONNECTION_RATES: Rates = Rates {
    global: Rate::new(DEFAULT_CONNECTION_RATE, DEFAULT_CONNECTION_BURST),
    per_peer: Rate::new(DEFAULT_CONNECTION_PEER_RATE, DEFAULT_CONNECTION_PEER_BURST),
    max_peers: 4096,
    reserve: DEFAULT_CONNECTION_RESERVE,
};

/// Why an egress request was refused: the HTTP answer and a metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// Status text.
    pub text: &'static str,
    /// Metric label.
    pub reason: &'static str,
}

const BAD_REQUEST: Refusal = Refusal {
    status: 400,
    text: "Bad Request",
    reason: "bad_request",
};

const NOT_ALLOWED: Refusal = Refusal {
    status: 403,
    text: "Forbidden",
    reason: "not_allowed",
};

/// Where the egress proxy tunnels to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRules {
    /// Exact `host:port` targets (`--egress-allow`: the Sui full node).
    pub allow: Vec<HostPort>,
    /// Kubelet ports (`--egress-allow-kubelet-port`): an IP literal on one of them is a
    /// kubelet the enclave's API server dials.
    pub kubelet_ports: Vec<u16>,
    /// Networks the kubelets lie in (`--egress-kubelet-cidr`); empty: any address that is not
    /// [`special`].
    pub kubelet_networks: Vec<Cidr>,
}

/// Addresses no kubelet tunnel goes to unless a `--egress-kubelet-cidr` names them: this
/// host's own loopback (a host cluster's kubelet, say), unspecified, link-local (the instance
/// metadata service), multicast and broadcast.
pub fn special(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    }
}

impl EgressRules {
    /// Whether `target` may be tunnelled to; the refusal otherwise.
    pub fn check(&self, target: &HostPort) -> Result<(), Refusal> {
        if self.allow.contains(target) {
            return Ok(());
        }
        // A kubelet: an IP literal (HostPort keeps IPv4 dotted and IPv6 canonical, so a
        // name never parses as one) on a kubelet port. Anything else is simply not allowed.
        let Ok(ip) = target.host.parse::<std::net::IpAddr>() else {
            return Err(NOT_ALLOWED);
        };
        if !self.kubelet_ports.contains(&target.port) {
            return Err(NOT_ALLOWED);
        }
        let ip = ip.to_canonical();
        let inside = if self.kubelet_networks.is_empty() {
            !special(ip)
        } else {
            self.kubelet_networks.iter().any(|net| net.contains(ip))
        };
        if inside {
            Ok(())
        } else {
            Err(Refusal {
                status: 403,
                text: "Forbidden",
                reason: "kubelet_address",
            })
        }
    }
}

/// Parse a complete request head (through the blank line) and decide.
pub fn check_connect(head: &[u8], rules: &EgressRules) -> Result<HostPort, Refusal> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(BAD_REQUEST)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| BAD_REQUEST)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD_REQUEST);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(BAD_REQUEST);
    }
    if method != "CONNECT" {
        return Err(Refusal {
            status: 405,
            text: "Method Not Allowed",
            reason: "method",
        });
    }
    let target: HostPort = target.parse().map_err(|_| BAD_REQUEST)?;
    rules.check(&target)?;
    Ok(target)
}

/// Connections open through the API port, by peer address: at most `max` each.
#[derive(Debug)]
struct OpenPerPeer {
    max: usize,
    /// Only peers with a connection open are in it, so it holds at most the listener's cap.
    open: Mutex<std::collections::HashMap<String, usize>>,
}

/// One counted connection; dropping it gives its place back.
#[derive(Debug)]
struct OpenSlot {
    peers: Arc<OpenPerPeer>,
    key: String,
}

impl OpenPerPeer {
    fn try_open(self: &Arc<Self>, key: &str) -> Option<OpenSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get_mut(key) {
            Some(n) if *n >= self.max => return None,
            Some(n) => *n += 1,
            None => {
                open.insert(key.to_owned(), 1);
            }
        }
        Some(OpenSlot {
            peers: Arc::clone(self),
            key: key.to_owned(),
        })
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The API port's budgets: new connections bound for the enclave, and connections open per
/// peer address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApiBudget {
    /// New connections into the enclave (token buckets).
    pub rates: Rates,
    /// Connections one peer address may hold open (0: no limit of its own).
    pub peer_max_connections: usize,
}

impl Default for ApiBudget {
    fn default() -> Self {
        Self {
            rates: DEFAULT_CONNECTION_RATES,
            peer_max_connections: DEFAULT_PEER_MAX_CONNECTIONS,
        }
    }
}

/// Accept connections on `listener` and join each to `upstream` within `budget` (none:
/// unlimited), until the task is dropped.
pub async fn serve_api(
    listener: BoundedListener,
    upstream: Endpoint,
    metrics: Arc<Metrics>,
    challenges: Option<Arc<Challenges>>,
    budget: Option<ApiBudget>,
) {
    info!(listen = %listener.endpoint(), %upstream, limits = ?listener.limits(), ?budget, "api proxy listening");
    let open = budget.filter(|b| b.peer_max_connections > 0).map(|b| {
        Arc::new(OpenPerPeer {
            max: b.peer_max_connections,
            open: Mutex::default(),
        })
    });
    let budget = budget.map(|b| Arc::new(Mutex::new(Budget::new(b.rates, Instant::now()))));
    let limited = Arc::new(LogLimit::default());
    let upstream = Arc::new(upstream);
    let first_bytes = listener.limits().handshake_timeout;
    let header_timeout = listener.limits().header_timeout;
    let unreachable = Arc::new(LogLimit::default());
    loop {
        let client = listener.accept().await;
        metrics.proxy_connection("api");
        let key = peer_key(client.peer());
        // Before anything is read: one address cannot hold the port's connections.
        let slot = match &open {
            Some(open) => match open.try_open(&key) {
                Some(slot) => Some(slot),
                None => {
                    metrics.rate_limit_connection("api", "peer_open");
                    if let Some(suppressed) = limited.check() {
                        info!(peer = %client.peer(), scope = "peer_open", suppressed, "api connection over its address's open connections: closed");
                    }
                    continue;
                }
            },
            None => None,
        };
        let upstream = Arc::clone(&upstream);
        let metrics = Arc::clone(&metrics);
        let unreachable = Arc::clone(&unreachable);
        let challenges = challenges.clone();
        let budget = budget.clone();
        let limited = Arc::clone(&limited);
        tokio::spawn(async move {
            let _slot = slot;
            let mut client = client;
            let Some(first) = client.read_first(FIRST_READ, first_bytes).await else {
                return;
            };
            if let Some(challenges) = challenges
                && challenge::is_plain(&first)
            {
                challenge::serve_plain(client, first, challenges, header_timeout).await;
                return;
            }
            if let Some(budget) = budget {
                let spent = budget
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .check(&key, Instant::now());
                if let Err(refused) = spent {
                    metrics.rate_limit_connection("api", refused.scope());
                    if let Some(suppressed) = limited.check() {
                        info!(peer = %client.peer(), scope = refused.scope(), suppressed, "api connection over its rate: closed");
                    }
                    return;
                }
            }
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, transport::connect(&upstream))
                .await
                .map_err(|_| "connection attempt timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            match connected {
                Ok(mut target) => {
                    if target.write_all(&first).await.is_ok() {
                        metrics.proxy_bytes("api", first.len() as u64, 0);
                        pipe("api", client, target, &metrics).await;
                    }
                }
                Err(error) => {
                    if let Some(suppressed) = unreachable.check() {
                        warn!(peer = %client.peer(), %error, suppressed, "api upstream unreachable");
                    }
                }
            }
        });
    }
}

async fn pipe(proxy: &'static str, mut client: Conn, mut target: BoxedStream, metrics: &Metrics) {
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut target, BUFFER, BUFFER).await {
        Ok((up, down)) => {
            metrics.proxy_bytes(proxy, up, down);
            debug!(proxy, peer = %client.peer(), up, down, "proxied connection closed");
        }
        Err(e) => debug!(proxy, peer = %client.peer(), error = %e, "proxied connection failed"),
    }
}

/// Accept CONNECT requests on `listener` and tunnel the allowed ones, until the task is
/// dropped.
pub async fn serve_egress(listener: BoundedListener, rules: EgressRules, metrics: Arc<Metrics>) {
    let allowed: Vec<String> = rules.allow.iter().map(ToString::to_string).collect();
    let networks: Vec<String> = rules
        .kubelet_networks
        .iter()
        .map(ToString::to_string)
        .collect();
    info!(
        listen = %listener.endpoint(),
        allow = ?allowed,
        kubelet_ports = ?rules.kubelet_ports,
        kubelet_networks = ?networks,
        limits = ?listener.limits(),
        "egress proxy listening"
    );
    let allow = Arc::new(rules);
    let head_timeout = listener.limits().header_timeout;
    let log = Arc::new(LogLimit::default());
    loop {
        let client = listener.accept().await;
        metrics.proxy_connection("egress");
        let egress = Egress {
            allow: Arc::clone(&allow),
            metrics: Arc::clone(&metrics),
            head_timeout,
            log: Arc::clone(&log),
        };
        tokio::spawn(async move { egress.serve(client).await });
    }
}

/// What one egress connection needs.
struct Egress {
    allow: Arc<EgressRules>,
    metrics: Arc<Metrics>,
    head_timeout: Duration,
    /// One line per interval for refusals and unreachable targets; the metric counts all.
    log: Arc<LogLimit>,
}

/// Read a request head: the bytes through `\r\n\r\n` and whatever followed them.
async fn read_head(client: &mut Conn) -> Result<(Vec<u8>, Vec<u8>), Option<Refusal>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = client.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            let end = searched_from + end + 4;
            if end > MAX_HEAD_BYTES {
                break;
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD_BYTES {
            break;
        }
    }
    Err(Some(Refusal {
        status: 431,
        text: "Request Header Fields Too Large",
        reason: "head_too_large",
    }))
}

impl Egress {
    async fn refuse(&self, client: &mut Conn, refusal: &Refusal) {
        self.metrics.refuse_egress(refusal.reason);
        if let Some(suppressed) = self.log.check() {
            info!(peer = %client.peer(), status = refusal.status, reason = refusal.reason, suppressed, "egress request refused");
        }
        let allow = if refusal.status == 405 {
            "Allow: CONNECT\r\n"
        } else {
            ""
        };
        let answer = format!(
            "HTTP/1.1 {} {}\r\n{allow}Content-Length: 0\r\nConnection: close\r\n\r\n",
            refusal.status, refusal.text
        );
        let _ = client.write_all(answer.as_bytes()).await;
        let _ = client.shutdown().await;
    }

    async fn serve(&self, mut client: Conn) {
        let (head, rest) =
            match tokio::time::timeout(self.head_timeout, read_head(&mut client)).await {
                Ok(Ok(read)) => read,
                Ok(Err(Some(refusal))) => return self.refuse(&mut client, &refusal).await,
                Ok(Err(None)) => {
                    debug!(peer = %client.peer(), "egress client went away before its request");
                    return;
                }
                Err(_) => {
                    client.tag().timed_out(Phase::Header, client.peer());
                    return;
                }
            };
        let target = match check_connect(&head, &self.allow) {
            Ok(target) => target,
            Err(refusal) => return self.refuse(&mut client, &refusal).await,
        };
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await;
        let upstream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                if let Some(suppressed) = self.log.check() {
                    warn!(peer = %client.peer(), %target, error = %e, suppressed, "egress target unreachable");
                }
                let refusal = Refusal {
                    status: 502,
                    text: "Bad Gateway",
                    reason: "unreachable",
                };
                return self.refuse(&mut client, &refusal).await;
            }
            Err(_) => {
                let refusal = Refusal {
                    status: 504,
                    text: "Gateway Timeout",
                    reason: "timeout",
                };
                return self.refuse(&mut client, &refusal).await;
            }
        };
        let _ = upstream.set_nodelay(true);
        let mut upstream: BoxedStream = Box::new(upstream);
        info!(peer = %client.peer(), %target, "egress tunnel opened");
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        // Bytes the client sent after its head (a TLS ClientHello, typically) go first.
        if !rest.is_empty() {
            if upstream.write_all(&rest).await.is_err() {
                return;
            }
            self.metrics.proxy_bytes("egress", rest.len() as u64, 0);
        }
        pipe("egress", client, upstream, &self.metrics).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> EgressRules {
        EgressRules {
            allow: vec!["fullnode.testnet.sui.io:443".parse().expect("entry")],
            kubelet_ports: vec![10250],
            kubelet_networks: Vec::new(),
        }
    }

    fn connect(target: &str) -> Vec<u8> {
        format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
    }

    #[test]
    fn kubelets_are_ip_literals_on_kubelet_ports_outside_special_ranges() {
        let rules = allow();
        for ok in [
            "10.213.0.2:10250",
            "192.168.1.7:10250",
            "[fd00::7]:10250",
            "[2001:db8::1]:10250",
            "fullnode.testnet.sui.io:443",
        ] {
            assert!(check_connect(&connect(ok), &rules).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            // Names are resolved by no one on the host's side for the enclave.
            ("node-1:10250", "not_allowed"),
            ("node-1.example:10250", "not_allowed"),
            // Other ports.
            ("10.213.0.2:10255", "not_allowed"),
            ("10.213.0.2:22", "not_allowed"),
            ("[fd00::7]:443", "not_allowed"),
            // Special addresses.
            ("127.0.0.1:10250", "kubelet_address"),
            ("127.3.4.5:10250", "kubelet_address"),
            ("0.0.0.0:10250", "kubelet_address"),
            ("169.254.169.254:10250", "kubelet_address"),
            ("224.0.0.1:10250", "kubelet_address"),
            ("255.255.255.255:10250", "kubelet_address"),
            ("[::1]:10250", "kubelet_address"),
            ("[::]:10250", "kubelet_address"),
            ("[fe80::1]:10250", "kubelet_address"),
            ("[ff02::1]:10250", "kubelet_address"),
            // IPv4-mapped IPv6 is judged as the IPv4 address it maps to.
            ("[::ffff:127.0.0.1]:10250", "kubelet_address"),
        ] {
            assert_eq!(
                check_connect(&connect(bad), &rules).map_err(|r| r.reason),
                Err(reason),
                "{bad}"
            );
        }
        // Lenient spellings of an address do not parse at all.
        for bad in ["10.213.0.02:10250", "10.213.2:10250", "0x0a.213.0.2:10250"] {
            assert_eq!(
                check_connect(&connect(bad), &rules).map_err(|r| r.status),
                Err(400),
                "{bad}"
            );
        }
    }

    #[test]
    fn configured_networks_replace_the_default() {
        let rules = EgressRules {
            kubelet_networks: vec![
                "10.213.0.0/16".parse().expect("cidr"),
                "127.0.0.0/8".parse().expect("cidr"),
                "fd00:1::/64".parse().expect("cidr"),
            ],
            ..allow()
        };
        for ok in [
            "10.213.255.1:10250",
            "127.0.0.2:10250",
            "[fd00:1::9]:10250",
            "[::ffff:10.213.0.1]:10250",
        ] {
            assert!(check_connect(&connect(ok), &rules).is_ok(), "{ok}");
        }
        for bad in ["10.214.0.1:10250", "192.168.0.1:10250", "[fd00:2::9]:10250"] {
            assert_eq!(
                check_connect(&connect(bad), &rules).map_err(|r| r.reason),
                Err("kubelet_address"),
                "{bad}"
            );
        }
        assert_eq!(
            check_connect(&connect("127.0.0.2:10251"), &rules).map_err(|r| r.reason),
            Err("not_allowed")
        );
    }

    #[test]
    fn only_connect_to_an_allowed_target_passes() {
        let ok = check_connect(
            b"CONNECT FullNode.Testnet.Sui.IO:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            &allow(),
        )
        .expect("allowed");
        assert_eq!(ok.to_string(), "fullnode.testnet.sui.io:443");
        for (head, status) in [
            (
                &b"CONNECT fullnode.testnet.sui.io:444 HTTP/1.1\r\n\r\n"[..],
                403,
            ),
            (b"CONNECT evil.example:443 HTTP/1.1\r\n\r\n", 403),
            (
                b"CONNECT fullnode.testnet.sui.io.evil:443 HTTP/1.1\r\n\r\n",
                403,
            ),
            (
                b"GET http://fullnode.testnet.sui.io:443/ HTTP/1.1\r\n\r\n",
                405,
            ),
            (b"CONNECT fullnode.testnet.sui.io:443\r\n\r\n", 400),
            (
                b"CONNECT  fullnode.testnet.sui.io:443 HTTP/1.1\r\n\r\n",
                400,
            ),
            (
                b"CONNECT user@fullnode.testnet.sui.io:443 HTTP/1.1\r\n\r\n",
                400,
            ),
            (b"CONNECT fullnode.testnet.sui.io:443 SPDY/3\r\n\r\n", 400),
            (b"\xff\xfe\r\n\r\n", 400),
            // Targets that would match only after lenient parsing.
            (
                b"CONNECT fullnode.testnet.sui.io:+443 HTTP/1.1\r\n\r\n",
                400,
            ),
            (
                b"CONNECT FULLNODE.TESTNET.SUI.IO:0443 HTTP/1.1\r\n\r\n",
                400,
            ),
            (
                b"CONNECT fullnode.testnet.sui.io.:443 HTTP/1.1\r\n\r\n",
                400,
            ),
            (b"no line end", 400),
        ] {
            assert_eq!(
                check_connect(head, &allow()).map_err(|r| r.status),
                Err(status),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
