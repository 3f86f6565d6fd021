# Sourced by the shell suites that drive a built `warden` (tests/e2e, tests/clients,
# tests/conformance), from the repository root: sets $target, $bin (the argument, else
# $WARDEN_BIN, else ${CARGO_TARGET_DIR:-target}/release/warden; made absolute) and exports
# WARDEN_HOME (default target/warden, where scripts/setup installs the runtimes). Exits, saying
# what to do, when there is no binary.
#
#   source tests/warden-bin.sh NAME [WARDEN_BIN]

target="${CARGO_TARGET_DIR:-target}"
bin="${2:-${WARDEN_BIN:-$target/release/warden}}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
export WARDEN_HOME="${WARDEN_HOME:-$PWD/target/warden}"

if [[ ! -x "$bin" ]]; then
    echo "$1: no warden binary at $bin; build it first (scripts/setup)" >&2
    exit 1
fi

# Sessions still open when a suite's server stops are suspended to the snapshot store and count
# against the next server's session slots until they expire: each suite keeps its own store.
if [[ -z "${WARDEN_SNAPSHOT_DIR:-}" ]]; then
    WARDEN_SNAPSHOT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/warden-snapshots.XXXXXX")"
    export WARDEN_SNAPSHOT_DIR
    trap 'rm -rf "$WARDEN_SNAPSHOT_DIR"' EXIT
fi
