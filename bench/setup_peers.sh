#!/usr/bin/env bash
# Install the peer gateways the benchmark compares the proxy with (`bench/peers.py`), each in its own
# gitignored directory under bench/.peers/, so nothing reaches the product's .venv. Not part of the tests.
#   bench/.peers/litellm-venv   LiteLLM proxy 1.77.4 (PyPI litellm[proxy]==1.77.4), a venv of its own
#   bench/.peers/portkey        Portkey gateway 1.15.2 (npm @portkey-ai/gateway@1.15.2), with its direct
#                               dependencies pinned to the versions of the project's package-lock.json
#                               at v1.15.2 (hono 4.9.7; today's hono makes streamed /v1/completions 500)
# Re-running skips what is already installed; `--force` reinstalls.
set -euo pipefail
cd "$(dirname "$0")"
PEERS="$PWD/.peers"
LITELLM_VERSION=1.77.4
PORTKEY_VERSION=1.15.2
PYTHON="${PYTHON:-python3}"
# From Portkey-AI/gateway's package-lock.json at tag v1.15.2 (packages["node_modules/<name>"].version).
PORTKEY_LOCKED='{"@aws-crypto/sha256-js":"5.2.0","@cfworker/json-schema":"4.0.3","@hono/node-server":"1.13.5",
"@hono/node-ws":"1.2.0","@portkey-ai/mustache":"2.1.3","@smithy/signature-v4":"2.1.1","@types/mustache":"4.2.5",
"async-retry":"1.3.3","avsc":"5.7.7","hono":"4.9.7","ioredis":"5.8.0","jose":"6.0.11","patch-package":"8.0.1",
"ws":"8.18.3","zod":"3.25.76"}'
force=0
[[ "${1:-}" == "--force" ]] && force=1
mkdir -p "$PEERS"

venv="$PEERS/litellm-venv"
if [[ $force == 1 || ! -x "$venv/bin/litellm" ]] \
  || [[ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null)" != "$LITELLM_VERSION" ]]; then
  echo "setup_peers: LiteLLM $LITELLM_VERSION into $venv"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
fi

portkey="$PEERS/portkey"
if [[ $force == 1 || ! -d "$portkey/package/node_modules/hono" ]] \
  || [[ "$(node -p "require('$portkey/package/package.json').version" 2>/dev/null)" != "$PORTKEY_VERSION" ]]; then
  echo "setup_peers: Portkey gateway $PORTKEY_VERSION into $portkey"
  rm -rf "$portkey"
  mkdir -p "$portkey"
  tarball=$(cd "$portkey" && npm pack --silent "@portkey-ai/gateway@$PORTKEY_VERSION")
  tar -xzf "$portkey/$tarball" -C "$portkey"
  rm "$portkey/$tarball"
  # The published package has no package-lock.json; its repository's (tag v1.15.2) pins these versions
  # of its direct dependencies (with today's hono, 4.13.23, a streamed /v1/completions answers 500
  # "Something went wrong", `TypeError: immutable` in its log). Install exactly
  # those, without the dev dependencies and the install scripts; then apply by hand the one runtime patch
  # of the repository's patches/ (async-retry+1.3.3.patch: the retry callback also gets `op`), which the
  # published package does not ship.
  (cd "$portkey/package" && node -e '
    const fs = require("fs");
    const pkg = JSON.parse(fs.readFileSync("package.json"));
    pkg.dependencies = JSON.parse(process.argv[1]);
    delete pkg.devDependencies;
    delete pkg.scripts;
    fs.writeFileSync("package.json", JSON.stringify(pkg, null, 2));
  ' "$PORTKEY_LOCKED" \
    && npm install --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error \
    && sed -i 's/val = fn(bail, num);/val = fn(bail, num, op);/' node_modules/async-retry/lib/index.js \
    && grep -q 'fn(bail, num, op)' node_modules/async-retry/lib/index.js)
fi
echo "setup_peers: ready ($("$venv/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))'), portkey $(node -p "require('$portkey/package/package.json').version"))"
