#!/usr/bin/env bash
# Chat clients (test.mjs: openai, LangChain.js ChatOpenAI, the AI SDK's openai-compatible
# chatModel) against attnlm-server's /v1/chat/completions on the default model.
#   ATTNLM_SERVER  server binary (default build/attnlm-server, relative to the repo)
# Installs the pinned clients (package-lock.json) into node_modules on first use, and when the
# lock file changes.  Exits non-zero if a check fails, the server does not start, or the server
# does not exit with status 0 on SIGTERM.
set -euo pipefail
# shellcheck source=tests/lib/client.sh
. "$(dirname "$0")/../../lib/client.sh" "chat test"
stamp="$here/node_modules/.lock-sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "chat test: installing the pinned clients (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
echo "chat test: $(cd "$here" && node -e 'const l=require("./package-lock.json").packages;console.log(["openai","@langchain/openai","ai","@ai-sdk/openai-compatible"].map(n=>n+"@"+l["node_modules/"+n].version).join(", "))') on node $(node --version)"

port="" rc=0
serve_start "$work/port" "$log" "$server" --host 127.0.0.1 --port 0 --port-file "$work/port" --model "$model" \
  || { echo "chat test: the server did not start" >&2; exit 1; }
name="$(python3 -c 'import json,struct,sys; r=open(sys.argv[1],"rb").read(); n=struct.unpack("<Q",r[:8])[0]; print(json.loads(r[8:8+n])["__metadata__"]["name"])' "$model")"
failures=0
node "$here/test.mjs" "http://127.0.0.1:$port/v1" "$name" || failures=1
serve_stop TERM
if [ "$rc" -ne 0 ]; then
  tail -5 "$log" >&2
  echo "FAIL server exited with status $rc after SIGTERM (expected 0)"
  failures=1
fi
[ "$failures" -eq 0 ] || { echo "chat test: FAILED"; exit 1; }
echo "chat test: all passed"
