//! TokenReview bodies (`nautilus_agent::webhook::Authenticator::review`): the
//! `authentication.k8s.io/v1` JSON kube-apiserver POSTs, the seal token inside it, the stake
//! lookup and the tier mapping, exactly as the webhook answers a request body.
//!
//! Input: one byte choosing the clock (the token's `iat` plus that many minutes, as in
//! `seal_token`), then the request body. Stake comes from a stand-in reader: the first byte
//! of the address picks an amount, or a failed lookup.
//! Invariants beyond "no panic":
//! - every answer is a `v1` `TokenReview` with a status and an empty spec, and serializes;
//! - `authenticated` holds exactly when a user is named, and then the token in the body
//!   verifies on its own, the user is that token's address, and the answer's audiences are
//!   among those asked for;
//! - a body that is not a seal-token review is never authenticated.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nautilus_agent::stake::{ReadStake, StakeCache, StakeError};
use nautilus_agent::webhook::{API_VERSION, Authenticator, KIND, TokenReview};
use nautilus_fuzz::block_on;
use nautilus_seal::{Address, SealVerifier, Tier, Tiers, token};

/// The audience the seed tokens are minted for (fuzz/seed.sh).
const AUDIENCE: &str = "fuzz/cluster";

struct StandInStake;

impl ReadStake for StandInStake {
    fn stake_of(&self, owner: Address) -> impl Future<Output = Result<u64, StakeError>> + Send {
        let first = owner.inner()[0];
        async move {
            if first.is_multiple_of(5) {
                return Err(StakeError::MissingField {
                    method: "ListOwnedObjects",
                    field: "objects",
                });
            }
            Ok(u64::from(first) * 1_000_000_000)
        }
    }
}

fn authenticator() -> Authenticator<StandInStake> {
    let tier = |name: &str, sui: u64, group: &str| Tier {
        name: name.to_owned(),
        min_stake_mist: sui * 1_000_000_000,
        groups: vec![group.to_owned()],
        identity: Default::default(),
    };
    let tiers = Tiers::new(vec![
        tier("admin", 200, "system:masters"),
        tier("worker", 50, "nautilus:workers"),
        tier("reader", 10, "nautilus:readers"),
    ])
    .expect("valid tiers");
    // A fresh cache per input: an answer must not depend on earlier inputs.
    let stakes = StakeCache::new(StandInStake, Duration::from_secs(60), 16);
    Authenticator::new(SealVerifier::new(AUDIENCE), tiers, stakes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&minutes, body)) = data.split_first() else {
        return;
    };
    // The clock only: the answer below comes from the webhook's own parsing of `body`.
    let request: Option<TokenReview> = serde_json::from_slice(body).ok();
    let token_text = request.as_ref().map(|r| r.spec.token.clone());
    let now = token_text
        .as_deref()
        .and_then(|t| token::parse(t).ok())
        .map_or(0, |p| p.claims.iat.saturating_add(u64::from(minutes) * 60));

    let answer = block_on(authenticator().review(body, now));
    assert_eq!(answer.api_version, API_VERSION);
    assert_eq!(answer.kind, KIND);
    assert_eq!(answer.spec, Default::default());
    serde_json::to_vec(&answer).expect("the answer serializes");
    let status = answer.status.expect("every answer has a status");
    assert_eq!(status.authenticated, status.user.is_some());
    if !status.authenticated {
        return;
    }
    let request = request.expect("authenticated a body that is not a TokenReview");
    assert_eq!(
        (request.api_version.as_str(), request.kind.as_str()),
        (API_VERSION, KIND)
    );
    let verified = SealVerifier::new(AUDIENCE)
        .verify(&request.spec.token, now)
        .expect("authenticated a token that does not verify");
    let user = status.user.expect("checked above");
    assert_eq!(user.uid, verified.address.to_string());
    for audience in &status.audiences {
        assert!(request.spec.audiences.contains(audience));
    }
});
