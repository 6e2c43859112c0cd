//! Health probes of the control plane's components, one round per probe interval.
//!
//! - kube-apiserver: `GET https://<bind>:<port>/livez` and `/readyz`, both must answer 200. The
//!   server's certificate is verified against the agent's own serving CA, and the prober presents
//!   a client certificate from the agent's client CA (K3s turns anonymous requests away).
//! - kube-scheduler: `GET https://127.0.0.1:10259/healthz`.
//! - kube-controller-manager: `GET https://127.0.0.1:10257/healthz`.
//!
//! K3s gives the scheduler and the controller manager self-signed serving certificates made at
//! start, which no CA known in advance can verify. Their probes therefore do not verify the
//! certificate ([`crate::client::loopback_unverified_config`]): they only read a health status
//! over loopback inside the enclave, send nothing secret and grant nothing on the answer.
//! The two ports can be overridden (`NAUTILUS_CP_SCHEDULER_PORT`,
//! `NAUTILUS_CP_CONTROLLER_MANAGER_PORT`) for stand-ins running side by side in tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nautilus_protocol::wire::{Component, ComponentReport};

use crate::client::{self, ClientError, Request};
use crate::supervisor::unix_ms;

pub use crate::flags::{CONTROLLER_MANAGER_PORT, SCHEDULER_PORT};
/// Longest message kept from an unhealthy answer.
const MAX_MESSAGE: usize = 200;

/// Where the components answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTargets {
    /// The API server's `host:port` (loopback when it binds every address).
    pub api_server: String,
    /// The name the API server's certificate is checked against.
    pub api_server_name: String,
    /// kube-scheduler's port on 127.0.0.1.
    pub scheduler_port: u16,
    /// kube-controller-manager's port on 127.0.0.1.
    pub controller_manager_port: u16,
}

/// Probes every component; see the module documentation.
#[derive(Debug, Clone)]
pub struct Prober {
    targets: ProbeTargets,
    api_tls: Arc<rustls::ClientConfig>,
    loopback_tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Prober {
    /// A prober trusting `serving_ca_pem` for the API server, presenting `client_cert`
    /// (certificate DER, PKCS#8 key DER), giving each probe `timeout`.
    pub fn new(
        targets: ProbeTargets,
        serving_ca_pem: &str,
        client_cert: Option<(&[u8], &[u8])>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            targets,
            api_tls: Arc::new(client::client_config(&[serving_ca_pem], client_cert)?),
            loopback_tls: Arc::new(client::loopback_unverified_config()?),
            timeout,
        })
    }

    /// The targets.
    pub fn targets(&self) -> &ProbeTargets {
        &self.targets
    }

    /// One probe round: every component, probed concurrently, in [`Component::ALL`] order.
    pub async fn round(&self) -> Vec<ComponentReport> {
        let scheduler = format!("127.0.0.1:{}", self.targets.scheduler_port);
        let manager = format!("127.0.0.1:{}", self.targets.controller_manager_port);
        let (api, sched, cm) = tokio::join!(
            self.probe(
                Component::ApiServer,
                &self.api_tls,
                &self.targets.api_server,
                &self.targets.api_server_name,
                &["/livez", "/readyz"],
            ),
            self.probe(
                Component::Scheduler,
                &self.loopback_tls,
                &scheduler,
                "127.0.0.1",
                &["/healthz"],
            ),
            self.probe(
                Component::ControllerManager,
                &self.loopback_tls,
                &manager,
                "127.0.0.1",
                &["/healthz"],
            ),
        );
        vec![api, sched, cm]
    }

    async fn probe(
        &self,
        component: Component,
        tls: &Arc<rustls::ClientConfig>,
        addr: &str,
        server_name: &str,
        paths: &[&str],
    ) -> ComponentReport {
        let started = Instant::now();
        let mut problems = Vec::new();
        for path in paths {
            let request = Request {
                addr,
                server_name,
                method: http::Method::GET,
                path,
                headers: Vec::new(),
                body: Vec::new(),
            };
            match client::send(Arc::clone(tls), request, self.timeout).await {
                Ok((status, _)) if status == http::StatusCode::OK => {}
                Ok((status, body)) => {
                    let text: String = String::from_utf8_lossy(&body)
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(MAX_MESSAGE)
                        .collect();
                    problems.push(format!("{path}: {status} {text}").trim_end().to_owned());
                }
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
        let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let healthy = problems.is_empty();
        ComponentReport {
            component,
            healthy,
            checked_unix_ms: unix_ms(),
            latency_ms: Some(latency_ms),
            message: (!healthy).then(|| {
                let mut message = problems.join("; ");
                message.truncate(message.floor_char_boundary(2 * MAX_MESSAGE));
                message
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_listening_is_unhealthy_with_a_reason() {
        // Ports from listeners we close again: nothing answers there.
        let mut ports = Vec::new();
        for _ in 0..3 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            ports.push(l.local_addr().expect("addr").port());
        }
        let ca = crate::material::CertificateAuthority::generate("test CA").expect("ca");
        let prober = Prober::new(
            ProbeTargets {
                api_server: format!("127.0.0.1:{}", ports[0]),
                api_server_name: "127.0.0.1".into(),
                scheduler_port: ports[1],
                controller_manager_port: ports[2],
            },
            &ca.cert_pem,
            None,
            Duration::from_millis(500),
        )
        .expect("prober");
        let round = prober.round().await;
        assert_eq!(
            round.iter().map(|r| r.component).collect::<Vec<_>>(),
            Component::ALL
        );
        for report in round {
            assert!(!report.healthy);
            let message = report.message.expect("reason");
            assert!(message.contains("connect to 127.0.0.1"), "{message}");
        }
    }
}
