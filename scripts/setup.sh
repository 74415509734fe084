#!/usr/bin/env bash
# Create .venv (once) and install the project into it. `scripts/setup.sh test` adds the test tools, and
# redis-server (Debian package, for the shared rate-limit tests) when it is missing; `bench` adds what
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
if [ "${1:-}" = "test" ] && ! command -v redis-server >/dev/null 2>&1; then
    echo "setup: installing redis-server (Debian package) for the shared rate-limit tests" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
