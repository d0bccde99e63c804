#!/usr/bin/env python3
"""Signalling-only set-up rate of emonav (issue 11: >= 2,000 set-ups/s with
INVITE->200 p99 <= 15 ms on this 2-core machine, load generator included).

    cargo build --release
    python3 benches/load/sigrate.py [--rates 1000,1500,2000] [--seconds 10]
    python3 benches/load/sigrate.py --binary OLD --binary NEW --repeat 3

One step per offered rate (and per binary and repeat, alternating, so that
a before/after comparison sees the same host): a fresh emonav (the profile
benches/load/ramp.py writes, with `send_silence = false` and the RTP range
widened) pinned to cpu0, one SIPp process pinned to cpu1 placing calls with
benches/load/uac_signalling.xml (SIPp's built-in `uac`: INVITE, 200, ACK,
--hold-ms, BYE, 200; no RTP). Per step it prints:

- achieved/s: 200s received per second, from the first to the last
  (SIPp's per-call timer file) or, when that file is short, answered calls
  over the time the calls were being placed;
- failed calls and SIPp's retransmissions (a late 200 or 200-to-BYE);
- INVITE->200 p50 / p99 over every call, from SIPp's response-time
  repartition (1 ms buckets to 20 ms, counted by SIPp for each call; the
  value printed is the bucket's upper bound, SIPp's clock ticks in ms);
- emonav CPU per answered call (utime + stime from /proc, from just before
  the first INVITE to --settle s after the last call ended; the whole
  process: SIP, call tasks, timers, metrics, logging);
- emonav's context switches per call (/proc/PID/task/*/status: a count,
  steady where times are not on a shared host);
- emonav's and SIPp's busiest 1 s share of a core and the time emonav
  waited for its core (other processes on cpu0), which say who saturated.

Standard library only; needs SIPp and taskset.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ramp  # noqa: E402  (the harness's pieces, beside this file)

SCENARIO = os.path.join(ramp.ROOT, "benches", "load", "uac_signalling.xml")


def user_sys(pid):
    """(utime, stime) of a process in seconds: the kernel's share is the
    sockets, wake-ups and context switches."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / ramp.TICKS, int(fields[12]) / ramp.TICKS


