//! Runs the built `nautilusctl` binary: `token mint|verify|exec-credential` against a keystore
//! written in the Sui CLI format, and `sui verify-personal-message` against real vectors.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nautilus_seal::signer::{Keystore, generate_key};
use nautilus_seal::{SealVerifier, SignatureScheme, unix_now};
use serde_json::Value;

const AUD: &str = "cluster-a.example";

fn nautilusctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nautilusctl"))
        .args(args)
        .env_remove("NAUTILUS_SUI_KEYSTORE")
        .output()
        .expect("binary runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A keystore of one key per simple scheme, written as `sui.keystore` is: a JSON array of
/// base64 `flag || private key` strings.
fn keystore(dir: &Path) -> (PathBuf, Vec<String>) {
    let keys: Vec<_> = [
        SignatureScheme::Ed25519,
        SignatureScheme::Secp256k1,
        SignatureScheme::Secp256r1,
    ]
    .into_iter()
    .map(|scheme| generate_key(scheme).unwrap())
    .collect();
    let entries: Vec<String> = keys.iter().map(|k| k.to_keystore_entry()).collect();
    let path = dir.join("sui.keystore");
    std::fs::write(&path, serde_json::to_string_pretty(&entries).unwrap()).unwrap();
    // The file parses back to the same addresses.
    let reparsed = Keystore::load(&path).unwrap();
    assert_eq!(reparsed.keys().len(), 3);
    let addresses = keys.iter().map(|k| k.address().to_string()).collect();
    (path, addresses)
}

fn mint(keystore: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "mint",
        "--keystore",
        keystore.to_str().unwrap(),
        "--audience",
        AUD,
    ];
    args.extend_from_slice(extra);
    let out = nautilusctl(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

#[test]
fn mint_then_verify_with_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let (path, addresses) = keystore(dir.path());

    // Default: the first key.
    let token = mint(&path, &[]);
    let verified = SealVerifier::new(AUD).verify(&token, unix_now()).unwrap();
    assert_eq!(verified.address.to_string(), addresses[0]);
    assert_eq!(verified.expires_at - verified.issued_at, 15 * 60);

    for address in &addresses {
        let token = mint(&path, &["--address", address, "--ttl", "5m"]);
        let out = nautilusctl(&[
            "token",
            "verify",
            &token,
            "--audience",
            AUD,
            "--output",
            "json",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(report["valid"], true);
        assert_eq!(report["address"], address.as_str());
        assert_eq!(report["audience"], AUD);
        assert_eq!(
            report["expiresAt"].as_u64().unwrap() - report["issuedAt"].as_u64().unwrap(),
            300
        );
    }

    let out = nautilusctl(&["token", "verify", &token, "--audience", AUD]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&addresses[0]));
}

#[test]
fn verify_refuses_wrong_audience_and_bad_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = keystore(dir.path());
    let token = mint(&path, &[]);

    let out = nautilusctl(&["token", "verify", &token, "--audience", "other-cluster"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("audience"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(&token),
        "the token must not be echoed"
    );

    let out = nautilusctl(&[
        "token",
        "verify",
        &token,
        "--audience",
        AUD,
        "--max-lifetime",
        "10m",
        "--output",
        "json",
    ]);
    assert_eq!(code(&out), 1);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["valid"], false);
    assert!(report["error"].as_str().unwrap().contains("lifetime"));

    let out = nautilusctl(&["token", "verify", "sui-seal.v1.garbage", "--audience", AUD]);
    assert_eq!(code(&out), 1);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = keystore(dir.path());
    // Missing --audience.
    assert_eq!(code(&nautilusctl(&["token", "verify", "x"])), 2);
    // Bad duration.
    let keystore = path.to_str().unwrap();
    let out = nautilusctl(&[
        "token",
        "mint",
        "--keystore",
        keystore,
        "--audience",
        AUD,
        "--ttl",
        "1d",
    ]);
    assert_eq!(code(&out), 2);
    // Unreadable keystore.
    let out = nautilusctl(&[
        "token",
        "mint",
        "--keystore",
        "/nonexistent/sui.keystore",
        "--audience",
        AUD,
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    // A key the keystore does not hold: not a usage error, the operation failed.
    let absent = format!("0x{}", "11".repeat(32));
    let out = nautilusctl(&[
        "token",
        "mint",
        "--keystore",
        keystore,
        "--address",
        &absent,
        "--audience",
        AUD,
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("no key for address"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exec_credential_is_what_kubectl_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (path, addresses) = keystore(dir.path());
    let out = nautilusctl(&[
        "token",
        "exec-credential",
        "--keystore",
        path.to_str().unwrap(),
        "--address",
        &addresses[2],
        "--audience",
        AUD,
        "--ttl",
        "10m",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let credential: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(credential["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(credential["kind"], "ExecCredential");
    let status = credential["status"].as_object().unwrap();
    assert_eq!(status.len(), 2, "only token and expirationTimestamp");

    let token = status["token"].as_str().unwrap();
    let verified = SealVerifier::new(AUD).verify(token, unix_now()).unwrap();
    assert_eq!(verified.address.to_string(), addresses[2]);

    let expiration = status["expirationTimestamp"].as_str().unwrap();
    let parsed =
        time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert_eq!(
        u64::try_from(parsed.unix_timestamp()).unwrap(),
        verified.expires_at
    );
}

fn vectors() -> Option<Vec<Value>> {
    let dir = nautilus_test_support::testdata_dir()?;
    let text = std::fs::read_to_string(dir.join("sui/personal_message_vectors.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    Some(json["vectors"].as_array().unwrap().clone())
}

fn verify_vector(v: &Value) -> Output {
    nautilusctl(&[
        "sui",
        "verify-personal-message",
        "--address",
        v["address"].as_str().unwrap(),
        "--message-base64",
        v["message_base64"].as_str().unwrap(),
        "--signature",
        v["signature_base64"].as_str().unwrap(),
    ])
}

/// The vector's zkLogin requirements: the test issuer's key and the signature's max epoch.
fn zklogin_requirements(v: &Value) -> Value {
    let req = v["zklogin_requirements"].clone();
    assert!(req.is_object(), "zklogin vector states its requirements");
    req
}

#[test]
fn verify_personal_message_with_zklogin_inputs() {
    let Some(vectors) = vectors() else { return };
    let dir = tempfile::tempdir().unwrap();
    for v in vectors.iter().filter(|v| v["scheme"] == "zklogin") {
        let req = zklogin_requirements(v);
        let jwks = dir.path().join("jwks.json");
        let entry = serde_json::json!([{
            "iss": req["jwk_id"]["iss"], "kid": req["jwk_id"]["kid"], "jwk": req["jwk"]
        }]);
        std::fs::write(&jwks, entry.to_string()).unwrap();
        let max_epoch = req["max_epoch"].as_u64().unwrap();
        let run = |epoch: u64, key: &str| {
            nautilusctl(&[
                "sui",
                "verify-personal-message",
                "--address",
                v["address"].as_str().unwrap(),
                "--message-base64",
                v["message_base64"].as_str().unwrap(),
                "--signature",
                v["signature_base64"].as_str().unwrap(),
                "--zklogin-jwks",
                jwks.to_str().unwrap(),
                "--zklogin-epoch",
                &epoch.to_string(),
                "--zklogin-key",
                key,
            ])
        };
        let out = run(max_epoch, "dev");
        if v["expected_valid"] == true {
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            assert!(stdout(&out).contains("valid zklogin"), "{}", stdout(&out));
            let out = run(max_epoch + 1, "dev");
            assert_eq!(code(&out), 1);
            assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
            assert_eq!(code(&run(max_epoch, "mainnet")), 1);
        } else {
            assert_eq!(code(&out), 1, "{}", stdout(&out));
        }
    }
}

#[test]
fn verify_personal_message_with_real_vectors() {
    let Some(vectors) = vectors() else { return };
    let positive = vectors
        .iter()
        .find(|v| v["expected_valid"] == true && v["scheme"] == "ed25519")
        .expect("a valid ed25519 vector");
    let out = verify_vector(positive);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("valid ed25519"));

    let multisig = vectors
        .iter()
        .find(|v| v["expected_valid"] == true && v["scheme"] == "multisig")
        .expect("a valid multisig vector");
    assert_eq!(code(&verify_vector(multisig)), 0);

    let negative = vectors
        .iter()
        .find(|v| v["expected_valid"] == false && v["scheme"] != "zklogin")
        .expect("a negative vector");
    let out = verify_vector(negative);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));

    // zkLogin without its inputs: refused, with the reason.
    let zklogin = vectors
        .iter()
        .find(|v| v["scheme"] == "zklogin" && v["expected_valid"] == true)
        .expect("a zklogin vector");
    let out = verify_vector(zklogin);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("zklogin not configured"),
        "{}",
        stderr(&out)
    );

    // A valid signature claimed for another address.
    let mut other = positive.clone();
    other["address"] = Value::from(format!("0x{}", "22".repeat(32)));
    let out = verify_vector(&other);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not by the claimed address"),
        "{}",
        stderr(&out)
    );
}
