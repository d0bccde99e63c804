//! A call whose INVITE came over TCP (RFC 3261 §18): Via, Contact, where its
//! messages go, and no retransmissions on a reliable transport.

use super::*;
use crate::config::Profile;
use emonav_sip::message::{parse_datagram, Message};

/// The connection's remote address (an ephemeral port).
const CONN: &str = "127.0.0.1:40123";

/// The dialog's connection, over TCP.
fn conn() -> Peer {
    Peer {
        addr: CONN.parse().unwrap(),
        transport: Transport::Tcp,
    }
}

fn settings() -> Arc<CallSettings> {
    Arc::new(CallSettings::from_profile(&Profile::default(), 5060))
}

fn request(text: &str) -> Request {
    match parse_datagram(text.as_bytes()).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

fn invite() -> Request {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0\r\n";
    request(&format!(
        "INVITE sip:emonav@127.0.0.1;transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKtcp1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\n\
         Call-ID: tcp-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5070;transport=tcp>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

struct Sent {
    msg: Message,
    dest: SocketAddr,
    transport: Transport,
    connection: Option<SocketAddr>,
}

fn sent(call: &mut Call) -> Vec<Sent> {
    super::tests::outputs(call)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit(Transmit {
                socket:
                    Socket::Sip {
                        transport,
                        connection,
                    },
                dest,
                payload,
            }) => Some(Sent {
                msg: parse_datagram(&payload).unwrap(),
                dest,
                transport,
                connection,
            }),
            _ => None,
        })
        .collect()
}

fn tcp_call(t0: Instant) -> Call {
    let conn: SocketAddr = CONN.parse().unwrap();
    let mut call = Call::new_on(
        settings(),
        invite(),
        conn,
        Transport::Tcp,
        "127.0.0.1:20000".parse().unwrap(),
        t0,
    )
    .unwrap();
    let out = sent(&mut call);
    assert_eq!(out.len(), 2, "100 and 200");
    for s in &out {
        assert_eq!(s.transport, Transport::Tcp);
        assert_eq!(s.connection, Some(conn), "on the INVITE's connection");
        // §18.2.2: if the connection is gone, the received address at the sent-by port.
        assert_eq!(s.dest, "127.0.0.1:5070".parse().unwrap());
    }
    let Message::Response(ok) = &out[1].msg else {
        panic!("not a response")
    };
    assert_eq!(ok.code, 200);
    assert_eq!(
        ok.headers.get("Contact"),
        Some("<sip:emonav@127.0.0.1:5060;transport=tcp>")
    );
    call
}

#[test]
fn via_and_contact_name_the_transport() {
    let s = settings();
    let via = s.via(Transport::Tcp);
    assert!(via
        .to_string()
        .starts_with("SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK"));
    assert!(s
        .via(Transport::Udp)
        .to_string()
        .starts_with("SIP/2.0/UDP 127.0.0.1:5060;"));
    assert_eq!(
        s.contact_uri(Transport::Tcp).to_string(),
        "sip:emonav@127.0.0.1:5060;transport=tcp"
    );
    assert_eq!(
        s.contact_uri(Transport::Udp).to_string(),
        "sip:emonav@127.0.0.1:5060"
    );
}

#[test]
fn refer_goes_over_tcp_on_the_dialog_connection_and_is_not_retransmitted() {
    let t0 = Instant::now();
    let mut call = tcp_call(t0);
    assert_eq!(call.transport(), Transport::Tcp);
    let ack = request(&format!(
        "ACK sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKack\r\n\
         From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>;tag={}\r\n\
         Call-ID: tcp-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        call.dialog.local_tag
    ));
    call.handle_request(&ack, conn(), t0 + Duration::from_millis(10));
    // No audio: the deadline decides.
    call.handle_timeout(t0 + Duration::from_secs(3));
    let out = sent(&mut call);
    assert_eq!(out.len(), 1);
    let Message::Request(refer) = &out[0].msg else {
        panic!("not a request")
    };
    assert_eq!(refer.method, Method::Refer);
    assert_eq!(out[0].transport, Transport::Tcp);
    assert_eq!(out[0].connection, Some(CONN.parse().unwrap()));
    // §18.1.1: else a new connection to the next hop (the Contact).
    assert_eq!(out[0].dest, "127.0.0.1:5070".parse().unwrap());
    assert_eq!(refer.top_via().unwrap().transport, "TCP");
    assert_eq!(
        refer.headers.get("Contact"),
        Some("<sip:emonav@127.0.0.1:5060;transport=tcp>")
    );
    // Timer E does not run on TCP; Timer F still bounds the transaction.
    let mut t = t0 + Duration::from_secs(3);
    while let Some(next) = super::tests::protocol_timeout(&mut call) {
        if next > t0 + Duration::from_secs(3) + call.s.timers.t1 * 64 {
            break;
        }
        t = next;
        call.handle_timeout(t);
        for s in sent(&mut call) {
            if let Message::Request(r) = &s.msg {
                assert_ne!(r.method, Method::Refer, "REFER retransmitted over TCP");
            }
        }
    }
    assert!(t > t0 + Duration::from_secs(3));
}

#[test]
fn responses_follow_the_requests_via_transport() {
    let t0 = Instant::now();
    let mut call = tcp_call(t0);
    let options = request(&format!(
        "OPTIONS sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKo\r\n\
         From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>;tag={}\r\n\
         Call-ID: tcp-1\r\nCSeq: 2 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        call.dialog.local_tag
    ));
    let other: SocketAddr = "127.0.0.1:40999".parse().unwrap();
    let peer = Peer {
        addr: other,
        transport: Transport::Tcp,
    };
    call.handle_request(&options, peer, t0 + Duration::from_millis(5));
    let out = sent(&mut call);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].transport, Transport::Tcp);
    assert_eq!(
        out[0].connection,
        Some(other),
        "the request's own connection"
    );
}

/// A BYE over UDP for a call set up over TCP (RFC 3261 §18.2.2): the 200 goes
/// back over UDP to the BYE's source, not on the dialog's connection; and a
/// retransmitted BYE is answered there again.
#[test]
fn in_dialog_request_on_another_transport_is_answered_on_its_own() {
    let t0 = Instant::now();
    let mut call = tcp_call(t0);
    let bye = request(&format!(
        "BYE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bKbye;rport\r\n\
         From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>;tag={}\r\n\
         Call-ID: tcp-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        call.dialog.local_tag
    ));
    let udp = Peer {
        addr: "127.0.0.1:41000".parse().unwrap(),
        transport: Transport::Udp,
    };
    for (i, t) in [5u64, 505].into_iter().enumerate() {
        call.handle_request(&bye, udp, t0 + Duration::from_millis(t));
        let ok: Vec<Sent> = sent(&mut call)
            .into_iter()
            .filter(|s| matches!(&s.msg, Message::Response(r) if r.code == 200))
            .collect();
        assert_eq!(ok.len(), 1, "one 200 to the BYE (send {i})");
        assert_eq!(ok[0].transport, Transport::Udp);
        assert_eq!(ok[0].connection, None);
        assert_eq!(ok[0].dest, udp.addr, "rport: the BYE's source");
    }
    assert!(
        call.transport() == Transport::Tcp,
        "the dialog stays on TCP"
    );
}
