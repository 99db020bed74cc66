#!/usr/bin/env bash
# The inspector page (ui/, served by attnlm-server at /) in Debian's chromium,
# driven by playwright-core (test.mjs): two runs, the default model behind an
# API key and two fixture models for the comparison views.
#   ATTNLM_SERVER         server binary (default build/attnlm-server, relative to the repo)
#   CHROMIUM              the browser (default /usr/bin/chromium; make test-ui installs it)
#   ATTNLM_UI_SCREENSHOT  where the screenshot goes (default build/ui/inspector.png)
# Installs the pinned playwright-core (package-lock.json) into node_modules on
# first use; it drives the installed browser and downloads none.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
server="${ATTNLM_SERVER:-build/attnlm-server}"
browser="${CHROMIUM:-/usr/bin/chromium}"

command -v node >/dev/null || { echo "ui test: node is missing (make test-deps installs it)" >&2; exit 1; }
[ -x "$browser" ] || { echo "ui test: no browser at $browser (make test-ui installs chromium)" >&2; exit 1; }
[ -x "$server" ] || { echo "ui test: no server binary $server" >&2; exit 1; }

pinned="$(node -e 'console.log(require(process.argv[1]).packages["node_modules/playwright-core"].version)' "$here/package-lock.json")"
installed="$(node -e 'try { console.log(require(process.argv[1]).version) } catch { console.log("none") }' \
  "$here/node_modules/playwright-core/package.json")"
if [ "$installed" != "$pinned" ]; then
  echo "ui test: installing playwright-core@$pinned (npm ci)"
  (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
echo "ui test: playwright-core@$pinned, $("$browser" --version 2>/dev/null | head -1), node $(node --version), server $server"
CHROMIUM="$browser" exec node "$here/test.mjs" "$server"
