#!/usr/bin/env bash
# Runs relying parties that nobody here wrote against a running `authsync demo`: a
# platform's back end with authlib (PyPI) and one with openid-client (npm), each
# through the code flow with PKCE, ID token checks with its own code, userinfo,
# refresh, introspection, revocation, and single sign-on at a second region; then a
# real browser (Debian's Chromium driven by playwright-core) on the hosted page, with
# screenshots (tests/rp/). Installs Python's venv, Node.js, npm and Chromium from
# Debian when missing, and the libraries once, under ~/.cache/authsync-tools.
#
# Usage: scripts/relying-parties.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
install_packages python3-venv chromium
# Node.js and npm from Debian unless some are installed already (another packaging of
# Node.js brings its own npm, which Debian's npm package would conflict with).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    install_packages nodejs npm
fi

tools="$HOME/.cache/authsync-tools"
py="$tools/rp-python-authlib-1.6.5"
if [ ! -x "$py/bin/python" ] || ! "$py/bin/python" -c "import authlib, requests, cryptography" 2>/dev/null; then
    echo "installing authlib 1.6.5 into $py"
    python3 -m venv "$py"
    "$py/bin/pip" install -q "authlib==1.6.5" "requests==2.34.2" "cryptography==50.0.2"
fi
node_dir="$tools/rp-node-$(sha256sum tests/rp/package-lock.json | cut -c1-12)"
if [ ! -d "$node_dir/node_modules/openid-client" ]; then
    echo "installing openid-client (tests/rp/package-lock.json) into $node_dir"
    mkdir -p "$node_dir"
    cp tests/rp/package.json tests/rp/package-lock.json "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund --silent)
fi
# Run from beside their node_modules, so that their imports resolve there.
cp tests/rp/openid_client_rp.mjs tests/rp/browser.mjs "$node_dir/"

target="${CARGO_TARGET_DIR:-$HOME/.cache/authsync-target}"
bin="$target/debug/authsync"
[ -x "$bin" ] || cargo build --locked -q
work="$(mktemp -d "${TMPDIR:-/tmp}/authsync-rp-XXXXXX")"
key="rp-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
port=18291
"$bin" demo --api-key "$key" --data-dir "$work/data" --port "$port" >"$work/demo.log" 2>&1 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true' EXIT
first="http://127.0.0.1:$port"
second="http://127.0.0.1:$((port + 1))"
for _ in $(seq 1 120); do
    if python3 -c "import urllib.request; [urllib.request.urlopen(u + '/readyz', timeout=1) for u in ('$first', '$second')]" 2>/dev/null; then
        break
    fi
    sleep 0.5
done

"$py/bin/python" tests/rp/authlib_rp.py "$first" "$second" "$key"
node "$node_dir/openid_client_rp.mjs" "$first" "$second" "$key"
shots="${TMPDIR:-/tmp}/authsync-browser-shots"
node "$node_dir/browser.mjs" "$first" "$second" "$key" "$shots"

if grep -q "panicked" "$work/demo.log"; then
    echo "the demo logged a panic:" >&2
    grep -n "panicked" "$work/demo.log" >&2
    exit 1
fi
rm -rf "$work"
