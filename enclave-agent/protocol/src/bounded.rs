//! Bounded listeners: what every server of the agent and the sidecar does against slow, idle
//! and oversized clients.
//!
//! A peer on the same host or network can open connections and then send nothing, or send one
//! byte at a time. Without bounds each such connection holds a task, a file descriptor and
//! buffers for as long as the peer likes. Every listener therefore goes through this module:
//!
//! - [`BoundedListener`] wraps a [`crate::transport::Listener`] with a cap on concurrent connections.
//!   A connection over the cap is closed at once (the peer sees a reset or an immediate EOF),
//!   counted through the [`Observer`] and logged at most once per [`LOG_EVERY`].
//! - Each accepted [`Conn`] fails a read or a write once nothing has moved in either direction
//!   for the idle timeout, so a silent peer is cut even when no other timeout applies.
//! - The handshake, header and body timeouts of [`Limits`] are applied by the protocol on top
//!   (TLS accept, hyper's header timeout, [`read_body`], a frame's body); they report through
//!   [`Tag::timed_out`].
//! - [`read_body`] reads an HTTP request body with a size limit enforced while it streams in
//!   and one deadline for the whole body, copying each chunk so that a client dripping one
//!   byte at a time pins no more than the bytes it sent.
//! - [`LogLimit`] turns a flood of identical log lines into one line per interval with a count
//!   of the lines left out.

use std::fmt;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{info, warn};

use crate::transport::{BoxedStream, Endpoint, Listener};

/// Repeated warnings of one kind are written at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Time for a TLS handshake, or for a byte proxy's client to send its first bytes.
    pub handshake_timeout: Duration,
    /// Time for a request head (HTTP headers, a CONNECT line) once the connection is open.
    pub header_timeout: Duration,
    /// Time for a whole request body, or for the rest of a frame once its header arrived.
    pub body_timeout: Duration,
    /// Time with no byte moving in either direction before the connection is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// Defaults for a request/response API (HTTP, TokenReview): 10 s for each phase, 60 s
    /// idle between requests.
    pub const fn api(max_connections: usize) -> Self {
        Self {
            max_connections,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Which timeout cut a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// TLS handshake, or a byte proxy's first bytes.
    Handshake,
    /// Request head.
    Header,
    /// Request body, or the rest of a frame.
    Body,
    /// Nothing moved.
    Idle,
}

impl Phase {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Header => "header",
            Self::Body => "body",
            Self::Idle => "idle",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A connection was admitted.
    Opened,
    /// An admitted connection ended.
    Closed,
    /// A connection arrived while the cap was reached and was closed at once.
    Refused,
    /// A connection was cut by a timeout.
    TimedOut(Phase),
    /// A request was refused as malformed or oversized; the reason is a short snake_case
    /// label ([`http_refusal`], [`BodyError::reason`], or the listener's own).
    Rejected(&'static str),
}

/// Receives listener events, for metrics. Logging is done here already.
pub trait Observer: Send + Sync + fmt::Debug {
    /// `listener` (a short name such as `http` or `webhook`) saw `event`.
    fn observe(&self, listener: &'static str, event: Event);
}

/// An [`Observer`] that keeps nothing (the logs still say what happened).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn observe(&self, _listener: &'static str, _event: Event) {}
}

/// At most one line per interval; the lines left out are counted and handed to the next.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    /// One line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be written now (`n` lines were left out since the last one),
    /// `None` when this one is to be left out (and counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, suppressed) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new(LOG_EVERY)
    }
}

/// Reports timeouts of one listener's connections; cheap to clone into a connection's task.
#[derive(Debug, Clone)]
pub struct Tag {
    name: &'static str,
    observer: Arc<dyn Observer>,
    log: Arc<LogLimit>,
}

impl Tag {
    /// The listener's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A request from `peer` was refused for `reason` (garbage, oversized): count it, and log
    /// it (rate-limited). Listeners without metrics (the agent's) report through this log.
    pub fn rejected(&self, reason: &'static str, peer: &str) {
        self.observer.observe(self.name, Event::Rejected(reason));
        if let Some(suppressed) = self.log.check() {
            info!(listener = self.name, %peer, reason, suppressed, "request refused");
        }
    }

    /// A connection from `peer` was cut in `phase`: count it, and log it (rate-limited).
    pub fn timed_out(&self, phase: Phase, peer: &str) {
        self.observer.observe(self.name, Event::TimedOut(phase));
        if let Some(suppressed) = self.log.check() {
            info!(listener = self.name, %peer, %phase, suppressed, "connection timed out");
        }
    }
}

