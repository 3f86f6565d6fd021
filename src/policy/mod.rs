//! Isolation profiles: the TOML files in `policies/` that decide what guests may do.
//!
//! A profile is parsed strictly (unknown keys are errors), then validated into a [`Policy`]
//! whose every field is enforced somewhere. Deny by default: a section left out grants nothing
//! (no runtimes, no sessions, no mounts, no environment).
//!
//! Settings that can only hold for a whole server (where the audit log goes) are not profile
//! fields: a profile that still sets one is refused with the flag that replaced it. The fields,
//! their bounds and their direction live in one table ([`fields`]) that `check`, `explain` and
//! `diff` all read.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod diff;
pub mod explain;
pub mod fields;

use crate::home::OwnFiles;
use crate::runtime::Language;
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
    /// A TOML syntax or type error; `line` is from the span toml's own error carries.
    #[error("policy {source_name}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse { source_name: String, line: Option<usize>, message: String },
    /// A value that parses but is refused (out of bounds, contradicting another field); `line`
    /// is the field's, from toml's spans.
    #[error("policy {source_name}{}: {field}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
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
    pub snapshots: SnapshotsSection,
    #[serde(default)]
    pub artifacts: ArtifactsSection,
    #[serde(default)]
    pub tasks: TasksSection,
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
    /// A session unused this long is written to the snapshot store and released from memory;
    /// its next call resumes it. 0: never (it stays in memory until it expires).
    #[serde(default)]
    pub suspend_after_seconds: u64,
}

/// Session snapshots kept on disk (see [`crate::snapshots`]); off unless `max_per_principal` is
/// set, and only with sessions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsSection {
    /// Snapshots each principal may keep under this profile (0: no snapshots).
    #[serde(default)]
    pub max_per_principal: u32,
    /// Bytes each principal's snapshots may take on disk in all.
    #[serde(default)]
    pub max_bytes_per_principal: u64,
    /// Bytes all snapshots under this profile may take on disk.
    #[serde(default)]
    pub max_bytes: u64,
    /// How long a snapshot is kept after it is taken.
    #[serde(default)]
    pub retention_seconds: u64,
}

/// Calls that outlive their request as MCP tasks (see [`crate::mcp::tasks`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TasksSection {
    /// Tasks (running, or finished and kept for their result) under this profile at once; 0
    /// turns tasks off.
    #[serde(default)]
    pub max: u32,
    /// Most of those one principal may hold: its share. Required (1..=max) when tasks are on.
    #[serde(default)]
    pub max_per_principal: u32,
    /// How long a finished task's result stays retrievable.
    #[serde(default)]
    pub retention_seconds: u64,
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

/// Host confinement is one per process (Landlock and seccomp apply to the whole server), so a
/// profile cannot choose it for itself. What a profile sets is the least confinement a server
/// must have to serve it: `warden serve` runs at the strictest mode any loaded profile asks for
/// (or at `--hardening`, which may not be weaker), and refuses to start or to reload otherwise.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HardeningSection {
    #[serde(default)]
    pub mode: HardeningMode,
}

impl HardeningMode {
    /// Orders modes from no confinement (0) to full confinement (2).
    pub fn strictness(self) -> u8 {
        match self {
            HardeningMode::Off => 0,
            HardeningMode::BestEffort => 1,
            HardeningMode::Enforce => 2,
        }
    }
}

impl std::str::FromStr for HardeningMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(HardeningMode::Enforce),
            "best-effort" => Ok(HardeningMode::BestEffort),
            "off" => Ok(HardeningMode::Off),
            other => Err(format!("unknown hardening mode {other:?}: use enforce, best-effort or off")),
        }
    }
}

