//! Isolation profiles: the TOML files in `policies/` that decide what guests may do.
//!
//! A profile is parsed strictly (unknown keys are errors), then validated into a [`Policy`]
//! whose every field is enforced somewhere. Deny by default: a section left out grants nothing
//! (no runtimes, no sessions, no mounts, no environment).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod diff;
pub mod explain;

use crate::runtime::Language;
use crate::runtime::engine::MAX_GUEST_MEMORY;
use crate::sandbox::{Limits, Mount};

/// Profiles compiled into the binary, usable by name.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("default", include_str!("../../policies/default.toml")),
    ("strict", include_str!("../../policies/strict.toml")),
    ("data-science", include_str!("../../policies/data-science.toml")),
    ("tool-runner", include_str!("../../policies/tool-runner.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {source_name}: {message}")]
    Parse { source_name: String, message: String },
    #[error("policy {source_name}: {field}: {message}{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid { source_name: String, field: String, line: Option<usize>, message: String },
    #[error("reading policy {path:?}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("no policy named {0:?}: use one of {names}, or a path to a .toml file", names = EMBEDDED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    UnknownName(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub limits: LimitsSection,
    #[serde(default)]
    pub runtimes: RuntimesSection,
    #[serde(default)]
    pub sessions: SessionsSection,
    #[serde(default)]
    pub artifacts: ArtifactsSection,
    #[serde(default)]
    pub env: EnvSection,
    #[serde(default)]
    pub mounts: Vec<MountSection>,
    #[serde(default)]
    pub tools: ToolsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub hardening: HardeningSection,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    /// Tool packages (by name) this profile may call, as MCP tools and from Python code.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// How many tool calls one Python execution may make from its code (`from host import
    /// tools`); 0 turns code mode off.
    #[serde(default)]
    pub calls_per_execution: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Where the audit log goes; relative paths are inside the data directory. The environment
    /// variable WARDEN_AUDIT_LOG overrides it.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Put the code itself in execution events, not only its sha256.
    #[serde(default)]
    pub record_code: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub fuel: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub workspace_bytes: u64,
    pub workspace_files: u64,
    pub code_bytes: u64,
    pub concurrent_executions: u32,
    /// How long a call waits for a free execution slot before it is refused as busy.
    pub queue_timeout_ms: u64,
    /// Calls each principal may start per minute (a token bucket of this size, refilled evenly).
    pub calls_per_minute: u32,
    /// Calls each principal may have running at once.
    pub concurrent_per_principal: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuntimesSection {
    #[serde(default)]
    pub allowed: Vec<Language>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    #[serde(default)]
    pub max: u32,
    /// Most of those one principal may hold: its share, so one principal cannot take every
    /// session slot. Required (1..=max) when sessions are enabled.
    #[serde(default)]
    pub max_per_principal: u32,
    #[serde(default)]
    pub idle_seconds: u64,
    #[serde(default)]
    pub lifetime_seconds: u64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsSection {
    #[serde(default)]
    pub retention_seconds: u64,
    #[serde(default)]
    pub inline_image_bytes: u64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvSection {
    /// Variables with explicit values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Names of host variables passed through with their host value.
    #[serde(default)]
    pub pass: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MountSection {
    pub host: PathBuf,
    pub guest: String,
    pub mode: MountMode,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum MountMode {
    #[serde(rename = "ro")]
    ReadOnly,
    #[serde(rename = "rw")]
    ReadWrite,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HardeningMode {
    Enforce,
    #[default]
    BestEffort,
    Off,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HardeningSection {
    #[serde(default)]
    pub mode: HardeningMode,
}

/// A validated profile.
#[derive(Clone, Debug)]
pub struct Policy {
    pub file: PolicyFile,
    /// Where it came from ("embedded:default" or a path), for messages and audit.
    pub source: String,
    /// sha256 of the profile text, recorded in audit events.
    pub sha256: String,
    pub mounts: Vec<Mount>,
}

/// Guest paths a mount may not shadow: the runtimes' own files and the per-call directories.
const RESERVED_GUEST_PATHS: &[&str] = &["/workspace", "/tmp", "/usr/local/lib"];

/// Largest values a profile may set; beyond them a limit stops being a limit.
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// CPython's snapshot starts with 40 MiB of linear memory.
pub const MIN_PYTHON_MEMORY_MB: u64 = 64;

impl Policy {
    /// Loads a profile by embedded name, or from a file path.
    pub fn load(name_or_path: &str) -> Result<Policy, PolicyError> {
        if let Some((name, text)) = EMBEDDED.iter().find(|(n, _)| *n == name_or_path) {
            return Policy::parse(text, &format!("embedded:{name}"));
        }
        let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".toml");
        if !looks_like_path {
            return Err(PolicyError::UnknownName(name_or_path.to_string()));
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })?;
        Policy::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            source_name: source.to_string(),
            message: parse_message(text, &e),
        })?;
        let invalid = |field: &str, message: String| PolicyError::Invalid {
            source_name: source.to_string(),
            field: field.to_string(),
            line: line_of(text, field),
            message,
        };
        validate(&file, &invalid)?;
        let mounts = resolve_mounts(&file, &invalid)?;
        Ok(Policy { sha256: crate::digest::sha256_hex(text.as_bytes()), source: source.to_string(), file, mounts })
    }

    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// Per-call limits before any request lowers them.
    pub fn limits(&self) -> Limits {
        let l = &self.file.limits;
        Limits {
            timeout: Duration::from_millis(l.timeout_ms),
            memory_bytes: l.memory_mb << 20,
            fuel: l.fuel,
            stdout_bytes: l.stdout_bytes as usize,
            stderr_bytes: l.stderr_bytes as usize,
            workspace_bytes: l.workspace_bytes,
            workspace_files: l.workspace_files,
        }
    }

    /// Where this profile's audit log goes: WARDEN_AUDIT_LOG, else `audit.path` (relative to the
    /// data directory), else the data directory's default.
    pub fn audit_log(&self, home: &crate::home::Home) -> PathBuf {
        if let Some(p) = std::env::var_os("WARDEN_AUDIT_LOG").filter(|v| !v.is_empty()) {
            return PathBuf::from(p);
        }
        match &self.file.audit.path {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => home.root().join(p),
            None => home.audit_log(),
        }
    }

    pub fn allows(&self, language: Language) -> bool {
        self.file.runtimes.allowed.contains(&language)
    }

    /// The guest environment: explicit values, then allowlisted host variables that are set.
    pub fn guest_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self.file.env.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for name in &self.file.env.pass {
            if let Ok(v) = std::env::var(name) {
                env.push((name.clone(), v));
            }
        }
        env
    }
}

fn validate(f: &PolicyFile, invalid: &dyn Fn(&str, String) -> PolicyError) -> Result<(), PolicyError> {
    if f.name.is_empty() || !f.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid("name", "use letters, digits, '-' and '_' only".into()));
    }
    let l = &f.limits;
    let positive: [(&str, u64); 11] = [
        ("limits.timeout_ms", l.timeout_ms),
        ("limits.memory_mb", l.memory_mb),
        ("limits.fuel", l.fuel),
        ("limits.stdout_bytes", l.stdout_bytes),
        ("limits.stderr_bytes", l.stderr_bytes),
        ("limits.workspace_files", l.workspace_files),
        ("limits.code_bytes", l.code_bytes),
        ("limits.concurrent_executions", u64::from(l.concurrent_executions)),
        ("limits.queue_timeout_ms", l.queue_timeout_ms),
        ("limits.calls_per_minute", u64::from(l.calls_per_minute)),
        ("limits.concurrent_per_principal", u64::from(l.concurrent_per_principal)),
    ];
    for (field, v) in positive {
        if v == 0 {
            return Err(invalid(field, "must be at least 1 (0 would make every call fail)".into()));
        }
    }
    if l.timeout_ms > MAX_TIMEOUT_MS {
        return Err(invalid("limits.timeout_ms", format!("at most {MAX_TIMEOUT_MS} (one hour)")));
    }
    if l.memory_mb > MAX_GUEST_MEMORY >> 20 {
        return Err(invalid("limits.memory_mb", format!("at most {} (the engine's largest guest memory)", MAX_GUEST_MEMORY >> 20)));
    }
    if f.runtimes.allowed.contains(&Language::Python) && l.memory_mb < MIN_PYTHON_MEMORY_MB {
        return Err(invalid(
            "limits.memory_mb",
            format!("python is allowed but CPython needs at least {MIN_PYTHON_MEMORY_MB} MiB to start"),
        ));
    }
    if l.stdout_bytes > 64 << 20 || l.stderr_bytes > 64 << 20 {
        return Err(invalid("limits.stdout_bytes", "output caps are at most 64 MiB per stream".into()));
    }
    if l.code_bytes > 16 << 20 {
        return Err(invalid("limits.code_bytes", "at most 16 MiB".into()));
    }
    if l.concurrent_executions > 256 {
        return Err(invalid("limits.concurrent_executions", "at most 256".into()));
    }
    if f.tools.calls_per_execution > 10_000 {
        return Err(invalid("tools.calls_per_execution", "at most 10000".into()));
    }
    for (i, name) in f.tools.allowed.iter().enumerate() {
        if !crate::policy::valid_tool_name(name) {
            return Err(invalid("tools.allowed", format!("entry {i} ({name:?}) is not a valid tool name: use 1-64 of A-Z a-z 0-9 _ -")));
        }
        if f.tools.allowed[..i].contains(name) {
            return Err(invalid("tools.allowed", format!("{name} is listed twice")));
        }
    }
    let mut seen = Vec::new();
    for lang in &f.runtimes.allowed {
        if seen.contains(lang) {
            return Err(invalid("runtimes.allowed", format!("{lang} is listed twice")));
        }
        seen.push(*lang);
    }
    let s = &f.sessions;
    if s.max > 0 && (s.idle_seconds == 0 || s.lifetime_seconds == 0) {
        return Err(invalid("sessions", "sessions are enabled (max > 0) but idle_seconds or lifetime_seconds is 0".into()));
    }
    if s.max > 0 && s.idle_seconds > s.lifetime_seconds {
        return Err(invalid("sessions.idle_seconds", "is longer than lifetime_seconds".into()));
    }
    if s.max > 1024 {
        return Err(invalid("sessions.max", "at most 1024".into()));
    }
    if s.max > 0 && (s.max_per_principal == 0 || s.max_per_principal > s.max) {
        return Err(invalid(
            "sessions.max_per_principal",
            format!("must be between 1 and sessions.max ({}) when sessions are enabled: it is each principal's share of the session slots", s.max),
        ));
    }
    for (name, value) in &f.env.set {
        check_env_name(name).map_err(|m| invalid("env.set", m))?;
        if value.contains('\0') {
            return Err(invalid("env.set", format!("{name} contains a NUL byte")));
        }
        if f.env.pass.contains(name) {
            return Err(invalid("env.pass", format!("{name} is both set explicitly and passed from the host; pick one")));
        }
    }
    for name in &f.env.pass {
        check_env_name(name).map_err(|m| invalid("env.pass", m))?;
    }
    Ok(())
}

