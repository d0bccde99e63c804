//! Media plane: RTP reception and decoding into PCM for analysis.
pub mod jitter;
pub mod opus;
pub mod rtp;
