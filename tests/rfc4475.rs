//! RFC 4475 torture messages against the real binary over loopback UDP.
//! `tests/conformance/rfc4475/*.sip` are our own messages written from the
//! RFC's section 3 descriptions (3.1.1 valid, 3.1.2 invalid, 3.2
//! transaction layer, 3.3 application layer, 3.4 backward compatibility),
//! one file per case, named after its section. Each goes from a fresh
//! socket; what emonav answers is checked against what the RFC asks of a
//! UAS. After all of them the process is alive, answers OPTIONS, and the
//! calls the valid INVITEs started (never ACKed) have all ended.

mod support;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emonav_sip::message::{parse_datagram, Message};
use support::Emonav;

/// What a case must get.
#[derive(Debug)]
enum Expect {
    /// A final response with one of these codes (and never a 2xx to an
    /// INVITE unless listed).
    Final(&'static [u16]),
    /// Nothing: a response for no transaction, or nothing to answer to.
    Nothing,
    /// Where emonav knowingly differs from the RFC (docs/security.md,
    /// "Malformed input"): what it does instead, asserted so that a change
    /// is noticed. `None`: dropped with a log line.
    Differs(Option<u16>),
}

use Expect::{Differs, Final, Nothing};

/// Every case, with the RFC's expectation for a UAS that is no registrar
/// and no proxy (REGISTER is 405 here before anything else is looked at).
const CASES: &[(&str, Expect)] = &[
    // 3.1.1: valid, parsed and processed normally.
    ("3.1.1.1_tortuous_invite", Final(&[200])),
    // RFC: 501 (an unknown method). Our parser refuses the raw NUL, BEL and
    // DEL inside the quoted display name: 400, no call.
    ("3.1.1.2_wide_method", Differs(Some(400))),
    ("3.1.1.3_escaped_uri", Final(&[200])),
    ("3.1.1.4_escaped_nulls", Final(&[405])),
    ("3.1.1.5_percent_not_escape", Final(&[501])),
    ("3.1.1.6_no_lws_display", Final(&[200])),
    ("3.1.1.7_long_values", Final(&[200])),
    ("3.1.1.8_extra_trailing_octets", Final(&[200])),
    ("3.1.1.9_semicolon_user", Final(&[200])),
    ("3.1.1.10_odd_transports", Final(&[200])),
    ("3.1.1.11_multipart", Final(&[200, 415])),
    ("3.1.1.12_unusual_reason", Nothing),
    ("3.1.1.13_empty_reason", Nothing),
    // 3.1.2: invalid, 400 (or nothing where nothing can be answered).
    ("3.1.2.1_extra_separators", Final(&[400])),
    ("3.1.2.2_content_length_too_large", Final(&[400])),
    ("3.1.2.3_negative_content_length", Final(&[400])),
    ("3.1.2.4_overlarge_scalars", Final(&[400])),
    ("3.1.2.5_response_overlarge_scalars", Nothing),
    ("3.1.2.6_unterminated_quote", Final(&[400])),
    ("3.1.2.7_angle_brackets_request_uri", Final(&[400])),
    // RFC: 400. The start line does not split in three: dropped, logged.
    ("3.1.2.8_lws_in_request_uri", Differs(None)),
    // RFC: 400. Extra white space in the start line: dropped, logged.
    ("3.1.2.9_multiple_spaces_request_line", Differs(None)),
    ("3.1.2.10_trailing_space_request_line", Differs(None)),
    ("3.1.2.11_escaped_headers_in_request_uri", Final(&[400])),
    // The RFC lets an element either reject the bad zone or ignore the
    // Date header field it does not use.
    ("3.1.2.12_bad_date_zone", Final(&[400, 200])),
    (
        "3.1.2.13_unenclosed_contact_with_header",
        Final(&[400, 405]),
    ),
    // RFC: 400. Our name-addr parser trims the spaces inside < >: an OPTIONS
    // answered 200 (an INVITE would be a call).
    ("3.1.2.14_spaces_in_addr_spec", Differs(Some(200))),
    // RFC: 400. An unquoted display name with a comma is taken as is.
    ("3.1.2.15_non_token_display_name", Differs(Some(200))),
    ("3.1.2.16_unknown_version", Final(&[505, 400])),
    ("3.1.2.17_cseq_method_mismatch", Final(&[400])),
    ("3.1.2.18_unknown_method_cseq_mismatch", Final(&[400])),
    ("3.1.2.19_overlarge_status_code", Nothing),
    // 3.2: a branch without the RFC 3261 cookie is an RFC 2543 peer's.
    ("3.2.1_branch_without_cookie", Final(&[200])),
    // 3.3: application layer.
    ("3.3.1_missing_required_headers", Final(&[400])),
    ("3.3.2_unknown_scheme_request_uri", Final(&[416, 400])),
    ("3.3.3_novel_scheme_request_uri", Final(&[416, 400])),
    // RFC: processed. From/To must be sip:, sips: or tel: here: 400.
    ("3.3.4_unknown_schemes_in_headers", Differs(Some(400))),
    ("3.3.5_unknown_require", Final(&[420])),
    ("3.3.6_unknown_content_type", Final(&[415])),
    ("3.3.7_unknown_auth_scheme", Final(&[405])),
    ("3.3.8_multiple_single_value_headers", Final(&[400])),
    ("3.3.9_multiple_content_length", Final(&[400])),
    ("3.3.10_broadcast_via", Nothing),
    ("3.3.11_zero_max_forwards", Final(&[200])),
    ("3.3.12_contact_params_register", Final(&[405])),
    ("3.3.13_contact_url_params_register", Final(&[405])),
    ("3.3.14_escaped_header_in_contact", Final(&[405])),
    ("3.3.15_unacceptable_accept", Final(&[406])),
    // 3.4: an RFC 2543 INVITE (no branch cookie, no From tag, no
    // Max-Forwards) is still a call.
    // RFC: a call. No From tag means no dialog we can identify (RFC 3261
    // §12.1.1 needs the remote tag): 400, no call.
    ("3.4.1_rfc2543_invite", Differs(Some(400))),
];

/// The final response `sock` gets within `wait`, if any (provisional ones
/// skipped); a response our own parser refuses is an error, with its text.
fn final_response(sock: &UdpSocket, wait: Duration) -> Result<Option<u16>, String> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 65535];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        match parse_datagram(&buf[..n]) {
            Ok(Message::Response(r)) if r.code >= 200 => return Ok(Some(r.code)),
            Ok(_) => {}
            // A 400 to a request with a broken Call-ID or CSeq copies it
            // (§8.2.6.2): our own parser then refuses the response, and
            // only its status line counts.
            Err(e) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                return text
                    .strip_prefix("SIP/2.0 400 ")
                    .map(|_| Some(400))
                    .ok_or_else(|| format!("unparseable ({e:?}):\n{text}"));
            }
        }
    }
    Ok(None)
}

