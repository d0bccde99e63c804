//! End-to-end call flows against the real binary over loopback UDP.

mod support;

use std::time::{Duration, Instant};

use support::{fixture, Emonav, Uac};

const S: Duration = Duration::from_secs(1);

/// Answer, ACK and start streaming a fixture; returns the time the audio started.
fn answered_call(emonav: &Emonav, audio: &str) -> (Uac, Instant) {
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    let ok = uac.invite_final(5 * S);
    assert_eq!(ok.code, 200, "INVITE answered");
    assert!(
        String::from_utf8_lossy(&ok.body).contains("PCMU/8000"),
        "PCMU chosen first"
    );
    uac.ack(true);
    let started = Instant::now();
    uac.play(fixture(audio), 0);
    (uac, started)
}

/// Accept the REFER, report success, expect emonav's BYE; returns the Refer-To.
fn complete_transfer(uac: &mut Uac, refer: &emonav_sip::message::Request) {
    uac.respond(refer, 202, "Accepted");
    let n = uac.notify("SIP/2.0 200 OK", true);
    assert_eq!(
        uac.expect_response(&n, 2 * S).expect("200 to NOTIFY").code,
        200
    );
    let bye = uac
        .expect_request("BYE", 3 * S)
        .expect("BYE after the transfer");
    uac.respond(&bye, 200, "OK");
}

fn refer_to(req: &emonav_sip::message::Request) -> String {
    req.headers.get("Refer-To").expect("Refer-To").to_string()
}

#[test]
fn calm_caller_goes_to_the_standard_queue() {
    let emonav = Emonav::start("");
    let (mut uac, started) = answered_call(&emonav, "calm.ul");
    let refer = uac.expect_request("REFER", 6 * S).expect("REFER");
    let waited = started.elapsed();
    assert_eq!(refer_to(&refer), "<sip:standard@127.0.0.1:5070>");
    assert_eq!(refer.headers.get_all("Refer-To").len(), 1);
    assert_eq!(refer.headers.get("X-Emonav-Emotion"), Some("calm"));
    assert!(refer.headers.get("Referred-By").is_some());
    assert!(
        waited < Duration::from_millis(3600),
        "REFER after {waited:?}"
    );
    complete_transfer(&mut uac, &refer);
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["outcome"], "transferred");
    assert_eq!(ev["queue"], "sip:standard@127.0.0.1:5070");
    assert_eq!(ev["codec"], "pcmu");
    assert_eq!(ev["call_id"], uac.call_id.as_str());
    assert!(ev["rtp"]["received"].as_u64().unwrap() > 50, "{ev}");
    assert!(ev["speech_ms"].as_u64().unwrap() > 300, "{ev}");
}

#[test]
fn agitated_caller_goes_to_deescalation() {
    let emonav = Emonav::start("");
    let (mut uac, started) = answered_call(&emonav, "agitated.ul");
    let refer = uac.expect_request("REFER", 6 * S).expect("REFER");
    let waited = started.elapsed();
    assert_eq!(refer_to(&refer), "<sip:deescalation@127.0.0.1:5070>");
    assert_eq!(refer.headers.get("X-Emonav-Emotion"), Some("agitated"));
    let arousal: f32 = refer
        .headers
        .get("X-Emonav-Arousal")
        .unwrap()
        .parse()
        .unwrap();
    assert!(arousal >= 0.6, "arousal {arousal}");
    assert!(
        waited < Duration::from_millis(3600),
        "REFER after {waited:?}"
    );
    complete_transfer(&mut uac, &refer);
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["outcome"], "transferred");
    assert_eq!(ev["emotion"], "agitated");
}

#[test]
fn silence_goes_to_the_default_queue_at_the_deadline() {
    let emonav = Emonav::start("");
    let (mut uac, started) = answered_call(&emonav, "silence.ul");
    let refer = uac.expect_request("REFER", 6 * S).expect("REFER");
    let waited = started.elapsed();
    assert_eq!(refer_to(&refer), "<sip:default@127.0.0.1:5070>");
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_millis(3800),
        "REFER after {waited:?}, deadline is 3 s after the first audio"
    );
    complete_transfer(&mut uac, &refer);
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["decision_reason"], "no_speech");
    assert_eq!(ev["speech_ms"], 0);
}

