#!/usr/bin/env bash
# Installs what the build and the tests need, then runs every test.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a C++ compiler and libclang for RocksDB (and its bindgen), protoc
# for the .proto file, OpenSSL and zlib headers for librdkafka (TLS, compression),
# Prometheus (server and promtool) for the observability tests, docker-compose to check
# the compose file (no Docker engine is needed for that), and what the tests run:
# kill (procps) to stop nodes, python3 for the chaos harness's loopback checks.
need=()
for pkg in g++ libclang-dev protobuf-compiler libssl-dev zlib1g-dev pkg-config make prometheus docker-compose procps python3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# One build directory outside the clone, reused across runs (RocksDB and librdkafka
# with the rest of the dependency tree took 34 minutes to build cold here).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/authsync-target}"
# The real broker for the replication tests: tansu, an Apache-Kafka-compatible broker
# published as a Rust crate, built once into a cache outside the clone (10-20 minutes on two
# cores the first time). Each replication test starts its own tansu process on a free
# loopback port with SQLite storage, and kills and restarts it where the test says.
TOOLS="${AUTHSYNC_TOOLS_DIR:-$HOME/.cache/authsync-tools}"
TANSU="$TOOLS/bin/tansu"
if [ ! -x "$TANSU" ]; then
    echo "building the test broker (tansu 0.6.0) into $TOOLS"
    CARGO_TARGET_DIR="$TOOLS/target" cargo install tansu --version 0.6.0 --locked \
        --features libsql,dynostore --root "$TOOLS" --quiet
fi

# Everything, with the embedded broker (librdkafka's mock cluster) for replication.
# --all-targets also runs each criterion benchmark once, as a test.
cargo test --locked --all-targets "$@"

echo "== the chaos harness: its parts, then a 120 s mixed-fault run =="
cargo test --locked -p authsync-chaos
# Network namespaces need CAP_SYS_ADMIN: as root directly, otherwise in a user namespace.
as_root=()
if [ "$(id -u)" != 0 ]; then as_root=(unshare --user --map-root-user); fi
"${as_root[@]}" env -u AUTHSYNC_TEST_TANSU cargo run --locked -q -p authsync-chaos -- --duration 120s --seed 7 \
    --out "${TMPDIR:-/tmp}/authsync-chaos-ci.json"

echo "== replication tests again, against a real broker process (tansu) =="
AUTHSYNC_TEST_TANSU="$TANSU" cargo test --locked --test replication --test recovery --test erase -- --test-threads=1

echo "== dashboards and alert rules against a real Prometheus (Debian's package) =="
AUTHSYNC_TEST_PROMETHEUS="$(command -v prometheus)" AUTHSYNC_TEST_PROMTOOL="$(command -v promtool)" \
    cargo test --locked --test observability -- --ignored --test-threads=1

echo "== docker compose config =="
if docker compose version >/dev/null 2>&1; then
    docker compose -f docker-compose.yml config --quiet
else
    docker-compose -f docker-compose.yml config --quiet
fi
echo "compose file valid"
