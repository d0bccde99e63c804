//! The per-call event line and the counters behind `/metrics`.
//!
//! Each finished call writes exactly one JSON object on one line, to standard
//! output or to the profile's `[events] file`, so that log shippers and tests
//! can read calls without parsing human logs (those go to standard error).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

use crate::media::jitter::JitterStats;
use crate::media::latch::LatchStats;
use crate::media::rtp::RtpStats;
use crate::policy::Reason;
use crate::sdp::CodecName;

/// How the transfer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still in progress (never in a final record).
    Pending,
    /// The transfer target answered (final 2xx sipfrag).
    Transferred,
    /// The first target failed; the fallback to the default queue succeeded.
    TransferredToFallback,
    /// Every attempt failed; we hung up politely.
    Failed,
    /// The caller hung up before the transfer completed.
    CallerHangup,
    /// The caller cancelled before we answered.
    Cancelled,
    /// The INVITE was refused (no common codec, bad SDP).
    Rejected,
    /// No ACK for our 200 OK (RFC 3261 §13.3.1.4): we sent BYE.
    NoAck,
    /// The caller did not refresh the session timer (RFC 4028 §10): we sent BYE.
    SessionExpired,
    /// Connected to a queue by third-party call control (RFC 3725), emonav
    /// in the signalling path until either side hung up.
    Bridged,
    /// Decision published (`decision_only`), then our BYE: the PBX routes.
    Decided,
}

/// One transfer attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReferAttempt {
    /// Refer-To target.
    pub target: String,
    /// Final response to the REFER (None = timed out).
    pub response: Option<u16>,
    /// Last sipfrag status in a NOTIFY.
    pub notify_status: Option<u16>,
}

/// One INVITE of ours to a queue (third-party call control, RFC 3725).
#[derive(Debug, Clone, Serialize)]
pub struct BridgeAttempt {
    /// The queue's URI.
    pub target: String,
    /// Final response to our INVITE (None: none yet, or we gave up on it).
    pub response: Option<u16>,
    /// The caller's final response to our re-INVITE with the queue's SDP.
    pub caller_reinvite: Option<u16>,
}

/// RTP relayed by emonav between the caller and the queue (`[transfer]
/// media` = relay, or auto when the caller refused the queue's media).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    /// Packets from the caller sent on to the queue.
    pub to_queue_packets: u64,
    /// Their bytes (whole RTP datagrams).
    pub to_queue_bytes: u64,
    /// Packets from the queue sent on to the caller.
    pub to_caller_packets: u64,
    /// Their bytes (whole RTP datagrams).
    pub to_caller_bytes: u64,
    /// Datagrams not relayed: from an unexpected host, not RTP, or with a
    /// payload type the other leg did not negotiate.
    pub dropped: u64,
}

/// Media-plane counters beyond the receiver's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MediaStats {
    /// The jitter buffer's.
    pub jitter: JitterStats,
    /// Datagrams from other sources than the latched one, and re-latches.
    pub latch: LatchStats,
    /// RTP packets we sent (silence keepalive).
    pub sent: u64,
    /// RTCP receiver reports we sent (RFC 3550 §6.4.2).
    pub rtcp_sent: u64,
    /// Interarrival jitter of the caller's stream, RTP timestamp units (RFC 3550 A.8).
    pub interarrival_jitter: u32,
}

/// The structured line written when a call ends.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// Always `"call_end"`.
    pub event: &'static str,
    /// Call-ID.
    pub call_id: String,
    /// From header of the INVITE.
    pub from: String,
    /// To header of the INVITE.
    pub to: String,
    /// Unix time the INVITE arrived, ms.
    pub started_unix_ms: u64,
    /// INVITE to end, ms.
    pub duration_ms: u64,
    /// Negotiated codec.
    pub codec: Option<CodecName>,
    /// RTP counters.
    pub rtp: RtpStats,
    /// Jitter buffer, latching and keepalive counters.
    pub media: MediaStats,
    /// Audio decoded and analysed, ms.
    pub audio_ms: u32,
    /// Speech heard before the decision, ms.
    pub speech_ms: u32,
    /// Arousal at the decision.
    pub arousal: Option<f32>,
    /// Confidence at the decision.
    pub confidence: Option<f32>,
    /// Probability of anger when the decision was taken.
    pub anger: Option<f32>,
    /// Emotion label of the matching rule.
    pub emotion: Option<String>,
    /// Chosen queue.
    pub queue: Option<String>,
    /// Why the decision was taken when it was.
    pub decision_reason: Option<Reason>,
    /// High-risk flag.
    pub flagged: bool,
    /// 200 OK sent to first REFER sent, ms.
    pub answer_to_refer_ms: Option<u64>,
    /// First audio to decision, ms.
    pub first_audio_to_decision_ms: Option<u64>,
    /// Transfer attempts in order.
    pub refer_attempts: Vec<ReferAttempt>,
    /// Outcome.
    pub outcome: Outcome,
    /// The profile's `[transfer] transfer_mode`.
    pub transfer_mode: &'static str,
    /// Third-party call control attempts in order (B2BUA modes).
    pub bridge_attempts: Vec<BridgeAttempt>,
    /// Why the call did not reach a queue, when it did not.
    pub failure_cause: Option<String>,
    /// A bridged call's media path: `"direct"` (caller <-> queue) or
    /// `"relay"` (through emonav).
    pub bridge_media: Option<&'static str>,
    /// What emonav relayed, when the media went through it.
    pub relay: RelayStats,
    /// Scored through the line's statistics (`[adapt]`, src/adapt.rs).
    pub line_adapted: bool,
    /// The call's whole-call feature vector, for the line statistics (not
    /// written to the event line).
    #[serde(skip)]
    pub line_sample: Option<LineSample>,
}

/// What a call contributes to its line's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSample {
    /// Which model's line (0: 8 kHz, 1: 16 kHz).
    pub slot: usize,
    /// Raw whole-call features.
    pub raw: Box<[f32; emonav_dsp::model::FEATURES]>,
    /// Speech heard over the whole call, ms.
    pub speech_ms: u32,
}

/// Where call records go.
pub struct EventSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl EventSink {
    /// Standard output.
    pub fn stdout() -> Self {
        Self {
            out: Mutex::new(Box::new(std::io::stdout())),
        }
    }

    /// Append to a file.
    pub fn file(path: &str) -> std::io::Result<Self> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            out: Mutex::new(Box::new(f)),
        })
    }

    /// Write one record as one line. Failures are logged, never fatal: a full
    /// disk must not take calls down.
    pub fn write(&self, record: &CallRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise call record");
                return;
            }
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(&line).and_then(|_| out.flush()) {
            tracing::error!(error = %e, "cannot write call record");
        }
    }
}

pub(crate) use crate::metrics::Metrics;
