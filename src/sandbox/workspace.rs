//! The guest's writable filesystem: a private `/workspace` (its cwd) and `/tmp` per call or
//! session, input files written before a run (charged to the workspace quota's ledger, like the
//! guest's own writes), and artifact collection afterwards.
//!
//! All host-side access goes through `cap-std` handles rooted at the call directory, never
//! through ambient paths: a guest can plant symlinks such as `up -> ../../..`, and host code that
//! followed them would read or write outside the workspace. Artifacts are read without following
//! symlinks at all.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::quota::{BLOCK, Charged, Quota, Seen, charge_of};

/// Deepest directory nesting the host walks or creates.
const MAX_DEPTH: usize = 64;
/// Most path bytes accepted for an input file.
const MAX_PATH_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("file path {path:?} is not allowed: {why}. Use a relative path inside /workspace, like \"data/input.csv\"")]
    BadPath { path: String, why: &'static str },
    #[error("input files need {needed} {what}, but this call allows {limit}")]
    TooLarge { what: &'static str, needed: u64, limit: u64 },
    #[error("writing input file {path:?}: {source}")]
    Write { path: String, source: io::Error },
    #[error("creating the call directory: {0}")]
    Create(io::Error),
}

/// A file to place in `/workspace` before the run.
#[derive(Clone, Debug)]
pub struct InputFile {
    /// Relative to `/workspace` (a leading `/workspace/` is accepted and stripped).
    pub path: String,
    pub content: Vec<u8>,
}

/// A file [`Workspace::write_files`] writes: where, its name as the caller gave it, and whence.
struct NewFile<'a> {
    rel: PathBuf,
    name: String,
    content: Content<'a>,
}

enum Content<'a> {
    Bytes(&'a [u8]),
    /// `size` bytes of an open regular file of another workspace (a fork's files), with their
    /// digest when that workspace's record already holds it.
    Copy {
        from: std::fs::File,
        size: u64,
        sha256: Option<String>,
    },
}

impl Content<'_> {
    fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Copy { size, .. } => *size,
        }
    }
}

/// A file the guest created or changed under `/workspace`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(inline)]
pub struct Artifact {
    /// Relative to `/workspace`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub mime: String,
    /// Where the bytes can be read back with `resources/read`.
    pub uri: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ino: u64,
    sha256: String,
}

/// A call's (or session's) private directory: `<root>/workspace` and `<root>/tmp`.
pub struct Workspace {
    root: PathBuf,
    workspace: WsDir,
    /// What `/workspace` held after the last collection, to tell which files changed.
    known: Mutex<BTreeMap<String, Stamp>>,
    /// What `/workspace` and `/tmp` hold, charged against the quota (shared with the guests).
    quota: Arc<Mutex<Quota>>,
    /// Removes the directory this handle owns when dropped: its own, or, for a handle that
    /// took a call's place ([`Workspace::exchange_into`]), the directory it came from, which
    /// then holds the call's empty originals: removing that waits until the call is over.
    guard: DirGuard,
}

/// How a handle reaches `workspace/`.
enum WsDir {
    /// The directory itself, held open: it stays this handle's wherever it moves
    /// ([`Workspace::exchange_into`]), as it stays a guest's.
    Held(Dir),
    /// By name, beneath the call directory held open: the front's handle, since its executor
    /// may swap a prepared guest's workspace in for the one the front made. cap-std resolves
    /// the name beneath the call directory, so whatever an executor leaves under that name
    /// cannot lead the front outside it.
    Named(Dir),
}

/// `workspace/` as [`Workspace::dir`] opened it.
enum Opened<'a> {
    Held(&'a Dir),
    Fresh(Dir),
}

impl std::ops::Deref for Opened<'_> {
    type Target = Dir;
    fn deref(&self) -> &Dir {
        match self {
            Opened::Held(d) => d,
            Opened::Fresh(d) => d,
        }
    }
}

