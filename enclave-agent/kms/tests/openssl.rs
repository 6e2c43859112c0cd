//! CMS made by an independent encoder (OpenSSL's `cms -encrypt`, streaming BER like KMS, and
//! DER) opens with this crate's checks, and OpenSSL's other choices (OAEP with SHA-1, PKCS #1
//! v1.5) are refused.

use std::path::Path;

use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey};
use nautilus_kms::envelope::{self, EnvelopeError};
use nautilus_test_support::openssl;

fn openssl_available() -> bool {
    openssl::available()
}

fn run(dir: &Path, args: &[&str]) {
    openssl::run(dir, args);
}

/// An RSA-2048 key and a self-signed certificate for it (OpenSSL encrypts to certificates).
fn recipient(dir: &Path) -> OaepPrivateDecryptingKey {
    run(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-subj",
            "/CN=recipient",
            "-days",
            "1",
            "-out",
            "cert.pem",
        ],
    );
    run(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
        ],
    );
    let pkcs8 = std::fs::read(dir.join("key.der")).expect("key.der");
    OaepPrivateDecryptingKey::new(PrivateDecryptingKey::from_pkcs8(&pkcs8).expect("pkcs8"))
        .expect("oaep key")
}

fn encrypt(dir: &Path, out: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec![
        "cms",
        "-encrypt",
        "-binary",
        "-in",
        "data.bin",
        "-aes-256-cbc",
        "-recip",
        "cert.pem",
        "-keyid",
        "-outform",
        "DER",
        "-out",
        out,
    ];
    args.extend(extra);
    run(dir, &args);
    std::fs::read(dir.join(out)).expect("cms")
}

const OAEP_SHA256: &[&str] = &[
    "-keyopt",
    "rsa_padding_mode:oaep",
    "-keyopt",
    "rsa_oaep_md:sha256",
    "-keyopt",
    "rsa_mgf1_md:sha256",
];

#[test]
fn openssl_cms_opens_in_ber_and_der_and_other_algorithms_are_refused() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key = recipient(dir.path());
    let data_key: [u8; 32] = std::array::from_fn(|i| i as u8 ^ 0x5c);
    std::fs::write(dir.path().join("data.bin"), data_key).expect("data");

    let mut streamed = vec!["-stream"];
    streamed.extend(OAEP_SHA256);
    let ber = encrypt(dir.path(), "ber.cms", &streamed);
    assert_eq!(
        &ber[..2],
        &[0x30, 0x80],
        "openssl -stream writes indefinite lengths"
    );
    let opened = envelope::open(&envelope::parse(&ber).expect("parses"), &key).expect("opens");
    assert_eq!(*opened, data_key);

    let der = encrypt(dir.path(), "der.cms", OAEP_SHA256);
    let opened = envelope::open(&envelope::parse(&der).expect("parses"), &key).expect("opens");
    assert_eq!(*opened, data_key);

    // OAEP with OpenSSL's default hash (SHA-1), and PKCS #1 v1.5: refused before any RSA.
    let sha1 = encrypt(
        dir.path(),
        "sha1.cms",
        &["-keyopt", "rsa_padding_mode:oaep"],
    );
    assert!(
        matches!(
            envelope::parse(&sha1),
            Err(EnvelopeError::Unexpected {
                field: "keyEncryptionAlgorithm",
                ..
            })
        ),
        "{:?}",
        envelope::parse(&sha1)
    );
    let pkcs1 = encrypt(dir.path(), "pkcs1.cms", &[]);
    assert!(matches!(
        envelope::parse(&pkcs1),
        Err(EnvelopeError::Unexpected {
            field: "keyEncryptionAlgorithm",
            ..
        })
    ));
    // Issuer-and-serial recipients (no -keyid) are not what KMS sends.
    let mut args = vec![
        "cms",
        "-encrypt",
        "-binary",
        "-in",
        "data.bin",
        "-aes-256-cbc",
        "-recip",
        "cert.pem",
        "-outform",
        "DER",
        "-out",
        "ias.cms",
    ];
    args.extend(OAEP_SHA256);
    run(dir.path(), &args);
    let ias = std::fs::read(dir.path().join("ias.cms")).expect("cms");
    assert!(envelope::parse(&ias).is_err());
}
