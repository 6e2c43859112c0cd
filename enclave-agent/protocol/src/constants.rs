//! The vsock port contract between the enclave and its host: the one set of numbers the agent
//! (inside) and the sidecar (outside) build their defaults from, so the two cannot disagree.
//!
//! ```text
//! host: nautilus-sidecar                              enclave: nautilus-agent
//! dials   vsock://<EnclaveCID>:CONTROL_PORT  ───────► listens vsock://ANY:CONTROL_PORT  (frames)
//! dials   vsock://<EnclaveCID>:API_PORT      ───────► listens vsock://ANY:API_PORT      (API bytes)
//! listens vsock://ANY:EGRESS_PORT            ◄─────── dials   vsock://HOST:EGRESS_PORT  (CONNECT)
//! ```
//!
//! The values are those the deployment has always used (5000, 6443, 8001); a port can still be
//! moved with the binaries' flags, this only fixes their defaults.

/// `VMADDR_CID_ANY`: listen on every CID.
pub const VSOCK_CID_ANY: u32 = u32::MAX;
/// `VMADDR_CID_HOST`: the parent instance, as seen from inside an enclave.
pub const VSOCK_CID_HOST: u32 = 3;

/// The agent's control link (the framed protocol of [`crate::wire`]), inside the enclave.
pub const CONTROL_PORT: u32 = 5000;
/// The enclave's API server, forwarded byte for byte by the agent.
pub const API_PORT: u32 = 6443;
/// The sidecar's egress CONNECT proxy on the parent instance, which the agent dials for Sui RPC.
pub const EGRESS_PORT: u32 = 8001;

/// The Unix socket the agent makes in its socket directory (`--socket-dir`) for the API
/// server's kubelet traffic (`nautilus_agent::kubelet_egress`); named here so the local runtime,
/// which picks that directory, can check the path fits a socket address.
pub const KUBELET_EGRESS_SOCKET: &str = "kubelet-egress.sock";

/// How long each part of a graceful stop may take, nested so that every outer grace covers the
/// inner ones: a stop that goes as it should is never cut short by the layer above, and a hung
/// one still ends.
///
/// ```text
/// operator (local runtime) / kubelet (pod): SIGTERM to the sidecar ── HOST ──────────► SIGKILL
///   sidecar: Stop on the link ── AGENT ──► (agent closed the link) ─► stop the enclave
///     agent: final snapshot ── FINAL_SNAPSHOT ─► handed over ── FINAL_DELIVERY ─► control
///            plane, three steps of COMPONENT each (scheduler + controller manager, API
///            server, etcd) ─► link closed
/// ```
pub mod stop {
    use std::time::Duration;

    /// The agent takes and seals its last snapshot.
    pub const FINAL_SNAPSHOT: Duration = Duration::from_secs(20);
    /// The agent hands that snapshot to the sidecar.
    pub const FINAL_DELIVERY: Duration = Duration::from_secs(5);
    /// Each control-plane component between SIGTERM and SIGKILL.
    pub const COMPONENT: Duration = Duration::from_secs(5);
    /// The steps in which the components stop (see `nautilus_agent::control_plane`).
    const COMPONENT_STEPS: u64 = 3;
    /// The agent's whole graceful stop, from the Stop message (or SIGTERM) to the link closed.
    pub const AGENT: Duration = Duration::from_secs(
        FINAL_SNAPSHOT.as_secs()
            + FINAL_DELIVERY.as_secs()
            + COMPONENT.as_secs() * COMPONENT_STEPS
            + 5,
    );
    /// The sidecar stopping the enclave once the agent is done or out of time: SIGTERM then
    /// SIGKILL to a development agent's process group, or `terminate-enclave`.
    pub const ENCLAVE: Duration = Duration::from_secs(10);
    /// The sidecar's whole stop, from its SIGTERM: the grace its host (the operator's local
    /// runtime, the kubelet's `terminationGracePeriodSeconds`) gives it before SIGKILL.
    pub const HOST: Duration = Duration::from_secs(AGENT.as_secs() + ENCLAVE.as_secs() + 5);

    const _: () = assert!(AGENT.as_secs() > FINAL_SNAPSHOT.as_secs() + FINAL_DELIVERY.as_secs());
    const _: () = assert!(HOST.as_secs() > AGENT.as_secs() + ENCLAVE.as_secs());
}
