#!/usr/bin/env bash
# make image-test: build the container image from the Dockerfile and run it.
#
# Needs root and Debian's debootstrap and podman (installed when missing).  Works
# without a container engine or cgroups:
#   1. debootstrap --variant=minbase bookworm, trimmed like the official slim image,
#      imported as docker.io/library/debian:bookworm-slim (cached as a tarball);
#   2. podman build --format docker (HEALTHCHECK is not part of OCI images) --pull=never
#      --isolation chroot;
#   3. podman create + podman mount, then the image's entrypoint run under chroot,
#      as the image's user, with the image's environment, on a free port that it writes
#      to a port file inside the mounted root (ATTNLM_PORT=0, ATTNLM_PORT_FILE=/tmp/port);
#   4. curl /health, /v1/model, /v1/score, /v1/generate (also streamed), the
#      HEALTHCHECK command, then SIGTERM during a generation: it must finish and
#      the server exit 0.
# Any failing step stops the script with a message and a non-zero status.
#
#   ATTNLM_IMAGE_CACHE  where the base tarball is kept (default ~/.cache/attnlm)
#   ATTNLM_IMAGE_MAX_MB the size the runtime image must stay under (default 150)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/lib/serve.sh
. tests/lib/serve.sh

image=attnlm:test
base=docker.io/library/debian:bookworm-slim
cache="${ATTNLM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnlm}"
tarball="$cache/bookworm-minbase-slim.tar"
max_mb="${ATTNLM_IMAGE_MAX_MB:-150}"

step() { printf '\n== %s\n' "$*"; }
die() { printf 'image-test: FAILED: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "needs root (debootstrap, podman build and chroot)"
  exec sudo -E bash "$0" "$@"
fi
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v podman >/dev/null || missing+=(podman)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]}"
fi

work="$(mktemp -d)"
ctr= mnt= pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  if [ -n "$ctr" ]; then podman umount "$ctr" >/dev/null 2>&1 || true; podman rm -f "$ctr" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- 1. the base image ----------------------------------------------------------------
if [ ! -s "$tarball" ]; then
  step "debootstrap --variant=minbase bookworm (cached in $tarball)"
  root="$work/rootfs"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap"; }
  # What the official slim image leaves out, also for packages installed later.
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
  mkdir -p "$cache"
  tar -C "$root" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  rm -rf "$root"
fi
step "base image $base from $tarball ($(du -m "$tarball" | cut -f1) MB)"
podman image rm -f "$base" >/dev/null 2>&1 || true
podman import --quiet "$tarball" "$base" >/dev/null || die "podman import"

# ---- 2. build ---------------------------------------------------------------------------
step "podman build --format docker --pull=never --isolation chroot -t $image ."
podman build --format docker --pull=never --isolation chroot -t "$image" . >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; die "podman build"; }
tail -3 "$work/build.log"
size_bytes="$(podman image inspect --format '{{.Size}}' "$image")"
size_mb=$((size_bytes / 1000000))
echo "image size: $size_mb MB ($size_bytes bytes; base $(( $(podman image inspect --format '{{.Size}}' "$base") / 1000000 )) MB)"
[ "$size_mb" -lt "$max_mb" ] || die "image is $size_mb MB, over $max_mb MB"

# ---- 3. run the entrypoint under chroot ----------------------------------------------
inspect() { podman image inspect --format "$1" "$image"; }
user="$(inspect '{{.Config.User}}')"
entry="$(inspect '{{json .Config.Entrypoint}}')"
health="$(inspect '{{json .Config.Healthcheck.Test}}')"
stopsig="$(inspect '{{.Config.StopSignal}}')"
echo "user $user, entrypoint $entry, stop signal $stopsig, health check $health"
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || die "the image runs as root"
[ "$stopsig" = SIGTERM ] || die "stop signal is '$stopsig', not SIGTERM"
mapfile -t env_list < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
mapfile -t entry_argv < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$entry")
mapfile -t health_argv < <(python3 -c 'import json,sys; t=json.loads(sys.argv[1]); assert t[0]=="CMD"; print("\n".join(t[1:]))' "$health")

ctr="$(podman create "$image")"
mnt="$(podman mount "$ctr")"
# The image's own environment, with the port moved to a free one that the server writes to a
# file inside its root (the network is the host's), and room for a generation long enough to
# be caught in flight by SIGTERM.
run_env=(env -i "${env_list[@]}" "ATTNLM_MAX_NEW_TOKENS=20000")
log="$work/server.log"
step "chroot $mnt as $user: ${entry_argv[*]} (ATTNLM_PORT=0, ATTNLM_PORT_FILE=/tmp/port)"
serve_start "$mnt/tmp/port" "$log" chroot --userspec="$user" "$mnt" \
  "${run_env[@]}" ATTNLM_PORT=0 ATTNLM_ADMIN_PORT=0 ATTNLM_PORT_FILE=/tmp/port "${entry_argv[@]}" \
  || die "the server did not start"
printf '%s\n' "${env_list[@]}" | grep -q '^ATTNLM_ADMIN_PORT=[0-9]' || die "the image sets no ATTNLM_ADMIN_PORT"
admin_port="$(sed -n 2p "$mnt/tmp/port")"
[[ "$admin_port" =~ ^[0-9]+$ ]] || die "no admin port in the port file (ATTNLM_ADMIN_PORT from the image)"
serve_log_has "listening on" || { cat "$log" >&2; die "no startup line"; }
sed -n 's/^attnlm: //p' "$log" | head -1
grep -q "listening on http://0.0.0.0:$port" "$log" || die "not listening on 0.0.0.0 (ATTNLM_HOST from the image)"