#[test]
fn caller_hanging_up_before_the_decision_ends_the_call_cleanly() {
    let emonav = Emonav::start("");
    let (mut uac, _) = answered_call(&emonav, "calm.ul");
    std::thread::sleep(Duration::from_millis(500));
    let bye = uac.request("BYE", "", "");
    assert_eq!(
        uac.expect_response(&bye, 2 * S).expect("200 to BYE").code,
        200
    );
    let ev = emonav.next_event(3 * S);
    assert_eq!(ev["outcome"], "caller_hangup");
    assert!(ev["queue"].is_null(), "no decision taken: {ev}");
    assert!(
        uac.expect_request("REFER", 4 * S).is_none(),
        "no REFER after BYE"
    );
}

#[test]
fn cancel_before_answer_gets_200_and_487() {
    let emonav = Emonav::start("[sip]\nanswer_delay_ms = 3000\n");
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    std::thread::sleep(Duration::from_millis(200));
    let me = uac.addr();
    uac.send_raw(&format!(
        "CANCEL sip:emonav@{r} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={b};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={t}\r\nTo: <sip:emonav@{r}>\r\n\
         Call-ID: {c}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        r = emonav.sip,
        b = uac.invite_branch,
        t = uac.tag,
        c = uac.call_id
    ));
    let mut got = vec![];
    while got.len() < 2 {
        match uac.recv(2 * S).expect("responses to CANCEL and INVITE") {
            emonav_sip::message::Message::Response(r) if r.code >= 200 => {
                got.push((r.code, r.cseq().unwrap().method.as_str().to_string()))
            }
            _ => {}
        }
    }
    got.sort();
    assert_eq!(got, [(200, "CANCEL".into()), (487, "INVITE".into())]);
    uac.ack(false);
    let ev = emonav.next_event(3 * S);
    assert_eq!(ev["outcome"], "cancelled");
}

#[test]
fn refer_declined_with_603_falls_back_to_the_default_queue() {
    let emonav = Emonav::start("");
    let (mut uac, _) = answered_call(&emonav, "agitated.ul");
    let first = uac.expect_request("REFER", 6 * S).expect("first REFER");
    assert_eq!(refer_to(&first), "<sip:deescalation@127.0.0.1:5070>");
    uac.respond(&first, 603, "Declined");
    let second = uac.expect_request("REFER", 3 * S).expect("fallback REFER");
    assert_eq!(refer_to(&second), "<sip:default@127.0.0.1:5070>");
    complete_transfer(&mut uac, &second);
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["outcome"], "transferred_to_fallback");
    assert_eq!(ev["refer_attempts"][0]["response"], 603);
    assert_eq!(ev["refer_attempts"].as_array().unwrap().len(), 2);
}

#[test]
fn failure_notify_then_fallback_failure_hangs_up_politely() {
    let emonav = Emonav::start("");
    let (mut uac, _) = answered_call(&emonav, "calm.ul");
    let first = uac.expect_request("REFER", 6 * S).expect("first REFER");
    uac.respond(&first, 202, "Accepted");
    uac.notify("SIP/2.0 486 Busy Here", true);
    let second = uac.expect_request("REFER", 3 * S).expect("fallback REFER");
    uac.respond(&second, 202, "Accepted");
    uac.notify("SIP/2.0 480 Temporarily Unavailable", true);
    let failed = Instant::now();
    let bye = uac
        .expect_request("BYE", 6 * S)
        .expect("BYE after both attempts failed");
    // The profile's 3 s congestion tone first, then the BYE saying why.
    assert!(
        failed.elapsed() >= Duration::from_millis(2_800),
        "BYE after {:?}: no tone",
        failed.elapsed()
    );
    assert!(
        bye.headers
            .get("Reason")
            .is_some_and(|r| r.contains("cause=480") && r.contains("transfer failed")),
        "{:?}",
        bye.headers.get("Reason")
    );
    uac.respond(&bye, 200, "OK");
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["outcome"], "failed");
    assert_eq!(ev["refer_attempts"][1]["notify_status"], 480);
}

