//! The audit trail: one JSON line per security-relevant event, each carrying the hash of the line
//! before it, so an edit, deletion, reordering or torn write anywhere is detectable
//! (`warden audit verify`).
//!
//! A line is written (and reaches the kernel) before the result it describes is returned. If the
//! log cannot be written, the call fails closed: nothing runs unaudited.
//!
//! ## Line format (version 2)
//!
//! ```text
//! {"id":…,"kind":…,<event fields>,"prev":"<hex>","time":…,"v":2,"hash":"<64 hex>"}\n
//! ```
//!
//! The `hash` field is always last. With `body` the exact bytes of the line up to (not
//! including) `,"hash":"`, followed by `}` — that is, the line as it would be without its hash
//! field — the hash is `sha256(prev || body)`, where `prev` is the previous line's hash as 32
//! raw bytes (all zero for the first line). Verification splits the file's raw bytes and never
//! re-serializes, so any byte changed, added or removed breaks the line it is in.
//!
//! Lines without `"v"` are the old format (version 1), whose hash covered parsed and
//! re-serialized JSON; they still verify (and are reported as the old format) when they come
//! before every version-2 line, so a log written by an older warden keeps verifying and grows
//! in the new format.
//!
//! Every event is bounded in size ([`bound`]); refused HTTP traffic is sampled and counted rather
//! than logged line by line ([`refusals`]).

pub mod bound;
pub mod event;
pub mod refusals;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Hash the first line of a log chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("opening the audit log {path:?}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "the audit log {path:?} does not verify ({why}); refusing to append to it. Run `warden audit verify` and move the damaged log aside"
    )]
    Damaged { path: PathBuf, why: String },
    #[error("writing the audit log {path:?}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the audit log {path:?} is in use by another warden process (waited {waited_s} s); two writers would break its chain. Give each server, and `warden exec` beside a running server, its own --audit-log (or WARDEN_AUDIT_LOG)"
    )]
    InUse { path: PathBuf, waited_s: u64 },
}

/// How long opening the log waits for another process that holds it (a `warden exec` finishing
/// its one call) before giving up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One recorded event as returned to callers: the event fields plus `id`, `time`, `prev` and
/// `hash`.
pub type Recorded = Map<String, Value>;

pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Where refused writes are counted, once the server's metrics exist.
    failures: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

struct Inner {
    file: File,
    last_hash: String,
    /// Set after a failed write: the file may now end in a torn line, so no later line is
    /// appended until the operator repairs it.
    poisoned: bool,
}

