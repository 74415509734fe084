#!/usr/bin/env bash
# Set up and run the proxy on http://127.0.0.1:8080/v1 (extra arguments go to `python -m proxy serve`).
# With ANTHROPIC_API_KEY unset, this script (not the proxy) starts the built-in MOCK upstream and says so.
# The first run creates .venv and installs the project, listing what it installs; later runs start at once
# (scripts/setup.sh runs pip again only when pyproject.toml changed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${ANTHROPIC_API_KEY:-}" ]; then
    mock_port=${MOCK_PORT:-8090}
    cat >&2 <<BANNER
================================================================================
  ANTHROPIC_API_KEY is not set: using the built-in MOCK upstream on 127.0.0.1:${mock_port}.
  Answers are canned ("Hello! I am the mock upstream. ..."); nothing reaches Anthropic.
  Set ANTHROPIC_API_KEY (and optionally ANTHROPIC_BASE_URL) to use the real API.
================================================================================
BANNER
    .venv/bin/python -m proxy mock-upstream --port "$mock_port" &
    mock_pid=$!
    trap 'kill "$mock_pid" 2>/dev/null || true' EXIT INT TERM
    export ANTHROPIC_BASE_URL="http://127.0.0.1:${mock_port}" ANTHROPIC_API_KEY="mock-key"
fi
.venv/bin/python -m proxy serve "$@"
