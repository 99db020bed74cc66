#!/usr/bin/env bash
# make bench-context: the per-token decode time after 100 to 100,000 tokens of context, attnlm's
# default model (bench/context.c) beside a decoder-only transformer of the same parameter count
# with a KV cache (bench/context_transformer.py), one thread each, side by side; draws
# docs/img/context.png (log x).  Reported, not asserted.
#   bench/context.sh CONTEXT_BINARY MODEL TEXT_FILE
set -euo pipefail
bin="$1" model="$2" text="$3"
python="${PYTHON:-/usr/bin/python3}"
lengths="100 1000 10000 100000"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== machine"
echo "cpu:  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') (family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')), $(nproc) cores"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (load average at start)"
OPENBLAS_NUM_THREADS=1 "$bin" "$model" "$text" $lengths | tee "$work/attnlm.txt"
params="$(sed -n 's/.*, \([0-9]*\) parameters$/\1/p' "$work/attnlm.txt")"
"$python" bench/context_transformer.py "$params" $lengths | tee "$work/transformer.txt"
"$python" - "$work/attnlm.txt" "$work/transformer.txt" docs/img/context.png <<'PY'
import re, sys
def read(path):
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"context_(\d+)_us_per_token (\S+)", open(path).read())}
a, t = read(sys.argv[1]), read(sys.argv[2])
print("\n%-10s %18s %22s" % ("context", "attnlm us/token", "transformer us/token"))
for n in sorted(a):
    print("%-10d %18.1f %22.1f" % (n, a[n], t[n]))
lo, hi = min(a.values()), max(a.values())
print("attnlm: slowest / fastest = %.3f (flat within %.1f %%); transformer at %d / at %d = %.1fx" %
      (hi / lo, (hi / lo - 1) * 100, max(t), min(t), t[max(t)] / t[min(t)]))
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib missing (make train-deps): no plot")
    sys.exit(0)
fig, ax = plt.subplots(figsize=(6.4, 3.8))
xs = sorted(a)
ax.plot(xs, [a[n] for n in xs], "o-", label="attnlm default model (GRU + attention, window 1,024)")
ax.plot(xs, [t[n] for n in xs], "s-", label="decoder-only transformer, same parameters, KV cache")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("tokens of context before the step")
ax.set_ylabel("µs per generated token (1 thread)")
ax.set_title("Cost of a decoding step against context length")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[3], dpi=120)
print("drew", sys.argv[3])
PY
