//! The endpoint's decisions without sockets: each stateless answer, and the
//! transport, connection and destination of every reply.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::trust::{TrustPolicy, Untrusted};
use emonav_sip::message::{parse_datagram, Response, Uri};
use emonav_sip::registration::{Account, Registration, Settings, State};

/// Where our test requests come from (the packet's source / connection).
const SRC: &str = "192.0.2.7:40000";

fn src() -> SocketAddr {
    SRC.parse().unwrap()
}

fn udp() -> Peer {
    Peer {
        addr: src(),
        transport: Transport::Udp,
    }
}

fn tcp() -> Peer {
    Peer {
        addr: src(),
        transport: Transport::Tcp,
    }
}

fn endpoint() -> Endpoint<u32> {
    endpoint_with(Registrations::default())
}

fn endpoint_with(regs: Registrations) -> Endpoint<u32> {
    Endpoint::new("emonav-test".into(), 90, regs, Arc::new(Metrics::default()))
}

/// A request as a peer writes it. `via` is the top Via's value; `to_tag`
/// makes it in-dialog.
fn text(method: &str, via: &str, to_tag: Option<&str>, extra: &str) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "{method} sip:emonav@198.51.100.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
         From: <sip:caller@10.0.0.1>;tag=abc\r\nTo: <sip:emonav@198.51.100.1>{to_tag}\r\n\
         Call-ID: cid-1@test\r\nCSeq: 1 {method}\r\nContact: <sip:caller@10.0.0.1:5062>\r\n\
         {extra}Content-Length: 0\r\n\r\n"
    )
}

const UDP_RPORT: &str = "SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKt1;rport";
const UDP_NO_RPORT: &str = "SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKt1";
const TCP_VIA: &str = "SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bKt1;rport";

fn msg(text: &str) -> Message {
    parse_datagram(text.as_bytes()).unwrap()
}

fn handle(ep: &mut Endpoint<u32>, text: &str, peer: Peer) -> Option<Event<u32>> {
    ep.handle(msg(text), peer, Instant::now())
}

/// The response the endpoint answers `text` with, and how it is sent.
fn respond(ep: &mut Endpoint<u32>, text: &str, peer: Peer) -> (Response, Transmit) {
    match handle(ep, text, peer) {
        Some(Event::Respond(t)) => match parse_datagram(&t.data).unwrap() {
            Message::Response(r) => (r, t),
            Message::Request(r) => panic!("sent a request: {}", r.method),
        },
        other => panic!("no response: {other:?}"),
    }
}

#[test]
fn options_is_200_with_allow_back_to_the_source_port_with_rport() {
    let (r, t) = respond(
        &mut endpoint(),
        &text("OPTIONS", UDP_RPORT, None, ""),
        udp(),
    );
    assert_eq!(r.code, 200);
    assert!(r.headers.get("Allow").unwrap().contains("REFER"));
    assert!(r.headers.get("Accept").is_some());
    assert_eq!(r.headers.get("Server"), Some("emonav-test"));
    assert!(r.to().unwrap().tag().is_some(), "To tag added");
    // RFC 3581: to the packet's source address and port.
    assert_eq!(
        (t.dest, t.transport, t.connection),
        (src(), Transport::Udp, None)
    );
}

#[test]
fn without_rport_a_udp_reply_goes_to_the_source_ip_at_the_via_port() {
    let (_, t) = respond(
        &mut endpoint(),
        &text("OPTIONS", UDP_NO_RPORT, None, ""),
        udp(),
    );
    // §18.2.2: `received` (the source IP) at the sent-by port.
    assert_eq!(t.dest, "192.0.2.7:5062".parse().unwrap());
    assert_eq!((t.transport, t.connection), (Transport::Udp, None));
}

#[test]
fn a_tcp_reply_goes_on_the_requests_connection() {
    let (r, t) = respond(&mut endpoint(), &text("OPTIONS", TCP_VIA, None, ""), tcp());
    assert_eq!(r.code, 200);
    assert_eq!(t.transport, Transport::Tcp);
    assert_eq!(t.connection, Some(src()), "the request's connection");
    // rport is for UDP: a new connection, if needed, goes to the sent-by port.
    assert_eq!(t.dest, "192.0.2.7:5070".parse().unwrap());
}

