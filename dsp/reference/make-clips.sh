#!/usr/bin/env bash
# Renders the reference clips: 2.0 s each, mono 16-bit WAV, synthetic speech in
# several voices, pitches and rates at 8 kHz (300-3400 Hz) and 16 kHz
# (50-7000 Hz), plus tones, noise and silence. Needs espeak-ng and sox.
set -euo pipefail
cd "$(dirname "$0")"
out=clips
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -f "$out"/*.wav

text=("Please hold the line while I check your account." "Why does this keep happening to me every single time?" "The weather in Berlin is mild and grey today.")
n=0
for voice in en-us en-us+f3 de en-us+m7 en-gb+f4; do
  for pitch in 25 55 85; do
    for speed in 130 200; do
      n=$((n + 1))
      # Keep the set small: every other combination.
      ((n % 2)) || continue
      t=${text[$((n % 3))]}
      espeak-ng -v "$voice" -p "$pitch" -s "$speed" -w "$tmp/raw.wav" "$t"
      name="speech_${voice//+/_}_p${pitch}_s${speed}"
      sox -R -V1 "$tmp/raw.wav" -r 8000 -c 1 -b 16 "$out/${name}_8k.wav" gain -3 sinc 300-3400 trim 0 2 pad 0 2 trim 0 2
      sox -R -V1 "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$out/${name}_16k.wav" gain -3 sinc 50-7000 trim 0 2 pad 0 2 trim 0 2
    done
  done
done
sox -R -V1 -n -r 8000 -c 1 -b 16 "$out/tone_200hz_8k.wav" synth 2 sine 200 vol 0.3
sox -R -V1 -n -r 8000 -c 1 -b 16 "$out/square_150hz_8k.wav" synth 2 square 150 vol 0.2 sinc -3400
sox -R -V1 -n -r 8000 -c 1 -b 16 "$out/noise_8k.wav" synth 2 whitenoise vol 0.01
sox -R -V1 -n -r 8000 -c 1 -b 16 "$out/silence_8k.wav" synth 2 sine 0 vol 0 dither
