//! Evidence shared by the operator, the enclave agent and the sidecar.
//!
//! This crate holds what both sides of the vsock link must agree on: the AWS Nitro Enclaves
//! attestation evidence (its format, its verification, the policy checked on top of it and the
//! binding that ties it to the agent's boot configuration) and the wire protocol that carries
//! it with the agent's signed health reports.
//!
//! Layout:
//! - [`attestation`]: decode and verify an attestation document (COSE_Sign1 ES384 over a
//!   CBOR payload, certificate chain to a pinned root, validity at a chosen time).
//! - [`policy`]: what a verified document must also say (PCRs, debug mode, nonce,
//!   `user_data` binding, age), and the [`policy::Binding`] format.
//! - [`nsm`]: the [`nsm::Nsm`] trait with the real `/dev/nsm` implementation and a simulated
//!   one that signs documents in the exact AWS format with a generated test CA.
//! - [`wire`]: the framed messages of the vsock link (boot config, attestation, signed
//!   reports, nonce refresh) and the evidence bundle the sidecar serves.
//! - [`sealed`]: sealed snapshots of the enclave's state (header, STREAM over AES-256-GCM).
//! - [`transport`]: vsock, Unix and TCP endpoints behind one stream type.
//! - [`constants`]: the vsock ports and CIDs the agent and the sidecar agree on.
//! - [`bounded`]: connection caps, idle/handshake/header/body timeouts and rate-limited
//!   refusal logs shared by every listener of the agent and the sidecar.
//! - [`budget`]: token buckets, global and per peer, for the paths anyone can reach.
//! - [`yaml`]: YAML that YAML 1.1 (kubectl) and YAML 1.2 readers read alike.
//! - [`errors`]: [`error_chain`], the one renderer of an error and its causes.
//!
//! ```text
//! agent ── Nsm::attest(user_data = Binding::v1(config, ca), nonce, public_key) ──► document
//! operator ── Verifier::verify(document, VerifyAt) ──► AttestationDocument ── Policy::check ──► ok
//! ```

pub mod attestation;
pub mod bounded;
pub mod budget;
pub mod constants;
pub mod errors;
pub mod nsm;
pub mod policy;
pub mod sealed;
pub mod transport;
pub mod wire;
pub mod yaml;

pub use attestation::{
    AttestationDocument, ChainCache, TrustAnchor, Verifier, VerifyAt, VerifyError,
};
pub use errors::error_chain;
pub use nsm::{NitroNsm, Nsm, NsmError, SimulatedNsm};
pub use policy::{Binding, Policy, PolicyError};
