//! The generated CRD: drift against the committed YAML, structural-schema rules, documentation,
//! and the validation the API server will run on samples (OpenAPI keywords and CEL rules,
//! evaluated offline by kube's CEL engine with the Kubernetes extension libraries).

use std::path::PathBuf;

use kube::core::cel::{Validator, apply_defaults, compile_schema, estimate_rule_cost};
use nautilus_crds::{NautilusMaster, TierIdentity, crd, crd_yaml};
use pretty_assertions::assert_eq;
use rstest::rstest;
use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

fn schema() -> Value {
    let crd = crd();
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has an openAPIV3Schema"),
    )
    .expect("schema serializes")
}

fn sample() -> Value {
    let text = std::fs::read_to_string(workspace_root().join("config/samples/nautilusmaster.yaml"))
        .expect("config/samples/nautilusmaster.yaml is readable");
    serde_yaml::from_str(&text).expect("the sample is YAML")
}

#[test]
fn committed_crd_matches_the_types() {
    let committed = std::fs::read_to_string(workspace_root().join(nautilus_crds::CRD_PATH))
        .expect("crds/nautilusmaster.yaml is committed");
    let generated = crd_yaml().expect("CRD renders");
    assert!(
        committed == generated,
        "crds/nautilusmaster.yaml is stale: run `cargo run -p nautilus-operator --bin crdgen -- crds/nautilusmaster.yaml` and commit it"
    );
}

#[test]
fn crd_names_and_subresources() {
    let crd = crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("nautilusmasters.nautilus.k3s-daas.io")
    );
    assert_eq!(crd.spec.group, "nautilus.k3s-daas.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["nm".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.priority.unwrap_or(0)))
        .collect();
    assert_eq!(
        columns,
        [
            ("Phase", 0),
            ("Ready", 0),
            ("Attested", 0),
            ("Endpoint", 0),
            ("Age", 0),
            ("Snapshot", 1),
            ("Snapshot-Time", 1),
            ("Restored", 1),
            ("PCR0", 1)
        ]
    );
}

