//! Tool packages: WASM tools written with the guest SDK, served as MCP tools and callable from
//! Python code.
//!
//! A package is a directory with `tool.toml` ([`manifest`]) and `tool.wasm`, a WASI preview1
//! command that reads its arguments as JSON on stdin and writes its result as JSON on stdout.
//! The operator points `warden serve --tools DIR` at packages; each is validated when the server
//! starts and refused, with the reason logged, if anything is off: the manifest, the digest, the
//! module, its imports, a name collision. A profile serves the tools its `[tools] allowed` lists,
//! and a tool gets only the capabilities it asks for *and* the profile grants ([`grant`]).

pub mod door;
pub mod manifest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::{Engine, ExternType, InstancePre};

use crate::policy::{MountMode, Policy};
use crate::runtime::cache::ModuleCache;
use crate::sandbox::{GuestState, Limits, Mount};
use manifest::Manifest;

/// Largest `tool.wasm` accepted (compiling is not free, and tools are meant to be small).
pub const MAX_WASM_BYTES: u64 = 64 << 20;

pub struct ToolPackage {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub input_schema: serde_json::Value,
    pub output_schema: Option<serde_json::Value>,
    input_validator: jsonschema::Validator,
    output_validator: Option<jsonschema::Validator>,
    /// The compiled, linked module: only in an executor. The front loads packages without
    /// compiling them (it never maps guest code) and serves a tool only when every executor
    /// loaded the same digest.
    pub pre: Option<InstancePre<GuestState>>,
}

impl std::fmt::Debug for ToolPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolPackage").field("name", &self.manifest.name).field("dir", &self.dir).finish()
    }
}

/// Validation errors as one message, the first few only.
fn describe_errors<'a>(errors: impl Iterator<Item = jsonschema::ValidationError<'a>>) -> Option<String> {
    let msgs: Vec<String> = errors
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
        })
        .collect();
    (!msgs.is_empty()).then(|| msgs.join("; "))
}

impl ToolPackage {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Checks arguments against the input schema; the message lists what is wrong.
    pub fn check_args(&self, args: &serde_json::Value) -> Result<(), String> {
        match describe_errors(self.input_validator.iter_errors(args)) {
            Some(m) => Err(format!("arguments for {} do not match its input schema: {m}", self.name())),
            None => Ok(()),
        }
    }

    /// Checks a result against the output schema, when the tool declares one.
    pub fn check_output(&self, value: &serde_json::Value) -> Result<(), String> {
        let Some(v) = &self.output_validator else { return Ok(()) };
        match describe_errors(v.iter_errors(value)) {
            Some(m) => Err(format!("{} returned a result that does not match its output schema: {m}", self.name())),
            None => Ok(()),
        }
    }
}

/// A package that was not loaded, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub path: PathBuf,
    pub reason: String,
}

/// What a profile gives one tool: the intersection of what it asks and what is granted.
#[derive(Clone, Debug)]
pub struct Grant {
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
}

/// The grant `policy` gives `tool`, or why it gives none.
pub fn grant(tool: &ToolPackage, policy: &Policy) -> Result<Grant, String> {
    grant_for(&tool.manifest, policy)
}

/// [`grant`] from the manifest alone (what the fuzz targets can build without a module).
pub(crate) fn grant_for(manifest: &Manifest, policy: &Policy) -> Result<Grant, String> {
    let name = manifest.name.as_str();
    if !policy.file.tools.allowed.iter().any(|t| t == name) {
        return Err(format!("profile {:?} does not list {name} in [tools] allowed", policy.name()));
    }
    let caps = &manifest.capabilities;
    let env_all = policy.guest_env();
    let mut env = Vec::new();
    for want in &caps.env {
        let granted = policy.file.env.set.contains_key(want) || policy.file.env.pass.contains(want);
        if !granted {
            return Err(format!("{name} asks for environment variable {want}, which profile {:?} does not grant", policy.name()));
        }
        env.extend(env_all.iter().filter(|(k, _)| k == want).cloned());
    }
    let mut mounts = Vec::new();
    for want in &caps.mounts {
        let guest = want.guest.trim_end_matches('/');
        let Some(m) = policy.mounts.iter().find(|m| m.guest == guest) else {
            return Err(format!("{name} asks for a mount at {guest}, which profile {:?} does not grant", policy.name()));
        };
        let wants_write = want.mode == MountMode::ReadWrite;
        if wants_write && !m.writable {
            return Err(format!("{name} asks to write {guest}, which profile {:?} mounts read-only", policy.name()));
        }
        mounts.push(Mount { host: m.host.clone(), guest: m.guest.clone(), writable: wants_write });
    }
    let mut limits = policy.limits();
    let ask = &caps.limits;
    if let Some(ms) = ask.timeout_ms {
        limits.timeout = limits.timeout.min(std::time::Duration::from_millis(ms));
    }
    if let Some(mb) = ask.memory_mb {
        // Saturate: `mb << 20` silently drops high bits, so an absurd ask (2^44 MiB) became 0.
        limits.memory_bytes = limits.memory_bytes.min(mb.saturating_mul(1 << 20));
    }
    if let Some(fuel) = ask.fuel {
        limits.fuel = limits.fuel.min(fuel);
    }
    Ok(Grant { env, mounts, limits })
}

