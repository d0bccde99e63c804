//! Dialogs (RFC 3261 §12): the state created by answering an INVITE (UAS,
//! §12.1.1) or by the 2xx to one we sent (UAC, §12.1.2), used to build
//! in-dialog requests (§12.2.1.1) and to check incoming ones (§12.2.2).
//! Loose routing (§16.12, `;lr`) decides the next hop. The requests a UAC
//! builds from its INVITE alone are here too: the ACK of a non-2xx
//! (§17.1.1.3) and CANCEL (§9.1).

use std::net::{IpAddr, SocketAddr};

use super::message::{CSeq, Headers, Method, NameAddr, Request, Response, Uri, Via};
use crate::header;

/// Why an in-dialog request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// The CSeq is lower than one already seen (§12.2.2): answer 500.
    #[error("CSeq {got} lower than {last}")]
    CSeqOutOfOrder {
        /// Received.
        got: u32,
        /// Highest seen.
        last: u32,
    },
    /// A required header is missing or broken.
    #[error("missing or malformed {0}")]
    Malformed(&'static str),
}

/// Dialog state for a call we answered.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag (the To-tag of our responses).
    pub local_tag: String,
    /// The caller's From-tag.
    pub remote_tag: String,
    /// Our address of record as the caller named it (To), with our tag.
    pub local: NameAddr,
    /// The caller (From), with its tag.
    pub remote: NameAddr,
    /// Where in-dialog requests go (the caller's Contact).
    pub remote_target: Uri,
    /// Record-Route of the INVITE, in order (§12.1.1: the UAS keeps it as is).
    pub route_set: Vec<NameAddr>,
    /// Our CSeq for requests we send.
    pub local_cseq: u32,
    /// Highest CSeq seen from the caller.
    pub remote_cseq: u32,
}

/// The URI of a message's Contact, the dialog's remote target (§12.1).
fn contact_uri(headers: &Headers) -> Option<Uri> {
    headers
        .get(header::CONTACT)
        .and_then(|c| NameAddr::parse(c).ok())
        .map(|c| c.uri)
}

/// A message's Record-Route entries in their order (§12.1.1, §12.1.2).
fn record_route(headers: &Headers) -> Result<Vec<NameAddr>, DialogError> {
    headers
        .get_all(header::RECORD_ROUTE)
        .into_iter()
        .map(NameAddr::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| DialogError::Malformed(header::RECORD_ROUTE))
}

impl Dialog {
    /// Create the dialog from the INVITE we are answering (§12.1.1).
    pub fn from_invite(invite: &Request, local_tag: &str) -> Result<Dialog, DialogError> {
        let call_id = invite
            .call_id()
            .ok_or(DialogError::Malformed(header::CALL_ID))?
            .to_string();
        let remote = invite.from().ok_or(DialogError::Malformed(header::FROM))?;
        let remote_tag = remote
            .tag()
            .ok_or(DialogError::Malformed("From tag"))?
            .to_string();
        let mut local = invite.to().ok_or(DialogError::Malformed(header::TO))?;
        local.params.set("tag", Some(local_tag));
        let cseq = invite.cseq().ok_or(DialogError::Malformed(header::CSEQ))?;
        // A caller without a Contact breaks §8.1.1.8; the From URI is the best guess.
        let remote_target = contact_uri(&invite.headers).unwrap_or_else(|| remote.uri.clone());
        let route_set = record_route(&invite.headers)?;
        Ok(Dialog {
            call_id,
            local_tag: local_tag.to_string(),
            remote_tag,
            local,
            remote,
            remote_target,
            route_set,
            local_cseq: fastrand::u32(1..10_000),
            remote_cseq: cseq.seq,
        })
    }

    /// Create the dialog from the 2xx to an INVITE we sent (§12.1.2): the
    /// route set is the 2xx's Record-Route reversed, the remote target its
    /// Contact, our CSeq the INVITE's.
    pub fn from_2xx(invite: &Request, resp: &Response) -> Result<Dialog, DialogError> {
        let call_id = invite
            .call_id()
            .ok_or(DialogError::Malformed(header::CALL_ID))?
            .to_string();
        let local = invite.from().ok_or(DialogError::Malformed(header::FROM))?;
        let local_tag = local
            .tag()
            .ok_or(DialogError::Malformed("From tag"))?
            .to_string();
        let remote = resp.to().ok_or(DialogError::Malformed(header::TO))?;
        let remote_tag = remote
            .tag()
            .ok_or(DialogError::Malformed("To tag"))?
            .to_string();
        let cseq = invite.cseq().ok_or(DialogError::Malformed(header::CSEQ))?;
        let remote_target =
            contact_uri(&resp.headers).ok_or(DialogError::Malformed(header::CONTACT))?;
        let mut route_set = record_route(&resp.headers)?;
        route_set.reverse();
        Ok(Dialog {
            call_id,
            local_tag,
            remote_tag,
            local,
            remote,
            remote_target,
            route_set,
            local_cseq: cseq.seq,
            remote_cseq: 0,
        })
    }

