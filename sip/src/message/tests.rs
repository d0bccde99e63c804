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
