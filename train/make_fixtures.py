#!/usr/bin/env python3
"""Writes the parity fixtures the C tests check the engine against.

For every cell x attention combination: a small random model
(<name>.safetensors) and what PyTorch computes for a fixed text
(<name>.expected.safetensors: "tokens" [T], "logprobs" [T, V], the dense
attention maps "attention" [N, T, T], and "logprobs_self" [T, V], the
log-probabilities with a window of one: the attention's contribution removed).
Every combination comes with attn_kv "state" (<cell>_<attention>, format
version 1) and "continuation" (<cell>_<attention>_cont, version 2).  The window is shorter than the text,
there are 2 layers and multihead has 3 heads, so every code path is exercised.
Three "wide" models (hidden 40, embedding 24) also take the engine's 16-wide
vector paths together with their remainders, and one "long" model has a
window of 80 positions, longer than a block of the forward pass.

usage: make_fixtures.py OUT_DIR
"""
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnlm import ATTENTIONS, CELLS, AttnLM, Config, band_to_dense, encode, save_safetensors  # noqa: E402

TEXT = "Call me Ishmael. Whale \u2014 \u00bd fathom!"


def build(cell, attention, seed, embed_dim=8, hidden=12, attn_dim=7, heads=3, window=5, attn_kv="state"):
    # Weights of N(0, 0.6) at hidden 12; wider models get the same pre-activation
    # scale, so they are as far from chaotic as the narrow ones.
    std = 0.6 * (12 / hidden) ** 0.5
    torch.manual_seed(seed)
    cfg = Config(cell=cell, attention=attention, embed_dim=embed_dim, hidden=hidden, layers=2, window=window,
                 attn_dim=attn_dim, heads=heads, attn_kv=attn_kv)
    model = AttnLM(cfg)
    with torch.no_grad():
        # Larger than default init, so attention is far from uniform and gates saturate sometimes.
        for name, p in model.named_parameters():
            p.normal_(0.0, std)
        if attention == "cosine":
            model.attn.scale.fill_(4.0)
    model.eval()
    return model


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    tokens = torch.tensor([encode(TEXT)])
    combos = [(c, a, f"{c}_{a}", {}) for c in CELLS for a in ATTENTIONS]
    wide = dict(embed_dim=24, hidden=40, attn_dim=20, heads=4)
    combos += [("gru", "multihead", "wide_gru_multihead", wide), ("lstm", "cosine", "wide_lstm_cosine", wide),
               ("elman", "additive", "wide_elman_additive", wide)]
    combos += [("lstm", "multihead", "long_lstm_multihead", dict(window=80))]
    cont = dict(attn_kv="continuation")
    combos += [(c, a, f"{c}_{a}_cont", cont) for c in CELLS for a in ATTENTIONS]
    combos += [("gru", "dot", "wide_gru_dot_cont", dict(wide, **cont)),
               ("lstm", "multihead", "wide_lstm_multihead_cont", dict(wide, **cont)),
               ("elman", "cosine", "long_elman_cosine_cont", dict(window=80, **cont))]
    for n, (cell, attention, name, sizes) in enumerate(combos):
        model = build(cell, attention, seed=100 + n, **sizes)
        # The reference is computed in float64 so that it is exact to well below
        # the tolerance; the file stores the float32 weights it was computed from.
        ref = copy.deepcopy(model).double()
        with torch.no_grad():
            logits, band = ref(tokens, need_weights=True)
            logprobs = torch.log_softmax(logits, -1)[0].float()
            dense = band_to_dense(band)[0].float()
            own = torch.log_softmax(ref(tokens, window=1)[0], -1)[0].float()
        md = model.cfg.metadata()
        md["name"] = f"fixture {name}"
        save_safetensors(os.path.join(out, name + ".safetensors"), model.state_dict(), md)
        save_safetensors(os.path.join(out, name + ".expected.safetensors"),
                         {"tokens": tokens[0].float(), "logprobs": logprobs, "attention": dense,
                          "logprobs_self": own},
                         {"text": TEXT})
        print(f"{name}: {tokens.shape[1]} tokens, mean logprob {logprobs.mean().item():.4f}")


if __name__ == "__main__":
    main()