url="http://127.0.0.1:$port"
check() {  # check NAME EXPECTED_SUBSTRING CURL_ARGS...
  local name="$1" want="$2" out; shift 2
  out="$(curl -sS --max-time 60 -w '\n%{http_code}' "$@")" || die "$name: curl failed"
  local code="${out##*$'\n'}" body="${out%$'\n'*}"
  [ "$code" = 200 ] || die "$name: HTTP $code: $body"
  grep -q -- "$want" <<<"$body" || die "$name: no '$want' in: ${body:0:300}"
  echo "ok   $name: $(head -c 110 <<<"$body" | tr '\n' ' ')"
}
json=(-H 'Content-Type: application/json')
check "GET /health" '"status":"ok"' "$url/health"
check "GET /health on the admin port" '"status":"ok"' "http://127.0.0.1:$admin_port/health"
check "GET /ready" '"status":"ready"' "$url/ready"
check "GET /v1/model" '"file":"/models/model.safetensors"' "$url/v1/model"
check "POST /v1/score" '"perplexity"' "${json[@]}" -d '{"text":"Call me Ishmael."}' "$url/v1/score"
check "POST /v1/generate" '"finish_reason":"length"' "${json[@]}" \
  -d '{"prompt":"Call me Ishmael.","max_tokens":24,"seed":1}' "$url/v1/generate"
check "POST /v1/generate stream" 'data: \[DONE\]' -N "${json[@]}" \
  -d '{"prompt":"The sea","max_tokens":24,"seed":1,"stream":true}' "$url/v1/generate"
chroot --userspec="$user" "$mnt" "${run_env[@]}" "ATTNLM_PORT=$port" "ATTNLM_ADMIN_PORT=$admin_port" "${health_argv[@]}" \
  || die "the HEALTHCHECK command failed"
echo "ok   HEALTHCHECK ${health_argv[*]}: exit 0"

# ---- 4. SIGTERM drains a generation in flight -----------------------------------------
step "SIGTERM during a generation"
curl -sS --max-time 120 "${json[@]}" -d '{"prompt":"It was","max_tokens":20000,"seed":3}' \
  "$url/v1/generate" >"$work/long.json" &
client=$!
active() { curl -sS "$url/metrics" | awk '$1 == "attnlm_active_sequences" {print $2}'; }
for _ in $(seq 100); do
  [ "$(active)" = 1 ] && break
  sleep 0.05
done
[ "$(active)" = 1 ] || die "the long generation did not start"
kill -TERM "$pid"
wait "$client" || die "the generation in flight failed during the drain"
serve_wait
grep -q '"completion_tokens":20000' "$work/long.json" || die "the drained generation is incomplete: $(head -c 300 "$work/long.json")"
grep -q "draining (1 in flight" "$log" || { cat "$log" >&2; die "the server did not report draining"; }
[ "$rc" -eq 0 ] || { tail -5 "$log" >&2; die "the server exited with $rc after SIGTERM"; }
[ ! -e "$mnt/tmp/port" ] || die "the port file is left after a clean exit"
echo "ok   in-flight generation completed (20000 tokens); server exit status 0"
tail -2 "$log" | sed 's/^/     /'

# ---- 5. every model the image carries, in one server ----------------------------------
step "all the image's models: ATTNLM_MODEL=/models/model.safetensors,/models/gru-*.safetensors"
all_models="/models/model.safetensors"
for m in additive dot cosine multihead; do
  [ -f "$mnt/models/gru-$m.safetensors" ] || die "the image has no /models/gru-$m.safetensors"
  all_models="$all_models,/models/gru-$m.safetensors"
done
rm -f "$mnt/tmp/port"
serve_start "$mnt/tmp/port" "$log" chroot --userspec="$user" "$mnt" \
  "${run_env[@]}" ATTNLM_PORT=0 ATTNLM_ADMIN_PORT=0 ATTNLM_PORT_FILE=/tmp/port "ATTNLM_MODEL=$all_models" \
  "${entry_argv[@]}" || die "the server with every model did not start"
url="http://127.0.0.1:$port"
models_json="$(curl -sS --max-time 30 "$url/v1/models")" || die "GET /v1/models failed"
n_models="$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]))' <<<"$models_json")"
[ "$n_models" = 5 ] || die "GET /v1/models lists $n_models models, not 5: ${models_json:0:300}"
echo "ok   GET /v1/models: 5 models"
i=0
for m in additive dot cosine multihead; do
  i=$((i + 1))
  name="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][int(sys.argv[1])]["id"])' "$i" <<<"$models_json")"
  check "GET /v1/model?model=$name" "\"attention\":\"$m\"" "$url/v1/model?model=$name"
  check "POST /v1/score with model $name" '"perplexity"' "${json[@]}" \
    -d "{\"model\":\"$name\",\"text\":\"Call me Ishmael.\"}" "$url/v1/score"
done
kill -TERM "$pid"
serve_wait
[ "$rc" -eq 0 ] || { tail -5 "$log" >&2; die "the server with every model exited with $rc after SIGTERM"; }

step "image-test passed: $image, $size_mb MB"
