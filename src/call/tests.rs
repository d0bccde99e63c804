//! The call state machine driven with a fake clock: every timer path without sleeping.

use super::*;
use crate::config::{DialogCredential, Profile};
use crate::media::session::OPUS_ANALYSIS_RATE;
use crate::sdp::CodecName;
use emonav_sip::message::{parse_datagram, Message};

const CALLER: &str = "127.0.0.1:5070";

fn settings() -> Arc<CallSettings> {
    Arc::new(CallSettings::from_profile(&Profile::default(), 5060))
}

fn invite() -> Request {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let text = format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\n\
         Call-ID: unit-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    request(&text)
}

fn request(text: &str) -> Request {
    match parse_datagram(text.as_bytes()).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

/// What the call put out on its SIP sockets and its record, owned; the
/// media packets due at the last input are taken and left out.
pub(super) fn outputs(call: &mut Call) -> Vec<Output<'static>> {
    let mut out = vec![];
    while let Some(o) = call.poll_output() {
        match o {
            Output::Transmit(
                t @ Transmit {
                    socket: Socket::Sip { .. },
                    ..
                },
            ) => out.push(Output::Transmit(Transmit {
                payload: Cow::Owned(t.payload.into_owned()),
                ..t
            })),
            Output::Transmit(_) | Output::Decision(_) => {}
            Output::RelayPort => out.push(Output::RelayPort),
            Output::Record(r) => out.push(Output::Record(r)),
            Output::Alias(a) => out.push(Output::Alias(a)),
        }
    }
    out
}

/// The media packets due at the last input: socket, destination, bytes.
fn media_sent(call: &mut Call) -> Vec<(Socket, SocketAddr, Vec<u8>)> {
    let mut out = vec![];
    while let Some(o) = call.poll_output() {
        if let Output::Transmit(t) = o {
            if !matches!(t.socket, Socket::Sip { .. }) {
                out.push((t.socket, t.dest, t.payload.into_owned()));
            }
        }
    }
    out
}

/// The next protocol deadline: the timer table's earliest but our media
/// pacing (every 20 ms while the silence stream flows).
pub(super) fn protocol_timeout(call: &mut Call) -> Option<Instant> {
    call.arm_timers();
    call.timers.next_except(Timer::Media)
}

fn sent(call: &mut Call) -> Vec<Message> {
    outputs(call)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit(t) => Some(parse_datagram(&t.payload).unwrap()),
            _ => None,
        })
        .collect()
}

fn codes(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m {
            Message::Response(r) => r.code.to_string(),
            Message::Request(r) => r.method.to_string(),
        })
        .collect()
}

fn in_dialog(call: &Call, method: &str, cseq: u32, extra: &str, body: &str) -> Request {
    in_dialog_tagged(&call.dialog.local_tag, method, cseq, extra, body)
}

/// The caller's final NOTIFY of the transfer: the queue answered.
fn final_notify(call: &Call, cseq: u32) -> Request {
    in_dialog(
        call,
        "NOTIFY",
        cseq,
        "Event: refer\r\nSubscription-State: terminated\r\nContent-Type: message/sipfrag\r\n",
        "SIP/2.0 200 OK\r\n",
    )
}

fn in_dialog_tagged(tag: &str, method: &str, cseq: u32, extra: &str, body: &str) -> Request {
    request(&format!(
        "{method} sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{method}{cseq}\r\n\
         From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>;tag={tag}\r\n\
         Call-ID: unit-1\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
        len = body.len()
    ))
}

fn ack(call: &Call) -> Request {
    in_dialog(call, "ACK", 1, "", "")
}

fn response_to(req: &Message, code: u16) -> Response {
    match req {
        Message::Request(r) => r.make_response(code, "X"),
        Message::Response(_) => panic!("not a request"),
    }
}

fn ended(call: &mut Call) -> Option<CallRecord> {
    let mut rec = None;
    for o in outputs(call) {
        if let Output::Record(r) = o {
            rec = Some(*r);
        }
    }
    rec
}

/// A call whose 100 and 200 have been sent (and checked), not yet ACKed.
fn offered(t0: Instant) -> Call {
    offered_with(settings(), t0)
}

fn offered_with(settings: Arc<CallSettings>, t0: Instant) -> Call {
    let mut call = Call::new(
        settings,
        invite(),
        src(),
        "127.0.0.1:20000".parse().unwrap(),
        t0,
    )
    .unwrap();
    assert_eq!(codes(&sent(&mut call)), ["100", "200"]);
    call
}

fn answered(t0: Instant) -> Call {
    let mut call = offered(t0);
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call
}

fn src() -> SocketAddr {
    CALLER.parse().unwrap()
}

/// The caller, over UDP.
fn peer() -> Peer {
    Peer {
        addr: src(),
        transport: Transport::Udp,
    }
}

#[test]
fn no_audio_decides_default_queue_at_the_deadline() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    assert_eq!(
        protocol_timeout(&mut call),
        Some(t0 + Duration::from_secs(3))
    );
    call.handle_timeout(t0 + Duration::from_secs(3));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["REFER"]);
    let Message::Request(refer) = &out[0] else {
        unreachable!()
    };
    assert_eq!(
        refer.headers.get("Refer-To"),
        Some("<sip:default@127.0.0.1:5070>")
    );
    assert_eq!(refer.uri.to_string(), format!("sip:caller@{CALLER}"));
}

#[test]
fn refer_is_retransmitted_by_timer_e_and_notify_timeout_hangs_up() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = sent(&mut call).remove(0);
    let t = protocol_timeout(&mut call).unwrap();
    assert_eq!(t, t0 + Duration::from_millis(3500), "Timer E = T1");
    call.handle_timeout(t);
    assert_eq!(codes(&sent(&mut call)), ["REFER"]);
    call.handle_response(&response_to(&refer, 202), t0 + Duration::from_millis(3600));
    // The default queue already failed: no second REFER; the congestion
    // tone (the profile's 3 s), then a BYE saying why.
    let failed = t0 + Duration::from_secs(13);
    call.handle_timeout(failed);
    assert!(sent(&mut call).is_empty(), "the tone first");
    let loud = loud_packets(&mut call, failed, 100);
    assert!((40..=60).contains(&loud), "{loud} loud packets in 2 s");
    call.handle_timeout(failed + Duration::from_millis(2990));
    assert!(sent(&mut call).is_empty());
    call.handle_timeout(failed + Duration::from_secs(3));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["BYE"]);
    let Message::Request(bye) = &out[0] else {
        unreachable!()
    };
    let reason = bye.headers.get("Reason").unwrap_or_default();
    assert!(
        reason.contains("cause=480") && reason.contains("no final NOTIFY"),
        "{reason}"
    );
    call.handle_response(&response_to(&out[0], 200), t0 + Duration::from_secs(17));
    let rec = ended(&mut call).expect("event");
    assert_eq!(rec.outcome, Outcome::Failed);
    assert_eq!(rec.refer_attempts[0].response, Some(202));
}

#[test]
fn missing_ack_retransmits_200_then_hangs_up() {
    let t0 = Instant::now();
    let mut call = offered(t0);
    let mut retransmits = 0;
    while let Some(t) = protocol_timeout(&mut call) {
        if t > t0 + Duration::from_secs(40) {
            break;
        }
        call.handle_timeout(t);
        let out = sent(&mut call);
        if codes(&out) == ["BYE"] {
            assert_eq!(t - t0, Duration::from_secs(32), "64·T1");
            call.handle_response(&response_to(&out[0], 200), t);
            break;
        }
        retransmits += codes(&out).iter().filter(|c| *c == "200").count();
    }
    assert_eq!(retransmits, 10);
    assert_eq!(ended(&mut call).unwrap().outcome, Outcome::NoAck);
}

#[test]
fn caller_bye_during_transfer_waits_for_the_final_notify() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = sent(&mut call).remove(0);
    call.handle_response(&response_to(&refer, 202), t0 + Duration::from_millis(3100));
    call.handle_request(
        &in_dialog(&call, "BYE", 2, "", ""),
        peer(),
        t0 + Duration::from_millis(3200),
    );
    assert_eq!(codes(&sent(&mut call)), ["200"]);
    assert!(ended(&mut call).is_none(), "still waiting for the NOTIFY");
    let notify = final_notify(&call, 3);
    call.handle_request(&notify, peer(), t0 + Duration::from_millis(3300));
    let out = outputs(&mut call);
    let mut sends = 0;
    let mut rec = None;
    for o in out {
        match o {
            Output::Transmit(t) => {
                sends += 1;
                let Message::Response(r) = parse_datagram(&t.payload).unwrap() else {
                    panic!("no request expected: the caller already hung up")
                };
                assert_eq!(r.code, 200);
            }
            Output::Record(r) => rec = Some(r),
            _ => {}
        }
    }
    assert_eq!(sends, 1);
    assert_eq!(rec.unwrap().outcome, Outcome::Transferred);
}

#[test]
fn a_202_overtaken_by_the_final_notify_is_still_recorded() {
    // Through a proxy the caller's 202 and NOTIFY may arrive swapped.
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = sent(&mut call).remove(0);
    let notify = final_notify(&call, 2);
    call.handle_request(&notify, peer(), t0 + Duration::from_millis(3100));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200", "BYE"]);
    call.handle_response(&response_to(&refer, 202), t0 + Duration::from_millis(3110));
    call.handle_response(&response_to(&out[1], 200), t0 + Duration::from_millis(3200));
    let rec = ended(&mut call).expect("call ended after the BYE's 200");
    assert_eq!(rec.outcome, Outcome::Transferred);
    assert_eq!(rec.refer_attempts[0].response, Some(202));
}

#[test]
fn a_call_transferred_by_refer_never_allocates_third_party_state() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = sent(&mut call).remove(0);
    call.handle_response(&response_to(&refer, 202), t0 + Duration::from_millis(3100));
    let notify = final_notify(&call, 2);
    call.handle_request(&notify, peer(), t0 + Duration::from_millis(3200));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200", "BYE"]);
    call.handle_response(&response_to(&out[1], 200), t0 + Duration::from_millis(3300));
    assert_eq!(
        ended(&mut call).expect("ended").outcome,
        Outcome::Transferred
    );
    while let Some(t) = protocol_timeout(&mut call) {
        call.handle_timeout(t);
    }
    assert!(call.is_finished());
    assert!(
        !call.b2b.is_used(),
        "B2BUA state allocated for a REFER call"
    );
}

#[test]
fn lower_cseq_in_dialog_gets_500() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_request(&in_dialog(&call, "OPTIONS", 5, "", ""), peer(), t0);
    assert_eq!(codes(&sent(&mut call)), ["200"]);
    call.handle_request(&in_dialog(&call, "OPTIONS", 4, "", ""), peer(), t0);
    assert_eq!(codes(&sent(&mut call)), ["500"]);
}

#[test]
fn notify_with_wrong_event_is_489() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    let n = in_dialog(&call, "NOTIFY", 2, "Event: dialog\r\n", "");
    call.handle_request(&n, peer(), t0);
    assert_eq!(codes(&sent(&mut call)), ["489"]);
}

#[test]
fn bye_before_ack_stops_the_200_retransmissions() {
    let t0 = Instant::now();
    let mut call = offered(t0);
    call.handle_request(
        &in_dialog(&call, "BYE", 2, "", ""),
        peer(),
        t0 + Duration::from_millis(100),
    );
    let outputs = outputs(&mut call);
    assert!(
        matches!(&outputs[..], [Output::Transmit(_), Output::Record(r)] if r.outcome == Outcome::CallerHangup)
    );
    // Nothing more is ever sent: no 200 retransmission, no BYE for a missing ACK.
    while let Some(t) = protocol_timeout(&mut call) {
        call.handle_timeout(t);
        assert!(sent(&mut call).is_empty(), "sent something at {:?}", t - t0);
    }
    assert!(call.is_finished());
}

fn with_credentials(realm: Option<&str>) -> Arc<CallSettings> {
    let mut s = CallSettings::from_profile(&Profile::default(), 5060);
    // No failure tone: a failed transfer's BYE goes at once.
    s.failure_tone = Duration::ZERO;
    s.credentials = vec![DialogCredential {
        realm: realm.map(str::to_owned),
        username: "emonav".into(),
        password: crate::config::Secret::new("secret"),
    }];
    Arc::new(s)
}

