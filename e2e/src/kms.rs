//! The development KMS of the end-to-end tests of sealed state: `nautilus-kms-fixture`'s local
//! KMS on loopback TLS, with a key policy in AWS's format that releases data keys only to
//! enclaves of the given measurements, and the files the operator's local runtime hands its
//! sidecars and agents (the KMS's CA, the simulated NSM's root key, AWS shared credentials).
//!
//! The agents reach it as they would reach AWS KMS: through their sidecar's egress proxy,
//! with TLS ending in the agent, signing with SigV4 the credentials the sidecar relayed, and
//! asking with a Recipient attestation document the local KMS verifies against the simulated
//! NSM's root (the development stand-in for the AWS Nitro root).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nautilus_kms_fixture::policy::KeyPolicy;
use nautilus_kms_fixture::sigv4::SigningCredentials;
use nautilus_kms_fixture::{DevTls, LocalKms, LocalKmsConfig, MAX_DOCUMENT_AGE, Server, serve};
use nautilus_protocol::attestation::TrustAnchor;
use nautilus_protocol::nsm::{generate_root_key, root_pem_for_key};

/// The key's region.
pub const REGION: &str = "us-east-1";
/// The key's id.
pub const KEY_ID: &str = "5e1d0c0a-7a1e-4b5e-9c3e-0e2e5e5a1e01";
const ACCOUNT: &str = "111122223333";
const ROLE: &str = "arn:aws:iam::111122223333:role/nautilus-enclave-instance";
const ACCESS_KEY: &str = "ASIAE2EENCLAVEINSTANCE";
const SECRET: &str = "e2e-instance-role-secret";

/// A running local KMS and the files that let a local runtime use it.
#[derive(Debug)]
pub struct DevKms {
    server: Server,
    /// PEM of the CA of its TLS certificate (`--local-kms-ca-file`).
    pub ca_file: PathBuf,
    /// The simulated NSM's root key (`--local-simulated-root-key`): the root the KMS trusts.
    pub root_key_file: PathBuf,
    /// AWS shared credentials (`--local-aws-credentials-file`) the KMS accepts.
    pub credentials_file: PathBuf,
}

impl DevKms {
    /// Start it, writing its files into `dir`. Its key policy lets the instance role call
    /// `GenerateDataKey` and `Decrypt` only with a Recipient attesting `pcrs` (PCR0, PCR1,
    /// PCR2 as hex): `config/kms/key-policy.example.json` with those values.
    pub async fn start(dir: &Path, pcrs: [&str; 3]) -> Self {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/kms/key-policy.example.json"
        ))
        .expect("the example key policy")
        .replace(
            "REPLACE-WITH-PCR0-OF-THE-ENCLAVE-IMAGE-96-HEX-DIGITS",
            pcrs[0],
        )
        .replace("REPLACE-WITH-PCR1-96-HEX-DIGITS", pcrs[1])
        .replace("REPLACE-WITH-PCR2-96-HEX-DIGITS", pcrs[2]);
        let policy = KeyPolicy::from_json(&text).expect("the example key policy loads");
        let root_key = generate_root_key().expect("a simulated NSM root key");
        let root = TrustAnchor::from_pem(&root_pem_for_key(&root_key).expect("root certificate"))
            .expect("trust anchor");
        let mut master_key = [0u8; 32];
        getrandom_fill(&mut master_key);
        let kms = LocalKms::new(LocalKmsConfig {
            region: REGION.into(),
            account: ACCOUNT.into(),
            key_id: KEY_ID.into(),
            master_key,
            credentials: SigningCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET.into(),
                session_token: None,
            },
            caller_arn: ROLE.into(),
            policy,
            root,
            max_document_age: MAX_DOCUMENT_AGE,
        })
        .expect("local kms");
        let tls = DevTls::generate(&["localhost".into(), "127.0.0.1".into()]).expect("kms tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the local kms");
        let server = serve(Arc::new(kms), listener, &tls).expect("serve the local kms");
        let ca_file = dir.join("kms-ca.pem");
        let root_key_file = dir.join("nsm-root-key.pem");
        let credentials_file = dir.join("aws-credentials");
        std::fs::write(&ca_file, &tls.ca_pem).expect("write the kms CA");
        std::fs::write(&root_key_file, &root_key).expect("write the nsm root key");
        std::fs::write(
            &credentials_file,
            format!(
                "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET}\n"
            ),
        )
        .expect("write the credentials");
        Self {
            server,
            ca_file,
            root_key_file,
            credentials_file,
        }
    }

    /// `https://127.0.0.1:<port>`: `spec.state.kms.endpoint`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }
}

fn getrandom_fill(bytes: &mut [u8]) {
    use rand_core::RngCore as _;
    rand_core::OsRng.fill_bytes(bytes);
}