#[test]
fn methods_not_taken_outside_a_dialog_are_405_with_allow() {
    for method in ["REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "REFER"] {
        for peer in [udp(), tcp()] {
            let via = if peer.transport == Transport::Tcp {
                TCP_VIA
            } else {
                UDP_RPORT
            };
            let (r, t) = respond(&mut endpoint(), &text(method, via, None, ""), peer);
            assert_eq!(r.code, 405, "{method}");
            assert!(r.headers.get("Allow").is_some(), "{method}");
            assert_eq!(t.transport, peer.transport, "{method}");
            assert_eq!(t.connection, peer.transport.is_reliable().then_some(src()));
        }
    }
}

#[test]
fn unknown_method_is_501_with_allow() {
    let (r, t) = respond(
        &mut endpoint(),
        &text("FROBNICATE", UDP_RPORT, None, ""),
        udp(),
    );
    assert_eq!(r.code, 501);
    assert!(r.headers.get("Allow").is_some());
    assert_eq!(t.dest, src());
    let (r, t) = respond(
        &mut endpoint(),
        &text("FROBNICATE", TCP_VIA, None, ""),
        tcp(),
    );
    assert_eq!(
        (r.code, t.transport, t.connection),
        (501, Transport::Tcp, Some(src()))
    );
}

#[test]
fn in_dialog_requests_of_no_dialog_are_481() {
    for method in ["BYE", "INVITE", "OPTIONS", "NOTIFY", "INFO", "UPDATE"] {
        let (r, t) = respond(
            &mut endpoint(),
            &text(method, UDP_RPORT, Some("nosuch"), ""),
            udp(),
        );
        assert_eq!(r.code, 481, "{method}");
        assert_eq!(r.to().unwrap().tag(), Some("nosuch"), "{method}: tag kept");
        assert_eq!(t.dest, src());
    }
    let (r, t) = respond(&mut endpoint(), &text("BYE", TCP_VIA, Some("x"), ""), tcp());
    assert_eq!(
        (r.code, t.transport, t.connection),
        (481, Transport::Tcp, Some(src()))
    );
    let (r, _) = respond(&mut endpoint(), &text("CANCEL", UDP_RPORT, None, ""), udp());
    assert_eq!(r.code, 481, "CANCEL of no INVITE (§9.2)");
}

#[test]
fn ack_and_keepalives_are_never_answered() {
    let mut ep = endpoint();
    assert!(handle(&mut ep, &text("ACK", UDP_RPORT, Some("x"), ""), udp()).is_none());
    assert!(handle(&mut ep, &text("ACK", UDP_RPORT, None, ""), udp()).is_none());
    assert!(ep
        .handle_datagram(b"\r\n\r\n", src(), Instant::now())
        .is_none());
    assert!(ep.handle_datagram(b"\r\n", src(), Instant::now()).is_none());
    assert_eq!(ep.metrics.sip_unparseable.load(Ordering::Relaxed), 0);
}

#[test]
fn malformed_request_is_400_with_the_reason_and_counted() {
    let mut ep = endpoint();
    let bad =
        text("OPTIONS", UDP_NO_RPORT, None, "").replace("CSeq: 1 OPTIONS", "CSeq: seven OPTIONS");
    let Some(Event::Respond(t)) = ep.handle_datagram(bad.as_bytes(), src(), Instant::now()) else {
        panic!("no 400");
    };
    let resp = String::from_utf8(t.data).unwrap();
    let status = resp.lines().next().unwrap();
    assert!(status.starts_with("SIP/2.0 400 Bad Request ("), "{status}");
    assert!(status.contains("CSeq"), "{status}");
    assert!(resp.contains("Call-ID: cid-1@test\r\n"));
    assert_eq!(t.dest, "192.0.2.7:5062".parse().unwrap());
    assert_eq!((t.transport, t.connection), (Transport::Udp, None));
    assert_eq!(ep.metrics.sip_bad_request.load(Ordering::Relaxed), 1);
    // A malformed ACK is counted, never answered (§17.2.3).
    let ack = bad.replace("OPTIONS", "ACK");
    assert!(ep
        .handle_datagram(ack.as_bytes(), src(), Instant::now())
        .is_none());
    assert_eq!(ep.metrics.sip_bad_request.load(Ordering::Relaxed), 2);
}

