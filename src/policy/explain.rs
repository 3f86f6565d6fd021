//! `warden policy explain`: what a profile lets a guest do, in plain language, then every field
//! of the profile (from the one field table that `check` and `diff` use too).

use std::fmt::Write;

use super::fields::FIELDS;
use super::{HardeningMode, Policy};

fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n % (size / 4).max(1) == 0 {
            let v = n as f64 / size as f64;
            return if v.fract() == 0.0 { format!("{v:.0} {unit}") } else { format!("{v:.2} {unit}") };
        }
    }
    format!("{n} bytes")
}

fn seconds(s: u64) -> String {
    match s {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn millis(ms: u64) -> String {
    if ms % 1000 == 0 { seconds(ms / 1000) } else { format!("{ms} ms") }
}

/// A plain-language summary of `p`.
pub fn explain(p: &Policy) -> String {
    let f = &p.file;
    let l = &f.limits;
    let mut o = String::new();
    let _ = writeln!(o, "Profile {:?} ({}, sha256 {})", f.name, p.source, &p.sha256[..16]);
    if !f.description.is_empty() {
        let _ = writeln!(o, "{}", f.description);
    }
    let _ = writeln!(o, "\nA guest may:");
    if f.runtimes.allowed.is_empty() {
        let _ = writeln!(o, "  - run nothing: no runtime is allowed");
    } else {
        let names: Vec<&str> = f.runtimes.allowed.iter().map(|l| l.as_str()).collect();
        let _ = writeln!(o, "  - run {}", names.join(" and "));
    }
    let _ = writeln!(
        o,
        "  - use per call at most {} of wall-clock time, {} of memory and {} fuel (instructions)",
        millis(l.timeout_ms),
        bytes(l.memory_mb << 20),
        l.fuel
    );
    let _ = writeln!(
        o,
        "  - leave at most {} files and directories and {} in /workspace and /tmp together",
        l.workspace_files,
        bytes(l.workspace_bytes)
    );
    let _ = writeln!(
        o,
        "  - print up to {} on stdout and {} on stderr per call; the rest is dropped",
        bytes(l.stdout_bytes),
        bytes(l.stderr_bytes)
    );
    if f.sessions.max == 0 {
        let _ = writeln!(o, "  - not keep sessions: every call starts from nothing");
    } else {
        let _ = writeln!(
            o,
            "  - keep state in sessions: {} at once server-wide, each closed after {} unused or {} in total",
            f.sessions.max,
            seconds(f.sessions.idle_seconds),
            seconds(f.sessions.lifetime_seconds)
        );
        if f.sessions.suspend_after_seconds > 0 {
            let _ = writeln!(
                o,
                "  - move a session unused for {} from memory to disk, and back on its next call; at a graceful stop, every session",
                seconds(f.sessions.suspend_after_seconds)
            );
        } else {
            let _ = writeln!(o, "  - keep sessions in memory while they live; at a graceful stop, move them to disk for the next start");
        }
    }
    if f.sessions.max > 0 && f.snapshots.max_per_principal == 0 {
        let _ = writeln!(o, "  - not keep session snapshots on disk");
    } else if f.sessions.max > 0 {
        let _ = writeln!(
            o,
            "  - keep session snapshots on disk (files and interpreter, restorable and forkable by their principal only): up to {} snapshots and {} per principal, {} in all, each deleted after {}",
            f.snapshots.max_per_principal,
            bytes(f.snapshots.max_bytes_per_principal),
            bytes(f.snapshots.max_bytes),
            seconds(f.snapshots.retention_seconds)
        );
    }
    if f.tasks.max == 0 {
        let _ = writeln!(o, "  - not run calls as tasks: a call ends with its request");
    } else {
        let _ = writeln!(
            o,
            "  - let a call outlive its request as a task: {} at once ({} per principal), each result kept {}",
            f.tasks.max,
            f.tasks.max_per_principal,
            seconds(f.tasks.retention_seconds)
        );
    }
    let env: Vec<String> = f.env.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if env.is_empty() && f.env.pass.is_empty() {
        let _ = writeln!(o, "  - see no environment variables besides TMPDIR=/tmp and HOME=/tmp");
    } else {
        let mut parts = Vec::new();
        if !env.is_empty() {
            parts.push(format!("set to fixed values: {}", env.join(", ")));
        }
        if !f.env.pass.is_empty() {
            parts.push(format!("copied from the server's environment: {}", f.env.pass.join(", ")));
        }
        let _ = writeln!(o, "  - see, besides TMPDIR=/tmp and HOME=/tmp, the variables {}", parts.join("; "));
    }
    for m in &p.mounts {
        let mode = if m.writable { "read and write" } else { "read (not write)" };
        let _ = writeln!(o, "  - {mode} {} (host directory {})", m.guest, m.host.display());
    }
    if !f.tools.allowed.is_empty() {
        let _ = writeln!(o, "  - call the tools {} (from Python code, and as MCP tools)", f.tools.allowed.join(", "));
    }

    let _ = writeln!(o, "\nA guest cannot:");
    let _ = writeln!(o, "  - open a network connection or resolve a name: guests have no sockets at all");
    if p.mounts.is_empty() {
        let _ = writeln!(o, "  - see any host file: only its own /workspace and /tmp, and the runtime's read-only files");
    } else {
        let _ = writeln!(o, "  - see any other host file, or write where a mount is read-only");
    }
    let _ = writeln!(o, "  - see the server's environment (other than the variables above) or start processes");
    let _ = writeln!(o, "  - raise any limit: a request may only lower them");
    if f.tools.allowed.is_empty() {
        let _ = writeln!(o, "  - call any tool from its code");
    }

    let _ = writeln!(o, "\nThe server:");
    let _ = writeln!(
        o,
        "  - runs at most {} calls at once; more wait up to {} for a slot, then are refused as busy",
        l.concurrent_executions,
        millis(l.queue_timeout_ms)
    );
    let _ =
        writeln!(o, "  - lets each principal start {} calls per minute and run {} at once", l.calls_per_minute, l.concurrent_per_principal);
    let _ = writeln!(o, "  - accepts code up to {}", bytes(l.code_bytes));
    if f.artifacts.retention_seconds == 0 {
        let _ = writeln!(
            o,
            "  - does not keep files from one-shot calls after answering (only images up to {} come back inline)",
            bytes(f.artifacts.inline_image_bytes)
        );
    } else {
        let _ = writeln!(
            o,
            "  - keeps files from one-shot calls readable by their caller for {}; returns PNG/JPEG up to {} inline",
            seconds(f.artifacts.retention_seconds),
            bytes(f.artifacts.inline_image_bytes)
        );
    }
    let _ = writeln!(
        o,
        "  - records in the audit log the sha256 of code and inputs{}",
        if f.audit.record_code { ", and the code itself (also in trace spans)" } else { ", never the code itself (nor do trace spans)" }
    );
    let _ = writeln!(
        o,
        "  - serves this profile only if its own process is confined at least {}",
        match f.hardening.mode {
            HardeningMode::Enforce => "enforce (landlock and seccomp applied fully; otherwise it refuses to start or to reload)",
            HardeningMode::BestEffort => "best-effort (landlock and seccomp as far as the kernel allows; gaps are reported)",
            HardeningMode::Off =>
                "off (this profile asks for no landlock or seccomp; `warden serve --hardening` or another profile may still apply them)",
        }
    );
    let _ = writeln!(o, "\nEvery field (what `warden policy diff` compares):");
    let width = FIELDS.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for field in FIELDS {
        let _ = writeln!(o, "  {:<width$} = {}    ({})", field.name, (field.value)(f), field.about);
    }
    o
}
