//! Unit tests of the parser; the RFC 4475-style conformance table lives in
//! `tests/sip_conformance.rs`.

use super::*;

fn req(text: &str) -> Request {
    match parse_datagram(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

const OPTIONS: &str = "OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\n\
    From: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

#[test]
fn round_trip_is_stable() {
    let r = req(OPTIONS);
    let again = req(std::str::from_utf8(&r.to_bytes()).unwrap());
    assert_eq!(again, r);
}

#[test]
fn set_replaces_all_lines_in_place() {
    let mut h = Headers::default();
    h.push("v", "SIP/2.0/UDP a");
    h.push("To", "x");
    h.push("via", "SIP/2.0/UDP b");
    h.set("Via", "SIP/2.0/UDP c");
    assert_eq!(
        h.iter().collect::<Vec<_>>(),
        [("Via", "SIP/2.0/UDP c"), ("To", "x")]
    );
    h.remove("t");
    assert_eq!(h.get("To"), None);
}

#[test]
fn make_response_copies_transaction_headers_only() {
    let mut r = req(OPTIONS);
    r.headers.push("Via", "SIP/2.0/UDP proxy;branch=z9hG4bK2");
    r.headers.push("Contact", "<sip:b@h>");
    let resp = r.make_response(200, "OK");
    assert_eq!(resp.headers.get_all("Via").len(), 2);
    assert_eq!(resp.headers.get("Contact"), None);
    assert_eq!(resp.call_id(), Some("c1"));
    let text = String::from_utf8(resp.to_bytes()).unwrap();
    assert!(text.starts_with("SIP/2.0 200 OK\r\n"));
    assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
}

#[test]
fn method_tokens() {
    assert_eq!(Method::from_token("REFER"), Method::Refer);
    assert_eq!(
        Method::from_token("refer"),
        Method::Other("refer".into()),
        "case-sensitive"
    );
    assert_eq!(Method::Notify.as_str(), "NOTIFY");
}

#[test]
fn list_elements_split_outside_quotes_brackets_and_escapes() {
    let mut h = Headers::default();
    // A comma inside a quoted display name (with an escaped quote and a
    // multi-byte character after a backslash), inside <...>, and a second
    // line: four elements, trimmed, empty ones dropped.
    h.push("m", r#""Ann, \"é\" B" <sip:a@h;x=1,2>, , <sip:b@h>"#);
    h.push("Contact", " <sip:c@h> ");
    h.push("Subject", "a, b");
    let all = h.get_all("Contact");
    assert_eq!(
        all,
        [
            r#""Ann, \"é\" B" <sip:a@h;x=1,2>"#,
            "<sip:b@h>",
            "<sip:c@h>"
        ]
    );
    assert_eq!(h.elements("contact").collect::<Vec<_>>(), all);
    assert_eq!(h.elements("Contact").nth(3), None);
    // Not a list: one element per line, as written.
    assert_eq!(h.get_all("s"), ["a, b"]);
}

#[test]
fn folded_lines_are_unfolded_and_the_top_via_read_from_a_list() {
    let r = req(
        "OPTIONS sip:a@h SIP/2.0\r\nv: SIP/2.0/UDP  h1:5060 ;branch=z9hG4bK1 ,\r\n \
         SIP/2.0/UDP h2;branch=z9hG4bK2\r\nSubject: one\r\n\ttwo\r\n \
         three\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n\r\n",
    );
    assert_eq!(r.headers.get("Subject"), Some("one two three"));
    let via = r.top_via().expect("top Via");
    assert_eq!(
        (via.host.as_str(), via.port, via.branch()),
        ("h1", Some(5060), Some("z9hG4bK1"))
    );
    assert_eq!(r.headers.get_all("Via").len(), 2);
    // A continuation before any header is a 400, not a guess.
    let bad = "OPTIONS sip:a@h SIP/2.0\r\n folded\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
        From: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n\r\n";
    match parse_datagram(bad.as_bytes()) {
        Err(ParseError::BadRequest { reason, .. }) => {
            assert_eq!(reason, "continuation line before any header")
        }
        other => panic!("expected a 400: {other:?}"),
    }
}
