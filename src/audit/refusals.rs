//! Refused HTTP traffic, recorded in bounded form: a few sample lines, then counts per source per
//! interval.
//!
//! Anyone who can reach the port can send requests that are refused (no credentials, a bad
//! token, a forbidden Host or Origin). Logging each as its own line would let them grow the
//! audit log without limit. Instead, in each interval:
//!
//! - the first [`SAMPLES_PER_SOURCE`] refusals from a source, and at most [`SAMPLES_PER_INTERVAL`]
//!   in all, are written as ordinary (bounded) lines, so the log shows what was tried;
//! - every refusal is counted per source and reason class, and when the interval ends one
//!   `auth.refused` summary line lists the counts (the [`MAX_LISTED`] busiest sources by name,
//!   the rest as totals).
//!
//! At most [`MAX_TRACKED`] sources are held in memory; refusals from further sources are counted
//! together (`untracked_count`).
//! IPv6 sources are grouped by /64, since one host usually holds a whole /64. So an interval adds
//! at most `SAMPLES_PER_INTERVAL` sample lines plus one summary line of bounded size, whatever
//! the traffic.
//!
//! This module only decides what to write; the caller writes it (see `auth::middleware`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Sample lines per source per interval.
pub const SAMPLES_PER_SOURCE: u32 = 4;
/// Sample lines per interval, from all sources together.
pub const SAMPLES_PER_INTERVAL: u32 = 64;
/// Sources held per interval; the rest are counted together.
pub const MAX_TRACKED: usize = 4096;
/// Sources named in a summary line.
pub const MAX_LISTED: usize = 32;
/// The default interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Why a request was refused: a fixed set, so a summary's keys are never caller-chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Unauthenticated,
    Forbidden,
    Host,
    Origin,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Unauthenticated => "unauthenticated",
            Class::Forbidden => "forbidden",
            Class::Host => "bad_host",
            Class::Origin => "bad_origin",
        }
    }
}

/// The key refusals are counted under: an IPv4 address or an IPv6 /64.
pub fn source_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                if v6.is_loopback() { v6.to_string() } else { format!("{net}/64") }
            }
        },
    }
}

#[derive(Default)]
struct Counts {
    total: u64,
    sampled: u32,
    by_class: BTreeMap<Class, u64>,
}

impl Counts {
    fn add(&mut self, class: Class) {
        self.total += 1;
        *self.by_class.entry(class).or_default() += 1;
    }
    fn classes(&self) -> Value {
        Value::Object(self.by_class.iter().map(|(c, n)| (c.as_str().to_string(), json!(n))).collect())
    }
}

struct Window {
    started: Instant,
    started_wall: String,
    sources: HashMap<String, Counts>,
    /// Sources beyond [`MAX_TRACKED`].
    overflow: Counts,
    samples: u32,
    total: u64,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            started_wall: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            sources: HashMap::new(),
            overflow: Counts::default(),
            samples: 0,
            total: 0,
        }
    }

    /// The summary line's event, if anything in this window was counted but not written.
    fn summary(&self, interval: Duration) -> Option<Value> {
        let sampled: u64 = self.samples as u64;
        if self.total <= sampled {
            return None;
        }
        let mut listed: Vec<(&String, &Counts)> = self.sources.iter().collect();
        listed.sort_by(|a, b| b.1.total.cmp(&a.1.total).then(a.0.cmp(b.0)));
        let omitted: Vec<_> = listed.split_off(listed.len().min(MAX_LISTED));
        let sources: Vec<Value> =
            listed.iter().map(|(src, c)| json!({"source": src, "count": c.total, "written": c.sampled, "reasons": c.classes()})).collect();
        let mut other = Counts::default();
        for (_, c) in &omitted {
            other.total += c.total;
            for (k, n) in &c.by_class {
                *other.by_class.entry(*k).or_default() += n;
            }
        }
        other.total += self.overflow.total;
        for (k, n) in &self.overflow.by_class {
            *other.by_class.entry(*k).or_default() += n;
        }
        Some(json!({
            "interval_start": self.started_wall,
            "interval_seconds": interval.as_secs_f64(),
            "total": self.total,
            "written": self.samples,
            "sources": sources,
            "other_sources": omitted.len(),
            "untracked_count": self.overflow.total,
            "other_count": other.total,
            "other_reasons": other.classes(),
        }))
    }
}