#[test]
fn notify_after_our_bye_still_gets_200() {
    let emonav = Emonav::start("");
    let (mut uac, _) = answered_call(&emonav, "agitated.ul");
    let refer = uac.expect_request("REFER", 6 * S).expect("REFER");
    uac.respond(&refer, 202, "Accepted");
    uac.notify("SIP/2.0 200 OK", true);
    let bye = uac.expect_request("BYE", 3 * S).expect("BYE");
    uac.respond(&bye, 200, "OK");
    // A PBX that repeats the final NOTIFY after the BYE crossed it.
    let late = uac.notify("SIP/2.0 200 OK", true);
    assert_eq!(uac.expect_response(&late, 2 * S).expect("answer").code, 200);
}

#[test]
fn no_common_codec_is_488() {
    let emonav = Emonav::start("");
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.offer("18", "a=rtpmap:18 G729/8000\r\n"));
    let resp = uac.invite_final(3 * S);
    assert_eq!(resp.code, 488);
    uac.ack(false);
    assert_eq!(emonav.next_event(3 * S)["outcome"], "rejected");
}

#[test]
fn retransmitted_invite_gets_the_same_answer_and_one_call() {
    let emonav = Emonav::start("");
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    let first = uac.invite_final(3 * S);
    uac.send_raw(&uac.invite_text.clone());
    let again = uac.invite_final(3 * S);
    assert_eq!(first.code, 200);
    assert_eq!(again.to_bytes(), first.to_bytes(), "same 200 OK");
    uac.ack(true);
    let bye = uac.request("BYE", "", "");
    assert_eq!(uac.expect_response(&bye, 2 * S).unwrap().code, 200);
    assert_eq!(emonav.next_event(3 * S)["outcome"], "caller_hangup");
    assert!(
        emonav.next_event_opt(Duration::from_millis(500)).is_none(),
        "only one call"
    );
}

#[test]
fn unanswered_200_is_retransmitted_until_ack() {
    let emonav = Emonav::start("");
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    let first = uac.invite_final(3 * S);
    // T1 is 100 ms in test profiles: retransmissions at 100, 300, 700 ms.
    let mut retransmits = 0;
    let until = Instant::now() + Duration::from_millis(900);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Some(emonav_sip::message::Message::Response(r)) = uac.recv(left) {
            assert_eq!(r.to_bytes(), first.to_bytes());
            retransmits += 1;
        }
    }
    assert!(retransmits >= 2, "{retransmits} retransmissions");
    uac.ack(true);
    assert!(
        uac.recv(Duration::from_millis(500)).is_none(),
        "no retransmission after ACK"
    );
}

#[test]
fn keypad_zero_goes_to_the_operator_whatever_the_emotion() {
    let emonav = Emonav::start(
        "[[policy.dtmf]]\ndigit = \"0\"\nlabel = \"operator\"\nqueue = \"sip:operator@127.0.0.1:5070\"\n",
    );
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    assert_eq!(uac.invite_final(5 * S).code, 200);
    uac.ack(true);
    let started = Instant::now();
    // No voice at all: without the key this call would wait for the deadline.
    uac.send_digit(0, 40_000);
    let refer = uac.expect_request("REFER", 3 * S).expect("REFER");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "routed on the key, not the deadline"
    );
    assert_eq!(refer_to(&refer), "<sip:operator@127.0.0.1:5070>");
    assert_eq!(refer.headers.get("X-Emonav-Emotion"), Some("operator"));
    assert_eq!(refer.headers.get("X-Emonav-Reason"), Some("dtmf"));
    complete_transfer(&mut uac, &refer);
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["decision_reason"], "dtmf");
    assert_eq!(
        ev["refer_attempts"].as_array().unwrap().len(),
        1,
        "the end packet acted on once"
    );
}

