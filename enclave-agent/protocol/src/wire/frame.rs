//! Frames: a fixed header and a JSON body, read and written over any async byte stream.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::challenge::{Challenge, ChallengeAnswer};
use super::config::{BootConfig, BootRefused, NonceRefresh, StopRequest};
use super::evidence::AttestationEvidence;
use super::report::SignedReport;
use super::state::{SnapshotChunk, StateOffer};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes before the body: version (2), kind (1), reserved (1), body length (4).
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest body accepted. An attestation document is at most 16 KiB, base64 adds a third.
pub const MAX_FRAME_BODY: usize = 64 * 1024;
/// Once a frame's first byte arrived, the rest must follow within this long
/// ([`read_message_within`]): a whole frame is at most 64 KiB, sent at once by either side.
pub const FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a frame could not be read or written. Every error closes the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream between frames.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the stream inside a frame.
    #[error("peer closed the connection inside a frame")]
    Truncated,
    /// A frame of another protocol version.
    #[error("unsupported protocol version {found} (this side speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version in the header.
        found: u16,
    },
    /// A frame kind this version does not define.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The reserved header byte is not zero.
    #[error("reserved header byte is {0}, must be 0")]
    Reserved(u8),
    /// The body is longer than [`MAX_FRAME_BODY`].
    #[error("frame body of {len} bytes exceeds the {MAX_FRAME_BODY}-byte limit")]
    TooLarge {
        /// The announced or actual length.
        len: usize,
    },
    /// The body is not the JSON of its kind's message.
    #[error("malformed {kind} message: {reason}")]
    Malformed {
        /// The message kind.
        kind: MessageKind,
        /// What the JSON parser reported.
        reason: String,
    },
    /// A frame started but did not complete in time.
    #[error("frame incomplete after {0:?}")]
    TimedOut(std::time::Duration),
    /// A message arrived where the protocol does not allow it.
    #[error("unexpected {found} message, expected {expected}")]
    Unexpected {
        /// What arrived.
        found: MessageKind,
        /// What the reader was waiting for.
        expected: &'static str,
    },
}

/// The kinds of message, as numbered in the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// [`BootConfig`].
    BootConfig = 1,
    /// [`AttestationEvidence`].
    Attestation = 2,
    /// [`SignedReport`].
    Report = 3,
    /// [`NonceRefresh`].
    NonceRefresh = 4,
    /// [`Challenge`].
    Challenge = 5,
    /// [`ChallengeAnswer`].
    ChallengeAnswer = 6,
    /// [`BootRefused`].
    BootRefused = 7,
    /// [`StateOffer`].
    StateOffer = 8,
    /// [`SnapshotChunk`].
    SnapshotChunk = 9,
    /// [`StopRequest`].
    Stop = 10,
}

impl MessageKind {
    fn from_byte(byte: u8) -> Result<Self, WireError> {
        Ok(match byte {
            1 => Self::BootConfig,
            2 => Self::Attestation,
            3 => Self::Report,
            4 => Self::NonceRefresh,
            5 => Self::Challenge,
            6 => Self::ChallengeAnswer,
            7 => Self::BootRefused,
            8 => Self::StateOffer,
            9 => Self::SnapshotChunk,
            10 => Self::Stop,
            other => return Err(WireError::UnknownKind(other)),
        })
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BootConfig => "BootConfig",
            Self::Attestation => "Attestation",
            Self::Report => "Report",
            Self::NonceRefresh => "NonceRefresh",
            Self::Challenge => "Challenge",
            Self::ChallengeAnswer => "ChallengeAnswer",
            Self::BootRefused => "BootRefused",
            Self::StateOffer => "StateOffer",
            Self::SnapshotChunk => "SnapshotChunk",
            Self::Stop => "Stop",
        })
    }
}

