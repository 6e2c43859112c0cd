//! The instance role's credentials from the EC2 instance metadata service, IMDSv2: what the
//! sidecar relays to the agent for KMS when neither `--aws-credentials-file` nor the
//! environment gives any, which is the case on a Nitro node (the key policy names the instance
//! role; see `config/kms/key-policy.example.json`).
//!
//! ```text
//! PUT /latest/api/token                              X-aws-ec2-metadata-token-ttl-seconds: 300
//!   → session token
//! GET /latest/meta-data/iam/security-credentials/    X-aws-ec2-metadata-token: <token>
//!   → the role's name (first line)
//! GET /latest/meta-data/iam/security-credentials/<role>
//!   → {"Code":"Success","AccessKeyId":…,"SecretAccessKey":…,"Token":…,"Expiration":…}
//! ```
//!
//! Plain HTTP/1.1 to a link-local address, as the AWS SDKs do it: the endpoint is
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (default `http://169.254.169.254`), and
//! `AWS_EC2_METADATA_DISABLED=true` turns it off. A pod reaches IMDSv2 only if the instance's
//! hop limit is at least 2. Every response is bounded (status, 16 KiB body, a deadline for the
//! whole exchange); the credentials never appear in a log line.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use nautilus_protocol::wire::AwsCredentials;

/// The metadata service's address on every EC2 instance.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Largest response body read.
const MAX_BODY: usize = 16 * 1024;
/// The whole exchange (three requests) must end within this.
const DEADLINE: Duration = Duration::from_secs(3);
/// How long the session token lives; it is used at once and not kept.
const TOKEN_TTL_SECONDS: u32 = 300;

