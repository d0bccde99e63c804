//! The failure tone: ITU-T congestion tone (ITU-T E.180 §2.8 and its
//! supplement 2: 425 Hz, 250 ms on / 250 ms off, about −13 dBm0) played to a
//! caller no queue could take, so the line is never silent before our BYE.
//! Generated (no audio file), encoded in the call's codec and sent in place
//! of our silence keepalive, through the same RTP stream (same SSRC,
//! contiguous sequence and timestamps).
//!
//! Allocation-free per packet: the sine runs on a phase accumulator, G.711
//! encodes in place; Opus uses one libopus encoder made when the tone starts.

use audiopus::coder::Encoder;
use audiopus::{Application, Bitrate, Channels, SampleRate};

use crate::sdp::CodecName;

/// The tone's frequency (E.180: 425 Hz for most administrations).
const HZ: f32 = 425.0;
/// Peak amplitude: about −13 dBm0 on a G.711 line (3.14 dBm0 = 32767 peak).
const AMPLITUDE: f32 = 7_300.0;
/// Cadence period and on-time, in milliseconds.
const PERIOD_MS: u32 = 500;
const ON_MS: u32 = 250;
/// Samples in one 20 ms frame at the highest rate we encode (Opus, 48 kHz).
const MAX_FRAME: usize = 960;

/// Generator of 20 ms frames of congestion tone in one codec.
pub(crate) struct Tone {
    codec: CodecName,
    rate: u32,
    /// Samples since the tone started (cadence position).
    n: u64,
    phase: f32,
    opus: Option<Encoder>,
}

impl std::fmt::Debug for Tone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tone")
            .field("codec", &self.codec)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl Tone {
    /// A tone for `codec`; None when libopus cannot make an encoder (the
    /// caller then hears our silence, as before).
    pub(crate) fn new(codec: CodecName) -> Option<Self> {
        let (rate, opus) = match codec {
            CodecName::Pcmu | CodecName::Pcma => (8_000, None),
            CodecName::Opus => {
                let mut enc =
                    Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).ok()?;
                // Small enough for our 160-octet payload buffer.
                enc.set_bitrate(Bitrate::BitsPerSecond(24_000)).ok()?;
                (48_000, Some(enc))
            }
        };
        Some(Self {
            codec,
            rate,
            n: 0,
            phase: 0.0,
            opus,
        })
    }

    /// The next 20 ms frame encoded into `out`; its length, or None if the
    /// encoder failed (the caller then sends its silence frame).
    pub(crate) fn frame(&mut self, out: &mut [u8]) -> Option<usize> {
        let len = (self.rate / 50) as usize;
        let mut pcm = [0i16; MAX_FRAME];
        let step = std::f32::consts::TAU * HZ / self.rate as f32;
        let per_ms = u64::from(self.rate / 1000);
        for s in &mut pcm[..len] {
            let ms = (self.n / per_ms) as u32 % PERIOD_MS;
            *s = if ms < ON_MS {
                (self.phase.sin() * AMPLITUDE) as i16
            } else {
                0
            };
            self.phase = (self.phase + step) % std::f32::consts::TAU;
            self.n += 1;
        }
        match (self.codec, &mut self.opus) {
            (CodecName::Pcmu, _) => {
                emonav_dsp::g711::encode_ulaw(&pcm[..len], &mut out[..len]);
                Some(len)
            }
            (CodecName::Pcma, _) => {
                emonav_dsp::g711::encode_alaw(&pcm[..len], &mut out[..len]);
                Some(len)
            }
            (CodecName::Opus, Some(enc)) => enc.encode(&pcm[..len], out).ok(),
            (CodecName::Opus, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::opus::{OpusDecoder, MAX_PACKET_SAMPLES};

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    #[test]
    fn g711_tone_is_loud_for_250_ms_then_silent_for_250_ms() {
        for codec in [CodecName::Pcmu, CodecName::Pcma] {
            let mut t = Tone::new(codec).unwrap();
            let mut levels = vec![];
            for _ in 0..50 {
                let mut out = [0u8; 160];
                assert_eq!(t.frame(&mut out), Some(160));
                let mut pcm = [0i16; 160];
                match codec {
                    CodecName::Pcmu => emonav_dsp::g711::decode_ulaw(&out, &mut pcm),
                    _ => emonav_dsp::g711::decode_alaw(&out, &mut pcm),
                }
                levels.push(rms(&pcm));
            }
            // A sine of peak 7300 has an RMS near 5160.
            for (i, l) in levels.iter().enumerate() {
                if (i % 25) < 12 {
                    assert!((4_500.0..6_000.0).contains(l), "{codec:?} frame {i}: {l}");
                } else if (i % 25) > 12 {
                    assert!(*l < 50.0, "{codec:?} frame {i}: {l}");
                }
            }
        }
    }

    #[test]
    fn opus_tone_decodes_to_a_loud_frame() {
        let mut t = Tone::new(CodecName::Opus).unwrap();
        let mut dec = OpusDecoder::new(16_000).unwrap();
        let mut out = [0u8; 160];
        let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
        let mut loud = 0;
        for _ in 0..10 {
            let n = t.frame(&mut out).unwrap();
            assert!(n > 0 && n <= 160);
            let samples = dec.decode(&out[..n], &mut pcm).unwrap();
            if rms(&pcm[..samples]) > 2_000.0 {
                loud += 1;
            }
        }
        // The encoder's look-ahead mutes the first frame or two.
        assert!(loud >= 7, "{loud} loud frames of 10");
    }
}
