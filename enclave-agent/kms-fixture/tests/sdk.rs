//! The agent's KMS client (the real `aws-sdk-kms` with the crate's own connector) against the
//! local KMS over loopback TLS, with a simulated NSM whose root the local KMS trusts.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use nautilus_kms::{
    Credentials, Dialer, KmsClient, KmsError, KmsTarget, RecipientAttester, Stream,
};
use nautilus_kms_fixture::policy::KeyPolicy;
use nautilus_kms_fixture::sigv4::SigningCredentials;
use nautilus_kms_fixture::{DevTls, LocalKms, LocalKmsConfig, MAX_DOCUMENT_AGE, Server, serve};
use nautilus_protocol::attestation::TrustAnchor;
use nautilus_protocol::nsm::{Nsm, SimulatedNsm, generate_root_key, root_pem_for_key};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

const ROLE: &str = "arn:aws:iam::111122223333:role/nautilus-enclave-instance";
const ACCESS_KEY: &str = "ASIAEXAMPLEINSTANCE1";
const SECRET: &str = "instance-role-secret-for-tests";
const TOKEN: &str = "instance-role-session-token";
const PCR0: [u8; 48] = [0xa0; 48];
const PCR1: [u8; 48] = [0xa1; 48];
const PCR2: [u8; 48] = [0xa2; 48];

/// Plain TCP to the address asked for: the test's stand-in for the egress tunnel.
struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(
        &self,
        host: String,
        port: u16,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Box<dyn Stream>>> {
        async move {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        }
        .boxed()
    }
}

/// Attests with a simulated NSM, optionally waiting after making the document.
struct SimAttester {
    nsm: SimulatedNsm,
    delay: Duration,
}

impl RecipientAttester for SimAttester {
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, String> {
        let doc = self
            .nsm
            .attest(None, None, Some(public_key_der))
            .map_err(|e| e.to_string())?;
        std::thread::sleep(self.delay);
        Ok(doc)
    }
}

fn nsm(root_key: &str, pcr0: [u8; 48]) -> SimulatedNsm {
    SimulatedNsm::with_root_key(root_key)
        .and_then(|s| s.with_pcr(0, &pcr0))
        .and_then(|s| s.with_pcr(1, &PCR1))
        .and_then(|s| s.with_pcr(2, &PCR2))
        .expect("simulated nsm")
}

/// The example key policy from config/, with the simulated enclave's measurements filled in.
fn example_policy() -> KeyPolicy {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/kms/key-policy.example.json"
    ))
    .expect("example policy")
    .replace(
        "REPLACE-WITH-PCR0-OF-THE-ENCLAVE-IMAGE-96-HEX-DIGITS",
        &hex::encode(PCR0),
    )
    .replace("REPLACE-WITH-PCR1-96-HEX-DIGITS", &hex::encode(PCR1))
    .replace("REPLACE-WITH-PCR2-96-HEX-DIGITS", &hex::encode(PCR2));
    KeyPolicy::from_json(&text).expect("example policy loads")
}

struct Setup {
    root_key: String,
    server: Server,
    ca_pem: String,
}

async fn start(max_document_age: Duration) -> Setup {
    let root_key = generate_root_key().expect("root key");
    let kms = LocalKms::new(LocalKmsConfig {
        region: "us-east-1".into(),
        account: "111122223333".into(),
        key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
        master_key: [0x5a; 32],
        credentials: SigningCredentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: Some(TOKEN.into()),
        },
        caller_arn: ROLE.into(),
        policy: example_policy(),
        root: TrustAnchor::from_pem(&root_pem_for_key(&root_key).expect("root pem"))
            .expect("anchor"),
        max_document_age,
    })
    .expect("local kms");
    let tls = DevTls::generate(&["localhost".into(), "127.0.0.1".into()]).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = serve(Arc::new(kms), listener, &tls).expect("serve");
    Setup {
        root_key,
        server,
        ca_pem: tls.ca_pem,
    }
}

fn client(setup: &Setup, secret: &str) -> KmsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(setup.ca_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    KmsClient::new(
        KmsTarget {
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            region: "us-east-1".into(),
            endpoint: Some(setup.server.endpoint()),
        },
        Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: secret.into(),
            session_token: Some(TOKEN.into()),
        },
        Arc::new(TcpDialer),
        roots,
    )
    .expect("client")
}

fn attester(nsm: SimulatedNsm) -> SimAttester {
    SimAttester {
        nsm,
        delay: Duration::ZERO,
    }
}

