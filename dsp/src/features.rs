//! Per-frame descriptors and the running functionals over a call.
//!
//! Frames advance by 10 ms. Energy and spectral balance use the last 25 ms
//! (a Hamming-free rectangular window: we only need levels, not spectra);
//! pitch uses the last 40 ms, since a 60 Hz voice needs more than two periods
//! in view (eGeMAPS uses 60 ms for the same reason).

use crate::spectral::{Spectral, MFCCS};

/// Descriptors of one 10 ms frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FrameFeatures {
    /// Energy of the last 25 ms in dB relative to a full-scale sine's RMS (dBFS).
    pub energy_db: f32,
    /// Voice activity: energetic above the noise floor and near voiced frames.
    pub speech: bool,
    /// Periodic (pitch found).
    pub voiced: bool,
    /// F0 in Hz (0 when unvoiced).
    pub f0_hz: f32,
    /// F0 in semitones above 27.5 Hz, as eGeMAPS (0 when unvoiced).
    pub f0_semitones: f32,
    /// Energy of the first difference relative to the signal's, in dB: a
    /// one-line spectral balance that rises with high-frequency energy (the
    /// "brighter" voice of raised vocal effort, like eGeMAPS' alpha ratio).
    pub hf_ratio_db: f32,
    /// Adaptive noise floor estimate (dBFS).
    pub noise_floor_db: f32,
    /// Harmonics-to-noise ratio from the pitch correlation peak r,
    /// 10·log10(r / (1 - r)) (Boersma 1993), voiced frames only (0 otherwise).
    pub hnr_db: f32,
    /// Formants F1–F3 in Hz (voiced frames; 0 when not found).
    pub formants_hz: [f32; 3],
    /// Local jitter of the voiced frame (see `pitch`), when periods could be marked.
    pub jitter: Option<f32>,
    /// Local shimmer of the voiced frame, dB.
    pub shimmer_db: Option<f32>,
    /// Spectral descriptors of the 25 ms window.
    pub spectral: Spectral,
}

/// Bins of the percentile histograms.
const HIST_BINS: usize = 256;

/// A fixed-range histogram for percentiles in O(1) per value and no
/// allocation; resolution is (hi - lo) / 256.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Histogram {
    lo: f32,
    hi: f32,
    n: u32,
    bins: [u32; HIST_BINS],
}

impl Histogram {
    /// A histogram over `[lo, hi)`; values outside are clamped into the end bins.
    pub const fn new(lo: f32, hi: f32) -> Self {
        Self {
            lo,
            hi,
            n: 0,
            bins: [0; HIST_BINS],
        }
    }

    /// Add a value.
    pub fn add(&mut self, v: f32) {
        let i = ((v - self.lo) * (HIST_BINS as f32 / (self.hi - self.lo))) as i64;
        self.bins[i.clamp(0, HIST_BINS as i64 - 1) as usize] += 1;
        self.n += 1;
    }

    /// The `q`-quantile (0..1), at the centre of its bin; `None` when empty.
    pub fn quantile(&self, q: f32) -> Option<f32> {
        if self.n == 0 {
            return None;
        }
        let target = (q * self.n as f32).ceil().max(1.0) as u32;
        let mut seen = 0;
        let width = (self.hi - self.lo) / HIST_BINS as f32;
        for (i, c) in self.bins.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(self.lo + (i as f32 + 0.5) * width);
            }
        }
        Some(self.hi)
    }
}

/// Lengths of runs of voiced and unvoiced frames (eGeMAPS' temporal features).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Segments {
    /// Completed voiced segments.
    pub voiced: u32,
    /// Frames in completed voiced segments.
    pub voiced_frames: u32,
    /// Completed unvoiced segments (between voiced ones).
    pub unvoiced: u32,
    /// Frames in completed unvoiced segments.
    pub unvoiced_frames: u32,
    run: u32,
    in_voiced: bool,
    seen_voice: bool,
}

impl Segments {
    fn update(&mut self, voiced: bool) {
        if voiced != self.in_voiced && self.run > 0 {
            if self.in_voiced {
                self.voiced += 1;
                self.voiced_frames += self.run;
            } else if self.seen_voice {
                self.unvoiced += 1;
                self.unvoiced_frames += self.run;
            }
            self.run = 0;
        }
        self.seen_voice |= voiced;
        self.in_voiced = voiced;
        self.run += 1;
    }
}

