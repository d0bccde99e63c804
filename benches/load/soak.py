#!/usr/bin/env python3
"""Soak (issue 11 item 5): short analysed calls at a moderate rate for a long
time against the real binary, the RSS and open descriptors of emonav
sampled every --interval seconds, and a verdict.

Standard library only; scripts/soak.sh is the documented entry point (it
builds the release binary). The pieces are the load harness's
(benches/load/ramp.py): the same generated profile, the same SIPp caller
(benches/load/uac_load.xml: G.711 audio until emonav's REFER, then BYE),
one SIPp process placing --rate calls/s for --minutes.

Why a 6-minute warm-up at 30 calls/s: the decision API keeps each call's
decision readable for 5 minutes after it ended (src/decisions.rs RETAIN),
and prunes only once half of its 20,000 keys are in use; at 30 calls/s the
store reaches that after about 333 s and stays there. Before that, memory
rises by design, not by a leak. (At 20 calls/s it would take 500 s.)

Verdict, all three needed for "flat":
  * RSS: the mean of the last minute of calling within --tolerance % of the
    mean of the first minute after --warmup seconds (a leak of a few KiB a
    call, 12,000 calls, shows as a rising line and a missed tolerance);
  * descriptors: back to their idle count once the calls have ended;
  * calls: none failed (a soak that drops calls measures something else).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ramp  # noqa: E402  (the harness's pieces, beside this file)


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ramp.common_args(ap)
    ap.add_argument("--rate", type=float, default=30.0, help="calls per second")
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of new calls")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=360.0,
                    help="seconds of calling before the first minute the verdict compares")
    ap.add_argument("--tolerance", type=float, default=5.0,
                    help="largest change of mean RSS, first to last minute, in %%")
    a = ap.parse_args()
    e_core, s_core = ramp.cores_for(a, "scripts/soak.sh")
    pin = e_core is not None
    if a.minutes * 60 < a.warmup + 120:
        raise SystemExit("--minutes must leave a first and a last minute after --warmup")

    workdir = tempfile.mkdtemp(prefix="emonav-soak-")
    emonav = ramp.Emonav(a.binary, workdir, 0, 0, 8000, e_core)
    try:
        time.sleep(1.0)
        idle_rss, idle_fds = ramp.rss_mb(emonav.pid), fds(emonav.pid)
        calls = int(round(a.rate * a.minutes * 60))
        print(f"# soak: {a.binary} pid {emonav.pid}; {calls} calls at {a.rate:g}/s for {a.minutes:g} min; "
              f"idle RSS {idle_rss:.1f} MB, {idle_fds} descriptors; "
              f"pinned: {'emonav cpu0, SIPp cpu1' if pin else 'no'}", flush=True)
        print("| t s | calls active | RSS MB | open fds |", flush=True)
        print("| --- | --- | --- | --- |", flush=True)
        sipp, sdir = ramp.run_sipp(workdir, emonav.sip, a.rate, calls, s_core, 0)
        t0 = time.monotonic()
        samples = []  # (t, rss, fds) while calls are placed
        next_at = t0 + a.interval
        while sipp.poll() is None:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += a.interval
            t = time.monotonic() - t0
            active = emonav.metric("emonav_calls_active")
            rss, n = ramp.rss_mb(emonav.pid), fds(emonav.pid)
            if t <= a.minutes * 60:
                samples.append((t, rss, n))
            print(f"| {t:.0f} | {active:.0f} | {rss:.1f} | {n} |", flush=True)
        sipp.wait()
        # Calls still in emonav (their timers) end by themselves; then the
        # heap trims (src/trim.rs: at the fall and 36 s later) get their time.
        t_end = time.monotonic()
        while emonav.metric("emonav_calls_active") > 0 and time.monotonic() - t_end < 60:
            time.sleep(1.0)
        time.sleep(a.settle)
        end_rss, end_fds = ramp.rss_mb(emonav.pid), fds(emonav.pid)
        counters, _, _ = ramp.sipp_results(sdir)
        failed = ramp.count(counters, "FailedCall(C)")
        ok = ramp.count(counters, "SuccessfulCall(C)")
        span = a.minutes * 60
        first = [r for t, r, _ in samples if a.warmup <= t < a.warmup + 60]
        last = [r for t, r, _ in samples if t >= span - 60]
        if not first or not last:
            raise SystemExit("too few samples for a verdict (is --interval below a minute?)")
        m1, m2 = statistics.mean(first), statistics.mean(last)
        change = 100.0 * (m2 - m1) / m1
        rss_flat = abs(change) <= a.tolerance
        fds_back = end_fds <= idle_fds
        print(f"# calls: {ok} successful, {failed} failed")
        print(f"# RSS mean, first minute after {a.warmup:g} s warm-up: {m1:.1f} MB; last minute: {m2:.1f} MB "
              f"({change:+.1f} %, tolerance {a.tolerance:g} %); RSS {end_rss:.1f} MB {a.settle:g} s after the calls "
              f"(idle {idle_rss:.1f} MB)")
        print(f"# descriptors: {max(n for _, _, n in samples)} at most while calling, {end_fds} after "
              f"(idle {idle_fds})")
        verdict = rss_flat and fds_back and failed == 0
        why = [w for w, bad in (("RSS grew" if change > 0 else "RSS fell", not rss_flat),
                                ("descriptors not back to idle", not fds_back),
                                (f"{failed} calls failed", failed != 0)) if bad]
        print("# verdict: " + ("flat" if verdict else "NOT flat: " + ", ".join(why)))
        return 0 if verdict else 1
    finally:
        emonav.stop()
        if a.keep:
            print(f"# work folder {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
