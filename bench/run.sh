#!/usr/bin/env bash
# run.sh BENCH_ENGINE MODEL -- the engine at f32, bf16 and int8 and the PyTorch model on the same
# work, side by side, with the machine they ran on.
# DECODE_STEPS (default 256) sets the tokens decoded per sequence.  PYTHON selects the interpreter.
set -euo pipefail

engine=$1 model=$2
here=$(cd "$(dirname "$0")" && pwd)
text=$here/text_1000.txt
steps=${DECODE_STEPS:-256}
python=${PYTHON:-/usr/bin/python3}

cpuinfo() { sed -n "s/^$1[[:space:]]*: //p" /proc/cpuinfo | head -1; }
echo "== machine"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu: $(cpuinfo 'model name'), family $(cpuinfo 'cpu family') model $(cpuinfo model) stepping $(cpuinfo stepping);" \
     "$(nproc) cores online"
echo "cpu features: $(cpuinfo flags | tr ' ' '\n' | grep -E '^(avx2|fma|avx512(f|bw|vl|_bf16|_vnni|vnni|bf16)|avx_vnni|amx_(tile|bf16|int8))$' | sort | tr '\n' ' ')"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "compiler: $(${CC:-cc} --version | head -1)"
echo "OPENBLAS_CORETYPE: ${OPENBLAS_CORETYPE:-(unset)}"

echo "== engine (C, one thread; f32, bf16 and int8 take turns in each repetition)"
c_out=$(OPENBLAS_NUM_THREADS=1 "$engine" "$model" "$text" "$steps")
echo "$c_out"
# With AMX, the same run on the next table (vdpbf16ps, vpdpbusd) shows what the tiles add.
noamx_out=""
if [[ $(sed -n 's/^kernels_f32 \([a-z0-9]*\),.*/\1/p' <<<"$c_out") == amx ]]; then
    echo "== engine without AMX (BENCH_KERNELS=avx512bf16; bf16 and int8)"
    noamx_out=$(OPENBLAS_NUM_THREADS=1 BENCH_KERNELS=avx512bf16 BENCH_PRECISIONS=bf16,int8 "$engine" "$model" "$text" "$steps" |
                grep -E '^(kernels|score|decode)_')
    echo "$noamx_out"
fi

t_out=""
if "$python" -c 'import torch' 2>/dev/null; then
    echo "== PyTorch eager (the project's train/attnlm.py model, f32)"
    t_out=$(OMP_NUM_THREADS=1 "$python" "$here/bench_torch.py" "$model" "$text" "$steps")
    echo "$t_out"
else
    echo "== PyTorch not installed: engine figures only"
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

value() { awk -v k="$1" '$1 == k {print $2}' <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a != "" && b != "" && b > 0) printf "%.2fx", a / b; else print "-"}'; }

echo "== side by side (tokens per second of the benchmarking thread's CPU time, best of 7; decoding is the aggregate over the batch)"
echo "kernels: $(value kernels_f32 "$c_out" | cut -d, -f1) ($(sed -n 's/^kernels_\([a-z0-9]*\) [^,]*, /\1: /p' <<<"$c_out" | paste -sd';' | sed 's/;/; /g'))"
printf '%-12s %12s %12s %12s %12s %12s\n' "work" "f32" "bf16" "int8" "pytorch f32" "f32/pytorch"
for k in score decode_b1 decode_b8 decode_b32; do
    row=()
    for p in f32 bf16 int8; do
        v=$(value "${k}_${p}_tokens_per_s" "$c_out")
        row+=("${v:--}")
    done
    t=$(value "${k}_tokens_per_s" "$t_out")
    printf '%-12s %12s %12s %12s %12s %12s\n' "$k" "${row[@]}" "${t:--}" "$(ratio "${row[0]}" "$t")"
done
if [ -n "$noamx_out" ]; then
    for k in score decode_b1 decode_b8 decode_b32; do
        row=("-")
        for p in bf16 int8; do
            v=$(value "${k}_${p}_tokens_per_s" "$noamx_out")
            row+=("${v:--}")
        done
        printf '%-12s %12s %12s %12s   (without AMX)\n' "$k" "${row[@]}"
    done
