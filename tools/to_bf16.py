#!/usr/bin/env python3
"""Rewrites a model file's F32 tensors as BF16 (rounded to nearest even): half the size.

    tools/to_bf16.py IN.safetensors OUT.safetensors

The same file `train/train.py --export-dtype bf16` writes from the trained weights, made from
an exported F32 file with Python's standard library alone (the container image's build has no
PyTorch).  Metadata and tensor order are kept; BF16 tensors stay as they are.  NaN is kept a
NaN.  Any other dtype is refused.
"""
import json
import struct
import sys
from array import array


def to_bf16(raw):
    """Little-endian F32 bytes -> little-endian BF16 bytes, nearest even."""
    words = array("I")
    words.frombytes(raw)
    if sys.byteorder != "little":
        words.byteswap()
    out = array("H", bytes(2 * len(words)))
    for i, u in enumerate(words):
        if (u & 0x7F800000) == 0x7F800000 and (u & 0x007FFFFF):
            out[i] = (u >> 16) | 0x0040  # a quiet NaN, never rounded to infinity
        else:
            out[i] = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    with open(argv[1], "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out_header, blobs, offset = {}, [], 0
    if "__metadata__" in header:
        out_header["__metadata__"] = header.pop("__metadata__")
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = e["data_offsets"]
        raw = data[base + a:base + b]
        if e["dtype"] == "F32":
            raw = to_bf16(raw)
        elif e["dtype"] != "BF16":
            sys.exit(f"{argv[1]}: tensor {name} is {e['dtype']}, not F32 or BF16")
        out_header[name] = {"dtype": "BF16", "shape": e["shape"], "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(out_header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - (8 + len(hjson)) % 8) % 8)
    with open(argv[2], "wb") as f:
        f.write(struct.pack("<Q", len(hjson)) + hjson)
        for blob in blobs:
            f.write(blob)


if __name__ == "__main__":
    main(sys.argv)
