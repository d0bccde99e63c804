//! Recordings into what a line delivers: resampling (rubato) and a G.711
//! μ-law round trip. Band-limiting is not done here: the analyser does it to
//! every sample it is given (`crate::condition`), whatever the source.

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

/// Mono float audio (±1.0 full scale) at `rate` Hz → what a full-band G.711
/// line (an IP phone) delivers: 8 kHz, μ-law quantised, as 16-bit PCM.
pub fn telephone_8k(input: &[f32], rate: u32) -> Result<Vec<i16>, ConvertError> {
    // One pass from float to the μ-law round trip, and no resampling copy
    // of audio already at 8 kHz: `emonav analyze` on a long 8 kHz file
    // spent 8 % of its time in separate passes here (docs/performance.md).
    let round_trip = |v: &f32| g711::ulaw_round_trip((v * 32767.0).clamp(-32768.0, 32767.0) as i16);
    if rate == 8000 {
        return Ok(input.iter().map(round_trip).collect());
    }
    Ok(resample(input, rate, 8000)?
        .iter()
        .map(round_trip)
        .collect())
}

/// Mono 16-bit PCM at `rate` Hz → [`call_audio`] of the same samples read
/// as float (`v / 32768`), bit for bit. When the file is already at the
/// analysis rate (an 8 kHz recording of a call) it is converted in place,
/// without the float copy and the float → integer pass (31 M of the 611 M
/// instructions `emonav analyze` took on a 120 s 8 kHz file;
/// docs/performance.md, issue 10.8).
pub fn call_audio_pcm16(
    mut pcm: Vec<i16>,
    rate: u32,
    analysis_rate: u32,
) -> Result<Vec<i16>, ConvertError> {
    if rate != analysis_rate {
        let x: Vec<f32> = pcm.iter().map(|&v| v as f32 * (1.0 / 32768.0)).collect();
        return call_audio(&x, rate, analysis_rate);
    }
    if analysis_rate == 16000 {
        pcm.iter_mut().for_each(|v| *v = toward_zero(*v));
    } else {
        let line = g711::UlawRoundTrip::get();
        pcm.iter_mut()
            .for_each(|v| *v = line.apply(toward_zero(*v)));
    }
    Ok(pcm)
}

/// What `((v / 32768) * 32767) as i16` is in f32 arithmetic: one step
/// toward zero for every `v` but 0. The exact product lies strictly between
/// `v - sign(v)` and `v`, at least `1/32768` of a step away from `v`, which
/// is more than half an f32 ulp there, so rounding never lands on `v` and
/// truncation gives `v - sign(v)` (checked for all 65,536 values below).
#[inline]
fn toward_zero(v: i16) -> i16 {
    v - v.signum()
}

/// Mono float audio at `rate` Hz → 16 kHz 16-bit PCM (an Opus call decoded
/// at 16 kHz, without the codec's own noise).
pub fn wideband_16k(input: &[f32], rate: u32) -> Result<Vec<i16>, ConvertError> {
    let x = resample(input, rate, 16000)?;
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
    fn the_one_pass_round_trip_is_the_codec_s() {
        let x = tone(8000, 700.0, 0.5);
        let pcm: Vec<i16> = x.iter().map(|v| (v * 32767.0) as i16).collect();
        let mut ulaw = vec![0u8; pcm.len()];
        g711::encode_ulaw(&pcm, &mut ulaw);
        let mut want = vec![0i16; pcm.len()];
        g711::decode_ulaw(&ulaw, &mut want);
        assert_eq!(telephone_8k(&x, 8000).unwrap(), want);
    }

    #[test]
    fn the_pcm16_path_is_the_float_path_for_every_sample_value() {
        let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        let float: Vec<f32> = all.iter().map(|&v| v as f32 / 32768.0).collect();
        for analysis_rate in [8000, 16000] {
            assert_eq!(
                call_audio_pcm16(all.clone(), analysis_rate, analysis_rate).unwrap(),
                call_audio(&float, analysis_rate, analysis_rate).unwrap(),
                "{analysis_rate} Hz"
            );
        }
        // Other rates go through the float path itself.
        let tone: Vec<i16> = tone(16000, 440.0, 0.2)
            .iter()
            .map(|v| (v * 32767.0) as i16)
            .collect();
        let float: Vec<f32> = tone.iter().map(|&v| v as f32 / 32768.0).collect();
        assert_eq!(
            call_audio_pcm16(tone, 16000, 8000).unwrap(),
            telephone_8k(&float, 16000).unwrap()
        );
    }

    #[test]
    fn telephone_audio_is_8k_mu_law_of_the_input() {
        let x = tone(16000, 1000.0, 1.0);
        let t = telephone_8k(&x, 16000).unwrap();
        assert!((t.len() as i32 - 8000).abs() <= 2);
        assert!((rms(&t[800..]) - 0.5 / 2f32.sqrt()).abs() < 0.02);
        // μ-law: every sample is a decoded code word.
        let mut code = vec![0u8; t.len()];
        let mut back = vec![0i16; t.len()];
        g711::encode_ulaw(&t, &mut code);
        g711::decode_ulaw(&code, &mut back);
        assert_eq!(t, back);
    }
}
