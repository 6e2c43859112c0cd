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
