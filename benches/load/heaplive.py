#!/usr/bin/env python3
"""What the heap holds at one instant of a heaptrack recording, by the
emonav function that allocated it: for memory that is freed before the
process exits (so heaptrack's leak report misses it) but outlives the
load that made it, e.g. after an overload.

    heaptrack_interpret < RAW | zstd > FILE.zst      # or heaptrack's own .zst
    python3 benches/load/heaplive.py FILE.zst SECONDS [TOP]

SECONDS: the instant, from the start of the recording. Standard library
only; needs zstdcat. Reads heaptrack's interpreted text format (s/i/t/a
records, +/- allocation events, c timestamps in ms).
"""

import collections
import re
import subprocess
import sys

OURS = re.compile(r"(emonav|emonav_dsp|emonav_sip|<emonav|_\$LT\$emonav)")
GENERIC = re.compile(r"(_RN|alloc::|core::|<alloc|std::|__rust|<T as alloc|_\$LT\$alloc|_\$LT\$T)")


def main():
    path, at = sys.argv[1], float(sys.argv[2]) * 1000
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    strings, ips, traces, allocs = [""], [0], [(0, 0)], []
    live = collections.Counter()
    snap = None
    with subprocess.Popen(["zstdcat", path], stdout=subprocess.PIPE, text=True,
                          errors="replace") as p:
        for line in p.stdout:
            k = line[:1]
            if k == "+":
                live[int(line[2:], 16)] += 1
            elif k == "-":
                live[int(line[2:], 16)] -= 1
            elif k == "c":
                if snap is None and int(line[2:], 16) >= at:
                    snap = collections.Counter(live)
            elif k == "s":
                strings.append(line[2:].rstrip("\n").split(" ", 1)[-1])
            elif k == "i":
                f = line.split()
                ips.append(int(f[3], 16) if len(f) > 3 else 0)
            elif k == "t":
                f = line.split()
                traces.append((int(f[1], 16), int(f[2], 16)))
            elif k == "a":
                f = line.split()
                allocs.append((int(f[1], 16), int(f[2], 16)))
    if snap is None:
        raise SystemExit("the recording ends before that instant")

    def frames(ti):
        out = []
        while ti:
            ip, ti = traces[ti]
            fn = ips[ip] if ip < len(ips) else 0
            out.append(re.sub(r"::h[0-9a-f]{16}$", "", strings[fn] if fn < len(strings) else "?"))
        return out

    size, count = collections.Counter(), collections.Counter()
    for ai, n in snap.items():
        if n <= 0:
            continue
        bytes_, ti = allocs[ai]
        fr = frames(ti)
        ours = next((f for f in fr if OURS.match(f)), fr[0] if fr else "?")
        named = next((f for f in fr if not GENERIC.match(f)), "?")
        key = (ours[:80], named[:60])
        size[key] += bytes_ * n
        count[key] += n
    print(f"live at {at / 1000:g} s: {sum(size.values()) / 1048576:.2f} MB "
          f"in {sum(count.values())} allocations")
    print("| KiB | allocations | emonav function | innermost named frame |")
    print("| --- | --- | --- | --- |")
    for key, v in size.most_common(top):
        print(f"| {v / 1024:.1f} | {count[key]} | {key[0]} | {key[1]} |")


if __name__ == "__main__":
    main()