/// Removes a workspace directory on drop when `remove` is set: the handle that created it (or
/// adopted it on the front's side) owns it, while an executor's handle on a directory the front
/// made does not.
struct DirGuard {
    path: PathBuf,
    remove: bool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("root", &self.root).finish()
    }
}

impl Workspace {
    /// Creates a fresh private directory under `parent` (which must exist and be private).
    pub fn create(parent: &Path, prefix: &str) -> Result<Workspace, WorkspaceError> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent).map_err(WorkspaceError::Create)?;
        let guard = DirGuard { path: dir.keep(), remove: true };
        Self::make_in(guard)
    }

    /// Creates the directory `parent/name`, which must not exist yet (the front, making a call's
    /// directory for an executor). Removed when the handle is dropped.
    pub fn create_named(parent: &Path, name: &str) -> Result<Workspace, WorkspaceError> {
        let path = parent.join(name);
        std::fs::create_dir(&path).map_err(WorkspaceError::Create)?;
        let mut ws = Self::make_in(DirGuard { path, remove: true })?;
        let call_dir = Dir::open_ambient_dir(&ws.root, ambient_authority()).map_err(WorkspaceError::Create)?;
        ws.workspace = WsDir::Named(call_dir);
        Ok(ws)
    }

    /// Opens a directory made by [`Workspace::create_named`] whose `workspace/` and `tmp/` are
    /// still empty (an executor, given a call's directory by the front). Not removed on drop: the
    /// front owns it.
    pub fn adopt_empty(path: &Path) -> Result<Workspace, WorkspaceError> {
        both_empty(path).map_err(WorkspaceError::Create)?;
        Self::open(DirGuard { path: path.to_path_buf(), remove: false })
    }

    fn make_in(guard: DirGuard) -> Result<Workspace, WorkspaceError> {
        std::fs::create_dir(guard.path.join("workspace")).map_err(WorkspaceError::Create)?;
        std::fs::create_dir(guard.path.join("tmp")).map_err(WorkspaceError::Create)?;
        Self::open(guard)
    }

    fn open(guard: DirGuard) -> Result<Workspace, WorkspaceError> {
        let root = guard.path.clone();
        let open = |p: &Path| Dir::open_ambient_dir(p, ambient_authority()).map_err(WorkspaceError::Create);
        let roots = [root.join("workspace"), root.join("tmp")]
            .iter()
            .map(|p| std::fs::symlink_metadata(p).map(|m| Seen::of_host(&m)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(WorkspaceError::Create)?;
        Ok(Workspace {
            workspace: WsDir::Held(open(&root.join("workspace"))?),
            root,
            known: Mutex::new(BTreeMap::new()),
            quota: Arc::new(Mutex::new(Quota::new(&roots))),
            guard,
        })
    }

    /// Puts this workspace (one this process made, still empty) where `call_dir` is: a call's
    /// directory the front made, whose `workspace/` and `tmp/` are empty too. Each pair is swapped
    /// in one step (`renameat2` with `RENAME_EXCHANGE`), so the directories a guest prepared in
    /// this workspace holds open become the call's, with the quota ledger they are charged to;
    /// the front's empty pair ends up here and is removed with this handle's old directory. The
    /// handle returned does not remove `call_dir`: the front owns it.
    ///
    /// On failure nothing has moved and this handle comes back with the error.
    pub fn exchange_into(self, call_dir: &Path) -> Result<Workspace, (Workspace, io::Error)> {
        if let Err(e) = both_empty(&self.root).and_then(|()| both_empty(call_dir)) {
            return Err((self, e));
        }
        if let Err(e) = exchange(&self.root.join("workspace"), &call_dir.join("workspace")) {
            return Err((self, e));
        }
        if let Err(e) = exchange(&self.root.join("tmp"), &call_dir.join("tmp")) {
            // Put the first pair back; if even that fails, neither side may be used.
            return match exchange(&self.root.join("workspace"), &call_dir.join("workspace")) {
                Ok(()) => Err((self, e)),
                Err(back) => Err((self, io::Error::other(format!("{e}; and swapping back: {back}")))),
            };
        }
        let Workspace { root: _, workspace, known, quota, guard } = self;
        Ok(Workspace { root: call_dir.to_path_buf(), workspace, known, quota, guard })
    }

    /// Removes now, rather than when this handle drops, the directory a handle that took a
    /// call's place came from: for a handle that lives on, as a session's does.
    pub fn release_origin(&mut self) {
        if self.guard.path != self.root {
            self.guard = DirGuard { path: self.root.clone(), remove: false };
        }
    }

    /// `workspace/`: the one held open, or the one now under that name.
    fn dir(&self) -> io::Result<Opened<'_>> {
        match &self.workspace {
            WsDir::Held(d) => Ok(Opened::Held(d)),
            WsDir::Named(call_dir) => {
                let mut opts = OpenOptions::new();
                opts.read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW);
                let file = call_dir.open_with("workspace", &opts)?;
                Ok(Opened::Fresh(Dir::from_std_file(file.into_std())))
            }
        }
    }

    /// Host directory preopened at `/workspace`.
    pub fn workspace_path(&self) -> PathBuf {
        self.root.join("workspace")
    }

    /// Host directory preopened at `/tmp`.
    pub fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes input files, refusing paths that leave `/workspace` and anything that would take
    /// the workspace past its quota: what the files cost, plus the directories they need, on top
    /// of what the workspace already holds (a session's earlier inputs and the guest's own files).
    /// Nothing is written unless all of it fits. Input files are not reported as artifacts unless
    /// the guest changes them.
    pub fn write_inputs(&self, files: &[InputFile], max_bytes: u64, max_files: u64) -> Result<(), WorkspaceError> {
        let files = files
            .iter()
            .map(|f| Ok(NewFile { rel: validate_rel_path(&f.path)?, name: f.path.clone(), content: Content::Bytes(&f.content) }))
            .collect::<Result<Vec<_>, WorkspaceError>>()?;
        self.write_files(files, max_bytes, max_files)
    }

    /// Writes `files` as [`Workspace::write_inputs`] describes.
    fn write_files(&self, files: Vec<NewFile<'_>>, max_bytes: u64, max_files: u64) -> Result<(), WorkspaceError> {
        let ws = self.dir().map_err(|source| WorkspaceError::Write { path: "/workspace".into(), source })?;
        let (bytes, inodes) = self.input_cost(&ws, &files);
        {
            let mut q = self.ledger();
            q.set_limits(max_bytes, max_files);
            if q.admit(bytes, inodes).is_err() {
                let have = q.charged();
                let (what, needed, limit) = if have.files.saturating_add(inodes) > max_files {
                    ("files and directories", have.files.saturating_add(inodes), max_files)
                } else {
                    (
                        "bytes of workspace (4 KiB per file and directory, plus contents in 4 KiB blocks)",
                        have.bytes.saturating_add(bytes),
                        max_bytes,
                    )
                };
                return Err(WorkspaceError::TooLarge { what, needed, limit });
            }
        }
        for NewFile { rel, name, content } in files {
            let write_err = |source| WorkspaceError::Write { path: name.clone(), source };
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                ws.create_dir_all(parent).map_err(write_err)?;
            }
            // cap-std resolves beneath the workspace, so a symlink a guest left in a session
            // workspace cannot redirect this write outside it; O_NOFOLLOW refuses a final symlink.
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true).custom_flags(libc::O_NOFOLLOW);
            let mut file = ws.open_with(&rel, &opts).map_err(write_err)?.into_std();
            let sha256 = match content {
                Content::Bytes(bytes) => {
                    io::Write::write_all(&mut file, bytes).map_err(write_err)?;
                    hex::encode(Sha256::digest(bytes))
                }
                Content::Copy { from, size, sha256 } => {
                    // File to file, std copies in the kernel (copy_file_range): no pass through
                    // this process's memory.
                    let copied = io::copy(&mut (&from).take(size), &mut file).map_err(write_err)?;
                    if copied != size {
                        return Err(write_err(io::Error::other("the file shrank while it was copied")));
                    }
                    match sha256 {
                        Some(sha256) => sha256,
                        None => {
                            hash_beneath(&ws, &rel, size).ok_or_else(|| write_err(io::Error::other("the copy could not be read back")))?.0
                        }
                    }
                }
            };
            let key = rel.to_string_lossy().into_owned();
            let meta = cap_std::fs::File::from_std(file).metadata().map_err(write_err)?;
            self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(key, stamp_of(&meta, sha256));
            // Charge what the kernel now says: the file, and every directory down to it.
            let mut q = self.ledger();
            q.observe(seen_of(&meta));
            for dir in std::iter::once(Path::new("")).chain(rel.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty())) {
                let meta = if dir.as_os_str().is_empty() { ws.dir_metadata() } else { ws.symlink_metadata(dir) };
                if let Ok(meta) = meta {
                    q.observe(seen_of(&meta));
                }
            }
        }
        Ok(())
    }

    /// What writing `files` would add to the ledger, at most: `(bytes, inodes)`.
    fn input_cost(&self, ws: &Dir, files: &[NewFile<'_>]) -> (u64, u64) {
        let q = self.ledger();
        let mut new_dirs = std::collections::BTreeSet::new();
        let (mut bytes, mut inodes) = (0u64, 0u64);
        for NewFile { rel, content, .. } in files {
            let size = content.len();
            match ws.symlink_metadata(rel) {
                Ok(meta) => bytes = bytes.saturating_add(charge_of(size).saturating_sub(q.charge_for(seen_of(&meta).key))),
                // A new name: its inode, and perhaps one more block of names in its directory.
                Err(_) => {
                    bytes = bytes.saturating_add(charge_of(size) + BLOCK);
                    inodes += 1;
                }
            }
            for dir in rel.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()) {
                if ws.symlink_metadata(dir).is_err() && new_dirs.insert(dir.to_path_buf()) {
                    bytes = bytes.saturating_add(charge_of(BLOCK) + BLOCK);
                    inodes += 1;
                }
            }
        }
        (bytes, inodes)
    }

    /// The workspace quota's ledger, shared with every guest that runs in this workspace.
    pub fn quota(&self) -> Arc<Mutex<Quota>> {
        self.quota.clone()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Quota> {
        self.quota.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes and inodes `/workspace` and `/tmp` are charged for now.
    pub fn usage(&self) -> Charged {
        self.ledger().charged()
    }

    /// Lists regular files under `/workspace` that are new or changed since the last call (or
    /// since the inputs were written). Updates the record so the next call reports only its own
    /// changes.
    ///
    /// At most `max_bytes` are read in all: a guest stopped for exceeding its quota may leave a
    /// file far larger than the quota (a sparse file of a terabyte costs it one write), and
    /// hashing that would tie up the host. Files past the budget are not reported.
    pub fn collect_changes(&self, max_files: usize, max_bytes: u64) -> Vec<Artifact> {
        let mut budget = max_bytes;
        let Ok(ws) = self.dir() else { return Vec::new() };
        let mut known_map = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = Vec::new();
        walk_files(&ws, PathBuf::new(), 0, &mut found, max_files.saturating_mul(4).max(64));
        let mut artifacts = Vec::new();
        let mut next = BTreeMap::new();
        for (rel, meta) in found {
            let key = rel.to_string_lossy().into_owned();
            let known = known_map.get(&key);
            let unchanged_stamp = known.is_some_and(|k| k.size == meta.len() && k.mtime_ns == mtime_ns(&meta) && k.ino == ino(&meta));
            if unchanged_stamp {
                next.insert(key.clone(), known.cloned().expect("checked above"));
                continue;
            }
            if meta.len() > budget {
                continue;
            }
            let Some((sha256, size)) = hash_beneath(&ws, &rel, budget) else { continue };
            budget -= size;
            let stamp = Stamp { size, mtime_ns: mtime_ns(&meta), ino: ino(&meta), sha256: sha256.clone() };
            let same_content = known.is_some_and(|k| k.sha256 == sha256 && k.size == size);
            next.insert(key.clone(), stamp);
            if !same_content && artifacts.len() < max_files {
                artifacts.push(Artifact { mime: mime_for(&key), path: key, size, sha256, uri: String::new() });
            }
        }
        *known_map = next;
        artifacts
    }

    /// Copies the regular files of `src`'s `/workspace` into this one (a forked session's files),
    /// charged and bounded like inputs ([`Workspace::write_inputs`]): nothing is written unless
    /// all of it fits in `max_bytes` and `max_files`. The walk stays beneath `src` and never
    /// follows a link; links, special files and empty directories are not copied, nor `/tmp`.
    /// Returns how many files were copied.
    pub fn copy_files_from(&self, src: &Workspace, max_bytes: u64, max_files: u64) -> Result<usize, WorkspaceError> {
        let too_large = |needed| WorkspaceError::TooLarge { what: "bytes of files to copy", needed, limit: max_bytes };
        let from = src.dir().map_err(|source| WorkspaceError::Write { path: "/workspace".into(), source })?;
        let mut found = Vec::new();
        walk_files(&from, PathBuf::new(), 0, &mut found, usize::try_from(max_files).unwrap_or(usize::MAX).saturating_add(1));
        if found.len() as u64 > max_files {
            return Err(WorkspaceError::TooLarge { what: "files", needed: found.len() as u64, limit: max_files });
        }
        let mut files = Vec::with_capacity(found.len());
        let mut total = 0u64;
        {
            let known = src.known.lock().unwrap_or_else(|e| e.into_inner());
            for (rel, _) in found {
                let name = rel.to_string_lossy().into_owned();
                let read_err = |source| WorkspaceError::Write { path: name.clone(), source };
                let mut opts = OpenOptions::new();
                opts.read(true).custom_flags(libc::O_NOFOLLOW);
                let file = from.open_with(&rel, &opts).map_err(read_err)?;
                let meta = file.metadata().map_err(read_err)?;
                if !meta.is_file() {
                    continue;
                }
                total = total.saturating_add(meta.len());
                if total > max_bytes {
                    return Err(too_large(total));
                }
                // The source's record vouches for a file's digest while the file is as recorded
                // (a session's files change only while its guest runs, and it is not running).
                let sha256 = known
                    .get(&name)
                    .filter(|k| k.size == meta.len() && k.mtime_ns == mtime_ns(&meta) && k.ino == ino(&meta))
                    .map(|k| k.sha256.clone());
                files.push(NewFile { rel, name, content: Content::Copy { from: file.into_std(), size: meta.len(), sha256 } });
            }
        }
        let copied = files.len();
        self.write_files(files, max_bytes, max_files)?;
        Ok(copied)
    }

    /// Every regular file under `/workspace` with its contents (what a fork copies and a
    /// snapshot keeps), never following a link, refused beyond `max_bytes` in all or
    /// `max_files` files.
    pub fn read_files(&self, max_bytes: u64, max_files: u64) -> Result<Vec<InputFile>, WorkspaceError> {
        let too_large = |needed| WorkspaceError::TooLarge { what: "bytes of files to copy", needed, limit: max_bytes };
        let mut found = Vec::new();
        let cap = usize::try_from(max_files).unwrap_or(usize::MAX).saturating_add(1);
        let ws = self.dir().map_err(|source| WorkspaceError::Write { path: "/workspace".into(), source })?;
        walk_files(&ws, PathBuf::new(), 0, &mut found, cap);
        if found.len() as u64 > max_files {
            return Err(WorkspaceError::TooLarge { what: "files", needed: found.len() as u64, limit: max_files });
        }
        let mut files = Vec::with_capacity(found.len());
        let mut total = 0u64;
        for (rel, meta) in found {
            total = total.saturating_add(meta.len());
            if total > max_bytes {
                return Err(too_large(total));
            }
            let path = rel.to_string_lossy().into_owned();
            let content = self.read_file(&path, max_bytes - (total - meta.len())).map_err(|e| match e.kind() {
                io::ErrorKind::FileTooLarge => too_large(total),
                _ => WorkspaceError::Write { path: path.clone(), source: e },
            })?;
            files.push(InputFile { path, content });
        }
        Ok(files)
    }

    /// Reads one file under `/workspace` without following symlinks. A file holding more than
    /// `max_bytes` is refused with [`io::ErrorKind::FileTooLarge`], never read in part.
    pub fn read_file(&self, rel: &str, max_bytes: u64) -> io::Result<Vec<u8>> {
        let rel = validate_rel_path(rel).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut opts = OpenOptions::new();
        opts.read(true).custom_flags(libc::O_NOFOLLOW);
        let file = self.dir()?.open_with(&rel, &opts)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        if meta.len() > max_bytes {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("{} bytes", meta.len())));
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        // The file may grow after the check (a session's guest is not running now, but be sure).
        file.take(max_bytes.saturating_add(1)).read_to_end(&mut buf)?;
        if buf.len() as u64 > max_bytes {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "grew while read"));
        }
        Ok(buf)
    }
}