/// MCP tool names warden accepts: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(format!("{name:?} is not a valid variable name"));
    }
    if name == "TMPDIR" || name == "HOME" {
        return Err(format!("{name} is set by warden (/tmp) and cannot be changed"));
    }
    Ok(())
}

fn resolve_mounts(f: &PolicyFile, invalid: &dyn Fn(&str, String) -> PolicyError) -> Result<Vec<Mount>, PolicyError> {
    let mut out: Vec<Mount> = Vec::new();
    for (i, m) in f.mounts.iter().enumerate() {
        let field = format!("mounts[{i}]");
        let guest = m.guest.trim_end_matches('/');
        if !guest.starts_with('/') || guest.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(invalid(&field, format!("guest path {:?} must be absolute and normalized, like \"/data\"", m.guest)));
        }
        for reserved in RESERVED_GUEST_PATHS {
            if guest == *reserved || guest.starts_with(&format!("{reserved}/")) || reserved.starts_with(&format!("{guest}/")) {
                return Err(invalid(&field, format!("guest path {guest} overlaps {reserved}, which warden manages")));
            }
        }
        let host = m.host.canonicalize().map_err(|e| invalid(&field, format!("host path {:?}: {e}", m.host)))?;
        if !host.is_dir() {
            return Err(invalid(&field, format!("host path {host:?} is not a directory")));
        }
        if host == Path::new("/") {
            return Err(invalid(&field, "mounting the host's root directory is not allowed".into()));
        }
        for prev in &out {
            if prev.guest == guest || prev.guest.starts_with(&format!("{guest}/")) || guest.starts_with(&format!("{}/", prev.guest)) {
                return Err(invalid(&field, format!("guest path {guest} overlaps another mount at {}", prev.guest)));
            }
        }
        out.push(Mount { host, guest: guest.to_string(), writable: m.mode == MountMode::ReadWrite });
    }
    Ok(out)
}

