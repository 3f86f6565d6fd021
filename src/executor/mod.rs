//! The executor side: runs guests. Given a call that the front has already validated,
//! admitted and audited, it makes the workspace, writes the inputs, runs the guest (fresh, as a
//! session turn, or as a package tool) on a guest thread, and hands back the run's report and
//! workspace.
//!
//! Owns the sandbox (engine, loaded runtimes, compiled modules) and the workspaces directory. It
//! knows nothing of principals, profiles, rate limits, the audit log or MCP: everything it needs
//! arrives in an [`ExecSpec`] or a tool [`Grant`], and requests its guests make to the outside
//! (code-mode tool calls) go through a [`Door`] the front supplies. This is the seam along which
//! executors become processes of their own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::runtime::{Language, Runtimes};
use crate::sandbox::{
    CancelHandle, Door, ExecSpec, InputFile, MAX_ARTIFACTS, RunReport, Sandbox, SandboxError, Workspace, on_guest_thread_async,
};
use crate::session::Session;
use crate::tools::{Grant, ToolPackage, ToolRun};

/// Why a run produced no report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// What the caller sent cannot be placed in the workspace (a bad path, inputs over the
    /// quota): the caller can fix it.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Internal(String),
}

impl From<SandboxError> for RunError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Workspace(w) => RunError::Rejected(w.to_string()),
            other => RunError::Internal(other.to_string()),
        }
    }
}

/// A finished run: its report and the workspace it ran in (still on disk while this is held).
pub type Run = (RunReport, Arc<Workspace>);

pub struct Executor {
    sandbox: Sandbox,
    workspaces: PathBuf,
}

impl Executor {
    pub fn new(sandbox: Sandbox, workspaces: PathBuf) -> Executor {
        Executor { sandbox, workspaces }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn runtimes(&self) -> &Runtimes {
        self.sandbox.runtimes()
    }

    /// Where every workspace of this executor lives.
    pub fn workspaces(&self) -> &Path {
        &self.workspaces
    }

    /// A fresh, empty workspace for a session.
    pub fn session_workspace(&self) -> Result<Workspace, RunError> {
        Workspace::create(&self.workspaces, "session-").map_err(|e| RunError::Internal(e.to_string()))
    }

    /// A one-shot call: a fresh workspace with the inputs and a fresh guest.
    pub async fn run_fresh(
        &self,
        spec: &ExecSpec,
        files: &[InputFile],
        cancel: &CancelHandle,
        door: Option<Box<dyn Door>>,
    ) -> Result<Run, RunError> {
        let ws = Arc::new(Workspace::create(&self.workspaces, "call-").map_err(|e| RunError::Internal(e.to_string()))?);
        ws.write_inputs(files, spec.limits.workspace_bytes, spec.limits.workspace_files).map_err(|e| RunError::Rejected(e.to_string()))?;
        let (sandbox, ws2, spec2, cancel2) = (self.sandbox.clone(), ws.clone(), spec.clone(), cancel.clone());
        let door = if spec.language == Language::Python { door } else { None };
        let report = on_guest_thread_async(move || sandbox.run_fresh(&spec2, &ws2, &cancel2, door)).await??;
        Ok((report, ws))
    }

    /// One turn of a session: its inputs written into the kept workspace, then for Python the
    /// live interpreter (started on the first turn, and again after it ended), for JavaScript a
    /// fresh guest in the same workspace. Turns of one session run one at a time.
    pub async fn session_turn(
        &self,
        session: &Session,
        spec: &ExecSpec,
        files: &[InputFile],
        cancel: &CancelHandle,
        door: Option<Box<dyn Door>>,
    ) -> Result<Run, RunError> {
        let mut state = session.state.lock().await;
        session.touch();
        state
            .workspace
            .write_inputs(files, spec.limits.workspace_bytes, spec.limits.workspace_files)
            .map_err(|e| RunError::Rejected(e.to_string()))?;
        let ws = state.workspace.clone();
        let (sandbox, spec2, cancel2) = (self.sandbox.clone(), spec.clone(), cancel.clone());
        let report = match spec.language {
            Language::Python => {
                let guest = state.guest.take();
                let (report, guest) = on_guest_thread_async(move || -> (Result<RunReport, RunError>, _) {
                    let mut guest = match guest {
                        Some(g) => g,
                        None => match sandbox.start_guest(&spec2, &ws, &cancel2) {
                            Ok(Ok(g)) => g,
                            Ok(Err(report)) => return (Ok(report), None),
                            Err(e) => return (Err(e.into()), None),
                        },
                    };
                    if let Err(e) = guest.arm(&spec2.limits, &cancel2, spec2.stdin.clone()) {
                        return (Err(RunError::Internal(format!("{e:#}"))), None);
                    }
                    guest.set_door(door);
                    let mut report = guest.run(&spec2.code);
                    guest.set_door(None);
                    report.artifacts = ws.collect_changes(MAX_ARTIFACTS, spec2.limits.workspace_bytes);
                    let keep = !report.ended_session;
                    (Ok(report), keep.then_some(guest))
                })
                .await?;
                let mut report = report?;
                if guest.is_none() && report.message.is_none() {
                    report.message =
                        Some("the interpreter ended; the next call in this session starts a fresh one (files are kept)".into());
                }
                state.guest = guest;
                report
            }
            Language::Javascript => {
                let ws2 = ws.clone();
                on_guest_thread_async(move || sandbox.run_fresh(&spec2, &ws2, &cancel2, None)).await??
            }
        };
        state.turns += 1;
        session.touch();
        Ok((report, state.workspace.clone()))
    }

    /// A package tool's run in a fresh workspace of its own, under what its grant allows.
    pub async fn run_tool(
        &self,
        tool: &Arc<ToolPackage>,
        grant: &Grant,
        args: serde_json::Value,
        cancel: &CancelHandle,
    ) -> Result<ToolRun, RunError> {
        let (workspaces, cancel, tool, grant) = (self.workspaces.clone(), cancel.clone(), tool.clone(), grant.clone());
        Ok(on_guest_thread_async(move || crate::tools::run_tool(&tool, &grant, &args, &workspaces, &cancel)).await??)
    }

    /// Removes every workspace (at shutdown, after the last call and session ended).
    pub fn remove_workspaces(&self) {
        let _ = std::fs::remove_dir_all(&self.workspaces);
    }
}
