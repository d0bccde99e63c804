#!/usr/bin/env python3
"""What a well-tuned media path costs per packet on this machine (issue 11
item 6): rtpengine relaying RTP, measured side by side with emonav
analysing RTP, in one run.

    python3 benches/load/yardstick.py [--calls 130] [--seconds 5]
    python3 benches/load/yardstick.py --emonav-only --count   # emonav alone,
        # with its system calls and timer wake-ups per packet (perf, root)

1. rtpengine (Debian `rtpengine-daemon`, userspace only: `--table=-1`),
   pinned to cpu0 like emonav, is given `--calls` calls through its ng
   control protocol (offer/answer, bencode over UDP). This script, pinned
   to cpu1, plays both ends of every call: a 20 ms G.711 packet each way
   every 20 ms for `--seconds`, and counts what comes out of the relay.
   Per packet relayed, rtpengine receives one and sends one.
2. emonav (target/release/emonav, the profile benches/load/ramp.py writes,
   with a policy that does not decide while the call lasts) takes `--calls`
   SIPp calls (benches/load/uac_speech.xml: 9 s of speech each, placed at
   50/s) and is measured over `--seconds` while all of them play. Per RTP
   packet received, emonav also sends one (its 20 ms silence keepalive)
   and decodes, analyses and scores it. Its packets are the calls up at
   both ends of the window times the 50 a second SIPp plays each (emonav
   counts RTP only when a call ends, after the window).

Prints each one's CPU time (utime + stime from /proc) per packet received
and the ratio. emonav's figure includes everything a call costs (SIP,
decode, features, model); rtpengine's is pure relay.

Standard library only; needs `rtpengine` on PATH (apt-get install
rtpengine-daemon) and SIPp.
"""

import argparse
import os
import random
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ramp  # noqa: E402  (the harness this measures beside)


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"d" + b"".join(bencode(k) + bencode(v[k]) for k in sorted(v)) + b"e"
    raise TypeError(type(v))


def bdecode(b, i=0):
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c == b"l":
        out, i = [], i + 1
        while b[i:i + 1] != b"e":
            v, i = bdecode(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        out, i = {}, i + 1
        while b[i:i + 1] != b"e":
            k, i = bdecode(b, i)
            v, i = bdecode(b, i)
            out[k.decode()] = v
        return out, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1:j + 1 + n], j + 1 + n


class Ng:
    """rtpengine's control protocol: "<cookie> <bencoded dict>" over UDP."""

    def __init__(self, addr):
        self.addr = addr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.n = 0

    def call(self, **cmd):
        self.n += 1
        cookie = b"y%d" % self.n
        self.sock.sendto(cookie + b" " + bencode(cmd), self.addr)
        while True:
            data, _ = self.sock.recvfrom(65535)
            c, _, body = data.partition(b" ")
            if c == cookie:
                reply, _ = bdecode(body)
                if reply.get("result") not in (b"ok", b"pong"):
                    raise SystemExit(f"rtpengine {cmd['command']}: {reply}")
                return reply


