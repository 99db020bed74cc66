#!/usr/bin/env bash
# make bench-http: the service under load, on this machine.
#
#   bench/http.sh SERVER_BIN STREAMS_BIN MODEL
#
# Starts SERVER_BIN on an ephemeral loopback port with its default flags, then
#   1. POST /v1/score on a fixed 230-byte English text (bench/score.lua) with
#      wrk -t1 at 1, 8 and 64 connections for BENCH_SECONDS (default 10) each:
#      requests/s, p50/p90/p99 latency, non-2xx responses (503 = queue full)
#   2. streaming /v1/generate (256 tokens each) from STREAMS_BIN with 1, 8 and
#      32 concurrent streams, each stream starting requests back to back for
#      BENCH_SECONDS: aggregate and per-stream tokens/s, time to first token, errors
# and, for every phase, the change of the server's batch-size histograms in
# /metrics; then
#   3. the same /v1/score load at c=8 on a fresh server per precision (f32, bf16,
#      int8), with the prefix cache off (--prefix-cache 0: every request scores
#      its 230 bytes, so the kernels do the work) and on (the default: after the
#      first request the whole text is a hit), side by side; where the kernels are
#      AMX, bf16 and int8 cold once more on the next table (--kernels avx512bf16).
# Ends with a summary table; the targets are reported, not asserted.
# BENCH_PRECISION (f32, bf16 or int8; default f32) is the server's --precision.
# Under load from other processes the figures drop: the machine's load average
# is printed before and after.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: bench/http.sh SERVER_BIN STREAMS_BIN MODEL" >&2
  exit 2
fi
server="$1" streams="$2" model="$3"
here="$(cd "$(dirname "$0")" && pwd)"
dur="${BENCH_SECONDS:-10}"
precision="${BENCH_PRECISION:-f32}"
began=$SECONDS