fn challenge(req: &Message, code: u16) -> Response {
    let mut resp = response_to(req, code);
    let header = if code == 401 {
        "WWW-Authenticate"
    } else {
        "Proxy-Authenticate"
    };
    resp.headers.push(
        header,
        r#"Digest realm="pbx", nonce="n0nce", qop="auth", algorithm=MD5"#,
    );
    resp
}

fn only_request(mut out: Vec<Message>) -> Request {
    assert_eq!(out.len(), 1, "{:?}", codes(&out));
    match out.remove(0) {
        Message::Request(r) => r,
        Message::Response(r) => panic!("request expected, got {}", r.code),
    }
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Check a Digest answer independently of the digest module (RFC 2617 §3.2.2, qop=auth).
fn assert_valid_digest(value: &str, method: &str, uri: &str) {
    let param = |name: &str| -> String {
        let rest = value
            .split(&format!("{name}="))
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} in {value}"));
        let v = rest.split(',').next().unwrap().trim();
        v.trim_matches('"').to_string()
    };
    assert_eq!(param("username"), "emonav");
    assert_eq!(param("realm"), "pbx");
    assert_eq!(param("nonce"), "n0nce");
    assert_eq!(param("uri"), uri);
    let ha1 = md5_hex("emonav:pbx:secret");
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let expected = md5_hex(&format!(
        "{ha1}:n0nce:{}:{}:auth:{ha2}",
        param("nc"),
        param("cnonce")
    ));
    assert_eq!(param("response"), expected, "{value}");
}

#[test]
fn challenged_refer_is_resent_once_with_credentials() {
    let t0 = Instant::now();
    let mut call = offered_with(with_credentials(None), t0);
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call.handle_timeout(t0 + Duration::from_secs(3));
    let first = only_request(sent(&mut call));
    call.handle_response(
        &challenge(&Message::Request(first.clone()), 407),
        t0 + Duration::from_millis(3100),
    );
    let again = only_request(sent(&mut call));
    assert_eq!(again.method, Method::Refer);
    assert_eq!(again.cseq().unwrap().seq, first.cseq().unwrap().seq + 1);
    assert_ne!(
        again.top_via().unwrap().branch(),
        first.top_via().unwrap().branch()
    );
    assert_eq!(again.headers.get("Refer-To"), first.headers.get("Refer-To"));
    assert!(again.headers.get("Authorization").is_none());
    let uri = again.uri.to_string();
    assert_valid_digest(
        again.headers.get("Proxy-Authorization").unwrap(),
        "REFER",
        &uri,
    );

    // The retransmission timer follows the new transaction, not the old one.
    call.handle_response(
        &response_to(&Message::Request(again.clone()), 202),
        t0 + Duration::from_millis(3200),
    );
    let id = again.cseq().unwrap().seq;
    let notify = in_dialog(
        &call,
        "NOTIFY",
        2,
        &format!("Event: refer;id={id}\r\nSubscription-State: terminated\r\nContent-Type: message/sipfrag\r\n"),
        "SIP/2.0 200 OK\r\n",
    );
    call.handle_request(&notify, peer(), t0 + Duration::from_millis(3300));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200", "BYE"]);
    call.handle_response(&response_to(&out[1], 200), t0 + Duration::from_millis(3400));
    let rec = ended(&mut call).expect("event");
    assert_eq!(rec.outcome, Outcome::Transferred);
    assert_eq!(
        rec.refer_attempts.len(),
        1,
        "a re-sent REFER is the same attempt"
    );
    assert_eq!(rec.refer_attempts[0].response, Some(202));
}

#[test]
fn second_challenge_for_the_same_request_fails_it() {
    let t0 = Instant::now();
    let mut call = offered_with(with_credentials(None), t0);
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call.handle_timeout(t0 + Duration::from_secs(3));
    let first = Message::Request(only_request(sent(&mut call)));
    call.handle_response(&challenge(&first, 407), t0 + Duration::from_millis(3100));
    let again = Message::Request(only_request(sent(&mut call)));
    call.handle_response(&challenge(&again, 407), t0 + Duration::from_millis(3200));
    // The default queue was the target: the fallback is a BYE.
    let bye = only_request(sent(&mut call));
    assert_eq!(bye.method, Method::Bye);
    assert!(bye.headers.get("Proxy-Authorization").is_none());
    call.handle_response(
        &response_to(&Message::Request(bye), 200),
        t0 + Duration::from_millis(3300),
    );
    let rec = ended(&mut call).expect("event");
    assert_eq!(rec.outcome, Outcome::Failed);
    assert_eq!(rec.refer_attempts[0].response, Some(407));
}

#[test]
fn challenged_bye_is_resent_with_authorization() {
    let t0 = Instant::now();
    let mut call = offered_with(with_credentials(Some("PBX")), t0);
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = Message::Request(only_request(sent(&mut call)));
    call.handle_response(&response_to(&refer, 603), t0 + Duration::from_millis(3100));
    let bye = only_request(sent(&mut call));
    assert_eq!(bye.method, Method::Bye);
    call.handle_response(
        &challenge(&Message::Request(bye.clone()), 401),
        t0 + Duration::from_millis(3200),
    );
    let again = only_request(sent(&mut call));
    assert_eq!(again.method, Method::Bye);
    assert_eq!(again.cseq().unwrap().seq, bye.cseq().unwrap().seq + 1);
    let uri = again.uri.to_string();
    assert_valid_digest(again.headers.get("Authorization").unwrap(), "BYE", &uri);
    assert!(ended(&mut call).is_none());
    call.handle_response(
        &response_to(&Message::Request(again), 200),
        t0 + Duration::from_millis(3300),
    );
    assert_eq!(ended(&mut call).unwrap().outcome, Outcome::Failed);
}

#[test]
fn challenge_for_an_unknown_realm_is_a_failure() {
    let t0 = Instant::now();
    let mut call = offered_with(with_credentials(Some("elsewhere")), t0);
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = Message::Request(only_request(sent(&mut call)));
    call.handle_response(&challenge(&refer, 407), t0 + Duration::from_millis(3100));
    assert_eq!(only_request(sent(&mut call)).method, Method::Bye);
}

/// An Opus call (PT 111, only Opus in the profile), answered and ACKed, that
/// will not decide within a few seconds of audio.
fn opus_call(t0: Instant) -> Call {
    let mut profile = Profile::default();
    profile.media.codecs = vec![CodecName::Opus];
    profile.policy.decision_deadline_ms = 60_000;
    profile.policy.min_speech_ms = 60_000;
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n\
               a=fmtp:111 minptime=10;useinbandfec=1\r\n";
    let invite = request(&format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1;rport\r\n\
         From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\n\
         Call-ID: unit-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    let settings = Arc::new(CallSettings::from_profile(&profile, 5060));
    let local = "127.0.0.1:20000".parse().unwrap();
    let mut call = Call::new(settings, invite, src(), local, t0).unwrap();
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["100", "200"]);
    let Message::Response(ok) = &out[1] else {
        unreachable!()
    };
    let body = String::from_utf8_lossy(&ok.body);
    assert!(body.contains("a=rtpmap:111 opus/48000/2\r\n"), "{body}");
    assert!(body.contains("useinbandfec=1"), "{body}");
    let playback = format!("maxplaybackrate={OPUS_ANALYSIS_RATE}");
    assert!(body.contains(&playback), "the rate we decode at: {body}");
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call
}

/// One RTP packet per 20 ms of a 16 kHz 200 Hz tone, Opus-encoded, PT 111.
fn opus_packets(count: u16) -> Vec<Vec<u8>> {
    use audiopus::coder::Encoder;
    use audiopus::{Application, Channels, SampleRate};
    let enc = Encoder::new(SampleRate::Hz16000, Channels::Mono, Application::Voip).unwrap();
    (0..count)
        .map(|i| {
            let pcm: Vec<i16> = (0..320)
                .map(|n| {
                    let t = (i as usize * 320 + n) as f32 / 16000.0;
                    (6000.0 * (2.0 * std::f32::consts::PI * 200.0 * t).sin()) as i16
                })
                .collect();
            let mut p = vec![0x80, 111];
            p.extend_from_slice(&i.to_be_bytes());
            p.extend_from_slice(&(i as u32 * 960).to_be_bytes());
            p.extend_from_slice(&7u32.to_be_bytes());
            let mut buf = [0u8; 400];
            let n = enc.encode(&pcm, &mut buf).unwrap();
            p.extend_from_slice(&buf[..n]);
            p
        })
        .collect()
}

#[test]
fn opus_losses_are_concealed_and_garbage_is_counted() {
    let t0 = Instant::now();
    let mut call = opus_call(t0);
    let packets = opus_packets(100);
    let audio_ms = |call: &Call| call.media.as_ref().unwrap().audio_ms();
    // Each packet arrives when it is due (20 ms apart); the jitter buffer
    // releases it 60 ms later, the call's timer within the slack after that.
    let at = |seq: usize| t0 + Duration::from_millis(20 * seq as u64);
    let play = |call: &mut Call, p: &[u8], seq: usize| {
        call.handle_rtp(p, at(seq));
        call.handle_timeout(
            at(seq) + Duration::from_millis(60) + crate::media::session::PLAYOUT_SLACK,
        );
    };
    for (seq, p) in packets[..50].iter().enumerate() {
        play(&mut call, p, seq);
    }
    let before = audio_ms(&call);
    assert!((980..=1000).contains(&before), "{before} ms for 50 packets");
    // 3 lost: concealed (two by PLC, the last from packet 53's FEC or PLC).
    play(&mut call, &packets[53], 53);
    assert_eq!(audio_ms(&call), before + 80, "3 concealed + 1 decoded");
    // A packet the decoder refuses: counted, and concealed once the next arrives.
    let mut garbage = packets[54].clone();
    garbage.truncate(12);
    garbage.extend_from_slice(&[0x03, 0x00]);
    play(&mut call, &garbage, 54);
    assert_eq!(audio_ms(&call), before + 80);
    play(&mut call, &packets[55], 55);
    assert_eq!(audio_ms(&call), before + 120);
    // A long outage is bridged by at most 5 frames, not by its whole length.
    play(&mut call, &packets[90], 90);
    assert_eq!(audio_ms(&call), before + 120 + 100 + 20);
    let st = call.media.as_ref().unwrap().rtp_stats();
    assert_eq!(st.malformed, 1);
    assert_eq!(st.received, 54);
    assert!(outputs(&mut call).is_empty(), "no decision yet");
}

// ---- mid-dialog: retransmissions, re-INVITE, UPDATE, session timers, RFC 4488 ----

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sdp_offer(version: u32, media: &str) -> String {
    format!(
        "v=0\r\no=- 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{media}"
    )
}

fn sdp_req(call: &Call, method: &str, cseq: u32, extra: &str, sdp: &str) -> Request {
    let extra = format!("{extra}Content-Type: application/sdp\r\n");
    in_dialog(call, method, cseq, &extra, sdp)
}

fn hold_offer() -> String {
    sdp_offer(
        2,
        "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n",
    )
}

fn unhold_offer() -> String {
    sdp_offer(
        3,
        "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n",
    )
}

