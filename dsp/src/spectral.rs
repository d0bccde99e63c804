//! Spectral descriptors of one frame, modelled on eGeMAPSv02 (Eyben et al.
//! 2016): alpha ratio, Hammarberg index, spectral slopes 0–500 and 500–1500 Hz,
//! MFCC 1–4, spectral flux and a loudness proxy. Their agreement with
//! openSMILE is measured by `tests/egemaps_agreement.rs`. The FFT (realfft) and the
//! read-only tables are planned once per process and shared; every buffer is
//! allocated in `new` and reused.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::RealToComplex;

use crate::table_math::{cos, exp, ln};

/// Mel filters (as openSMILE's MFCC front end).
const MEL_BANDS: usize = 26;
/// Cepstral coefficients kept (eGeMAPS uses 1–4).
pub const MFCCS: usize = 4;

/// Spectral descriptors of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spectral {
    /// Energy 1–5 kHz (up to Nyquist) over energy 50 Hz–1 kHz, dB.
    pub alpha_ratio_db: f32,
    /// Strongest bin 0–2 kHz over strongest bin 2–5 kHz (up to Nyquist), dB.
    pub hammarberg_db: f32,
    /// Linear-regression slope of the dB spectrum over 0–500 Hz, dB/Hz.
    pub slope_0_500: f32,
    /// Linear-regression slope of the dB spectrum over 500–1500 Hz, dB/Hz.
    pub slope_500_1500: f32,
    /// MFCC 1–4 (DCT-II of 26 log mel energies).
    pub mfcc: [f32; MFCCS],
    /// L2 norm of the change of the magnitude spectrum (scaled by the FFT
    /// length) since the last frame.
    pub flux: f32,
    /// Loudness: mean over the 26 mel bands of (equal-loudness weight ×
    /// band energy)^0.33 (Zwicker-style; the mel bands stand in for critical
    /// bands, Hermansky's 40-phon curve for the equal-loudness contour).
    pub loudness: f32,
}

/// A planned spectral analyser for one sample rate and window length.
pub struct SpectralAnalyzer {
    rate: f32,
    fft: Arc<dyn RealToComplex<f32>>,
    window: Arc<[f32]>,
    /// The mel filterbank, its DCT and loudness weights: shared by every
    /// analyser of the same rate, length and band (see `mel_tables`).
    tables: Arc<MelTables>,
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
    magnitude: Vec<f32>,
    previous: Vec<f32>,
    mel_energy: [f32; MEL_BANDS],
    have_previous: bool,
}

/// The read-only part of a [`SpectralAnalyzer`], computed once per process
/// for each (rate, length, mel band) (the DCT basis alone is 104 cosines).
struct MelTables {
    /// Per mel band: (first bin, weights for bins first..first+len).
    mel: Vec<(usize, Vec<f32>)>,
    /// DCT-II basis for the kept cepstral coefficients.
    dct: [[f32; MEL_BANDS]; MFCCS],
    /// Natural log of the equal-loudness weight of each mel band's centre frequency.
    ln_eql: [f32; MEL_BANDS],
}

/// The shared [`MelTables`] of an analyser of `rate` Hz, FFT length `n`,
/// mel bands over `lo_hz`..`hi_hz`.
fn mel_tables(rate: u32, n: usize, lo_hz: f32, hi_hz: f32) -> Arc<MelTables> {
    type Key = (u32, usize, u32, u32);
    static CACHE: std::sync::Mutex<Vec<(Key, Arc<MelTables>)>> = std::sync::Mutex::new(Vec::new());
    let key = (rate, n, lo_hz.to_bits(), hi_hz.to_bits());
    let mut cache = crate::plans::lock(&CACHE);
    if let Some((_, t)) = cache.iter().find(|(k, _)| *k == key) {
        return t.clone();
    }
    let t = Arc::new(MelTables::new(rate, n, lo_hz, hi_hz));
    cache.push((key, t.clone()));
    t
}

impl MelTables {
    fn new(rate: u32, n: usize, lo_hz: f32, hi_hz: f32) -> MelTables {
        let bins = n / 2 + 1;
        let rate_f = rate as f32;
        let bin_hz = rate_f / n as f32;
        let (lo, hi) = (hz_to_mel(lo_hz), hz_to_mel(hi_hz.min(rate_f / 2.0)));
        let edges: Vec<f32> = (0..MEL_BANDS + 2)
            .map(|i| mel_to_hz(lo + (hi - lo) * i as f32 / (MEL_BANDS + 1) as f32))
            .collect();
        let mel = (0..MEL_BANDS)
            .map(|b| {
                let (l, c, r) = (edges[b], edges[b + 1], edges[b + 2]);
                let first = (l / bin_hz).ceil() as usize;
                let last = ((r / bin_hz).floor() as usize).min(bins - 1);
                let weights = (first..=last)
                    .map(|k| {
                        let f = k as f32 * bin_hz;
                        if f <= c {
                            (f - l) / (c - l)
                        } else {
                            (r - f) / (r - c)
                        }
                        .max(0.0)
                    })
                    .collect();
                (first, weights)
            })
            .collect();
        MelTables {
            mel,
            dct: std::array::from_fn(|j| {
                std::array::from_fn(|i| {
                    (2.0 / MEL_BANDS as f32).sqrt()
                        * cos(std::f32::consts::PI * (j + 1) as f32 * (i as f32 + 0.5)
                            / MEL_BANDS as f32)
                })
            }),
            ln_eql: std::array::from_fn(|b| ln(equal_loudness(edges[b + 1]))),
        }
    }
}

