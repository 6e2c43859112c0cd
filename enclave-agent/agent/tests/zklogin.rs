//! zkLogin in the enclave: the measured configuration's issuer keys and verifying key, and the
//! current epoch followed from the chain through the stake reader (which checks the chain id).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use nautilus_agent::auth::{self, AuthError};
use nautilus_agent::stake::{StakeConfig, SuiStakeReader};
use nautilus_protocol::wire::{JwkConfig, ZkLoginConfig};
use nautilus_seal::personal_message::{UNKNOWN_EPOCH, decode_signature_base64};
use nautilus_seal::{SignatureError, SignatureVerifier, token::parse_address};
use nautilus_sui_fixture::{CHAIN_ID, Chain, serve};

/// The valid zkLogin vector of the shared testdata and its test issuer key.
fn vector() -> Option<(serde_json::Value, ZkLoginConfig)> {
    let dir = nautilus_test_support::testdata_dir()?;
    let text = std::fs::read_to_string(dir.join("sui/personal_message_vectors.json")).ok()?;
    let all: serde_json::Value = serde_json::from_str(&text).ok()?;
    let v = all["vectors"]
        .as_array()?
        .iter()
        .find(|v| v["scheme"] == "zklogin" && v["expected_valid"] == true)?
        .clone();
    let req = &v["zklogin_requirements"];
    let jwk = &req["jwk"];
    let text = |x: &serde_json::Value| x.as_str().map(str::to_owned).unwrap_or_default();
    let config = ZkLoginConfig {
        verifying_key: "dev".into(),
        jwks: vec![JwkConfig {
            iss: text(&req["jwk_id"]["iss"]),
            kid: text(&req["jwk_id"]["kid"]),
            kty: text(&jwk["kty"]),
            e: text(&jwk["e"]),
            n: text(&jwk["n"]),
            alg: text(&jwk["alg"]),
        }],
    };
    Some((v, config))
}

fn check(verifier: &SignatureVerifier, v: &serde_json::Value) -> Result<(), SignatureError> {
    let address = parse_address(v["address"].as_str().unwrap_or_default()).expect("address");
    let message = base64::engine::general_purpose::STANDARD
        .decode(v["message_base64"].as_str().unwrap_or_default())
        .expect("message");
    let signature = decode_signature_base64(v["signature_base64"].as_str().unwrap_or_default())?;
    verifier.verify(&address, &message, &signature).map(|_| ())
}

async fn wait_for_epoch(verifier: &SignatureVerifier, want: u64) -> u64 {
    let handle = verifier.epoch_handle().expect("zklogin epoch");
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.load(Ordering::SeqCst) != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.load(Ordering::SeqCst)
}

#[tokio::test]
async fn the_followed_epoch_decides_whether_a_zklogin_signature_is_current() {
    let Some((v, config)) = vector() else {
        println!("skipped: testdata not found (NAUTILUS_TESTDATA or ../shared/testdata)");
        return;
    };
    let max_epoch = v["zklogin_requirements"]["max_epoch"]
        .as_u64()
        .expect("max_epoch");

    // Before the epoch is known: refused.
    let verifier = auth::zklogin_signatures(&config).expect("config");
    assert_eq!(
        check(&verifier, &v),
        Err(SignatureError::ZkLoginEpochUnknown)
    );

    // A chain at the signature's last epoch: accepted once the follower has read it.
    let addr = serve(Arc::new(Chain {
        epoch: max_epoch,
        ..Chain::default()
    }))
    .await;
    let reader = |expected: &str| {
        let client = sui_rpc::Client::new(format!("http://{addr}")).expect("client");
        SuiStakeReader::new(
            client,
            StakeConfig {
                expected_chain_id: Some(expected.to_owned()),
                ..StakeConfig::default()
            },
        )
        .expect("reader")
    };
    let follower = auth::follow_epoch(reader(CHAIN_ID), verifier.epoch_handle().expect("epoch"));
    assert_eq!(wait_for_epoch(&verifier, max_epoch).await, max_epoch);
    assert_eq!(check(&verifier, &v), Ok(()));
    follower.abort();

    // A chain past it: expired.
    let later = auth::zklogin_signatures(&config).expect("config");
    let addr2 = serve(Arc::new(Chain {
        epoch: max_epoch + 1,
        ..Chain::default()
    }))
    .await;
    let client = sui_rpc::Client::new(format!("http://{addr2}")).expect("client");
    let follower = auth::follow_epoch(
        SuiStakeReader::new(client, StakeConfig::default()).expect("reader"),
        later.epoch_handle().expect("epoch"),
    );
    assert_eq!(wait_for_epoch(&later, max_epoch + 1).await, max_epoch + 1);
    assert!(matches!(
        check(&later, &v),
        Err(SignatureError::ZkLoginExpired { .. })
    ));
    follower.abort();

    // A node serving another chain never sets the epoch: zkLogin stays refused.
    let foreign = auth::zklogin_signatures(&config).expect("config");
    let follower = auth::follow_epoch(
        reader("11111111111111111111111111111111"),
        foreign.epoch_handle().expect("epoch"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        foreign
            .epoch_handle()
            .expect("epoch")
            .load(Ordering::SeqCst),
        UNKNOWN_EPOCH
    );
    assert_eq!(
        check(&foreign, &v),
        Err(SignatureError::ZkLoginEpochUnknown)
    );
    follower.abort();
}

#[test]
fn an_unknown_verifying_key_is_a_configuration_error() {
    let config = ZkLoginConfig {
        verifying_key: "testnet".into(),
        jwks: Vec::new(),
    };
    assert!(matches!(
        auth::zklogin_signatures(&config),
        Err(AuthError::ZkLoginKey(k)) if k == "testnet"
    ));
}
