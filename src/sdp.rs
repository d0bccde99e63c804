//! SDP (RFC 4566/8866) parsing and the offer/answer model (RFC 3264) for audio.
//!
//! CONTRACT SKELETON: the signatures and doc comments below are the API the rest
//! of emonav calls; the bodies are being filled in.

use std::net::{IpAddr, SocketAddr};

/// Why an SDP body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is not valid SDP (line, and what is wrong with it).
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No audio stream in the offer.
    #[error("no audio stream offered")]
    NoAudio,
    /// None of our codecs was offered (→ 488 Not Acceptable Here).
    #[error("no common codec (offered: {offered})")]
    NoCommonCodec {
        /// The offered encodings, for the log and the Warning header.
        offered: String,
    },
}

/// Codecs emonav can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecName {
    /// G.711 μ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// Opus (RFC 7587), dynamic payload type.
    Opus,
}

/// Media direction attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// a=sendrecv (default)
    SendRecv,
    /// a=sendonly
    SendOnly,
    /// a=recvonly
    RecvOnly,
    /// a=inactive
    Inactive,
}

/// `a=rtpmap` (or the static payload type's implied mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type.
    pub pt: u8,
    /// Encoding name as written (case kept).
    pub encoding: String,
    /// Clock rate.
    pub clock_rate: u32,
    /// Channels (defaults to 1).
    pub channels: u8,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, …
    pub kind: String,
    /// Port (0 = rejected/disabled stream).
    pub port: u16,
    /// Transport protocol (`RTP/AVP`, `RTP/SAVP`, …).
    pub proto: String,
    /// Payload types in preference order.
    pub formats: Vec<u8>,
    /// rtpmaps, including implied static ones (0 PCMU/8000, 8 PCMA/8000).
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp:<pt> <params>`.
    pub fmtps: Vec<(u8, String)>,
    /// Media-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Direction.
    pub direction: Direction,
    /// `a=ptime`.
    pub ptime: Option<u32>,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=` session id.
    pub session_id: u64,
    /// `o=` session version.
    pub session_version: u64,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction.
    pub direction: Direction,
    /// Media sections in order.
    pub media: Vec<Media>,
}

/// Parse an SDP body.
pub fn parse(_body: &str) -> Result<SessionDescription, SdpError> {
    todo!()
}

/// The outcome of negotiating an audio offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the accepted audio `m=` line in the offer.
    pub media_index: usize,
    /// The chosen codec.
    pub codec: CodecName,
    /// Its payload type (as the offerer numbered it).
    pub pt: u8,
    /// Clock rate of the chosen codec.
    pub clock_rate: u32,
    /// Channels of the chosen codec.
    pub channels: u8,
    /// fmtp of the chosen codec, if any.
    pub fmtp: Option<String>,
    /// telephone-event payload type (RFC 4733), when offered at the codec's rate (or 8000).
    pub telephone_event_pt: Option<u8>,
    /// Where the offerer wants RTP (c= + m= port).
    pub remote_rtp: SocketAddr,
    /// Direction we answer with.
    pub direction: Direction,
    /// Offered ptime, if any.
    pub ptime: Option<u32>,
}

/// Pick the first codec of `prefs` the offer contains (our preference order wins),
/// accept telephone-event if offered.
pub fn negotiate(_offer: &SessionDescription, _prefs: &[CodecName]) -> Result<Negotiated, SdpError> {
    todo!()
}

/// Build the SDP answer (RFC 3264 §6): same number of m= lines as the offer,
/// non-audio and extra audio streams rejected with port 0, our RTP address in c=/m=.
pub fn answer(
    _offer: &SessionDescription,
    _neg: &Negotiated,
    _local_rtp: SocketAddr,
    _session_id: u64,
    _session_version: u64,
) -> String {
    todo!()
}