    /// The ACK of a 2xx to our INVITE numbered `invite_cseq` (§13.2.2.4): a
    /// request of the dialog with the INVITE's CSeq number and a new branch.
    pub fn ack(&mut self, invite_cseq: u32, via: &Via, contact: &Uri) -> Request {
        let mut ack = self.request(Method::Ack, via, contact);
        self.local_cseq -= 1;
        ack.headers.set(
            header::CSEQ,
            CSeq {
                seq: invite_cseq,
                method: Method::Ack,
            }
            .to_string(),
        );
        ack
    }

    /// Does an in-dialog request belong to this dialog (§12.2.2)?
    pub fn matches(&self, req: &Request) -> bool {
        req.call_id() == Some(self.call_id.as_str())
            && req
                .to()
                .as_ref()
                .and_then(|t| t.tag().map(str::to_owned))
                .as_deref()
                == Some(self.local_tag.as_str())
            && req
                .from()
                .as_ref()
                .and_then(|f| f.tag().map(str::to_owned))
                .as_deref()
                == Some(self.remote_tag.as_str())
    }

    /// Check and record the CSeq of an incoming in-dialog request (§12.2.2).
    /// ACK and CANCEL carry the INVITE's number and are not checked here.
    pub fn accept_remote_cseq(&mut self, req: &Request) -> Result<(), DialogError> {
        let cseq = req.cseq().ok_or(DialogError::Malformed(header::CSEQ))?;
        if cseq.seq < self.remote_cseq {
            return Err(DialogError::CSeqOutOfOrder {
                got: cseq.seq,
                last: self.remote_cseq,
            });
        }
        self.remote_cseq = cseq.seq;
        Ok(())
    }

    /// Build a new in-dialog request (§12.2.1.1) with a fresh Via branch.
    /// `via` is our sent-by; `contact` our Contact URI.
    pub fn request(&mut self, method: Method, via: &Via, contact: &Uri) -> Request {
        self.local_cseq += 1;
        let mut headers = Headers::default();
        headers.push(header::VIA, via.to_string());
        headers.push(header::MAX_FORWARDS, "70");
        for route in &self.route_set {
            headers.push(header::ROUTE, route.to_string());
        }
        headers.push(header::FROM, self.local.to_string());
        headers.push(header::TO, self.remote.to_string());
        headers.push(header::CALL_ID, self.call_id.clone());
        headers.push(
            header::CSEQ,
            CSeq {
                seq: self.local_cseq,
                method: method.clone(),
            }
            .to_string(),
        );
        headers.push(header::CONTACT, format!("<{contact}>"));
        // §16.12.1.1: with a strict router first, it becomes the Request-URI.
        let uri = match self.route_set.first() {
            Some(first) if first.uri.params.get("lr").is_none() => first.uri.clone(),
            _ => self.remote_target.clone(),
        };
        Request {
            method,
            uri,
            headers,
            body: Vec::new(),
        }
    }

    /// The next hop for in-dialog requests: the first Route if there is a route
    /// set, else the remote target. Only IP literals are resolved here (no DNS in
    /// the core); otherwise the address the dialog's requests came from is used,
    /// which is where the previous hop is known to be reachable.
    pub fn next_hop(&self, fallback: SocketAddr) -> SocketAddr {
        let uri = self
            .route_set
            .first()
            .map(|r| &r.uri)
            .unwrap_or(&self.remote_target);
        uri_socket_addr(uri).unwrap_or(fallback)
    }
}

/// The ACK of a non-2xx final response to `invite` (§17.1.1.3): the
/// INVITE's Request-URI, top Via, From, Call-ID, CSeq number and Route, the
/// response's To.
pub fn ack_for_failure(invite: &Request, resp: &Response) -> Request {
    let mut req = derived(invite, Method::Ack);
    if let Some(to) = resp.headers.get(header::TO) {
        req.headers.set(header::TO, to);
    }
    req
}

/// CANCEL of `invite` (§9.1): the same Request-URI, top Via, From, To,
/// Call-ID, CSeq number and Route.
pub fn cancel_for(invite: &Request) -> Request {
    derived(invite, Method::Cancel)
}

fn derived(invite: &Request, method: Method) -> Request {
    let mut headers = Headers::default();
    if let Some(via) = invite.headers.elements(header::VIA).next() {
        headers.push(header::VIA, via);
    }
    headers.push(header::MAX_FORWARDS, "70");
    for (name, value) in invite.headers.iter() {
        if [header::ROUTE, header::FROM, header::TO, header::CALL_ID].contains(&name) {
            headers.push(name, value);
        }
    }
    if let Some(c) = invite.cseq() {
        headers.push(
            header::CSEQ,
            CSeq {
                seq: c.seq,
                method: method.clone(),
            }
            .to_string(),
        );
    }
    Request {
        method,
        uri: invite.uri.clone(),
        headers,
        body: Vec::new(),
    }
}

