//! The mid-dialog part of a [`Call`]: re-INVITE (RFC 3261 §14.2) and UPDATE
//! (RFC 3311) offer/answer, hold and unhold, codec changes, the session
//! timer negotiation (RFC 4028 §9; its refreshes are in `refresh.rs`), and
//! the server non-INVITE transactions (§17.2.2) that answer
//! retransmitted in-dialog requests without handling them twice.
//!
//! Hold and the analyser: while the caller holds the call (`a=sendonly`,
//! `a=inactive` or `c=0.0.0.0`), RTP is not analysed (it would be music on
//! hold), the RTP timeout is suspended and the decision deadline's clock is
//! stopped: the deadline is a budget of listening time, and time on hold after
//! the deadline's start is added to it. On unhold the RTP timeout restarts
//! from the unhold instant. The analyser keeps its timeline: it simply gets no
//! samples while on hold (Opus loss concealment does not bridge the hold).
//!
//! The deadline's clock itself is the [`Decider`](crate::policy::Decider)'s.
//!
//! A new remote address moves where our RTP keepalive and RTCP go until the
//! latch (RFC 4961) has heard the caller's media from an actual source.

use std::net::SocketAddr;
use std::time::Instant;

use super::timer::Timer;
use super::{stateless_response, Call, Output, Phase, ACCEPT};
use crate::events::Outcome;
use crate::sdp::{self, CodecName, Negotiated, SdpError};
use emonav_sip::dialog::reply_dest;
use emonav_sip::header;
use emonav_sip::message::{Method, NameAddr, Request, Response};
use emonav_sip::session_timer::{self, SessionTimer};
use emonav_sip::transaction::{Action, ServerInvite, ServerNonInvite};
use emonav_sip::transport::Peer;

/// Extensions we support, for `Supported` in our responses.
pub(super) const SUPPORTED: &str = "timer";

/// A request we answered (§17.2.2), to answer its retransmissions the same way.
#[derive(Debug)]
pub(super) struct AnsweredTx {
    tx: ServerNonInvite,
    branch: String,
    pub(super) method: Method,
    /// Where the request came from: its retransmissions are answered there.
    peer: Peer,
    dest: SocketAddr,
    response: Vec<u8>,
}

/// A re-INVITE we answered: its final response is retransmitted until the ACK.
#[derive(Debug)]
pub(super) struct ReInvite {
    tx: ServerInvite,
    branch: String,
    cseq: u32,
    /// Where the re-INVITE came from: its final response goes back there.
    peer: Peer,
    dest: SocketAddr,
    response: Vec<u8>,
    /// It came without SDP: our offer is in the 200 and the answer is due in the ACK.
    awaiting_answer: bool,
}

/// Hold bookkeeping (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Hold {
    since: Option<Instant>,
    resumed: Option<Instant>,
}

/// The next instants of the mid-dialog transactions' timers.
pub(super) struct MidTimeouts {
    /// Timer J of the requests we answered.
    pub(super) answered: Option<Instant>,
    /// Timers G/H/I of the re-INVITE we answered.
    pub(super) reinvite: Option<Instant>,
}

/// Mid-dialog state of a call.
#[derive(Debug)]
pub(super) struct MidDialog {
    pub(super) answered: Vec<AnsweredTx>,
    reinvite: Option<ReInvite>,
    hold: Hold,
    /// The session as last negotiated.
    pub(super) neg: Option<Negotiated>,
    local_rtp: SocketAddr,
    pub(super) sdp_id: u64,
    pub(super) sdp_version: u64,
    /// Our last SDP body (answer or offer), to bump the version only on change.
    pub(super) last_sdp: Option<String>,
    pub(super) timer: Option<SessionTimer>,
    /// When the session was last refreshed (its expiry counts from there).
    pub(super) refreshed_at: Option<Instant>,
    /// The caller's INVITE listed UPDATE in `Allow`: we can refresh with it.
    pub(super) peer_allows_update: bool,
}

