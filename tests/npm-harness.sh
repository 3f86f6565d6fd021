# Sourced by the shell runners that drive `warden serve` with clients from npm
# (tests/clients/run.sh, tests/conformance/run.sh): a pinned npm install, a scratch directory
# ($work), and a server on loopback that is stopped, with the scratch directory removed, on exit.

work="$(mktemp -d)"
server=""
cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# install_pinned NAME SRC DEST READY: installs SRC/package.json and SRC/package-lock.json into
# DEST with `npm ci` (every package pinned by version and integrity hash), unless DEST already
# holds the same lock file and the path READY exists.
install_pinned() {
    local name="$1" src="$2" dest="$3" ready="$4"
    mkdir -p "$dest"
    if ! cmp -s "$src/package-lock.json" "$dest/package-lock.json" || [[ ! -e "$ready" ]]; then
        echo "$name: installing the pinned packages of $src into $dest" >&2
        cp "$src/package.json" "$src/package-lock.json" "$dest/"
        (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
}

# start_http NAME BIN AUDIT_LOG: starts `BIN serve --http 127.0.0.1:0` with its own audit log
# and its stderr in $work/server.log, waits for the address it announces, and sets $server
# (its pid) and $url.
start_http() {
    local name="$1" bin="$2" audit="$3"
    WARDEN_AUDIT_LOG="$audit" "$bin" serve --http 127.0.0.1:0 2>"$work/server.log" &
    server=$!
    url=""
    for _ in $(seq 200); do
        url="$(sed -n 's/^warden: serving MCP at \(http:[^ ]*\) .*/\1/p' "$work/server.log" | head -1)"
        [[ -n "$url" ]] && return 0
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name: the server did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
}