/// One message of the vsock protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Sidecar → agent: what to boot.
    BootConfig(Box<BootConfig>),
    /// Agent → sidecar: the attestation document and the serving CA it binds.
    Attestation(AttestationEvidence),
    /// Agent → sidecar: a signed health report.
    Report(SignedReport),
    /// Sidecar → agent: attest again with this nonce.
    NonceRefresh(NonceRefresh),
    /// Sidecar → agent: a user's one-shot challenge, answered without replacing the evidence.
    Challenge(Challenge),
    /// Agent → sidecar: the document answering one [`Challenge`].
    ChallengeAnswer(ChallengeAnswer),
    /// Agent → sidecar: the configuration is refused; the agent will refuse it again.
    BootRefused(BootRefused),
    /// Sidecar → agent, after BootConfig when the configuration keeps state: credentials and
    /// the offered snapshot.
    StateOffer(StateOffer),
    /// Either way: a piece of a sealed snapshot.
    SnapshotChunk(SnapshotChunk),
    /// Sidecar → agent: stop gracefully (seal and hand over a last snapshot, stop the control
    /// plane), then close the link.
    Stop(StopRequest),
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::BootConfig(_) => MessageKind::BootConfig,
            Self::Attestation(_) => MessageKind::Attestation,
            Self::Report(_) => MessageKind::Report,
            Self::NonceRefresh(_) => MessageKind::NonceRefresh,
            Self::Challenge(_) => MessageKind::Challenge,
            Self::ChallengeAnswer(_) => MessageKind::ChallengeAnswer,
            Self::BootRefused(_) => MessageKind::BootRefused,
            Self::StateOffer(_) => MessageKind::StateOffer,
            Self::SnapshotChunk(_) => MessageKind::SnapshotChunk,
            Self::Stop(_) => MessageKind::Stop,
        }
    }

    fn body(&self) -> Result<Vec<u8>, WireError> {
        fn json<T: Serialize>(kind: MessageKind, value: &T) -> Result<Vec<u8>, WireError> {
            serde_json::to_vec(value).map_err(|err| WireError::Malformed {
                kind,
                reason: err.to_string(),
            })
        }
        let kind = self.kind();
        match self {
            Self::BootConfig(m) => json(kind, m),
            Self::Attestation(m) => json(kind, m),
            Self::Report(m) => json(kind, m),
            Self::NonceRefresh(m) => json(kind, m),
            Self::Challenge(m) => json(kind, m),
            Self::ChallengeAnswer(m) => json(kind, m),
            Self::BootRefused(m) => json(kind, m),
            Self::StateOffer(m) => json(kind, m),
            Self::SnapshotChunk(m) => json(kind, m),
            Self::Stop(m) => json(kind, m),
        }
    }

    fn parse(kind: MessageKind, body: &[u8]) -> Result<Self, WireError> {
        fn json<T: DeserializeOwned>(kind: MessageKind, body: &[u8]) -> Result<T, WireError> {
            serde_json::from_slice(body).map_err(|err| WireError::Malformed {
                kind,
                reason: err.to_string(),
            })
        }
        Ok(match kind {
            MessageKind::BootConfig => Self::BootConfig(Box::new(json(kind, body)?)),
            MessageKind::Attestation => Self::Attestation(json(kind, body)?),
            MessageKind::Report => Self::Report(json(kind, body)?),
            MessageKind::NonceRefresh => Self::NonceRefresh(json(kind, body)?),
            MessageKind::Challenge => Self::Challenge(json(kind, body)?),
            MessageKind::ChallengeAnswer => Self::ChallengeAnswer(json(kind, body)?),
            MessageKind::BootRefused => Self::BootRefused(json(kind, body)?),
            MessageKind::StateOffer => Self::StateOffer(json(kind, body)?),
            MessageKind::SnapshotChunk => Self::SnapshotChunk(json(kind, body)?),
            MessageKind::Stop => Self::Stop(json(kind, body)?),
        })
    }
}

