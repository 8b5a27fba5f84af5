#!/usr/bin/env python3
"""Reads `perf script` output on stdin and splits the samples under FUNCTION (a substring of a
frame's name) by its callees, DEPTH levels down, as percentages of all samples.
Usage: perf script -i perf.data | bench/perf_under.py FUNCTION [DEPTH]"""
import sys
from collections import Counter

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from perf_top import samples  # noqa: E402

target = sys.argv[1]
depth = int(sys.argv[2]) if len(sys.argv) > 2 else 1
total, under, paths = 0, 0, Counter()
for stack in samples(sys.stdin):
    total += 1
    frames = list(reversed(stack))  # outermost first
    idx = [i for i, f in enumerate(frames) if target in f]
    if not idx:
        continue
    under += 1
    i = idx[0]
    paths[" > ".join(f[:90] for f in frames[i + 1 : i + 1 + depth]) or "(self)"] += 1
print(f"{total} samples, {100 * under / max(total, 1):.1f}% under {target}")
for path, n in paths.most_common(30):
    print(f"{100 * n / total:6.1f}%  {path}")
