//! Third-party call control (RFC 3725): when REFER cannot pass, emonav
//! connects the caller to the queue itself and stays in the signalling path
//! as a B2BUA until either side hangs up.
//!
//! Flow III of RFC 3725 §4.3, with the caller's leg already up (we answered
//! it to listen):
//!
//! 1. INVITE without SDP to the queue (through `[transfer] outbound_proxy`;
//!    a digest challenge is answered once, RFC 3261 §22.2): the queue's 2xx
//!    carries its offer;
//! 2. re-INVITE to the caller with that offer (our `o=` line, next version:
//!    to the caller the session is still ours, RFC 3264 §8);
//! 3. the caller's 2xx carries its answer: ACK to the caller, and the ACK of
//!    the queue's 2xx carries that answer (RFC 3261 §13.2.2.4).
//!
//! Why flow III: flow I would send the caller's *old* answer as an offer to
//! the queue, which a UA answering a fresh INVITE need not accept; flows II
//! and IV add a black-hole round trip. In flow III the only thing the caller
//! notices is the re-INVITE: until its 2xx our silence keepalive holds the
//! line, after it the queue's media flows. RFC 3725 §5's warning (the ACK to
//! the queue waits for the caller's answer) costs one round trip to the
//! caller, well inside the queue's 64·T1 wait for its ACK.
//!
//! Failures (RFC 3725 §7 leaves policy to the controller): a queue that
//! refuses (486, 480, 404, 503…), does not answer within
//! `queue_answer_timeout_ms` (CANCEL, RFC 3261 §9.1) or never responds
//! (Timer B) is followed by the default queue; when no queue can be reached
//! the caller hears a congestion tone ([`failure`]), then our BYE carries
//! `Reason: SIP ;cause=…` (RFC 3326) naming why.
//!
//! Media relay (`[transfer] media`, [`media`]): a caller that refuses the
//! re-INVITE (any failure but `481`), never answers it, or answers without
//! SDP is not hung up on with `auto` (the default): emonav answers the
//! queue's offer in step 3 with a second RTP port of its own and relays the
//! RTP between the legs. With `relay` step 2 is skipped altogether; with
//! `direct` the refusal ends the call with the tone, as does a relay that
//! cannot be set up (no codec in common, an SRTP caller leg, no free port).
//! While relayed, re-offers from either leg are answered with the session
//! as it stands rather than passed on ([`relay`] passes them on when the
//! media flows directly).
//!
//! Bridged: a BYE from either side is answered 200 and relayed as our BYE
//! to the other leg. The queue leg has its own Call-ID (§8.1.1.4: a new
//! request outside a dialog has a new one); the edge routes it here
//! ([`Output::Alias`]). The queue leg always runs over UDP.

mod bridged;
mod failure;
mod media;
mod relay;
mod session;

use std::net::SocketAddr;
use std::time::Instant;

use super::transfer::decision_headers;
use super::{Call, Output, Phase, ALLOW};
use crate::events::{BridgeAttempt, Outcome};
use emonav_sip::dialog::{ack_for_failure, cancel_for, uri_socket_addr, Dialog};
use emonav_sip::digest::{self, Authenticator};
use emonav_sip::header;
use emonav_sip::message::{CSeq, Headers, Method, NameAddr, Request, Response, Uri};
use emonav_sip::transaction::{
    Action, ClientInvite, ClientNonInvite, InviteResponse, ServerInvite,
};
use emonav_sip::transport::{Peer, Transport};

pub use media::RelaySide;

/// A non-INVITE request of ours on a queue leg (BYE, CANCEL).
#[derive(Debug)]
pub(super) struct LegRequest {
    tx: ClientNonInvite,
    data: Vec<u8>,
    dest: SocketAddr,
}

