//! The streaming front end a call uses: PCM in, 10 ms frames out, features and
//! estimate kept current. Planned once; `push` never allocates.
//!
//! Every sample pushed first passes the telephone-band filter
//! ([`crate::condition::TelephoneBand`]): calls on any codec, `train`, `eval`
//! and `analyze` all reach the features through this one path.

use crate::condition::TelephoneBand;
use crate::estimator::{EmotionEstimator, Estimate, HeuristicArousal};
use crate::features::{semitones, FrameFeatures, Functionals};
use crate::formants::FormantTracker;
use crate::kernels::{db, dot, sum};
use crate::pitch::PitchTracker;
use crate::spectral::SpectralAnalyzer;

/// Energy below which a frame is never speech (dBFS).
const SPEECH_MIN_DB: f32 = -55.0;
/// Energy above the noise floor that makes a frame a speech candidate (dB).
const SPEECH_ABOVE_FLOOR_DB: f32 = 9.0;
/// How far speech may extend around voiced frames (frames): consonants and
/// soft endings belong to the speech they sit in.
const HANGOVER_FRAMES: u8 = 15;
/// Noise floor rise per unvoiced frame (dB): fast enough to learn steady line
/// noise in about a second, and frozen while voiced so speech cannot lift it.
const FLOOR_RISE_DB: f32 = 0.3;

/// Streaming analyser for one call.
pub struct Analyzer {
    hop: usize,
    energy_len: usize,
    /// The last `pitch.frame_len()` samples, oldest first.
    window: Vec<f32>,
    /// Samples of the current hop already in `window`'s tail.
    filled: usize,
    pitch: PitchTracker,
    spectral: SpectralAnalyzer,
    formants: FormantTracker,
    frame: FrameFeatures,
    functionals: Functionals,
    estimator: Box<dyn EmotionEstimator>,
    /// The input conditioning every sample passes first (`None` only in
    /// [`Analyzer::unconditioned`]).
    band: Option<TelephoneBand>,
    noise_floor_db: f32,
    hangover: u8,
    /// Energetic frames waiting for a voiced frame to confirm them as speech.
    pending_speech: u8,
}

impl Analyzer {
    /// A new analyser for mono PCM at `sample_rate` (8000 or 16000) with the heuristic estimator.
    pub fn new(sample_rate: u32) -> Self {
        Self::with_estimator(sample_rate, Box::new(HeuristicArousal))
    }

    /// A new analyser using `estimator`.
    pub fn with_estimator(sample_rate: u32, estimator: Box<dyn EmotionEstimator>) -> Self {
        assert!(
            sample_rate == 8000 || sample_rate == 16000,
            "emonav-dsp analyses 8 or 16 kHz audio"
        );
        let hop = sample_rate as usize / 100;
        let pitch = PitchTracker::new(sample_rate, sample_rate as usize * 40 / 1000);
        Self {
            hop,
            energy_len: sample_rate as usize * 25 / 1000,
            window: vec![0.0; pitch.frame_len()],
            filled: 0,
            spectral: SpectralAnalyzer::with_mel_range(
                sample_rate,
                sample_rate as usize * 25 / 1000,
                crate::condition::LOW_HZ,
                crate::condition::HIGH_HZ,
            ),
            formants: FormantTracker::new(sample_rate, sample_rate as usize * 25 / 1000),
            pitch,
            frame: FrameFeatures::default(),
            functionals: Functionals::default(),
            estimator,
            band: Some(TelephoneBand::new(sample_rate)),
            noise_floor_db: -60.0,
            hangover: 0,
            pending_speech: 0,
        }
    }

    /// An analyser without the telephone-band conditioning, for comparing
    /// its frame descriptors with a reference implementation on full-band
    /// audio (tests/egemaps_agreement.rs). Calls, `train`, `eval` and
    /// `analyze` never use it: the model's features are conditioned ones.
    pub fn unconditioned(sample_rate: u32) -> Self {
        let mut a = Self::new(sample_rate);
        a.band = None;
        // The full-range filterbank the reference uses, too.
        a.spectral = SpectralAnalyzer::new(sample_rate, sample_rate as usize * 25 / 1000);
        a
    }

