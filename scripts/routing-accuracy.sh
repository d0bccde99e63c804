#!/usr/bin/env bash
# Routing accuracy over real calls (issue 10.6): held-out EmoDB clips played as
# real SIPp calls to the release binary on loopback, scored by the queue emonav
# REFERs each call to, next to the same clips scored offline.
#
#   scripts/routing-accuracy.sh [--corpus DIR] [--speakers 03,08]
#       [--conditions pcmu-fullband,pcmu-band,opus] [--limit N] [--parallel N]
#       [--work DIR]
#
# For each held-out speaker SS (default: all 10), a model is trained on the
# other 9 speakers (`emonav train`, multi-condition as the default model, on a
# temp dir of symlinks): fold-SS-8k.json, which scores every call (Opus is
# decoded at 8 kHz too). One emonav instance per fold runs a copy of
# sip-profiles/default.toml with `[model] file` set to it,
# and receives every clip of SS (disgust excluded: arousal undefined) as one
# SIPp call per condition:
#   pcmu-fullband  sox to 8 kHz (only the resampler's anti-alias filter), mu-law
#   pcmu-band      the same, band-limited 300-3400 Hz (sox sinc), mu-law
#   opus           examples/rtp_pcap.rs --opus (16 kHz, 24 kbit/s, PT 96)
# Each clip (2.00 s) is followed by 2 s of digital silence: the decision
# deadline is 3 s after the first packet (default.toml), so a call that does
# not decide early decides at the deadline on exactly the clip's speech, as the
# offline scoring does; playing the clip twice would give the live call speech
# the offline score never heard and make the two incomparable.
#
# Offline, the same clips are scored by the same fold models: `emonav analyze
# --json` on the padded clip (the in-call pipeline: 8 kHz mu-law as a full-band
# line delivers it, the analyser's 300-3400 Hz conditioning, the same policy;
# compared with pcmu-fullband and opus) and on the band-limited line's audio
# (the pcmu-band pcap's payload as a WAV; compared with pcmu-band), and
# `emonav eval --model` on the unpadded clips (clip-level arousal UAR, the
# model card's measure).
#
# Printed per condition: routing UAR (recall of high arousal W/F/A to the
# de-escalation queue, of low arousal L/T/N to the standard queue, their mean),
# share decided early (decision_reason "confident"), answer->REFER p50/p90, and
# calls that failed (SIPp error, no event, or not transferred). Everything is
# kept in the work dir (default: a temp dir, removed at the end); with --work
# DIR the models and pcaps are cached there and a rerun only replays the calls.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# The corpus next to the repository (../shared), or next to its worktree folder.
corpus=../shared/corpora/emodb
[ -d "$corpus" ] || corpus=../../shared/corpora/emodb
speakers=03,08,09,10,11,12,13,14,15,16
conditions=pcmu-fullband,pcmu-band,opus
limit=0
parallel=8
work=
while [ $# -gt 0 ]; do
  case $1 in
    --corpus) corpus=$2; shift 2 ;;
    --speakers) speakers=$2; shift 2 ;;
    --conditions) conditions=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --parallel) parallel=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -h|--help) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "routing-accuracy: unknown argument $1" >&2; exit 2 ;;
  esac
done
corpus=$(cd "$corpus" && pwd)
[ -d "$corpus/wav" ] || { echo "routing-accuracy: no $corpus/wav" >&2; exit 2; }
for c in ${conditions//,/ }; do
  case $c in pcmu-fullband|pcmu-band|opus) ;; *) echo "unknown condition $c" >&2; exit 2 ;; esac
done
for t in sipp sox python3; do
  command -v $t >/dev/null || { echo "routing-accuracy: needs $t" >&2; exit 2; }
done

cargo build --release --quiet --bin emonav --example rtp_pcap
emonav=$repo/target/release/emonav
rtp_pcap=$repo/target/release/examples/rtp_pcap

keep=1
if [ -z "$work" ]; then
  work=$(mktemp -d)
  keep=0
fi
mkdir -p "$work"
work=$(cd "$work" && pwd)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ "$keep" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

