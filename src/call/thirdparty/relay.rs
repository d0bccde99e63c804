//! Offers relayed between the legs while bridged (RFC 3725 §4-§5: the
//! controller is a B2BUA, so a media change on one leg becomes a media
//! change on the other). A re-INVITE or UPDATE (RFC 3311) carrying a new
//! SDP offer from one leg is sent on, as our request, to the other leg; the
//! far leg's answer comes back in our 2xx to the near one. A refusal on the
//! far leg is returned to the near one with the same status (RFC 3261 §14.1:
//! `491` makes the near side retry later, `500` keeps its `Retry-After`),
//! and the session stays as it was on both legs. Only a far leg that is
//! gone (`481`, `408`, no answer at all) ends the call. The far leg's 18x
//! to a relayed re-INVITE is passed to the near leg (status and reason).
//!
//! Which SDP each side sees: the queue sees the caller's session
//! descriptions unchanged (its `o=` is the caller's); the caller sees the
//! queue's with our `o=` and our next version, as in the set-up
//! ([`as_our_offer`]). An offer whose `o=` line equals the last one from
//! that side is a refresh (RFC 3264 §8: same version, same session) and is
//! answered with the session as it stands, without disturbing the other leg.

use std::net::SocketAddr;
use std::time::Instant;

use super::super::{stateless_response, Call, Output, Phase};
use super::{as_our_offer, branch_of, branch_of_response, is_sdp, ALLOW};
use crate::events::Outcome;
use emonav_sip::dialog::{ack_for_failure, reply_dest};
use emonav_sip::header;
use emonav_sip::message::{Method, NameAddr, Request, Response};
use emonav_sip::session_timer;
use emonav_sip::transaction::{
    Action, ClientInvite, ClientNonInvite, InviteResponse, ServerInvite,
};
use emonav_sip::transport::{Peer, Transport};

/// One of the two legs of a bridged call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Caller,
    Queue,
}

/// Our request on the far leg.
#[derive(Debug)]
enum FarTx {
    Invite(ClientInvite),
    Update(ClientNonInvite),
}

/// An offer from the `from` leg, on its way to the other one and back.
#[derive(Debug)]
pub(super) struct Relayed {
    from: Side,
    /// The near leg's request, to answer it.
    near: Request,
    near_peer: Peer,
    near_dest: SocketAddr,
    /// Our last response to a near re-INVITE (100, then the final), sent
    /// again on its retransmissions.
    near_last: Vec<u8>,
    /// The server transaction of our final response to a near re-INVITE
    /// (2xx retransmitted until the ACK).
    near_tx: Option<ServerInvite>,
    /// Our request on the far leg, as sent.
    far: Request,
    far_branch: String,
    far_cseq: u32,
    far_tx: FarTx,
    far_data: Vec<u8>,
    far_dest: SocketAddr,
    far_transport: Transport,
    far_connection: SocketAddr,
    /// The ACK of the far leg's 2xx once sent, for its retransmissions.
    far_ack: Option<Vec<u8>>,
    /// The far leg's final response came.
    far_done: bool,
}

impl Relayed {
    /// The next instant either transaction needs.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let far = match &self.far_tx {
            FarTx::Invite(t) => t.poll_timeout(),
            FarTx::Update(t) => t.poll_timeout(),
        };
        [far, self.near_tx.as_ref().and_then(|t| t.poll_timeout())]
            .into_iter()
            .flatten()
            .min()
    }

    /// An offer is still being negotiated: another one now is glare (`491`).
    fn busy(&self) -> bool {
        !self.far_done || self.near_tx.as_ref().is_some_and(|t| t.awaiting_ack())
    }
}

/// A session description's `o=` line: equal ones describe the same session
/// version (RFC 3264 §8).
fn origin(sdp: &[u8]) -> Option<&[u8]> {
    sdp.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| l.starts_with(b"o="))
}