/// A listener with a connection cap; every connection it hands out has an idle timeout.
#[derive(Debug)]
pub struct BoundedListener {
    inner: Listener,
    limits: Limits,
    permits: Arc<Semaphore>,
    tag: Tag,
    refusals: LogLimit,
    accept_errors: LogLimit,
}

impl BoundedListener {
    /// Bound `inner` by `limits`; events go to `observer` under `name`.
    pub fn new(
        inner: Listener,
        name: &'static str,
        limits: Limits,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            inner,
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            tag: Tag {
                name,
                observer,
                log: Arc::new(LogLimit::default()),
            },
            refusals: LogLimit::default(),
            accept_errors: LogLimit::default(),
        }
    }

    /// The endpoint bound.
    pub fn endpoint(&self) -> &Endpoint {
        self.inner.endpoint()
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The reporter of this listener's timeouts.
    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// Connections served right now.
    pub fn active(&self) -> usize {
        self.limits
            .max_connections
            .saturating_sub(self.permits.available_permits())
    }

    /// The next connection within the cap. Connections over the cap are closed as they
    /// arrive; accept errors (out of file descriptors, say) are retried after 50 ms.
    pub async fn accept(&self) -> Conn {
        let name = self.tag.name;
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(suppressed) = self.accept_errors.check() {
                        warn!(listener = name, error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                drop(stream);
                self.tag.observer.observe(name, Event::Refused);
                if let Some(suppressed) = self.refusals.check() {
                    warn!(
                        listener = name,
                        %peer,
                        max_connections = self.limits.max_connections,
                        suppressed,
                        "connection cap reached, refusing connections"
                    );
                }
                continue;
            };
            self.tag.observer.observe(name, Event::Opened);
            return Conn::new(stream, peer, &self.limits, self.tag.clone(), permit);
        }
    }
}

/// An admitted connection: the stream, the peer, a slot under the cap (released on drop), and
/// an idle timeout: a read or write fails with [`io::ErrorKind::TimedOut`] once nothing has
/// moved in either direction for that long.
pub struct Conn {
    stream: BoxedStream,
    peer: String,
    body_timeout: Duration,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    expired: bool,
    tag: Tag,
    /// The slot under the cap, given back when the connection is dropped.
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("listener", &self.tag.name)
            .field("peer", &self.peer)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl Conn {
    fn new(
        stream: BoxedStream,
        peer: String,
        limits: &Limits,
        tag: Tag,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let last = Instant::now();
        let idle = limits.idle_timeout;
        Self {
            stream,
            peer,
            body_timeout: limits.body_timeout,
            idle,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + idle)),
            expired: false,
            tag,
            _permit: permit,
        }
    }

    /// The peer's printable address.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// What a request handler on this connection needs: the body deadline, the peer, and the
    /// listener's reporter.
    pub fn client(&self) -> Client {
        Client {
            body_timeout: self.body_timeout,
            tag: self.tag.clone(),
            peer: Arc::from(self.peer.as_str()),
        }
    }

    /// The reporter of this connection's listener.
    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// The connection's first bytes (at most `max`), for a relay that decides by them where
    /// they go. `None` when the peer closed, failed or sent nothing within `within`; a silence
    /// is reported as a [`Phase::Handshake`] timeout.
    pub async fn read_first(&mut self, max: usize, within: Duration) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt as _;
        let mut first = vec![0u8; max];
        match tokio::time::timeout(within, self.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {
                first.truncate(n);
                Some(first)
            }
            Ok(_) => None,
            Err(_) => {
                self.tag.timed_out(Phase::Handshake, &self.peer);
                None
            }
        }
    }

    fn moved(&mut self) {
        self.last = Instant::now();
    }

    /// `true` once the connection has been idle too long (registers the waker otherwise).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last + self.idle;
            if Instant::now() >= deadline {
                self.expired = true;
                self.tag.timed_out(Phase::Idle, &self.peer);
                return true;
            }
            // Something moved since the timer was set: wait from the last movement.
            self.timer.as_mut().reset(deadline);
        }
    }

    fn idle_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no data in either direction for {:?}", self.idle),
        )
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.tag.observer.observe(self.tag.name, Event::Closed);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(this.idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(this.idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(this.idle_error())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_shutdown(cx) {
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(this.idle_error())),
            other => other,
        }
    }
}

