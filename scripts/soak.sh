#!/usr/bin/env bash
# The soak (issue 11 item 5, docs/performance.md "Soak"): builds the release
# binary and places short analysed SIPp calls with RTP audio at a moderate
# rate for 10 minutes, sampling emonav's RSS and open descriptors every 10 s,
# then prints a verdict (exit 0 when flat). Arguments go to
# benches/load/soak.py (--help lists them), e.g.
#   scripts/soak.sh                          # 30 calls/s for 10 minutes
#   scripts/soak.sh --rate 30 --minutes 20
# Needs sipp (Debian sip-tester), python3 and taskset (util-linux). At 20-30
# calls/s it does not need an idle machine (about a tenth of a core).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin emonav >&2
exec nice -n "${LOAD_NICE:-0}" python3 benches/load/soak.py --binary target/release/emonav "$@"
