//! Requests while a queue leg exists (RFC 3725 §4.3 after the set-up): a
//! BYE from either leg is answered and relayed as ours to the other; the
//! caller's re-INVITE (a session refresh, RFC 4028) is answered with the
//! session as it stands; a new offer from either leg is relayed to the
//! other ([`super::relay`]).

use std::time::Instant;

use super::super::{stateless_response, Call, Output, Phase};
use super::relay::{changes_session, Side};
use super::{is_sdp, BridgedReInvite};
use crate::events::Outcome;
use emonav_sip::dialog::reply_dest;
use emonav_sip::header;
use emonav_sip::message::{Method, Request};
use emonav_sip::session_timer;
use emonav_sip::transaction::ServerInvite;
use emonav_sip::transport::{Peer, Transport};

impl Call {
    /// A request whose Call-ID is one of our queue legs', or one of the
    /// caller's that bridging changes. True if it was handled here.
    pub(in crate::call) fn queue_leg_request(
        &mut self,
        req: &Request,
        peer: Peer,
        now: Instant,
    ) -> bool {
        let call_id = req.call_id().unwrap_or("");
        if call_id == self.dialog.call_id {
            return self.caller_request_while_bridged(req, peer, now);
        }
        let Some(i) = self.b2b.legs.iter().position(|l| l.call_id == call_id) else {
            return false;
        };
        let reply = |call: &mut Call, code: u16, reason: &str| {
            let resp = stateless_response(req, code, reason, &call.s.user_agent);
            call.respond(req, peer, resp, now);
        };
        let matches = self.b2b.legs[i]
            .dialog
            .as_ref()
            .is_some_and(|d| d.matches(req));
        if req.method == Method::Ack {
            self.relay_ack(Side::Queue, req, now);
            return true;
        }
        if self.relay_retransmission(Side::Queue, req) {
            return true;
        }
        let in_order = self.b2b.legs[i]
            .dialog
            .as_mut()
            .is_some_and(|d| d.accept_remote_cseq(req).is_ok());
        match req.method {
            _ if !matches => reply(self, 481, "Call/Transaction Does Not Exist"),
            _ if !in_order => reply(self, 500, "Server Internal Error (CSeq out of order)"),
            Method::Bye => {
                reply(self, 200, "OK");
                let current = i + 1 == self.b2b.legs.len();
                self.b2b.legs[i].ended = true;
                self.b2b.legs[i].request = None;
                if !current {
                    return true;
                }
                match self.phase {
                    Phase::Bridged => {
                        tracing::info!(call_id = %self.dialog.call_id, "B2BUA: the queue hung up; BYE to the caller");
                        self.hang_up(Outcome::Bridged, now);
                    }
                    Phase::Bridging => {
                        self.b2b.reinvite = None;
                        self.bridge_attempt_failed(None, "queue hung up during set-up", now);
                    }
                    _ => {}
                }
            }
            Method::Options => reply(self, 200, "OK"),
            Method::Invite | Method::Update
                if self.b2b.media.is_none()
                    && changes_session(&req.body, self.b2b.queue_remote.as_deref()) =>
            {
                self.relay_offer(Side::Queue, req, peer, now)
            }
            // A refresh (RFC 4028), or an offerless re-INVITE: the session
            // as it stands, the caller's description as the queue knows it.
            Method::Invite | Method::Update => {
                let mut resp = stateless_response(req, 200, "OK", &self.s.user_agent);
                let contact = self.s.contact_uri(Transport::Udp);
                resp.headers.push(header::CONTACT, format!("<{contact}>"));
                self.queue_refresh_headers(req, &mut resp, now);
                if req.method == Method::Update && !is_sdp(&req.body) {
                    self.respond(req, peer, resp, now);
                    return true;
                }
                resp.headers.push(header::CONTENT_TYPE, "application/sdp");
                resp.body = self
                    .b2b
                    .caller_remote
                    .clone()
                    .unwrap_or_default()
                    .into_bytes();
                self.respond(req, peer, resp, now);
            }
            _ => reply(self, 501, "Not Implemented"),
        }
        true
    }