#[test]
fn garbage_is_counted_and_dropped() {
    let mut ep = endpoint();
    assert!(ep
        .handle_datagram(b"\x16\x03\x01 not sip", src(), Instant::now())
        .is_none());
    assert_eq!(ep.metrics.sip_unparseable.load(Ordering::Relaxed), 1);
}

#[test]
fn too_small_session_interval_is_422_with_min_se_on_the_requests_transport() {
    let mut ep = endpoint();
    let invite = text(
        "INVITE",
        TCP_VIA,
        None,
        "Session-Expires: 30\r\nSupported: timer\r\n",
    );
    let (r, t) = respond(&mut ep, &invite, tcp());
    assert_eq!((r.code, r.headers.get("Min-SE")), (422, Some("90")));
    assert_eq!(r.headers.get("Server"), Some("emonav-test"));
    assert_eq!(
        t.transport,
        Transport::Tcp,
        "not UDP: the INVITE came over TCP"
    );
    assert_eq!(t.connection, Some(src()));
    assert_eq!(t.dest, "192.0.2.7:5070".parse().unwrap());
    assert_eq!(ep.calls(), 0, "refused statelessly: no call");
    assert_eq!(ep.metrics.calls_started.load(Ordering::Relaxed), 0);

    let invite = text(
        "INVITE",
        UDP_RPORT,
        None,
        "Session-Expires: 30\r\nMin-SE: 120\r\n",
    );
    let (r, t) = respond(&mut ep, &invite, udp());
    assert_eq!(
        r.headers.get("Min-SE"),
        Some("120"),
        "the larger of both minimums"
    );
    assert_eq!(
        (t.dest, t.transport, t.connection),
        (src(), Transport::Udp, None)
    );
}

#[test]
fn an_invite_starts_a_call_and_its_messages_are_routed_to_it() {
    let mut ep = endpoint();
    let invite = text("INVITE", TCP_VIA, None, "Session-Expires: 1800\r\n");
    match handle(&mut ep, &invite, tcp()) {
        Some(Event::NewCall {
            call_id,
            invite,
            peer,
        }) => {
            assert_eq!(call_id, "cid-1@test");
            assert_eq!(invite.method, Method::Invite);
            assert_eq!(peer, tcp());
        }
        other => panic!("not a new call: {other:?}"),
    }
    assert_eq!(ep.metrics.calls_started.load(Ordering::Relaxed), 1);
    ep.insert_call("cid-1@test".into(), 7);
    for m in [
        invite.clone(),
        text("BYE", UDP_RPORT, Some("ours"), ""),
        text("ACK", UDP_RPORT, Some("ours"), ""),
        "SIP/2.0 202 Accepted\r\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKr\r\n\
         From: <sip:emonav@198.51.100.1>;tag=ours\r\nTo: <sip:caller@10.0.0.1>;tag=abc\r\n\
         Call-ID: cid-1@test\r\nCSeq: 1 REFER\r\nContent-Length: 0\r\n\r\n"
            .to_string(),
    ] {
        match handle(&mut ep, &m, udp()) {
            Some(Event::ToCall {
                handle, call_id, ..
            }) => assert_eq!((handle, call_id.as_str()), (7, "cid-1@test")),
            other => panic!("not routed: {other:?}"),
        }
    }
    assert_eq!(
        ep.metrics.calls_started.load(Ordering::Relaxed),
        1,
        "a retransmission is no new call"
    );
    ep.remove_call("cid-1@test");
    let (r, _) = respond(&mut ep, &text("BYE", UDP_RPORT, Some("ours"), ""), udp());
    assert_eq!(r.code, 481, "once the call is gone");
}

#[test]
fn a_response_for_no_call_is_dropped() {
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKr\r\n\
                From: <sip:emonav@198.51.100.1>;tag=a\r\nTo: <sip:x@10.0.0.1>;tag=b\r\n\
                Call-ID: nobody\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
    assert!(handle(&mut endpoint(), resp, udp()).is_none());
}

