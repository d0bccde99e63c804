//! Media plane: RTP reception and decoding into PCM for analysis.
pub mod jitter;
pub mod latch;
pub mod opus;
pub mod rtcp;
pub mod rtp;
pub mod sender;
pub mod session;
