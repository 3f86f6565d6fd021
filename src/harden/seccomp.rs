//! Seccomp: which system calls the process may still make after lockdown. The policy is data
//! (`syscalls.toml`, next to this file); this module only compiles and installs it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{HardenError, Plan};
use crate::policy::HardeningMode;

/// The reviewed policy.
pub const POLICY: &str = include_str!("syscalls.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    tripwire: Group,
    allow: Vec<Group>,
    http: Group,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    #[allow(dead_code)]
    why: String,
    syscalls: Vec<String>,
    #[serde(default)]
    x86_64_only: Vec<String>,
    #[serde(default)]
    rules: Vec<Vec<Condition>>,
    #[serde(default)]
    arg_in: Option<ArgIn>,
    #[serde(default)]
    #[allow(dead_code)]
    sockopt_levels: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Condition {
    index: u8,
    op: String,
    #[serde(default)]
    mask: Option<u64>,
    val: u64,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgIn {
    index: u8,
    values: Vec<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    comment: Option<String>,
}

/// Whether the filters are installed. Serialised as `"enforced"`, `"failed"` or `"off"`: the
/// words of the `server.start` audit line, authenticated `/healthz` and the hardening probe.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeccompStatus {
    /// Both filters are installed on every thread.
    Enforced,
    /// The kernel refused a filter; the report's `detail` says why.
    Failed,
    /// Not attempted: hardening mode `off`.
    #[default]
    Off,
}

impl SeccompStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SeccompStatus::Enforced => "enforced",
            SeccompStatus::Failed => "failed",
            SeccompStatus::Off => "off",
        }
    }
}

impl std::fmt::Display for SeccompStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SeccompReport {
    pub status: SeccompStatus,
    pub arch: String,
    /// Syscalls that kill the process.
    pub tripwire: usize,
    /// Syscalls allowed (with or without argument checks); everything else gets ENOSYS.
    pub allowed: usize,
    /// Every thread showed `Seccomp: 2` and `NoNewPrivs: 1` after installation.
    pub all_threads_filtered: bool,
    pub detail: Option<String>,
}

fn arch() -> Result<seccompiler::TargetArch, HardenError> {
    std::env::consts::ARCH.try_into().map_err(|_| HardenError::Seccomp(format!("unsupported architecture {}", std::env::consts::ARCH)))
}

fn names(g: &Group, arch: &str) -> Vec<String> {
    let mut v = g.syscalls.clone();
    if arch == "x86_64" {
        v.extend(g.x86_64_only.iter().cloned());
    }
    v
}

fn condition(c: &Condition) -> Value {
    let op = match (c.op.as_str(), c.mask) {
        ("masked_eq", Some(mask)) => json!({"masked_eq": mask}),
        (op, _) => json!(op),
    };
    let mut v = json!({"index": c.index, "type": "dword", "op": op, "val": c.val});
    if let Some(comment) = &c.comment {
        v["comment"] = json!(comment);
    }
    v
}

/// The rules of one group, in seccompiler's JSON form.
fn rules(g: &Group, arch: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for name in names(g, arch) {
        if let Some(a) = &g.arg_in {
            for v in &a.values {
                out.push(json!({"syscall": name, "args": [{"index": a.index, "type": "dword", "op": "eq", "val": v}]}));
            }
        } else if !g.rules.is_empty() {
            for r in &g.rules {
                out.push(json!({"syscall": name, "args": r.iter().map(condition).collect::<Vec<_>>()}));
            }
        } else {
            out.push(json!({"syscall": name}));
        }
    }
    out
}

