#!/usr/bin/env python3
"""Load ramp for emonav (issue 11 item 5): real SIPp callers with RTP audio
against the real binary on loopback, one step per offered rate.

Standard library only. scripts/load.sh is the documented entry point (it
builds the release binary); tests/load.rs runs the short CI version with
--json. Per step it prints: offered and achieved calls/s, peak concurrent
calls, emonav CPU per answered call and % of one core, RSS per concurrent
call, answer->REFER p50/p99, INVITE->200 p99, failed calls, 503s,
INVITE->503 p99, retransmissions, and which side saturated.

Why each step is a fresh set of SIPp processes: SIPp's counters and its
per-call timers (-trace_rtt) then belong to one offered rate, and the
calls of one step end before the next starts, so a step that collapses is
seen as such instead of bleeding into the next.
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO = os.path.join(ROOT, "benches", "load", "uac_load.xml")
PCAP = os.path.join(ROOT, "tests", "fixtures", "agitated-pcmu.pcap")
TICKS = os.sysconf("SC_CLK_TCK")

# Over this share of one core a process is the side that saturated: a
# single-threaded SIPp or a runtime pinned to one core cannot go further.
SATURATED = 0.90


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; fields count from after ")".
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_delay_seconds(pid):
    """Time the process's threads spent runnable but waiting for a CPU
    (/proc/PID/task/*/schedstat, second field): other work on its core."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / 1e9


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def percentile(values, p):
    """Nearest-rank percentile (None when there is nothing to rank)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


class Emonav:
    """The binary with a generated profile, SIP and HTTP on free loopback ports."""

    def __init__(self, binary, workdir, max_calls, max_lag_ms, rtp_ports, core, extra="", media=""):
        base = 20000 + 2 * random.randrange(0, 10000 - rtp_ports // 2)
        profile = os.path.join(workdir, "profile.toml")
        with open(profile, "w") as f:
            # Built-in defaults (= sip-profiles/default.toml) for everything
            # else: the RTP range widened so that it is not the limit, and the
            # overload keys of the run.
            f.write(
                "[sip]\nlisten = \"127.0.0.1:0\"\n\n"
                f"[media]\nrtp_port_min = {base}\nrtp_port_max = {base + rtp_ports}\n{media}\n\n"
                f"[overload]\nmax_calls = {max_calls}\nmax_lag_ms = {max_lag_ms}\n"
                # More tables (benches/load/yardstick.py: a policy that never decides).
                + extra
            )
        cmd = [binary, "run", "--profile", profile, "--listen", "127.0.0.1:0",
               "--http-listen", "127.0.0.1:0"]
        if core is not None:
            cmd = ["taskset", "-c", str(core)] + cmd
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.log_path = os.path.join(workdir, "emonav.log")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env, text=True)
        found = {}
        ready = threading.Event()

        def drain():
            # Line-buffered: benches/load/held.py reads what emonav prints
            # while it runs.
            with open(self.log_path, "w", buffering=1) as log:
                for line in self.proc.stderr:
                    log.write(line)
                    if not ready.is_set():
                        sip = re.search(r"sip=udp:(\S+)", line)
                        http = re.search(r"http=(\S+)", line)
                        if sip and http:
                            found["sip"], found["http"] = sip.group(1), http.group(1)
                            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(30):
            self.stop()
            raise SystemExit(f"emonav did not report its addresses; see {self.log_path}")
        self.sip = found["sip"]
        self.http = found["http"]
        self.pid = self.proc.pid

    def metric(self, name):
        """Sum of a metric's samples on /metrics (all label sets)."""
        return sum(self.metrics(name).values())

    def metrics(self, name):
        with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                if key == name or key.startswith(name + "{"):
                    out[key] = out.get(key, 0.0) + float(value)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_sipp(workdir, target, rate, calls, core, index):
    """Start one SIPp caller process; returns (Popen, its folder)."""
    d = os.path.join(workdir, f"sipp{index}")
    os.makedirs(d, exist_ok=True)
    with open(SCENARIO) as f:
        xml = f.read().replace("../../tests/fixtures/agitated-pcmu.pcap", PCAP)
    sf = os.path.join(d, "uac_load.xml")
    with open(sf, "w") as f:
        f.write(xml)
    cmd = [
        "sipp", target, "-sf", sf, "-t", "u1",
        "-i", "127.0.0.1", "-mi", "127.0.0.1",
        "-p", str(free_port()), "-mp", str(30000 + 4 * random.randrange(0, 5000)),
        "-r", f"{rate:g}", "-rp", "1000", "-m", str(calls), "-l", str(calls),
        "-timeout", str(max(30, int(calls / max(rate, 1)) + 30)),
        "-nostdin",
        "-trace_stat", "-stf", os.path.join(d, "stat.csv"), "-fd", "1",
        "-trace_rtt", "-rtt_freq", "1",
        "-trace_err", "-error_file", os.path.join(d, "errors.log"),
    ]
    if core is not None:
        cmd = ["taskset", "-c", str(core)] + cmd
    p = subprocess.Popen(cmd, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(d, "stderr.log"), "w"))
    return p, d


def sipp_results(d):
    """Final counters of one SIPp run and its per-call timer values (ms)."""
    counters = {}
    stat = [f for f in os.listdir(d) if f.endswith("_.csv") or f == "stat.csv"]
    for name in stat:
        with open(os.path.join(d, name)) as f:
            rows = [r.rstrip(";\n").split(";") for r in f if r.strip()]
        if len(rows) >= 2:
            counters = dict(zip(rows[0], rows[-1]))
    timers = {"setup": [], "refer": [], "refused": []}
    stamps = []
    for name in os.listdir(d):
        if not name.endswith("_rtt.csv"):
            continue
        with open(os.path.join(d, name)) as f:
            for line in f:
                parts = line.strip().split(";")
                if len(parts) < 3 or not parts[1].replace(".", "", 1).isdigit():
                    continue
                key = parts[2]
                if key in timers:
                    timers[key].append(float(parts[1]))
                    if key in ("setup", "refused"):
                        stamps.append((float(parts[0]), key == "setup"))
    return counters, timers, stamps


def count(counters, name):
    try:
        return int(counters.get(name, "0"))
    except ValueError:
        return 0


def peak_shares(samples):
    """Highest share of a core over any 1 s window of emonav and of SIPp,
    from (time, emonav CPU s, SIPp CPU s) samples."""
    e_peak = s_peak = 0.0
    j = 0
    for i, (t, e, sp) in enumerate(samples):
        while j + 1 < i and t - samples[j + 1][0] >= 1.0:
            j += 1
        t0_, e0_, s0_ = samples[j]
        if t - t0_ >= 1.0:
            e_peak = max(e_peak, (e - e0_) / (t - t0_))
            # A SIPp process that ended meanwhile reads as a drop: ignore.
            s_peak = max(s_peak, max(sp - s0_, 0.0) / (t - t0_))
    return e_peak, s_peak


def step(emonav, workdir, rate, seconds, procs, sipp_core, idle_rss, index):
    calls = max(1, int(round(rate * seconds)))
    d = os.path.join(workdir, f"step{index}-{rate:g}")
    os.makedirs(d)
    e_cpu0, t0 = cpu_seconds(emonav.pid), time.monotonic()
    e_wait0 = run_delay_seconds(emonav.pid)
    decisions0 = emonav.metrics("emonav_decisions_total")
    runs = []
    for i in range(procs):
        share = calls // procs + (1 if i < calls % procs else 0)
        if share:
            runs.append(run_sipp(d, emonav.sip, rate / procs, share, sipp_core, i))
    sipp_cpu = {p.pid: 0.0 for p, _ in runs}
    peak_active, peak_rss = 0.0, 0.0
    # (time, emonav CPU s, busiest SIPp CPU s) every 0.25 s: the peak share
    # of a core over 1 s windows says who saturated, which the step's mean
    # hides when a collapse drags the step out with timeouts.
    samples = []
    while any(p.poll() is None for p, _ in runs):
        for p, _ in runs:
            try:
                sipp_cpu[p.pid] = cpu_seconds(p.pid)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
        samples.append((time.monotonic(), cpu_seconds(emonav.pid), max(sipp_cpu.values(), default=0.0)))
        try:
            peak_active = max(peak_active, emonav.metric("emonav_calls_active"))
        except OSError:
            pass
        peak_rss = max(peak_rss, rss_mb(emonav.pid))
        time.sleep(0.25)
    wall = time.monotonic() - t0
    e_cpu = cpu_seconds(emonav.pid) - e_cpu0
    e_wait = run_delay_seconds(emonav.pid) - e_wait0
    setup, refer, refused, rates = [], [], [], []
    failed = retrans = outgoing = ok = 0
    for p, sd in runs:
        counters, timers, st = sipp_results(sd)
        setup += timers["setup"]
        refer += timers["refer"]
        refused += timers["refused"]
        # Answer rate of this process over the span of its outcomes (200 or
        # 503), so that refused calls do not count as achieved; SIPp's clock
        # starts with the process, hence one rate per process.
        st.sort()
        if len(st) > 1 and st[-1][0] > st[0][0]:
            answered_here = sum(1 for _, ok in st if ok)
            rates.append(answered_here / ((st[-1][0] - st[0][0]) / 1000.0))
        failed += count(counters, "FailedCall(C)")
        retrans += count(counters, "Retransmissions(C)")
        outgoing += count(counters, "OutgoingCall(C)")
        ok += count(counters, "SuccessfulCall(C)")
        if p.returncode not in (0, 1):
            # 0: all calls succeeded, 1: at least one failed (counted above);
            # anything else is SIPp itself failing.
            failed = max(failed, calls - ok)
    decisions1 = emonav.metrics("emonav_decisions_total")
    no_speech = sum(v - decisions0.get(k, 0.0) for k, v in decisions1.items() if "no_speech" in k)
    achieved = sum(rates) if rates else None
    answered = len(setup)
    # SIPp's own CPU, as a share of a core: the busiest process saturates first.
    sipp_share = max((c / wall for c in sipp_cpu.values()), default=0.0)
    place_wall = calls / rate
    emonav_share = e_cpu / wall
    e_peak, s_peak = peak_shares(samples)
    saturated = []
    if e_peak >= SATURATED:
        saturated.append("emonav")
    if s_peak >= SATURATED:
        saturated.append("sipp")
    # emonav ready to run but kept off its core by other processes for a
    # tenth of the step or more: the host, not emonav, set the pace.
    if e_wait / wall >= 0.10:
        saturated.append("host")
    concurrent = max(peak_active, 1.0)
    return {
        "offered_cps": rate,
        "calls": calls,
        "achieved_cps": round(achieved, 1) if achieved else None,
        "concurrent": int(peak_active),
        "answered": answered,
        "transferred": len(refer),
        "refused_503": len(refused),
        "failed": failed,
        "retransmissions": retrans,
        "no_speech": int(no_speech),
        "emonav_cpu_pct": round(100 * emonav_share, 1),
        "sipp_cpu_pct": round(100 * sipp_share, 1),
        "emonav_peak_cpu_pct": round(100 * e_peak, 1),
        "emonav_wait_pct": round(100 * e_wait / wall, 1),
        "sipp_peak_cpu_pct": round(100 * s_peak, 1),
        "cpu_ms_per_call": round(1000 * e_cpu / answered, 2) if answered else None,
        "rss_mb": round(peak_rss, 1),
        "rss_kib_per_call": round(1024 * max(peak_rss - idle_rss, 0.0) / concurrent, 1),
        "refer_p50_ms": percentile(refer, 50),
        "refer_p99_ms": percentile(refer, 99),
        "setup_p99_ms": percentile(setup, 99),
        "refused_p99_ms": percentile(refused, 99),
        "wall_s": round(wall, 1),
        "place_s": round(place_wall, 1),
        "saturated": "+".join(saturated) or "neither",
        "dir": d,
    }


COLUMNS = [
    ("offered_cps", "offered/s"), ("achieved_cps", "achieved/s"), ("concurrent", "concurrent"),
    ("transferred", "transferred"), ("refused_503", "503s"), ("failed", "failed"),
    ("no_speech", "no_speech"), ("retransmissions", "retrans"),
    ("emonav_cpu_pct", "emonav CPU %"), ("cpu_ms_per_call", "CPU ms/call"),
    ("rss_mb", "peak RSS MB"), ("rss_kib_per_call", "RSS KiB/call"),
    ("refer_p50_ms", "ans->REFER p50"), ("refer_p99_ms", "ans->REFER p99"),
    ("setup_p99_ms", "INV->200 p99"), ("refused_p99_ms", "INV->503 p99"),
    ("emonav_peak_cpu_pct", "emonav peak CPU %"), ("emonav_wait_pct", "emonav CPU wait %"), ("sipp_cpu_pct", "SIPp CPU %"),
    ("sipp_peak_cpu_pct", "SIPp peak CPU %"), ("saturated", "saturated"),
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}".rstrip("0").rstrip(".")
    return str(v)


def common_args(ap):
    """The options the ramp and the soak (benches/load/soak.py) share."""
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "emonav"))
    ap.add_argument("--no-pin", action="store_true", help="do not pin emonav and SIPp to cores")
    # emonav gives the heap back once the calls have fallen and again 36 s
    # later, when the SIP transactions of the last calls have expired
    # (src/trim.rs): the RSS that stays is the one after that.
    ap.add_argument("--settle", type=float, default=40.0,
                    help="seconds after the last call ends before the final RSS is read")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (SIPp logs)")


def cores_for(a, script):
    """Check the tools and the binary; (emonav's core, SIPp's core), or Nones."""
    for tool in ("sipp",) + (() if a.no_pin else ("taskset",)):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (scripts/test.sh installs sip-tester)")
    if not os.path.exists(a.binary):
        raise SystemExit(f"{a.binary} does not exist ({script} builds it)")
    pin = not a.no_pin and (os.cpu_count() or 1) >= 2
    return (0, 1) if pin else (None, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(ap)
    ap.add_argument("--rates", default="50,100,150,200,250,300,350,400",
                    help="offered calls per second, one step each (comma-separated)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of new calls per step")
    ap.add_argument("--calls", type=int, default=0, help="calls per step (overrides --seconds)")
    ap.add_argument("--sipp", type=int, default=1, help="SIPp processes sharing each step's rate")
    ap.add_argument("--max-calls", type=int, default=0, help="[overload] max_calls (0: off)")
    ap.add_argument("--max-lag-ms", type=int, default=0, help="[overload] max_lag_ms (0: off)")
    ap.add_argument("--rtp-ports", type=int, default=8000, help="width of the RTP port range")
    ap.add_argument("--pause", type=float, default=3.0, help="seconds of rest between steps")
    ap.add_argument("--stop-after-collapse", action="store_true",
                    help="stop the ramp after the first step with failed calls")
    ap.add_argument("--json", action="store_true", help="one JSON object per step on stdout")
    a = ap.parse_args()
    e_core, s_core = cores_for(a, "scripts/load.sh")
    pin = e_core is not None

    workdir = tempfile.mkdtemp(prefix="emonav-load-")
    emonav = Emonav(a.binary, workdir, a.max_calls, a.max_lag_ms, a.rtp_ports, e_core)
    out = sys.stdout
    try:
        time.sleep(1.0)
        idle_rss = rss_mb(emonav.pid)
        idle_fds = len(os.listdir(f"/proc/{emonav.pid}/fd"))
        if not a.json:
            with open("/proc/loadavg") as f:
                load = " ".join(f.read().split()[:3])
            print(f"# emonav {a.binary} pid {emonav.pid} sip {emonav.sip}; max_calls={a.max_calls} "
                  f"max_lag_ms={a.max_lag_ms}; pinned: {'emonav cpu0, SIPp cpu1' if pin else 'no'}; "
                  f"{a.sipp} SIPp process(es); idle RSS {idle_rss:.1f} MB; load average {load}", file=out)
            print("| " + " | ".join(h for _, h in COLUMNS) + " |", file=out)
            print("|" + " --- |" * len(COLUMNS), file=out)
        for i, rate in enumerate(float(r) for r in a.rates.split(",")):
            seconds = a.calls / rate if a.calls else a.seconds
            r = step(emonav, workdir, rate, seconds, a.sipp, s_core, idle_rss, i)
            if not a.keep:
                del r["dir"]  # removed with the work folder at exit
            if a.json:
                print(json.dumps(r), file=out)
            else:
                print("| " + " | ".join(fmt(r[k]) for k, _ in COLUMNS) + " |", file=out)
            out.flush()
            if a.stop_after_collapse and r["failed"]:
                break
            time.sleep(a.pause)
        # Calls whose caller gave up still run their own timers in emonav:
        # wait (up to a minute) for them to end before calling anything a leak.
        t_end = time.monotonic()
        while emonav.metric("emonav_calls_active") > 0 and time.monotonic() - t_end < 60:
            time.sleep(1.0)
        drain_s = round(time.monotonic() - t_end, 1)
        rss_at_end = rss_mb(emonav.pid)
        time.sleep(a.settle)
        after = {"idle_rss_mb": round(idle_rss, 1), "rss_at_end_mb": round(rss_at_end, 1),
                 "rss_after_mb": round(rss_mb(emonav.pid), 1), "settle_s": a.settle,
                 "calls_active_after": emonav.metric("emonav_calls_active"),
                 "drain_s": drain_s,
                 "fds_after": len(os.listdir(f"/proc/{emonav.pid}/fd"))}
        if a.json:
            print(json.dumps(after), file=out)
        else:
            print(f"# after the ramp: calls active {after['calls_active_after']:.0f} after waiting "
                  f"{after['drain_s']} s; RSS {after['rss_at_end_mb']} MB then, {after['rss_after_mb']} MB "
                  f"{a.settle:g} s later (idle {after['idle_rss_mb']} MB); "
                  f"{after['fds_after']} open descriptors (idle {idle_fds})"
                  + (f"; work folder {workdir}" if a.keep else ""), file=out)
    finally:
        emonav.stop()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