/// Hermansky's (1990, PLP) approximation of the 40-phon equal-loudness curve.
fn equal_loudness(f: f32) -> f32 {
    let w2 = (2.0 * std::f64::consts::PI * f as f64).powi(2);
    ((w2 + 56.8e6) * w2 * w2 / ((w2 + 6.3e6).powi(2) * (w2 + 0.38e9))) as f32
}

/// A Hamming window of `len` samples.
pub(crate) fn hamming(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| 0.54 - 0.46 * cos(2.0 * std::f32::consts::PI * i as f32 / (len - 1) as f32))
        .collect()
}

fn hz_to_mel(f: f32) -> f32 {
    1127.0 * ln(1.0 + f / 700.0)
}

fn mel_to_hz(m: f32) -> f32 {
    700.0 * (exp(m / 1127.0) - 1.0)
}

impl SpectralAnalyzer {
    /// Plan for `rate` Hz and windows of `len` samples (zero-padded to a power of two).
    pub fn new(rate: u32, len: usize) -> Self {
        Self::with_mel_range(rate, len, 20.0, (rate as f32 / 2.0).min(8000.0))
    }

    /// As [`new`](Self::new), with the mel filterbank (MFCC, loudness) over
    /// `lo_hz`..`hi_hz` only: the analyser uses the telephone band, so that
    /// no band holds only what a line's filter left below 300 Hz.
    pub fn with_mel_range(rate: u32, len: usize, lo_hz: f32, hi_hz: f32) -> Self {
        let n = len.next_power_of_two();
        let fft = crate::plans::forward_fft(n);
        let bins = n / 2 + 1;
        Self {
            rate: rate as f32,
            scratch: fft.make_scratch_vec(),
            spectrum: fft.make_output_vec(),
            input: fft.make_input_vec(),
            fft,
            // Hamming, as openSMILE's eGeMAPS spectral front end.
            window: crate::plans::hamming(len),
            tables: mel_tables(rate, n, lo_hz, hi_hz),
            power: vec![0.0; bins],
            magnitude: vec![0.0; bins],
            previous: vec![0.0; bins],
            mel_energy: [0.0; MEL_BANDS],
            have_previous: false,
        }
    }

    fn bin(&self, hz: f32) -> usize {
        ((hz * (self.input.len() as f32) / self.rate).round() as usize).min(self.power.len() - 1)
    }

    fn band_energy(&self, lo: f32, hi: f32) -> f32 {
        crate::kernels::sum(&self.power[self.bin(lo)..self.bin(hi)])
    }

    fn band_max(&self, lo: f32, hi: f32) -> f32 {
        self.power[self.bin(lo)..=self.bin(hi)]
            .iter()
            .copied()
            .fold(0.0, f32::max)
    }

