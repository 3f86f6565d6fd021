//! `warden policy diff A B`: what changing profile A into B widens and narrows, field by field.
//! Reviewers read this in code review; a widening is what needs a second look.

use std::collections::BTreeSet;

use super::{HardeningMode, Policy};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// B allows more than A.
    Widens,
    /// B allows less than A.
    Narrows,
    /// A change with no clear direction (timing, presentation).
    Changes,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Widens => "WIDENS",
            Direction::Narrows => "narrows",
            Direction::Changes => "changes",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub direction: Direction,
    pub field: String,
    pub from: String,
    pub to: String,
}

fn num(out: &mut Vec<Change>, field: &str, a: u64, b: u64, more_is_wider: bool) {
    if a == b {
        return;
    }
    let direction = if (b > a) == more_is_wider { Direction::Widens } else { Direction::Narrows };
    out.push(Change { direction, field: field.into(), from: a.to_string(), to: b.to_string() });
}

fn sets(out: &mut Vec<Change>, field: &str, a: BTreeSet<String>, b: BTreeSet<String>) {
    for added in b.difference(&a) {
        out.push(Change { direction: Direction::Widens, field: field.into(), from: "-".into(), to: added.clone() });
    }
    for removed in a.difference(&b) {
        out.push(Change { direction: Direction::Narrows, field: field.into(), from: removed.clone(), to: "-".into() });
    }
}

fn hardening_rank(m: HardeningMode) -> u64 {
    match m {
        HardeningMode::Enforce => 0,
        HardeningMode::BestEffort => 1,
        HardeningMode::Off => 2,
    }
}

/// Every difference between `a` and `b`, widenings first.
pub fn diff(a: &Policy, b: &Policy) -> Vec<Change> {
    let (fa, fb) = (&a.file, &b.file);
    let (la, lb) = (&fa.limits, &fb.limits);
    let mut out = Vec::new();
    num(&mut out, "limits.timeout_ms", la.timeout_ms, lb.timeout_ms, true);
    num(&mut out, "limits.memory_mb", la.memory_mb, lb.memory_mb, true);
    num(&mut out, "limits.fuel", la.fuel, lb.fuel, true);
    num(&mut out, "limits.stdout_bytes", la.stdout_bytes, lb.stdout_bytes, true);
    num(&mut out, "limits.stderr_bytes", la.stderr_bytes, lb.stderr_bytes, true);
    num(&mut out, "limits.workspace_bytes", la.workspace_bytes, lb.workspace_bytes, true);
    num(&mut out, "limits.workspace_files", la.workspace_files, lb.workspace_files, true);
    num(&mut out, "limits.code_bytes", la.code_bytes, lb.code_bytes, true);
    num(&mut out, "limits.concurrent_executions", la.concurrent_executions.into(), lb.concurrent_executions.into(), true);
    num(&mut out, "limits.calls_per_minute", la.calls_per_minute.into(), lb.calls_per_minute.into(), true);
    num(&mut out, "limits.concurrent_per_principal", la.concurrent_per_principal.into(), lb.concurrent_per_principal.into(), true);
    if la.queue_timeout_ms != lb.queue_timeout_ms {
        out.push(Change {
            direction: Direction::Changes,
            field: "limits.queue_timeout_ms".into(),
            from: la.queue_timeout_ms.to_string(),
            to: lb.queue_timeout_ms.to_string(),
        });
    }
    let langs = |p: &Policy| p.file.runtimes.allowed.iter().map(|l| l.to_string()).collect();
    sets(&mut out, "runtimes.allowed", langs(a), langs(b));
    num(&mut out, "sessions.max", fa.sessions.max.into(), fb.sessions.max.into(), true);
    num(&mut out, "sessions.idle_seconds", fa.sessions.idle_seconds, fb.sessions.idle_seconds, true);
    num(&mut out, "sessions.lifetime_seconds", fa.sessions.lifetime_seconds, fb.sessions.lifetime_seconds, true);
    num(&mut out, "artifacts.retention_seconds", fa.artifacts.retention_seconds, fb.artifacts.retention_seconds, true);
    num(&mut out, "artifacts.inline_image_bytes", fa.artifacts.inline_image_bytes, fb.artifacts.inline_image_bytes, true);
    let env_set = |p: &Policy| p.file.env.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    sets(&mut out, "env.set", env_set(a), env_set(b));
    let env_pass = |p: &Policy| p.file.env.pass.iter().cloned().collect();
    sets(&mut out, "env.pass", env_pass(a), env_pass(b));
    let mount = |p: &Policy| {
        p.mounts.iter().map(|m| format!("{} <- {} ({})", m.guest, m.host.display(), if m.writable { "rw" } else { "ro" })).collect()
    };
    sets(&mut out, "mounts", mount(a), mount(b));
    let tools = |p: &Policy| p.file.tools.allowed.iter().cloned().collect();
    sets(&mut out, "tools.allowed", tools(a), tools(b));
    if fa.audit.record_code != fb.audit.record_code {
        // Recording code keeps more of the caller's data; not recording it loses evidence.
        out.push(Change {
            direction: Direction::Changes,
            field: "audit.record_code".into(),
            from: fa.audit.record_code.to_string(),
            to: fb.audit.record_code.to_string(),
        });
    }
    num(&mut out, "hardening.mode", hardening_rank(fa.hardening.mode), hardening_rank(fb.hardening.mode), true);
    if let Some(c) = out.last_mut().filter(|c| c.field == "hardening.mode") {
        c.from = fa.hardening.mode.to_string();
        c.to = fb.hardening.mode.to_string();
    }
    out.sort_by_key(|c| c.direction);
    out
}
