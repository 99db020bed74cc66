#!/usr/bin/env python3
"""Trains an attnlm model on a byte-level text corpus and exports it as safetensors.

Every training sequence is [BOS] + a random slice of the training text, so the
model learns the same function the service evaluates.  Validation loss is the
mean negative log-likelihood in nats per byte over the whole validation text,
cut into consecutive slices of --eval-len bytes, each starting with BOS.
The exported weights are those of the best validation loss seen.

Training runs for --steps steps, or, with --time-budget, until that many
seconds of training (evaluation excluded) are spent; the learning rate then
follows its cosine decay over the budget instead of over the steps.  Seconds
are wall-clock time, or with --clock cpu the process's CPU time, which on a
machine shared with other work counts what this run actually got.
--log-json appends one JSON object per log line and per evaluation, with the
training seconds spent so far, for plotting.
"""
import argparse
import copy
import datetime
import json
import math
import os
import shlex
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnlm import (ATTENTIONS, ATTN_KVS, BOS_ID, BYTE_VOCAB, CELLS, EXPORT_DTYPES, AttnLM, Config,  # noqa: E402
                    export_model, load_safetensors)

STRUCTURE = ("vocab_size", "embed_dim", "hidden", "layers", "window", "cell", "attention", "attn_dim", "heads",
             "attn_kv")
# Alphabets of the synthetic repeats (--repeat-frac).
REPEAT_ALPHABETS = (b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                    b"0123456789", b"abcdefghijklmnopqrstuvwxyz0123456789",
                    bytes(range(33, 127)))


# The flags that set a model's structure, declared once for every script that trains one.
MODEL_FLAGS = (
    ("--cell", dict(choices=CELLS, default="gru")),
    ("--attention", dict(choices=ATTENTIONS, default="multihead")),
    ("--attn-kv", dict(choices=ATTN_KVS, default="state",
                       help="keys and values: the state h_i (format version 1), or the state before "
                            "position i with the embedding of its byte (continuation, version 2)")),
    ("--layers", dict(type=int, default=2)),
    ("--hidden", dict(type=int, default=256)),
    ("--embed", dict(type=int, default=64)),
    ("--window", dict(type=int, default=64)),
    ("--heads", dict(type=int, default=4)),
    ("--attn-dim", dict(type=int, default=64)),
)


def _dest(flag):
    return flag[2:].replace("-", "_")


def add_model_flags(p, omit=(), **defaults):
    """Adds MODEL_FLAGS (but those named in omit) to parser p, with other defaults where given."""
    for flag, kw in MODEL_FLAGS:
        if _dest(flag) in omit:
            continue
        kw = dict(kw)
        if _dest(flag) in defaults:
            kw["default"] = defaults[_dest(flag)]
        p.add_argument(flag, **kw)


