//! Users' challenges: `POST /challenge {"nonce":"<base64>"}` answered with a fresh attestation
//! document for that nonce ([`ChallengeResponse`]), so that `nautilusctl verify` can check the
//! enclave without trusting the host or the operator.
//!
//! The challenge goes to the agent as its own message
//! ([`Challenge`](nautilus_protocol::wire::Challenge)) and the answer comes back as
//! [`ChallengeAnswer`]: the evidence at `/report`
//! (what the operator verifies against *its* nonce) is not replaced, so users checking an
//! enclave never make the operator's check flap.
//!
//! Reachable two ways, both plain HTTP/1.1 without credentials (the answer proves itself):
//! - `POST /challenge` on the HTTP API (`--http-listen`);
//! - on the API port (`--api-listen`, the resource's endpoint and Service): a connection whose
//!   first bytes are `POST /challenge ` is served as HTTP with this one route, so that the
//!   endpoint users already have reaches it in both runtimes and through any port-forward.
//!   Every other connection (TLS for the enclave's API server, anything else) is still joined
//!   byte for byte to the enclave. The prefix must arrive in the first read (`nautilusctl`
//!   writes the whole request at once); a client that trickles it reaches the API server,
//!   which refuses it.
//!
//! Bounded, because every challenge costs the enclave a document (an NSM call on Nitro):
//! - a budget ([`DEFAULT_LIMITS`], flags `--challenge-rate`, `--challenge-burst`,
//!   `--challenge-peer-rate`, `--challenge-peer-burst`): a global token bucket and one per peer
//!   address ([`nautilus_protocol::budget::Budget`]); beyond it 429 with `Retry-After`, before
//!   the agent sees anything, so at most the global rate of challenges reaches the enclave
//!   whatever the number of clients;
//! - at most [`MAX_IN_FLIGHT`] challenges at once (429 beyond), each answered within
//!   [`ANSWER_TIMEOUT`] (504 after), 503 without a link to the agent, 400 on a bad body; request
//!   bodies are the HTTP API's (at most 4 KiB within the body timeout).
//!
//! Each outcome is counted in `challenges_total{outcome}` (`answered`, `peer_rate`,
//! `global_rate`, `busy`, `no_link`, `timeout`). The operator's own re-attestation never
//! competes for this budget: it is `POST /attest` on the HTTP API, a `NonceRefresh` on the
//! control link, which the link sends before any waiting challenge ([`crate::link`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nautilus_protocol::bounded::{Client, Conn};
use nautilus_protocol::budget::{Budget, Rate, Rates, Refused, peer_key};
use nautilus_protocol::wire::{
    AttestationEvidence, ChallengeAnswer, ChallengeRequest, ChallengeResponse, EnclaveConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

use crate::evidence::Evidence;
use crate::respond::{MAX_BODY_BYTES, json, json_body, text};

/// The route, on the HTTP API and on the API port.
pub const PATH: &str = "/challenge";
/// Challenges answered at once; more get 429.
pub const MAX_IN_FLIGHT: usize = 4;
/// Longest wait for the agent's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused plain challenge's connection is drained before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// How a challenge starts on the API port; nothing else there is read by the sidecar.
const PLAIN_PREFIX: &[u8] = b"POST /challenge ";
/// Challenges a second reaching the agent, all peers together (`--challenge-rate`).
pub const DEFAULT_RATE: f64 = 10.0;
/// Challenges saved up for a burst, all peers together (`--challenge-burst`).
pub const DEFAULT_BURST: u32 = 20;
/// Challenges a second from one peer address (`--challenge-peer-rate`): `nautilusctl verify`
/// asks once.
pub const DEFAULT_PEER_RATE: f64 = 1.0;
/// Challenges one peer may save up (`--challenge-peer-burst`).
pub const DEFAULT_PEER_BURST: u32 = 5;
/// Challenges of the global burst kept for quiet addresses (`--challenge-reserve`): a user's
/// `nautilusctl verify` still gets its document while addresses flood at their own rate.
pub const DEFAULT_RESERVE: u32 = 5;
/// Peers whose buckets are remembered at once.
pub const MAX_PEERS: usize = 4096;

/// The default challenge budget (the flags' defaults).
pub const DEFAULT_LIMITS: Rates = Rates {
    global: Rate::new(DEFAULT_RATE, DEFAULT_BURST),
    per_peer: Rate::new(DEFAULT_PEER_RATE, DEFAULT_PEER_BURST),
    max_peers: MAX_PEERS,
    reserve: DEFAULT_RESERVE,
};

/// Why a challenge got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChallengeError {
    /// The control link is down.
    #[error("no link to the agent")]
    NoLink,
    /// [`MAX_IN_FLIGHT`] challenges are being answered.
    #[error("too many challenges in flight, retry later")]
    Busy,
    /// The peer, or everyone together, spent the challenge budget.
    #[error("challenge budget spent ({}), retry in {} s", .0.scope(), .0.retry_after_seconds())]
    Limited(Refused),
    /// The agent did not answer within [`ANSWER_TIMEOUT`] (or the link dropped meanwhile).
    #[error("the enclave did not answer within {0:?}")]
    TimedOut(Duration),
}

