#!/usr/bin/env bash
# The real docker-compose.yml, run on this machine: a Docker engine, locally built images
# (no registry is reachable, so nothing is pulled), the cluster up, tests/compose.rs and
# a short chaos run against it, then everything torn down.
#
#   scripts/compose.sh          all of it (the one command; CI's and a developer's)
#   scripts/compose.sh images   only the engine and the images
#   scripts/compose.sh up       the images and the cluster, left running (`down` ends it)
#   scripts/compose.sh down     compose down -v
#
# What it builds, each image under the tag docker-compose.yml names
# (docker-compose.local.yml adds `pull_policy: never`):
#   debian:bookworm-slim     a debootstrap (minbase) rootfs, with the node image's runtime
#                            packages already in it; the tarball is cached
#   authsync:latest          docker/authsync.local.Dockerfile: the repo Dockerfile's
#                            runtime stage around the binary built here by cargo
#   apache/kafka:4.1.1       docker/kafka.Dockerfile: a second rootfs with a JRE, Apache
#                            Kafka's jars (scripts/kafka.sh) and an entrypoint that reads
#                            KAFKA_* like the official image
#   prom/prometheus:v2.53.2  docker/prometheus.Dockerfile: Debian's prometheus binary (2.42)
# Grafana has no Debian package and its image cannot be pulled: every service but
# `grafana` is brought up.
#
# The engine and the images are left in place, so a second run skips the debootstrap
# and reuses the image layers. Every wait is bounded (timeout, or a counted loop).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=packages.sh
. scripts/packages.sh

TOOLS="${AUTHSYNC_TOOLS_DIR:-$HOME/.cache/authsync-tools}"
IMAGES="$TOOLS/images"        # rootfs tarballs and debootstrap's .deb cache
ENGINE_DIR="$TOOLS/docker"    # dockerd's log and pid, when this script starts it
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/authsync-target}"
# A fixed project name, so that the test, the chaos harness and `down` find the same
# containers whatever the clone's directory is called.
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-authsync}"
# The API key of config/compose/*.toml (development only).
API_KEY="dev-key-change-me"
KAFKA_VERSION=4.1.1
# Every service of docker-compose.yml except grafana.
SERVICES=(keys-init kafka-af-south kafka-eu-west kafka-us-east
    authsync-af-south authsync-eu-west authsync-us-east prometheus)
# Bump when a rootfs's package list changes: the cached tarball is then rebuilt.
ROOTFS_VERSION=1
BASE_PACKAGES=ca-certificates,curl,libssl3,zlib1g
JRE_PACKAGES="$BASE_PACKAGES,openjdk-17-jre-headless"

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

started=$SECONDS
say() { echo "== [$(date -u +%H:%M:%S) +$((SECONDS - started))s] $*"; }

# --- the tools ----------------------------------------------------------------------

tools() {
    # docker.io: the engine (dockerd, containerd, runc) and a CLI. docker-compose:
    # Debian's compose 1.29, for machines without the compose plugin (Debian has none).
    # prometheus: its binaries go into the Prometheus image. Java and Maven: Kafka's jars
    # come from Maven Central (scripts/kafka.sh fetch).
    local pkgs=(docker.io debootstrap prometheus openjdk-17-jre-headless maven curl)
    docker compose version >/dev/null 2>&1 || pkgs+=(docker-compose)
    install_packages "${pkgs[@]}"
    if docker compose version >/dev/null 2>&1; then
        compose_cmd=(docker compose)
    else
        compose_cmd=(docker-compose)
    fi
    compose=("${compose_cmd[@]}" -f docker-compose.yml -f docker-compose.local.yml)
}

# An engine that answers is used as it is. Otherwise dockerd starts in the background
# with the vfs storage driver: it needs no overlay support from the kernel or the
# filesystem (a container's rootfs is a plain copy, slower but it works anywhere).
# Not as root, the CLI needs the engine's socket, which is group docker's: the test and
# the chaos harness call it too, so sudo for this script alone would not do.
engine() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    if [ -S /var/run/docker.sock ] && pgrep -x dockerd >/dev/null; then
        echo "a Docker engine runs but does not answer $(id -un): run as root or join group docker" >&2
        exit 1
    fi
    mkdir -p "$ENGINE_DIR"
    say "docker: starting dockerd --storage-driver vfs (log: $ENGINE_DIR/dockerd.log)"
    # setsid: in a session of its own, so a Ctrl-C of this script does not reach it.
    "${sudo[@]}" setsid nohup dockerd --storage-driver vfs --pidfile "$ENGINE_DIR/dockerd.pid" \
        >>"$ENGINE_DIR/dockerd.log" 2>&1 </dev/null &
    local i
    for i in $(seq 60); do
        if docker info >/dev/null 2>&1; then
            say "docker: engine up after ${i} s"
            return
        fi
        sleep 1
    done
    echo "dockerd did not answer within 60 s (not root: is $(id -un) in group docker?); its log ends:" >&2
    "${sudo[@]}" tail -20 "$ENGINE_DIR/dockerd.log" >&2
    exit 1
}

