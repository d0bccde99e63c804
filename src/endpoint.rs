//! The sans-IO SIP endpoint: what to do with each message the edge reads,
//! before any call state is involved. Modelled on quinn-proto's
//! `Endpoint::handle`: a message (or a datagram, or a stream's framing
//! error) goes in with its source, transport and the time; out comes an
//! [`Event`]: a new call, a message for a known call, or a response to send.
//!
//! - RFC 3261 §8.2: requests no call owns are answered statelessly: OPTIONS
//!   200 (§11.2), 405 for methods we do not accept outside a dialog
//!   (§8.2.1), 501 for unknown methods (§8.2.1), 481 for in-dialog requests
//!   of no dialog (§12.2.2), 400 with the reason for malformed requests
//!   (§8.2.2, §21.4.1); ACK is never answered (§17.2.3).
//! - RFC 4028 §9: an INVITE whose Session-Expires is below our Min-SE is
//!   refused statelessly with 422 and Min-SE, so the retry with a larger
//!   interval (same Call-ID) starts a fresh call.
//! - RFC 3261 §18.2.2 and RFC 3581: every response goes back on the
//!   request's transport, on its connection when reliable, to the address
//!   [`reply_dest`] reads from the top Via (`rport`, `received`).
//! - RFC 3261 §17: responses go to their client transaction; here, to the
//!   registration whose Call-ID they carry, or to their call.
//!
//! - Trusted peers (src/trust.rs, `[security]`): a request no call owns
//!   from a source outside the trusted set is refused with 403 (§21.4.4)
//!   or dropped unanswered, before any other check, and counted. Every
//!   method is refused, OPTIONS too: its 200 is what scanners fingerprint
//!   SIP servers by, and a proxy's keep-alive probe comes from a trusted
//!   address by definition. Messages routed to a call (by Call-ID) and
//!   responses are not checked here: the dialog and transaction matching
//!   (tags, branch) protect them, and in-dialog requests may come straight
//!   from the caller's Contact when no proxy record-routes.
//!
//! - RFC 4475 §3.1.2.11, §3.3.8: a request with headers in its
//!   Request-URI (§19.1.1), or two of a header that takes one value
//!   (Call-ID, From, To, CSeq, Max-Forwards; §20), is 400 with the reason.
//! - RFC 3261 §8.2.2.3: a request no call owns that requires an extension
//!   we do not support is 420 with `Unsupported`; an INVITE whose body is
//!   not SDP is 415 with `Accept` (§8.2.3, §21.4.13), one whose `Accept`
//!   excludes SDP, 406 (§21.4.7): its answer could not be understood.
//!
//! Call-IDs route to calls through a table of handles the edge provides
//! (a channel sender, in practice), so routing is testable without tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::call::stateless_response;
use crate::events::Metrics;
use crate::overload::{Kind, Overload, Refusal};
use crate::trust::{TrustPolicy, Untrusted};
use emonav_sip::dialog::reply_dest;
use emonav_sip::header;
use emonav_sip::message::{parse_datagram, Message, Method, ParseError, Request};
use emonav_sip::session_timer;
use emonav_sip::transport::{FrameError, Peer, Transport};

pub(crate) mod drops;
pub(crate) mod registrations;

pub(crate) use drops::{offer, DropLog, Offer};
pub(crate) use registrations::{RegOutput, Registrations};

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transmit {
    /// Destination: for a connection-oriented transport, where to open a
    /// connection when `connection` is not open (any more).
    pub dest: SocketAddr,
    /// Transport to send it on.
    pub transport: Transport,
    /// For a connection-oriented transport, the remote address of the
    /// connection to reuse while it is open.
    pub connection: Option<SocketAddr>,
    /// Serialised message.
    pub data: Vec<u8>,
}