fi
for p in f32 bf16 int8; do
    b32=$(value "decode_b32_${p}_tokens_per_s" "$c_out")
    [ -n "$b32" ] && echo "$p decode at batch 32: $(ratio "$b32" "$(value decode_b32_f32_tokens_per_s "$c_out")") of f32 at batch 32"
done
for p in f32 bf16 int8; do
    b1=$(value "decode_b1_${p}_tokens_per_s" "$c_out") b32=$(value "decode_b32_${p}_tokens_per_s" "$c_out")
    [ -n "$b1" ] || continue
    step=$(value "decode_b1_${p}_ms_per_step" "$c_out") floor=$(value "weight_read_${p}_ms" "$c_out")
    echo "$p: batch-32 aggregate / batch-1 $(ratio "$b32" "$b1"); batch-1 $(ratio "$b1" "$(value decode_b1_f32_tokens_per_s "$c_out")") of f32;" \
         "step $step ms, reading its $(awk -v b="$(value "weights_${p}_bytes" "$c_out")" 'BEGIN {printf "%.1f MB", b / 1e6}') of weights once" \
         "$floor ms ($(awk -v s="$step" -v f="$floor" 'BEGIN {printf "%.0f%%", 100 * f / s}') of the step); RSS +$(value "rss_${p}_kb" "$c_out") kB"
done

echo "== the window: one batch-1 step with 64 and with 1,024 positions attended (the model's weights, its window set to each; goal: 1,024 at most 1.5x 64)"
for p in f32 bf16 int8; do
    w64=$(value "window_64_b1_${p}_ms_per_step" "$c_out") w1k=$(value "window_1024_b1_${p}_ms_per_step" "$c_out")
    [ -n "$w64" ] || continue
    echo "$p: W=64 $w64 ms, W=1024 $w1k ms: $(ratio "$w1k" "$w64")"
done

echo "== f32 products: the engine's kernel against OpenBLAS (microseconds, best of many; BLAS is sgemv for one row)"
for shape in $(sed -n 's/^gemm_\([0-9]*x[0-9]*\)_m1_kernel_us .*/\1/p' <<<"$c_out"); do
    printf '%-12s' "[$shape] M"
    for m in $(sed -n "s/^gemm_${shape}_m\([0-9]*\)_kernel_us .*/\1/p" <<<"$c_out"); do printf '%9s' "$m"; done
    printf '\n%-13s' "  kernel"
    for m in $(sed -n "s/^gemm_${shape}_m\([0-9]*\)_kernel_us .*/\1/p" <<<"$c_out"); do printf '%9s' "$(value "gemm_${shape}_m${m}_kernel_us" "$c_out")"; done
    printf '\n%-13s' "  openblas"
    for m in $(sed -n "s/^gemm_${shape}_m\([0-9]*\)_kernel_us .*/\1/p" <<<"$c_out"); do printf '%9s' "$(value "gemm_${shape}_m${m}_blas_us" "$c_out")"; done
    echo
done
shape=$(value share_shape "$c_out")
echo "== every kernel table this CPU runs on one [$shape] product: billions of multiply-adds per second at 1, 8 and 32 rows," \
     "and the share of the table's peak for that precision's instructions (measured here on independent accumulators)"
printf '%-12s %-5s %10s %18s %18s %18s\n' table prec peak "1 row" "8 rows" "32 rows"
for t in $(sed -n 's/^peak_\([a-z0-9]*\)_f32_gmacs .*/\1/p' <<<"$c_out"); do
    for p in f32 bf16 int8; do
        peak=$(value "peak_${t}_${p}_gmacs" "$c_out")
        cells=()
        for m in 1 8 32; do
            g=$(value "kernel_${t}_${p}_m${m}_gmacs" "$c_out")
            cells+=("$g ($(awk -v g="$g" -v p="$peak" 'BEGIN {printf "%.0f%%", 100 * g / p}'))")
        done
        printf '%-12s %-5s %10s %18s %18s %18s\n' "$t" "$p" "$peak" "${cells[@]}"
    done
done
echo "the benchmarking thread had $(awk -v s="$(value cpu_share "$c_out")" 'BEGIN {printf "%.0f%%", 100 * s}') of a core over its run"
