//! SIP message syntax (RFC 3261 §7, §20, §25): parsing and serialisation.
//!
//! Hand-written, because the crates measured (docs/decisions.md) fail on
//! things real peers send: compact and folded headers, LF-only line ends,
//! unknown methods, Content-Length framing on streams. The parser is tolerant
//! where RFC 3261 §7.3.1 and RFC 4475 ask for it (case, whitespace, folding,
//! compact names) and strict where a wrong guess would misroute a call
//! (Content-Length, CSeq, the mandatory headers), answering `400` with a
//! reason rather than guessing.

mod uri;

use crate::header;
use std::fmt;

pub use uri::{CSeq, NameAddr, Params, Scheme, Uri, Via};

/// A SIP method. Unknown methods parse (as `Other`) so that we can answer `501`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// REFER (RFC 3515)
    Refer,
    /// NOTIFY (RFC 6665)
    Notify,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// INFO (RFC 6086)
    Info,
    /// UPDATE (RFC 3311)
    Update,
    /// PRACK (RFC 3262)
    Prack,
    /// MESSAGE (RFC 3428)
    Message,
    /// PUBLISH (RFC 3903)
    Publish,
    /// Any other token, kept verbatim (methods are case-sensitive, RFC 3261 §7.1).
    Other(String),
}

const METHODS: [(&str, Method); 14] = [
    ("INVITE", Method::Invite),
    ("ACK", Method::Ack),
    ("BYE", Method::Bye),
    ("CANCEL", Method::Cancel),
    ("OPTIONS", Method::Options),
    ("REGISTER", Method::Register),
    ("REFER", Method::Refer),
    ("NOTIFY", Method::Notify),
    ("SUBSCRIBE", Method::Subscribe),
    ("INFO", Method::Info),
    ("UPDATE", Method::Update),
    ("PRACK", Method::Prack),
    ("MESSAGE", Method::Message),
    ("PUBLISH", Method::Publish),
];

impl Method {
    /// The method token as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(s) => s,
            m => METHODS
                .iter()
                .find(|(_, k)| k == m)
                .map(|(s, _)| *s)
                .unwrap_or(""),
        }
    }

    /// Parse a method token; never fails for a valid token (unknown → `Other`).
    pub fn from_token(s: &str) -> Method {
        METHODS
            .iter()
            .find(|(t, _)| *t == s)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| Method::Other(s.to_string()))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a buffer is not a SIP message we can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not SIP at all, or too broken to answer (no usable start line / Via):
    /// the caller drops it with a log line.
    #[error("unparseable SIP message: {0}")]
    Unparseable(String),
    /// A request whose framing parsed but which violates the grammar in a way
    /// that deserves `400 Bad Request` with this reason. `request` holds what
    /// could be parsed (enough headers to build the 400: Via, From, To,
    /// Call-ID, CSeq are copied verbatim).
    #[error("bad request: {reason}")]
    BadRequest {
        /// Human-readable reason, fit for the 400 reason phrase.
        reason: String,
        /// The request as far as it parsed.
        request: Box<Request>,
    },
    /// A stream buffer holds only part of a message (TCP); read more.
    #[error("incomplete message")]
    Incomplete,
}

/// Compact forms (RFC 3261 §7.3.3 and the RFCs that define them) and the
/// canonical spelling of the headers emonav reads or writes.
const CANONICAL: [(&str, Option<char>); 38] = [
    (header::ACCEPT, None),
    (header::ACCEPT_CONTACT, Some('a')),
    (header::ALLOW, None),
    (header::ALLOW_EVENTS, Some('u')),
    (header::AUTHORIZATION, None),
    (header::CALL_ID, Some('i')),
    (header::CONTACT, Some('m')),
    (header::CONTENT_ENCODING, Some('e')),
    (header::CONTENT_LENGTH, Some('l')),
    (header::CONTENT_TYPE, Some('c')),
    (header::CSEQ, None),
    (header::EVENT, Some('o')),
    (header::EXPIRES, None),
    (header::FROM, Some('f')),
    (header::IDENTITY, Some('y')),
    (header::MAX_FORWARDS, None),
    (header::MIN_EXPIRES, None),
    (header::MIN_SE, None),
    (header::PROXY_AUTHENTICATE, None),
    (header::PROXY_AUTHORIZATION, None),
    (header::PROXY_REQUIRE, None),
    (header::REASON, None),
    (header::RECORD_ROUTE, None),
    (header::REFER_SUB, None),
    (header::REFER_TO, Some('r')),
    (header::REFERRED_BY, Some('b')),
    (header::REJECT_CONTACT, Some('j')),
    (header::REQUEST_DISPOSITION, Some('d')),
    (header::REQUIRE, None),
    (header::ROUTE, None),
    (header::SERVER, None),
    (header::SESSION_EXPIRES, Some('x')),
    (header::SUBJECT, Some('s')),
    (header::SUBSCRIPTION_STATE, None),
    (header::SUPPORTED, Some('k')),
    (header::TO, Some('t')),
    (header::USER_AGENT, None),
    (header::VIA, Some('v')),
];