/// Checks an input path: relative, inside `/workspace`, no `..`, no empty or odd components.
pub fn validate_rel_path(raw: &str) -> Result<PathBuf, WorkspaceError> {
    let bad = |why| WorkspaceError::BadPath { path: raw.chars().take(200).collect(), why };
    let s = raw.strip_prefix("/workspace/").unwrap_or(raw);
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if s.len() > MAX_PATH_BYTES {
        return Err(bad("it is too long"));
    }
    if s.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    if s.starts_with('/') {
        return Err(bad("absolute paths outside /workspace are not writable"));
    }
    if s.ends_with('/') {
        return Err(bad("it names a directory, not a file"));
    }
    let mut out = PathBuf::new();
    let mut depth = 0;
    for c in Path::new(s).components() {
        match c {
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            Component::ParentDir => return Err(bad("it contains \"..\"")),
            Component::CurDir => return Err(bad("it contains \".\"")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("absolute paths outside /workspace are not writable")),
        }
    }
    if s.split('/').any(str::is_empty) {
        return Err(bad("it contains an empty component (\"//\")"));
    }
    if depth > MAX_DEPTH / 2 {
        return Err(bad("it is nested too deeply"));
    }
    Ok(out)
}

/// Checks that `path` is a call directory whose `workspace/` and `tmp/` are empty directories.
fn both_empty(path: &Path) -> io::Result<()> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {why}", path.display()));
    for sub in ["workspace", "tmp"] {
        if !std::fs::symlink_metadata(path.join(sub))?.is_dir() {
            return Err(bad("not a call directory"));
        }
        if std::fs::read_dir(path.join(sub))?.next().is_some() {
            return Err(bad("not empty"));
        }
    }
    Ok(())
}