fn only_response(mut out: Vec<Message>) -> Response {
    assert_eq!(out.len(), 1, "{:?}", codes(&out));
    match out.remove(0) {
        Message::Response(r) => r,
        Message::Request(r) => panic!("response expected, got {}", r.method),
    }
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn invite_with(extra: &str) -> Request {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    request(&format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1;rport\r\n\
         From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\n\
         Call-ID: unit-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\n{extra}\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

/// A call answered and ACKed with `profile` and extra INVITE headers; the 200 is returned.
fn answered_with(profile: &Profile, extra: &str, t0: Instant) -> (Call, Response) {
    let s = Arc::new(CallSettings::from_profile(profile, 5060));
    let mut call = Call::new(
        s,
        invite_with(extra),
        src(),
        "127.0.0.1:20000".parse().unwrap(),
        t0,
    )
    .unwrap();
    let mut out = sent(&mut call);
    assert_eq!(codes(&out), ["100", "200"]);
    let Message::Response(ok) = out.remove(1) else {
        unreachable!()
    };
    call.handle_request(&ack(&call), peer(), t0 + ms(10));
    (call, ok)
}

fn pcmu_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&9u32.to_be_bytes());
    p.extend((0..160).map(|i| if i % 2 == 0 { 0x10 } else { 0x90 }));
    p
}

/// A packet that arrives just before the one ahead of it is due plays that
/// one out in the same wake-up: no timer of its own (`PLAYOUT_SLACK`).
#[test]
fn a_packet_arriving_within_the_slack_plays_out_the_one_due() {
    let t0 = Instant::now();
    let mut profile = Profile::default();
    profile.policy.decision_deadline_ms = 600_000;
    let (mut call, _) = answered_with(&profile, "", t0);
    let audio_ms = |call: &Call| call.media.as_ref().unwrap().audio_ms();
    call.handle_rtp(&pcmu_packet(1), t0 + ms(100));
    call.handle_rtp(&pcmu_packet(2), t0 + ms(120));
    call.handle_rtp(&pcmu_packet(3), t0 + ms(140));
    assert_eq!(audio_ms(&call), 0, "held for the playout delay");
    // Packet 1 is due at 160 ms; packet 4 comes 4 ms before.
    call.handle_rtp(&pcmu_packet(4), t0 + ms(156));
    assert_eq!(
        audio_ms(&call),
        20,
        "packet 1 played out with packet 4's arrival"
    );
    // Packet 2 is due at 180 ms; none arrives, so the timer plays it out,
    // the slack after.
    assert_eq!(protocol_timeout(&mut call), Some(t0 + ms(185)));
    call.handle_timeout(t0 + ms(185));
    assert_eq!(audio_ms(&call), 40);
}

#[test]
fn retransmitted_in_dialog_requests_get_the_same_response_until_timer_j() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    let opts = in_dialog(&call, "OPTIONS", 2, "", "");
    call.handle_request(&opts, peer(), t0 + ms(100));
    let first = sent(&mut call);
    call.handle_request(&opts, peer(), t0 + ms(600));
    let again = sent(&mut call);
    assert_eq!(codes(&again), ["200"]);
    let (Message::Response(a), Message::Response(b)) = (&first[0], &again[0]) else {
        unreachable!()
    };
    assert_eq!(a.to_bytes(), b.to_bytes(), "the very same response");
    // The BYE is handled once: one record, its retransmission answered again.
    let bye = in_dialog(&call, "BYE", 3, "", "");
    call.handle_request(&bye, peer(), t0 + ms(700));
    assert!(ended(&mut call).is_some());
    call.handle_request(&bye, peer(), t0 + ms(900));
    let out = outputs(&mut call);
    assert!(matches!(&out[..], [Output::Transmit(_)]), "{out:?}");
    // Timer J (64·T1) forgets the OPTIONS transaction at 100 ms + 32 s.
    let j = t0 + ms(100) + Duration::from_secs(32);
    assert!(call
        .mid
        .answered
        .iter()
        .any(|a| a.method == Method::Options));
    call.handle_timeout(j);
    assert!(!call
        .mid
        .answered
        .iter()
        .any(|a| a.method == Method::Options));
}

#[test]
fn retransmitted_notify_is_not_processed_twice() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = sent(&mut call).remove(0);
    call.handle_response(&response_to(&refer, 202), t0 + ms(3100));
    let notify = final_notify(&call, 2);
    call.handle_request(&notify, peer(), t0 + ms(3200));
    assert_eq!(codes(&sent(&mut call)), ["200", "BYE"]);
    call.handle_request(&notify, peer(), t0 + ms(3700));
    assert_eq!(codes(&sent(&mut call)), ["200"], "no second BYE");
}

#[test]
fn an_rfc_2543_peers_retransmission_without_branch_is_absorbed_too() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = sent(&mut call).remove(0);
    call.handle_response(&response_to(&refer, 202), t0 + ms(3100));
    let tag = call.dialog.local_tag.clone();
    let notify = |cseq: u32| {
        let mut r = in_dialog_tagged(
            &tag,
            "NOTIFY",
            cseq,
            "Event: refer\r\nSubscription-State: terminated\r\nContent-Type: message/sipfrag\r\n",
            "SIP/2.0 200 OK\r\n",
        );
        // An RFC 2543 Via: no branch at all (§17.2.3 matching by the rest).
        r.headers.set("Via", format!("SIP/2.0/UDP {CALLER}"));
        r
    };
    call.handle_request(&notify(2), peer(), t0 + ms(3200));
    assert_eq!(codes(&sent(&mut call)), ["200", "BYE"]);
    assert!(
        call.mid.answered.iter().any(|a| a.method == Method::Notify),
        "a server transaction holds the NOTIFY without a branch"
    );
    call.handle_request(&notify(2), peer(), t0 + ms(3700));
    assert_eq!(codes(&sent(&mut call)), ["200"], "absorbed: no second BYE");
    let key = |r: &Request| super::mid_dialog::transaction_key(r).unwrap();
    assert_ne!(
        key(&notify(2)),
        key(&notify(3)),
        "another CSeq is another transaction"
    );
}

#[test]
fn reinvite_hold_is_answered_recvonly_retransmitted_until_ack_and_stops_the_deadline() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    assert_eq!(
        protocol_timeout(&mut call),
        Some(t0 + Duration::from_secs(3))
    );
    let hold = sdp_req(&call, "INVITE", 2, "", &hold_offer());
    call.handle_request(&hold, peer(), t0 + ms(1000));
    let ok = only_response(sent(&mut call));
    assert_eq!(ok.code, 200);
    assert!(body(&ok).contains("a=recvonly"), "{}", body(&ok));
    assert!(
        body(&ok).contains("m=audio 20000 "),
        "same media port: {}",
        body(&ok)
    );
    assert!(
        body(&ok).contains(" 2 IN IP4"),
        "o= version bumped: {}",
        body(&ok)
    );
    // Timer G: the 200 again after T1, and for a retransmitted re-INVITE.
    assert_eq!(protocol_timeout(&mut call), Some(t0 + ms(1500)));
    call.handle_timeout(t0 + ms(1500));
    assert_eq!(only_response(sent(&mut call)).to_bytes(), ok.to_bytes());
    call.handle_request(&hold, peer(), t0 + ms(1600));
    assert_eq!(only_response(sent(&mut call)).to_bytes(), ok.to_bytes());
    call.handle_request(&in_dialog(&call, "ACK", 2, "", ""), peer(), t0 + ms(1700));
    // On hold: no deadline, no REFER, however long.
    assert_eq!(protocol_timeout(&mut call), None);
    call.handle_timeout(t0 + Duration::from_secs(4));
    assert!(sent(&mut call).is_empty());
    // Audio on hold (music) is not analysed.
    call.handle_rtp(&pcmu_packet(1), t0 + Duration::from_secs(4));
    assert_eq!(call.media.as_ref().unwrap().audio_ms(), 0);
    let unhold = sdp_req(&call, "INVITE", 3, "", &unhold_offer());
    call.handle_request(&unhold, peer(), t0 + Duration::from_secs(5));
    let ok = only_response(sent(&mut call));
    assert!(body(&ok).contains("a=sendrecv"), "{}", body(&ok));
    assert!(body(&ok).contains(" 3 IN IP4"), "{}", body(&ok));
    call.handle_request(&in_dialog(&call, "ACK", 3, "", ""), peer(), t0 + ms(5010));
    // 3 s of listening budget, 4 s of it spent on hold: the deadline moved to 7 s.
    assert_eq!(
        protocol_timeout(&mut call),
        Some(t0 + Duration::from_secs(7))
    );
    call.handle_timeout(t0 + Duration::from_secs(7));
    assert_eq!(
        codes(&sent(&mut call)),
        ["REFER"],
        "the transfer still happens"
    );
}

#[test]
fn hold_suspends_the_rtp_timeout_and_unhold_restarts_it() {
    let t0 = Instant::now();
    let mut profile = Profile::default();
    profile.policy.decision_deadline_ms = 600_000;
    profile.media.rtp_timeout_ms = 5_000;
    let (mut call, _) = answered_with(&profile, "", t0);
    call.handle_rtp(&pcmu_packet(1), t0 + ms(100));
    // The jitter buffer plays the packet out 60 ms later (the timer waits
    // the slack for a packet that would do it).
    assert_eq!(protocol_timeout(&mut call), Some(t0 + ms(165)));
    call.handle_timeout(t0 + ms(165));
    assert_eq!(protocol_timeout(&mut call), Some(t0 + ms(5100)));
    call.handle_request(
        &sdp_req(&call, "INVITE", 2, "", &hold_offer()),
        peer(),
        t0 + ms(200),
    );
    call.handle_request(&in_dialog(&call, "ACK", 2, "", ""), peer(), t0 + ms(210));
    sent(&mut call);
    assert_eq!(protocol_timeout(&mut call), None, "no RTP timeout on hold");
    call.handle_request(
        &sdp_req(&call, "INVITE", 3, "", &unhold_offer()),
        peer(),
        t0 + ms(60_000),
    );
    call.handle_request(&in_dialog(&call, "ACK", 3, "", ""), peer(), t0 + ms(60_010));
    sent(&mut call);
    assert_eq!(protocol_timeout(&mut call), Some(t0 + ms(65_000)));
}

#[test]
fn rfc2543_hold_and_codec_change_by_reinvite() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    let zero = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    call.handle_request(&sdp_req(&call, "INVITE", 2, "", zero), peer(), t0 + ms(100));
    let ok = only_response(sent(&mut call));
    assert!(body(&ok).contains("a=recvonly"), "{}", body(&ok));
    assert!(call.mid.on_hold());
    call.handle_request(&in_dialog(&call, "ACK", 2, "", ""), peer(), t0 + ms(110));
    // Back, on A-law only, from another address: the decoder switches.
    let alaw = "v=0\r\no=- 1 3 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 40002 RTP/AVP 8\r\n";
    call.handle_request(&sdp_req(&call, "INVITE", 3, "", alaw), peer(), t0 + ms(200));
    let ok = only_response(sent(&mut call));
    assert!(body(&ok).contains("a=rtpmap:8 PCMA/8000"), "{}", body(&ok));
    assert!(!call.mid.on_hold());
    assert_eq!(call.media.as_ref().unwrap().codec(), CodecName::Pcma);
    assert_eq!(
        call.mid.neg.as_ref().unwrap().remote_rtp,
        "127.0.0.2:40002".parse().unwrap()
    );
    call.handle_request(&in_dialog(&call, "ACK", 3, "", ""), peer(), t0 + ms(210));
    let mut p = pcmu_packet(2);
    p[1] = 8;
    call.handle_rtp(&p, t0 + ms(300));
    call.handle_timeout(t0 + ms(365));
    assert_eq!(call.media.as_ref().unwrap().audio_ms(), 20, "PCMA decoded");
    // An offer we cannot take keeps the session: 488.
    let g729 = sdp_offer(4, "m=audio 40000 RTP/AVP 18\r\n");
    call.handle_request(
        &sdp_req(&call, "INVITE", 4, "", &g729),
        peer(),
        t0 + ms(400),
    );
    assert_eq!(only_response(sent(&mut call)).code, 488);
    assert_eq!(call.media.as_ref().unwrap().codec(), CodecName::Pcma);
    call.handle_request(&in_dialog(&call, "ACK", 4, "", ""), peer(), t0 + ms(410));
    assert_eq!(
        protocol_timeout(&mut call),
        Some(t0 + ms(300) + Duration::from_secs(3))
    );
}

#[test]
fn reinvite_while_one_is_pending_gets_500_with_retry_after() {
    let t0 = Instant::now();
    // The initial 200 is not ACKed yet.
    let mut call = offered(t0);
    call.handle_request(
        &sdp_req(&call, "INVITE", 2, "", &hold_offer()),
        peer(),
        t0 + ms(50),
    );
    let r = only_response(sent(&mut call));
    assert_eq!(r.code, 500);
    let after: u32 = r.headers.get("Retry-After").unwrap().parse().unwrap();
    assert!(after <= 10);
    call.handle_request(&ack(&call), peer(), t0 + ms(60));
    // A re-INVITE whose 200 is not ACKed yet: the next one waits too.
    call.handle_request(
        &sdp_req(&call, "INVITE", 3, "", &hold_offer()),
        peer(),
        t0 + ms(100),
    );
    assert_eq!(only_response(sent(&mut call)).code, 200);
    call.handle_request(
        &sdp_req(&call, "INVITE", 4, "", &unhold_offer()),
        peer(),
        t0 + ms(150),
    );
    assert_eq!(only_response(sent(&mut call)).code, 500);
    assert!(call.mid.on_hold(), "the refused offer changed nothing");
}

