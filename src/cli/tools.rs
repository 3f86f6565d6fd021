//! `warden tools list|build|new`: what tool authors and operators run on tool packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Subcommand;
use serde_json::json;

use super::Failure;
use crate::engine::{EngineSettings, build_engine, spawn_epoch_ticker};
use crate::home::Home;
use crate::policy::Policy;
use crate::runtime::cache::ModuleCache;
use crate::tools::manifest::{Annotations, Capabilities, Manifest};
use crate::tools::{ToolRegistry, grant};

#[derive(Subcommand, Debug)]
pub enum ToolsCommand {
    /// List tool packages, what each asks for, and what a profile grants it.
    List {
        /// Directories of packages (as for `warden serve --tools`).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The profile whose grants to show.
        #[arg(long, default_value = "tool-runner")]
        policy: String,
        #[arg(long)]
        json: bool,
    },
    /// Create a new tool project NAME/ from the template, with the guest SDK vendored in.
    New {
        /// The tool's name (an MCP tool name: letters, digits, _ and -).
        name: String,
        /// Parent directory (default: the current one).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build a tool crate for wasm32-wasip1 and write its package (tool.wasm + tool.toml with
    /// the digest and schemas filled in).
    Build {
        /// The tool's cargo project.
        dir: PathBuf,
        /// Where the package goes (default: DIR/package).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(home: &Home, cmd: ToolsCommand) -> Result<(), Failure> {
    match cmd {
        ToolsCommand::List { dirs, policy, json } => list(home, &dirs, &policy, json),
        ToolsCommand::Build { dir, out } => build(&dir, out.as_deref()),
        ToolsCommand::New { name, dir } => new(&name, &dir),
    }
}

fn list(home: &Home, dirs: &[PathBuf], policy: &str, as_json: bool) -> Result<(), Failure> {
    let policy = Policy::load(policy)?;
    let engine = build_engine(EngineSettings { max_instances: 1, parallel_compilation: true }).map_err(|e| format!("{e:#}"))?;
    Home::private_dir(home.root())?;
    let reg = ToolRegistry::load(dirs, Some((&engine, &ModuleCache::new(home, &engine))));
    let rows: Vec<_> = reg
        .all()
        .map(|t| {
            let g = grant(t, &policy);
            json!({
                "name": t.name(),
                "version": t.manifest.version,
                "description": t.manifest.description,
                "path": t.dir,
                "wasm_sha256": t.manifest.wasm_sha256,
                "asks": t.manifest.capabilities,
                "annotations": t.manifest.annotations,
                "profile": policy.name(),
                "granted": g.as_ref().ok().map(|g| json!({
                    "env": g.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                    "mounts": g.mounts,
                    "limits": g.limits,
                })),
                "refused_by_profile": g.err(),
            })
        })
        .collect();
    let refused: Vec<_> = reg.refusals.iter().map(|r| json!({"path": r.path, "reason": r.reason})).collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!({"tools": rows, "refused": refused}))?);
        return Ok(());
    }
    for r in &rows {
        println!(
            "{} {}  {}",
            r["name"].as_str().unwrap_or(""),
            r["version"].as_str().unwrap_or(""),
            r["description"].as_str().unwrap_or("")
        );
        println!("  package  {}", r["path"].as_str().unwrap_or(""));
        println!("  sha256   {}", r["wasm_sha256"].as_str().unwrap_or(""));
        println!("  asks     {}", r["asks"]);
        match &r["granted"] {
            serde_json::Value::Null => {
                println!("  profile {:?}: NOT SERVED ({})", policy.name(), r["refused_by_profile"].as_str().unwrap_or(""))
            }
            g => println!(
                "  profile {:?} grants: env {}, mounts {}, limits {} ms / {} MiB / {} fuel",
                policy.name(),
                g["env"],
                g["mounts"],
                g["limits"]["timeout_ms"],
                g["limits"]["memory_bytes"].as_u64().unwrap_or(0) >> 20,
                g["limits"]["fuel"]
            ),
        }
    }
    for r in &reg.refusals {
        println!("REFUSED {}: {}", r.path.display(), r.reason);
    }
    if rows.is_empty() && refused.is_empty() {
        println!("no tool packages found");
    }
    Ok(())
}

/// `[package.metadata.warden]` of a tool crate.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ToolMeta {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    annotations: Option<Annotations>,
    #[serde(default)]
    capabilities: Capabilities,
}

