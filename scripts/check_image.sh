#!/usr/bin/env bash
# Build deploy/Dockerfile with a real container engine and run the image as the deployment files do:
#   - build (timed), image size, nothing of the build's package index or CA bundle left in the image
#   - the mock upstream and the proxy, each in its own container: --read-only (tmpfs /tmp), the image's
#     non-root user, --cap-drop ALL, --security-opt no-new-privileges (checked inside the container)
#   - GET /healthz, GET /readyz and one streamed chat completion through the container (deploy/tools/
#     image_smoke.py: the SSE body must end with `data: [DONE]`); the image's HEALTHCHECK, unchanged,
#     until the engine reports `healthy`; `docker stop` ends it with exit code 0 within its timeout
#   - deploy/docker-compose.yaml: `docker-compose config`, then the offline `demo` profile brought up
#     with the image just built; its client container must exit 0 and the proxy answer on port 8081
#
# The engine is a private dockerd (Debian's docker.io) on its own socket, data root and containerd
# namespace in a temporary directory (no iptables, no default bridge, the storage driver dockerd picks:
# it runs inside a container too); it is stopped and its directory deleted at the end, with everything
# built in it.
#
# No container registry is reachable where this runs, so the image is built FROM a stand-in for the
# official python image: Debian bookworm with python3-venv and ca-certificates, made by mmdebstrap from
# this machine's apt sources and imported into the engine (the tarball is cached in .cache/image-base/,
# gitignored; delete it to refresh). PYTHON_IMAGE=python:3.11.13-slim-bookworm builds on the official
# base instead, where it can be pulled. pip in the build reaches the package index this machine uses
# (PIP_INDEX_URL or pip's configured index-url) with its CA bundle (PIP_CERT, pip's cert, SSL_CERT_FILE
# or the system's), both passed as build secrets.
#
# Installs with apt-get when missing: docker.io (dockerd, docker), mmdebstrap, docker-compose.
# Needs root (or sudo) for apt-get, mmdebstrap and dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
say() { echo "check_image: $*"; }
fail() {
    echo "check_image: FAILED: $*" >&2
    exit 1
}

# --- tools ------------------------------------------------------------------------------------------
missing=()
command -v dockerd > /dev/null || missing+=(docker.io)
[ -n "${PYTHON_IMAGE:-}" ] || command -v mmdebstrap > /dev/null || missing+=(mmdebstrap)
command -v docker-compose > /dev/null || missing+=(docker-compose)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages for the image check: ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "${missing[@]}" > /dev/null
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
python=.venv/bin/python
# The client of the distribution's package (docker.io): it builds with the BuildKit built into the
# engine, where a newer client elsewhere on PATH (/usr/local/bin) may want the buildx plugin instead.
docker_bin=/usr/bin/docker
[ -x "$docker_bin" ] || docker_bin=$(command -v docker)

# --- a private engine -------------------------------------------------------------------------------
run=$(mktemp -d /tmp/clp-engine.XXXXXX)
export DOCKER_HOST="unix://$run/docker.sock"
engine=(env "DOCKER_HOST=$DOCKER_HOST" DOCKER_BUILDKIT=1)
[ -z "$sudo" ] || engine=(sudo "${engine[@]}")
docker() { "${engine[@]}" "$docker_bin" "$@"; }
compose() { "${engine[@]}" docker-compose "$@"; }
tag="clp-check-$$"
image="claude-legacy-proxy:$tag"
base_image="clp-check-base:$tag"
version=""
containers=()
compose_args=()

