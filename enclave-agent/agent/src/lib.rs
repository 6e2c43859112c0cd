//! The in-enclave agent of nautilus-operator.
//!
//! # Layout
//! - [`stake`]: how much an address has staked, read from Sui through `sui-rpc`, cached and
//!   single-flighted; failures deny.
//! - [`webhook`]: the `authentication.k8s.io/v1` TokenReview webhook for seal tokens, and the
//!   kubeconfig that wires it into kube-apiserver.
//!
//! The seal-token webhook, the control-plane supervisor, the health prober and the vsock
//! services build on these (see `docs/architecture.md`).

pub mod stake;
pub mod webhook;
