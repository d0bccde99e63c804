//! The transport layer's vocabulary (RFC 3261 §18): which transport a message
//! travels on, as named in Via (`SIP/2.0/TCP`), in a URI's `transport`
//! parameter (`;transport=tcp`) and in a profile's `[sip] transports`.
//!
//! The sans-IO cores only name a transport; the tokio edge (`server`) owns the
//! sockets and connections. TLS (`SIP/2.0/TLS`, `sips:`) is the next variant
//! TLS (`SIP/2.0/TLS`, `;transport=tls`, §26.2.1) is reliable and
//! connection-oriented like TCP, so the edge shares its connection handling
//! and framing; only the stream under it differs.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use super::message::{parse_datagram, parse_stream, Message, ParseError, Request};
use crate::header;

/// A SIP transport (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// UDP (§18.1.1, §18.2.1): one message per datagram, retransmitted by
    /// the transaction layer.
    #[default]
    Udp,
    /// TCP (§18.1.1, §18.3): messages framed by Content-Length on a
    /// connection; responses go back over the connection the request came on
    /// (§18.2.2).
    Tcp,
    /// TLS over TCP (§26.2.1, RFC 5630): framed like TCP, on its own port.
    Tls,
}

/// Where a message came from: the transport, and the source address (for
/// a connection-oriented transport, the connection's remote address, which
/// names the connection). A response goes back the way its request came
/// (§18.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Source address; for a connection, its remote address.
    pub addr: SocketAddr,
    /// Transport the message came on.
    pub transport: Transport,
}

impl Peer {
    /// The connection the message came on, on a connection-oriented
    /// transport (its remote address); `None` over UDP.
    pub fn connection(self) -> Option<SocketAddr> {
        self.transport.is_reliable().then_some(self.addr)
    }
}