/// Our INVITE to one queue, and the dialog its 2xx made.
#[derive(Debug)]
struct QueueLeg {
    call_id: String,
    /// The INVITE as last sent (re-sent with credentials, CANCELled).
    invite: Request,
    branch: String,
    tx: ClientInvite,
    data: Vec<u8>,
    dest: SocketAddr,
    authenticated: bool,
    /// When we stop waiting for an answer (CANCEL).
    answer_by: Instant,
    /// We gave up on it: a late 2xx gets ACK and BYE.
    abandoned: bool,
    dialog: Option<Dialog>,
    /// The ACK of its 2xx once sent, for the 2xx's retransmissions.
    ack: Option<Vec<u8>>,
    /// Our BYE or CANCEL in progress.
    request: Option<LegRequest>,
    /// Over: it hung up, or our BYE was answered.
    ended: bool,
    /// Our INVITE was sent again after a `422` (RFC 4028 §6).
    session_retried: bool,
}

/// Our re-INVITE to the caller with the queue's SDP.
#[derive(Debug)]
struct CallerReInvite {
    branch: String,
    cseq: u32,
    tx: ClientInvite,
    data: Vec<u8>,
    dest: SocketAddr,
    request: Request,
    /// The ACK of its 2xx once sent.
    ack: Option<Vec<u8>>,
}

/// A re-INVITE from the caller while bridged (a session refresh, usually),
/// answered with the session as it is.
#[derive(Debug)]
struct BridgedReInvite {
    tx: ServerInvite,
    cseq: u32,
    peer: Peer,
    dest: SocketAddr,
    response: Vec<u8>,
}

/// The third-party call control state of a call. Its larger parts are
/// boxed: most calls are transferred by REFER and never set them up, and
/// inline they were a fifth of every call's task (2 KiB of 11).
#[derive(Debug, Default)]
pub(super) struct ThirdParty {
    /// Every queue leg tried, the current one last.
    legs: Vec<QueueLeg>,
    reinvite: Option<Box<CallerReInvite>>,
    /// The SDP the caller last got from us (the queue's, our `o=`).
    caller_sdp: Option<String>,
    answered: Option<Box<BridgedReInvite>>,
    /// No queue took the call: the failure tone plays until the BYE.
    failing: Option<failure::Failing>,
    /// A media change on its way from one leg to the other.
    relay: Option<Box<relay::Relayed>>,
    /// The caller's last session description (the queue has it as is).
    caller_remote: Option<String>,
    /// The queue's last session description (the caller has it with our `o=`).
    queue_remote: Option<String>,
    /// The queue leg's session timer (RFC 4028).
    queue_timer: Option<Box<session::QueueTimer>>,
    /// The media relay, when the media goes through emonav.
    media: Option<Box<media::MediaRelay>>,
}

impl ThirdParty {
    /// Whether any of the state was ever set up (its boxes allocated).
    #[cfg(test)]
    pub(super) fn is_used(&self) -> bool {
        !self.legs.is_empty()
            || self.reinvite.is_some()
            || self.answered.is_some()
            || self.failing.is_some()
            || self.relay.is_some()
            || self.queue_timer.is_some()
            || self.media.is_some()
    }

    /// The next instant a queue leg or our re-INVITE needs.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let legs = self.legs.iter().flat_map(|l| {
            let waiting = (!l.abandoned && l.tx.awaiting_final()).then_some(l.answer_by);
            [
                l.tx.poll_timeout(),
                waiting,
                l.request.as_ref().and_then(|r| r.tx.poll_timeout()),
            ]
        });
        legs.chain([
            self.reinvite.as_ref().and_then(|r| r.tx.poll_timeout()),
            self.answered.as_ref().and_then(|a| a.tx.poll_timeout()),
            self.failing.as_ref().map(|f| f.until),
            self.relay.as_deref().and_then(relay::Relayed::poll_timeout),
            self.queue_timer
                .as_deref()
                .and_then(session::QueueTimer::poll_timeout),
        ])
        .flatten()
        .min()
    }
}

