//! Request validation: whether a request is well-formed and allowed by the caller's profile,
//! before it waits for anything or touches a workspace.
//!
//! Owns the checks on code size, lowered limits, input files (paths, encodings, sizes), stdin,
//! the language against the profile and the loaded runtimes, and a package tool's name, grant
//! and arguments. It does not admit (see [`super::admission`]) and does not run anything.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::json;

use super::{Caller, ExecError, Service, invalid};
use crate::api::{Encoding, ExecuteCodeArgs};
use crate::audit::bound::bound_str;
use crate::digest::sha256_hex;
use crate::policy::Policy;
use crate::sandbox::{ExecSpec, InputFile};
use crate::tools::{Grant, ToolPackage, grant};

impl Service {
    /// Checks an `execute_code` request against the caller's profile and decodes its inputs.
    pub(super) fn prepare(&self, caller: &Caller, p: &Policy, args: &ExecuteCodeArgs) -> Result<(ExecSpec, Vec<InputFile>), ExecError> {
        if !p.allows(args.language) {
            let msg = format!("language {} is not allowed by policy {:?}", args.language, p.name());
            self.admission.deny(caller, "runtime_not_allowed", &msg, None);
            return Err(invalid(msg));
        }
        if !self.executors.languages().contains(&args.language) {
            return Err(invalid(format!("the {} runtime is not loaded on this server", args.language)));
        }
        check_request(p, args)
    }

    /// The package tool `name` as the caller's profile grants it, with its arguments checked
    /// against its schema and the profile's size limit. A tool the profile does not grant gets
    /// the same answer as one that does not exist.
    pub(super) fn prepare_tool(
        &self,
        caller: &Caller,
        p: &Policy,
        name: &str,
        args: &serde_json::Value,
    ) -> Result<(Arc<ToolPackage>, Grant), ExecError> {
        let unknown = || {
            ExecError::UnknownTool(format!("unknown tool {:?}; tools/list shows the tools you may call", bound_str(name, 80).into_owned()))
        };
        let Some(tool) = self.tools.get(name).cloned() else {
            return Err(unknown());
        };
        let grant = match grant(&tool, p) {
            Ok(g) => g,
            Err(why) => {
                self.admission.deny(caller, "tool_not_allowed", &why, None);
                return Err(unknown());
            }
        };
        let size = args.to_string().len() as u64;
        if size > p.file.limits.code_bytes {
            return Err(invalid(format!(
                "the arguments are {size} bytes of JSON; this server accepts at most {}",
                p.file.limits.code_bytes
            )));
        }
        tool.check_args(args).map_err(invalid)?;
        Ok((tool, grant))
    }
}

/// The part of request validation that needs nothing but the policy: code size, limits, input
/// files (paths, encodings, sizes) and stdin. Pure, so the fuzz targets can run it on any input.
pub(crate) fn check_request(p: &Policy, args: &ExecuteCodeArgs) -> Result<(ExecSpec, Vec<InputFile>), ExecError> {
    let l = &p.file.limits;
    if args.code.len() as u64 > l.code_bytes {
        return Err(invalid(format!("code is {} bytes; this server accepts at most {}", args.code.len(), l.code_bytes)));
    }
    let limits = p.limits().lowered(&args.limits.clone().unwrap_or_default()).map_err(|e| invalid(e.to_string()))?;
    if args.files.len() as u64 > limits.workspace_files {
        return Err(invalid(format!("{} files given; at most {} are allowed", args.files.len(), limits.workspace_files)));
    }
    let mut files = Vec::with_capacity(args.files.len());
    let mut total = 0u64;
    for (i, f) in args.files.iter().enumerate() {
        crate::sandbox::workspace::validate_rel_path(&f.path).map_err(|e| invalid(format!("files[{i}]: {e}")))?;
        let content = match f.encoding {
            Encoding::Utf8 => f.content.clone().into_bytes(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(f.content.trim())
                .map_err(|e| invalid(format!("files[{i}] ({}): content is not valid base64: {e}", f.path)))?,
        };
        total += content.len() as u64;
        if total > limits.workspace_bytes {
            return Err(invalid(format!("files add up to more than the {} byte workspace limit", limits.workspace_bytes)));
        }
        files.push(InputFile { path: f.path.clone(), content });
    }
    let stdin = args.stdin.clone().unwrap_or_default().into_bytes();
    if stdin.len() as u64 > limits.workspace_bytes {
        return Err(invalid(format!("stdin is larger than the {} byte limit", limits.workspace_bytes)));
    }
    let spec = ExecSpec { language: args.language, code: args.code.clone(), stdin, limits, env: p.guest_env(), mounts: p.mounts.clone() };
    Ok((spec, files))
}

/// sha256 over the input files (path and content digest) and stdin.
pub(super) fn inputs_digest(files: &[InputFile], stdin: &[u8]) -> String {
    let listing: Vec<_> = files.iter().map(|f| json!([f.path, sha256_hex(&f.content)])).collect();
    sha256_hex(json!({"files": listing, "stdin": sha256_hex(stdin)}).to_string().as_bytes())
}