fn assert_refused(result: Result<impl std::fmt::Debug, KmsError>, code: &str, says: &str) {
    match result {
        Err(KmsError::Refused { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            assert!(message.contains(says), "{message:?} should say {says:?}");
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_then_decrypt_returns_the_same_key() {
    let setup = start(MAX_DOCUMENT_AGE).await;
    let kms = client(&setup, SECRET);
    let enclave = attester(nsm(&setup.root_key, PCR0));

    let (blob, key) = kms.generate_data_key(&enclave).await.expect("generate");
    assert!(blob.starts_with(b"NKB1"), "the fixture's blob format");
    let again = kms.decrypt(&blob, &enclave).await.expect("decrypt");
    assert_eq!(key.expose(), again.expose());
    assert_ne!(key.expose(), &[0u8; 32]);
    // A second key is another key.
    let (_, other) = kms.generate_data_key(&enclave).await.expect("generate");
    assert_ne!(key.expose(), other.expose());
    // A restarted enclave with the same measurements (a new simulator, same root) unseals.
    let restarted = attester(nsm(&setup.root_key, PCR0));
    let after = kms.decrypt(&blob, &restarted).await.expect("decrypt");
    assert_eq!(key.expose(), after.expose());
    assert_eq!(format!("{key:?}"), "DataKey(<redacted>)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enclave_with_other_measurements_is_refused() {
    let setup = start(MAX_DOCUMENT_AGE).await;
    let kms = client(&setup, SECRET);
    let (blob, _) = kms
        .generate_data_key(&attester(nsm(&setup.root_key, PCR0)))
        .await
        .expect("generate");
    let other = attester(nsm(&setup.root_key, [0xbb; 48]));
    assert_refused(
        kms.decrypt(&blob, &other).await,
        "AccessDeniedException",
        "no resource-based policy allows the kms:Decrypt action",
    );
    assert_refused(
        kms.generate_data_key(&other).await,
        "AccessDeniedException",
        "kms:GenerateDataKey",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_from_another_root_is_refused() {
    let setup = start(MAX_DOCUMENT_AGE).await;
    let kms = client(&setup, SECRET);
    // The right measurements, signed by another root (a fresh simulator).
    let foreign = SimulatedNsm::new()
        .and_then(|s| s.with_pcr(0, &PCR0))
        .and_then(|s| s.with_pcr(1, &PCR1))
        .and_then(|s| s.with_pcr(2, &PCR2))
        .expect("nsm");
    assert_refused(
        kms.generate_data_key(&attester(foreign)).await,
        "ValidationException",
        "not valid",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_document_is_refused() {
    // The age limit shortened to 1 s; the attester hands over a 2-second-old document.
    let setup = start(Duration::from_secs(1)).await;
    let kms = client(&setup, SECRET);
    let slow = SimAttester {
        nsm: nsm(&setup.root_key, PCR0),
        delay: Duration::from_secs(2),
    };
    assert_refused(
        kms.generate_data_key(&slow).await,
        "ValidationException",
        "ms old",
    );
    // The same attester without the wait is accepted: the age was the reason.
    kms.generate_data_key(&attester(nsm(&setup.root_key, PCR0)))
        .await
        .expect("a fresh document is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_blob_is_refused() {
    let setup = start(MAX_DOCUMENT_AGE).await;
    let kms = client(&setup, SECRET);
    let enclave = attester(nsm(&setup.root_key, PCR0));
    let (blob, _) = kms.generate_data_key(&enclave).await.expect("generate");
    let mut flipped = blob.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert_refused(
        kms.decrypt(&flipped, &enclave).await,
        "InvalidCiphertextException",
        "",
    );
    let mut flipped = blob;
    flipped[60] ^= 0x80;
    assert_refused(
        kms.decrypt(&flipped, &enclave).await,
        "InvalidCiphertextException",
        "",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_recipient_is_refused_by_the_example_policy() {
    let setup = start(MAX_DOCUMENT_AGE).await;
    let kms = client(&setup, SECRET);
    let result = kms
        .sdk()
        .generate_data_key()
        .key_id("1234abcd-12ab-34cd-56ef-1234567890ab")
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await;
    let err = result.expect_err("no unconditioned GenerateDataKey");
    use aws_sdk_kms::error::ProvideErrorMetadata as _;
    assert_eq!(err.code(), Some("AccessDeniedException"), "{err:?}");

    let (blob, _) = kms
        .generate_data_key(&attester(nsm(&setup.root_key, PCR0)))
        .await
        .expect("generate");
    let err = kms
        .sdk()
        .decrypt()
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
        .send()
        .await
        .expect_err("no unconditioned Decrypt");
    assert_eq!(err.code(), Some("AccessDeniedException"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_signature_is_refused() {
    let setup = start(MAX_DOCUMENT_AGE).await;
    let kms = client(&setup, "not-the-secret");
    assert_refused(
        kms.generate_data_key(&attester(nsm(&setup.root_key, PCR0)))
            .await,
        "InvalidSignatureException",
        "signature",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused() {
    let setup = start(MAX_DOCUMENT_AGE).await;
    let other_ca = DevTls::generate(&["127.0.0.1".into()]).expect("tls").ca_pem;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(other_ca.as_bytes()).expect("pem"))
        .expect("root");
    let kms = KmsClient::new(
        KmsTarget {
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            region: "us-east-1".into(),
            endpoint: Some(setup.server.endpoint()),
        },
        Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: Some(TOKEN.into()),
        },
        Arc::new(TcpDialer),
        roots,
    )
    .expect("client");
    let result = kms
        .generate_data_key(&attester(nsm(&setup.root_key, PCR0)))
        .await;
    assert!(
        matches!(result, Err(KmsError::Transport { .. })),
        "{result:?}"
    );
}