# One call: sipp plays PCAP with the From user TAG (the event's "from" says
# which clip and condition it was). Ports are derived from the call's index so
# that concurrent calls never share one.
run_call() {
  local idx=$1 tag=$2 pcap=$3 template=$4 dir=$5 port=$6
  local sf=$dir/$tag.xml
  sed -e "s|../fixtures/agitated-pcmu.pcap|$pcap|; s|../fixtures/agitated-opus.pcap|$pcap|" \
    -e "s|<sip:caller@|<sip:$tag@|g" "$template" >"$sf"
  local slot=$((idx % 400)) rc k
  # A port taken by some other program on the machine (SIPp cannot bind, the
  # call never starts): try again on another pair, up to three times.
  for k in 0 1 2; do
    rc=0
    rm -f "$dir/$tag.err"
    sipp 127.0.0.1:"$port" -sf "$sf" -m 1 -l 1 -i 127.0.0.1 -mi 127.0.0.1 \
      -p $((41000 + 400 * k + slot)) -mp $((52000 + 1600 * k + 4 * slot)) -nostdin \
      -timeout 30 -timeout_error -trace_err -error_file "$dir/$tag.err" >/dev/null 2>&1 || rc=$?
    [ "$rc" != 0 ] && grep -qs "Unable to bind" "$dir/$tag.err" || break
  done
  echo "$rc" >"$dir/$tag.rc"
}
export -f run_call