/// A connection as its request handlers see it (cheap to clone into each request).
#[derive(Debug, Clone)]
pub struct Client {
    body_timeout: Duration,
    tag: Tag,
    peer: Arc<str>,
}

impl Client {
    /// The peer's printable address.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The listener's reporter.
    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// Report how an HTTP/1 connection served with hyper ended with `error`: a head that did
    /// not arrive in time is a header timeout, a head hyper refused ([`http_refusal`]: it has
    /// answered 400 or 431) a rejected request; anything else is the peer's doing.
    pub fn http_failed(&self, error: &hyper::Error) {
        if error.is_timeout() {
            self.tag.timed_out(Phase::Header, &self.peer);
        } else if let Some(reason) = http_refusal(error) {
            self.tag.rejected(reason, &self.peer);
        }
    }

    /// [`read_body`] within the listener's body timeout; a timeout is reported, and so is a
    /// body refused as too large or unreadable.
    pub async fn read_body<B>(&self, body: B, limit: usize) -> Result<Vec<u8>, BodyError>
    where
        B: http_body::Body + Unpin,
        B::Error: fmt::Display,
    {
        let read = read_body(body, limit, self.body_timeout).await;
        match &read {
            Err(BodyError::TimedOut(_)) => self.tag.timed_out(Phase::Body, &self.peer),
            Err(e) => self.tag.rejected(e.reason(), &self.peer),
            Ok(_) => {}
        }
        read
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body (or its announced length) is over the limit.
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body did not arrive in time.
    #[error("body not received within {0:?}")]
    TimedOut(Duration),
    /// The connection failed while the body streamed in.
    #[error("body could not be read: {0}")]
    Read(String),
}

impl BodyError {
    /// A metric label: `body_too_large`, `body_timeout` or `body_unreadable`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "body_too_large",
            Self::TimedOut(_) => "body_timeout",
            Self::Read(_) => "body_unreadable",
        }
    }

    /// The HTTP status that answers it: 413, 408 or 400. The rest of the body is not read,
    /// so the answer should also close the connection.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::TimedOut(_) => 408,
            Self::Read(_) => 400,
        }
    }
}

/// The refusal an HTTP/1 server connection ended with, as a metric label, or `None` when it
/// ended for another reason (the peer left, a timeout: counted as such). hyper answers a
/// request head it cannot parse with 400 and one over its buffer with 431 before it returns
/// these, so the client has its answer; this names it for the counter.
pub fn http_refusal(error: &hyper::Error) -> Option<&'static str> {
    if error.is_parse_too_large() {
        Some("head_too_large")
    } else if error.is_parse() {
        Some("malformed_head")
    } else {
        None
    }
}