#[test]
fn a_registrars_response_is_consumed_by_its_registration() {
    let now = Instant::now();
    let account = |registrar: &str| Account {
        registrar: Uri::parse(&format!("sip:{registrar}")).unwrap(),
        aor: Uri::parse("sip:emonav@example.com").unwrap(),
        username: "emonav".into(),
        password: "secret".into(),
        contact: Uri::parse("sip:emonav@198.51.100.1:5060").unwrap(),
        expires: 600,
    };
    let reg = |r: &str| Registration::with_settings(account(r), Settings::default(), now);
    let mut ep = endpoint_with(Registrations::new(vec![
        (reg("192.0.2.50"), udp_target("sip:192.0.2.50:5060")),
        (
            reg("pbx.example.com"),
            udp_target("sip:pbx.example.com:5060"),
        ),
    ]));
    let out = ep.registrations().drain_output();
    let [RegOutput::Send { dest, data, .. }, RegOutput::Resolve { slot: 1, target }] = &out[..]
    else {
        panic!("{out:?}");
    };
    assert_eq!(*dest, "192.0.2.50:5060".parse().unwrap());
    assert_eq!(target.to_string(), "pbx.example.com:5060;transport=udp");
    let Message::Request(register) = parse_datagram(data).unwrap() else {
        panic!("not a request");
    };
    let mut ok = register.make_response(200, "OK");
    ok.headers
        .push("Contact", "<sip:emonav@198.51.100.1:5060>;expires=600");
    let ok = ok.to_bytes();
    assert!(ep
        .handle(parse_datagram(&ok).unwrap(), udp(), now)
        .is_none());
    assert!(matches!(
        ep.registrations().state(0),
        Some(State::Registered { .. })
    ));
}

#[test]
fn framing_errors_answer_on_the_connection_and_count() {
    let metrics = Metrics::default();
    let Message::Request(req) = msg(&text("MESSAGE", TCP_VIA, None, "")) else {
        unreachable!()
    };
    let t = framing_error(
        FrameError::TooLarge {
            request: Some(Box::new(req.clone())),
        },
        tcp(),
        "ua",
        &metrics,
    )
    .unwrap();
    assert!(t.data.starts_with(b"SIP/2.0 513 Message Too Large\r\n"));
    assert_eq!((t.transport, t.connection), (Transport::Tcp, Some(src())));
    let t = framing_error(
        FrameError::BadRequest {
            reason: "bad CSeq".into(),
            request: Box::new(req.clone()),
        },
        tcp(),
        "ua",
        &metrics,
    )
    .unwrap();
    assert!(t
        .data
        .starts_with(b"SIP/2.0 400 Bad Request (bad CSeq)\r\n"));
    let mut ack = req;
    ack.method = Method::Ack;
    let too_large_ack = FrameError::TooLarge {
        request: Some(Box::new(ack)),
    };
    assert!(framing_error(too_large_ack, tcp(), "ua", &metrics).is_none());
    assert!(framing_error(FrameError::Unparseable("x".into()), tcp(), "ua", &metrics).is_none());
    assert_eq!(metrics.sip_bad_request.load(Ordering::Relaxed), 3);
    assert_eq!(metrics.sip_unparseable.load(Ordering::Relaxed), 1);
}

#[test]
fn draining_refuses_new_calls_and_options_with_503_and_retry_after_but_routes_calls_in_progress() {
    let mut ep = endpoint();
    ep.insert_call("cid-1@test".into(), 7);
    ep.drain(60);
    let other_call = text("INVITE", TCP_VIA, None, "").replace("cid-1@test", "cid-2@test");
    for (req, peer) in [
        (other_call, tcp()),
        (
            text("OPTIONS", UDP_RPORT, None, "").replace("cid-1@test", "cid-3@test"),
            udp(),
        ),
    ] {
        let (r, t) = respond(&mut ep, &req, peer);
        assert_eq!(r.code, 503, "{req}");
        assert_eq!(r.headers.get("Retry-After"), Some("60"));
        assert_eq!(t.transport, peer.transport);
    }
    assert_eq!(ep.metrics.calls_started.load(Ordering::Relaxed), 0);
    // The call in progress: its INVITE retransmission and its BYE reach it.
    for m in [
        text("INVITE", UDP_RPORT, None, ""),
        text("BYE", UDP_RPORT, Some("ours"), ""),
    ] {
        assert!(
            matches!(
                handle(&mut ep, &m, udp()),
                Some(Event::ToCall { handle: 7, .. })
            ),
            "{m}"
        );
    }
    // In-dialog OPTIONS of no dialog is still 481, not 503.
    ep.remove_call("cid-1@test");
    let (r, _) = respond(&mut ep, &text("OPTIONS", UDP_RPORT, Some("x"), ""), udp());
    assert_eq!(r.code, 481);
}

