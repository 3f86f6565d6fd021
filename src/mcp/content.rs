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

pub fn execution_result(r: ExecResult) -> CallToolResult {
    let mut blocks = vec![ContentBlock::text(summary(&r))];
    for a in &r.artifacts {
        if let Some(img) = r.inline_images.iter().find(|i| i.path == a.path) {
            blocks.push(ContentBlock::image(base64::engine::general_purpose::STANDARD.encode(&img.bytes), img.mime.clone()));
            continue;
        }
        blocks.push(ContentBlock::resource_link(
            Resource::new(a.uri.clone(), a.path.clone()).with_mime_type(a.mime.clone()).with_size(a.size),
        ));
    }
    let mut result = if r.outcome == Outcome::Ok { CallToolResult::success(blocks) } else { CallToolResult::error(blocks) };
    result.structured_content = Some(serde_json::to_value(&r).expect("results serialize"));
    result
}
