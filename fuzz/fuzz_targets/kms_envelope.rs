//! `CiphertextForRecipient` (`nautilus_kms::envelope`): the bounded BER-to-DER step, the CMS
//! decode with every algorithm check, and the RSA-OAEP/AES-CBC opening with a fixed key.
//!
//! Input: the bytes KMS would send. Invariants beyond "no panic":
//! - the BER-to-DER step is idempotent: its output is DER, which it returns unchanged;
//! - what parses has KMS's shape: a 256-byte encrypted key and one to four AES blocks;
//! - what opens is a 32-byte key (the type says so; the call must not panic on the way).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nautilus_kms::recipient::RecipientKey;
use nautilus_kms::{ber, envelope};

fn key() -> &'static RecipientKey {
    static KEY: OnceLock<RecipientKey> = OnceLock::new();
    KEY.get_or_init(|| RecipientKey::generate().expect("rsa-2048 key"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(der) = ber::to_der(data) {
        assert_eq!(
            ber::to_der(&der).as_ref(),
            Ok(&der),
            "to_der is not idempotent"
        );
    }
    if let Ok(parsed) = envelope::parse(data) {
        assert_eq!(parsed.encrypted_key.len(), envelope::RSA_2048_BYTES);
        assert!(!parsed.content.is_empty() && parsed.content.len() % 16 == 0);
        assert!(parsed.content.len() <= 64);
        let _ = key().open(data);
    }
});