impl ChallengeError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NoLink => StatusCode::SERVICE_UNAVAILABLE,
            Self::Busy | Self::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `outcome` label of `challenges_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NoLink => "no_link",
            Self::Busy => "busy",
            Self::Limited(Refused::Peer { .. }) => "peer_rate",
            Self::Limited(Refused::Global { .. }) => "global_rate",
            Self::TimedOut(_) => "timeout",
        }
    }
}

/// A challenge on its way to the agent, and where its answer goes.
#[derive(Debug)]
pub struct Pending {
    /// The user's nonce.
    pub nonce: Vec<u8>,
    reply: oneshot::Sender<AttestationEvidence>,
}

/// The link's end: challenges to send on, then answers to match by nonce.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Pending>,
    waiting: Vec<Pending>,
}

impl Inbox {
    /// The next challenge to send (cancel-safe). `None` once the sidecar shuts down.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        let pending = self.rx.recv().await?;
        let nonce = pending.nonce.clone();
        // Requests that gave up are forgotten; at most MAX_IN_FLIGHT wait at once.
        self.waiting.retain(|p| !p.reply.is_closed());
        self.waiting.push(pending);
        Some(nonce)
    }

    /// Hand `answer` to the request that sent its nonce; an answer nobody waits for is
    /// dropped (and logged): the agent answers only what it was asked, through an untrusted
    /// relay anyway.
    pub fn answered(&mut self, answer: ChallengeAnswer) {
        match self.waiting.iter().position(|p| p.nonce == answer.nonce) {
            Some(index) => {
                let pending = self.waiting.swap_remove(index);
                let _ = pending.reply.send(answer.attestation);
            }
            None => debug!("challenge answer for no waiting request: dropped"),
        }
    }

    /// The link dropped: the challenges sent on it will not be answered.
    pub fn link_dropped(&mut self) {
        self.waiting.clear();
    }
}

/// Where the budget reads the time: the monotonic clock, or a test's hand.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Instant + Send + Sync>);

impl Clock {
    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    fn now(&self) -> Instant {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(Instant::now)
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// The requests' end, shared by both listeners.
#[derive(Debug)]
pub struct Challenges {
    tx: mpsc::Sender<Pending>,
    slots: Semaphore,
    budget: std::sync::Mutex<Budget>,
    limits: Rates,
    clock: Clock,
    config: EnclaveConfig,
    evidence: Arc<Evidence>,
    timeout: Duration,
}

impl Challenges {
    /// Challenges for an enclave booted with `config`, whose link state `evidence` tracks,
    /// within the default budget ([`DEFAULT_LIMITS`]).
    pub fn new(config: EnclaveConfig, evidence: Arc<Evidence>) -> (Self, Inbox) {
        Self::with_limits(config, evidence, DEFAULT_LIMITS)
    }

    /// [`Challenges::new`] within `limits`.
    pub fn with_limits(
        config: EnclaveConfig,
        evidence: Arc<Evidence>,
        limits: Rates,
    ) -> (Self, Inbox) {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let clock = Clock::default();
        let budget = Budget::new(limits, clock.now());
        let challenges = Self {
            tx,
            slots: Semaphore::new(MAX_IN_FLIGHT),
            budget: std::sync::Mutex::new(budget),
            limits,
            clock,
            config,
            evidence,
            timeout: ANSWER_TIMEOUT,
        };
        let inbox = Inbox {
            rx,
            waiting: Vec::with_capacity(MAX_IN_FLIGHT),
        };
        (challenges, inbox)
    }

    /// These challenges with the budget on `clock` (full at its present reading).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.budget = std::sync::Mutex::new(Budget::new(self.limits, clock.now()));
        self.clock = clock;
        self
    }

    /// Ask the agent for a document answering `nonce` (already checked: 1 to 512 bytes) on
    /// behalf of `peer` (the client's address as the listener saw it), within the budget.
    pub async fn ask(
        &self,
        peer: &str,
        nonce: Vec<u8>,
    ) -> Result<ChallengeResponse, ChallengeError> {
        self.admit(peer)?;
        self.ask_admitted(nonce).await
    }

    /// Charge `peer`'s challenge to the budget, before anything else of the request is read; a
    /// refusal is counted here.
    pub fn admit(&self, peer: &str) -> Result<(), ChallengeError> {
        let spent = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(&peer_key(peer), self.clock.now());
        spent.map_err(|refused| {
            let e = ChallengeError::Limited(refused);
            self.evidence.metrics().challenge(e.outcome());
            e
        })
    }

    /// [`Challenges::ask`] for a request [`Challenges::admit`] let through; every outcome
    /// is counted.
    async fn ask_admitted(&self, nonce: Vec<u8>) -> Result<ChallengeResponse, ChallengeError> {
        let result = self.relay(nonce).await;
        let outcome = match &result {
            Ok(_) => "answered",
            Err(e) => e.outcome(),
        };
        self.evidence.metrics().challenge(outcome);
        result
    }

    async fn relay(&self, nonce: Vec<u8>) -> Result<ChallengeResponse, ChallengeError> {
        let _slot = self.slots.try_acquire().map_err(|_| ChallengeError::Busy)?;
        if !self.evidence.link_up() {
            return Err(ChallengeError::NoLink);
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Pending { nonce, reply })
            .map_err(|_| ChallengeError::Busy)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(attestation)) => Ok(ChallengeResponse {
                config: self.config.clone(),
                attestation,
                report: self.evidence.bundle().report,
            }),
            // The link dropped the challenge, or the agent never answered it.
            Ok(Err(_)) | Err(_) => Err(ChallengeError::TimedOut(self.timeout)),
        }
    }
}

/// The answer to a challenge the budget refused: 429, `Retry-After`, and the connection closed
/// (its body, if any, is not read).
fn limited(e: &ChallengeError) -> Response<Full<Bytes>> {
    let mut response = text(e.status(), e.to_string());
    if let ChallengeError::Limited(refused) = e {
        response.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from(refused.retry_after_seconds()),
        );
    }
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `POST /challenge`: the budget first, so a refused request costs no body read.
pub async fn handle(
    challenges: &Challenges,
    client: &Client,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Err(e) = challenges.admit(client.peer()) {
        return limited(&e);
    }
    answer(challenges, client, request).await
}

/// `POST /challenge` for a request the budget let through already.
async fn answer(
    challenges: &Challenges,
    client: &Client,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let nonce = match json_body::<ChallengeRequest>(
        client,
        request,
        "{\"nonce\":\"<base64 of 1 to 512 bytes>\"}",
    )
    .await
    {
        Ok(request) => request.nonce,
        Err(refusal) => return refusal,
    };
    match challenges.ask_admitted(nonce).await {
        Ok(answer) => json(&answer),
        Err(e) => limited(&e),
    }
}

/// Whether an API-port connection whose first bytes are `first` is a challenge (for
/// [`serve_plain`]) rather than traffic for the enclave's API server. A TLS ClientHello starts
/// with `0x16`, so it never matches.
pub fn is_plain(first: &[u8]) -> bool {
    first.starts_with(PLAIN_PREFIX)
}

/// Serve HTTP with the one route [`PATH`] on an API-port connection whose first bytes,
/// already read, are `first`.
pub async fn serve_plain(
    mut conn: Conn,
    first: Vec<u8>,
    challenges: Arc<Challenges>,
    header_timeout: Duration,
) {
    // The budget before any HTTP: a flood's refusal is one short write, no parser, no body.
    if let Err(e) = challenges.admit(conn.peer()) {
        refuse_plain(&mut conn, &e).await;
        return;
    }
    let client = conn.client();
    let service_client = client.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let challenges = Arc::clone(&challenges);
        let client = service_client.clone();
        async move {
            let response = match (request.method(), request.uri().path()) {
                // Admitted above, before any HTTP; the connection serves this one request.
                (&Method::POST, PATH) => answer(&challenges, &client, request).await,
                // Only a later request on the same connection can get here.
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "plain HTTP serves only POST /challenge",
                ),
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let stream = Rewound {
        first,
        read: 0,
        inner: conn,
    };
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(16 * 1024)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        client.http_failed(&e);
        debug!(peer = %client.peer(), error = %e, "plain http on the api port ended with an error");
    }
}

/// Answer 429 with `Retry-After` on a plain API-port connection and close it, reading (and
/// dropping) what the client still sends for at most [`LINGER`], so that its unread request
/// does not turn the close into a reset before it read the answer.
async fn refuse_plain(conn: &mut Conn, e: &ChallengeError) {
    let retry_after = match e {
        ChallengeError::Limited(refused) => refused.retry_after_seconds(),
        _ => 1,
    };
    let body = e.to_string();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nretry-after: {retry_after}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}\n",
        body.len() + 1
    );
    if conn.write_all(answer.as_bytes()).await.is_err() || conn.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        let mut drained = 0;
        while drained < MAX_BODY_BYTES * 2 {
            match conn.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// A stream that yields `first` (bytes already read from `inner`) before the rest of `inner`.
struct Rewound<S> {
    first: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.read < this.first.len() {
            let rest = &this.first[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_json() -> serde_json::Value {
        serde_json::json!({
            "cluster": "tenants/alpha",
            "controlPlane": {
                "bindAddress": "127.0.0.1", "httpsPort": 6443, "clusterCIDR": "10.42.0.0/16",
                "serviceCIDR": "10.43.0.0/16", "clusterDNS": "10.43.0.10",
                "dataDir": "/var/lib/nautilus", "encryptSecrets": true,
                "tlsMinVersion": "VersionTLS13", "cipherSuites": [], "logLevel": "info",
                "logFormat": "json"
            },
            "auth": {
                "suiRpcURL": "https://fullnode.testnet.sui.io:443",
                "stakeType": "0x3::staking_pool::StakedSui", "audience": "nautilus:tenants/alpha",
                "maxTokenLifetimeSeconds": 3600, "stakeCacheTTLSeconds": 60,
                "tiers": [{ "name": "admin", "minStakeMist": 1, "groups": ["system:masters"] }]
            },
            "health": { "probeIntervalSeconds": 5, "startupTimeoutSeconds": 120 }
        })
    }

    #[test]
    fn only_a_challenge_head_is_answered_by_the_sidecar() {
        assert!(!is_plain(&[0x16, 0x03, 0x01]));
        assert!(is_plain(b"POST /challenge HTTP/1.1\r\n"));
        for other in [
            &b""[..],
            b"ping",
            b"GET / HTTP/1.1\r\n",
            b"POST /challenges HTTP/1.1",
        ] {
            assert!(!is_plain(other), "{other:?}");
        }
    }

    #[tokio::test]
    async fn answers_reach_their_request_and_strays_are_dropped() {
        let metrics = Arc::default();
        let (evidence, _nonces) = Evidence::new("d".into(), 1_000, metrics);
        let evidence = Arc::new(evidence);
        let config: EnclaveConfig = serde_json::from_value(config_json()).expect("config");
        let (challenges, mut inbox) = Challenges::new(config.clone(), Arc::clone(&evidence));
        assert_eq!(
            challenges.ask("10.0.0.1:1", vec![1]).await,
            Err(ChallengeError::NoLink)
        );
        evidence.set_link_up(true);
        let challenges = Arc::new(challenges);
        let asking = tokio::spawn({
            let challenges = Arc::clone(&challenges);
            async move { challenges.ask("10.0.0.1:2", vec![7; 32]).await }
        });
        assert_eq!(inbox.next().await, Some(vec![7; 32]));
        let attestation = AttestationEvidence {
            document: vec![1, 2, 3],
            serving_ca_pem: "ca".into(),
            simulated_root_pem: None,
        };
        // Another nonce's answer does not satisfy this request.
        inbox.answered(ChallengeAnswer {
            nonce: vec![8; 32],
            attestation: attestation.clone(),
        });
        inbox.answered(ChallengeAnswer {
            nonce: vec![7; 32],
            attestation: attestation.clone(),
        });
        let answer = asking.await.expect("task").expect("answered");
        assert_eq!(answer.attestation, attestation);
        assert_eq!(answer.config, config);
    }

    #[tokio::test]
    async fn a_dropped_link_or_a_silent_agent_is_a_timeout_and_slots_are_bounded() {
        let (evidence, _nonces) = Evidence::new("d".into(), 1_000, Arc::default());
        let evidence = Arc::new(evidence);
        evidence.set_link_up(true);
        let config: EnclaveConfig = serde_json::from_value(config_json()).expect("config");
        let (mut challenges, mut inbox) = Challenges::new(config, evidence);
        challenges.timeout = Duration::from_millis(300);
        let challenges = Arc::new(challenges);
        let mut asks = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            let challenges = Arc::clone(&challenges);
            asks.push(tokio::spawn(async move {
                challenges
                    .ask(
                        &format!("10.0.1.{i}:1"),
                        vec![u8::try_from(i).unwrap_or(0) + 1],
                    )
                    .await
            }));
        }
        tokio::task::yield_now().await;
        for _ in 0..MAX_IN_FLIGHT {
            assert!(inbox.next().await.is_some());
        }
        assert_eq!(
            challenges.ask("10.0.2.1:1", vec![99]).await,
            Err(ChallengeError::Busy)
        );
        inbox.link_dropped();
        for ask in asks {
            assert_eq!(
                ask.await.expect("task"),
                Err(ChallengeError::TimedOut(Duration::from_millis(300)))
            );
        }
    }

    #[test]
    fn one_address_gets_its_burst_then_waits_its_rate_and_others_are_not_affected() {
        let t0 = Instant::now();
        let now = Arc::new(std::sync::Mutex::new(t0));
        let clock = Clock::new({
            let now = Arc::clone(&now);
            move || {
                *now.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            }
        });
        let (evidence, _nonces) = Evidence::new("d".into(), 1_000, Arc::default());
        let evidence = Arc::new(evidence);
        let config: EnclaveConfig = serde_json::from_value(config_json()).expect("config");
        let limits = Rates {
            per_peer: Rate::new(0.001, 3),
            ..DEFAULT_LIMITS
        };
        let (challenges, _inbox) = Challenges::with_limits(config, Arc::clone(&evidence), limits);
        let challenges = challenges.with_clock(clock);
        let admitted: Vec<_> = (0..10).map(|_| challenges.admit("10.0.0.1:4000")).collect();
        assert!(admitted[..3].iter().all(Result::is_ok), "{admitted:?}");
        // 1,000 s at 0.001/s for the next token, said exactly: the clock did not move.
        for refused in &admitted[3..] {
            let Err(ChallengeError::Limited(refused)) = refused else {
                panic!("{refused:?}");
            };
            assert_eq!(
                (refused.scope(), refused.retry_after_seconds()),
                ("peer", 1000)
            );
        }
        // 400 s later, 600 s are left; another port of the same address is the same peer.
        *now.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = t0 + Duration::from_secs(400);
        match challenges.admit("10.0.0.1:4001") {
            Err(ChallengeError::Limited(refused)) => assert_eq!(refused.retry_after_seconds(), 600),
            other => panic!("{other:?}"),
        }
        // Another address has its own burst.
        assert_eq!(challenges.admit("10.0.0.2:4000"), Ok(()));
        let metrics = evidence.metrics().encode();
        assert!(
            metrics.contains("nautilus_sidecar_challenges_total{outcome=\"peer_rate\"} 8"),
            "{metrics}"
        );
    }
}