/// The socket address of a sip: URI whose host is an IP literal.
pub fn uri_socket_addr(uri: &Uri) -> Option<SocketAddr> {
    let host = uri.host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}

/// Where the response to `req`, received from `source`, goes: its top Via
/// read by [`response_destination`], or the source when it has none. Every
/// reply (stateless, in a transaction, in a dialog) is addressed through this
/// one function; the transport is always the request's own (§18.2.2).
pub fn reply_dest(req: &Request, source: SocketAddr) -> SocketAddr {
    req.top_via()
        .map(|v| response_destination(&v, source))
        .unwrap_or(source)
}

/// Where to send a response (RFC 3261 §18.2.2 with RFC 3581 rport). Over
/// UDP: to the source address when `rport` was asked for, else to the
/// `received` address (the source IP) at the sent-by port. Over a reliable
/// transport the response goes on the request's connection while it is open
/// (the edge's business); this is where to open a new one otherwise: the
/// `received` address at the sent-by port (rport is for UDP only).
pub fn response_destination(via: &Via, source: SocketAddr) -> SocketAddr {
    if via.params.get("rport").is_some() && via.transport.eq_ignore_ascii_case("UDP") {
        return source;
    }
    let port = via.port.unwrap_or(5060);
    // §18.2.2: the response goes to the `received` address (the packet's
    // source) at the sent-by port.
    SocketAddr::new(source.ip(), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse_datagram, Message};

    fn invite() -> Request {
        let text = "INVITE sip:queue@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\n\
            Route: <sip:127.0.0.1:5070;lr>\r\nFrom: <sip:emonav@127.0.0.1>;tag=us\r\nTo: <sip:queue@192.0.2.9>\r\n\
            Call-ID: q1\r\nCSeq: 7 INVITE\r\nContact: <sip:emonav@127.0.0.1>\r\nContent-Length: 0\r\n\r\n";
        match parse_datagram(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn response(code: u16, extra: &str) -> Response {
        let text = format!(
            "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\n\
             From: <sip:emonav@127.0.0.1>;tag=us\r\nTo: <sip:queue@192.0.2.9>;tag=them\r\n\
             Call-ID: q1\r\nCSeq: 7 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse_datagram(text.as_bytes()).unwrap() {
            Message::Response(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn uac_dialog_from_a_2xx_reverses_record_route_and_acks_with_the_invite_cseq() {
        let ok = response(
            200,
            "Record-Route: <sip:p2;lr>\r\nRecord-Route: <sip:127.0.0.1:5070;lr>\r\nContact: <sip:agent@192.0.2.10:5062>\r\n",
        );
        let mut d = Dialog::from_2xx(&invite(), &ok).unwrap();
        assert_eq!(
            (d.local_tag.as_str(), d.remote_tag.as_str()),
            ("us", "them")
        );
        assert_eq!(d.route_set[0].uri.host, "127.0.0.1");
        assert_eq!(d.route_set[1].uri.host, "p2");
        assert_eq!(d.remote_target.to_string(), "sip:agent@192.0.2.10:5062");
        let via = Via::parse("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb").unwrap();
        let contact = Uri::parse("sip:emonav@127.0.0.1").unwrap();
        let ack = d.ack(7, &via, &contact);
        assert_eq!(ack.headers.get(header::CSEQ), Some("7 ACK"));
        let bye = d.request(Method::Bye, &via, &contact);
        assert_eq!(bye.headers.get(header::CSEQ), Some("8 BYE"));
        assert_eq!(
            bye.headers.get(header::TO),
            Some("<sip:queue@192.0.2.9>;tag=them")
        );
        assert_eq!(
            d.next_hop("10.0.0.1:1".parse().unwrap()),
            "127.0.0.1:5070".parse().unwrap()
        );
        assert!(
            Dialog::from_2xx(&invite(), &response(200, "")).is_err(),
            "2xx without Contact"
        );
    }

    #[test]
    fn ack_of_a_failure_and_cancel_repeat_the_invite_transaction() {
        let inv = invite();
        let ack = ack_for_failure(&inv, &response(486, ""));
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri, inv.uri);
        assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bKa"));
        assert_eq!(
            ack.headers.get(header::TO),
            Some("<sip:queue@192.0.2.9>;tag=them")
        );
        assert_eq!(ack.headers.get(header::CSEQ), Some("7 ACK"));
        assert_eq!(
            ack.headers.get(header::ROUTE),
            Some("<sip:127.0.0.1:5070;lr>")
        );
        let cancel = cancel_for(&inv);
        assert_eq!(cancel.headers.get(header::CSEQ), Some("7 CANCEL"));
        assert_eq!(
            cancel.headers.get(header::TO),
            Some("<sip:queue@192.0.2.9>")
        );
    }
}
