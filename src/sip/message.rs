//! SIP message syntax (RFC 3261 §7, §20, §25): parsing and serialisation.
//!
//! CONTRACT SKELETON: the signatures and doc comments below are the API the rest
//! of emonav calls; the bodies are being filled in (see docs/decisions.md).

use std::fmt;

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

impl Method {
    /// The method token as sent on the wire.
    pub fn as_str(&self) -> &str {
        todo!()
    }
    /// Parse a method token; never fails for a valid token (unknown → `Other`).
    pub fn from_token(_s: &str) -> Method {
        todo!()
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

/// Headers in wire order. Names are stored in their full canonical form
/// (`v` → `Via`, `i` → `Call-ID`, …); lookups are case-insensitive and accept
/// compact forms too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The first value of header `name` (a comma-joined line is returned whole).
    pub fn get(&self, _name: &str) -> Option<&str> {
        todo!()
    }
    /// Every element of header `name` in order, splitting comma-separated lines
    /// into elements (respecting quoted strings and `<...>`) for the headers whose
    /// grammar is a list (Via, Route, Record-Route, Contact, Allow, Supported,
    /// Require, Accept, …). Headers that are not lists are returned one per line.
    pub fn get_all(&self, _name: &str) -> Vec<&str> {
        todo!()
    }
    /// Append a header line.
    pub fn push(&mut self, _name: &str, _value: impl Into<String>) {
        todo!()
    }
    /// Replace every line of `name` with one line holding `value`.
    pub fn set(&mut self, _name: &str, _value: impl Into<String>) {
        todo!()
    }
    /// Remove every line of `name`.
    pub fn remove(&mut self, _name: &str) {
        todo!()
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

/// Parse one datagram (UDP). Accepts CRLF or bare-LF line ends, folded header
/// lines, compact header names, and honours Content-Length (bytes beyond it are
/// ignored; a body shorter than it is an error). A missing Content-Length on a
/// datagram means "the rest of the datagram" (RFC 3261 §18.3).
pub fn parse_datagram(_buf: &[u8]) -> Result<Message, ParseError> {
    todo!()
}

/// Parse the first message of a stream buffer (TCP): returns the message and the
/// number of bytes it used; `Err(Incomplete)` when more bytes are needed.
/// Content-Length is mandatory on streams. Leading CRLF keep-alives are skipped.
pub fn parse_stream(_buf: &[u8]) -> Result<(Message, usize), ParseError> {
    todo!()
}

impl Request {
    /// Serialise with CRLF line ends and a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        todo!()
    }
    /// Build a response to this request per RFC 3261 §8.2.6: copies every Via,
    /// From, To, Call-ID, CSeq (and Record-Route for 18x/2xx to dialog-creating
    /// requests is the caller's business). No To-tag is added here.
    pub fn make_response(&self, _code: u16, _reason: &str) -> Response {
        todo!()
    }
    /// Top Via, parsed.
    pub fn top_via(&self) -> Option<Via> {
        todo!()
    }
    /// CSeq, parsed.
    pub fn cseq(&self) -> Option<CSeq> {
        todo!()
    }
    /// Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        todo!()
    }
    /// From, parsed.
    pub fn from(&self) -> Option<NameAddr> {
        todo!()
    }
    /// To, parsed.
    pub fn to(&self) -> Option<NameAddr> {
        todo!()
    }
}

impl Response {
    /// Serialise with CRLF line ends and a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        todo!()
    }
    /// Top Via, parsed.
    pub fn top_via(&self) -> Option<Via> {
        todo!()
    }
    /// CSeq, parsed.
    pub fn cseq(&self) -> Option<CSeq> {
        todo!()
    }
    /// Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        todo!()
    }
    /// From, parsed.
    pub fn from(&self) -> Option<NameAddr> {
        todo!()
    }
    /// To, parsed.
    pub fn to(&self) -> Option<NameAddr> {
        todo!()
    }
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

/// A generic `;name[=value]` parameter list, order kept, names compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// Value of a parameter: `Some(Some(v))` with value, `Some(None)` flag, `None` absent.
    pub fn get(&self, _name: &str) -> Option<Option<&str>> {
        todo!()
    }
    /// Set (replace or append) a parameter.
    pub fn set(&mut self, _name: &str, _value: Option<&str>) {
        todo!()
    }
}

/// URI scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// sip:
    Sip,
    /// sips:
    Sips,
    /// tel: (RFC 3966)
    Tel,
}

/// A SIP, SIPS (RFC 3261 §19.1) or tel (RFC 3966) URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Scheme.
    pub scheme: Scheme,
    /// User part (sip/sips), or the telephone-subscriber number (tel), unescaped as on the wire.
    pub user: Option<String>,
    /// Host: domain, IPv4, or IPv6 *with* brackets (`[2001:db8::1]`). Empty for tel.
    pub host: String,
    /// Port.
    pub port: Option<u16>,
    /// `;params`.
    pub params: Params,
    /// `?headers` (e.g. `Replaces=...`), raw `name=value` pairs, still escaped.
    pub headers: Vec<(String, String)>,
}

impl Uri {
    /// Parse a URI.
    pub fn parse(_s: &str) -> Result<Uri, ParseError> {
        todo!()
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// `name-addr` / `addr-spec` with header params (From, To, Contact, Refer-To, Route, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted.
    pub display: Option<String>,
    /// URI.
    pub uri: Uri,
    /// Header parameters (after `>`), e.g. `tag`.
    pub params: Params,
}

impl NameAddr {
    /// Parse one element (`"Bob" <sip:b@h>;tag=x` or `sip:b@h;tag=x`).
    pub fn parse(_s: &str) -> Result<NameAddr, ParseError> {
        todo!()
    }
    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        todo!()
    }
}

impl fmt::Display for NameAddr {
    /// Always written in `name-addr` form (`<uri>`), which is safe for every header.
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// One Via element (RFC 3261 §20.42, RFC 3581 rport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token, upper-case (`UDP`, `TCP`, `TLS`, `WS`, …).
    pub transport: String,
    /// sent-by host (IPv6 with brackets).
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    /// Parameters (`branch`, `rport`, `received`, …).
    pub params: Params,
}

impl Via {
    /// Parse one Via element.
    pub fn parse(_s: &str) -> Result<Via, ParseError> {
        todo!()
    }
    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        todo!()
    }
}

impl fmt::Display for Via {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// CSeq (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (< 2^31).
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parse.
    pub fn parse(_s: &str) -> Result<CSeq, ParseError> {
        todo!()
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}
