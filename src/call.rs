//! One answered call, from INVITE to the end of the transfer, as a sans-IO
//! state machine: `handle_request`/`handle_response`/`handle_rtp` with `now`,
//! `poll_output` for datagrams to send and the final event, `poll_timeout` for
//! the next instant it must be woken. The tokio edge owns the sockets.
//!
//! Flow (RFC 3261 §13.3, RFC 3264, RFC 3515, RFC 5589): 100 Trying → 200 OK
//! with the SDP answer (retransmitted until ACK) → RTP decoded and analysed →
//! decision by policy → REFER → NOTIFY sipfrag → BYE. On a failed transfer the
//! profile's fallback applies: the caller is never silently dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use emonav_dsp::{Analyzer, Estimate, Model, ModelEstimator};

use crate::config::{DialogCredential, Fallback, Profile};
use crate::events::{CallRecord, MediaStats, Outcome, ReferAttempt};
use crate::media::jitter::JitterBuffer;
use crate::media::latch::{Latch, Verdict};
use crate::media::opus::{self, OpusDecoder};
use crate::media::rtcp::Reporter;
use crate::media::rtp::{Ignored, RtpEvent, RtpReceiver, RtpStats};
use crate::media::sender::SilenceSender;
use crate::policy::{Decision, Policy, Reason};
use crate::sdp::{self, CodecName, SdpError};
use crate::sip::dialog::{reply_dest, Dialog, DialogError};
use crate::sip::digest::{self, Authenticator};
use crate::sip::message::{CSeq, Method, Request, Response, Uri, Via};
use crate::sip::refer::{self, NotifyError, ReferNotify};
use crate::sip::session_timer;
use crate::sip::transaction::{Action, ClientNonInvite, ServerInvite, Timers};
use crate::sip::transport::Transport;

/// Methods we answer, for `Allow` (RFC 3261 §20.5).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY, UPDATE";
/// Bodies we understand, for `Accept`.
pub const ACCEPT: &str = "application/sdp, message/sipfrag";

/// Largest RTP payload decoded per packet (G.711 at 120 ms ptime is 960 bytes;
/// a 120 ms Opus packet decodes to at most 1920 samples).
const MAX_SAMPLES: usize = 2048;
const _: () = assert!(opus::MAX_PACKET_SAMPLES <= MAX_SAMPLES);

/// Rate Opus is decoded at for the analyser: wideband, which the 16 kHz model
/// (`CallSettings::models`) is trained for. The 8 kHz model must never see
/// 16 kHz features: it hears the agitated fixture as calm there (arousal
/// 0.34 instead of 0.96).
pub const OPUS_ANALYSIS_RATE: u32 = 16_000;

/// Most Opus packets concealed for one sequence gap: enough to bridge the
/// usual burst loss, bounded so a long outage or a resynchronised sequence
/// does not make up seconds of audio the caller never said.
const MAX_CONCEALED: u16 = 5;

/// How long a call that ended keeps answering stray in-dialog requests.
const LINGER: Duration = Duration::from_secs(32);

/// Settings shared by every call, derived once from the profile.
#[derive(Debug)]
pub struct CallSettings {
    /// Transaction timers.
    pub timers: Timers,
    /// Delay before answering.
    pub answer_delay: Duration,
    /// Codec preference.
    pub codecs: Vec<CodecName>,
    /// Routing policy.
    pub policy: Policy,
    /// Deadline for a decision after the first audio.
    pub deadline: Duration,
    /// Wait for a final NOTIFY after sending REFER.
    pub notify_timeout: Duration,
    /// What to do when a transfer fails.
    pub fallback: Fallback,
    /// End the call after this long without RTP (`None`: never).
    pub rtp_timeout: Option<Duration>,
    /// Jitter-buffer playout delay.
    pub jitter_delay: Duration,
    /// Send 20 ms silence packets to the caller (RTP keepalive).
    pub send_silence: bool,
    /// Our sent-by for Via (advertised address and SIP port).
    pub sip_addr: SocketAddr,
    /// Our Contact URI (for UDP; see [`CallSettings::contact_uri`]).
    pub contact: Uri,
    /// `Server`/`User-Agent` value.
    pub user_agent: String,
    /// The emotion models calls run: G.711 (8 kHz) and Opus (16 kHz).
    pub models: [Arc<Model>; 2],
    /// Credentials for peers that challenge our REFER or BYE, in the order
    /// tried ([`Profile::dialog_credentials`]).
    pub credentials: Vec<DialogCredential>,
    /// Smallest session interval accepted (RFC 4028 `Min-SE`), seconds.
    pub min_se: u32,
}

impl CallSettings {
    /// Derive from a profile; `sip_port` is the port actually bound.
    pub fn from_profile(p: &Profile, sip_port: u16) -> Self {
        let sip_addr = SocketAddr::new(p.advertised_ip(), sip_port);
        let contact = Uri::parse(&format!(
            "sip:{}@{}:{sip_port}",
            p.sip.user,
            uri_host(sip_addr.ip())
        ))
        .expect("contact built from a validated profile");
        Self {
            timers: Timers {
                t1: p.t1(),
                t2: p.t2(),
                ..Timers::default()
            },
            answer_delay: Duration::from_millis(p.sip.answer_delay_ms),
            codecs: p.media.codecs.clone(),
            policy: p.policy.clone(),
            deadline: Duration::from_millis(p.policy.decision_deadline_ms),
            notify_timeout: Duration::from_millis(p.transfer.notify_timeout_ms),
            fallback: p.transfer.fallback,
            rtp_timeout: (p.media.rtp_timeout_ms > 0)
                .then(|| Duration::from_millis(p.media.rtp_timeout_ms)),
            jitter_delay: Duration::from_millis(p.media.jitter_ms),
            send_silence: p.media.send_silence,
            sip_addr,
            contact,
            user_agent: p.sip.user_agent.clone(),
            models: [p.model(8000), p.model(16000)],
            credentials: p.dialog_credentials(),
            min_se: p.sip.min_se_s,
        }
    }

    /// Our Contact URI for a dialog on `transport`: `;transport=tcp` for
    /// TCP, so that the peer's requests come back over TCP (RFC 3261 §18.1.1).
    pub fn contact_uri(&self, transport: Transport) -> Uri {
        let mut uri = self.contact.clone();
        if let Some(t) = transport.uri_param() {
            uri.params.set("transport", Some(t));
        }
        uri
    }

    /// A Via for a new request of ours on `transport`, with a fresh branch.
    pub fn via(&self, transport: Transport) -> Via {
        let mut via = Via {
            transport: transport.via_token().into(),
            host: uri_host(self.sip_addr.ip()),
            port: Some(self.sip_addr.port()),
            params: Default::default(),
        };
        via.params.set(
            "branch",
            Some(&format!("z9hG4bK{:016x}", fastrand::u64(..))),
        );
        via.params.set("rport", None);
        via
    }
}