impl Transport {
    /// Every transport emonav implements, in the order they are listed.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// The Via sent-protocol transport token (`UDP`, `TCP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The lower-case name, as in `;transport=` and in profiles.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The `transport` URI parameter our Contact carries: none for UDP, the
    /// default of a `sip:` URI (§19.1.1).
    pub fn uri_param(self) -> Option<&'static str> {
        match self {
            Transport::Udp => None,
            Transport::Tcp => Some("tcp"),
            Transport::Tls => Some("tls"),
        }
    }

    /// Reliable transports get no retransmissions from the transaction layer
    /// (timers E and G are for unreliable ones, §17.1.2.2, §17.2.1).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The transport of a Via sent-protocol token (case-insensitive).
    pub fn from_via_token(token: &str) -> Option<Transport> {
        Transport::ALL
            .into_iter()
            .find(|t| t.via_token().eq_ignore_ascii_case(token))
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            "ws" | "wss" | "sctp" => Err(format!("transport {s:?} is not supported yet")),
            _ => Err(format!(
                "unknown transport {s:?} (expected \"udp\", \"tcp\" or \"tls\")"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Transport {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Largest message accepted on a stream, header section and body together.
pub const MAX_STREAM_MESSAGE: usize = 64 * 1024;

/// What a stream yields.
#[derive(Debug)]
pub enum Frame {
    /// A whole message.
    Message(Message),
    /// An RFC 5626 §4.4.1 keep-alive ping (CRLF CRLF): answer with a pong (CRLF).
    Ping,
}

/// Why a stream cannot go on: the edge closes the connection, after
/// answering a request it could read enough of.
#[derive(Debug)]
pub enum FrameError {
    /// A message larger than the bound; `request` is its head when it is a
    /// request whose header section was read (for a `513 Message Too Large`).
    TooLarge {
        /// The request as far as its headers go.
        request: Option<Box<Request>>,
    },
    /// A request that deserves `400 Bad Request` with `reason`.
    BadRequest {
        /// Fit for the reason phrase.
        reason: String,
        /// The request as far as it parsed.
        request: Box<Request>,
    },
    /// Not SIP: nothing to answer.
    Unparseable(String),
}

/// Frames SIP messages out of a byte stream (RFC 3261 §18.3): bytes go in
/// with [`push`](Self::push) as they are read, whole messages come out of
/// [`next_frame`](Self::next_frame), by Content-Length, however the reads cut them.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max: usize,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new(MAX_STREAM_MESSAGE)
    }
}

impl StreamFramer {
    /// A framer refusing messages longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::with_capacity(4096),
            max,
        }
    }

    /// Bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not a whole message yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame; `Ok(None)` when more bytes are needed. After an
    /// error the stream cannot be resynchronised: close it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.starts_with(b"\r\n\r\n") {
            self.buf.drain(..4);
            return Ok(Some(Frame::Ping));
        }
        match parse_stream(&self.buf) {
            Ok((msg, used)) => {
                if used > self.max {
                    return Err(FrameError::TooLarge {
                        request: match msg {
                            Message::Request(r) => Some(Box::new(r)),
                            Message::Response(_) => None,
                        },
                    });
                }
                self.buf.drain(..used);
                Ok(Some(Frame::Message(msg)))
            }
            Err(ParseError::Incomplete) => {
                let head = self.pending_head();
                let declared = head.as_ref().map_or(0, |(_, total)| *total);
                if declared > self.max || self.buf.len() > self.max {
                    return Err(FrameError::TooLarge {
                        request: head.map(|(r, _)| r),
                    });
                }
                Ok(None)
            }
            Err(ParseError::BadRequest { reason, request }) => {
                Err(FrameError::BadRequest { reason, request })
            }
            Err(ParseError::Unparseable(why)) => Err(FrameError::Unparseable(why)),
        }
    }

    /// The request whose header section is buffered but whose body is not
    /// all there yet, with the total length it declares.
    fn pending_head(&self) -> Option<(Box<Request>, usize)> {
        let start = self.buf.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
        let rest = &self.buf[start..];
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .or_else(|| rest.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))?;
        let req = match parse_datagram(&rest[..end]) {
            Ok(Message::Request(r)) => Box::new(r),
            Err(ParseError::BadRequest { request, .. }) => request,
            _ => return None,
        };
        let declared: usize = req
            .headers
            .get(header::CONTENT_LENGTH)?
            .trim()
            .parse()
            .ok()?;
        Some((req, start + end + declared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tokens() {
        assert_eq!(Transport::Tcp.via_token(), "TCP");
        assert_eq!(Transport::from_via_token("tcp"), Some(Transport::Tcp));
        assert_eq!(Transport::from_via_token("UDP"), Some(Transport::Udp));
        assert_eq!(Transport::from_via_token("tls"), Some(Transport::Tls));
        assert_eq!(Transport::Tls.uri_param(), Some("tls"));
        assert!(Transport::Tls.is_reliable());
        assert_eq!(Transport::Udp.uri_param(), None);
        assert_eq!(Transport::Tcp.uri_param(), Some("tcp"));
        assert!(Transport::Tcp.is_reliable() && !Transport::Udp.is_reliable());
        assert_eq!("TCP".parse::<Transport>(), Ok(Transport::Tcp));
        assert_eq!("TLS".parse::<Transport>(), Ok(Transport::Tls));
        assert!("wss"
            .parse::<Transport>()
            .unwrap_err()
            .contains("not supported yet"));
        assert!("carrier-pigeon"
            .parse::<Transport>()
            .unwrap_err()
            .contains("unknown transport"));
    }

    fn options(call_id: &str, body: &str) -> String {
        format!(
            "OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/TCP h:5060;branch=z9hG4bK1\r\n\
             From: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn call_id(f: Frame) -> String {
        match f {
            Frame::Message(Message::Request(r)) => r.call_id().unwrap().to_string(),
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn two_messages_in_one_read() {
        let mut s = StreamFramer::default();
        s.push(format!("{}{}", options("one", "hello"), options("two", "")).as_bytes());
        assert_eq!(call_id(s.next_frame().unwrap().unwrap()), "one");
        assert_eq!(call_id(s.next_frame().unwrap().unwrap()), "two");
        assert!(s.next_frame().unwrap().is_none());
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_message_split_across_reads_at_every_byte() {
        let text = options("split", "a body of some length");
        for cut in 1..text.len() {
            let mut s = StreamFramer::default();
            s.push(&text.as_bytes()[..cut]);
            assert!(s.next_frame().unwrap().is_none(), "cut at {cut}");
            s.push(&text.as_bytes()[cut..]);
            match s.next_frame().unwrap().unwrap() {
                Frame::Message(Message::Request(r)) => assert_eq!(r.body, b"a body of some length"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn keep_alives_between_messages() {
        let mut s = StreamFramer::default();
        s.push(b"\r\n\r\n");
        assert!(matches!(s.next_frame().unwrap(), Some(Frame::Ping)));
        s.push(format!("\r\n{}", options("after-crlf", "")).as_bytes());
        assert_eq!(call_id(s.next_frame().unwrap().unwrap()), "after-crlf");
    }

    #[test]
    fn oversized_body_is_refused_once_its_head_is_read() {
        let mut s = StreamFramer::new(1024);
        let text = options("big", &"x".repeat(4096));
        // The head alone declares too much: no need to wait for the body.
        let head_end = text.find("\r\n\r\n").unwrap() + 4;
        s.push(&text.as_bytes()[..head_end + 10]);
        match s.next_frame() {
            Err(FrameError::TooLarge { request: Some(r) }) => assert_eq!(r.call_id(), Some("big")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_header_section_is_refused() {
        let mut s = StreamFramer::new(1024);
        s.push(b"OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n");
        for _ in 0..100 {
            s.push(b"X-Padding: 0123456789abcdef\r\n");
        }
        assert!(matches!(
            s.next_frame(),
            Err(FrameError::TooLarge { request: None })
        ));
    }

    #[test]
    fn missing_content_length_on_a_stream_means_no_body() {
        let mut s = StreamFramer::default();
        let text = options("n", "").replace("Content-Length: 0\r\n", "");
        s.push(text.as_bytes());
        assert_eq!(call_id(s.next_frame().unwrap().unwrap()), "n");
    }

    #[test]
    fn framing_errors() {
        let mut s = StreamFramer::default();
        s.push(
            options("bad", "")
                .replace("Content-Length: 0", "Content-Length: zero")
                .as_bytes(),
        );
        assert!(matches!(s.next_frame(), Err(FrameError::BadRequest { .. })));
        let mut s = StreamFramer::default();
        s.push(b"GET / HTTP/1.1 extra\r\n\r\n");
        assert!(matches!(s.next_frame(), Err(FrameError::Unparseable(_))));
    }
}