/// Why the metadata service gave no credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImdsError {
    /// The endpoint is not `http://host[:port]`.
    #[error("metadata endpoint {0:?} is not http://host[:port]")]
    Endpoint(String),
    /// No answer in time.
    #[error("the metadata service did not answer within {DEADLINE:?}")]
    TimedOut,
    /// The connection or the HTTP exchange failed.
    #[error("metadata service at {authority}: {reason}")]
    Http {
        /// `host:port`.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// An answer other than 200.
    #[error("{path}: HTTP {status}")]
    Status {
        /// The request's path.
        path: &'static str,
        /// The status code.
        status: u16,
    },
    /// The answer is not what IMDS sends.
    #[error("{path}: {reason}")]
    Malformed {
        /// The request's path.
        path: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The metadata service at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imds {
    authority: String,
}

impl Imds {
    /// The service at `endpoint` (`http://host[:port]`, port 80 by default).
    pub fn new(endpoint: &str) -> Result<Self, ImdsError> {
        let bad = || ImdsError::Endpoint(endpoint.to_owned());
        let rest = endpoint.strip_prefix("http://").ok_or_else(bad)?;
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.is_empty() || host.contains(['/', '?', '#', '@']) || host.len() > 253 {
            return Err(bad());
        }
        let authority = if host
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        Ok(Self { authority })
    }

    /// From the environment as the AWS SDKs read it: `None` when `AWS_EC2_METADATA_DISABLED`
    /// is `true`.
    pub fn from_env() -> Result<Option<Self>, ImdsError> {
        let disabled = std::env::var("AWS_EC2_METADATA_DISABLED")
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if disabled {
            return Ok(None);
        }
        let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        Self::new(&endpoint).map(Some)
    }

    /// The instance role's current credentials.
    pub async fn credentials(&self) -> Result<AwsCredentials, ImdsError> {
        tokio::time::timeout(DEADLINE, self.exchange())
            .await
            .map_err(|_| ImdsError::TimedOut)?
    }

    async fn exchange(&self) -> Result<AwsCredentials, ImdsError> {
        const TOKEN: &str = "/latest/api/token";
        const ROLES: &str = "/latest/meta-data/iam/security-credentials/";
        let ttl = TOKEN_TTL_SECONDS.to_string();
        let token = self
            .request(
                hyper::Method::PUT,
                TOKEN,
                None,
                ("x-aws-ec2-metadata-token-ttl-seconds", &ttl),
            )
            .await?;
        let token = text(TOKEN, token)?;
        let token = token.trim();
        let auth = ("x-aws-ec2-metadata-token", token);
        let roles = text(
            ROLES,
            self.request(hyper::Method::GET, ROLES, None, auth).await?,
        )?;
        let role = roles
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| ImdsError::Malformed {
                path: ROLES,
                reason: "the instance has no role".into(),
            })?;
        if !role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
        {
            return Err(ImdsError::Malformed {
                path: ROLES,
                reason: "a role name with characters IAM does not allow".into(),
            });
        }
        let body = self
            .request(hyper::Method::GET, ROLES, Some(role), auth)
            .await?;
        parse_credentials(&body)
    }

    /// One request on a connection of its own (`Connection: close`).
    async fn request(
        &self,
        method: hyper::Method,
        path: &'static str,
        suffix: Option<&str>,
        header: (&'static str, &str),
    ) -> Result<Vec<u8>, ImdsError> {
        let http = |reason: String| ImdsError::Http {
            authority: self.authority.clone(),
            reason,
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| http(e.to_string()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| http(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let uri = format!("{path}{}", suffix.unwrap_or_default());
        let request = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "close")
            .header(header.0, header.1)
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http(e.to_string()))?;
            let status = response.status().as_u16();
            if status != 200 {
                return Err(ImdsError::Status { path, status });
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ImdsError::Malformed {
                    path,
                    reason: format!("body: {e}"),
                })?;
            Ok(body.to_bytes().to_vec())
        }
        .await;
        driver.abort();
        result
    }
}

fn text(path: &'static str, body: Vec<u8>) -> Result<String, ImdsError> {
    String::from_utf8(body).map_err(|_| ImdsError::Malformed {
        path,
        reason: "not UTF-8".into(),
    })
}

/// The role credentials document (`Code` must be `Success`).
fn parse_credentials(body: &[u8]) -> Result<AwsCredentials, ImdsError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Document {
        code: String,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        token: Option<String>,
    }
    const PATH: &str = "/latest/meta-data/iam/security-credentials/<role>";
    let malformed = |reason: String| ImdsError::Malformed { path: PATH, reason };
    let document: Document =
        serde_json::from_slice(body).map_err(|e| malformed(format!("not the JSON: {e}")))?;
    if document.code != "Success" {
        return Err(malformed(format!(
            "Code is {:?}",
            document.code.chars().take(64).collect::<String>()
        )));
    }
    match (document.access_key_id, document.secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token: document.token,
        }),
        _ => Err(malformed("no AccessKeyId or SecretAccessKey".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A metadata service that answers `answers` in order, one per connection, and records
    /// each request's head.
    async fn fake(answers: Vec<String>) -> (Imds, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut heads = Vec::new();
            for answer in answers {
                let Ok((mut conn, _)) = listener.accept().await else {
                    break;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                heads.push(String::from_utf8_lossy(&head).into_owned());
                conn.write_all(answer.as_bytes()).await.expect("write");
                let _ = conn.shutdown().await;
            }
            heads
        });
        (Imds::new(&format!("http://{at}")).expect("endpoint"), task)
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn the_instance_roles_credentials_with_a_session_token_first() {
        let document = r#"{"Code":"Success","LastUpdated":"2026-12-06T10:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"c2VjcmV0","Token":"session","Expiration":"2026-12-06T16:00:00Z"}"#;
        let (imds, heads) = fake(vec![
            ok("tok-123"),
            ok("nautilus-node-role\n"),
            ok(document),
        ])
        .await;
        let credentials = imds.credentials().await.expect("credentials");
        assert_eq!(credentials.access_key_id, "ASIAEXAMPLE");
        assert_eq!(credentials.secret_access_key, "c2VjcmV0");
        assert_eq!(credentials.session_token.as_deref(), Some("session"));
        let heads = heads.await.expect("join");
        assert!(
            heads[0].starts_with("PUT /latest/api/token HTTP/1.1"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains("x-aws-ec2-metadata-token-ttl-seconds: 300"),
            "{}",
            heads[0]
        );
        assert!(heads[1].starts_with("GET /latest/meta-data/iam/security-credentials/ HTTP/1.1"));
        assert!(heads[1].contains("x-aws-ec2-metadata-token: tok-123"));
        assert!(heads[2].starts_with(
            "GET /latest/meta-data/iam/security-credentials/nautilus-node-role HTTP/1.1"
        ));
        assert!(heads[2].contains("x-aws-ec2-metadata-token: tok-123"));
    }

    #[tokio::test]
    async fn refusals_and_odd_answers_give_no_credentials() {
        // IMDSv1-only or a hop limit of 1 (the PUT is refused).
        let (imds, _) = fake(vec![
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_owned(),
        ])
        .await;
        assert!(matches!(
            imds.credentials().await,
            Err(ImdsError::Status { status: 403, .. })
        ));
        // A role name that could walk elsewhere.
        let (imds, _) = fake(vec![ok("tok"), ok("../../user-data")]).await;
        assert!(matches!(
            imds.credentials().await,
            Err(ImdsError::Malformed { .. })
        ));
        // Not a success.
        let (imds, _) = fake(vec![
            ok("tok"),
            ok("role"),
            ok(r#"{"Code":"AssumeRoleUnauthorizedAccess"}"#),
        ])
        .await;
        let err = imds.credentials().await.expect_err("refused");
        assert!(
            err.to_string().contains("AssumeRoleUnauthorizedAccess"),
            "{err}"
        );
        // A body over the bound.
        let (imds, _) = fake(vec![ok(&"x".repeat(MAX_BODY + 1))]).await;
        assert!(matches!(
            imds.credentials().await,
            Err(ImdsError::Malformed { .. })
        ));
        // Nothing listening in time.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let imds =
            Imds::new(&format!("http://{}", silent.local_addr().expect("addr"))).expect("endpoint");
        assert!(matches!(imds.credentials().await, Err(ImdsError::TimedOut)));
    }

    #[test]
    fn endpoints_are_plain_http_authorities() {
        assert_eq!(
            Imds::new(DEFAULT_ENDPOINT).expect("default").authority,
            "169.254.169.254:80"
        );
        assert_eq!(
            Imds::new("http://[fd00:ec2::254]:80/")
                .expect("v6")
                .authority,
            "[fd00:ec2::254]:80"
        );
        for bad in [
            "https://169.254.169.254",
            "169.254.169.254",
            "http://",
            "http://a/b",
            "http://u@h",
        ] {
            assert!(Imds::new(bad).is_err(), "{bad}");
        }
    }
}