/// Count, mean and standard deviation, updated in O(1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Running {
    n: u32,
    sum: f64,
    sq: f64,
}

impl Running {
    /// Add a value.
    pub fn add(&mut self, v: f32) {
        self.n += 1;
        self.sum += v as f64;
        self.sq += (v as f64) * (v as f64);
    }
    /// Values seen.
    pub fn count(&self) -> u32 {
        self.n
    }
    /// Mean; `None` when empty.
    pub fn mean(&self) -> Option<f32> {
        (self.n > 0).then(|| (self.sum / self.n as f64) as f32)
    }
    /// Population standard deviation; `None` with fewer than two values.
    pub fn std(&self) -> Option<f32> {
        (self.n > 1).then(|| {
            let m = self.sum / self.n as f64;
            (self.sq / self.n as f64 - m * m).max(0.0).sqrt() as f32
        })
    }
}

/// Running statistics of the spectral descriptors over speech frames.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SpectralStats {
    /// Alpha ratio (dB).
    pub alpha_ratio: Running,
    /// Hammarberg index (dB).
    pub hammarberg: Running,
    /// Slope 0–500 Hz (dB/Hz).
    pub slope_0_500: Running,
    /// Slope 500–1500 Hz (dB/Hz).
    pub slope_500_1500: Running,
    /// MFCC 1–4.
    pub mfcc: [Running; MFCCS],
    /// Spectral flux.
    pub flux: Running,
    /// Loudness proxy.
    pub loudness: Running,
    /// HNR over voiced frames (dB).
    pub hnr: Running,
    /// Local jitter over voiced frames.
    pub jitter: Running,
    /// Local shimmer over voiced frames (dB).
    pub shimmer: Running,
    /// F1–F3 over voiced frames where found (Hz).
    pub formants: [Running; 3],
    /// Alpha ratio over unvoiced speech frames (dB): eGeMAPS' "UV" variant,
    /// where fricative noise shows vocal effort apart from the voice source.
    pub alpha_ratio_uv: Running,
    /// Hammarberg index over unvoiced speech frames (dB).
    pub hammarberg_uv: Running,
    /// Slope 0–500 Hz over unvoiced speech frames.
    pub slope_0_500_uv: Running,
    /// F0 rise between consecutive voiced frames (semitones per second).
    pub f0_rising: Running,
    /// F0 fall between consecutive voiced frames (semitones per second, positive).
    pub f0_falling: Running,
}

/// Running statistics over the call so far, updated in O(1) per frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Functionals {
    /// Frames seen.
    pub frames: u32,
    /// Speech frames.
    pub speech_frames: u32,
    /// Voiced speech frames.
    pub voiced_frames: u32,
    /// Onsets of voiced stretches within speech (a syllable-rate proxy).
    pub voiced_onsets: u32,
    /// Speech frames whose energy and spectral balance are in the sums
    /// below: `speech_frames` also counts frames confirmed as speech
    /// afterwards, whose values were never added.
    summed_frames: u32,
    energy_sum: f64,
    energy_sq: f64,
    st_sum: f64,
    st_sq: f64,
    hf_sum: f64,
    /// Loudest speech frame (dBFS).
    pub energy_max_db: f32,
    was_voiced: bool,
    last_st: f32,
    /// Spectral descriptors and HNR over speech.
    pub spectral: SpectralStats,
    /// F0 (semitones) over voiced frames, for percentiles (0.31 st bins).
    pub f0_hist: Histogram,
    /// Loudness proxy over all frames, for percentiles.
    pub loudness_hist: Histogram,
    /// Voiced/unvoiced runs over all frames.
    pub segments: Segments,
    /// Local maxima of the loudness contour (all frames).
    pub loudness_peaks: u32,
    /// Smoothed loudness two and one frames back, raw loudness one and two frames back.
    last_loudness: [f32; 4],
}

impl Default for Functionals {
    fn default() -> Self {
        Self {
            frames: 0,
            speech_frames: 0,
            voiced_frames: 0,
            voiced_onsets: 0,
            summed_frames: 0,
            energy_sum: 0.0,
            energy_sq: 0.0,
            st_sum: 0.0,
            st_sq: 0.0,
            hf_sum: 0.0,
            energy_max_db: 0.0,
            was_voiced: false,
            last_st: 0.0,
            spectral: SpectralStats::default(),
            f0_hist: Histogram::new(0.0, 80.0),
            loudness_hist: Histogram::new(0.0, 2.0),
            segments: Segments::default(),
            loudness_peaks: 0,
            last_loudness: [0.0; 4],
        }
    }
}

