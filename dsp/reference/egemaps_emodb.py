"""openSMILE eGeMAPSv02 on a subset of EmoDB, for agreement on natural voices.

The audio stays in ../shared/corpora/emodb (never copied here); this writes only
openSMILE's numbers (egemaps_emodb_lld_means.csv). Clips: the first 10 files of
each of the 7 emotions in name order, resampled to 16 kHz with sox.
Run: python3 dsp/reference/egemaps_emodb.py [path/to/emodb/wav]
"""
import collections
import csv
import pathlib
import subprocess
import sys
import tempfile

import opensmile

from egemaps import ALL, VOICED, fmt

HERE = pathlib.Path(__file__).resolve().parent
default = HERE.parents[2] / "shared" / "corpora" / "emodb" / "wav"
corpus = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default
per_emotion = collections.defaultdict(list)
for wav in sorted(corpus.glob("*.wav")):
    if len(per_emotion[wav.name[5]]) < 10:
        per_emotion[wav.name[5]].append(wav)
clips = sorted(w for ws in per_emotion.values() for w in ws)
lld = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                      feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
func = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                       feature_level=opensmile.FeatureLevel.Functionals)
with tempfile.TemporaryDirectory() as tmp, open(HERE / "egemaps_emodb.csv", "w", newline="") as out:
    w = csv.writer(out)
    header_done = False
    for clip in clips:
        wav16 = pathlib.Path(tmp) / clip.name
        subprocess.run(["sox", "-V1", str(clip), "-r", "16000", str(wav16)], check=True)
        ldf = lld.process_file(str(wav16))
        fdf = func.process_file(str(wav16))
        if not header_done:
            w.writerow(["file", "voiced_frames"] + VOICED + ALL + list(fdf.columns))
            header_done = True
        voiced = ldf[ldf["F0semitoneFrom27.5Hz_sma3nz"] > 0]
        row = [clip.name, len(voiced)]
        row += [fmt(voiced[c].mean()) if len(voiced) else "" for c in VOICED]
        row += [fmt(ldf[c].mean()) for c in ALL]
        row += [fmt(v) for v in fdf.iloc[0].values]
        w.writerow(row)
print(f"{len(clips)} EmoDB clips")
