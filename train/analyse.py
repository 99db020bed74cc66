#!/usr/bin/env python3
"""What a model's attention does for it on held-out text.

For one model file, on the held-out text (--val):
  held_out         mean loss in nats/byte, in BOS-prefixed slices of 256 bytes
                   (train.py's evaluate and `attnlm eval`)
  long             the same in slices of --long bytes, so that the window can reach back
  long_no_attention  those slices with the attention removed (a window of one: each
                   position attends to itself only; docs/FORMAT.md)
  copyable / other the long-slice loss split by kind of byte: a byte is copyable when it
                   starts 4 or more bytes that already occurred, starting within the window
                   before it (the nearest such occurrence gives its distance); with and
                   without attention, and the mean attention gain (loss without minus
                   with) of each kind
  by_distance      copyable bytes grouped by distance to the earlier occurrence
  probe            the copy probe (probe.py): a random 24-letter string written twice,
                   first and second copy loss per distance
  cache            with --cache: Grave et al.'s training-free continuous cache on top of
                   the model (keys the top-layer states h_i, values the byte that followed,
                   a window of --cache-window positions), best theta and lambda of a small
                   grid on the first half of the held-out text, reported on the second half

usage: analyse.py MODEL.safetensors [--val data/val.txt] [--json out.json] [--cache]
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from attnlm import BOS_ID, load_model  # noqa: E402
import probe  # noqa: E402

MIN_COPY = 4
DISTANCE_BINS = ((1, 16), (16, 64), (64, 256), (256, 1024), (1024, 1 << 30))


def slices_of(data, n):
    return [data[i:i + n] for i in range(0, len(data), n)]


@torch.no_grad()
def losses(model, ys, window=None, states=False):
    """Per-byte losses of BOS-prefixed slices ys (each a byte tensor) -> list of tensors;
    with states, also the top-layer outputs of each slice."""
    out, hs = [], []
    for y in ys:
        x = torch.cat([torch.tensor([BOS_ID]), y[:-1]]).unsqueeze(0)
        if states:
            e = model.embed(x)
            h, _ = model.rnn(e)
            hs.append(h[0])
        logits, _ = model(x, window=window)
        out.append(F.cross_entropy(logits[0], y, reduction="none"))
    return (out, hs) if states else out


def copy_distances(y, window):
    """For each position j of y: the distance to the nearest earlier start p of the MIN_COPY
    bytes y[j:j+4], or 0 when there is none within reach: y[p] is the byte read at position
    p + 1, which the window of the position predicting y[j] (position j) holds when
    j - p <= window."""
    b = bytes(y.tolist())
    last, dist = {}, [0] * len(b)
    for j in range(len(b) - MIN_COPY + 1):
        key = b[j:j + MIN_COPY]
        p = last.get(key)
        if p is not None and j - p <= window:
            dist[j] = j - p
        last[key] = j
    return dist


def split(loss_sets, dists):
    """Mean loss of copyable and other bytes, for each loss set; and per distance bin."""
    out = {"copyable": [], "other": [], "n_copyable": 0, "n_other": 0,
           "bins": [{"lo": lo, "hi": hi, "n": 0, "loss": [0.0] * len(loss_sets)} for lo, hi in DISTANCE_BINS]}
    sums = [[0.0, 0.0] for _ in loss_sets]
    for k, d in enumerate(dists):
        for j, dj in enumerate(d):
            c = dj > 0
            for s, ls in enumerate(loss_sets):
                sums[s][0 if c else 1] += ls[k][j].item()
            if c:
                out["n_copyable"] += 1
                for bn in out["bins"]:
                    if bn["lo"] <= dj < bn["hi"]:
                        bn["n"] += 1
                        for s, ls in enumerate(loss_sets):
                            bn["loss"][s] += ls[k][j].item()
            else:
                out["n_other"] += 1
    for s in range(len(loss_sets)):
        out["copyable"].append(sums[s][0] / max(1, out["n_copyable"]))
        out["other"].append(sums[s][1] / max(1, out["n_other"]))
    for bn in out["bins"]:
        bn["loss"] = [x / max(1, bn["n"]) for x in bn["loss"]]
    return out


def cache_probs(h, y, lp, theta, lam, window):
    """Grave's continuous cache over one slice: log p of each y[t] mixed with the cache."""
    T = h.shape[0]
    scores = theta * (h @ h.T)  # [T, T]: query t, key i; key i predicts y[i] (the byte after position i)
    t = torch.arange(T)
    valid = (t.view(-1, 1) > t.view(1, -1)) & (t.view(-1, 1) - t.view(1, -1) < window)
    scores = scores.masked_fill(~valid, float("-inf"))
    has = valid.any(1)
    w = torch.softmax(scores.masked_fill(~has.view(-1, 1), 0.0), -1) * has.view(-1, 1)
    p_cache = torch.zeros(T, 257).index_add_(1, y, w)  # [T, V]: column y[i] gets weight w[:, i]
    p = (1 - lam) * lp.exp() + lam * p_cache
    p = torch.where(has.view(-1, 1), p, lp.exp())
    return torch.log(p.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-30))


