//! Line conditions: each recording rendered as some line would deliver it to
//! the analyser (8 kHz PCM), for multi-condition training and for `emonav
//! eval --condition`. The renderings only simulate the line (band, codec,
//! level, noise, packet loss, the speaker's speed); the analyser's own
//! conditioning (`emonav_dsp::condition`) then applies to every rendering
//! exactly as it applies to a call. Every rendering is deterministic: its
//! random choices are seeded by the condition and the clip.

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Bitrate, Channels, SampleRate};
use emonav_dsp::{g711, telephone};

/// The rate the renderings are delivered at: the one analysis rate.
pub const LINE_RATE: u32 = 8000;

/// How the line codes the audio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codec {
    /// G.711 μ-law (PCMU).
    Ulaw,
    /// G.711 A-law (PCMA).
    Alaw,
    /// Opus at this many bit/s, encoded at 16 kHz (a wideband phone), decoded at 8 kHz.
    Opus(i32),
}

/// The band a line passes before its codec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Band {
    /// Full band 0–4 kHz (an IP phone's G.711).
    Full,
    /// 300–3400 Hz through second-order high- and low-pass sections: a
    /// gentle PSTN leg.
    Line,
    /// 300–3400 Hz through a linear-phase FIR band-pass with ~100 Hz
    /// transitions and ~100 dB stop band, like sox's `sinc 300-3400`: a steep
    /// PSTN filter that removes far more below 300 Hz than the analyser's own
    /// fourth-order conditioning (the routing benchmark's band-limited line).
    Steep,
}

/// Additive noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// White noise.
    White,
    /// Pink (1/f) noise.
    Pink,
    /// Babble: other speakers' clips summed (never the clip's own speaker;
    /// see [`Render::babble`]).
    Babble,
}

/// One line condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    /// Its name on the command line and in tables.
    pub name: &'static str,
    /// The line's band before the codec.
    pub band: Band,
    /// The codec.
    pub codec: Codec,
    /// Speech level, dBFS RMS over the clip's active part.
    pub level_dbfs: f32,
    /// Additive noise and its SNR in dB.
    pub noise: Option<(Noise, f32)>,
    /// Share of 20 ms packets lost (concealed as the call conceals them).
    pub loss: f32,
    /// Speed perturbation in semitones (resampling: pitch and tempo together,
    /// ±1 semitone is ±6 % tempo).
    pub speed_semitones: f32,
}

const fn base(name: &'static str) -> Condition {
    Condition {
        name,
        band: Band::Full,
        codec: Codec::Ulaw,
        level_dbfs: -20.0,
        noise: None,
        loss: 0.0,
        speed_semitones: 0.0,
    }
}

/// Every condition `eval --condition all` reports, the first being the
/// reference (a full-band IP phone on G.711 μ-law at a normal level).
pub const ALL: [Condition; 16] = [
    base("pcmu"),
    Condition {
        band: Band::Line,
        ..base("pcmu-band")
    },
    Condition {
        codec: Codec::Alaw,
        ..base("pcma")
    },
    Condition {
        band: Band::Line,
        codec: Codec::Alaw,
        ..base("pcma-band")
    },
    Condition {
        codec: Codec::Opus(12_000),
        ..base("opus-12k")
    },
    Condition {
        codec: Codec::Opus(32_000),
        ..base("opus-32k")
    },
    Condition {
        level_dbfs: -35.0,
        ..base("level-35")
    },
    Condition {
        level_dbfs: -6.0,
        ..base("level-6")
    },
    Condition {
        noise: Some((Noise::White, 30.0)),
        ..base("white-30")
    },
    Condition {
        noise: Some((Noise::White, 20.0)),
        ..base("white-20")
    },
    Condition {
        noise: Some((Noise::Pink, 10.0)),
        ..base("pink-10")
    },
    Condition {
        noise: Some((Noise::Babble, 20.0)),
        ..base("babble-20")
    },
    Condition {
        noise: Some((Noise::Babble, 10.0)),
        ..base("babble-10")
    },
    Condition {
        loss: 0.05,
        ..base("loss-5")
    },
    Condition {
        codec: Codec::Opus(24_000),
        loss: 0.05,
        ..base("opus-loss-5")
    },
    Condition {
        speed_semitones: 1.0,
        ..base("speed+1")
    },
];

