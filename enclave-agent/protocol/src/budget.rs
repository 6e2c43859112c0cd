//! Rate budgets for the paths anyone can reach before proving who they are: token buckets, one
//! global and one per peer in a bounded table ([`Budget`]), on a clock the caller passes in
//! (so tests step time by hand, and nothing here sleeps or reads the clock).
//!
//! A bucket holds at most `burst` tokens and gains `per_second` a second; each request takes
//! one. [`Budget::check`] charges the peer's bucket first, then the global one, and gives the
//! peer's token back when the global bucket refuses: a peer is not charged for a refusal it did
//! not cause, and a peer over its own rate spends nothing of the global budget that the other
//! peers share. A refusal says when a token will be there ([`Refused::retry_after`]), for
//! `Retry-After`.
//!
//! A budget may keep a **reserve** ([`Rates::reserve`]): the global bucket's last tokens, which
//! only a *quiet* peer may take, one that asked below its own rate recently. Each peer has a
//! second bucket at its rate that every request drains, let through or not, into debt down to
//! minus the burst (what it *asked*, where its own bucket counts what it *got*); the peer is
//! quiet while that one holds at least half its burst, so a peer that asked beyond its rate is
//! busy until it has asked less for a while (1.5 bursts' worth of its rate). A *busy* peer (it asks at its own rate or beyond) gets only the tokens above
//! the reserve, and a refusal does not make it quiet again. So peers flooding at their own rate,
//! however many addresses they use, spend the global budget down to the reserve and no further,
//! and a peer asking less than its own rate still finds tokens there and first call on the
//! refill; what the global bucket bounds (everyone together) is unchanged. Peers that each stay
//! below their own rate are quiet too: against enough of them the reserve is shared like the
//! rest, in proportion to what each asks.
//!
//! Peers are keyed by address without the port ([`peer_key`]; an IPv6 address by its /64, the
//! block one host usually holds). The table keeps at most `max_peers` entries: when it is full,
//! the buckets that refilled (they say nothing a new bucket would not) are dropped, and if that
//! frees too little, the half least recently charged. A flood from many addresses therefore
//! costs bounded memory; those evicted get a fresh bucket, and the global bucket still bounds
//! what passes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A rate: `per_second` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens gained per second (> 0; a rate of 0 refuses everything once the burst is spent).
    pub per_second: f64,
    /// Largest number of tokens saved up (at least 1 is used).
    pub burst: u32,
}

impl Rate {
    /// `per_second` a second with `burst` saved up.
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }

    fn capacity(self) -> f64 {
        f64::from(self.burst.max(1))
    }
}

/// A [`Budget`]'s rates: for everyone together, for each peer, and how many peers it remembers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// All peers together.
    pub global: Rate,
    /// One peer.
    pub per_peer: Rate,
    /// Peers remembered at once (at least 1 is used).
    pub max_peers: usize,
    /// Tokens of the global bucket only quiet peers may take (0: none kept back; at most half
    /// the global burst is used, so busy peers can always have the other half).
    pub reserve: u32,
}

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.capacity(),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that went backwards (or a `now` older than the last one) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if self.rate.per_second > 0.0 {
            self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.capacity());
        }
        if now > self.last {
            self.last = now;
        }
    }

    /// Take one token at `now`, or say how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.try_take_above(now, 0.0)
    }

    /// Take one token at `now` if `floor` tokens stay behind, or say how long until they would.
    pub fn try_take_above(&mut self, now: Instant, floor: f64) -> Result<(), Duration> {
        self.refill(now);
        let needed = floor + 1.0;
        if self.tokens >= needed {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate.per_second <= 0.0 {
            return Err(Duration::MAX);
        }
        let missing = needed - self.tokens;
        Err(Duration::from_secs_f64(missing / self.rate.per_second))
    }

    /// The tokens in the bucket at `now` (the refill counted, nothing taken).
    pub fn tokens(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate.per_second.max(0.0)).min(self.rate.capacity())
    }

    /// Take one token at `now` whether or not one is there: the bucket goes into debt, down to
    /// minus its burst, which asking more slowly than its rate pays back.
    pub fn spend(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(-self.rate.capacity());
    }

    /// Return a token taken for a request that did not go ahead.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.rate.capacity());
    }

    /// Whether the bucket is full at `now` (it then says nothing a new bucket would not).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate.per_second >= self.rate.capacity()
    }

    /// The bucket's rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }
}

