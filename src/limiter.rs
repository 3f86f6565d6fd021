//! Per-principal admission: a token bucket for calls per minute and a cap on calls running at
//! once. Refusals say when to retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Limited {
    #[error("rate limited: you may start {per_minute} calls per minute; retry after {retry_after_s} s")]
    Rate { per_minute: u32, retry_after_s: u64 },
    #[error("rate limited: you already have {running} calls running, your limit; retry after one finishes (about 1 s)")]
    Concurrency { running: u32 },
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub struct PrincipalLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
    running: Arc<Mutex<HashMap<String, u32>>>,
}

/// Holds one of a principal's running-call slots until dropped.
pub struct Slot {
    running: Arc<Mutex<HashMap<String, u32>>>,
    principal: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.principal);
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
        {
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
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let n = running.entry(principal.to_string()).or_insert(0);
            if *n >= concurrent {
                return Err(Limited::Concurrency { running: *n });
            }
            *n += 1;
            b.tokens -= 1.0;
        }
        Ok(Slot { running: self.running.clone(), principal: principal.to_string() })
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
    fn running_calls_are_capped_and_released() {
        let l = PrincipalLimiter::new();
        let s = l.admit("a", 100, 1).unwrap();
        assert_eq!(l.admit("a", 100, 1).err(), Some(Limited::Concurrency { running: 1 }));
        drop(s);
        assert!(l.admit("a", 100, 1).is_ok());
    }
}