#[test]
fn offerless_reinvite_gets_our_offer_and_the_answer_in_the_ack() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_request(&in_dialog(&call, "INVITE", 2, "", ""), peer(), t0 + ms(100));
    let ok = only_response(sent(&mut call));
    assert_eq!(ok.code, 200);
    let offer = crate::sdp::parse(&body(&ok)).unwrap();
    assert_eq!(offer.media[0].formats, [0, 101]);
    assert_eq!(offer.media[0].direction, crate::sdp::Direction::SendRecv);
    // Our offer is outstanding: an UPDATE or re-INVITE offer now is 491.
    call.handle_request(
        &sdp_req(&call, "UPDATE", 3, "", &hold_offer()),
        peer(),
        t0 + ms(150),
    );
    assert_eq!(only_response(sent(&mut call)).code, 491);
    let answer = sdp_offer(3, "m=audio 40000 RTP/AVP 0\r\na=sendonly\r\n");
    let ack = sdp_req(&call, "ACK", 2, "", &answer);
    call.handle_request(&ack, peer(), t0 + ms(200));
    assert!(sent(&mut call).is_empty());
    assert!(
        call.mid.on_hold(),
        "the answer in the ACK put the call on hold"
    );
}

#[test]
fn update_with_and_without_sdp() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    let upd = sdp_req(&call, "UPDATE", 2, "", &hold_offer());
    call.handle_request(&upd, peer(), t0 + ms(100));
    let ok = only_response(sent(&mut call));
    assert_eq!(ok.code, 200);
    assert!(body(&ok).contains("a=recvonly"), "{}", body(&ok));
    assert!(ok.headers.get("Contact").is_some());
    call.handle_request(&upd, peer(), t0 + ms(600));
    assert_eq!(only_response(sent(&mut call)).to_bytes(), ok.to_bytes());
    let refresh = in_dialog(&call, "UPDATE", 3, "", "");
    call.handle_request(&refresh, peer(), t0 + ms(700));
    let ok = only_response(sent(&mut call));
    assert_eq!((ok.code, ok.body.len()), (200, 0));
    assert!(call.mid.on_hold(), "a refresh leaves the session as it is");
}

#[test]
fn session_timer_is_answered_uac_refresher_and_expiry_sends_bye() {
    let t0 = Instant::now();
    let mut profile = Profile::default();
    profile.policy.decision_deadline_ms = 600_000;
    let (mut call, ok) = answered_with(&profile, "Supported: timer\r\nSession-Expires: 90\r\n", t0);
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));
    // 90 s minus min(32, 30): BYE at 60 s unless refreshed; an UPDATE at 50 s refreshes.
    assert_eq!(
        protocol_timeout(&mut call),
        Some(t0 + Duration::from_secs(60))
    );
    let upd = in_dialog(
        &call,
        "UPDATE",
        2,
        "Supported: timer\r\nSession-Expires: 120\r\n",
        "",
    );
    call.handle_request(&upd, peer(), t0 + Duration::from_secs(50));
    let r = only_response(sent(&mut call));
    assert_eq!(r.headers.get("Session-Expires"), Some("120;refresher=uac"));
    // 120 − 32 = 88 s after the refresh (Timer J of the UPDATE fires before).
    assert_eq!(
        call.timers.get(Timer::SessionExpiry),
        Some(t0 + Duration::from_secs(138))
    );
    // A refresh below Min-SE is refused and changes nothing.
    let small = in_dialog(&call, "INVITE", 3, "Session-Expires: 30\r\n", "");
    call.handle_request(&small, peer(), t0 + Duration::from_secs(60));
    let r = only_response(sent(&mut call));
    assert_eq!((r.code, r.headers.get("Min-SE")), (422, Some("90")));
    call.handle_request(
        &in_dialog(&call, "ACK", 3, "", ""),
        peer(),
        t0 + Duration::from_secs(60),
    );
    call.handle_timeout(t0 + Duration::from_secs(138));
    let bye = only_request(sent(&mut call));
    assert_eq!(bye.method, Method::Bye);
    call.handle_response(
        &response_to(&Message::Request(bye), 200),
        t0 + Duration::from_secs(139),
    );
    assert_eq!(ended(&mut call).unwrap().outcome, Outcome::SessionExpired);
}

#[test]
fn too_small_session_interval_on_the_invite_is_422() {
    let t0 = Instant::now();
    let s = settings();
    let inv = invite_with("Session-Expires: 60\r\nMin-SE: 60\r\n");
    let mut call = Call::new(s, inv, src(), "127.0.0.1:20000".parse().unwrap(), t0).unwrap();
    let r = only_response(sent(&mut call));
    assert_eq!((r.code, r.headers.get("Min-SE")), (422, Some("90")));
    // No session timer without Session-Expires, and none is armed.
    let (call, ok) = answered_with(&Profile::default(), "Supported: timer\r\n", t0);
    assert!(ok.headers.get("Session-Expires").is_none());
    assert!(call.timers.get(Timer::SessionExpiry).is_none());
}

#[test]
fn norefersub_peer_gets_refer_sub_false_and_the_2xx_ends_the_transfer() {
    let t0 = Instant::now();
    let (mut call, _) = answered_with(
        &Profile::default(),
        "Supported: replaces, norefersub\r\n",
        t0,
    );
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = only_request(sent(&mut call));
    assert_eq!(refer.headers.get("Refer-Sub"), Some("false"));
    assert!(refer
        .headers
        .get("Referred-By")
        .unwrap()
        .contains("sip:emonav@"));
    let mut ok = response_to(&Message::Request(refer), 200);
    ok.headers.push("Refer-Sub", "false");
    call.handle_response(&ok, t0 + ms(3100));
    let bye = only_request(sent(&mut call));
    assert_eq!(bye.method, Method::Bye);
    call.handle_response(&response_to(&Message::Request(bye), 200), t0 + ms(3200));
    assert_eq!(ended(&mut call).unwrap().outcome, Outcome::Transferred);
}

