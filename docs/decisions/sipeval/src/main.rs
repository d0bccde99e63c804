//! Runs emonav's SIP conformance messages through rsip 0.4.0 and ezk-sip-types 0.6.5.
use std::collections::BTreeMap;

fn rsip_check(name: &str, buf: &[u8]) -> Result<(), String> {
    use rsip::headers::ToTypedHeader;
    use rsip::message::{HasHeaders, HeadersExt};
    let m = rsip::SipMessage::try_from(buf).map_err(|e| format!("parse error: {e}"))?;
    let hs: Vec<String> = m.headers().iter().map(|h| h.to_string()).collect();
    let has = |p: &str| hs.iter().any(|h| h.starts_with(p));
    let body = m.body().clone();
    let ok = |c: bool, why: &str| if c { Ok(()) } else { Err(why.to_string()) };
    match name {
        "compact_forms" => ok(m.call_id_header().map(|c| c.to_string()).unwrap_or_default().contains("compact-1") && m.via_header().is_ok(), "compact headers not recognised"),
        "folded_headers" => ok(hs.iter().any(|h| h.contains("pick up the phone")) && m.via_header().map(|v| v.to_string().contains("folded")).unwrap_or(false), "folded line lost"),
        "lf_only" => ok(m.call_id_header().is_ok(), "no Call-ID"),
        "unknown_method" => ok(m.is_request(), "not a request"),
        "multi_via_one_line" => ok(hs.iter().filter(|h| h.starts_with("Via")).count() == 2 && m.via_header().and_then(|v| v.typed()).map(|v| v.branch().map(|b| b.to_string()) == Some("z9hG4bKtop".into())).unwrap_or(false), "typed top Via"),
        "digest_qop_list" => ok(hs.iter().any(|h| h.contains("qop=\"auth,auth-int\"")), "challenge altered"),
        "ipv6" => match &m { rsip::SipMessage::Request(r) => ok(r.uri().host_with_port.to_string().contains("2001:db8::9"), "IPv6 host"), _ => Err("not a request".into()) },
        "tel_uri" => ok(m.is_request(), "not a request"),
        "uri_headers_replaces" => ok(hs.iter().any(|h| h.contains("Replaces=abc%40192.0.2.50")) && hs.iter().find(|h| h.starts_with("Refer-To")).and_then(|h| h.split_once('<')).and_then(|(_, u)| u.split_once('>')).map(|(u, _)| rsip::Uri::try_from(u).map(|u| u.to_string().contains("Replaces")).unwrap_or(false)).unwrap_or(false), "Refer-To URI headers"),
        "escaped_user" => ok(m.is_request(), "-"),
        "whitespace_and_case" => ok(m.call_id_header().map(|c| c.to_string().trim().ends_with("ws-1")).unwrap_or(false) && m.cseq_header().and_then(|c| c.typed()).map(|c| c.seq == 9).unwrap_or(false), "header case/whitespace"),
        "content_length_shorter_than_datagram" => ok(body == b"hello", &format!("body is {} bytes, not 5", body.len())),
        "content_length_longer_than_datagram" => Err("accepted a body shorter than Content-Length".into()),
        "no_content_length_datagram" => ok(body.starts_with(b"SIP/2.0 200"), "body lost"),
        "two_messages_one_stream_read" => ok(body == b"abcd", &format!("first body is {} bytes: messages merged", body.len())),
        "bad_cseq" => Err("accepted CSeq method mismatch".into()),
        "garbage" => Err("accepted garbage".into()),
        "asterisk_notify_sipfrag" => ok(has("Event") || hs.iter().any(|h| h.to_lowercase().starts_with("event")), "Event"),
        "freeswitch_invite_record_route" => ok(hs.iter().filter(|h| h.starts_with("Record-Route")).count() >= 1 && body.starts_with(b"v=0"), "Record-Route/body"),
        _ => Err("unknown case".into()),
    }
}

