//! `emonav analyze`: a recording through exactly the in-call pipeline:
//! what a full-band G.711 line delivers (8 kHz μ-law), the call's analyser
//! (which band-limits it to 300–3400 Hz as it does every call's audio)
//! and estimator fed in 20 ms packets, and the profile's decision policy
//! with the same early/deadline rules a call applies.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use emonav_dsp::{telephone, Analyzer, Estimate, Model, ModelEstimator};

/// The decision clock a recording is judged by: the call's own
/// (`emonav::policy::Decider`, which the binary plugs in; this crate does not
/// depend on the endpoint library), fed the way a call feeds it: after each
/// analysed 20 ms packet, with the time since the first audio.
pub trait Decide {
    /// What the clock decides.
    type Decision: Serialize + std::fmt::Display;
    /// After the packet that brings the audio to `ms` after its start: the
    /// decision and its time (ms after the first audio) once one is taken,
    /// early or at the deadline.
    fn after_packet(&mut self, e: &Estimate, ms: u64) -> Option<(Self::Decision, u64)>;
    /// The recording ended undecided: the decision a call would take at its
    /// deadline on what it had heard, and when.
    fn at_end(&mut self, e: &Estimate) -> (Self::Decision, u64);
}

/// Why a recording cannot be analysed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// Not a readable WAV file.
    #[error("cannot read {path}: {message}")]
    Read {
        /// Path.
        path: String,
        /// What hound said.
        message: String,
    },
    /// Conversion to telephone audio failed.
    #[error(transparent)]
    Convert(#[from] telephone::ConvertError),
}

/// A WAV file's samples as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    /// Mono 16-bit PCM, kept as it is stored: the line conversion takes it
    /// without a float pass ([`telephone::call_audio_pcm16`]).
    Pcm16(Vec<i16>),
    /// Anything else, mixed down to mono, ±1.0 full scale.
    Float(Vec<f32>),
}

impl Samples {
    /// Mono float, ±1.0 full scale (16-bit PCM as `v / 32768`).
    pub fn into_float(self) -> Vec<f32> {
        match self {
            Samples::Pcm16(pcm) => pcm.iter().map(|&v| pcm16_to_float(v)).collect(),
            Samples::Float(x) => x,
        }
    }
}

fn pcm16_to_float(v: i16) -> f32 {
    v as f32 * (1.0 / 32768.0)
}

/// Read a WAV file (any PCM or float format), mixed down to mono ±1.0.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, u32), AnalyzeError> {
    let (samples, rate) = read_wav_samples(path)?;
    Ok((samples.into_float(), rate))
}

/// A WAV file as what a call at `analysis_rate` hears
/// ([`telephone::call_audio`]), and the file's own rate.
pub fn read_line_audio(path: &Path, analysis_rate: u32) -> Result<(Vec<i16>, u32), AnalyzeError> {
    let (samples, rate) = read_wav_samples(path)?;
    let pcm = match samples {
        Samples::Pcm16(pcm) => telephone::call_audio_pcm16(pcm, rate, analysis_rate)?,
        Samples::Float(x) => telephone::call_audio(&x, rate, analysis_rate)?,
    };
    Ok((pcm, rate))
}

