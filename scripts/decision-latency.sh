#!/usr/bin/env bash
# Measures the time from emonav's 200 OK to its REFER over real SIPp calls
# (agitated and calm fixtures, N calls each, one at a time) against the
# release binary on loopback, and prints each call and the median.
#   scripts/decision-latency.sh [N]      (default N=10; needs sipp)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
cargo build --release --quiet
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((15060 + RANDOM % 1000))
target/release/emonav run --profile sip-profiles/default.toml --listen 127.0.0.1:$port \
  --http-listen off --events "$work/events.jsonl" 2>"$work/emonav.log" &
pid=$!
sleep 0.5
for audio in agitated calm; do
  sed "s|../fixtures/agitated-pcmu.pcap|$PWD/tests/fixtures/$audio-pcmu.pcap|" tests/sipp/uac_refer.xml >"$work/$audio.xml"
  for _ in $(seq "$n"); do
    sipp 127.0.0.1:$port -sf "$work/$audio.xml" -m 1 -l 1 -i 127.0.0.1 -mi 127.0.0.1 \
      -mp $((30000 + RANDOM % 10000 * 2)) -nostdin -timeout 30 -timeout_error >/dev/null 2>&1
  done
done
python3 - "$work/events.jsonl" <<'PY'
import json, statistics, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
for e in ev:
    print(f'{e["emotion"]:>9} {e["queue"]:<28} answer->REFER {e["answer_to_refer_ms"]:>5} ms  {e["decision_reason"]:<9} {e["outcome"]}')
ms = [e["answer_to_refer_ms"] for e in ev]
for label in sorted({e["emotion"] for e in ev}):
    sub = [e["answer_to_refer_ms"] for e in ev if e["emotion"] == label]
    print(f"median answer->REFER, {label}: {statistics.median(sub):.0f} ms over {len(sub)} calls")
print(f"median answer->REFER, all: {statistics.median(ms):.0f} ms over {len(ms)} calls")
PY