/// CANCEL sent back to back with the INVITE, while emonav (no answer delay)
/// is already sending its 200 OK: whichever wins, one final response to the
/// INVITE, 200 to the CANCEL, and the call ends cleanly.
#[test]
fn cancel_racing_the_200_ends_the_call_cleanly() {
    let emonav = Emonav::start("");
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    let me = uac.addr();
    uac.send_raw(&format!(
        "CANCEL sip:emonav@{r} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={b};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={t}\r\nTo: <sip:emonav@{r}>\r\n\
         Call-ID: {c}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        r = emonav.sip,
        b = uac.invite_branch,
        t = uac.tag,
        c = uac.call_id
    ));
    let mut finals = vec![];
    let deadline = Instant::now() + 2 * S;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match uac.recv(left) {
            Some(emonav_sip::message::Message::Response(r)) if r.code >= 200 => {
                finals.push((r.code, r.cseq().unwrap().method.as_str().to_string(), r));
            }
            Some(_) => {}
            None => break,
        }
        if finals.iter().any(|f| f.1 == "CANCEL") && finals.iter().any(|f| f.1 == "INVITE") {
            break;
        }
    }
    let cancel: Vec<_> = finals.iter().filter(|f| f.1 == "CANCEL").collect();
    assert_eq!(
        cancel.len(),
        1,
        "{:?}",
        finals.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert_eq!(cancel[0].0, 200);
    let invite = finals
        .iter()
        .find(|f| f.1 == "INVITE")
        .expect("a final response to the INVITE");
    match invite.0 {
        200 => {
            // Our 200 won: ACK it and hang up.
            let resp = invite.2.clone();
            uac.remote_tag = resp.to().and_then(|t| t.tag().map(str::to_owned));
            uac.ack(true);
            let branch = uac.request("BYE", "", "");
            assert_eq!(uac.expect_response(&branch, 2 * S).unwrap().code, 200);
            assert_eq!(emonav.next_event(3 * S)["outcome"], "caller_hangup");
        }
        487 => {
            uac.ack(false);
            assert_eq!(emonav.next_event(3 * S)["outcome"], "cancelled");
        }
        other => panic!("unexpected final response {other}"),
    }
    assert!(emonav.next_event_opt(S).is_none(), "one call only");
}

/// RFC 4028: a too-small Session-Expires is refused with 422 and Min-SE
/// before any call exists, so the caller's retry on the same Call-ID works.
#[test]
fn session_interval_too_small_is_422_and_the_retry_is_answered() {
    let emonav = Emonav::start("");
    let uac = Uac::new(emonav.sip);
    let sdp = uac.g711_offer();
    let me = uac.addr();
    let small = format!(
        "INVITE sip:emonav@{r} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKst422a;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=st\r\nTo: <sip:emonav@{r}>\r\n\
         Call-ID: st-422@test\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{me}>\r\n\
         Session-Expires: 30\r\nSupported: timer\r\nContent-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{sdp}",
        r = emonav.sip,
        len = sdp.len()
    );
    uac.send_raw(&small);
    let mut uac = uac;
    let r = loop {
        match uac.recv(2 * S).expect("a response") {
            emonav_sip::message::Message::Response(r) if r.code >= 200 => break r,
            _ => {}
        }
    };
    assert_eq!((r.code, r.headers.get("Min-SE")), (422, Some("90")));
    let retry = small
        .replace("Session-Expires: 30", "Session-Expires: 1800")
        .replace("z9hG4bKst422a", "z9hG4bKst422b")
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE");
    uac.send_raw(&retry);
    let ok = loop {
        match uac.recv(2 * S).expect("a response") {
            emonav_sip::message::Message::Response(r)
                if r.code >= 200 && r.call_id() == Some("st-422@test") =>
            {
                break r
            }
            _ => {}
        }
    };
    assert_eq!(ok.code, 200);
    assert_eq!(
        ok.headers.get("Session-Expires"),
        Some("1800;refresher=uac")
    );
    assert_eq!(ok.headers.get("Require"), Some("timer"));
}