fn trusting(sources: &[&str], untrusted: Untrusted) -> Endpoint<u32> {
    endpoint().with_trust(Some(TrustPolicy {
        sources: crate::trust::TrustedSet::parse(sources).unwrap(),
        registrars: false,
        untrusted,
    }))
}

fn from(addr: &str) -> Peer {
    Peer {
        addr: addr.parse().unwrap(),
        transport: Transport::Udp,
    }
}

#[test]
fn untrusted_sources_get_403_for_every_out_of_dialog_request_and_are_counted() {
    let mut ep = trusting(&["127.0.0.1/32", "10.0.0.0/8"], Untrusted::Forbidden);
    // 192.0.2.7 (SRC) is outside the set: INVITE, OPTIONS, REGISTER, an
    // in-dialog BYE of no call and an unknown method all get 403, no call.
    for method in ["INVITE", "OPTIONS", "REGISTER", "FOO"] {
        let (r, t) = respond(&mut ep, &text(method, UDP_RPORT, None, ""), udp());
        assert_eq!((r.code, r.reason.as_str()), (403, "Forbidden"), "{method}");
        assert_eq!(t.dest, src(), "back to the source, as any response");
    }
    let (r, _) = respond(&mut ep, &text("BYE", UDP_RPORT, Some("x"), ""), udp());
    assert_eq!(r.code, 403);
    assert!(handle(&mut ep, &text("ACK", UDP_RPORT, Some("x"), ""), udp()).is_none());
    assert_eq!(ep.metrics.sip_untrusted.load(Ordering::Relaxed), 6);
    assert_eq!(ep.metrics.calls_started.load(Ordering::Relaxed), 0);
    assert_eq!(ep.calls(), 0);
    // Trusted sources, including an IPv4-mapped one over TCP, start calls.
    for peer in [
        from("127.0.0.1:5070"),
        Peer {
            addr: "[::ffff:10.9.8.7]:5070".parse().unwrap(),
            transport: Transport::Tcp,
        },
    ] {
        assert!(
            matches!(
                handle(&mut ep, &text("INVITE", UDP_RPORT, None, ""), peer),
                Some(Event::NewCall { .. })
            ),
            "{peer:?}"
        );
    }
    // 127.0.0.2 is loopback but outside 127.0.0.1/32.
    let (r, _) = respond(
        &mut ep,
        &text("INVITE", UDP_RPORT, None, ""),
        from("127.0.0.2:5060"),
    );
    assert_eq!(r.code, 403);
    assert_eq!(ep.metrics.sip_untrusted.load(Ordering::Relaxed), 7);
    let metrics = ep.metrics.render();
    assert!(
        metrics.contains("emonav_sip_untrusted_total 7\n"),
        "{metrics}"
    );
}

#[test]
fn drop_mode_answers_untrusted_sources_nothing_not_even_400() {
    let mut ep = trusting(&["127.0.0.1"], Untrusted::Drop);
    for m in [
        text("INVITE", UDP_RPORT, None, ""),
        text("OPTIONS", UDP_RPORT, None, ""),
    ] {
        assert!(handle(&mut ep, &m, udp()).is_none(), "{m}");
    }
    let malformed = text("INVITE", UDP_RPORT, None, "").replace("CSeq: 1 INVITE", "CSeq: x INVITE");
    assert!(ep
        .handle_datagram(malformed.as_bytes(), src(), Instant::now())
        .is_none());
    assert_eq!(ep.metrics.sip_untrusted.load(Ordering::Relaxed), 3);
    assert_eq!(ep.metrics.sip_bad_request.load(Ordering::Relaxed), 0);
    // The trusted source's malformed request still gets its 400.
    let t = match ep.handle_datagram(
        malformed.as_bytes(),
        "127.0.0.1:5062".parse().unwrap(),
        Instant::now(),
    ) {
        Some(Event::Respond(t)) => t,
        other => panic!("{other:?}"),
    };
    assert!(String::from_utf8_lossy(&t.data).starts_with("SIP/2.0 400"));
}

