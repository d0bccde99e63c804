//! Dialogs (RFC 3261 §12) on the UAS side: the state created by answering an
//! INVITE, used to build in-dialog requests (§12.2.1.1) and to check incoming
//! ones (§12.2.2). Loose routing (§16.12, `;lr`) decides the next hop.

use std::net::{IpAddr, SocketAddr};

use super::message::{CSeq, Headers, Method, NameAddr, Request, Uri, Via};
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
        let remote_target = invite
            .headers
            .get(header::CONTACT)
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|c| c.uri)
            .unwrap_or_else(|| remote.uri.clone());
        let route_set = invite
            .headers
            .get_all(header::RECORD_ROUTE)
            .into_iter()
            .map(NameAddr::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| DialogError::Malformed(header::RECORD_ROUTE))?;
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