    /// dB-spectrum regression slope over `lo..hi` Hz, in dB per Hz.
    fn slope(&self, lo: f32, hi: f32) -> f32 {
        let (a, b) = (self.bin(lo), self.bin(hi));
        let bin_hz = self.rate / self.input.len() as f32;
        let n = (b - a + 1) as f32;
        let (mut sx, mut sy, mut sxx, mut sxy) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for k in a..=b {
            let x = k as f32 * bin_hz;
            let y = (10.0 / std::f32::consts::LN_10) * crate::kernels::ln(self.power[k].max(1e-12));
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        let denom = n * sxx - sx * sx;
        if denom.abs() < f32::EPSILON {
            0.0
        } else {
            (n * sxy - sx * sy) / denom
        }
    }

    /// Analyse the last `len` samples of a frame (`x.len() >= len`).
    pub fn process(&mut self, x: &[f32]) -> Spectral {
        let len = self.window.len();
        let x = &x[x.len() - len..];
        for (i, v) in self.input.iter_mut().enumerate() {
            *v = if i < len { x[i] * self.window[i] } else { 0.0 };
        }
        if self
            .fft
            .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch)
            .is_err()
        {
            return Spectral::default();
        }
        for ((p, m), c) in self
            .power
            .iter_mut()
            .zip(self.magnitude.iter_mut())
            .zip(&self.spectrum)
        {
            *p = c.norm_sqr();
            *m = p.sqrt();
        }
        // Flux on magnitudes scaled by the FFT length; openSMILE's eGeMAPS flux
        // is level-dependent too (a louder change is a bigger change).
        let mut flux = 0.0;
        let norm = 1.0 / self.input.len() as f32;
        for (m, prev) in self.magnitude.iter().zip(self.previous.iter_mut()) {
            let v = m * norm;
            if self.have_previous {
                flux += (v - *prev) * (v - *prev);
            }
            *prev = v;
        }
        self.have_previous = true;

        let nyq = self.rate / 2.0;
        let low = self.band_energy(50.0, 1000.0);
        let high = self.band_energy(1000.0, 5000.0f32.min(nyq));
        let alpha_ratio_db = crate::kernels::db(high.max(1e-12) / low.max(1e-12));
        let hammarberg_db = crate::kernels::db(
            self.band_max(0.0, 2000.0).max(1e-12)
                / self.band_max(2000.0, 5000.0f32.min(nyq)).max(1e-12),
        );

        for (e, (first, weights)) in self.mel_energy.iter_mut().zip(&self.tables.mel) {
            *e = weights
                .iter()
                .zip(&self.power[*first..])
                .map(|(w, p)| w * p)
                .sum::<f32>()
                .max(1e-10);
            *e = crate::kernels::ln(*e);
        }
        let mut mfcc = [0.0; MFCCS];
        for (c, basis) in mfcc.iter_mut().zip(&self.tables.dct) {
            *c = basis.iter().zip(&self.mel_energy).map(|(b, e)| b * e).sum();
        }
        // Zwicker-style: weight each auditory band by the equal-loudness curve,
        // compress its energy by a power of 0.33, and sum; mel bands stand in
        // for critical bands.
        let loudness = self
            .mel_energy
            .iter()
            .zip(&self.tables.ln_eql)
            // (w·E)^0.33 from the logs already at hand: one exp per band.
            .map(|(ln_e, ln_w)| (0.33 * (ln_w + ln_e)).exp())
            .sum::<f32>()
            / MEL_BANDS as f32;
        Spectral {
            alpha_ratio_db,
            hammarberg_db,
            slope_0_500: self.slope(0.0, 500.0),
            slope_500_1500: self.slope(500.0, 1500.0),
            mfcc,
            flux: flux.sqrt(),
            loudness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, f: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.3 * (2.0 * std::f32::consts::PI * f * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn energy_placement_shows_in_alpha_ratio_and_hammarberg() {
        let mut s = SpectralAnalyzer::new(8000, 200);
        let low = s.process(&tone(8000, 300.0, 200));
        let high = s.process(&tone(8000, 2500.0, 200));
        assert!(low.alpha_ratio_db < -20.0, "{low:?}");
        assert!(high.alpha_ratio_db > 20.0, "{high:?}");
        assert!(low.hammarberg_db > 20.0 && high.hammarberg_db < -20.0);
    }

    #[test]
    fn white_noise_is_flat() {
        let mut rng = fastrand::Rng::with_seed(9);
        let mut s = SpectralAnalyzer::new(16000, 400);
        let mut slopes = 0.0;
        for _ in 0..50 {
            let x: Vec<f32> = (0..400).map(|_| rng.f32() - 0.5).collect();
            slopes += s.process(&x).slope_500_1500;
        }
        assert!((slopes / 50.0).abs() < 0.005, "flat: {}", slopes / 50.0);
    }

    #[test]
    fn flux_is_zero_for_a_steady_spectrum_and_large_for_a_jump() {
        let mut s = SpectralAnalyzer::new(16000, 400);
        let a = tone(16000, 500.0, 400);
        s.process(&a);
        let steady = s.process(&a).flux;
        let jump = s.process(&tone(16000, 3000.0, 400)).flux;
        assert!(steady < 1e-6, "{steady}");
        assert!(jump > 0.01, "{jump}");
    }

    #[test]
    fn louder_is_louder_and_mfcc_responds_to_tilt() {
        let mut s = SpectralAnalyzer::new(8000, 200);
        let quiet: Vec<f32> = tone(8000, 440.0, 200).iter().map(|v| v * 0.1).collect();
        let q = s.process(&quiet);
        let l = s.process(&tone(8000, 440.0, 200));
        assert!(
            l.loudness > 1.5 * q.loudness,
            "{} vs {}",
            l.loudness,
            q.loudness
        );
        let lo = s.process(&tone(8000, 300.0, 200)).mfcc[0];
        let hi = s.process(&tone(8000, 3000.0, 200)).mfcc[0];
        assert!(lo > hi, "MFCC1 falls as energy moves up: {lo} vs {hi}");
    }
}