/// The loaded packages, by name.
#[derive(Default)]
pub struct ToolRegistry {
    by_name: BTreeMap<String, Arc<ToolPackage>>,
    pub refusals: Vec<Refusal>,
}

impl ToolRegistry {
    pub fn get(&self, name: &str) -> Option<&Arc<ToolPackage>> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ToolPackage>> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Finds packages under each of `dirs`: the directory itself, its subdirectories, and their
    /// `package/` subdirectories (where `warden tools build` puts them).
    pub fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in dirs {
            if dir.join("tool.toml").is_file() {
                found.push(dir.clone());
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                found.push(dir.clone());
                continue;
            };
            let mut subdirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
            subdirs.sort();
            for sub in subdirs {
                if sub.join("tool.toml").is_file() {
                    found.push(sub);
                } else if sub.join("package/tool.toml").is_file() {
                    found.push(sub.join("package"));
                }
            }
        }
        found
    }

    /// Loads every package found under `dirs`. Bad packages are refused (and listed in
    /// `refusals`); the good ones load regardless. With `compile` (an executor), each module is
    /// compiled through the cache, checked to be a WASI command and linked; without (the front),
    /// only the manifest, digest and schemas are checked.
    pub fn load(dirs: &[PathBuf], compile: Option<(&Engine, &ModuleCache)>) -> ToolRegistry {
        let mut reg = ToolRegistry::default();
        for dir in Self::discover(dirs) {
            match load_package(&dir, compile) {
                Ok(pkg) => {
                    let name = pkg.name().to_string();
                    if let Some(first) = reg.by_name.get(&name) {
                        reg.refusals.push(Refusal {
                            path: dir.clone(),
                            reason: format!("its name {name} is already taken by {}", first.dir.display()),
                        });
                        continue;
                    }
                    reg.by_name.insert(name, Arc::new(pkg));
                }
                Err(reason) => reg.refusals.push(Refusal { path: dir, reason }),
            }
        }
        for r in &reg.refusals {
            tracing::warn!(package = %r.path.display(), reason = %r.reason, "tool package refused");
        }
        reg
    }

    /// Keeps only the tools `loaded` lists with the same digest (what an executor compiled and
    /// linked); the others become refusals with the executor's reason.
    pub fn keep_loaded(&mut self, loaded: &[(String, String)], refused: &[(PathBuf, String)]) {
        let names: Vec<String> = self.by_name.keys().cloned().collect();
        for name in names {
            let pkg = &self.by_name[&name];
            if loaded.iter().any(|(n, sha)| *n == name && *sha == pkg.manifest.wasm_sha256) {
                continue;
            }
            let reason = refused
                .iter()
                .find(|(p, _)| *p == pkg.dir)
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| "the executor did not load it (see its log)".into());
            tracing::warn!(package = %pkg.dir.display(), %reason, "tool package refused");
            let pkg = self.by_name.remove(&name).expect("listed");
            self.refusals.push(Refusal { path: pkg.dir.clone(), reason });
        }
    }
}

