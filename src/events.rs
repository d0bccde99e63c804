//! The per-call event line and the counters behind `/metrics`.
//!
//! Each finished call writes exactly one JSON object on one line, to standard
//! output or to the profile's `[events] file`, so that log shippers and tests
//! can read calls without parsing human logs (those go to standard error).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Process-wide counters, exported in the Prometheus text format.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// INVITEs that started a call.
    pub calls_started: AtomicU64,
    /// Calls that ended.
    pub calls_ended: AtomicU64,
    /// Calls transferred (first target or fallback).
    pub calls_transferred: AtomicU64,
    /// Calls whose transfer failed.
    pub calls_failed: AtomicU64,
    /// Calls flagged high-risk.
    pub calls_flagged: AtomicU64,
    /// SIP datagrams dropped as unparseable.
    pub sip_unparseable: AtomicU64,
    /// SIP requests answered with 400.
    pub sip_bad_request: AtomicU64,
    /// SIP requests from untrusted sources refused (403) or dropped.
    pub sip_untrusted: AtomicU64,
    /// SIP messages for a call dropped because its queue was full (a flood
    /// on one Call-ID, or a call task that stopped reading).
    pub sip_call_queue_dropped: AtomicU64,
    /// SIP messages not written because a TCP connection's send queue was
    /// full (a peer that does not read).
    pub sip_tcp_send_dropped: AtomicU64,
    /// RTP packets accepted (summed at call end).
    pub rtp_packets: AtomicU64,
    /// RTP datagrams ignored as malformed, unknown PT or RTCP (summed at call end).
    pub rtp_ignored: AtomicU64,
    /// Frames concealed for lost RTP (jitter buffer, summed at call end).
    pub rtp_lost: AtomicU64,
    /// RTP packets dropped as late by the jitter buffer (summed at call end).
    pub rtp_late: AtomicU64,
    /// RTP datagrams from other sources than the latched one (summed at call end).
    pub rtp_stray: AtomicU64,
    /// Calls connected to a queue by third-party call control (RFC 3725).
    pub calls_bridged: AtomicU64,
    /// Calls whose decision was published and the PBX left to route.
    pub calls_decided: AtomicU64,
    /// Calls failed after third-party call control was tried.
    pub calls_bridge_failed: AtomicU64,
}