impl Functionals {
    /// Account one frame.
    pub fn update(&mut self, f: &FrameFeatures) {
        self.frames += 1;
        let l = f.spectral.loudness;
        self.loudness_hist.add(l);
        // Peaks of the 3-frame moving average (eGeMAPS' "sma3" contour), so
        // that frame-to-frame ripple does not count as a peak.
        let [p2, p1, x1, x2] = self.last_loudness;
        let smooth = (x2 + x1 + l) / 3.0;
        if self.frames > 4 && p1 > p2 && p1 > smooth {
            self.loudness_peaks += 1;
        }
        self.last_loudness = [p1, smooth, l, x1];
        self.segments.update(f.voiced);
        if f.voiced {
            self.f0_hist.add(f.f0_semitones);
            if let Some(j) = f.jitter {
                self.spectral.jitter.add(j);
            }
            if let Some(s) = f.shimmer_db {
                self.spectral.shimmer.add(s);
            }
            for (r, &hz) in self.spectral.formants.iter_mut().zip(&f.formants_hz) {
                if hz > 0.0 {
                    r.add(hz);
                }
            }
        }
        if !f.speech {
            self.was_voiced = false;
            return;
        }
        self.speech_frames += 1;
        let sp = &mut self.spectral;
        sp.alpha_ratio.add(f.spectral.alpha_ratio_db);
        sp.hammarberg.add(f.spectral.hammarberg_db);
        sp.slope_0_500.add(f.spectral.slope_0_500);
        sp.slope_500_1500.add(f.spectral.slope_500_1500);
        for (r, v) in sp.mfcc.iter_mut().zip(f.spectral.mfcc) {
            r.add(v);
        }
        sp.flux.add(f.spectral.flux);
        sp.loudness.add(f.spectral.loudness);
        if f.voiced {
            sp.hnr.add(f.hnr_db);
            if self.was_voiced {
                // Larger steps are octave jumps, not intonation.
                let slope = (f.f0_semitones - self.last_st) * 100.0;
                if slope > 0.0 && slope < 400.0 {
                    sp.f0_rising.add(slope);
                } else if slope < 0.0 && slope > -400.0 {
                    sp.f0_falling.add(-slope);
                }
            }
            self.last_st = f.f0_semitones;
        } else {
            sp.alpha_ratio_uv.add(f.spectral.alpha_ratio_db);
            sp.hammarberg_uv.add(f.spectral.hammarberg_db);
            sp.slope_0_500_uv.add(f.spectral.slope_0_500);
        }
        let e = f.energy_db as f64;
        self.summed_frames += 1;
        self.energy_sum += e;
        self.energy_sq += e * e;
        self.hf_sum += f.hf_ratio_db as f64;
        if self.speech_frames == 1 || f.energy_db > self.energy_max_db {
            self.energy_max_db = f.energy_db;
        }
        if f.voiced {
            self.voiced_frames += 1;
            let st = f.f0_semitones as f64;
            self.st_sum += st;
            self.st_sq += st * st;
            if !self.was_voiced {
                self.voiced_onsets += 1;
            }
        }
        self.was_voiced = f.voiced;
    }

    /// Speech heard, ms.
    pub fn speech_ms(&self) -> u32 {
        self.speech_frames * 10
    }

    /// Mean energy of speech frames (dBFS); `None` without speech.
    pub fn energy_mean_db(&self) -> Option<f32> {
        (self.summed_frames > 0).then(|| (self.energy_sum / self.summed_frames as f64) as f32)
    }

    /// Mean F0 in semitones re 27.5 Hz over voiced speech; `None` without.
    pub fn f0_mean_st(&self) -> Option<f32> {
        (self.voiced_frames > 0).then(|| (self.st_sum / self.voiced_frames as f64) as f32)
    }

    /// Standard deviation of F0 in semitones; `None` with fewer than 2 voiced frames.
    pub fn f0_std_st(&self) -> Option<f32> {
        (self.voiced_frames > 1).then(|| {
            let n = self.voiced_frames as f64;
            let m = self.st_sum / n;
            ((self.st_sq / n - m * m).max(0.0)).sqrt() as f32
        })
    }