/// Why [`Budget::check`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer spent its own rate.
    Peer {
        /// When its next token is there.
        retry_after: Duration,
    },
    /// Everyone together spent the global rate.
    Global {
        /// When the next global token is there.
        retry_after: Duration,
    },
}

impl Refused {
    /// How long to wait before trying again.
    pub fn retry_after(self) -> Duration {
        match self {
            Self::Peer { retry_after } | Self::Global { retry_after } => retry_after,
        }
    }

    /// `Retry-After` in whole seconds (rounded up, at least 1, at most an hour).
    pub fn retry_after_seconds(self) -> u64 {
        let wait = self.retry_after().min(Duration::from_secs(3600));
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }

    /// The metric label: `peer` or `global`.
    pub fn scope(self) -> &'static str {
        match self {
            Self::Peer { .. } => "peer",
            Self::Global { .. } => "global",
        }
    }
}

/// One peer's buckets.
#[derive(Debug, Clone)]
struct Peer {
    /// What it got: a token per request let through.
    got: TokenBucket,
    /// What it asked: a token per request, let through or not ([`TokenBucket::spend`]: a peer
    /// asking beyond its rate stays in debt, so busy, however long it keeps at it).
    asked: TokenBucket,
}

/// A global token bucket and one per peer, in a table of at most `max_peers` entries.
#[derive(Debug)]
pub struct Budget {
    global: TokenBucket,
    per_peer: Rate,
    peers: HashMap<String, Peer>,
    max_peers: usize,
    /// Global tokens kept for quiet peers.
    reserve: f64,
}

impl Budget {
    /// A budget of `rates.global` for everyone and `rates.per_peer` for each peer, full at
    /// `now`.
    pub fn new(rates: Rates, now: Instant) -> Self {
        Self {
            global: TokenBucket::new(rates.global, now),
            per_peer: rates.per_peer,
            peers: HashMap::new(),
            max_peers: rates.max_peers.max(1),
            reserve: f64::from(rates.reserve.min(rates.global.burst / 2)),
        }
    }

    /// Charge one request from `peer` (as [`peer_key`] names it) at `now`: the peer's bucket,
    /// then the global one (down to the reserve only for a quiet peer).
    pub fn check(&mut self, peer: &str, now: Instant) -> Result<(), Refused> {
        if !self.peers.contains_key(peer) && self.peers.len() >= self.max_peers {
            self.make_room(now);
        }
        // A known peer is found without allocating; only a new one pays for its key.
        let state = match self.peers.get_mut(peer) {
            Some(state) => state,
            None => self.peers.entry(peer.to_owned()).or_insert_with(|| Peer {
                got: TokenBucket::new(self.per_peer, now),
                asked: TokenBucket::new(self.per_peer, now),
            }),
        };
        let quiet = state.asked.tokens(now) * 2.0 >= self.per_peer.capacity();
        state.asked.spend(now);
        let bucket = &mut state.got;
        bucket
            .try_take(now)
            .map_err(|retry_after| Refused::Peer { retry_after })?;
        let floor = if quiet { 0.0 } else { self.reserve };
        if let Err(retry_after) = self.global.try_take_above(now, floor) {
            bucket.give_back();
            return Err(Refused::Global { retry_after });
        }
        Ok(())
    }

    /// How many peers the table holds now.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    fn make_room(&mut self, now: Instant) {
        self.peers
            .retain(|_, peer| !(peer.got.is_full(now) && peer.asked.is_full(now)));
        if self.peers.len() < self.max_peers - self.max_peers / 4 {
            return;
        }
        // Still at least three quarters full of peers that are spending: keep the half charged
        // most recently. Amortized, a new peer costs O(1) however many addresses a flood uses.
        let mut lasts: Vec<Instant> = self.peers.values().map(|p| p.asked.last).collect();
        let middle = lasts.len() / 2;
        let (_, cut, _) = lasts.select_nth_unstable(middle);
        let cut = *cut;
        self.peers.retain(|_, peer| peer.asked.last > cut);
    }
}

