#!/usr/bin/env python3
"""Memory per concurrent analysed call (issue 11 item 4): N calls up at
once, all of them playing speech and analysed, placed at a low rate.

    python3 benches/load/held.py [--calls 100,500] [--rate 50]

For each N, a fresh emonav (the profile benches/load/ramp.py writes, with
a policy that does not decide while the calls last) takes N SIPp calls
(benches/load/uac_held.xml: speech until every call has been up a few
seconds, then BYE) placed at `--rate` calls/s. Once all N are up (the
`emonav_calls_active` gauge) and `--settle` seconds more, emonav's VmRSS
is sampled for `--sample` seconds (median), with its heap in use from
glibc (`mallinfo2`, through gdb, when `--heap`). The slope between two Ns
is the memory one more concurrent analysed call costs: fresh processes,
no call ended yet, so nothing a finished call leaves (its completed SIP
transactions, its decision) is in it.

Standard library only; needs SIPp, taskset (unless --no-pin) and, for
--heap, gdb.
"""

import argparse
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ramp  # noqa: E402  (its emonav launcher and /proc readers)

SCENARIO = os.path.join(ramp.ROOT, "benches", "load", "uac_held.xml")
# The fixture's length: the scenario plays it, then waits this long.
PLAY_S = 4.5
# No decision while the calls last: every packet is decoded and analysed.
POLICY = "\n[policy]\nmin_speech_ms = 600000\ndecision_deadline_ms = 600000\n"


def scenario(workdir, loops):
    with open(SCENARIO) as f:
        xml = f.read().replace("../../tests/fixtures/agitated-pcmu.pcap", ramp.PCAP)
    xml, n = re.subn(r'(variable="played" compare="less_than" value=")\d+(")',
                     rf"\g<1>{loops}\g<2>", xml)
    if n != 1:
        raise SystemExit(f"{SCENARIO}: the loop count test was not found")
    path = os.path.join(workdir, "uac_held.xml")
    with open(path, "w") as f:
        f.write(xml)
    return path


def heap_in_use_mb(emonav):
    """glibc's bytes in use, all arenas and mmapped chunks (`malloc_stats`,
    called by gdb in the live process, prints them to its stderr: the log);
    None without gdb."""
    if not shutil.which("gdb"):
        return None
    subprocess.run(["gdb", "-p", str(emonav.pid), "-batch", "-nx",
                    "-ex", "call (void) malloc_stats()"],
                   capture_output=True, text=True, timeout=60)
    time.sleep(0.5)
    with open(emonav.log_path) as f:
        found = re.findall(r"Total \(incl. mmap\):\s*system bytes\s*=\s*(\d+)\s*in use bytes\s*=\s*(\d+)",
                           f.read())
    return int(found[-1][1]) / 1048576.0 if found else None


def metric(emonav, name):
    """A metric, waiting out a slow answer: emonav pinned to a busy core
    may take seconds to serve /metrics while hundreds of calls play."""
    for _ in range(5):
        try:
            return emonav.metric(name)
        except OSError:
            time.sleep(1.0)
    return emonav.metric(name)