/// Headers whose grammar is a comma-separated list (`get_all` splits them).
const LISTS: [&str; 17] = [
    header::ACCEPT,
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    header::ALLOW,
    header::ALLOW_EVENTS,
    "Call-Info",
    header::CONTACT,
    header::CONTENT_ENCODING,
    "Error-Info",
    header::PROXY_REQUIRE,
    header::RECORD_ROUTE,
    header::REQUIRE,
    header::ROUTE,
    header::SUPPORTED,
    header::UNSUPPORTED,
    header::VIA,
];

/// The canonical name for a header name as written (compact or any case).
fn canonical(name: &str) -> std::borrow::Cow<'_, str> {
    let found = if name.len() == 1 {
        let c = name.as_bytes()[0].to_ascii_lowercase() as char;
        CANONICAL.iter().find(|(_, k)| *k == Some(c))
    } else {
        CANONICAL.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    match found {
        Some((n, _)) => (*n).into(),
        None => name.into(),
    }
}

/// Headers in wire order. Names are stored in their full canonical form
/// (`v` → `Via`, `i` → `Call-ID`, …); lookups are case-insensitive and accept
/// compact forms too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The first value of header `name` (a comma-joined line is returned whole).
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = canonical(name);
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }

    /// Every element of header `name` in order, splitting comma-separated lines
    /// into elements (respecting quoted strings and `<...>`) for the headers whose
    /// grammar is a list (Via, Route, Record-Route, Contact, Allow, Supported,
    /// Require, Accept, …). Headers that are not lists are returned one per line.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.elements(name).collect()
    }

    /// The elements [`get_all`](Self::get_all) returns, without collecting
    /// them into a `Vec` (the top Via or a count, on every message).
    pub fn elements<'a, 'b>(
        &'a self,
        name: &'b str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'b> {
        let name = canonical(name);
        let is_list = LISTS.iter().any(|l| l.eq_ignore_ascii_case(&name));
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .flat_map(move |(_, v)| uri::split_unquoted(v, is_list.then_some(b',')))
            .map(move |e| if is_list { e.trim() } else { e })
            .filter(move |e| !is_list || !e.is_empty())
    }

    /// Append a header line.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((canonical(name).into_owned(), value.into()));
    }

    /// Replace every line of `name` with one line holding `value` (at the first one's place).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let canon = canonical(name).into_owned();
        match self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&canon))
        {
            Some(i) => {
                self.0[i].1 = value.into();
                let mut seen = 0;
                self.0.retain(|(n, _)| {
                    let same = n.eq_ignore_ascii_case(&canon);
                    seen += same as usize;
                    !same || seen == 1
                });
            }
            None => self.0.push((canon, value.into())),
        }
    }

    /// Remove every line of `name`.
    pub fn remove(&mut self, name: &str) {
        let name = canonical(name);
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
    }

    /// Iterate `(name, value)` lines in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request-URI.
    pub uri: Uri,
    /// Headers.
    pub headers: Headers,
    /// Body (exactly Content-Length bytes).
    pub body: Vec<u8>,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Request.
    Request(Request),
    /// Response.
    Response(Response),
}

/// Largest header section we accept before calling a stream broken.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Parse one datagram (UDP). Accepts CRLF or bare-LF line ends, folded header
/// lines, compact header names, and honours Content-Length (bytes beyond it are
/// ignored; a body shorter than it is an error). A missing Content-Length on a
/// datagram means "the rest of the datagram" (RFC 3261 §18.3).
pub fn parse_datagram(buf: &[u8]) -> Result<Message, ParseError> {
    let (head_len, body_start) = match find_header_end(buf) {
        Some(x) => x,
        // A datagram that ends inside the headers: take it as headers only.
        None => (buf.len(), buf.len()),
    };
    parse_framed(buf, head_len, body_start, false).map(|(m, _)| m)
}

/// Parse the first message of a stream buffer (TCP): returns the message and the
/// number of bytes it used; `Err(Incomplete)` when more bytes are needed.
/// Content-Length is mandatory on streams. Leading CRLF keep-alives are skipped.
pub fn parse_stream(buf: &[u8]) -> Result<(Message, usize), ParseError> {
    let skip = buf
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let rest = &buf[skip..];
    let Some((head_len, body_start)) = find_header_end(rest) else {
        return if rest.len() > MAX_HEADER_BYTES {
            Err(ParseError::Unparseable("header section too long".into()))
        } else {
            Err(ParseError::Incomplete)
        };
    };
    parse_framed(rest, head_len, body_start, true).map(|(m, used)| (m, used + skip))
}