/// True if `body` is an SDP offer that is not `last` again.
pub(super) fn changes_session(body: &[u8], last: Option<&str>) -> bool {
    is_sdp(body) && (last.is_none() || origin(body) != last.and_then(|l| origin(l.as_bytes())))
}

impl Call {
    /// An offer is being relayed (or its near ACK awaited).
    pub(super) fn relay_busy(&self) -> bool {
        self.b2b.relay.as_deref().is_some_and(Relayed::busy)
            || self.b2b.reinvite.as_ref().is_some_and(|r| r.ack.is_none())
    }

    /// A retransmission of the re-INVITE being relayed from `from`: our
    /// last response again. True if it was one.
    pub(super) fn relay_retransmission(&mut self, from: Side, req: &Request) -> bool {
        let Some(r) = &self.b2b.relay else {
            return false;
        };
        if r.from != from || req.method != Method::Invite || branch_of(req) != branch_of(&r.near) {
            return false;
        }
        self.out
            .push(Output::reply(r.near_peer, r.near_dest, r.near_last.clone()));
        true
    }

    /// The ACK of our final response to a relayed re-INVITE. True if it was.
    pub(super) fn relay_ack(&mut self, from: Side, req: &Request, now: Instant) -> bool {
        let Some(r) = &mut self.b2b.relay else {
            return false;
        };
        let seq = req.cseq().map(|c| c.seq);
        if r.from != from || seq != r.near.cseq().map(|c| c.seq) {
            return false;
        }
        if let Some(t) = &mut r.near_tx {
            t.on_ack(now);
        }
        true
    }

    /// A re-INVITE or UPDATE with a new offer from `from`: on to the other
    /// leg (or `491` while another offer is under way, RFC 3261 §14.2).
    pub(super) fn relay_offer(&mut self, from: Side, req: &Request, peer: Peer, now: Instant) {
        let near_dest = reply_dest(req, peer.addr);
        let queue = self
            .b2b
            .legs
            .last()
            .filter(|l| !l.ended && l.dialog.is_some());
        if !matches!(self.phase, Phase::Bridged) || self.relay_busy() || queue.is_none() {
            let resp = stateless_response(req, 491, "Request Pending", &self.s.user_agent);
            self.out
                .push(Output::reply(peer, near_dest, resp.to_bytes()));
            return;
        }
        let offer = match from {
            // The queue sees the caller's descriptions as they are.
            Side::Caller => req.body.clone(),
            Side::Queue => {
                self.mid.sdp_version += 1;
                as_our_offer(
                    &String::from_utf8_lossy(&req.body),
                    self.mid.sdp_id,
                    self.mid.sdp_version,
                    self.s.sip_addr.ip(),
                )
                .into_bytes()
            }
        };
        let method = req.method.clone();
        let (mut far, far_transport, far_dest, far_connection) = match from {
            Side::Caller => {
                let via = self.s.via(Transport::Udp);
                let contact = self.s.contact_uri(Transport::Udp);
                let Some(leg) = self.b2b.legs.last_mut() else {
                    return;
                };
                let Some(d) = &mut leg.dialog else { return };
                let far = d.request(method.clone(), &via, &contact);
                (far, Transport::Udp, leg.dest, leg.dest)
            }
            Side::Queue => {
                let transport = self.invite.transport;
                let far =
                    self.dialog
                        .request(method.clone(), &self.s.via(transport), &self.contact());
                let source = self.invite.source;
                (far, transport, self.dialog.next_hop(source), source)
            }
        };
        far.headers.push(header::ALLOW, ALLOW);
        far.headers
            .push(header::USER_AGENT, self.s.user_agent.clone());
        far.headers.push(header::CONTENT_TYPE, "application/sdp");
        far.body = offer;
        let far_data = far.to_bytes();
        self.out.push(Output::sip(
            far_transport,
            far_dest,
            far_data.clone(),
            far_connection,
        ));
        let reliable = far_transport.is_reliable();
        let far_tx = if method == Method::Invite {
            FarTx::Invite(ClientInvite::new(now, self.s.timers, reliable))
        } else {
            FarTx::Update(ClientNonInvite::new(now, self.s.timers))
        };
        let mut near_last = Vec::new();
        if method == Method::Invite {
            // The far leg may take a while (a human on a phone): stop the
            // near leg's INVITE retransmissions now (§17.2.1).
            near_last = stateless_response(req, 100, "Trying", &self.s.user_agent).to_bytes();
            self.out
                .push(Output::reply(peer, near_dest, near_last.clone()));
        }
        tracing::info!(call_id = %self.dialog.call_id, ?from, %method, "B2BUA: media change relayed to the other leg");
        self.b2b.relay = Some(Box::new(Relayed {
            from,
            near: req.clone(),
            near_peer: peer,
            near_dest,
            near_last,
            near_tx: None,
            far_branch: branch_of(&far),
            far_cseq: far.cseq().map_or(0, |c| c.seq),
            far,
            far_tx,
            far_data,
            far_dest,
            far_transport,
            far_connection,
            far_ack: None,
            far_done: false,
        }));
    }