#[test]
fn refer_sub_not_echoed_or_not_supported_waits_for_the_notify() {
    let t0 = Instant::now();
    let (mut call, _) = answered_with(&Profile::default(), "Supported: norefersub\r\n", t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = only_request(sent(&mut call));
    call.handle_response(&response_to(&Message::Request(refer), 202), t0 + ms(3100));
    assert!(
        sent(&mut call).is_empty(),
        "a subscription exists: wait for the NOTIFY"
    );
    // A peer that did not advertise norefersub gets no Refer-Sub at all.
    let mut call = answered(t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = only_request(sent(&mut call));
    assert!(refer.headers.get("Refer-Sub").is_none());
    assert!(refer.headers.get("Referred-By").is_some());
}

#[test]
fn retransmitted_invite_repeats_the_last_response_once_per_copy() {
    let t0 = Instant::now();
    let mut profile = Profile::default();
    profile.sip.answer_delay_ms = 1000;
    let s = Arc::new(CallSettings::from_profile(&profile, 5060));
    let mut call = Call::new(s, invite(), src(), "127.0.0.1:20000".parse().unwrap(), t0).unwrap();
    assert_eq!(codes(&sent(&mut call)), ["100"]);
    call.handle_request(&invite(), peer(), t0 + ms(300));
    assert_eq!(
        codes(&sent(&mut call)),
        ["100"],
        "the 100 again, nothing else"
    );
    call.handle_timeout(t0 + ms(1000));
    assert_eq!(codes(&sent(&mut call)), ["200"]);
    call.handle_request(&invite(), peer(), t0 + ms(1100));
    assert_eq!(codes(&sent(&mut call)), ["200"]);
}

fn invite_with_media(attrs: &str) -> Request {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 40000 RTP/AVP 0\r\n{attrs}"
    );
    request(&format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1;rport\r\n\
         From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\n\
         Call-ID: unit-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

#[test]
fn receiver_reports_go_by_rtcp_mux_then_a_rtcp_then_rtp_port_plus_one() {
    let caller: SocketAddr = "127.0.0.1:40002".parse().unwrap();
    let rtp = |seq: u16| {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
        p.extend_from_slice(&0xCAFEu32.to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    };
    for (attrs, mux, dest) in [
        ("a=rtcp-mux\r\n", true, "127.0.0.1:40002"),
        ("a=rtcp:41000\r\n", false, "127.0.0.1:41000"),
        ("", false, "127.0.0.1:40003"),
    ] {
        let t0 = Instant::now();
        let mut call = Call::new(
            settings(),
            invite_with_media(attrs),
            src(),
            "127.0.0.1:20000".parse().unwrap(),
            t0,
        )
        .unwrap();
        let out = sent(&mut call);
        let Message::Response(ok) = &out[1] else {
            panic!("200 expected")
        };
        assert_eq!(body(ok).contains("a=rtcp-mux\r\n"), mux, "{attrs}");
        call.handle_request(&ack(&call), peer(), t0 + ms(10));
        for i in 0..300u16 {
            let at = t0 + ms(20 * i as u64);
            call.handle_rtp_from(&rtp(i), Some(caller), at);
            let rtcp = media_sent(&mut call)
                .into_iter()
                .find(|(_, _, p)| (200..=204).contains(&p[1]));
            if let Some((socket, to, report)) = rtcp {
                let via_rtp = socket == Socket::Rtp;
                assert_eq!((to, via_rtp), (dest.parse().unwrap(), mux), "{attrs}");
                // A sender report (our keepalive flows): the block after 28 bytes.
                assert_eq!(report[1], 200, "SR while we send");
                assert_eq!(report[28..32], 0xCAFEu32.to_be_bytes());
                assert!(at >= t0 + ms(1250) && at <= t0 + ms(3760), "{attrs}");
                break;
            }
            assert!(i < 299, "no report for {attrs:?}");
        }
        // The caller's RTCP from its media address: ours goes back there.
        let from: SocketAddr = "127.0.0.1:45001".parse().unwrap();
        call.handle_rtcp(&[0x80, 201, 0, 1, 0, 0, 0xCA, 0xFE], Some(from), t0);
        assert_eq!(
            call.media.as_ref().unwrap().rtcp_dest(),
            Some(if mux { caller } else { from })
        );
        // A stranger's is counted, not followed.
        let stranger: SocketAddr = "192.0.2.7:45001".parse().unwrap();
        call.handle_rtcp(&[0x80, 201, 0, 1, 0, 0, 0xCA, 0xFE], Some(stranger), t0);
        assert_ne!(call.media.as_ref().unwrap().rtcp_dest(), Some(stranger));
        assert_eq!(call.media.as_ref().unwrap().rtp_stats().rtcp, 2);
    }
}

fn refresher_call(extra: &str, t0: Instant) -> (Call, Response) {
    let mut profile = Profile::default();
    profile.policy.decision_deadline_ms = 600_000;
    answered_with(&profile, extra, t0)
}

fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

#[test]
fn we_refresh_with_update_when_the_caller_cannot_and_481_ends_the_call() {
    let t0 = Instant::now();
    // A proxy added Session-Expires; the caller has no timer support but allows UPDATE.
    let (mut call, ok) = refresher_call(
        "Allow: INVITE, ACK, BYE, UPDATE\r\nSession-Expires: 90\r\n",
        t0,
    );
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uas"));
    assert!(ok.headers.get("Require").is_none());
    assert_eq!(
        protocol_timeout(&mut call),
        Some(t0 + secs(45.0)),
        "half the interval"
    );
    call.handle_timeout(t0 + secs(44.9));
    assert!(sent(&mut call).is_empty());
    call.handle_timeout(t0 + secs(45.0));
    let upd = only_request(sent(&mut call));
    assert_eq!(upd.method, Method::Update);
    assert_eq!(upd.headers.get("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(upd.headers.get("Supported"), Some("timer"));
    assert!(upd.body.is_empty(), "no SDP");
    assert_eq!(upd.cseq().unwrap().seq, call.dialog.local_cseq);
    // The 2xx refreshes; the peer may lengthen the interval.
    let mut r = response_to(&Message::Request(upd), 200);
    r.headers.push("Session-Expires", "120;refresher=uac");
    call.handle_response(&r, t0 + secs(45.5));
    assert!(sent(&mut call).is_empty());
    assert_eq!(
        call.timers.get(Timer::SessionRefresh),
        Some(t0 + secs(105.5))
    );
    assert!(
        call.timers.get(Timer::SessionExpiry).is_none(),
        "we refresh, so we do not expire"
    );
    // The next refresh gets 481: the dialog is gone, BYE.
    call.handle_timeout(t0 + secs(105.5));
    let upd = only_request(sent(&mut call));
    assert_eq!(upd.method, Method::Update);
    call.handle_response(&response_to(&Message::Request(upd), 481), t0 + secs(105.6));
    let bye = only_request(sent(&mut call));
    assert_eq!(bye.method, Method::Bye);
    call.handle_response(&response_to(&Message::Request(bye), 200), t0 + secs(105.7));
    assert_eq!(ended(&mut call).unwrap().outcome, Outcome::SessionExpired);
}

#[test]
fn unanswered_refresh_times_out_and_ends_the_call_with_bye() {
    let t0 = Instant::now();
    let (mut call, ok) = refresher_call(
        "Allow: INVITE, ACK, BYE, UPDATE\r\nSupported: timer\r\nSession-Expires: 100;refresher=uas\r\n",
        t0,
    );
    assert_eq!(ok.headers.get("Session-Expires"), Some("100;refresher=uas"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));
    let mut methods = vec![];
    let mut t = t0 + secs(50.0);
    while t < t0 + secs(50.0 + 33.0) {
        call.handle_timeout(t);
        for m in sent(&mut call) {
            if let Message::Request(r) = m {
                methods.push(r.method.to_string());
            }
        }
        t += ms(250);
    }
    let updates = methods.iter().filter(|m| *m == "UPDATE").count();
    assert!(updates >= 5, "retransmitted by Timer E: {methods:?}");
    assert_eq!(
        methods.last().map(String::as_str),
        Some("BYE"),
        "{methods:?}"
    );
}

#[test]
fn no_refresh_without_update_in_allow_and_a_peer_taking_the_role_is_waited_for() {
    let t0 = Instant::now();
    let (call, ok) = refresher_call("Allow: INVITE, ACK, BYE\r\nSession-Expires: 90\r\n", t0);
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uas"));
    // A re-INVITE refresh needs an INVITE client transaction: none is sent.
    assert_eq!(
        (
            call.timers.get(Timer::SessionRefresh),
            call.timers.get(Timer::SessionExpiry)
        ),
        (None, None)
    );
    let (mut call, _) = refresher_call("Allow: UPDATE\r\nSession-Expires: 90\r\n", t0);
    call.handle_timeout(t0 + secs(45.0));
    let upd = only_request(sent(&mut call));
    // The peer answers refresher=uas: it refreshes from now on, we watch the expiry.
    let mut r = response_to(&Message::Request(upd), 200);
    r.headers.push("Session-Expires", "90;refresher=uas");
    call.handle_response(&r, t0 + secs(46.0));
    assert_eq!(call.timers.get(Timer::SessionRefresh), None);
    assert_eq!(
        call.timers.get(Timer::SessionExpiry),
        Some(t0 + secs(46.0 + 60.0))
    );
    // Another failure leaves the session to its expiry.
    let (mut call, _) = refresher_call("Allow: UPDATE\r\nSession-Expires: 90\r\n", t0);
    call.handle_timeout(t0 + secs(45.0));
    let upd = only_request(sent(&mut call));
    call.handle_response(&response_to(&Message::Request(upd), 500), t0 + secs(46.0));
    assert!(sent(&mut call).is_empty());
    assert_eq!(call.timers.get(Timer::SessionExpiry), Some(t0 + secs(60.0)));
}

#[test]
fn a_refer_displacing_the_refresh_update_re_arms_it() {
    let t0 = Instant::now();
    let mut profile = Profile::default();
    profile.policy.decision_deadline_ms = 45_500;
    let (mut call, _) = answered_with(&profile, "Allow: UPDATE\r\nSession-Expires: 90\r\n", t0);
    call.handle_timeout(t0 + secs(45.0));
    assert_eq!(only_request(sent(&mut call)).method, Method::Update);
    // The decision's REFER takes the client transaction from the UPDATE
    // (retransmitted by Timer E just before).
    call.handle_timeout(t0 + secs(45.5));
    let mut out = sent(&mut call);
    assert_eq!(codes(&out), ["UPDATE", "REFER"]);
    let refer = only_request(out.split_off(1));
    assert_eq!(refer.method, Method::Refer);
    assert_eq!(
        call.timers.get(Timer::SessionRefresh),
        Some(t0 + secs(47.5))
    );
    // Still busy with the REFER at 47.5 s: later again; after its 202, the refresh goes.
    call.handle_timeout(t0 + secs(47.5));
    assert_eq!(
        codes(&sent(&mut call)),
        ["REFER"],
        "only Timer E's retransmission"
    );
    assert_eq!(
        call.timers.get(Timer::SessionRefresh),
        Some(t0 + secs(49.5))
    );
    call.handle_response(&response_to(&Message::Request(refer), 202), t0 + secs(48.0));
    call.handle_timeout(t0 + secs(49.5));
    assert_eq!(only_request(sent(&mut call)).method, Method::Update);
}

/// Whatever a peer sends inside the dialog (or as a stray response), in
/// any order and at any time, the call never panics: a panic would kill the
/// call's task and strand the caller. Mutated copies of every in-dialog
/// request, responses to our requests and arbitrary media, over many seeded
/// calls.
#[test]
fn arbitrary_in_dialog_traffic_never_panics() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let media =
        "m=audio 40002 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";
    for round in 0..150 {
        let t0 = Instant::now();
        let mut call = answered(t0);
        let mut now = t0;
        let mut ours: Vec<Message> = Vec::new();
        for step in 0..60u32 {
            now += ms(rng.u64(0..800));
            let cseq = rng.u32(1..6);
            let text = match rng.u8(..9) {
                0 => sdp_req(&call, "INVITE", cseq, "", &sdp_offer(step + 2, media)),
                1 => sdp_req(&call, "UPDATE", cseq, "", &sdp_offer(step + 2, media)),
                2 => in_dialog(&call, "BYE", cseq, "", ""),
                3 => in_dialog(
                    &call,
                    "NOTIFY",
                    cseq,
                    "Event: refer;id=1\r\nSubscription-State: active\r\nContent-Type: message/sipfrag\r\n",
                    "SIP/2.0 180 Ringing\r\n",
                ),
                4 => in_dialog(&call, "ACK", cseq, "", ""),
                5 => in_dialog(&call, "CANCEL", 1, "", ""),
                6 => in_dialog(&call, "INFO", cseq, "", ""),
                7 => in_dialog(&call, "OPTIONS", cseq, "Session-Expires: 1\r\n", ""),
                _ => in_dialog(&call, "REFER", cseq, "Refer-To: <sip:x@127.0.0.1>\r\n", ""),
            }
            .to_bytes();
            let mut b = text;
            match rng.u8(..4) {
                0 => {
                    for _ in 0..rng.usize(1..6) {
                        let j = rng.usize(..b.len());
                        b[j] = *rng.choice(b"0123456789:;,<>= \r\nabcZ").unwrap();
                    }
                }
                1 => {
                    // Drop a header line.
                    let s = String::from_utf8_lossy(&b).into_owned();
                    let mut lines: Vec<&str> = s.split("\r\n").collect();
                    if lines.len() > 3 {
                        lines.remove(rng.usize(1..lines.len() - 2));
                    }
                    b = lines.join("\r\n").into_bytes();
                }
                _ => {}
            }
            if let Ok(Message::Request(req)) = parse_datagram(&b) {
                call.handle_request(&req, peer(), now);
            }
            // Answer one of our own requests with any code.
            if let Some(Message::Request(r)) = ours.get(rng.usize(..ours.len().max(1))) {
                let code = *rng
                    .choice(&[
                        100u16, 180, 200, 202, 401, 407, 408, 481, 487, 491, 500, 603,
                    ])
                    .unwrap();
                let mut resp = r.make_response(code, "X");
                if code == 401 || code == 407 {
                    let h = if code == 401 {
                        "WWW-Authenticate"
                    } else {
                        "Proxy-Authenticate"
                    };
                    resp.headers
                        .push(h, "Digest realm=\"127.0.0.1\", nonce=\"n\", qop=\"auth\"");
                }
                call.handle_response(&resp, now);
            }
            // Media from anywhere: RTP with any sequence, timestamp, SSRC and
            // payload type, RTCP, and noise.
            for _ in 0..rng.usize(..4) {
                let mut p = vec![0x80, *rng.choice(&[0u8, 8, 101, 13, 96, 200]).unwrap()];
                p.extend_from_slice(&rng.u16(..).to_be_bytes());
                p.extend_from_slice(&rng.u32(..).to_be_bytes());
                p.extend_from_slice(&rng.u32(..4).to_be_bytes());
                p.extend((0..rng.usize(..200)).map(|_| rng.u8(..)));
                if rng.u8(..8) == 0 {
                    p = (0..rng.usize(..40)).map(|_| rng.u8(..)).collect();
                }
                let from: SocketAddr = format!("127.0.0.1:{}", 40000 + rng.u16(..4))
                    .parse()
                    .unwrap();
                call.handle_rtp_from(&p, Some(from), now);
            }
            call.handle_timeout(now);
            for o in outputs(&mut call) {
                if let Output::Transmit(t) = o {
                    if let Ok(m @ Message::Request(_)) = parse_datagram(&t.payload) {
                        ours.push(m);
                    }
                }
            }
            if call.is_finished() {
                break;
            }
        }
        let _ = round;
    }
}

#[test]
fn one_clock_and_one_output_pace_our_silence_stream() {
    let t0 = Instant::now();
    let mut call = answered(t0);
    // The first silence packet is due with the ACK (t0 + 10 ms), none
    // before; the next in the slot 20 ms later, its timer the slack after
    // (a caller's packet arriving within the slack sends it), before any
    // protocol timer.
    assert_eq!(call.poll_timeout(), Some(t0 + ms(10)));
    assert_eq!(media_sent(&mut call).len(), 1, "the first, at the ACK");
    assert_eq!(call.poll_timeout(), Some(t0 + ms(40)));
    call.handle_timeout(t0 + ms(40));
    let media = media_sent(&mut call);
    let dest: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    assert_eq!(media.len(), 1, "one packet per 20 ms");
    assert_eq!(
        (media[0].0, media[0].1, media[0].2.len()),
        (Socket::Rtp, dest, 172)
    );
    assert_eq!(call.poll_timeout(), Some(t0 + ms(60)));
    assert_eq!(
        protocol_timeout(&mut call),
        Some(t0 + Duration::from_secs(3))
    );
    // The caller's packet 15 ms later sends the one of the 50 ms slot, 5 ms
    // early, and no more: the next slot is 70 ms, its timer at 80.
    call.handle_rtp(&pcmu_packet(1), t0 + ms(45));
    assert_eq!(
        media_sent(&mut call).len(),
        1,
        "sent with the caller's packet"
    );
    call.arm_timers();
    assert_eq!(call.timers.get(Timer::Media), Some(t0 + ms(80)));
}

fn b2bua_settings() -> Arc<CallSettings> {
    let p = Profile::from_toml(
        "[transfer]\ntransfer_mode = \"b2bua\"\nfailure_tone_ms = 0\n",
        "p",
    )
    .unwrap();
    Arc::new(CallSettings::from_profile(&p, 5060))
}

/// A `b2bua` call decided at the deadline (no audio: the default queue):
/// the call and our INVITE to the queue.
fn bridging(t0: Instant) -> (Call, Request) {
    bridging_with(b2bua_settings(), t0)
}

fn bridging_with(s: Arc<CallSettings>, t0: Instant) -> (Call, Request) {
    let mut call = offered_with(s, t0);
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call.handle_timeout(t0 + Duration::from_secs(3));
    let out = outputs(&mut call);
    let alias = out.iter().find_map(|o| match o {
        Output::Alias(a) => Some(a.clone()),
        _ => None,
    });
    let msgs: Vec<Message> = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit(t) => Some(parse_datagram(&t.payload).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(codes(&msgs), ["INVITE"], "no REFER in b2bua mode");
    let Message::Request(inv) = msgs.into_iter().next().unwrap() else {
        unreachable!()
    };
    assert_eq!(inv.uri.to_string(), "sip:default@127.0.0.1:5070");
    assert_eq!(
        alias.as_deref(),
        inv.call_id(),
        "its Call-ID is routed here"
    );
    assert_ne!(inv.call_id(), Some("unit-1"));
    assert!(inv.body.is_empty(), "RFC 3725 flow III: no offer");
    assert!(inv.headers.get("X-Emonav-Reason").is_some());
    (call, inv)
}

fn queue_response(inv: &Request, code: u16, extra: &str, body: &str) -> Response {
    let mut r = inv.make_response(code, "X");
    if code > 100 {
        let to = format!("{};tag=agent1", inv.headers.get("To").unwrap());
        r.headers.set("To", to);
    }
    for line in extra.split("\r\n").filter(|l| !l.is_empty()) {
        let (n, v) = line.split_once(": ").unwrap();
        r.headers.push(n, v);
    }
    r.body = body.as_bytes().to_vec();
    r
}

#[test]
fn b2bua_bridges_flow_iii_and_relays_the_queues_bye() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging(t0);
    let t = t0 + Duration::from_millis(3100);
    call.handle_response(&queue_response(&inv, 180, "", ""), t);
    assert!(sent(&mut call).is_empty());
    let queue_sdp = "v=0\r\no=agent 5 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";
    let ok = queue_response(
        &inv,
        200,
        "Contact: <sip:agent@192.0.2.7:5062>\r\nContent-Type: application/sdp",
        queue_sdp,
    );
    call.handle_response(&ok, t);
    let out = sent(&mut call);
    assert_eq!(
        codes(&out),
        ["INVITE"],
        "re-INVITE to the caller, queue not ACKed yet"
    );
    let Message::Request(reinvite) = &out[0] else {
        unreachable!()
    };
    assert_eq!(reinvite.call_id(), Some("unit-1"));
    let body = String::from_utf8_lossy(&reinvite.body);
    assert!(
        body.contains("o=emonav ")
            && body.contains("c=IN IP4 192.0.2.7\r\n")
            && body.contains("m=audio 7000 "),
        "{body}"
    );
    // The caller answers: ACK to it, and the queue's ACK carries the answer.
    let answer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let mut caller_ok = reinvite.make_response(200, "OK");
    caller_ok.body = answer.as_bytes().to_vec();
    call.handle_response(&caller_ok, t + Duration::from_millis(20));
    let out = outputs(&mut call);
    let acks: Vec<(SocketAddr, Request)> = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit(t) => match parse_datagram(&t.payload).unwrap() {
                Message::Request(r) => Some((t.dest, r)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert_eq!(acks[0].1.call_id(), Some("unit-1"));
    assert_eq!(acks[1].1.call_id(), inv.call_id());
    assert_eq!(
        acks[1].0,
        "192.0.2.7:5062".parse().unwrap(),
        "to the queue's Contact"
    );
    assert_eq!(acks[1].1.body, answer.as_bytes());
    assert_eq!(call.phase, Phase::Bridged);
    assert!(
        !call.wants_media(),
        "our keepalive stops: media flows caller <-> queue"
    );
    // The queue's 2xx again (our ACK lost): the same ACK again.
    call.handle_response(&ok, t + Duration::from_millis(600));
    assert_eq!(codes(&sent(&mut call)), ["ACK"]);
    // The queue hangs up: 200 to it, BYE to the caller.
    let bye = request(&format!(
        "BYE sip:emonav@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKqbye\r\n\
         From: {};tag=agent1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        inv.headers.get("To").unwrap(),
        inv.headers.get("From").unwrap(),
        inv.call_id().unwrap()
    ));
    let qpeer = Peer {
        addr: "192.0.2.7:5062".parse().unwrap(),
        transport: Transport::Udp,
    };
    call.handle_request(&bye, qpeer, t + Duration::from_secs(5));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200", "BYE"]);
    let Message::Request(our_bye) = &out[1] else {
        unreachable!()
    };
    assert_eq!(our_bye.call_id(), Some("unit-1"));
    call.handle_response(&response_to(&out[1], 200), t + Duration::from_secs(5));
    let rec = ended(&mut call).expect("record");
    assert_eq!(rec.outcome, Outcome::Bridged);
    assert_eq!(rec.bridge_attempts[0].response, Some(200));
    assert_eq!(rec.bridge_attempts[0].caller_reinvite, Some(200));
}

#[test]
fn b2bua_busy_default_queue_ends_with_a_bye_naming_the_reason() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging(t0);
    let t = t0 + Duration::from_millis(3100);
    call.handle_response(&queue_response(&inv, 486, "", ""), t);
    let out = sent(&mut call);
    assert_eq!(
        codes(&out),
        ["ACK", "BYE"],
        "ACK of the 486, then our BYE to the caller"
    );
    let (Message::Request(ack), Message::Request(bye)) = (&out[0], &out[1]) else {
        unreachable!()
    };
    assert_eq!(
        ack.top_via().unwrap().branch(),
        inv.top_via().unwrap().branch()
    );
    let reason = bye.headers.get("Reason").unwrap();
    assert!(reason.starts_with("SIP ;cause=486"), "{reason}");
    call.handle_response(&response_to(&out[1], 200), t);
    let rec = ended(&mut call).unwrap();
    assert_eq!(rec.outcome, Outcome::Failed);
    assert!(rec.failure_cause.unwrap().contains("486"));
}

#[test]
fn b2bua_queue_ringing_too_long_is_cancelled() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging(t0);
    call.handle_response(
        &queue_response(&inv, 180, "", ""),
        t0 + Duration::from_millis(3100),
    );
    let _ = sent(&mut call);
    let at = t0 + Duration::from_secs(3) + call.s.queue_answer_timeout;
    assert_eq!(protocol_timeout(&mut call), Some(at));
    call.handle_timeout(at);
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["CANCEL", "BYE"]);
    let Message::Request(bye) = &out[1] else {
        unreachable!()
    };
    assert!(bye.headers.get("Reason").unwrap().contains("cause=408"));
}

#[test]
fn refer_then_b2bua_skips_refer_when_the_callers_allow_lacks_it() {
    let p = Profile::from_toml("[transfer]\ntransfer_mode = \"refer_then_b2bua\"\n", "p").unwrap();
    let s = Arc::new(CallSettings::from_profile(&p, 5060));
    let t0 = Instant::now();
    let text = String::from_utf8(invite().to_bytes())
        .unwrap()
        .replace("Contact:", "Allow: INVITE, ACK, BYE, CANCEL\r\nContact:");
    let mut call = Call::new(
        s,
        request(&text),
        src(),
        "127.0.0.1:20000".parse().unwrap(),
        t0,
    )
    .unwrap();
    let _ = sent(&mut call);
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(codes(&sent(&mut call)), ["INVITE"]);
}

#[test]
fn decision_only_hangs_up_with_the_decision_in_the_bye() {
    let p = Profile::from_toml("[transfer]\ntransfer_mode = \"decision_only\"\n", "p").unwrap();
    let s = Arc::new(CallSettings::from_profile(&p, 5060));
    let t0 = Instant::now();
    let mut call = offered_with(s, t0);
    call.handle_request(&ack(&call), peer(), t0 + Duration::from_millis(10));
    call.handle_timeout(t0 + Duration::from_secs(3));
    let mut notes = vec![];
    let mut msgs = vec![];
    while let Some(o) = call.poll_output() {
        match o {
            Output::Decision(n) => notes.push(n),
            Output::Transmit(t) if matches!(t.socket, Socket::Sip { .. }) => {
                msgs.push(parse_datagram(&t.payload).unwrap())
            }
            _ => {}
        }
    }
    assert_eq!(codes(&msgs), ["BYE"]);
    let Message::Request(bye) = &msgs[0] else {
        unreachable!()
    };
    assert_eq!(
        bye.headers.get("X-Emonav-Queue"),
        Some("sip:default@127.0.0.1:5070")
    );
    assert!(bye.headers.get("Reason").unwrap().contains("cause=200"));
    assert!(
        matches!(&notes[..], [DecisionNote::Decided(k, d)] if k == &["unit-1".to_string()] && d.queue == "sip:default@127.0.0.1:5070")
    );
    call.handle_response(&response_to(&msgs[0], 200), t0 + Duration::from_secs(3));
    assert_eq!(ended(&mut call).unwrap().outcome, Outcome::Decided);
}

#[test]
fn b2bua_answers_the_queues_challenge_once() {
    let p = Profile::from_toml(
        "[transfer]\ntransfer_mode = \"b2bua\"\nfailure_tone_ms = 0\n",
        "p",
    )
    .unwrap();
    let mut s = CallSettings::from_profile(&p, 5060);
    s.credentials = with_credentials(Some("pbx")).credentials.clone();
    let t0 = Instant::now();
    let (mut call, inv) = bridging_with(Arc::new(s), t0);
    let t = t0 + Duration::from_millis(3100);
    call.handle_response(&challenge(&Message::Request(inv.clone()), 407), t);
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["ACK", "INVITE"]);
    let Message::Request(again) = &out[1] else {
        unreachable!()
    };
    assert_eq!(again.call_id(), inv.call_id());
    assert_eq!(again.headers.get("CSeq"), Some("2 INVITE"));
    assert_ne!(
        again.top_via().unwrap().branch(),
        inv.top_via().unwrap().branch()
    );
    let auth = again.headers.get("Proxy-Authorization").unwrap();
    assert!(
        auth.contains("username=\"emonav\"") && auth.contains("uri=\"sip:default@127.0.0.1:5070\""),
        "{auth}"
    );
    // Refused again: the credentials are wrong; no third try, the caller gets the reason.
    call.handle_response(&challenge(&out[1], 407), t);
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["ACK", "BYE"]);
    let Message::Request(bye) = &out[1] else {
        unreachable!()
    };
    assert!(bye.headers.get("Reason").unwrap().contains("cause=407"));
}

#[test]
fn b2bua_caller_refusing_the_reinvite_ends_both_legs_with_the_reason() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging(t0);
    let t = t0 + Duration::from_millis(3100);
    let sdp = "v=0\r\no=agent 5 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 7000 RTP/AVP 18\r\n";
    call.handle_response(
        &queue_response(&inv, 200, "Contact: <sip:agent@192.0.2.7:5062>", sdp),
        t,
    );
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["INVITE"]);
    call.handle_response(&response_to(&out[0], 488), t);
    let out = sent(&mut call);
    // ACK of the 488; the queue's 2xx ACKed, then BYE; BYE to the caller with the reason.
    assert_eq!(codes(&out), ["ACK", "ACK", "BYE", "BYE"]);
    let calls: Vec<_> = out
        .iter()
        .map(|m| match m {
            Message::Request(r) => r.call_id().unwrap().to_string(),
            Message::Response(_) => unreachable!(),
        })
        .collect();
    assert_eq!(calls[0], "unit-1");
    assert_eq!(calls[1], inv.call_id().unwrap());
    assert_eq!(calls[2], inv.call_id().unwrap());
    assert_eq!(calls[3], "unit-1");
    let Message::Request(bye) = &out[3] else {
        unreachable!()
    };
    assert!(bye.headers.get("Reason").unwrap().contains("cause=488"));
    call.handle_response(&response_to(&out[3], 200), t);
    let rec = ended(&mut call).unwrap();
    assert_eq!(rec.outcome, Outcome::Failed);
    assert_eq!(rec.bridge_attempts[0].caller_reinvite, Some(488));
}

