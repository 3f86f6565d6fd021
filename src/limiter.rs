//! Per-principal admission: a token bucket for calls per minute and a cap on calls running at
//! once, plus [`Shares`], the per-principal cap any other shared pool uses (artifact reads).
//! Refusals say when to retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub struct PrincipalLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
    running: Shares,
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

    /// Admits one call for `principal`, or says why not and when to retry.
    pub fn admit(&self, principal: &str, per_minute: u32, concurrent: u32) -> Result<Slot, Limited> {
        self.with_token(principal, per_minute, || self.running.take(principal, concurrent).map_err(|running| Limited::Concurrency { running }))
    }

    /// Takes one token from `principal`'s bucket without a running slot: for work that runs
    /// inside a call already admitted (a code-mode tool call) or holds no execution slot (opening
    /// a session).
    pub fn admit_rate(&self, principal: &str, per_minute: u32) -> Result<(), Limited> {
        self.with_token(principal, per_minute, || Ok(()))
    }

    /// Runs `then` if `principal` has a token, and takes the token only if `then` succeeds.
    fn with_token<R>(&self, principal: &str, per_minute: u32, then: impl FnOnce() -> Result<R, Limited>) -> Result<R, Limited> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let capacity = f64::from(per_minute.max(1));
        let rate = capacity / 60.0;
        let b = buckets.entry(principal.to_string()).or_insert(Bucket { tokens: capacity, last: now });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(capacity);
        b.last = now;
        if b.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate);
            return Err(Limited::Rate { per_minute, retry_after_s: wait.as_secs() + 1 });
        }
        let r = then()?;
        b.tokens -= 1.0;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn running_calls_are_capped_and_released() {
        let l = PrincipalLimiter::new();
        let s = l.admit("a", 100, 1).unwrap();
        assert_eq!(l.admit("a", 100, 1).err(), Some(Limited::Concurrency { running: 1 }));
        drop(s);
        assert!(l.admit("a", 100, 1).is_ok());
    }
}
