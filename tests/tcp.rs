//! SIP over TCP (RFC 3261 §18) against the real binary on loopback: one
//! connection carries the whole call, emonav's REFER and BYE included.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use emonav_sip::message::{Message, Request, Response};
use emonav_sip::transport::{Frame, StreamFramer};
use support::{fixture, Emonav, Uac};

const S: Duration = Duration::from_secs(1);

/// A caller on one TCP connection; RTP goes through a [`Uac`]'s UDP socket.
struct TcpCaller {
    stream: TcpStream,
    framer: StreamFramer,
    remote: SocketAddr,
    call_id: String,
    tag: String,
    remote_tag: Option<String>,
    pending: Vec<Request>,
}

impl TcpCaller {
    fn connect(remote: SocketAddr) -> TcpCaller {
        TcpCaller {
            stream: TcpStream::connect(remote).expect("TCP connect to emonav"),
            framer: StreamFramer::default(),
            remote,
            call_id: format!("{:x}@tcp-test", fastrand::u64(..)),
            tag: format!("{:x}", fastrand::u32(..)),
            remote_tag: None,
            pending: Vec::new(),
        }
    }

    fn me(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    /// The next message on the connection; `None` on timeout or close.
    fn recv(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            match self
                .framer
                .next_frame()
                .expect("emonav sent a broken stream")
            {
                Some(Frame::Message(m)) => return Some(m),
                Some(Frame::Ping) => continue,
                None => {}
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.framer.push(&buf[..n]),
            }
        }
    }

    fn invite(&mut self, sdp: &str) {
        let (me, r) = (self.me(), self.remote);
        let text = format!(
            "INVITE sip:emonav@{r};transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP {me};branch=z9hG4bK{b:x}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={t}\r\nTo: <sip:emonav@{r}>\r\n\
             Call-ID: {c}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{me};transport=tcp>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            b = fastrand::u64(..),
            t = self.tag,
            c = self.call_id,
            len = sdp.len()
        );
        self.send(&text);
    }

    fn request(&mut self, method: &str, cseq: u32, extra: &str, body: &str) -> String {
        let (me, r) = (self.me(), self.remote);
        let branch = format!("z9hG4bK{:x}", fastrand::u64(..));
        let text = format!(
            "{method} sip:emonav@{r};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch={branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={t}\r\n\
             To: <sip:emonav@{r}>;tag={rt}\r\nCall-ID: {c}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:caller@{me};transport=tcp>\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
            t = self.tag,
            rt = self.remote_tag.as_deref().unwrap_or(""),
            c = self.call_id,
            len = body.len()
        );
        self.send(&text);
        branch
    }

    fn final_response(&mut self, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).expect("no final response") {
                Message::Response(r) if r.code >= 200 => return r,
                Message::Response(_) => {}
                Message::Request(r) => self.pending.push(r),
            }
        }
    }

    fn expect_request(&mut self, method: &str, timeout: Duration) -> Option<Request> {
        if let Some(i) = self
            .pending
            .iter()
            .position(|r| r.method.as_str() == method)
        {
            return Some(self.pending.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.recv(left)? {
                Message::Request(r) if r.method.as_str() == method => return Some(r),
                Message::Request(r) => self.pending.push(r),
                Message::Response(_) => {}
            }
        }
    }

    fn respond(&mut self, req: &Request, code: u16, reason: &str) {
        let mut resp = req.make_response(code, reason);
        resp.headers.push(
            "Contact",
            format!("<sip:caller@{};transport=tcp>", self.me()),
        );
        self.stream.write_all(&resp.to_bytes()).unwrap();
    }
}

#[test]
fn startup_line_names_the_tcp_address_on_the_udp_port() {
    let emonav = Emonav::start("");
    let tcp = emonav
        .sip_tcp
        .expect("sip_tcp=tcp:ADDR in the startup line");
    assert_eq!(tcp, emonav.sip, "TCP listens on the UDP address and port");
    let off = Emonav::start("[sip]\ntransports = [\"udp\"]\n");
    assert_eq!(off.sip_tcp, None);
}