def model_flag_argv(ns, **override):
    """train.py's model flags for the values in namespace ns (attributes it lacks: override)."""
    argv = []
    for flag, _ in MODEL_FLAGS:
        value = override.get(_dest(flag), getattr(ns, _dest(flag), None))
        if value is not None:
            argv += [flag, str(value)]
    return argv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                fromfile_prefix_chars="@")
    p.add_argument("--train", required=True, help="training text file (UTF-8)")
    p.add_argument("--val", required=True, help="validation text file (UTF-8)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--export-dtype", choices=EXPORT_DTYPES, default="f32",
                   help="tensor type of the exported file: f32, or bf16 (half the size, rounded to nearest even)")
    p.add_argument("--corpus", default="", help="corpus description recorded in the metadata")
    p.add_argument("--name", default="attnlm", help="model name recorded in the metadata")
    add_model_flags(p)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000,
                   help="training steps (with --time-budget: an upper bound)")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="SECONDS",
                   help="train for this many seconds (evaluation excluded), cosine schedule over them")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what --time-budget and the logged seconds count: wall-clock time, or the "
                        "process's CPU time (all threads; on a shared machine, the work actually done)")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="final lr as a fraction of --lr (cosine decay)")
    p.add_argument("--warmup", type=int, default=50, help="steps of linear warm-up")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250, help="evaluate every this many steps")
    p.add_argument("--eval-seconds", type=float, default=0.0,
                   help="also evaluate after this many training seconds since the last evaluation")
    p.add_argument("--eval-len", type=int, default=256)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--log-json", default="", help="append JSON lines (step, seconds, losses) to this file")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--init", choices=("scaled", "torch"), default="scaled",
                   help="recurrent weight initialisation (see init_for_training)")
    p.add_argument("--out-bias", choices=("unigram", "torch"), default="unigram",
                   help="output bias initialisation: log byte frequencies of the training text, "
                        "or PyTorch's default (see init_for_training)")
    p.add_argument("--init-from", default="", metavar="FILE",
                   help="start from the weights of this model file (same structure)")
    p.add_argument("--warm-start", default="", metavar="FILE",
                   help="start from the weights of this model file where names and shapes agree (the "
                        "embedding, recurrent stack and output layer of a model of another attention or "
                        "window; combine's columns for h_t), the rest initialised as usual")
    p.add_argument("--repeat-frac", type=float, default=0.0,
                   help="fraction of training sequences carrying random strings written twice "
                        "(one pair per 256 bytes), to teach copying from the window")
    p.add_argument("--save-best", action="store_true",
                   help="export to --out at every evaluation that improves the validation loss")
    return p.parse_args(argv)


def read_bytes(path):
    with open(path, "rb") as f:
        return torch.tensor(list(f.read()), dtype=torch.long)


def make_batch(data, batch, seq_len, gen, repeat_frac=0.0, window=None):
    starts = torch.randint(0, len(data) - seq_len, (batch,), generator=gen)
    y = torch.stack([data[s:s + seq_len] for s in starts.tolist()])
    if repeat_frac > 0:
        add_repeats(y, repeat_frac, min(window or seq_len, seq_len), gen)
    x = torch.cat([torch.full((batch, 1), BOS_ID, dtype=torch.long), y[:, :-1]], 1)
    return x, y


