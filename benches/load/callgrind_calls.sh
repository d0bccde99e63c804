#!/bin/sh
# Instructions per signalling-only call (docs/performance.md, "Where a
# signalling-only call's CPU goes"): emonav under callgrind, instrumentation
# on from the first INVITE to SETTLE (default 40) seconds after the last call
# (the transactions' Timer J and the calls' lingering included), SIPp's
# `uac` calls (benches/load/uac_signalling.xml, 1 s each, no RTP) at RATE/s.
# A count of user-space instructions: the same on a busy host as on an idle
# one (kernel time, system calls and context switches are not in it).
#
#   benches/load/callgrind_calls.sh BINARY OUTDIR [CALLS=400] [RATE=20]
#   callgrind_annotate --inclusive=yes OUTDIR/callgrind.out.1 | less
set -e
BIN=$1; OUT=$2; CALLS=${3:-400}; RATE=${4:-20}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$OUT"; mkdir -p "$OUT"; cd "$OUT"
printf '[sip]\nlisten = "127.0.0.1:0"\n[media]\nsend_silence = false\nrtp_port_min = 20000\nrtp_port_max = 39999\n' > profile.toml
RUST_LOG=info valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=callgrind.out \
  "$BIN" run --profile profile.toml --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >/dev/null 2>emonav.log &
PID=$!
i=0; until grep -q "sip=udp:" emonav.log 2>/dev/null; do sleep 1; i=$((i+1)); [ $i -lt 120 ] || exit 1; done
SIP=$(grep -o "sip=udp:[^ ]*" emonav.log | head -1 | cut -d: -f2-)
callgrind_control -i on $PID >/dev/null
taskset -c 1 sipp "$SIP" -sf "$ROOT/benches/load/uac_signalling.xml" -r "$RATE" -m "$CALLS" -l 100000 -d 1000 \
  -i 127.0.0.1 -p 0 -nostdin -trace_stat -stf stat.csv -fd 1 >/dev/null 2>&1 || true
# The transactions' Timer J (32 s over UDP) and the calls' lingering: inside the window.
sleep ${SETTLE:-40}
callgrind_control -i off $PID >/dev/null
callgrind_control -d $PID >/dev/null
kill $PID; wait $PID 2>/dev/null || true
TOTAL=$(callgrind_annotate callgrind.out.1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
OK=$(python3 -c "
rows=[r.rstrip(';\n').split(';') for r in open('stat.csv') if r.strip()]
d=dict(zip(rows[0],rows[-1])); print(d['SuccessfulCall(C)'], d['FailedCall(C)'], d['Retransmissions(C)'])")
echo "$BIN: $TOTAL instructions, calls ok/failed/retrans $OK, per call $((TOTAL / ${OK%% *}))"
