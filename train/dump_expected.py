#!/usr/bin/env python3
"""Writes what the PyTorch implementation computes for a text, for parity checks.

usage: dump_expected.py MODEL.safetensors TEXT OUT.safetensors
OUT holds "tokens" [T] (as floats), "logprobs" [T, V] and dense "attention" [N, T, T],
computed in float64 from the model's float32 weights.
"""
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnlm import band_to_dense, encode, load_model, save_safetensors  # noqa: E402


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip())
    model, _ = load_model(sys.argv[1])
    tokens = torch.tensor([encode(sys.argv[2])])
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        logits, band = ref(tokens, need_weights=True)
    save_safetensors(sys.argv[3], {"tokens": tokens[0].float(),
                                   "logprobs": torch.log_softmax(logits, -1)[0].float(),
                                   "attention": band_to_dense(band)[0].float()}, {"text": sys.argv[2]})


if __name__ == "__main__":
    main()