/// Write one message as one frame and flush.
pub async fn write_message<W>(writer: &mut W, message: &Message) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let body = message.body()?;
    if body.len() > MAX_FRAME_BODY {
        return Err(WireError::TooLarge { len: body.len() });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    frame.push(message.kind() as u8);
    frame.push(0);
    // Bounded by MAX_FRAME_BODY above, so it fits in u32.
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Read one frame and parse its message, however long the peer takes.
///
/// Returns [`WireError::Closed`] when the stream ends cleanly before a header. The body is
/// read only after the header has passed every check, so an oversized announcement costs no
/// allocation.
pub async fn read_message<R>(reader: &mut R) -> Result<Message, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_frame(reader, None).await
}

/// [`read_message`], except that once the frame's first byte has arrived the rest must arrive
/// within `timeout` ([`WireError::TimedOut`] otherwise). The wait for the first byte is not
/// bounded: a link may rightly be quiet between messages.
pub async fn read_message_within<R>(
    reader: &mut R,
    timeout: std::time::Duration,
) -> Result<Message, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_frame(reader, Some(timeout)).await
}

async fn read_frame<R>(
    reader: &mut R,
    timeout: Option<std::time::Duration>,
) -> Result<Message, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0u8; FRAME_HEADER_LEN];
    let n = reader.read(&mut header).await?;
    if n == 0 {
        return Err(WireError::Closed);
    }
    let rest = read_rest(reader, header, n);
    match timeout {
        None => rest.await,
        Some(timeout) => tokio::time::timeout(timeout, rest)
            .await
            .map_err(|_| WireError::TimedOut(timeout))?,
    }
}