def context_switches(pid):
    """Voluntary + involuntary context switches of every thread of a process
    (a count, robust on a shared host where times are not)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def repartition(counters, name):
    """[(upper bound ms or None for the last open bucket, count)] of a SIPp
    response-time repartition, in bucket order."""
    prefix = f"ResponseTimeRepartition{name}_"
    out = []
    for k, v in counters.items():
        if not k.startswith(prefix):
            continue
        bound = k[len(prefix):]
        try:
            n = int(v)
        except ValueError:
            continue
        out.append((float(bound[1:]) if bound.startswith("<") else None, n))
    return out


def bucket_percentile(buckets, p):
    """Upper bound (ms) of the bucket holding the p-th percentile call."""
    total = sum(n for _, n in buckets)
    if not total:
        return None
    rank = max(1, int(-(-p * total // 100)))
    seen = 0
    for bound, n in buckets:
        seen += n
        if seen >= rank:
            return bound if bound is not None else float("inf")
    return None


def sipp_stats(d):
    counters = {}
    path = os.path.join(d, "stat.csv")
    if os.path.exists(path):
        with open(path) as f:
            rows = [r.rstrip(";\n").split(";") for r in f if r.strip()]
        if len(rows) >= 2:
            counters = dict(zip(rows[0], rows[-1]))
    stamps, times = [], []
    for name in os.listdir(d):
        if name.endswith("_rtt.csv"):
            with open(os.path.join(d, name)) as f:
                for line in f:
                    parts = line.strip().split(";")
                    if len(parts) >= 3 and parts[2] == "setup":
                        try:
                            stamps.append(float(parts[0]))
                            times.append(float(parts[1]))
                        except ValueError:
                            pass
    return counters, stamps, times


def step(binary, workdir, rate, calls, hold_ms, settle, rtp_ports, e_core, s_core, tag):
    d = os.path.join(workdir, tag)
    os.makedirs(d)
    emonav = ramp.Emonav(binary, d, 0, 0, rtp_ports, e_core, media="send_silence = false")
    try:
        time.sleep(1.0)
        cmd = ["sipp", emonav.sip, "-sf", SCENARIO, "-t", "u1", "-i", "127.0.0.1",
               "-p", str(ramp.free_port()), "-r", f"{rate:g}", "-rp", "1000",
               "-m", str(calls), "-l", str(calls), "-d", str(hold_ms),
               "-timeout", str(int(calls / rate) + 60), "-nostdin",
               "-trace_stat", "-stf", os.path.join(d, "stat.csv"), "-fd", "1",
               "-trace_rtt", "-rtt_freq", "1",
               "-trace_err", "-error_file", os.path.join(d, "errors.log")]
        if s_core is not None:
            cmd = ["taskset", "-c", str(s_core)] + cmd
        e_cpu0, e_wait0, t0 = ramp.cpu_seconds(emonav.pid), ramp.run_delay_seconds(emonav.pid), time.monotonic()
        e_us0, e_cs0 = user_sys(emonav.pid), context_switches(emonav.pid)
        p = subprocess.Popen(cmd, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(d, "sipp.err"), "w"))
        samples = []
        s_cpu = 0.0
        while p.poll() is None:
            try:
                s_cpu = ramp.cpu_seconds(p.pid)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
            samples.append((time.monotonic(), ramp.cpu_seconds(emonav.pid), s_cpu))
            time.sleep(0.25)
        wall = time.monotonic() - t0
        time.sleep(settle)
        e_cpu = ramp.cpu_seconds(emonav.pid) - e_cpu0
        e_us = [b - a for a, b in zip(e_us0, user_sys(emonav.pid))]
        e_cs = context_switches(emonav.pid) - e_cs0
        e_wait = ramp.run_delay_seconds(emonav.pid) - e_wait0
    finally:
        emonav.stop()
    counters, stamps, times = sipp_stats(d)
    ok = ramp.count(counters, "SuccessfulCall(C)")
    failed = ramp.count(counters, "FailedCall(C)")
    if p.returncode not in (0, 1):
        failed = max(failed, calls - ok)
    buckets = repartition(counters, "setup")
    answered = sum(n for _, n in buckets)
    stamps.sort()
    if len(stamps) >= 0.95 * max(answered, 1) and len(stamps) > 1 and stamps[-1] > stamps[0]:
        achieved = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000.0)
    else:
        # Without the per-call stamps: the calls' own span is the wall time
        # less the hold and the last BYE's round trip.
        achieved = answered / max(wall - hold_ms / 1000.0, 0.001)
    e_peak, s_peak = ramp.peak_shares(samples)
    saturated = [n for n, v in (("emonav", e_peak), ("sipp", s_peak)) if v >= ramp.SATURATED]
    if e_wait / wall >= 0.10:
        saturated.append("host")
    return {
        "binary": binary,
        "offered_cps": rate,
        "calls": calls,
        "achieved_cps": round(achieved, 1),
        "answered": answered,
        "failed": failed,
        "retransmissions": ramp.count(counters, "Retransmissions(C)"),
        "setup_p50_ms": bucket_percentile(buckets, 50),
        "setup_p99_ms": bucket_percentile(buckets, 99),
        "setup_max_bucket_ms": next((b for b, n in reversed(buckets) if n), None),
        "rtt_file_calls": len(times),
        "rtt_file_p99_ms": ramp.percentile(times, 99),
        "cpu_us_per_call": round(1e6 * e_cpu / answered, 1) if answered else None,
        "sys_pct": round(100 * e_us[1] / e_cpu, 1) if e_cpu else None,
        "cs_per_call": round(e_cs / answered, 1) if answered else None,
        "emonav_peak_cpu_pct": round(100 * e_peak, 1),
        "emonav_wait_pct": round(100 * e_wait / wall, 1),
        "sipp_peak_cpu_pct": round(100 * s_peak, 1),
        "saturated": "+".join(saturated) or "neither",
    }


COLUMNS = [
    ("offered_cps", "offered/s"), ("achieved_cps", "achieved/s"), ("answered", "answered"),
    ("failed", "failed"), ("retransmissions", "retrans"), ("setup_p50_ms", "INV->200 p50 ms"),
    ("setup_p99_ms", "INV->200 p99 ms"), ("setup_max_bucket_ms", "max bucket ms"),
    ("rtt_file_p99_ms", "p99 rtt file"), ("rtt_file_calls", "rtt file calls"),
    ("cpu_us_per_call", "emonav CPU us/call"), ("sys_pct", "of it kernel %"),
    ("cs_per_call", "context switches/call"), ("emonav_peak_cpu_pct", "emonav peak CPU %"),
    ("emonav_wait_pct", "emonav CPU wait %"), ("sipp_peak_cpu_pct", "SIPp peak CPU %"),
    ("saturated", "saturated"),
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append",
                    help="emonav binary (repeat to alternate several; default target/release/emonav)")
    ap.add_argument("--rates", default="1000,1500,2000", help="offered set-ups per second, one step each")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of new calls per step")
    ap.add_argument("--hold-ms", type=int, default=1000, help="ACK to BYE, ms (SIPp -d)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds after the last call before emonav's CPU is read")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every (rate, binary)")
    ap.add_argument("--rtp-ports", type=int, default=16000, help="width of the RTP port range")
    ap.add_argument("--no-pin", action="store_true", help="do not pin emonav and SIPp to cores")
    ap.add_argument("--json", action="store_true", help="one JSON object per step on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (SIPp files, logs)")
    a = ap.parse_args()
    binaries = a.binary or [os.path.join(ramp.ROOT, "target", "release", "emonav")]
    a.binary = binaries[0]
    e_core, s_core = ramp.cores_for(a, "cargo build --release")
    for b in binaries:
        if not os.path.exists(b):
            raise SystemExit(f"{b} does not exist")
    workdir = tempfile.mkdtemp(prefix="emonav-sigrate-")
    results = []
    try:
        if not a.json:
            with open("/proc/loadavg") as f:
                load = " ".join(f.read().split()[:3])
            pin = "emonav cpu0, SIPp cpu1" if e_core is not None else "no"
            print(f"# signalling-only set-ups, hold {a.hold_ms} ms, {a.seconds:g} s of calls per step; "
                  f"pinned: {pin}; load average {load}")
            cols = ([("binary", "binary")] if len(binaries) > 1 else []) + COLUMNS
            print("| " + " | ".join(h for _, h in cols) + " |")
            print("|" + " --- |" * len(cols))
        n = 0
        for rnd in range(a.repeat):
            for rate in (float(r) for r in a.rates.split(",")):
                for b in binaries:
                    calls = max(1, int(round(rate * a.seconds)))
                    r = step(b, workdir, rate, calls, a.hold_ms, a.settle, a.rtp_ports, e_core, s_core,
                             f"step{n}")
                    n += 1
                    results.append(r)
                    if a.json:
                        print(json.dumps(r))
                    else:
                        print("| " + " | ".join(fmt(r[k]) for k, _ in cols) + " |")
                    sys.stdout.flush()
                    time.sleep(1.0)
        if a.repeat > 1 and not a.json:
            print("# medians over the rounds: binary, offered/s, achieved/s, p99 ms, CPU us/call, retrans")
            for b in binaries:
                for rate in (float(r) for r in a.rates.split(",")):
                    rs = [r for r in results if r["binary"] == b and r["offered_cps"] == rate]
                    med = lambda k: statistics.median(r[k] for r in rs if r[k] is not None)  # noqa: E731
                    print(f"# {b} {rate:g}: {med('achieved_cps'):g} {med('setup_p99_ms'):g} "
                          f"{med('cpu_us_per_call'):g} {med('retransmissions'):g}")
    finally:
        if a.keep:
            print(f"# work folder {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
