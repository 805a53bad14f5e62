#!/usr/bin/env bash
# CI's end-to-end stage (`make e2e`): installs what Docker needs from Debian's packages, starts
# an engine if none answers, builds the images offline, runs tests/e2e against the compose
# cluster, stops the engine it started, and prints the stage's wall time. Runs as root, outside
# scripts/loopback-only: the compose cluster needs the engine's bridge network.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
say() { echo "e2e: $*" >&2; }

missing=()
for pair in dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { say "needs root to install ${missing[*]}"; exit 1; }
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

engine_pid=""
engine_log=""
stop_engine() {
    if [ -n "$engine_pid" ]; then
        say "stopping the docker engine this stage started (pid $engine_pid)"
        kill "$engine_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$engine_pid" 2>/dev/null; then say "dockerd still running after 30 s (log: $engine_log)"; else rm -f "$engine_log"; fi
    fi
}
trap 'stop_engine; say "wall time $(( $(date +%s) - started )) s"' EXIT
if ! docker version >/dev/null 2>&1; then
    engine_log=$(mktemp /tmp/kdmkb-dockerd.XXXXXX.log)
    say "no docker engine answers: starting dockerd (log: $engine_log)"
    dockerd --storage-driver=overlay2 >"$engine_log" 2>&1 &
    engine_pid=$!
    for _ in $(seq 120); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
    docker version >/dev/null 2>&1 || { tail -20 "$engine_log" >&2; say "docker engine not reachable after 60 s"; exit 1; }
fi

deploy/build-images.sh
say "images ready after $(( $(date +%s) - started )) s"
.venv/bin/python -m pytest -q -s -p no:cacheprovider tests/e2e
