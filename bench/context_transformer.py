#!/usr/bin/env python3
"""What a decoding step costs a decoder-only transformer after a long context: a KV cache of N
positions per layer, beside attnlm's recurrent state and window (bench/context.c).

    context_transformer.py PARAMETERS N...

A pre-norm GPT of about PARAMETERS parameters (4 layers, 4 heads, feed-forward 4 x d_model, byte
vocabulary; d_model chosen to match PARAMETERS), random weights: timing does
not depend on them.  For each N the cache of every layer is filled with N random keys and values
(as a prefill of N tokens would leave it), then STEPS decoding steps are timed, each attending over
the whole cache and appending to it.  One thread, eager PyTorch, no gradients; the thread's CPU
time, best of REPS.  Prints `transformer_parameters P` and `context_N_us_per_token V` lines.
"""
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

STEPS, REPS, LAYERS, HEADS, VOCAB = 64, 3, 4, 4, 257


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def step(self, x, k_cache, v_cache, n):
        """One position: x [1, d]; the caches hold n positions [H, cap, d/H]; appends the new one."""
        d = x.shape[-1]
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(HEADS, 1, d // HEADS) for t in (q, k, v))
        k_cache[:, n:n + 1] = k
        v_cache[:, n:n + 1] = v
        keys, values = k_cache[:, :n + 1], v_cache[:, :n + 1]
        w = torch.softmax(q @ keys.transpose(1, 2) / math.sqrt(d // HEADS), dim=-1)
        att = w @ values
        x = x + self.proj(att.reshape(1, d))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.emb, self.pos = nn.Embedding(VOCAB, d), nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(Block(d) for _ in range(LAYERS))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, VOCAB, bias=False)

    def step(self, tok, caches, n):
        x = self.emb(tok) + self.pos
        for b, (kc, vc) in zip(self.blocks, caches):
            x = b.step(x, kc, vc, n)
        return self.head(self.ln(x))


def width_for(params):
    """The d_model (a multiple of HEADS) whose GPT is closest to params parameters."""
    best = None
    for d in range(32, 1024, HEADS):
        p = sum(t.numel() for t in GPT(d).parameters())
        if best is None or abs(p - params) < abs(best[1] - params):
            best = (d, p)
    return best


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d, p = width_for(int(sys.argv[1]))
    model = GPT(d).eval()
    print("transformer_parameters %d" % p)
    print("transformer_d_model %d" % d)
    for n in (int(a) for a in sys.argv[2:]):
        cap = n + STEPS + 1
        caches = [(torch.randn(HEADS, cap, d // HEADS), torch.randn(HEADS, cap, d // HEADS)) for _ in range(LAYERS)]
        best = math.inf
        with torch.no_grad():
            tok = torch.tensor([101])
            model.step(tok, caches, n)  # warm-up
            for _ in range(REPS):
                t0 = time.thread_time()
                for i in range(STEPS):
                    logits = model.step(tok, caches, n + i)
                    tok = logits.argmax(-1)
                best = min(best, time.thread_time() - t0)
        print("context_%d_us_per_token %.2f" % (n, best / STEPS * 1e6))
        sys.stdout.flush()
        del caches


if __name__ == "__main__":
    main()
