//! vsock frames (`nautilus_protocol::wire`): header checks, the JSON body of each kind, the
//! nonce rule, and the signed reports inside them.
//!
//! Input: one byte choosing the read size (a socket gives partial reads), then the stream.
//! Invariants beyond "no panic":
//! - a frame that reads is re-written by `write_message` and reads back equal
//!   (decode(encode(x)) == x), and reading consumed exactly its header and announced body;
//! - a report body that parses signs and verifies back to itself with a fresh key, and the
//!   relayed signature (made by nobody) does not verify under that key;
//! - what the sidecar does with an agent's message (keep the attestation and the report key
//!   it carries, check the report, answer `/readyz`) holds, and the `/report` bundle it then
//!   serves parses back, as the operator parses it, to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nautilus_fuzz::{Chunked, block_on};
use nautilus_protocol::wire::{
    self, EnclaveInfo, EvidenceBundle, FRAME_HEADER_LEN, MAX_FRAME_BODY, Message, ReportSigner,
    ReportVerifier,
};
use nautilus_sidecar::evidence::Evidence;
use nautilus_sidecar::metrics::Metrics;
use std::sync::OnceLock;

fn signer() -> &'static ReportSigner {
    static SIGNER: OnceLock<ReportSigner> = OnceLock::new();
    SIGNER.get_or_init(ReportSigner::generate)
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut reader = Chunked::new(stream, usize::from(chunk % 16) + 1);
    let Ok(message) = block_on(wire::read_message(&mut reader)) else {
        return;
    };
    let consumed = stream.len() - reader.remaining().len();
    let announced = u32::from_be_bytes([stream[4], stream[5], stream[6], stream[7]]) as usize;
    assert_eq!(
        consumed,
        FRAME_HEADER_LEN + announced,
        "read past its frame"
    );
    assert!(announced <= MAX_FRAME_BODY);

    let mut written = Vec::new();
    block_on(wire::write_message(&mut written, &message))
        .expect("a message that was read can be written again");
    let mut again = written.as_slice();
    let back = block_on(wire::read_message(&mut again)).expect("a written frame reads");
    assert_eq!(back, message, "decode(encode(x)) != x");
    assert!(again.is_empty());

    relay(&message);
    match &message {
        Message::BootConfig(boot) => {
            // The digest is what the attestation binds: it must not depend on the JSON's form.
            assert_eq!(
                boot.config.digest(),
                match &back {
                    Message::BootConfig(b) => b.config.digest(),
                    _ => unreachable!(),
                }
            );
        }
        Message::Attestation(evidence) => {
            let _ = evidence.serving_ca_digest();
        }
        Message::Report(signed) => {
            let Ok(report) = signed.unverified_report() else {
                return;
            };
            let key = signer().public_key_der();
            let verifier = ReportVerifier::new(&key, report.boot_config_digest.clone(), 1000)
                .expect("our own key");
            assert!(
                verifier.check(signed, report.time_unix_ms).is_err(),
                "a relayed signature verified under a key nobody else holds"
            );
            let resigned = signer().sign(&report);
            let checked = verifier
                .check(&resigned, report.time_unix_ms)
                .expect("a report we signed verifies");
            assert_eq!(checked, report, "sign/verify changed the report");
        }
        Message::NonceRefresh(refresh) => {
            assert!(wire::check_nonce(&refresh.nonce).is_ok());
        }
        Message::Challenge(challenge) => {
            assert!(wire::check_nonce(&challenge.nonce).is_ok());
        }
        Message::ChallengeAnswer(answer) => {
            assert!(wire::check_nonce(&answer.nonce).is_ok());
            let _ = answer.attestation.serving_ca_digest();
        }
        Message::BootRefused(refused) => {
            assert!(refused.reason.len() <= wire::MAX_REFUSAL_BYTES);
            assert!(!refused.reason.chars().any(char::is_control));
        }
        // Sealed state: a chunk that parsed is within its frame's limit, and an offer parsed
        // only with credentials and sizes within theirs (the parser's own checks).
        Message::SnapshotChunk(chunk) => {
            assert!(chunk.data.len() <= wire::SNAPSHOT_CHUNK_BYTES);
        }
        Message::StateOffer(_) | Message::Stop(_) => {}
    }
});

/// What the sidecar does with a message from the agent, and the bundle it then serves.
fn relay(message: &Message) {
    let (evidence, _nonces) =
        Evidence::new("0".repeat(64), 30_000, std::sync::Arc::new(Metrics::new()));
    evidence.set_link_up(true);
    evidence.set_enclave(EnclaveInfo {
        running: true,
        ..EnclaveInfo::default()
    });
    let now = match message {
        Message::Attestation(attestation) => {
            evidence.on_attestation(attestation.clone());
            0
        }
        Message::Report(signed) => {
            let now = signed.unverified_report().map_or(0, |r| r.time_unix_ms);
            evidence.on_report(signed.clone(), now);
            now
        }
        Message::BootRefused(refused) => {
            // Kept only when it names this sidecar's configuration; never ready either way.
            evidence.on_boot_refused(refused.clone());
            0
        }
        // A user's challenge and its answer, and sealed state's offer and chunks, never reach
        // the evidence the operator reads.
        Message::BootConfig(_)
        | Message::NonceRefresh(_)
        | Message::Challenge(_)
        | Message::ChallengeAnswer(_)
        | Message::StateOffer(_)
        | Message::SnapshotChunk(_)
        | Message::Stop(_) => return,
    };
    // One message alone is either an attestation without a report or a report without an
    // attested key: never ready.
    assert!(
        evidence.readiness(now).is_err(),
        "ready on evidence nobody attested"
    );
    let bundle = evidence.bundle();
    let json = serde_json::to_vec(&bundle).expect("the bundle serializes");
    let back: EvidenceBundle = serde_json::from_slice(&json).expect("the operator parses it");
    assert_eq!(back, bundle);
}