#[test]
fn calls_in_progress_and_responses_pass_the_trust_check() {
    let mut ep = trusting(&["127.0.0.1"], Untrusted::Drop);
    ep.insert_call("cid-1@test".into(), 7);
    // The caller's in-dialog requests may come from its Contact, not the
    // proxy: routed by Call-ID, the call's dialog matching decides.
    assert!(matches!(
        handle(&mut ep, &text("BYE", UDP_RPORT, Some("ours"), ""), udp()),
        Some(Event::ToCall { handle: 7, .. })
    ));
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKx\r\n\
                From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: cid-1@test\r\n\
                CSeq: 2 REFER\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(
        handle(&mut ep, resp, udp()),
        Some(Event::ToCall { handle: 7, .. })
    ));
    assert_eq!(ep.metrics.sip_untrusted.load(Ordering::Relaxed), 0);
}

#[test]
fn trust_registrars_trusts_the_address_registers_go_to() {
    let now = Instant::now();
    let account = Account {
        registrar: Uri::parse("sip:192.0.2.50").unwrap(),
        aor: Uri::parse("sip:emonav@example.com").unwrap(),
        username: "emonav".into(),
        password: "secret".into(),
        contact: Uri::parse("sip:emonav@198.51.100.1:5060").unwrap(),
        expires: 600,
    };
    let reg = Registration::with_settings(account.clone(), Settings::default(), now);
    let unresolved = Registration::with_settings(account, Settings::default(), now);
    let mut ep = endpoint_with(Registrations::new(vec![
        (reg, udp_target("sip:192.0.2.50:5060")),
        (unresolved, udp_target("sip:pbx.example.com:5060")),
    ]))
    .with_trust(Some(TrustPolicy {
        sources: Default::default(),
        registrars: true,
        untrusted: Untrusted::Forbidden,
    }));
    // Any port of the registrar's address (a PBX sends from its SIP port,
    // not necessarily the one it registers on).
    assert!(matches!(
        handle(
            &mut ep,
            &text("INVITE", UDP_RPORT, None, ""),
            from("192.0.2.50:5080")
        ),
        Some(Event::NewCall { .. })
    ));
    let (r, _) = respond(
        &mut ep,
        &text("INVITE", UDP_RPORT, None, ""),
        from("192.0.2.51:5060"),
    );
    assert_eq!(r.code, 403);
    // The name, once resolved, is trusted too.
    ep.registrations()
        .resolved(1, vec!["203.0.113.9:5060".parse().unwrap()]);
    let other = text("INVITE", UDP_RPORT, None, "").replace("cid-1@test", "cid-9@test");
    assert!(matches!(
        handle(&mut ep, &other, from("203.0.113.9:5060")),
        Some(Event::NewCall { .. })
    ));
}

#[test]
fn what_we_cannot_honour_is_refused_before_a_call_starts() {
    let mut ep = endpoint();
    let refused = |ep: &mut Endpoint<u32>, extra: &str| {
        let (r, _) = respond(ep, &text("INVITE", UDP_RPORT, None, extra), udp());
        r
    };
    // RFC 3261 §8.2.2.3: an extension we lack is 420 naming it; "timer" is ours.
    let r = refused(
        &mut ep,
        "Require: timer, foo-bar\r\nSession-Expires: 1800\r\n",
    );
    assert_eq!(
        (r.code, r.headers.get("Unsupported")),
        (420, Some("foo-bar"))
    );
    // §8.2.3: a body we cannot read is 415 with what we accept.
    let with_body = text(
        "INVITE",
        UDP_RPORT,
        None,
        "Content-Type: application/x-unknown\r\n",
    )
    .replace("Content-Length: 0\r\n\r\n", "Content-Length: 4\r\n\r\nabcd");
    let (r, _) = respond(&mut ep, &with_body, udp());
    assert_eq!(
        (r.code, r.headers.get("Accept")),
        (415, Some("application/sdp"))
    );
    // §21.4.7: an Accept without SDP is 406.
    assert_eq!(refused(&mut ep, "Accept: text/plain\r\n").code, 406);
    // RFC 4475 §3.3.8 and §3.1.2.11: 400 with the reason.
    let (r, _) = respond(
        &mut ep,
        &text("INVITE", UDP_RPORT, None, "Call-ID: other@test\r\n"),
        udp(),
    );
    assert_eq!(r.code, 400);
    assert!(r.reason.contains("more than one Call-ID"), "{}", r.reason);
    let uri_headers = text("OPTIONS", UDP_RPORT, None, "").replace(
        "sip:emonav@198.51.100.1 SIP/2.0",
        "sip:emonav@198.51.100.1?Route=%3Csip:x%3E SIP/2.0",
    );
    let (r, _) = respond(&mut ep, &uri_headers, udp());
    assert!(
        r.code == 400 && r.reason.contains("Request-URI"),
        "{}",
        r.reason
    );
    assert_eq!(ep.metrics.calls_started.load(Ordering::Relaxed), 0);
    // Still a call when nothing is asked that we lack.
    assert!(matches!(
        handle(
            &mut ep,
            &text("INVITE", UDP_RPORT, None, "Accept: application/sdp\r\n"),
            udp()
        ),
        Some(Event::NewCall { .. })
    ));
}

