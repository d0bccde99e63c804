//! The media relay (`[transfer] media`): when it is chosen, what the queue
//! is answered, and what happens to each relayed datagram.

use super::*;
use crate::call::RelaySide;

fn settings_with(media: &str) -> Arc<CallSettings> {
    let p = Profile::from_toml(
        &format!(
            "[transfer]\ntransfer_mode = \"b2bua\"\nfailure_tone_ms = 0\nmedia = \"{media}\"\n"
        ),
        "p",
    )
    .unwrap();
    Arc::new(CallSettings::from_profile(&p, 5060))
}

/// The queue's offer: PCMU under a dynamic payload type, telephone-events.
const QUEUE_SDP: &str =
    "v=0\r\no=agent 5 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n\
    m=audio 7000 RTP/AVP 96 100\r\na=rtpmap:96 PCMU/8000\r\na=rtpmap:100 telephone-event/8000\r\n";

const RELAY: &str = "127.0.0.1:41000";

fn queue_ok(inv: &Request, sdp: &str) -> Response {
    queue_response(
        inv,
        200,
        "Contact: <sip:agent@192.0.2.7:5062>\r\nContent-Type: application/sdp",
        sdp,
    )
}

fn asks_for_a_port(out: &[Output<'static>]) -> bool {
    out.iter().any(|o| matches!(o, Output::RelayPort))
}

fn sip(out: Vec<Output<'static>>) -> Vec<Message> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Transmit(t) => Some(parse_datagram(&t.payload).unwrap()),
            _ => None,
        })
        .collect()
}

/// The port given: the ACK of the queue's 2xx carries our relay answer.
fn relay_up(call: &mut Call, inv: &Request, t: Instant) {
    call.relay_port(Some(RELAY.parse().unwrap()), t);
    let out = sent(call);
    assert_eq!(codes(&out), ["ACK"]);
    let Message::Request(ack) = &out[0] else {
        unreachable!()
    };
    assert_eq!(ack.call_id(), inv.call_id(), "to the queue");
    let body = String::from_utf8_lossy(&ack.body);
    assert!(
        body.contains("c=IN IP4 127.0.0.1\r\n")
            && body.contains("m=audio 41000 RTP/AVP 96 100\r\n"),
        "our relay port, the queue's payload types: {body}"
    );
    assert!(call.relaying() && call.wants_media());
}

#[test]
fn auto_relays_when_the_caller_refuses_the_reinvite() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging_with(settings_with("auto"), t0);
    let t = t0 + ms(3100);
    call.handle_response(&queue_ok(&inv, QUEUE_SDP), t);
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["INVITE"], "direct first");
    call.handle_response(&response_to(&out[0], 488), t);
    let out = outputs(&mut call);
    assert!(asks_for_a_port(&out), "the relay, not the failure tone");
    assert_eq!(codes(&sip(out)), ["ACK"], "only the ACK of the 488");
    relay_up(&mut call, &inv, t);

    // Caller -> queue: PCMU 0 becomes the queue's 96.
    let mut p = pcmu_packet(1);
    let from = "127.0.0.1:40000".parse().unwrap();
    assert_eq!(
        call.relay_rtp(RelaySide::Caller, &mut p, from, t + ms(20)),
        Some("192.0.2.7:7000".parse().unwrap())
    );
    assert_eq!(p[1], 96);
    // Queue -> caller: 96 becomes 0, marker kept; to the caller's address.
    let mut q = pcmu_packet(7);
    q[1] = 0x80 | 96;
    let qsrc = "192.0.2.7:7000".parse().unwrap();
    assert_eq!(
        call.relay_rtp(RelaySide::Queue, &mut q, qsrc, t + ms(40)),
        Some(from)
    );
    assert_eq!(q[1], 0x80);
    // Another host's datagram on the queue side, an unshared payload type.
    let mut x = pcmu_packet(8);
    x[1] = 96;
    let stranger = "198.51.100.1:7000".parse().unwrap();
    assert_eq!(
        call.relay_rtp(RelaySide::Queue, &mut x, stranger, t + ms(60)),
        None
    );
    let mut y = pcmu_packet(9);
    y[1] = 8;
    assert_eq!(
        call.relay_rtp(RelaySide::Queue, &mut y, qsrc, t + ms(60)),
        None
    );

    // The queue hangs up: BYE to the caller, both legs over.
    call.handle_request(&from_queue(&inv, "BYE", 1, ""), queue_peer(), t + ms(80));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200", "BYE"]);
    assert!(!call.relaying(), "the relay port goes");
    call.handle_response(&response_to(&out[1], 200), t + ms(90));
    let rec = ended(&mut call).unwrap();
    assert_eq!(rec.outcome, Outcome::Bridged);
    assert_eq!(rec.bridge_media, Some("relay"));
    assert_eq!(rec.bridge_attempts[0].caller_reinvite, Some(488));
    assert_eq!(
        (
            rec.relay.to_queue_packets,
            rec.relay.to_caller_packets,
            rec.relay.dropped
        ),
        (1, 1, 2)
    );
    assert_eq!(rec.relay.to_queue_bytes, 172);
}

