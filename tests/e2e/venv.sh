# Sourced by the end-to-end runners: resolves the warden binary ($bin) and WARDEN_HOME, and makes
# sure the venv at ${CARGO_TARGET_DIR:-target}/e2e-venv holds exactly the pinned packages of
# tests/e2e/requirements.txt (installed on first use, or when the pins change).
#
#   source tests/e2e/venv.sh NAME [WARDEN_BIN]     (from the repository root)

e2e_name="$1"
target="${CARGO_TARGET_DIR:-target}"
venv="$target/e2e-venv"
bin="${2:-${WARDEN_BIN:-$target/release/warden}}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
export WARDEN_HOME="${WARDEN_HOME:-$PWD/target/warden}"

if [[ ! -x "$bin" ]]; then
    echo "$e2e_name: no warden binary at $bin; build it first (scripts/setup)" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
requirements=tests/e2e/requirements.txt
if ! cmp -s "$requirements" "$venv/installed-requirements.txt"; then
    echo "$e2e_name: installing the pinned packages of $requirements into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/installed-requirements.txt"
fi