#[test]
fn call_over_tcp_is_transferred_on_the_same_connection() {
    let emonav = Emonav::start("");
    let addr = emonav.sip_tcp.expect("TCP on by default");
    let mut caller = TcpCaller::connect(addr);
    // RTP still goes over UDP: a Uac only for its RTP socket and player.
    let mut media = Uac::new(emonav.sip);
    caller.invite(&media.g711_offer());
    let ok = caller.final_response(5 * S);
    assert_eq!(ok.code, 200);
    assert_eq!(
        ok.headers.get("Contact"),
        Some(format!("<sip:emonav@{addr};transport=tcp>").as_str())
    );
    caller.remote_tag = ok.to().and_then(|t| t.tag().map(str::to_owned));
    let body = String::from_utf8_lossy(&ok.body).to_string();
    let port: u16 = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port in the answer");
    media.remote_rtp = Some(SocketAddr::new(addr.ip(), port));
    caller.request("ACK", 1, "", "");
    media.play(fixture("agitated.ul"), 0);

    let refer = caller
        .expect_request("REFER", 6 * S)
        .expect("REFER on the INVITE's connection");
    assert_eq!(
        refer.headers.get("Refer-To"),
        Some("<sip:deescalation@127.0.0.1:5070>")
    );
    let via = refer.top_via().unwrap();
    assert_eq!(via.transport, "TCP");
    assert_eq!(
        refer.headers.get("Contact"),
        Some(format!("<sip:emonav@{addr};transport=tcp>").as_str())
    );
    caller.respond(&refer, 202, "Accepted");
    let notify = caller.request(
        "NOTIFY",
        2,
        "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n\
         Content-Type: message/sipfrag;version=2.0\r\n",
        "SIP/2.0 200 OK\r\n",
    );
    let resp = caller.final_response(2 * S);
    assert_eq!(resp.code, 200);
    assert_eq!(
        resp.top_via().unwrap().branch(),
        Some(notify.as_str()),
        "the 200 answers our NOTIFY"
    );
    let bye = caller.expect_request("BYE", 3 * S).expect("BYE over TCP");
    assert_eq!(bye.top_via().unwrap().transport, "TCP");
    caller.respond(&bye, 200, "OK");
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["outcome"], "transferred");
    assert_eq!(ev["queue"], "sip:deescalation@127.0.0.1:5070");
}

