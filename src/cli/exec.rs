//! `warden exec`: one program, one fresh sandbox, the result as JSON on stdout. It takes the
//! same path as an MCP call (policy, sandbox, audit), as the local operator.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use clap::Args;

use super::Failure;
use crate::api::{Encoding, ExecuteCodeArgs, FileArg};
use crate::audit::AuditLog;
use crate::home::{Home, OwnFiles, process_workspaces};
use crate::policy::Policy;
use crate::runtime::Language;
use crate::sandbox::{CancelHandle, RequestedLimits};
use crate::server::ExecutorPlan;
use crate::service::executors::DirectLauncher;
use crate::service::{Caller, ExecError, Profiles, Service};
use crate::tools::ToolRegistry;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// python or javascript.
    #[arg(long, short)]
    pub language: Language,
    /// The code to run.
    #[arg(long, short, conflicts_with = "script")]
    pub code: Option<String>,
    /// A file holding the code to run.
    #[arg(required_unless_present = "code")]
    pub script: Option<PathBuf>,
    /// Copy a host file into /workspace before the run: PATH, or PATH=DEST for another name.
    #[arg(long = "file", value_name = "PATH[=DEST]")]
    pub files: Vec<String>,
    /// A file whose contents (UTF-8 text) become the program's stdin.
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// Lower the wall-clock deadline (milliseconds).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Lower the memory cap (MiB).
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Lower the instruction budget.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Isolation profile: an embedded name or a .toml path.
    #[arg(long, default_value = "default", env = "WARDEN_POLICY")]
    pub policy: String,
    /// Save the files the program produced under this directory (created if missing). Safe
    /// against whatever is already there: symbolic links are never followed (at any depth, nor the
    /// directory itself), existing files are never replaced (the command fails, naming them,
    /// before saving anything), nothing is written outside it, and names with a component
    /// starting with '.' (like .git/config) are skipped unless --artifacts-dotfiles is given.
    #[arg(long, value_name = "DIR")]
    pub artifacts_dir: Option<PathBuf>,
    /// With --artifacts-dir: also save artifacts whose names have a component starting with '.'
    /// (still never replacing a file or following a link).
    #[arg(long, requires = "artifacts_dir")]
    pub artifacts_dotfiles: bool,
    /// The audit log (default: audit/audit.jsonl in the data directory).
    #[arg(long, value_name = "FILE", env = "WARDEN_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Tool packages Python code may call (`from host import tools`), if the profile allows.
    #[arg(long = "tools", value_name = "DIR")]
    pub tools: Vec<PathBuf>,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { message: message.into(), status: 2 }
}

pub fn run(home: &Home, args: ExecArgs) -> Result<(), Failure> {
    let policy = Policy::load(&args.policy)?;
    let audit_path = args.audit_log.clone().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| home.audit_log());
    // No mount may reach warden's own files: the data directory (with the native code the next
    // start maps), the audit log, the profile itself, the tool packages.
    let mut own = OwnFiles::of_home(home);
    own.add("the audit log", &audit_path);
    if !policy.source.starts_with("embedded:") {
        own.add("the profile file", std::path::Path::new(&policy.source));
    }
    for t in &args.tools {
        own.add("a tool package directory", t);
    }
    policy.check_own_files(&own)?;
    let code = match (&args.code, &args.script) {
        (Some(c), _) => c.clone(),
        (None, Some(p)) => std::fs::read_to_string(p).map_err(|e| format!("reading {p:?}: {e}"))?,
        (None, None) => unreachable!("clap requires one"),
    };
    let mut files = Vec::new();
    for spec in &args.files {
        let (src, dest) = match spec.split_once('=') {
            Some((s, d)) => (PathBuf::from(s), d.to_string()),
            None => {
                let p = PathBuf::from(spec);
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                (p, name)
            }
        };
        let content = std::fs::read(&src).map_err(|e| format!("reading --file {src:?}: {e}"))?;
        files.push(FileArg { path: dest, content: base64::engine::general_purpose::STANDARD.encode(content), encoding: Encoding::Base64 });
    }
    let stdin = match &args.stdin {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| format!("reading --stdin {p:?}: {e}"))?),
        None => None,
    };
    let request = ExecuteCodeArgs {
        language: args.language,
        code,
        session_id: None,
        files,
        stdin,
        limits: Some(RequestedLimits { timeout_ms: args.timeout_ms, memory_mb: args.memory_mb, fuel: args.fuel }),
    };

    // Only the runtime this call needs is loaded, by one executor process confined like the
    // server's: the same plan as `serve`, for a single profile.
    let languages: Vec<Language> = policy.file.runtimes.allowed.iter().copied().filter(|l| *l == args.language).collect();
    let hardening = policy.file.hardening.mode;
    let audit = Arc::new(AuditLog::open(&audit_path)?);
    let workspaces = process_workspaces(home)?;
    let profile = policy.name().to_string();
    let profiles = Profiles::single(policy);
    // One call: a guest prepared for a next call would only take CPU from this one.
    let plan = ExecutorPlan::new(home, &profiles, languages, &args.tools, hardening, 1).with_guest_pool(0);
    let mut tools = ToolRegistry::load(&args.tools, None);
    let launcher = Arc::new(DirectLauncher::new(std::env::current_exe()?));
    let caller = Caller::operator(Some(format!("exec-{}", std::process::id())), &profile);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _enter = rt.enter();
    let executors = rt.block_on(plan.start(launcher, workspaces.clone(), &mut tools))?;
    let exec = Service::new(executors, profiles, audit, Arc::new(tools));
    let outcome = rt.block_on(exec.execute(&caller, request, CancelHandle::new(), None, crate::telemetry::Trace::none()));
    let mut result = match outcome {
        Ok(r) => r,
        Err(e @ (ExecError::InvalidRequest(_) | ExecError::Session(_))) => return Err(usage(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if let (Some(dir), Some(ws)) = (&args.artifacts_dir, result.workspace.clone()) {
        let saved = super::save::save(dir, &mut result.artifacts, &ws, args.artifacts_dotfiles)?;
        if !saved.skipped_dotfiles.is_empty() {
            eprintln!(
                "warden: not saved (a name component starts with '.'; pass --artifacts-dotfiles to save them): {}",
                saved.skipped_dotfiles.join(", ")
            );
        }
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    drop(result);
    rt.block_on(exec.shutdown(std::time::Duration::ZERO));
    let _ = std::fs::remove_dir_all(&workspaces);
    Ok(())
}