/// Swaps the directories at `a` and `b` in one step (both must exist).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn walk_files(dir: &Dir, prefix: PathBuf, depth: usize, out: &mut Vec<(PathBuf, cap_std::fs::Metadata)>, max: usize) {
    let Ok(entries) = dir.entries() else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if out.len() >= max {
            return;
        }
        let Ok(ft) = entry.file_type() else { continue };
        let name = entry.file_name();
        if ft.is_dir() && depth < MAX_DEPTH {
            if let Ok(sub) = dir.open_dir(&name) {
                walk_files(&sub, prefix.join(&name), depth + 1, out, max);
            }
        } else if ft.is_file() {
            if let Ok(meta) = entry.metadata() {
                out.push((prefix.join(&name), meta));
            }
        }
    }
}

/// Hashes a regular file without following symlinks; None if it is not one or holds more than
/// `max_bytes`.
fn hash_beneath(root: &Dir, rel: &Path, max_bytes: u64) -> Option<(String, u64)> {
    let mut opts = OpenOptions::new();
    opts.read(true).custom_flags(libc::O_NOFOLLOW);
    let file = root.open_with(rel, &opts).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut file = file.take(max_bytes.saturating_add(1));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max_bytes {
            return None;
        }
        h.update(&buf[..n]);
    }
    Some((hex::encode(h.finalize()), total))
}