/// Read a whole request body of at most `limit` bytes within `timeout`.
///
/// An announced length over the limit is refused before anything is read; the limit is also
/// enforced chunk by chunk. Each chunk is copied out and released at once: holding hyper's
/// chunks (as `collect` does) would pin one read buffer per chunk, several KiB for a client
/// that sends one byte at a time.
pub async fn read_body<B>(body: B, limit: usize, timeout: Duration) -> Result<Vec<u8>, BodyError>
where
    B: http_body::Body + Unpin,
    B::Error: fmt::Display,
{
    if body.size_hint().lower() > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Err(BodyError::TooLarge { limit });
    }
    let read = async {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            if let Ok(mut data) = frame.into_data() {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    if out.len() + chunk.len() > limit {
                        return Err(BodyError::TooLarge { limit });
                    }
                    out.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::TimedOut(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[derive(Debug, Default)]
    struct Counts(Mutex<Vec<Event>>);

    impl Observer for Counts {
        fn observe(&self, _listener: &'static str, event: Event) {
            self.0.lock().expect("lock").push(event);
        }
    }

    impl Counts {
        fn count(&self, event: Event) -> usize {
            self.0
                .lock()
                .expect("lock")
                .iter()
                .filter(|e| **e == event)
                .count()
        }
    }

    #[test]
    fn log_limit_writes_one_line_per_interval_and_counts_the_rest() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.check_at(t0), Some(0));
        for i in 1..=999 {
            assert_eq!(limit.check_at(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(limit.check_at(t0 + Duration::from_secs(10)), Some(999));
        assert_eq!(limit.check_at(t0 + Duration::from_secs(11)), None);
    }

    async fn listener(limits: Limits, counts: &Arc<Counts>) -> BoundedListener {
        let inner = transport::bind(&"tcp://127.0.0.1:0".parse().expect("endpoint"))
            .await
            .expect("bind");
        BoundedListener::new(
            inner,
            "test",
            limits,
            Arc::clone(counts) as Arc<dyn Observer>,
        )
    }

    fn limits(max_connections: usize, idle_ms: u64) -> Limits {
        Limits {
            max_connections,
            idle_timeout: Duration::from_millis(idle_ms),
            ..Limits::api(max_connections)
        }
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_counted() {
        let counts = Arc::new(Counts::default());
        let listener = Arc::new(listener(limits(2, 60_000), &counts).await);
        let endpoint = listener.endpoint().clone();
        let server = {
            let listener = Arc::clone(&listener);
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let mut conn = listener.accept().await;
                    let _ = conn.write_all(b"hi").await;
                    held.push(conn);
                }
            })
        };
        let mut admitted = Vec::new();
        for _ in 0..2 {
            let mut client = transport::connect(&endpoint).await.expect("connect");
            let mut hi = [0u8; 2];
            client.read_exact(&mut hi).await.expect("greeting");
            admitted.push(client);
        }
        // The third is closed without a greeting.
        let mut third = transport::connect(&endpoint).await.expect("connect");
        let mut buf = [0u8; 2];
        let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(counts.count(Event::Refused), 1);
        assert_eq!(counts.count(Event::Opened), 2);
        assert_eq!(listener.active(), 2);
        server.abort();
    }

    #[tokio::test]
    async fn an_idle_connection_is_cut_and_its_slot_released() {
        let counts = Arc::new(Counts::default());
        let listener = Arc::new(listener(limits(1, 200), &counts).await);
        let endpoint = listener.endpoint().clone();
        let server = {
            let listener = Arc::clone(&listener);
            tokio::spawn(async move {
                loop {
                    let mut conn = listener.accept().await;
                    tokio::spawn(async move {
                        let mut buf = [0u8; 16];
                        // Echo until the peer goes quiet for the idle timeout.
                        while let Ok(n) = conn.read(&mut buf).await {
                            if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            })
        };
        let mut client = transport::connect(&endpoint).await.expect("connect");
        let start = std::time::Instant::now();
        // Activity keeps it open past the idle timeout.
        for _ in 0..5 {
            client.write_all(b"x").await.expect("write");
            let mut x = [0u8; 1];
            client.read_exact(&mut x).await.expect("echo");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("cut by the server");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let elapsed = start.elapsed();
        // Last activity at about 400 ms, idle for 200 ms: not cut at 200 ms, cut at about 600 ms.
        assert!(elapsed >= Duration::from_millis(550), "{elapsed:?}");
        assert_eq!(counts.count(Event::TimedOut(Phase::Idle)), 1);
        // The slot is free again: a second client is served.
        let mut again = transport::connect(&endpoint).await.expect("connect");
        again.write_all(b"y").await.expect("write");
        again.read_exact(&mut buf).await.expect("served");
        assert_eq!(&buf, b"y");
        server.abort();
    }

    struct Drip {
        left: usize,
        announced: u64,
        every: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
    }

    impl http_body::Body for Drip {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let every = self.every;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            self.left -= 1;
            Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"x",
            )))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.announced)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_are_bounded_in_size_and_time() {
        let drip = |left, announced, ms| Drip {
            left,
            announced,
            every: Duration::from_millis(ms),
            sleep: None,
        };
        let body = read_body(drip(4, 4, 1), 4, Duration::from_secs(1))
            .await
            .expect("fits");
        assert_eq!(body, b"xxxx");
        assert!(matches!(
            read_body(drip(5, 5, 1), 4, Duration::from_secs(1)).await,
            Err(BodyError::TooLarge { limit: 4 })
        ));
        // Announced small, sends more: cut while streaming.
        assert!(matches!(
            read_body(drip(5, 0, 1), 4, Duration::from_secs(1)).await,
            Err(BodyError::TooLarge { limit: 4 })
        ));
        // One byte every 20 ms for a 4 000-byte body: cut at the deadline.
        assert!(matches!(
            read_body(drip(4_000, 4_000, 20), 4_096, Duration::from_secs(1)).await,
            Err(BodyError::TimedOut(_))
        ));
    }
}
