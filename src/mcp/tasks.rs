//! MCP tasks (the 2026-07-28 Tasks extension, SEP-2663): calls that outlive their request.
//!
//! A `tools/call` of `execute_code` or a package tool, from a client that declared the
//! extension, runs as usual; if it is still running after [`PROMOTE_AFTER`], the request is
//! answered with a task handle and the call goes on in the background, cut loose from the
//! request and its connection. Its owner (the principal that made it) polls `tasks/get`, which
//! carries the output written since the last poll (the first poll: everything so far, since the
//! client that saw the progress notifications may be gone) and, at the end, the call's result
//! exactly as `tools/call` would have returned it; `tasks/cancel` stops the guest. Any other principal gets
//! "unknown task", as for an id that never existed.
//!
//! Bounds: a profile's tasks (running, and finished ones kept for their result) are capped in
//! all (`tasks.max`) and per principal (`tasks.max_per_principal`); to make room for a new task
//! a principal's own oldest finished task is dropped, never another's. A call that finds no
//! room is not made a task: it runs to its end on its request, as without the extension. A
//! finished task's result is kept for `tasks.retention_seconds`. While it runs, a task's call
//! holds an execution slot like any call, so it counts against its principal's share. Each
//! task's pending output is bounded by the call's output caps, and one poll returns at most
//! [`POLL_OUTPUT_BYTES`] of each stream.
//!
//! Owns the task table. Does not own running the call ([`crate::service::Service`]) or the MCP
//! handlers that reach it ([`super`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, DetailedTask, GetTaskResult, JsonObject, MetaObject, Task, TaskPayload, TaskStatus};

use crate::api::OutputChunk;
use crate::policy::TasksSection;
use crate::sandbox::CancelHandle;

/// How long a call from a task-capable client runs on its request before it becomes a task:
/// quick calls answer at once, without a poll.
pub const PROMOTE_AFTER: Duration = Duration::from_secs(1);

/// The poll interval suggested to clients.
pub const POLL_INTERVAL_MS: u64 = 500;

/// Most bytes of each stream one `tasks/get` returns (the rest comes on the next).
pub const POLL_OUTPUT_BYTES: usize = 64 << 10;

/// The `_meta` key of a `tasks/get` result's new output: the same shape as a progress
/// notification's ([`super::progress::OUTPUT_META`]).
pub use super::progress::OUTPUT_META;

#[derive(Default)]
pub struct Tasks {
    table: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    principal: String,
    profile: String,
    task: Task,
    created: Instant,
    retention: Duration,
    cancel: CancelHandle,
    cancel_requested: bool,
    /// Output not yet returned by a poll.
    pending: OutputChunk,
    end: Option<(TaskPayload, Instant)>,
}

/// What a task was made for, to tell the audit log and the table.
pub struct NewTask<'a> {
    pub principal: &'a str,
    pub profile: &'a str,
    pub limits: &'a TasksSection,
    /// How long the call may take at most (queue wait plus deadline): with the retention, the
    /// task's advertised time to live.
    pub longest_run: Duration,
    pub cancel: CancelHandle,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

fn unknown(id: &str) -> McpError {
    McpError::invalid_params(
        format!("unknown task {id:?}: it does not exist, its result expired, or it belongs to another principal"),
        None,
    )
}