    /// Standard deviation of speech-frame energy (dB).
    pub fn energy_std_db(&self) -> Option<f32> {
        // Over the frames summed: dividing by `speech_frames` counted the
        // confirmed frames as 0 dB, which made the spread depend on level.
        (self.summed_frames > 1).then(|| {
            let n = self.summed_frames as f64;
            let m = self.energy_sum / n;
            ((self.energy_sq / n - m * m).max(0.0)).sqrt() as f32
        })
    }

    /// Mean spectral balance of speech frames (dB).
    pub fn hf_ratio_mean_db(&self) -> Option<f32> {
        (self.summed_frames > 0).then(|| (self.hf_sum / self.summed_frames as f64) as f32)
    }

    /// F0 percentile (semitones) over voiced frames, `q` in 0..1.
    pub fn f0_percentile(&self, q: f32) -> Option<f32> {
        self.f0_hist.quantile(q)
    }

    /// Loudness percentile over all frames, `q` in 0..1.
    pub fn loudness_percentile(&self, q: f32) -> Option<f32> {
        self.loudness_hist.quantile(q)
    }

    /// F0 range between the 20th and 80th percentiles, semitones (eGeMAPS' pctlrange0-2).
    pub fn f0_range_st(&self) -> Option<f32> {
        Some(self.f0_percentile(0.8)? - self.f0_percentile(0.2)?)
    }

    /// Coefficient of variation (std / mean) of F0 in Hz-free semitones.
    pub fn f0_cv(&self) -> Option<f32> {
        Some(self.f0_std_st()? / self.f0_mean_st()?)
    }

    /// Loudness range between the 20th and 80th percentiles.
    pub fn loudness_range(&self) -> Option<f32> {
        Some(self.loudness_percentile(0.8)? - self.loudness_percentile(0.2)?)
    }

    /// Loudness peaks per second of audio.
    pub fn loudness_peaks_per_s(&self) -> Option<f32> {
        (self.frames > 0).then(|| self.loudness_peaks as f32 * 100.0 / self.frames as f32)
    }

    /// Completed voiced segments per second of audio.
    pub fn voiced_segments_per_s(&self) -> Option<f32> {
        (self.frames > 0).then(|| self.segments.voiced as f32 * 100.0 / self.frames as f32)
    }

    /// Mean length of completed voiced segments, seconds.
    pub fn mean_voiced_segment_s(&self) -> Option<f32> {
        let s = &self.segments;
        (s.voiced > 0).then(|| s.voiced_frames as f32 / s.voiced as f32 / 100.0)
    }

    /// Mean length of completed unvoiced segments between voiced ones, seconds.
    pub fn mean_unvoiced_segment_s(&self) -> Option<f32> {
        let s = &self.segments;
        (s.unvoiced > 0).then(|| s.unvoiced_frames as f32 / s.unvoiced as f32 / 100.0)
    }

    /// Voiced onsets per second of speech.
    pub fn onsets_per_s(&self) -> Option<f32> {
        (self.speech_frames >= 10)
            .then(|| self.voiced_onsets as f32 * 100.0 / self.speech_frames as f32)
    }
}

/// F0 in semitones above 27.5 Hz (eGeMAPS' scale).
pub fn semitones(f0_hz: f32) -> f32 {
    if f0_hz > 0.0 {
        12.0 * (f0_hz / 27.5).log2()
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new(0.0, 100.0);
        assert_eq!(h.quantile(0.5), None);
        for v in 0..100 {
            h.add(v as f32);
        }
        let q = |x| h.quantile(x).unwrap();
        assert!(
            (q(0.2) - 19.0).abs() < 0.4
                && (q(0.5) - 49.0).abs() < 0.4
                && (q(0.8) - 79.0).abs() < 0.4
        );
        h.add(1e9);
        assert!(
            h.quantile(1.0).unwrap() <= 100.0,
            "clamped into the last bin"
        );
    }

    #[test]
    fn voiced_and_unvoiced_segments() {
        let mut s = Segments::default();
        // unvoiced lead-in (not counted), 3 voiced, 2 unvoiced, 5 voiced, 1 unvoiced
        for v in [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0] {
            s.update(v == 1);
        }
        assert_eq!((s.voiced, s.voiced_frames), (2, 8));
        assert_eq!((s.unvoiced, s.unvoiced_frames), (1, 2));
    }
}