/// Read a WAV file (any PCM or float format): mono 16-bit PCM as it is,
/// anything else mixed down to mono float.
///
/// The file is read in one go; 16-bit PCM and 32-bit float data, what
/// recordings almost always are, is converted in bulk straight from the data
/// chunk (reading sample by sample through hound's iterator was a fifth of
/// `emonav analyze`'s instructions on an 8 kHz file; docs/performance.md).
/// hound validates the header, and decodes the other sample formats.
pub fn read_wav_samples(path: &Path) -> Result<(Samples, u32), AnalyzeError> {
    let err = |e: hound::Error| AnalyzeError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let bytes = std::fs::read(path).map_err(|e| err(hound::Error::IoError(e)))?;
    // hound validates the header and leaves its reader (a slice) at the data.
    let r = hound::WavReader::new(&bytes[..]).map_err(err)?;
    let spec = r.spec();
    let n = r.len() as usize;
    let ch = spec.channels.max(1) as usize;
    let width = fmt_block_align(&bytes).map_or(0, |b| b as usize / ch);
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample, width) {
        (hound::SampleFormat::Int, 16, 2) | (hound::SampleFormat::Float, 32, 4) => {
            let data = r
                .into_inner()
                .get(..n * width)
                .ok_or_else(|| err(hound::Error::FormatError("data chunk is cut short")))?;
            let pcm16 = data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]));
            if width == 2 && ch == 1 {
                // Into a zeroed vector rather than collected: this loop
                // vectorises, the collect did not.
                let mut pcm = vec![0i16; n];
                for (v, b) in pcm.iter_mut().zip(data.chunks_exact(2)) {
                    *v = i16::from_le_bytes([b[0], b[1]]);
                }
                return Ok((Samples::Pcm16(pcm), spec.sample_rate));
            } else if width == 2 {
                pcm16.map(pcm16_to_float).collect()
            } else {
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            }
        }
        _ => {
            // Everything else (8/24/32-bit PCM, odd containers) through hound.
            let mut r = r;
            match spec.sample_format {
                hound::SampleFormat::Float => {
                    r.samples::<f32>().collect::<Result<_, _>>().map_err(err)?
                }
                hound::SampleFormat::Int => {
                    let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
                    r.samples::<i32>()
                        .map(|s| s.map(|v| v as f32 * scale))
                        .collect::<Result<_, _>>()
                        .map_err(err)?
                }
            }
        }
    };
    if ch == 1 {
        return Ok((Samples::Float(samples), spec.sample_rate));
    }
    let mono = samples
        .chunks_exact(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect();
    Ok((Samples::Float(mono), spec.sample_rate))
}

/// The `fmt ` chunk's block align (bytes per frame, all channels) of a RIFF
/// WAVE file hound has accepted.
fn fmt_block_align(bytes: &[u8]) -> Option<u16> {
    let mut at = 12;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
        if &header[..4] == b"fmt " {
            let b = bytes.get(at + 8 + 12..at + 8 + 14)?;
            return Some(u16::from_le_bytes([b[0], b[1]]));
        }
        at += 8 + len + len % 2;
    }
    None
}

/// One point of the estimate over time.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Audio time, ms.
    pub ms: u32,
    /// Arousal.
    pub arousal: f32,
    /// Probability of anger.
    pub anger: f32,
    /// Confidence.
    pub confidence: f32,
    /// Speech heard so far, ms.
    pub speech_ms: u32,
}

/// Functionals as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Audio, ms.
    pub audio_ms: u32,
    /// Speech, ms.
    pub speech_ms: u32,
    /// Mean speech energy, dBFS.
    pub energy_mean_db: Option<f32>,
    /// Standard deviation of speech energy, dB.
    pub energy_std_db: Option<f32>,
    /// Mean F0, semitones re 27.5 Hz.
    pub f0_mean_st: Option<f32>,
    /// Standard deviation of F0, semitones.
    pub f0_std_st: Option<f32>,
    /// Mean spectral balance, dB.
    pub hf_ratio_mean_db: Option<f32>,
    /// Voiced onsets per second of speech.
    pub voiced_onsets_per_s: Option<f32>,
    /// Mean HNR over voiced frames, dB.
    pub hnr_mean_db: Option<f32>,
    /// Mean loudness proxy over speech.
    pub loudness_mean: Option<f32>,
    /// Mean alpha ratio over speech, dB.
    pub alpha_ratio_mean_db: Option<f32>,
    /// Mean Hammarberg index over speech, dB.
    pub hammarberg_mean_db: Option<f32>,
    /// Mean spectral slope 0–500 Hz, dB/Hz.
    pub slope_0_500_mean: Option<f32>,
    /// Mean spectral slope 500–1500 Hz, dB/Hz.
    pub slope_500_1500_mean: Option<f32>,
    /// Mean MFCC 1–4.
    pub mfcc_mean: [Option<f32>; 4],
    /// Mean spectral flux.
    pub flux_mean: Option<f32>,
    /// Mean local jitter over voiced frames.
    pub jitter_mean: Option<f32>,
    /// Mean local shimmer over voiced frames, dB.
    pub shimmer_mean_db: Option<f32>,
    /// F0 20th, 50th and 80th percentiles, semitones.
    pub f0_percentiles_st: [Option<f32>; 3],
    /// Loudness 20th, 50th and 80th percentiles.
    pub loudness_percentiles: [Option<f32>; 3],
    /// F0 range p20–p80, semitones.
    pub f0_range_st: Option<f32>,
    /// F0 coefficient of variation.
    pub f0_cv: Option<f32>,
    /// Loudness range p20–p80.
    pub loudness_range: Option<f32>,
    /// Loudness peaks per second.
    pub loudness_peaks_per_s: Option<f32>,
    /// Voiced segments per second.
    pub voiced_segments_per_s: Option<f32>,
    /// Mean voiced segment length, s.
    pub mean_voiced_segment_s: Option<f32>,
    /// Mean unvoiced segment length, s.
    pub mean_unvoiced_segment_s: Option<f32>,
}

