//! emonav's frame descriptors against openSMILE eGeMAPSv02 on the reference
//! clips (dsp/reference/: the clips, the script that made them and openSMILE's
//! output are committed). Per clip, the same means are taken on both sides
//! (F0 and HNR over voiced frames, the rest over all frames), and agreement is
//! the Pearson correlation across clips, plus the absolute F0 error.

use std::collections::HashMap;
use std::path::PathBuf;

use emonav_dsp::Analyzer;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dsp/reference")
}

/// openSMILE's per-clip values, LLD means and functionals merged: file → column → value.
fn reference() -> HashMap<String, HashMap<String, f64>> {
    let mut all = read_csv("egemaps_lld_means.csv");
    for (file, row) in read_csv("egemaps_functionals.csv") {
        all.entry(file).or_default().extend(row);
    }
    all
}

fn read_csv(name: &str) -> HashMap<String, HashMap<String, f64>> {
    let text = std::fs::read_to_string(reference_dir().join(name)).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let row = header[1..]
                .iter()
                .zip(&cells[1..])
                .filter_map(|(h, v)| v.parse().ok().map(|v| (h.to_string(), v)))
                .collect();
            (cells[0].to_string(), row)
        })
        .collect()
}

/// emonav's per-clip means, named as openSMILE's columns.
fn ours(file: &str) -> HashMap<String, f64> {
    let (audio, rate) =
        emonav_offline::analyze::read_wav(&reference_dir().join("clips").join(file)).unwrap();
    measure(&audio, rate)
}

