//! `warden exec`: one program, one fresh sandbox, the result as JSON on stdout.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::Failure;
use crate::home::Home;
use crate::policy::Policy;
use crate::runtime::engine::{EngineSettings, build_engine, spawn_epoch_ticker};
use crate::runtime::{Language, Runtimes};
use crate::sandbox::{CancelHandle, ExecSpec, InputFile, RequestedLimits, Sandbox, Workspace, on_guest_thread};

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
    /// A file whose bytes become the program's stdin.
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
    /// Keep the files the program produced in this directory.
    #[arg(long)]
    pub artifacts_dir: Option<PathBuf>,
}

pub fn run(home: &Home, args: ExecArgs) -> Result<(), Failure> {
    let policy = Policy::load(&args.policy)?;
    if !policy.allows(args.language) {
        return Err(Failure {
            message: format!("policy {:?} does not allow {}; pick another --policy", policy.name(), args.language),
            status: 2,
        });
    }
    let code = match (&args.code, &args.script) {
        (Some(c), _) => c.clone(),
        (None, Some(p)) => std::fs::read_to_string(p).map_err(|e| format!("reading {p:?}: {e}"))?,
        (None, None) => unreachable!("clap requires one"),
    };
    if code.len() as u64 > policy.file.limits.code_bytes {
        return Err(Failure {
            message: format!("the code is {} bytes; policy {:?} accepts at most {}", code.len(), policy.name(), policy.file.limits.code_bytes),
            status: 2,
        });
    }
    let requested = RequestedLimits { timeout_ms: args.timeout_ms, memory_mb: args.memory_mb, fuel: args.fuel };
    let limits = policy.limits().lowered(&requested).map_err(|e| Failure { message: e.to_string(), status: 2 })?;
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
        files.push(InputFile { path: dest, content });
    }
    let stdin = match &args.stdin {
        Some(p) => std::fs::read(p).map_err(|e| format!("reading --stdin {p:?}: {e}"))?,
        None => Vec::new(),
    };

    let engine = build_engine(EngineSettings { max_instances: 4, parallel_compilation: false })
        .map_err(|e| format!("building the engine: {e:#}"))?;
    let _ticker = spawn_epoch_ticker(&engine)?;
    let runtimes = Runtimes::load(home, &engine, &[args.language])?;
    let sandbox = Sandbox::new(Arc::new(runtimes));
    Home::private_dir(&home.workspaces())?;
    let ws = Workspace::create(&home.workspaces(), "exec-")?;
    ws.write_inputs(&files, limits.workspace_bytes, limits.workspace_files)
        .map_err(|e| Failure { message: e.to_string(), status: 2 })?;

    let spec = ExecSpec {
        language: args.language,
        code,
        stdin,
        limits,
        env: policy.guest_env(),
        mounts: policy.mounts.clone(),
    };
    let call_id = uuid::Uuid::new_v4().to_string();
    let (report, ws) = on_guest_thread(move || {
        let cancel = CancelHandle::new();
        let r = sandbox.run_fresh(&spec, &ws, &cancel);
        (r, ws)
    })?;
    let mut report = report?;

    for a in &mut report.artifacts {
        a.uri = match &args.artifacts_dir {
            Some(dir) => {
                let dest = dir.join(&a.path);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let bytes = ws.read_file(&a.path, a.size)?;
                std::fs::write(&dest, bytes)?;
                format!("file://{}", std::path::absolute(&dest)?.display())
            }
            None => format!("warden://calls/{call_id}/{}", a.path),
        };
    }
    let mut json = serde_json::to_value(&report)?;
    json["call_id"] = call_id.into();
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