/// What `analyze` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis<D> {
    /// Input file.
    pub file: String,
    /// Its sample rate.
    pub sample_rate: u32,
    /// Functionals over the whole recording.
    pub functionals: Summary,
    /// Estimate every 500 ms.
    pub timeline: Vec<Point>,
    /// The decision a call would have taken.
    pub decision: D,
    /// When, in ms after the first audio.
    pub decision_ms: u64,
    /// Loudness, pitch and arousal every 20 ms packet, for `--plot`.
    #[serde(skip)]
    pub trace: Vec<TracePoint>,
}

/// One packet's worth of what `analyze --plot` draws.
#[derive(Debug, Clone, Copy)]
pub struct TracePoint {
    /// Audio time, ms.
    pub ms: u32,
    /// The latest frame's loudness (eGeMAPS-style).
    pub loudness: f32,
    /// The latest frame's F0, Hz, when voiced.
    pub f0_hz: Option<f32>,
    /// P(high arousal) so far.
    pub arousal: f32,
}

/// Run a recording through the call pipeline and the policy.
pub fn analyze<P: Decide>(
    path: &Path,
    policy: &mut P,
    model: Arc<Model>,
) -> Result<Analysis<P::Decision>, AnalyzeError> {
    let (pcm, rate) = read_line_audio(path, 8000)?;
    let mut a = Analyzer::with_estimator(8000, Box::new(ModelEstimator::new(model)));
    let mut timeline = Vec::new();
    let mut trace = Vec::with_capacity(pcm.len() / 160 + 1);
    let mut decision: Option<(P::Decision, u64)> = None;
    // 20 ms packets, as RTP delivers them.
    for (i, packet) in pcm.chunks(160).enumerate() {
        a.push(packet);
        let now_ms = (i as u64 + 1) * 20;
        let e = a.estimate();
        if decision.is_none() {
            decision = policy.after_packet(&e, now_ms);
        }
        let frame = a.frame();
        trace.push(TracePoint {
            ms: now_ms as u32,
            loudness: frame.spectral.loudness,
            f0_hz: (frame.voiced && frame.f0_hz > 0.0).then_some(frame.f0_hz),
            arousal: e.arousal,
        });
        if now_ms % 500 == 0 {
            timeline.push(point(now_ms as u32, &e));
        }
    }
    let last = a.estimate();
    if timeline.last().is_none_or(|p| p.ms != a.audio_ms()) {
        timeline.push(point(a.audio_ms(), &last));
    }
    // A recording shorter than the deadline: the call would have decided at
    // the deadline on what it had heard.
    let (decision, decision_ms) = decision.unwrap_or_else(|| policy.at_end(&last));
    let f = a.functionals();
    Ok(Analysis {
        file: path.display().to_string(),
        sample_rate: rate,
        functionals: Summary {
            audio_ms: a.audio_ms(),
            speech_ms: f.speech_ms(),
            energy_mean_db: f.energy_mean_db(),
            energy_std_db: f.energy_std_db(),
            f0_mean_st: f.f0_mean_st(),
            f0_std_st: f.f0_std_st(),
            hf_ratio_mean_db: f.hf_ratio_mean_db(),
            voiced_onsets_per_s: f.onsets_per_s(),
            hnr_mean_db: f.spectral.hnr.mean(),
            loudness_mean: f.spectral.loudness.mean(),
            alpha_ratio_mean_db: f.spectral.alpha_ratio.mean(),
            hammarberg_mean_db: f.spectral.hammarberg.mean(),
            slope_0_500_mean: f.spectral.slope_0_500.mean(),
            slope_500_1500_mean: f.spectral.slope_500_1500.mean(),
            mfcc_mean: f.spectral.mfcc.map(|m| m.mean()),
            flux_mean: f.spectral.flux.mean(),
            jitter_mean: f.spectral.jitter.mean(),
            shimmer_mean_db: f.spectral.shimmer.mean(),
            f0_percentiles_st: [0.2, 0.5, 0.8].map(|q| f.f0_percentile(q)),
            loudness_percentiles: [0.2, 0.5, 0.8].map(|q| f.loudness_percentile(q)),
            f0_range_st: f.f0_range_st(),
            f0_cv: f.f0_cv(),
            loudness_range: f.loudness_range(),
            loudness_peaks_per_s: f.loudness_peaks_per_s(),
            voiced_segments_per_s: f.voiced_segments_per_s(),
            mean_voiced_segment_s: f.mean_voiced_segment_s(),
            mean_unvoiced_segment_s: f.mean_unvoiced_segment_s(),
        },
        timeline,
        decision,
        decision_ms,
        trace,
    })
}

