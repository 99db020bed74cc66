#!/usr/bin/env bash
# make bench-http: the service under load, on this machine.
#   /v1/score (230-byte text) with wrk at 1, 8 and 64 connections;
#   streaming generation with 1, 8 and 32 concurrent streams;
# each phase with the server's batch-size figures from /metrics.
set -euo pipefail
server="$1" streams="$2" model="$3"
dur="${BENCH_SECONDS:-10}"
log="$(mktemp)"
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT

echo "== machine"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"

"$server" --host 127.0.0.1 --port 0 --model "$model" 2>"$log" &
pid=$!
port=
for _ in $(seq 300); do
  port="$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")"
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$log"; exit 1; }
sed -n 's/^attnlm: listening on [^ ]* /server: /p' "$log"
url="http://127.0.0.1:$port"

batch() {  # prints "count sum" of attnlm_batch_size
  curl -s "$url/metrics" | awk '/^attnlm_batch_size_count/ {c=$2} /^attnlm_batch_size_sum/ {s=$2} END {print c+0, s+0}'
}
fwd() {  # prints "count sum" of attnlm_forward_batch_size
  curl -s "$url/metrics" | awk '/^attnlm_forward_batch_size_count/ {c=$2} /^attnlm_forward_batch_size_sum/ {s=$2} END {print c+0, s+0}'
}
declare -A summary

echo; echo "== /v1/score, 230-byte text, wrk ${dur}s"
for c in 1 8 64; do
  read -r f0 g0 < <(fwd)
  out="$(wrk -t1 -c"$c" -d"${dur}s" --latency -s bench/score.lua "$url/v1/score")"
  rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
  p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
  p90="$(awk '$1=="90%" {print $2}' <<<"$out")"
  p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
  bad="$(awk '/Non-2xx/ {print $NF}' <<<"$out")"
  total="$(awk '/requests in/ {print $1}' <<<"$out")"
  read -r f1 g1 < <(fwd)
  share="$(awk -v n="$((f1 - f0))" -v r="$((g1 - g0))" 'BEGIN {printf "%.1f", n ? r / n : 0}')"
  printf 'c=%-3s %8s req/s  p50 %-9s p90 %-9s p99 %-9s requests %s, non-2xx %s, requests per forward pass %s\n' \
    "$c" "$rps" "$p50" "$p90" "$p99" "$total" "${bad:-0}" "$share"
  summary["score$c"]="$rps req/s, p50 $p50, p99 $p99, non-2xx ${bad:-0}, $share per pass"
done

echo; echo "== streaming generation, 256 tokens per stream"
for n in 1 8 32; do
  read -r c0 s0 < <(batch)
  rounds=$(( n == 1 ? 12 : (n == 8 ? 6 : 3) ))
  line="$("$streams" "$port" "$n" 256 "$rounds")"
  read -r c1 s1 < <(batch)
  steps=$((c1 - c0)); rows=$((s1 - s0))
  mean="$(awk -v s="$steps" -v r="$rows" 'BEGIN {printf "%.1f", s ? r / s : 0}')"
  echo "$line; decoding steps $steps, mean batch $mean"
  summary["streams$n"]="$(sed -n 's/.* = \([0-9]*\) tokens\/s aggregate.*/\1/p' <<<"$line")"
  summary["batch$n"]="$mean"
done

echo; echo "== summary"
printf '%-22s %s\n' "score c=1" "${summary[score1]}" "score c=8" "${summary[score8]}" "score c=64" "${summary[score64]}"
for n in 1 8 32; do
  printf '%-22s %s tokens/s (mean batch %s)\n' "streams $n" "${summary[streams$n]}" "${summary[batch$n]}"
done
awk -v a="${summary[streams32]}" -v b="${summary[streams1]}" 'BEGIN {printf "32 streams / 1 stream: %.1fx\n", a / b}'
kill -TERM "$pid"
wait "$pid"
pid=