fn overloaded(cfg: crate::overload::OverloadConfig) -> Endpoint<u32> {
    endpoint().with_overload(Overload::new(cfg))
}

#[test]
fn at_max_calls_new_invites_and_options_get_503_with_retry_after_and_calls_go_on() {
    let mut ep = overloaded(crate::overload::OverloadConfig {
        max_calls: 1,
        retry_after_s: 7,
        ..Default::default()
    });
    assert_eq!(ep.set_load(0, std::time::Duration::ZERO), None);
    assert!(matches!(
        handle(&mut ep, &text("INVITE", UDP_RPORT, None, ""), udp()),
        Some(Event::NewCall { .. })
    ));
    ep.insert_call("cid-1@test".into(), 7);
    assert_eq!(
        ep.set_load(1, std::time::Duration::ZERO),
        Some(Refusal::MaxCalls)
    );
    for m in ["INVITE", "OPTIONS"] {
        let req = text(m, UDP_RPORT, None, "").replace("cid-1@test", "cid-2@test");
        let (r, _) = respond(&mut ep, &req, udp());
        assert_eq!(r.code, 503, "{req}");
        assert_eq!(r.headers.get("Retry-After"), Some("7"));
    }
    // REGISTER is not refused for the count (405 as always here).
    let reg = text("REGISTER", UDP_RPORT, None, "").replace("cid-1@test", "cid-3@test");
    assert_eq!(respond(&mut ep, &reg, udp()).0.code, 405);
    assert_eq!(ep.metrics.sip_max_calls_rejected.load(Ordering::Relaxed), 2);
    assert_eq!(ep.metrics.calls_started.load(Ordering::Relaxed), 1);
    // The call up keeps its messages.
    assert!(matches!(
        handle(&mut ep, &text("BYE", UDP_RPORT, Some("ours"), ""), udp()),
        Some(Event::ToCall { handle: 7, .. })
    ));
    let text = ep.metrics.render();
    assert!(
        text.contains("emonav_sip_rejected_total{reason=\"max_calls\"} 2\n"),
        "{text}"
    );
}

#[test]
fn scheduling_lag_over_the_limit_refuses_new_calls() {
    let mut ep = overloaded(crate::overload::OverloadConfig {
        max_lag_ms: 100,
        ..Default::default()
    });
    assert_eq!(
        ep.set_load(0, std::time::Duration::from_millis(300)),
        Some(Refusal::Lag)
    );
    let (r, _) = respond(&mut ep, &text("INVITE", UDP_RPORT, None, ""), udp());
    assert_eq!(r.code, 503);
    assert_eq!(ep.metrics.sip_lag_rejected.load(Ordering::Relaxed), 1);
    assert_eq!(ep.set_load(0, std::time::Duration::from_millis(10)), None);
    assert!(matches!(
        handle(&mut ep, &text("INVITE", UDP_RPORT, None, ""), udp()),
        Some(Event::NewCall { .. })
    ));
}

#[test]
fn a_flooding_source_is_rate_limited_and_another_is_not() {
    let mut ep = overloaded(crate::overload::OverloadConfig {
        options_per_source: 5.0,
        burst_s: 1.0,
        ..Default::default()
    });
    let codes: Vec<u16> = (0..8)
        .map(|i| {
            let req = text("OPTIONS", UDP_RPORT, None, "").replace("cid-1@test", &format!("f{i}"));
            respond(&mut ep, &req, udp()).0.code
        })
        .collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 503, 503, 503]);
    assert_eq!(ep.metrics.sip_rate_limited.load(Ordering::Relaxed), 3);
    let (r, _) = respond(
        &mut ep,
        &text("OPTIONS", UDP_RPORT, None, ""),
        from("192.0.2.8:5060"),
    );
    assert_eq!(r.code, 200);
}

