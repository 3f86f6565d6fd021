//! Seccomp: which system calls the process may still make after lockdown. The policy is data
//! (`syscalls.toml`, next to this file); this module only compiles and installs it.

use std::net::SocketAddr;

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
    channel: Group,
    http: Group,
    collector: Group,
    spawner: SpawnerSection,
}

/// The spawner's changes to the filters (see `[spawner]` in syscalls.toml).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnerSection {
    #[allow(dead_code)]
    why: String,
    /// Tripwire syscalls the spawner's tripwire leaves out.
    untripped: Vec<String>,
    /// Groups that replace the base allowlist's rules for the syscalls they name.
    allow: Vec<Group>,
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
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
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

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
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

fn policy() -> Result<PolicyFile, HardenError> {
    toml::from_str(POLICY).map_err(|e| HardenError::Seccomp(format!("syscalls.toml: {e}")))
}

/// The two filters as seccompiler JSON: (tripwire, allowlist). With `listener_fd`, serving
/// HTTP on that listener; with `collector`, connecting to a trace collector at that address.
pub fn filters_json(listener_fd: Option<i32>, collector: Option<SocketAddr>) -> Result<(Value, Value, usize, usize), HardenError> {
    let policy = policy()?;
    let arch = std::env::consts::ARCH;
    let tripwire_rules = rules(&policy.tripwire, arch);
    let mut allow: Vec<Value> = policy.allow.iter().chain([&policy.channel]).flat_map(|g| rules(g, arch)).collect();
    let add_new = |allow: &mut Vec<Value>, group: &Group| {
        let new: Vec<Value> = rules(group, arch).into_iter().filter(|r| !allow.iter().any(|a| a["syscall"] == r["syscall"])).collect();
        allow.extend(new);
    };
    if let Some(fd) = listener_fd {
        add_new(&mut allow, &policy.http);
        allow
            .push(json!({"syscall": "accept4", "args": [{"index": 0, "type": "dword", "op": "eq", "val": fd, "comment": "the listener"}]}));
    }
    if let Some(addr) = collector {
        add_new(&mut allow, &policy.collector);
        let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        allow.push(json!({"syscall": "socket", "args": [
            {"index": 0, "type": "dword", "op": "eq", "val": family, "comment": "the collector's address family"},
            {"index": 1, "type": "dword", "op": {"masked_eq": 0xF}, "val": libc::SOCK_STREAM, "comment": "a stream (flags aside)"},
            // Plain TCP only: Landlock's port rules hold TCP sockets, not MPTCP or SCTP ones.
            {"index": 2, "type": "dword", "op": "eq", "val": libc::IPPROTO_TCP, "comment": "IPPROTO_TCP"},
        ]}));
    }
    if listener_fd.is_some() || collector.is_some() {
        for call in ["getsockopt", "setsockopt"] {
            for level in [1u64, 6] {
                allow.push(json!({"syscall": call, "args": [{"index": 1, "type": "dword", "op": "eq", "val": level}]}));
            }
        }
    }
    finish(tripwire_rules, allow)
}

/// The spawner's two filters as seccompiler JSON: the server's, with `[spawner]` applied (its
/// `untripped` syscalls leave the tripwire; its groups replace the allowlist's rules for the
/// syscalls they name). No `[http]`: the spawner serves no network.
pub fn spawner_filters_json() -> Result<(Value, Value, usize, usize), HardenError> {
    let policy = policy()?;
    let arch = std::env::consts::ARCH;
    let trip = rules(&policy.tripwire, arch);
    for name in &policy.spawner.untripped {
        if !trip.iter().any(|r| r["syscall"] == name.as_str()) {
            return Err(HardenError::Seccomp(format!("[spawner] untrips {name}, which is not a tripwire")));
        }
    }
    let trip = trip.into_iter().filter(|r| !policy.spawner.untripped.iter().any(|n| r["syscall"] == n.as_str())).collect();
    let added: Vec<Value> = policy.spawner.allow.iter().flat_map(|g| rules(g, arch)).collect();
    let replaced = |r: &Value| added.iter().any(|a| a["syscall"] == r["syscall"]);
    let mut allow: Vec<Value> =
        policy.allow.iter().chain([&policy.channel]).flat_map(|g| rules(g, arch)).filter(|r| !replaced(r)).collect();
    allow.extend(added);
    finish(trip, allow)
}

/// Counts the syscalls, checks no syscall is both a tripwire and allowed, and wraps the rules
/// as seccompiler filters.
fn finish(tripwire_rules: Vec<Value>, allow: Vec<Value>) -> Result<(Value, Value, usize, usize), HardenError> {
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
    let (t, a, tn, an) = filters_json(listener_fd, None)?;
    compile(&t, "tripwire")?;
    compile(&a, "allow")?;
    Ok((tn, an))
}