/// What the call wants the edge to do.
#[derive(Debug)]
pub enum Output {
    /// Send a SIP message.
    Send {
        /// Destination: for a connection-oriented transport, where to open a
        /// connection when `connection` is not open (any more).
        dest: SocketAddr,
        /// Serialised message.
        data: Vec<u8>,
        /// Transport to send it on (RFC 3261 §18).
        transport: Transport,
        /// For a connection-oriented transport, the remote address of the
        /// connection to reuse while it is open: the one the request being
        /// answered came on (§18.2.2), or the one the dialog came on.
        connection: Option<SocketAddr>,
    },
    /// The call is over: log this record. The call keeps answering stray
    /// requests until [`Call::is_finished`].
    Ended(Box<CallRecord>),
}

impl Output {
    /// A message for `dest` on `transport`; on a connection-oriented one,
    /// over the open connection to `connection` while there is one.
    fn on(transport: Transport, dest: SocketAddr, data: Vec<u8>, connection: SocketAddr) -> Self {
        Output::Send {
            dest,
            data,
            transport,
            connection: transport.is_reliable().then_some(connection),
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// INVITE received, not answered yet.
    Offered { answer_at: Instant },
    /// 200 OK sent; listening until a decision.
    Listening,
    /// REFER sent; waiting for its response and the final NOTIFY.
    Transferring { deadline: Instant },
    /// We sent BYE; waiting for its response.
    HangingUp,
    /// Over; answering strays until `until`.
    Lingering { until: Instant },
    /// Nothing left to do.
    Finished,
}

#[derive(Debug)]
struct OutgoingTx {
    tx: ClientNonInvite,
    method: Method,
    branch: String,
    cseq: u32,
    data: Vec<u8>,
    dest: SocketAddr,
    /// The request as sent, to re-send it with credentials.
    request: Request,
    /// Already carries credentials answering a challenge: a second challenge
    /// means they were refused, and the request fails.
    authenticated: bool,
}

struct Media {
    rtp: RtpReceiver,
    /// Puts the caller's packets back in order and paces them (`[media] jitter_ms`).
    jitter: JitterBuffer,
    /// Where the caller's RTP really comes from (RFC 4961 latching).
    latch: Latch,
    /// Negotiated audio payload type (the jitter buffer also carries
    /// telephone-events, which only hold their sequence slot).
    audio_pt: u8,
    dec: Decode,
    analyzer: Analyzer,
    /// Our silence stream (`[media] send_silence`), started at the answer;
    /// None until then or when we must not send.
    sender: Option<SilenceSender>,
    /// Whether we send at all: sendrecv/sendonly answer, send_silence on.
    send: bool,
    /// The SDP's RTP address, used until the latch knows better.
    sdp_rtp: Option<SocketAddr>,
    /// Our SSRC: the silence stream's and the RTCP reports'.
    ssrc: u32,
    /// Our RTCP reports (RFC 3550 §6.4).
    rtcp: Reporter,
    /// RTCP on the RTP port (RFC 5761), offered and answered.
    rtcp_mux: bool,
    /// The SDP's `a=rtcp` address (RFC 3605).
    sdp_rtcp: Option<SocketAddr>,
    /// Where the caller's RTCP came from on our RTCP port (symmetric RTCP).
    rtcp_source: Option<SocketAddr>,
    first_audio: Option<Instant>,
    last_packet: Option<Instant>,
    /// RTP timestamp of the last telephone-event acted on.
    last_event: Option<u32>,
}

/// Decoding of the packets the jitter buffer releases, in order.
struct Decode {
    codec: CodecName,
    pcm: Box<[i16; MAX_SAMPLES]>,
    /// The decoder of an Opus call (G.711 needs no state).
    opus: Option<OpusDecoder>,
    /// Samples in the last G.711 packet: a lost one is replaced by as much silence.
    g711_frame: usize,
    /// Packets the decoder refused since the last good one: concealed with the next.
    refused: u16,
}

impl Decode {
    /// Decode one released packet into the analyser, first concealing the
    /// `lost` packets before it (at most [`MAX_CONCEALED`]) so the analysed
    /// timeline stays continuous: Opus by PLC (the last one from this
    /// packet's in-band FEC when it has some), G.711 by silence (repeating
    /// a frame would make up pitch and energy the caller never produced).
    /// False when the decoder refused the packet: it is then concealed when
    /// the next good packet comes.
    fn feed(&mut self, analyzer: &mut Analyzer, lost: u16, payload: &[u8]) -> bool {
        let lost = lost.saturating_add(std::mem::take(&mut self.refused));
        let pcm = &mut self.pcm[..];
        match (self.codec, &mut self.opus) {
            (CodecName::Opus, Some(dec)) => {
                if lost > 0 {
                    for _ in 1..lost.min(MAX_CONCEALED) {
                        if let Ok(n) = dec.conceal(pcm) {
                            analyzer.push(&pcm[..n]);
                        }
                    }
                    let n = dec.recover(payload, pcm).or_else(|_| dec.conceal(pcm));
                    if let Ok(n) = n {
                        analyzer.push(&pcm[..n]);
                    }
                }
                match dec.decode(payload, pcm) {
                    Ok(n) => {
                        analyzer.push(&pcm[..n]);
                        true
                    }
                    Err(_) => {
                        self.refused = 1;
                        false
                    }
                }
            }
            (CodecName::Opus, None) => false,
            (g711, _) => {
                let frame = self.g711_frame.min(MAX_SAMPLES);
                pcm[..frame].fill(0);
                for _ in 0..lost.min(MAX_CONCEALED) {
                    analyzer.push(&pcm[..frame]);
                }
                let n = payload.len().min(MAX_SAMPLES);
                if n == 0 {
                    return false;
                }
                let pcm = &mut pcm[..n];
                if g711 == CodecName::Pcmu {
                    emonav_dsp::g711::decode_ulaw(&payload[..n], pcm);
                } else {
                    emonav_dsp::g711::decode_alaw(&payload[..n], pcm);
                }
                analyzer.push(pcm);
                self.g711_frame = n;
                true
            }
        }
    }
}

impl Media {
    /// Whether and where we send, from a (re-)negotiation.
    fn set_direction(&mut self, neg: &sdp::Negotiated, send_silence: bool) {
        self.send = send_silence
            && matches!(
                neg.direction,
                sdp::Direction::SendRecv | sdp::Direction::SendOnly
            );
        self.sdp_rtp = Some(neg.remote_rtp).filter(|a| a.port() != 0 && !a.ip().is_unspecified());
        self.rtcp_mux = neg.rtcp_mux;
        self.sdp_rtcp = neg.remote_rtcp.filter(|a| !a.ip().is_unspecified());
    }

    /// Where our RTP goes: the latched source, else the SDP's address.
    fn rtp_dest(&self) -> Option<SocketAddr> {
        self.latch.address().or(self.sdp_rtp)
    }

    /// Where our RTCP goes, and whether on the RTP port: with rtcp-mux the
    /// RTP destination; else where the caller's RTCP comes from, the SDP's
    /// `a=rtcp`, or the RTP destination's port + 1 (RFC 3605).
    fn rtcp_dest(&self) -> Option<SocketAddr> {
        let rtp = self.rtp_dest();
        if self.rtcp_mux {
            return rtp;
        }
        self.rtcp_source.or(self.sdp_rtcp).or_else(|| {
            let a = rtp?;
            Some(SocketAddr::new(a.ip(), a.port().checked_add(1)?))
        })
    }

    /// Statistics into the call's record.
    fn record(&self, r: &mut CallRecord) {
        let jitter = self.jitter.stats();
        r.rtp = self.rtp.stats();
        r.rtp.late = jitter.late;
        r.media = MediaStats {
            jitter,
            latch: self.latch.stats(),
            sent: self.sender.as_ref().map_or(0, |s| s.sent()),
            rtcp_sent: self.rtcp.sent(),
            interarrival_jitter: self.rtcp.jitter(),
        };
    }
}

/// A call.
pub struct Call {
    s: Arc<CallSettings>,
    invite: Request,
    invite_branch: String,
    response_dest: SocketAddr,
    source: SocketAddr,
    /// Transport the INVITE came on: our requests in the dialog use it.
    transport: Transport,
    dialog: Dialog,
    server_tx: ServerInvite,
    /// Last response to the INVITE, resent on INVITE retransmissions and by Timer G.
    invite_response: Vec<u8>,
    answer_sdp: Option<String>,
    media: Option<Media>,
    phase: Phase,
    answered_at: Option<Instant>,
    started: Instant,
    /// Wall-clock time at `started`, for RTCP's NTP timestamps.
    started_wall: SystemTime,
    decision: Option<Decision>,
    client_tx: Option<OutgoingTx>,
    /// CSeq of the REFER whose subscription we follow.
    refer_cseq: Option<u32>,
    caller_hung_up: bool,
    outputs: VecDeque<Output>,
    record: CallRecord,
    /// Re-INVITE/UPDATE, hold, session timer and server transactions (call_dialog.rs).
    d: DialogState,
}

impl Call {
    /// Start a call for a new INVITE from `source`; `local_rtp` is the RTP
    /// socket's advertised address. Queues `100 Trying`, and `200 OK` (or
    /// `488`/`400`) when due. An INVITE that cannot start a dialog (no From
    /// tag, no Call-ID…) is refused with the reason, for a stateless `400`.
    pub fn new(
        s: Arc<CallSettings>,
        invite: Request,
        source: SocketAddr,
        local_rtp: SocketAddr,
        now: Instant,
    ) -> Result<Call, DialogError> {
        Self::new_on(s, invite, source, Transport::Udp, local_rtp, now)
    }

    /// [`Call::new`] for an INVITE that came on `transport` (for TCP,
    /// `source` is the connection's remote address): the dialog's requests
    /// and our Via and Contact use that transport.
    pub fn new_on(
        s: Arc<CallSettings>,
        invite: Request,
        source: SocketAddr,
        transport: Transport,
        local_rtp: SocketAddr,
        now: Instant,
    ) -> Result<Call, DialogError> {
        let local_tag = format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff);
        let started_wall = SystemTime::now();
        let via = invite.top_via();
        let response_dest = reply_dest(&invite, source);
        let invite_branch = via
            .as_ref()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let header = |name: &str| invite.headers.get(name).unwrap_or("").to_string();
        let record = CallRecord {
            event: "call_end",
            call_id: header("Call-ID"),
            from: header("From"),
            to: header("To"),
            started_unix_ms: started_wall
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            duration_ms: 0,
            codec: None,
            rtp: RtpStats::default(),
            media: MediaStats::default(),
            audio_ms: 0,
            speech_ms: 0,
            arousal: None,
            confidence: None,
            anger: None,
            emotion: None,
            queue: None,
            decision_reason: None,
            flagged: false,
            answer_to_refer_ms: None,
            first_audio_to_decision_ms: None,
            refer_attempts: Vec::new(),
            outcome: Outcome::Pending,
        };
        let timers = s.timers;
        let dialog = Dialog::from_invite(&invite, &local_tag)?;
        let norefersub = session_timer::lists_option(&invite.headers, "Supported", "norefersub");
        let mut call = Call {
            answer_sdp: None,
            media: None,
            phase: Phase::Offered {
                answer_at: now + s.answer_delay,
            },
            answered_at: None,
            started: now,
            started_wall,
            decision: None,
            client_tx: None,
            refer_cseq: None,
            caller_hung_up: false,
            outputs: VecDeque::new(),
            record,
            d: DialogState::new(local_rtp, norefersub),
            server_tx: ServerInvite::new(timers),
            invite_response: Vec::new(),
            dialog,
            s,
            invite,
            invite_branch,
            response_dest,
            source,
            transport,
        };
        let timer = session_timer::negotiate(&call.invite, call.s.min_se);
        if let Err(e) = timer {
            // RFC 4028 §9 (the edge answers this statelessly before a call exists).
            let mut resp = call.invite_response(422, "Session Interval Too Small", false);
            resp.headers.push("Min-SE", e.min_se.to_string());
            call.reject_with(resp, now);
            return Ok(call);
        }
        call.d.timer = timer.ok().flatten();
        call.d.peer_allows_update =
            session_timer::lists_option(&call.invite.headers, "Allow", "UPDATE");
        match call.prepare_media(local_rtp, now) {
            Ok(()) => {
                let trying = call.invite_response(100, "Trying", false);
                call.send_invite_response(trying);
                if call.s.answer_delay.is_zero() {
                    call.answer(now);
                }
            }
            Err(SdpError::NoCommonCodec { offered }) => {
                tracing::info!(call_id = %call.dialog.call_id, %offered, "no common codec");
                call.reject(488, "Not Acceptable Here", now);
            }
            Err(e) => {
                tracing::info!(call_id = %call.dialog.call_id, error = %e, "unusable SDP offer");
                let code = if matches!(e, SdpError::Malformed(_)) {
                    400
                } else {
                    488
                };
                let reason = if code == 400 {
                    "Bad Request (malformed SDP)"
                } else {
                    "Not Acceptable Here"
                };
                call.reject(code, reason, now);
            }
        }
        Ok(call)
    }

    fn prepare_media(&mut self, local_rtp: SocketAddr, now: Instant) -> Result<(), SdpError> {
        let body = std::str::from_utf8(&self.invite.body)
            .map_err(|_| SdpError::Malformed("body is not UTF-8".into()))?;
        if body.trim().is_empty() {
            // Offerless INVITE (offer in the 200, answer in the ACK) is not supported yet.
            return Err(SdpError::Malformed("INVITE without SDP offer".into()));
        }
        let offer = sdp::parse(body)?;
        let neg = sdp::negotiate(&offer, &self.s.codecs)?;
        let (id, version) = (self.d.sdp_id, self.d.sdp_version);
        let answer = sdp::answer(&offer, &neg, local_rtp, id, version);
        self.answer_sdp = Some(answer.clone());
        self.record.codec = Some(neg.codec);
        let (rate, opus) = match neg.codec {
            CodecName::Pcmu | CodecName::Pcma => (8000, None),
            CodecName::Opus => match OpusDecoder::new(OPUS_ANALYSIS_RATE) {
                Ok(d) => (OPUS_ANALYSIS_RATE, Some(d)),
                Err(e) => {
                    tracing::error!(call_id = %self.dialog.call_id, error = %e, "no Opus decoder");
                    return Err(SdpError::NoCommonCodec {
                        offered: "opus (decoder unavailable)".into(),
                    });
                }
            },
        };
        let ssrc = fastrand::u32(..);
        // RFC 7022 §4.2: a random CNAME per call.
        let cname = format!("{:016x}@emonav", fastrand::u64(..));
        let mut media = Media {
            ssrc,
            rtcp: Reporter::new(ssrc, &cname, neg.clock_rate, now),
            rtcp_mux: false,
            sdp_rtcp: None,
            rtcp_source: None,
            rtp: RtpReceiver::new(neg.pt, neg.telephone_event_pt),
            jitter: JitterBuffer::new(self.s.jitter_delay, neg.clock_rate, self.started),
            latch: Latch::new(neg.pt),
            audio_pt: neg.pt,
            dec: Decode {
                codec: neg.codec,
                pcm: Box::new([0; MAX_SAMPLES]),
                opus,
                g711_frame: 160,
                refused: 0,
            },
            sender: None,
            send: false,
            sdp_rtp: None,
            analyzer: Analyzer::with_estimator(
                rate,
                Box::new(ModelEstimator::new(
                    self.s.models[usize::from(rate == 16000)].clone(),
                )),
            ),
            first_audio: None,
            last_packet: None,
            last_event: None,
        };
        media.set_direction(&neg, self.s.send_silence);
        self.media = Some(media);
        self.initial_session(&neg, &answer, rate, now);
        Ok(())
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        &self.dialog.call_id
    }

    /// True when nothing is left to do: the edge may drop the call.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished) && self.outputs.is_empty()
    }

