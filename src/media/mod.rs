//! Media plane: RTP reception and decoding into PCM for analysis.
pub mod rtp;
