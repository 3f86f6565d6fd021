//! `resources/read` of retained artifacts: only for their owner, at most [`MAX_READ_BYTES`] per
//! file, a few reads per principal and server-wide at once, and off the async runtime.

use std::time::Duration;

use super::{Caller, ExecError, Service, invalid};
use crate::artifacts::{ArtifactRef, parse_uri};
use crate::audit::bound::bound_str;
use crate::limiter::Limited;

/// Largest artifact `resources/read` returns. MCP cannot stream a resource: the whole file, its
/// base64 text and the JSON response around it sit in memory at once.
pub const MAX_READ_BYTES: u64 = 8 << 20;
/// Artifact reads in flight at once, server-wide, and per principal. With the size cap this
/// bounds what reads hold in memory (about 30 MiB each at most) and keeps one principal from
/// taking every read slot.
pub(super) const MAX_READS: usize = 8;
const MAX_READS_PER_PRINCIPAL: u32 = 2;

impl Service {
    /// Reads an artifact for its owner: `(bytes, mime)`. Files over [`MAX_READ_BYTES`] are
    /// refused with what to do instead; reads hold one of the principal's read shares and one of
    /// the server's read slots, and run off the async runtime.
    pub async fn read_artifact(&self, caller: &Caller, uri: &str) -> Result<(Vec<u8>, String), ExecError> {
        let shown = bound_str(uri, 200).into_owned();
        let not_found = || invalid(format!("no artifact {shown:?} is readable by you (it may have expired)"));
        let _share = self
            .reads
            .take(&caller.principal, MAX_READS_PER_PRINCIPAL)
            .map_err(|running| ExecError::Limited(Limited::Share { what: "artifact reads", running }))?;
        let (ws, path, mime) = match parse_uri(uri).ok_or_else(not_found)? {
            ArtifactRef::Call { call_id, path } => {
                let (ws, a) = self.artifacts.find(call_id, path, &caller.owner).ok_or_else(not_found)?;
                (ws, path.to_string(), a.mime)
            }
            ArtifactRef::Session { session_id, path } => {
                let s = self.sessions.get(session_id, &caller.owner).map_err(|_| not_found())?;
                let ws = s
                    .state
                    .try_lock()
                    .map(|st| st.workspace.clone())
                    .map_err(|_| invalid("the session is running a call; read its files when the call returns"))?;
                (ws, path.to_string(), crate::sandbox::workspace::mime_for(path))
            }
        };
        let queue = Duration::from_secs(10);
        let Ok(Ok(_permit)) = tokio::time::timeout(queue, self.read_slots.clone().acquire_owned()).await else {
            self.metrics.refuse("busy");
            return Err(ExecError::Busy { slots: MAX_READS, waited_ms: queue.as_millis() as u64 });
        };
        let read = tokio::task::spawn_blocking(move || ws.read_file(&path, MAX_READ_BYTES))
            .await
            .map_err(|e| ExecError::Internal(format!("artifact read task: {e}")))?;
        match read {
            Ok(bytes) => Ok((bytes, mime)),
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => Err(invalid(format!(
                "artifact {shown:?} is larger than the {} MiB resources/read returns (MCP cannot stream a resource). \
                 Have your code write what you need to see in smaller files (a summary, a sample, a compressed copy, \
                 or parts under {} MiB) and read those",
                MAX_READ_BYTES >> 20,
                MAX_READ_BYTES >> 20
            ))),
            Err(_) => Err(not_found()),
        }
    }
}
