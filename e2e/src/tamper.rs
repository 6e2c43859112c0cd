//! A tampering host, for tests: a real `nautilus-sidecar` whose control link runs through a
//! relay that alters every report the agent signs.
//!
//! ```text
//! operator ──HTTP──► nautilus-sidecar ──frames──► relay ──frames──► nautilus-agent
//!                    (real, unchanged)            │ Report: one byte of the signed bytes flipped
//!                                                 └ everything else: as it came
//! ```
//!
//! The relay stands where a hostile host sits in production (the vsock link between the
//! enclave and the sidecar), so it proves what the old `--tamper-reports` switch of the sidecar
//! proved, without any test switch in a production binary: the sidecar's `/readyz` refuses the
//! reports, and so does the operator (`Attested=False/ReportSignatureInvalid`, no kubeconfig).
//!
//! The binary `nautilus-tamper-sidecar` ([`run_sidecar`]) is started by the operator's local
//! runtime in place of `nautilus-sidecar`, with the same arguments; it rewrites `--agent` to the
//! relay, runs the real sidecar as its child and passes SIGTERM/SIGINT on to it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nautilus_protocol::transport::{self, BoxedStream, Endpoint, Listener, TransportError};
use nautilus_protocol::wire::{self, Message, SignedReport};
use tokio::io::AsyncWriteExt as _;