# --- the images ---------------------------------------------------------------------

# rootfs NAME PACKAGES: a bookworm minbase rootfs with PACKAGES, as $IMAGES/NAME.tar,
# built once. The .deb cache is shared, so the second rootfs downloads only its extras.
rootfs() {
    local name="$1" packages="$2" tar="$IMAGES/$1.tar"
    if [ -f "$tar" ]; then
        return
    fi
    local dir="$IMAGES/$name.rootfs"
    mkdir -p "$IMAGES/debs"
    "${sudo[@]}" rm -rf "$dir"
    local t=$SECONDS
    "${sudo[@]}" timeout 1800 debootstrap --variant=minbase --include="$packages" \
        --cache-dir="$IMAGES/debs" bookworm "$dir" http://deb.debian.org/debian \
        >"$IMAGES/$name.debootstrap.log" 2>&1 || {
        echo "debootstrap failed; its log ends:" >&2
        tail -20 "$IMAGES/$name.debootstrap.log" >&2
        exit 1
    }
    # What debian:bookworm-slim has besides: the full set of sources (for an apt step
    # in a Dockerfile), no package lists or downloaded .debs in the image.
    "${sudo[@]}" tee "$dir/etc/apt/sources.list" >/dev/null <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    "${sudo[@]}" sh -c "rm -rf '$dir'/var/lib/apt/lists/* '$dir'/var/cache/apt/archives/*.deb"
    "${sudo[@]}" tar --numeric-owner -C "$dir" -cf "$tar.partial" .
    "${sudo[@]}" mv "$tar.partial" "$tar"
    "${sudo[@]}" rm -rf "$dir"
    say "debootstrap: $name done in $((SECONDS - t)) s ($(du -h "$tar" | cut -f1))"
}

# import TARBALL TAG: `docker import`, unless TAG already holds this tarball (the label
# names it, so a rebuilt tarball is imported again).
import() {
    local tar="$1" tag="$2" id
    id="$(basename "$tar") $(stat -c %Y "$tar")"
    if [ "$(docker image inspect -f '{{index .Config.Labels "authsync.rootfs"}}' "$tag" 2>/dev/null)" = "$id" ]; then
        return
    fi
    say "docker import: $tag"
    timeout 600 docker import --change "LABEL authsync.rootfs=\"$id\"" --change 'CMD ["bash"]' \
        "$tar" "$tag" >/dev/null
}

# build TAG DOCKERFILE CONTEXT: the classic builder, which never pulls a FROM image that
# is present locally, and needs no BuildKit (Debian's engine has no buildx). Its output
# (and the CLI's note that this builder is deprecated) goes to a log, shown on failure.
build() {
    local t=$SECONDS log="$ENGINE_DIR/build-${1//[:\/]/-}.log"
    if ! DOCKER_BUILDKIT=0 timeout 1200 docker build -t "$1" -f "$2" "$3" >"$log" 2>&1; then
        echo "docker build of $1 failed; its log ends:" >&2
        tail -30 "$log" >&2
        exit 1
    fi
    say "docker build: $1 ($((SECONDS - t)) s)"
}