/// RTP header fields: (payload type, sequence, timestamp, SSRC).
fn rtp_header(p: &[u8]) -> (u8, u16, u32, u32) {
    assert!(p.len() >= 12 && p[0] >> 6 == 2, "RTP v2: {p:?}");
    (
        p[1] & 0x7f,
        u16::from_be_bytes([p[2], p[3]]),
        u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
    )
}

#[test]
fn media_from_another_address_is_latched_and_a_stray_source_ignored() {
    let emonav = Emonav::start("");
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    assert_eq!(uac.invite_final(5 * S).code, 200);
    uac.ack(true);
    // Before any RTP, our silence goes to the SDP's address.
    uac.rtp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = uac.rtp.recv_from(&mut buf).expect("RTP to the SDP address");
    assert_eq!(Some(from), uac.remote_rtp, "symmetric: from our RTP port");
    assert_eq!(rtp_header(&buf[..n]).0, 0);
    // The caller's media really comes from elsewhere (a relay, NAT).
    let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    relay
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    uac.play_from(&relay, fixture("agitated.ul"), 0, 0x1111_1111);
    // A second source sends calm speech and RTCP: ignored, counted.
    let stray = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    uac.play_from(&stray, fixture("calm.ul"), 0, 0x2222_2222);
    // RTCP (receiver report, rtcp-mux) from the latched source: counted, harmless.
    let rr = [
        0x81, 201, 0, 7, 0x11, 0x11, 0x11, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0,
    ];
    let rtp_port = uac.remote_rtp.unwrap();
    relay.send_to(&rr, rtp_port).unwrap();
    // ... and on the RTCP port (RTP + 1).
    let rtcp_port = std::net::SocketAddr::new(rtp_port.ip(), rtp_port.port() + 1);
    relay.send_to(&rr, rtcp_port).unwrap();
    // Our RTP now goes to the latched address.
    let (n, _) = relay
        .recv_from(&mut buf)
        .expect("RTP to the latched address");
    assert_eq!(rtp_header(&buf[..n]).0, 0);
    let refer = uac.expect_request("REFER", 6 * S).expect("REFER");
    assert_eq!(refer_to(&refer), "<sip:deescalation@127.0.0.1:5070>");
    assert!(started.elapsed() < Duration::from_millis(3600));
    complete_transfer(&mut uac, &refer);
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["emotion"], "agitated", "{ev}");
    assert!(ev["media"]["latch"]["stray"].as_u64().unwrap() > 10, "{ev}");
    assert_eq!(ev["rtp"]["rtcp"], 2, "{ev}");
    assert_eq!(ev["rtp"]["ssrc_changes"], 0, "{ev}");
    assert!(ev["media"]["sent"].as_u64().unwrap() > 10, "{ev}");
}

#[test]
fn silence_is_sent_back_every_20_ms_with_contiguous_sequence_and_timestamps() {
    let emonav = Emonav::start("");
    let (uac, _) = answered_call(&emonav, "calm.ul");
    uac.rtp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut got = vec![];
    let t = Instant::now();
    while got.len() < 25 {
        let (n, _) = uac.rtp.recv_from(&mut buf).expect("our RTP");
        assert_eq!(n, 12 + 160, "20 ms of PCMU");
        assert!(buf[12..n].iter().all(|&b| b == 0xff), "μ-law silence");
        got.push(rtp_header(&buf[..n]));
    }
    let elapsed = t.elapsed();
    assert!(
        elapsed > Duration::from_millis(350) && elapsed < Duration::from_millis(1000),
        "paced at 20 ms: 24 intervals in {elapsed:?}"
    );
    for w in got.windows(2) {
        let ((pt, seq, ts, ssrc), (pt2, seq2, ts2, ssrc2)) = (w[0], w[1]);
        assert_eq!((pt, pt2), (0, 0));
        assert_eq!(seq2, seq.wrapping_add(1));
        assert_eq!(ts2.wrapping_sub(ts) % 160, 0);
        assert!(ts2.wrapping_sub(ts) >= 160 && ts2.wrapping_sub(ts) <= 480);
        assert_eq!(ssrc, ssrc2);
        assert_ne!(ssrc, 0x1234_5678, "our own SSRC, not the caller's");
    }
}

