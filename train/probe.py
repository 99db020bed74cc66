#!/usr/bin/env python3
"""Copy probe: does a model copy from its window?

A random string of --length letters is written twice into natural text (a
held-out passage), the second copy starting `distance` bytes after the first
ends.  The model cannot know the first copy; if it copies in context, the
second costs far fewer nats per byte.  For each distance the probe prints the
mean loss of the first and the second copy over --trials strings, and the
mean over the remaining (natural) bytes.

usage: probe.py MODEL.safetensors [--val data/val.txt] [--distances 0,16,64,350,800]
"""
import argparse
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnlm import BOS_ID, load_model  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def probe_texts(val_text, distance, length, trials, seed):
    """(text bytes, first copy start, second copy start) for each trial."""
    rng = random.Random(seed * 1000003 + distance)
    out = []
    for _ in range(trials):
        s = "".join(rng.choice(LETTERS) for _ in range(length)).encode()
        lead = rng.randrange(40, 120)
        start = rng.randrange(0, len(val_text) - lead - distance - 200)
        # The string is a word inside a passage: the passage's bytes around and between the copies.
        before = val_text[start:start + lead] + b" "
        between = b" " + val_text[start + lead:start + lead + max(0, distance - 2)] + b" " if distance >= 2 \
            else b" " * distance
        after = b" " + val_text[start + lead + distance:start + lead + distance + 40]
        text = before + s + between + s + after
        first = len(before)
        second = first + length + len(between)
        out.append((text, first, second))
    return out


@torch.no_grad()
def token_losses(model, text, window=None):
    x = torch.tensor([[BOS_ID] + list(text[:-1])])
    y = torch.tensor(list(text))
    logits, _ = model(x, window=window)
    return torch.nn.functional.cross_entropy(logits[0], y, reduction="none")


def run(model, val_text, distances, length, trials, seed=1, window=None):
    rows = []
    for d in distances:
        f_sum = s_sum = 0.0
        for text, first, second in probe_texts(val_text, d, length, trials, seed):
            loss = token_losses(model, text, window)
            f_sum += loss[first:first + length].mean().item()
            s_sum += loss[second:second + length].mean().item()
        rows.append({"distance": d, "first": f_sum / trials, "second": s_sum / trials})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--val", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "val.txt"))
    p.add_argument("--distances", default="0,8,32,64,128,350,800")
    p.add_argument("--length", type=int, default=24)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, md = load_model(a.model)
    with open(a.val, "rb") as f:
        val_text = f.read()
    print(f"{md.get('name', a.model)}: window {model.cfg.window}, attention {model.cfg.attention}, "
          f"keys/values {model.cfg.attn_kv}; {a.length}-letter strings, {a.trials} trials per distance")
    print(f"{'distance':>8s} {'first':>7s} {'second':>7s}  (nats/byte)")
    for r in run(model, val_text, [int(d) for d in a.distances.split(",")], a.length, a.trials):
        print(f"{r['distance']:8d} {r['first']:7.3f} {r['second']:7.3f}")


if __name__ == "__main__":
    main()
