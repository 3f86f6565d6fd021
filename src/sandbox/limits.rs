//! The limits one guest call runs under, and the memory limiter that enforces them.
//!
//! `Limits` is always the *effective* set: policy limits already lowered by whatever the request
//! asked for. Nothing in the sandbox widens them.

use std::time::Duration;

use serde::Serialize;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Effective limits for one call (or one session turn).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Limits {
    /// Wall-clock deadline, enforced in wasm (epoch ticks) and in host calls (`poll_oneoff`).
    #[serde(rename = "timeout_ms", serialize_with = "as_millis", deserialize_with = "from_millis")]
    pub timeout: Duration,
    /// Cap on each linear memory, in bytes.
    pub memory_bytes: u64,
    /// Deterministic instruction budget.
    pub fuel: u64,
    /// Bytes of stdout kept; the rest is dropped and reported as truncated.
    pub stdout_bytes: usize,
    /// Bytes of stderr kept.
    pub stderr_bytes: usize,
    /// Total bytes the guest may leave in `/workspace` and `/tmp`.
    pub workspace_bytes: u64,
    /// Total files and directories the guest may leave in `/workspace` and `/tmp`.
    pub workspace_files: u64,
}

fn from_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Limits {
    /// Lowers each limit to the requested value where one is given. Returns which requested
    /// values were above the current limit, so the caller can refuse them.
    pub fn lowered(&self, req: &RequestedLimits) -> Result<Limits, BadLimit> {
        let mut out = self.clone();
        for (name, v) in [("timeout_ms", req.timeout_ms), ("memory_mb", req.memory_mb), ("fuel", req.fuel)] {
            if v == Some(0) {
                return Err(BadLimit::Zero { name });
            }
        }
        if let Some(ms) = req.timeout_ms {
            let ceiling = self.timeout.as_millis() as u64;
            if ms > ceiling {
                return Err(BadLimit::AboveCeiling { name: "timeout_ms", requested: ms, ceiling });
            }
            out.timeout = Duration::from_millis(ms);
        }
        if let Some(mb) = req.memory_mb {
            let ceiling = self.memory_bytes >> 20;
            if mb > ceiling {
                return Err(BadLimit::AboveCeiling { name: "memory_mb", requested: mb, ceiling });
            }
            out.memory_bytes = mb << 20;
        }
        if let Some(fuel) = req.fuel {
            if fuel > self.fuel {
                return Err(BadLimit::AboveCeiling { name: "fuel", requested: fuel, ceiling: self.fuel });
            }
            out.fuel = fuel;
        }
        Ok(out)
    }
}

/// Limits a caller may ask for; each may only lower the policy's.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct RequestedLimits {
    /// Wall-clock deadline in milliseconds (at most the policy's).
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Memory cap in MiB (at most the policy's).
    #[schemars(range(min = 1))]
    pub memory_mb: Option<u64>,
    /// Instruction budget (at most the policy's).
    #[schemars(range(min = 1))]
    pub fuel: Option<u64>,
}

/// A requested limit the server refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadLimit {
    #[error("limits.{name} = {requested} is above this server's limit of {ceiling}; ask for {ceiling} or less")]
    AboveCeiling { name: &'static str, requested: u64, ceiling: u64 },
    #[error("limits.{name} = 0 would stop the program before it starts; ask for at least 1, or leave it out")]
    Zero { name: &'static str },
}

/// Wraps [`StoreLimits`] to remember that the guest was refused memory, so an allocation failure
/// the guest turned into `MemoryError` or `abort()` is reported as `memory_limit`.
pub struct TrackingLimiter {
    inner: StoreLimits,
    pub memory_refused: bool,
}

impl TrackingLimiter {
    pub fn new(memory_bytes: u64) -> Self {
        TrackingLimiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
                .instances(1)
                .memories(1)
                .tables(4)
                .table_elements(200_000)
                .build(),
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for TrackingLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if !ok {
            self.memory_refused = true;
        }
        Ok(ok)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Limits {
        Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 512 << 20,
            fuel: 1_000,
            stdout_bytes: 10,
            stderr_bytes: 10,
            workspace_bytes: 10,
            workspace_files: 10,
        }
    }

    #[test]
    fn requests_only_lower_limits() {
        let req = RequestedLimits { timeout_ms: Some(500), memory_mb: Some(128), fuel: Some(10) };
        let l = base().lowered(&req).unwrap();
        assert_eq!(l.timeout, Duration::from_millis(500));
        assert_eq!(l.memory_bytes, 128 << 20);
        assert_eq!(l.fuel, 10);
    }

    #[test]
    fn requests_above_the_policy_are_refused_with_the_ceiling() {
        let err = base().lowered(&RequestedLimits { memory_mb: Some(4096), ..Default::default() });
        let err = err.unwrap_err();
        assert_eq!(err, BadLimit::AboveCeiling { name: "memory_mb", requested: 4096, ceiling: 512 });
        assert!(err.to_string().contains("512 or less"));
    }

    #[test]
    fn zero_limits_are_refused() {
        let err = base().lowered(&RequestedLimits { timeout_ms: Some(0), ..Default::default() }).unwrap_err();
        assert_eq!(err, BadLimit::Zero { name: "timeout_ms" });
        assert!(err.to_string().contains("at least 1"));
    }
}
