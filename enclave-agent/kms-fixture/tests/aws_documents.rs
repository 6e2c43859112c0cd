//! Real AWS Nitro attestation documents (from $NAUTILUS_TESTDATA) through the local KMS's
//! Recipient checks with the AWS root: the chain and signature verify at each document's own
//! time (their certificates have expired since), the age limit applies, and the PCRs the key
//! policy compares are the documents' own.

use std::time::Duration;

use nautilus_kms_fixture::policy::KeyPolicy;
use nautilus_kms_fixture::policy::Operation;
use nautilus_kms_fixture::sigv4::SigningCredentials;
use nautilus_kms_fixture::{Fault, LocalKms, LocalKmsConfig, MAX_DOCUMENT_AGE};
use nautilus_protocol::attestation::{TrustAnchor, VerifyAt};

const ROLE: &str = "arn:aws:iam::111122223333:role/nautilus-enclave-instance";

fn kms(root: TrustAnchor, pcr0_hex: &str) -> LocalKms {
    let policy = KeyPolicy::from_json(&format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"enclave","Effect":"Allow",
            "Principal":{{"AWS":"{ROLE}"}},"Action":["kms:Decrypt","kms:GenerateDataKey"],
            "Resource":"*","Condition":{{"StringEqualsIgnoreCase":
            {{"kms:RecipientAttestation:ImageSha384":"{pcr0_hex}"}}}}}}]}}"#
    ))
    .expect("policy");
    LocalKms::new(LocalKmsConfig {
        region: "us-east-1".into(),
        account: "111122223333".into(),
        key_id: "k".into(),
        master_key: [1; 32],
        credentials: SigningCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "s".into(),
            session_token: None,
        },
        caller_arn: ROLE.into(),
        policy,
        root,
        max_document_age: MAX_DOCUMENT_AGE,
    })
    .expect("kms")
}

#[test]
fn real_documents_verify_and_their_pcrs_are_what_the_policy_compares() {
    let Some(dir) = nautilus_test_support::nitro_dir() else {
        return;
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    let lookalike = TrustAnchor::from_pem(
        &std::fs::read_to_string(dir.join("lookalike-root-not-aws.pem")).expect("lookalike"),
    )
    .expect("lookalike anchor");
    let mut checked = 0;
    for entry in manifest["documents"].as_array().expect("documents") {
        let file = entry["file"].as_str().expect("file");
        let bytes = std::fs::read(dir.join(file)).expect("document");
        let ts = entry["timestamp_ms"].as_u64().expect("timestamp_ms");
        let pcr0 = entry["pcr0"].as_str().expect("pcr0");
        let at = VerifyAt::UnixMillis(ts);
        let allowing = kms(TrustAnchor::aws_nitro_root_g1(), &pcr0.to_uppercase());

        if entry["verified_at_timestamp"] != serde_json::Value::Bool(true) {
            let err = allowing.check_document(&bytes, at, ts).expect_err(file);
            assert_eq!(err.code, "ValidationException", "{file}");
            continue;
        }
        let doc = allowing
            .check_document(&bytes, at, ts + 1_000)
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        assert_eq!(doc.pcr(0).map(hex::encode).as_deref(), Some(pcr0), "{file}");
        allowing
            .authorize(Operation::Decrypt, Some(&doc))
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        allowing
            .authorize(Operation::GenerateDataKey, Some(&doc))
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        // Another image's PCR0 is refused by the same policy shape.
        let other_pcr0 = if pcr0.starts_with('0') { "1" } else { "0" }.repeat(96);
        let refusing = kms(TrustAnchor::aws_nitro_root_g1(), &other_pcr0);
        let Fault { code, .. } = refusing
            .authorize(Operation::Decrypt, Some(&doc))
            .expect_err(file);
        assert_eq!(code, "AccessDeniedException");
        // None of these documents carries an RSA-2048 public key: no envelope for them.
        let Fault { code, message } = allowing
            .verify_recipient(&bytes, at, ts + 1_000)
            .expect_err(file);
        assert_eq!(code, "ValidationException");
        assert!(message.contains("public"), "{file}: {message}");
        // Older than the limit: refused, though the chain verifies.
        let late = ts + (MAX_DOCUMENT_AGE + Duration::from_secs(1)).as_millis() as u64;
        let Fault { message, .. } = allowing.check_document(&bytes, at, late).expect_err(file);
        assert!(message.contains("ms old"), "{file}: {message}");
        // At the present time the certificates have expired.
        assert!(
            allowing.check_document(&bytes, VerifyAt::Now, ts).is_err(),
            "{file}"
        );
        // A root that only looks like AWS's.
        assert!(
            kms(lookalike.clone(), pcr0)
                .check_document(&bytes, at, ts)
                .is_err(),
            "{file}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} documents checked");
}