    /// While bridged, the caller's re-INVITE (a session refresh, usually)
    /// is answered with the session as it stands (the queue's SDP), and its
    /// ACK absorbed; our silence keepalive and analysis are over, so our own
    /// SDP must not be offered again. A new offer goes to the queue.
    fn caller_request_while_bridged(&mut self, req: &Request, peer: Peer, now: Instant) -> bool {
        if !self.bridging() {
            return false;
        }
        match req.method {
            Method::Ack if self.relay_ack(Side::Caller, req, now) => true,
            Method::Invite if self.relay_retransmission(Side::Caller, req) => true,
            Method::Ack => {
                let seq = req.cseq().map(|c| c.seq);
                match &mut self.b2b.answered {
                    Some(a) if Some(a.cseq) == seq => {
                        a.tx.on_ack(now);
                        true
                    }
                    _ => false,
                }
            }
            Method::Invite if self.dialog.matches(req) => {
                if let Some(a) = &self.b2b.answered {
                    if Some(a.cseq) == req.cseq().map(|c| c.seq) {
                        let (peer, dest, data) = (a.peer, a.dest, a.response.clone());
                        self.out.push(Output::reply(peer, dest, data));
                        return true;
                    }
                }
                if self.dialog.accept_remote_cseq(req).is_err() {
                    return false;
                }
                if matches!(self.phase, Phase::Bridged)
                    && self.b2b.media.is_none()
                    && changes_session(&req.body, self.b2b.caller_remote.as_deref())
                {
                    self.relay_offer(Side::Caller, req, peer, now);
                    return true;
                }
                let busy = matches!(self.phase, Phase::Bridging) || self.relay_busy();
                let (code, reason) = if busy {
                    (491, "Request Pending")
                } else {
                    (200, "OK")
                };
                let mut resp = stateless_response(req, code, reason, &self.s.user_agent);
                if code == 200 {
                    resp.headers
                        .push(header::CONTACT, format!("<{}>", self.contact()));
                    if let Ok(t) = session_timer::negotiate(req, self.s.min_se) {
                        self.start_session_timer(t, now);
                        self.add_timer_headers(&mut resp);
                    }
                    resp.headers.push(header::CONTENT_TYPE, "application/sdp");
                    resp.body = self.b2b.caller_sdp.clone().unwrap_or_default().into_bytes();
                }
                let dest = reply_dest(req, peer.addr);
                let data = resp.to_bytes();
                self.out.push(Output::reply(peer, dest, data.clone()));
                let mut tx = ServerInvite::new(self.s.timers);
                tx.on_final_sent(code, now);
                self.b2b.answered = Some(Box::new(BridgedReInvite {
                    tx,
                    cseq: req.cseq().map_or(0, |c| c.seq),
                    peer,
                    dest,
                    response: data,
                }));
                true
            }
            Method::Update
                if self.dialog.matches(req)
                    && self.b2b.media.is_none()
                    && changes_session(&req.body, self.b2b.caller_remote.as_deref()) =>
            {
                if self.dialog.accept_remote_cseq(req).is_err() {
                    return false;
                }
                self.relay_offer(Side::Caller, req, peer, now);
                true
            }
            // The same offer again (a refresh): the session as it stands.
            Method::Update if self.dialog.matches(req) && is_sdp(&req.body) => {
                if self.dialog.accept_remote_cseq(req).is_err() {
                    return false;
                }
                let mut resp = stateless_response(req, 200, "OK", &self.s.user_agent);
                resp.headers
                    .push(header::CONTACT, format!("<{}>", self.contact()));
                if let Ok(t) = session_timer::negotiate(req, self.s.min_se) {
                    self.start_session_timer(t, now);
                    self.add_timer_headers(&mut resp);
                }
                resp.headers.push(header::CONTENT_TYPE, "application/sdp");
                resp.body = self.b2b.caller_sdp.clone().unwrap_or_default().into_bytes();
                self.respond(req, peer, resp, now);
                true
            }
            _ => false,
        }
    }

    /// The caller hung up while a queue leg exists: end it too. True when
    /// bridging was under way (the call is then finished here).
    pub(in crate::call) fn caller_left_bridge(&mut self, now: Instant) -> bool {
        if !self.bridging() {
            return false;
        }
        if let Some(i) = self.b2b.legs.len().checked_sub(1) {
            let leg = &mut self.b2b.legs[i];
            if leg.dialog.is_some() && leg.ack.is_none() {
                // Bridging: the queue's 2xx is not ACKed yet; ACK before the BYE.
                let cseq = leg.invite.cseq().map_or(1, |c| c.seq);
                let via = self.s.via(Transport::Udp);
                let contact = self.s.contact_uri(Transport::Udp);
                if let Some(d) = &mut leg.dialog {
                    let ack = d.ack(cseq, &via, &contact);
                    let dest = leg.dest;
                    self.out
                        .push(Output::sip(Transport::Udp, dest, ack.to_bytes(), dest));
                }
            }
            tracing::info!(call_id = %self.dialog.call_id, "B2BUA: the caller hung up; BYE to the queue");
            self.bye_queue(i, now);
        }
        self.b2b.reinvite = None;
        if self.record.outcome == Outcome::Pending {
            self.record.outcome = Outcome::CallerHangup;
        }
        self.client.abandon();
        self.finish(now);
        true
    }
}
