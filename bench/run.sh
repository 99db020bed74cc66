#!/usr/bin/env bash
# run.sh BENCH_ENGINE MODEL -- the engine and the PyTorch model on the same work, side by side.
# DECODE_STEPS (default 256) sets the tokens decoded per sequence.  PYTHON selects the interpreter.
set -euo pipefail

engine=$1 model=$2
here=$(cd "$(dirname "$0")" && pwd)
text=$here/text_1000.txt
steps=${DECODE_STEPS:-256}
python=${PYTHON:-/usr/bin/python3}

echo "== machine"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores online"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "compiler: $(${CC:-cc} --version | head -1)"

echo "== engine (C, OpenBLAS single-threaded)"
c_out=$(OPENBLAS_NUM_THREADS=1 "$engine" "$model" "$text" "$steps")
echo "$c_out"

t_out=""
if "$python" -c 'import torch' 2>/dev/null; then
    echo "== PyTorch eager (the project's train/attnlm.py model)"
    t_out=$(OMP_NUM_THREADS=1 "$python" "$here/bench_torch.py" "$model" "$text" "$steps")
    echo "$t_out"
else
    echo "== PyTorch not installed: engine figures only"
fi

value() { awk -v k="$1" '$1 == k {print $2}' <<<"$2"; }

echo "== side by side (tokens/s; decoding is the aggregate over the batch)"
printf '%-22s %14s %14s %10s\n' "work" "engine" "pytorch" "ratio"
for k in score decode_b1 decode_b8 decode_b32; do
    c=$(value "${k}_tokens_per_s" "$c_out")
    t=$(value "${k}_tokens_per_s" "$t_out")
    if [ -n "$t" ]; then
        r=$(awk -v c="$c" -v t="$t" 'BEGIN {printf "%.1fx", c / t}')
    else
        t="-" r="-"
    fi
    printf '%-22s %14s %14s %10s\n' "$k" "$c" "$t" "$r"
done
b1=$(value decode_b1_tokens_per_s "$c_out") b32=$(value decode_b32_tokens_per_s "$c_out")
awk -v a="$b32" -v b="$b1" 'BEGIN {printf "engine batch-32 aggregate / batch-1: %.1fx\n", a / b}'
step=$(value decode_b1_ms_per_step "$c_out") floor=$(value weight_stream_ms "$c_out")
awk -v s="$step" -v f="$floor" \
    'BEGIN {printf "engine batch-1 step %.3f ms; reading its weights once (sgemv) takes %.3f ms (%.0f%% of the step)\n", s, f, 100 * f / s}'