    /// A response from leg `side` to our relayed request. True if it was one.
    pub(super) fn relay_response(&mut self, side: Side, resp: &Response, now: Instant) -> bool {
        let Some(r) = &mut self.b2b.relay else {
            return false;
        };
        let Some(cseq) = resp.cseq() else {
            return false;
        };
        if r.from == side || cseq.seq != r.far_cseq || cseq.method != r.far.method {
            return false;
        }
        let code = resp.code;
        if (200..300).contains(&code) && r.far_ack.is_some() {
            let ack = r.far_ack.clone().unwrap_or_default();
            let (t, d, c) = (r.far_transport, r.far_dest, r.far_connection);
            self.out.push(Output::sip(t, d, ack, c));
            return true;
        }
        if branch_of_response(resp) != r.far_branch {
            return true;
        }
        let mut provisional = false;
        let final_response = match &mut r.far_tx {
            FarTx::Invite(tx) => match tx.on_response(code, now) {
                InviteResponse::Absorb => false,
                InviteResponse::PassUp if code < 200 => {
                    // 100 is hop-by-hop (ours went at once); 18x tell the
                    // near side the far one is working on it.
                    provisional = code > 100;
                    false
                }
                InviteResponse::PassUp => true,
                InviteResponse::ResendAck | InviteResponse::AckAndPassUp => {
                    let ack = ack_for_failure(&r.far, resp).to_bytes();
                    let (t, d, c) = (r.far_transport, r.far_dest, r.far_connection);
                    self.out.push(Output::sip(t, d, ack, c));
                    code >= 200 && !r.far_done
                }
            },
            FarTx::Update(tx) => tx.on_response(code, now) && code >= 200,
        };
        if final_response {
            self.far_final(side, resp, now);
        } else if provisional {
            self.near_provisional(resp);
        }
        true
    }

    /// The far leg's 18x to our re-INVITE, passed to the near leg's
    /// re-INVITE with its status and reason (RFC 3261 §16.7 step 5 for a
    /// proxy; a B2BUA does so to keep the near side informed), without its
    /// body: the media is the near leg's session until the final answer.
    /// Also what the near side's retransmissions get from then on.
    fn near_provisional(&mut self, resp: &Response) {
        let ua = self.s.user_agent.clone();
        let Some(r) = &mut self.b2b.relay else {
            return;
        };
        if r.near.method != Method::Invite || r.near_tx.is_some() {
            return;
        }
        let ours = stateless_response(&r.near, resp.code, &resp.reason, &ua).to_bytes();
        r.near_last = ours.clone();
        let (peer, dest) = (r.near_peer, r.near_dest);
        self.out.push(Output::reply(peer, dest, ours));
    }