/// `[media] keepalive_interval_ms`: one packet per interval, marked, the
/// timestamp following the clock and the sequence contiguous.
#[test]
fn a_sparse_keepalive_sends_one_silence_packet_per_interval() {
    let emonav = Emonav::start("[media]\nkeepalive_interval_ms = 500\n");
    let (uac, _) = answered_call(&emonav, "calm.ul");
    uac.rtp
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut got = vec![];
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(2_100) {
        if let Ok((n, _)) = uac.rtp.recv_from(&mut buf) {
            assert_eq!(n, 12 + 160, "20 ms of PCMU");
            got.push((rtp_header(&buf[..n]), buf[1] & 0x80 != 0));
        }
    }
    // 2.1 s at one packet per 500 ms: 4 or 5 (a 20 ms stream would be ~105).
    assert!((4..=5).contains(&got.len()), "{} packets", got.len());
    for w in got.windows(2) {
        let (((_, seq, ts, _), _), ((_, seq2, ts2, _), marked)) = (w[0], w[1]);
        assert_eq!(seq2, seq.wrapping_add(1));
        assert_eq!(ts2.wrapping_sub(ts), 4_000, "500 ms of 8 kHz clock");
        assert!(marked);
    }
}

#[test]
fn no_silence_when_disabled() {
    let emonav = Emonav::start("[media]\nsend_silence = false\n");
    let (uac, _) = answered_call(&emonav, "calm.ul");
    uac.rtp
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(uac.rtp.recv_from(&mut buf).is_err(), "nothing sent");
}