/// The queue's SDP as our offer to the caller: its `o=` line replaced by
/// ours with `version` (RFC 3264 §8: the caller's session is with us).
fn as_our_offer(sdp: &str, id: u64, version: u64, ip: std::net::IpAddr) -> String {
    let family = if ip.is_ipv6() { "IP6" } else { "IP4" };
    let mut out = String::with_capacity(sdp.len() + 16);
    for line in sdp.lines() {
        if line.starts_with("o=") {
            out.push_str(&format!("o=emonav {id} {version} IN {family} {ip}"));
        } else {
            out.push_str(line.trim_end_matches('\r'));
        }
        out.push_str("\r\n");
    }
    out
}

fn is_sdp(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|b| b.trim_start().starts_with("v=0"))
}

fn branch_of(req: &Request) -> String {
    req.top_via()
        .and_then(|v| v.branch().map(str::to_owned))
        .unwrap_or_default()
}

impl Call {
    /// True while a queue leg is being set up or is bridged.
    pub(super) fn bridging(&self) -> bool {
        matches!(self.phase, Phase::Bridging | Phase::Bridged)
    }

    /// Call `target` and connect the caller to it (RFC 3725 flow III).
    pub(super) fn bridge(&mut self, target: &str, now: Instant) {
        self.phase = Phase::Bridging;
        self.record.bridge_attempts.push(BridgeAttempt {
            target: target.to_string(),
            response: None,
            caller_reinvite: None,
        });
        let uri = match Uri::parse(target) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(call_id = %self.dialog.call_id, %target, error = %e, "queue URI unusable");
                return self.bridge_attempt_failed(None, "queue URI unusable", now);
            }
        };
        let call_id = format!("{:016x}-b2b@emonav", fastrand::u64(..));
        let tag = format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff);
        let mut headers = Headers::default();
        headers.push(header::VIA, self.s.via(Transport::Udp).to_string());
        headers.push(header::MAX_FORWARDS, "70");
        let proxy = self.s.outbound_proxy.clone();
        if let Some((p, _)) = &proxy {
            let mut route = p.clone();
            route.params.set("lr", None);
            headers.push(header::ROUTE, format!("<{route}>"));
        }
        // The agent sees who calls: the caller's identity, our tag.
        let mut from = self.dialog.remote.clone();
        from.params.set("tag", Some(&tag));
        headers.push(header::FROM, from.to_string());
        headers.push(header::TO, format!("<{uri}>"));
        headers.push(header::CALL_ID, call_id.clone());
        headers.push(
            header::CSEQ,
            CSeq {
                seq: 1,
                method: Method::Invite,
            }
            .to_string(),
        );
        headers.push(
            header::CONTACT,
            format!("<{}>", self.s.contact_uri(Transport::Udp)),
        );
        headers.push(header::ALLOW, ALLOW);
        headers.push(header::USER_AGENT, self.s.user_agent.clone());
        if let Some(d) = self.decider.decision() {
            for (name, value) in decision_headers(d) {
                headers.push(name, value);
            }
        }
        let mut invite = Request {
            method: Method::Invite,
            uri: uri.clone(),
            headers,
            body: Vec::new(),
        };
        self.add_queue_timer_headers(&mut invite, self.queue_session_interval());
        // No DNS in the core: the proxy, an IP-literal queue, or the
        // caller's previous hop (the PBX or SBC that can route a tel: URI).
        let dest = proxy
            .map(|(_, a)| a)
            .or_else(|| uri_socket_addr(&uri))
            .unwrap_or(self.invite.source);
        tracing::info!(call_id = %self.dialog.call_id, queue_call_id = %call_id, %target, %dest, "B2BUA: calling the queue (RFC 3725)");
        self.out.push(Output::Alias(call_id.clone()));
        let data = invite.to_bytes();
        self.out
            .push(Output::sip(Transport::Udp, dest, data.clone(), dest));
        self.b2b.legs.push(QueueLeg {
            call_id,
            branch: branch_of(&invite),
            invite,
            tx: ClientInvite::new(now, self.s.timers, false),
            data,
            dest,
            authenticated: false,
            answer_by: now + self.s.queue_answer_timeout,
            abandoned: false,
            dialog: None,
            ack: None,
            request: None,
            ended: false,
            session_retried: false,
        });
    }

    /// The current attempt failed: the default queue next, or the end.
    fn bridge_attempt_failed(&mut self, code: Option<u16>, cause: &str, now: Instant) {
        if let Some(a) = self.record.bridge_attempts.last_mut() {
            a.response = a.response.or(code);
        }
        tracing::warn!(call_id = %self.dialog.call_id, ?code, %cause, "B2BUA attempt failed");
        if self.transfer.caller_hung_up || !matches!(self.phase, Phase::Bridging) {
            return;
        }
        let default = self.s.policy.default_queue.clone();
        if !self
            .record
            .bridge_attempts
            .iter()
            .any(|a| a.target == default)
        {
            return self.bridge(&default, now);
        }
        self.record.failure_cause = Some(format!("b2bua: {cause}"));
        let code = code.filter(|c| *c >= 300).unwrap_or(480);
        self.fail_with_tone(
            format!("SIP ;cause={code} ;text=\"no queue reachable: {cause}\""),
            now,
        );
    }

    /// A message whose Call-ID is one of our queue legs'. True if it was.
    pub(super) fn queue_leg_response(&mut self, resp: &Response, now: Instant) -> bool {
        let Some(call_id) = resp.call_id().map(str::to_owned) else {
            return false;
        };
        if call_id == self.dialog.call_id {
            return self.relay_response(relay::Side::Caller, resp, now)
                || self.caller_reinvite_response(resp, now);
        }
        if self.b2b.legs.last().is_some_and(|l| l.call_id == call_id)
            && self.relay_response(relay::Side::Queue, resp, now)
        {
            return true;
        }
        let current = self.b2b.legs.len().checked_sub(1);
        let Some(i) = self.b2b.legs.iter().position(|l| l.call_id == call_id) else {
            return false;
        };
        let Some(cseq) = resp.cseq() else { return true };
        if Some(i) == current && self.queue_refresh_response(resp, now) {
            return true;
        }
        let leg = &mut self.b2b.legs[i];
        match cseq.method {
            Method::Invite if cseq.seq == leg.invite.cseq().map_or(0, |c| c.seq) => {}
            Method::Bye | Method::Cancel => {
                let done = leg
                    .request
                    .as_mut()
                    .is_some_and(|r| r.tx.on_response(resp.code, now) && resp.code >= 200);
                if done && cseq.method == Method::Bye {
                    leg.ended = true;
                    leg.request = None;
                }
                return true;
            }
            _ => return true,
        }
        let code = resp.code;
        if (200..300).contains(&code) && leg.dialog.is_some() {
            // A retransmitted 2xx: our ACK was lost (or is still to come).
            if let Some(ack) = leg.ack.clone() {
                let dest = leg.dest;
                self.out.push(Output::sip(Transport::Udp, dest, ack, dest));
            }
            return true;
        }
        if branch_of_response(resp) != leg.branch {
            return true;
        }
        match leg.tx.on_response(code, now) {
            InviteResponse::Absorb => {}
            InviteResponse::PassUp if code < 200 => {
                tracing::debug!(queue_call_id = %call_id, code, "queue progress");
            }
            InviteResponse::PassUp => {
                let abandoned = leg.abandoned || Some(i) != current;
                self.queue_answered(i, resp, abandoned, now);
            }
            InviteResponse::ResendAck => {
                let ack = ack_for_failure(&leg.invite, resp).to_bytes();
                let dest = leg.dest;
                self.out.push(Output::sip(Transport::Udp, dest, ack, dest));
            }
            InviteResponse::AckAndPassUp => {
                let ack = ack_for_failure(&leg.invite, resp).to_bytes();
                let dest = leg.dest;
                self.out.push(Output::sip(Transport::Udp, dest, ack, dest));
                leg.ended = true;
                if leg.abandoned || Some(i) != current {
                    return true;
                }
                if matches!(code, 401 | 407) && self.queue_auth(i, resp, now) {
                    return true;
                }
                if code == 422 && self.queue_session_too_small(i, resp, now) {
                    return true;
                }
                self.bridge_attempt_failed(Some(code), &format!("queue answered {code}"), now);
            }
        }
        true
    }

    /// Re-send our INVITE to the queue with credentials (RFC 3261 §22.2).
    fn queue_auth(&mut self, i: usize, resp: &Response, now: Instant) -> bool {
        let leg = &self.b2b.legs[i];
        if leg.authenticated {
            return false;
        }
        let Ok((kind, challenge)) = digest::response_challenge(resp) else {
            return false;
        };
        let Some(cred) = self.s.credentials.iter().find(|c| {
            c.realm
                .as_deref()
                .is_none_or(|r| r.eq_ignore_ascii_case(&challenge.realm))
        }) else {
            tracing::warn!(realm = %challenge.realm, "queue INVITE challenged, no credentials for the realm");
            return false;
        };
        let mut req = leg.invite.clone();
        let uri = req.uri.to_string();
        let value = Authenticator::new(kind, challenge).authorization(
            &cred.username,
            cred.password.expose(),
            "INVITE",
            &uri,
            &req.body,
        );
        req.headers.set(kind.credentials_header(), value);
        self.resend_queue_invite(i, req, now);
        self.b2b.legs[i].authenticated = true;
        true
    }

    /// Our INVITE to queue `i` again, changed (§8.1.3.5: new Via branch,
    /// next CSeq), with a new client transaction.
    fn resend_queue_invite(&mut self, i: usize, mut req: Request, now: Instant) {
        let seq = req.cseq().map_or(1, |c| c.seq) + 1;
        req.headers
            .set(header::VIA, self.s.via(Transport::Udp).to_string());
        req.headers.set(
            header::CSEQ,
            CSeq {
                seq,
                method: Method::Invite,
            }
            .to_string(),
        );
        let data = req.to_bytes();
        let leg = &mut self.b2b.legs[i];
        self.out.push(Output::sip(
            Transport::Udp,
            leg.dest,
            data.clone(),
            leg.dest,
        ));
        leg.branch = branch_of(&req);
        leg.invite = req;
        leg.data = data;
        leg.tx = ClientInvite::new(now, self.s.timers, false);
        leg.ended = false;
    }

    /// The queue's 2xx: the dialog, then the caller's re-INVITE with its offer.
    fn queue_answered(&mut self, i: usize, resp: &Response, abandoned: bool, now: Instant) {
        let leg = &mut self.b2b.legs[i];
        let mut dialog = match Dialog::from_2xx(&leg.invite, resp) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(queue_call_id = %leg.call_id, error = %e, "unusable 2xx from the queue");
                leg.ended = true;
                if !abandoned {
                    self.bridge_attempt_failed(Some(resp.code), "unusable 2xx from the queue", now);
                }
                return;
            }
        };
        if let Some(a) = self
            .record
            .bridge_attempts
            .last_mut()
            .filter(|_| !abandoned)
        {
            a.response = Some(resp.code);
        }
        let offer = is_sdp(&resp.body).then(|| String::from_utf8_lossy(&resp.body).into_owned());
        let leg = &mut self.b2b.legs[i];
        let dest = dialog.next_hop(leg.dest);
        leg.dest = dest;
        let (Some(offer), false) = (offer, abandoned) else {
            // Given up on, or no offer to pass on: ACK (§13.2.2.4 says a 2xx
            // is always ACKed) and BYE.
            let ack = dialog.ack(
                leg.invite.cseq().map_or(1, |c| c.seq),
                &self.s.via(Transport::Udp),
                &self.s.contact_uri(Transport::Udp),
            );
            self.out
                .push(Output::sip(Transport::Udp, dest, ack.to_bytes(), dest));
            leg.dialog = Some(dialog);
            self.bye_queue(i, now);
            if !abandoned {
                self.bridge_attempt_failed(Some(488), "queue answered without SDP", now);
            }
            return;
        };
        leg.dialog = Some(dialog);
        self.b2b.queue_remote = Some(offer.clone());
        self.queue_session_refreshed(&resp.headers, now);
        if self.s.bridge_media == crate::config::BridgeMedia::Relay {
            self.relay_media(now);
        } else {
            self.reinvite_caller(&offer, now);
        }
    }

    /// Step 2 of flow III: the caller gets the queue's offer.
    fn reinvite_caller(&mut self, queue_sdp: &str, now: Instant) {
        self.mid.sdp_version += 1;
        let body = as_our_offer(
            queue_sdp,
            self.mid.sdp_id,
            self.mid.sdp_version,
            self.s.sip_addr.ip(),
        );
        let transport = self.invite.transport;
        let mut req = self
            .dialog
            .request(Method::Invite, &self.s.via(transport), &self.contact());
        req.headers.push(header::ALLOW, ALLOW);
        req.headers
            .push(header::USER_AGENT, self.s.user_agent.clone());
        req.headers.push(header::CONTENT_TYPE, "application/sdp");
        req.body = body.clone().into_bytes();
        let source = self.invite.source;
        let dest = self.dialog.next_hop(source);
        let data = req.to_bytes();
        self.out
            .push(Output::sip(transport, dest, data.clone(), source));
        tracing::info!(call_id = %self.dialog.call_id, "B2BUA: re-INVITE to the caller with the queue's SDP");
        self.b2b.caller_sdp = Some(body);
        self.b2b.reinvite = Some(Box::new(CallerReInvite {
            branch: branch_of(&req),
            cseq: self.dialog.local_cseq,
            tx: ClientInvite::new(now, self.s.timers, transport.is_reliable()),
            data,
            dest,
            request: req,
            ack: None,
        }));
    }

    /// A response to our re-INVITE of the caller. True if it was one.
    fn caller_reinvite_response(&mut self, resp: &Response, now: Instant) -> bool {
        let Some(r) = &mut self.b2b.reinvite else {
            return false;
        };
        let Some(cseq) = resp.cseq() else {
            return false;
        };
        if cseq.method != Method::Invite || cseq.seq != r.cseq {
            return false;
        }
        let (transport, source) = (self.invite.transport, self.invite.source);
        let code = resp.code;
        if (200..300).contains(&code) && r.ack.is_some() {
            let (dest, ack) = (r.dest, r.ack.clone().unwrap_or_default());
            self.out.push(Output::sip(transport, dest, ack, source));
            return true;
        }
        if branch_of_response(resp) != r.branch {
            return true;
        }
        match r.tx.on_response(code, now) {
            InviteResponse::Absorb => {}
            InviteResponse::PassUp if code < 200 => {}
            InviteResponse::PassUp => {
                let ack = self.dialog.ack(
                    r.cseq,
                    &self.s.via(transport),
                    &self.s.contact_uri(transport),
                );
                let data = ack.to_bytes();
                let dest = r.dest;
                r.ack = Some(data.clone());
                self.out.push(Output::sip(transport, dest, data, source));
                if let Some(a) = self.record.bridge_attempts.last_mut() {
                    a.caller_reinvite = Some(code);
                }
                if let Some(c) = resp
                    .headers
                    .get(header::CONTACT)
                    .and_then(|c| NameAddr::parse(c).ok())
                {
                    self.dialog.remote_target = c.uri;
                }
                if is_sdp(&resp.body) {
                    self.bridged(resp.body.clone(), now);
                } else {
                    self.caller_refused(Some(488), "caller's 2xx has no SDP answer", now);
                }
            }
            InviteResponse::ResendAck => {
                let ack = ack_for_failure(&r.request, resp).to_bytes();
                let dest = r.dest;
                self.out.push(Output::sip(transport, dest, ack, source));
            }
            InviteResponse::AckAndPassUp => {
                let ack = ack_for_failure(&r.request, resp).to_bytes();
                let dest = r.dest;
                self.out.push(Output::sip(transport, dest, ack, source));
                if let Some(a) = self.record.bridge_attempts.last_mut() {
                    a.caller_reinvite = Some(code);
                }
                self.caller_refused(
                    Some(code),
                    &format!("caller refused the re-INVITE ({code})"),
                    now,
                );
            }
        }
        true
    }

    /// Step 3: the caller's answer goes in the queue's ACK. Bridged.
    fn bridged(&mut self, answer: Vec<u8>, now: Instant) {
        let Some(leg) = self.b2b.legs.last_mut() else {
            return;
        };
        if leg.ended {
            // The queue hung up meanwhile.
            return self.hang_up(Outcome::Failed, now);
        }
        let Some(d) = &mut leg.dialog else { return };
        let mut ack = d.ack(
            leg.invite.cseq().map_or(1, |c| c.seq),
            &self.s.via(Transport::Udp),
            &self.s.contact_uri(Transport::Udp),
        );
        ack.headers.push(header::CONTENT_TYPE, "application/sdp");
        self.b2b.caller_remote = Some(String::from_utf8_lossy(&answer).into_owned());
        ack.body = answer;
        let data = ack.to_bytes();
        leg.ack = Some(data.clone());
        let dest = leg.dest;
        self.out.push(Output::sip(Transport::Udp, dest, data, dest));
        self.phase = Phase::Bridged;
        self.record.outcome = Outcome::Bridged;
        self.record.bridge_media = Some("direct");
        tracing::info!(call_id = %self.dialog.call_id, queue_call_id = %leg.call_id, "B2BUA: bridged, media caller <-> queue");
    }

    /// The caller would not take the queue's media: with `[transfer] media
    /// = "auto"` the media is relayed instead ([`media`]); otherwise the
    /// queue leg ends and the caller hears the failure tone.
    fn caller_refused(&mut self, code: Option<u16>, cause: &str, now: Instant) {
        tracing::warn!(call_id = %self.dialog.call_id, ?code, %cause, "B2BUA: caller refused the queue's media");
        if self.relay_instead(code) {
            return self.relay_media(now);
        }
        self.bridge_failed(code, cause, now);
    }

    /// The queue answered but the legs cannot be connected: end the queue
    /// leg (ACK its 2xx first), failure tone, BYE with the reason.
    fn bridge_failed(&mut self, code: Option<u16>, cause: &str, now: Instant) {
        if let Some(i) = self.b2b.legs.len().checked_sub(1) {
            let leg = &mut self.b2b.legs[i];
            if leg.ack.is_none() {
                if let Some(d) = &mut leg.dialog {
                    let ack = d.ack(
                        leg.invite.cseq().map_or(1, |c| c.seq),
                        &self.s.via(Transport::Udp),
                        &self.s.contact_uri(Transport::Udp),
                    );
                    let dest = leg.dest;
                    self.out
                        .push(Output::sip(Transport::Udp, dest, ack.to_bytes(), dest));
                }
            }
            self.bye_queue(i, now);
        }
        self.record.failure_cause = Some(format!("b2bua: {cause}"));
        let code = code.unwrap_or(488);
        self.fail_with_tone(format!("SIP ;cause={code} ;text=\"{cause}\""), now);
    }

    /// BYE (or, unanswered, CANCEL) on queue leg `i`.
    fn bye_queue(&mut self, i: usize, now: Instant) {
        let via = self.s.via(Transport::Udp);
        let contact = self.s.contact_uri(Transport::Udp);
        let ua = self.s.user_agent.clone();
        let leg = &mut self.b2b.legs[i];
        if leg.ended || leg.request.is_some() {
            return;
        }
        let req = if let Some(d) = &mut leg.dialog {
            let mut bye = d.request(Method::Bye, &via, &contact);
            bye.headers.push(header::USER_AGENT, ua);
            bye
        } else if leg.tx.is_proceeding() {
            cancel_for(&leg.invite)
        } else {
            // Nothing provisional yet: no CANCEL (§9.1); a late 2xx gets ACK and BYE.
            leg.abandoned = true;
            return;
        };
        leg.abandoned = true;
        let data = req.to_bytes();
        let dest = leg.dest;
        self.out
            .push(Output::sip(Transport::Udp, dest, data.clone(), dest));
        leg.request = Some(LegRequest {
            tx: ClientNonInvite::new(now, self.s.timers),
            data,
            dest,
        });
    }

    /// Timers of the queue legs and of our re-INVITE.
    pub(super) fn thirdparty_timeout(&mut self, now: Instant) {
        let current = self.b2b.legs.len().checked_sub(1);
        for i in 0..self.b2b.legs.len() {
            let leg = &mut self.b2b.legs[i];
            match leg.tx.on_timeout(now) {
                Action::Retransmit => {
                    let dest = leg.dest;
                    self.out
                        .push(Output::sip(Transport::Udp, dest, leg.data.clone(), dest));
                }
                Action::TimedOut => {
                    leg.ended = true;
                    if Some(i) == current && !leg.abandoned {
                        self.bridge_attempt_failed(Some(408), "no response from the queue", now);
                    }
                    continue;
                }
                Action::None => {}
            }
            let leg = &mut self.b2b.legs[i];
            if !leg.abandoned && leg.tx.awaiting_final() && now >= leg.answer_by {
                tracing::info!(queue_call_id = %leg.call_id, "queue did not answer in time: CANCEL");
                self.bye_queue(i, now);
                if Some(i) == current {
                    self.bridge_attempt_failed(Some(408), "queue did not answer in time", now);
                }
            }
            let leg = &mut self.b2b.legs[i];
            if let Some(r) = &mut leg.request {
                match r.tx.on_timeout(now) {
                    Action::Retransmit => {
                        let (dest, data) = (r.dest, r.data.clone());
                        self.out.push(Output::sip(Transport::Udp, dest, data, dest));
                    }
                    Action::TimedOut => leg.request = None,
                    Action::None => {}
                }
            }
        }
        let (transport, source) = (self.invite.transport, self.invite.source);
        if let Some(r) = &mut self.b2b.reinvite {
            match r.tx.on_timeout(now) {
                Action::Retransmit => {
                    let (dest, data) = (r.dest, r.data.clone());
                    self.out.push(Output::sip(transport, dest, data, source));
                }
                Action::TimedOut => {
                    self.b2b.reinvite = None;
                    self.caller_refused(Some(408), "caller did not answer the re-INVITE", now);
                }
                Action::None => {}
            }
        }
        if let Some(a) = &mut self.b2b.answered {
            if a.tx.on_timeout(now) == Action::Retransmit {
                let (peer, dest, data) = (a.peer, a.dest, a.response.clone());
                self.out.push(Output::reply(peer, dest, data));
            }
        }
        self.relay_timeout(now);
        self.queue_timer_timeout(now);
        self.failure_tone_timeout(now);
    }
}

fn branch_of_response(resp: &Response) -> String {
    resp.top_via()
        .and_then(|v| v.branch().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_offer_gets_our_origin_and_version() {
        let q = "v=0\r\no=agent 99 3 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let ours = as_our_offer(q, 7, 2, "127.0.0.1".parse().unwrap());
        assert!(
            ours.starts_with("v=0\r\no=emonav 7 2 IN IP4 127.0.0.1\r\n"),
            "{ours}"
        );
        assert!(ours.contains("c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"));
        assert!(is_sdp(q.as_bytes()) && !is_sdp(b"") && !is_sdp(b"hello"));
    }
}
