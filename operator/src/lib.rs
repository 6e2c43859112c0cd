//! The nautilus operator: reconciles `NautilusMaster` resources into attested K3s control planes
//! running in AWS Nitro Enclaves.
//!
//! # Layout
//! - [`conditions`]: `metav1.Condition` maths (merge, `Ready`, phase), pure and unit-tested.
//! - [`desired`]: the children (boot ConfigMap, enclave StatefulSet, Service, kubeconfig Secret)
//!   computed from the spec, pure.
//! - [`verify`]: verification of the relayed evidence (attestation, policy, signed report), pure.
//! - [`observe`]: what the operator sees of an enclave ([`observe::EnclaveState`]) and the
//!   condition observations that follow from it and the verification outcome, pure.
//! - [`controller`]: the reconcile loop (finalizer, server-side apply of children and status,
//!   re-attestation, Events) and [`controller::run`].
//! - [`runtime`]: where enclaves run: `pod` (StatefulSet) or `local` (a sidecar process).
//! - [`api`]: the watch cache, applies that skip unchanged children, the error of one API call.
//! - [`sidecar`]: the HTTP client for the sidecar's `/report` and `/attest`.
//! - [`follow`]: a long poll of each sidecar's `/report`, reconciling its resource when the
//!   evidence changes.
//! - [`events`]: Events about resources, as series, remembering only what a series needs.
//! - [`metrics`]: Prometheus metrics; [`admin`]: the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! Dependencies point one way: `controller` → `runtime` → `api`, `observe` → `verify`, and
//! everything → `desired`, `conditions`; nothing below `controller` imports it.
//!
//! See `docs/architecture.md` (section "Operator"). The `crdgen` binary renders the CRD from
//! `nautilus-crds`; the `nautilus-operator` binary (`main.rs`) wires these together.

pub mod admin;
pub mod api;
pub mod conditions;
pub mod controller;
pub mod desired;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod follow;
pub mod metrics;
pub mod observe;
pub mod runtime;
pub mod sidecar;
pub mod state;
pub mod verify;
