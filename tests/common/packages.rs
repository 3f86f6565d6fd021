//! Writing tool packages for tests: WAT fixtures, manifests with the right digest, a profile
//! that serves them, and a server started with them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::harness::*;

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tools").join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Writes a package directory `root/dir` holding `wasm` and a manifest for it.
pub fn package(root: &Path, dir: &str, name: &str, wasm: &[u8], schema: &str, extra: &str) -> PathBuf {
    let d = root.join(dir);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tool.wasm"), wasm).unwrap();
    let toml = format!(
        "name = {name:?}\nversion = \"1.0.0\"\ndescription = \"test tool {name}\"\nwasm_sha256 = \"{}\"\ninput_schema = '''{schema}'''\n{extra}",
        warden::digest::sha256_hex(wasm)
    );
    std::fs::write(d.join("tool.toml"), toml).unwrap();
    d
}

pub const OBJECT: &str = r#"{"type": "object"}"#;
pub const ECHO_SCHEMA: &str =
    r#"{"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": false}"#;

/// A profile like the default one that serves `tools` and lets code call them `calls` times.
pub fn tool_policy(files: &ServerFiles, tools: &[&str], calls: u32, edits: &[(&str, &str)]) -> PathBuf {
    let list = tools.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
    let mut all: Vec<(&str, String)> = edits.iter().map(|(a, b)| (*a, b.to_string())).collect();
    all.push(("[hardening]", format!("[tools]\nallowed = [{list}]\ncalls_per_execution = {calls}\n\n[hardening]")));
    let refs: Vec<(&str, &str)> = all.iter().map(|(a, b)| (*a, b.as_str())).collect();
    files.policy(&refs)
}

pub async fn serve_tools(files: &ServerFiles, policy: &Path, dirs: &[&Path]) -> Client {
    let mut extra: Vec<String> = Vec::new();
    for d in dirs {
        extra.push("--tools".into());
        extra.push(d.display().to_string());
    }
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let cmd = server_command(files, Some(policy), &refs);
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    use rmcp::ServiceExt;
    Recorder::default().serve(transport).await.expect("initialize")
}
