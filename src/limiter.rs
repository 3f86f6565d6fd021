//! Per-principal admission: a rate limit on calls per minute and a cap on calls running at
//! once, plus [`Shares`], the per-principal cap any other shared pool uses (artifact reads).
//! Refusals say when to retry.
//!
//! The rate is governor's keyed GCRA limiter, keyed by principal. Each principal has one budget
//! of a minute's worth of calls, whatever its profile: the limiter counts in microseconds of that
//! minute, and a call under a profile allowing `per_minute` calls costs `60 s / per_minute` of it,
//! so a profile of N calls a minute lets a fresh principal start N at once and then one every
//! `60/N` s, and a principal holding tokens for two profiles gets one budget, not the sum.
//! [`PrincipalLimiter::sweep`] forgets every principal whose budget has refilled completely (its
//! state is then the same as a newcomer's, so forgetting it loses nothing): the map holds only
//! principals that called within the last minute, however many principals callers mint.
//!
//! It does not decide rates or caps (profiles do) nor record refusals (the executor audits them).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// The units a principal's minute is counted in: microseconds. A call costs `CELLS_PER_MINUTE /
/// per_minute` of them (rounded up, so never more calls than the profile allows); rates beyond
/// one call per microsecond are held to that.
const CELLS_PER_MINUTE: u32 = 60_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Limited {
    #[error("rate limited: you may start {per_minute} calls per minute; retry after {retry_after_s} s")]
    Rate { per_minute: u32, retry_after_s: u64 },
    #[error("rate limited: you already have {running} calls running, your limit; retry after one finishes (about 1 s)")]
    Concurrency { running: u32 },
    #[error("rate limited: you already have {running} {what} in progress, your share; retry after one finishes (about 1 s)")]
    Share { what: &'static str, running: u32 },
}

impl Limited {
    /// Seconds after which a retry may succeed.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Limited::Rate { retry_after_s, .. } => *retry_after_s,
            Limited::Concurrency { .. } | Limited::Share { .. } => 1,
        }
    }
}

pub struct PrincipalLimiter<C: Clock + Clone = DefaultClock> {
    clock: C,
    rate: RateLimiter<String, HashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>,
    running: Shares,
}

impl Default for PrincipalLimiter {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

/// How many of something each principal holds, each holding released when its [`Slot`] drops.
/// Entries of principals holding nothing are removed, so the map stays as small as the set of
/// principals with work in flight.
#[derive(Clone, Default)]
pub struct Shares {
    held: Arc<Mutex<HashMap<String, u32>>>,
}

impl Shares {
    /// Takes one for `principal` if it holds fewer than `cap`; otherwise says how many it holds.
    pub fn take(&self, principal: &str, cap: u32) -> Result<Slot, u32> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(principal.to_string()).or_insert(0);
        if *n >= cap {
            let n = *n;
            if n == 0 {
                held.remove(principal);
            }
            return Err(n);
        }
        *n += 1;
        Ok(Slot { shares: self.clone(), principal: principal.to_string() })
    }

    /// How many `principal` holds now.
    pub fn held(&self, principal: &str) -> u32 {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).get(principal).copied().unwrap_or(0)
    }
}

/// Holds one of a principal's shares until dropped.
pub struct Slot {
    shares: Shares,
    principal: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.principal);
            }
        }
    }
}

impl PrincipalLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C: Clock + Clone> PrincipalLimiter<C> {
    pub fn with_clock(clock: C) -> Self {
        let minute = Quota::per_minute(NonZeroU32::new(CELLS_PER_MINUTE).unwrap_or(NonZeroU32::MIN));
        PrincipalLimiter { rate: RateLimiter::hashmap_with_clock(minute, clock.clone()), clock, running: Shares::default() }
    }

    /// Admits one call for `principal`, or says why not and when to retry.
    ///
    /// The running-call slot is taken first and the rate checked second, so a call refused for
    /// too many running calls spends none of the principal's rate (governor cannot give a spent
    /// call back); a call refused for its rate releases the slot it took as the slot drops. When
    /// both limits are reached the caller hears about the running calls.
    pub fn admit(&self, principal: &str, per_minute: u32, concurrent: u32) -> Result<Slot, Limited> {
        let slot = self.running.take(principal, concurrent).map_err(|running| Limited::Concurrency { running })?;
        self.admit_rate(principal, per_minute)?;
        Ok(slot)
    }

