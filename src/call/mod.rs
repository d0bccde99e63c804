//! One answered call, from INVITE to the end of the transfer, as a sans-IO
//! state machine: `handle_request`/`handle_response`/`handle_rtp_from`/
//! `handle_rtcp`/`handle_timeout` with `now`; `poll_output` for everything
//! to send (on the named socket) and the final record; `poll_timeout` for
//! the next instant it must be woken. The tokio edge owns the sockets.
//!
//! Flow (RFC 3261 §13.3, RFC 3264, RFC 3515, RFC 5589): 100 Trying → 200 OK
//! with the SDP answer (retransmitted until ACK) → RTP decoded and analysed →
//! decision by policy → REFER → NOTIFY sipfrag → BYE. On a failed transfer the
//! profile's fallback applies: the caller is never silently dropped.
//!
//! The call's state is a set of sub-states, each with its own file:
//! `invite` (the INVITE server transaction), `mid_dialog` (re-INVITE,
//! UPDATE, hold, answered requests) with `refresh` (session timers),
//! `client` (our requests), [`transfer`] (REFER to the end), [`timer`]
//! (every deadline in one table), the media session ([`MediaSession`]) and
//! the decision clock ([`Decider`]); [`CallSettings`] are shared by all calls.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use emonav_dsp::Estimate;

use crate::decisions::{DecisionNote, X_EMONAV_KEY};
use crate::events::{CallRecord, MediaStats, Outcome};
use crate::media::rtp::RtpStats;
use crate::media::session::{Heard, MediaConfig, MediaSession, Port};
use crate::policy::Decider;
use crate::sdp::{self, SdpError};
use emonav_sip::dialog::{Dialog, DialogError};
use emonav_sip::message::{Method, Request, Response, Uri};
use emonav_sip::session_timer;
use emonav_sip::transport::{Peer, Transport};

mod client;
mod invite;
mod mid_dialog;
mod refresh;
mod settings;
mod thirdparty;
pub(crate) mod timer;
pub(crate) mod transfer;

use client::Client;
use emonav_sip::header;
use invite::InviteServer;
use mid_dialog::MidDialog;
pub use settings::CallSettings;
pub use thirdparty::RelaySide;
use thirdparty::ThirdParty;
use timer::{Timer, TimerTable};
use transfer::Transfer;

/// Methods we answer, for `Allow` (RFC 3261 §20.5).
pub(crate) const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY, UPDATE";
/// Bodies we understand, for `Accept`.
pub(crate) const ACCEPT: &str = "application/sdp, message/sipfrag";

/// How long a call that ended keeps answering stray in-dialog requests.
const LINGER: Duration = Duration::from_secs(32);

/// Which socket a [`Transmit`] leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    /// The SIP socket of `transport` (RFC 3261 §18).
    Sip {
        /// Transport to send it on.
        transport: Transport,
        /// For a connection-oriented transport, the remote address of the
        /// connection to reuse while it is open: the one the request being
        /// answered came on (§18.2.2), or the one the dialog came on. When
        /// it is closed, a connection to the destination is opened.
        connection: Option<SocketAddr>,
    },
    /// The call's RTP socket (RTP, and RTCP with rtcp-mux, RFC 5761).
    Rtp,
    /// The call's RTCP socket (RTP port + 1); the RTP socket when it could
    /// not be bound.
    Rtcp,
}

/// A datagram (or, on a connection, a message) to send.
#[derive(Debug)]
pub struct Transmit<'a> {
    /// The socket it leaves from.
    pub socket: Socket,
    /// Where it goes.
    pub dest: SocketAddr,
    /// The bytes: owned for SIP, lent from the media session's buffers for
    /// RTP and RTCP (nothing is allocated per packet).
    pub payload: Cow<'a, [u8]>,
}

/// What the call wants the edge to do.
#[derive(Debug)]
pub enum Output<'a> {
    /// Send this.
    Transmit(Transmit<'a>),
    /// The call is over: log this record. The call keeps answering stray
    /// requests until [`Call::is_finished`].
    Record(Box<CallRecord>),
    /// Route SIP messages with this Call-ID to this call too: a queue leg
    /// of third-party call control (RFC 3725) has its own Call-ID.
    Alias(String),
    /// For the decision store (`GET /decisions/{key}`).
    Decision(DecisionNote),
    /// Bind a second RTP port for the media relay (`[transfer] media`) and
    /// give its advertised address to [`Call::relay_port`] (`None` when no
    /// port is free); datagrams then go through [`Call::relay_rtp`].
    RelayPort,
}

