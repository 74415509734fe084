#!/usr/bin/env bash
# Create .venv (once) and install the project into it (again only when pyproject.toml changes).
# `scripts/setup.sh test` adds the test tools, the Debian packages the tests start (listed in
# `debian_tools` below) when missing, and the npm packages of tests/js (the Vercel AI SDK and Codex,
# pinned by its package-lock.json) when missing or stale; `bench` adds what the benchmark needs.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed (found: $("$python" --version 2>&1))" >&2
    exit 1
fi
if ! [ -x .venv/bin/python ]; then
    echo "setup: creating .venv ($("$python" --version))" >&2
    "$python" -m venv .venv
fi
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
[ "${1:-}" = "bench" ] && extras="[bench]"
# pip runs only when pyproject.toml (or the venv's Python) changed since the last install of these extras:
# the install is editable, so code changes need none. A plain setup is also satisfied by a test or bench one.
key=$({ cat pyproject.toml; .venv/bin/python --version; } | sha256sum | cut -d' ' -f1)
stamp=.venv/.setup-${1:-base}.sha256
stamps=("$stamp")
[ -n "$extras" ] || stamps+=(.venv/.setup-test.sha256 .venv/.setup-bench.sha256)
installed=""
for candidate in "${stamps[@]}"; do
    [ "$(cat "$candidate" 2> /dev/null)" = "$key" ] && installed=yes
done
if [ -z "$installed" ]; then
    echo "setup: installing the project${extras} and its dependencies into .venv (pyproject.toml is new" \
        "or changed; about 40 s the first time)" >&2
    # One line per package as pip gets to it; pip's notes about this machine's extra indexes left out.
    PYTHONUNBUFFERED=1 .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
        -e ".${extras}" 2> >(grep -v '^WARNING: Location' >&2) \
        | { grep --line-buffered -E '^(Collecting|Successfully installed)' || true; } | sed -u -e 's/ (from .*)$//' -e 's/^/  /' >&2
    echo "$key" > "$stamp"
fi
# Debian packages the test suite starts for real, one per line: "command package".
debian_tools=(
    "redis-server redis-server"
    "promtool prometheus"
    "tinyproxy tinyproxy"
    "curl curl"
)
if [ "${1:-}" = "test" ]; then
    missing=()
    for entry in "${debian_tools[@]}"; do
        command -v "${entry%% *}" >/dev/null 2>&1 || missing+=("${entry##* }")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing Debian packages the tests use: ${missing[*]}" >&2
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi
if [ "${1:-}" = "test" ]; then
    # tests/js: `npm ci` when node_modules is missing or was installed from another package-lock.json
    # (the copy kept in node_modules/.installed-lock.json says which).
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "setup: WARNING: node and npm (Node 20 or newer) are needed by tests/js; the AI SDK and Codex tests will fail" >&2
    elif ! cmp -s tests/js/package-lock.json tests/js/node_modules/.installed-lock.json; then
        echo "setup: installing tests/js npm packages (npm ci): $(cd tests/js && node -e \
            'const d=require("./package.json").dependencies;console.log(Object.entries(d).map(([k,v])=>k+"@"+v).join(" "))')" >&2
        (cd tests/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        cp tests/js/package-lock.json tests/js/node_modules/.installed-lock.json
    fi
fi