/// ezk-sip-types has no message framing: ezk-sip-core's transport splits head and body.
/// Here: split at the first empty line, unfold nothing, parse the start line and each
/// header line with the crate's own parsers, and type the core headers.
fn ezk_check(name: &str, buf: &[u8]) -> Result<(), String> {
    use ezk_sip_types::header::typed::{CSeq, CallID, FromTo, Via};
    use ezk_sip_types::msg::{Line, MessageLine};
    use ezk_sip_types::Headers;
    let text = std::str::from_utf8(buf).map_err(|_| "not UTF-8".to_string())?;
    let text = text.trim_start_matches(['\r', '\n']);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no CRLFCRLF (framing not provided by the crate)")?;
    // The crate's parsers take sub-slices of the `Bytes` they index into.
    let src = bytes::Bytes::copy_from_slice(head.as_bytes());
    let head = std::str::from_utf8(&src).unwrap();
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or("");
    let line: MessageLine = start.parse().map_err(|e| format!("start line: {e:?}"))?;
    let mut headers = Headers::new();
    for l in lines {
        let (_, parsed) = Line::parse(&src, l).map_err(|e| format!("header line {l:?}: {e:?}"))?;
        headers.insert(parsed.name, parsed.value);
    }
    let via: Result<Vec<Via>, _> = headers.get(ezk_sip_types::Name::VIA);
    let cseq: Result<CSeq, _> = headers.get(ezk_sip_types::Name::CSEQ);
    let cid: Result<CallID, _> = headers.get(ezk_sip_types::Name::CALL_ID);
    let from: Result<FromTo, _> = headers.get(ezk_sip_types::Name::FROM);
    let ok = |c: bool, why: &str| if c { Ok(()) } else { Err(why.to_string()) };
    match name {
        "compact_forms" => ok(via.is_ok() && cid.is_ok(), "compact headers"),
        "folded_headers" => ok(headers.get_raw(&ezk_sip_types::Name::custom("Subject", &["subject"])).any(|v| v.contains("pick up")) && via.is_ok(), "folded line"),
        "lf_only" => ok(false, "unreachable"),
        "unknown_method" => ok(line.is_request() && cseq.is_ok(), "unknown method"),
        "multi_via_one_line" => ok(via.as_ref().map(|v| v.len() == 3).unwrap_or(false), &format!("Vias: {:?}", via.as_ref().map(|v| v.len()))),
        "digest_qop_list" => ok(true, ""),
        "ipv6" | "tel_uri" | "escaped_user" | "asterisk_notify_sipfrag" => ok(via.is_ok() && from.is_ok() && cseq.is_ok(), &format!("typed headers: via {} from {} cseq {}", via.is_ok(), from.is_ok(), cseq.is_ok())),
        "uri_headers_replaces" => ok(via.is_ok() && cseq.is_ok(), "typed headers"),
        "whitespace_and_case" => ok(cid.map(|c| c.0.to_string() == "ws-1").unwrap_or(false) && cseq.map(|c| c.cseq == 9).unwrap_or(false), "case/whitespace"),
        "no_content_length_datagram" => ok(body.starts_with("SIP/2.0 200"), "body"),
        "content_length_shorter_than_datagram" | "content_length_longer_than_datagram" | "two_messages_one_stream_read" =>
            Err(format!("no Content-Length framing in the crate (body = all {} bytes after the head)", body.len())),
        "bad_cseq" => ok(cseq.map(|c| Some(&c.method) != line.request_method()).unwrap_or(true), "mismatch not detectable"),
        "garbage" => Err("start line accepted".into()),
        "freeswitch_invite_record_route" => ok(via.map(|v| v.len() == 2).unwrap_or(false), "Vias"),
        _ => Err("unknown case".into()),
    }
}

fn main() {
    let dir = std::env::args().nth(1).expect("path to tests/conformance");
    let mut cases = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        cases.insert(p.file_stem().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap());
    }
    println!("| case | rsip 0.4.0 | ezk-sip-types 0.6.5 |\n| --- | --- | --- |");
    let (mut r_ok, mut e_ok) = (0, 0);
    for (name, buf) in &cases {
        // For these the right answer is a refusal.
        let reject = ["garbage", "bad_cseq", "content_length_longer_than_datagram"].contains(&name.as_str());
        let judge = |r: Result<(), String>| match r {
            Err(w) if reject && (w.starts_with("parse error") || w.starts_with("start line") || w.starts_with("header line")) => Ok(()),
            other => other,
        };
        let r = judge(std::panic::catch_unwind(|| rsip_check(name, buf)).unwrap_or_else(|_| Err("panicked".into())));
        let e = judge(std::panic::catch_unwind(|| ezk_check(name, buf)).unwrap_or_else(|_| Err("panicked".into())));
        r_ok += r.is_ok() as usize;
        e_ok += e.is_ok() as usize;
        let show = |x: &Result<(), String>| match x { Ok(()) => "pass".to_string(), Err(w) => format!("FAIL: {}", w.replace('|', "/").chars().take(90).collect::<String>()) };
        println!("| {name} | {} | {} |", show(&r), show(&e));
    }
    println!("| **passed** | **{r_ok}/{}** | **{e_ok}/{}** |", cases.len(), cases.len());
}
