//! The agent's own budgets for what reaches it from outside, and their counters.
//!
//! The sidecar refuses most of a flood before the enclave sees it, but the sidecar is the host's
//! and may not be the real one; the agent therefore bounds, on its own:
//! - users' challenges on the control link ([`AgentBudgets::challenges`]; over it, the
//!   challenge is dropped unanswered and counted: the sidecar's budget is lower, so only a
//!   relay that ignores it meets this one);
//! - nonce refreshes, which arrive as often as the host sends them
//!   ([`AgentBudgets::nonce_refreshes`]; over it, the refresh waits for its token and only the
//!   latest waiting nonce is attested: the operator's latest challenge is always answered,
//!   late by at most one token's time);
//! - stake lookups of addresses the caches do not know ([`LookupLimits`], enforced by
//!   [`crate::stake`]).
//!
//! The agent has no metrics endpoint: the [`Counters`] go into every signed report as
//! [`BudgetCounters`], absent while all are zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nautilus_protocol::budget::Rate;
use nautilus_protocol::wire::BudgetCounters;

/// Users' challenges a second the agent answers (twice the sidecar's default budget).
pub const DEFAULT_CHALLENGE_RATE: f64 = 20.0;
/// Users' challenges the agent answers in a burst.
pub const DEFAULT_CHALLENGE_BURST: u32 = 40;
/// Nonce refreshes a second the agent attests (the operator re-attests every few minutes).
pub const DEFAULT_REFRESH_RATE: f64 = 1.0;
/// Nonce refreshes attested in a burst.
pub const DEFAULT_REFRESH_BURST: u32 = 5;

/// The agent's limits on what reaches it from outside (flags of `nautilus-agent`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentBudgets {
    /// Users' challenges on the control link.
    pub challenges: Rate,
    /// Nonce refreshes (and re-attestations of a reconnecting link).
    pub nonce_refreshes: Rate,
    /// Stake lookups of addresses the caches do not know.
    pub stake: LookupLimits,
}

impl Default for AgentBudgets {
    fn default() -> Self {
        Self {
            challenges: Rate::new(DEFAULT_CHALLENGE_RATE, DEFAULT_CHALLENGE_BURST),
            nonce_refreshes: Rate::new(DEFAULT_REFRESH_RATE, DEFAULT_REFRESH_BURST),
            stake: LookupLimits::default(),
        }
    }
}

/// Bounds on stake lookups of addresses the caches do not know.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LookupLimits {
    /// Lookups a second sent to the full node for such addresses, and the burst.
    pub rate: Rate,
    /// Lookups that may wait for a token at once; more are refused at once.
    pub queue: usize,
    /// Longest a lookup waits for its token before it is refused (inside the webhook's
    /// review deadline).
    pub max_wait: Duration,
    /// How long an answer below every tier is reused.
    pub negative_ttl: Duration,
    /// Most addresses remembered as below every tier.
    pub negative_capacity: usize,
}

/// New-address stake lookups a second (`--stake-lookup-rate`).
pub const DEFAULT_LOOKUP_RATE: f64 = 5.0;
/// New-address stake lookups in a burst (`--stake-lookup-burst`).
pub const DEFAULT_LOOKUP_BURST: u32 = 20;
/// New-address stake lookups waiting at once (`--stake-lookup-queue`).
pub const DEFAULT_LOOKUP_QUEUE: usize = 32;
/// How long "below every tier" is remembered (`--stake-negative-ttl-seconds`).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(60);

impl Default for LookupLimits {
    fn default() -> Self {
        Self {
            rate: Rate::new(DEFAULT_LOOKUP_RATE, DEFAULT_LOOKUP_BURST),
            queue: DEFAULT_LOOKUP_QUEUE,
            max_wait: Duration::from_secs(5),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            negative_capacity: 10_000,
        }
    }
}

/// What the budgets let through and refused since the boot.
#[derive(Debug, Default)]
pub struct Counters {
    /// Users' challenges answered.
    pub challenges_answered: AtomicU64,
    /// Users' challenges dropped over the agent's rate.
    pub challenges_refused: AtomicU64,
    /// Nonce refreshes attested.
    pub nonce_refreshes: AtomicU64,
    /// Nonce refreshes that waited for their token (or were replaced by a later one).
    pub nonce_refreshes_deferred: AtomicU64,
    /// Stake lookups sent to the full node.
    pub stake_lookups: AtomicU64,
    /// Stake lookups refused over their rate ("try again").
    pub stake_lookups_refused: AtomicU64,
    /// Reviews answered from the negative cache.
    pub stake_negative_hits: AtomicU64,
}

impl Counters {
    /// Add one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts for a report: `None` while all are zero.
    pub fn snapshot(&self) -> Option<BudgetCounters> {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = BudgetCounters {
            challenges_answered: read(&self.challenges_answered),
            challenges_refused: read(&self.challenges_refused),
            nonce_refreshes: read(&self.nonce_refreshes),
            nonce_refreshes_deferred: read(&self.nonce_refreshes_deferred),
            stake_lookups: read(&self.stake_lookups),
            stake_lookups_refused: read(&self.stake_lookups_refused),
            stake_negative_hits: read(&self.stake_negative_hits),
        };
        (!counters.is_empty()).then_some(counters)
    }
}

/// Round a wait up to whole seconds for a message (at least 1).
pub fn whole_seconds(wait: Duration) -> u64 {
    let wait = wait.min(Duration::from_secs(3600));
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_absent_until_something_is_counted() {
        let counters = Counters::default();
        assert_eq!(counters.snapshot(), None);
        Counters::count(&counters.stake_lookups_refused);
        Counters::count(&counters.stake_lookups_refused);
        assert_eq!(
            counters.snapshot(),
            Some(BudgetCounters {
                stake_lookups_refused: 2,
                ..BudgetCounters::default()
            })
        );
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::MAX), 3600);
    }
}