/// emonav's per-clip means, named as openSMILE's columns.
fn measure(audio: &[f32], rate: u32) -> HashMap<String, f64> {
    let pcm: Vec<i16> = audio
        .iter()
        .map(|v| (v * 32768.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    // Descriptor definitions against openSMILE on full-band audio: without
    // the telephone-band conditioning calls apply.
    let mut a = Analyzer::unconditioned(rate);
    let hop = rate as usize / 100;
    let mut sums: HashMap<&str, (f64, u32)> = HashMap::new();
    let mut add = |k: &'static str, v: f32| {
        let e = sums.entry(k).or_default();
        e.0 += v as f64;
        e.1 += 1;
    };
    for chunk in pcm.chunks_exact(hop) {
        a.push(chunk);
        let f = *a.frame();
        let s = f.spectral;
        if f.voiced {
            add("F0semitoneFrom27.5Hz_sma3nz", f.f0_semitones);
            add("HNRdBACF_sma3nz", f.hnr_db);
            if let Some(j) = f.jitter {
                add("jitterLocal_sma3nz", j);
            }
            if let Some(s) = f.shimmer_db {
                add("shimmerLocaldB_sma3nz", s);
            }
        }
        add("Loudness_sma3", s.loudness);
        add("alphaRatio_sma3", s.alpha_ratio_db);
        add("hammarbergIndex_sma3", s.hammarberg_db);
        add("slope0-500_sma3", s.slope_0_500);
        add("slope500-1500_sma3", s.slope_500_1500);
        add("mfcc1_sma3", s.mfcc[0]);
        add("mfcc2_sma3", s.mfcc[1]);
        add("mfcc3_sma3", s.mfcc[2]);
        add("mfcc4_sma3", s.mfcc[3]);
        add("spectralFlux_sma3", s.flux);
    }
    let mut out: HashMap<String, f64> = sums
        .into_iter()
        .map(|(k, (s, n))| (k.to_string(), s / n as f64))
        .collect();
    let fu = a.functionals();
    let mut put = |k: &str, v: Option<f32>| {
        if let Some(v) = v {
            out.insert(k.to_string(), v as f64);
        }
    };
    put(
        "F0semitoneFrom27.5Hz_sma3nz_percentile20.0",
        fu.f0_percentile(0.2),
    );
    put(
        "F0semitoneFrom27.5Hz_sma3nz_percentile50.0",
        fu.f0_percentile(0.5),
    );
    put(
        "F0semitoneFrom27.5Hz_sma3nz_percentile80.0",
        fu.f0_percentile(0.8),
    );
    put("loudness_sma3_percentile50.0", fu.loudness_percentile(0.5));
    put("F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2", fu.f0_range_st());
    put("loudness_sma3_pctlrange0-2", fu.loudness_range());
    put("loudnessPeaksPerSec", fu.loudness_peaks_per_s());
    put("F1frequency_sma3nz_amean", fu.spectral.formants[0].mean());
    put("F2frequency_sma3nz_amean", fu.spectral.formants[1].mean());
    put("F3frequency_sma3nz_amean", fu.spectral.formants[2].mean());
    put("VoicedSegmentsPerSec", fu.voiced_segments_per_s());
    put("MeanVoicedSegmentLengthSec", fu.mean_voiced_segment_s());
    out
}

fn pearson(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len() as f64;
    let (mx, my) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / n,
        pairs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = pairs.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let vx: f64 = pairs.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let vy: f64 = pairs.iter().map(|(_, y)| (y - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// (feature, clips it is compared on, required Pearson r). The thresholds sit
/// just under what was measured (docs/features.md), so that a regression fails.
const TARGETS: &[(&str, &str, f64)] = &[
    ("F0semitoneFrom27.5Hz_sma3nz", "speech", 0.95),
    ("HNRdBACF_sma3nz", "speech", 0.6),
    ("Loudness_sma3", "speech", 0.98),
    ("alphaRatio_sma3", "speech", 0.98),
    ("hammarbergIndex_sma3", "speech", 0.98),
    ("slope0-500_sma3", "speech", 0.98),
    ("slope500-1500_sma3", "speech", 0.9),
    ("mfcc1_sma3", "speech", 0.98),
    ("mfcc2_sma3", "speech", 0.98),
    ("mfcc3_sma3", "speech", 0.98),
    ("mfcc4_sma3", "speech", 0.98),
    ("spectralFlux_sma3", "speech", 0.8),
    // Synthetic voices have almost no real jitter: both sides measure
    // algorithmic noise, and r says nothing yet (docs/features.md). Reported,
    // not required, until the reference set has natural voices.
    ("jitterLocal_sma3nz", "speech", -1.0),
    ("shimmerLocaldB_sma3nz", "speech", 0.65),
    ("F0semitoneFrom27.5Hz_sma3nz_percentile20.0", "speech", 0.95),
    ("F0semitoneFrom27.5Hz_sma3nz_percentile50.0", "speech", 0.95),
    ("F0semitoneFrom27.5Hz_sma3nz_percentile80.0", "speech", 0.8),
    ("loudness_sma3_percentile50.0", "speech", 0.95),
    ("F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2", "speech", 0.4),
    ("loudness_sma3_pctlrange0-2", "speech", 0.95),
    ("loudnessPeaksPerSec", "speech", 0.4),
    // espeak-ng's stops are digital silence; our onset rule (a window whose
    // head is silent is not yet voiced) splits or trims voiced runs there
    // differently from openSMILE. On natural voices the same rule raised
    // agreement (EmoDB table below), so this is reported, not required.
    ("VoicedSegmentsPerSec", "speech", -1.0),
    ("MeanVoicedSegmentLengthSec", "speech", 0.6),
    // Formants agree poorly so far (docs/features.md): reported, not required.
    ("F1frequency_sma3nz_amean", "speech", -1.0),
    ("F2frequency_sma3nz_amean", "speech", -1.0),
    ("F3frequency_sma3nz_amean", "speech", -1.0),
];

/// Compare `ours` with `reference` over `files` (those starting with
/// `speech_only` when the target says "speech"); returns the failures.
fn compare(
    targets: &[(&str, &str, f64)],
    files: &[&String],
    ours: &HashMap<&String, HashMap<String, f64>>,
    reference: &HashMap<String, HashMap<String, f64>>,
    speech_only: &str,
    max_f0_mad: f64,
) -> Vec<String> {
    let mut failures = vec![];
    println!(
        "{:<44} {:>6} {:>8} {:>9}",
        "feature", "clips", "r", "required"
    );
    for (feature, set, min_r) in targets {
        let pairs: Vec<(f64, f64)> = files
            .iter()
            .filter(|f| *set == "all" || f.starts_with(speech_only))
            .filter_map(|f| Some((*ours[f].get(*feature)?, *reference[*f].get(*feature)?)))
            .collect();
        let r = pearson(&pairs);
        println!("{feature:<44} {:>6} {r:>8.3} {min_r:>9}", pairs.len());
        if r.is_nan() || r < *min_r {
            failures.push(format!("{feature}: r = {r:.3} < {min_r}"));
        }
    }
    let f0 = "F0semitoneFrom27.5Hz_sma3nz";
    let diffs: Vec<f64> = files
        .iter()
        .filter(|f| f.starts_with(speech_only))
        .filter_map(|f| Some(ours[f].get(f0)? - reference[*f].get(f0)?))
        .collect();
    let mad = diffs.iter().map(|d| d.abs()).sum::<f64>() / diffs.len() as f64;
    let bias = diffs.iter().sum::<f64>() / diffs.len() as f64;
    println!(
        "F0 mean |difference| over {} clips: {mad:.2} st (ours minus openSMILE on average: {bias:+.2} st)",
        diffs.len()
    );
    if mad > max_f0_mad {
        failures.push(format!(
            "F0 mean differs by {mad:.2} st on average (> {max_f0_mad} st)"
        ));
    }
    failures
}

#[test]
fn frame_descriptors_agree_with_opensmile_egemaps() {
    let reference = reference();
    let mut files: Vec<&String> = reference.keys().collect();
    files.sort();
    let ours: HashMap<&String, HashMap<String, f64>> =
        files.iter().map(|f| (*f, ours(f))).collect();
    let failures = compare(TARGETS, &files, &ours, &reference, "speech", 1.0);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Natural voices: 70 EmoDB clips (10 per emotion) read from the shared corpus,
/// resampled to 16 kHz; openSMILE's numbers for the same clips are committed
/// (dsp/reference/egemaps_emodb.py). Jitter, shimmer, HNR and formants only
/// mean something on real voices. Thresholds sit just under what was measured;
/// -1 marks a descriptor reported but not yet required (docs/features.md).
const EMODB_TARGETS: &[(&str, &str, f64)] = &[
    ("F0semitoneFrom27.5Hz_sma3nz", "all", 0.98),
    ("jitterLocal_sma3nz", "all", -1.0),
    ("shimmerLocaldB_sma3nz", "all", 0.6),
    ("HNRdBACF_sma3nz", "all", 0.75),
    ("Loudness_sma3", "all", 0.98),
    ("alphaRatio_sma3", "all", 0.93),
    ("hammarbergIndex_sma3", "all", 0.98),
    ("slope0-500_sma3", "all", 0.9),
    ("slope500-1500_sma3", "all", 0.85),
    ("mfcc1_sma3", "all", 0.98),
    ("mfcc2_sma3", "all", 0.98),
    ("mfcc3_sma3", "all", 0.98),
    ("mfcc4_sma3", "all", 0.98),
    ("spectralFlux_sma3", "all", 0.97),
    ("F1frequency_sma3nz_amean", "all", -1.0),
    ("F2frequency_sma3nz_amean", "all", -1.0),
    ("F3frequency_sma3nz_amean", "all", -1.0),
    ("F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2", "all", -1.0),
    ("loudness_sma3_pctlrange0-2", "all", 0.95),
    ("loudnessPeaksPerSec", "all", -1.0),
    ("VoicedSegmentsPerSec", "all", 0.45),
];

#[test]
fn natural_voices_agree_with_opensmile_on_emodb() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/emodb/wav");
    let reference: HashMap<String, HashMap<String, f64>> = read_csv("egemaps_emodb.csv");
    let mut files: Vec<&String> = reference.keys().collect();
    files.sort();
    let ours: HashMap<&String, HashMap<String, f64>> = files
        .iter()
        .map(|f| {
            let (audio, rate) =
                emonav_offline::analyze::read_wav(&corpus.join(f)).unwrap_or_else(|e| {
                    panic!("{e} (the shared EmoDB corpus belongs beside the repository)")
                });
            let audio = emonav_dsp::telephone::resample(&audio, rate, 16000).unwrap();
            (*f, measure(&audio, 16000))
        })
        .collect();
    // Mean F0 within 0.6 st of openSMILE's on average (measured 0.38 st).
    let failures = compare(EMODB_TARGETS, &files, &ours, &reference, "", 0.6);
    assert!(failures.is_empty(), "{failures:#?}");
}
