//! The user's check of a challenge answer, pure: what the user expects (rendered from the spec
//! they trust, plus their flags) against what the enclave answered through an untrusted relay.
//!
//! In order, each failure its own [`Refusal`]:
//! 1. the document is genuine: COSE signature, chain to the pinned AWS Nitro root (or, only
//!    with `--allow-simulated`, to the simulated root the evidence carries), validity now;
//! 2. it is the enclave expected and answers *this* challenge: debug mode, PCRs, the user's
//!    nonce, age;
//! 3. its `user_data` binds exactly the configuration and serving CA relayed with it, so
//!    neither was swapped on the way;
//! 4. that configuration is this resource's: it names the resource (`cluster` is
//!    `namespace/name`) and equals the one rendered from the spec. The local development runtime
//!    places the control plane on its own port and data directory; those three fields may
//!    differ only for a simulated document, and the result lists them.

use std::collections::BTreeMap;

use nautilus_protocol::attestation::{AttestationDocument, VerifyAt, VerifyError};
use nautilus_protocol::wire::{ChallengeResponse, EnclaveConfig};
use nautilus_protocol::{Binding, Policy, PolicyError, TrustAnchor, Verifier};

/// What the user expects of the enclave.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The configuration rendered from the spec (`nautilus_crds::render::enclave_config`).
    pub config: EnclaveConfig,
    /// PCRs by index, from the spec or the flags.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// `--allow-simulated`.
    pub allow_simulated: bool,
    /// `--allow-debug`.
    pub allow_debug: bool,
    /// Oldest document accepted, relative to now.
    pub max_age_ms: u64,
}

/// A field of the configuration the local runtime placed (it differs from the spec's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Placed {
    /// The field, as in the configuration's JSON (`controlPlane.httpsPort`).
    pub field: &'static str,
    /// The spec's value.
    pub spec: String,
    /// The attested value.
    pub attested: String,
}

/// An answer that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The document.
    pub document: AttestationDocument,
    /// Signed by a simulated NSM (accepted only with `--allow-simulated`).
    pub simulated: bool,
    /// The configuration the enclave runs, as bound by the document.
    pub config: EnclaveConfig,
    /// The CA that signs the control plane's serving certificates, as bound by the document.
    pub serving_ca_pem: String,
    /// SHA-256 of its DER.
    pub serving_ca_sha256: [u8; 32],
    /// Fields the local runtime placed.
    pub placed: Vec<Placed>,
}

/// Why the answer is refused. [`Refusal::reason`] is a stable CamelCase code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Steps before the check: the spec, the endpoint, the answer's transport.
    #[error("{0}")]
    Unreachable(String),
    /// The relayed answer is not a challenge response.
    #[error("the answer is not a challenge response: {0}")]
    Malformed(String),
    /// The document is not a genuine Nitro document valid now.
    #[error("the attestation document does not verify: {0}")]
    Document(VerifyError),
    /// A simulated document without `--allow-simulated`.
    #[error(
        "the attestation document is signed by a simulated NSM, not AWS Nitro hardware; pass \
         --allow-simulated to accept development enclaves"
    )]
    Simulated,
    /// Debug mode without `--allow-debug`.
    #[error("{0}; pass --allow-debug to accept it")]
    DebugMode(PolicyError),
    /// A PCR differs from the expected measurement.
    #[error("the enclave runs another image: {0}")]
    Pcr(PolicyError),
    /// The nonce is not the user's challenge: a replayed or foreign document.
    #[error("the document does not answer this challenge (replayed or foreign): {0}")]
    Nonce(PolicyError),
    /// The document is older than allowed or from the future.
    #[error("{0}")]
    Age(PolicyError),
    /// `user_data` does not bind the relayed configuration and CA: the answer was altered.
    #[error(
        "the document does not bind the configuration and serving CA relayed with it (altered \
         on the way): {0}"
    )]
    Binding(String),
    /// The configuration names another resource.
    #[error("the enclave serves {attested}, not {expected}: another resource's enclave answered")]
    WrongResource {
        /// `namespace/name` expected.
        expected: String,
        /// `namespace/name` attested.
        attested: String,
    },
    /// The configuration differs from the spec's.
    #[error("the enclave's configuration differs from the spec in {fields}")]
    ConfigMismatch {
        /// The differing fields, comma separated.
        fields: String,
    },
    /// The endpoint's TLS certificate does not chain to the attested CA.
    #[error("the endpoint's certificate is not from the attested CA: {0}")]
    Certificate(String),
}