impl Output<'static> {
    /// A response to a request from `peer`, for `dest`: on the transport,
    /// and connection, the request came on (RFC 3261 §18.2.2).
    fn reply(peer: Peer, dest: SocketAddr, data: Vec<u8>) -> Self {
        Self::sip(peer.transport, dest, data, peer.addr)
    }

    /// A SIP message for `dest` on `transport`; on a connection-oriented
    /// one, over the open connection to `connection` while there is one.
    fn sip(transport: Transport, dest: SocketAddr, data: Vec<u8>, connection: SocketAddr) -> Self {
        Output::Transmit(Transmit {
            socket: Socket::Sip {
                transport,
                connection: transport.is_reliable().then_some(connection),
            },
            dest,
            payload: Cow::Owned(data),
        })
    }
}

/// Outputs waiting for [`Call::poll_output`], and the instant of the last
/// input, at which media packets are polled.
struct Outbox {
    queue: VecDeque<Output<'static>>,
    now: Instant,
}

impl Outbox {
    fn push(&mut self, o: Output<'static>) {
        self.queue.push_back(o);
    }
}

/// Where a call is in its life. The deadlines of the phases (answer, NOTIFY
/// wait, linger) are in the [`TimerTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// INVITE received, not answered yet.
    Offered,
    /// 200 OK sent; listening until a decision.
    Listening,
    /// REFER sent; waiting for its response and the final NOTIFY.
    Transferring,
    /// Third-party call control (RFC 3725): calling the queue, then
    /// re-INVITing the caller with its SDP. Our keepalive still flows.
    Bridging,
    /// Caller and queue connected; we stay in the signalling path.
    Bridged,
    /// We sent BYE; waiting for its response.
    HangingUp,
    /// Over; answering strays until the linger timer.
    Lingering,
    /// Nothing left to do.
    Finished,
}

/// The call's clocks.
#[derive(Debug, Clone, Copy)]
struct Clock {
    started: Instant,
    /// Wall-clock time at `started`, for RTCP's NTP timestamps.
    started_wall: SystemTime,
    answered_at: Option<Instant>,
    /// When the ACK confirmed the dialog: our media starts then.
    confirmed_at: Option<Instant>,
}