fn build(dir: &Path, out: Option<&Path>) -> Result<(), Failure> {
    let cargo_toml = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&cargo_toml).map_err(|e| format!("reading {cargo_toml:?}: {e}"))?;
    let doc: toml::Value = toml::from_str(&text).map_err(|e| format!("{cargo_toml:?}: {e}"))?;
    let package = doc.get("package").ok_or_else(|| format!("{cargo_toml:?} has no [package]"))?;
    let pkg_name = package.get("name").and_then(|v| v.as_str()).ok_or("the package has no name")?.to_string();
    let version = package.get("version").and_then(|v| v.as_str()).unwrap_or("0.0.0").to_string();
    let meta: ToolMeta = match package.get("metadata").and_then(|m| m.get("warden")) {
        Some(v) => v.clone().try_into().map_err(|e| format!("[package.metadata.warden]: {e}"))?,
        None => ToolMeta::default(),
    };
    let description = meta
        .description
        .or_else(|| package.get("description").and_then(|v| v.as_str()).map(String::from))
        .ok_or("give the tool a description ([package.metadata.warden] description or package.description)")?;

    eprintln!("building {pkg_name} for wasm32-wasip1 ...");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip1", "--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&cargo_toml)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !output.status.success() {
        return Err("cargo build failed (see above)".into());
    }
    let wasm_path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|x| x == "bin")))
        .filter_map(|m| m["filenames"].as_array()?.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".wasm")).map(PathBuf::from))
        .next_back()
        .ok_or("cargo built no .wasm binary; a tool is a binary crate")?;
    let wasm = std::fs::read(&wasm_path).map_err(|e| format!("reading {wasm_path:?}: {e}"))?;

    let name = meta.name.unwrap_or(pkg_name);
    let schemas = ask_schemas(&name, &wasm)?;
    let input = schemas.get("input").ok_or("the tool's --warden-schema answer has no \"input\"")?;
    let output_schema = schemas.get("output").filter(|v| !v.is_null()).map(|v| serde_json::to_string_pretty(v).expect("JSON"));
    let manifest = Manifest {
        name,
        version,
        description,
        wasm_sha256: crate::digest::sha256_hex(&wasm),
        input_schema: serde_json::to_string_pretty(input).expect("JSON"),
        output_schema,
        annotations: meta.annotations.unwrap_or_default(),
        capabilities: meta.capabilities,
    };
    let rendered = toml::to_string_pretty(&manifest).map_err(|e| format!("rendering tool.toml: {e}"))?;
    Manifest::parse(&rendered).map_err(|e| format!("the generated manifest does not validate: {e}"))?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| dir.join("package"));
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("tool.wasm"), &wasm)?;
    std::fs::write(
        out.join("tool.toml"),
        format!("# Generated by `warden tools build`; edit the crate's Cargo.toml instead.\n{rendered}"),
    )?;
    println!("{}: package written to {} (sha256 {})", manifest.name, out.display(), manifest.wasm_sha256);
    Ok(())
}

/// Runs the freshly built module with `--warden-schema` in a sandbox and parses its answer.
fn ask_schemas(name: &str, wasm: &[u8]) -> Result<serde_json::Value, Failure> {
    use crate::sandbox::{CancelHandle, CommandSpec, Limits, Workspace, on_guest_thread, run_command};
    let engine = build_engine(EngineSettings { max_instances: 1, parallel_compilation: true }).map_err(|e| format!("{e:#}"))?;
    let _ticker = spawn_epoch_ticker(&engine)?;
    let module = wasmtime::Module::new(&engine, wasm).map_err(|e| format!("the built module does not compile: {e:#}"))?;
    let pre = crate::sandbox::linker(&engine)
        .and_then(|l| l.instantiate_pre(&module))
        .map_err(|e| format!("the built module cannot be linked (a tool may import only WASI preview1): {e:#}"))?;
    let scratch = tempfile::tempdir()?;
    let name = name.to_string();
    let report = on_guest_thread(move || {
        let ws = Workspace::create(scratch.path(), "schema-")?;
        let limits = Limits {
            timeout: std::time::Duration::from_secs(10),
            memory_bytes: 256 << 20,
            fuel: 10_000_000_000,
            stdout_bytes: 4 << 20,
            stderr_bytes: 64 << 10,
            workspace_bytes: 1 << 20,
            workspace_files: 10,
        };
        let spec =
            CommandSpec { pre, args: vec![name, "--warden-schema".into()], stdin: Vec::new(), limits, env: Vec::new(), mounts: Vec::new() };
        run_command(&spec, &ws, &CancelHandle::new()).map(|(report, _spent)| report)
    })??;
    if report.outcome.as_str() != "ok" {
        return Err(format!("asking the tool for its schemas failed ({}): {}", report.outcome, report.stderr).into());
    }
    serde_json::from_str(&report.stdout).map_err(|e| format!("the tool's --warden-schema answer is not JSON: {e}").into())
}

const TEMPLATE_CARGO: &str = include_str!("template/Cargo.toml");
const TEMPLATE_MAIN: &str = include_str!("template/main.rs");
const SDK_CARGO: &str = include_str!("../../guest-sdk/Cargo.toml");
const SDK_LIB: &str = include_str!("../../guest-sdk/src/lib.rs");

fn new(name: &str, parent: &Path) -> Result<(), Failure> {
    if !crate::policy::valid_tool_name(name) {
        return Err(Failure { message: format!("{name:?} is not a valid tool name: use 1-64 of A-Z a-z 0-9 _ -"), status: 2 });
    }
    let root = parent.join(name);
    if root.exists() {
        return Err(Failure { message: format!("{} already exists", root.display()), status: 2 });
    }
    // The vendored SDK is a plain path dependency of the new project's workspace: drop its own
    // workspace table and its test module (the tests are not vendored).
    let sdk_cargo = SDK_CARGO.split("\n# Its own workspace root").next().unwrap_or(SDK_CARGO).replace("\n[workspace]\n", "\n");
    let sdk_lib = SDK_LIB.replace("#[cfg(test)]\nmod tests;\n", "");
    let files = [
        ("Cargo.toml", TEMPLATE_CARGO.replace("TOOL_NAME", name)),
        ("src/main.rs", TEMPLATE_MAIN.replace("TOOL_NAME", name)),
        ("warden-guest/Cargo.toml", sdk_cargo),
        ("warden-guest/src/lib.rs", sdk_lib),
        (".gitignore", "/target/\n/package/\n".to_string()),
    ];
    for (rel, text) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("files are inside the project"))?;
        std::fs::write(&path, text)?;
    }
    println!("created {}: edit src/main.rs, then `warden tools build {}`", root.display(), root.display());
    Ok(())
}