    /// The far leg's final response: ACK a 2xx to its re-INVITE, then its
    /// answer (or its refusal) to the near leg.
    fn far_final(&mut self, side: Side, resp: &Response, now: Instant) {
        let via = self.s.via(Transport::Udp);
        let Some(r) = &mut self.b2b.relay else {
            return;
        };
        r.far_done = true;
        let code = resp.code;
        let ok = (200..300).contains(&code);
        if ok && r.far.method == Method::Invite {
            let ack = match side {
                Side::Queue => self.b2b.legs.last_mut().and_then(|l| {
                    let contact = self.s.contact_uri(Transport::Udp);
                    l.dialog.as_mut().map(|d| d.ack(r.far_cseq, &via, &contact))
                }),
                Side::Caller => {
                    let transport = r.far_transport;
                    Some(self.dialog.ack(
                        r.far_cseq,
                        &self.s.via(transport),
                        &self.s.contact_uri(transport),
                    ))
                }
            };
            if let Some(ack) = ack {
                let data = ack.to_bytes();
                r.far_ack = Some(data.clone());
                self.out.push(Output::sip(
                    r.far_transport,
                    r.far_dest,
                    data,
                    r.far_connection,
                ));
            }
        }
        if ok {
            // §12.2.1.2: a target refresh.
            if let Some(c) = resp
                .headers
                .get(header::CONTACT)
                .and_then(|c| NameAddr::parse(c).ok())
            {
                match side {
                    Side::Caller => self.dialog.remote_target = c.uri,
                    Side::Queue => {
                        if let Some(d) = self.b2b.legs.last_mut().and_then(|l| l.dialog.as_mut()) {
                            d.remote_target = c.uri;
                        }
                    }
                }
            }
        }
        if ok && !is_sdp(&resp.body) {
            // A 2xx without the answer: the far leg's session is unchanged
            // as far as we can tell; the near one must not believe otherwise.
            return self.answer_near(
                500,
                "Server Internal Error (no answer on the other leg)",
                &[],
                None,
                now,
            );
        }
        if ok {
            let answer = match side {
                Side::Queue => {
                    self.mid.sdp_version += 1;
                    let ours = as_our_offer(
                        &String::from_utf8_lossy(&resp.body),
                        self.mid.sdp_id,
                        self.mid.sdp_version,
                        self.s.sip_addr.ip(),
                    );
                    self.b2b.caller_sdp = Some(ours.clone());
                    let near = self.b2b.relay.as_ref().map(|r| &r.near.body);
                    self.b2b.caller_remote = near.map(|b| String::from_utf8_lossy(b).into_owned());
                    self.b2b.queue_remote = Some(String::from_utf8_lossy(&resp.body).into_owned());
                    ours
                }
                Side::Caller => {
                    let answer = String::from_utf8_lossy(&resp.body).into_owned();
                    let near = self.b2b.relay.as_ref().map(|r| &r.near.body);
                    self.b2b.queue_remote = near.map(|b| String::from_utf8_lossy(b).into_owned());
                    self.b2b.caller_sdp = self
                        .b2b
                        .relay
                        .as_ref()
                        .map(|r| String::from_utf8_lossy(&r.far.body).into_owned());
                    self.b2b.caller_remote = Some(answer.clone());
                    answer
                }
            };
            return self.answer_near(code, "OK", &[], Some(answer), now);
        }
        // The far leg refused: the near one hears the same, its session kept.
        let retry = resp
            .headers
            .get(header::RETRY_AFTER)
            .map(|v| (header::RETRY_AFTER, v.to_string()));
        let reason = resp.reason.clone();
        self.answer_near(code, &reason, retry.as_slice(), None, now);
        if matches!(code, 408 | 481) {
            // §14.1: the far dialog is gone; so is the call.
            tracing::warn!(call_id = %self.dialog.call_id, code, "B2BUA: the other leg is gone; ending both");
            self.end_both(now);
        }
    }