/// Checks the rules of a structural schema (apiextensions.k8s.io/v1): every node has a type,
/// no `$ref`, no `additionalProperties` beside `properties`, no unknown fields preserved, and
/// junctors (`anyOf`/`oneOf`/`allOf`) carry no types, defaults or descriptions of their own.
fn structural_violations(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema node is not an object"));
        return;
    };
    if obj.contains_key("$ref") {
        out.push(format!("{path}: $ref is not allowed"));
    }
    if obj.contains_key("x-kubernetes-preserve-unknown-fields") {
        out.push(format!("{path}: preserves unknown fields"));
    }
    if !obj.contains_key("type") && !obj.contains_key("x-kubernetes-int-or-string") {
        out.push(format!("{path}: has no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    for junctor in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(branches) = obj.get(junctor) {
            for branch in branches.as_array().into_iter().flatten() {
                for forbidden in [
                    "type",
                    "default",
                    "description",
                    "nullable",
                    "additionalProperties",
                ] {
                    if branch.get(forbidden).is_some() {
                        out.push(format!("{path}.{junctor}: branch sets {forbidden}"));
                    }
                }
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural_violations(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_violations(items, &format!("{path}[]"), out);
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        structural_violations(additional, &format!("{path}{{}}"), out);
    }
}

#[test]
fn schema_is_structural() {
    let mut violations = Vec::new();
    structural_violations(&schema(), "", &mut violations);
    assert!(
        violations.is_empty(),
        "not structural:\n{}",
        violations.join("\n")
    );
}

fn undocumented(node: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let child_path = format!("{path}.{name}");
            if child
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(child_path.clone());
            }
            undocumented(child, &child_path, out);
        }
    }
    if let Some(items) = node.get("items") {
        undocumented(items, path, out);
    }
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    let schema = schema();
    let mut missing = Vec::new();
    undocumented(&schema["properties"]["spec"], "spec", &mut missing);
    undocumented(&schema["properties"]["status"], "status", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// The OpenAPI keywords this CRD uses, checked the way the API server checks them.
fn openapi_violations(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            out.push(format!("{path}: must not be null"));
        }
        return;
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        out.push(format!("{path}: must be of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        out.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|max| len > max)
        {
            out.push(format!("{path}: longer than {}", schema["maxLength"]));
        }
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|min| len < min)
        {
            out.push(format!("{path}: shorter than {}", schema["minLength"]));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let re = regex::Regex::new(pattern).expect("schema pattern compiles");
            if !re.is_match(s) {
                out.push(format!("{path}: does not match {pattern}"));
            }
        }
    }
    if let Some(n) = value.as_f64() {
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|max| n > max)
        {
            out.push(format!("{path}: above maximum {}", schema["maximum"]));
        }
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|min| n < min)
        {
            out.push(format!("{path}: below minimum {}", schema["minimum"]));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|max| len > max)
        {
            out.push(format!("{path}: more than {} items", schema["maxItems"]));
        }
        if schema
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|min| len < min)
        {
            out.push(format!("{path}: fewer than {} items", schema["minItems"]));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                openapi_violations(item_schema, item, &format!("{path}[{i}]"), out);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                out.push(format!("{path}.{name}: required"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (name, child) in fields {
            let child_path = format!("{path}.{name}");
            match (props.and_then(|p| p.get(name)), additional) {
                (Some(child_schema), _) => {
                    openapi_violations(child_schema, child, &child_path, out)
                }
                (None, Some(additional)) if additional.is_object() => {
                    openapi_violations(additional, child, &child_path, out)
                }
                // Only apiVersion/kind/metadata live outside the declared properties.
                (None, _) if path.is_empty() => {}
                (None, _) => out.push(format!("{child_path}: unknown field")),
            }
        }
    }
}

/// Every message the API server would return for `object`: OpenAPI keywords, then CEL rules on
/// the defaulted object.
fn server_errors(object: &Value) -> Vec<String> {
    let schema = schema();
    let defaulted = apply_defaults(&schema, object);
    let mut errors = Vec::new();
    openapi_violations(&schema, &defaulted, "", &mut errors);
    if let Err(cel) = Validator::new().validate(&schema, &defaulted, None) {
        errors.extend(
            cel.into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    errors
}

#[test]
fn sample_is_accepted_and_deserializes() {
    let sample = sample();
    let errors = server_errors(&sample);
    assert!(errors.is_empty(), "the sample is rejected: {errors:#?}");
    let nm: NautilusMaster = serde_json::from_value(sample).expect("sample deserializes");
    assert_eq!(nm.token_audience(), "team-a/demo");
    assert_eq!(nm.spec.auth.tiers.len(), 3);
}

/// A minimal object: only what has no default.
fn minimal() -> Value {
    json!({
        "apiVersion": "nautilus.k3s-daas.io/v1alpha1",
        "kind": "NautilusMaster",
        "metadata": {"name": "mini", "namespace": "dev"},
        "spec": {"enclave": {
            "image": "registry.example.com/nautilus/enclave:v1",
            "pcr0": "a".repeat(96), "pcr1": "b".repeat(96), "pcr2": "c".repeat(96),
        }}
    })
}

#[test]
fn schema_defaults_equal_the_rust_defaults() {
    let defaulted = apply_defaults(&schema(), &minimal());
    assert!(server_errors(&minimal()).is_empty());
    let from_server: NautilusMaster = serde_json::from_value(defaulted).expect("deserializes");
    let from_rust: NautilusMaster = serde_json::from_value(minimal()).expect("deserializes");
    assert_eq!(from_server, from_rust);
    let cp = &from_server.spec.control_plane;
    assert_eq!(
        (
            cp.bind_address.as_str(),
            cp.https_port,
            cp.cluster_cidr.as_str(),
            cp.service_cidr.as_str()
        ),
        ("0.0.0.0", 6443, "10.42.0.0/16", "10.43.0.0/16")
    );
    assert_eq!(cp.cluster_dns, "10.43.0.10");
    assert!(cp.encrypt_secrets);
    let health = &from_server.spec.health;
    assert_eq!(
        (
            health.probe_interval_seconds,
            health.startup_timeout_seconds
        ),
        (5, 120)
    );
    let tiers: Vec<_> = from_server
        .spec
        .auth
        .tiers
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.min_stake_mist,
                t.groups.clone(),
                t.identity,
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            (
                "admin",
                10_000,
                vec!["system:masters".to_string()],
                TierIdentity::User
            ),
            (
                "worker",
                1_000,
                vec!["nautilus:node-proxiers".to_string()],
                TierIdentity::Node
            ),
            (
                "reader",
                100,
                vec!["nautilus:readers".to_string()],
                TierIdentity::User
            ),
        ]
    );
    assert!(!from_server.spec.attestation.allow_debug_mode);
    assert!(!from_server.spec.attestation.allow_simulated);
    assert_eq!(from_server.token_audience(), "dev/mini");
}

fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let mut node = object;
    for part in parent.split('/').skip(1) {
        node = node
            .as_object_mut()
            .expect("pointer walks objects")
            .entry(part)
            .or_insert_with(|| json!({}));
    }
    node.as_object_mut()
        .expect("parent is an object")
        .insert(key.to_string(), value);
}