impl MidDialog {
    pub(super) fn new(local_rtp: SocketAddr) -> Self {
        MidDialog {
            answered: Vec::new(),
            reinvite: None,
            hold: Hold::default(),
            neg: None,
            local_rtp,
            sdp_id: fastrand::u64(1..u64::MAX / 2),
            sdp_version: 1,
            last_sdp: None,
            timer: None,
            refreshed_at: None,
            peer_allows_update: false,
        }
    }

    /// The analyser is not fed while the caller holds the call.
    pub(super) fn on_hold(&self) -> bool {
        self.hold.since.is_some()
    }

    /// When the RTP timeout counts from, given the last packet.
    pub(super) fn rtp_silence_start(&self, last_packet: Instant) -> Instant {
        self.hold
            .resumed
            .map_or(last_packet, |r| r.max(last_packet))
    }

    /// A re-INVITE's final response waits for its ACK.
    pub(super) fn reinvite_awaiting_ack(&self) -> bool {
        self.reinvite.as_ref().is_some_and(|r| r.tx.awaiting_ack())
    }

    pub(super) fn poll_timeouts(&self) -> MidTimeouts {
        MidTimeouts {
            answered: self
                .answered
                .iter()
                .filter_map(|a| a.tx.poll_timeout())
                .min(),
            reinvite: self.reinvite.as_ref().and_then(|r| r.tx.poll_timeout()),
        }
    }
}

/// What identifies a request's server transaction (RFC 3261 §17.2.3): the
/// top Via branch when it carries the RFC 3261 magic cookie; otherwise, for
/// RFC 2543 peers, the Request-URI, From tag, CSeq and top Via sent-by
/// together (the Call-ID is the call's own). `None` without a Via or CSeq.
pub(super) fn transaction_key(req: &Request) -> Option<String> {
    let via = req.top_via()?;
    if let Some(b) = via.branch().filter(|b| b.starts_with("z9hG4bK")) {
        return Some(b.to_owned());
    }
    let cseq = req.cseq()?;
    let from_tag = req.from().and_then(|f| f.tag().map(str::to_owned));
    Some(format!(
        "rfc2543 {} {} {} {}:{}",
        req.uri,
        from_tag.unwrap_or_default(),
        cseq.seq,
        via.host,
        via.port.unwrap_or(5060)
    ))
}

impl Call {
    /// A retransmission of a request answered by a server non-INVITE
    /// transaction: re-send its response, and true (the TU must not see it).
    pub(super) fn absorb_retransmission(&mut self, req: &Request) -> bool {
        if matches!(req.method, Method::Invite | Method::Ack) {
            return false;
        }
        let Some(branch) = transaction_key(req) else {
            return false;
        };
        let Some(a) = self
            .mid
            .answered
            .iter()
            .find(|a| a.branch == branch && a.method == req.method)
        else {
            return false;
        };
        if a.tx.on_retransmission() {
            tracing::debug!(call_id = %self.dialog.call_id, method = %req.method, "retransmission answered again");
            self.out
                .push(Output::reply(a.peer, a.dest, a.response.clone()));
        }
        true
    }

    /// Send a response to a non-INVITE request through a server transaction
    /// (any INVITE response goes out as is).
    pub(super) fn respond(&mut self, req: &Request, peer: Peer, resp: Response, now: Instant) {
        let dest = reply_dest(req, peer.addr);
        let data = resp.to_bytes();
        // §18.2.2: back on the transport (and connection) the request came on.
        self.out.push(Output::reply(peer, dest, data.clone()));
        if matches!(req.method, Method::Invite | Method::Ack) {
            return;
        }
        let Some(branch) = transaction_key(req) else {
            return;
        };
        let mut tx = ServerNonInvite::new(self.s.timers);
        tx.on_response_sent(resp.code, now);
        self.mid.answered.push(AnsweredTx {
            tx,
            branch,
            method: req.method.clone(),
            peer,
            dest,
            response: data,
        });
    }

    /// A response to an in-dialog request, with our Contact on a 2xx and `Supported`.
    fn dialog_response(&self, req: &Request, code: u16, reason: &str) -> Response {
        let mut resp = stateless_response(req, code, reason, &self.s.user_agent);
        if (200..300).contains(&code) {
            resp.headers
                .push(header::CONTACT, format!("<{}>", self.s.contact));
            if resp.headers.get(header::ACCEPT).is_none() {
                resp.headers.push(header::ACCEPT, ACCEPT);
            }
        }
        resp.headers.push(header::SUPPORTED, SUPPORTED);
        resp
    }

