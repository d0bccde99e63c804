//! Media plane: RTP reception and decoding into PCM for analysis.
pub mod opus;
pub mod rtp;