/// Conditions added to training only (the eval table's speed row shows +1;
/// training sees both directions). `pcmu-sinc`, the steep band-pass, comes
/// last: the default recipe picks its renderings among the conditions before
/// it (see `multi::DEFAULT_POOL`), so adding it changed no default model; it
/// is reachable by `eval --condition pcmu-sinc` and `--renderings all`.
pub const TRAIN_EXTRA: [Condition; 2] = [
    Condition {
        speed_semitones: -1.0,
        ..base("speed-1")
    },
    Condition {
        band: Band::Steep,
        ..base("pcmu-sinc")
    },
];

/// A condition by name (from [`ALL`] or [`TRAIN_EXTRA`]).
pub fn by_name(name: &str) -> Option<Condition> {
    ALL.iter()
        .chain(&TRAIN_EXTRA)
        .find(|c| c.name == name)
        .copied()
}

/// Why a rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Resampling failed.
    #[error(transparent)]
    Convert(#[from] telephone::ConvertError),
    /// libopus refused.
    #[error("opus: {0}")]
    Opus(#[from] audiopus::Error),
}

/// What a rendering needs besides the clip.
pub struct Render<'a> {
    /// Seed for the condition's random choices (noise, lost packets).
    pub seed: u64,
    /// Other speakers' clips at [`LINE_RATE`] for babble (may be empty when
    /// the condition has no babble).
    pub babble: &'a [&'a [f32]],
}

fn rms_active(x: &[f32]) -> f32 {
    // RMS over the 20 ms blocks within 30 dB of the loudest one: the speech
    // level, not diluted by the pauses.
    let blocks: Vec<f32> = x
        .chunks(160)
        .map(|b| b.iter().map(|v| v * v).sum::<f32>() / b.len() as f32)
        .collect();
    let top = blocks.iter().copied().fold(0.0f32, f32::max);
    let active: Vec<f32> = blocks.into_iter().filter(|&p| p > top * 1e-3).collect();
    if active.is_empty() {
        return 0.0;
    }
    (active.iter().sum::<f32>() / active.len() as f32).sqrt()
}

