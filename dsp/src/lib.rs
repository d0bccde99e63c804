//! emonav-dsp: codecs, voice features and emotion inference. No I/O, no async.
//!
//! CONTRACT SKELETON: the signatures below are the API the endpoint calls; the
//! bodies are being filled in.
#![warn(missing_docs)]

pub mod g711 {
    //! ITU-T G.711 μ-law and A-law.
    /// Decode μ-law bytes into `out` (same length).
    pub fn decode_ulaw(_input: &[u8], _out: &mut [i16]) {
        todo!()
    }
    /// Decode A-law bytes into `out` (same length).
    pub fn decode_alaw(_input: &[u8], _out: &mut [i16]) {
        todo!()
    }
    /// Encode linear PCM to μ-law.
    pub fn encode_ulaw(_input: &[i16], _out: &mut [u8]) {
        todo!()
    }
    /// Encode linear PCM to A-law.
    pub fn encode_alaw(_input: &[i16], _out: &mut [u8]) {
        todo!()
    }
}

/// The current emotion estimate over the call so far.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Estimate {
    /// Arousal in [0, 1] (0 = calm, 1 = agitated).
    pub arousal: f32,
    /// Confidence in [0, 1] that the arousal side (high/low) is right.
    pub confidence: f32,
    /// Milliseconds of speech the estimate is based on.
    pub speech_ms: u32,
}

/// Streaming analyser for one call.
pub struct Analyzer;

impl Analyzer {
    /// A new analyser for mono PCM at `sample_rate` (8000 or 16000).
    pub fn new(_sample_rate: u32) -> Self {
        todo!()
    }
    /// Push decoded PCM; processes every complete 10 ms frame, keeps the rest.
    pub fn push(&mut self, _pcm: &[i16]) {
        todo!()
    }
    /// The estimate so far.
    pub fn estimate(&self) -> Estimate {
        todo!()
    }
    /// Milliseconds of audio processed.
    pub fn audio_ms(&self) -> u32 {
        todo!()
    }
}