/// What the caller should write for one refusal.
#[derive(Debug, Default)]
pub struct Noted {
    /// Write this refusal as its own (bounded) line.
    pub write_sample: bool,
    /// The previous interval ended: write this `auth.refused` summary first.
    pub summary: Option<Value>,
}

/// Counts refusals per source per interval.
pub struct Refusals {
    interval: Duration,
    window: Mutex<Window>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals::new(DEFAULT_INTERVAL)
    }
}

impl Refusals {
    pub fn new(interval: Duration) -> Refusals {
        Refusals { interval, window: Mutex::new(Window::new(Instant::now())) }
    }

    /// Notes one refusal from `source` at `now`.
    pub fn note(&self, source: IpAddr, class: Class, now: Instant) -> Noted {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Noted::default();
        if now.duration_since(w.started) >= self.interval {
            out.summary = w.summary(self.interval);
            *w = Window::new(now);
        }
        w.total += 1;
        let key = source_key(source);
        let tracked = w.sources.len() < MAX_TRACKED || w.sources.contains_key(&key);
        let room = w.samples < SAMPLES_PER_INTERVAL;
        let sample = if tracked {
            let c = w.sources.entry(key).or_default();
            c.add(class);
            let sample = room && c.sampled < SAMPLES_PER_SOURCE;
            if sample {
                c.sampled += 1;
            }
            sample
        } else {
            w.overflow.add(class);
            false
        };
        if sample {
            w.samples += 1;
        }
        out.write_sample = sample;
        out
    }

    /// The summary of the current interval if it has ended (and starts a new one), for a
    /// periodic flush.
    pub fn flush_due(&self, now: Instant) -> Option<Value> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(w.started) < self.interval {
            return None;
        }
        let s = w.summary(self.interval);
        *w = Window::new(now);
        s
    }

    /// The summary of the current interval, whatever its age (at shutdown).
    pub fn flush_now(&self) -> Option<Value> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let s = w.summary(self.interval);
        *w = Window::new(Instant::now());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_gets_a_few_samples_then_a_count() {
        let r = Refusals::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let written = (0..2000).filter(|_| r.note(ip, Class::Unauthenticated, t0).write_sample).count();
        assert_eq!(written, SAMPLES_PER_SOURCE as usize);
        let next = r.note(ip, Class::Forbidden, t0 + Duration::from_secs(61));
        let s = next.summary.expect("the first interval is summarized");
        assert_eq!(s["total"], 2000);
        assert_eq!(s["sources"][0]["source"], "192.0.2.7");
        assert_eq!(s["sources"][0]["reasons"]["unauthenticated"], 2000);
        assert!(next.write_sample, "a new interval samples again");
    }

    #[test]
    fn many_sources_are_capped_in_samples_memory_and_summary_size() {
        let r = Refusals::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            written += r.note(ip, Class::Unauthenticated, t0).write_sample as usize;
        }
        assert_eq!(written, SAMPLES_PER_INTERVAL as usize);
        assert_eq!(r.window.lock().unwrap().sources.len(), MAX_TRACKED);
        let s = r.flush_now().unwrap();
        assert_eq!(s["sources"].as_array().unwrap().len(), MAX_LISTED);
        assert_eq!(s["other_sources"], (MAX_TRACKED - MAX_LISTED) as u64);
        assert_eq!(s["untracked_count"], 1000);
        assert_eq!(s["other_count"], (MAX_TRACKED - MAX_LISTED + 1000) as u64);
        assert!(serde_json::to_vec(&s).unwrap().len() < 8192);
    }

    #[test]
    fn ipv6_sources_are_grouped_by_slash_64() {
        assert_eq!(source_key("2001:db8:1:2:aaaa::1".parse().unwrap()), "2001:db8:1:2::/64");
        assert_eq!(source_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1");
        assert_eq!(source_key("::1".parse().unwrap()), "::1");
    }
}
