//! The data directory: where runtimes, the compiled-module cache, workspaces and the audit log
//! live.
//!
//! One directory per installation, chosen by `--home`, then `WARDEN_HOME`, then
//! `$XDG_DATA_HOME/warden` (or `~/.local/share/warden`). The cache and the workspace root are
//! kept mode 0700: the cache holds native code, and no guest mount may reach either.

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
                    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
                        io::Error::other("cannot find a data directory: set WARDEN_HOME or pass --home")
                    })?;
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
    pub fn private_dir(dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
    }
}