impl Refusal {
    /// A short CamelCase code, for `--output json` and scripts.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "Unreachable",
            Self::Malformed(_) => "MalformedAnswer",
            Self::Document(_) => "DocumentInvalid",
            Self::Simulated => "SimulatedAttestation",
            Self::DebugMode(_) => "DebugMode",
            Self::Pcr(_) => "PCRMismatch",
            Self::Nonce(_) => "NonceMismatch",
            Self::Age(_) => "DocumentAge",
            Self::Binding(_) => "BindingMismatch",
            Self::WrongResource { .. } => "WrongResource",
            Self::ConfigMismatch { .. } => "ConfigMismatch",
            Self::Certificate(_) => "CertificateMismatch",
        }
    }
}

/// Check `answer` to the challenge `nonce` at `now_ms`.
pub fn check(
    expected: &Expected,
    nonce: &[u8],
    answer: &ChallengeResponse,
    now_ms: u64,
) -> Result<Verified, Refusal> {
    let evidence = &answer.attestation;
    let at = VerifyAt::UnixMillis(now_ms);

    // 1. Genuine?
    let aws = Verifier::new(TrustAnchor::aws_nitro_root_g1());
    let (document, simulated) = match aws.verify(&evidence.document, at) {
        Ok(document) => (document, false),
        Err(VerifyError::UntrustedRoot { .. }) if evidence.simulated_root_pem.is_some() => {
            if !expected.allow_simulated {
                return Err(Refusal::Simulated);
            }
            let root = evidence.simulated_root_pem.as_deref().unwrap_or_default();
            let anchor = TrustAnchor::from_pem(root).map_err(Refusal::Document)?;
            let document = Verifier::new(anchor)
                .verify(&evidence.document, at)
                .map_err(Refusal::Document)?;
            (document, true)
        }
        Err(err) => return Err(Refusal::Document(err)),
    };

    // 2. The enclave expected, answering this challenge?
    let policy = Policy {
        pcrs: expected.pcrs.clone(),
        allow_debug: expected.allow_debug,
        challenge: Some(nonce.to_vec()),
        max_age_ms: Some(expected.max_age_ms),
        ..Policy::default()
    };
    policy.check(&document, now_ms).map_err(|err| match err {
        PolicyError::DebugMode => Refusal::DebugMode(err),
        PolicyError::PcrMissing { .. } | PolicyError::PcrMismatch { .. } => Refusal::Pcr(err),
        PolicyError::NonceMissing { .. } | PolicyError::NonceMismatch { .. } => Refusal::Nonce(err),
        other => Refusal::Age(other),
    })?;

    // 3. Bound to what came with it?
    let serving_ca_sha256 = evidence
        .serving_ca_digest()
        .ok_or_else(|| Refusal::Binding("the serving CA is not a PEM certificate".into()))?;
    let binding = Binding::v1(answer.config.digest(), serving_ca_sha256);
    if document.user_data.as_deref() != Some(binding.as_slice()) {
        return Err(Refusal::Binding(format!(
            "user_data {}, the relayed configuration and CA give {}",
            document
                .user_data
                .as_ref()
                .map_or_else(|| "null".to_owned(), hex::encode),
            hex::encode(&binding)
        )));
    }

    // 4. This resource's configuration?
    let placed = identity(&expected.config, &answer.config, simulated)?;
    Ok(Verified {
        document,
        simulated,
        config: answer.config.clone(),
        serving_ca_pem: evidence.serving_ca_pem.clone(),
        serving_ca_sha256,
        placed,
    })
}