def measure(a, n, core, sipp_core, workdir):
    d = os.path.join(workdir, f"n{n}")
    os.makedirs(d)
    emonav = ramp.Emonav(a.binary, d, 0, 0, max(a.rtp_ports, 4 * n), core, POLICY)
    try:
        time.sleep(1.0)
        idle = ramp.rss_mb(emonav.pid)
        place_s = n / a.rate
        loops = max(2, math.ceil((place_s + a.settle + a.sample + 20.0) / PLAY_S))
        cmd = ["sipp", emonav.sip, "-sf", scenario(d, loops), "-t", "u1",
               "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(ramp.free_port()),
               # Above emonav's range (ramp.py puts it in 20000-32000).
               "-mp", str(40000 + 4 * random.randrange(0, 4000)),
               "-r", f"{a.rate:g}", "-m", str(n), "-l", str(n), "-nostdin",
               "-timeout", str(int(place_s + loops * PLAY_S + 60)),
               "-trace_err", "-error_file", os.path.join(d, "errors.log")]
        if sipp_core is not None:
            cmd = ["taskset", "-c", str(sipp_core)] + cmd
        err = open(os.path.join(d, "sipp.stderr"), "w")
        sipp = subprocess.Popen(cmd, cwd=d, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
        t0 = time.monotonic()
        up = 0.0
        while time.monotonic() - t0 < place_s + 10.0 and sipp.poll() is None:
            up = metric(emonav, "emonav_calls_active")
            if up >= n:
                break
            time.sleep(0.2)
        # A call SIPp lost (a late 200 it gave up on) is not a reason to
        # throw the step away: the figures use the calls actually up.
        if up < 0.95 * n:
            sipp.kill()
            with open(os.path.join(d, "sipp.stderr")) as f:
                tail = f.read()[-500:]
            raise SystemExit(f"only {up:.0f} of {n} calls came up; see {d}\n{tail}")
        time.sleep(a.settle)
        cpu0, w0 = ramp.cpu_seconds(emonav.pid), time.monotonic()
        rss = []
        while time.monotonic() - w0 < a.sample:
            rss.append(ramp.rss_mb(emonav.pid))
            time.sleep(0.25)
        cpu = (ramp.cpu_seconds(emonav.pid) - cpu0) / (time.monotonic() - w0)
        up = metric(emonav, "emonav_calls_active")
        decided = metric(emonav, "emonav_decisions_total")
        # Attaching gdb to a large binary takes seconds: after the counts.
        heap = heap_in_use_mb(emonav) if a.heap else None
        sipp.wait(loops * PLAY_S + 120)
        return {"calls": int(up), "placed": n, "idle_rss_mb": round(idle, 1),
                "rss_mb": round(statistics.median(rss), 2),
                "heap_mb": round(heap, 2) if heap is not None else None,
                "decided": int(decided),
                "emonav_cpu_pct": round(100 * cpu, 1), "sipp_rc": sipp.returncode}
    finally:
        emonav.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ramp.ROOT, "target", "release", "emonav"))
    ap.add_argument("--calls", default="100,500", help="calls up at once, one fresh emonav each")
    ap.add_argument("--rate", type=float, default=50.0, help="calls placed per second")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after all are up")
    ap.add_argument("--sample", type=float, default=3.0, help="seconds of RSS samples (median)")
    ap.add_argument("--rtp-ports", type=int, default=8000, help="width of the RTP port range")
    ap.add_argument("--heap", action="store_true", help="also read glibc's heap in use (gdb)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin emonav and SIPp to cores")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (SIPp logs)")
    a = ap.parse_args()
    core, sipp_core = ramp.cores_for(a, "scripts/load.sh")
    workdir = tempfile.mkdtemp(prefix="emonav-held-")
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"# {a.binary}; calls placed at {a.rate:g}/s, held up playing speech, undecided; "
          f"load average {load}")
    print("| calls up (sampled) | idle RSS MB | RSS MB (all up) | KiB/call over idle | heap in use MB "
          "| emonav CPU % | decided | SIPp exit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    try:
        for n in (int(x) for x in a.calls.split(",")):
            r = measure(a, n, core, sipp_core, workdir)
            rows.append(r)
            per = 1024 * (r["rss_mb"] - r["idle_rss_mb"]) / r["calls"]
            print(f"| {r['calls']} | {r['idle_rss_mb']} | {r['rss_mb']} | {per:.0f} | "
                  f"{ramp.fmt(r['heap_mb'])} | {r['emonav_cpu_pct']} | "
                  f"{r['decided']} | {r['sipp_rc']} |", flush=True)
        for lo, hi in zip(rows, rows[1:]):
            dn = hi["calls"] - lo["calls"]
            line = (f"slope {lo['calls']} -> {hi['calls']} calls: "
                    f"RSS {1024 * (hi['rss_mb'] - lo['rss_mb']) / dn:.1f} KiB per call")
            if lo["heap_mb"] is not None and hi["heap_mb"] is not None:
                line += f", heap in use {1024 * (hi['heap_mb'] - lo['heap_mb']) / dn:.1f} KiB per call"
            print(line)
        if any(r["decided"] for r in rows):
            print("# warning: a call was decided: the figures are not of undecided calls only")
        if any(r["sipp_rc"] != 0 for r in rows):
            print("# note: SIPp lost a call (exit status != 0); the figures count the calls up")
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