def add_repeats(y, frac, span, gen):
    """Overwrites, in a `frac` share of the rows of y [B, T], one pair per 256 bytes
    of a random string (6 to 40 bytes of one of REPEAT_ALPHABETS) written twice,
    the second copy 0 to span bytes after the first ends (log-uniform), so that
    its bytes can be predicted only by copying from the first."""
    B, T = y.shape
    for b in range(B):
        if torch.rand((), generator=gen).item() >= frac:
            continue
        for _ in range(max(1, T // 256)):
            n = int(torch.randint(6, 41, (), generator=gen))
            room = min(span, T) - 2 * n - 1
            if room < 1:
                continue
            gap = int(math.exp(torch.rand((), generator=gen).item() * math.log(room + 1))) - 1
            first = int(torch.randint(0, T - 2 * n - gap, (), generator=gen))
            alphabet = REPEAT_ALPHABETS[int(torch.randint(0, len(REPEAT_ALPHABETS), (), generator=gen))]
            pick = torch.randint(0, len(alphabet), (n,), generator=gen)
            s = torch.tensor([alphabet[i] for i in pick.tolist()], dtype=y.dtype)
            y[b, first:first + n] = s
            y[b, first + n + gap:first + 2 * n + gap] = s


@torch.no_grad()
def evaluate(model, data, eval_len, batch=32):
    """Mean NLL in nats per byte over `data`, in BOS-prefixed slices of eval_len bytes."""
    model.eval()
    total, count = 0.0, 0
    slices = [data[i:i + eval_len] for i in range(0, len(data), eval_len)]
    for i in range(0, len(slices), batch):
        group = slices[i:i + batch]
        for y in _same_length_groups(group):
            x = torch.cat([torch.full((y.shape[0], 1), BOS_ID, dtype=torch.long), y[:, :-1]], 1)
            logits, _ = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                     reduction="sum").item()
            count += y.numel()
    model.train()
    return total / count


def _same_length_groups(group):
    by_len = {}
    for s in group:
        by_len.setdefault(len(s), []).append(s)
    return [torch.stack(v) for v in by_len.values()]


def unigram_log_probs(data, vocab_size=BYTE_VOCAB):
    """log p(byte) in the training text, add-1/2 smoothed (BOS, never a target, gets the floor)."""
    counts = torch.bincount(data, minlength=vocab_size).double() + 0.5
    return torch.log(counts / counts.sum()).float()


def init_for_training(model, train_data=None, recurrent="scaled", out_bias="unigram"):
    """Initialisation for training; the model function is unchanged, only its starting point.

    recurrent="scaled": orthogonal recurrent and Xavier input weights per gate
    block, zero biases.  PyTorch's default U(-1/sqrt(H), 1/sqrt(H)) shrinks the
    signal at every stacked layer, and deeper or wider stacks then sit for
    hundreds of steps at the unigram solution before the input starts to matter.

    out_bias="unigram": the output bias starts at the log byte frequencies of
    the training text, so the first logits already give the unigram
    distribution.  Otherwise the first thing training learns is that
    distribution, and its gradient is the same at every position: Adam, which
    moves each weight by about the learning rate whatever the gradient's size,
    then grows a position-independent offset in `combine`'s input through
    every path that can carry one.  For multi-head attention that includes the
    value and output projections (out_proj · W_v applied to the window's
    average, plus both biases), a product of two matrices all moving in step;
    the pre-activation of `combine` reached |x| ~ 50, tanh saturated at every
    position and unit, and the gradient to the recurrent layers became exactly
    zero: the model stayed at the unigram loss (~3.08 nats/byte) for good.
    With the unigram in the bias there is no such common gradient, and
    `combine` stays in tanh's linear range (|x| < ~1.5).  See docs/ATTENTION.md.
    """
    H = model.cfg.hidden
    if recurrent == "scaled":
        for name, p in model.rnn.named_parameters():
            if name.startswith("weight_hh"):
                for g in range(0, p.shape[0], H):
                    torch.nn.init.orthogonal_(p.data[g:g + H])
            elif name.startswith("weight_ih"):
                for g in range(0, p.shape[0], H):
                    torch.nn.init.xavier_uniform_(p.data[g:g + H])
            else:
                torch.nn.init.zeros_(p)
    if out_bias == "unigram":
        with torch.no_grad():
            model.out.bias.copy_(unigram_log_probs(train_data, model.cfg.vocab_size))


def lr_at(step, args, progress=None):
    """Linear warm-up over --warmup steps, then cosine decay to --min-lr-ratio.

    The decay's progress is the fraction of --steps done after the warm-up, or,
    when given (the --time-budget case), `progress` in [0, 1].
    """
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if progress is None:
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    progress = min(1.0, max(0.0, progress))
    ratio = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * ratio


def build_model(args, train_data):
    """The model of the given arguments, initialised for training (or from --init-from)."""
    cfg = Config(cell=args.cell, attention=args.attention, embed_dim=args.embed, hidden=args.hidden,
                 layers=args.layers, window=args.window, attn_dim=args.attn_dim, heads=args.heads,
                 attn_kv=args.attn_kv)
    model = AttnLM(cfg, dropout=args.dropout)
    source = None
    if args.init_from and args.warm_start:
        sys.exit("--init-from and --warm-start exclude each other")
    if args.warm_start:
        init_for_training(model, train_data, recurrent=args.init, out_bias=args.out_bias)
        tensors, source = load_safetensors(args.warm_start)
        taken = warm_start(model, tensors)
        print(f"warm start from {args.warm_start}: {', '.join(taken)}", flush=True)
    elif args.init_from:
        tensors, source = load_safetensors(args.init_from)
        mine, theirs = cfg.metadata(), Config.from_metadata(source).metadata()
        differ = [k for k in STRUCTURE if mine.get(k) != theirs.get(k)]
        if differ:
            sys.exit(f"--init-from {args.init_from}: structure differs in " +
                     ", ".join(f"{k} ({theirs.get(k)} there, {mine.get(k)} here)" for k in differ))
        model.load_state_dict(tensors)
    else:
        init_for_training(model, train_data, recurrent=args.init, out_bias=args.out_bias)
    return model, source


def warm_start(model, tensors):
    """Copies the tensors whose names and shapes match the model's, and the
    columns of combine.weight that multiply h_t; returns the names taken."""
    own, taken = model.state_dict(), []
    with torch.no_grad():
        for name, t in tensors.items():
            if name in own and own[name].shape == t.shape:
                own[name].copy_(t)
                taken.append(name)
        H = model.cfg.hidden
        w = tensors.get("combine.weight")
        if w is not None and "combine.weight" not in taken and w.shape[0] == H:
            own["combine.weight"][:, :H].copy_(w[:, :H])
            taken.append("combine.weight[:, :H]")
    return taken


class JsonLog:
    def __init__(self, path):
        self.f = open(path, "a") if path else None

    def write(self, **record):
        if self.f:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()


def train_loop(model, args, train, val=None, log=print, jlog=None, on_best=None):
    """Optimises `model` in place.  Returns a dict: losses (one per step), tokens,
    train_seconds (evaluation excluded), best (val loss), best_state, evals [(step, seconds, val)]."""
    jlog = jlog or JsonLog("")
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    out = {"losses": [], "tokens": 0, "train_seconds": 0.0, "best": float("inf"), "best_state": None, "evals": []}
    budget = args.time_budget
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    window_loss, window_n = 0.0, 0
    train_s, wall_s, last_eval_s = 0.0, 0.0, 0.0
    step = 0
    model.train()
    while step < args.steps and not (budget and train_s >= budget):
        t_step, w_step = clock(), time.perf_counter()
        lr = lr_at(step, args, (train_s / budget) if budget else None)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = make_batch(train, args.batch, args.seq_len, gen, getattr(args, "repeat_frac", 0.0),
                          model.cfg.window)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        train_s += clock() - t_step
        wall_s += time.perf_counter() - w_step
        step += 1
        out["tokens"] += y.numel()
        out["losses"].append(loss.item())
        window_loss += loss.item()
        window_n += 1
        last = step == args.steps or (budget and train_s >= budget)
        if step % args.log_every == 0 or last:
            rate = out["tokens"] / train_s
            left = (budget - train_s) if budget else (args.steps - step) * args.batch * args.seq_len / rate
            total = f"/{args.steps}" if not budget else ""
            log(f"step {step}{total} loss {window_loss / window_n:.4f} lr {lr:.2e} {rate:.0f} tok/s "
                f"elapsed {train_s / 60:.1f} min eta {max(0.0, left) / 60:.1f} min")
            jlog.write(step=step, train_seconds=round(train_s, 2), wall_seconds=round(wall_s, 2),
                       tokens=out["tokens"], loss=round(window_loss / window_n, 5), lr=lr)
            window_loss, window_n = 0.0, 0
        due = step % args.eval_every == 0 or (args.eval_seconds and train_s - last_eval_s >= args.eval_seconds)
        if val is not None and (due or last):
            last_eval_s = train_s
            v = evaluate(model, val, args.eval_len)
            out["evals"].append((step, train_s, v))
            log(f"step {step} val_loss {v:.4f} nats/byte")
            jlog.write(step=step, train_seconds=round(train_s, 2), wall_seconds=round(wall_s, 2),
                       tokens=out["tokens"], val_loss=round(v, 5))
            if v < out["best"]:
                out["best"], out["best_state"] = v, copy.deepcopy(model.state_dict())
                if on_best:
                    on_best(out, step, train_s)
    out["train_seconds"] = train_s
    out["wall_seconds"] = wall_s
    out["steps"] = step
    return out


def provenance_of(args, argv, result, source):
    prov = {
        "name": args.name,
        "corpus": args.corpus,
        "train_tokens": result["tokens"],
        "val_loss": f"{result['best']:.4f}",
        "val_loss_unit": f"nats/byte, BOS-prefixed slices of {args.eval_len} bytes",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python3 train/train.py " + " ".join(shlex.quote(a) for a in argv),
        "train_seconds": f"{result['train_seconds']:.0f}",
        "train_steps": result["steps"],
    }
    if args.clock == "cpu":
        prov["train_seconds_clock"] = "cpu"
        prov["train_wall_seconds"] = f"{result['wall_seconds']:.0f}"
    if getattr(args, "repeat_frac", 0.0):
        prov["repeat_frac"] = args.repeat_frac
    if source is not None and args.warm_start:
        prov.update({"warm_start": os.path.basename(args.warm_start),
                     "warm_start_name": source.get("name", ""),
                     "warm_start_command": source.get("command", ""),
                     "warm_start_train_tokens": source.get("train_tokens", ""),
                     "warm_start_train_seconds": source.get("train_seconds", "")})
    elif source is not None:
        before_tokens = int(source.get("total_train_tokens", source.get("train_tokens", 0)))
        before_seconds = float(source.get("total_train_seconds", source.get("train_seconds", 0)))
        prov.update({
            "init_from": os.path.basename(args.init_from),
            "init_from_name": source.get("name", ""),
            "init_from_command": source.get("command", ""),
            "init_from_val_loss": source.get("val_loss", ""),
            "init_from_train_tokens": source.get("train_tokens", ""),
            "init_from_train_seconds": source.get("train_seconds", ""),
            "init_from_created": source.get("created", ""),
            "total_train_tokens": before_tokens + result["tokens"],
            "total_train_seconds": f"{before_seconds + result['train_seconds']:.0f}",
        })
        if "init_from" in source:  # an earlier link of the chain
            prov["init_from_init_from_command"] = source.get("init_from_command", "")
    return prov


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, val = read_bytes(args.train), read_bytes(args.val)
    if len(train) <= args.seq_len:
        sys.exit(f"training text has {len(train)} bytes; --seq-len {args.seq_len} needs more")
    model, source = build_model(args, train)
    cfg = model.cfg
    nparams = sum(p.numel() for p in model.parameters())
    start = f" from {args.init_from}" if args.init_from else ""
    print(f"model: {cfg.layers}x{cfg.cell}-{cfg.hidden} {cfg.attention} window {cfg.window}, "
          f"{nparams} parameters{start}; train {len(train)} bytes, val {len(val)} bytes", flush=True)
    jlog = JsonLog(args.log_json)
    jlog.write(event="start", parameters=nparams, command=argv, cell=cfg.cell, attention=cfg.attention)
    def save_best(out, step, train_s):
        snapshot = AttnLM(cfg)
        snapshot.load_state_dict(out["best_state"])
        partial = dict(out, tokens=out["tokens"], train_seconds=train_s, wall_seconds=0.0, steps=step)
        export_model(snapshot, args.out, provenance_of(args, argv, partial, source), args.export_dtype)

    result = train_loop(model, args, train, val, log=lambda s: print(s, flush=True), jlog=jlog,
                        on_best=save_best if args.save_best else None)
    model.load_state_dict(result["best_state"])
    model.eval()
    export_model(model, args.out, provenance_of(args, argv, result, source), args.export_dtype)
    jlog.write(event="end", best_val_loss=result["best"], tokens=result["tokens"],
               train_seconds=round(result["train_seconds"], 2), wall_seconds=round(result["wall_seconds"], 2),
               steps=result["steps"], clock=args.clock)
    print(f"exported {args.out}: best val_loss {result['best']:.4f} nats/byte after {result['tokens']} tokens "
          f"in {result['train_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
