#!/usr/bin/env bash
# What the RTP keepalive costs per call (issue 11, item 2): emonav's CPU over
# N calls held for 10 s each without caller audio (benches/keepalive/hold.xml;
# the decision deadline is pushed past the call so only signalling, timers
# and the keepalive run), once per `[media] keepalive_interval_ms` given.
#
#   scripts/keepalive-cost.sh [CALLS] [INTERVAL_MS|off...]    (default: 200 20 1000 off)
#
# Prints emonav's CPU time (utime+stime from /proc) per interval and per
# call-second. Uses target/release/emonav (built if missing), loopback ports
# 15060/19060, RTP 30000-31999, SIPp media on 40000.
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-200}
shift || true
intervals=("$@")
[ ${#intervals[@]} -gt 0 ] || intervals=(20 1000 off)
[ -x target/release/emonav ] || cargo build --release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hz=$(getconf CLK_TCK)
for iv in "${intervals[@]}"; do
    cat > "$work/p.toml" <<P
[sip]
listen = "127.0.0.1:15060"
[http]
listen = "127.0.0.1:19060"
[media]
rtp_port_min = 30000
rtp_port_max = 31999
$(if [ "$iv" = off ]; then echo "send_silence = false"; else echo "keepalive_interval_ms = $iv"; fi)
[policy]
decision_deadline_ms = 60000
P
    target/release/emonav run --profile "$work/p.toml" > "$work/events" 2> "$work/log" &
    pid=$!
    sleep 1
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    sipp 127.0.0.1:15060 -sf benches/keepalive/hold.xml -m "$calls" -r 50 -l "$calls" \
        -i 127.0.0.1 -mi 127.0.0.1 -mp 40000 -nostdin > "$work/sipp" 2>&1 || echo "sipp failed: $work/sipp"
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    ended=$(grep -c '"outcome"' "$work/events" || true)
    awk -v iv="$iv" -v t="$((t1 - t0))" -v hz="$hz" -v n="$calls" -v e="$ended" 'BEGIN {
        s = t / hz; printf "keepalive %5s ms: %d calls ended, emonav CPU %.2f s, %.3f ms per call-second\n", iv, e, s, 1000 * s / (n * 10) }'
done
