# shellcheck shell=bash
# client.sh -- what the npm client tests share (tests/http/openai/run.sh, tests/http/chat/run.sh):
# sourced as `. tests/lib/client.sh NAME` from a script in tests/http/<dir>/, it sets here, root,
# server (ATTNLM_SERVER, default build/attnlm-server) and model, checks node and the server
# binary, sources serve.sh, makes the scratch directory work (log: its server log) and stops the
# server and removes work at exit.  NAME prefixes its messages.
# shellcheck disable=SC2034
client_name="$1"
here="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cd "$root"
server="${ATTNLM_SERVER:-build/attnlm-server}"
model="models/default.safetensors"
command -v node >/dev/null || { echo "$client_name: node is missing (make test-deps installs it)" >&2; exit 1; }
[ -x "$server" ] || { echo "$client_name: no server binary $server" >&2; exit 1; }
# shellcheck source=tests/lib/serve.sh
. "$root/tests/lib/serve.sh"
work="$(mktemp -d)"
log="$work/server.log"
pid=
client_cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap client_cleanup EXIT