/// A toml parse error with the line it points at.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

/// Best-effort line of a dotted field (`limits.memory_mb`), for error messages.
fn line_of(text: &str, field: &str) -> Option<usize> {
    let mut parts = field.split('.');
    let first = parts.next()?;
    let last = field.rsplit('.').next()?.split('[').next()?;
    let mut in_section = !field.contains('.');
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t.trim_matches(|c| c == '[' || c == ']') == first;
            continue;
        }
        if in_section && (t.starts_with(&format!("{last} ")) || t.starts_with(&format!("{last}="))) {
            return Some(i + 1);
        }
    }
    None
}

impl fmt::Display for HardeningMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HardeningMode::Enforce => "enforce",
            HardeningMode::BestEffort => "best-effort",
            HardeningMode::Off => "off",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profiles_validate() {
        for (name, _) in EMBEDDED {
            let p = Policy::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.name(), *name);
        }
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let text = include_str!("../../policies/default.toml").replace("fuel = ", "fule = ");
        let err = Policy::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("line"), "{err}");
        assert!(err.contains("fule") || err.contains("fuel"), "{err}");
    }

    #[test]
    fn a_left_out_section_grants_nothing() {
        let text = "name = \"bare\"\n[limits]\ntimeout_ms = 1\nmemory_mb = 64\nfuel = 1\nstdout_bytes = 1\nstderr_bytes = 1\nworkspace_bytes = 0\nworkspace_files = 1\ncode_bytes = 1\nconcurrent_executions = 1\nqueue_timeout_ms = 1\ncalls_per_minute = 1\nconcurrent_per_principal = 1\n";
        let p = Policy::parse(text, "t").unwrap();
        assert!(!p.allows(Language::Python) && !p.allows(Language::Javascript));
        assert_eq!(p.file.sessions.max, 0);
        assert!(p.guest_env().is_empty());
        assert!(p.mounts.is_empty());
    }

    #[test]
    fn contradictions_are_errors() {
        let base = include_str!("../../policies/default.toml");
        let both = base.replace("set = { LANG = \"C.UTF-8\" }", "set = { LANG = \"C.UTF-8\" }\npass = [\"LANG\"]");
        assert!(Policy::parse(&both, "t").unwrap_err().to_string().contains("both set"));
        let tiny = base.replace("memory_mb = 512", "memory_mb = 16");
        let err = Policy::parse(&tiny, "t").unwrap_err().to_string();
        assert!(err.contains("limits.memory_mb") && err.contains("line"), "{err}");
    }
}
