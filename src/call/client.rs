//! Our own requests in the dialog (REFER, BYE, the refresh UPDATE), one at
//! a time through a non-INVITE client transaction (RFC 3261 §17.1.2),
//! re-sent once with credentials when the peer challenges them (§22.2,
//! §22.3, RFC 7616), and their final responses routed to what sent them.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Call, Output, Phase};
use emonav_sip::digest::{self, Authenticator};
use emonav_sip::header;
use emonav_sip::message::{CSeq, Method, Request, Response};
use emonav_sip::transaction::{Action, ClientNonInvite};

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

/// The request of ours in progress, if any.
#[derive(Debug, Default)]
pub(super) struct Client {
    current: Option<OutgoingTx>,
}

impl Client {
    /// The method of the request in progress.
    pub(super) fn method(&self) -> Option<&Method> {
        self.current.as_ref().map(|o| &o.method)
    }

    /// A request in progress still waits for its final response.
    pub(super) fn awaiting_final(&self) -> bool {
        self.current.as_ref().is_some_and(|o| o.tx.awaiting_final())
    }

    /// Forget the request in progress (its outcome no longer matters).
    pub(super) fn abandon(&mut self) {
        self.current = None;
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.current.as_ref().and_then(|o| o.tx.poll_timeout())
    }
}

impl Call {
    /// Send a request of ours in the dialog.
    pub(super) fn send_request(&mut self, mut req: Request, now: Instant) {
        req.headers
            .push(header::USER_AGENT, self.s.user_agent.clone());
        self.transmit(req, false, now);
    }

    fn transmit(&mut self, req: Request, authenticated: bool, now: Instant) {
        let branch = req
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let source = self.invite.source;
        let dest = self.dialog.next_hop(source);
        let data = req.to_bytes();
        if self.client.method() == Some(&Method::Update) && req.method != Method::Update {
            self.refresh_displaced(now);
        }
        // §18.1.1: the connection the dialog came on, while it is open.
        self.out.push(Output::sip(
            self.invite.transport,
            dest,
            data.clone(),
            source,
        ));
        self.client.current = Some(OutgoingTx {
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

    /// Timers E/F/K of our request.
    pub(super) fn request_timeout(&mut self, now: Instant) {
        let reliable = self.invite.transport.is_reliable();
        let Some(out) = &mut self.client.current else {
            return;
        };
        match out.tx.on_timeout(now) {
            // Timer E is for unreliable transports only (§17.1.2.2).
            Action::Retransmit if reliable => {}
            Action::Retransmit => {
                let (dest, data) = (out.dest, out.data.clone());
                self.out
                    .push(Output::sip(self.invite.transport, dest, data, dest));
            }
            Action::TimedOut => {
                let method = out.method.clone();
                self.client.current = None;
                self.on_final_response(&method, 408, now);
            }
            Action::None => {}
        }
    }

    /// Re-send a challenged request once with credentials (RFC 3261 §22.2,
    /// §22.3): a new transaction, so a new branch and the next CSeq. Returns
    /// false when it cannot be answered (no credentials for the realm, a
    /// challenge we cannot parse, or one already answered), and the
    /// challenge is then the request's final response.
    fn answer_challenge(&mut self, resp: &Response, now: Instant) -> bool {
        let Some(out) = &self.client.current else {
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
            .set(header::VIA, self.s.via(self.invite.transport).to_string());
        req.headers.set(
            header::CSEQ,
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
            self.transfer.refer_cseq = Some(cseq);
        }
        tracing::info!(%call_id, method = %req.method, code = resp.code, "challenged; re-sending with credentials");
        self.transmit(req, true, now);
        true
    }

    /// A response from the network whose Call-ID is ours.
    pub fn handle_response(&mut self, resp: &Response, now: Instant) {
        self.out.now = now;
        if self.queue_leg_response(resp, now) {
            return;
        }
        self.late_refer_response(resp);
        let Some(out) = &mut self.client.current else {
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
            self.client.current = None;
            return self.refresh_done(resp.code, resp.headers.get(header::SESSION_EXPIRES), now);
        }
        self.on_final_response(&method, resp.code, now);
        if method == Method::Refer
            && (200..300).contains(&resp.code)
            && matches!(self.phase, Phase::Transferring)
            && super::transfer::refer_without_subscription(resp)
        {
            self.accepted_without_subscription(now);
        }
    }

    /// The final response to our request (408 for a timeout).
    fn on_final_response(&mut self, method: &Method, code: u16, now: Instant) {
        match method {
            Method::Refer => self.refer_answered(code, now),
            Method::Bye => self.finish(now),
            Method::Update => self.refresh_done(code, None, now),
            _ => {}
        }
    }

    /// Our REFER's transaction is still open.
    pub(super) fn refer_open(&self) -> bool {
        self.client.method() == Some(&Method::Refer)
    }
}
