//! The fixed feature vector a model reads: functionals of the call so far,
//! chosen to mean the same on any line.
//!
//! Absolute level is left out on purpose. The training corpus (EmoDB) is peak
//! normalised, so its absolute level says nothing; and on a phone line the
//! gain varies by ±10 dB between carriers and handsets. What is kept is level
//! *relative* to the caller's own speech (spread, peak over mean, coefficient
//! of variation), which survives any gain. MFCC 1–4 are gain-free by
//! construction (a gain only moves c0).
//!
//! The spectral slope over 0–500 Hz is left out too: below and around the
//! telephone band's 300 Hz edge it measures the line's filter more than the
//! voice (a full-band and a band-limited line differed by 2.7 deviations in
//! it; the analyser test bounds every other feature but jitter by 0.6).

use crate::features::Functionals;

/// Number of entries in the feature vector.
pub const FEATURES: usize = 44;

/// Names of the entries, in order. A model file carries these and is refused
/// when they differ, so a model can never be read against another layout.
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "f0_mean_st",
    "f0_std_st",
    "f0_p20_st",
    "f0_p50_st",
    "f0_p80_st",
    "f0_range_st",
    "energy_std_db",
    "energy_peak_over_mean_db",
    "loudness_cv",
    "loudness_range_rel",
    "loudness_peaks_per_s",
    "hf_ratio_mean_db",
    "alpha_ratio_mean",
    "alpha_ratio_std",
    "hammarberg_mean",
    "hammarberg_std",
    "slope_500_1500_mean",
    "slope_500_1500_std",
    "mfcc1_mean",
    "mfcc1_std",
    "mfcc2_mean",
    "mfcc2_std",
    "mfcc3_mean",
    "mfcc3_std",
    "mfcc4_mean",
    "mfcc4_std",
    "flux_cv",
    "hnr_mean_db",
    "hnr_std_db",
    "jitter_mean",
    "shimmer_mean_db",
    "f1_mean_hz",
    "f2_mean_hz",
    "f3_mean_hz",
    "voiced_segments_per_s",
    "mean_voiced_segment_s",
    "mean_unvoiced_segment_s",
    "voiced_share",
    "alpha_ratio_uv_mean",
    "hammarberg_uv_mean",
    "f0_rising_mean",
    "f0_rising_std",
    "f0_falling_mean",
    "f0_falling_std",
];

fn ratio(num: Option<f32>, den: Option<f32>) -> Option<f32> {
    match (num, den) {
        (Some(n), Some(d)) if d.abs() > 1e-6 => Some(n / d),
        _ => None,
    }
}

