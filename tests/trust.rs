//! Trusted peers and reflection (docs/security.md) against the real binary
//! over loopback UDP. 127.0.0.0/8 is all loopback on Linux, so a socket on
//! 127.0.0.2 is a source outside `trusted_sources = ["127.0.0.1/32"]`.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use emonav_sip::message::Message;
use support::{fixture, Emonav, Uac};

const S: Duration = Duration::from_secs(1);

/// A UAC whose SIP socket is on `sip_ip` (its RTP socket, which its SDP
/// names, stays on 127.0.0.1: the third party a reflection would hit).
fn uac_from(emonav: &Emonav, sip_ip: &str) -> Uac {
    let mut uac = Uac::new(emonav.sip);
    uac.sip = UdpSocket::bind(format!("{sip_ip}:0")).unwrap();
    uac
}

/// Datagrams arriving on `sock` within `window`.
fn datagrams_within(sock: &UdpSocket, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        if sock.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

/// An out-of-dialog OPTIONS, a proxy's keep-alive probe.
fn options(uac: &Uac) -> String {
    let me = uac.addr();
    format!(
        "OPTIONS sip:emonav@{r} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{b:x};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p1\r\nTo: <sip:emonav@{r}>\r\n\
         Call-ID: {b:x}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        r = uac.remote,
        b = fastrand::u64(..)
    )
}

fn metric(emonav: &Emonav, name: &str) -> u64 {
    let (status, body) = emonav.http_get("/metrics");
    assert!(status.contains("200"), "{status}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// A whole call from a trusted caller: analysed, REFERred, transferred.
fn trusted_call_is_transferred(emonav: &Emonav) {
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    assert_eq!(uac.invite_final(5 * S).code, 200);
    uac.ack(true);
    uac.play(fixture("calm.ul"), 0);
    let refer = uac.expect_request("REFER", 8 * S).expect("REFER");
    assert_eq!(
        refer.headers.get("Refer-To"),
        Some("<sip:standard@127.0.0.1:5070>")
    );
    uac.respond(&refer, 202, "Accepted");
    let n = uac.notify("SIP/2.0 200 OK", true);
    assert_eq!(uac.expect_response(&n, 2 * S).expect("200").code, 200);
    let bye = uac.expect_request("BYE", 3 * S).expect("BYE");
    uac.respond(&bye, 200, "OK");
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["outcome"], "transferred", "{ev}");
    assert_eq!(ev["call_id"], uac.call_id.as_str());
    assert!(ev["speech_ms"].as_u64().unwrap() > 300, "{ev}");
}

#[test]
fn an_untrusted_invite_gets_403_and_no_rtp_while_a_trusted_caller_is_transferred() {
    let emonav = Emonav::start("[security]\ntrusted_sources = [\"127.0.0.1/32\"]\n");
    let mut spoofed = uac_from(&emonav, "127.0.0.2");
    spoofed.send_invite(&spoofed.g711_offer());
    let r = spoofed.invite_final(3 * S);
    assert_eq!((r.code, r.reason.as_str()), (403, "Forbidden"));
    // The 403 is all: no 100 Trying, no 200, and nothing at the SDP's address.
    assert!(spoofed.recv(S / 2).is_none(), "only the 403");
    assert_eq!(datagrams_within(&spoofed.rtp, S), 0, "RTP reflected");
    assert_eq!(metric(&emonav, "emonav_sip_untrusted_total"), 1);
    assert_eq!(metric(&emonav, "emonav_calls_started_total"), 0);
    assert!(
        emonav.next_event_opt(S / 10).is_none(),
        "no call was started"
    );
    trusted_call_is_transferred(&emonav);
    assert_eq!(metric(&emonav, "emonav_sip_untrusted_total"), 1);
}

#[test]
fn drop_mode_answers_an_untrusted_source_nothing_and_trusted_options_still_work() {
    let emonav =
        Emonav::start("[security]\ntrusted_sources = [\"127.0.0.1/32\"]\nuntrusted = \"drop\"\n");
    let mut spoofed = uac_from(&emonav, "127.0.0.2");
    spoofed.send_invite(&spoofed.g711_offer());
    spoofed.send_raw(&options(&spoofed));
    assert!(spoofed.recv(2 * S).is_none(), "drop mode answers nothing");
    assert_eq!(datagrams_within(&spoofed.rtp, S / 2), 0, "RTP reflected");
    assert_eq!(metric(&emonav, "emonav_sip_untrusted_total"), 2);
    let mut monitor = Uac::new(emonav.sip);
    monitor.send_raw(&options(&monitor));
    match monitor.recv(2 * S) {
        Some(Message::Response(r)) => assert_eq!(r.code, 200),
        other => panic!("{other:?}"),
    }
    trusted_call_is_transferred(&emonav);
}

#[test]
fn without_an_ack_no_rtp_goes_to_the_offers_address() {
    // Trusted set off (the default): a spoofed INVITE is answered, but its
    // 200 goes to the spoofed source, which never ACKs, so no media may
    // start toward the address its SDP names.
    let emonav = Emonav::start("");
    let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut spoofed = Uac::new(emonav.sip);
    spoofed.rtp = victim.try_clone().unwrap();
    spoofed.send_invite(&spoofed.g711_offer());
    assert_eq!(spoofed.invite_final(3 * S).code, 200);
    // t1_ms = 100: the 200 is retransmitted at 100, 300, 700 ms...; watch
    // the victim for 2 s of them.
    assert_eq!(datagrams_within(&victim, 2 * S), 0, "RTP reflected");
    let mut retransmitted = 0;
    while let Some(m) = spoofed.recv(S / 2) {
        if matches!(m, Message::Response(r) if r.code == 200) {
            retransmitted += 1;
        }
    }
    assert!(retransmitted > 0, "the 200 was still being retransmitted");
    // The ACK starts our silence toward the SDP's address.
    spoofed.ack(true);
    assert!(
        datagrams_within(&victim, S / 2) >= 10,
        "silence keepalive after the ACK"
    );
    let from: SocketAddr = {
        let mut buf = [0u8; 2048];
        victim.set_read_timeout(Some(S)).unwrap();
        victim.recv_from(&mut buf).unwrap().1
    };
    assert_eq!(from.ip(), emonav.sip.ip());
}
