#!/usr/bin/env python3
"""Channel dependence of each model feature, from `emonav eval --cache` files.

For each feature and each line condition C, the shift is the median over clips
of |x_C - x_pcmu| / sd_pcmu (whole-clip vectors, sd over the pcmu clips): how
far the same clip moves between a full-band line and line C, in units of the
feature's spread over clips. Usage:

    scripts/feature-shift.py CACHE_DIR/r4-59-HASH NAMES_FILE [COND ...]

NAMES_FILE holds the feature names one a line (emonav_dsp::model::FEATURE_NAMES).
Prints a table and, last, the features whose mean shift over the given
conditions exceeds 0.5 (the pruning rule of docs/model.md).
"""
import math
import os
import struct
import sys

SNAPSHOTS = 2


def load(d, n):
    out = {}
    for f in os.listdir(d):
        b = open(os.path.join(d, f), "rb").read()
        v = struct.unpack("<%df" % ((SNAPSHOTS + 1) * n), b[: (SNAPSHOTS + 1) * n * 4])
        out[f] = v[SNAPSHOTS * n :]
    return out


def main():
    root, names_file = sys.argv[1], sys.argv[2]
    conds = sys.argv[3:] or ["pcmu-band", "pcma-band", "pcmu-sinc", "white-20", "babble-20"]
    names = [l.strip() for l in open(names_file) if l.strip()]
    n = len(names)
    ref = load(os.path.join(root, "pcmu"), n)
    other = {c: load(os.path.join(root, c), n) for c in conds}
    print("%-26s %s %8s" % ("feature", " ".join("%10s" % c[:10] for c in conds), "mean"))
    drop = []
    for k, name in enumerate(names):
        xs = [v[k] for v in ref.values() if not math.isnan(v[k])]
        m = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)) or 1e-9
        shifts = []
        for c in conds:
            d = sorted(
                abs(other[c][f][k] - ref[f][k]) / sd
                for f in ref
                if f in other[c] and not math.isnan(ref[f][k]) and not math.isnan(other[c][f][k])
            )
            shifts.append(d[len(d) // 2] if d else float("nan"))
        mean = sum(shifts) / len(shifts)
        if mean > 0.5:
            drop.append(name)
        print("%-26s %s %8.2f" % (name, " ".join("%10.2f" % s for s in shifts), mean))
    print("drop (mean shift > 0.5):", ",".join(drop))


main()
