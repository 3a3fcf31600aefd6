#!/usr/bin/env bash
# The quick start on a fresh machine: installs what the build needs, builds, and runs
# `authsync demo` (three regions and an embedded broker, no other setup). Arguments go
# to the demo: scripts/demo.sh --port 9001 --data-dir ./demo-data
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=packages.sh
. scripts/packages.sh

echo "authsync demo: checking the build's system packages"
install_packages "${BUILD_PACKAGES[@]}"
# The same build directory as the test command's, so neither builds twice.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/authsync-target}"
first_build_notice
echo "building authsync (cargo build --locked), then starting the demo"
cargo build --locked --bin authsync
exec "$CARGO_TARGET_DIR/debug/authsync" demo "$@"
