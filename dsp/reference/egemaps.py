"""openSMILE eGeMAPSv02 reference for emonav's features.

For every clip in clips/: the 88 eGeMAPSv02 functionals (egemaps_functionals.csv)
and per-clip means of the low-level descriptors emonav models
(egemaps_lld_means.csv: voiced-frame means for F0/jitter/shimmer/HNR, all-frame
means for the rest). Run from anywhere: python3 dsp/reference/egemaps.py
"""
import csv
import pathlib

import opensmile

HERE = pathlib.Path(__file__).resolve().parent
VOICED = ["F0semitoneFrom27.5Hz_sma3nz", "jitterLocal_sma3nz", "shimmerLocaldB_sma3nz", "HNRdBACF_sma3nz"]
ALL = ["Loudness_sma3", "alphaRatio_sma3", "hammarbergIndex_sma3", "slope0-500_sma3", "slope500-1500_sma3",
       "mfcc1_sma3", "mfcc2_sma3", "mfcc3_sma3", "mfcc4_sma3", "spectralFlux_sma3"]


def fmt(v):
    return f"{float(v):.6g}"


def main():
    clips = sorted((HERE / "clips").glob("*.wav"))
    func = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                           feature_level=opensmile.FeatureLevel.Functionals)
    lld = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    with open(HERE / "egemaps_functionals.csv", "w", newline="") as f_out, \
            open(HERE / "egemaps_lld_means.csv", "w", newline="") as l_out:
        fw, lw = csv.writer(f_out), csv.writer(l_out)
        for i, clip in enumerate(clips):
            fdf = func.process_file(str(clip))
            ldf = lld.process_file(str(clip))
            if i == 0:
                fw.writerow(["file"] + list(fdf.columns))
                lw.writerow(["file", "voiced_frames"] + VOICED + ALL)
            fw.writerow([clip.name] + [fmt(v) for v in fdf.iloc[0].values])
            voiced = ldf[ldf["F0semitoneFrom27.5Hz_sma3nz"] > 0]
            row = [clip.name, len(voiced)]
            row += [fmt(voiced[c].mean()) if len(voiced) else "" for c in VOICED]
            row += [fmt(ldf[c].mean()) for c in ALL]
            lw.writerow(row)


if __name__ == "__main__":
    main()
