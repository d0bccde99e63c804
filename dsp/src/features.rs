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
    /// Spectral descriptors of the 25 ms window.
    pub spectral: Spectral,
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
}

/// Running statistics over the call so far, updated in O(1) per frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Functionals {
    /// Frames seen.
    pub frames: u32,
    /// Speech frames.
    pub speech_frames: u32,
    /// Voiced speech frames.
    pub voiced_frames: u32,
    /// Onsets of voiced stretches within speech (a syllable-rate proxy).
    pub voiced_onsets: u32,
    energy_sum: f64,
    energy_sq: f64,
    st_sum: f64,
    st_sq: f64,
    hf_sum: f64,
    /// Loudest speech frame (dBFS).
    pub energy_max_db: f32,
    was_voiced: bool,
    /// Spectral descriptors and HNR over speech.
    pub spectral: SpectralStats,
}

impl Functionals {
    /// Account one frame.
    pub fn update(&mut self, f: &FrameFeatures) {
        self.frames += 1;
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
        }
        let e = f.energy_db as f64;
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
        (self.speech_frames > 0).then(|| (self.energy_sum / self.speech_frames as f64) as f32)
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
        (self.speech_frames > 1).then(|| {
            let n = self.speech_frames as f64;
            let m = self.energy_sum / n;
            ((self.energy_sq / n - m * m).max(0.0)).sqrt() as f32
        })
    }

    /// Mean spectral balance of speech frames (dB).
    pub fn hf_ratio_mean_db(&self) -> Option<f32> {
        (self.speech_frames > 0).then(|| (self.hf_sum / self.speech_frames as f64) as f32)
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
