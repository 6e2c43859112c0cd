//! Helpers shared by the fuzz targets in `fuzz_targets/` (one binary per parser of untrusted
//! bytes; see README.md, "Fuzzing").
//!
//! Nothing here re-implements a parser: every target calls the production entry point and adds
//! the invariants that "did not panic" cannot show.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// One current-thread Tokio runtime per process, with time and I/O drivers: async entry points
/// run to completion on it within one fuzz iteration (its spawned tasks run during
/// [`block_on`]).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// Run `future` to completion on [`runtime`].
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// A reader that hands out its bytes at most `chunk` at a time, so that a parser sees the
/// partial reads a socket gives it, not one convenient buffer.
#[derive(Debug)]
pub struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl<'a> Chunked<'a> {
    /// `data` in reads of at most `chunk` bytes (at least one).
    pub fn new(data: &'a [u8], chunk: usize) -> Self {
        Self {
            data,
            chunk: chunk.max(1),
        }
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.data
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

/// A Unix socket path private to this process (Unix sockets leave no TIME_WAIT behind, so a
/// fuzz run of millions of connections does not run out of ports).
pub fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("nautilus-fuzz-{}-{name}.sock", std::process::id()))
}

/// Bind a [`nautilus_protocol::bounded::BoundedListener`] named `name` on [`socket_path`]
/// with the HTTP API's limits, as the sidecar binds its own listeners.
pub async fn bounded_listener(
    name: &'static str,
) -> (
    nautilus_protocol::bounded::BoundedListener,
    nautilus_protocol::transport::Endpoint,
) {
    use nautilus_protocol::bounded::{BoundedListener, Limits, Unobserved};
    use nautilus_protocol::transport::{self, Endpoint};
    let endpoint = Endpoint::Unix(socket_path(name));
    let listener = transport::bind(&endpoint)
        .await
        .expect("bind a unix socket");
    let listener = BoundedListener::new(
        listener,
        name,
        Limits::api(64),
        std::sync::Arc::new(Unobserved),
    );
    (listener, endpoint)
}

/// Send `request` on a new connection to `endpoint`, close the sending half, and read the
/// whole answer. Panics when the server has not closed the connection within 5 s: a server
/// that waits for more than a closed client can send is a hang worth a crash report.
pub async fn exchange(
    endpoint: &nautilus_protocol::transport::Endpoint,
    request: &[u8],
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = nautilus_protocol::transport::connect(endpoint)
        .await
        .expect("connect to the server under test");
    let mut answer = Vec::new();
    let talk = async {
        // A server may answer and close before it has read everything: that is not a failure.
        let _ = stream.write_all(request).await;
        let _ = stream.shutdown().await;
        let _ = stream.read_to_end(&mut answer).await;
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), talk)
        .await
        .expect("the server neither answered nor closed within 5 s");
    answer
}

/// One HTTP/1.x response read back from a server under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Header lines, as sent.
    pub headers: Vec<String>,
    /// The body (`Content-Length` bytes; none without that header).
    pub body: Vec<u8>,
}

/// Split `bytes` into the responses a server sent, in order. Panics on anything that is not
/// a well-formed HTTP/1.0 or 1.1 response: the servers under test must never send one.
pub fn responses(mut bytes: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let end = find(bytes, b"\r\n\r\n").expect("a complete response head");
        let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<String> = lines.map(str::to_owned).collect();
        let length = headers
            .iter()
            .find_map(|h| {
                let (name, value) = h.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| {
                    value
                        .trim()
                        .parse::<usize>()
                        .expect("a numeric content-length")
                })
            })
            .unwrap_or(0);
        let body_start = end + 4;
        let body = bytes
            .get(body_start..body_start + length)
            .expect("the whole body")
            .to_vec();
        bytes = &bytes[body_start + length..];
        out.push(Answer {
            status,
            headers,
            body,
        });
    }
    out
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