/// The ledger's view of a host-side file (see [`Seen::of_host`]).
fn seen_of(meta: &cap_std::fs::Metadata) -> Seen {
    use cap_std::fs::MetadataExt;
    Seen::host(meta.dev(), meta.ino(), meta.len(), meta.nlink(), meta.is_dir())
}

fn stamp_of(meta: &cap_std::fs::Metadata, sha256: String) -> Stamp {
    Stamp { size: meta.len(), mtime_ns: mtime_ns(meta), ino: ino(meta), sha256 }
}

fn mtime_ns(meta: &cap_std::fs::Metadata) -> i128 {
    use cap_std::fs::MetadataExt;
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn ino(meta: &cap_std::fs::Metadata) -> u64 {
    use cap_std::fs::MetadataExt;
    meta.ino()
}

/// MIME type from the file name; unknown types are `application/octet-stream`.
pub fn mime_for(path: &str) -> String {
    mime_guess::from_path(path).first_raw().unwrap_or("application/octet-stream").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_paths_stay_inside_the_workspace() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/", "x\0y", "/workspace/../etc"] {
            assert!(validate_rel_path(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(validate_rel_path("a/b.csv").unwrap(), PathBuf::from("a/b.csv"));
        assert_eq!(validate_rel_path("/workspace/data.csv").unwrap(), PathBuf::from("data.csv"));
    }

    #[test]
    fn changes_are_reported_once_and_symlinks_never() {
        let parent = tempfile::tempdir().unwrap();
        let ws = Workspace::create(parent.path(), "t-").unwrap();
        ws.write_inputs(&[InputFile { path: "in.txt".into(), content: b"x".to_vec() }], 1 << 20, 10).unwrap();
        assert!(ws.collect_changes(10, 1 << 20).is_empty(), "inputs are not artifacts");
        std::fs::write(ws.workspace_path().join("out.png"), b"png").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ws.workspace_path().join("leak")).unwrap();
        let arts = ws.collect_changes(10, 1 << 20);
        assert_eq!(arts.len(), 1);
        assert_eq!(arts[0].path, "out.png");
        assert_eq!(arts[0].mime, "image/png");
        assert_eq!(arts[0].size, 3);
        assert!(ws.collect_changes(10, 1 << 20).is_empty(), "unchanged files are not reported again");
        assert!(ws.read_file("leak", 100).is_err(), "symlinks are not followed");
    }

    #[test]
    fn a_copy_holds_the_same_files_reported_only_once_changed_and_refused_past_the_quota() {
        let parent = tempfile::tempdir().unwrap();
        let src = Workspace::create(parent.path(), "s-").unwrap();
        src.write_inputs(&[InputFile { path: "in/a.txt".into(), content: b"alpha".to_vec() }], 1 << 20, 10).unwrap();
        // One file the source's record knows (an input), one it does not (the guest's, not yet
        // collected): both must arrive, and neither counts as the copy's own artifact.
        std::fs::write(src.workspace_path().join("b.bin"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.workspace_path().join("leak")).unwrap();
        let dst = Workspace::create(parent.path(), "d-").unwrap();
        assert_eq!(dst.copy_files_from(&src, 1 << 20, 10).unwrap(), 2);
        assert_eq!(dst.read_file("in/a.txt", 100).unwrap(), b"alpha");
        assert_eq!(dst.read_file("b.bin", 1 << 20).unwrap(), vec![7u8; 300_000]);
        assert!(!dst.workspace_path().join("leak").exists(), "links are not copied");
        assert!(dst.usage().bytes >= 300_000, "the copy is charged: {:?}", dst.usage());
        assert!(dst.collect_changes(10, 1 << 20).is_empty(), "copied files are not artifacts");
        std::fs::write(dst.workspace_path().join("b.bin"), b"changed").unwrap();
        std::fs::write(src.workspace_path().join("in/a.txt"), b"source changed").unwrap();
        let arts = dst.collect_changes(10, 1 << 20);
        assert_eq!(arts.iter().map(|a| a.path.as_str()).collect::<Vec<_>>(), ["b.bin"], "the copy is its own");
        let small = Workspace::create(parent.path(), "q-").unwrap();
        assert!(matches!(small.copy_files_from(&src, 100_000, 10), Err(WorkspaceError::TooLarge { .. })));
        assert!(small.read_file("b.bin", 1 << 20).is_err(), "nothing is written unless all of it fits");
    }

    #[test]
    fn collecting_reads_no_more_than_the_byte_budget() {
        let parent = tempfile::tempdir().unwrap();
        let ws = Workspace::create(parent.path(), "t-").unwrap();
        // A terabyte-long sparse file costs the guest one write; hashing it would take hours.
        let sparse = std::fs::File::create(ws.workspace_path().join("sparse")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        std::fs::write(ws.workspace_path().join("small.txt"), b"ok").unwrap();
        let t = std::time::Instant::now();
        let arts = ws.collect_changes(10, 1 << 20);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(arts.iter().map(|a| a.path.as_str()).collect::<Vec<_>>(), ["small.txt"]);
    }

    #[test]
    fn input_writes_do_not_follow_planted_symlinks() {
        let parent = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ws = Workspace::create(parent.path(), "t-").unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.workspace_path().join("d")).unwrap();
        let r = ws.write_inputs(&[InputFile { path: "d/x".into(), content: b"x".to_vec() }], 1 << 20, 10);
        assert!(r.is_err());
        assert!(!outside.path().join("x").exists());
    }

    #[test]
    fn inputs_are_charged_with_their_directories_and_refused_past_the_quota() {
        let parent = tempfile::tempdir().unwrap();
        let ws = Workspace::create(parent.path(), "t-").unwrap();
        let file = |path: &str, n: usize| InputFile { path: path.into(), content: vec![b'x'; n] };
        ws.write_inputs(&[file("a/b/c.txt", 100)], 1 << 20, 10).unwrap();
        let u = ws.usage();
        assert_eq!(u.files, 3, "two directories and a file");
        assert!(u.bytes >= charge_of(100) + 2 * charge_of(4096), "{u:?}");
        // Rewriting the same file costs only the difference.
        ws.write_inputs(&[file("a/b/c.txt", 10)], 1 << 20, 10).unwrap();
        assert_eq!(ws.usage().files, 3);
        // Turn after turn, inputs pile up against one quota, and nothing is written on refusal.
        let before = ws.usage();
        let r = ws.write_inputs(&[file("d1", 300_000), file("d2", 300_000), file("d3", 600_000)], 1 << 20, 10);
        assert!(matches!(r, Err(WorkspaceError::TooLarge { .. })), "{r:?}");
        assert_eq!(ws.usage(), before);
        assert!(!ws.workspace_path().join("d1").exists());
        let r = ws.write_inputs(&(0..8).map(|i| file(&format!("n{i}"), 1)).collect::<Vec<_>>(), 1 << 20, 10);
        assert!(matches!(r, Err(WorkspaceError::TooLarge { what: "files and directories", .. })), "{r:?}");
    }
}