/// The placeholder the files' Contacts name.
const CONTACT: &[u8] = b"127.0.0.1:5099";

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// Answer every request `sock` gets with 200 (in a thread) until `stop`;
/// returns the Call-IDs of the BYEs so answered.
fn answer_requests(
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeSet<String>> {
    std::thread::spawn(move || {
        let mut byes = BTreeSet::new();
        let mut buf = [0u8; 65535];
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Ok(Message::Request(r)) = parse_datagram(&buf[..n]) {
                if r.method.as_str() == "BYE" {
                    byes.insert(r.call_id().unwrap_or("").to_string());
                }
                let ok = r.make_response(200, "OK").to_bytes();
                let _ = sock.send_to(&ok, from);
            }
        }
        byes
    })
}

fn metric(emonav: &Emonav, name: &str) -> u64 {
    let (_, body) = emonav.http_get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
}

#[test]
fn every_rfc_4475_case_is_answered_as_the_rfc_asks_and_the_process_survives() {
    let dir = support::root().join("tests/conformance/rfc4475");
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        files,
        CASES.len(),
        "a case without expectation, or the reverse"
    );
    let emonav = Emonav::start("");
    // The INVITEs' Contact (where the dialog's requests go, the BYE of a
    // call never ACKed) is `CONTACT` in the files: this socket, answering
    // every request 200.
    let contact = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let byes = answer_requests(contact.try_clone().unwrap(), stop.clone());
    let mut wrong = vec![];
    let mut calls = 0;
    for (name, expect) in CASES {
        let data = support::fixture_path(&format!("conformance/rfc4475/{name}.sip"));
        let data = replace(
            &data,
            CONTACT,
            contact.local_addr().unwrap().to_string().as_bytes(),
        );
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.send_to(&data, emonav.sip).unwrap();
        let wait = match expect {
            Final(_) | Differs(Some(_)) => Duration::from_secs(2),
            Nothing | Differs(None) => Duration::from_millis(300),
        };
        let got = match final_response(&sock, wait) {
            Ok(got) => got,
            Err(e) => {
                wrong.push(format!("{name}: {e}"));
                continue;
            }
        };
        calls += usize::from(data.starts_with(b"INVITE ") && got == Some(200));
        let ok = match expect {
            Final(codes) => got.is_some_and(|c| codes.contains(&c)),
            Nothing => got.is_none(),
            Differs(now) => got == *now,
        };
        if !ok {
            wrong.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Alive, and answering.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let options = "OPTIONS sip:emonav@127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKafter4475;rport\r\nMax-Forwards: 70\r\n\
        From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:emonav@127.0.0.1>\r\n\
        Call-ID: after-4475\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    probe.send_to(options.as_bytes(), emonav.sip).unwrap();
    assert_eq!(
        final_response(&probe, Duration::from_secs(2)),
        Ok(Some(200))
    );
    // The answered INVITEs were never ACKed: Timer H (64 T1, T1 = 100 ms
    // here) ends each; none is left behind.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&emonav, "emonav_calls_active") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&emonav, "emonav_calls_active"), 0, "calls left over");
    stop.store(true, Ordering::Relaxed);
    let byes = byes.join().unwrap();
    assert_eq!(
        calls, 3,
        "the valid INVITEs (and the one with a bad Date) are calls"
    );
    assert_eq!(
        byes.len(),
        calls,
        "each call answered (never ACKed) ended with a BYE: {byes:?}"
    );
}
