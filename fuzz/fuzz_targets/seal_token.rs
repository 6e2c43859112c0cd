//! Seal tokens (`nautilus_seal::token`): size, framing, base64url payload, claims JSON, the
//! audience and time window, then the Sui signature bound to the claimed address.
//!
//! Input: one byte choosing the verifier's clock, then the token text. The clock is the
//! token's own `iat` plus that byte in minutes (0 when the token does not parse), so minted
//! seed tokens pass the time checks and mutations cross every boundary of the window.
//! Invariants beyond "no panic":
//! - a verified token re-encodes, from its payload bytes and parsed signature, to exactly the
//!   input (one token, one text form), and its claims are the verified fields;
//! - a token that verifies for its audience verifies for no other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nautilus_seal::SealVerifier;
use nautilus_seal::personal_message;
use nautilus_seal::token;

/// The audience the seed tokens are minted for (fuzz/seed.sh).
const AUDIENCE: &str = "fuzz/cluster";

fuzz_target!(|data: &[u8]| {
    let Some((&minutes, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let parsed = token::parse(text);
    let now = parsed
        .as_ref()
        .map_or(0, |p| p.claims.iat.saturating_add(u64::from(minutes) * 60));
    let verifier = SealVerifier::new(AUDIENCE);
    let verdict = verifier.verify(text, now);
    let Ok(verified) = verdict else {
        return;
    };
    let parsed = parsed.expect("a verified token parses");
    let signature_b64 = text.rsplit('.').next().expect("four segments");
    let signature =
        personal_message::decode_signature_base64(signature_b64).expect("verified signature");
    assert_eq!(
        token::encode(&parsed.payload, &signature),
        text,
        "a token has two text forms"
    );
    let claims = &parsed.claims;
    assert_eq!(claims.aud, verified.audience);
    assert_eq!(claims.addr, verified.address.to_string());
    assert_eq!(
        (claims.iat, claims.exp, claims.nbf),
        (verified.issued_at, verified.expires_at, verified.not_before)
    );
    assert_eq!(claims.jti, verified.id);
    assert!(
        SealVerifier::new("fuzz/other").verify(text, now).is_err(),
        "a token verified for an audience it does not name"
    );
});