command -v wrk >/dev/null || { echo "bench-http: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
[ -x "$server" ] || { echo "bench-http: no server binary $server" >&2; exit 1; }
[ -x "$streams" ] || { echo "bench-http: no stream client $streams" >&2; exit 1; }
[ -r "$model" ] || { echo "bench-http: no model $model" >&2; exit 1; }

# shellcheck source=tests/lib/serve.sh
. "$here/../tests/lib/serve.sh"
work="$(mktemp -d)"
log="$work/server.log" before="$work/before" after="$work/after"
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== machine"
cpuinfo() { sed -n "s/^$1[[:space:]]*: //p" /proc/cpuinfo | head -1; }
echo "cpu:    $(cpuinfo 'model name'), family $(cpuinfo 'cpu family') model $(cpuinfo model);" \
     "$(nproc) cores online ($(grep -c '^processor' /proc/cpuinfo) in /proc/cpuinfo)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (load average at start)"
echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), $(awk '/^MemAvailable/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) available"
echo "kernel: $(uname -srm)"
echo "wrk:    $(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//')"
echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"

serve_start "$work/port" "$log" "$server" --host 127.0.0.1 --port 0 --model "$model" --port-file "$work/port" \
  --precision "$precision" \
  || { echo "bench-http: the server did not start" >&2; exit 1; }
serve_log_has "listening on" || true
echo "server: $(sed -n 's/^attnlm: listening on //p' "$log" | head -1)"
echo "        default flags (workers = cores, queue 64, max batch 32), --precision $precision"
echo "        kernels: $(sed -n 's/.*, kernels \(.*\), sha256 .*/\1/p' "$log" | head -1)"

# Plain HTTP/1.0 over bash's /dev/tcp: no curl needed; the body is never chunked.
http() {  # http METHOD PATH [JSON_BODY] -> the raw response
  local fd
  exec {fd}<>"/dev/tcp/127.0.0.1/$port"
  if [ $# -ge 3 ]; then
    printf '%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
      "$1" "$2" "$(printf '%s' "$3" | wc -c)" "$3" >&"$fd"
  else
    printf '%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" "$2" >&"$fd"
  fi
  cat <&"$fd"
  exec {fd}<&-
}
scrape() {  # scrape FILE: the histogram and request-count lines of /metrics
  http GET /metrics | tr -d '\r' | grep -E '^attnlm_(forward_)?batch_size_|^attnlm_requests_total\{' >"$1" || true
}
# hist_delta NAME: "mean batch M (sum S / count C); size: count ..." for one histogram,
# from the cumulative buckets in $before and $after (per-range counts, zero ranges left out).
hist_delta() {
  awk -v name="$1" '
    function key(line) { return substr(line, 1, index(line, " ") - 1) }
    FNR == NR { v[key($0)] = $NF; next }
    {
      d = $NF - v[key($0)]
      if (index($0, name "_bucket{le=\"") == 1) {
        le = $0; sub(/^[^"]*"/, "", le); sub(/".*/, "", le)
        les[++nb] = le; cum[nb] = d
      } else if (index($0, name "_sum ") == 1) s = d
      else if (index($0, name "_count ") == 1) c = d
    }
    END {
      if (nb == 0) { print "(no " name " in /metrics)"; exit }
      out = sprintf("mean %.2f (sum %g / count %d)", c ? s / c : 0, s, c)
      prev = 0; lo = 1; sep = "; sizes "
      for (i = 1; i <= nb; i++) {
        n = cum[i] - prev; prev = cum[i]
        hi = les[i]
        label = (hi == "+Inf") ? ">" (lo - 1) : ((lo == hi + 0) ? hi : lo "-" hi)
        if (n > 0) { out = out sep label ":" n; sep = " " }
        if (hi != "+Inf") lo = hi + 1
      }
      print out
    }' "$before" "$after"
}
statuses() {  # statuses ROUTE: "200=N 503=M" answered on ROUTE between $before and $after
  awk -v route="$1" '
    FNR == NR { v[$1] = $2; next }
    index($0, "route=\"" route "\"") {
      st = $0; sub(/.*status="/, "", st); sub(/".*/, "", st)
      if (st == "other") st = "other(499 client closed)"
      d = $2 - v[$1]; if (d > 0) out = out (out ? " " : "") st "=" d
    }
    END { print out ? out : "none" }' "$before" "$after"
}
batch_report() {  # after a phase: both batch histograms' deltas
  echo "   batch size (attnlm_batch_size, sequences per decoding step): $(hist_delta attnlm_batch_size)"
  if grep -q '^attnlm_forward_batch_size_count' "$after"; then
    echo "   scoring requests per forward pass (attnlm_forward_batch_size): $(hist_delta attnlm_forward_batch_size)"
  fi
}

# The text is in score.lua (wrk's body); check it is what the bench says it is.
body="$(sed -n "s/^wrk\.body = '\(.*\)'$/\1/p" "$here/score.lua")"
text="$(sed -n 's/^{"text":"\(.*\)"}$/\1/p' <<<"$body")"
resp="$(http POST /v1/score "$body" | tr -d '\r')"
n_in="$(sed -n 's/.*"usage":{"input_tokens":\([0-9]*\)}.*/\1/p' <<<"$resp")"
if [ "$(head -1 <<<"$resp" | cut -d' ' -f2)" != 200 ] || [ "$n_in" != 230 ] || [ "$(printf '%s' "$text" | wc -c)" != 230 ]; then
  echo "bench-http: bench/score.lua's text is not a 230-byte text the server scores:" >&2
  head -c 600 <<<"$resp" >&2; echo >&2
  exit 1
fi
echo "score text: ${#text} bytes, $n_in input tokens: \"${text:0:60}...\""

declare -A S

echo
echo "== 1. POST /v1/score, 230-byte text: wrk -t1 -c{1,8,64} -d${dur}s --latency -s bench/score.lua"
for c in 1 8 64; do
  scrape "$before"
  out="$(wrk -t1 -c"$c" -d"${dur}s" --latency -s "$here/score.lua" "http://127.0.0.1:$port/v1/score")"
  sleep 1  # wrk stops with requests in flight: let the server finish them before counting
  scrape "$after"
  rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
  p50="$(awk '$1 == "50%" {print $2}' <<<"$out")"
  p90="$(awk '$1 == "90%" {print $2}' <<<"$out")"
  p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
  total="$(awk '/ requests in / {print $1}' <<<"$out")"
  non2xx="$(awk -F: '/Non-2xx or 3xx responses/ {gsub(/ /, "", $2); print $2}' <<<"$out")"
  sockerr="$(sed -n 's/^ *Socket errors: //p' <<<"$out")"
  printf ' c=%-2s  %9s req/s   latency p50 %-8s p90 %-8s p99 %-8s  %s requests, non-2xx %s%s\n' \
    "$c" "$rps" "$p50" "$p90" "$p99" "$total" "${non2xx:-0}" "${sockerr:+, socket errors: $sockerr}"
  echo "   statuses from /metrics: $(statuses /v1/score)"
  batch_report
  S[rps$c]="$rps" S[p50_$c]="$p50" S[p99_$c]="$p99" S[bad$c]="${non2xx:-0}"
done

echo
echo "== 2. streaming POST /v1/generate, max_tokens 256, temperature 0.8, seed = stream index; ${dur}s of back-to-back requests per stream"
for n in 1 8 32; do
  scrape "$before"
  out="$("$streams" -d "$dur" -t 256 "$port" "$n")" || true
  scrape "$after"
  human="$(grep -v '^RESULT' <<<"$out" || true)"
  res="$(grep '^RESULT' <<<"$out" || true)"
  [ -n "$res" ] || { echo "bench-http: $streams printed no result" >&2; exit 1; }
  echo " $human"
  echo "   statuses from /metrics: $(statuses /v1/generate)"
  batch_report
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$res"; }
  S[tps$n]="$(field agg_tps)" S[per$n]="$(field stream_tps)" S[ttft$n]="$(field ttft_p50_ms)" S[err$n]="$(field errors)"
  S[mean$n]="$(hist_delta attnlm_batch_size | sed -n 's/^mean \([0-9.]*\).*/\1/p')"
done

serve_stop TERM
[ "$rc" -eq 0 ] || { tail -5 "$log" >&2; exit 1; }

echo
echo "== 3. POST /v1/score at c=8 per precision, the prefix cache off (cold) and on (cached): wrk -t1 -c8 -d${dur}s"
runs="f32:0 f32:64 bf16:0 bf16:64 int8:0 int8:64"
if grep -q ', kernels amx,' "$log"; then runs="$runs bf16:0:avx512bf16 int8:0:avx512bf16"; fi
for run in $runs; do
    IFS=: read -r p cache kern <<<"$run"
    serve_start "$work/port" "$log" "$server" --host 127.0.0.1 --port 0 --model "$model" --port-file "$work/port" \
      --precision "$p" --prefix-cache "$cache" --kernels "${kern:-auto}" \
      || { echo "bench-http: the server did not start" >&2; exit 1; }
    serve_log_has "listening on" || true
    out="$(wrk -t1 -c8 -d"${dur}s" --latency -s "$here/score.lua" "http://127.0.0.1:$port/v1/score")"
    serve_stop TERM
    [ "$rc" -eq 0 ] || { tail -5 "$log" >&2; exit 1; }
    S[cold_$p$cache$kern]="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
    S[kern_$p$kern]="$(sed -n 's/.*, kernels \(.*\), sha256 .*/\1/p' "$log" | head -1)"
    printf ' %-5s prefix cache %-4s %9s req/s   latency p50 %-8s non-2xx %s   %s\n' "$p" "$([ "$cache" = 0 ] && echo off || echo on)" \
      "${S[cold_$p$cache$kern]}" "$(awk '$1 == "50%" {print $2}' <<<"$out")" \
      "$(awk -F: '/Non-2xx or 3xx responses/ {gsub(/ /, "", $2); print $2}' <<<"$out" | grep . || echo 0)" "${S[kern_$p$kern]}"
done

echo
echo "== summary ($(cpuinfo 'model name') family $(cpuinfo 'cpu family') model $(cpuinfo model), $(nproc) cores," \
     "server default flags, --precision $precision, ${dur}s per phase; load average at end $(cut -d' ' -f1-3 /proc/loadavg))"
printf ' %-12s %10s %10s %10s %8s\n' "/v1/score" "req/s" "p50" "p99" "non-2xx"
for c in 1 8 64; do
  printf ' %-12s %10s %10s %10s %8s\n' "c=$c" "${S[rps$c]}" "${S[p50_$c]}" "${S[p99_$c]}" "${S[bad$c]}"
done
printf ' %-12s %10s %10s %10s %10s %7s\n' "streams" "tok/s" "tok/s/str" "TTFT p50" "mean batch" "errors"
for n in 1 8 32; do
  printf ' %-12s %10.0f %10.0f %8.1fms %10s %7s\n' "$n" "${S[tps$n]}" "${S[per$n]}" "${S[ttft$n]}" "${S[mean$n]}" "${S[err$n]}"
done
printf ' %-12s %12s %12s %12s  %s\n' "/v1/score c=8" "cold req/s" "cached req/s" "cold vs f32" "kernels"
for p in f32 bf16 int8; do
  printf ' %-12s %12s %12s %12s  %s\n' "$p" "${S[cold_${p}0]}" "${S[cold_${p}64]}" \
    "$(awk -v a="${S[cold_${p}0]}" -v b="${S[cold_f320]}" 'BEGIN {printf "%.2fx", (b > 0 ? a / b : 0)}')" "${S[kern_$p]}"
done
for p in bf16 int8; do
  [ -n "${S[cold_${p}0avx512bf16]:-}" ] || continue
  printf ' %-12s %12s %12s %12s  %s\n' "$p" "${S[cold_${p}0avx512bf16]}" "-" \
    "$(awk -v a="${S[cold_${p}0avx512bf16]}" -v b="${S[cold_f320]}" 'BEGIN {printf "%.2fx", (b > 0 ? a / b : 0)}')" \
    "${S[kern_${p}avx512bf16]}"
done
ratio="$(awk -v a="${S[tps32]}" -v b="${S[tps1]}" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')"
echo " targets (reported, not asserted):"
echo "   /v1/score at c=8: ${S[rps8]} req/s (target >= 100: $(awk -v r="${S[rps8]}" 'BEGIN {print (r >= 100 ? "met" : "NOT met")}'))"
echo "   /v1/score at c=64 vs c=8: ${S[rps64]} vs ${S[rps8]} req/s (target: no lower: $(awk -v a="${S[rps64]}" -v b="${S[rps8]}" 'BEGIN {print (a >= b ? "met" : "NOT met")}'))"
echo "   32 streams vs 1: ${ratio}x tokens/s (target >= 5x: $(awk -v r="$ratio" 'BEGIN {print (r >= 5 ? "met" : "NOT met")}'))"
echo " every server exited 0 after SIGTERM; bench wall time $((SECONDS - began)) s"
