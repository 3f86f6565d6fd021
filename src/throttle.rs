//! Bounding repeated audit records: the first few records of a kind per key in each window are
//! written in full, the rest are only counted and written as one summary when the window ends.
//! A caller refused a thousand times a second then costs the log a few lines a minute, not a
//! thousand a second, and nothing is lost: the summary carries the count.
//!
//! The map holds one entry per key seen in the current window; keys are chosen by the caller
//! (for example an authenticated principal and a refusal reason, a bounded set), and the map is
//! capped at [`MAX_KEYS`] besides: past it, new keys are counted under one overflow entry.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most distinct keys tracked at once.
pub const MAX_KEYS: usize = 4096;

struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

/// Per-key write budget for one kind of record.
pub struct Throttle<K> {
    window: Duration,
    burst: u32,
    map: Mutex<HashMap<Option<K>, Window>>,
}

/// What became of a window that ended with records suppressed.
#[derive(Debug, PartialEq, Eq)]
pub struct Suppressed<K> {
    /// `None`: keys beyond [`MAX_KEYS`], counted together.
    pub key: Option<K>,
    pub count: u64,
    pub window_s: u64,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    /// Writes at most `burst` records per key per `window`.
    pub fn new(window: Duration, burst: u32) -> Self {
        Throttle { window, burst, map: Mutex::new(HashMap::new()) }
    }

    /// Whether a record for `key` should be written now (otherwise it is counted).
    pub fn allow(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let slot = if map.contains_key(&Some(key.clone())) || map.len() < MAX_KEYS { Some(key.clone()) } else { None };
        let w = map.entry(slot).or_insert(Window { started: now, written: 0, suppressed: 0 });
        if w.written < self.burst {
            w.written += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// Ends the windows that are over, returning those that suppressed records (to be written
    /// as summaries). Run periodically.
    pub fn sweep(&self) -> Vec<Suppressed<K>> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        map.retain(|key, w| {
            if now.duration_since(w.started) < self.window {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Suppressed { key: key.clone(), count: w.suppressed, window_s: self.window.as_secs() });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_key_then_a_count() {
        let t = Throttle::new(Duration::ZERO, 2);
        assert!(t.allow(&"a"));
        assert!(t.allow(&"a"));
        assert!(!t.allow(&"a"));
        assert!(!t.allow(&"a"));
        assert!(t.allow(&"b"), "keys have their own budget");
        let s = t.sweep();
        assert_eq!(s, vec![Suppressed { key: Some("a"), count: 2, window_s: 0 }]);
        assert!(t.allow(&"a"), "a new window starts");
    }

    #[test]
    fn keys_past_the_cap_share_one_entry() {
        let t = Throttle::new(Duration::from_secs(60), 1);
        for i in 0..MAX_KEYS + 10 {
            t.allow(&i);
        }
        assert!(!t.allow(&(MAX_KEYS + 20)), "the overflow entry's budget is spent");
        assert_eq!(t.map.lock().unwrap().len(), MAX_KEYS + 1);
    }
}