/// What a registration to `uri` over UDP locates.
fn udp_target(uri: &str) -> crate::locate::Locate {
    crate::locate::Locate::of(
        &Uri::parse(uri).unwrap(),
        emonav_sip::transport::Transport::Udp,
    )
}

/// RFC 3263 §4.3: a registrar's second located address is tried at once
/// when the first times out; a 503 from the last falls back to the back-off.
#[test]
fn a_registrar_that_times_out_fails_over_to_its_next_address() {
    let t0 = Instant::now();
    let account = Account {
        registrar: Uri::parse("sip:pbx.example.com").unwrap(),
        aor: Uri::parse("sip:emonav@pbx.example.com").unwrap(),
        username: "emonav".into(),
        password: "secret".into(),
        contact: Uri::parse("sip:emonav@198.51.100.1:5060").unwrap(),
        expires: 600,
    };
    let mut regs = Registrations::new(vec![(
        Registration::with_settings(account, Settings::default(), t0),
        udp_target("sip:pbx.example.com"),
    )]);
    let sent_to = |out: Vec<RegOutput>| -> Vec<SocketAddr> {
        out.into_iter()
            .filter_map(|o| match o {
                RegOutput::Send { dest, .. } => Some(dest),
                RegOutput::Resolve { .. } => None,
            })
            .collect()
    };
    assert!(matches!(
        &regs.drain_output()[..],
        [RegOutput::Resolve { slot: 0, .. }]
    ));
    let (a, b): (SocketAddr, SocketAddr) = (
        "192.0.2.10:5060".parse().unwrap(),
        "192.0.2.20:5070".parse().unwrap(),
    );
    regs.resolved(0, vec![a, b]);
    // The first retransmission goes to the first address, and so on until Timer F.
    let mut now = t0;
    let mut first = Vec::new();
    while matches!(regs.state(0), Some(State::Registering)) {
        now = regs.poll_timeout().unwrap();
        regs.handle_timeout(now);
        first.extend(sent_to(regs.drain_output()));
    }
    assert!(
        !first.is_empty() && first.iter().all(|d| *d == a),
        "{first:?}"
    );
    // Timed out: retried at once, on the second address.
    assert!(regs.poll_timeout().unwrap() <= now);
    regs.handle_timeout(now);
    let out = regs.drain_output();
    let [RegOutput::Send { dest, data, .. }] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(*dest, b);
    // The second answers 503: no third address, so the back-off applies.
    let Message::Request(register) = parse_datagram(data).unwrap() else {
        panic!("not a request");
    };
    let busy = register.make_response(503, "Service Unavailable");
    let Message::Response(busy) = parse_datagram(&busy.to_bytes()).unwrap() else {
        panic!("not a response");
    };
    assert!(regs.handle_response(&busy, now));
    assert!(matches!(regs.state(0), Some(State::Failed { .. })));
    assert!(regs.poll_timeout().unwrap() > now + std::time::Duration::from_secs(1));
    assert!(sent_to(regs.drain_output()).is_empty());
}

/// Over TCP nothing retransmits a REGISTER, so the one that had to wait
/// for the registrar's name to resolve is sent as soon as it resolves.
#[test]
fn a_register_over_tcp_waiting_for_dns_is_sent_when_the_name_resolves() {
    let t0 = Instant::now();
    let account = Account {
        registrar: Uri::parse("sip:pbx.example.com;transport=tcp").unwrap(),
        aor: Uri::parse("sip:emonav@pbx.example.com").unwrap(),
        username: "emonav".into(),
        password: "secret".into(),
        contact: Uri::parse("sip:emonav@198.51.100.1:5060;transport=tcp").unwrap(),
        expires: 600,
    };
    let mut regs = Registrations::new(vec![(
        Registration::with_settings(account, Settings::default(), t0),
        crate::locate::Locate::of(
            &Uri::parse("sip:pbx.example.com;transport=tcp").unwrap(),
            emonav_sip::transport::Transport::Tcp,
        ),
    )]);
    assert!(matches!(
        &regs.drain_output()[..],
        [RegOutput::Resolve { slot: 0, .. }]
    ));
    let a: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    regs.resolved(0, vec![a]);
    let out = regs.drain_output();
    let [RegOutput::Send { dest, data, .. }] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(*dest, a);
    assert!(String::from_utf8_lossy(data).starts_with("REGISTER "));
    assert!(regs.drain_output().is_empty(), "sent once");
}
