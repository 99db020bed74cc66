#!/usr/bin/env python3
"""Does every cell x attention x keys/values combination start learning at train.py's defaults?

Trains each of the 24 combinations (elman/gru/lstm x additive/dot/cosine/
multihead x attn_kv state/continuation) for each seed, small (--hidden, --window, --seq-len, --batch, --steps below)
but otherwise with train.py's own defaults: its argument parser, initialisation
and training loop, nothing overridden.  A run has ESCAPED the unigram plateau
when its training loss averaged over the last --last steps is below
--threshold nats/byte; the unigram entropy of the training text (printed) is
about 3.08, the loss of a model that ignores its input.  Prints a table and
exits 1 if any run did not escape.

Runs go to --jobs worker processes, one thread each; a run's result depends
only on its seed (and the thread count, always 1 here), not on the order.

usage: smoke.py [--train data/train.txt] [--seeds 1,2,3] [--jobs 2] ...
"""
import argparse
import math
import multiprocessing
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from attnlm import ATTENTIONS, ATTN_KVS, CELLS  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=os.path.join(HERE, "..", "data", "train.txt"))
    p.add_argument("--seeds", default="1,2,3")
    import train as T
    T.add_model_flags(p, omit=("cell", "attention", "attn_kv", "layers", "embed", "heads", "attn_dim"), hidden=64,
                      window=16)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--last", type=int, default=25, help="steps averaged for the final loss")
    p.add_argument("--threshold", type=float, default=2.9, help="escaped: final loss below this (nats/byte)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--attentions", default=",".join(ATTENTIONS))
    p.add_argument("--attn-kvs", default=",".join(ATTN_KVS))
    p.add_argument("--extra", default="", help="further train.py arguments for every run, e.g. '--out-bias torch'")
    return p.parse_args()


def train_args(opts, cell, attention, kv, seed):
    """train.py's arguments for one run: its defaults, the small size, one thread."""
    import train as T
    return ["--train", opts.train, "--val", opts.train, "--out", os.devnull, "--seed", str(seed),
            *T.model_flag_argv(opts, cell=cell, attention=attention, attn_kv=kv), "--seq-len", str(opts.seq_len),
            "--batch", str(opts.batch), "--steps", str(opts.steps), "--threads", "1"] + opts.extra.split()


def run(job):
    opts, cell, attention, kv, seed = job
    import torch
    import train as T
    args = T.parse_args(train_args(opts, cell, attention, kv, seed))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = T.read_bytes(args.train)
    model, _ = T.build_model(args, data)
    t0 = time.perf_counter()
    result = T.train_loop(model, args, data, val=None, log=lambda s: None)
    losses = result["losses"]
    return cell, attention, kv, seed, sum(losses[-opts.last:]) / len(losses[-opts.last:]), time.perf_counter() - t0


def main():
    opts = parse_args()
    seeds = [int(s) for s in opts.seeds.split(",")]
    cells, attentions, kvs = opts.cells.split(","), opts.attentions.split(","), opts.attn_kvs.split(",")
    import torch
    import train as T
    data = T.read_bytes(opts.train)
    p = torch.bincount(data, minlength=257).double() / len(data)
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    example = " ".join(train_args(opts, "CELL", "ATTENTION", "KV", "SEED")[6:])
    print(f"smoke: {len(cells) * len(attentions) * len(kvs)} combinations x seeds {opts.seeds}, train.py defaults with "
          f"{example.replace(os.devnull, '-')}")
    print(f"escaped = training loss over the last {opts.last} of {opts.steps} steps < {opts.threshold} nats/byte "
          f"(unigram entropy of the training text: {entropy:.3f})", flush=True)
    jobs = [(opts, c, a, k, s) for c in cells for a in attentions for k in kvs for s in seeds]
    t0 = time.perf_counter()
    results = {}
    with multiprocessing.get_context("spawn").Pool(opts.jobs) as pool:
        for cell, attention, kv, seed, loss, secs in pool.imap_unordered(run, jobs):
            results[cell, attention, kv, seed] = (loss, secs)
    failed = 0
    head = f"{'cell':6s} {'attention':10s} {'attn_kv':12s}" + "".join(f" {'seed ' + str(s):>16s}" for s in seeds) + \
        f" {'seconds':>8s}"
    print(head)
    for c in cells:
        for a in attentions:
            for k in kvs:
                row = f"{c:6s} {a:10s} {k:12s}"
                for s in seeds:
                    loss, _ = results[c, a, k, s]
                    ok = loss < opts.threshold and math.isfinite(loss)
                    failed += not ok
                    row += f" {loss:8.3f} {'escaped' if ok else 'STUCK':>7s}"
                row += f" {sum(results[c, a, k, s][1] for s in seeds):8.1f}"
                print(row)
    print(f"smoke: {len(jobs) - failed}/{len(jobs)} escaped in {time.perf_counter() - t0:.0f} s "
          f"({opts.jobs} processes)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
