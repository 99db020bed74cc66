#!/usr/bin/env bash
# make install-test: `make install` and the systemd unit, checked without a running systemd.
#   1. make install DESTDIR=... PREFIX=/usr puts exactly the expected files, with the unit's
#      paths rewritten to the PREFIX;
#   2. make install PREFIX=<temp dir>: `systemd-analyze verify` accepts the installed unit and
#      `systemd-analyze security --offline` rates its exposure (must stay under 3.0);
#   3. the unit's ExecStart, run with the unit's Environment= and as an unprivileged user,
#      serves /health and exits 0 on the unit's KillSignal;
#   4. make uninstall removes what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/lib/serve.sh
. tests/lib/serve.sh
die() { printf 'install-test: FAILED: %s\n' "$*" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null; then
  echo "install-test: installing systemd (for systemd-analyze)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
work="$(mktemp -d)"
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
chmod 0755 "$work"

echo "== make install DESTDIR=\$tmp PREFIX=/usr"
make -s install DESTDIR="$work/dest" PREFIX=/usr >/dev/null
got="$(cd "$work/dest" && find . -type f -printf '%m %p\n' | sort)"
want="644 ./usr/lib/systemd/system/attnlm.service
644 ./usr/share/attnlm/models/default.safetensors
755 ./usr/bin/attnlm
755 ./usr/bin/attnlm-server"
[ "$got" = "$want" ] || die "installed files differ:
$got"
unit="$work/dest/usr/lib/systemd/system/attnlm.service"
grep -qx 'ExecStart=/usr/bin/attnlm-server' "$unit" || die "ExecStart not rewritten to /usr: $(grep ExecStart "$unit")"
grep -qx 'Environment=ATTNLM_MODEL=/usr/share/attnlm/models/default.safetensors' "$unit" || die "model path not rewritten"
! grep -v "^#" "$unit" | grep -q /usr/local || die "the unit still names /usr/local"
echo "ok   $(wc -l <<<"$got") files, unit paths under /usr"

echo "== make install PREFIX=\$tmp; systemd-analyze"
prefix="$work/prefix"
make -s install PREFIX="$prefix" >/dev/null
unit="$prefix/lib/systemd/system/attnlm.service"
systemd-analyze verify "$unit" || die "systemd-analyze verify"
echo "ok   systemd-analyze verify"
exposure="$(systemd-analyze security --offline=true "$unit" 2>/dev/null |
  sed -n 's/.*Overall exposure level for attnlm.service: \([0-9.]*\).*/\1/p')"
[ -n "$exposure" ] || die "systemd-analyze security gave no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e < 3.0) }' || die "exposure level $exposure (want < 3.0)"
echo "ok   systemd-analyze security: exposure $exposure"
for key in DynamicUser=yes ProtectSystem=strict NoNewPrivileges=yes Restart=on-failure KillSignal=SIGTERM; do
  grep -qx "$key" "$unit" || die "the unit lacks $key"
done

echo "== the unit's command, environment and signal, as nobody"
exec_start="$(sed -n 's/^ExecStart=//p' "$unit")"
mapfile -t unit_env < <(sed -n 's/^Environment=//p' "$unit")
run="$work/run"  # where nobody may write the port file
install -d -o 65534 -g 65534 "$run"
log="$work/server.log"
serve_start "$run/port" "$log" setpriv --reuid=65534 --regid=65534 --clear-groups \
  env -i "${unit_env[@]}" ATTNLM_HOST=127.0.0.1 ATTNLM_PORT=0 ATTNLM_ADMIN_PORT=0 ATTNLM_PORT_FILE="$run/port" $exec_start \
  || die "the server did not start"
"$prefix/bin/attnlm-server" --health --port "$port" || die "--health against the installed server"
sig="$(sed -n 's/^KillSignal=SIG//p' "$unit")"
serve_stop "$sig"
[ "$rc" -eq 0 ] || { cat "$log" >&2; die "exit status $rc after SIG$sig"; }
[ ! -e "$run/port" ] || die "the port file is left after a clean exit"
serve_log_has "listening on" || die "no startup line"
echo "ok   $(sed -n 's/^attnlm: listening on //p' "$log" | cut -d' ' -f1-4); /health 200; exit 0 on SIG$sig"

echo "== make uninstall"
make -s uninstall PREFIX="$prefix" >/dev/null
left="$(find "$prefix" -type f)"
[ -z "$left" ] || die "left behind: $left"
echo "ok   nothing left"
echo "install-test passed"