impl AuditLog {
    /// Opens (creating if needed) an append-only log, after checking its existing chain.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        Self::open_waiting(path, LOCK_WAIT)
    }

    /// [`AuditLog::open`], waiting up to `wait` for another process's hold on the file.
    fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<AuditLog, AuditError> {
        let open_err = |source| AuditError::Open { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        let file = OpenOptions::new().create(true).append(true).read(true).open(path).map_err(open_err)?;
        // One writer at a time: each process keeps the chain's last hash in memory, so a second
        // writer's lines would break it. The lock lasts as long as this process keeps the file
        // open (it is close-on-exec, so executors and the spawner never hold it).
        let started = std::time::Instant::now();
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if started.elapsed() < wait => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(AuditError::InUse { path: path.to_path_buf(), waited_s: wait.as_secs() });
                }
                Err(e) => return Err(open_err(e.into())),
            }
        }
        let report = verify::verify_reader(BufReader::new(File::open(path).map_err(open_err)?));
        if let Some(problem) = report.problem {
            return Err(AuditError::Damaged { path: path.to_path_buf(), why: problem });
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner { file, last_hash: report.last_hash, poisoned: false }),
            failures: std::sync::OnceLock::new(),
        })
    }

    /// Counts every write this log refuses or fails in `counter` (the server's
    /// `warden_audit_write_failures_total`). Set once; later calls are ignored.
    pub fn count_failures_in(&self, counter: prometheus_client::metrics::counter::Counter) {
        let _ = self.failures.set(counter);
    }

    fn failed(&self) {
        if let Some(c) = self.failures.get() {
            c.inc();
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event`, returning the recorded line. The event is also emitted as a `tracing`
    /// event.
    pub fn record(&self, event: &event::Event) -> Result<Recorded, AuditError> {
        self.append(event.kind(), event)
    }

    /// Appends a line of `kind` with the fields of `event` (a JSON object; any `id`, `time`,
    /// `prev`, `v` or `hash` in it is dropped).
    fn append(&self, kind: &str, event: impl serde::Serialize) -> Result<Recorded, AuditError> {
        let mut fields = match serde_json::to_value(event) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        // The envelope's own keys always win over an event field of the same name.
        for k in RESERVED {
            fields.remove(*k);
        }
        bound::bound_event(&mut fields);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.poisoned {
            self.failed();
            return Err(AuditError::Write {
                path: self.path.clone(),
                source: io::Error::other("an earlier write failed; the log needs repair"),
            });
        }
        let mut line = fields;
        line.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
        line.insert("time".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into());
        line.insert("kind".into(), bound::bound_str(kind, 64).into_owned().into());
        line.insert("prev".into(), inner.last_hash.clone().into());
        line.insert("v".into(), FORMAT_VERSION.into());
        let body = serde_json::to_vec(&line).expect("a JSON map serializes");
        let hash = chain_hash(&inner.last_hash, &body);
        let bytes = with_hash(&body, &hash);
        line.insert("hash".into(), hash.clone().into());
        if let Err(source) = inner.file.write_all(&bytes) {
            inner.poisoned = true;
            self.failed();
            return Err(AuditError::Write { path: self.path.clone(), source });
        }
        inner.last_hash = hash;
        drop(inner);
        // The tracing copy is for operators' log pipelines; it is cut shorter than the line.
        let text = String::from_utf8_lossy(&bytes[..bytes.len() - 1]);
        tracing::info!(target: "warden::audit", kind = %bound::bound_str(kind, 64), event = %bound::bound_str(&text, 2048), "audit");
        Ok(line)
    }
}

/// The format version written now (see the module doc).
pub const FORMAT_VERSION: u64 = 2;

/// Keys the envelope sets; an event cannot supply them.
const RESERVED: &[&str] = &["id", "time", "kind", "prev", "v", "hash"];

/// The bytes between a version-2 line's body and its hash hex.
pub(crate) const HASH_PREFIX: &[u8] = b",\"hash\":\"";
/// Length of the trailer `,"hash":"<64 hex>"}` that ends every version-2 line.
pub(crate) const TRAILER_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// The version-2 chain hash: sha256 over the previous hash (32 raw bytes) and the exact body
/// bytes (the line without its hash field).
pub fn chain_hash(prev_hex: &str, body: &[u8]) -> String {
    let prev = hex::decode(prev_hex).ok().filter(|p| p.len() == 32).unwrap_or_else(|| vec![0; 32]);
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(body);
    hex::encode(h.finalize())
}

/// The line written for `body` (a serialized JSON object) and its hash, newline included.
fn with_hash(body: &[u8], hash: &str) -> Vec<u8> {
    debug_assert_eq!(body.last(), Some(&b'}'));
    let mut out = Vec::with_capacity(body.len() + TRAILER_LEN + 1);
    out.extend_from_slice(&body[..body.len() - 1]);
    out.extend_from_slice(HASH_PREFIX);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    out
}

/// The old (version 1) chain hash of a line: sha256 over its re-serialized JSON without the
/// `hash` field. Kept only to verify logs written before version 2; it does not cover the bytes
/// actually written (a duplicate key or other spacing would not change it).
pub fn legacy_line_hash(line: &Map<String, Value>) -> String {
    let mut m = line.clone();
    m.remove("hash");
    let bytes = serde_json::to_vec(&m).expect("a JSON map serializes");
    hex::encode(Sha256::digest(&bytes))
}

/// Reads every line of a log (for tests and tools).
pub fn read_lines(path: &Path) -> io::Result<Vec<Map<String, Value>>> {
    let f = File::open(path)?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        if let Ok(Value::Object(m)) = serde_json::from_str(&line?) {
            out.push(m);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_at_a_time_keeps_the_chain_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let first = AuditLog::open(&path).unwrap();
        first.append("test", serde_json::json!({"n": 1})).unwrap();
        let e = AuditLog::open_waiting(&path, std::time::Duration::from_millis(100)).err().expect("a second writer is refused");
        assert!(matches!(e, AuditError::InUse { .. }) && e.to_string().contains("--audit-log"), "{e}");
        // Once the first lets go, the next one opens (it waited) and continues the chain.
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(first);
        });
        let second = AuditLog::open(&path).unwrap();
        second.append("test", serde_json::json!({"n": 2})).unwrap();
        release.join().unwrap();
        assert_eq!(verify::verify_reader(BufReader::new(File::open(&path).unwrap())).problem, None);
    }

    #[test]
    fn refused_writes_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a.jsonl")).unwrap();
        let counter = prometheus_client::metrics::counter::Counter::default();
        log.count_failures_in(counter.clone());
        log.append("test", serde_json::json!({"i": 1})).unwrap();
        assert_eq!(counter.get(), 0);
        // As after a failed write: the file may end in a torn line, so nothing more is appended.
        log.inner.lock().unwrap().poisoned = true;
        assert!(log.append("test", serde_json::json!({"i": 2})).is_err());
        assert!(log.append("test", serde_json::json!({"i": 3})).is_err());
        assert_eq!(counter.get(), 2, "each refused write is counted");
    }
}