/// Index of the end of the header section and of the body start: the first
/// empty line, CRLF or bare LF.
fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let next = &buf[nl + 1..];
        if next.starts_with(b"\r\n") {
            return Some((nl + 1, nl + 3));
        }
        if next.starts_with(b"\n") {
            return Some((nl + 1, nl + 2));
        }
        i = nl + 1;
    }
    None
}

fn unparseable(why: impl Into<String>) -> ParseError {
    ParseError::Unparseable(why.into())
}

enum StartLine {
    Request(Method, String, String),
    Response(u16, String),
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    let raw = line;
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.trim_start().split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code
            .parse()
            .ok()
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| unparseable(format!("bad status line {line:?}")))?;
        return Ok(StartLine::Response(code, reason.trim().to_string()));
    }
    // RFC 3261 §25.1: Request-Line = Method SP Request-URI SP SIP-Version;
    // extra or trailing white space is malformed (RFC 4475 §3.1.2.9-10).
    if raw != line || line.contains("  ") || line.contains('\t') {
        return Err(unparseable(format!(
            "bad start line {line:?} (white space)"
        )));
    }
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unparseable(format!("bad start line {line:?}")));
    };
    if !method.bytes().all(uri::is_token_char) {
        return Err(unparseable(format!("bad method in {line:?}")));
    }
    Ok(StartLine::Request(
        Method::from_token(method),
        uri.to_string(),
        version.to_string(),
    ))
}

fn parse_framed(
    buf: &[u8],
    head_len: usize,
    body_start: usize,
    stream: bool,
) -> Result<(Message, usize), ParseError> {
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| unparseable("header section is not UTF-8"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines
        .by_ref()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| unparseable("empty message"))?;
    let start = parse_start_line(start)?;

    // Unfold continuation lines (§7.3.1), then split name and value. A line
    // is copied only when a continuation follows it.
    let mut headers = Headers::default();
    let mut problem: Option<String> = None;
    let mut pending: Option<std::borrow::Cow<'_, str>> = None;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match pending.as_mut() {
                Some(prev) => {
                    let prev = prev.to_mut();
                    prev.push(' ');
                    prev.push_str(line.trim());
                }
                None => problem = Some("continuation line before any header".into()),
            }
        } else if let Some(prev) = pending.replace(line.into()) {
            header_line(&prev, &mut headers, &mut problem);
        }
    }
    if let Some(prev) = pending {
        header_line(&prev, &mut headers, &mut problem);
    }

    let available = buf.len().saturating_sub(body_start);
    let content_length = match headers.get_all(header::CONTENT_LENGTH).as_slice() {
        [] => None,
        [v] => match v.trim().parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                problem.get_or_insert_with(|| format!("invalid Content-Length {v:?}"));
                Some(0)
            }
        },
        _ => {
            problem.get_or_insert_with(|| "more than one Content-Length".into());
            Some(0)
        }
    };
    let body_len = match (content_length, stream) {
        (Some(n), true) if n > available => return Err(ParseError::Incomplete),
        (Some(n), false) if n > available => {
            problem.get_or_insert_with(|| {
                format!("Content-Length {n} larger than the {available}-byte body")
            });
            available
        }
        (Some(n), _) => n,
        (None, true) => 0,
        (None, false) => available,
    };
    let body = buf[body_start.min(buf.len())..body_start.min(buf.len()) + body_len].to_vec();
    let used = body_start + body_len;

    match start {
        StartLine::Response(code, reason) => {
            if let Some(p) = problem {
                return Err(unparseable(p));
            }
            let resp = Response {
                code,
                reason,
                headers,
                body,
            };
            for (name, ok) in [
                (header::VIA, resp.top_via().is_some()),
                (header::CSEQ, resp.cseq().is_some()),
                (header::CALL_ID, resp.call_id().is_some()),
            ] {
                if !ok {
                    return Err(unparseable(format!("response without a valid {name}")));
                }
            }
            Ok((Message::Response(resp), used))
        }
        StartLine::Request(method, uri_text, version) => {
            let uri = Uri::parse(&uri_text);
            let mut req = Request {
                method,
                uri: uri.clone().unwrap_or_else(|_| placeholder_uri()),
                headers,
                body,
            };
            // Without a Via there is nowhere to send a response (§18.2.2).
            if req.top_via().is_none() {
                return Err(unparseable("request without a valid Via"));
            }
            if problem.is_none() {
                problem = validate_request(&req, &uri_text, &version, uri.is_ok());
            }
            match problem {
                Some(reason) => {
                    if uri.is_err() {
                        req.uri = placeholder_uri();
                    }
                    Err(ParseError::BadRequest {
                        reason,
                        request: Box::new(req),
                    })
                }
                None => Ok((Message::Request(req), used)),
            }
        }
    }
}