    /// Push decoded PCM (any line: full band or band-limited); it is
    /// band-limited to 300–3400 Hz here, then every complete 10 ms frame is
    /// processed and the rest kept.
    pub fn push(&mut self, mut pcm: &[i16]) {
        let tail = self.window.len() - self.hop;
        // Up to the end of the current hop at a time: converted, then
        // band-limited as one block (per-sample filter calls kept the four
        // sections' state in memory; the same bits either way).
        while !pcm.is_empty() {
            let n = (self.hop - self.filled).min(pcm.len());
            let (now, rest) = pcm.split_at(n);
            pcm = rest;
            let start = tail + self.filled;
            let block = &mut self.window[start..start + n];
            for (w, &s) in block.iter_mut().zip(now) {
                *w = s as f32 / 32768.0;
            }
            if let Some(b) = &mut self.band {
                b.process_block(block);
            }
            self.filled += n;
            if self.filled == self.hop {
                self.process_frame();
                self.window.copy_within(self.hop.., 0);
                self.filled = 0;
            }
        }
    }

    fn process_frame(&mut self) {
        let n = self.window.len();
        let recent = &self.window[n - self.energy_len..];
        let len = recent.len();
        let mean = sum(recent) / len as f32;
        let e_all = dot(recent, recent);
        let power = (e_all / len as f32 - mean * mean).max(0.0);
        // +3 dB: a full-scale sine reads 0 dBFS.
        let energy_db = db(power.max(1e-12)) + 3.01;
        // Σ(x[i+1] - x[i])² expanded, so that it runs as one dot product.
        let (first, last) = (recent[0], recent[len - 1]);
        let diff = (2.0 * e_all
            - first * first
            - last * last
            - 2.0 * dot(&recent[1..], &recent[..len - 1]))
        .max(0.0)
            / (len - 1) as f32;
        let hf_ratio_db = db(diff.max(1e-12) / power.max(1e-12));

        // Until the pitch window has filled once, its start is zero padding.
        let primed = (self.functionals.frames as usize + 1) * self.hop >= n;
        // Before the pitch step below removes DC from the whole window.
        let spectral = self.spectral.process(&self.window);
        let energetic = primed
            && energy_db > SPEECH_MIN_DB
            && energy_db > self.noise_floor_db + SPEECH_ABOVE_FLOOR_DB;
        let pitch = if energetic {
            let mean_all = sum(&self.window) / n as f32;
            // Remove DC in place: the window is shifted after this frame anyway,
            // and the offset is constant over it.
            for v in self.window.iter_mut() {
                *v -= mean_all;
            }
            self.pitch.process(&self.window)
        } else {
            Default::default()
        };
        if energy_db < self.noise_floor_db {
            self.noise_floor_db = energy_db.max(-90.0);
        } else if !pitch.voiced {
            self.noise_floor_db += FLOOR_RISE_DB;
        }
        let voiced = energetic && pitch.voiced;
        // Formants only where they mean something (and cost only there).
        let formants_hz = if voiced {
            self.formants.process(&self.window)
        } else {
            [0.0; 3]
        };
        if voiced {
            self.hangover = HANGOVER_FRAMES;
        }
        let speech = energetic && (voiced || self.hangover > 0);
        self.hangover = self.hangover.saturating_sub(1);
        // Energetic frames just before the first voiced frame of a word are
        // speech too; count them when the voicing confirms them.
        let confirmed = if voiced { self.pending_speech } else { 0 };
        self.pending_speech = if energetic && !speech {
            self.pending_speech.saturating_add(1).min(HANGOVER_FRAMES)
        } else {
            0
        };
        self.frame = FrameFeatures {
            energy_db,
            speech,
            voiced,
            f0_hz: if voiced { pitch.f0_hz } else { 0.0 },
            f0_semitones: if voiced { semitones(pitch.f0_hz) } else { 0.0 },
            hf_ratio_db,
            noise_floor_db: self.noise_floor_db,
            hnr_db: if voiced {
                let r = pitch.strength.clamp(1e-4, 0.9999);
                db(r / (1.0 - r))
            } else {
                0.0
            },
            formants_hz,
            jitter: if voiced { pitch.jitter } else { None },
            shimmer_db: if voiced { pitch.shimmer_db } else { None },
            spectral,
        };
        self.functionals.update(&self.frame);
        self.functionals.speech_frames += confirmed as u32;
        self.estimator.update(&self.frame, &self.functionals);
    }