/// Profile keys that used to exist but hold for a whole server: where each moved.
const MOVED: &[(&str, &str, &str)] = &[(
    "audit",
    "path",
    "the audit log is one per server, not per profile (only the default profile's was ever used): remove this line and pass `--audit-log PATH` to `warden serve` / `warden exec`, or set WARDEN_AUDIT_LOG",
)];

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
        if let Ok(raw) = text.parse::<toml::Table>() {
            for (section, key, message) in MOVED {
                if raw.get(*section).and_then(|t| t.as_table()).is_some_and(|t| t.contains_key(*key)) {
                    let field = format!("{section}.{key}");
                    return Err(PolicyError::Invalid {
                        source_name: source.to_string(),
                        line: line_of(text, &field),
                        field,
                        message: message.to_string(),
                    });
                }
            }
        }
        let mut file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            source_name: source.to_string(),
            line: e.span().map(|s| line_at(text, s.start)),
            message: e.message().to_string(),
        })?;
        let invalid = |field: &str, message: String| PolicyError::Invalid {
            source_name: source.to_string(),
            field: field.to_string(),
            line: line_of(text, field),
            message,
        };
        validate(&file, &invalid)?;
        let mounts = resolve_mounts(&file, &invalid)?;
        // Keep the file in its resolved form too, so `diff` and `explain` show real locations.
        for (m, resolved) in file.mounts.iter_mut().zip(&mounts) {
            m.host = resolved.host.clone();
            m.guest = resolved.guest.clone();
        }
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

    /// Refuses a mount whose host directory contains, or lies inside, one of warden's own files
    /// (the data directory, the audit log, the auth file...). Checked where those paths are known:
    /// at `serve` and `exec` start, on reload, and by `policy check` for what it can know.
    pub fn check_own_files(&self, own: &OwnFiles) -> Result<(), PolicyError> {
        for (i, m) in self.mounts.iter().enumerate() {
            if let Some((what, contains)) = own.overlap(&m.host) {
                let relation = if contains { "contains" } else { "lies inside" };
                return Err(PolicyError::Invalid {
                    source_name: self.source.clone(),
                    field: format!("mounts[{i}]"),
                    line: None,
                    message: format!(
                        "host directory {} {relation} {what}, one of warden's own files. A guest could read or rewrite them (the audit log, credentials, the native code the next start runs); mount a directory that neither contains nor lies inside them",
                        m.host.display()
                    ),
                });
            }
        }
        Ok(())
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
    for field in fields::FIELDS {
        if let fields::Value::Num(v) = (field.value)(f) {
            if let Some(message) = fields::out_of_bounds(field, v) {
                return Err(invalid(field.name, message));
            }
        }
    }
    if f.runtimes.allowed.contains(&Language::Python) && l.memory_mb < MIN_PYTHON_MEMORY_MB {
        return Err(invalid(
            "limits.memory_mb",
            format!("python is allowed but CPython needs at least {MIN_PYTHON_MEMORY_MB} MiB to start"),
        ));
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
    if s.max > 0 && s.suspend_after_seconds >= s.idle_seconds && s.suspend_after_seconds > 0 {
        return Err(invalid(
            "sessions.suspend_after_seconds",
            "must be shorter than idle_seconds (an idle session expires then), or 0 to keep sessions in memory".into(),
        ));
    }
    if s.max > 0 && s.idle_seconds > s.lifetime_seconds {
        return Err(invalid("sessions.idle_seconds", "is longer than lifetime_seconds".into()));
    }
    if s.max > 0 && (s.max_per_principal == 0 || s.max_per_principal > s.max) {
        return Err(invalid(
            "sessions.max_per_principal",
            format!(
                "must be between 1 and sessions.max ({}) when sessions are enabled: it is each principal's share of the session slots",
                s.max
            ),
        ));
    }
    let n = &f.snapshots;
    if n.max_per_principal > 0 {
        if s.max == 0 {
            return Err(invalid(
                "snapshots.max_per_principal",
                "snapshots are of sessions: enable [sessions] too, or set this to 0".into(),
            ));
        }
        if n.retention_seconds == 0 || n.max_bytes_per_principal == 0 {
            return Err(invalid(
                "snapshots",
                "snapshots are enabled (max_per_principal > 0) but retention_seconds or max_bytes_per_principal is 0".into(),
            ));
        }
        if n.max_bytes_per_principal > n.max_bytes {
            return Err(invalid(
                "snapshots.max_bytes_per_principal",
                format!("is more than snapshots.max_bytes ({}): it is each principal's share of the store", n.max_bytes),
            ));
        }
    }
    let t = &f.tasks;
    if t.max > 0 && (t.max_per_principal == 0 || t.max_per_principal > t.max) {
        return Err(invalid(
            "tasks.max_per_principal",
            format!("must be between 1 and tasks.max ({}) when tasks are enabled: it is each principal's share of the tasks", t.max),
        ));
    }
    if t.max > 0 && t.retention_seconds == 0 {
        return Err(invalid(
            "tasks.retention_seconds",
            "must be at least 1 when tasks are enabled: a result nobody can fetch is lost".into(),
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
    let ok =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with(|c: char| c.is_ascii_digit());
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

/// The line of a field named as in messages (`limits.memory_mb`, `mounts[0]`), from the spans
/// toml's parser records for every key and value, so it is right however the TOML spells the
/// field (a `[section]` header, a dotted key, an inline table, an array of tables). A field the
/// text leaves out (a default) gets the line of the nearest enclosing table the text has; a field
/// of a table the text leaves out gets none.
fn line_of(text: &str, field: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut span = None;
    let mut at: Option<&toml::Spanned<toml::de::DeValue>> = None;
    for part in field.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let mut next = match at {
            None => doc.get_ref().get(key),
            Some(v) => v.get_ref().get(key),
        };
        if let (Some(v), Some(i)) = (next, index) {
            next = v.get_ref().get(i);
        }
        let Some(v) = next else { break };
        span = Some(v.span());
        at = Some(v);
    }
    span.map(|s| line_at(text, s.start))
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
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
    fn moved_settings_say_where_they_went() {
        let text = include_str!("../../policies/default.toml").replace("record_code = false", "record_code = false\npath = \"x.jsonl\"");
        let err = Policy::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("audit.path") && err.contains("--audit-log") && err.contains("line"), "{err}");
    }

    #[test]
    fn mounts_over_own_files_are_refused_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let home = root.join("home/warden");
        std::fs::create_dir_all(home.join("cache")).unwrap();
        let own = OwnFiles::of_home(&crate::home::Home::at(&home));
        let with_mount = |host: &Path| {
            let text = format!(
                "{}\n[[mounts]]\nhost = {:?}\nguest = \"/d\"\nmode = \"ro\"\n",
                include_str!("../../policies/default.toml"),
                host.display().to_string()
            );
            Policy::parse(&text, "t").unwrap()
        };
        let err = with_mount(&root.join("home")).check_own_files(&own).unwrap_err().to_string();
        assert!(err.contains("mounts[0]") && err.contains("contains the data directory"), "{err}");
        let err = with_mount(&home.join("cache")).check_own_files(&own).unwrap_err().to_string();
        assert!(err.contains("lies inside the data directory"), "{err}");
        std::fs::create_dir_all(root.join("home/project")).unwrap();
        with_mount(&root.join("home/project")).check_own_files(&own).unwrap();
    }

    #[test]
    fn fields_are_found_by_toml_spans_however_spelled() {
        let text = "name = \"x\"\n\
                    limits.fuel = 1\n\
                    env = { set = { A = \"b\" } }\n\
                    [sessions]\n\
                    # max = 3 in a comment is not the field\n\
                    \"max\" = 2\n\
                    [[mounts]]\n\
                    guest = \"/a\"\n\
                    [[mounts]]\n\
                    guest = \"/b\"\n";
        assert_eq!(line_of(text, "name"), Some(1));
        assert_eq!(line_of(text, "limits.fuel"), Some(2), "a dotted key");
        assert_eq!(line_of(text, "env.set"), Some(3), "an inline table");
        assert_eq!(line_of(text, "sessions.max"), Some(6), "a quoted key, not the comment");
        assert_eq!(line_of(text, "mounts[1]"), Some(9), "the second of an array of tables");
        assert_eq!(line_of(text, "mounts[1].guest"), Some(10));
        assert_eq!(line_of(text, "sessions.idle_seconds"), Some(4), "a left-out field: its table's line");
        assert_eq!(line_of(text, "artifacts.retention_seconds"), None, "a left-out table has no line");
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
