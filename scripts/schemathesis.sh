#!/usr/bin/env bash
# Fuzzes the HTTP API of a running `authsync demo` with schemathesis, from the API's own
# OpenAPI document (/openapi.json): no answer may be a 5xx, every status must be one the
# document lists, and every body, content type and header must match it.
#
# Usage: scripts/schemathesis.sh [MAX_EXAMPLES]   (default 50 per operation)
# schemathesis is installed into a virtualenv under ~/.cache/authsync-tools, once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
install_packages python3-venv

version=4.32.5
venv="$HOME/.cache/authsync-tools/schemathesis-$version"
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$version"
fi

target="${CARGO_TARGET_DIR:-$HOME/.cache/authsync-target}"
bin="$target/debug/authsync"
[ -x "$bin" ] || cargo build --locked -q
work="$(mktemp -d "${TMPDIR:-/tmp}/authsync-schemathesis-XXXXXX")"
key="schemathesis-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
port=18281
"$bin" demo --api-key "$key" --data-dir "$work/data" --port "$port" >"$work/demo.log" 2>&1 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true' EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('$url/readyz', timeout=1)" 2>/dev/null; then
        break
    fi
    sleep 0.5
done

# Revoking an API key is left out: the fuzzer would revoke the key it runs with.
# It runs in the work directory, where it keeps its cache (.schemathesis/), not in the clone.
(cd "$work" && "$venv/bin/schemathesis" run "$url/openapi.json" \
    -H "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --exclude-operation-id revoke_api_key \
    --max-examples "${1:-50}" --workers 1 --request-timeout 40 --seed 17 --no-color)

if grep -q "panicked" "$work/demo.log"; then
    echo "the demo logged a panic:" >&2
    grep -n "panicked" "$work/demo.log" >&2
    exit 1
fi
rm -rf "$work"