#[rstest]
#[case::overlapping_cidrs("/spec/controlPlane/serviceCIDR", json!("10.42.128.0/20"), "clusterCIDR and serviceCIDR must not overlap")]
#[case::same_cidrs("/spec/controlPlane/serviceCIDR", json!("10.42.0.0/16"), "clusterCIDR and serviceCIDR must not overlap")]
#[case::service_contains_cluster("/spec/controlPlane/serviceCIDR", json!("10.0.0.0/8"), "clusterCIDR and serviceCIDR must not overlap")]
#[case::dns_outside_services("/spec/controlPlane/clusterDNS", json!("10.42.0.10"), "clusterDNS must be an address inside serviceCIDR")]
#[case::not_a_cidr("/spec/controlPlane/clusterCIDR", json!("10.42.0.0/33"), "clusterCIDR must be a CIDR")]
#[case::not_an_ip("/spec/controlPlane/bindAddress", json!("localhost"), "bindAddress must be an IPv4 or IPv6 address")]
#[case::ascending_tiers("/spec/auth/tiers", json!([
    {"name": "reader", "minStakeMist": 100, "groups": []},
    {"name": "admin", "minStakeMist": 10000, "groups": ["system:masters"]},
]), "strictly descending")]
#[case::equal_tiers("/spec/auth/tiers", json!([
    {"name": "a", "minStakeMist": 100, "groups": []},
    {"name": "b", "minStakeMist": 100, "groups": []},
]), "strictly descending")]
#[case::duplicate_tier_names("/spec/auth/tiers", json!([
    {"name": "a", "minStakeMist": 200, "groups": []},
    {"name": "a", "minStakeMist": 100, "groups": []},
]), "tier names must be unique")]
#[case::no_tiers("/spec/auth/tiers", json!([]), "fewer than 1 items")]
#[case::zero_stake_tier("/spec/auth/tiers", json!([{"name": "free", "minStakeMist": 0}]), "below minimum")]
#[case::short_pcr("/spec/enclave/pcr0", json!("abcd"), "does not match")]
#[case::non_hex_pcr("/spec/enclave/pcr1", json!("z".repeat(96)), "does not match")]
#[case::bad_pcr8("/spec/enclave/pcr8", json!("0".repeat(95)), "does not match")]
#[case::reserved_cid("/spec/enclave/enclaveCID", json!(3), "below minimum")]
#[case::bad_hugepage("/spec/enclave/hugepageSize", json!("4Ki"), "is not one of")]
#[case::bad_tls("/spec/controlPlane/tlsMinVersion", json!("VersionTLS11"), "is not one of")]
#[case::bad_log_format("/spec/controlPlane/logFormat", json!("xml"), "is not one of")]
#[case::plain_http_rpc("/spec/auth/suiRpcURL", json!("http://fullnode.mainnet.sui.io"), "does not match")]
#[case::bad_stake_type("/spec/auth/stakeType", json!("StakedSui"), "does not match")]
#[case::probe_slower_than_startup("/spec/health/probeIntervalSeconds", json!(200), "startupTimeoutSeconds must be longer")]
#[case::refresh_slower_than_max_age("/spec/attestation/refreshIntervalSeconds", json!(1000), "maxDocumentAgeSeconds must be longer")]
#[case::too_little_memory("/spec/enclave/memoryMiB", json!(128), "below minimum")]
#[case::unknown_field("/spec/enclave/cpus", json!(2), "unknown field")]
// Values the agent refuses at boot, refused here first.
#[case::unknown_cipher_suite("/spec/controlPlane/cipherSuites", json!(["TLS_FAKE_SUITE"]), "does not match")]
#[case::data_dir_with_a_space("/spec/controlPlane/dataDir", json!("/var/lib/k3s data"), "does not match")]
#[case::data_dir_with_a_comma("/spec/controlPlane/dataDir", json!("/var/lib/a,b"), "does not match")]
#[case::data_dir_with_nbsp("/spec/controlPlane/dataDir", json!("/var/lib/a\u{a0}b"), "must not contain whitespace")]
#[case::data_dir_with_a_control_character("/spec/controlPlane/dataDir", json!("/var/lib/a\u{85}b"), "must not contain whitespace")]
#[case::custom_stake_without_field("/spec/auth/stakeType", json!("0x2::coin::Coin<0x2::sui::SUI>"), "needs stakeAmountField")]
fn invalid_specs_are_rejected(#[case] pointer: &str, #[case] value: Value, #[case] expected: &str) {
    let mut object = sample();
    set(&mut object, pointer, value);
    let errors = server_errors(&object);
    assert!(
        errors.iter().any(|e| e.contains(expected)),
        "expected an error containing {expected:?}, got {errors:#?}"
    );
}

