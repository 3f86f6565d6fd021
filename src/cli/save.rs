//! `warden exec --artifacts-dir`: copying the files a guest produced onto the host.
//!
//! The names come from guest code and the target directory may hold anything (a checkout with
//! `.git/`, links planted by someone else), so every write goes through directory handles opened
//! one component at a time with `O_NOFOLLOW`, and every file is created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`:
//! - a symbolic link anywhere below the target directory (or the target directory itself) is never
//!   followed: the save is refused;
//! - an existing file is never replaced: the save is refused, naming it, before anything is written
//!   (and `O_EXCL` still holds if something appears in between);
//! - nothing is created outside the target directory: names are checked to be plain relative
//!   components, and each handle only opens names directly inside it;
//! - names with a component starting with '.' (`.git/config`, `.bashrc`) are skipped, with a
//!   warning, unless the operator passes `--artifacts-dotfiles`.
//!
//! It does not decide which files are artifacts (the workspace walk does) or read them (the
//! workspace does, bounded by the recorded size).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

use crate::sandbox::{Artifact, Workspace};

/// What happened to the artifacts.
#[derive(Debug, Default)]
pub struct Saved {
    /// Artifacts not saved because a component of their name starts with '.'.
    pub skipped_dotfiles: Vec<String>,
}

/// Saves `artifacts` from `ws` under `dir`, setting each saved one's `uri` to its `file://` path.
/// Refuses (before writing anything it can foresee) on links, existing files and bad names.
pub fn save(dir: &Path, artifacts: &mut [Artifact], ws: &Workspace, dotfiles: bool) -> Result<Saved, String> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating --artifacts-dir {}: {e}", dir.display()))?;
    }
    let root = open_root(dir)?;
    let abs_root = std::path::absolute(dir).map_err(|e| e.to_string())?;
    let mut saved = Saved::default();
    let mut planned = Vec::new();
    for (i, a) in artifacts.iter().enumerate() {
        let parts = components(&a.path).map_err(|why| format!("refusing to save artifact {:?}: {why}", a.path))?;
        if !dotfiles && parts.iter().any(|p| p.starts_with('.')) {
            saved.skipped_dotfiles.push(a.path.clone());
            continue;
        }
        planned.push((i, parts));
    }
    // Look first, so that a conflict leaves the directory as it was.
    let problems: Vec<String> =
        planned.iter().filter_map(|(i, parts)| check(&root, parts).err().map(|why| explain(dir, &artifacts[*i].path, why))).collect();
    if !problems.is_empty() {
        return Err(format!("nothing was saved to --artifacts-dir:\n  {}", problems.join("\n  ")));
    }
    for (i, parts) in planned {
        let a = &mut artifacts[i];
        let bytes = ws.read_file(&a.path, a.size).map_err(|e| format!("reading artifact {:?} from the workspace: {e}", a.path))?;
        write(&root, &parts, &bytes).map_err(|why| explain(dir, &a.path, why))?;
        a.uri = format!("file://{}", parts.iter().fold(abs_root.clone(), |p: PathBuf, c| p.join(c)).display());
    }
    Ok(saved)
}

fn explain(dir: &Path, name: &str, why: String) -> String {
    format!("artifact {name:?} (under {}): {why}", dir.display())
}

/// The target directory itself, refusing it if it is a symbolic link.
fn open_root(dir: &Path) -> Result<Dir, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC).open(dir).map_err(
            |e| {
                if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
                    format!("--artifacts-dir {} is a symbolic link; pass the directory it points to", dir.display())
                } else {
                    format!("opening --artifacts-dir {}: {e}", dir.display())
                }
            },
        )?;
    Ok(Dir::from_std_file(file))
}

/// The plain components of an artifact name; anything else is refused.
fn components(name: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = name.split('/').map(str::to_string).collect();
    for p in &parts {
        if p.is_empty() || p == "." || p == ".." || p.contains('\0') {
            return Err("its name is not a plain relative path".into());
        }
    }
    Ok(parts)
}

/// Opens the directory `name` directly inside `dir`, never through a symbolic link.
fn open_dir_nofollow(dir: &Dir, name: &str) -> io::Result<Dir> {
    let mut opts = OpenOptions::new();
    opts.read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW);
    Ok(Dir::from_std_file(dir.open_with(name, &opts)?.into_std()))
}

fn link_or_not_dir(e: &io::Error, what: &str) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            format!("{what} is a symbolic link or not a directory; warden never follows links in --artifacts-dir")
        }
        _ => format!("{what}: {e}"),
    }
}

/// Whether `parts` could be created below `root` without following a link or replacing a file.
fn check(root: &Dir, parts: &[String]) -> Result<(), String> {
    let (file, dirs) = parts.split_last().expect("at least one component");
    let mut cur = root.try_clone().map_err(|e| e.to_string())?;
    for (depth, d) in dirs.iter().enumerate() {
        match open_dir_nofollow(&cur, d) {
            Ok(next) => cur = next,
            // Missing: it and everything below will be created fresh.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(link_or_not_dir(&e, &parts[..=depth].join("/"))),
        }
    }
    match cur.symlink_metadata(file) {
        Ok(m) if m.file_type().is_symlink() => {
            Err(format!("{} is a symbolic link; warden never follows links in --artifacts-dir", parts.join("/")))
        }
        Ok(_) => Err(format!("{} already exists; warden never replaces files: use an empty or new --artifacts-dir", parts.join("/"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", parts.join("/"))),
    }
}

/// Creates `parts` below `root` (directories as needed) and writes `bytes` into a new file.
fn write(root: &Dir, parts: &[String], bytes: &[u8]) -> Result<(), String> {
    let (file, dirs) = parts.split_last().expect("at least one component");
    let mut cur = root.try_clone().map_err(|e| e.to_string())?;
    for (depth, d) in dirs.iter().enumerate() {
        let what = parts[..=depth].join("/");
        cur = match open_dir_nofollow(&cur, d) {
            Ok(next) => next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                cur.create_dir(d).map_err(|e| format!("creating {what}: {e}"))?;
                // Opened again without following: a link swapped in meanwhile is refused.
                open_dir_nofollow(&cur, d).map_err(|e| link_or_not_dir(&e, &what))?
            }
            Err(e) => return Err(link_or_not_dir(&e, &what)),
        };
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).mode(0o644);
    let mut f = cur.open_with(file, &opts).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => format!("{} already exists; warden never replaces files", parts.join("/")),
        _ => format!("creating {}: {e}", parts.join("/")),
    })?;
    f.write_all(bytes).map_err(|e| format!("writing {}: {e}", parts.join("/")))?;
    Ok(())
}
