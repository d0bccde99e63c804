//! Requests while a queue leg exists (RFC 3725 §4.3 after the set-up): a
//! BYE from either leg is answered and relayed as ours to the other; the
//! caller's re-INVITE (a session refresh, RFC 4028) is answered with the
//! session as it stands. Media changes are not relayed between the legs.

use std::time::Instant;

use super::super::{stateless_response, Call, Output, Phase};
use super::BridgedReInvite;
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
        match req.method {
            Method::Ack => {}
            _ if !matches => reply(self, 481, "Call/Transaction Does Not Exist"),
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
            Method::Update if req.body.iter().all(u8::is_ascii_whitespace) => {
                reply(self, 200, "OK")
            }
            // Media changes are not relayed between the legs (yet).
            Method::Invite | Method::Update => {
                reply(self, 488, "Not Acceptable Here (not relayed)")
            }
            _ => reply(self, 501, "Not Implemented"),
        }
        true
    }

    /// While bridged, the caller's re-INVITE (a session refresh, usually)
    /// is answered with the session as it stands (the queue's SDP), and its
    /// ACK absorbed; our silence keepalive and analysis are over, so our own
    /// SDP must not be offered again. Media changes are not relayed.
    fn caller_request_while_bridged(&mut self, req: &Request, peer: Peer, now: Instant) -> bool {
        if !self.bridging() {
            return false;
        }
        match req.method {
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
                let busy = matches!(self.phase, Phase::Bridging);
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
                self.b2b.answered = Some(BridgedReInvite {
                    tx,
                    cseq: req.cseq().map_or(0, |c| c.seq),
                    peer,
                    dest,
                    response: data,
                });
                true
            }
            Method::Update
                if self.dialog.matches(req) && !req.body.iter().all(u8::is_ascii_whitespace) =>
            {
                let resp = stateless_response(
                    req,
                    488,
                    "Not Acceptable Here (not relayed)",
                    &self.s.user_agent,
                );
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
