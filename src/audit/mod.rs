//! The audit trail: one JSON line per security-relevant event, each carrying the hash of the line
//! before it, so an edit, deletion, reordering or torn write anywhere is detectable
//! (`warden audit verify`).
//!
//! A line is written (and reaches the kernel) before the result it describes is returned. If the
//! log cannot be written, the call fails closed: nothing runs unaudited.

pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Hash the first line of a log chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("opening the audit log {path:?}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("the audit log {path:?} does not verify ({why}); refusing to append to it. Run `warden audit verify` and move the damaged log aside")]
    Damaged { path: PathBuf, why: String },
    #[error("writing the audit log {path:?}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// One recorded event as returned to callers: the event fields plus `id`, `time`, `prev` and
/// `hash`.
pub type Recorded = Map<String, Value>;

pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<Inner>,
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
        let open_err = |source| AuditError::Open { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        let file = OpenOptions::new().create(true).append(true).read(true).open(path).map_err(open_err)?;
        let report = verify::verify_reader(BufReader::new(File::open(path).map_err(open_err)?));
        if let Some(problem) = report.problem {
            return Err(AuditError::Damaged { path: path.to_path_buf(), why: problem });
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner { file, last_hash: report.last_hash, poisoned: false }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` (a JSON object without `id`, `time`, `prev`, `hash`), returning the
    /// recorded line. The event is also emitted as a `tracing` event.
    pub fn record(&self, kind: &str, event: impl Serialize) -> Result<Recorded, AuditError> {
        let mut fields = match serde_json::to_value(event) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.poisoned {
            return Err(AuditError::Write {
                path: self.path.clone(),
                source: io::Error::other("an earlier write failed; the log needs repair"),
            });
        }
        let mut line = Map::new();
        line.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
        line.insert("time".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into());
        line.insert("kind".into(), kind.into());
        line.append(&mut fields);
        line.insert("prev".into(), inner.last_hash.clone().into());
        let hash = line_hash(&line);
        line.insert("hash".into(), hash.clone().into());
        let mut bytes = serde_json::to_vec(&line).expect("a JSON map serializes");
        bytes.push(b'\n');
        if let Err(source) = inner.file.write_all(&bytes) {
            inner.poisoned = true;
            return Err(AuditError::Write { path: self.path.clone(), source });
        }
        inner.last_hash = hash;
        drop(inner);
        tracing::info!(target: "warden::audit", kind, event = %serde_json::Value::Object(line.clone()), "audit");
        Ok(line)
    }
}

/// The chain hash of a line: sha256 over its canonical JSON without the `hash` field. serde_json
/// maps are sorted by key, so the encoding is canonical.
pub fn line_hash(line: &Map<String, Value>) -> String {
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