def sdp(port, session):
    return (f"v=0\r\no=- {session} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
            f"t=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


def media_port(sdp_bytes):
    for line in sdp_bytes.decode().splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise SystemExit("no m=audio in rtpengine's SDP")


def wait_ng(ng, deadline):
    while time.monotonic() < deadline:
        try:
            ng.call(command="ping")
            return
        except (socket.timeout, ConnectionRefusedError):
            time.sleep(0.2)
    raise SystemExit("rtpengine did not answer ping")


def measure_rtpengine(calls, seconds, workdir):
    ng_port = ramp.free_port()
    base = 40000 + 2 * random.randrange(0, 4000)
    cmd = ["taskset", "-c", "0", "rtpengine", "--table=-1", "--interface=127.0.0.1",
           f"--listen-ng=127.0.0.1:{ng_port}", "--foreground", "--log-stderr",
           "--log-level=4", f"--port-min={base}", f"--port-max={base + 4 * calls + 100}",
           "--delete-delay=0"]
    log = open(os.path.join(workdir, "rtpengine.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        ng = Ng(("127.0.0.1", ng_port))
        ng.sock.settimeout(0.5)
        wait_ng(ng, time.monotonic() + 10)
        ng.sock.settimeout(5)
        legs = []  # (socket, destination)
        for i in range(calls):
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for s in (a, b):
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
            cid = f"yardstick-{i}"
            offer = ng.call(command="offer", **{"call-id": cid, "from-tag": "a"},
                            sdp=sdp(a.getsockname()[1], i))
            answer = ng.call(command="answer", **{"call-id": cid, "from-tag": "a",
                                                  "to-tag": "b"},
                             sdp=sdp(b.getsockname()[1], i))
            legs.append((a, ("127.0.0.1", media_port(answer["sdp"]))))
            legs.append((b, ("127.0.0.1", media_port(offer["sdp"]))))
        sel = selectors.DefaultSelector()
        for s, _ in legs:
            sel.register(s, selectors.EVENT_READ)
        payload = bytes([0xFF]) * 160
        received = 0
        seq = 0
        # One second of warm-up (rtpengine learns the endpoints), then measure.
        start = time.monotonic()
        measured_from = None
        cpu0 = 0.0
        got0 = 0
        tick = start
        while True:
            now = time.monotonic()
            if measured_from is None and now - start >= 1.0:
                measured_from, cpu0, got0 = now, ramp.cpu_seconds(proc.pid), received
            if measured_from is not None and now - measured_from >= seconds:
                break
            if now >= tick:
                header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, 0)
                for k, (s, dest) in enumerate(legs):
                    # SSRC per leg.
                    s.sendto(header[:8] + struct.pack("!I", k + 1) + payload, dest)
                seq += 1
                tick += 0.020
            for key, _ in sel.select(timeout=max(0.0, tick - time.monotonic())):
                while True:
                    try:
                        key.fileobj.recv(2048)
                        received += 1
                    except BlockingIOError:
                        break
        cpu = ramp.cpu_seconds(proc.pid) - cpu0
        got = received - got0
        sent_per_s = 2 * calls * 50
        return {"calls": calls, "seconds": seconds, "packets": got,
                "offered_pps": sent_per_s, "cpu_s": cpu,
                "us_per_packet": 1e6 * cpu / got if got else None}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# What `--count` asks `perf stat` for over emonav's window: the system
# calls of the media path, and the call task's timer wake-ups (a uprobe on
# `Call::handle_timeout`, added for the binary measured).
COUNTED = ["syscalls:sys_enter_recvfrom", "syscalls:sys_enter_recvmmsg",
           "syscalls:sys_enter_sendto", "syscalls:sys_enter_epoll_wait",
           "raw_syscalls:sys_enter"]


def timer_probe(binary):
    """A perf uprobe on the binary's `Call::handle_timeout`: its event name,
    or None (perf cannot add probes without root, or the symbol is gone)."""
    out = subprocess.run(["nm", binary], capture_output=True, text=True).stdout
    sym = next((line.split()[-1] for line in out.splitlines()
                if "4call5timer" in line and "14handle_timeout" in line), None)
    if not sym:
        return None
    name = "emonav_timeouts_%d" % os.getpid()
    r = subprocess.run(["perf", "probe", "-q", "-x", binary, "-a", f"{name}={sym}"],
                       capture_output=True, text=True)
    return None if r.returncode else f"probe_emonav:{name}"


def perf_counts(path):
    """`perf stat -x,` output: event -> count."""
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                name = parts[2].split(":")[-1].replace("sys_enter_", "")
                counts["timer_wakeups" if name.startswith("emonav_timeouts") else name] = \
                    float(parts[0])
    return counts


def measure_emonav(binary, calls, seconds, workdir, media="", count=False):
    # No decision while the calls last (no early one, the deadline past the
    # call): every packet is decoded and analysed, as before a decision.
    extra = "\n[policy]\nmin_speech_ms = 60000\ndecision_deadline_ms = 60000\n"

    emonav = ramp.Emonav(binary, workdir, 0, 0, 8000, 0, extra, media)
    try:
        time.sleep(1)
        with open(os.path.join(ramp.ROOT, "benches", "load", "uac_speech.xml")) as f:
            xml = f.read().replace("../../tests/fixtures/agitated-pcmu.pcap", ramp.PCAP)
        sf = os.path.join(workdir, "uac_speech.xml")
        with open(sf, "w") as f:
            f.write(xml)
        rate = 50
        sipp = subprocess.Popen(
            ["taskset", "-c", "1", "sipp", emonav.sip, "-sf", sf, "-t", "u1",
             "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(ramp.free_port()),
             "-mp", str(30000 + 4 * random.randrange(0, 5000)),
             "-r", str(rate), "-m", str(calls), "-l", str(calls), "-nostdin", "-timeout", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
        # Every call is up (and playing) once the last one was placed and
        # answered; measure while all of them play, before the first ends.
        placed = time.monotonic()
        while (emonav.metric("emonav_calls_active") < calls
               and time.monotonic() - placed < calls / rate + 3.0):
            time.sleep(0.1)
        time.sleep(0.2)
        window = min(seconds, 9.0 - (time.monotonic() - placed) - 0.5)
        active0 = emonav.metric("emonav_calls_active")
        if active0 < calls or window < 1.0:
            sipp.kill()
            raise SystemExit(f"emonav: only {active0:.0f} of {calls} calls up; see {workdir}")
        stat = None
        if count:
            events = COUNTED + [e for e in [timer_probe(binary)] if e]
            out = os.path.join(workdir, "perf-stat.csv")
            stat = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e", ",".join(events),
                                     "-p", str(emonav.pid), "--", "sleep", str(window)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0, t0 = ramp.cpu_seconds(emonav.pid), time.monotonic()
        sipp0 = ramp.cpu_seconds(sipp.pid)
        time.sleep(window)
        cpu, wall = ramp.cpu_seconds(emonav.pid) - cpu0, time.monotonic() - t0
        sipp_cpu = ramp.cpu_seconds(sipp.pid) - sipp0
        counts = {}
        if stat:
            stat.wait(30)
            counts = perf_counts(out)
            if len(events) > len(COUNTED):
                subprocess.run(["perf", "probe", "-q", "-d", events[-1]], capture_output=True)
        t1 = time.monotonic()
        active1 = emonav.metric("emonav_calls_active")
        late = time.monotonic() - t1
        sipp.wait(120)
        # Calls up through the window: all of them (checked above) unless
        # some ended in it. A /metrics answer that came back late (a busy
        # host) may count calls that ended after the window: then active0.
        up = min(active0, active1) if late < 0.25 else active0
        packets = 50 * wall * up
        return {"calls": int(up), "window": wall, "packets": int(packets),
                "cpu_s": cpu, "us_per_packet": 1e6 * cpu / packets if packets else None,
                "sipp_rc": sipp.returncode,
                # The load generator's own cost per packet it plays.
                "sipp_us_per_packet": 1e6 * sipp_cpu / packets if packets else None,
                "per_packet": {k: v / packets for k, v in counts.items()} if packets else {}}
    finally:
        emonav.stop()


def measure_analyser(repeats=100):
    """The analyser alone on the same speech (dsp/examples/profile: the
    fixture pushed 160 samples at a time, `repeats` times), pinned to cpu0
    like the servers: CPU µs per 20 ms packet."""
    exe = os.path.join(ramp.ROOT, "target", "release", "examples", "profile")
    if not os.path.exists(exe):
        subprocess.run(["cargo", "build", "--release", "-p", "emonav-dsp", "--example", "profile"],
                       cwd=ramp.ROOT, check=True, stdout=subprocess.DEVNULL)
    ul = os.path.join(ramp.ROOT, "tests", "fixtures", "agitated.ul")
    packets = os.path.getsize(ul) // 160 * repeats
    t0 = os.times()
    subprocess.run(["taskset", "-c", "0", exe, ul, str(repeats)], check=True,
                   stdout=subprocess.DEVNULL)
    t1 = os.times()
    cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    return {"packets": packets, "cpu_s": cpu, "us_per_packet": 1e6 * cpu / packets}


def median(runs, key):
    values = sorted(r[key] for r in runs)
    return values[len(values) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ramp.ROOT, "target", "release", "emonav"))
    ap.add_argument("--calls", type=int, default=130, help="calls at once, both sides")
    ap.add_argument("--seconds", type=float, default=5, help="measured window")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (medians are printed)")
    ap.add_argument("--media", default="", help="more [media] keys for emonav, e.g. "
                    "'keepalive_interval_ms = 1000' (';' separates keys)")
    ap.add_argument("--emonav-only", action="store_true",
                    help="measure emonav alone (no rtpengine, no analyser run)")
    ap.add_argument("--count", action="store_true",
                    help="also count emonav's system calls and timer wake-ups per packet "
                    "(perf stat; needs perf and root)")
    a = ap.parse_args()
    if a.emonav_only:
        return emonav_only(a)
    for tool in ("rtpengine", "sipp", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (rtpengine: apt-get install rtpengine-daemon)")
    workdir = tempfile.mkdtemp(prefix="emonav-yardstick-")
    os.sched_setaffinity(0, {1})
    load = open("/proc/loadavg").read().split()[:3]
    print(f"# load average {' '.join(load)}; rtpengine and emonav pinned to cpu0, "
          f"their peers to cpu1; {a.repeat} rounds, medians; work folder {workdir}")
    rtp, emo, dsp = [], [], []
    for i in range(a.repeat):
        d = os.path.join(workdir, f"round{i}")
        os.makedirs(d)
        rtp.append(measure_rtpengine(a.calls, a.seconds, d))
        emo.append(measure_emonav(a.binary, a.calls, a.seconds, d, a.media.replace(";", "\n")))
        dsp.append(measure_analyser())
        print(f"# round {i + 1}: rtpengine {rtp[-1]['us_per_packet']:.1f}, emonav "
              f"{emo[-1]['us_per_packet']:.1f}, analyser {dsp[-1]['us_per_packet']:.1f} µs per packet")
    r, e, g = (median(x, "us_per_packet") for x in (rtp, emo, dsp))
    print("| | calls at once | CPU µs per RTP packet received (median) |")
    print("| --- | --- | --- |")
    print(f"| rtpengine (relay, userspace; receives one, sends one) | {a.calls} | {r:.1f} |")
    print(f"| emonav (receives one, sends one keepalive, decodes, analyses) | {a.calls} | {e:.1f} |")
    print(f"| emonav's analyser alone (dsp/examples/profile, same speech) | - | {g:.1f} |")
    print(f"emonav / rtpengine: {e / r:.2f}x; emonav without its analyser: {e - g:.1f} µs, "
          f"{(e - g) / r:.2f}x rtpengine's relay")
    if any(x["sipp_rc"] != 0 for x in emo):
        print("# warning: a SIPp run did not complete every call (exit status != 0)")


def emonav_only(a):
    """emonav's rounds alone: CPU per packet and, with --count, what each
    packet costs in system calls and timer wake-ups."""
    workdir = tempfile.mkdtemp(prefix="emonav-yardstick-")
    os.sched_setaffinity(0, {1})
    load = open("/proc/loadavg").read().split()[:3]
    print(f"# load average {' '.join(load)}; emonav pinned to cpu0, SIPp to cpu1; "
          f"{a.repeat} rounds; work folder {workdir}")
    runs = []
    for i in range(a.repeat):
        d = os.path.join(workdir, f"round{i}")
        os.makedirs(d)
        runs.append(measure_emonav(a.binary, a.calls, a.seconds, d,
                                   a.media.replace(";", "\n"), a.count))
        per = " ".join(f"{k} {v:.2f}" for k, v in sorted(runs[-1]["per_packet"].items()))
        print(f"# round {i + 1}: {runs[-1]['calls']} calls, "
              f"{runs[-1]['us_per_packet']:.1f} µs CPU per packet "
              f"(SIPp {runs[-1]['sipp_us_per_packet']:.1f} µs per packet it sends)"
              + (f"; per packet: {per}" if per else ""))
    e = median(runs, "us_per_packet")
    print(f"emonav: {e:.1f} µs CPU per RTP packet received (median), "
          f"{e * 50 / 1000:.2f} ms per second of analysed call")


if __name__ == "__main__":
    main()