    /// Timer J of the requests we answered, or G/H/I of a re-INVITE's response.
    pub(super) fn mid_dialog_timeout(&mut self, timer: Timer, now: Instant) {
        if timer == Timer::Answered {
            for a in &mut self.mid.answered {
                a.tx.on_timeout(now);
            }
            self.mid.answered.retain(|a| !a.tx.is_terminated());
            return;
        }
        let Some(r) = &mut self.mid.reinvite else {
            return;
        };
        match r.tx.on_timeout(now) {
            Action::Retransmit => self.resend_reinvite_final(),
            Action::TimedOut => {
                let ok = r.tx.final_code().is_some_and(|c| c < 300);
                self.mid.reinvite = None;
                if ok && self.is_live() {
                    // §13.3.1.4: the session SHOULD be ended with a BYE.
                    tracing::warn!(call_id = %self.dialog.call_id, "no ACK for the re-INVITE's 200; hanging up");
                    self.timers.stop(Timer::SessionExpiry);
                    self.client.abandon();
                    self.hang_up(Outcome::NoAck, now);
                }
            }
            Action::None => {}
        }
    }

    /// The session the INVITE set up is over: we sent our BYE (a request
    /// crossing it is for a dialog that is gone), the caller sent one, or the
    /// call ended. Its requests (re-INVITE, UPDATE, OPTIONS) get `481`
    /// (RFC 3261 §12.2.2, §15), not an offer/answer failure; a BYE is still
    /// answered `200`, and a NOTIFY belongs to the REFER's subscription,
    /// which outlives the session (RFC 5057 §5.4).
    pub(super) fn invite_usage_over(&self) -> bool {
        matches!(
            self.phase,
            Phase::HangingUp | Phase::Lingering | Phase::Finished
        ) || self.transfer.caller_hung_up
    }

    /// Answered and not yet hanging up (bridged calls too: their caller
    /// leg's session timer runs on).
    pub(super) fn is_live(&self) -> bool {
        matches!(
            self.phase,
            Phase::Listening | Phase::Transferring | Phase::Bridging | Phase::Bridged
        )
    }

    /// An ACK: for the INVITE's final response, or for a re-INVITE's.
    /// Returns true when it confirmed the initial INVITE's final response.
    pub(super) fn route_ack(&mut self, req: &Request, same_tx: bool, now: Instant) -> bool {
        let seq = req.cseq().map(|c| c.seq);
        if let Some(r) = &mut self.mid.reinvite {
            if seq == Some(r.cseq) && (same_tx || self.dialog.matches(req)) {
                if r.tx.on_ack(now) && r.awaiting_answer {
                    r.awaiting_answer = false;
                    self.apply_answer_in_ack(req, now);
                }
                return false;
            }
        }
        let initial = self.invite.cseq();
        (same_tx || (self.dialog.matches(req) && seq == initial)) && self.invite.on_ack(now)
    }

    /// A retransmitted re-INVITE: our response again. True if it was one.
    pub(super) fn resend_reinvite_response(&mut self, branch: Option<&str>) -> bool {
        match &self.mid.reinvite {
            Some(r) if branch == Some(r.branch.as_str()) => {
                if r.tx.awaiting_ack() {
                    self.resend_reinvite_final();
                }
                true
            }
            _ => false,
        }
    }

    /// The re-INVITE's final response again (a retransmitted re-INVITE, or Timer G).
    fn resend_reinvite_final(&mut self) {
        if let Some(r) = &self.mid.reinvite {
            let (peer, dest, data) = (r.peer, r.dest, r.response.clone());
            self.out.push(Output::reply(peer, dest, data));
        }
    }

