//! `warden runtimes install|list`.

use clap::Subcommand;

use super::Failure;
use crate::engine::{EngineSettings, build_engine, engine_fingerprint, wasmtime_version};
use crate::home::Home;
use crate::runtime::Language;
use crate::runtime::cache::{EntryState, ModuleCache};
use crate::runtime::install::{Installer, Progress, read_record};

#[derive(Subcommand, Debug)]
pub enum RuntimesCommand {
    /// Download (pip), verify and precompile the runtimes. Safe to re-run: verified files and
    /// cache entries are kept, corrupt or stale ones are rebuilt.
    Install {
        /// Only this runtime.
        #[arg(long)]
        language: Option<Language>,
        /// Extract and recompile even what verifies.
        #[arg(long)]
        force: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show installed runtimes, their digests and the state of their compiled modules.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, cmd: RuntimesCommand) -> Result<(), Failure> {
    match cmd {
        RuntimesCommand::Install { language, force, quiet } => {
            let engine = build_engine(EngineSettings { max_instances: 1, parallel_compilation: true })
                .map_err(|e| format!("building the engine: {e:#}"))?;
            Home::private_dir(home.root())?;
            let installer =
                Installer { home, engine: &engine, progress: Progress::new(quiet), force, snapshot: crate::sandbox::snapshot::build };
            let _lock = lock_home(home)?;
            for lang in Language::ALL.into_iter().filter(|l| language.is_none_or(|x| x == *l)) {
                installer.install(lang.spec())?;
            }
            if language.is_none() {
                prune_cache(home, &engine);
            }
            Ok(())
        }
        RuntimesCommand::List { json } => list(home, json),
    }
}

/// Removes compiled modules no current runtime uses (an older snapshot recipe, another
/// Wasmtime): each is hundreds of megabytes.
fn prune_cache(home: &Home, engine: &wasmtime::Engine) {
    let cache = ModuleCache::new(home, engine);
    let keep: Vec<_> = Language::ALL
        .iter()
        .flat_map(|l| {
            let p = cache.entry_path(l.spec().cache_name(), &l.spec().cache_key());
            [p.clone(), p.with_extension("json")]
        })
        .collect();
    let Ok(entries) = std::fs::read_dir(cache.dir()) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let ours = matches!(path.extension().and_then(|x| x.to_str()), Some("cwasm" | "json"));
        if ours && !keep.contains(&path) {
            eprintln!("removing unused cache entry {}", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Serialises concurrent installs into one home (tests and CI may race).
fn lock_home(home: &Home) -> Result<std::fs::File, Failure> {
    let path = home.root().join("install.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    f.lock()?;
    Ok(f)
}

fn list(home: &Home, json: bool) -> Result<(), Failure> {
    let engine = build_engine(EngineSettings { max_instances: 1, parallel_compilation: false })
        .map_err(|e| format!("building the engine: {e:#}"))?;
    let cache = ModuleCache::new(home, &engine);
    let mut rows = Vec::new();
    for lang in Language::ALL {
        let spec = lang.spec();
        let dir = spec.install_dir(home);
        let record = read_record(&dir);
        let files_ok = record.as_ref().map(|r| r.files.iter().all(|f| f.stamp_matches(&dir)));
        let state = cache.verify(spec.cache_name(), &spec.cache_key());
        rows.push(serde_json::json!({
            "language": lang,
            "engine": spec.engine_name,
            "package": spec.package.requirement(),
            "archive": spec.package.archive,
            "archive_sha256": spec.package.archive_sha256,
            "module": spec.module_file,
            "module_sha256": spec.module_sha256(),
            "installed": record.is_some(),
            "files_verified": files_ok.unwrap_or(false),
            "install_dir": dir,
            "cache": match &state {
                EntryState::Ready { bytes } => serde_json::json!({"state": "ready", "bytes": bytes}),
                EntryState::Missing => serde_json::json!({"state": "missing"}),
                EntryState::Corrupt(why) => serde_json::json!({"state": "corrupt", "why": why}),
            },
            "cache_key": spec.cache_key(),
            "cache_entry": cache.entry_path(spec.cache_name(), &spec.cache_key()),
        }));
    }
    if json {
        let out = serde_json::json!({"wasmtime": wasmtime_version(), "engine": engine_fingerprint(&engine), "runtimes": rows});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("wasmtime {} (engine {})  home {}", wasmtime_version(), engine_fingerprint(&engine), home.root().display());
    for r in &rows {
        let cache = &r["cache"]["state"];
        let installed = if r["files_verified"] == true {
            "installed, verified"
        } else if r["installed"] == true {
            "installed, CHANGED since verification"
        } else {
            "not installed"
        };
        println!("\n{}  {}", r["language"].as_str().unwrap_or(""), r["engine"].as_str().unwrap_or(""));
        println!(
            "  package   {} ({} sha256 {})",
            r["package"].as_str().unwrap_or(""),
            r["archive"].as_str().unwrap_or(""),
            r["archive_sha256"].as_str().unwrap_or("")
        );
        match r["module_sha256"].as_str() {
            Some(sha) => println!("  module    {} sha256 {sha}", r["module"].as_str().unwrap_or("")),
            None => println!("  module    {} (built here from the package's sources)", r["module"].as_str().unwrap_or("")),
        }
        println!("  files     {installed}");
        println!("  compiled  {}", cache.as_str().unwrap_or(""));
    }
    if rows.iter().any(|r| r["cache"]["state"] != "ready" || r["files_verified"] != true) {
        println!("\nrun `warden runtimes install` to install or repair");
    }
    Ok(())
}
