//! RTP reception (RFC 3550): header validation through rtp-rs, per-stream
//! statistics (§6.4.1, Appendix A.1/A.3: sequence wrap, loss, duplicates), and
//! RFC 4733 telephone-event payloads. Sans-IO: the socket lives elsewhere.
//!
//! CONTRACT SKELETON: the signatures and doc comments below are the API the rest
//! of emonav calls; the bodies are being filled in.

/// What one received datagram turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum RtpEvent<'a> {
    /// Audio of the negotiated payload type, in order or late-but-new.
    Audio {
        /// Sequence number.
        seq: u16,
        /// RTP timestamp.
        timestamp: u32,
        /// Codec payload.
        payload: &'a [u8],
    },
    /// An RFC 4733 event packet (digit 0-15, end flag, duration).
    Event {
        /// Event code (0-9, 10 = `*`, 11 = `#`, 12-15 = A-D).
        event: u8,
        /// End bit.
        end: bool,
        /// Duration in timestamp units.
        duration: u16,
        /// RTP timestamp (identifies the event across its retransmissions).
        timestamp: u32,
    },
    /// Counted and ignored (garbage, RTCP on the RTP port, unknown PT, duplicate…).
    Ignored(Ignored),
}

/// Why a datagram was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not a valid RTP v2 packet.
    Malformed,
    /// RTCP (PT 200-204) arriving on the RTP port (rtcp-mux or confusion).
    Rtcp,
    /// A payload type we did not negotiate.
    UnknownPayloadType,
    /// Same sequence number seen already.
    Duplicate,
    /// Older than what we already played out.
    Late,
}

/// Counters for the call's event line and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RtpStats {
    /// Valid RTP packets accepted.
    pub received: u64,
    /// Expected minus received (RFC 3550 A.3), never negative.
    pub lost: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Late (reordered beyond play-out) packets.
    pub late: u64,
    /// Malformed datagrams.
    pub malformed: u64,
    /// RTCP seen on the RTP port.
    pub rtcp: u64,
    /// Packets with a payload type we did not negotiate.
    pub unknown_pt: u64,
    /// SSRC changes followed.
    pub ssrc_changes: u64,
}

/// Per-stream receiver state.
#[derive(Debug)]
pub struct RtpReceiver {
    _audio_pt: u8,
    _event_pt: Option<u8>,
    stats: RtpStats,
}

impl RtpReceiver {
    /// A receiver accepting audio payload type `audio_pt` and, optionally, telephone-event `event_pt`.
    pub fn new(audio_pt: u8, event_pt: Option<u8>) -> Self {
        Self { _audio_pt: audio_pt, _event_pt: event_pt, stats: RtpStats::default() }
    }
    /// Classify and account one datagram. Never panics on any input.
    pub fn handle<'a>(&mut self, _datagram: &'a [u8]) -> RtpEvent<'a> {
        todo!()
    }
    /// Statistics so far.
    pub fn stats(&self) -> RtpStats {
        self.stats
    }
}
