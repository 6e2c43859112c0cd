//! The in-enclave agent of nautilus-operator.
//!
//! # Layout
//! - [`stake`]: how much an address has staked, read from Sui through `sui-rpc`, cached and
//!   single-flighted; failures deny.
//!
//! The seal-token webhook, the control-plane supervisor, the health prober and the vsock
//! services build on these (see `docs/architecture.md`).

pub mod stake;
