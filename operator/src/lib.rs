//! The nautilus operator: reconciles `NautilusMaster` resources into attested K3s control planes
//! running in AWS Nitro Enclaves.
//!
//! # Layout
//! - [`conditions`]: `metav1.Condition` maths (merge, `Ready`, phase), pure and unit-tested.
//! - [`desired`]: the children (boot ConfigMap, enclave StatefulSet, Service, kubeconfig Secret)
//!   computed from the spec, pure.
//! - [`controller`]: the reconcile loop (finalizer, server-side apply of children and status,
//!   re-attestation, Events) and [`controller::run`].
//! - [`runtime`]: where enclaves run: `pod` (StatefulSet) or `local` (a sidecar process).
//! - [`sidecar`]: the HTTP client for the sidecar's `/report` and `/attest`.
//! - [`metrics`]: Prometheus metrics; [`admin`]: the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`verify`]: verification of the relayed evidence (attestation, policy, signed report) and
//!   the condition observations that follow, pure.
//!
//! See `docs/architecture.md` (section "Operator"). The `crdgen` binary renders the CRD from
//! `nautilus-crds`; the `nautilus-operator` binary (`main.rs`) wires these together.

pub mod admin;
pub mod conditions;
pub mod controller;
pub mod desired;
#[cfg(test)]
mod fixtures;
pub mod metrics;
pub mod runtime;
pub mod sidecar;
pub mod verify;
