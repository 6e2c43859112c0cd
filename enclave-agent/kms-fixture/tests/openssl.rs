//! OpenSSL, an independent CMS implementation, decrypts the local KMS's
//! `CiphertextForRecipient` to the data key.

use std::process::Command;

use nautilus_kms_fixture::envelope;
use nautilus_test_support::openssl;

#[test]
fn openssl_cms_decrypt_yields_the_data_key() {
    if !openssl::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        openssl::run(dir.path(), args);
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "key.pem",
    ]);
    run(&[
        "pkey", "-in", "key.pem", "-pubout", "-outform", "DER", "-out", "pub.der",
    ]);
    let spki = std::fs::read(dir.path().join("pub.der")).expect("pub.der");

    let data_key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
    let cms = envelope::seal(&spki, &data_key).expect("seal");
    std::fs::write(dir.path().join("ct.der"), &cms).expect("write");
    run(&[
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        "ct.der",
        "-inkey",
        "key.pem",
        "-out",
        "plain.bin",
    ]);
    assert_eq!(
        std::fs::read(dir.path().join("plain.bin")).expect("plain"),
        data_key
    );
    // Another key does not decrypt it.
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "other.pem",
    ]);
    let out = Command::new("openssl")
        .args([
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            "ct.der",
            "-inkey",
            "other.pem",
            "-out",
            "other.bin",
        ])
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    let other = std::fs::read(dir.path().join("other.bin")).unwrap_or_default();
    assert!(!out.status.success() || other != data_key);

    // An attested key that is not RSA-2048 gets no envelope.
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:3072",
        "-out",
        "big.pem",
    ]);
    run(&[
        "pkey", "-in", "big.pem", "-pubout", "-outform", "DER", "-out", "big.der",
    ]);
    let big = std::fs::read(dir.path().join("big.der")).expect("big.der");
    assert!(envelope::seal(&big, &data_key).is_err());
}