/// `attested` is the configuration of `expected`'s resource; returns the placed fields.
fn identity(
    expected: &EnclaveConfig,
    attested: &EnclaveConfig,
    simulated: bool,
) -> Result<Vec<Placed>, Refusal> {
    if attested.cluster != expected.cluster {
        return Err(Refusal::WrongResource {
            expected: expected.cluster.clone(),
            attested: attested.cluster.clone(),
        });
    }
    let (e, a) = (&expected.control_plane, &attested.control_plane);
    let placed: Vec<Placed> = [
        ("controlPlane.bindAddress", &e.bind_address, &a.bind_address),
        ("controlPlane.dataDir", &e.data_dir, &a.data_dir),
    ]
    .into_iter()
    .map(|(field, spec, attested)| (field, spec.clone(), attested.clone()))
    .chain([
        (
            "controlPlane.httpsPort",
            e.https_port.to_string(),
            a.https_port.to_string(),
        ),
        (
            "controlPlane.advertiseAddress",
            e.advertise_address.clone().unwrap_or_default(),
            a.advertise_address.clone().unwrap_or_default(),
        ),
    ])
    .filter(|(_, spec, attested)| spec != attested)
    .map(|(field, spec, attested)| Placed {
        field,
        spec,
        attested,
    })
    .collect();
    let mut unplaced = attested.clone();
    unplaced.control_plane.bind_address = e.bind_address.clone();
    unplaced.control_plane.data_dir = e.data_dir.clone();
    unplaced.control_plane.https_port = e.https_port;
    unplaced
        .control_plane
        .advertise_address
        .clone_from(&e.advertise_address);
    if unplaced != *expected {
        return Err(Refusal::ConfigMismatch {
            fields: differing_fields(expected, &unplaced).join(", "),
        });
    }
    if !placed.is_empty() && !simulated {
        // Only the local development runtime places configurations; a production enclave runs
        // the spec's exactly.
        return Err(Refusal::ConfigMismatch {
            fields: placed
                .iter()
                .map(|p| p.field)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(placed)
}

/// Dotted JSON paths (two levels deep) where `a` and `b` differ.
fn differing_fields(a: &EnclaveConfig, b: &EnclaveConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["the configuration".into()];
    };
    let mut fields = Vec::new();
    for (key, left) in &a {
        let right = b.get(key);
        if right == Some(left) {
            continue;
        }
        match (left, right) {
            (serde_json::Value::Object(l), Some(serde_json::Value::Object(r))) => {
                let keys: std::collections::BTreeSet<&String> = l.keys().chain(r.keys()).collect();
                fields.extend(
                    keys.into_iter()
                        .filter(|k| l.get(*k) != r.get(*k))
                        .map(|k| format!("{key}.{k}")),
                );
            }
            _ => fields.push(key.clone()),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use nautilus_protocol::nsm::{Nsm as _, SimulatedNsm};
    use nautilus_protocol::wire::AttestationEvidence;

    fn mk_config(cluster: &str) -> EnclaveConfig {
        serde_json::from_value(serde_json::json!({
            "cluster": cluster,
            "controlPlane": {
                "bindAddress": "0.0.0.0", "httpsPort": 6443, "clusterCIDR": "10.42.0.0/16",
                "serviceCIDR": "10.43.0.0/16", "clusterDNS": "10.43.0.10",
                "dataDir": "/var/lib/rancher/k3s", "encryptSecrets": true,
                "tlsMinVersion": "VersionTLS13", "cipherSuites": [], "logLevel": "info",
                "logFormat": "json"
            },
            "auth": {
                "suiRpcURL": "https://fullnode.testnet.sui.io:443",
                "stakeType": "0x3::staking_pool::StakedSui", "audience": format!("{cluster}"),
                "maxTokenLifetimeSeconds": 3600, "stakeCacheTTLSeconds": 60,
                "tiers": [{ "name": "admin", "minStakeMist": 1, "groups": ["system:masters"] }]
            },
            "health": { "probeIntervalSeconds": 5, "startupTimeoutSeconds": 120 }
        }))
        .expect("config")
    }

    struct Enclave {
        nsm: SimulatedNsm,
        ca_pem: String,
    }

    impl Enclave {
        fn new() -> Self {
            let nsm = SimulatedNsm::new()
                .expect("nsm")
                .with_pcr(0, &[0x10; 48])
                .expect("pcr")
                .with_pcr(1, &[0x11; 48])
                .expect("pcr")
                .with_pcr(2, &[0x12; 48])
                .expect("pcr");
            // Any certificate serves as "the serving CA" here; the simulated root is one.
            let ca_pem = nsm.root_pem().to_owned();
            Self { nsm, ca_pem }
        }

        /// What an honest enclave running `config` answers to `nonce`.
        fn answer(&self, config: &EnclaveConfig, nonce: &[u8]) -> ChallengeResponse {
            let mut evidence = AttestationEvidence {
                document: Vec::new(),
                serving_ca_pem: self.ca_pem.clone(),
                simulated_root_pem: Some(self.nsm.root_pem().to_owned()),
            };
            let binding = Binding::v1(
                config.digest(),
                evidence.serving_ca_digest().expect("ca digest"),
            );
            evidence.document = self
                .nsm
                .attest(Some(&binding), Some(nonce), Some(b"report key"))
                .expect("attest");
            ChallengeResponse {
                config: config.clone(),
                attestation: evidence,
                report: None,
            }
        }
    }

    fn expected(config: EnclaveConfig) -> Expected {
        Expected {
            config,
            pcrs: [
                (0, vec![0x10; 48]),
                (1, vec![0x11; 48]),
                (2, vec![0x12; 48]),
            ]
            .into(),
            allow_simulated: true,
            allow_debug: false,
            max_age_ms: 300_000,
        }
    }

    fn now() -> u64 {
        nautilus_protocol::attestation::now_unix_millis().expect("clock")
    }

    #[test]
    fn an_honest_answer_verifies_and_names_its_ca() {
        let enclave = Enclave::new();
        let config = mk_config("team-a/demo");
        let answer = enclave.answer(&config, b"user nonce");
        let verified =
            check(&expected(config.clone()), b"user nonce", &answer, now()).expect("verified");
        assert!(verified.simulated);
        assert!(verified.placed.is_empty());
        assert_eq!(verified.config, config);
        assert_eq!(verified.serving_ca_pem, enclave.ca_pem);
    }

    #[test]
    fn each_attack_is_refused_with_its_own_reason() {
        let enclave = Enclave::new();
        let config = mk_config("team-a/demo");
        let honest = enclave.answer(&config, b"user nonce");
        let reason = |expected: &Expected, nonce: &[u8], answer: &ChallengeResponse| {
            check(expected, nonce, answer, now())
                .err()
                .map(|e| e.reason())
        };
        let exp = expected(config.clone());

        // A simulated document without the flag.
        let strict = Expected {
            allow_simulated: false,
            ..exp.clone()
        };
        assert_eq!(
            reason(&strict, b"user nonce", &honest),
            Some("SimulatedAttestation")
        );
        // Another image.
        let mut other_image = exp.clone();
        other_image.pcrs.insert(0, vec![0xaa; 48]);
        assert_eq!(
            reason(&other_image, b"user nonce", &honest),
            Some("PCRMismatch")
        );
        // A replayed document: it answers an earlier challenge.
        assert_eq!(
            reason(&exp, b"a newer nonce", &honest),
            Some("NonceMismatch")
        );
        // A relay swapping the CA (to intercept TLS) or the configuration.
        let mut swapped_ca = honest.clone();
        swapped_ca.attestation.serving_ca_pem = Enclave::new().ca_pem;
        assert_eq!(
            reason(&exp, b"user nonce", &swapped_ca),
            Some("BindingMismatch")
        );
        let mut swapped_config = honest.clone();
        swapped_config.config.auth.tiers[0].min_stake_mist = 0;
        assert_eq!(
            reason(&exp, b"user nonce", &swapped_config),
            Some("BindingMismatch")
        );
        // A byte flipped in the document.
        let mut flipped = honest.clone();
        let last = flipped.attestation.document.len() - 1;
        flipped.attestation.document[last] ^= 1;
        assert_eq!(
            reason(&exp, b"user nonce", &flipped),
            Some("DocumentInvalid")
        );
        // A genuine enclave of the same image, relayed for another resource: its config (and
        // so the digest it attests) names that resource.
        let other = enclave.answer(&mk_config("team-a/other"), b"user nonce");
        assert_eq!(reason(&exp, b"user nonce", &other), Some("WrongResource"));
        // The same resource name, another configuration than the spec's.
        let mut changed = config.clone();
        changed.auth.stake_cache_ttl_seconds = 3600;
        let answer = enclave.answer(&changed, b"user nonce");
        let refusal = check(&exp, b"user nonce", &answer, now()).expect_err("refused");
        assert_eq!(refusal.reason(), "ConfigMismatch");
        assert!(
            refusal.to_string().contains("auth.stakeCacheTTLSeconds"),
            "{refusal}"
        );
        // Too old (the simulated leaf certificate lives 3 h, so only the age fails).
        assert_eq!(
            check(&exp, b"user nonce", &honest, now() + 301_000)
                .err()
                .map(|e| e.reason()),
            Some("DocumentAge")
        );
    }

    #[test]
    fn placed_fields_are_listed_for_simulated_documents_only() {
        let enclave = Enclave::new();
        let spec = mk_config("team-a/demo");
        let mut placed = spec.clone();
        placed.control_plane.bind_address = "127.0.0.1".into();
        placed.control_plane.https_port = 40123;
        placed.control_plane.data_dir = "/tmp/op/team-a_demo/data".into();
        placed.control_plane.advertise_address = Some("10.213.0.1".into());
        let answer = enclave.answer(&placed, b"n");
        let verified = check(&expected(spec.clone()), b"n", &answer, now()).expect("verified");
        let fields: Vec<_> = verified.placed.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "controlPlane.bindAddress",
                "controlPlane.dataDir",
                "controlPlane.httpsPort",
                "controlPlane.advertiseAddress"
            ]
        );
        assert_eq!(verified.placed[3].attested, "10.213.0.1");
        assert_eq!(verified.placed[2].attested, "40123");
        // From real hardware the same difference is a mismatch (checked without the document).
        let refused = identity(&spec, &placed, false).expect_err("refused");
        assert_eq!(refused.reason(), "ConfigMismatch");
    }
}