/// Installs the tripwire, then the allowlist, on every thread of the process (TSYNC). The
/// order matters: installing a filter needs `prctl` and `seccomp`, which the allowlist refuses.
pub fn install(plan: &Plan) -> Result<SeccompReport, HardenError> {
    apply(plan.mode, || filters_json(plan.listener_fd, plan.collector))
}

/// Installs the spawner's filters ([`spawner_filters_json`]) like [`install`] does the server's.
pub fn install_spawner(mode: HardeningMode) -> Result<SeccompReport, HardenError> {
    apply(mode, spawner_filters_json)
}

type Filters = (Value, Value, usize, usize);

fn apply(mode: HardeningMode, filters: impl FnOnce() -> Result<Filters, HardenError>) -> Result<SeccompReport, HardenError> {
    let mut report = SeccompReport { arch: std::env::consts::ARCH.into(), ..Default::default() };
    if mode == HardeningMode::Off {
        report.status = SeccompStatus::Off;
        return Ok(report);
    }
    let (t, a, tn, an) = filters()?;
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
        let (t, a, _, _) = filters_json(Some(3), None).unwrap();
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

    /// A trace collector opens TCP sockets of its address's family and `connect` (Landlock
    /// holds the port), nothing else: still no bind, listen or other families.
    #[test]
    fn a_collector_allows_tcp_sockets_of_its_family_only() {
        let (_, a, _, _) = filters_json(None, Some("127.0.0.1:4318".parse().unwrap())).unwrap();
        compile(&a, "allow").unwrap();
        let rules_of = |name: &str| -> Vec<Value> {
            a["allow"]["filter"].as_array().unwrap().iter().filter(|r| r["syscall"] == name).cloned().collect()
        };
        let socket = rules_of("socket");
        assert_eq!(socket.len(), 1, "{socket:?}");
        assert_eq!(socket[0]["args"][0]["val"], libc::AF_INET);
        assert_eq!(socket[0]["args"][1]["val"], libc::SOCK_STREAM);
        assert_eq!(socket[0]["args"][2]["val"], libc::IPPROTO_TCP, "not MPTCP or SCTP, which Landlock's port rule does not hold");
        assert_eq!(rules_of("connect").len(), 1);
        for s in ["bind", "listen", "accept4", "accept"] {
            assert!(rules_of(s).is_empty(), "{s} must not be allowed");
        }
        let (_, a6, _, _) = filters_json(None, Some("[::1]:4318".parse().unwrap())).unwrap();
        let v6: Vec<&Value> = a6["allow"]["filter"].as_array().unwrap().iter().filter(|r| r["syscall"] == "socket").collect();
        assert_eq!(v6[0]["args"][0]["val"], libc::AF_INET6);
    }

    /// The spawner may fork, exec and reap, and let an executor narrow its own confinement; it
    /// still gets no network and keeps the rest of the tripwire.
    #[test]
    fn the_spawner_filter_starts_processes_but_has_no_network() {
        let (t, a, tn, an) = spawner_filters_json().unwrap();
        compile(&t, "tripwire").unwrap();
        compile(&a, "allow").unwrap();
        let names = |v: &Value, k: &str| -> Vec<String> {
            v[k]["filter"].as_array().unwrap().iter().map(|r| r["syscall"].as_str().unwrap().to_string()).collect()
        };
        let (trip, allow) = (names(&t, "tripwire"), names(&a, "allow"));
        let (server_trip, server_allow) = check(None).unwrap();
        assert!(tn == server_trip - 4 && an > server_allow, "{tn} {an}");
        for s in
            ["execve", "clone", "wait4", "kill", "socketpair", "sendmsg", "recvmsg", "close_range", "seccomp", "landlock_restrict_self"]
        {
            assert!(allow.contains(&s.to_string()), "{s} must be allowed");
        }
        for s in ["socket", "connect", "bind", "listen", "accept", "accept4", "clone3", "sendto"] {
            assert!(!allow.contains(&s.to_string()), "{s} must not be allowed");
        }
        for s in ["execveat", "ptrace", "process_vm_readv", "bpf", "unshare", "setns", "mount", "io_uring_setup", "pidfd_getfd"] {
            assert!(trip.contains(&s.to_string()), "{s} stays a tripwire");
        }
        let rules_of = |name: &str| -> Vec<Value> {
            a["allow"]["filter"].as_array().unwrap().iter().filter(|r| r["syscall"] == name).cloned().collect()
        };
        // Replaced, not added to: one rule each, the spawner's.
        assert_eq!(rules_of("clone").len(), 1);
        assert_eq!(rules_of("clone")[0]["args"][0]["val"], 0, "no namespace flags");
        assert_eq!(rules_of("mmap"), [json!({"syscall": "mmap"})]);
        let kill = rules_of("kill");
        assert!(kill.len() == 1 && kill[0]["args"][0]["val"] == 9, "SIGKILL only: {kill:?}");
        let pair = rules_of("socketpair");
        assert!(pair.len() == 1 && pair[0]["args"][0]["val"] == 1, "AF_UNIX only: {pair:?}");
    }
}