    /// The estimate so far.
    pub fn estimate(&self) -> Estimate {
        self.estimator.estimate(&self.functionals)
    }

    /// Milliseconds of audio processed.
    pub fn audio_ms(&self) -> u32 {
        self.functionals.frames * 10
    }

    /// The latest frame's descriptors.
    pub fn frame(&self) -> &FrameFeatures {
        &self.frame
    }

    /// The running functionals.
    pub fn functionals(&self) -> &Functionals {
        &self.functionals
    }
}

/// Estimates over a whole recording, every 500 ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Functionals over the whole recording.
    pub functionals: Functionals,
    /// `(ms of audio, estimate)` every 500 ms and at the end.
    pub timeline: Vec<(u32, Estimate)>,
}

/// Run the streaming analyser over a whole recording (the batch entry point).
pub fn analyze_pcm(sample_rate: u32, pcm: &[i16]) -> Report {
    let mut a = Analyzer::new(sample_rate);
    let step = sample_rate as usize / 2;
    let mut timeline = Vec::new();
    for chunk in pcm.chunks(step) {
        a.push(chunk);
        timeline.push((a.audio_ms(), a.estimate()));
    }
    Report {
        functionals: a.functionals,
        timeline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, f: f32, amp: f32, secs: f32) -> Vec<i16> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| {
                (amp * 32767.0 * (2.0 * std::f32::consts::PI * f * i as f32 / rate as f32).sin())
                    as i16
            })
            .collect()
    }

    /// A harmonic tone (fundamental `f`, twelve harmonics falling as 1/h):
    /// what passes the telephone band of a voice at that pitch.
    fn harmonic(rate: u32, f: f32, amp: f32, secs: f32) -> Vec<i16> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| {
                let w = 2.0 * std::f32::consts::PI * f * i as f32 / rate as f32;
                let x: f32 = (1..=12).map(|h| (h as f32 * w).sin() / h as f32).sum();
                (amp * 32767.0 * x / 3.1) as i16
            })
            .collect()
    }

    fn noise(amp: f32, n: usize, seed: u64) -> Vec<i16> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n)
            .map(|_| ((rng.f32() * 2.0 - 1.0) * amp * 32767.0) as i16)
            .collect()
    }

    #[test]
    fn silence_has_no_speech_and_no_confidence() {
        let mut a = Analyzer::new(8000);
        a.push(&vec![0i16; 16000]);
        assert_eq!(a.audio_ms(), 2000);
        assert_eq!(a.estimate(), Estimate::default());
    }

    #[test]
    fn a_200_hz_tone_is_voiced_at_200_hz() {
        for rate in [8000, 16000] {
            // The pure tone is below the telephone band: the descriptors are
            // measured here without the conditioning.
            let mut a = Analyzer::unconditioned(rate);
            a.push(&tone(rate, 200.0, 0.3, 1.0));
            let f = a.frame();
            assert!(f.voiced && f.speech, "{f:?}");
            assert!((f.f0_hz - 200.0).abs() < 2.0, "{}", f.f0_hz);
            assert!(
                (f.energy_db - 20.0 * 0.3f32.log10()).abs() < 0.5,
                "{}",
                f.energy_db
            );
        }
    }

    #[test]
    fn steady_line_noise_is_not_speech_but_a_voice_over_it_is() {
        let mut a = Analyzer::new(8000);
        a.push(&noise(0.01, 24000, 5));
        assert_eq!(a.functionals().speech_frames, 0, "noise alone");
        let mut voice = harmonic(8000, 150.0, 0.2, 1.0);
        for (v, n) in voice.iter_mut().zip(noise(0.01, 8000, 6)) {
            *v = v.saturating_add(n);
        }
        a.push(&voice);
        assert!(
            a.functionals().speech_ms() >= 900,
            "{}",
            a.functionals().speech_ms()
        );
    }

    #[test]
    fn loud_high_voice_scores_above_quiet_low_voice() {
        let quiet_low: Vec<i16> = harmonic(8000, 100.0, 0.03, 2.0);
        let loud_high: Vec<i16> = harmonic(8000, 300.0, 0.5, 2.0);
        let lo = analyze_pcm(8000, &quiet_low).timeline.last().unwrap().1;
        let hi = analyze_pcm(8000, &loud_high).timeline.last().unwrap().1;
        assert!(lo.arousal < 0.4 && hi.arousal > 0.6, "{lo:?} {hi:?}");
        assert!(lo.confidence > 0.2 && hi.confidence > 0.2);
    }

    /// A speech-like signal: syllables of a gliding harmonic voice with
    /// harmonics up to 3.8 kHz.
    fn voice(rate: u32, secs: f32) -> Vec<f32> {
        let mut phase = 0.0f32;
        (0..(rate as f32 * secs) as usize)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let f0 = 140.0 + 40.0 * (2.0 * std::f32::consts::PI * 0.7 * t).sin();
                phase += 2.0 * std::f32::consts::PI * f0 / rate as f32;
                let env = (std::f32::consts::PI * t * 4.0).sin().max(0.0);
                let mut v = 0.0;
                for h in 1..(3800.0 / f0) as usize {
                    v += (h as f32 * phase).sin() / h as f32;
                }
                0.2 * env * v
            })
            .collect()
    }

    fn features_and_arousal(pcm: &[f32]) -> ([f32; crate::model::FEATURES], f32) {
        let model = std::sync::Arc::new(crate::model::embedded(8000));
        let mut a =
            Analyzer::with_estimator(8000, Box::new(crate::ModelEstimator::new(model.clone())));
        let pcm: Vec<i16> = pcm.iter().map(|v| (v * 32767.0) as i16).collect();
        for p in pcm.chunks(160) {
            a.push(p);
        }
        let mut x = [0.0; crate::model::FEATURES];
        crate::model::feature_vector(a.functionals(), &mut x);
        (x, model.scores(&x).arousal)
    }

    #[test]
    fn a_full_band_line_and_a_band_limited_one_give_the_same_features() {
        let clean = voice(8000, 3.0);
        // An IP phone's full-band G.711: the voice plus mains hum and rumble.
        let full: Vec<f32> = clean
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = i as f32 / 8000.0;
                v + 0.02 * (2.0 * std::f32::consts::PI * 50.0 * t).sin()
                    + 0.02 * (2.0 * std::f32::consts::PI * 120.0 * t).sin()
            })
            .collect();
        // A PSTN leg: already band-limited to 300–3400 Hz before us.
        let mut line = crate::condition::TelephoneBand::new(8000);
        let mut band: Vec<f32> = full.iter().map(|&v| line.process(v)).collect();
        // Both lines carry the same faint noise floor (−60 dBFS), as any line does.
        let mut rng = fastrand::Rng::with_seed(3);
        let floor: Vec<f32> = (0..clean.len())
            .map(|_| 0.0017 * (rng.f32() * 2.0 - 1.0))
            .collect();
        let full: Vec<f32> = full.iter().zip(&floor).map(|(v, n)| v + n).collect();
        for (v, n) in band.iter_mut().zip(&floor) {
            *v += n;
        }
        let (xf, pf) = features_and_arousal(&full);
        let (xb, pb) = features_and_arousal(&band);
        let m = crate::model::embedded(8000);
        let apart: Vec<String> = crate::model::FEATURE_NAMES
            .iter()
            .enumerate()
            .filter_map(|(k, name)| {
                let zf = (xf[k] - m.mean[k]) / m.scale[k];
                let zb = (xb[k] - m.mean[k]) / m.scale[k];
                let same = (zf - zb).abs() < 0.6 || (zf.is_nan() && zb.is_nan());
                (!same).then(|| format!("{name}: {zf:.2} vs {zb:.2}"))
            })
            .collect();
        eprintln!("apart: {apart:?}; P(high) {pf} vs {pb}");
        // Period-to-period jitter of a perfectly periodic synthetic voice is
        // near zero either way and its standardised value swings with the
        // waveform's shape; every other feature must agree.
        assert!(
            apart.iter().all(|a| a.starts_with("jitter_mean")),
            "standardised features more than 0.6 deviations apart: {apart:?}"
        );
        assert!((pf - pb).abs() < 0.05, "P(high) {pf} vs {pb}");
    }

    #[test]
    fn frames_are_cut_the_same_whatever_the_packet_size() {
        let x = tone(8000, 180.0, 0.2, 1.0);
        let mut a = Analyzer::new(8000);
        let mut b = Analyzer::new(8000);
        a.push(&x);
        for c in x.chunks(77) {
            b.push(c);
        }
        assert_eq!(a.functionals(), b.functionals());
    }
}
