#!/usr/bin/env bash
# End-to-end check of `warden serve` with the official MCP Python SDK, an independent client.
#
#   tests/e2e/run_python_sdk.sh [WARDEN_BIN]
#
# Needs a built binary (default: ${CARGO_TARGET_DIR:-target}/release/warden, or $WARDEN_BIN) and
# its runtimes in $WARDEN_HOME (default: target/warden), as scripts/setup leaves them. Keeps the
# pinned packages (tests/e2e/requirements.txt) in a venv at ${CARGO_TARGET_DIR:-target}/e2e-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/venv.sh run_python_sdk "${1:-}"
exec "$venv/bin/python" tests/e2e/python_sdk.py "$bin"
