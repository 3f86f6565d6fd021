//! Length bounds for everything that reaches the audit log (and the tracing log).
//!
//! Audit events carry values a caller chose: principals, JWT key ids, tool names, artifact
//! paths, error messages quoting the request. Without a bound, each refused or accepted request
//! could add as many bytes to the log as the request itself carried. [`bound_event`] is applied
//! centrally by [`super::AuditLog::record`] to every event, so no call site can forget it:
//! strings are cut (at a character boundary) with a marker that says how much was dropped,
//! arrays and objects are capped with a marker, nesting is capped, and a line that is still too
//! large after that keeps only its small top-level fields plus a note of what was dropped.
//!
//! This module does not decide *whether* something is logged (rate limiting of refusals is
//! [`super::refusals`]); it only bounds what is.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

/// Longest string value kept in an audit event, in bytes.
pub const MAX_STRING_BYTES: usize = 1024;
/// Most elements kept in an array, and most keys kept in an object.
pub const MAX_ITEMS: usize = 64;
/// Deepest nesting kept.
pub const MAX_DEPTH: usize = 8;
/// Largest serialized line, in bytes, not counting an exempt field (see [`EXEMPT_CODE_BYTES`]).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The top-level `code` field of an execution record (present only when a profile sets
/// `audit.record_code`) is kept whole up to this size: it is already bounded by the profile's
/// `limits.code_bytes`, whose largest accepted value this is, and the operator asked for it.
pub const EXEMPT_CODE_BYTES: usize = 16 << 20;

/// `s` cut to at most `max` bytes (at a character boundary), with a marker saying how many bytes
/// were dropped. Use it for caller-controlled strings that go into logs or error messages.
pub fn bound_str(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…[{} more bytes]", &s[..cut], s.len() - cut))
}

/// The first `max` items of `list`, each bounded to `max_bytes`, plus a marker item when some
/// were dropped.
pub fn bound_list<S: AsRef<str>>(list: &[S], max: usize, max_bytes: usize) -> Vec<String> {
    let mut out: Vec<String> = list.iter().take(max).map(|s| bound_str(s.as_ref(), max_bytes).into_owned()).collect();
    if list.len() > max {
        out.push(format!("…[{} more]", list.len() - max));
    }
    out
}

struct Caps {
    string: usize,
    items: usize,
    depth: usize,
}

fn bound_value(v: &mut Value, caps: &Caps, depth: usize) {
    match v {
        Value::String(s) => {
            if s.len() > caps.string {
                *s = bound_str(s, caps.string).into_owned();
            }
        }
        Value::Array(a) => {
            if depth >= caps.depth {
                *v = json!(format!("…[array of {} items nested too deep]", a.len()));
                return;
            }
            if a.len() > caps.items {
                let more = a.len() - caps.items;
                a.truncate(caps.items);
                a.push(json!(format!("…[{more} more]")));
            }
            for x in a.iter_mut() {
                bound_value(x, caps, depth + 1);
            }
        }
        Value::Object(m) => {
            if depth >= caps.depth {
                *v = json!(format!("…[object of {} keys nested too deep]", m.len()));
                return;
            }
            bound_map(m, caps, depth);
        }
        _ => {}
    }
}

fn bound_map(m: &mut Map<String, Value>, caps: &Caps, depth: usize) {
    if m.len() > caps.items {
        let more = m.len() - caps.items;
        let keep: Vec<String> = m.keys().take(caps.items).cloned().collect();
        m.retain(|k, _| keep.contains(k));
        m.insert("…".into(), json!(format!("[{more} more keys]")));
    }
    // Keys can be caller-chosen too (a JSON object from a request).
    if m.keys().any(|k| k.len() > caps.string) {
        let old = std::mem::take(m);
        for (k, v) in old {
            m.insert(bound_str(&k, caps.string).into_owned(), v);
        }
    }
    for x in m.values_mut() {
        bound_value(x, caps, depth + 1);
    }
}

fn serialized_len(m: &Map<String, Value>) -> usize {
    serde_json::to_vec(m).map(|b| b.len()).unwrap_or(usize::MAX)
}

/// Bounds an event's fields in place so that its serialization is at most [`MAX_LINE_BYTES`]
/// (plus a top-level `code` string of up to [`EXEMPT_CODE_BYTES`]). Returns whether anything was
/// cut.
pub fn bound_event(fields: &mut Map<String, Value>) -> bool {
    // The exempt field is set aside so the other bounds do not apply to it.
    let code = match fields.remove("code") {
        Some(Value::String(s)) => Some(Value::String(bound_str(&s, EXEMPT_CODE_BYTES).into_owned())),
        Some(other) => Some(other),
        None => None,
    };
    let before = serialized_len(fields);
    bound_map(fields, &Caps { string: MAX_STRING_BYTES, items: MAX_ITEMS, depth: MAX_DEPTH }, 0);
    if serialized_len(fields) > MAX_LINE_BYTES {
        // Still too large (many medium-sized values): tighter caps.
        bound_map(fields, &Caps { string: 128, items: 8, depth: 3 }, 0);
    }
    if serialized_len(fields) > MAX_LINE_BYTES {
        // Keep only the small top-level fields, and say which were dropped.
        let mut dropped = Vec::new();
        fields.retain(|k, v| {
            let keep = serde_json::to_vec(v).map(|b| b.len() <= 256).unwrap_or(false);
            if !keep {
                dropped.push(k.clone());
            }
            keep
        });
        fields.insert("truncated_fields".into(), json!(bound_list(&dropped, MAX_ITEMS, 128)));
    }
    let cut = serialized_len(fields) != before;
    if let Some(mut code) = code {
        if !code.is_string() {
            bound_value(&mut code, &Caps { string: MAX_STRING_BYTES, items: MAX_ITEMS, depth: 2 }, 0);
        }
        fields.insert("code".into(), code);
    }
    cut
}

