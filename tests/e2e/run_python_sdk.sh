#!/usr/bin/env bash
# End-to-end check of `warden serve` with the official MCP Python SDK, an independent client.
#
#   tests/e2e/run_python_sdk.sh [WARDEN_BIN]
#
# Needs a built binary (default: ${CARGO_TARGET_DIR:-target}/release/warden, or $WARDEN_BIN) and
# its runtimes in $WARDEN_HOME (default: target/warden), as scripts/setup leaves them. Keeps the
# pinned SDK in a venv at ${CARGO_TARGET_DIR:-target}/e2e-venv, created on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."

MCP_VERSION=2.3.0

target="${CARGO_TARGET_DIR:-target}"
venv="$target/e2e-venv"
bin="${1:-${WARDEN_BIN:-$target/release/warden}}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
export WARDEN_HOME="${WARDEN_HOME:-$PWD/target/warden}"

if [[ ! -x "$bin" ]]; then
    echo "run_python_sdk: no warden binary at $bin; build it first (scripts/setup)" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" - "$MCP_VERSION" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(version("mcp") != sys.argv[1])
EOF
    echo "run_python_sdk: installing mcp==$MCP_VERSION into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "mcp==$MCP_VERSION"
fi

exec "$venv/bin/python" tests/e2e/python_sdk.py "$bin"
