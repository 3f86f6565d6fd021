//! The compiled-module cache: precompiled native code keyed by (artifact sha256, Wasmtime
//! version, engine configuration).
//!
//! Entries are written to a temporary file, checked, then renamed into place, because the loaded
//! module maps the file and it must never change while loaded. Each entry has a sidecar recording
//! its own sha256, written by the process that compiled it: `install` re-hashes entries and
//! rebuilds any that fail, and `load` re-hashes the whole file through the descriptor it then maps,
//! so native code that was rewritten (even to the same size) is refused before it can run. A key
//! that does not match (another Wasmtime, other engine flags) simply misses, so a stale entry is
//! never loaded.
//!
//! Why a digest in the same 0700 directory is enough: the record can be trusted only as far as
//! nothing a guest controls can write the data directory, and that is enforced where mounts are
//! accepted ([`crate::home::OwnFiles`]: a mount that contains or lies inside the data directory is
//! refused). A per-install key kept elsewhere would add nothing against guests (they reach neither)
//! and nothing against a host process of the same user (it can read the key as well).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wasmtime::{Engine, Module};

use crate::engine::{engine_fingerprint, wasmtime_version};
use crate::home::Home;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{name} is not compiled for this engine (no cache entry {path:?}): run `warden runtimes install`")]
    Missing { name: String, path: PathBuf },
    #[error("cache entry {path:?} does not match its record ({why}): run `warden runtimes install` to rebuild it")]
    Corrupt { path: PathBuf, why: String },
    #[error("compiling {name}: {source}")]
    Compile { name: String, source: wasmtime::Error },
    #[error("loading compiled {path:?}: {source}")]
    Load { path: PathBuf, source: wasmtime::Error },
    #[error("cache I/O at {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What the sidecar file records about one compiled module.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryRecord {
    pub source_sha256: String,
    pub cwasm_sha256: String,
    pub cwasm_bytes: u64,
    pub wasmtime: String,
    pub engine: String,
}

/// State of one cache entry, for `runtimes list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    Ready { bytes: u64 },
    Missing,
    Corrupt(String),
}

#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: PathBuf,
    engine_key: String,
}

impl ModuleCache {
    pub fn new(home: &Home, engine: &Engine) -> Self {
        ModuleCache { dir: home.cache(), engine_key: engine_fingerprint(engine) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry path for a module named `name` whose source has digest `source_sha256`.
    pub fn entry_path(&self, name: &str, source_sha256: &str) -> PathBuf {
        let short = &source_sha256[..source_sha256.len().min(16)];
        self.dir.join(format!("{name}-{short}-wasmtime{}-{}.cwasm", wasmtime_version(), self.engine_key))
    }

    fn record_path(cwasm: &Path) -> PathBuf {
        cwasm.with_extension("json")
    }

    /// Checks an entry thoroughly (re-hashing the native code).
    pub fn verify(&self, name: &str, source_sha256: &str) -> EntryState {
        let path = self.entry_path(name, source_sha256);
        if !path.exists() {
            return EntryState::Missing;
        }
        match self.read_record(&path).and_then(|rec| {
            let (digest, bytes) = sha256_file(&path).map_err(|e| e.to_string())?;
            if rec.source_sha256 != source_sha256 {
                return Err("recorded for another source".into());
            }
            if digest != rec.cwasm_sha256 || bytes != rec.cwasm_bytes {
                return Err("native code does not match its recorded sha256".into());
            }
            Ok(bytes)
        }) {
            Ok(bytes) => EntryState::Ready { bytes },
            Err(why) => EntryState::Corrupt(why),
        }
    }

    fn read_record(&self, cwasm: &Path) -> Result<EntryRecord, String> {
        let text = fs::read_to_string(Self::record_path(cwasm)).map_err(|e| format!("no record: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("unreadable record: {e}"))
    }

    /// Compiles `wasm` unless a verified entry exists. Returns the entry path.
    pub fn ensure(&self, engine: &Engine, name: &str, wasm: &[u8], source_sha256: &str, force: bool) -> Result<PathBuf, CacheError> {
        let path = self.entry_path(name, source_sha256);
        if !force && matches!(self.verify(name, source_sha256), EntryState::Ready { .. }) {
            return Ok(path);
        }
        Home::private_dir(&self.dir).map_err(|source| CacheError::Io { path: self.dir.clone(), source })?;
        let code = engine.precompile_module(wasm).map_err(|source| CacheError::Compile { name: name.to_string(), source })?;
        let io_err = |source| CacheError::Io { path: path.clone(), source };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, &code).map_err(io_err)?;
        let record = EntryRecord {
            source_sha256: source_sha256.to_string(),
            cwasm_sha256: crate::digest::sha256_hex(&code),
            cwasm_bytes: code.len() as u64,
            wasmtime: wasmtime_version().to_string(),
            engine: self.engine_key.clone(),
        };
        drop(code);
        let record_json = serde_json::to_vec_pretty(&record).expect("record serializes");
        fs::write(Self::record_path(&path), record_json).map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)?;
        Ok(path)
    }

    /// Loads a compiled module. Never compiles: a missing entry is an error that says to run
    /// `warden runtimes install`.
    ///
    /// The whole file is hashed (about a second for the Python module, once per process start)
    /// and compared with its record before anything is mapped as code; the descriptor that was
    /// hashed is the one mapped, so a rename in between cannot swap the file.
    pub fn load(&self, engine: &Engine, name: &str, source_sha256: &str) -> Result<Module, CacheError> {
        let path = self.entry_path(name, source_sha256);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::Missing { name: name.to_string(), path });
            }
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let record = self.read_record(&path).map_err(|why| CacheError::Corrupt { path: path.clone(), why })?;
        if record.source_sha256 != source_sha256 {
            return Err(CacheError::Corrupt { path, why: "recorded for another source".into() });
        }
        let (digest, bytes) = sha256_reader(&file).map_err(|source| CacheError::Io { path: path.clone(), source })?;
        if bytes != record.cwasm_bytes || digest != record.cwasm_sha256 {
            return Err(CacheError::Corrupt {
                path,
                why: format!(
                    "native code sha256 {digest} ({bytes} bytes) is not the {} ({} bytes) recorded when it was compiled; it was changed after compilation and is not loaded",
                    record.cwasm_sha256, record.cwasm_bytes
                ),
            });
        }
        // SAFETY: these exact bytes (hashed above through this descriptor) are what
        // `Engine::precompile_module` produced for an engine with the same fingerprint (it is in
        // the file name): the record was written with them into a 0700 directory that no guest
        // mount may reach.
        unsafe { Module::deserialize_open_file(engine, file) }.map_err(|source| CacheError::Load { path, source })
    }
}

/// Streams a file through sha256; returns (hex digest, length).
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    sha256_reader(fs::File::open(path)?)
}

/// Streams a reader through sha256; returns (hex digest, length).
fn sha256_reader(mut f: impl Read) -> io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), total))
}
