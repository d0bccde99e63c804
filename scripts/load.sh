#!/usr/bin/env bash
# The load harness (issue 11 item 5, docs/performance.md "Load harness"):
# builds the release binary and ramps SIPp callers with RTP audio against it
# on loopback, one row per offered rate. Any argument is passed to
# benches/load/ramp.py (--help lists them), e.g.
#   scripts/load.sh                                  # default profile, 50..400 calls/s
#   scripts/load.sh --max-calls 400 --max-lag-ms 200 --rates 100,200,400,800
#                                                    # carrier overload settings, 2x past the knee
# Needs sipp (Debian sip-tester), python3 and taskset (util-linux). Run it on
# an otherwise idle machine: emonav is pinned to cpu0 and SIPp to cpu1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin emonav >&2
exec nice -n "${LOAD_NICE:-0}" python3 benches/load/ramp.py --binary target/release/emonav "$@"