    /// True while the RTP socket is of use: audio to analyse, or our
    /// silence to send until the transfer is over.
    pub fn wants_media(&self) -> bool {
        matches!(
            self.phase,
            Phase::Offered { .. } | Phase::Listening | Phase::Transferring { .. }
        ) && self.media.is_some()
    }

    /// Next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest instant [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (phase, media) = match self.phase {
            Phase::Offered { answer_at } => (Some(answer_at), None),
            Phase::Listening => (self.decision_due(), self.rtp_timeout_due()),
            Phase::Transferring { deadline } => (Some(deadline), None),
            Phase::Lingering { until } => (Some(until), None),
            Phase::HangingUp | Phase::Finished => (None, None),
        };
        [
            phase,
            media,
            self.playout_due(),
            self.server_tx.poll_timeout(),
            self.client_tx.as_ref().and_then(|t| t.tx.poll_timeout()),
            self.d.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn decision_due(&self) -> Option<Instant> {
        // On hold the deadline's clock stops (call_dialog.rs).
        if self.decision.is_some() || self.d.on_hold() {
            return None;
        }
        let start = self
            .media
            .as_ref()
            .and_then(|m| m.first_audio)
            .or(self.answered_at)?;
        Some(start + self.s.deadline + self.d.held_after(start))
    }

    fn rtp_timeout_due(&self) -> Option<Instant> {
        if self.decision.is_some() || self.d.on_hold() {
            return None;
        }
        let last = self.media.as_ref()?.last_packet?;
        Some(self.d.rtp_silence_start(last) + self.s.rtp_timeout?)
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.dialog_timeout(now);
        match self.server_tx.on_timeout(now) {
            // Timer G is for unreliable transports (§17.2.1); the 2xx is
            // retransmitted whatever the transport (§13.3.1.4).
            Action::Retransmit
                if self.transport.is_reliable()
                    && self.server_tx.final_code().is_some_and(|c| c >= 300) => {}
            Action::Retransmit => self.resend_invite_response(),
            Action::TimedOut if self.server_tx.final_code().is_some_and(|c| c < 300) => {
                tracing::warn!(call_id = %self.dialog.call_id, "no ACK for 200 OK; hanging up");
                self.hang_up(Outcome::NoAck, now);
            }
            Action::TimedOut => self.finish(now),
            Action::None => {}
        }
        if let Some(out) = &mut self.client_tx {
            match out.tx.on_timeout(now) {
                // Timer E is for unreliable transports only (§17.1.2.2).
                Action::Retransmit if self.transport.is_reliable() => {}
                Action::Retransmit => {
                    let (dest, data) = (out.dest, out.data.clone());
                    self.outputs
                        .push_back(Output::on(self.transport, dest, data, dest));
                }
                Action::TimedOut => {
                    let method = out.method.clone();
                    self.client_tx = None;
                    self.on_final_response(&method, 408, now);
                }
                Action::None => {}
            }
        }
        if matches!(self.phase, Phase::Offered { .. } | Phase::Listening) {
            self.play_out(now);
        }
        match self.phase {
            Phase::Offered { answer_at } if now >= answer_at => self.answer(now),
            Phase::Listening => {
                if self.rtp_timeout_due().is_some_and(|t| now >= t) {
                    tracing::info!(call_id = %self.dialog.call_id, "RTP stopped before a decision");
                    let e = self.estimate();
                    let d = self.s.policy.default_decision(&e, Reason::NotAnalysed);
                    self.decide(d, now);
                } else if self.decision_due().is_some_and(|t| now >= t) {
                    let e = self.estimate();
                    let d = self.s.policy.at_deadline(&e);
                    self.decide(d, now);
                }
            }
            Phase::Transferring { deadline } if now >= deadline => {
                tracing::info!(call_id = %self.dialog.call_id, "no final NOTIFY in time");
                self.transfer_failed(None, now);
            }
            Phase::Lingering { until } if now >= until => self.phase = Phase::Finished,
            _ => {}
        }
    }

    /// The caller's emotion estimate so far (zero before any audio).
    pub fn estimate(&self) -> Estimate {
        self.media
            .as_ref()
            .map(|m| m.analyzer.estimate())
            .unwrap_or_default()
    }

    /// One RTP datagram for this call's media port, source unknown (no latching).
    pub fn handle_rtp(&mut self, datagram: &[u8], now: Instant) {
        self.handle_rtp_from(datagram, None, now);
    }

    /// One RTP datagram for this call's media port from `source`: latched
    /// (RFC 4961), accounted, put in the jitter buffer; what is due is
    /// decoded and analysed. Allocation-free.
    pub fn handle_rtp_from(&mut self, datagram: &[u8], source: Option<SocketAddr>, now: Instant) {
        let listening = matches!(self.phase, Phase::Listening);
        let analysing =
            (listening || matches!(self.phase, Phase::Offered { .. })) && !self.d.on_hold();
        let Some(m) = &mut self.media else { return };
        if let Some(src) = source {
            let peeked = crate::media::rtp::peek(datagram);
            if m.latch.check(src, peeked, now, &self.dialog.call_id) == Verdict::Stray {
                return;
            }
        }
        m.last_packet = Some(now);
        let early = match m.rtp.handle(datagram) {
            RtpEvent::Audio {
                ssrc,
                seq,
                timestamp,
                payload,
            } => {
                m.rtcp.on_rtp(ssrc, timestamp, now);
                if analysing && self.decision.is_none() {
                    m.jitter
                        .push(ssrc, seq, Some(timestamp), m.audio_pt, payload, now);
                    // The decision deadline runs from the first audio heard, not played out.
                    m.first_audio.get_or_insert(now);
                }
                None
            }
            // RFC 5761: RTCP on the RTP port.
            RtpEvent::Ignored(Ignored::Rtcp) => {
                m.rtcp.on_rtcp(datagram, now);
                None
            }
            RtpEvent::Event {
                ssrc,
                seq,
                event,
                end,
                timestamp,
                ..
            } => {
                tracing::trace!(call_id = %self.dialog.call_id, event, end, "telephone-event");
                // Its sequence slot, so the audio around it shows no gap.
                if analysing && self.decision.is_none() {
                    m.jitter.push(ssrc, seq, None, u8::MAX, &[], now);
                }
                // RFC 4733 §2.5.1.4: the end packet is sent three times; act once.
                let digit = keypad_digit(event);
                if listening && end && m.last_event != Some(timestamp) && self.decision.is_none() {
                    m.last_event = Some(timestamp);
                    digit.and_then(|d| self.s.policy.on_digit(d, &m.analyzer.estimate()))
                } else {
                    None
                }
            }
            _ => None,
        };
        match early {
            Some(d) => self.decide(d, now),
            None => self.play_out(now),
        }
    }

    /// A datagram on the RTCP port (RTP port + 1) from `source`: counted;
    /// a sender report is remembered for our reports, and RTCP from
    /// the caller's media address makes its source where ours goes.
    pub fn handle_rtcp(&mut self, datagram: &[u8], source: Option<SocketAddr>, now: Instant) {
        let Some(m) = &mut self.media else { return };
        m.rtp.handle_rtcp_port(datagram);
        if !crate::media::rtp::is_rtcp(datagram) {
            return;
        }
        m.rtcp.on_rtcp(datagram, now);
        if let Some(src) = source {
            let media_ip = m.rtp_dest().map(|a| a.ip());
            if media_ip.is_none_or(|ip| ip == src.ip()) {
                m.rtcp_source = Some(src);
            }
        }
    }

    /// Decode and analyse what the jitter buffer releases at `now`, checking
    /// the policy after each packet.
    fn play_out(&mut self, now: Instant) {
        let listening = matches!(self.phase, Phase::Listening);
        let Some(m) = &mut self.media else { return };
        let mut early = None;
        while self.decision.is_none() && early.is_none() {
            let Some(p) = m.jitter.pop(now) else { break };
            if p.pt != m.audio_pt {
                continue;
            }
            if !m.dec.feed(&mut m.analyzer, p.lost, p.payload) {
                tracing::trace!(call_id = %self.dialog.call_id, seq = p.seq, "undecodable audio packet");
                m.rtp.count_undecodable();
                continue;
            }
            if listening {
                early = self.s.policy.early(&m.analyzer.estimate());
            }
        }
        if let Some(d) = early {
            self.decide(d, now);
        }
    }

    /// Answered and not yet past the transfer: our RTP and RTCP flow.
    fn sends_media(&self) -> bool {
        matches!(self.phase, Phase::Listening | Phase::Transferring { .. })
    }

    /// Our next RTP packet, if one is due at `now`, and where it goes (the
    /// latched source, else the SDP's address). Call until None after every
    /// input and timeout; the packet lives in a buffer allocated once.
    pub fn poll_rtp(&mut self, now: Instant) -> Option<(SocketAddr, &[u8])> {
        if !self.sends_media() {
            return None;
        }
        let m = self.media.as_mut()?;
        if !m.send {
            return None;
        }
        let dest = m.rtp_dest()?;
        let (codec, pt, ssrc) = (m.dec.codec, m.audio_pt, m.ssrc);
        let packet = m
            .sender
            .get_or_insert_with(|| SilenceSender::with_ssrc(codec, pt, now, ssrc))
            .poll(now)?;
        Some((dest, packet))
    }

    /// Our next RTCP report (SR while we send, else RR), if one is due at `now`: where it goes
    /// and whether it goes from the RTP port (rtcp-mux, RFC 5761) rather than
    /// the RTCP port. Driven by the same clock as [`poll_rtp`](Self::poll_rtp)
    /// ([`poll_rtp_timeout`](Self::poll_rtp_timeout)); the report lives in a
    /// buffer allocated once.
    pub fn poll_rtcp(&mut self, now: Instant) -> Option<(SocketAddr, &[u8], bool)> {
        if !self.sends_media() {
            return None;
        }
        let m = self.media.as_mut()?;
        let (dest, mux) = (m.rtcp_dest(), m.rtcp_mux);
        let rx = m.rtp.reception();
        // While our keepalive flows we are a sender (§6.4): a sender report,
        // its wall clock from the call's start anchored to `now`.
        let sending = m.sender.as_ref().filter(|s| s.sent() > 0).map(|s| {
            let (rtp_timestamp, packets, octets) = s.stream_position(now);
            let wall = self.started_wall + now.saturating_duration_since(self.started);
            crate::media::rtcp::SenderInfo {
                ntp: crate::media::rtcp::ntp_time(wall),
                rtp_timestamp,
                packets,
                octets,
            }
        });
        // Polled even without a destination, so the schedule moves on.
        let report = m.rtcp.poll(now, rx, sending)?;
        Some((dest?, report, mux))
    }

    /// Our RTCP BYE (RFC 3550 §6.3.7), once, for the edge to send as it
    /// closes the media sockets ([`wants_media`](Self::wants_media) false):
    /// where it goes and whether from the RTP port (rtcp-mux). `None` when we
    /// never sent a report.
    pub fn rtcp_bye(&mut self) -> Option<(SocketAddr, &[u8], bool)> {
        let m = self.media.as_mut()?;
        let (dest, mux) = (m.rtcp_dest(), m.rtcp_mux);
        let bye = m.rtcp.bye()?;
        Some((dest?, bye, mux))
    }

    /// When [`poll_rtp`](Self::poll_rtp) or [`poll_rtcp`](Self::poll_rtcp)
    /// has the next packet: a clock of its own, apart from
    /// [`poll_timeout`](Self::poll_timeout)'s protocol timers.
    pub fn poll_rtp_timeout(&self) -> Option<Instant> {
        if !self.sends_media() {
            return None;
        }
        let m = self.media.as_ref()?;
        let rtp = (m.send && m.rtp_dest().is_some()).then(|| {
            m.sender.as_ref().map_or(
                self.answered_at.unwrap_or(self.started),
                SilenceSender::poll_timeout,
            )
        });
        rtp.into_iter().chain(m.rtcp.poll_timeout()).min()
    }

    /// The jitter buffer's next playout, while audio is analysed.
    fn playout_due(&self) -> Option<Instant> {
        if !matches!(self.phase, Phase::Offered { .. } | Phase::Listening)
            || self.decision.is_some()
        {
            return None;
        }
        self.media.as_ref()?.jitter.poll_timeout()
    }

    fn decide(&mut self, d: Decision, now: Instant) {
        let m = self.media.as_ref();
        self.record.audio_ms = m.map(|m| m.analyzer.audio_ms()).unwrap_or(0);
        self.record.first_audio_to_decision_ms = m
            .and_then(|m| m.first_audio)
            .map(|t| (now - t).as_millis() as u64);
        self.record.speech_ms = d.speech_ms;
        self.record.arousal = Some(d.arousal);
        self.record.confidence = Some(d.confidence);
        self.record.anger = Some(d.anger);
        self.record.emotion = Some(d.label.clone());
        self.record.queue = Some(d.queue.clone());
        self.record.decision_reason = Some(d.reason);
        self.record.flagged = d.flagged;
        if d.flagged {
            tracing::warn!(call_id = %self.dialog.call_id, arousal = d.arousal, "high-risk call flagged");
        }
        tracing::info!(
            call_id = %self.dialog.call_id, queue = %d.queue, emotion = %d.label,
            arousal = d.arousal, confidence = d.confidence, reason = ?d.reason, "decision"
        );
        let target = d.queue.clone();
        self.decision = Some(d);
        self.send_refer(&target, now);
    }

    fn send_refer(&mut self, target: &str, now: Instant) {
        if self.server_tx.awaiting_ack() {
            // REFER needs a confirmed dialog: the ACK sends it (maybe_refer_after_ack).
            return;
        }
        let Some(d) = &self.decision else { return };
        let mut req =
            self.dialog
                .request(Method::Refer, &self.s.via(self.transport), &self.contact());
        let referred_by = self.dialog.local.uri.clone();
        refer::add_refer_headers(&mut req, target, &referred_by, d);
        if self.d.norefersub {
            // RFC 4488 §4: no implicit subscription; the 2xx ends the transfer.
            req.headers.push("Refer-Sub", "false");
            req.headers.push("Supported", "norefersub");
        }
        if self.record.answer_to_refer_ms.is_none() {
            self.record.answer_to_refer_ms = self.answered_at.map(|t| (now - t).as_millis() as u64);
        }
        self.record.refer_attempts.push(ReferAttempt {
            target: target.to_string(),
            response: None,
            notify_status: None,
        });
        self.refer_cseq = Some(self.dialog.local_cseq);
        self.phase = Phase::Transferring {
            deadline: now + self.s.notify_timeout,
        };
        self.send_request(req, now);
    }

    fn send_request(&mut self, mut req: Request, now: Instant) {
        req.headers.push("User-Agent", self.s.user_agent.clone());
        self.transmit(req, false, now);
    }

    fn transmit(&mut self, req: Request, authenticated: bool, now: Instant) {
        let branch = req
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let dest = self.dialog.next_hop(self.source);
        let data = req.to_bytes();
        if self
            .client_tx
            .as_ref()
            .is_some_and(|o| o.method == Method::Update && req.method != Method::Update)
        {
            self.refresh_displaced(now);
        }
        // §18.1.1: the connection the dialog came on, while it is open.
        self.outputs
            .push_back(Output::on(self.transport, dest, data.clone(), self.source));
        self.client_tx = Some(OutgoingTx {
            tx: ClientNonInvite::new(now, self.s.timers),
            method: req.method.clone(),
            branch,
            cseq,
            data,
            dest,
            request: req,
            authenticated,
        });
    }

    /// Re-send a challenged request once with credentials (RFC 3261 §22.2,
    /// §22.3): a new transaction, so a new branch and the next CSeq. Returns
    /// false when it cannot be answered (no credentials for the realm, a
    /// challenge we cannot parse, or one already answered), and the
    /// challenge is then the request's final response.
    fn answer_challenge(&mut self, resp: &Response, now: Instant) -> bool {
        let Some(out) = &self.client_tx else {
            return false;
        };
        if out.authenticated || !matches!(out.method, Method::Refer | Method::Bye) {
            return false;
        }
        let call_id = &self.dialog.call_id;
        let (kind, challenge) = match digest::response_challenge(resp) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%call_id, code = resp.code, error = %e, "cannot answer the challenge");
                return false;
            }
        };
        let Some(cred) = self.s.credentials.iter().find(|c| {
            c.realm
                .as_deref()
                .is_none_or(|r| r.eq_ignore_ascii_case(&challenge.realm))
        }) else {
            tracing::warn!(
                %call_id, method = %out.method, realm = %challenge.realm,
                "challenged, but no credentials for the realm"
            );
            return false;
        };
        let mut req = out.request.clone();
        self.dialog.local_cseq += 1;
        let cseq = self.dialog.local_cseq;
        req.headers
            .set("Via", self.s.via(self.transport).to_string());
        req.headers.set(
            "CSeq",
            CSeq {
                seq: cseq,
                method: req.method.clone(),
            }
            .to_string(),
        );
        let uri = req.uri.to_string();
        let mut auth = Authenticator::new(kind, challenge);
        let value = auth.authorization(
            &cred.username,
            cred.password.expose(),
            req.method.as_str(),
            &uri,
            &req.body,
        );
        req.headers.set(kind.credentials_header(), value);
        if req.method == Method::Refer {
            // RFC 3515 §2.4.6: the subscription's id is the CSeq of the REFER that was accepted.
            self.refer_cseq = Some(cseq);
        }
        tracing::info!(%call_id, method = %req.method, code = resp.code, "challenged; re-sending with credentials");
        self.transmit(req, true, now);
        true
    }

    /// A response from the network whose Call-ID is ours.
    pub fn handle_response(&mut self, resp: &Response, now: Instant) {
        self.late_refer_response(resp);
        let Some(out) = &mut self.client_tx else {
            return;
        };
        let branch = resp.top_via().and_then(|v| v.branch().map(str::to_owned));
        let cseq = resp.cseq();
        if branch.as_deref() != Some(out.branch.as_str())
            || cseq.as_ref().map(|c| (c.seq, &c.method)) != Some((out.cseq, &out.method))
        {
            return;
        }
        if !out.tx.on_response(resp.code, now) || resp.code < 200 {
            return;
        }
        let method = out.method.clone();
        if matches!(resp.code, 401 | 407) && self.answer_challenge(resp, now) {
            return;
        }
        if method == Method::Update {
            self.client_tx = None;
            return self.refresh_done(resp.code, resp.headers.get("Session-Expires"), now);
        }
        self.on_final_response(&method, resp.code, now);
        if method == Method::Refer
            && (200..300).contains(&resp.code)
            && matches!(self.phase, Phase::Transferring { .. })
            && Call::refer_without_subscription(resp)
        {
            tracing::info!(call_id = %self.dialog.call_id, "REFER accepted without subscription (RFC 4488)");
            if let Some(a) = self.record.refer_attempts.last_mut() {
                a.notify_status = None;
            }
            self.transfer_succeeded(now);
        }
    }

    /// A final response to the current REFER whose transaction is already
    /// gone: the final NOTIFY overtook the 202 (a proxy's workers may swap
    /// them, RFC 3515 allows it). Only recorded in the attempt.
    fn late_refer_response(&mut self, resp: &Response) {
        let Some(cseq) = resp.cseq() else { return };
        let refer_tx_open = self
            .client_tx
            .as_ref()
            .is_some_and(|o| o.method == Method::Refer);
        if resp.code < 200
            || cseq.method != Method::Refer
            || Some(cseq.seq) != self.refer_cseq
            || refer_tx_open
        {
            return;
        }
        if let Some(a) = self.record.refer_attempts.last_mut() {
            a.response.get_or_insert(resp.code);
        }
    }

    fn on_final_response(&mut self, method: &Method, code: u16, now: Instant) {
        match method {
            Method::Refer => {
                if let Some(a) = self.record.refer_attempts.last_mut() {
                    a.response = Some(code);
                }
                if !(200..300).contains(&code) {
                    tracing::info!(call_id = %self.dialog.call_id, code, "REFER refused");
                    if matches!(code, 405 | 420 | 501) {
                        tracing::warn!(call_id = %self.dialog.call_id, code, "peer cannot transfer");
                    }
                    if matches!(self.phase, Phase::Transferring { .. }) {
                        self.transfer_failed(Some(code), now);
                    }
                }
            }
            Method::Bye => self.finish(now),
            Method::Update => self.refresh_done(code, None, now),
            _ => {}
        }
    }

    fn transfer_failed(&mut self, code: Option<u16>, now: Instant) {
        if self.caller_hung_up {
            self.record.outcome = Outcome::CallerHangup;
            self.finish(now);
            return;
        }
        let default = self.s.policy.default_queue.clone();
        let tried_default = self
            .record
            .refer_attempts
            .iter()
            .any(|a| a.target == default);
        let retry = self.s.fallback == Fallback::DefaultQueueThenHangup
            && self.record.refer_attempts.len() == 1
            && !tried_default;
        tracing::warn!(
            call_id = %self.dialog.call_id, ?code, retry_default = retry,
            "transfer failed"
        );
        if retry {
            self.send_refer(&default, now);
        } else {
            self.hang_up(Outcome::Failed, now);
        }
    }

    fn transfer_succeeded(&mut self, now: Instant) {
        let outcome = if self.record.refer_attempts.len() > 1 {
            Outcome::TransferredToFallback
        } else {
            Outcome::Transferred
        };
        if self.caller_hung_up {
            self.record.outcome = outcome;
            self.finish(now);
        } else {
            // RFC 5589 §6: the transferor ends its dialog once the transfer worked.
            self.hang_up(outcome, now);
        }
    }

    fn hang_up(&mut self, outcome: Outcome, now: Instant) {
        if self.record.outcome == Outcome::Pending {
            self.record.outcome = outcome;
        }
        self.phase = Phase::HangingUp;
        let req = self
            .dialog
            .request(Method::Bye, &self.s.via(self.transport), &self.contact());
        self.send_request(req, now);
    }

    fn finish(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Lingering { .. } | Phase::Finished) {
            return;
        }
        if self.record.outcome == Outcome::Pending {
            self.record.outcome = Outcome::Failed;
        }
        self.record.duration_ms = (now - self.started).as_millis() as u64;
        if let Some(m) = &self.media {
            m.record(&mut self.record);
            if self.record.audio_ms == 0 {
                self.record.audio_ms = m.analyzer.audio_ms();
            }
        }
        self.outputs
            .push_back(Output::Ended(Box::new(self.record.clone())));
        self.media = None;
        self.phase = Phase::Lingering {
            until: now + LINGER,
        };
    }

    /// A request from the network whose Call-ID is ours.
    pub fn handle_request(&mut self, req: &Request, source: SocketAddr, now: Instant) {
        if self.absorb_retransmission(req) {
            return;
        }
        let branch = req.top_via().and_then(|v| v.branch().map(str::to_owned));
        let same_tx = branch.as_deref() == Some(self.invite_branch.as_str());
        match &req.method {
            Method::Invite if same_tx => self.resend_invite_response(),
            Method::Invite if self.resend_reinvite_response(branch.as_deref()) => {}
            Method::Ack => {
                if self.route_ack(req, same_tx, now) {
                    tracing::debug!(call_id = %self.dialog.call_id, "ACK");
                    self.maybe_refer_after_ack(now);
                }
            }
            Method::Cancel if same_tx => self.on_cancel(req, source, now),
            Method::Cancel => self.reply(req, source, 481, "Call/Transaction Does Not Exist", now),
            _ if !self.dialog.matches(req) => {
                self.reply(req, source, 481, "Call/Transaction Does Not Exist", now)
            }
            _ => self.in_dialog_request(req, source, now),
        }
    }

    fn maybe_refer_after_ack(&mut self, now: Instant) {
        if let (Phase::Listening, Some(d)) = (&self.phase, &self.decision) {
            let target = d.queue.clone();
            self.send_refer(&target, now);
        }
    }

    fn in_dialog_request(&mut self, req: &Request, source: SocketAddr, now: Instant) {
        if let Err(e) = self.dialog.accept_remote_cseq(req) {
            self.reply(
                req,
                source,
                500,
                &format!("Server Internal Error ({e})"),
                now,
            );
            return;
        }
        match &req.method {
            Method::Bye => {
                self.reply(req, source, 200, "OK", now);
                self.on_caller_bye(now);
            }
            Method::Notify => self.on_notify(req, source, now),
            Method::Options => self.reply(req, source, 200, "OK", now),
            Method::Invite => self.on_reinvite(req, source, now),
            Method::Update => self.on_update(req, source, now),
            _ => self.reply(req, source, 501, "Not Implemented", now),
        }
    }

    fn on_caller_bye(&mut self, now: Instant) {
        self.caller_hung_up = true;
        // A BYE that overtakes a lost ACK still ends the 2xx retransmissions:
        // the caller has the dialog, and must not get our BYE for "no ACK".
        self.server_tx.on_ack(now);
        if let Some(m) = self.media.take() {
            m.record(&mut self.record);
            self.record.audio_ms = self.record.audio_ms.max(m.analyzer.audio_ms());
        }
        match self.phase {
            // A transfer in progress: the transferee often hangs up on us before
            // the final NOTIFY; wait for it to know how the transfer went.
            Phase::Transferring { .. } => {}
            Phase::HangingUp => {
                self.client_tx = None;
                self.finish(now);
            }
            _ => {
                if self.record.outcome == Outcome::Pending {
                    self.record.outcome = Outcome::CallerHangup;
                }
                self.client_tx = None;
                self.finish(now);
            }
        }
    }

    fn on_notify(&mut self, req: &Request, source: SocketAddr, now: Instant) {
        let notify = match refer::inspect_notify(req) {
            Ok(n) => n,
            Err(NotifyError::BadEvent) => return self.reply(req, source, 489, "Bad Event", now),
            Err(NotifyError::BadBody) => {
                return self.reply(req, source, 400, "Bad Request (sipfrag body expected)", now)
            }
        };
        self.reply(req, source, 200, "OK", now);
        // RFC 3515 §2.4.6: `id` names the REFER's CSeq; an old subscription's
        // reports must not decide the current attempt.
        let id = req
            .headers
            .get("Event")
            .and_then(|e| e.split(';').find_map(|p| p.trim().strip_prefix("id=")))
            .and_then(|v| v.trim().parse::<u32>().ok());
        if id.is_some() && id != self.refer_cseq {
            return;
        }
        self.on_refer_progress(notify, now);
    }

    fn on_refer_progress(&mut self, n: ReferNotify, now: Instant) {
        if let Some(a) = self.record.refer_attempts.last_mut() {
            a.notify_status = Some(n.status);
        }
        if !matches!(self.phase, Phase::Transferring { .. }) || !n.is_final() {
            return;
        }
        // The REFER itself may still be retransmitting if its 202 was lost.
        self.client_tx = None;
        if (200..300).contains(&n.status) {
            self.transfer_succeeded(now);
        } else {
            self.transfer_failed(Some(n.status), now);
        }
    }

    fn on_cancel(&mut self, cancel: &Request, source: SocketAddr, now: Instant) {
        self.reply(cancel, source, 200, "OK", now);
        if self.server_tx.is_proceeding() {
            self.record.outcome = Outcome::Cancelled;
            self.reject(487, "Request Terminated", now);
        }
    }

    fn answer(&mut self, now: Instant) {
        let Some(sdp) = self.answer_sdp.clone() else {
            return;
        };
        let mut ok = self.invite_response(200, "OK", true);
        let timer = self.d.timer;
        self.start_session_timer(timer, now);
        self.add_timer_headers(&mut ok);
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = sdp.into_bytes();
        self.send_invite_response(ok);
        self.server_tx.on_final_sent(200, now);
        self.answered_at = Some(now);
        self.phase = Phase::Listening;
    }

    /// A final non-2xx to the INVITE: the call ends once the ACK (or Timer H) comes.
    fn reject(&mut self, code: u16, reason: &str, now: Instant) {
        let resp = self.invite_response(code, reason, false);
        self.reject_with(resp, now);
    }

    fn reject_with(&mut self, resp: Response, now: Instant) {
        let code = resp.code;
        self.send_invite_response(resp);
        self.server_tx.on_final_sent(code, now);
        if self.record.outcome == Outcome::Pending {
            self.record.outcome = Outcome::Rejected;
        }
        self.finish(now);
    }

    fn invite_response(&self, code: u16, reason: &str, dialog: bool) -> Response {
        let mut resp = self.invite.make_response(code, reason);
        if code > 100 {
            // §8.2.6.2: every response but 100 carries our To-tag.
            resp.headers.set("To", self.dialog.local.to_string());
        }
        if dialog {
            for rr in self.invite.headers.get_all("Record-Route") {
                resp.headers.push("Record-Route", rr);
            }
            resp.headers
                .push("Contact", format!("<{}>", self.contact()));
        }
        if code >= 200 {
            resp.headers.push("Allow", ALLOW);
            resp.headers.push("Accept", ACCEPT);
            resp.headers.push("Supported", call_dialog::SUPPORTED);
        }
        resp.headers.push("Server", self.s.user_agent.clone());
        resp
    }

    fn send_invite_response(&mut self, resp: Response) {
        self.invite_response = resp.to_bytes();
        self.resend_invite_response();
    }

    fn resend_invite_response(&mut self) {
        if !self.invite_response.is_empty() {
            self.outputs.push_back(Output::on(
                self.transport,
                self.response_dest,
                self.invite_response.clone(),
                self.source,
            ));
        }
    }

    fn reply(&mut self, req: &Request, source: SocketAddr, code: u16, reason: &str, now: Instant) {
        let resp = stateless_response(req, code, reason, &self.s.user_agent);
        self.respond(req, source, resp, now);
    }

    /// Our Contact URI for this dialog's transport.
    fn contact(&self) -> Uri {
        self.s.contact_uri(self.transport)
    }

    /// The transport of this call's dialog.
    pub fn transport(&self) -> Transport {
        self.transport
    }
}

