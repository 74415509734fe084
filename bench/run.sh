#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the benchmark; extra arguments go to bench/run.py (--quick, --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh bench
exec .venv/bin/python bench/run.py "$@"
