//! Turning results into MCP content: structured content plus a short text summary, inline
//! images, and resource links for other files.

use base64::Engine as _;
use rmcp::model::{CallToolResult, ContentBlock, Resource};
use serde::Serialize;

use crate::api::ExecResult;
use crate::sandbox::Outcome;

/// Characters of each stream repeated in the text summary (the structured content has all of it).
const SUMMARY_STREAM_CHARS: usize = 8_000;

pub fn is_text(mime: &str) -> bool {
    mime.starts_with("text/") || matches!(mime, "application/json" | "application/xml" | "application/javascript" | "image/svg+xml")
}

pub fn structured<T: Serialize>(value: &T, summary: String) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(summary)]);
    r.structured_content = Some(serde_json::to_value(value).expect("results serialize"));
    r
}

fn clip(s: &str) -> String {
    if s.len() <= SUMMARY_STREAM_CHARS {
        return s.to_string();
    }
    let mut end = SUMMARY_STREAM_CHARS;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes in structuredContent]", &s[..end], s.len() - end)
}

fn summary(r: &ExecResult) -> String {
    let mut out = format!("{}", r.outcome);
    if let Some(code) = r.exit_code {
        out.push_str(&format!(" (exit {code})"));
    }
    out.push_str(&format!(" in {} ms", r.duration_ms));
    if let Some(m) = &r.message {
        out.push_str(&format!(": {m}"));
    }
    if r.truncated {
        out.push_str(" [output truncated]");
    }
    if !r.stdout.is_empty() {
        out.push_str(&format!("\n--- stdout ---\n{}", clip(&r.stdout)));
    }
    if !r.stderr.is_empty() {
        out.push_str(&format!("\n--- stderr ---\n{}", clip(&r.stderr)));
    }
    if !r.artifacts.is_empty() {
        out.push_str("\n--- files ---");
        for a in &r.artifacts {
            out.push_str(&format!("\n{} ({} bytes, {}) {}", a.path, a.size, a.mime, a.uri));
        }
    }
    out
}

/// Artifact blocks: images inline when they were read, resource links otherwise.
fn artifact_blocks(r: &ExecResult, blocks: &mut Vec<ContentBlock>) {
    for a in &r.artifacts {
        if let Some(img) = r.inline_images.iter().find(|i| i.path == a.path) {
            blocks.push(ContentBlock::image(base64::engine::general_purpose::STANDARD.encode(&img.bytes), img.mime.clone()));
            continue;
        }
        blocks.push(ContentBlock::resource_link(
            Resource::new(a.uri.clone(), a.path.clone()).with_mime_type(a.mime.clone()).with_size(a.size),
        ));
    }
}

pub fn execution_result(r: ExecResult) -> CallToolResult {
    let mut blocks = vec![ContentBlock::text(summary(&r))];
    artifact_blocks(&r, &mut blocks);
    let mut result = if r.outcome == Outcome::Ok { CallToolResult::success(blocks) } else { CallToolResult::error(blocks) };
    result.structured_content = Some(serde_json::to_value(&r).expect("results serialize"));
    result
}

/// A tool package's result: its JSON value as structured content (and as text), the run's
/// report and audit event under `_meta.warden`, and its artifacts.
pub fn tool_result(meta: ExecResult, value: Result<serde_json::Value, String>) -> CallToolResult {
    let mut blocks = Vec::new();
    let mut result = match &value {
        Ok(v) => {
            blocks.push(ContentBlock::text(v.to_string()));
            artifact_blocks(&meta, &mut blocks);
            let mut r = CallToolResult::success(blocks);
            if v.is_object() {
                r.structured_content = Some(v.clone());
            }
            r
        }
        Err(message) => {
            blocks.push(ContentBlock::text(format!(
                "{} failed ({}): {message}",
                meta.audit.get("tool").and_then(|t| t.as_str()).unwrap_or("tool"),
                meta.outcome
            )));
            artifact_blocks(&meta, &mut blocks);
            CallToolResult::error(blocks)
        }
    };
    let mut warden = serde_json::to_value(&meta).expect("results serialize");
    if let Some(o) = warden.as_object_mut() {
        o.remove("stdout");
    }
    let mut m = rmcp::model::MetaObject::new();
    m.insert("warden".to_string(), warden);
    result.meta = Some(m);
    result
}
