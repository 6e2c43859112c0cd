//! The nautilus operator: reconciles `NautilusMaster` resources into attested K3s control planes
//! running in AWS Nitro Enclaves.
//!
//! # Layout
//! - [`conditions`]: `metav1.Condition` maths (merge, `Ready`, phase), pure and unit-tested.
//! - [`desired`]: the children (boot ConfigMap, enclave StatefulSet, Service, kubeconfig Secret)
//!   computed from the spec, pure.
//! - [`verify`]: verification of the relayed evidence (attestation, policy, signed report) and
//!   the condition observations that follow, pure.
//!
//! The reconcile loop, children, verification and metrics build on these (see
//! `docs/architecture.md`). The `crdgen` binary renders the CRD from `nautilus-crds`.

pub mod conditions;
pub mod desired;
pub mod verify;
