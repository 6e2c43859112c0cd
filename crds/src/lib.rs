//! API types of the `NautilusMaster` custom resource (`nautilus.k3s-daas.io/v1alpha1`).
//!
//! A `NautilusMaster` asks for one K3s control plane running inside an AWS Nitro Enclave, attested
//! by hardware, whose users are admitted by the SUI they have staked on the Sui chain.
//!
//! # Layout
//! - [`nautilus_master`]: the spec and status types; the `///` comments on every field become the
//!   `kubectl explain` text, and the `#[x_kube(validation)]` rules become CEL rules the API server
//!   enforces.
//! - [`conditions`]: condition types, reasons and phases, shared by the operator (which writes
//!   them) and by anything that reads status (e2e tests, the Argo CD health check).
//! - [`render`]: the measured boot configuration and the client kubeconfig rendered from a
//!   spec, shared by the operator and `nautilusctl verify` so both compute the same bytes.
//! - [`crd()`]: the `CustomResourceDefinition` rendered from the types. The committed
//!   `crds/nautilusmaster.yaml` must equal it; a test fails when it drifts.
//!
//! ```text
//! NautilusMaster ──owns──▶ ConfigMap <name>-boot        (BootConfig rendered from the spec)
//!               ──owns──▶ StatefulSet <name>-enclave    (sidecar + nitro-cli launcher)
//!               ──owns──▶ Service <name>                (the control plane's HTTPS port)
//!               ──owns──▶ Secret <name>-kubeconfig      (attested CA + endpoint, no credentials)
//! ```
//!
//! Besides the types and constants it holds only [`render`], pure functions of a spec. It never
//! picks a Kubernetes version feature of
//! `k8s-openapi`; binaries that link it do.

pub mod conditions;
pub mod nautilus_master;
pub mod render;

pub use nautilus_master::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every resource this project defines.
pub const GROUP: &str = "nautilus.k3s-daas.io";

/// Path of the generated CRD, relative to the workspace root.
pub const CRD_PATH: &str = "crds/nautilusmaster.yaml";

/// The `CustomResourceDefinition` of `NautilusMaster`, as the API server should receive it.
///
/// schemars names unsigned integers `uint16`, `uint32` and `uint64`, formats Kubernetes does
/// not know (the API server warns `unrecognized format` on every apply). They are written as the
/// signed formats that hold every value (`int32` for 16 bits, `int64` beyond); the `minimum: 0`
/// schemars adds keeps them unsigned.
///
/// Descriptions come from doc comments, whose line breaks are the source's wrapping, not the
/// text's: `kubectl explain` would break lines mid-sentence. Lines are joined into paragraphs,
/// as the core types' descriptions read; blank lines stay paragraph breaks.
///
/// The description of `status.conditions` is [`conditions::reasons_documentation`]: the reasons
/// users read there are the operator's own list.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = NautilusMaster::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            kubernetes_conventions(schema);
            if let Some(conditions) = schema
                .properties
                .as_mut()
                .and_then(|p| p.get_mut("status"))
                .and_then(|s| s.properties.as_mut())
                .and_then(|p| p.get_mut("conditions"))
            {
                conditions.description = Some(conditions::reasons_documentation());
            }
        }
    }
    crd
}

/// Join the lines of each paragraph of a doc-comment description.
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn kubernetes_conventions(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    if let Some(description) = schema.description.as_mut() {
        *description = paragraphs(description);
    }
    schema.format = match schema.format.take().as_deref() {
        Some("uint8" | "uint16") => Some("int32".to_owned()),
        Some("uint32" | "uint64") => Some("int64".to_owned()),
        other => other.map(str::to_owned),
    };
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        kubernetes_conventions(child);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => kubernetes_conventions(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(kubernetes_conventions)
        }
        None => {}
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(extra)) =
        schema.additional_properties.as_mut()
    {
        kubernetes_conventions(extra);
    }
    for junctor in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        junctor
            .iter_mut()
            .flatten()
            .for_each(kubernetes_conventions);
    }
}

/// The CRD rendered as YAML exactly as `crdgen` writes it to [`CRD_PATH`]: every scalar that
/// YAML 1.1 (kubectl) would read differently from YAML 1.2 is quoted.
pub fn crd_yaml() -> Result<String, nautilus_protocol::yaml::YamlError> {
    let body = nautilus_protocol::yaml::to_string(&crd())?;
    Ok(format!(
        "# Generated by `cargo run -p nautilus-operator --bin crdgen`; do not edit by hand.\n{body}"
    ))
}
