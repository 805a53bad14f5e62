#!/usr/bin/env bash
# Builds the compose cluster's images without pulling anything (there may be no registry):
#   kdmkb-base:bookworm      debootstrap'd Debian + python3, imported (skipped when KDMKB_BASE names a base)
#   kdmkb:latest             the coordinator and every Ray node; dependencies from a wheelhouse made here
#   kdmkb-prometheus:latest  Debian's Prometheus, as `make tools` unpacks it from the .deb
# Each image is also tagged with the hash of its inputs and rebuilt only when they change; the
# wheelhouse is cached in $KDMKB_CACHE (default ~/.cache/kdmkb).
# Needs a reachable docker engine, and debootstrap, make, apt-get and python3 -m pip on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${KDMKB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kdmkb}
stage=build/docker                      # the part of the build context this script prepares (gitignored)
base=${KDMKB_BASE:-kdmkb-base:bookworm}
python=${PYTHON:-python3}
# The classic builder takes a local base as it is and pulls nothing unless told to.
export DOCKER_BUILDKIT=0

die() { echo "build-images: $*" >&2; exit 1; }
log() { echo "build-images: [${SECONDS} s] $*" >&2; }
# Hash of files' names and contents, so that an image tag says exactly what went into it.
content_hash() { find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# Points REPO:latest at IMAGE and drops the repository's older hash tags (their layers stay cached).
promote() {
    local repo=${1%%:*}
    docker tag "$1" "$repo:latest"
    docker image ls "$repo" --format '{{.Repository}}:{{.Tag}}' | { grep -v -x -e "$1" -e "$repo:latest" || true; } | xargs -r docker rmi >/dev/null
}
build() {  # build IMAGE:TAG DOCKERFILE
    log "docker build $1"
    docker build --network none --build-arg BASE="$base" -f "$2" -t "$1" . >"$cache/build.log" 2>&1 \
        || { tail -30 "$cache/build.log" >&2; die "docker build of $1 failed, see $cache/build.log"; }
}

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "docker engine not reachable: $(docker version 2>&1 | tail -1)"
mkdir -p "$cache" "$stage"

# -- base ------------------------------------------------------------------------------------
if ! have_image "$base"; then
    [ -z "${KDMKB_BASE:-}" ] || die "base image $base is not in the local image store (pull or load it first)"
    command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install debootstrap)"
    # This machine's own Debian mirror, read at run time.
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || die "no Debian mirror: /etc/apt/sources.list.d/debian.sources has no URIs: line"
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm ($cache/debootstrap.log)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || die "debootstrap failed, see $cache/debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi
base_id=$(docker image inspect --format '{{.Id}}' "$base")

# -- kdmkb: every requirement of pyproject.toml as a wheel, CPU torch ------------------------
"$python" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' >"$stage/requirements.txt"
wheels_key=$(content_hash "$stage/requirements.txt")
sources=$(content_hash pyproject.toml README.md kdmkb kb_worker coordinator services protos deploy/__init__.py deploy/prometheus deploy/grafana deploy/images/kdmkb.Dockerfile .dockerignore)
tag=kdmkb:$(echo "$base_id $wheels_key $sources" | sha256sum | cut -c1-16)
if ! have_image "$tag"; then
    wheelhouse=$cache/wheelhouse-$wheels_key
    if [ ! -f "$wheelhouse/.complete" ]; then
        rm -rf "$wheelhouse"
        log "pip download into $wheelhouse"
        # pip's own configuration says where wheels come from; it must offer the CPU build of torch.
        "$python" -m pip download --only-binary=:all: --dest "$wheelhouse" -r "$stage/requirements.txt" >"$cache/pip-download.log" 2>&1 \
            || { tail -20 "$cache/pip-download.log" >&2; die "pip download failed, see $cache/pip-download.log"; }
        ls "$wheelhouse" | grep -q '^torch-.*+cpu-' \
            || die "the wheelhouse got a torch that is not a CPU build ($(ls "$wheelhouse" | grep '^torch-')): give pip a CPU wheel (find-links or an extra index)"
        if ls "$wheelhouse" | grep -q '^nvidia_'; then die "the wheelhouse got CUDA wheels: give pip a CPU torch wheel"; fi
        touch "$wheelhouse/.complete"
    fi
    rm -rf "$stage/wheelhouse"
    cp -al "$wheelhouse" "$stage/wheelhouse" 2>/dev/null || cp -a "$wheelhouse" "$stage/wheelhouse"
    build "$tag" deploy/images/kdmkb.Dockerfile
    rm -rf "$stage/wheelhouse"
fi
promote "$tag"

# -- prometheus: Debian's build, which `make tools` unpacks (one binary that needs only libc) ----
make --no-print-directory -s tools >&2
rm -rf "$stage/prometheus" && mkdir -p "$stage/prometheus"
cp .tools/prometheus/usr/bin/prometheus .tools/prometheus/usr/bin/promtool "$stage/prometheus/"
tag=kdmkb-prometheus:$(echo "$base_id $(content_hash "$stage/prometheus" deploy/images/prometheus.Dockerfile)" | sha256sum | cut -c1-16)
have_image "$tag" || build "$tag" deploy/images/prometheus.Dockerfile
promote "$tag"
log "ready: kdmkb:latest, kdmkb-prometheus:latest (base $base)"
