#!/usr/bin/env bash
# Runs the official openai npm client (test.mjs) against attnlm-server, without
# and with an API key.  Installs the pinned client on first use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
server="${ATTNLM_SERVER:-$root/build/attnlm-server}"
cd "$root"
command -v node >/dev/null || { echo "openai test: node is missing (make deps installs it)"; exit 1; }
if [ ! -d "$here/node_modules/openai" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --silent)
fi

log="$(mktemp)"
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT

run_with() {  # run_with KEY [server flags...]
  local key="$1"; shift
  "$server" --host 127.0.0.1 --port 0 --model models/default.safetensors "$@" 2>"$log" &
  pid=$!
  local port=
  for _ in $(seq 300); do
    port="$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")"
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "openai test: server exited"; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$log"; echo "openai test: server did not start"; exit 1; }
  node "$here/test.mjs" "http://127.0.0.1:$port/v1" "$key"
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  pid=
  [ "$rc" -eq 0 ] || { tail -20 "$log"; echo "openai test: server exited with $rc"; exit 1; }
}

run_with unused
run_with sekret --api-key sekret