fn load_package(dir: &Path, compile: Option<(&Engine, &ModuleCache)>) -> Result<ToolPackage, String> {
    let text = std::fs::read_to_string(dir.join("tool.toml")).map_err(|e| format!("reading tool.toml: {e}"))?;
    let manifest = Manifest::parse(&text).map_err(|e| e.to_string())?;
    let wasm_path = dir.join("tool.wasm");
    let size = std::fs::metadata(&wasm_path).map_err(|e| format!("tool.wasm: {e}"))?.len();
    if size > MAX_WASM_BYTES {
        return Err(format!("tool.wasm is {size} bytes; at most {MAX_WASM_BYTES}"));
    }
    let wasm = std::fs::read(&wasm_path).map_err(|e| format!("reading tool.wasm: {e}"))?;
    let digest = crate::digest::sha256_hex(&wasm);
    if digest != manifest.wasm_sha256 {
        return Err(format!("tool.wasm has sha256 {digest}, but tool.toml pins {}", manifest.wasm_sha256));
    }
    let pre = match compile {
        Some((engine, cache)) => Some(compile_tool(&manifest.name, &wasm, &digest, engine, cache)?),
        None => None,
    };
    let schemas = manifest.schemas().map_err(|e| e.to_string())?;
    let input_validator = jsonschema::validator_for(&schemas.input).map_err(|e| format!("input_schema: {e}"))?;
    let output_validator = schemas.output.as_ref().map(jsonschema::validator_for).transpose().map_err(|e| format!("output_schema: {e}"))?;
    Ok(ToolPackage {
        manifest,
        dir: dir.to_path_buf(),
        input_schema: schemas.input,
        output_schema: schemas.output,
        input_validator,
        output_validator,
        pre,
    })
}

/// Compiles (through the cache) and links a tool's module, refusing one that is not a WASI
/// command importing only preview1.
fn compile_tool(name: &str, wasm: &[u8], digest: &str, engine: &Engine, cache: &ModuleCache) -> Result<InstancePre<GuestState>, String> {
    wasmtime::Module::validate(engine, wasm).map_err(|e| format!("tool.wasm is not a valid module: {e:#}"))?;
    let cache_name = format!("tool-{name}");
    cache.ensure(engine, &cache_name, wasm, digest, false).map_err(|e| e.to_string())?;
    let module = cache.load(engine, &cache_name, digest).map_err(|e| e.to_string())?;
    match module.get_export("_start") {
        Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
        _ => return Err("tool.wasm is not a WASI command (it has no `_start` function)".into()),
    }
    for import in module.imports() {
        if import.module() != "wasi_snapshot_preview1" {
            return Err(format!("tool.wasm imports {}.{}, which warden does not provide to tools", import.module(), import.name()));
        }
    }
    crate::sandbox::linker(engine).and_then(|l| l.instantiate_pre(&module)).map_err(|e| format!("tool.wasm cannot be linked: {e:#}"))
}

/// Longest tool error message passed on.
const MAX_MESSAGE_CHARS: usize = 4096;

fn clip(s: &str) -> String {
    s.trim().chars().take(MAX_MESSAGE_CHARS).collect()
}

/// Reads a tool's result from its run's report: the JSON on its stdout, checked against its
/// output schema, or the message that explains why there is none (its stderr, or what was
/// wrong with its output). A run that exited 0 with a bad result is reported as an error.
pub fn interpret(tool: &ToolPackage, report: &mut crate::sandbox::RunReport) -> Result<serde_json::Value, String> {
    use crate::sandbox::Outcome;
    let value = match report.outcome {
        Outcome::Ok => match serde_json::from_str::<serde_json::Value>(&report.stdout) {
            Ok(v) => tool.check_output(&v).map(|()| v),
            Err(e) => Err(format!("{} printed something that is not a JSON result: {e}", tool.name())),
        },
        Outcome::Error => Err(match clip(&report.stderr) {
            m if m.is_empty() => format!("{} failed with exit status {}", tool.name(), report.exit_code.unwrap_or(-1)),
            m => m,
        }),
        _ => Err(report.message.clone().unwrap_or_else(|| format!("{} stopped: {}", tool.name(), report.outcome))),
    };
    if let (Outcome::Ok, Err(m)) = (report.outcome, &value) {
        report.outcome = Outcome::Error;
        report.message = Some(m.clone());
    }
    value
}

/// The MCP descriptor of a tool (also what code mode's `list` returns).
pub fn descriptor(tool: &ToolPackage) -> serde_json::Value {
    let a = &tool.manifest.annotations;
    let mut d = serde_json::json!({
        "name": tool.name(),
        "description": tool.manifest.description,
        "inputSchema": tool.input_schema,
        "annotations": {
            "readOnlyHint": a.read_only,
            "destructiveHint": a.destructive,
            "idempotentHint": a.idempotent,
            "openWorldHint": a.open_world,
        },
    });
    if let Some(o) = &tool.output_schema {
        d["outputSchema"] = o.clone();
    }
    d
}
