//! The two network steps of `verify`, both through the resource's endpoint and both untrusted
//! until checked: the challenge (plain HTTP, answered by the sidecar on the API port with the
//! enclave's document) and the TLS handshake whose certificate must chain to the attested CA.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::wire::{ChallengeRequest, ChallengeResponse};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use super::check::Refusal;

/// Longest wait for a connection, and for each read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest challenge answer read (a document is at most 16 KiB, the configuration a few).
const MAX_ANSWER_BYTES: u64 = 256 * 1024;

/// `https://host[:port][/path]`, as the resource's status or the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as given.
    pub url: String,
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port (443 when absent).
    pub port: u16,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let bad = || format!("endpoint {url:?} is not an https://host[:port] url");
        let rest = url.strip_prefix("https://").ok_or_else(bad)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 443,
            Some(port) => port.parse().map_err(|_| bad())?,
        };
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl Endpoint {
    fn connect(&self) -> Result<TcpStream, String> {
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        let mut last = format!("{} resolves to no address", self.host);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Ok(stream) => {
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = format!("cannot connect to {addr}: {e}"),
            }
        }
        Err(last)
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Ask the enclave behind `endpoint` for a document answering `nonce`.
pub fn challenge(endpoint: &Endpoint, nonce: &[u8]) -> Result<ChallengeResponse, Refusal> {
    // The sidecar's challenge budget answers 429 with Retry-After: wait as asked, a few times,
    // when the wait is short (a user's repeated verifies, a burst of joins); otherwise say so.
    for _ in 1..CHALLENGE_ATTEMPTS {
        match challenge_once(endpoint, nonce)? {
            Answer::Budget(Some(seconds)) if seconds <= MAX_RETRY_AFTER_SECONDS => {
                std::thread::sleep(std::time::Duration::from_secs(seconds.max(1)));
            }
            Answer::Budget(_) => break,
            Answer::Done(result) => return *result,
        }
    }
    match challenge_once(endpoint, nonce)? {
        Answer::Done(result) => *result,
        Answer::Budget(after) => Err(Refusal::Unreachable(format!(
            "challenge: {} answered 429: the challenge budget is spent{}",
            endpoint.url,
            after.map_or_else(String::new, |s| format!(", retry in {s} s"))
        ))),
    }
}

/// Attempts of [`challenge`] while the sidecar answers 429.
const CHALLENGE_ATTEMPTS: u32 = 4;
/// Longest `Retry-After` [`challenge`] waits for.
const MAX_RETRY_AFTER_SECONDS: u64 = 10;

/// One challenge's outcome: an answer (or a refusal), or the budget's 429 and its Retry-After.
enum Answer {
    Done(Box<Result<ChallengeResponse, Refusal>>),
    Budget(Option<u64>),
}

fn challenge_once(endpoint: &Endpoint, nonce: &[u8]) -> Result<Answer, Refusal> {
    let unreachable = |what: String| Refusal::Unreachable(format!("challenge: {what}"));
    let body = serde_json::to_vec(&ChallengeRequest {
        nonce: nonce.to_vec(),
    })
    .map_err(|e| unreachable(e.to_string()))?;
    // Head and body in one write: the sidecar recognises a challenge by its first bytes.
    let mut request = format!(
        "POST /challenge HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.host_header(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut stream = endpoint.connect().map_err(unreachable)?;
    stream
        .write_all(&request)
        .map_err(|e| unreachable(format!("sending: {e}")))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut answer)
        .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
    if answer.len() as u64 > MAX_ANSWER_BYTES {
        return Err(Refusal::Malformed(format!(
            "longer than {MAX_ANSWER_BYTES} bytes"
        )));
    }
    let (status, body) = parse_response(&answer).map_err(Refusal::Malformed)?;
    if status == 429 {
        return Ok(Answer::Budget(retry_after(&answer)));
    }
    if status != 200 {
        let text = String::from_utf8_lossy(body);
        return Err(unreachable(format!(
            "{} answered {status}: {}",
            endpoint.url,
            text.trim().chars().take(300).collect::<String>()
        )));
    }
    Ok(Answer::Done(Box::new(
        serde_json::from_slice(body).map_err(|e| Refusal::Malformed(e.to_string())),
    )))
}

/// The `Retry-After` seconds of a response head, if it has a number there.
fn retry_after(bytes: &[u8]) -> Option<u64> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The status and body of an HTTP/1.1 response read to its end (`Connection: close`).
fn parse_response(bytes: &[u8]) -> Result<(u16, &[u8]), String> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete http response head")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "http head is not utf-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split(' ').collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| format!("bad status line {status_line:?}"))?,
        _ => return Err(format!("bad status line {status_line:?}")),
    };
    let body = &bytes[end + 4..];
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            let length: usize = value
                .trim()
                .parse()
                .map_err(|_| format!("bad content-length {value:?}"))?;
            if length != body.len() {
                return Err(format!(
                    "content-length {length} but {} bytes arrived",
                    body.len()
                ));
            }
        }
    }
    Ok((status, body))
}

/// Complete a TLS handshake with `endpoint` trusting `ca_pem` only, the name checked against
/// the endpoint's host (what kubectl will check with the kubeconfig written).
pub fn check_certificate(endpoint: &Endpoint, ca_pem: &str) -> Result<(), Refusal> {
    let refuse = |what: String| Refusal::Certificate(what);
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| refuse(format!("the attested CA is not a PEM certificate: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| refuse(format!("the attested CA is unusable: {e}")))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| refuse(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|e| refuse(format!("{}: {e}", endpoint.host)))?;
    let mut tls =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| refuse(e.to_string()))?;
    let mut stream = endpoint
        .connect()
        .map_err(|e| Refusal::Unreachable(format!("tls: {e}")))?;
    while tls.is_handshaking() {
        // rustls' errors (UnknownIssuer, NotValidForName, …) come back as I/O errors.
        tls.complete_io(&mut stream)
            .map_err(|e| refuse(format!("{}: {e}", endpoint.url)))?;
    }
    tls.send_close_notify();
    let _ = tls.complete_io(&mut stream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_strictly() {
        let e: Endpoint = "https://127.0.0.1:6443".parse().expect("parse");
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 6443));
        let e: Endpoint = "https://demo.team-a.svc".parse().expect("parse");
        assert_eq!((e.host.as_str(), e.port), ("demo.team-a.svc", 443));
        let e: Endpoint = "https://[::1]:8443/".parse().expect("parse");
        assert_eq!(
            (e.host.as_str(), e.port, e.host_header().as_str()),
            ("::1", 8443, "[::1]:8443")
        );
        for bad in [
            "http://127.0.0.1:6443",
            "https://",
            "https://user@host",
            "https://host:0",
            "https://host:port",
            "https://[::1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_parse_with_their_length_checked() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(ok), Ok((200, &b"{}"[..])));
        let busy = b"HTTP/1.1 429 Too Many Requests\r\n\r\nbusy";
        assert_eq!(parse_response(busy), Ok((429, &b"busy"[..])));
        let limited =
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 4\r\n\r\nbusy";
        assert_eq!(retry_after(limited), Some(3));
        assert_eq!(retry_after(busy), None);
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0 200\r\n\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
