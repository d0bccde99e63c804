"""Median wall time of openSMILE eGeMAPSv02 functionals per second of 8 kHz audio.

python3 dsp/reference/time_opensmile.py  (single process; openSMILE runs one thread)
"""
import pathlib
import statistics
import time

import opensmile
import soundfile

HERE = pathlib.Path(__file__).resolve().parent
clips = sorted((HERE / "clips").glob("*_8k.wav"))
audio = [soundfile.read(str(c), dtype="float32") for c in clips]
seconds = sum(len(x) / sr for x, sr in audio)
smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                        feature_level=opensmile.FeatureLevel.Functionals)
runs = []
for _ in range(5):
    t = time.perf_counter()
    for x, sr in audio:
        smile.process_signal(x, sr)
    runs.append(time.perf_counter() - t)
per_s = statistics.median(runs) / seconds
print(f"{len(clips)} clips, {seconds:.1f} s of audio: median {per_s * 1000:.2f} ms per second of audio")