    /// A re-INVITE in our dialog (RFC 3261 §14.2).
    pub(super) fn on_reinvite(&mut self, req: &Request, peer: Peer, now: Instant) {
        let call_id = self.dialog.call_id.clone();
        if self
            .mid
            .reinvite
            .as_ref()
            .is_some_and(|r| r.awaiting_answer && r.tx.awaiting_ack())
        {
            // Our offer is outstanding (RFC 3261 §14.2, RFC 3311 §5.2).
            tracing::info!(%call_id, "re-INVITE while our offer is pending: 491");
            let resp = self.dialog_response(req, 491, "Request Pending");
            return self.send_reinvite_final(req, peer, resp, false, now);
        }
        let pending = self.invite.is_proceeding()
            || self.invite.awaiting_ack()
            || self.mid.reinvite_awaiting_ack();
        if pending {
            // §14.2: an INVITE transaction still in progress on the dialog.
            tracing::info!(%call_id, "re-INVITE while an INVITE is pending: 500 Retry-After");
            let mut resp = self.dialog_response(req, 500, "Server Internal Error (INVITE pending)");
            resp.headers
                .push(header::RETRY_AFTER, fastrand::u32(0..=10).to_string());
            // Stateless: the pending transaction keeps its own state.
            self.out.push(Output::reply(
                peer,
                reply_dest(req, peer.addr),
                resp.to_bytes(),
            ));
            return;
        }
        if self.invite_usage_over() {
            tracing::info!(%call_id, "re-INVITE after the session ended: 481");
            let resp = self.dialog_response(req, 481, "Call/Transaction Does Not Exist");
            return self.send_reinvite_final(req, peer, resp, false, now);
        }
        if !self.is_live() || self.media.is_none() {
            let resp = self.dialog_response(req, 488, "Not Acceptable Here");
            return self.send_reinvite_final(req, peer, resp, false, now);
        }
        let timer = match session_timer::negotiate(req, self.s.min_se) {
            Ok(t) => t,
            Err(e) => {
                let mut resp = self.dialog_response(req, 422, "Session Interval Too Small");
                resp.headers.push(header::MIN_SE, e.min_se.to_string());
                return self.send_reinvite_final(req, peer, resp, false, now);
            }
        };
        let (body, awaiting_answer) = if req.body.iter().all(u8::is_ascii_whitespace) {
            // No offer: ours goes in the 200, the answer comes in the ACK.
            let Some(neg) = self.mid.neg.clone() else {
                let resp = self.dialog_response(req, 488, "Not Acceptable Here");
                return self.send_reinvite_final(req, peer, resp, false, now);
            };
            let sdp = self.versioned(|id, v, local| sdp::offer(&neg, local, id, v));
            (sdp, true)
        } else {
            match self.apply_offer(&req.body, now) {
                Ok(sdp) => (sdp, false),
                Err(e) => {
                    tracing::info!(%call_id, error = %e, "re-INVITE offer refused; session kept");
                    let resp = self.offer_refused(req, &e);
                    return self.send_reinvite_final(req, peer, resp, false, now);
                }
            }
        };
        self.refresh_target(req);
        self.start_session_timer(timer, now);
        let mut resp = self.dialog_response(req, 200, "OK");
        self.add_timer_headers(&mut resp);
        resp.headers.push(header::CONTENT_TYPE, "application/sdp");
        resp.body = body.into_bytes();
        self.send_reinvite_final(req, peer, resp, awaiting_answer, now);
    }

    fn send_reinvite_final(
        &mut self,
        req: &Request,
        peer: Peer,
        resp: Response,
        awaiting_answer: bool,
        now: Instant,
    ) {
        let dest = reply_dest(req, peer.addr);
        let data = resp.to_bytes();
        self.out.push(Output::reply(peer, dest, data.clone()));
        let mut tx = ServerInvite::new(self.s.timers);
        tx.on_final_sent(resp.code, now);
        self.mid.reinvite = Some(ReInvite {
            tx,
            branch: req
                .top_via()
                .and_then(|v| v.branch().map(str::to_owned))
                .unwrap_or_default(),
            cseq: req.cseq().map(|c| c.seq).unwrap_or(0),
            peer,
            dest,
            response: data,
            awaiting_answer,
        });
    }