/// The two filters as seccompiler JSON: (tripwire, allowlist).
pub fn filters_json(plan_http_fd: Option<i32>) -> Result<(Value, Value, usize, usize), HardenError> {
    let policy: PolicyFile = toml::from_str(POLICY).map_err(|e| HardenError::Seccomp(format!("syscalls.toml: {e}")))?;
    let arch = std::env::consts::ARCH;
    let tripwire_rules = rules(&policy.tripwire, arch);
    let mut allow: Vec<Value> = policy.allow.iter().flat_map(|g| rules(g, arch)).collect();
    if let Some(fd) = plan_http_fd {
        allow.extend(rules(&policy.http, arch));
        allow
            .push(json!({"syscall": "accept4", "args": [{"index": 0, "type": "dword", "op": "eq", "val": fd, "comment": "the listener"}]}));
        for call in ["getsockopt", "setsockopt"] {
            for level in [1u64, 6] {
                allow.push(json!({"syscall": call, "args": [{"index": 1, "type": "dword", "op": "eq", "val": level}]}));
            }
        }
    }
    let count = |rs: &[Value]| {
        let mut n: Vec<&str> = rs.iter().filter_map(|r| r["syscall"].as_str()).collect();
        n.sort();
        n.dedup();
        n.len()
    };
    let (trip_n, allow_n) = (count(&tripwire_rules), count(&allow));
    // The tripwire's syscalls and the allowlist's must never overlap.
    for r in &tripwire_rules {
        if allow.iter().any(|a| a["syscall"] == r["syscall"]) {
            return Err(HardenError::Seccomp(format!("{} is both allowed and a tripwire", r["syscall"])));
        }
    }
    let tripwire = json!({"tripwire": {"mismatch_action": "allow", "match_action": "kill_process", "filter": tripwire_rules}});
    let allowlist = json!({"allow": {"mismatch_action": {"errno": libc::ENOSYS}, "match_action": "allow", "filter": allow}});
    Ok((tripwire, allowlist, trip_n, allow_n))
}

fn compile(json: &Value, name: &str) -> Result<seccompiler::BpfProgram, HardenError> {
    let text = json.to_string();
    let mut map = seccompiler::compile_from_json(text.as_bytes(), arch()?)
        .map_err(|e| HardenError::Seccomp(format!("compiling the {name} filter: {e}")))?;
    map.remove(name).ok_or_else(|| HardenError::Seccomp(format!("no {name} filter")))
}

/// Compiles both filters (without installing them): checks the policy is valid here.
pub fn check(listener_fd: Option<i32>) -> Result<(usize, usize), HardenError> {
    let (t, a, tn, an) = filters_json(listener_fd)?;
    compile(&t, "tripwire")?;
    compile(&a, "allow")?;
    Ok((tn, an))
}

/// Installs the tripwire, then the allowlist, on every thread of the process (TSYNC). The
/// order matters: installing a filter needs `prctl` and `seccomp`, which the allowlist refuses.
pub fn install(plan: &Plan) -> Result<SeccompReport, HardenError> {
    let mut report = SeccompReport { arch: std::env::consts::ARCH.into(), ..Default::default() };
    if plan.mode == HardeningMode::Off {
        report.status = SeccompStatus::Off;
        return Ok(report);
    }
    let (t, a, tn, an) = filters_json(plan.listener_fd)?;
    let tripwire = compile(&t, "tripwire")?;
    let allow = compile(&a, "allow")?;
    report.tripwire = tn;
    report.allowed = an;
    let applied = seccompiler::apply_filter_all_threads(&tripwire).and_then(|()| seccompiler::apply_filter_all_threads(&allow));
    match applied {
        Ok(()) => {
            report.status = SeccompStatus::Enforced;
            report.all_threads_filtered = super::all_threads_filtered();
        }
        Err(e) => {
            report.status = SeccompStatus::Failed;
            report.detail = Some(e.to_string());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_compiles_for_stdio_and_http() {
        let (trip, allow) = check(None).unwrap();
        assert!(trip >= 40 && allow >= 60, "{trip} {allow}");
        let (_, allow_http) = check(Some(3)).unwrap();
        assert!(allow_http > allow);
    }

    #[test]
    fn dangerous_syscalls_are_tripwires_and_sockets_are_not_allowed() {
        let (t, a, _, _) = filters_json(Some(3)).unwrap();
        let names = |v: &Value, k: &str| -> Vec<String> {
            v[k]["filter"].as_array().unwrap().iter().map(|r| r["syscall"].as_str().unwrap().to_string()).collect()
        };
        let trip = names(&t, "tripwire");
        for s in ["execve", "ptrace", "io_uring_setup", "bpf", "unshare", "mount"] {
            assert!(trip.contains(&s.to_string()), "{s}");
        }
        let allow = names(&a, "allow");
        for s in ["socket", "connect", "bind", "listen", "clone3", "kill", "execve"] {
            assert!(!allow.contains(&s.to_string()), "{s} must not be allowed");
        }
    }
}