impl Tasks {
    /// Registers a running call as a task, or `None` if the profile's caps leave no room.
    pub fn create(&self, new: NewTask<'_>) -> Option<Task> {
        let limits = new.limits;
        if limits.max == 0 {
            return None;
        }
        let mut table = lock(&self.table);
        sweep(&mut table);
        // Make room by dropping this principal's own oldest finished tasks, never another's, and
        // only if that makes enough room: a result is not thrown away for nothing.
        let of_profile = table.values().filter(|e| e.profile == new.profile).count();
        let mut mine: Vec<(Instant, String, bool)> = table
            .iter()
            .filter(|(_, e)| e.profile == new.profile && e.principal == new.principal)
            .map(|(id, e)| (e.created, id.clone(), e.end.is_some()))
            .collect();
        let over = |n: usize, cap: u32| (n + 1).saturating_sub(cap as usize);
        let drop = over(mine.len(), limits.max_per_principal).max(over(of_profile, limits.max));
        mine.retain(|(_, _, finished)| *finished);
        if mine.len() < drop {
            return None;
        }
        mine.sort();
        for (_, id, _) in mine.into_iter().take(drop) {
            table.remove(&id);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let retention = Duration::from_secs(limits.retention_seconds);
        let stamp = now();
        let ttl = (new.longest_run + retention).as_millis().min(u64::MAX as u128) as u64;
        let task =
            Task::new(id.clone(), TaskStatus::Working, stamp.clone(), stamp).with_ttl_ms(ttl).with_poll_interval_ms(POLL_INTERVAL_MS);
        table.insert(
            id,
            Entry {
                principal: new.principal.to_string(),
                profile: new.profile.to_string(),
                task: task.clone(),
                created: Instant::now(),
                retention,
                cancel: new.cancel,
                cancel_requested: false,
                pending: OutputChunk::default(),
                end: None,
            },
        );
        Some(task)
    }

    /// Adds output the task's call wrote (already bounded by its caps).
    pub fn output(&self, id: &str, chunk: OutputChunk) {
        if let Some(e) = lock(&self.table).get_mut(id) {
            e.pending.stdout.push_str(&chunk.stdout);
            e.pending.stderr.push_str(&chunk.stderr);
        }
    }

    /// Records how the task's call ended: its result, or the protocol error it gave.
    pub fn finish(&self, id: &str, result: Result<CallToolResult, McpError>) {
        let mut table = lock(&self.table);
        let Some(e) = table.get_mut(id) else { return };
        let payload = match result {
            Ok(r) if e.cancel_requested && outcome_of(&r) == Some("cancelled") => TaskPayload::Cancelled,
            Ok(r) => TaskPayload::Completed { result: to_object(&r) },
            Err(err) => TaskPayload::Failed { error: to_object(&err) },
        };
        e.task.status = payload.status();
        e.task.last_updated_at = now();
        e.end = Some((payload, Instant::now()));
    }

    /// `tasks/get` for `principal`: the task's state, with the output written since the last
    /// poll in `_meta`.
    pub fn get(&self, principal: &str, id: &str) -> Result<GetTaskResult, McpError> {
        let mut table = lock(&self.table);
        sweep(&mut table);
        let e = table.get_mut(id).filter(|e| e.principal == principal).ok_or_else(|| unknown(id))?;
        let payload = e.end.as_ref().map(|(p, _)| p.clone()).unwrap_or(TaskPayload::Working);
        let mut task = e.task.clone();
        if e.end.is_none() {
            task.status_message = Some(format!("running for {:.1} s", e.created.elapsed().as_secs_f64()));
        }
        let mut result = GetTaskResult::new(DetailedTask::new(task, payload));
        let out = take_front(&mut e.pending.stdout, POLL_OUTPUT_BYTES);
        let err = take_front(&mut e.pending.stderr, POLL_OUTPUT_BYTES);
        if !out.is_empty() || !err.is_empty() {
            let mut meta = serde_json::Map::new();
            meta.insert(OUTPUT_META.into(), serde_json::json!({"stdout": out, "stderr": err}));
            result.meta = Some(MetaObject(meta));
        }
        Ok(result)
    }

    /// `tasks/cancel` for `principal`: stops the task's guest (within 100 ms, like a cancelled
    /// request); the task then ends `cancelled`. Cancelling a finished task changes nothing.
    pub fn cancel(&self, principal: &str, id: &str) -> Result<(), McpError> {
        let mut table = lock(&self.table);
        sweep(&mut table);
        let e = table.get_mut(id).filter(|e| e.principal == principal).ok_or_else(|| unknown(id))?;
        if e.end.is_none() {
            e.cancel_requested = true;
            e.cancel.cancel();
        }
        Ok(())
    }

    /// Stops every running task (the server is shutting down).
    pub fn cancel_all(&self) {
        for e in lock(&self.table).values_mut().filter(|e| e.end.is_none()) {
            e.cancel.cancel();
        }
    }
}

/// Drops finished tasks kept past their retention.
fn sweep(table: &mut HashMap<String, Entry>) {
    table.retain(|_, e| e.end.as_ref().is_none_or(|(_, at)| at.elapsed() < e.retention));
}

/// Removes and returns up to `max` bytes from the front of `s`, on a character boundary.
fn take_front(s: &mut String, max: usize) -> String {
    let n = s.floor_char_boundary(max.min(s.len()));
    let rest = s.split_off(n);
    std::mem::replace(s, rest)
}

fn outcome_of(r: &CallToolResult) -> Option<&str> {
    r.structured_content.as_ref()?.get("outcome")?.as_str()
}

fn to_object<T: serde::Serialize>(v: &T) -> JsonObject {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => JsonObject::new(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(principal: &'a str, limits: &'a TasksSection) -> NewTask<'a> {
        NewTask { principal, profile: "p", limits, longest_run: Duration::from_secs(1), cancel: CancelHandle::new() }
    }

    #[test]
    fn tasks_belong_to_their_principal_and_expire_after_their_retention() {
        let limits = TasksSection { max: 2, max_per_principal: 1, retention_seconds: 0 };
        let tasks = Tasks::default();
        let a = tasks.create(new("alice", &limits)).unwrap().task_id;
        assert!(tasks.create(new("alice", &limits)).is_none(), "alice's share is one running task");
        let b = tasks.create(new("bob", &limits)).unwrap().task_id;
        assert!(tasks.create(new("carol", &limits)).is_none(), "the profile's two are taken");
        assert!(tasks.get("bob", &a).is_err() && tasks.cancel("bob", &a).is_err(), "not bob's");
        tasks.output(&a, OutputChunk { stdout: "é".repeat(POLL_OUTPUT_BYTES), stderr: String::new() });
        let first = tasks.get("alice", &a).unwrap();
        let out = first.meta.unwrap().0[OUTPUT_META]["stdout"].as_str().unwrap().len();
        assert_eq!(out, POLL_OUTPUT_BYTES, "one poll returns at most its bound, on a character boundary");
        let second = tasks.get("alice", &a).unwrap();
        assert_eq!(second.meta.unwrap().0[OUTPUT_META]["stdout"].as_str().unwrap().len(), POLL_OUTPUT_BYTES, "the rest next time");
        assert!(tasks.get("alice", &a).unwrap().meta.is_none(), "then nothing new");
        tasks.finish(&b, Ok(CallToolResult::success(Vec::new())));
        // Retention 0: gone at the next look.
        assert!(tasks.get("bob", &b).is_err());
    }

    #[test]
    fn a_finished_task_is_dropped_for_room_only_when_that_makes_room() {
        let wide = TasksSection { max: 3, max_per_principal: 3, retention_seconds: 600 };
        let tasks = Tasks::default();
        let done = tasks.create(new("alice", &wide)).unwrap().task_id;
        tasks.finish(&done, Ok(CallToolResult::success(Vec::new())));
        tasks.create(new("bob", &wide)).unwrap();
        tasks.create(new("carol", &wide)).unwrap();
        // A reload narrowed the profile to two: dropping alice's one finished task would not make
        // room (two others run), so it is kept and her call runs without a task.
        let narrow = TasksSection { max: 2, max_per_principal: 2, retention_seconds: 600 };
        assert!(tasks.create(new("alice", &narrow)).is_none());
        assert!(tasks.get("alice", &done).is_ok(), "her result was not thrown away for nothing");
        // At the old width one drop is enough: then it goes, and she gets her task.
        assert!(tasks.create(new("alice", &wide)).is_some());
        assert!(tasks.get("alice", &done).is_err(), "her oldest finished task made room");
    }
}
