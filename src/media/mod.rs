//! Media plane: RTP reception and decoding into PCM for analysis.
pub(crate) mod jitter;
pub(crate) mod latch;
pub(crate) mod opus;
pub(crate) mod rtcp;
pub(crate) mod rtp;
pub(crate) mod sender;
pub(crate) mod session;
pub(crate) mod srtp;
pub(crate) mod tone;