/// The key a peer's bucket is kept under, from the peer as a listener prints it
/// (`tcp://ADDR:PORT`, `vsock://CID:PORT`, or a bare socket address): a TCP peer's IP address
/// without the port, an IPv6 address by its /64 (IPv4-mapped ones as IPv4); a vsock peer by its
/// CID; anything else (a Unix peer) as it is.
pub fn peer_key(peer: &str) -> String {
    if let Some(vsock) = peer.strip_prefix("vsock://") {
        let cid = vsock.rsplit_once(':').map_or(vsock, |(cid, _)| cid);
        return format!("vsock://{cid}");
    }
    let addr = peer.strip_prefix("tcp://").unwrap_or(peer);
    match addr
        .parse::<SocketAddr>()
        .map(|addr| addr.ip().to_canonical())
    {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => peer.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Within a microsecond of `expected` (the buckets count in floating point).
    fn about(actual: Duration, expected: Duration) -> bool {
        actual.abs_diff(expected) <= Duration::from_micros(1)
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Rate::new(10.0, 3), t0);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(t0), Ok(()));
        }
        assert!(about(bucket.try_take(t0).expect_err("empty"), ms(100)));
        assert!(about(
            bucket.try_take(t0 + ms(50)).expect_err("half"),
            ms(50)
        ));
        assert_eq!(bucket.try_take(t0 + ms(100)), Ok(()));
        // Over 10 s of steady asking, 10/s pass (plus nothing: the burst was spent).
        let mut passed = 0;
        for step in 1..=1000 {
            if bucket.try_take(t0 + ms(100) + ms(10 * step)).is_ok() {
                passed += 1;
            }
        }
        assert!((99..=100).contains(&passed), "{passed}");
        // Idle for an hour refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        let taken = (0..10).filter(|_| bucket.try_take(later).is_ok()).count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(Rate::new(1.0, 1), t0);
        assert!(bucket.try_take(t0).is_ok());
        assert!(bucket.try_take(t0 - Duration::from_secs(5)).is_err());
        assert!(bucket.try_take(t0 + ms(999)).is_err());
        assert!(bucket.try_take(t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_zero_rate_refuses_once_the_burst_is_spent() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Rate::new(0.0, 1), t0);
        assert!(bucket.try_take(t0).is_ok());
        assert_eq!(
            bucket.try_take(t0 + Duration::from_secs(99)),
            Err(Duration::MAX)
        );
        let refused = Refused::Global {
            retry_after: Duration::MAX,
        };
        assert_eq!(refused.retry_after_seconds(), 3600);
    }

    #[test]
    fn one_peer_cannot_spend_the_others_share_and_many_peers_meet_the_global_rate() {
        let t0 = Instant::now();
        let mut budget = Budget::new(
            Rates {
                global: Rate::new(10.0, 10),
                per_peer: Rate::new(1.0, 2),
                max_peers: 1024,
                reserve: 0,
            },
            t0,
        );
        // A flooder gets its burst, then nothing, and spends only that much of the global.
        let flooder: Vec<_> = (0..100).map(|_| budget.check("10.0.0.1", t0)).collect();
        assert_eq!(flooder.iter().filter(|r| r.is_ok()).count(), 2);
        assert!(
            matches!(flooder[2], Err(Refused::Peer { retry_after }) if about(retry_after, ms(1000)))
        );
        assert_eq!(budget.check("10.0.0.2", t0), Ok(()));
        // 100 peers at once: the global burst (10, 3 spent) is all that passes.
        let passed = (0..100)
            .filter(|i| budget.check(&format!("10.1.0.{i}"), t0).is_ok())
            .count();
        assert_eq!(passed, 7);
        let refused = budget.check("10.2.0.1", t0 + ms(10)).expect_err("global");
        assert_eq!(refused.scope(), "global");
        assert!(about(refused.retry_after(), ms(90)), "{refused:?}");
        assert_eq!(refused.retry_after_seconds(), 1);
        // Refused by the global bucket, a peer keeps its own token: two pass once it refills.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(budget.check("10.2.0.1", t1), Ok(()));
        assert_eq!(budget.check("10.2.0.1", t1), Ok(()));
        assert!(matches!(
            budget.check("10.2.0.1", t1),
            Err(Refused::Peer { .. })
        ));
        // Over 60 s, 1,000 peers asking 10 times a second each get 10/s through, all told.
        let mut passed = 0;
        for tick in 1..=600u64 {
            let now = t1 + ms(100 * tick);
            for peer in 0..1000 {
                if budget
                    .check(&format!("10.3.{}.{}", peer / 256, peer % 256), now)
                    .is_ok()
                {
                    passed += 1;
                }
            }
        }
        assert!((600..=610).contains(&passed), "{passed}");
    }

    /// The API port's shape: 100/s (burst 500, 100 kept for quiet peers), 20/s (burst 40) each.
    fn with_reserve() -> Rates {
        Rates {
            global: Rate::new(100.0, 500),
            per_peer: Rate::new(20.0, 40),
            max_peers: 4096,
            reserve: 100,
        }
    }

    #[test]
    fn busy_peers_leave_the_reserve_to_a_quiet_one() {
        let t0 = Instant::now();
        let mut budget = Budget::new(with_reserve(), t0);
        let (mut user_passed, mut user_refused, mut flood_passed) = (0u32, 0u32, 0u32);
        // 10 s: 32 addresses asking 200/s each (their own rate is 20/s), one user asking 8/s.
        for step in 0..2000u32 {
            let now = t0 + ms(5 * u64::from(step));
            for flooder in 0..32 {
                if budget.check(&format!("10.9.0.{flooder}"), now).is_ok() {
                    flood_passed += 1;
                }
            }
            if step % 25 == 0 {
                match budget.check("192.0.2.7", now) {
                    Ok(()) => user_passed += 1,
                    Err(_) => user_refused += 1,
                }
            }
        }
        assert_eq!((user_passed, user_refused), (80, 0));
        // Everyone together stays within the global burst and rate.
        let total = flood_passed + user_passed;
        assert!(total <= 500 + 100 * 10 + 1, "{total}");
        // The flood gets the rest: all but the reserve of the burst, then the rate less the user's.
        assert!(flood_passed >= 400 + 92 * 9, "{flood_passed}");
    }

    #[test]
    fn a_busy_peer_gets_only_what_lies_above_the_reserve() {
        let t0 = Instant::now();
        let mut budget = Budget::new(
            Rates {
                global: Rate::new(10.0, 10),
                per_peer: Rate::new(1.0, 4),
                max_peers: 16,
                reserve: 4,
            },
            t0,
        );
        // A peer is quiet while its bucket holds at least half its burst (2 of 4): three
        // requests; the fourth is busy, and passes because the global bucket holds 7, more than
        // the reserve of 4.
        for _ in 0..4 {
            assert_eq!(budget.check("a", t0), Ok(()));
        }
        assert!(matches!(budget.check("a", t0), Err(Refused::Peer { .. })));
        // The next peer's three quiet requests leave 3; its busy fourth finds nothing above the
        // reserve and is told when there will be (2 tokens at 10/s), keeping its own token.
        for _ in 0..3 {
            assert_eq!(budget.check("b", t0), Ok(()));
        }
        let refused = budget.check("b", t0).expect_err("busy, at the reserve");
        assert_eq!(refused.scope(), "global");
        assert!(about(refused.retry_after(), ms(200)), "{refused:?}");
        // A quiet peer takes the reserve down to the last token, then is busy in turn.
        for _ in 0..3 {
            assert_eq!(budget.check("c", t0), Ok(()));
        }
        let refused = budget.check("c", t0).expect_err("busy, the reserve spent");
        assert!(about(refused.retry_after(), ms(500)), "{refused:?}");
        // Once the bucket refilled above the reserve, the busy peer's kept token goes through.
        assert_eq!(budget.check("b", t0 + ms(500)), Ok(()));
    }

    #[test]
    fn a_peer_asking_beyond_its_rate_stays_busy_until_it_slows_down() {
        let t0 = Instant::now();
        let mut budget = Budget::new(
            Rates {
                global: Rate::new(5.0, 10),
                per_peer: Rate::new(1.0, 2),
                max_peers: 64,
                reserve: 5,
            },
            t0,
        );
        // 16 addresses asking every 10 ms for 5 s: each is quiet for its first request or two,
        // then in debt; from then on they take only what lies above the reserve.
        for step in 0..500u64 {
            let now = t0 + ms(10 * step);
            for peer in 0..16 {
                let _ = budget.check(&format!("10.6.0.{peer}"), now);
            }
            // Past the first second, the reserve is there for a newcomer at any moment.
            if step >= 100 && step % 50 == 0 {
                let reserve = budget.global.tokens(now);
                assert!(reserve >= 4.0, "step {step}: {reserve}");
            }
        }
        assert_eq!(budget.check("192.0.2.9", t0 + ms(5000)), Ok(()));
        // A flooder that stops for 3 s (1.5 bursts at 1/s) is quiet again.
        let later = t0 + ms(5000 + 3000);
        assert!(
            budget
                .peers
                .get("10.6.0.1")
                .is_some_and(|p| p.asked.tokens(later) >= 1.0)
        );
    }

    #[test]
    fn a_reserve_never_lets_more_than_the_global_rate_through() {
        let t0 = Instant::now();
        let mut budget = Budget::new(with_reserve(), t0);
        // 1,000 addresses, each below its own rate (10/s of 20/s): all quiet, so they share the
        // reserve too; everyone together still gets the burst and the rate only.
        let mut passed = 0u32;
        for tick in 0..100u64 {
            let now = t0 + ms(100 * tick);
            for peer in 0..1000u32 {
                if budget
                    .check(&format!("10.4.{}.{}", peer / 256, peer % 256), now)
                    .is_ok()
                {
                    passed += 1;
                }
            }
        }
        assert!((500 + 989..=500 + 1000).contains(&passed), "{passed}");
    }

    #[test]
    fn the_peer_table_stays_bounded_and_active_peers_keep_their_state() {
        let t0 = Instant::now();
        let mut budget = Budget::new(
            Rates {
                global: Rate::new(1e9, 1_000_000),
                per_peer: Rate::new(1.0, 1),
                max_peers: 64,
                reserve: 0,
            },
            t0,
        );
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            let _ = budget.check(&format!("peer-{i}"), now);
            assert!(budget.peers() <= 64);
            // The flooder asking every time stays remembered, so stays refused.
            let flooder = budget.check("flooder", now);
            if i > 0 {
                assert!(matches!(flooder, Err(Refused::Peer { .. })), "{i}");
            }
        }
    }

    #[test]
    fn peers_are_keyed_by_address_and_ipv6_by_its_64() {
        assert_eq!(peer_key("10.1.2.3:4567"), "10.1.2.3");
        assert_eq!(peer_key("10.1.2.3:1"), peer_key("10.1.2.3:2"));
        assert_eq!(peer_key("[::ffff:10.1.2.3]:80"), "10.1.2.3");
        assert_eq!(peer_key("[2001:db8:1:2:3:4:5:6]:443"), "2001:db8:1:2::/64");
        assert_eq!(
            peer_key("[2001:db8:1:2::9]:1"),
            peer_key("[2001:db8:1:2:ffff::]:2")
        );
        assert_eq!(peer_key("tcp://10.1.2.3:4567"), "10.1.2.3");
        assert_eq!(peer_key("tcp://[2001:db8::1]:4567"), "2001:db8:0:0::/64");
        assert_eq!(peer_key("vsock://16:1234"), "vsock://16");
        assert_eq!(peer_key("unix"), "unix");
    }
}
