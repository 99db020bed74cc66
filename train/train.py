#!/usr/bin/env python3
"""Trains an attnlm model on a byte-level text corpus and exports it as safetensors.

Every training sequence is [BOS] + a random slice of the training text, so the
model learns the same function the service evaluates.  Validation loss is the
mean negative log-likelihood in nats per byte over the whole validation text,
cut into consecutive slices of --eval-len bytes, each starting with BOS.
The exported weights are those of the best validation loss seen.
"""
import argparse
import copy
import datetime
import math
import os
import shlex
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnlm import ATTENTIONS, BOS_ID, CELLS, EXPORT_DTYPES, AttnLM, Config, export_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training text file (UTF-8)")
    p.add_argument("--val", required=True, help="validation text file (UTF-8)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--export-dtype", choices=EXPORT_DTYPES, default="f32",
                   help="tensor type of the exported file: f32, or bf16 (half the size, rounded to nearest even)")
    p.add_argument("--corpus", default="", help="corpus description recorded in the metadata")
    p.add_argument("--name", default="attnlm", help="model name recorded in the metadata")
    p.add_argument("--cell", choices=CELLS, default="gru")
    p.add_argument("--attention", choices=ATTENTIONS, default="multihead")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--attn-dim", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="final lr as a fraction of --lr (cosine decay)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-len", type=int, default=256)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--init", choices=("scaled", "torch"), default="scaled",
                   help="recurrent weight initialisation (see init_for_training)")
    return p.parse_args(argv)


def read_bytes(path):
    with open(path, "rb") as f:
        return torch.tensor(list(f.read()), dtype=torch.long)


def make_batch(data, batch, seq_len, gen):
    starts = torch.randint(0, len(data) - seq_len, (batch,), generator=gen)
    y = torch.stack([data[s:s + seq_len] for s in starts.tolist()])
    x = torch.cat([torch.full((batch, 1), BOS_ID, dtype=torch.long), y[:, :-1]], 1)
    return x, y


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


def init_for_training(model):
    """Orthogonal recurrent and Xavier input weights per gate block, zero biases.

    PyTorch's default U(-1/sqrt(H), 1/sqrt(H)) shrinks the signal at every
    stacked layer, and deeper or wider stacks then sit for hundreds of steps
    at the unigram solution before the input starts to matter.
    """
    H = model.cfg.hidden
    for name, p in model.rnn.named_parameters():
        if name.startswith("weight_hh"):
            for g in range(0, p.shape[0], H):
                torch.nn.init.orthogonal_(p.data[g:g + H])
        elif name.startswith("weight_ih"):
            for g in range(0, p.shape[0], H):
                torch.nn.init.xavier_uniform_(p.data[g:g + H])
        else:
            torch.nn.init.zeros_(p)


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    ratio = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * ratio


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train, val = read_bytes(args.train), read_bytes(args.val)
    if len(train) <= args.seq_len:
        sys.exit(f"training text has {len(train)} bytes; --seq-len {args.seq_len} needs more")
    cfg = Config(cell=args.cell, attention=args.attention, embed_dim=args.embed, hidden=args.hidden,
                 layers=args.layers, window=args.window, attn_dim=args.attn_dim, heads=args.heads)
    model = AttnLM(cfg, dropout=args.dropout)
    if args.init == "scaled":
        init_for_training(model)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.layers}x{cfg.cell}-{cfg.hidden} {cfg.attention} window {cfg.window}, "
          f"{nparams} parameters; train {len(train)} bytes, val {len(val)} bytes", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    best, best_state, tokens = float("inf"), None, 0
    t0 = time.time()
    window_loss, window_n = 0.0, 0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        x, y = make_batch(train, args.batch, args.seq_len, gen)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        tokens += y.numel()
        window_loss += loss.item()
        window_n += 1
        last = step + 1 == args.steps
        if (step + 1) % args.log_every == 0 or last:
            el = time.time() - t0
            rate = tokens / el
            eta = (args.steps - step - 1) * args.batch * args.seq_len / rate
            print(f"step {step + 1}/{args.steps} loss {window_loss / window_n:.4f} "
                  f"lr {lr_at(step, args):.2e} {rate:.0f} tok/s elapsed {el / 60:.1f} min "
                  f"eta {eta / 60:.1f} min", flush=True)
            window_loss, window_n = 0.0, 0
        if (step + 1) % args.eval_every == 0 or last:
            v = evaluate(model, val, args.eval_len)
            print(f"step {step + 1} val_loss {v:.4f} nats/byte", flush=True)
            if v < best:
                best, best_state = v, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    provenance = {
        "name": args.name,
        "corpus": args.corpus,
        "train_tokens": tokens,
        "val_loss": f"{best:.4f}",
        "val_loss_unit": f"nats/byte, BOS-prefixed slices of {args.eval_len} bytes",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python3 train/train.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "train_seconds": f"{time.time() - t0:.0f}",
    }
    export_model(model, args.out, provenance, args.export_dtype)
    print(f"exported {args.out}: best val_loss {best:.4f} nats/byte after {tokens} tokens", flush=True)


if __name__ == "__main__":
    main()