#[test]
fn reinvite_update_and_options_crossing_our_bye_get_481() {
    // Asterisk with direct_media = yes re-INVITEs to take the media back
    // when the caller leaves the bridge; that re-INVITE crosses our BYE.
    let t0 = Instant::now();
    let mut call = answered(t0);
    call.handle_timeout(t0 + Duration::from_secs(3));
    let refer = sent(&mut call).remove(0);
    call.handle_response(&response_to(&refer, 202), t0 + ms(3100));
    let notify = in_dialog(
        &call,
        "NOTIFY",
        2,
        "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n\
         Content-Type: message/sipfrag;version=2.0\r\n",
        "SIP/2.0 200 OK\r\n",
    );
    call.handle_request(&notify, peer(), t0 + ms(3200));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200", "BYE"]);
    let bye = out[1].clone();
    let reinvite = sdp_req(&call, "INVITE", 3, "", &unhold_offer());
    call.handle_request(&reinvite, peer(), t0 + ms(3210));
    let resp = only_response(sent(&mut call));
    assert_eq!((resp.code, resp.cseq().unwrap().seq), (481, 3));
    // A non-2xx to an INVITE is retransmitted until its ACK (RFC 3261 §17.2.1).
    // (Our BYE is retransmitted meanwhile: Timer E.)
    let mut again = vec![];
    let mut t = t0 + ms(3210);
    while !again.contains(&"481".to_string()) {
        t = protocol_timeout(&mut call).unwrap();
        assert!(t < t0 + ms(4000), "no 481 retransmission: {again:?}");
        call.handle_timeout(t);
        again.extend(codes(&sent(&mut call)));
    }
    call.handle_request(&in_dialog(&call, "ACK", 3, "", ""), peer(), t + ms(1));
    assert!(sent(&mut call).is_empty());
    for (method, cseq) in [("UPDATE", 4), ("OPTIONS", 5)] {
        let req = sdp_req(&call, method, cseq, "", &unhold_offer());
        call.handle_request(&req, peer(), t + ms(2));
        assert_eq!(only_response(sent(&mut call)).code, 481, "{method}");
    }
    // Our BYE still completes the call as transferred, and once it is over
    // (lingering) a late re-INVITE is still 481.
    call.handle_response(&response_to(&bye, 200), t + ms(10));
    assert_eq!(ended(&mut call).unwrap().outcome, Outcome::Transferred);
    let late = sdp_req(&call, "INVITE", 6, "", &unhold_offer());
    call.handle_request(&late, peer(), t + ms(20));
    assert_eq!(only_response(sent(&mut call)).code, 481);
}