#[rstest]
#[case::ipv6_networks(json!({"clusterCIDR": "fd00:42::/56", "serviceCIDR": "fd00:43::/112", "clusterDNS": "fd00:43::a", "bindAddress": "::"}))]
#[case::adjacent_networks(json!({"clusterCIDR": "10.42.0.0/16", "serviceCIDR": "10.43.0.0/16", "clusterDNS": "10.43.255.254"}))]
fn valid_network_variants_are_accepted(#[case] control_plane: Value) {
    let mut object = minimal();
    set(&mut object, "/spec/controlPlane", control_plane);
    let errors = server_errors(&object);
    assert!(errors.is_empty(), "rejected: {errors:#?}");
}

/// Every rule with an estimated cost over the API server's per-rule budget, by rule text.
fn costly_rules(node: &Value, out: &mut Vec<String>) {
    let rules = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array);
    if let Some(rules) = rules {
        let compiled = compile_schema(node);
        for rule in rules {
            let text = rule["rule"].as_str().unwrap_or_default();
            out.extend(
                estimate_rule_cost(text, &compiled)
                    .into_iter()
                    .map(|w| format!("{text}: {w:?}")),
            );
        }
    }
    let children = node
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.values());
    for child in children.chain(node.get("items")) {
        costly_rules(child, out);
    }
}

#[test]
fn cel_rules_compile_and_fit_the_cost_budget() {
    let spec = schema()["properties"]["spec"].clone();
    let compiled = compile_schema(&spec);
    assert!(
        !compiled.has_errors(),
        "CEL rules do not compile: {:?}",
        compiled.compilation_errors()
    );
    let mut warnings = Vec::new();
    costly_rules(&spec, &mut warnings);
    assert!(warnings.is_empty(), "CEL cost warnings: {warnings:#?}");
}

#[rstest]
#[case::custom_stake_with_field(json!({"stakeType": "0x2::coin::Coin<0x2::sui::SUI>", "stakeAmountField": "value", "suiRpcURL": "https://fullnode.testnet.sui.io:443"}))]
#[case::staked_sui_with_leading_zeros(json!({"stakeType": "0x0000000000000000000000000000000000000000000000000000000000000003::staking_pool::StakedSui", "suiRpcURL": "https://fullnode.testnet.sui.io:443"}))]
fn valid_stake_types_are_accepted(#[case] auth: Value) {
    let mut object = minimal();
    set(&mut object, "/spec/auth", auth);
    let errors = server_errors(&object);
    assert!(errors.is_empty(), "rejected: {errors:#?}");
}

/// The CRD's cipher-suite pattern names exactly the suites the agent accepts: any other would
/// be admitted and then refused at boot, or refused here and accepted there.
#[test]
fn the_cipher_suite_pattern_is_the_agents_list() {
    let pattern = nautilus_crds::CIPHER_SUITE_PATTERN;
    let names: Vec<&str> = pattern
        .strip_prefix("^(")
        .and_then(|p| p.strip_suffix(")$"))
        .expect("an anchored alternation")
        .split('|')
        .collect();
    assert_eq!(names, nautilus_protocol::wire::CIPHER_SUITES);
    let re = regex::Regex::new(pattern).expect("compiles");
    assert!(!re.is_match("TLS_AES_128_GCM_SHA256X"));
}