/// Fill `out` from the functionals; a feature that cannot be computed yet
/// (no voiced frame, too few frames) is NaN, which the model reads as "the
/// population mean". Never allocates.
pub fn feature_vector(f: &Functionals, out: &mut [f32; FEATURES]) {
    let sp = &f.spectral;
    let loud_p20 = f.loudness_percentile(0.2);
    let loud_p80 = f.loudness_percentile(0.8);
    let values: [Option<f32>; FEATURES] = [
        f.f0_mean_st(),
        f.f0_std_st(),
        f.f0_percentile(0.2),
        f.f0_percentile(0.5),
        f.f0_percentile(0.8),
        f.f0_range_st(),
        f.energy_std_db(),
        f.energy_mean_db().map(|m| f.energy_max_db - m),
        ratio(sp.loudness.std(), sp.loudness.mean()),
        loud_p80
            .filter(|_| f.speech_frames > 0)
            .and_then(|hi| ratio(Some(hi - loud_p20?), Some(hi))),
        f.loudness_peaks_per_s(),
        f.hf_ratio_mean_db(),
        sp.alpha_ratio.mean(),
        sp.alpha_ratio.std(),
        sp.hammarberg.mean(),
        sp.hammarberg.std(),
        sp.slope_500_1500.mean(),
        sp.slope_500_1500.std(),
        sp.mfcc[0].mean(),
        sp.mfcc[0].std(),
        sp.mfcc[1].mean(),
        sp.mfcc[1].std(),
        sp.mfcc[2].mean(),
        sp.mfcc[2].std(),
        sp.mfcc[3].mean(),
        sp.mfcc[3].std(),
        ratio(sp.flux.std(), sp.flux.mean()),
        sp.hnr.mean(),
        sp.hnr.std(),
        sp.jitter.mean(),
        sp.shimmer.mean(),
        sp.formants[0].mean(),
        sp.formants[1].mean(),
        sp.formants[2].mean(),
        f.voiced_segments_per_s(),
        f.mean_voiced_segment_s(),
        f.mean_unvoiced_segment_s(),
        ratio(Some(f.voiced_frames as f32), Some(f.speech_frames as f32)),
        sp.alpha_ratio_uv.mean(),
        sp.hammarberg_uv.mean(),
        sp.f0_rising.mean(),
        sp.f0_rising.std(),
        sp.f0_falling.mean(),
        sp.f0_falling.std(),
    ];
    for (o, v) in out.iter_mut().zip(values) {
        *o = v.filter(|x| x.is_finite()).unwrap_or(f32::NAN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Analyzer;

    fn voice(amp: f32) -> Vec<i16> {
        // A 140 Hz voice with three harmonics, gentle vibrato and four
        // syllables a second with smooth on- and offsets, over line noise
        // 40 dB down (so that a gain moves the noise floor with the voice, as
        // on a real line).
        let mut phase = 0.0f32;
        let mut rng = fastrand::Rng::with_seed(1);
        // One second of line before the voice, so the noise floor is learnt.
        (0..24000)
            .map(|i| {
                let t = i as f32 / 8000.0 - 1.0;
                let syllable = (t * 4.0).fract();
                let gate = if t > 0.0 && syllable < 0.7 {
                    (std::f32::consts::PI * syllable / 0.7).sin()
                } else {
                    0.0
                };
                phase += 2.0 * std::f32::consts::PI * (140.0 + 5.0 * (t * 3.0).sin()) / 8000.0;
                // Harmonics through the telephone band, as a voice has (the
                // analyser's 300 Hz high-pass leaves little of F0 itself).
                let x: f32 = (1..=12).map(|h| (h as f32 * phase).sin() / h as f32).sum();
                let noise = 0.01 * (rng.f32() * 2.0 - 1.0);
                (amp * 32767.0 * (gate * x / 3.1 + noise)) as i16
            })
            .collect()
    }

    fn vector(pcm: &[i16]) -> [f32; FEATURES] {
        let mut a = Analyzer::new(8000);
        a.push(pcm);
        let mut v = [0.0; FEATURES];
        feature_vector(a.functionals(), &mut v);
        v
    }

    #[test]
    fn silence_gives_no_values_but_rates() {
        let v = vector(&[0; 8000]);
        let finite: Vec<&str> = (0..FEATURES)
            .filter(|&i| v[i].is_finite())
            .map(|i| FEATURE_NAMES[i])
            .collect();
        assert_eq!(finite, ["loudness_peaks_per_s", "voiced_segments_per_s"]);
    }

    #[test]
    fn a_gain_change_leaves_the_vector_nearly_unchanged() {
        let loud = vector(&voice(0.5));
        let quiet = vector(&voice(0.18)); // 9 dB down
        for (i, (a, b)) in loud.iter().zip(&quiet).enumerate() {
            assert!(a.is_finite() == b.is_finite(), "{}", FEATURE_NAMES[i]);
            if a.is_finite() {
                let tol = 0.05 * a.abs().max(b.abs()).max(0.2);
                assert!((a - b).abs() <= tol, "{}: {a} vs {b}", FEATURE_NAMES[i]);
            }
        }
    }
}