#[test]
fn reinvite_while_live_is_still_answered_and_a_refused_offer_is_488() {
    // The 481 is only for a session that is over: before the BYE an
    // offer we cannot take keeps its 488.
    let t0 = Instant::now();
    let mut call = answered(t0);
    let g729 = sdp_offer(2, "m=audio 40000 RTP/AVP 18\r\n");
    call.handle_request(
        &sdp_req(&call, "INVITE", 2, "", &g729),
        peer(),
        t0 + ms(100),
    );
    assert_eq!(only_response(sent(&mut call)).code, 488);
    call.handle_request(&in_dialog(&call, "ACK", 2, "", ""), peer(), t0 + ms(110));
    let opts = in_dialog(&call, "OPTIONS", 3, "", "");
    call.handle_request(&opts, peer(), t0 + ms(120));
    assert_eq!(only_response(sent(&mut call)).code, 200);
}

/// An INVITE whose SDP puts the caller's media at `media` (from CALLER).
fn invite_media_at(media: SocketAddr) -> Request {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\n",
        ip = media.ip(),
        port = media.port()
    );
    request(&format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinv1;rport\r\n\
         From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\n\
         Call-ID: unit-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

/// A call of `profile` offering media at `media`, answered at t0, its 100
/// and 200 taken; every media packet until `until` (20 ms steps) dropped
/// into the returned list.
fn media_call(profile: &str, media: SocketAddr, t0: Instant) -> Call {
    let p = Profile::from_toml(profile, "p").unwrap();
    let s = Arc::new(CallSettings::from_profile(&p, 5060));
    let mut call = Call::new(
        s,
        invite_media_at(media),
        src(),
        "127.0.0.1:20000".parse().unwrap(),
        t0,
    )
    .unwrap();
    assert_eq!(codes(&sent(&mut call)), ["100", "200"]);
    call
}

/// Step the call's clock in 20 ms steps from `from` to `to`, collecting
/// every media packet's (socket, destination).
fn media_between(call: &mut Call, from: Instant, to: Instant) -> Vec<(Socket, SocketAddr)> {
    let mut out = vec![];
    let mut t = from;
    while t <= to {
        call.handle_timeout(t);
        out.extend(media_sent(call).into_iter().map(|(s, d, _)| (s, d)));
        t += ms(20);
    }
    out
}

#[test]
fn no_media_before_the_ack_and_none_at_all_when_none_comes() {
    let t0 = Instant::now();
    let sdp_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut call = media_call("", sdp_addr, t0);
    // A spoofed INVITE's 200 goes to the spoofed source, which never ACKs:
    // the 200 is retransmitted but no RTP or RTCP goes to the SDP's address.
    assert_eq!(media_between(&mut call, t0, t0 + ms(1000)), []);
    call.handle_request(&ack(&call), peer(), t0 + ms(1010));
    let after = media_between(&mut call, t0 + ms(1010), t0 + ms(1090));
    assert_eq!(after.len(), 5, "one RTP packet per 20 ms from the ACK on");
    assert!(after
        .iter()
        .all(|&(s, d)| s == Socket::Rtp && d == sdp_addr));

    // With no ACK at all: nothing until Timer H ends the call (64*T1).
    let mut spoofed = media_call("", sdp_addr, t0);
    let sent = media_between(&mut spoofed, t0, t0 + Duration::from_secs(33));
    assert_eq!(sent, [], "no media toward a never-confirmed dialog");
    assert_eq!(ended(&mut spoofed).map(|r| r.outcome), None);
}

#[test]
fn symmetric_rtp_sends_only_to_where_the_callers_rtp_comes_from() {
    let t0 = Instant::now();
    let sdp_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let real: SocketAddr = "127.0.0.1:41234".parse().unwrap();
    let mut call = media_call("[media]\nsymmetric_rtp = true\n", sdp_addr, t0);
    call.handle_request(&ack(&call), peer(), t0 + ms(10));
    assert_eq!(
        media_between(&mut call, t0 + ms(10), t0 + ms(500)),
        [],
        "nothing to the SDP's address before RTP arrived"
    );
    call.handle_rtp_from(&pcmu_packet(1), Some(real), t0 + ms(510));
    let sent = media_between(&mut call, t0 + ms(510), t0 + ms(590));
    assert!(!sent.is_empty(), "our silence starts once RTP came");
    assert!(sent.iter().all(|&(_, d)| d.ip() == real.ip()), "{sent:?}");
    assert!(sent.contains(&(Socket::Rtp, real)), "to the latched source");
    assert!(!sent.iter().any(|&(_, d)| d == sdp_addr));
}

#[test]
fn a_trusted_set_keeps_our_media_away_from_other_addresses() {
    let t0 = Instant::now();
    let outside: SocketAddr = "192.0.2.50:40000".parse().unwrap();
    let trusted = "[security]\ntrusted_sources = [\"127.0.0.1/32\"]\n";
    let mut call = media_call(trusted, outside, t0);
    call.handle_request(&ack(&call), peer(), t0 + ms(10));
    assert_eq!(
        media_between(&mut call, t0 + ms(10), t0 + ms(500)),
        [],
        "the SDP names an address outside the set"
    );
    // Even RTP from there (spoofable) does not make it a destination.
    call.handle_rtp_from(&pcmu_packet(1), Some(outside), t0 + ms(510));
    assert_eq!(media_between(&mut call, t0 + ms(510), t0 + ms(6000)), []);
    assert!(
        call.media.as_ref().unwrap().rtp_stats().received > 0,
        "still analysed"
    );

    // A media gateway listed in trusted_media is sent to; the call's own
    // signalling source is trusted without being listed.
    let gw = format!("{trusted}trusted_media = [\"192.0.2.0/24\"]\n");
    let mut call = media_call(&gw, outside, t0);
    call.handle_request(&ack(&call), peer(), t0 + ms(10));
    let sent = media_between(&mut call, t0 + ms(10), t0 + ms(90));
    assert!(sent.contains(&(Socket::Rtp, outside)), "{sent:?}");
    let own = "[security]\ntrusted_sources = [\"10.0.0.0/8\"]\n";
    let sdp_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut call = media_call(own, sdp_addr, t0);
    call.handle_request(&ack(&call), peer(), t0 + ms(10));
    let sent = media_between(&mut call, t0 + ms(10), t0 + ms(90));
    assert!(sent.contains(&(Socket::Rtp, sdp_addr)), "{sent:?}");
}

/// Our G.711 RTP packets with a level above 1000 (RMS) over `frames`
/// 20 ms steps after `t`: the congestion tone's.
fn loud_packets(call: &mut Call, t: Instant, frames: u32) -> usize {
    let mut loud = 0;
    for k in 1..frames {
        call.handle_timeout(t + Duration::from_millis(20 * u64::from(k)));
        for (socket, _, p) in media_sent(call) {
            if socket != Socket::Rtp || p.len() != 172 || p[1] & 0x7f > 8 {
                continue;
            }
            let mut pcm = [0i16; 160];
            match p[1] & 0x7f {
                0 => emonav_dsp::g711::decode_ulaw(&p[12..], &mut pcm),
                _ => emonav_dsp::g711::decode_alaw(&p[12..], &mut pcm),
            }
            let e = pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / 160.0;
            if e.sqrt() > 1_000.0 {
                loud += 1;
            }
        }
    }
    loud
}

#[test]
fn b2bua_no_queue_reachable_plays_the_congestion_tone_then_byes() {
    let p = Profile::from_toml(
        "[transfer]\ntransfer_mode = \"b2bua\"\nfailure_tone_ms = 1000\n",
        "p",
    )
    .unwrap();
    let t0 = Instant::now();
    let (mut call, inv) = bridging_with(Arc::new(CallSettings::from_profile(&p, 5060)), t0);
    let t = t0 + Duration::from_millis(3100);
    call.handle_response(&queue_response(&inv, 486, "", ""), t);
    assert_eq!(
        codes(&sent(&mut call)),
        ["ACK"],
        "no BYE yet: the tone first"
    );
    let loud = loud_packets(&mut call, t, 50);
    // 425 Hz, 250 ms on / 250 ms off: about half of ~49 packets.
    assert!((20..=30).contains(&loud), "{loud} loud packets");
    let at = t + Duration::from_secs(1);
    assert_eq!(protocol_timeout(&mut call), Some(at));
    call.handle_timeout(at);
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["BYE"]);
    let Message::Request(bye) = &out[0] else {
        unreachable!()
    };
    assert!(bye.headers.get("Reason").unwrap().contains("cause=486"));
    assert!(
        media_sent(&mut call)
            .iter()
            .all(|(s, _, p)| *s != Socket::Rtp || p[1] & 0x7f > 34),
        "no RTP after the BYE"
    );
    call.handle_response(&response_to(&out[0], 200), at);
    assert_eq!(ended(&mut call).unwrap().outcome, Outcome::Failed);
}

/// A `b2bua` call bridged to the queue: the call, our INVITE to the queue
/// (for the queue's in-dialog requests) and the instant reached.
fn bridged_call(t0: Instant) -> (Call, Request, Instant) {
    bridged_call_with(t0, "")
}

/// As [`bridged_call`], the queue's 2xx with `extra` headers.
fn bridged_call_with(t0: Instant, extra: &str) -> (Call, Request, Instant) {
    let (mut call, inv) = bridging(t0);
    let t = t0 + Duration::from_millis(3100);
    let queue_sdp = "v=0\r\no=agent 5 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";
    let ok = queue_response(
        &inv,
        200,
        &format!("Contact: <sip:agent@192.0.2.7:5062>\r\nContent-Type: application/sdp\r\n{extra}"),
        queue_sdp,
    );
    call.handle_response(&ok, t);
    let out = sent(&mut call);
    let answer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let mut caller_ok = response_to(&out[0], 200);
    caller_ok.body = answer.as_bytes().to_vec();
    call.handle_response(&caller_ok, t);
    assert_eq!(codes(&sent(&mut call)), ["ACK", "ACK"]);
    assert_eq!(call.phase, Phase::Bridged);
    (call, inv, t)
}

fn queue_peer() -> Peer {
    Peer {
        addr: "192.0.2.7:5062".parse().unwrap(),
        transport: Transport::Udp,
    }
}

/// A request from the queue in its dialog with us.
fn from_queue(inv: &Request, method: &str, cseq: u32, body: &str) -> Request {
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    request(&format!(
        "{method} sip:emonav@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKq{method}{cseq}\r\n\
         From: {};tag=agent1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:agent@192.0.2.7:5062>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        inv.headers.get("To").unwrap(),
        inv.headers.get("From").unwrap(),
        inv.call_id().unwrap(),
        body.len()
    ))
}

fn body_of(m: &Message) -> String {
    match m {
        Message::Request(r) => String::from_utf8_lossy(&r.body).into_owned(),
        Message::Response(r) => String::from_utf8_lossy(&r.body).into_owned(),
    }
}

/// The bridged caller puts the queue on hold (`a=sendonly`) by re-INVITE
/// at `at`: the offer, the re-INVITE, and what went out (the re-INVITE on
/// to the queue at once, our 100 to the caller).
fn caller_holds(call: &mut Call, at: Instant) -> (&'static str, Request, Vec<Message>) {
    let hold = "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=sendonly\r\n";
    let reinvite = in_dialog(
        call,
        "INVITE",
        2,
        "Contact: <sip:caller@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\n",
        hold,
    );
    call.handle_request(&reinvite, peer(), at);
    let out = sent(call);
    assert_eq!(codes(&out), ["INVITE", "100"], "on to the queue at once");
    (hold, reinvite, out)
}