    /// Our final response to the near leg's request.
    fn answer_near(
        &mut self,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
        sdp: Option<String>,
        now: Instant,
    ) {
        let Some(r) = &self.b2b.relay else { return };
        let (near, peer, dest, from) = (r.near.clone(), r.near_peer, r.near_dest, r.from);
        let mut resp = stateless_response(&near, code, reason, &self.s.user_agent);
        for (name, value) in extra {
            resp.headers.push(name, value.clone());
        }
        if (200..300).contains(&code) {
            let contact = match from {
                Side::Caller => self.contact(),
                Side::Queue => self.s.contact_uri(Transport::Udp),
            };
            resp.headers.push(header::CONTACT, format!("<{contact}>"));
            if from == Side::Caller {
                // A re-INVITE or UPDATE with Session-Expires refreshes the
                // caller's session too (RFC 4028 §9).
                if let Ok(t) = session_timer::negotiate(&near, self.s.min_se) {
                    self.start_session_timer(t, now);
                    self.add_timer_headers(&mut resp);
                }
            }
        }
        if let Some(sdp) = sdp {
            resp.headers.push(header::CONTENT_TYPE, "application/sdp");
            resp.body = sdp.into_bytes();
        }
        if near.method != Method::Invite {
            return self.respond(&near, peer, resp, now);
        }
        let data = resp.to_bytes();
        self.out.push(Output::reply(peer, dest, data.clone()));
        let mut tx = ServerInvite::new(self.s.timers);
        tx.on_final_sent(code, now);
        if let Some(r) = &mut self.b2b.relay {
            r.near_last = data;
            r.near_tx = Some(tx);
        }
    }

    /// BYE on both legs: the bridge cannot go on.
    fn end_both(&mut self, now: Instant) {
        if let Some(i) = self.b2b.legs.len().checked_sub(1) {
            self.bye_queue(i, now);
        }
        if matches!(self.phase, Phase::Bridged) {
            self.hang_up(Outcome::Bridged, now);
        }
    }

    /// Timers of a relayed offer.
    pub(super) fn relay_timeout(&mut self, now: Instant) {
        let Some(r) = &mut self.b2b.relay else { return };
        let action = match &mut r.far_tx {
            FarTx::Invite(t) => t.on_timeout(now),
            FarTx::Update(t) => t.on_timeout(now),
        };
        match action {
            Action::Retransmit => {
                let (t, d, c) = (r.far_transport, r.far_dest, r.far_connection);
                self.out.push(Output::sip(t, d, r.far_data.clone(), c));
            }
            Action::TimedOut if !r.far_done => {
                r.far_done = true;
                self.answer_near(
                    408,
                    "Request Timeout (no answer on the other leg)",
                    &[],
                    None,
                    now,
                );
                self.end_both(now);
                return;
            }
            _ => {}
        }
        let Some(r) = &mut self.b2b.relay else { return };
        if let Some(t) = &mut r.near_tx {
            if t.on_timeout(now) == Action::Retransmit {
                self.out
                    .push(Output::reply(r.near_peer, r.near_dest, r.near_last.clone()));
            }
        }
        if !r.busy() && r.poll_timeout().is_none() {
            self.b2b.relay = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_with_the_last_origin_is_a_refresh() {
        let last = "v=0\r\no=x 1 2 IN IP4 192.0.2.1\r\ns=-\r\n";
        assert!(!changes_session(
            b"v=0\r\no=x 1 2 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n",
            Some(last)
        ));
        assert!(changes_session(
            b"v=0\r\no=x 1 3 IN IP4 192.0.2.1\r\ns=-\r\n",
            Some(last)
        ));
        assert!(changes_session(b"v=0\no=x 1 2 IN IP4 192.0.2.1\n", None));
        assert!(!changes_session(b"", Some(last)), "no offer, no change");
    }
}