#[test]
fn rtcp_reports_go_to_the_rtp_port_plus_one_about_the_callers_stream() {
    let emonav = Emonav::start("");
    // No a=rtcp, no rtcp-mux: the caller's RTCP port is its RTP port + 1 (RFC 3605).
    let (mut uac, rtcp) = loop {
        let uac = Uac::new(emonav.sip);
        let p = uac.rtp.local_addr().unwrap();
        if let Ok(s) = std::net::UdpSocket::bind((p.ip(), p.port() + 1)) {
            break (uac, s);
        }
    };
    rtcp.set_read_timeout(Some(5 * S)).unwrap();
    uac.send_invite(&uac.g711_offer());
    let ok = uac.invite_final(5 * S);
    assert_eq!(ok.code, 200);
    assert!(!String::from_utf8_lossy(&ok.body).contains("rtcp-mux"));
    uac.ack(true);
    let emonav_rtp = uac.remote_rtp.unwrap();
    let emonav_rtcp = std::net::SocketAddr::new(emonav_rtp.ip(), emonav_rtp.port() + 1);
    uac.play(fixture("calm.ul"), 0);
    // A sender report from the caller (NTP 0x00001111.22223333 → LSR 0x11112222).
    let mut sr = vec![0x80, 200, 0, 6, 0x12, 0x34, 0x56, 0x78];
    sr.extend_from_slice(&[0, 0, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33]);
    sr.extend_from_slice(&[0; 12]);
    rtcp.send_to(&sr, emonav_rtcp).unwrap();
    let mut buf = [0u8; 1500];
    let started = Instant::now();
    let (n, from) = rtcp.recv_from(&mut buf).expect("a report");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(4000),
        "first report after {waited:?}"
    );
    assert_eq!(from, emonav_rtcp, "from our RTCP port");
    let p = buf[..n].to_vec();
    let word = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    // We send a silence keepalive, so we are a sender: an SR (§6.4.1).
    assert_eq!(
        (p[0], p[1], p[2], p[3]),
        (0x81, 200, 0, 12),
        "SR, one block: {p:?}"
    );
    let ntp_secs = word(8) as u64;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        ntp_secs.abs_diff(unix + 2_208_988_800) <= 5,
        "NTP time of the report"
    );
    assert!(
        word(20) > 0 && word(24) == 160 * word(20),
        "packet and octet counts"
    );
    assert_eq!(
        word(28),
        0x1234_5678,
        "the block is about the caller's SSRC"
    );
    assert_eq!(word(44), 0x1111_2222, "LSR from the caller's SR");
    assert!(word(48) > 0, "DLSR");
    assert_eq!((p[52] & 0x1f, p[53]), (1, 202), "SDES follows");
    assert_eq!(word(56), word(4), "SDES chunk of our SSRC");
    assert_eq!(p[60], 1, "CNAME");
    // Our SSRC is the one of our RTP.
    uac.rtp.set_read_timeout(Some(2 * S)).unwrap();
    let mut rtp = [0u8; 2048];
    let (n, _) = uac.rtp.recv_from(&mut rtp).expect("our RTP");
    assert_eq!(rtp_header(&rtp[..n]).3, word(4));
    let refer = uac.expect_request("REFER", 6 * S).expect("REFER");
    complete_transfer(&mut uac, &refer);
    let ev = emonav.next_event(5 * S);
    assert!(ev["media"]["rtcp_sent"].as_u64().unwrap() >= 1, "{ev}");
    assert_eq!(ev["rtp"]["rtcp"], 1, "{ev}");
    // Media over: an RTCP BYE for our SSRC (RFC 3550 §6.3.7), after any
    // report still in flight.
    rtcp.set_read_timeout(Some(3 * S)).unwrap();
    let ours = word(4);
    let bye = loop {
        let (n, _) = rtcp.recv_from(&mut buf).expect("an RTCP BYE");
        let q = buf[..n].to_vec();
        if q.len() >= 8 && q[q.len() - 7] == 203 {
            break q;
        }
    };
    let tail = &bye[bye.len() - 8..];
    assert_eq!(
        (tail[0] & 0x1f, tail[1]),
        (1, 203),
        "BYE, one SSRC: {bye:?}"
    );
    assert_eq!(
        u32::from_be_bytes([tail[4], tail[5], tail[6], tail[7]]),
        ours
    );
}

#[test]
fn a_caller_gone_before_our_bye_no_longer_holds_a_max_calls_slot() {
    // One call at a time; decision_only hangs up itself at the 3 s
    // deadline (no audio: no early decision).
    let emonav =
        Emonav::start("[transfer]\ntransfer_mode = \"decision_only\"\n[overload]\nmax_calls = 1\n");
    let mut first = Uac::new(emonav.sip);
    first.send_invite(&first.g711_offer());
    assert_eq!(first.invite_final(5 * S).code, 200);
    first.ack(true);
    // While it is up, a second call is refused.
    let mut refused = Uac::new(emonav.sip);
    refused.send_invite(&refused.g711_offer());
    assert_eq!(refused.invite_final(5 * S).code, 503, "max_calls = 1");
    refused.ack(false);
    // Our BYE comes and is never answered: the caller is gone. emonav
    // retransmits it until Timer F (64·T1 = 6.4 s with the test's 100 ms T1).
    first
        .expect_request("BYE", 6 * S)
        .expect("BYE at the deadline");
    let sent = Instant::now();
    // The session is over for emonav: a new call is admitted long before
    // Timer F ends the BYE transaction.
    std::thread::sleep(Duration::from_millis(300));
    let mut next = Uac::new(emonav.sip);
    next.send_invite(&next.g711_offer());
    let r = next.invite_final(5 * S);
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "checked within Timer F"
    );
    assert_eq!(r.code, 200, "admitted while the old BYE is unanswered");
    next.ack(true);
}