IFS=, read -r -a spk <<<"$speakers"
IFS=, read -r -a conds <<<"$conditions"
calls=0
for ss in "${spk[@]}"; do
  fold=$work/fold-$ss
  mkdir -p "$fold/train/wav" "$fold/test/wav" "$fold/audio" "$fold/calls"
  # Training set: the other nine speakers, as symlinks.
  if [ ! -s "$fold/fold-$ss-8k.json" ]; then
    find "$fold/train/wav" -type l -delete
    for f in "$corpus"/wav/*.wav; do
      b=$(basename "$f")
      [ "${b:0:2}" = "$ss" ] || ln -s "$f" "$fold/train/wav/$b"
    done
    echo "fold $ss: training on $(ls "$fold/train/wav" | wc -l) clips of 9 speakers" >&2
    "$emonav" train --corpus "$fold/train" --labels emodb --out "$fold/fold-$ss-8k.json" 2>>"$fold/train.log"
  fi
  # Test set: SS's clips but disgust, the first --limit of them.
  find "$fold/test/wav" -type l -delete
  n=0
  for f in "$corpus"/wav/"$ss"*.wav; do
    b=$(basename "$f")
    [ "${b:5:1}" = E ] && continue
    [ "$limit" -gt 0 ] && [ "$n" -ge "$limit" ] && break
    ln -s "$f" "$fold/test/wav/$b"
    n=$((n + 1))
  done
  # Audio: the clip + 2 s of silence, then one pcap per condition.
  for f in "$fold"/test/wav/*.wav; do
    b=$(basename "$f" .wav)
    a=$fold/audio/$b
    [ -s "$a.wav" ] || sox -R -V1 "$f" "$a.wav" pad 0 2
    [ -s "$a-pcmu-fullband.pcap" ] || {
      sox -R -V1 "$a.wav" -r 8000 -t raw -e mu-law -b 8 "$a-fb.ul"
      "$rtp_pcap" --pt 0 "$a-fb.ul" "$a-pcmu-fullband.pcap"
    }
    [ -s "$a-pcmu-band.pcap" ] || {
      sox -R -V1 "$a.wav" -r 8000 -t raw -e mu-law -b 8 "$a-bl.ul" sinc 300-3400
      "$rtp_pcap" --pt 0 "$a-bl.ul" "$a-pcmu-band.pcap"
    }
    # The band-limited line as a WAV, for its own offline analyze.
    [ -s "$a-bl.wav" ] || sox -V1 -t raw -e mu-law -b 8 -r 8000 -c 1 "$a-bl.ul" -e signed -b 16 "$a-bl.wav"
    [ -s "$a-opus.pcap" ] || "$rtp_pcap" --opus --pt 96 "$a.wav" "$a-opus.pcap"
  done
  # The fold's profile: default.toml with the fold models and free ports.
  port=$((45000 + RANDOM % 1000))
  rtp=$((46000 + 2 * (RANDOM % 2000)))
  sed -e "s|^# file = \"models/.*|file = \"$fold/fold-$ss-8k.json\"|" \
    -e "s|^rtp_port_min = .*|rtp_port_min = $rtp|; s|^rtp_port_max = .*|rtp_port_max = $((rtp + 998))|" \
    -e "s|^transports = .*|transports = [\"udp\"]|" \
    sip-profiles/default.toml >"$fold/profile.toml"
  grep -q "^file = \"$fold" "$fold/profile.toml" || { echo "profile edit failed" >&2; exit 1; }
  rm -f "$fold"/calls/* "$fold/events.jsonl"
  "$emonav" run --profile "$fold/profile.toml" --listen 127.0.0.1:$port --http-listen off \
    --events "$fold/events.jsonl" 2>"$fold/emonav.log" &
  pid=$!
  sleep 0.5
  # Every (clip, condition) call of the fold, --parallel at a time.
  : >"$fold/calls.txt"
  for f in "$fold"/test/wav/*.wav; do
    b=$(basename "$f" .wav)
    for c in "${conds[@]}"; do
      t=tests/sipp/uac_refer.xml
      [ "$c" = opus ] && t=tests/sipp/uac_refer_opus.xml
      echo "$calls $b.$c $fold/audio/$b-$c.pcap $repo/$t $fold/calls $port" >>"$fold/calls.txt"
      calls=$((calls + 1))
    done
  done
  echo "fold $ss: $(wc -l <"$fold/calls.txt") calls, $parallel at a time" >&2
  xargs -P "$parallel" -L 1 bash -c 'run_call "$@"' _ <"$fold/calls.txt"
  sleep 1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
  # Offline: the in-call pipeline on the padded clips, same policy and model.
  for f in "$fold"/test/wav/*.wav; do
    echo "$fold/audio/$(basename "$f")"
    echo "$fold/audio/$(basename "$f" .wav)-bl.wav"
  done | xargs -P 2 -I{} sh -c \
    '"$0" analyze --json --profile "$1" "$2" >"$2.analyze.json"' "$emonav" "$fold/profile.toml" {}
  "$emonav" eval --corpus "$fold/test" --labels emodb --model "$fold/fold-$ss-8k.json" --json \
    >"$fold/eval-8k.json" 2>/dev/null
done

python3 - "$work" "$speakers" "$conditions" <<'PY'
import glob, json, os, statistics, sys
work, speakers, conditions = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
HIGH, LOW = set("WFA"), set("LTN")

def user(uri):
    """The queue's user part: the profile's host and port do not matter here."""
    return uri.split(":", 1)[1].split("@")[0] if uri else None

DEESC, STD = "deescalation", "standard"

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

def routing(rows):
    """rows: (clip, queue or None, reason, ms). Routing UAR over all clips."""
    hi = [user(q) == DEESC for c, q, *_ in rows if c[5] in HIGH]
    lo = [user(q) == STD for c, q, *_ in rows if c[5] in LOW]
    rh = sum(hi) / len(hi) if hi else float("nan")
    rl = sum(lo) / len(lo) if lo else float("nan")
    return rh, rl, (rh + rl) / 2, len(hi), len(lo)

live = {c: {} for c in conditions}   # condition -> clip -> event
failed = {c: [] for c in conditions}
offline = {}                          # clip -> analyze JSON of the clip
offline_band = {}                     # clip -> analyze JSON of the band-limited line
pooled = {"8k": [[0, 0], [0, 0]]}
for ss in speakers:
    fold = f"{work}/fold-{ss}"
    ev = {}
    if os.path.exists(f"{fold}/events.jsonl"):
        for line in open(f"{fold}/events.jsonl"):
            e = json.loads(line)
            tag = e["from"].split("sip:")[1].split("@")[0]
            ev[tag] = e
    for rc in glob.glob(f"{fold}/calls/*.rc"):
        tag = os.path.basename(rc)[:-3]
        clip, cond = tag.rsplit(".", 1)
        if cond not in live:
            continue  # a condition of an earlier run in the same --work dir
        e = ev.get(tag)
        ok = open(rc).read().strip() == "0" and e is not None and e["outcome"] == "transferred"
        if e is not None:
            live[cond][clip] = e
        if not ok:
            failed[cond].append(tag)
    for w in glob.glob(f"{fold}/test/wav/*.wav"):
        clip = os.path.basename(w)[:-4]
        try:
            offline[clip] = json.load(open(f"{fold}/audio/{clip}.wav.analyze.json"))
        except (OSError, ValueError):
            pass
        try:
            offline_band[clip] = json.load(open(f"{fold}/audio/{clip}-bl.wav.analyze.json"))
        except (OSError, ValueError):
            pass
    for k in pooled:
        try:
            m = json.load(open(f"{fold}/eval-{k}.json"))["arousal"]["confusion"]
        except (OSError, ValueError, KeyError):
            continue
        for i in range(2):
            for j in range(2):
                pooled[k][i][j] += m[i][j]

print(f"held-out speakers {','.join(speakers)}; clips {len(offline)} (disgust excluded)")
print(f"{'condition':<15} {'calls':>5} {'failed':>6}  {'hi->deesc':>9} {'lo->std':>8} {'UAR':>6}  {'early':>6}  {'answer->REFER p50/p90':>21}")
for c in conditions:
    rows = [(k, e["queue"], e["decision_reason"], e["answer_to_refer_ms"]) for k, e in live[c].items()]
    calls = len(live[c]) + len([t for t in failed[c] if t.rsplit(".", 1)[0] not in live[c]])
    rh, rl, uar, nh, nl = routing(rows)
    early = sum(r[2] == "confident" for r in rows) / len(rows) if rows else float("nan")
    ms = [r[3] for r in rows if r[3] is not None]
    print(f"{c:<15} {calls:>5} {len(failed[c]):>6}  {rh:>9.3f} {rl:>8.3f} {uar:>6.3f}  {early:>6.1%}  {pct(ms, .5):>10} / {pct(ms, .9):<8} ms")
for name, off in (("offline analyze", offline), ("offline band", offline_band)):
    if not off:
        continue
    rows = [(k, a["decision"]["queue"], a["decision"]["reason"], a["decision_ms"]) for k, a in off.items()]
    rh, rl, uar, nh, nl = routing(rows)
    early = sum(r[2] == "confident" for r in rows) / len(rows) if rows else float("nan")
    ms = [r[3] for r in rows]
    print(f"{name:<15} {len(rows):>5} {'-':>6}  {rh:>9.3f} {rl:>8.3f} {uar:>6.3f}  {early:>6.1%}  {pct(ms, .5):>10} / {pct(ms, .9):<8} ms (first audio->decision)")
for k, m in pooled.items():
    (a, b), (c_, d) = m
    if a + b and c_ + d:
        # confusion rows: true class in report order (low, high)
        print(f"offline eval {k:>3}: clip-level arousal UAR {(a / (a + b) + d / (c_ + d)) / 2:.3f} "
              f"(pooled over folds; {a + b + c_ + d} clips)")
print("\nagreement with offline analyze (same audio, same fold model and policy; pcmu-band against offline band):")
for c in conditions:
    off = offline_band if c == "pcmu-band" else offline
    both = [k for k in live[c] if k in off and live[c][k].get("arousal") is not None]
    if not both:
        continue
    same = sum(user(live[c][k]["queue"]) == user(off[k]["decision"]["queue"]) for k in both)
    d = [live[c][k]["arousal"] - off[k]["decision"]["arousal"] for k in both]
    print(f"  {c:<15} same queue {same}/{len(both)} ({same / len(both):.1%}), "
          f"P(high) live-offline mean {statistics.mean(d):+.3f}, mean |diff| {statistics.mean(map(abs, d)):.3f}")
for c in conditions:
    if failed[c]:
        print(f"failed {c}: {' '.join(sorted(failed[c])[:20])}{' ...' if len(failed[c]) > 20 else ''}")
PY
