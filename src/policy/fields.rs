//! The one table of profile fields. `policy check` takes each numeric field's bounds from it,
//! `policy explain` lists every field from it, and `policy diff` compares every field through it
//! with the direction (widening or narrowing) given here. A field missing from this table would be
//! invisible to all three; the policy suite derives the field list from the profile type itself
//! (serialising a parsed profile and walking every leaf) and fails on any leaf `diff` or `explain`
//! does not report.
//!
//! What each field means is enforced elsewhere (limits in the sandbox, admission in the executor);
//! this module only names, bounds, orders and prints them.

use std::collections::BTreeSet;
use std::fmt;

use super::PolicyFile;
use crate::engine::MAX_GUEST_MEMORY;

/// A field's value in a comparable form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Num(u64),
    Flag(bool),
    Text(String),
    Set(BTreeSet<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Num(n) => write!(f, "{n}"),
            Value::Flag(b) => write!(f, "{b}"),
            Value::Text(t) => f.write_str(t),
            Value::Set(s) if s.is_empty() => f.write_str("(none)"),
            Value::Set(s) => f.write_str(&s.iter().cloned().collect::<Vec<_>>().join(", ")),
        }
    }
}

/// Which way a change to a field moves what guests and callers may do.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    /// A bigger number allows more (a limit, a duration, a count).
    MoreIsWider,
    /// Each added entry allows more (a runtime, a mount, a variable, a tool).
    AddIsWider,
    /// Values from narrowest to widest.
    Ranked(&'static [&'static str]),
    /// No direction (a name, a waiting time, what the audit keeps): reported as a change.
    Neutral,
}

/// One profile field.
pub struct Field {
    /// Dotted name, as in the TOML (`limits.timeout_ms`).
    pub name: &'static str,
    /// What it governs, in a few words (printed by `explain`).
    pub about: &'static str,
    pub order: Order,
    /// Inclusive bounds `policy check` enforces on a numeric field, with why the lower one exists.
    pub bounds: Option<(u64, u64)>,
    pub value: fn(&PolicyFile) -> Value,
}

const AT_LEAST_ONE: Option<(u64, u64)> = Some((1, u64::MAX));

fn set<I: IntoIterator<Item = S>, S: ToString>(items: I) -> Value {
    Value::Set(items.into_iter().map(|s| s.to_string()).collect())
}