#[test]
fn relay_never_reinvites_the_caller_and_a_caller_bye_ends_the_queue_leg() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging_with(settings_with("relay"), t0);
    let t = t0 + ms(3100);
    call.handle_response(&queue_ok(&inv, QUEUE_SDP), t);
    let out = outputs(&mut call);
    assert!(asks_for_a_port(&out));
    assert!(sip(out).is_empty(), "no re-INVITE to the caller");
    relay_up(&mut call, &inv, t);
    // A caller's session refresh is answered with the session it has.
    let refresh = in_dialog(&call, "INVITE", 2, "", "");
    call.handle_request(&refresh, peer(), t + ms(10));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200"]);
    assert!(
        body_of(&out[0]).contains("m=audio 20000 "),
        "{}",
        body_of(&out[0])
    );
    call.handle_request(&in_dialog(&call, "BYE", 3, "", ""), peer(), t + ms(20));
    let out = sent(&mut call);
    assert_eq!(codes(&out), ["200", "BYE"]);
    let Message::Request(bye) = &out[1] else {
        unreachable!()
    };
    assert_eq!(bye.call_id(), inv.call_id());
    assert!(!call.relaying());
}

#[test]
fn direct_keeps_the_failure_and_a_relay_without_common_codec_fails_with_the_reason() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging_with(settings_with("direct"), t0);
    let t = t0 + ms(3100);
    call.handle_response(&queue_ok(&inv, QUEUE_SDP), t);
    let out = sent(&mut call);
    call.handle_response(&response_to(&out[0], 488), t);
    let out = outputs(&mut call);
    assert!(!asks_for_a_port(&out));
    assert_eq!(codes(&sip(out)), ["ACK", "ACK", "BYE", "BYE"]);

    let g729 = "v=0\r\no=agent 5 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 7000 RTP/AVP 18\r\n";
    let (mut call, inv) = bridging_with(settings_with("relay"), t0);
    call.handle_response(&queue_ok(&inv, g729), t);
    let out = outputs(&mut call);
    assert!(!asks_for_a_port(&out));
    let out = sip(out);
    assert_eq!(codes(&out), ["ACK", "BYE", "BYE"]);
    let Message::Request(bye) = &out[2] else {
        unreachable!()
    };
    let reason = bye.headers.get("Reason").unwrap();
    assert!(
        reason.contains("cause=488") && reason.contains("no codec in common"),
        "{reason}"
    );
}

#[test]
fn auto_relays_when_the_caller_never_answers_but_not_when_its_dialog_is_gone() {
    let t0 = Instant::now();
    let (mut call, inv) = bridging_with(settings_with("auto"), t0);
    let t = t0 + ms(3100);
    call.handle_response(&queue_ok(&inv, QUEUE_SDP), t);
    assert_eq!(codes(&sent(&mut call)), ["INVITE"]);
    // Timer B (64·T1) with no answer at all.
    let mut asked = false;
    let mut at = t;
    while at < t + Duration::from_secs(40) && !asked {
        at += ms(500);
        call.handle_timeout(at);
        asked = asks_for_a_port(&outputs(&mut call));
    }
    assert!(asked, "no answer: relayed");
    assert!(at >= t + Duration::from_secs(32));

    let (mut call, inv) = bridging_with(settings_with("auto"), t0);
    call.handle_response(&queue_ok(&inv, QUEUE_SDP), t);
    let out = sent(&mut call);
    call.handle_response(&response_to(&out[0], 481), t);
    let out = outputs(&mut call);
    assert!(!asks_for_a_port(&out), "481: the caller's dialog is gone");
}

#[test]
fn a_relayed_reinvites_18x_reaches_the_near_leg_and_its_retransmissions() {
    let t0 = Instant::now();
    let (mut call, _inv, t) = bridged_call(t0);
    let (_, reinvite, out) = caller_holds(&mut call, t + ms(1000));
    // The queue's 100 stays on its hop; its 180 goes on to the caller.
    call.handle_response(&response_to(&out[0], 100), t + ms(1010));
    assert!(sent(&mut call).is_empty());
    let mut ringing = response_to(&out[0], 180);
    ringing.reason = "Ringing".into();
    call.handle_response(&ringing, t + ms(1020));
    let got = sent(&mut call);
    assert_eq!(codes(&got), ["180"]);
    let Message::Response(r) = &got[0] else {
        unreachable!()
    };
    assert_eq!(
        (r.call_id(), r.reason.as_str()),
        (Some("unit-1"), "Ringing")
    );
    assert_eq!(r.cseq().map(|c| c.seq), Some(2), "the caller's re-INVITE's");
    // The caller's retransmission gets the 180 now.
    call.handle_request(&reinvite, peer(), t + ms(1100));
    assert_eq!(codes(&sent(&mut call)), ["180"]);
    // The final answer still comes through.
    let mut ok = response_to(&out[0], 200);
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = QUEUE_SDP.replace(" 5 1 ", " 5 2 ").into_bytes();
    call.handle_response(&ok, t + ms(1200));
    assert_eq!(codes(&sent(&mut call)), ["ACK", "200"]);
}
