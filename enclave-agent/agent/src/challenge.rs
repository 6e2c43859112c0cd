//! A user's challenge ([`Challenge`]): one fresh attestation document for the user's nonce,
//! answered on the control link without touching the evidence the operator verifies.
//!
//! The document has the report key and the binding of every other document of this boot, so a
//! user checks the same identity the operator checks; only the nonce is the user's. A document
//! that cannot be made is logged and left unanswered (the sidecar's wait for it times out): a
//! user's challenge never closes the operator's link.

use nautilus_protocol::wire::{Challenge, ChallengeAnswer};
use tracing::{info, warn};

use crate::boot::Booted;

/// The answer to `challenge`, or `None` (logged) when the NSM failed.
pub(crate) async fn answer(booted: &Booted, challenge: Challenge) -> Option<ChallengeAnswer> {
    match booted.challenge(&challenge.nonce).await {
        Ok(attestation) => {
            info!(
                nonce_len = challenge.nonce.len(),
                document_bytes = attestation.document.len(),
                "user challenge answered"
            );
            Some(ChallengeAnswer {
                nonce: challenge.nonce,
                attestation,
            })
        }
        Err(e) => {
            warn!(error = %crate::errors::error_chain(&e), "user challenge: attestation failed");
            None
        }
    }
}