/// Largest log record written to stderr by the `tracing` subscriber, in bytes.
pub const MAX_LOG_RECORD_BYTES: usize = 8 * 1024;

/// A `tracing_subscriber` writer factory for stderr that cuts every record at
/// [`MAX_LOG_RECORD_BYTES`], whoever logged it (warden, rmcp, hyper): a log field quoting a
/// request can then never make one record larger than that. The fmt layer formats a record
/// completely and writes it through one writer, so the cap applies per record. A JSON record
/// (`json`) is held until it is complete, so that one over the cap is replaced by a valid JSON
/// line saying so (with its start), never written cut in the middle of a string.
#[derive(Clone, Copy, Default)]
pub struct CappedStderr {
    pub json: bool,
}

pub struct CappedWriter {
    left: usize,
    cut: bool,
    /// The JSON record so far (at most the cap), written whole when the record ends.
    held: Option<Vec<u8>>,
    inner: std::io::Stderr,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CappedStderr {
    type Writer = CappedWriter;
    fn make_writer(&'a self) -> CappedWriter {
        CappedWriter { left: MAX_LOG_RECORD_BYTES, cut: false, held: self.json.then(Vec::new), inner: std::io::stderr() }
    }
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left);
        if n > 0 {
            match &mut self.held {
                Some(held) => held.extend_from_slice(&buf[..n]),
                None => self.inner.write_all(&buf[..n])?,
            }
            self.left -= n;
        }
        if n < buf.len() {
            self.cut = true;
        }
        // The rest is dropped on purpose; report it as written so the formatter goes on.
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Drop for CappedWriter {
    fn drop(&mut self) {
        use std::io::Write;
        match (self.held.take(), self.cut) {
            (Some(held), false) => {
                let _ = self.inner.write_all(&held);
            }
            (Some(held), true) => {
                let _ = self.inner.write_all(cut_json_record(&held).as_bytes());
            }
            (None, true) => {
                let _ = self.inner.write_all("…[log record cut]\n".as_bytes());
            }
            (None, false) => {}
        }
    }
}

/// The line written in place of a JSON log record over [`MAX_LOG_RECORD_BYTES`]: valid JSON,
/// with the record's start as a string.
fn cut_json_record(held: &[u8]) -> String {
    let start = String::from_utf8_lossy(&held[..held.len().min(MAX_LOG_RECORD_BYTES / 2)]).into_owned();
    let line =
        json!({"level": "WARN", "fields": {"message": "log record cut", "limit_bytes": MAX_LOG_RECORD_BYTES, "record_start": start}});
    format!("{line}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_json_log_record_is_still_one_json_line() {
        let record = format!("{{\"fields\":{{\"message\":\"{}\"}}}}", "é".repeat(MAX_LOG_RECORD_BYTES));
        let line = cut_json_record(&record.as_bytes()[..MAX_LOG_RECORD_BYTES]);
        assert!(line.len() < MAX_LOG_RECORD_BYTES && line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["fields"]["message"], "log record cut");
        assert!(v["fields"]["record_start"].as_str().unwrap().starts_with("{\"fields\""));
    }

    #[test]
    fn strings_are_cut_at_a_character_boundary_with_a_marker() {
        assert_eq!(bound_str("short", 10), "short");
        let s = "é".repeat(600); // 1200 bytes
        let b = bound_str(&s, 1023);
        assert!(b.starts_with(&"é".repeat(511)) && b.ends_with("…[178 more bytes]"), "{b}");
    }

    #[test]
    fn events_are_bounded_however_large_their_values() {
        let mut m = Map::new();
        m.insert("kid".into(), json!("k".repeat(1 << 20)));
        m.insert("paths".into(), json!((0..10_000).map(|i| format!("dir/{i}/{}", "x".repeat(900))).collect::<Vec<_>>()));
        m.insert("deep".into(), (0..50).fold(json!(1), |acc, _| json!([acc])));
        m.insert("code".into(), json!("print(1)\n".repeat(1000)));
        assert!(bound_event(&mut m));
        let code = m.get("code").unwrap().as_str().unwrap().len();
        assert_eq!(code, 9000, "the exempt code field is kept whole");
        m.remove("code");
        let len = serde_json::to_vec(&m).unwrap().len();
        assert!(len <= MAX_LINE_BYTES, "{len}");
        assert!(m["kid"].as_str().unwrap().ends_with(&format!("…[{} more bytes]", (1 << 20) - MAX_STRING_BYTES)));
    }

    #[test]
    fn small_events_are_untouched() {
        let mut m = Map::new();
        m.insert("principal".into(), json!("alice"));
        m.insert("artifacts".into(), json!([{"path": "a.txt", "size": 3}]));
        let before = m.clone();
        assert!(!bound_event(&mut m));
        assert_eq!(m, before);
    }
}
