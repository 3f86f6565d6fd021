# Sourced by the end-to-end runners: resolves the warden binary ($bin) and WARDEN_HOME
# (tests/warden-bin.sh), and makes sure the venv at ${CARGO_TARGET_DIR:-target}/e2e-venv holds
# exactly the pinned packages of tests/e2e/requirements.txt (installed on first use, or when the
# pins change).
#
#   source tests/e2e/venv.sh NAME [WARDEN_BIN]     (from the repository root)

e2e_name="$1"
source tests/warden-bin.sh "$e2e_name" "${2:-}"
venv="$target/e2e-venv"

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