#[test]
fn b2bua_relays_the_callers_hold_and_resume_to_the_queue() {
    let t0 = Instant::now();
    let (mut call, inv, t) = bridged_call(t0);
    let (hold, reinvite, out) = caller_holds(&mut call, t + ms(1000));
    let Message::Request(to_queue) = &out[0] else {
        unreachable!()
    };
    assert_eq!(to_queue.call_id(), inv.call_id());
    assert_eq!(to_queue.body, hold.as_bytes(), "the caller's SDP as is");
    // The caller's INVITE again: our 100 again, nothing to the queue.
    call.handle_request(&reinvite, peer(), t + ms(1100));
    assert_eq!(codes(&sent(&mut call)), ["100"]);
    // The queue's request is retransmitted until it answers (Timer A).
    call.handle_timeout(t + ms(1500));
    assert_eq!(codes(&sent(&mut call)), ["INVITE"]);
    // Another offer from the caller meanwhile: glare.
    let update = in_dialog(
        &call,
        "UPDATE",
        3,
        "Content-Type: application/sdp\r\n",
        &hold.replace(" 1 3 ", " 1 4 "),
    );
    call.handle_request(&update, peer(), t + ms(1520));
    assert_eq!(codes(&sent(&mut call)), ["491"]);
    let held = "v=0\r\no=agent 5 2 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\na=recvonly\r\n";
    let mut ok = response_to(&out[0], 200);
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = held.as_bytes().to_vec();
    call.handle_response(&ok, t + ms(1600));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["ACK", "200"]);
    let body = body_of(&out[1]);
    assert!(
        body.contains("o=emonav ") && body.contains("a=recvonly") && body.contains("m=audio 7000 "),
        "the queue's answer under our origin: {body}"
    );
    let version = |b: &str| -> u64 {
        let o = b.lines().find(|l| l.starts_with("o=")).unwrap();
        o.split(' ').nth(2).unwrap().parse().unwrap()
    };
    assert!(version(&body) >= 2, "after the set-up's re-INVITE: {body}");
    // The 2xx is retransmitted until the caller's ACK, then no more.
    call.handle_timeout(t + ms(2100));
    assert_eq!(codes(&sent(&mut call)), ["200"]);
    call.handle_request(&in_dialog(&call, "ACK", 2, "", ""), peer(), t + ms(2200));
    assert!(sent(&mut call).is_empty(), "ACK absorbed, nothing relayed");
    call.handle_timeout(t + ms(5000));
    assert!(sent(&mut call).is_empty());
    // The same session again (a refresh): answered here, the queue undisturbed.
    let refresh = in_dialog(
        &call,
        "INVITE",
        4,
        "Content-Type: application/sdp\r\n",
        hold,
    );
    call.handle_request(&refresh, peer(), t + ms(6000));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200"]);
    assert_eq!(version(&body_of(&out[0])), version(&body));
    call.handle_request(&in_dialog(&call, "ACK", 4, "", ""), peer(), t + ms(6010));
    // Resume: the queue refuses (500, Retry-After): the caller hears the same.
    let resume = in_dialog(
        &call,
        "INVITE",
        5,
        "Content-Type: application/sdp\r\n",
        &hold
            .replace(" 1 3 ", " 1 5 ")
            .replace("sendonly", "sendrecv"),
    );
    call.handle_request(&resume, peer(), t + ms(7000));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["INVITE", "100"]);
    let mut busy = response_to(&out[0], 500);
    busy.headers.push("Retry-After", "3");
    call.handle_response(&busy, t + ms(7100));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["ACK", "500"]);
    let Message::Response(r) = &out[1] else {
        unreachable!()
    };
    assert_eq!(r.headers.get("Retry-After"), Some("3"));
    assert_eq!(call.phase, Phase::Bridged, "the session is kept");
    call.handle_request(&in_dialog(&call, "ACK", 5, "", ""), peer(), t + ms(7110));
    // And again by UPDATE (RFC 3311): relayed as an UPDATE, answered.
    let update = in_dialog(
        &call,
        "UPDATE",
        6,
        "Content-Type: application/sdp\r\n",
        &hold
            .replace(" 1 3 ", " 1 6 ")
            .replace("sendonly", "sendrecv"),
    );
    call.handle_request(&update, peer(), t + ms(8000));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["UPDATE"]);
    let mut ok = response_to(&out[0], 200);
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = held
        .replace(" 5 2 ", " 5 3 ")
        .replace("recvonly", "sendrecv")
        .into_bytes();
    call.handle_response(&ok, t + ms(8100));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200"], "no ACK for an UPDATE");
    assert!(body_of(&out[0]).contains("a=sendrecv"));
    assert!(version(&body_of(&out[0])) > version(&body));
}

#[test]
fn b2bua_relays_the_queues_reinvite_to_the_caller_and_its_refusal_back() {
    let t0 = Instant::now();
    let (mut call, inv, t) = bridged_call(t0);
    let moved = "v=0\r\no=agent 5 2 IN IP4 192.0.2.8\r\ns=-\r\nc=IN IP4 192.0.2.8\r\nt=0 0\r\nm=audio 7002 RTP/AVP 0\r\n";
    let reinvite = from_queue(&inv, "INVITE", 2, moved);
    call.handle_request(&reinvite, queue_peer(), t + ms(1000));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["INVITE", "100"]);
    let Message::Request(to_caller) = &out[0] else {
        unreachable!()
    };
    assert_eq!(to_caller.call_id(), Some("unit-1"));
    let offer = body_of(&out[0]);
    assert!(
        offer.contains("o=emonav ") && offer.contains("c=IN IP4 192.0.2.8"),
        "{offer}"
    );
    // The caller is re-INVITing too (glare): 491 to it.
    call.handle_request(
        &in_dialog(
            &call,
            "INVITE",
            2,
            "Content-Type: application/sdp\r\n",
            &offer,
        ),
        peer(),
        t + ms(1010),
    );
    assert_eq!(codes(&sent(&mut call)), ["491"]);
    // ... and the caller answers ours 491: the queue hears 491, session kept.
    call.handle_response(&response_to(&out[0], 491), t + ms(1100));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["ACK", "491"]);
    let Message::Request(ack) = &out[0] else {
        unreachable!()
    };
    assert_eq!(ack.call_id(), Some("unit-1"));
    let Message::Response(r) = &out[1] else {
        unreachable!()
    };
    assert_eq!(r.call_id(), inv.call_id());
    call.handle_request(&from_queue(&inv, "ACK", 2, ""), queue_peer(), t + ms(1110));
    assert!(sent(&mut call).is_empty());
    // The queue tries again: the caller takes it; its answer goes to the queue.
    let reinvite = from_queue(&inv, "INVITE", 3, moved);
    call.handle_request(&reinvite, queue_peer(), t + ms(3000));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["INVITE", "100"]);
    let answer = "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let mut ok = response_to(&out[0], 200);
    ok.body = answer.as_bytes().to_vec();
    call.handle_response(&ok, t + ms(3100));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["ACK", "200"]);
    assert_eq!(body_of(&out[1]), answer, "the caller's answer as is");
    call.handle_request(&from_queue(&inv, "ACK", 3, ""), queue_peer(), t + ms(3110));
    call.handle_timeout(t + ms(6000));
    assert!(sent(&mut call).is_empty(), "ACKed: no 2xx retransmission");
    // A queue refresh by UPDATE without SDP: 200 here, the caller undisturbed.
    call.handle_request(
        &from_queue(&inv, "UPDATE", 4, ""),
        queue_peer(),
        t + ms(7000),
    );
    assert_eq!(codes(&sent(&mut call)), ["200"]);
    // The caller vanishes while the queue re-INVITEs: no answer at all
    // (Timer B) ends both legs.
    let again = moved.replace(" 5 2 ", " 5 3 ");
    call.handle_request(
        &from_queue(&inv, "INVITE", 5, &again),
        queue_peer(),
        t + ms(8000),
    );
    assert_eq!(codes(&sent(&mut call)), ["INVITE", "100"]);
    let mut now = t + ms(8000);
    let mut seen = vec![];
    while now < t + Duration::from_secs(60) {
        now += ms(500);
        call.handle_timeout(now);
        seen.extend(codes(&sent(&mut call)));
        if seen.iter().any(|c| c == "408") {
            break;
        }
    }
    let tail: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|c| *c != "INVITE")
        .collect();
    assert_eq!(tail, ["408", "BYE", "BYE"], "{seen:?}");
}

fn header_of<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    match m {
        Message::Request(r) => r.headers.get(name),
        Message::Response(r) => r.headers.get(name),
    }
}

#[test]
fn b2bua_queue_leg_offers_a_session_timer_and_honours_422() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging(t0);
    assert_eq!(inv.headers.get("Supported"), Some("timer"));
    assert_eq!(inv.headers.get("Session-Expires"), Some("1800"));
    assert_eq!(inv.headers.get("Min-SE"), Some("90"));
    let t = t0 + ms(3100);
    call.handle_response(&queue_response(&inv, 422, "Min-SE: 3600", ""), t);
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["ACK", "INVITE"]);
    assert_eq!(header_of(&out[1], "Session-Expires"), Some("3600"));
    assert_eq!(header_of(&out[1], "CSeq"), Some("2 INVITE"));
    // A second 422 is a failure: the next queue (none left here: the end).
    let Message::Request(again) = &out[1] else {
        unreachable!()
    };
    call.handle_response(&queue_response(again, 422, "Min-SE: 7200", ""), t + ms(50));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["ACK", "BYE"], "no third INVITE");
}

#[test]
fn b2bua_refreshes_the_queue_leg_when_it_is_the_refresher() {
    let t0 = Instant::now();
    let (mut call, inv, t) = bridged_call_with(t0, "Session-Expires: 90;refresher=uac\r\n");
    // Half the interval: our UPDATE without SDP, nothing to the caller.
    call.handle_timeout(t + Duration::from_secs(44));
    assert!(sent(&mut call).is_empty());
    call.handle_timeout(t + Duration::from_secs(45));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["UPDATE"]);
    let Message::Request(update) = &out[0] else {
        unreachable!()
    };
    assert_eq!(update.call_id(), inv.call_id());
    assert!(update.body.is_empty(), "no media change");
    assert_eq!(
        update.headers.get("Session-Expires"),
        Some("90;refresher=uac")
    );
    // Unanswered, it is retransmitted (Timer E).
    call.handle_timeout(t + Duration::from_millis(45_500));
    assert_eq!(codes(&sent(&mut call)), ["UPDATE"]);
    let mut ok = update.make_response(200, "OK");
    ok.headers.push("Session-Expires", "120;refresher=uac");
    call.handle_response(&ok, t + Duration::from_secs(46));
    assert!(sent(&mut call).is_empty());
    // The queue's new interval: the next refresh at half of it.
    call.handle_timeout(t + Duration::from_secs(46 + 59));
    assert!(sent(&mut call).is_empty());
    call.handle_timeout(t + Duration::from_secs(46 + 60));
    assert_eq!(codes(&sent(&mut call)), ["UPDATE"]);
    assert_eq!(call.phase, Phase::Bridged);
}

#[test]
fn b2bua_answers_the_queues_refresh_and_ends_both_legs_when_it_stops() {
    let t0 = Instant::now();
    let (mut call, inv, t) = bridged_call_with(t0, "Session-Expires: 90;refresher=uas\r\n");
    // The queue refreshes by UPDATE at 40 s: 200 with the interval, its role.
    let mut refresh = from_queue(&inv, "UPDATE", 2, "");
    refresh.headers.push("Session-Expires", "90;refresher=uac");
    refresh.headers.push("Supported", "timer");
    call.handle_request(&refresh, queue_peer(), t + Duration::from_secs(40));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200"]);
    assert_eq!(
        header_of(&out[0], "Session-Expires"),
        Some("90;refresher=uac")
    );
    // Without the refresh at 40 s the session would be over at 60 s.
    call.handle_timeout(t + Duration::from_secs(61));
    assert!(sent(&mut call).is_empty(), "refreshed: still up");
    // No refresh after that one: at 40 + 60 s both legs get a BYE.
    call.handle_timeout(t + Duration::from_secs(99));
    assert!(sent(&mut call).is_empty());
    call.handle_timeout(t + Duration::from_secs(100));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["BYE", "BYE"]);
    let Message::Request(to_caller) = &out[1] else {
        unreachable!()
    };
    assert_eq!(to_caller.call_id(), Some("unit-1"));
    assert!(
        to_caller
            .headers
            .get("Reason")
            .is_some_and(|r| r.contains("session expired")),
        "{:?}",
        to_caller.headers.get("Reason")
    );
}

mod relay;
