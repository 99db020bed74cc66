"""The same work as bench_engine, done by the project's PyTorch model in eager mode.

    bench_torch.py MODEL TEXT_FILE [DECODE_STEPS]

Prints the same `name value` lines as bench_engine.  Scoring is one forward()
over BOS + TEXT followed by log_softmax.  Decoding uses an incremental step
(the RNN's own state plus a cache of the last `window` top-layer outputs, so a
step costs what it costs in C), checked against forward() before timing.
PyTorch runs on one thread, like each engine worker; times are that thread's
CPU time, the best of REPS, as bench_engine's.
"""
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
from attnlm import BOS_ID, load_model  # noqa: E402

REPS = 7
PROMPT_BYTES = 32


class Decoder:
    """Incremental decoding state for B sequences of equal length."""

    def __init__(self, model, prompts):
        self.m = model
        x = torch.tensor(prompts)
        e = model.embed(x)
        out, self.state = model.rnn(e)
        self.hist = out[:, -model.cfg.window:]
        if model.cfg.attn_kv == "continuation":
            # key sources: the state before each position (zeros before the first); values: its byte
            self.ksrc = F.pad(out, (0, 0, 1, 0))[:, :-1][:, -model.cfg.window:]
            self.vsrc = e[:, -model.cfg.window:]
            self.last = out[:, -1]
        elif model.cfg.attention == "additive":
            self.keys = model.attn.key(self.hist)

    def continuation_context(self, h):
        """The context of h over the key sources ksrc [B, n, H] and values vsrc [B, n, E]."""
        m, cfg, a, K, V = self.m, self.m.cfg, self.m.attn, self.ksrc, self.vsrc
        if cfg.attention == "multihead":
            B, n, H = K.shape
            N = a.heads
            D = H // N
            bq, bk, bv = a.in_proj_bias.chunk(3)
            q = F.linear(h, a.q_proj_weight, bq).view(B, N, D)
            k = F.linear(K, a.k_proj_weight, bk).view(B, n, N, D)
            u = F.linear(V, a.v_proj_weight, bv).view(B, n, N, D)
            alpha = torch.softmax(torch.einsum("bnd,bind->bni", q, k) / math.sqrt(D), -1)
            return a.out_proj(torch.einsum("bni,bind->bnd", alpha, u).reshape(B, H))
        if cfg.attention == "dot":
            s = (K @ h.unsqueeze(-1)).squeeze(-1) / math.sqrt(h.shape[-1])
        elif cfg.attention == "cosine":
            kn = F.normalize(K, dim=-1, eps=1e-8)
            s = a.scale * (kn @ F.normalize(h, dim=-1, eps=1e-8).unsqueeze(-1)).squeeze(-1)
        else:
            s = a.v(torch.tanh(a.query(h).unsqueeze(1) + a.key(K))).squeeze(-1)
        return (torch.softmax(s, -1).unsqueeze(1) @ V).squeeze(1)

    def step(self, tokens):
        m, cfg = self.m, self.m.cfg
        e = m.embed(tokens).unsqueeze(1)
        out, self.state = m.rnn(e, self.state)
        h = out[:, 0]
        if cfg.attn_kv == "continuation":
            self.ksrc = torch.cat([self.ksrc, self.last.unsqueeze(1)], 1)[:, -cfg.window:]
            self.vsrc = torch.cat([self.vsrc, e], 1)[:, -cfg.window:]
            self.last = h
            return m.out(torch.tanh(m.combine(torch.cat([h, self.continuation_context(h)], -1))))
        self.hist = torch.cat([self.hist, out], 1)[:, -cfg.window:]
        if cfg.attention == "dot":
            s = (self.hist @ h.unsqueeze(-1)).squeeze(-1) / math.sqrt(h.shape[-1])
            ctx = (torch.softmax(s, -1).unsqueeze(1) @ self.hist).squeeze(1)
        elif cfg.attention == "cosine":
            hn = F.normalize(self.hist, dim=-1, eps=1e-8)
            s = m.attn.scale * (hn @ hn[:, -1].unsqueeze(-1)).squeeze(-1)
            ctx = (torch.softmax(s, -1).unsqueeze(1) @ self.hist).squeeze(1)
        elif cfg.attention == "additive":
            self.keys = torch.cat([self.keys, m.attn.key(out)], 1)[:, -cfg.window:]
            s = m.attn.v(torch.tanh(m.attn.query(h).unsqueeze(1) + self.keys)).squeeze(-1)
            ctx = (torch.softmax(s, -1).unsqueeze(1) @ self.hist).squeeze(1)
        else:
            ctx, _ = m.attn(out, self.hist, self.hist, need_weights=False)
            ctx = ctx[:, 0]
        return m.out(torch.tanh(m.combine(torch.cat([h, ctx], -1))))


def check_step(model, tokens):
    """Largest |log-prob| difference between stepping and forward() over tokens."""
    full = torch.log_softmax(model(torch.tensor([tokens]))[0], -1)[0]
    dec = Decoder(model, [tokens[:PROMPT_BYTES]])
    worst = 0.0
    for t in range(PROMPT_BYTES, len(tokens)):
        lp = torch.log_softmax(dec.step(torch.tensor([tokens[t]])), -1)[0]
        worst = max(worst, (lp - full[t]).abs().max().item())
    return worst


def timed(fn):
    fn()
    secs = []
    for _ in range(REPS):
        t0 = time.thread_time()
        fn()
        secs.append(time.thread_time() - t0)
    return min(secs)


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: bench_torch.py MODEL TEXT_FILE [DECODE_STEPS (256)]")
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    torch.set_num_threads(1)
    model, _ = load_model(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        text = list(f.read())
    tokens = [BOS_ID] + text

    with torch.inference_mode():
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread")
        print("timing thread-cpu-time")
        diff = check_step(model, tokens[:PROMPT_BYTES + 2 * model.cfg.window + 5])
        print(f"step_vs_forward_max_abs_diff {diff:.2e}")
        if diff > 1e-4:
            sys.exit("bench_torch: the incremental step disagrees with forward(); not timing it")
        x = torch.tensor([tokens])
        s = timed(lambda: torch.log_softmax(model(x)[0], -1))
        print(f"score_bytes {len(text)}")
        print(f"score_tokens_per_s {len(text) / s:.1f}")
        print(f"decode_steps {steps}")
        for B in (1, 8, 32):
            starts = [(b * 29) % (len(text) - PROMPT_BYTES) for b in range(B)]
            prompts = [[BOS_ID] + text[s:s + PROMPT_BYTES] for s in starts]

            def decode():
                dec = Decoder(model, [p[:-1] for p in prompts])
                tok = torch.tensor([p[-1] for p in prompts])
                for _ in range(steps):
                    tok = dec.step(tok).argmax(-1)

            # Prefill is inside decode() here; time it alone and subtract.
            pre = timed(lambda: Decoder(model, [p[:-1] for p in prompts]))
            s = max(timed(decode) - pre, 1e-9)
            print(f"decode_b{B}_tokens_per_s {B * steps / s:.1f}")
            print(f"decode_b{B}_ms_per_step {1e3 * s / steps:.3f}")


if __name__ == "__main__":
    main()