images() {
    local base="$IMAGES/debian-bookworm-minbase-v$ROOTFS_VERSION.tar"
    local jre="$IMAGES/debian-bookworm-jre17-v$ROOTFS_VERSION.tar"
    if [ ! -f "$base" ] || [ ! -f "$jre" ]; then
        say "debootstrap: building the Debian base rootfs and a JRE one (once, about 2 min each; cached in $IMAGES)"
    fi
    rootfs "$(basename "$base" .tar)" "$BASE_PACKAGES"
    rootfs "$(basename "$jre" .tar)" "$JRE_PACKAGES"
    import "$base" debian:bookworm-slim
    import "$jre" authsync-local/debian-jre:bookworm

    # Each image gets a context of its own holding only what it copies.
    local ctx="$ENGINE_DIR/context"
    rm -rf "$ctx" && mkdir -p "$ctx"

    say "cargo: building the node binary (dev profile, dependencies optimised)"
    # (A first build of the whole dependency tree takes 16 to 35 minutes on 2 cores.)
    timeout 3600 cargo build --locked -q --bin authsync
    mkdir -p "$ctx/authsync"
    cp "$CARGO_TARGET_DIR/debug/authsync" "$ctx/authsync/authsync"
    build authsync:latest docker/authsync.local.Dockerfile "$ctx/authsync"

    say "kafka: Apache Kafka $KAFKA_VERSION's jars (scripts/kafka.sh libs)"
    # fetch first, its output (Maven's) to stderr: on a first fetch Maven writes escape
    # codes to stdout, which would end up in front of the path `libs` prints.
    AUTHSYNC_KAFKA_VERSION=$KAFKA_VERSION timeout 1200 scripts/kafka.sh fetch >&2
    local libs
    libs="$(AUTHSYNC_KAFKA_VERSION=$KAFKA_VERSION scripts/kafka.sh libs)"
    mkdir -p "$ctx/kafka"
    cp -r "$libs" "$ctx/kafka/libs"
    cp docker/kafka/* "$ctx/kafka/"
    build "apache/kafka:$KAFKA_VERSION" docker/kafka.Dockerfile "$ctx/kafka"

    # Debian's prometheus links only glibc, which the base image has (the same bookworm).
    mkdir -p "$ctx/prometheus"
    cp "$(command -v prometheus)" "$(command -v promtool)" "$ctx/prometheus/"
    cp -r /usr/share/prometheus/web "$ctx/prometheus/web" 2>/dev/null || mkdir -p "$ctx/prometheus/web"
    build prom/prometheus:v2.53.2 docker/prometheus.Dockerfile "$ctx/prometheus"
    rm -rf "$ctx"
    # What these builds superseded (a previous node binary, a re-imported base) is now
    # untagged, and under vfs every layer is a full copy: remove it. The label limits
    # this to images built on the imported rootfs, none of another project's.
    timeout 600 docker image prune -f --filter label=authsync.rootfs >/dev/null
}

# --- the cluster --------------------------------------------------------------------

up() {
    say "compose: up ${SERVICES[*]} (every service but grafana; waits for the brokers' healthchecks)"
    local t=$SECONDS
    # --no-build: authsync:latest is the image built above, not the repo's Dockerfile
    # (its Rust image cannot be pulled). compose itself waits for the brokers to be
    # healthy before it starts the nodes (depends_on: service_healthy).
    timeout 600 "${compose[@]}" up -d --no-build "${SERVICES[@]}"
    say "compose: every container started in $((SECONDS - t)) s"
}

down() {
    say "compose: down -v (containers, network, volumes; the images stay)"
    timeout 300 "${compose[@]}" down -v --remove-orphans || true
}

# The same before a run, quietly: it usually finds nothing to remove.
clean() {
    timeout 300 "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
}

logs_on_failure() {
    echo "== the services' last log lines" >&2
    timeout 60 "${compose[@]}" logs --no-color --tail 15 "${SERVICES[@]}" >&2 || true
}

run_test() {
    say "test: tests/compose.rs against the cluster"
    AUTHSYNC_TEST_COMPOSE=1 AUTHSYNC_COMPOSE_COMMAND="${compose_cmd[*]}" \
        timeout 1200 cargo test --locked -q --test compose -- --ignored --nocapture
}

run_chaos() {
    say "chaos: a 60 s seeded run against the compose cluster (--target compose)"
    local out="$ENGINE_DIR/chaos-compose.json"
    timeout 900 cargo run --locked -q -p authsync-chaos -- --target compose \
        --compose-file docker-compose.yml --project "$COMPOSE_PROJECT_NAME" \
        --compose-command "${compose_cmd[*]}" --api-key "$API_KEY" \
        --duration 60s --seed 7 --out "$out"
}

# The teardown, with the services' last logs first when the run failed.
on_exit() {
    local status=$?
    [ "$status" -eq 0 ] || logs_on_failure
    down
    exit "$status"
}

case "${1:-all}" in
all)
    tools
    engine
    images
    # A cluster left by a run that was killed before its teardown: start afresh (the
    # chaos run leaves test accounts behind, and the test wants a cluster it can stop).
    clean
    # From here on the cluster exists: take it down however the run ends (a signal
    # exits through the EXIT trap too).
    trap on_exit EXIT
    trap 'exit 130' INT TERM
    up
    run_test
    run_chaos
    say "done"
    ;;
images)
    tools
    engine
    images
    ;;
up)
    tools
    engine
    images
    up
    ;;
down)
    tools
    down
    ;;
*)
    echo "usage: $0 [all | images | up | down]" >&2
    exit 2
    ;;
esac