fn biquad(x: &mut [f32], rate: u32, cutoff: f32, high: bool) {
    let w0 = 2.0 * std::f32::consts::PI * cutoff / rate as f32;
    let alpha = w0.sin() / (2.0 * std::f32::consts::FRAC_1_SQRT_2);
    let cos = w0.cos();
    let a0 = 1.0 + alpha;
    let b = if high {
        [(1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0]
    } else {
        [(1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0]
    }
    .map(|v| v / a0);
    let (a1, a2) = (-2.0 * cos / a0, (1.0 - alpha) / a0);
    let (mut x1, mut x2, mut y1, mut y2) = (0.0, 0.0, 0.0, 0.0);
    for v in x.iter_mut() {
        let y = b[0] * *v + b[1] * x1 + b[2] * x2 - a1 * y1 - a2 * y2;
        x2 = x1;
        x1 = *v;
        y2 = y1;
        y1 = y;
        *v = y;
    }
}

/// Zeroth-order modified Bessel function of the first kind (Kaiser window).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term) = (1.0, 1.0);
    for k in 1..50 {
        term *= (x / (2.0 * k as f64)).powi(2);
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

/// Linear-phase band-pass `lo`–`hi` Hz: an ideal band-pass kernel under a
/// Kaiser window (β 10, ~100 dB stop band) 1,201 taps long at 8 kHz (~100 Hz
/// transitions), applied centred so the output is not delayed.
fn steep_band_pass(x: &[f32], rate: u32, lo: f32, hi: f32) -> Vec<f32> {
    const HALF: i64 = 600;
    let beta = 10.0f64;
    let (f1, f2) = (lo as f64 / rate as f64, hi as f64 / rate as f64);
    let taps: Vec<f32> = (-HALF..=HALF)
        .map(|n| {
            let ideal = if n == 0 {
                2.0 * (f2 - f1)
            } else {
                let t = std::f64::consts::PI * n as f64;
                ((2.0 * t * f2).sin() - (2.0 * t * f1).sin()) / t
            };
            let r = n as f64 / HALF as f64;
            let w = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / bessel_i0(beta);
            (ideal * w) as f32
        })
        .collect();
    (0..x.len() as i64)
        .map(|i| {
            let mut acc = 0.0f32;
            for (k, t) in taps.iter().enumerate() {
                let j = i + k as i64 - HALF;
                if j >= 0 && (j as usize) < x.len() {
                    acc += t * x[j as usize];
                }
            }
            acc
        })
        .collect()
}

fn noise(kind: Noise, n: usize, rng: &mut fastrand::Rng, babble: &[&[f32]]) -> Vec<f32> {
    match kind {
        Noise::White => (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect(),
        Noise::Pink => {
            // Paul Kellett's economy pink filter over white noise.
            let (mut b0, mut b1, mut b2) = (0.0f32, 0.0f32, 0.0f32);
            (0..n)
                .map(|_| {
                    let w = rng.f32() * 2.0 - 1.0;
                    b0 = 0.99765 * b0 + w * 0.0990460;
                    b1 = 0.96300 * b1 + w * 0.2965164;
                    b2 = 0.57000 * b2 + w * 1.0526913;
                    b0 + b1 + b2 + w * 0.1848
                })
                .collect()
        }
        Noise::Babble => {
            let mut out = vec![0.0f32; n];
            for clip in babble {
                if clip.is_empty() {
                    continue;
                }
                // Each talker from a random point, looped: the babble never
                // pauses together.
                let start = rng.usize(..clip.len());
                let level = rms_active(clip).max(1e-6);
                for (i, o) in out.iter_mut().enumerate() {
                    *o += clip[(start + i) % clip.len()] / level;
                }
            }
            out
        }
    }
}

/// Render a clip (mono ±1.0 at `rate` Hz) through `c`: 8 kHz PCM, as the
/// call's decoder would hand it to the analyser.
pub fn render(
    audio: &[f32],
    rate: u32,
    c: &Condition,
    r: &Render,
) -> Result<Vec<i16>, RenderError> {
    let mut rng = fastrand::Rng::with_seed(r.seed);
    // Speed: resample as if recorded at a shifted rate.
    let speed = 2f32.powf(c.speed_semitones / 12.0);
    let source_rate = (rate as f32 * speed).round() as u32;
    let mut x = telephone::resample(audio, source_rate, LINE_RATE)?;
    match c.band {
        Band::Full => {}
        Band::Line => {
            biquad(&mut x, LINE_RATE, 300.0, true);
            biquad(&mut x, LINE_RATE, 3400.0, false);
        }
        Band::Steep => x = steep_band_pass(&x, LINE_RATE, 300.0, 3400.0),
    }
    let gain = 10f32.powf(c.level_dbfs / 20.0) / rms_active(&x).max(1e-9);
    let speech_rms = rms_active(&x) * gain;
    for v in x.iter_mut() {
        *v *= gain;
    }
    if let Some((kind, snr)) = c.noise {
        let n = noise(kind, x.len(), &mut rng, r.babble);
        let n_rms = (n.iter().map(|v| v * v).sum::<f32>() / n.len().max(1) as f32)
            .sqrt()
            .max(1e-9);
        let k = speech_rms / 10f32.powf(snr / 20.0) / n_rms;
        for (v, m) in x.iter_mut().zip(n) {
            *v += k * m;
        }
    }
    let pcm: Vec<i16> = x
        .iter()
        .map(|v| (v * 32768.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    let frame = LINE_RATE as usize / 50;
    let packets = pcm.len() / frame;
    let lost: Vec<bool> = (0..packets).map(|_| rng.f32() < c.loss).collect();
    match c.codec {
        Codec::Ulaw | Codec::Alaw => {
            let mut coded = vec![0u8; pcm.len()];
            let mut out = vec![0i16; pcm.len()];
            if c.codec == Codec::Ulaw {
                g711::encode_ulaw(&pcm, &mut coded);
                g711::decode_ulaw(&coded, &mut out);
            } else {
                g711::encode_alaw(&pcm, &mut coded);
                g711::decode_alaw(&coded, &mut out);
            }
            // A lost G.711 packet is a gap of silence, as the call plays it.
            for (k, _) in lost.iter().enumerate().filter(|(_, &l)| l) {
                out[k * frame..(k + 1) * frame].fill(0);
            }
            out.truncate(packets * frame);
            Ok(out)
        }
        Codec::Opus(bps) => {
            let wide = telephone::resample(
                &pcm.iter().map(|&v| v as f32 / 32768.0).collect::<Vec<_>>(),
                LINE_RATE,
                16_000,
            )?;
            let wide: Vec<i16> = wide
                .iter()
                .map(|v| (v * 32768.0).clamp(-32768.0, 32767.0) as i16)
                .collect();
            let mut enc = Encoder::new(SampleRate::Hz16000, Channels::Mono, Application::Voip)?;
            enc.set_bitrate(Bitrate::BitsPerSecond(bps))?;
            let mut dec = Decoder::new(SampleRate::Hz8000, Channels::Mono)?;
            let mut out = Vec::with_capacity(packets * frame);
            let mut buf = [0u8; 1500];
            let mut block = vec![0i16; frame];
            for (k, chunk) in wide.chunks_exact(320).enumerate() {
                let n = enc.encode(chunk, &mut buf)?;
                let got = if lost.get(k).copied().unwrap_or(false) {
                    // Opus PLC, as the call conceals a lost packet.
                    dec.decode(None::<&[u8]>, &mut block[..], false)?
                } else {
                    dec.decode(Some(&buf[..n]), &mut block[..], false)?
                };
                out.extend_from_slice(&block[..got]);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(rate: u32) -> Vec<f32> {
        (0..rate as usize)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let env = (std::f32::consts::PI * t * 3.0).sin().abs();
                env * 0.5 * (2.0 * std::f32::consts::PI * 180.0 * t).sin()
            })
            .collect()
    }

    fn db(x: &[i16]) -> f32 {
        let v: Vec<f32> = x.iter().map(|&s| s as f32 / 32768.0).collect();
        20.0 * rms_active(&v).log10()
    }

    #[test]
    fn every_condition_renders_8k_at_its_level_deterministically() {
        let clip = voice(22050);
        let other = voice(8000);
        let babble: [&[f32]; 2] = [&other, &other];
        for c in ALL.iter().chain(&TRAIN_EXTRA) {
            let r = Render {
                seed: 7,
                babble: &babble,
            };
            let a = render(&clip, 22050, c, &r).unwrap();
            let b = render(&clip, 22050, c, &r).unwrap();
            assert_eq!(a, b, "{} is deterministic", c.name);
            let expect = 8000.0 / 2f32.powf(c.speed_semitones / 12.0);
            assert!(
                (a.len() as f32 - expect).abs() < 400.0,
                "{}: {} samples",
                c.name,
                a.len()
            );
            if c.noise.is_none() && c.loss == 0.0 && c.band == Band::Full {
                assert!(
                    (db(&a) - c.level_dbfs).abs() < 2.5,
                    "{}: {} dBFS",
                    c.name,
                    db(&a)
                );
            }
        }
    }

    #[test]
    fn the_steep_band_pass_removes_what_the_line_filter_leaves() {
        let tone = |hz: f32| -> Vec<f32> {
            (0..8000)
                .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / 8000.0).sin())
                .collect()
        };
        let level = |x: &[f32]| {
            // The middle second's RMS in dB re the input's 0.5 amplitude sine.
            let m = &x[2000..6000];
            20.0 * ((m.iter().map(|v| v * v).sum::<f32>() / m.len() as f32).sqrt()
                / (0.5 / 2f32.sqrt()))
            .log10()
        };
        for hz in [1000.0, 2000.0, 3000.0] {
            let g = level(&steep_band_pass(&tone(hz), 8000, 300.0, 3400.0));
            assert!(g.abs() < 0.1, "{hz} Hz passes: {g} dB");
        }
        for hz in [100.0, 150.0, 200.0, 3600.0] {
            let steep = level(&steep_band_pass(&tone(hz), 8000, 300.0, 3400.0));
            let mut line = tone(hz);
            biquad(&mut line, 8000, 300.0, true);
            biquad(&mut line, 8000, 3400.0, false);
            assert!(steep < -60.0, "{hz} Hz is stopped: {steep} dB");
            assert!(
                steep < level(&line) - 40.0,
                "{hz} Hz: steeper than the line"
            );
        }
    }

    #[test]
    fn names_are_unique_and_found() {
        for c in ALL.iter().chain(&TRAIN_EXTRA) {
            assert_eq!(by_name(c.name), Some(*c));
        }
        assert_eq!(by_name("nope"), None);
    }
}
