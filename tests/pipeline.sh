#!/usr/bin/env bash
# End-to-end check of the training side against the engine: train a tiny model
# for a few steps on a small text, export it, and compare the C engine's
# log-probabilities and attention maps with PyTorch's on a held-out sentence,
# and `attnlm eval`'s loss over the training text with train.py's evaluate.
# usage: pipeline.sh ATTNLM_CLI  (its `parity` command compares the engine with PyTorch)
set -euo pipefail
cli=$1
py=${PYTHON:-/usr/bin/python3}
if ! "$py" -c 'import torch' 2>/dev/null; then
    # CI installs PyTorch with `make test-deps`, so there its absence is a failure.
    if [ "${CI:-}" = true ]; then
        echo "pipeline: PyTorch is not installed for $py (required when CI=true)"
        exit 1
    fi
    echo "pipeline: PyTorch is not installed for $py; not run"
    exit 0
fi
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A small corpus the test writes itself: varied enough to give non-trivial weights.
for i in $(seq 1 40); do
    echo "The whale number $i rose from the sea, and the mate called out: there she blows, sir!"
    echo "Ishmael watched the ropes, the sails and the grey water for $((i * 7)) long hours."
done > "$work/train.txt"
echo "Queequeg sharpened his harpoon while the ship rolled on the swell." > "$work/val.txt"

pass=0
fail=0
# The last model is exported as BF16, which both sides widen to the same floats.
for combo in "lstm additive f32" "gru multihead f32" "elman cosine bf16"; do
    set -- $combo
    "$py" "$here/train/train.py" --train "$work/train.txt" --val "$work/val.txt" --out "$work/m.safetensors" \
        --cell "$1" --attention "$2" --layers 2 --hidden 32 --embed 16 --window 8 --heads 4 --attn-dim 16 \
        --seq-len 64 --batch 8 --steps 30 --lr 1e-2 --warmup 5 --eval-every 30 --eval-len 64 --log-every 30 \
        --threads 1 --export-dtype "$3" > "$work/train.log"
    grep -q "^exported" "$work/train.log"
    if [ "$3" = bf16 ] && ! grep -q '"dtype":"BF16"' "$work/m.safetensors"; then
        echo "pipeline: --export-dtype bf16 wrote no BF16 tensor"
        fail=$((fail + 1))
    fi
    "$py" "$here/train/dump_expected.py" "$work/m.safetensors" "$(printf 'Starbuck, the whale! \xc3\xa9 (far ahead)')" \
        "$work/expected.safetensors"
    if "$cli" parity --model "$work/m.safetensors" --expected "$work/expected.safetensors"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
    fi
    # attnlm eval's held-out loss is train.py's evaluate (slices of 256 bytes, the last one shorter).
    want=$("$py" -c 'import sys, torch
sys.path.insert(0, sys.argv[1])
from attnlm import load_model
from train import evaluate
m, _ = load_model(sys.argv[2])
print("%.5f" % evaluate(m, torch.tensor(list(open(sys.argv[3], "rb").read())), 256))' \
        "$here/train" "$work/m.safetensors" "$work/train.txt")
    got=$("$cli" eval --model "$work/m.safetensors" --text "$work/train.txt" | sed -n 's/.*: \([0-9.]*\) nats\/byte.*/\1/p')
    if awk -v a="$got" -v b="$want" 'BEGIN {d = a - b; exit !(a != "" && d < 1e-4 && d > -1e-4)}'; then
        echo "eval: attnlm $got nats/byte, train.py $want"
        pass=$((pass + 1))
    else
        echo "eval: attnlm gives \"$got\" nats/byte, train.py $want"
        fail=$((fail + 1))
    fi
done
echo "pipeline: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