/// A call.
pub struct Call {
    s: Arc<CallSettings>,
    /// The INVITE and its server transaction (invite.rs).
    invite: InviteServer,
    dialog: Dialog,
    /// Re-INVITE/UPDATE, hold, session timer and server transactions (mid_dialog.rs).
    mid: MidDialog,
    /// Our request in progress (client.rs).
    client: Client,
    /// REFER, NOTIFY and fallback (transfer.rs).
    transfer: Transfer,
    /// Third-party call control (thirdparty.rs).
    b2b: ThirdParty,
    /// Keys the decision is published under: the Call-ID, and the
    /// INVITE's `X-Emonav-Key`.
    decision_keys: Vec<String>,
    /// When and what to decide.
    decider: Decider,
    media: Option<MediaSession>,
    phase: Phase,
    clock: Clock,
    timers: TimerTable,
    out: Outbox,
    record: CallRecord,
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
        let header = |name: &str| invite.headers.get(name).unwrap_or("").to_string();
        let record = CallRecord {
            event: "call_end",
            call_id: header(header::CALL_ID),
            from: header(header::FROM),
            to: header(header::TO),
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
            transfer_mode: transfer_mode_name(s.transfer_mode),
            bridge_attempts: Vec::new(),
            failure_cause: None,
            bridge_media: None,
            relay: crate::events::RelayStats::default(),
            line_adapted: false,
            line_sample: None,
        };
        let dialog = Dialog::from_invite(&invite, &local_tag)?;
        let transfer = Transfer {
            norefersub: session_timer::lists_option(
                &invite.headers,
                header::SUPPORTED,
                "norefersub",
            ),
            // An INVITE without Allow says nothing; one whose Allow lacks
            // REFER says the caller cannot be transferred (RFC 3261 §20.5).
            refer_not_allowed: invite.headers.get(header::ALLOW).is_some()
                && !session_timer::lists_option(&invite.headers, header::ALLOW, "REFER"),
            ..Transfer::default()
        };
        let mut decision_keys = vec![record.call_id.clone()];
        if let Some(k) = invite
            .headers
            .get(X_EMONAV_KEY)
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 128 && *k != record.call_id)
        {
            decision_keys.push(k.to_string());
        }
        let mut timers = TimerTable::default();
        timers.set(Timer::Answer, Some(now + s.answer_delay));
        let mut call = Call {
            invite: InviteServer::new(invite, source, transport, s.timers),
            dialog,
            mid: MidDialog::new(local_rtp),
            client: Client::default(),
            transfer,
            b2b: ThirdParty::default(),
            decision_keys,
            decider: Decider::new(s.policy.clone()),
            media: None,
            phase: Phase::Offered,
            clock: Clock {
                started: now,
                started_wall,
                answered_at: None,
                confirmed_at: None,
            },
            timers,
            out: Outbox {
                queue: VecDeque::new(),
                now,
            },
            record,
            s,
        };
        let timer = session_timer::negotiate(&call.invite.request, call.s.min_se);
        if let Err(e) = timer {
            // RFC 4028 §9 (the edge answers this statelessly before a call exists).
            let mut resp = call.invite_response(422, "Session Interval Too Small", false);
            resp.headers.push(header::MIN_SE, e.min_se.to_string());
            call.reject_with(resp, now);
            return Ok(call);
        }
        let keys = call.decision_keys.clone();
        call.out.push(Output::Decision(DecisionNote::Pending(keys)));
        call.mid.timer = timer.ok().flatten();
        call.mid.peer_allows_update =
            session_timer::lists_option(&call.invite.request.headers, header::ALLOW, "UPDATE");
        match call.prepare_media(local_rtp, now) {
            Ok(()) => {
                let trying = call.invite_response(100, "Trying", false);
                call.send_invite_response(trying, now);
                if call.s.answer_delay.is_zero() {
                    call.timers.stop(Timer::Answer);
                    call.answer(now);
                }
            }
            Err(SdpError::NoCommonCodec { offered }) => {
                tracing::info!(call_id = %call.dialog.call_id, %offered, "no common codec");
                call.reject(488, "Not Acceptable Here", now);
            }
            Err(e) => {
                tracing::info!(call_id = %call.dialog.call_id, error = %e, "unusable SDP offer");
                let (code, reason) = if matches!(e, SdpError::Malformed(_)) {
                    (400, "Bad Request (malformed SDP)")
                } else {
                    (488, "Not Acceptable Here")
                };
                call.reject(code, reason, now);
            }
        }
        Ok(call)
    }

    fn prepare_media(&mut self, local_rtp: SocketAddr, now: Instant) -> Result<(), SdpError> {
        let body = std::str::from_utf8(&self.invite.request.body)
            .map_err(|_| SdpError::Malformed("body is not UTF-8".into()))?;
        if body.trim().is_empty() {
            // Offerless INVITE (offer in the 200, answer in the ACK) is not supported yet.
            return Err(SdpError::Malformed("INVITE without SDP offer".into()));
        }
        let offer = sdp::parse(body)?;
        let neg = sdp::negotiate(&offer, &self.s.codecs, self.s.srtp)?;
        let (id, version) = (self.mid.sdp_id, self.mid.sdp_version);
        let answer = sdp::answer(&offer, &neg, local_rtp, id, version);
        self.invite.answer_sdp = Some(answer.clone());
        self.record.codec = Some(neg.codec);
        let cfg = MediaConfig {
            jitter_delay: self.s.jitter_delay,
            send_silence: self.s.send_silence,
            keepalive_interval: self.s.keepalive_interval,
            symmetric: self.s.symmetric_rtp,
            // The call's own signalling source passed the trusted-set check.
            trusted: self
                .s
                .media_trust
                .clone()
                .map(|set| (set, self.invite.source.ip())),
            models: &self.s.models,
            lines: &self.s.lines,
        };
        self.media = Some(MediaSession::new(&neg, cfg, self.clock.started, now)?);
        self.initial_session(&neg, &answer, now);
        Ok(())
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        &self.dialog.call_id
    }

    /// The transport of this call's dialog.
    pub fn transport(&self) -> Transport {
        self.invite.transport
    }

    /// True once our BYE is sent (or the call is over): the session is
    /// terminated for us (RFC 3261 §15.1.1: the UAC considers it ended when
    /// the BYE is passed to its client transaction), so the call no longer
    /// counts against admission, though its BYE may still wait for a
    /// response (Timer F, 64·T1, from a caller that is gone).
    pub fn is_over(&self) -> bool {
        matches!(
            self.phase,
            Phase::HangingUp | Phase::Lingering | Phase::Finished
        )
    }

    /// True when nothing is left to do: the edge may drop the call.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished) && self.out.queue.is_empty()
    }

    /// True while the media sockets are of use: audio to analyse, or our
    /// silence to send until the transfer is over. Once false, and
    /// [`poll_output`](Self::poll_output) drained (it gives our RTCP BYE),
    /// the edge may close them.
    pub fn wants_media(&self) -> bool {
        (matches!(
            self.phase,
            Phase::Offered | Phase::Listening | Phase::Transferring | Phase::Bridging
        ) || self.relaying())
            && self.media.is_some()
    }

    /// Answered, confirmed by the ACK and not yet past the transfer: our
    /// RTP and RTCP flow. Nothing before the ACK: a spoofed INVITE's 200
    /// goes to the spoofed source, which never ACKs, so our media never
    /// starts toward the address its SDP names (a reflection otherwise).
    fn sends_media(&self) -> bool {
        (matches!(
            self.phase,
            Phase::Listening | Phase::Transferring | Phase::Bridging
        ) || self.relay_awaits_queue_media())
            && !self.invite.awaiting_ack()
    }

    /// The next thing to do at the instant of the last input: SIP messages
    /// and the record first, then our RTP and RTCP as they fall due, then,
    /// once the media is over, our RTCP BYE (RFC 3550 §6.3.7). Call until
    /// `None` after every input; RTP and RTCP are lent from buffers
    /// allocated once.
    pub fn poll_output(&mut self) -> Option<Output<'_>> {
        if let Some(o) = self.out.queue.pop_front() {
            return Some(o);
        }
        let now = self.out.now;
        if self.sends_media() {
            let wall = self.clock.started_wall + now.saturating_duration_since(self.clock.started);
            self.media
                .as_mut()?
                .poll_transmit(now, wall)
                .map(media_output)
        } else if !self.wants_media() {
            self.media.as_mut()?.bye().map(media_output)
        } else {
            None
        }
    }

    /// When our next RTP or RTCP packet is due.
    fn media_due(&self) -> Option<Instant> {
        if !self.sends_media() {
            return None;
        }
        let start = self.clock.confirmed_at.unwrap_or(self.clock.started);
        self.media.as_ref()?.send_due(start)
    }

    /// When the jitter buffer's next playout wakes the call, while audio is
    /// analysed.
    fn playout_due(&self) -> Option<Instant> {
        if !matches!(self.phase, Phase::Offered | Phase::Listening)
            || self.decider.decision().is_some()
        {
            return None;
        }
        self.media.as_ref()?.playout_due()
    }

    fn rtp_timeout_due(&self) -> Option<Instant> {
        if self.decider.decision().is_some() || self.mid.on_hold() {
            return None;
        }
        let last = self.media.as_ref()?.last_packet()?;
        Some(self.mid.rtp_silence_start(last) + self.s.rtp_timeout?)
    }

    /// The caller's emotion estimate so far (zero before any audio).
    pub fn estimate(&self) -> Estimate {
        self.media
            .as_ref()
            .map(|m| m.estimate())
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
        self.out.now = now;
        let listening = matches!(self.phase, Phase::Listening);
        let undecided = self.decider.decision().is_none();
        let feed =
            (listening || matches!(self.phase, Phase::Offered)) && !self.mid.on_hold() && undecided;
        let Some(m) = &mut self.media else { return };
        match m.on_rtp(
            datagram,
            source,
            now,
            feed,
            listening && undecided,
            &self.dialog.call_id,
        ) {
            Heard::Stray => {}
            Heard::Packet { fed } => {
                if fed {
                    self.decider.heard(now);
                }
                self.play_out(now);
            }
            Heard::Digit(d) => {
                let e = m.estimate();
                if self.decider.on_digit(d, &e).is_some() {
                    self.decided(now);
                } else {
                    self.play_out(now);
                }
            }
        }
    }

    /// A datagram on the RTCP port (RTP port + 1) from `source`: counted;
    /// a sender report is remembered for our reports, and RTCP from
    /// the caller's media address makes its source where ours goes.
    pub fn handle_rtcp(&mut self, datagram: &[u8], source: Option<SocketAddr>, now: Instant) {
        self.out.now = now;
        if let Some(m) = &mut self.media {
            m.on_rtcp_port(datagram, source, now);
        }
    }

    /// Decode and analyse what the jitter buffer releases at `now`, checking
    /// the policy after each packet while listening.
    fn play_out(&mut self, now: Instant) {
        if self.decider.decision().is_some() {
            return;
        }
        let listening = matches!(self.phase, Phase::Listening);
        let Some(m) = &mut self.media else { return };
        let decider = &mut self.decider;
        let decided = m.play_out(now, &self.dialog.call_id, |e| {
            (listening && decider.after_packet(e).is_some()).then_some(())
        });
        if decided.is_some() {
            self.decided(now);
        }
    }

    fn hang_up(&mut self, outcome: Outcome, now: Instant) {
        self.hang_up_with(outcome, &[], now);
    }

    /// BYE with `Reason` (RFC 3326), e.g. `SIP ;cause=480 ;text="…"`.
    fn hang_up_with_reason(&mut self, outcome: Outcome, reason: &str, now: Instant) {
        self.hang_up_with(outcome, &[(header::REASON, reason.to_string())], now);
    }

    /// BYE carrying `extra` headers.
    fn hang_up_with(&mut self, outcome: Outcome, extra: &[(&str, String)], now: Instant) {
        if self.record.outcome == Outcome::Pending {
            self.record.outcome = outcome;
        }
        self.phase = Phase::HangingUp;
        let mut req = self.dialog.request(
            Method::Bye,
            &self.s.via(self.invite.transport),
            &self.contact(),
        );
        for (name, value) in extra {
            req.headers.push(name, value.clone());
        }
        self.send_request(req, now);
    }

    fn finish(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Lingering | Phase::Finished) {
            return;
        }
        if self.record.outcome == Outcome::Pending {
            self.record.outcome = Outcome::Failed;
        }
        self.record.duration_ms = (now - self.clock.started).as_millis() as u64;
        if let Some(m) = &self.media {
            m.record(&mut self.record);
            if self.record.audio_ms == 0 {
                self.record.audio_ms = m.audio_ms();
            }
        }
        self.out.push(Output::Record(Box::new(self.record.clone())));
        let keys = self.decision_keys.clone();
        self.out.push(Output::Decision(DecisionNote::Ended(keys)));
        self.media = None;
        self.phase = Phase::Lingering;
        self.timers.set(Timer::Linger, Some(now + LINGER));
    }

    /// The caller's history arrived (src/history/): `false` when too late,
    /// the decision already taken without it.
    pub fn set_history(&mut self, h: crate::history::CallerFacts) -> bool {
        self.decider.set_history(h)
    }

    /// A request from the network whose Call-ID is ours.
    pub fn handle_request(&mut self, req: &Request, peer: Peer, now: Instant) {
        self.out.now = now;
        if self.absorb_retransmission(req) || self.queue_leg_request(req, peer, now) {
            return;
        }
        let branch = req.top_via().and_then(|v| v.branch().map(str::to_owned));
        let same_tx = self.invite.same_tx(branch.as_deref());
        match &req.method {
            Method::Invite if same_tx => self.resend_invite_response(),
            Method::Invite if self.resend_reinvite_response(branch.as_deref()) => {}
            Method::Ack => {
                if self.route_ack(req, same_tx, now) {
                    tracing::debug!(call_id = %self.dialog.call_id, "ACK");
                    self.clock.confirmed_at = Some(now);
                    self.maybe_refer_after_ack(now);
                }
            }
            Method::Cancel if same_tx => self.on_cancel(req, peer, now),
            Method::Cancel => self.reply(req, peer, 481, "Call/Transaction Does Not Exist", now),
            _ if !self.dialog.matches(req) => {
                self.reply(req, peer, 481, "Call/Transaction Does Not Exist", now)
            }
            _ => self.in_dialog_request(req, peer, now),
        }
    }

    fn in_dialog_request(&mut self, req: &Request, peer: Peer, now: Instant) {
        if let Err(e) = self.dialog.accept_remote_cseq(req) {
            let reason = format!("Server Internal Error ({e})");
            self.reply(req, peer, 500, &reason, now);
            return;
        }
        match &req.method {
            Method::Bye => {
                self.reply(req, peer, 200, "OK", now);
                self.on_caller_bye(now);
            }
            Method::Notify => self.on_notify(req, peer, now),
            Method::Options if self.invite_usage_over() => {
                self.reply(req, peer, 481, "Call/Transaction Does Not Exist", now)
            }
            Method::Options => self.reply(req, peer, 200, "OK", now),
            Method::Invite => self.on_reinvite(req, peer, now),
            Method::Update => self.on_update(req, peer, now),
            _ => self.reply(req, peer, 501, "Not Implemented", now),
        }
    }

    fn on_caller_bye(&mut self, now: Instant) {
        self.transfer.caller_hung_up = true;
        // A BYE that overtakes a lost ACK still ends the 2xx retransmissions:
        // the caller has the dialog, and must not get our BYE for "no ACK".
        self.invite.on_ack(now);
        if self.caller_left_bridge(now) {
            return;
        }
        if let Some(m) = self.media.take() {
            m.record(&mut self.record);
            self.record.audio_ms = self.record.audio_ms.max(m.audio_ms());
        }
        match self.phase {
            // A transfer in progress: the transferee often hangs up on us before
            // the final NOTIFY; wait for it to know how the transfer went.
            Phase::Transferring if !self.failure_tone_playing() => {}
            Phase::HangingUp => {
                self.client.abandon();
                self.finish(now);
            }
            _ => {
                if self.record.outcome == Outcome::Pending {
                    self.record.outcome = Outcome::CallerHangup;
                }
                self.client.abandon();
                self.finish(now);
            }
        }
    }

    fn reply(&mut self, req: &Request, peer: Peer, code: u16, reason: &str, now: Instant) {
        let resp = stateless_response(req, code, reason, &self.s.user_agent);
        self.respond(req, peer, resp, now);
    }

    /// Our Contact URI for this dialog's transport.
    fn contact(&self) -> Uri {
        self.s.contact_uri(self.invite.transport)
    }
}