    /// An UPDATE (RFC 3311): an offer is answered like a re-INVITE's, and
    /// with or without one it refreshes the session timer.
    pub(super) fn on_update(&mut self, req: &Request, peer: Peer, now: Instant) {
        if self.invite_usage_over() {
            let resp = self.dialog_response(req, 481, "Call/Transaction Does Not Exist");
            return self.respond(req, peer, resp, now);
        }
        if !self.is_live() {
            let resp = self.dialog_response(req, 488, "Not Acceptable Here");
            return self.respond(req, peer, resp, now);
        }
        let timer = match session_timer::negotiate(req, self.s.min_se) {
            Ok(t) => t,
            Err(e) => {
                let mut resp = self.dialog_response(req, 422, "Session Interval Too Small");
                resp.headers.push(header::MIN_SE, e.min_se.to_string());
                return self.respond(req, peer, resp, now);
            }
        };
        let mut answer = None;
        if !req.body.iter().all(u8::is_ascii_whitespace) {
            if self
                .mid
                .reinvite
                .as_ref()
                .is_some_and(|r| r.awaiting_answer && r.tx.awaiting_ack())
            {
                // RFC 3311 §5.2: our own offer is outstanding.
                let resp = self.dialog_response(req, 491, "Request Pending");
                return self.respond(req, peer, resp, now);
            }
            match self.apply_offer(&req.body, now) {
                Ok(sdp) => answer = Some(sdp),
                Err(e) => {
                    tracing::info!(call_id = %self.dialog.call_id, error = %e, "UPDATE offer refused; session kept");
                    let resp = self.offer_refused(req, &e);
                    return self.respond(req, peer, resp, now);
                }
            }
        }
        self.refresh_target(req);
        self.start_session_timer(timer, now);
        let mut resp = self.dialog_response(req, 200, "OK");
        self.add_timer_headers(&mut resp);
        if let Some(sdp) = answer {
            resp.headers.push(header::CONTENT_TYPE, "application/sdp");
            resp.body = sdp.into_bytes();
        }
        self.respond(req, peer, resp, now);
    }

    fn offer_refused(&self, req: &Request, e: &SdpError) -> Response {
        match e {
            SdpError::Malformed(_) => self.dialog_response(req, 400, "Bad Request (malformed SDP)"),
            _ => self.dialog_response(req, 488, "Not Acceptable Here"),
        }
    }

    /// §12.2.2: a target refresh request's Contact becomes the remote target.
    fn refresh_target(&mut self, req: &Request) {
        if let Some(c) = req
            .headers
            .get(header::CONTACT)
            .and_then(|c| NameAddr::parse(c).ok())
        {
            self.dialog.remote_target = c.uri;
        }
    }

    /// Build our SDP with the current version, bumped if the body changed.
    fn versioned(&mut self, build: impl Fn(u64, u64, SocketAddr) -> String) -> String {
        let (id, local) = (self.mid.sdp_id, self.mid.local_rtp);
        let same = build(id, self.mid.sdp_version, local);
        if self.mid.last_sdp.as_deref() == Some(same.as_str()) {
            return same;
        }
        if self.mid.last_sdp.is_some() {
            self.mid.sdp_version += 1;
        }
        let body = build(id, self.mid.sdp_version, local);
        self.mid.last_sdp = Some(body.clone());
        body
    }

    /// Codecs a new offer may switch to: the profile's, except that an Opus
    /// call's wideband analyser only takes Opus (the 16 kHz model must not
    /// hear 8 kHz G.711), while a G.711 call may switch to Opus decoded at
    /// 8 kHz. The codec in use is kept while offered (`apply_offer`).
    fn renegotiation_codecs(&self) -> Vec<CodecName> {
        let rate = self.media.as_ref().map_or(8000, |m| m.analysis_rate());
        self.s
            .codecs
            .iter()
            .copied()
            .filter(|c| rate == 8000 || *c == CodecName::Opus)
            .collect()
    }

