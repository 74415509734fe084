#!/usr/bin/env bash
# Set up and run everything CI checks: lint, types, and the whole test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check proxy tests bench scripts
.venv/bin/ruff format --check proxy tests bench scripts
.venv/bin/mypy
bash scripts/check_deploy.sh
.venv/bin/python -m pytest "$@"