async fn read_rest<R>(
    reader: &mut R,
    mut header: [u8; FRAME_HEADER_LEN],
    mut filled: usize,
) -> Result<Message, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    while filled < FRAME_HEADER_LEN {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return Err(WireError::Truncated);
        }
        filled += n;
    }
    let version = u16::from_be_bytes([header[0], header[1]]);
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version { found: version });
    }
    let kind = MessageKind::from_byte(header[2])?;
    if header[3] != 0 {
        return Err(WireError::Reserved(header[3]));
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME_BODY {
        return Err(WireError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Truncated
        } else {
            WireError::Io(err)
        }
    })?;
    Message::parse(kind, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce_message() -> Message {
        Message::NonceRefresh(NonceRefresh { nonce: vec![7; 32] })
    }

    async fn roundtrip(bytes: &[u8]) -> Result<Message, WireError> {
        let mut reader = bytes;
        read_message(&mut reader).await
    }

    #[tokio::test]
    async fn a_message_survives_a_round_trip() {
        let mut buf = Vec::new();
        write_message(&mut buf, &nonce_message())
            .await
            .expect("write");
        assert_eq!(&buf[..4], &[0, 1, 4, 0]);
        assert_eq!(roundtrip(&buf).await.expect("read"), nonce_message());
    }

    #[tokio::test]
    async fn a_refusal_is_one_bounded_line() {
        let body = |reason: &str| {
            format!(
                r#"{{"configDigest":"ab","reason":{}}}"#,
                serde_json::json!(reason)
            )
        };
        let refused = Message::parse(MessageKind::BootRefused, body("bad cipher").as_bytes())
            .expect("parses");
        let mut buf = Vec::new();
        write_message(&mut buf, &refused).await.expect("write");
        assert_eq!(&buf[..4], &[0, 1, 7, 0]);
        assert_eq!(roundtrip(&buf).await.expect("read"), refused);
        for reason in [
            "two\nlines",
            &"x".repeat(super::super::config::MAX_REFUSAL_BYTES + 1),
        ] {
            assert!(matches!(
                Message::parse(MessageKind::BootRefused, body(reason).as_bytes()),
                Err(WireError::Malformed { .. })
            ));
        }
        // The agent's constructor makes any reason acceptable.
        let config: super::super::EnclaveConfig =
            serde_json::from_str(super::super::config::tests::BEFORE_DISTRIBUTION).expect("config");
        let long = format!("é{}\nend", "y".repeat(2000));
        let made = BootRefused::new(&config, &long);
        assert!(made.reason.len() <= super::super::config::MAX_REFUSAL_BYTES);
        assert!(!made.reason.contains('\n'));
        assert_eq!(made.config_digest, config.digest_hex());
        let mut buf = Vec::new();
        write_message(&mut buf, &Message::BootRefused(made.clone()))
            .await
            .expect("write");
        assert_eq!(
            roundtrip(&buf).await.expect("read"),
            Message::BootRefused(made)
        );
    }

    #[tokio::test]
    async fn header_checks_fail_closed() {
        let mut good = Vec::new();
        write_message(&mut good, &nonce_message())
            .await
            .expect("write");

        let mut bad = good.clone();
        bad[1] = 2;
        assert!(matches!(
            roundtrip(&bad).await,
            Err(WireError::Version { found: 2 })
        ));

        let mut bad = good.clone();
        bad[2] = 11;
        assert!(matches!(
            roundtrip(&bad).await,
            Err(WireError::UnknownKind(11))
        ));

        let mut bad = good.clone();
        bad[3] = 1;
        assert!(matches!(roundtrip(&bad).await, Err(WireError::Reserved(1))));

        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            roundtrip(&bad).await,
            Err(WireError::TooLarge { .. })
        ));

        assert!(matches!(
            roundtrip(&good[..5]).await,
            Err(WireError::Truncated)
        ));
        assert!(matches!(
            roundtrip(&good[..good.len() - 1]).await,
            Err(WireError::Truncated)
        ));
        assert!(matches!(roundtrip(&[]).await, Err(WireError::Closed)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stalls_after_its_first_byte_times_out() {
        let mut good = Vec::new();
        write_message(&mut good, &nonce_message())
            .await
            .expect("write");
        let timeout = std::time::Duration::from_secs(10);
        // Announces its body and sends part of it, then nothing: cut at the timeout.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&good[..18]).await.expect("write");
        let started = tokio::time::Instant::now();
        let err = read_message_within(&mut server, timeout)
            .await
            .expect_err("stalled");
        assert!(matches!(err, WireError::TimedOut(_)), "{err}");
        assert_eq!(started.elapsed(), timeout);
        // A quiet link is not a stalled frame: the wait for a first byte is not bounded.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move { read_message_within(&mut server, timeout).await });
        tokio::time::sleep(timeout * 5).await;
        client.write_all(&good).await.expect("write");
        assert_eq!(reader.await.expect("task").expect("read"), nonce_message());
    }

    #[tokio::test]
    async fn nonces_follow_one_rule_both_ways() {
        for nonce in [Vec::new(), vec![1; 513]] {
            let mut buf = Vec::new();
            let err = write_message(&mut buf, &Message::NonceRefresh(NonceRefresh { nonce }))
                .await
                .expect_err("the writer refuses it");
            assert!(
                err.to_string().contains("nonce must be 1 to 512 bytes"),
                "{err}"
            );
        }
        let mut buf = Vec::new();
        write_message(
            &mut buf,
            &Message::NonceRefresh(NonceRefresh {
                nonce: vec![1; 512],
            }),
        )
        .await
        .expect("512 bytes pass");
    }

    #[tokio::test]
    async fn unknown_fields_and_wrong_bodies_are_malformed() {
        let too_long = format!(r#"{{"nonce":"{}"}}"#, "AAAA".repeat(171));
        for body in [
            &br#"{"nonce":"AAAA","extra":1}"#[..],
            br#"{"nonce":"not base64!"}"#,
            br#"{"nonce":""}"#,
            too_long.as_bytes(),
            br#"[]"#,
            b"\xff\xfe",
        ] {
            let mut frame = vec![0, 1, 4, 0];
            frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
            frame.extend_from_slice(body);
            let err = roundtrip(&frame).await.expect_err("must be refused");
            assert!(
                matches!(
                    err,
                    WireError::Malformed {
                        kind: MessageKind::NonceRefresh,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