fn point(ms: u32, e: &Estimate) -> Point {
    Point {
        ms,
        arousal: e.arousal,
        anger: e.anger,
        confidence: e.confidence,
        speech_ms: e.speech_ms,
    }
}

impl<D: std::fmt::Display> std::fmt::Display for Analysis<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let s = &self.functionals;
        writeln!(
            f,
            "{} ({} Hz, analysed as 8 kHz μ-law)",
            self.file, self.sample_rate
        )?;
        writeln!(f, "\nfunctionals")?;
        for (k, v) in [
            ("audio ms", s.audio_ms.to_string()),
            ("speech ms", s.speech_ms.to_string()),
            ("energy mean dBFS", o(s.energy_mean_db)),
            ("energy std dB", o(s.energy_std_db)),
            ("F0 mean st", o(s.f0_mean_st)),
            ("F0 std st", o(s.f0_std_st)),
            ("spectral balance dB", o(s.hf_ratio_mean_db)),
            ("voiced onsets/s", o(s.voiced_onsets_per_s)),
            ("HNR mean dB", o(s.hnr_mean_db)),
            ("loudness mean", o(s.loudness_mean)),
            ("alpha ratio dB", o(s.alpha_ratio_mean_db)),
            ("Hammarberg dB", o(s.hammarberg_mean_db)),
            (
                "slope 0-500 dB/kHz",
                o(s.slope_0_500_mean.map(|v| v * 1000.0)),
            ),
            (
                "slope 500-1500 dB/kHz",
                o(s.slope_500_1500_mean.map(|v| v * 1000.0)),
            ),
            ("MFCC1", o(s.mfcc_mean[0])),
            ("MFCC2", o(s.mfcc_mean[1])),
            ("MFCC3", o(s.mfcc_mean[2])),
            ("MFCC4", o(s.mfcc_mean[3])),
            ("spectral flux", o(s.flux_mean)),
            ("jitter (local) %", o(s.jitter_mean.map(|v| v * 100.0))),
            ("shimmer (local) dB", o(s.shimmer_mean_db)),
            ("F0 p20/p50/p80 st", s.f0_percentiles_st.map(o).join("/")),
            (
                "loudness p20/p50/p80",
                s.loudness_percentiles.map(o).join("/"),
            ),
            ("F0 range p20-p80 st", o(s.f0_range_st)),
            ("F0 coeff. of variation", o(s.f0_cv)),
            ("loudness range p20-p80", o(s.loudness_range)),
            ("loudness peaks/s", o(s.loudness_peaks_per_s)),
            ("voiced segments/s", o(s.voiced_segments_per_s)),
            ("voiced segment s", o(s.mean_voiced_segment_s)),
            ("unvoiced segment s", o(s.mean_unvoiced_segment_s)),
        ] {
            writeln!(f, "  {k:<22}{v:>18}")?;
        }
        writeln!(f, "\n  time ms   arousal  anger  confidence  speech ms")?;
        for p in &self.timeline {
            writeln!(
                f,
                "  {:>7}   {:>7.2}  {:>5.2}  {:>10.2}  {:>9}",
                p.ms, p.arousal, p.anger, p.confidence, p.speech_ms
            )?;
        }
        writeln!(f, "\ndecision at {} ms {}", self.decision_ms, self.decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_line_audio` (mono 16-bit PCM kept as integers) gives what the
    /// float path gives, for every format and both analysis rates.
    #[test]
    fn line_audio_is_call_audio_of_the_float_samples() {
        let dir = std::env::temp_dir().join(format!("emonav-line-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (channels, bits, rate) in [
            (1, 16, 8000),
            (1, 16, 16000),
            (1, 16, 22050),
            (2, 16, 8000),
            (1, 24, 8000),
        ] {
            let spec = hound::WavSpec {
                channels,
                sample_rate: rate,
                bits_per_sample: bits,
                sample_format: hound::SampleFormat::Int,
            };
            let path = dir.join(format!("{channels}-{bits}-{rate}.wav"));
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            // Every 16-bit value at least once, extremes included.
            for i in 0..70_000i32 {
                let v = (i * 7919) % 65_536 - 32_768;
                w.write_sample(v << (bits - 16)).unwrap();
            }
            w.finalize().unwrap();
            let pcm16 = matches!(read_wav_samples(&path).unwrap().0, Samples::Pcm16(_));
            assert_eq!(
                pcm16,
                channels == 1 && bits == 16,
                "{channels} ch, {bits} bits"
            );
            let (float, _) = read_wav(&path).unwrap();
            for analysis_rate in [8000, 16000] {
                let (line, r) = read_line_audio(&path, analysis_rate).unwrap();
                assert_eq!(r, rate);
                assert!(
                    line == telephone::call_audio(&float, rate, analysis_rate).unwrap(),
                    "{channels} ch, {bits} bits, {rate} Hz at {analysis_rate} Hz"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `read_wav`'s bulk paths give what hound's sample iterator gives.
    #[test]
    fn bulk_read_matches_hound_sample_by_sample() {
        let dir = std::env::temp_dir().join(format!("emonav-read-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (1, 16, hound::SampleFormat::Int),
            (2, 16, hound::SampleFormat::Int),
            (2, 32, hound::SampleFormat::Float),
            (1, 24, hound::SampleFormat::Int),
        ];
        for (channels, bits, format) in cases {
            let spec = hound::WavSpec {
                channels,
                sample_rate: 8000,
                bits_per_sample: bits,
                sample_format: format,
            };
            let path = dir.join(format!("{channels}-{bits}.wav"));
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            for i in 0..1000i32 {
                let v = ((i * 7919) % 65_536 - 32_768) as f32 / 32_768.0;
                match format {
                    hound::SampleFormat::Float => w.write_sample(v).unwrap(),
                    _ => w
                        .write_sample((v * (1 << (bits - 1)) as f32) as i32)
                        .unwrap(),
                }
            }
            w.finalize().unwrap();
            let mut r = hound::WavReader::open(&path).unwrap();
            let all: Vec<f32> = match format {
                hound::SampleFormat::Float => r.samples::<f32>().map(Result::unwrap).collect(),
                _ => r
                    .samples::<i32>()
                    .map(|s| s.unwrap() as f32 / (1u64 << (bits - 1)) as f32)
                    .collect(),
            };
            let expected: Vec<f32> = all
                .chunks(channels as usize)
                .map(|f| f.iter().sum::<f32>() / channels as f32)
                .collect();
            let (got, rate) = read_wav(&path).unwrap();
            assert_eq!((got, rate), (expected, 8000), "{channels} ch, {bits} bits");
        }
        let cut = dir.join("cut.wav");
        let whole = std::fs::read(dir.join("1-16.wav")).unwrap();
        std::fs::write(&cut, &whole[..whole.len() - 10]).unwrap();
        assert!(
            read_wav(&cut).is_err(),
            "a data chunk cut short is an error"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