    /// Take a new offer: negotiate, switch codec, hold state and remote
    /// address, and return our answer. On error nothing changed.
    pub(super) fn apply_offer(&mut self, body: &[u8], now: Instant) -> Result<String, SdpError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| SdpError::Malformed("body is not UTF-8".into()))?;
        let offer = sdp::parse(text)?;
        // No needless decoder switch: the codec in use wins while offered.
        let current = self.mid.neg.as_ref().map(|n| n.codec);
        let mut neg =
            sdp::negotiate_keeping(&offer, &self.renegotiation_codecs(), current, self.s.srtp)?;
        self.keep_srtp_key(&mut neg);
        self.apply_negotiated(&neg, now)?;
        Ok(self.versioned(|id, v, local| sdp::answer(&offer, &neg, local, id, v)))
    }

    /// The answer to our offer, in the ACK of an offerless re-INVITE. A
    /// missing or unusable answer leaves the session as it was (logged).
    fn apply_answer_in_ack(&mut self, ack: &Request, now: Instant) {
        let call_id = self.dialog.call_id.clone();
        let prefs: Vec<CodecName> = self.mid.neg.iter().map(|n| n.codec).collect();
        let result = std::str::from_utf8(&ack.body)
            .map_err(|_| SdpError::Malformed("body is not UTF-8".into()))
            .and_then(sdp::parse)
            .and_then(|a| sdp::negotiate(&a, &prefs, self.s.srtp));
        match result {
            Ok(mut neg) => {
                // The peer encrypts to what our offer said; we go on sending with it.
                self.keep_srtp_key(&mut neg);
                if let Err(e) = self.apply_negotiated(&neg, now) {
                    tracing::warn!(%call_id, error = %e, "answer in ACK unusable; session kept");
                }
            }
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "no usable answer in the ACK; session kept")
            }
        }
    }

    /// Our SRTP key stays while the suite does (RFC 4568 §7.1.4 lets the
    /// answerer keep it), so a re-INVITE does not rekey what we send.
    fn keep_srtp_key(&self, neg: &mut Negotiated) {
        let old = self.mid.neg.as_ref().and_then(|n| n.srtp.as_ref());
        if let (Some(new), Some(old)) = (&mut neg.srtp, old) {
            if new.suite == old.suite {
                new.local = old.local.clone();
            }
        }
    }

    fn apply_negotiated(&mut self, neg: &Negotiated, now: Instant) -> Result<(), SdpError> {
        let call_id = self.dialog.call_id.clone();
        let old = self.mid.neg.clone();
        if let Some(m) = &mut self.media {
            let codec = m.codec();
            m.renegotiate(old.as_ref(), neg, now)?;
            if old
                .as_ref()
                .is_none_or(|o| o.codec != neg.codec || o.pt != neg.pt)
            {
                tracing::info!(%call_id, from = ?codec, codec = ?neg.codec, pt = neg.pt, "codec changed by re-negotiation");
                self.record.codec = Some(neg.codec);
            }
        }
        if old.as_ref().is_some_and(|o| o.remote_rtp != neg.remote_rtp) {
            // Our silence follows the latch; the SDP address only serves until RTP comes.
            tracing::info!(%call_id, remote_rtp = %neg.remote_rtp, "remote media address changed");
        }
        self.set_hold(neg.is_hold(), now);
        self.mid.neg = Some(neg.clone());
        Ok(())
    }

    fn set_hold(&mut self, hold: bool, now: Instant) {
        let h = &mut self.mid.hold;
        match (hold, h.since) {
            (true, None) => {
                tracing::info!(call_id = %self.dialog.call_id, "caller put the call on hold");
                h.since = Some(now);
                self.decider.pause(now);
            }
            (false, Some(_)) => {
                tracing::info!(call_id = %self.dialog.call_id, "caller resumed the call");
                h.resumed = Some(now);
                h.since = None;
                self.decider.resume(now);
            }
            _ => return,
        }
        if let Some(m) = &mut self.media {
            // Do not conceal the hold as lost packets.
            m.restart_timeline();
        }
    }

    /// Remember what the initial offer/answer settled.
    pub(super) fn initial_session(&mut self, neg: &Negotiated, answer: &str, now: Instant) {
        self.mid.last_sdp = Some(answer.to_string());
        self.mid.neg = Some(neg.clone());
        if neg.is_hold() {
            self.set_hold(true, now);
        }
    }
}
