//! The server side of the initial INVITE (RFC 3261 §13.3.1, §17.2.1): 100
//! Trying, the 200 OK with our SDP answer (RFC 3264) retransmitted until the
//! ACK (§13.3.1.4), or a final refusal; retransmitted INVITEs get the last
//! response again; CANCEL (§9.2) ends an unanswered call with 487. Responses
//! go where §18.2.2 says ([`reply_dest`]).

use std::net::SocketAddr;
use std::time::Instant;

use super::{mid_dialog, Call, Output, Phase, ACCEPT, ALLOW};
use crate::events::Outcome;
use emonav_sip::dialog::reply_dest;
use emonav_sip::header;
use emonav_sip::message::{Request, Response};
use emonav_sip::transaction::{Action, ServerInvite, Timers};
use emonav_sip::transport::{Peer, Transport};

/// The INVITE that started the call and its server transaction.
#[derive(Debug)]
pub(super) struct InviteServer {
    pub(super) request: Request,
    /// Its top Via branch: what identifies its retransmissions and CANCEL.
    branch: String,
    /// Where its responses go (§18.2.2).
    response_dest: SocketAddr,
    /// Where it came from: for TCP, the connection's remote address.
    pub(super) source: SocketAddr,
    /// Transport it came on: our requests in the dialog use it.
    pub(super) transport: Transport,
    tx: ServerInvite,
    /// Last response to it, resent on retransmissions and by Timer G.
    response: Vec<u8>,
    /// Our SDP answer, for the 200 OK.
    pub(super) answer_sdp: Option<String>,
}

impl InviteServer {
    pub(super) fn new(
        request: Request,
        source: SocketAddr,
        transport: Transport,
        timers: Timers,
    ) -> Self {
        let branch = request
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        InviteServer {
            response_dest: reply_dest(&request, source),
            request,
            branch,
            source,
            transport,
            tx: ServerInvite::new(timers),
            response: Vec::new(),
            answer_sdp: None,
        }
    }

    /// Whether a request with this top Via branch belongs to the INVITE's transaction.
    pub(super) fn same_tx(&self, branch: Option<&str>) -> bool {
        branch == Some(self.branch.as_str())
    }

    /// The INVITE's CSeq number, which its ACK repeats.
    pub(super) fn cseq(&self) -> Option<u32> {
        self.request.cseq().map(|c| c.seq)
    }

    /// No final response sent yet.
    pub(super) fn is_proceeding(&self) -> bool {
        self.tx.is_proceeding()
    }

    /// A final response sent and not acknowledged yet.
    pub(super) fn awaiting_ack(&self) -> bool {
        self.tx.awaiting_ack()
    }

    /// The ACK came: true when it acknowledged our final response.
    pub(super) fn on_ack(&mut self, now: Instant) -> bool {
        self.tx.on_ack(now)
    }

    pub(super) fn final_code(&self) -> Option<u16> {
        self.tx.final_code()
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.tx.poll_timeout()
    }

    pub(super) fn on_timeout(&mut self, now: Instant) -> Action {
        self.tx.on_timeout(now)
    }

    /// Remember `resp` as the response to repeat and return it to send.
    fn respond(&mut self, resp: &Response, now: Instant) -> Output<'static> {
        self.response = resp.to_bytes();
        if resp.code >= 200 {
            self.tx.on_final_sent(resp.code, now);
        }
        self.last_response().expect("just set")
    }

    /// The last response again, if there is one.
    fn last_response(&self) -> Option<Output<'static>> {
        (!self.response.is_empty()).then(|| {
            Output::sip(
                self.transport,
                self.response_dest,
                self.response.clone(),
                self.source,
            )
        })
    }
}

impl Call {
    /// A response to the INVITE: our To-tag but on 100 (§8.2.6.2), Contact
    /// and Record-Route when it makes the dialog (§12.1.1).
    pub(super) fn invite_response(&self, code: u16, reason: &str, dialog: bool) -> Response {
        let invite = &self.invite.request;
        let mut resp = invite.make_response(code, reason);
        if code > 100 {
            resp.headers.set(header::TO, self.dialog.local.to_string());
        }
        if dialog {
            for rr in invite.headers.get_all(header::RECORD_ROUTE) {
                resp.headers.push(header::RECORD_ROUTE, rr);
            }
            resp.headers
                .push(header::CONTACT, format!("<{}>", self.contact()));
        }
        if code >= 200 {
            resp.headers.push(header::ALLOW, ALLOW);
            resp.headers.push(header::ACCEPT, ACCEPT);
            resp.headers.push(header::SUPPORTED, mid_dialog::SUPPORTED);
        }
        resp.headers.push(header::SERVER, self.s.user_agent.clone());
        resp
    }

    /// Send a response to the INVITE through its transaction.
    pub(super) fn send_invite_response(&mut self, resp: Response, now: Instant) {
        let out = self.invite.respond(&resp, now);
        self.out.push(out);
    }

    /// The INVITE's last response again (a retransmitted INVITE, or Timer G).
    pub(super) fn resend_invite_response(&mut self) {
        if let Some(out) = self.invite.last_response() {
            self.out.push(out);
        }
    }

    /// The 200 OK with our answer: the call is listening.
    pub(super) fn answer(&mut self, now: Instant) {
        let Some(sdp) = self.invite.answer_sdp.clone() else {
            return;
        };
        let mut ok = self.invite_response(200, "OK", true);
        let timer = self.mid.timer;
        self.start_session_timer(timer, now);
        self.add_timer_headers(&mut ok);
        ok.headers.push(header::CONTENT_TYPE, "application/sdp");
        ok.body = sdp.into_bytes();
        self.send_invite_response(ok, now);
        self.clock.answered_at = Some(now);
        self.decider.answered(now);
        self.phase = Phase::Listening;
    }

    /// A final non-2xx to the INVITE: the call ends once the ACK (or Timer H) comes.
    pub(super) fn reject(&mut self, code: u16, reason: &str, now: Instant) {
        let resp = self.invite_response(code, reason, false);
        self.reject_with(resp, now);
    }

    pub(super) fn reject_with(&mut self, resp: Response, now: Instant) {
        self.send_invite_response(resp, now);
        if self.record.outcome == Outcome::Pending {
            self.record.outcome = Outcome::Rejected;
        }
        self.finish(now);
    }

    /// CANCEL of the INVITE (§9.2): 200 for the CANCEL, 487 for an unanswered INVITE.
    pub(super) fn on_cancel(&mut self, cancel: &Request, peer: Peer, now: Instant) {
        self.reply(cancel, peer, 200, "OK", now);
        if self.invite.is_proceeding() {
            self.record.outcome = Outcome::Cancelled;
            self.reject(487, "Request Terminated", now);
        }
    }
}
