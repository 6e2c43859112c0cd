//! The boot configuration (`BootConfig` / `EnclaveConfig`) as the sidecar reads it from its
//! file and the agent from its first frame, then everything the agent derives from it before
//! anything runs: distribution, component flags, the K3s config YAML, tiers, zkLogin keys, the
//! Sui RPC URL, and the names in the API server's certificate.
//!
//! Input: the JSON body. Invariants beyond "no panic":
//! - the digest the attestation binds does not depend on the JSON's form (the canonical JSON
//!   parses back to an equal value with the same digest);
//! - a configuration whose flags validate renders K3s YAML that reads back (YAML 1.2, as
//!   serde_yaml does) to the configuration's own values and the flags, one for one;
//! - every flag value is non-empty and free of whitespace, control characters, ',' and '='
//!   beyond the cipher-suite list's commas, so `name=value` splits back unambiguously.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nautilus_agent::egress::Target;
use nautilus_agent::flags::{self, ComponentPorts, Distribution};
use nautilus_agent::material::{self, CertificateAuthority};
use nautilus_agent::{auth, k3s, kubernetes};
use nautilus_protocol::wire::{BootConfig, EnclaveConfig};
use serde_yaml::Value;

fn serving_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("nautilus fuzz CA").expect("a CA"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(boot) = serde_json::from_slice::<BootConfig>(data) else {
        return;
    };
    let config = &boot.config;
    let canonical = serde_json::to_vec(config).expect("serializes");
    let back: EnclaveConfig = serde_json::from_slice(&canonical).expect("canonical JSON parses");
    assert_eq!(&back, config);
    assert_eq!(back.digest(), config.digest());

    let cp = &config.control_plane;
    let _ = serving_ca().issue_server("kube-apiserver", &material::api_server_sans(cp));
    let _ = Target::parse(&config.auth.sui_rpc_url).map(|t| t.authority());
    let _ = auth::tiers(&config.auth);
    if let Some(zk_login) = &config.auth.zk_login {
        let _ = auth::zklogin_signatures(zk_login);
    }

    let distribution = Distribution::of(cp);
    let kubeconfig = Path::new("/run/nautilus/webhook-kubeconfig.yaml");
    let Ok(spec) = flags::spec_flags(config, kubeconfig, &ComponentPorts::default()) else {
        return;
    };
    assert!(distribution.is_ok(), "flags for an unknown distribution");
    for (name, value) in spec
        .apiserver
        .iter()
        .chain(&spec.scheduler)
        .chain(&spec.controller_manager)
    {
        let value = if name == "tls-cipher-suites" {
            value.replace(',', "")
        } else {
            value.clone()
        };
        flags::check_flag_value("flag", &value).expect("a flag value that needs quoting");
    }
    for arg in flags::as_k3s_args(&spec.apiserver) {
        let (name, value) = arg.split_once('=').expect("name=value");
        assert!(spec.apiserver.iter().any(|(n, v)| n == name && v == value));
    }

    let rendered = k3s::render_config(config, &spec).expect("validated flags render");
    let yaml: Value = serde_yaml::from_str(&rendered).expect("rendered YAML reads back");
    for (key, value) in [
        ("bind-address", &cp.bind_address),
        ("cluster-cidr", &cp.cluster_cidr),
        ("service-cidr", &cp.service_cidr),
        ("cluster-dns", &cp.cluster_dns),
        ("data-dir", &cp.data_dir),
    ] {
        assert_eq!(yaml[key].as_str(), Some(value.as_str()), "{key}");
    }
    assert_eq!(
        yaml["https-listen-port"].as_u64(),
        Some(u64::from(cp.https_port))
    );
    assert_eq!(
        yaml["secrets-encryption"].as_bool(),
        Some(cp.encrypt_secrets)
    );
    for (key, flags) in [
        ("kube-apiserver-arg", &spec.apiserver),
        ("kube-scheduler-arg", &spec.scheduler),
        ("kube-controller-manager-arg", &spec.controller_manager),
    ] {
        let listed: Vec<String> = yaml[key]
            .as_sequence()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect();
        assert_eq!(listed, flags::as_k3s_args(flags), "{key}");
    }

    let layout = kubernetes::Layout::new(Path::new(&cp.data_dir));
    let ports = ComponentPorts::default();
    let _ = kubernetes::apiserver_flags(config, &spec, &layout, &ports);
    let _ = kubernetes::controller_manager_flags(config, &spec, &layout);
    let _ = kubernetes::scheduler_flags(&spec, &layout);
});
