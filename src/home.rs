//! The data directory: where runtimes, the compiled-module cache, workspaces and the audit log
//! live.
//!
//! One directory per installation, chosen by `--home`, then `WARDEN_HOME`, then
//! `$XDG_DATA_HOME/warden` (or `~/.local/share/warden`). The cache and the workspace root are
//! kept mode 0700: the cache holds native code, and no guest mount may reach either.
//!
//! [`OwnFiles`] lists the paths that are warden's own (this directory, the audit log, the auth and
//! JWKS files, profiles, tool packages) so that a mount reaching any of them is refused before a
//! guest can see it. It does not decide what is mounted; the policy module does.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Resolves the data directory without creating it.
    pub fn resolve(explicit: Option<PathBuf>) -> io::Result<Home> {
        let root = match explicit {
            Some(p) => p,
            None => match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
                Some(d) => PathBuf::from(d).join("warden"),
                None => {
                    let home = std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| io::Error::other("cannot find a data directory: set WARDEN_HOME or pass --home"))?;
                    PathBuf::from(home).join(".local/share/warden")
                }
            },
        };
        let root = if root.is_absolute() { root } else { std::env::current_dir()?.join(root) };
        Ok(Home { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Installed runtime files (read-only to guests where mounted).
    pub fn runtimes(&self) -> PathBuf {
        self.root.join("runtimes")
    }

    /// Downloaded wheels, kept so a reinstall does not hit the network.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// Compiled modules (native code).
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Per-call and per-session workspaces.
    pub fn workspaces(&self) -> PathBuf {
        self.root.join("workspaces")
    }

    /// Default location of the audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit").join("audit.jsonl")
    }

    /// Creates `dir` (and parents) and makes it private to this user.
    ///
    /// chmod only when the mode is wrong: an executor compiles tool modules into the cache while
    /// still under its spawner's seccomp filter, which has no chmod.
    pub fn private_dir(dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        if fs::metadata(dir)?.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
}

/// warden's own files and directories: a guest mount must neither contain nor lie inside any of
/// them (it would let guest code read the audit log or the auth file, or rewrite the native code
/// the next start maps).
#[derive(Clone, Debug, Default)]
pub struct OwnFiles {
    /// (what it is, canonical path).
    entries: Vec<(String, PathBuf)>,
}

impl OwnFiles {
    /// The data directory itself, and the parts of it that may be moved elsewhere by a symlink.
    pub fn of_home(home: &Home) -> OwnFiles {
        let mut own = OwnFiles::default();
        own.add("the data directory (WARDEN_HOME)", home.root());
        own.add("the compiled-module cache", &home.cache());
        own.add("the installed runtimes", &home.runtimes());
        own.add("the workspaces", &home.workspaces());
        own
    }

    /// Adds a path (a file or directory, existing or not): symlinks in the part that exists are
    /// resolved, so the comparison is between real locations.
    pub fn add(&mut self, what: &str, path: &Path) {
        let real = canonical_prefix(path);
        if !self.entries.iter().any(|(_, p)| *p == real) {
            self.entries.push((what.to_string(), real));
        }
    }

    /// The first own path that `dir` (canonical) contains or lies inside, as "what (path)", and
    /// whether `dir` contains it (rather than lying inside it).
    pub fn overlap(&self, dir: &Path) -> Option<(String, bool)> {
        self.entries
            .iter()
            .find(|(_, own)| own.starts_with(dir) || dir.starts_with(own))
            .map(|(what, own)| (format!("{what} at {}", own.display()), own.starts_with(dir)))
    }
}

/// `path` with its longest existing ancestor canonicalized and the rest appended unchanged.
fn canonical_prefix(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(real) = cur.canonicalize() {
            return rest.iter().rev().fold(real, |acc: PathBuf, c| acc.join(c));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Workspaces of this process live in their own directory, named after the process id and its
/// start time so a reused pid never matches. Directories of processes that no longer exist
/// (a crash, `kill -9`) are removed when the next process starts.
pub fn process_workspaces(home: &Home) -> io::Result<PathBuf> {
    let root = home.workspaces();
    Home::private_dir(&root)?;
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((pid, start)) = name.strip_prefix("pid-").and_then(|r| r.split_once('-')) else { continue };
            let alive = pid.parse::<u32>().ok().and_then(process_start_time).is_some_and(|s| s.to_string() == start);
            if !alive {
                tracing::info!(dir = %entry.path().display(), "removing workspaces left by a process that ended");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let own = root.join(format!("pid-{}-{}", std::process::id(), process_start_time(std::process::id()).unwrap_or(0)));
    Home::private_dir(&own)?;
    Ok(own)
}

/// A process's start time (clock ticks since boot, field 22 of /proc/PID/stat).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}