/// The keypad character of an RFC 4733 event code (§3.2: 0-9, *, #, A-D).
fn keypad_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// A stateless response and where it goes (RFC 3261 §18.2.2).
pub fn reply_datagram(
    req: &Request,
    source: SocketAddr,
    code: u16,
    reason: &str,
    server: &str,
) -> (SocketAddr, Vec<u8>) {
    (
        reply_dest(req, source),
        stateless_response(req, code, reason, server).to_bytes(),
    )
}

/// The host part of a SIP URI or Via for an address (IPv6 in brackets).
pub fn uri_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// A response to a request outside any call state (or that needs none):
/// copies the transaction headers and adds `Allow`/`Accept`/`Server`.
pub fn stateless_response(req: &Request, code: u16, reason: &str, server: &str) -> Response {
    let mut resp = req.make_response(code, reason);
    if code > 100 && req.to().is_some_and(|t| t.tag().is_none()) {
        if let Some(mut to) = req.to() {
            to.params.set(
                "tag",
                Some(&format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)),
            );
            resp.headers.set("To", to.to_string());
        }
    }
    if matches!(code, 200 | 405 | 501) {
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Accept", ACCEPT);
    }
    resp.headers.push("Server", server);
    resp
}

#[path = "call_dialog.rs"]
mod call_dialog;
use call_dialog::DialogState;

#[cfg(test)]
#[path = "call_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "call_transport_tests.rs"]
mod transport_tests;
