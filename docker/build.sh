#!/usr/bin/env bash
# Build the CPU component image here or behind an air gap (docker/README.md, "Building behind an air gap").
#
#   docker/build.sh [IMAGE]        IMAGE: default $DOMAINTUNE_IMAGE, else the name the compiled YAML uses
#
# 1. Base image: BASE_IMAGE (default python:3.11.14-slim-bookworm) if it is present or can be pulled; else
#    FALLBACK_BASE (default domaintune-base:bookworm), built once from Debian packages with debootstrap
#    (bookworm: python3, python3-venv, ca-certificates; from DEBIAN_MIRROR) and `docker import` — reused
#    while that tag exists (`docker rmi domaintune-base:bookworm` rebuilds it).
# 2. pip inside the build uses this machine's pip configuration (`pip config list`: indexes, find-links,
#    CA bundle, constraints), handed to the RUN steps as BuildKit secrets, so nothing of it lands in a
#    layer; local index and wheel directories are served read-only on 127.0.0.1 for the build's
#    duration only (docker/pip_bridge.py). PIP_BRIDGE=0 builds from the Dockerfile's public indexes;
#    TORCH_INDEX_URL / PIP_INDEX_URL, when set, are passed to the build as they are.
# Needs BuildKit (`docker buildx`, or a 20.10-22.x client with its built-in BuildKit) and debootstrap +
# root for the fallback base. Prints the image's size at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# The image name the compiled YAML and `domaintune run --runner docker` use (components/core/images.py).
IMAGE=${1:-${DOMAINTUNE_IMAGE:-$(sed -n 's/.*"DOMAINTUNE_IMAGE", *"\([^"]*\)".*/\1/p' components/core/images.py)}}
[ -n "$IMAGE" ] || { echo "build.sh: no image name (give one, or set DOMAINTUNE_IMAGE)" >&2; exit 1; }
BASE_IMAGE=${BASE_IMAGE:-python:3.11.14-slim-bookworm}
FALLBACK_BASE=${FALLBACK_BASE:-domaintune-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PULL_TIMEOUT=${PULL_TIMEOUT:-60}

say() { echo "build.sh: $*" >&2; }

# A docker client that builds with BuildKit (RUN --mount=type=secret): the legacy builder cannot.
DOCKER=""
for candidate in docker /usr/bin/docker; do
  command -v "$candidate" > /dev/null || continue
  if "$candidate" buildx version > /dev/null 2>&1; then DOCKER=$candidate; break; fi
  major=$("$candidate" version --format '{{.Client.Version}}' 2> /dev/null | cut -d. -f1 || true)
  if [[ "$major" =~ ^(19|20|21|22)$ ]]; then DOCKER=$candidate; break; fi  # built-in BuildKit
done
[ -n "$DOCKER" ] || { say "no docker client with BuildKit (install docker-buildx, or Debian's docker.io)"; exit 1; }
"$DOCKER" info > /dev/null 2>&1 || { say "the docker daemon is not reachable (start dockerd)"; exit 1; }

have_image() { "$DOCKER" image inspect "$1" > /dev/null 2>&1; }

build_fallback_base() {
  command -v debootstrap > /dev/null || { say "debootstrap missing (apt-get install debootstrap)"; exit 1; }
  [ "$(id -u)" = 0 ] || { say "building $FALLBACK_BASE with debootstrap needs root"; exit 1; }
  local root
  root=$(mktemp -d /var/tmp/domaintune-base.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  say "building $FALLBACK_BASE from $DEBIAN_MIRROR (debootstrap bookworm, a few minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$DEBIAN_MIRROR" \
    > "$root.log" 2>&1 || { say "debootstrap failed, see $root.log"; exit 1; }
  rm -f "$root.log"
  # Nothing of this machine in the base: its resolver and host name (debootstrap copies them), apt's
  # downloaded packages and lists, logs.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* \
         "$root"/etc/resolv.conf "$root"/etc/hostname
  tar -C "$root" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase bookworm + python3 python3-venv ca-certificates" \
    - "$FALLBACK_BASE" > /dev/null
}

base=$BASE_IMAGE
if have_image "$BASE_IMAGE"; then
  :
elif timeout "$PULL_TIMEOUT" "$DOCKER" pull -q "$BASE_IMAGE" > /dev/null 2>&1; then
  :
else
  base=$FALLBACK_BASE
  if have_image "$FALLBACK_BASE"; then
    say "cannot pull $BASE_IMAGE: using the cached $FALLBACK_BASE"
  else
    say "cannot pull $BASE_IMAGE"
    build_fallback_base
  fi
fi

commit=$(git rev-parse HEAD 2> /dev/null || echo unknown)
[ "$commit" = unknown ] || git diff --quiet HEAD -- 2> /dev/null || commit="$commit+dirty"
build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "DOMAINTUNE_GIT_COMMIT=$commit")
secrets=()
bridge_dir=""
bridge_pid=""
cleanup() {
  [ -z "$bridge_pid" ] || kill "$bridge_pid" 2> /dev/null || true
  [ -z "$bridge_dir" ] || rm -rf "$bridge_dir"
}
trap cleanup EXIT
if [ "${PIP_BRIDGE:-1}" != 0 ]; then
  bridge_dir=$(mktemp -d)
  chmod 700 "$bridge_dir"
  python3 docker/pip_bridge.py "$bridge_dir" &
  bridge_pid=$!
  for _ in $(seq 100); do [ -s "$bridge_dir/ready" ] || [ ! -d "/proc/$bridge_pid" ] && break; sleep 0.1; done
  [ -s "$bridge_dir/ready" ] || { say "docker/pip_bridge.py did not start"; exit 1; }
  for name in pip.conf pip-ca.crt pip-constraints.txt; do
    [ -f "$bridge_dir/$name" ] && secrets+=(--secret "id=$name,src=$bridge_dir/$name")
  done
  # Where this machine's pip names its own indexes, those are used: the Dockerfile's public defaults are switched
  # off (else pip would also try them, and on an air gap wait for them to time out).
  if grep -Eq '^(index-url|extra-index-url|find-links|no-index) =' "$bridge_dir/pip.conf"; then
    build_args+=(--build-arg TORCH_INDEX_URL= --build-arg PIP_INDEX_URL=)
  fi
fi
# Explicit choices win: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu docker/build.sh
[ -z "${TORCH_INDEX_URL+set}" ] || build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
[ -z "${PIP_INDEX_URL+set}" ] || build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")

say "building $IMAGE on $base"
previous=$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE" 2> /dev/null || true)
started=$(date +%s)
DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain -f docker/Dockerfile.cpu \
  "${build_args[@]}" "${secrets[@]}" -t "$IMAGE" . >&2
# The image this tag named before, now untagged: removed (its layers shared with the new one stay).
if [ -n "$previous" ] && [ "$previous" != "$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE")" ] \
   && [ "$("$DOCKER" image inspect --format '{{len .RepoTags}}' "$previous" 2> /dev/null)" = 0 ]; then
  "$DOCKER" rmi "$previous" > /dev/null 2>&1 || true
fi
size=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE in $(( $(date +%s) - started )) s: $(( size / 1000000 )) MB"
echo "$IMAGE"