/// What the edge does with a message.
#[derive(Debug)]
pub(crate) enum Event<H> {
    /// An INVITE that starts a call: spawn it and [`Endpoint::insert_call`]
    /// its handle before handling the next message, so that retransmissions
    /// reach it.
    NewCall {
        /// Its Call-ID, the routing key.
        call_id: String,
        /// The INVITE.
        invite: Request,
        /// Where it came from.
        peer: Peer,
    },
    /// A message for a known call. If the handle turns out dead (the call
    /// ended meanwhile), [`Endpoint::remove_call`] and handle it again.
    ToCall {
        /// The call's handle.
        handle: H,
        /// Its Call-ID.
        call_id: String,
        /// The message.
        msg: Message,
        /// Where it came from.
        peer: Peer,
    },
    /// Send this response; nothing else to do.
    Respond(Transmit),
}

/// The endpoint's decisions, and the state they need: the routing table
/// and the registrations.
pub(crate) struct Endpoint<H> {
    user_agent: String,
    min_se: u32,
    calls: HashMap<String, H>,
    registrations: Registrations,
    metrics: Arc<Metrics>,
    /// Draining (src/lifecycle.rs): the `Retry-After` seconds of the 503
    /// that new INVITEs and OPTIONS get.
    draining: Option<u32>,
    /// `[security]`: who may send requests no call owns; `None`: anyone.
    trust: Option<TrustPolicy>,
    /// Rate limit of the warnings about untrusted sources (a scan must not
    /// become a flood of log lines).
    untrusted_log: DropLog,
    /// `[overload]`: admission by load and per-source rates.
    overload: Option<Overload>,
    /// Rate limit of the warnings about refusals for load.
    overload_log: DropLog,
}