impl Metrics {
    /// Account a finished call.
    pub(crate) fn call_ended(&self, r: &CallRecord) {
        self.calls_ended.fetch_add(1, Ordering::Relaxed);
        match r.outcome {
            Outcome::Transferred | Outcome::TransferredToFallback => {
                self.calls_transferred.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed | Outcome::NoAck | Outcome::SessionExpired => {
                self.calls_failed.fetch_add(1, Ordering::Relaxed);
                if !r.bridge_attempts.is_empty() {
                    self.calls_bridge_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Bridged => {
                self.calls_bridged.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Decided => {
                self.calls_decided.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if r.flagged {
            self.calls_flagged.fetch_add(1, Ordering::Relaxed);
        }
        self.rtp_packets
            .fetch_add(r.rtp.received, Ordering::Relaxed);
        self.rtp_ignored.fetch_add(
            r.rtp.malformed + r.rtp.unknown_pt + r.rtp.rtcp,
            Ordering::Relaxed,
        );
        let j = &r.media.jitter;
        self.rtp_lost.fetch_add(j.lost, Ordering::Relaxed);
        self.rtp_late.fetch_add(j.late, Ordering::Relaxed);
        self.rtp_stray
            .fetch_add(r.media.latch.stray, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let started = self.calls_started.load(Ordering::Relaxed);
        let ended = self.calls_ended.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 16] = [
            (
                "emonav_calls_started_total",
                "counter",
                "Calls answered or refused",
                started,
            ),
            ("emonav_calls_ended_total", "counter", "Calls ended", ended),
            (
                "emonav_calls_active",
                "gauge",
                "Calls in progress",
                started.saturating_sub(ended),
            ),
            (
                "emonav_calls_transferred_total",
                "counter",
                "Calls transferred",
                self.calls_transferred.load(Ordering::Relaxed),
            ),
            (
                "emonav_calls_transfer_failed_total",
                "counter",
                "Calls whose transfer failed",
                self.calls_failed.load(Ordering::Relaxed),
            ),
            (
                "emonav_calls_flagged_total",
                "counter",
                "Calls flagged high-risk",
                self.calls_flagged.load(Ordering::Relaxed),
            ),
            (
                "emonav_sip_unparseable_total",
                "counter",
                "SIP datagrams dropped as unparseable",
                self.sip_unparseable.load(Ordering::Relaxed),
            ),
            (
                "emonav_sip_bad_request_total",
                "counter",
                "SIP requests answered 400",
                self.sip_bad_request.load(Ordering::Relaxed),
            ),
            (
                "emonav_sip_untrusted_total",
                "counter",
                "SIP requests from untrusted sources refused or dropped ([security])",
                self.sip_untrusted.load(Ordering::Relaxed),
            ),
            (
                "emonav_sip_call_queue_dropped_total",
                "counter",
                "SIP messages dropped because their call's queue was full",
                self.sip_call_queue_dropped.load(Ordering::Relaxed),
            ),
            (
                "emonav_sip_tcp_send_dropped_total",
                "counter",
                "SIP messages dropped because a TCP connection's send queue was full",
                self.sip_tcp_send_dropped.load(Ordering::Relaxed),
            ),
            (
                "emonav_rtp_packets_total",
                "counter",
                "RTP packets accepted (ended calls)",
                self.rtp_packets.load(Ordering::Relaxed),
            ),
            (
                "emonav_rtp_ignored_total",
                "counter",
                "RTP datagrams ignored (ended calls)",
                self.rtp_ignored.load(Ordering::Relaxed),
            ),
            (
                "emonav_rtp_lost_frames_total",
                "counter",
                "RTP frames lost and concealed (ended calls)",
                self.rtp_lost.load(Ordering::Relaxed),
            ),
            (
                "emonav_rtp_late_total",
                "counter",
                "RTP packets too late for the jitter buffer (ended calls)",
                self.rtp_late.load(Ordering::Relaxed),
            ),
            (
                "emonav_rtp_stray_total",
                "counter",
                "RTP datagrams from other sources than the latched one (ended calls)",
                self.rtp_stray.load(Ordering::Relaxed),
            ),
        ];
        let mut s = String::new();
        for (name, kind, help, v) in rows {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        }
        self.render_by_mode(&mut s);
        s
    }

    /// Calls that reached a queue, and calls that did not, by how emonav
    /// routed them (REFER, third-party call control, decision published).
    fn render_by_mode(&self, s: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let failed = load(&self.calls_failed);
        let bridge_failed = load(&self.calls_bridge_failed);
        s.push_str(
            "# HELP emonav_calls_routed_total Calls that reached a queue, by mode\n\
             # TYPE emonav_calls_routed_total counter\n",
        );
        for (mode, v) in [
            ("refer", load(&self.calls_transferred)),
            ("b2bua", load(&self.calls_bridged)),
            ("decision", load(&self.calls_decided)),
        ] {
            s.push_str(&format!(
                "emonav_calls_routed_total{{mode=\"{mode}\"}} {v}\n"
            ));
        }
        s.push_str(
            "# HELP emonav_calls_route_failed_total Calls that reached no queue, by the last mode tried\n\
             # TYPE emonav_calls_route_failed_total counter\n",
        );
        for (mode, v) in [
            ("refer", failed.saturating_sub(bridge_failed)),
            ("b2bua", bridge_failed),
        ] {
            s.push_str(&format!(
                "emonav_calls_route_failed_total{{mode=\"{mode}\"}} {v}\n"
            ));
        }
    }
}