    /// Spends one of `principal`'s calls at `per_minute` without a running slot: for work that
    /// runs inside a call already admitted (a code-mode tool call) or holds no execution slot
    /// (opening a session).
    pub fn admit_rate(&self, principal: &str, per_minute: u32) -> Result<(), Limited> {
        let per_minute = per_minute.max(1);
        let cost = NonZeroU32::new(CELLS_PER_MINUTE.div_ceil(per_minute)).unwrap_or(NonZeroU32::MIN);
        match self.rate.check_key_n(&principal.to_string(), cost) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                // Whole seconds, rounded up, at least 1: a retry then succeeds.
                let retry_after_s = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                Err(Limited::Rate { per_minute, retry_after_s })
            }
            // A cost never exceeds the minute (per_minute >= 1), so this cannot happen; refuse
            // rather than admit if it ever did.
            Err(_) => Err(Limited::Rate { per_minute, retry_after_s: 60 }),
        }
    }

    /// Forgets principals whose minute has refilled completely (indistinguishable from a
    /// principal never seen). Run periodically.
    pub fn sweep(&self) {
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
    }

    /// How many principals have rate state now.
    pub fn tracked(&self) -> usize {
        self.rate.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn the_bucket_empties_then_says_when_to_retry() {
        let l = PrincipalLimiter::new();
        let slots: Vec<_> = (0..3).map(|_| l.admit("a", 3, 10).unwrap()).collect();
        match l.admit("a", 3, 10) {
            Err(Limited::Rate { retry_after_s, .. }) => assert!((1..=21).contains(&retry_after_s)),
            other => panic!("{:?}", other.err()),
        }
        assert!(l.admit("b", 3, 10).is_ok(), "buckets are per principal");
        drop(slots);
    }

    #[test]
    fn shares_are_per_principal_and_released_on_drop() {
        let s = Shares::default();
        let a = s.take("a", 2).unwrap();
        let _a2 = s.take("a", 2).unwrap();
        assert_eq!(s.take("a", 2).err(), Some(2));
        assert!(s.take("b", 2).is_ok(), "another principal's share is its own");
        drop(a);
        assert_eq!(s.held("a"), 1);
        assert!(s.take("a", 2).is_ok());
    }

    #[test]
    fn rate_only_admission_spends_the_same_bucket() {
        let l = PrincipalLimiter::new();
        l.admit_rate("a", 2).unwrap();
        let _s = l.admit("a", 2, 10).unwrap();
        assert!(matches!(l.admit_rate("a", 2), Err(Limited::Rate { .. })));
    }

    #[test]
    fn a_refusal_for_running_calls_spends_no_rate() {
        let l = PrincipalLimiter::new();
        let s = l.admit("a", 2, 1).unwrap();
        for _ in 0..5 {
            assert_eq!(l.admit("a", 2, 1).err(), Some(Limited::Concurrency { running: 1 }));
        }
        drop(s);
        assert!(l.admit("a", 2, 1).is_ok(), "the second of two calls a minute is still there");
        assert!(matches!(l.admit_rate("a", 2), Err(Limited::Rate { .. })));
    }

    #[test]
    fn retry_after_is_when_the_next_call_fits() {
        let clock = FakeRelativeClock::default();
        let l = PrincipalLimiter::with_clock(clock.clone());
        for _ in 0..6 {
            l.admit_rate("a", 6).unwrap();
        }
        // Six a minute: one comes back every 10 s.
        assert_eq!(l.admit_rate("a", 6), Err(Limited::Rate { per_minute: 6, retry_after_s: 10 }));
        clock.advance(Duration::from_millis(7_500));
        assert_eq!(l.admit_rate("a", 6), Err(Limited::Rate { per_minute: 6, retry_after_s: 3 }));
        clock.advance(Duration::from_millis(2_500));
        assert!(l.admit_rate("a", 6).is_ok());
        assert!(l.admit_rate("a", 6).is_err());
    }

    #[test]
    fn idle_principals_are_evicted_and_busy_ones_kept() {
        let clock = FakeRelativeClock::default();
        let l = PrincipalLimiter::with_clock(clock.clone());
        // A tenant minting principals: each one called once, at one of two rates.
        for i in 0..1000 {
            l.admit_rate(&format!("minted-{i}"), 60).unwrap();
            l.admit_rate(&format!("other-{i}"), 5).unwrap();
        }
        for _ in 0..3 {
            l.admit_rate("busy", 3).unwrap();
        }
        assert_eq!(l.tracked(), 2001);
        l.sweep();
        assert_eq!(l.tracked(), 2001, "nobody's minute has refilled yet");
        // One call at 60 a minute is back after 1 s, one at 5 a minute after 12 s, three at 3 a
        // minute after 60 s; a principal is forgotten once it is back to a full minute.
        clock.advance(Duration::from_millis(1_001));
        l.sweep();
        assert_eq!(l.tracked(), 1001);
        clock.advance(Duration::from_secs(23));
        l.sweep();
        assert_eq!(l.tracked(), 1, "only the principal still short of a full minute is kept");
        assert!(l.admit_rate("busy", 3).is_ok(), "24 s at 3 a minute gave one call back");
        assert!(matches!(l.admit_rate("busy", 3), Err(Limited::Rate { .. })), "the sweep did not reset a busy principal");
        clock.advance(Duration::from_secs(57));
        l.sweep();
        assert_eq!(l.tracked(), 0);
        assert!(l.admit_rate("minted-1", 60).is_ok(), "an evicted principal starts with a full minute");
    }

    #[test]
    fn one_budget_per_principal_across_profiles() {
        let clock = FakeRelativeClock::default();
        let l = PrincipalLimiter::with_clock(clock.clone());
        for _ in 0..3 {
            l.admit_rate("a", 3).unwrap();
        }
        // Its minute is spent under the 3-a-minute profile: a 600-a-minute one has nothing left
        // either, until a tenth of a second of it is back.
        assert_eq!(l.admit_rate("a", 600), Err(Limited::Rate { per_minute: 600, retry_after_s: 1 }));
        clock.advance(Duration::from_millis(100));
        assert!(l.admit_rate("a", 600).is_ok());
        assert!(l.admit_rate("a", 600).is_err());
        assert!(l.admit_rate("b", 3).is_ok(), "another principal's budget is its own");
    }

    #[test]
    fn running_calls_are_capped_and_released() {
        let l = PrincipalLimiter::new();
        let s = l.admit("a", 100, 1).unwrap();
        assert_eq!(l.admit("a", 100, 1).err(), Some(Limited::Concurrency { running: 1 }));
        drop(s);
        assert!(l.admit("a", 100, 1).is_ok());
    }
}