impl<H: Clone> Endpoint<H> {
    /// An endpoint answering as `user_agent` (the `Server` header), refusing
    /// session intervals below `min_se` seconds, counting into `metrics`.
    pub(crate) fn new(
        user_agent: String,
        min_se: u32,
        registrations: Registrations,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            user_agent,
            min_se,
            calls: HashMap::new(),
            registrations,
            metrics,
            draining: None,
            trust: None,
            untrusted_log: DropLog::new(Instant::now()),
            overload: None,
            overload_log: DropLog::new(Instant::now()),
        }
    }

    /// Refuse requests no call owns from sources outside `policy`'s set
    /// (see the module documentation).
    pub(crate) fn with_trust(mut self, policy: Option<TrustPolicy>) -> Self {
        self.trust = policy;
        self
    }

    /// Admit new calls, OPTIONS and REGISTER by `[overload]`
    /// (src/overload.rs).
    pub(crate) fn with_overload(mut self, overload: Overload) -> Self {
        self.overload = Some(overload);
        self
    }

    /// The load the edge measured: calls in progress and the runtime's
    /// scheduling lag. Returns why new calls are refused now, if they are.
    pub(crate) fn set_load(&mut self, active: usize, lag: std::time::Duration) -> Option<Refusal> {
        let o = self.overload.as_mut()?;
        o.set_load(active, lag);
        o.overloaded()
    }

    /// A new INVITE, OPTIONS or REGISTER refused by `[overload]`: `503`
    /// with `Retry-After` (RFC 3261 §21.5.4), counted by reason.
    fn refuse_overload(&mut self, req: &Request, peer: Peer, now: Instant) -> Option<Event<H>> {
        let kind = match req.method {
            Method::Invite => Kind::Invite,
            Method::Options => Kind::Options,
            Method::Register => Kind::Register,
            _ => return None,
        };
        let o = self.overload.as_mut()?;
        let why = o.admit(kind, peer.addr.ip(), now).err()?;
        let secs = o.retry_after_s();
        let counter = match why {
            Refusal::MaxCalls => &self.metrics.sip_max_calls_rejected,
            Refusal::Lag => &self.metrics.sip_lag_rejected,
            Refusal::RateLimited => &self.metrics.sip_rate_limited,
        };
        let src = peer.addr;
        let method = req.method.as_str();
        let reason = why.as_str();
        if let Some(n) = self.overload_log.record(counter, now) {
            tracing::warn!(%src, %method, reason, refused_since_last = n, "overloaded: 503 ([overload])");
        } else {
            tracing::debug!(%src, %method, reason, "overloaded: 503");
        }
        let mut resp = stateless_response(req, 503, "Service Unavailable", &self.user_agent);
        resp.headers.push(header::RETRY_AFTER, secs.to_string());
        Some(Event::Respond(transmit(req, peer, resp.to_bytes())))
    }

    /// Untrusted sources get no answer at all.
    fn drops_untrusted(&self) -> bool {
        self.trust
            .as_ref()
            .is_some_and(|t| t.untrusted == Untrusted::Drop)
    }

    /// Whether a request from `src` that no call owns is taken.
    fn trusted(&self, src: SocketAddr) -> bool {
        self.trust.as_ref().is_none_or(|t| {
            t.sources.contains(src.ip())
                || (t.registrars && self.registrations.is_registrar(src.ip()))
        })
    }

    /// An untrusted request: counted, logged (rate-limited), and answered
    /// 403 unless the profile says drop. Never an ACK's answer.
    fn refuse_untrusted(&self, req: &Request, peer: Peer, now: Instant) -> Option<Event<H>> {
        let src = peer.addr;
        let drop = self
            .trust
            .as_ref()
            .is_some_and(|t| t.untrusted == Untrusted::Drop);
        let method = req.method.as_str();
        if let Some(n) = self.untrusted_log.record(&self.metrics.sip_untrusted, now) {
            tracing::warn!(%src, %method, refused_since_last = n, drop, "request from an untrusted source refused ([security] trusted_sources)");
        } else {
            tracing::debug!(%src, %method, drop, "request from an untrusted source refused");
        }
        (!drop && req.method != Method::Ack)
            .then(|| Event::Respond(self.reply(req, peer, 403, "Forbidden")))
    }

    /// Stop taking calls: from now on a new INVITE, and OPTIONS (a proxy's
    /// keep-alive probe), get `503` with `Retry-After: retry_after_s`
    /// (RFC 3261 §21.5.4), so that the sender tries elsewhere; messages of
    /// the calls in progress are routed as before.
    pub(crate) fn drain(&mut self, retry_after_s: u32) {
        self.draining = Some(retry_after_s);
    }

    /// The registrations, for their timers and output.
    pub(crate) fn registrations(&mut self) -> &mut Registrations {
        &mut self.registrations
    }

    /// Route `call_id` to `handle` from now on.
    pub(crate) fn insert_call(&mut self, call_id: String, handle: H) {
        self.calls.insert(call_id, handle);
    }

    /// Forget a call (it ended, or its handle is dead).
    pub(crate) fn remove_call(&mut self, call_id: &str) {
        self.calls.remove(call_id);
    }

    #[cfg(test)]
    /// Calls routed to.
    pub(crate) fn calls(&self) -> usize {
        self.calls.len()
    }

    /// A UDP datagram from `src` (RFC 3261 §18.2.1, §18.1.2).
    pub(crate) fn handle_datagram(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        now: Instant,
    ) -> Option<Event<H>> {
        // RFC 5626 §4.4.1 keep-alives (CRLF) carry no message.
        if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            return None;
        }
        let peer = Peer {
            addr: src,
            transport: Transport::Udp,
        };
        match parse_datagram(data) {
            Ok(msg) => self.handle(msg, peer, now),
            Err(ParseError::BadRequest { request, .. })
                if !self.trusted(src) && self.drops_untrusted() =>
            {
                // Drop mode answers nothing at all to untrusted sources.
                self.refuse_untrusted(&request, peer, now)
            }
            Err(ParseError::BadRequest { reason, request }) => {
                self.metrics.sip_bad_request.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%src, %reason, "malformed SIP request: 400");
                (request.method != Method::Ack).then(|| {
                    Event::Respond(self.reply(
                        &request,
                        peer,
                        400,
                        &format!("Bad Request ({reason})"),
                    ))
                })
            }
            Err(e) => {
                self.metrics.sip_unparseable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%src, error = %e, len = data.len(), "dropping unparseable SIP datagram");
                None
            }
        }
    }

    /// A parsed message, whatever transport it came on: to its
    /// registration (consumed: `None`), to its call, or answered here.
    pub(crate) fn handle(&mut self, msg: Message, peer: Peer, now: Instant) -> Option<Event<H>> {
        let src = peer.addr;
        if let Message::Response(r) = &msg {
            if self.registrations.handle_response(r, now) {
                return None;
            }
        }
        if let Message::Request(req) = &msg {
            if let Some(reason) = malformed(req) {
                if !self.trusted(src) && self.drops_untrusted() {
                    return self.refuse_untrusted(req, peer, now);
                }
                self.metrics.sip_bad_request.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%src, %reason, "malformed SIP request: 400");
                return (req.method != Method::Ack).then(|| {
                    Event::Respond(self.reply(req, peer, 400, &format!("Bad Request ({reason})")))
                });
            }
        }
        let call_id = match &msg {
            Message::Request(r) => r.call_id(),
            Message::Response(r) => r.call_id(),
        }
        .unwrap_or("")
        .to_string();
        if let Some(handle) = self.calls.get(&call_id) {
            return Some(Event::ToCall {
                handle: handle.clone(),
                call_id,
                msg,
                peer,
            });
        }
        let req = match msg {
            Message::Request(r) => r,
            Message::Response(r) => {
                tracing::debug!(%src, code = r.code, %call_id, "response for no call: dropped");
                return None;
            }
        };
        if !self.trusted(src) {
            return self.refuse_untrusted(&req, peer, now);
        }
        let has_to_tag = req.to().is_some_and(|t| t.tag().is_some());
        if let Some(secs) = self.draining {
            if matches!(req.method, Method::Invite | Method::Options) && !has_to_tag {
                let mut resp =
                    stateless_response(&req, 503, "Service Unavailable", &self.user_agent);
                resp.headers.push(header::RETRY_AFTER, secs.to_string());
                tracing::info!(%src, method = %req.method.as_str(), "draining: 503");
                self.metrics
                    .sip_drain_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return Some(Event::Respond(transmit(&req, peer, resp.to_bytes())));
            }
        }
        if !has_to_tag {
            if let Some(refusal) = self.refuse_overload(&req, peer, now) {
                return Some(refusal);
            }
        }
        if let Some(resp) = self.unacceptable(&req) {
            tracing::info!(%src, code = resp.code, method = %req.method.as_str(), "request refused");
            return Some(Event::Respond(transmit(&req, peer, resp.to_bytes())));
        }
        let (code, reason) = match &req.method {
            Method::Invite if !has_to_tag => {
                if let Err(e) = session_timer::negotiate(&req, self.min_se) {
                    let mut resp = stateless_response(
                        &req,
                        422,
                        "Session Interval Too Small",
                        &self.user_agent,
                    );
                    resp.headers.push(header::MIN_SE, e.min_se.to_string());
                    return Some(Event::Respond(transmit(&req, peer, resp.to_bytes())));
                }
                self.metrics.calls_started.fetch_add(1, Ordering::Relaxed);
                return Some(Event::NewCall {
                    call_id,
                    invite: req,
                    peer,
                });
            }
            Method::Ack => return None,
            Method::Options if !has_to_tag => (200, "OK"),
            Method::Register
            | Method::Subscribe
            | Method::Publish
            | Method::Message
            | Method::Refer
                if !has_to_tag =>
            {
                (405, "Method Not Allowed")
            }
            Method::Other(_) => (501, "Not Implemented"),
            _ => (481, "Call/Transaction Does Not Exist"),
        };
        Some(Event::Respond(self.reply(&req, peer, code, reason)))
    }

    fn reply(&self, req: &Request, peer: Peer, code: u16, reason: &str) -> Transmit {
        reply(req, peer, code, reason, &self.user_agent)
    }

    /// The refusal of a request no call owns that asks for what we cannot
    /// do: an extension (420), a body (415) or an answer type (406).
    fn unacceptable(&self, req: &Request) -> Option<emonav_sip::message::Response> {
        if matches!(req.method, Method::Ack | Method::Cancel) {
            return None;
        }
        let unsupported: Vec<&str> = req
            .headers
            .get_all(header::REQUIRE)
            .into_iter()
            .filter(|t| {
                !SUPPORTED_EXTENSIONS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(t))
            })
            .collect();
        let refuse = |code, reason| stateless_response(req, code, reason, &self.user_agent);
        if !unsupported.is_empty() {
            let mut resp = refuse(420, "Bad Extension");
            resp.headers
                .push(header::UNSUPPORTED, unsupported.join(", "));
            return Some(resp);
        }
        if req.method != Method::Invite {
            return None;
        }
        let media_type = |v: &str| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        };
        let content_type = req.headers.get(header::CONTENT_TYPE).map(media_type);
        if !req.body.is_empty() && content_type.is_some_and(|t| t != "application/sdp") {
            let mut resp = refuse(415, "Unsupported Media Type");
            resp.headers.push(header::ACCEPT, "application/sdp");
            return Some(resp);
        }
        let accept = req.headers.get_all(header::ACCEPT);
        if !accept.is_empty()
            && !accept.iter().any(|a| {
                matches!(
                    media_type(a).as_str(),
                    "application/sdp" | "application/*" | "*/*"
                )
            })
        {
            return Some(refuse(406, "Not Acceptable"));
        }
        None
    }
}