cleanup() {
    local status=$?
    set +e
    [ "${#compose_args[@]}" -gt 0 ] && compose "${compose_args[@]}" down --remove-orphans > /dev/null 2>&1
    [ "${#containers[@]}" -gt 0 ] && docker rm -f "${containers[@]}" > /dev/null 2>&1
    docker rmi -f "$image" ${version:+"claude-legacy-proxy:$version"} "$base_image" > /dev/null 2>&1
    if [ -f "$run/dockerd.pid" ]; then
        local pid deadline=$((SECONDS + 30))
        pid=$(cat "$run/dockerd.pid")
        $sudo kill "$pid" 2> /dev/null
        while $sudo kill -0 "$pid" 2> /dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
        $sudo kill -0 "$pid" 2> /dev/null && say "dockerd $pid did not stop within 30 s"
    fi
    # dockerd leaves its network namespace mounted under its exec root
    grep -o " $run/[^ ]*" /proc/mounts | sort -r | while read -r mount; do $sudo umount "$mount"; done
    $sudo rm -rf "$run"
    if [ "$status" -ne 0 ]; then say "FAILED ($((SECONDS - started)) s)"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_until() {  # wait_until SECONDS COMMAND...: poll COMMAND until it succeeds; 1 at the deadline
    local deadline=$((SECONDS + $1))
    shift
    until "$@" > /dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
}

say "starting a private dockerd ($("$docker_bin" --version))"
$sudo dockerd --host "$DOCKER_HOST" --data-root "$run/data" --exec-root "$run/exec" \
    --pidfile "$run/dockerd.pid" --containerd-namespace "$tag" --containerd-plugins-namespace "$tag-plugins" \
    --iptables=false --ip6tables=false --bridge=none > "$run/dockerd.log" 2>&1 &
wait_until 60 docker info || { tail -20 "$run/dockerd.log" >&2; fail "dockerd did not answer within 60 s"; }
say "   storage driver: $(docker info -f '{{.Driver}}') (dockerd's choice: overlay2 where the file system allows, else vfs)"

# --- the base image ---------------------------------------------------------------------------------
base_packages=(python3-venv ca-certificates)
if [ -n "${PYTHON_IMAGE:-}" ]; then
    base_image=$PYTHON_IMAGE
    say "base image: $base_image (PYTHON_IMAGE; pulled by the engine)"
else
    sources=/etc/apt/sources.list.d/debian.sources
    [ -f "$sources" ] || sources=/etc/apt/sources.list
    key=$(cat "$sources" <(printf '%s\n' "${base_packages[@]}") | sha256sum | cut -c1-16)
    tarball=.cache/image-base/bookworm-python3-$key.tar
    if [ -f "$tarball" ]; then
        say "base image: Debian bookworm stand-in for the python image, cached ($tarball)"
    else
        say "base image: making a Debian bookworm stand-in with mmdebstrap (${base_packages[*]}; from $sources)"
        since=$SECONDS
        mkdir -p .cache/image-base
        $sudo mmdebstrap --quiet --format=tar --variant=minbase --include="$(IFS=,; echo "${base_packages[*]}")" \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            bookworm "$tarball.partial" "$sources" > "$run/mmdebstrap.log" 2>&1 \
            || { tail -20 "$run/mmdebstrap.log" >&2; fail "mmdebstrap"; }
        mv "$tarball.partial" "$tarball"
        say "   made in $((SECONDS - since)) s ($(du -m "$tarball" | cut -f1) MB)"
    fi
    docker import --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tarball" "$base_image" > /dev/null
fi

# --- build --------------------------------------------------------------------------------------------
version=$($python deploy/tools/project_version.py)
index_url=${PIP_INDEX_URL:-$($python -m pip config get global.index-url 2> /dev/null || true)}
cert=${PIP_CERT:-$($python -m pip config get global.cert 2> /dev/null || true)}
cert=${cert:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
secrets=()
if [ -n "$index_url" ]; then
    (umask 077 && printf '%s' "$index_url" > "$run/pip_index_url")
    secrets+=(--secret "id=pip_index_url,src=$run/pip_index_url")
fi
[ -f "$cert" ] && secrets+=(--secret "id=pip_cert,src=$cert")
say "building deploy/Dockerfile (VERSION=$version; index: ${index_url:-the default of pip}; CA bundle: ${cert})"
since=$SECONDS
# --network host: this engine has no default bridge for the build's RUN steps.
if ! docker build --network host --progress plain -f deploy/Dockerfile --build-arg "VERSION=$version" \
    --build-arg "PYTHON_IMAGE=$base_image" "${secrets[@]}" -t "$image" . > "$run/build.log" 2>&1 \
    < /dev/null; then
    tail -40 "$run/build.log" >&2
    fail "docker build"
fi
build_seconds=$((SECONDS - since))
size=$(docker image inspect -f '{{.Size}}' "$image")
base_size=$(docker image inspect -f '{{.Size}}' "$base_image")
say "   built in ${build_seconds} s (empty build cache); image size $((size / 1000000)) MB" \
    "(base $((base_size / 1000000)) MB)"

# Nothing of the build's index, certificates, wheels or tools is in the image or its history.
history=$(docker history --no-trunc --format '{{.CreatedBy}}' "$image")
if [ -n "$index_url" ] && grep -qF "$index_url" <<< "$history"; then fail "the index URL is in the image's history"; fi
docker run --rm --network none --entrypoint /bin/sh "$image" -c '
    for path in /wheels /opt/build /src /run/secrets; do
        if [ -e "$path" ]; then echo "$path is in the image"; exit 1; fi
    done
    if python -m pip --version > /dev/null 2>&1 || python3 -m pip --version > /dev/null 2>&1; then
        echo "pip is in the image"; exit 1
    fi' || fail "build leftovers in the image"
if [ -f "$cert" ]; then
    cert_sha=$(sha256sum < "$cert" | cut -d' ' -f1)
    # shellcheck disable=SC2016  # expanded in the container
    docker run --rm --network none --entrypoint /bin/sh "$image" -c \
        'find / -xdev -type f -size "$0c" -exec sha256sum {} + 2>/dev/null' "$(wc -c < "$cert")" \
        | grep -q "^$cert_sha " && fail "the build's CA bundle $cert is in the image"
fi
say "   no pip, wheels, build tools, secrets, index URL or build CA bundle in the image"

# --- run it -------------------------------------------------------------------------------------------
free_port() { $python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hardened=(--read-only --tmpfs "/tmp:size=64m,mode=1777" --cap-drop ALL --security-opt no-new-privileges)
mock_port=$(free_port)
port=$(free_port)
# Host networking (the engine has no bridge by default); both bind 127.0.0.1 on free ports.
containers+=("$tag-mock")
docker run -d --name "$tag-mock" --network host "${hardened[@]}" "$image" \
    mock-upstream --host 127.0.0.1 --port "$mock_port" > /dev/null
containers+=("$tag-proxy")
docker run -d --name "$tag-proxy" --network host "${hardened[@]}" \
    -e PROXY_SERVER__HOST=127.0.0.1 -e PROXY_SERVER__PORT="$port" \
    -e ANTHROPIC_BASE_URL="http://127.0.0.1:$mock_port" -e ANTHROPIC_API_KEY=mock-key "$image" > /dev/null
say "running the mock upstream and the proxy (127.0.0.1:$port), ${hardened[*]}"

# What the kernel says about the proxy's PID 1: user, capabilities, no_new_privs; and a read-only root.
status=$(docker exec "$tag-proxy" cat /proc/1/status)
uid=$(awk '/^Uid:/ {print $2}' <<< "$status")
cap_eff=$(awk '/^CapEff:/ {print $2}' <<< "$status")
nnp=$(awk '/^NoNewPrivs:/ {print $2}' <<< "$status")
[ "$uid" = 10001 ] || fail "the server runs as uid $uid, not 10001"
[ "$cap_eff" = 0000000000000000 ] || fail "the server has capabilities $cap_eff"
[ "$nnp" = 1 ] || fail "no_new_privs is not set"
docker exec "$tag-proxy" python -c '
import errno, sys
try:
    open("/etc/claude-legacy-proxy/written", "w")
except OSError as exc:
    sys.exit(0 if exc.errno == errno.EROFS else f"expected EROFS, got {exc}")
sys.exit("the root filesystem is writable")' || fail "read-only root filesystem"
docker exec "$tag-proxy" python -c 'open("/tmp/written", "w").write("ok")' || fail "/tmp is not writable"
say "   pid 1: uid $uid, CapEff $cap_eff, NoNewPrivs $nnp; / read-only (EROFS), /tmp writable"

$python deploy/tools/image_smoke.py "http://127.0.0.1:$port" || {
    docker logs "$tag-proxy" 2>&1 | tail -20 >&2
    fail "requests through the container"
}

# The image's own HEALTHCHECK (interval 30 s, so the first probe runs 30 s after the start).
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$tag-proxy")" = healthy ]; }
since=$SECONDS
wait_until 90 healthy || {
    docker inspect -f '{{json .State.Health}}' "$tag-proxy" >&2
    fail "the engine did not report the container healthy within 90 s"
}
say "   HEALTHCHECK: healthy ($((SECONDS - since)) s after the requests)"

stop_timeout=45   # compose's stop_grace_period and Kubernetes' terminationGracePeriodSeconds
since=$SECONDS
docker stop --time "$stop_timeout" "$tag-proxy" > /dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$tag-proxy")
[ "$code" = 0 ] || fail "the proxy exited with $code after docker stop (137: killed at the timeout)"
say "   docker stop: exit code 0 after $((SECONDS - since)) s (timeout ${stop_timeout} s)"
if docker logs "$tag-proxy" 2>&1 | grep -qF mock-key; then fail "the upstream key is in the logs"; fi
docker rm -f "$tag-mock" "$tag-proxy" > /dev/null
containers=()

# --- compose ------------------------------------------------------------------------------------------
compose_file=deploy/docker-compose.yaml
compose -f "$compose_file" config -q || fail "docker-compose config"
say "docker-compose $(docker-compose version --short): $compose_file is valid"

# The demo profile with the image just built (tagged as the compose file names it). Its client runs in
# that image too: the python image it names cannot be pulled here, and the proxy's image has python.
docker tag "$image" "claude-legacy-proxy:$version"
cat > "$run/compose.override.yaml" << YAML
services:
  demo-client:
    image: claude-legacy-proxy:$version
    entrypoint: ["/usr/bin/env"]
YAML
compose_args=(-p "$tag" -f "$compose_file" -f "$run/compose.override.yaml" --profile demo)
$python -c 'import socket; socket.create_server(("127.0.0.1", 8081)).close()' 2> /dev/null \
    || fail "port 127.0.0.1:8081 (the demo profile's) is in use"
since=$SECONDS
compose "${compose_args[@]}" up -d --no-build > "$run/compose.log" 2>&1 \
    || { cat "$run/compose.log" >&2; fail "docker-compose --profile demo up"; }
client=$(compose "${compose_args[@]}" ps -q demo-client)
client_code=$(timeout 120 "${engine[@]}" "$docker_bin" wait "$client") || fail "the demo client did not exit"
compose "${compose_args[@]}" logs --no-color demo-client 2>&1 | sed 's/^/   /' | tail -5
[ "$client_code" = 0 ] || fail "the demo client exited with $client_code"
$python deploy/tools/image_smoke.py http://127.0.0.1:8081 || fail "the demo proxy on 127.0.0.1:8081"
say "   demo profile: up and answering in $((SECONDS - since)) s (mock-upstream, proxy-demo, demo-client)"
compose "${compose_args[@]}" down --remove-orphans > /dev/null 2>&1
compose_args=()

say "all checks passed ($((SECONDS - started)) s; build ${build_seconds} s; image $((size / 1000000)) MB)"