/// The profile's transfer mode as it appears in records and decisions.
pub(crate) fn transfer_mode_name(m: crate::config::TransferMode) -> &'static str {
    m.name()
}

/// A media session's packet as an output.
fn media_output((port, dest, payload): (Port, SocketAddr, &[u8])) -> Output<'_> {
    let socket = match port {
        Port::Rtp => Socket::Rtp,
        Port::Rtcp => Socket::Rtcp,
    };
    Output::Transmit(Transmit {
        socket,
        dest,
        payload: Cow::Borrowed(payload),
    })
}

/// The host part of a SIP URI or Via for an address (IPv6 in brackets).
pub(crate) fn uri_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// A response to a request outside any call state (or that needs none):
/// copies the transaction headers and adds `Allow`/`Accept`/`Server`.
pub(crate) fn stateless_response(req: &Request, code: u16, reason: &str, server: &str) -> Response {
    let mut resp = req.make_response(code, reason);
    if code > 100 && req.to().is_some_and(|t| t.tag().is_none()) {
        if let Some(mut to) = req.to() {
            to.params.set(
                "tag",
                Some(&format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)),
            );
            resp.headers.set(header::TO, to.to_string());
        }
    }
    if matches!(code, 200 | 405 | 501) {
        resp.headers.push(header::ALLOW, ALLOW);
        resp.headers.push(header::ACCEPT, ACCEPT);
    }
    resp.headers.push(header::SERVER, server);
    resp
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod transport_tests;
