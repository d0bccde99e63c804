//! Recordings into the product's conditions: resampling (rubato), the
//! telephone band (300 Hz high-pass; the 3.4 kHz side comes from 8 kHz
//! resampling's anti-aliasing filter) and a G.711 μ-law round trip, so that
//! files are analysed exactly as a call's audio would be.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::g711;

/// Why audio could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// rubato refused the conversion.
    #[error("resampling {from} Hz to {to} Hz failed: {message}")]
    Resample {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// rubato's words.
        message: String,
    },
}

/// Resample mono `input` from `from` Hz to `to` Hz (rubato's synchronous FFT
/// resampler, which band-limits as it goes). Returns the input unchanged when
/// the rates match.
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ConvertError> {
    if from == to || input.is_empty() {
        return Ok(input.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| ConvertError::Resample {
        from,
        to,
        message: e.to_string(),
    };
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| err(&e))?;
    let adapter = InterleavedSlice::new(input, 1, input.len()).map_err(|e| err(&e))?;
    let out = r
        .process_all(&adapter, input.len(), None)
        .map_err(|e| err(&e))?;
    Ok(out.take_data())
}

/// A second-order Butterworth high-pass (RBJ cookbook biquad).
fn highpass(x: &mut [f32], rate: u32, cutoff: f32) {
    let w0 = 2.0 * std::f32::consts::PI * cutoff / rate as f32;
    let alpha = w0.sin() / (2.0 * std::f32::consts::FRAC_1_SQRT_2);
    let cos = w0.cos();
    let a0 = 1.0 + alpha;
    let (b0, b1, b2) = (
        (1.0 + cos) / 2.0 / a0,
        -(1.0 + cos) / a0,
        (1.0 + cos) / 2.0 / a0,
    );
    let (a1, a2) = (-2.0 * cos / a0, (1.0 - alpha) / a0);
    let (mut x1, mut x2, mut y1, mut y2) = (0.0, 0.0, 0.0, 0.0);
    for v in x.iter_mut() {
        let y = b0 * *v + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2;
        x2 = x1;
        x1 = *v;
        y2 = y1;
        y1 = y;
        *v = y;
    }
}

/// Mono float audio (±1.0 full scale) at `rate` Hz → what a G.711 call
/// delivers: 8 kHz, 300–3400 Hz, μ-law quantised, as 16-bit PCM.
pub fn telephone_8k(input: &[f32], rate: u32) -> Result<Vec<i16>, ConvertError> {
    let mut x = resample(input, rate, 8000)?;
    highpass(&mut x, 8000, 300.0);
    let pcm: Vec<i16> = x
        .iter()
        .map(|v| (v * 32767.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    let mut ulaw = vec![0u8; pcm.len()];
    g711::encode_ulaw(&pcm, &mut ulaw);
    let mut out = vec![0i16; pcm.len()];
    g711::decode_ulaw(&ulaw, &mut out);
    Ok(out)
}

/// Mono float audio at `rate` Hz → what a wideband (Opus) call delivers to
/// the analyser: 16 kHz, 50 Hz high-pass (handset and codec both cut the
/// rumble below), as 16-bit PCM. Opus' own coding noise is not simulated:
/// at call bit rates it sits far below what the features resolve.
pub fn wideband_16k(input: &[f32], rate: u32) -> Result<Vec<i16>, ConvertError> {
    let mut x = resample(input, rate, 16000)?;
    highpass(&mut x, 16000, 50.0);
    Ok(x.iter()
        .map(|v| (v * 32767.0).clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// The call conditions for an analysis rate: 8000 (G.711) or 16000 (Opus).
pub fn call_audio(input: &[f32], rate: u32, analysis_rate: u32) -> Result<Vec<i16>, ConvertError> {
    if analysis_rate == 16000 {
        wideband_16k(input, rate)
    } else {
        telephone_8k(input, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, f: f32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * f * i as f32 / rate as f32).sin())
            .collect()
    }

    fn rms(x: &[i16]) -> f32 {
        (x.iter().map(|&v| (v as f32 / 32768.0).powi(2)).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn resampling_keeps_length_and_pitch() {
        let x = resample(&tone(22050, 440.0, 1.0), 22050, 8000).unwrap();
        assert!((x.len() as i32 - 8000).abs() <= 2, "{}", x.len());
        // Zero crossings of a 440 Hz tone over the middle half second.
        let mid = &x[2000..6000];
        let crossings = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!((crossings as i32 - 220).abs() <= 2, "{crossings}");
    }

    #[test]
    fn telephone_band_removes_rumble_and_keeps_voice_band() {
        let low = telephone_8k(&tone(16000, 100.0, 1.0), 16000).unwrap();
        let mid = telephone_8k(&tone(16000, 1000.0, 1.0), 16000).unwrap();
        let high = telephone_8k(&tone(16000, 6000.0, 1.0), 16000).unwrap();
        let (l, m, h) = (rms(&low[800..]), rms(&mid[800..]), rms(&high[800..]));
        assert!(m > 0.3, "1 kHz passes: {m}");
        assert!(l < m / 5.0, "100 Hz attenuated: {l} vs {m}");
        assert!(h < m / 30.0, "6 kHz removed: {h} vs {m}");
    }
}