#[test]
fn options_over_tcp_and_a_bad_request_closes_the_connection_after_400() {
    let emonav = Emonav::start("");
    let addr = emonav.sip_tcp.unwrap();
    let mut c = TcpCaller::connect(addr);
    // Two requests in one write: both answered, in order.
    let me = c.me();
    let options = |cseq: u32| {
        format!(
            "OPTIONS sip:emonav@{addr} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKo{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=1\r\nTo: <sip:emonav@{addr}>\r\n\
             Call-ID: opt@tcp\r\nCSeq: {cseq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    c.send(&format!("{}{}", options(1), options(2)));
    for cseq in [1, 2] {
        let r = c.final_response(2 * S);
        assert_eq!((r.code, r.cseq().unwrap().seq), (200, cseq));
    }
    c.send(&options(3).replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia"));
    assert_eq!(c.final_response(2 * S).code, 400);
    assert!(c.recv(2 * S).is_none(), "connection closed after the 400");
}

#[test]
fn oversized_message_gets_513_and_the_connection_closes() {
    let emonav = Emonav::start("");
    let addr = emonav.sip_tcp.unwrap();
    let mut c = TcpCaller::connect(addr);
    let me = c.me();
    c.send(&format!(
        "MESSAGE sip:emonav@{addr} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKbig\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=1\r\nTo: <sip:emonav@{addr}>\r\n\
         Call-ID: big@tcp\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
         Content-Length: 1000000\r\n\r\nhello"
    ));
    assert_eq!(c.final_response(2 * S).code, 513);
    assert!(c.recv(2 * S).is_none(), "connection closed");
}

#[test]
fn refer_opens_a_new_connection_to_the_contact_once_the_dialogs_one_is_closed() {
    let emonav = Emonav::start("");
    let addr = emonav.sip_tcp.unwrap();
    // Where the caller's Contact points: emonav must connect here (§18.1.1).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let contact = listener.local_addr().unwrap();
    let mut caller = TcpCaller::connect(addr);
    let mut media = Uac::new(emonav.sip);
    let sdp = media.g711_offer();
    let me = caller.me();
    let invite = format!(
        "INVITE sip:emonav@{addr};transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/TCP {me};branch=z9hG4bKre1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={t}\r\nTo: <sip:emonav@{addr}>\r\n\
         Call-ID: {c}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{contact};transport=tcp>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
        t = caller.tag,
        c = caller.call_id,
        len = sdp.len()
    );
    caller.send(&invite);
    let ok = caller.final_response(5 * S);
    assert_eq!(ok.code, 200);
    caller.remote_tag = ok.to().and_then(|t| t.tag().map(str::to_owned));
    let port: u16 = String::from_utf8_lossy(&ok.body)
        .lines()
        .find_map(|l| l.strip_prefix("m=audio ").map(str::to_owned))
        .and_then(|l| l.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap();
    media.remote_rtp = Some(SocketAddr::new(addr.ip(), port));
    caller.request("ACK", 1, "", "");
    std::thread::sleep(Duration::from_millis(100));
    drop(caller);
    media.play(fixture("agitated.ul"), 0);

    // Bounded wait: a test that hangs is worse than one that fails.
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + 6 * S;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("emonav did not connect to the Contact: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    let mut back = TcpCaller {
        stream,
        framer: StreamFramer::default(),
        remote: addr,
        call_id: String::new(),
        tag: String::new(),
        remote_tag: None,
        pending: Vec::new(),
    };
    let refer = back
        .expect_request("REFER", 6 * S)
        .expect("REFER on the new connection");
    assert_eq!(refer.top_via().unwrap().transport, "TCP");
    assert_eq!(
        refer.headers.get("Refer-To"),
        Some("<sip:deescalation@127.0.0.1:5070>")
    );
    // Its 202 goes back on the connection emonav opened.
    back.respond(&refer, 202, "Accepted");
}

/// RFC 4028 §9 over TCP: the 422 goes back on the INVITE's connection (it
/// used to leave over UDP), and the retry on that connection is answered.
#[test]
fn session_interval_too_small_is_422_with_min_se_on_the_tcp_connection() {
    let emonav = Emonav::start("");
    let addr = emonav.sip_tcp.unwrap();
    let mut caller = TcpCaller::connect(addr);
    let media = Uac::new(emonav.sip);
    let sdp = media.g711_offer();
    let (me, tag, call_id) = (caller.me(), caller.tag.clone(), caller.call_id.clone());
    let invite = |branch: &str, se: u32| {
        format!(
            "INVITE sip:emonav@{addr};transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP {me};branch={branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={t}\r\nTo: <sip:emonav@{addr}>\r\n\
             Call-ID: {c}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{me};transport=tcp>\r\n\
             Session-Expires: {se}\r\nSupported: timer\r\n\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            t = tag,
            c = call_id,
            len = sdp.len()
        )
    };
    // Where a UDP reply would go (the Via's address): listen there too.
    let udp = std::net::UdpSocket::bind(me).ok();
    caller.send(&invite("z9hG4bKst1", 30));
    let r = caller.final_response(3 * S);
    assert_eq!((r.code, r.headers.get("Min-SE")), (422, Some("90")));
    assert_eq!(r.top_via().unwrap().transport, "TCP");
    if let Some(udp) = udp {
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        assert!(udp.recv_from(&mut buf).is_err(), "a reply over UDP");
    }
    caller.send(&invite("z9hG4bKst2", 1800));
    let ok = caller.final_response(5 * S);
    assert_eq!(ok.code, 200, "the retry starts a call");
    assert_eq!(
        ok.headers.get("Session-Expires"),
        Some("1800;refresher=uac")
    );
}

/// RFC 3261 §18.2.2: a request inside a call is answered on the transport it
/// came on. A BYE over UDP for a call set up over TCP gets its 200 over UDP,
/// at the BYE's source (rport), not on the dialog's connection.
#[test]
fn bye_over_udp_for_a_call_over_tcp_is_answered_over_udp() {
    let emonav = Emonav::start("");
    let addr = emonav.sip_tcp.expect("TCP on by default");
    let mut caller = TcpCaller::connect(addr);
    let mut udp = Uac::new(emonav.sip);
    caller.invite(&udp.g711_offer());
    let ok = caller.final_response(5 * S);
    assert_eq!(ok.code, 200);
    caller.remote_tag = ok.to().and_then(|t| t.tag().map(str::to_owned));
    caller.request("ACK", 1, "", "");
    let (me, tcp_me) = (udp.addr(), caller.me());
    let branch = format!("z9hG4bK{:x}", fastrand::u64(..));
    udp.send_raw(&format!(
        "BYE sip:emonav@{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{tcp_me}>;tag={t}\r\n\
         To: <sip:emonav@{addr}>;tag={rt}\r\nCall-ID: {c}\r\nCSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        t = caller.tag,
        rt = caller.remote_tag.as_deref().unwrap_or(""),
        c = caller.call_id,
    ));
    let deadline = Instant::now() + 3 * S;
    let resp = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match udp.recv(left).expect("the 200 to the BYE over UDP") {
            Message::Response(r)
                if r.top_via().and_then(|v| v.branch().map(str::to_owned))
                    == Some(branch.clone()) =>
            {
                break r
            }
            _ => {}
        }
    };
    assert_eq!(resp.code, 200);
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["outcome"], "caller_hangup");
    // Nothing for the BYE on the TCP connection.
    if let Some(Message::Response(r)) = caller.recv(Duration::from_millis(300)) {
        panic!("a {} over TCP to the UDP BYE", r.code);
    }
}