/// One unfolded header line into `headers`, or the first problem noted.
fn header_line(line: &str, headers: &mut Headers, problem: &mut Option<String>) {
    match line.split_once(':') {
        Some((name, value))
            if !name.trim().is_empty() && name.trim().bytes().all(uri::is_token_char) =>
        {
            headers.push(name.trim(), value.trim());
        }
        _ => {
            problem.get_or_insert_with(|| format!("malformed header line {:?}", truncate(line)));
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn placeholder_uri() -> Uri {
    Uri {
        scheme: Scheme::Sip,
        user: None,
        host: "invalid".into(),
        port: None,
        params: Params::default(),
        headers: Vec::new(),
    }
}

/// §8.2.2 / §16.3 checks that end in `400` (or would, for a stricter peer).
fn validate_request(req: &Request, uri: &str, version: &str, uri_ok: bool) -> Option<String> {
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Some(format!("Unsupported SIP version {}", truncate(version)));
    }
    if !uri_ok {
        return Some(format!("Malformed Request-URI {:?}", truncate(uri)));
    }
    if req
        .headers
        .get_all(header::VIA)
        .iter()
        .any(|v| Via::parse(v).is_err())
    {
        return Some("Malformed Via".into());
    }
    for (name, ok) in [
        (
            header::CALL_ID,
            req.call_id().is_some_and(|c| !c.is_empty()),
        ),
        (header::FROM, req.from().is_some()),
        (header::TO, req.to().is_some()),
    ] {
        if !ok {
            let what = if req.headers.get(name).is_some() {
                "Malformed"
            } else {
                "Missing"
            };
            return Some(format!("{what} {name}"));
        }
    }
    match req.cseq() {
        None if req.headers.get(header::CSEQ).is_some() => Some("Malformed CSeq".into()),
        None => Some("Missing CSeq".into()),
        Some(c) if c.method != req.method => Some("CSeq method does not match the request".into()),
        Some(_) => None,
    }
}

fn write_message(start: String, headers: &Headers, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(start.len() + 64 * headers.0.len() + body.len() + 32);
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in headers.iter() {
        if n.eq_ignore_ascii_case(header::CONTENT_LENGTH) {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Shared accessors of requests and responses.
macro_rules! common_accessors {
    () => {
        /// Top Via, parsed.
        pub fn top_via(&self) -> Option<Via> {
            self.headers
                .elements(header::VIA)
                .next()
                .and_then(|v| Via::parse(v).ok())
        }
        /// CSeq, parsed.
        pub fn cseq(&self) -> Option<CSeq> {
            self.headers
                .get(header::CSEQ)
                .and_then(|v| CSeq::parse(v).ok())
        }
        /// Call-ID.
        pub fn call_id(&self) -> Option<&str> {
            self.headers.get(header::CALL_ID)
        }
        /// From, parsed.
        pub fn from(&self) -> Option<NameAddr> {
            self.headers
                .get(header::FROM)
                .and_then(|v| NameAddr::parse(v).ok())
        }
        /// To, parsed.
        pub fn to(&self) -> Option<NameAddr> {
            self.headers
                .get(header::TO)
                .and_then(|v| NameAddr::parse(v).ok())
        }
    };
}

impl Request {
    /// Serialise with CRLF line ends and a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        write_message(
            format!("{} {} SIP/2.0", self.method, self.uri),
            &self.headers,
            &self.body,
        )
    }

    /// Build a response to this request per RFC 3261 §8.2.6: copies every Via,
    /// From, To, Call-ID, CSeq (and Record-Route for 18x/2xx to dialog-creating
    /// requests is the caller's business). No To-tag is added here.
    pub fn make_response(&self, code: u16, reason: &str) -> Response {
        let mut headers = Headers::default();
        for (n, v) in self.headers.iter() {
            if [
                header::VIA,
                header::FROM,
                header::TO,
                header::CALL_ID,
                header::CSEQ,
            ]
            .contains(&n)
            {
                headers.0.push((n.to_string(), v.to_string()));
            }
        }
        Response {
            code,
            reason: reason.to_string(),
            headers,
            body: Vec::new(),
        }
    }

    common_accessors!();
}

impl Response {
    /// Serialise with CRLF line ends and a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        write_message(
            format!("SIP/2.0 {} {}", self.code, self.reason),
            &self.headers,
            &self.body,
        )
    }

    common_accessors!();
}

impl Message {
    /// Serialise.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

#[cfg(test)]
mod tests;