/// Option tags (RFC 3261 §19.2) a request may require of us: session
/// timers (RFC 4028).
const SUPPORTED_EXTENSIONS: &[&str] = &["timer"];

/// Headers that take exactly one value (RFC 3261 §20; RFC 4475 §3.3.8).
const SINGLE_VALUED: &[&str] = &[
    header::CALL_ID,
    header::FROM,
    header::TO,
    header::CSEQ,
    header::MAX_FORWARDS,
];

/// Why a parsed request is still malformed, if it is: headers in the
/// Request-URI (§19.1.1), or a single-valued header given twice.
fn malformed(req: &Request) -> Option<String> {
    if !req.uri.headers.is_empty() {
        return Some("headers in the Request-URI".into());
    }
    SINGLE_VALUED
        .iter()
        .find(|h| req.headers.elements(h).nth(1).is_some())
        .map(|h| format!("more than one {h}"))
}

/// A stateless response to `req`, on the transport (and connection) it
/// came on.
pub(crate) fn reply(req: &Request, peer: Peer, code: u16, reason: &str, server: &str) -> Transmit {
    transmit(
        req,
        peer,
        stateless_response(req, code, reason, server).to_bytes(),
    )
}

/// `data`, a response to `req`, addressed by [`reply_dest`] on the
/// request's transport and connection (RFC 3261 §18.2.2).
fn transmit(req: &Request, peer: Peer, data: Vec<u8>) -> Transmit {
    Transmit {
        dest: reply_dest(req, peer.addr),
        transport: peer.transport,
        connection: peer.transport.is_reliable().then_some(peer.addr),
        data,
    }
}

/// A stream that cannot go on (RFC 3261 §18.3): counted and logged; the
/// response to write on the connection before closing it, if the message
/// was a request we could read enough of (513 for too large, 400 with the
/// reason for malformed; never to an ACK).
pub(crate) fn framing_error(
    e: FrameError,
    peer: Peer,
    server: &str,
    metrics: &Metrics,
) -> Option<Transmit> {
    let src = peer.addr;
    match e {
        FrameError::TooLarge { request } => {
            metrics.sip_bad_request.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%src, "SIP message over TCP too large: closing the connection");
            let req = request.filter(|r| r.method != Method::Ack)?;
            Some(reply(&req, peer, 513, "Message Too Large", server))
        }
        FrameError::BadRequest { reason, request } => {
            metrics.sip_bad_request.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%src, %reason, "malformed SIP request over TCP: 400, closing the connection");
            (request.method != Method::Ack).then(|| {
                reply(
                    &request,
                    peer,
                    400,
                    &format!("Bad Request ({reason})"),
                    server,
                )
            })
        }
        FrameError::Unparseable(why) => {
            metrics.sip_unparseable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%src, error = %why, "unparseable SIP over TCP: closing the connection");
            None
        }
    }
}

#[cfg(test)]
mod tests;