/// Why the tampering sidecar could not run.
#[derive(Debug, thiserror::Error)]
pub enum TamperError {
    /// The arguments have no `--agent=ENDPOINT` (the local runtime always passes one).
    #[error("no --agent=ENDPOINT among the sidecar's arguments")]
    NoAgent,
    /// `--agent` is not an endpoint.
    #[error("--agent")]
    Agent(#[source] TransportError),
    /// The relay could not listen.
    #[error("relay listener")]
    Listen(#[source] TransportError),
    /// The real sidecar could not be started or waited for.
    #[error("running {path}")]
    Sidecar {
        /// The sidecar binary.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Flip one byte in the middle of the signed bytes: the signature no longer verifies.
pub fn tamper(report: &mut SignedReport) {
    if !report.report.is_empty() {
        let middle = report.report.len() / 2;
        report.report[middle] ^= 0x01;
    }
}

/// Relay every connection accepted on `listener` to `agent`, altering the reports (see the
/// module documentation). Runs until the listener fails.
pub async fn relay(listener: Listener, agent: Endpoint) {
    loop {
        let Ok((sidecar, _)) = listener.accept().await else {
            return;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            // An agent not listening yet: close, and the sidecar dials again with backoff.
            if let Ok(upstream) = transport::connect(&agent).await {
                relay_connection(sidecar, upstream).await;
            }
        });
    }
}

/// One connection: sidecar → agent bytes as they come; agent → sidecar frame by frame, reports
/// altered. Ends when either side ends or sends a frame that does not parse.
async fn relay_connection(sidecar: BoxedStream, agent: BoxedStream) {
    let (mut from_sidecar, mut to_sidecar) = tokio::io::split(sidecar);
    let (mut from_agent, mut to_agent) = tokio::io::split(agent);
    let upstream = async {
        let _ = tokio::io::copy(&mut from_sidecar, &mut to_agent).await;
        let _ = to_agent.shutdown().await;
    };
    let downstream = async {
        while let Ok(mut message) = wire::read_message(&mut from_agent).await {
            if let Message::Report(report) = &mut message {
                tamper(report);
            }
            if wire::write_message(&mut to_sidecar, &message)
                .await
                .is_err()
            {
                break;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// The sidecar's arguments with `--agent=…` replaced by `--agent=<relay>`, and the agent
/// endpoint it named.
pub fn redirect_agent(
    args: impl IntoIterator<Item = OsString>,
    relay: &Endpoint,
) -> Result<(Vec<OsString>, Endpoint), TamperError> {
    let mut agent = None;
    let args = args
        .into_iter()
        .map(
            |arg| match arg.to_str().and_then(|a| a.strip_prefix("--agent=")) {
                Some(endpoint) => {
                    agent = Some(endpoint.parse().map_err(TamperError::Agent));
                    OsString::from(format!("--agent={relay}"))
                }
                None => arg,
            },
        )
        .collect();
    Ok((args, agent.ok_or(TamperError::NoAgent)??))
}

/// Run `sidecar` with `args` behind the relay until it exits, passing SIGTERM and SIGINT on.
///
/// The sidecar runs under `setpriv --pdeathsig TERM` where util-linux is there, so a SIGKILL of
/// this process still stops the sidecar (and with it the agent). Call it from a current-thread
/// runtime: the parent-death signal follows the thread that spawned the child.
pub async fn run_sidecar(
    sidecar: &Path,
    args: impl IntoIterator<Item = OsString>,
) -> Result<ExitStatus, TamperError> {
    let args: Vec<OsString> = args.into_iter().collect();
    // Beside the agent's socket when the link is a Unix socket (an isolated agent's is: the
    // sidecar then accepts nothing else), else on the loopback.
    let (_, agent) = redirect_agent(args.clone(), &Endpoint::Tcp("127.0.0.1:9".into()))?;
    let relay_endpoint = match &agent {
        Endpoint::Unix(path) => Endpoint::Unix(path.with_file_name("relay.sock")),
        _ => Endpoint::Tcp("127.0.0.1:0".into()),
    };
    let listener = transport::bind(&relay_endpoint)
        .await
        .map_err(TamperError::Listen)?;
    let relay_at = listener.endpoint().clone();
    let (args, agent) = redirect_agent(args, &relay_at)?;
    tracing::warn!(relay = %relay_at, %agent, "tests only: every report on this control link is altered");
    tokio::spawn(relay(listener, agent));

    let spawn_err = |source| TamperError::Sidecar {
        path: sidecar.to_owned(),
        source,
    };
    let mut cmd = match crate::envtest::on_path("setpriv") {
        Some(setpriv) => {
            let mut cmd = tokio::process::Command::new(setpriv);
            cmd.args(["--pdeathsig", "TERM", "--"]).arg(sidecar);
            cmd
        }
        None => tokio::process::Command::new(sidecar),
    };
    let mut child = cmd.args(args).spawn().map_err(spawn_err)?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(nix::unistd::Pid::from_raw);
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(spawn_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(spawn_err)?;
    loop {
        tokio::select! {
            status = child.wait() => return status.map_err(spawn_err),
            _ = term.recv() => forward(pid, nix::sys::signal::Signal::SIGTERM),
            _ = int.recv() => forward(pid, nix::sys::signal::Signal::SIGINT),
        }
    }
}

fn forward(pid: Option<nix::unistd::Pid>, signal: nix::sys::signal::Signal) {
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nautilus_protocol::wire::{NonceRefresh, ReportSigner};

    #[test]
    fn only_the_agent_argument_is_redirected() {
        let relay: Endpoint = "tcp://127.0.0.1:9".parse().expect("endpoint");
        let args = [
            "--agent-command=/bin/agent",
            "--agent-arg=--listen=tcp://127.0.0.1:1",
            "--agent=tcp://127.0.0.1:1",
            "--api-upstream=tcp://127.0.0.1:2",
        ]
        .map(OsString::from);
        let (out, agent) = redirect_agent(args.clone(), &relay).expect("redirected");
        assert_eq!(agent.to_string(), "tcp://127.0.0.1:1");
        assert_eq!(out[2], "--agent=tcp://127.0.0.1:9");
        assert_eq!(out[..2], args[..2]);
        assert_eq!(out[3], args[3]);
        assert!(matches!(
            redirect_agent([OsString::from("--agent-arg=x")], &relay),
            Err(TamperError::NoAgent)
        ));
        assert!(matches!(
            redirect_agent([OsString::from("--agent=nowhere")], &relay),
            Err(TamperError::Agent(_))
        ));
    }

    /// The relay between a fake sidecar and a fake agent: frames to the agent arrive as sent,
    /// reports from it arrive altered (and no longer verify), attestations as sent.
    #[tokio::test]
    async fn the_relay_alters_reports_and_nothing_else() {
        let agent = transport::bind(&Endpoint::Tcp("127.0.0.1:0".into()))
            .await
            .expect("agent listener");
        let relay_listener = transport::bind(&Endpoint::Tcp("127.0.0.1:0".into()))
            .await
            .expect("relay listener");
        let relay_at = relay_listener.endpoint().clone();
        tokio::spawn(relay(relay_listener, agent.endpoint().clone()));

        let mut sidecar = transport::connect(&relay_at).await.expect("connect");
        let (mut at_agent, _) = agent.accept().await.expect("accept");
        let refresh = Message::NonceRefresh(NonceRefresh {
            nonce: b"nonce".to_vec(),
        });
        wire::write_message(&mut sidecar, &refresh)
            .await
            .expect("send");
        assert_eq!(
            wire::read_message(&mut at_agent).await.expect("at agent"),
            refresh
        );

        let signer = ReportSigner::generate();
        let report = nautilus_protocol::wire::Report {
            sequence: 1,
            time_unix_ms: 1,
            boot_config_digest: "00".repeat(32),
            components: Vec::new(),
            control_plane: Default::default(),
            state: None,
        };
        let signed = signer.sign(&report);
        wire::write_message(&mut at_agent, &Message::Report(signed.clone()))
            .await
            .expect("send report");
        let Message::Report(relayed) = wire::read_message(&mut sidecar).await.expect("relayed")
        else {
            panic!("not a report");
        };
        assert_ne!(relayed.report, signed.report, "altered");
        assert_eq!(relayed.signature, signed.signature);
        let verifier = nautilus_protocol::wire::ReportVerifier::new(
            &signer.public_key_der(),
            "00".repeat(32),
            u64::MAX,
        )
        .expect("verifier");
        assert!(verifier.check(&signed, 1).is_ok(), "the original verifies");
        assert!(
            matches!(
                verifier.check(&relayed, 1),
                Err(nautilus_protocol::wire::ReportError::BadSignature)
            ),
            "the altered one does not"
        );
    }
}
