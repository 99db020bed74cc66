#!/usr/bin/env bash
# The official openai npm client (test.mjs) against attnlm-server: without an API
# key, with --api-key secret (right key works, wrong key 401), and against a server
# of several models, once per model, each asked for by name.
#   ATTNLM_SERVER  server binary (default build/attnlm-server, relative to the repo)
# Installs the pinned client (package-lock.json) into node_modules on first use.
# Exits non-zero if a check fails, the server does not start, or the server
# does not exit with status 0 on SIGTERM.
set -euo pipefail
# shellcheck source=tests/lib/client.sh
. "$(dirname "$0")/../../lib/client.sh" "openai test"

# Install when node_modules is missing or holds another version than the lock file pins.
pinned="$(node -e 'console.log(require(process.argv[1]).packages["node_modules/openai"].version)' "$here/package-lock.json")"
installed="$(node -e 'try { console.log(require(process.argv[1]).version) } catch { console.log("none") }' \
  "$here/node_modules/openai/package.json")"
if [ "$installed" != "$pinned" ]; then
  echo "openai test: installing openai@$pinned (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "openai test: openai@$pinned on node $(node --version), server $server"

failures=0
run_with() {  # run_with CLIENT_KEY SERVER_KEY MODEL_FILE... ; ATTNLM_TEST_MODEL names the model to test
  local client_key="$1" server_key="$2" port="" rc=0 m
  shift 2
  local flags=(--host 127.0.0.1 --port 0 --port-file "$work/port")
  for m in "$@"; do flags+=(--model "$m"); done
  [ -n "$server_key" ] && flags+=(--api-key "$server_key")
  serve_start "$work/port" "$log" "$server" "${flags[@]}" \
    || { echo "openai test: the server did not start" >&2; exit 1; }
  node "$here/test.mjs" "http://127.0.0.1:$port/v1" "$client_key" "$server_key" || failures=$((failures + 1))
  serve_stop TERM
  if [ "$rc" -ne 0 ]; then
    tail -5 "$log" >&2
    echo "FAIL server exited with status $rc after SIGTERM (expected 0)"
    failures=$((failures + 1))
  else
    echo "ok   server exited with status 0 after SIGTERM"
  fi
}

run_with unused "" "$model"
run_with secret secret "$model"
# Several models: the second one, asked for by name (the first is what the runs above test).
# It is the default model under another name, so every check, the trained ones included, holds.
second="$work/renamed.safetensors"
python3 - "$model" "$second" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
header["__metadata__"]["name"] = "second model"
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * ((8 - (8 + len(h)) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n:])
PY
ATTNLM_TEST_MODEL="second model" run_with unused "" "$model" "$second"
if [ "$failures" -ne 0 ]; then
  echo "openai test: FAILED ($failures failing run(s) or server exit(s))"
  exit 1
fi
echo "openai test: all passed"
