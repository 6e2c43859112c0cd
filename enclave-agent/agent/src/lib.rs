//! The in-enclave agent of nautilus-operator.
//!
//! # Layout
//! - [`cli`]: the `nautilus-agent` command line.
//! - [`link`]: the [`link::Agent`] and its control link to the sidecar (BootConfig in;
//!   attestation and reports out; nonce refresh).
//! - [`challenge`]: a user's one-shot challenge, answered beside the operator's evidence.
//! - [`budget`]: the agent's own limits on challenges, nonce refreshes and new-address stake
//!   lookups, and the counters its reports carry.
//! - [`boot`]: the boot sequence, from a BootConfig to an attested, supervised control plane,
//!   and the control plane's environment.
//! - [`forwarder`]: the API server's vsock port, forwarded byte for byte ([`forwarder::ApiForwarder`]).
//! - [`reporter`]: probe rounds turned into signed, sequenced reports ([`reporter::Reporter`]).
//! - [`material`]: report key, CAs and serving certificates, and the attestation binding them.
//! - [`flags`]: the one source of the components' flags for both distributions.
//! - [`k3s`]: the K3s `--config` YAML and the custom CA files in its data directory.
//! - [`kubernetes`]: the `kubernetes` distribution's files, flags and readiness checks.
//! - [`control_plane`]: the running control plane: one supervised `k3s`, or etcd,
//!   kube-apiserver, kube-scheduler and kube-controller-manager started in order.
//! - [`supervisor`]: runs one command, restarts it with backoff.
//! - [`prober`]: health probes of the API server, scheduler and controller manager.
//! - [`client`]: one-request HTTPS client used by the prober and the stand-in.
//! - [`errors`]: an error and its causes on one line ([`errors::error_chain`]).
//! - [`egress`]: Sui RPC through the sidecar's CONNECT proxy, TLS verified in the enclave.
//! - [`kubelet_egress`]: the API server's kubelet traffic through the same proxy (egress
//!   selector, a Unix socket joined byte for byte to `--egress-proxy`), TLS end to end.
//! - [`csr_approver`]: approves kubelet-serving CSRs for the requesting node's own names and
//!   addresses only.
//! - [`auth`]: from the boot configuration's `auth` to a TokenReview authenticator.
//! - [`stake`]: how much an address has staked, read from Sui through `sui-rpc`, cached and
//!   single-flighted; failures deny.
//! - [`state`]: sealed state: the data key ([`state::KeySource`]), restore at boot, periodic
//!   snapshots sealed and streamed to the sidecar ([`state::Keeper`]), etcd's tools.
//! - [`webhook`]: the `authentication.k8s.io/v1` TokenReview webhook for seal tokens, and the
//!   kubeconfig that wires it into kube-apiserver.
//!
//! See `docs/architecture.md` ("Agent") for the boot sequence, ports and environment.

pub mod auth;
pub mod boot;
pub mod budget;
pub mod challenge;
pub mod cli;
pub mod client;
pub mod control_plane;
pub mod csr_approver;
pub mod egress;
pub mod errors;
pub mod flags;
pub mod forwarder;
pub mod k3s;
pub mod kubelet_egress;
pub mod kubernetes;
pub mod link;
pub mod material;
pub mod prober;
pub mod reporter;
pub mod stake;
pub mod state;
pub mod supervisor;
pub mod webhook;
