#!/usr/bin/env bash
# The test command: installs what the build and the tests need, then runs every test,
# saying before each stage what it does and, at the end, how long each stage took.
# Usage: scripts/test.sh [extra cargo test args, for the first test stage]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=packages.sh
. scripts/packages.sh

timings=()
stage_name=""
stage_start=$SECONDS
# stage NAME: ends the running stage (recording its time) and announces the next.
stage() {
    if [ -n "$stage_name" ]; then
        timings+=("$(printf '%5d s  %s' $((SECONDS - stage_start)) "$stage_name")")
    fi
    stage_name="$1"
    stage_start=$SECONDS
    [ -z "$1" ] || echo "== [$(date -u +%H:%M:%S)] $1"
}
summary() {
    stage ""
    echo "== stage times"
    printf '%s\n' "${timings[@]}"
    printf '%5d s  in all\n' "$SECONDS"
}

stage "system packages"
# Besides the build's: a Java runtime and Maven for Apache Kafka (its jars come from
# Maven Central), Prometheus (server and promtool) for the observability tests, and
# what the tests run: kill (procps) to stop nodes, python3 for the chaos harness's
# loopback checks and scripts/kafka.sh.
# (The Docker engine, compose and debootstrap are scripts/compose.sh's, in the last stage.)
install_packages "${BUILD_PACKAGES[@]}" openjdk-17-jre-headless maven prometheus \
    procps python3

stage "Apache Kafka's jars (scripts/kafka.sh fetch; cached under ~/.cache/authsync-tools)"
scripts/kafka.sh fetch

# One build directory outside the clone, reused across runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/authsync-target}"
stage "build: every test target and the chaos harness"
first_build_notice
cargo test --locked --all-targets --no-run -q
cargo build --locked -q -p authsync-chaos
cargo test --locked -q -p authsync-chaos --no-run

stage "tests on the embedded broker (librdkafka's mock cluster), criterion benches once each"
cargo test --locked --all-targets "$@"

stage "the chaos harness's own tests"
cargo test --locked -p authsync-chaos

stage "schemathesis: the API fuzzed from its /openapi.json on a demo, 50 cases per operation"
scripts/schemathesis.sh 50

stage "relying parties nobody here wrote (authlib, openid-client) through the OpenID Connect flows"
scripts/relying-parties.sh

# One Apache Kafka broker (KRaft, one process on loopback) for the next stage's tests,
# which share it on their own topic prefixes, one test at a time: the outage tests kill
# it with SIGKILL and start it again on the same log dirs.
kafka_dir="$(mktemp -d "${TMPDIR:-/tmp}/authsync-kafka-XXXXXX")"
trap 'scripts/kafka.sh stop "$kafka_dir" || true' EXIT
stage "replication, recovery and erase tests on Apache Kafka (with the compaction check)"
echo "broker: Apache Kafka at $(scripts/kafka.sh start "$kafka_dir"), log dirs in $kafka_dir"
AUTHSYNC_TEST_KAFKA_DIR="$kafka_dir" cargo test --locked --test replication --test recovery \
    --test erase -- --include-ignored --test-threads=1
scripts/kafka.sh stop "$kafka_dir"

stage "chaos: a 120 s mixed-fault run on Apache Kafka, broker-restart included"
# Network namespaces need CAP_SYS_ADMIN: as root directly, otherwise in a user namespace.
as_root=()
if [ "$(id -u)" != 0 ]; then as_root=(unshare --user --map-root-user); fi
"${as_root[@]}" cargo run --locked -q -p authsync-chaos -- --duration 120s --seed 7 \
    --broker kafka --out "${TMPDIR:-/tmp}/authsync-chaos-ci.json"

stage "dashboards and alert rules against a real Prometheus (Debian's package)"
AUTHSYNC_TEST_PROMETHEUS="$(command -v prometheus)" AUTHSYNC_TEST_PROMTOOL="$(command -v promtool)" \
    cargo test --locked --test observability -- --ignored --test-threads=1

stage "docker compose: the three regions on locally built images, tests/compose.rs, a 60 s chaos run"
# scripts/compose.sh installs the Docker engine and debootstrap, starts dockerd (vfs),
# builds the images the compose file names (no registry is reachable), brings the real
# docker-compose.yml up, runs the compose test and `chaos --target compose`, and tears
# the cluster down (the images stay cached for the next run).
scripts/compose.sh all

summary
