//! SIP parsing conformance: messages written from RFC 4475's torture-test
//! descriptions and from real PBX traffic (`tests/conformance/*.sip`), each
//! checked for the fields a user of emonav depends on. The same files were
//! run through rsip and ezk-sip-types to choose the message layer
//! (docs/decisions.md).

mod support;

use emonav_sip::message::{
    parse_datagram, parse_stream, Message, Method, NameAddr, ParseError, Request, Response, Scheme,
    Uri,
};

fn case(name: &str) -> Vec<u8> {
    support::fixture_path(&format!("conformance/{name}.sip"))
}

fn request(name: &str) -> Request {
    match parse_datagram(&case(name)) {
        Ok(Message::Request(r)) => r,
        other => panic!("{name}: {other:?}"),
    }
}

fn response(name: &str) -> Response {
    match parse_datagram(&case(name)) {
        Ok(Message::Response(r)) => r,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn compact_forms_expand_to_full_names() {
    let r = request("compact_forms");
    assert_eq!(r.call_id(), Some("compact-1@192.0.2.1"));
    assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bKcompact"));
    assert_eq!(r.from().unwrap().tag(), Some("a1"));
    assert_eq!(r.headers.get("Contact"), Some("<sip:alice@192.0.2.1>"));
    assert_eq!(r.headers.get("Content-Type"), Some("application/sdp"));
    assert_eq!(r.headers.get_all("Supported"), ["replaces", "timer"]);
    assert!(r.body.starts_with(b"v=0"));
    assert!(String::from_utf8(r.to_bytes())
        .unwrap()
        .contains("\r\nCall-ID: compact-1@192.0.2.1\r\n"));
}

#[test]
fn folded_lines_are_joined() {
    let r = request("folded_headers");
    assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bKfolded"));
    assert_eq!(
        r.headers.get("Subject"),
        Some("I know you're there, pick up the phone and talk to me!")
    );
}

#[test]
fn bare_lf_line_ends() {
    let r = request("lf_only");
    assert_eq!(r.method, Method::Options);
    assert_eq!(r.cseq().unwrap().seq, 1);
}

#[test]
fn unknown_method_keeps_its_headers() {
    let r = request("unknown_method");
    assert_eq!(r.method, Method::Other("NEWMETHOD".into()));
    assert_eq!(r.cseq().unwrap().method, Method::Other("NEWMETHOD".into()));
    assert_eq!(r.call_id(), Some("new-1"));
}

#[test]
fn comma_separated_vias_are_separate_hops() {
    let r = response("multi_via_one_line");
    let vias = r.headers.get_all("Via");
    assert_eq!(vias.len(), 3);
    assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bKtop"));
    assert_eq!(r.top_via().unwrap().params.get("rport"), Some(Some("5060")));
    assert!(vias[1].contains("proxy.example.com"));
}

#[test]
fn digest_challenges_are_not_split_on_commas() {
    let r = response("digest_qop_list");
    let challenges = r.headers.get_all("WWW-Authenticate");
    assert_eq!(challenges.len(), 2);
    assert!(challenges[0].contains(r#"qop="auth,auth-int""#));
    assert!(challenges[0].contains(r#"nonce="1700000000/abc,def""#));
    assert!(challenges[0].contains("algorithm=SHA-256"));
}

#[test]
fn ipv6_request_uri_and_via() {
    let r = request("ipv6");
    assert_eq!(r.uri.host, "[2001:db8::9]");
    assert_eq!(r.uri.port, Some(5070));
    let via = r.top_via().unwrap();
    assert_eq!((via.host.as_str(), via.port), ("[2001:db8::1]", Some(5062)));
    assert_eq!(r.to_bytes(), {
        let again = parse_datagram(&r.to_bytes()).unwrap();
        again.to_bytes()
    });
}

#[test]
fn tel_uris() {
    let r = request("tel_uri");
    assert_eq!(r.uri.scheme, Scheme::Tel);
    assert_eq!(r.uri.user.as_deref(), Some("+4930123456"));
    assert_eq!(r.uri.params.get("phone-context"), Some(Some("+49")));
    assert_eq!(r.from().unwrap().uri.to_string(), "tel:+4930999");
}

#[test]
fn uri_headers_survive_verbatim() {
    let r = request("uri_headers_replaces");
    let target = NameAddr::parse(r.headers.get("Refer-To").unwrap()).unwrap();
    assert_eq!(target.uri.headers.len(), 1);
    assert_eq!(target.uri.headers[0].0, "Replaces");
    assert_eq!(
        target.uri.to_string(),
        "sip:agent@192.0.2.50?Replaces=abc%40192.0.2.50%3Bto-tag%3D1%3Bfrom-tag%3D2"
    );
    assert_eq!(
        r.headers.get("r"),
        r.headers.get("Refer-To"),
        "compact r: looks up Refer-To"
    );
}

#[test]
fn escaped_user_and_quoted_display_name() {
    let r = request("escaped_user");
    assert_eq!(r.uri.user.as_deref(), Some("%61lice%20smith"));
    assert_eq!(r.uri.params.get("user"), Some(Some("phone")));
    assert_eq!(r.from().unwrap().display.as_deref(), Some("Caller \"Q\""));
    assert_eq!(r.to().unwrap().uri.user.as_deref(), Some("%61lice%20smith"));
}

#[test]
fn whitespace_and_case_in_header_names() {
    let r = request("whitespace_and_case");
    assert_eq!(r.call_id(), Some("ws-1"));
    assert_eq!(r.cseq().unwrap().seq, 9);
    let via = r.top_via().unwrap();
    assert_eq!(
        (via.transport.as_str(), via.branch()),
        ("UDP", Some("z9hG4bKws"))
    );
    assert_eq!(
        r.to().unwrap().uri,
        Uri::parse("sip:emonav@192.0.2.9").unwrap()
    );
}

#[test]
fn content_length_bounds_the_body() {
    assert_eq!(
        request("content_length_shorter_than_datagram").body,
        b"hello"
    );
    match parse_datagram(&case("content_length_longer_than_datagram")) {
        Err(ParseError::BadRequest { reason, request }) => {
            assert!(reason.contains("Content-Length"), "{reason}");
            assert_eq!(request.call_id(), Some("long-1"), "enough to answer 400");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        request("no_content_length_datagram").body,
        b"SIP/2.0 200 OK\r\n"
    );
}

#[test]
fn two_messages_in_one_stream_read() {
    let buf = case("two_messages_one_stream_read");
    let (first, used) = parse_stream(&buf).unwrap();
    let Message::Request(first) = first else {
        panic!()
    };
    assert_eq!(
        (first.call_id(), first.body.as_slice()),
        (Some("tcp-1"), &b"abcd"[..])
    );
    let (second, used2) = parse_stream(&buf[used..]).unwrap();
    let Message::Request(second) = second else {
        panic!()
    };
    assert_eq!(second.call_id(), Some("tcp-2"));
    assert_eq!(used + used2, buf.len());
    assert_eq!(parse_stream(&buf[..used - 2]), Err(ParseError::Incomplete));
}

#[test]
fn cseq_method_mismatch_is_a_bad_request() {
    match parse_datagram(&case("bad_cseq")) {
        Err(ParseError::BadRequest { reason, .. }) => assert!(reason.contains("CSeq"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn garbage_is_unparseable() {
    assert!(matches!(
        parse_datagram(&case("garbage")),
        Err(ParseError::Unparseable(_))
    ));
}

#[test]
fn asterisk_notify_with_sipfrag() {
    let r = request("asterisk_notify_sipfrag");
    assert_eq!(r.headers.get("Event"), Some("refer;id=3"));
    assert_eq!(emonav_sip::refer::sipfrag_status(&r.body), Some(200));
    assert_eq!(r.cseq().unwrap().seq, 27814);
}

#[test]
fn freeswitch_invite_with_record_route_list() {
    let r = request("freeswitch_invite_record_route");
    let rr = r.headers.get_all("Record-Route");
    assert_eq!(rr, ["<sip:192.0.2.30;lr;ftag=fs1>", "<sip:192.0.2.31;lr>"]);
    assert_eq!(r.headers.get_all("Via").len(), 2);
    assert_eq!(r.from().unwrap().display.as_deref(), Some("5551234"));
    assert!(emonav::parse_sdp(std::str::from_utf8(&r.body).unwrap()).is_ok());
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = fastrand::Rng::with_seed(4475);
    // tests/conformance/*.sip and the RFC 4475 cases in its rfc4475/ folder.
    let dir = support::root().join("tests/conformance");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("rfc4475")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for i in 0..20_000 {
        let mut b = seeds[i % seeds.len()].clone();
        match rng.u8(..4) {
            0 => b.truncate(rng.usize(..=b.len())),
            1 => {
                for _ in 0..rng.usize(1..10) {
                    let j = rng.usize(..b.len());
                    b[j] = rng.u8(..);
                }
            }
            2 => {
                let j = rng.usize(..b.len());
                b.insert(j, *rng.choice(b"\r\n:;,<>\"@[]?= \t").unwrap());
            }
            _ => b = (0..rng.usize(..300)).map(|_| rng.u8(..)).collect(),
        }
        let _ = parse_datagram(&b);
        let _ = parse_stream(&b);
    }
}
