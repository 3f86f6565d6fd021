//! MCP logging to the client: `logging/setLevel` (and the 2026-07-28 per-request
//! `io.modelcontextprotocol/logLevel`), and one `notifications/message` per guest call that
//! ends on its request, at a level that says how it went: `info` for a call that ran fine,
//! `warning` for one the model can act on (a failed program, a refusal), `error` for a protocol
//! or internal fault. Nothing is sent to a client that asked for no level.
//!
//! MCP logging is deprecated by SEP-2577 (clients should read results, not logs); it is kept
//! for the clients that still set a level. Owns the level and the message. Does not own the
//! server's own log (stderr, `tracing`).
#![allow(deprecated)]

use std::sync::Mutex;

use rmcp::model::{CallToolResult, ContentBlock, LoggingLevel, LoggingMessageNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};

/// The level a client set with `logging/setLevel` on this connection.
#[derive(Default)]
pub struct ClientLog {
    level: Mutex<Option<LoggingLevel>>,
}

fn rank(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

impl ClientLog {
    pub fn set(&self, level: LoggingLevel) {
        *self.level.lock().unwrap_or_else(|e| e.into_inner()) = Some(level);
    }

    /// Tells the client how the call of `tool` ended, if its level lets the message through.
    pub async fn call_ended(&self, ctx: &RequestContext<RoleServer>, tool: &str, result: &Result<CallToolResult, McpError>) {
        let wanted = ctx.meta.log_level().or(*self.level.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(wanted) = wanted else { return };
        let (level, outcome, text) = match result {
            Ok(r) => {
                let outcome = r.structured_content.as_ref().and_then(|s| s.get("outcome")).and_then(|o| o.as_str()).map(str::to_string);
                let first = r.content.iter().find_map(|c| match c {
                    ContentBlock::Text(t) => t.text.lines().next().map(str::to_string),
                    _ => None,
                });
                let level = if r.is_error == Some(true) { LoggingLevel::Warning } else { LoggingLevel::Info };
                (level, outcome.unwrap_or_else(|| if level == LoggingLevel::Info { "ok".into() } else { "error".into() }), first)
            }
            Err(e) => (LoggingLevel::Error, "protocol_error".into(), Some(e.message.to_string())),
        };
        if rank(level) < rank(wanted) {
            return;
        }
        let data = serde_json::json!({"tool": tool, "outcome": outcome, "message": text.unwrap_or_default()});
        let mut p = LoggingMessageNotificationParam::new(level, data);
        p.logger = Some("warden".into());
        let _ = ctx.peer.notify_logging_message(p).await;
    }
}
