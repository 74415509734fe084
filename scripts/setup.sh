#!/usr/bin/env bash
# Create .venv (once) and install the project into it. `scripts/setup.sh test` adds the test tools, and
# the Debian packages the tests start (listed in `debian_tools` below) when missing; `bench` adds what
# the benchmark needs.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed (found: $("$python" --version 2>&1))" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
[ "${1:-}" = "bench" ] && extras="[bench]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
# Debian packages the test suite starts for real, one per line: "command package".
debian_tools=(
    "redis-server redis-server"
    "promtool prometheus"
    "tinyproxy tinyproxy"
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