@torch.no_grad()
def grave_cache(model, ys, window):
    half = len(ys) // 2
    per = []
    for y in ys:
        x = torch.cat([torch.tensor([BOS_ID]), y[:-1]]).unsqueeze(0)
        h, _ = model.rnn(model.embed(x))
        logits, _ = model(x)
        per.append((h[0], y, torch.log_softmax(logits[0], -1)))
    grid = [(th, lam) for th in (0.05, 0.1, 0.2, 0.4) for lam in (0.05, 0.1, 0.2, 0.3)]

    def loss_on(items, th, lam):
        tot = n = 0
        for h, y, lp in items:
            tot -= cache_probs(h, y, lp, th, lam, window).sum().item()
            n += len(y)
        return tot / n
    best = min(grid, key=lambda g: loss_on(per[:half], *g))
    base = sum(F.nll_loss(lp, y, reduction="sum").item() for _, y, lp in per[half:]) / \
        sum(len(y) for _, y, _ in per[half:])
    return {"theta": best[0], "lambda": best[1], "window": window, "loss_without": base,
            "loss_with": loss_on(per[half:], *best)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--val", default=os.path.join(HERE, "..", "data", "val.txt"))
    p.add_argument("--long", type=int, default=2048, help="bytes per slice of the long-context figures")
    p.add_argument("--probe-distances", default="0,16,64,170,350,800")
    p.add_argument("--probe-trials", type=int, default=8)
    p.add_argument("--cache", action="store_true", help="also Grave's continuous cache (for a model without attention)")
    p.add_argument("--cache-window", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="", help="write the figures here too")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, md = load_model(a.model)
    with open(a.val, "rb") as f:
        raw = f.read()
    val = torch.tensor(list(raw), dtype=torch.long)
    W = model.cfg.window
    res = {"model": md.get("name", os.path.basename(a.model)), "window": W, "attention": model.cfg.attention,
           "attn_kv": model.cfg.attn_kv}

    short = losses(model, slices_of(val, 256))
    res["held_out"] = sum(x.sum().item() for x in short) / len(val)
    ys = slices_of(val, a.long)
    full = losses(model, ys)
    none = losses(model, ys, window=1)
    res["long"] = sum(x.sum().item() for x in full) / len(val)
    res["long_no_attention"] = sum(x.sum().item() for x in none) / len(val)
    sp = split([full, none], [copy_distances(y, W) for y in ys])
    res["copyable"] = {"share": sp["n_copyable"] / len(val), "loss": sp["copyable"][0],
                       "loss_no_attention": sp["copyable"][1], "gain": sp["copyable"][1] - sp["copyable"][0]}
    res["other"] = {"share": sp["n_other"] / len(val), "loss": sp["other"][0],
                    "loss_no_attention": sp["other"][1], "gain": sp["other"][1] - sp["other"][0]}
    res["by_distance"] = [{"distance": f"{b['lo']}-{b['hi'] - 1}" if b["hi"] < 1 << 30 else f"{b['lo']}+",
                           "n": b["n"], "loss": b["loss"][0], "loss_no_attention": b["loss"][1]}
                          for b in sp["bins"] if b["n"]]
    res["probe"] = probe.run(model, raw, [int(d) for d in a.probe_distances.split(",")], 24, a.probe_trials)
    if a.cache:
        res["cache"] = grave_cache(model, ys, a.cache_window)

    print(f"{res['model']}: {model.cfg.attention} attention, keys/values {model.cfg.attn_kv}, window {W}")
    print(f"held-out loss (256-byte slices)         {res['held_out']:.4f} nats/byte")
    print(f"long slices ({a.long} bytes)               {res['long']:.4f}; attention removed {res['long_no_attention']:.4f}")
    for k in ("copyable", "other"):
        r = res[k]
        print(f"  {k:9s} {100 * r['share']:5.1f}% of bytes: {r['loss']:.4f}, attention removed "
              f"{r['loss_no_attention']:.4f}, gain {r['gain']:+.4f}")
    for b in res["by_distance"]:
        print(f"  copyable at distance {b['distance']:>9s}: {b['n']:6d} bytes, {b['loss']:.4f} "
              f"(attention removed {b['loss_no_attention']:.4f})")
    print("copy probe (24 random letters twice; nats/byte of the first and second copy):")
    for r in res["probe"]:
        print(f"  distance {r['distance']:4d}: first {r['first']:.3f}, second {r['second']:.3f}")
    if a.cache:
        c = res["cache"]
        print(f"continuous cache (theta {c['theta']}, lambda {c['lambda']}, window {c['window']}), second half "
              f"of the held-out text: {c['loss_without']:.4f} -> {c['loss_with']:.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
