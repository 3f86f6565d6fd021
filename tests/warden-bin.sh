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