/// Every field of a profile, in the order `explain` prints them.
pub const FIELDS: &[Field] = &[
    Field {
        name: "name",
        about: "the profile's name (audit events and roles refer to it)",
        order: Order::Neutral,
        bounds: None,
        value: |f| Value::Text(f.name.clone()),
    },
    Field {
        name: "description",
        about: "free text for reviewers",
        order: Order::Neutral,
        bounds: None,
        value: |f| Value::Text(f.description.clone()),
    },
    Field {
        name: "limits.timeout_ms",
        about: "wall-clock deadline per call",
        order: Order::MoreIsWider,
        bounds: Some((1, 3_600_000)),
        value: |f| Value::Num(f.limits.timeout_ms),
    },
    Field {
        name: "limits.memory_mb",
        about: "linear memory per guest",
        order: Order::MoreIsWider,
        bounds: Some((1, MAX_GUEST_MEMORY >> 20)),
        value: |f| Value::Num(f.limits.memory_mb),
    },
    Field {
        name: "limits.fuel",
        about: "instruction budget per call",
        order: Order::MoreIsWider,
        bounds: AT_LEAST_ONE,
        value: |f| Value::Num(f.limits.fuel),
    },
    Field {
        name: "limits.stdout_bytes",
        about: "stdout kept per call",
        order: Order::MoreIsWider,
        bounds: Some((1, 64 << 20)),
        value: |f| Value::Num(f.limits.stdout_bytes),
    },
    Field {
        name: "limits.stderr_bytes",
        about: "stderr kept per call",
        order: Order::MoreIsWider,
        bounds: Some((1, 64 << 20)),
        value: |f| Value::Num(f.limits.stderr_bytes),
    },
    Field {
        name: "limits.workspace_bytes",
        about: "bytes in /workspace and /tmp",
        order: Order::MoreIsWider,
        bounds: None,
        value: |f| Value::Num(f.limits.workspace_bytes),
    },
    Field {
        name: "limits.workspace_files",
        about: "files and directories in /workspace and /tmp",
        order: Order::MoreIsWider,
        bounds: AT_LEAST_ONE,
        value: |f| Value::Num(f.limits.workspace_files),
    },
    Field {
        name: "limits.code_bytes",
        about: "largest code or tool arguments accepted",
        order: Order::MoreIsWider,
        bounds: Some((1, 16 << 20)),
        value: |f| Value::Num(f.limits.code_bytes),
    },
    Field {
        name: "limits.concurrent_executions",
        about: "calls running at once on the server",
        order: Order::MoreIsWider,
        bounds: Some((1, 256)),
        value: |f| Value::Num(f.limits.concurrent_executions.into()),
    },
    Field {
        name: "limits.queue_timeout_ms",
        about: "how long a call waits for a free slot",
        order: Order::Neutral,
        bounds: AT_LEAST_ONE,
        value: |f| Value::Num(f.limits.queue_timeout_ms),
    },
    Field {
        name: "limits.calls_per_minute",
        about: "calls each principal may start per minute",
        order: Order::MoreIsWider,
        bounds: AT_LEAST_ONE,
        value: |f| Value::Num(f.limits.calls_per_minute.into()),
    },
    Field {
        name: "limits.concurrent_per_principal",
        about: "calls each principal may run at once",
        order: Order::MoreIsWider,
        bounds: AT_LEAST_ONE,
        value: |f| Value::Num(f.limits.concurrent_per_principal.into()),
    },
    Field {
        name: "runtimes.allowed",
        about: "languages execute_code runs",
        order: Order::AddIsWider,
        bounds: None,
        value: |f| set(&f.runtimes.allowed),
    },
    Field {
        name: "sessions.max",
        about: "live sessions at once",
        order: Order::MoreIsWider,
        bounds: Some((0, 1024)),
        value: |f| Value::Num(f.sessions.max.into()),
    },
    Field {
        name: "sessions.max_per_principal",
        about: "live sessions one principal may hold (its share)",
        order: Order::MoreIsWider,
        bounds: Some((0, 1024)),
        value: |f| Value::Num(f.sessions.max_per_principal.into()),
    },
    Field {
        name: "sessions.idle_seconds",
        about: "an unused session is closed after",
        order: Order::MoreIsWider,
        bounds: None,
        value: |f| Value::Num(f.sessions.idle_seconds),
    },
    Field {
        name: "sessions.lifetime_seconds",
        about: "no session lives longer than",
        order: Order::MoreIsWider,
        bounds: None,
        value: |f| Value::Num(f.sessions.lifetime_seconds),
    },
    Field {
        name: "sessions.suspend_after_seconds",
        about: "an unused session is moved from memory to disk after (0: never)",
        order: Order::Neutral,
        bounds: None,
        value: |f| Value::Num(f.sessions.suspend_after_seconds),
    },
    Field {
        name: "snapshots.max_per_principal",
        about: "session snapshots one principal may keep on disk",
        order: Order::MoreIsWider,
        bounds: Some((0, 1024)),
        value: |f| Value::Num(f.snapshots.max_per_principal.into()),
    },
    Field {
        name: "snapshots.max_bytes_per_principal",
        about: "bytes one principal's snapshots may take",
        order: Order::MoreIsWider,
        bounds: None,
        value: |f| Value::Num(f.snapshots.max_bytes_per_principal),
    },
    Field {
        name: "snapshots.max_bytes",
        about: "bytes all snapshots under the profile may take",
        order: Order::MoreIsWider,
        bounds: None,
        value: |f| Value::Num(f.snapshots.max_bytes),
    },
    Field {
        name: "snapshots.retention_seconds",
        about: "a snapshot is deleted after",
        order: Order::MoreIsWider,
        bounds: None,
        value: |f| Value::Num(f.snapshots.retention_seconds),
    },
    Field {
        name: "tasks.max",
        about: "tasks (running or kept for their result) at once",
        order: Order::MoreIsWider,
        bounds: Some((0, 4096)),
        value: |f| Value::Num(f.tasks.max.into()),
    },
    Field {
        name: "tasks.max_per_principal",
        about: "tasks one principal may hold (its share)",
        order: Order::MoreIsWider,
        bounds: Some((0, 4096)),
        value: |f| Value::Num(f.tasks.max_per_principal.into()),
    },
    Field {
        name: "tasks.retention_seconds",
        about: "how long a finished task's result stays retrievable",
        order: Order::MoreIsWider,
        bounds: Some((0, 86_400)),
        value: |f| Value::Num(f.tasks.retention_seconds),
    },
    Field {
        name: "artifacts.retention_seconds",
        about: "how long one-shot artifacts stay readable",
        order: Order::MoreIsWider,
        bounds: None,
        value: |f| Value::Num(f.artifacts.retention_seconds),
    },
    Field {
        name: "artifacts.inline_image_bytes",
        about: "largest image returned inline",
        order: Order::MoreIsWider,
        bounds: None,
        value: |f| Value::Num(f.artifacts.inline_image_bytes),
    },
    Field {
        name: "env.set",
        about: "variables guests see, with fixed values",
        order: Order::AddIsWider,
        bounds: None,
        value: |f| set(f.env.set.iter().map(|(k, v)| format!("{k}={v}"))),
    },
    Field {
        name: "env.pass",
        about: "host variables passed to guests",
        order: Order::AddIsWider,
        bounds: None,
        value: |f| set(&f.env.pass),
    },
    Field {
        name: "mounts",
        about: "host directories guests see",
        order: Order::AddIsWider,
        bounds: None,
        value: |f| {
            set(f.mounts.iter().map(|m| {
                let mode = if m.mode == super::MountMode::ReadWrite { "rw" } else { "ro" };
                format!("{} <- {} ({mode})", m.guest.trim_end_matches('/'), m.host.display())
            }))
        },
    },
    Field {
        name: "tools.allowed",
        about: "tool packages callable",
        order: Order::AddIsWider,
        bounds: None,
        value: |f| set(&f.tools.allowed),
    },
    Field {
        name: "tools.calls_per_execution",
        about: "tool calls one Python execution may make",
        order: Order::MoreIsWider,
        bounds: Some((0, 10_000)),
        value: |f| Value::Num(f.tools.calls_per_execution.into()),
    },
    Field {
        name: "audit.record_code",
        about: "execution events and trace spans keep the code itself",
        order: Order::Neutral,
        bounds: None,
        value: |f| Value::Flag(f.audit.record_code),
    },
    Field {
        name: "hardening.mode",
        about: "least host confinement a server must have to serve this profile",
        order: Order::Ranked(&["enforce", "best-effort", "off"]),
        bounds: None,
        value: |f| Value::Text(f.hardening.mode.to_string()),
    },
];

/// The message for a numeric field outside its bounds.
pub fn out_of_bounds(field: &Field, v: u64) -> Option<String> {
    let (lo, hi) = field.bounds?;
    if v < lo {
        return Some(format!("must be at least {lo} (0 would make every call fail)"));
    }
    if v > hi {
        return Some(format!("at most {hi}"));
    }
    None
}
