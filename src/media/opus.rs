//! Opus (RFC 6716) payloads of RTP (RFC 7587) decoded into 8 or 16 kHz mono
//! PCM for the analyser, through libopus (the `audiopus` binding).
//!
//! The decoder runs at the analyser's rate, mono, whatever the sender
//! encodes: libopus band-limits, resamples and down-mixes internally (RFC 7587
//! §3.1 lets a receiver decode `opus/48000/2` at any rate and channel count),
//! so there is no resampler of ours. Nothing here allocates after
//! [`OpusDecoder::new`]: the caller owns the PCM buffer.

use audiopus::coder::Decoder;
use audiopus::{Channels, SampleRate};

/// Highest output rate offered (the analyser's wideband rate).
const MAX_RATE: usize = 16_000;

/// Samples of the longest Opus packet (120 ms, RFC 6716 §3.2.5) at the highest
/// output rate: an output buffer this long takes any valid packet.
pub(crate) const MAX_PACKET_SAMPLES: usize = MAX_RATE * 120 / 1000;

/// Why a packet or a concealment produced no audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpusError {
    /// libopus refused to create a decoder (out of memory, in practice).
    #[error("cannot create an Opus decoder: {0}")]
    Create(#[source] audiopus::Error),
    /// An output rate the analyser does not take (8000 and 16000 only).
    #[error("unsupported Opus output rate {0} Hz")]
    Rate(u32),
    /// The payload is not a valid Opus packet, or its audio would not fit `out`.
    #[error("undecodable Opus packet: {0}")]
    Decode(#[source] audiopus::Error),
    /// Zero-length payload: RFC 7587 has no use for one, so it is garbage.
    #[error("empty Opus packet")]
    Empty,
}

/// One RTP stream's Opus decoder, mono.
pub(crate) struct OpusDecoder {
    decoder: Decoder,
    /// Samples in the last decoded packet: a lost packet most likely had as many.
    frame: usize,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("frame", &self.frame)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A decoder for a new stream, producing `rate` Hz (8000 or 16000).
    pub(crate) fn new(rate: u32) -> Result<Self, OpusError> {
        let sample_rate = match rate {
            8000 => SampleRate::Hz8000,
            16_000 => SampleRate::Hz16000,
            _ => return Err(OpusError::Rate(rate)),
        };
        let decoder = Decoder::new(sample_rate, Channels::Mono).map_err(OpusError::Create)?;
        Ok(Self {
            decoder,
            // Until a packet tells the sender's frame size, conceal 20 ms
            // (RFC 7587's default ptime).
            frame: rate as usize / 50,
        })
    }

    /// Decode one RTP payload into `out` (at least [`MAX_PACKET_SAMPLES`] long
    /// for any packet to fit); returns the number of samples written.
    pub(crate) fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if payload.is_empty() {
            return Err(OpusError::Empty);
        }
        let n = self
            .decoder
            .decode(Some(payload), out, false)
            .map_err(OpusError::Decode)?;
        if n > 0 {
            self.frame = n;
        }
        Ok(n)
    }

    /// Packet-loss concealment for one lost packet, assumed as long as the last
    /// one decoded: libopus extrapolates the signal (fading it out over
    /// consecutive calls) so the analyser's timeline has no hole.
    pub(crate) fn conceal(&mut self, out: &mut [i16]) -> Result<usize, OpusError> {
        let out = Self::frame_of(out, self.frame)?;
        self.decoder
            .decode(None::<&[u8]>, out, false)
            .map_err(OpusError::Decode)
    }

    /// The packet lost just before `next`, rebuilt from `next`'s in-band FEC
    /// (RFC 6716 §2.1.7, asked for with `useinbandfec=1` in our answer); when
    /// `next` carries none, libopus conceals instead. Decode `next` itself
    /// afterwards with [`decode`](Self::decode).
    pub(crate) fn recover(&mut self, next: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if next.is_empty() {
            return Err(OpusError::Empty);
        }
        let out = Self::frame_of(out, self.frame)?;
        self.decoder
            .decode(Some(next), out, true)
            .map_err(OpusError::Decode)
    }

    /// libopus takes the length of a concealed or recovered frame from the
    /// output slice, so it must be exactly one frame.
    fn frame_of(out: &mut [i16], frame: usize) -> Result<&mut [i16], OpusError> {
        out.get_mut(..frame)
            .ok_or(OpusError::Decode(audiopus::Error::Opus(
                audiopus::ErrorCode::BufferTooSmall,
            )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audiopus::coder::Encoder;
    use audiopus::Application;

    const RATE: u32 = 16_000;
    const FRAME: usize = RATE as usize / 50;

    /// `seconds` of a `hz` sine at 16 kHz, as 20 ms Opus packets.
    fn encode_tone(hz: f32, seconds: f32) -> Vec<Vec<u8>> {
        let enc = Encoder::new(SampleRate::Hz16000, Channels::Mono, Application::Voip).unwrap();
        let pcm: Vec<i16> = (0..(RATE as f32 * seconds) as usize)
            .map(|n| {
                let t = n as f32 / RATE as f32;
                (8000.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
            })
            .collect();
        pcm.chunks_exact(FRAME)
            .map(|frame| {
                let mut buf = [0u8; 1500];
                let n = enc.encode(frame, &mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect()
    }

    /// Zero crossings per second: a pure tone's frequency, twice over.
    fn frequency(pcm: &[i16]) -> f32 {
        let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        crossings as f32 / 2.0 / (pcm.len() as f32 / RATE as f32)
    }

    #[test]
    fn encoded_tone_decodes_to_the_same_frequency() {
        let mut dec = OpusDecoder::new(RATE).unwrap();
        let mut out = [0i16; MAX_PACKET_SAMPLES];
        let mut pcm = Vec::new();
        for p in encode_tone(440.0, 1.0) {
            let n = dec.decode(&p, &mut out).unwrap();
            assert_eq!(n, FRAME);
            pcm.extend_from_slice(&out[..n]);
        }
        // Skip the codec's start-up (look-ahead and the first frames' ramp).
        let f = frequency(&pcm[3200..]);
        assert!((f - 440.0).abs() < 5.0, "decoded tone at {f} Hz");
        let rms = (pcm[3200..].iter().map(|&s| (s as f64).powi(2)).sum::<f64>()
            / (pcm.len() - 3200) as f64)
            .sqrt();
        assert!(rms > 3000.0, "level kept: rms {rms}");
    }

    #[test]
    fn concealment_fills_one_frame_of_the_last_packet_length() {
        let mut dec = OpusDecoder::new(RATE).unwrap();
        let mut out = [0i16; MAX_PACKET_SAMPLES];
        // Before any packet: the 20 ms default.
        assert_eq!(dec.conceal(&mut out), Ok(FRAME));
        let packets = encode_tone(300.0, 0.2);
        for p in &packets[..5] {
            dec.decode(p, &mut out).unwrap();
        }
        assert_eq!(dec.conceal(&mut out), Ok(FRAME));
        assert!(
            out[..FRAME].iter().any(|&s| s != 0),
            "extrapolated, not silence"
        );
        assert_eq!(dec.recover(&packets[6], &mut out), Ok(FRAME));
        assert_eq!(dec.decode(&packets[6], &mut out), Ok(FRAME));
        assert!(dec.conceal(&mut out[..100]).is_err(), "buffer too short");
    }

    #[test]
    fn narrowband_output_and_rates() {
        let mut dec = OpusDecoder::new(8000).unwrap();
        let mut out = [0i16; MAX_PACKET_SAMPLES];
        let p = &encode_tone(440.0, 0.1)[0];
        assert_eq!(dec.decode(p, &mut out), Ok(160));
        assert_eq!(dec.conceal(&mut out), Ok(160));
        assert_eq!(
            OpusDecoder::new(44_100).unwrap_err(),
            OpusError::Rate(44_100)
        );
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let mut dec = OpusDecoder::new(RATE).unwrap();
        let mut out = [0i16; MAX_PACKET_SAMPLES];
        assert_eq!(dec.decode(&[], &mut out), Err(OpusError::Empty));
        // TOC code 3 (arbitrary frame count) with a frame count of 0 is invalid (§3.2.5).
        assert!(matches!(
            dec.decode(&[0x03, 0x00], &mut out),
            Err(OpusError::Decode(_))
        ));
        // 120 ms of audio does not fit a 20 ms buffer.
        let long = [0x03 | (19 << 3), 6, 0, 0, 0, 0, 0, 0];
        assert!(dec.decode(&long, &mut out[..320]).is_err());
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..5000 {
            let p: Vec<u8> = (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect();
            let _ = dec.decode(&p, &mut out);
            let _ = dec.recover(&p, &mut out);
        }
    }
}
