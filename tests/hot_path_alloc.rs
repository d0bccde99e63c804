//! The per-packet path (RTP in → validate → decode → analyse → policy check)
//! must not allocate in steady state, nor must the media relay's
//! (`Call::relay_rtp`, both directions). A counting global allocator watches the
//! real `Call::handle_rtp` while a call is listening. The count is per
//! thread so that the tests, which the harness runs in parallel, do not see
//! each other's allocations.

// The counting global allocator is the one use of `unsafe` in the package
// (the workspace denies it elsewhere).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emonav::{Call, CallSettings, Output, Profile, RelaySide, Socket, Transmit};
use emonav_sip::message::{parse_datagram, Message};
use emonav_sip::transport::{Peer, Transport};

struct Counting;

thread_local! {
    // Const-initialised and without Drop: touching it never allocates.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn count() {
    // try_with: the slot may be gone while the thread is being torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn request(text: &str) -> emonav_sip::message::Request {
    match parse_datagram(text.as_bytes()).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!(),
    }
}

/// ACK the call's 200 OK (so no retransmission shows up as output), at `now`.
fn ack_200(call: &mut Call, call_id: &str, now: Instant) {
    let mut to = None;
    while let Some(o) = call.poll_output() {
        if let Output::Transmit(Transmit {
            socket: Socket::Sip { .. },
            payload,
            ..
        }) = o
        {
            if let Ok(Message::Response(r)) = parse_datagram(&payload) {
                if r.code == 200 {
                    to = r.headers.get("To").map(str::to_owned);
                }
            }
        }
    }
    let to = to.expect("200 OK sent");
    let ack = request(&format!(
        "ACK sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack{call_id}\r\n\
         From: <sip:c@127.0.0.1>;tag=c1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    ));
    let peer = Peer {
        addr: "127.0.0.1:5070".parse().unwrap(),
        transport: Transport::Udp,
    };
    call.handle_request(&ack, peer, now);
    no_decision(call);
}

/// Take the call's outputs: only media packets (no REFER, no record) are expected.
fn no_decision(call: &mut Call) {
    while let Some(o) = call.poll_output() {
        if let Output::Transmit(Transmit {
            socket: Socket::Sip { .. },
            ..
        })
        | Output::Record(_) = o
        {
            panic!("no decision expected");
        }
    }
}

#[test]
fn listening_call_decodes_and_analyses_without_allocating() {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let invite = request(&format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa1\r\n\
         From: <sip:c@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\nCall-ID: alloc-1\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:c@127.0.0.1:5070>\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    let src: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let mut profile = Profile::default();
    // Long enough that no decision (which does allocate a REFER) falls in the window.
    profile.policy.decision_deadline_ms = 60_000;
    profile.policy.min_speech_ms = 60_000;
    let settings = Arc::new(CallSettings::from_profile(&profile, 5060));
    let t0 = Instant::now();
    let mut call = Call::new(
        settings,
        invite,
        src,
        "127.0.0.1:20000".parse().unwrap(),
        t0,
    )
    .unwrap();
    ack_200(&mut call, "alloc-1", t0);

    // Speech-like μ-law: a 180 Hz tone with harmonics, 20 ms packets.
    let packets: Vec<Vec<u8>> = (0..600u32)
        .map(|i| {
            let mut p = vec![0x80, 0];
            p.extend_from_slice(&(i as u16).to_be_bytes());
            p.extend_from_slice(&(i * 160).to_be_bytes());
            p.extend_from_slice(&7u32.to_be_bytes());
            let pcm: Vec<i16> = (0..160)
                .map(|n| {
                    let t = (i * 160 + n) as f32 / 8000.0;
                    let w = 2.0 * std::f32::consts::PI * 180.0 * t;
                    (6000.0 * (w.sin() + 0.5 * (2.0 * w).sin() + 0.3 * (3.0 * w).sin())) as i16
                })
                .collect();
            let mut ulaw = vec![0u8; 160];
            emonav_dsp::g711::encode_ulaw(&pcm, &mut ulaw);
            p.extend_from_slice(&ulaw);
            p
        })
        .collect();
    // Packets arrive 20 ms apart from a source other than the SDP's (the
    // latch takes it); a stray source interleaves garbage.
    let at = |i: usize| t0 + Duration::from_millis(20 * i as u64);
    let caller: SocketAddr = "127.0.0.1:40002".parse().unwrap();
    let from = Some(caller);
    let stray = Some("127.0.0.1:40004".parse().unwrap());
    // Warm up: the first packets set up the stream state.
    for (i, p) in packets[..50].iter().enumerate() {
        call.handle_rtp_from(p, from, at(i));
        no_decision(&mut call);
    }
    let before = allocs();
    let mut reports = 0;
    for (i, p) in packets.iter().enumerate().skip(50) {
        call.handle_rtp_from(p, from, at(i));
        if i % 10 == 0 {
            call.handle_rtp_from(p, stray, at(i));
        }
        call.handle_timeout(at(i) + Duration::from_millis(5));
        while let Some(o) = call.poll_output() {
            match o {
                Output::Transmit(Transmit {
                    socket: Socket::Rtp,
                    dest,
                    payload,
                }) => assert_eq!((dest, payload.len()), (caller, 172)),
                // Reports to the RTP port + 1 of the latched source, from our
                // RTCP port: sender reports, since our keepalive flows.
                Output::Transmit(Transmit {
                    socket: Socket::Rtcp,
                    dest,
                    payload,
                }) => {
                    assert_eq!((dest.port(), payload[1]), (40003, 200));
                    reports += 1;
                }
                _ => panic!("no decision expected"),
            }
        }
    }
    assert!(reports >= 1, "{reports} reports in 11 s");
    let during = allocs() - before;
    assert_eq!(during, 0, "{during} allocations for 550 packets");
    assert!(call.wants_media());
    assert!(
        call.estimate().speech_ms >= 10_000,
        "the audio was analysed: {:?}",
        call.estimate()
    );
}

#[test]
fn listening_opus_call_decodes_conceals_and_analyses_without_allocating() {
    use audiopus::coder::Encoder;
    use audiopus::{Application, Channels, SampleRate};

    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\n";
    let invite = request(&format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa2\r\n\
         From: <sip:c@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\nCall-ID: alloc-2\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:c@127.0.0.1:5070>\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    let mut profile = Profile::default();
    profile.media.codecs = vec![emonav::CodecName::Opus];
    profile.policy.decision_deadline_ms = 60_000;
    profile.policy.min_speech_ms = 60_000;
    let settings = Arc::new(CallSettings::from_profile(&profile, 5060));
    let t0 = Instant::now();
    let src: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let local = "127.0.0.1:20000".parse().unwrap();
    let mut call = Call::new(settings, invite, src, local, t0).unwrap();
    ack_200(&mut call, "alloc-2", t0);

    // Speech-like wideband audio, 20 ms Opus packets with in-band FEC.
    let mut enc = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).unwrap();
    enc.enable_inband_fec().unwrap();
    enc.set_packet_loss_perc(10).unwrap();
    let mut packets: Vec<Vec<u8>> = (0..600u32)
        .map(|i| {
            let mut p = vec![0x80, 96];
            p.extend_from_slice(&(i as u16).to_be_bytes());
            p.extend_from_slice(&(i * 960).to_be_bytes());
            p.extend_from_slice(&7u32.to_be_bytes());
            let pcm: Vec<i16> = (0..960)
                .map(|n| {
                    let t = (i * 960 + n) as f32 / 48000.0;
                    let w = 2.0 * std::f32::consts::PI * 180.0 * t;
                    (6000.0 * (w.sin() + 0.5 * (2.0 * w).sin() + 0.3 * (3.0 * w).sin())) as i16
                })
                .collect();
            let mut buf = [0u8; 1500];
            let n = enc.encode(&pcm, &mut buf).unwrap();
            p.extend_from_slice(&buf[..n]);
            p
        })
        .collect();
    // Every 25th packet lost (concealment and FEC run), every 40th garbage.
    for (i, p) in packets.iter_mut().enumerate() {
        if i % 40 == 39 {
            p.truncate(12);
            p.extend_from_slice(&[0x03, 0x00]);
        }
    }
    let packets: Vec<&Vec<u8>> = packets
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 25 != 24)
        .map(|(_, p)| p)
        .collect();
    // Each packet arrives in its 20 ms slot (the lost ones leave a gap).
    let at = |i: usize| t0 + Duration::from_millis(20 * i as u64);
    let seq = |p: &[u8]| u16::from_be_bytes([p[2], p[3]]) as usize;
    for p in &packets[..50] {
        call.handle_rtp(p, at(seq(p)));
    }
    let before = allocs();
    for p in &packets[50..] {
        call.handle_rtp(p, at(seq(p)));
        call.handle_timeout(at(seq(p)) + Duration::from_millis(5));
        no_decision(&mut call);
    }
    let during = allocs() - before;
    assert_eq!(
        during,
        0,
        "{during} allocations for {} packets",
        packets.len() - 50
    );
    assert!(call.wants_media());
    assert!(
        call.estimate().speech_ms >= 10_000,
        "the audio was analysed: {:?}",
        call.estimate()
    );
}

/// The 200 OK's SDP, then ACK it (as [`ack_200`]).
fn answer_then_ack(call: &mut Call, call_id: &str, now: Instant) -> String {
    let mut answer = None;
    let mut to = None;
    while let Some(o) = call.poll_output() {
        if let Output::Transmit(Transmit {
            socket: Socket::Sip { .. },
            payload,
            ..
        }) = o
        {
            if let Ok(Message::Response(r)) = parse_datagram(&payload) {
                if r.code == 200 {
                    to = r.headers.get("To").map(str::to_owned);
                    answer = Some(String::from_utf8_lossy(&r.body).into_owned());
                }
            }
        }
    }
    let to = to.expect("200 OK sent");
    let ack = request(&format!(
        "ACK sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack{call_id}\r\n\
         From: <sip:c@127.0.0.1>;tag=c1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    ));
    let peer = Peer {
        addr: "127.0.0.1:5070".parse().unwrap(),
        transport: Transport::Udp,
    };
    call.handle_request(&ack, peer, now);
    no_decision(call);
    answer.unwrap()
}

/// SRTP (RFC 3711) on the same path: every packet in is authenticated,
/// replay-checked and decrypted, every packet out (RTP and RTCP) encrypted,
/// and still nothing allocates; what we send decrypts with the key of our
/// answer.
#[test]
fn srtp_call_decrypts_and_encrypts_without_allocating() {
    use base64::Engine as _;
    use srtp::{CryptoPolicy, Session, StreamPolicy};
    let b64 = base64::engine::general_purpose::STANDARD;
    let caller_key: Vec<u8> = (1..=30).collect();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/SAVP 0\r\n\
         a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
        b64.encode(&caller_key)
    );
    let invite = request(&format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa3\r\n\
         From: <sip:c@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\nCall-ID: alloc-3\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:c@127.0.0.1:5070>\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    let mut profile = Profile::default();
    profile.policy.decision_deadline_ms = 60_000;
    profile.policy.min_speech_ms = 60_000;
    profile.media.srtp = emonav::SrtpMode::Required;
    let settings = Arc::new(CallSettings::from_profile(&profile, 5060));
    let t0 = Instant::now();
    let src: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let mut call = Call::new(
        settings,
        invite,
        src,
        "127.0.0.1:20000".parse().unwrap(),
        t0,
    )
    .unwrap();
    let answer = answer_then_ack(&mut call, "alloc-3", t0);
    let our_key = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"))
        .map(|k| b64.decode(k).unwrap())
        .unwrap_or_else(|| panic!("our key in the answer:\n{answer}"));
    let policy = |key| StreamPolicy {
        rtp: CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        rtcp: CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        key,
        ..Default::default()
    };
    // The caller's side: encrypts with its key, decrypts with ours.
    let mut caller_tx = Session::with_outbound_template(policy(&caller_key)).unwrap();
    let mut caller_rx = Session::with_inbound_template(policy(&our_key)).unwrap();

    let packets: Vec<Vec<u8>> = (0..600u32)
        .map(|i| {
            let mut p = vec![0x80, 0];
            p.extend_from_slice(&(i as u16).to_be_bytes());
            p.extend_from_slice(&(i * 160).to_be_bytes());
            p.extend_from_slice(&7u32.to_be_bytes());
            let pcm: Vec<i16> = (0..160)
                .map(|n| {
                    let t = (i * 160 + n) as f32 / 8000.0;
                    let w = 2.0 * std::f32::consts::PI * 180.0 * t;
                    (6000.0 * (w.sin() + 0.5 * (2.0 * w).sin() + 0.3 * (3.0 * w).sin())) as i16
                })
                .collect();
            let mut ulaw = vec![0u8; 160];
            emonav_dsp::g711::encode_ulaw(&pcm, &mut ulaw);
            p.extend_from_slice(&ulaw);
            p.reserve(16);
            caller_tx.protect(&mut p).unwrap();
            p
        })
        .collect();
    let at = |i: usize| t0 + Duration::from_millis(20 * i as u64);
    let caller: SocketAddr = "127.0.0.1:40002".parse().unwrap();
    let from = Some(caller);
    for (i, p) in packets[..50].iter().enumerate() {
        call.handle_rtp_from(p, from, at(i));
        no_decision(&mut call);
    }
    // Replays and forgeries, made before counting.
    let forged: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            let mut f = p.clone();
            f[30] ^= 0x40;
            f
        })
        .collect();
    // Copies of what we send, into storage allocated before counting.
    let mut sent: Vec<[u8; 182]> = Vec::with_capacity(3);
    let mut reports: Vec<([u8; 512], usize)> = Vec::with_capacity(64);
    let before = allocs();
    for (i, p) in packets.iter().enumerate().skip(50) {
        call.handle_rtp_from(p, from, at(i));
        if i % 10 == 0 {
            // A replay and a forgery from the caller's own address: refused.
            call.handle_rtp_from(&packets[i - 5], from, at(i));
            call.handle_rtp_from(&forged[i], from, at(i));
        }
        call.handle_timeout(at(i) + Duration::from_millis(5));
        while let Some(o) = call.poll_output() {
            match o {
                Output::Transmit(Transmit {
                    socket: Socket::Rtp,
                    dest,
                    payload,
                }) => {
                    // 12 + 160 and the 80-bit tag.
                    assert_eq!((dest, payload.len()), (caller, 182));
                    if sent.len() < sent.capacity() {
                        sent.push(payload[..].try_into().unwrap());
                    }
                }
                Output::Transmit(Transmit {
                    socket: Socket::Rtcp,
                    dest,
                    payload,
                }) => {
                    assert_eq!(dest.port(), 40003);
                    let mut r = ([0u8; 512], payload.len());
                    r.0[..payload.len()].copy_from_slice(&payload);
                    if reports.len() < reports.capacity() {
                        reports.push(r);
                    }
                }
                _ => panic!("no decision expected"),
            }
        }
    }
    let during = allocs() - before;
    assert_eq!(during, 0, "{during} allocations for 550 SRTP packets");
    assert!(call.estimate().speech_ms >= 10_000, "{:?}", call.estimate());
    // Encrypted, and with the key our answer gave.
    assert_eq!(sent.len(), 3);
    for p in sent {
        let mut p = p.to_vec();
        caller_rx.unprotect(&mut p).unwrap();
        assert_eq!(p.len(), 172);
    }
    assert!(!reports.is_empty());
    for (r, n) in reports {
        let mut r = r[..n].to_vec();
        caller_rx.unprotect_rtcp(&mut r).unwrap();
        assert_eq!(r[1], 200, "a sender report");
    }
}

/// A `b2bua` call with `[transfer] media = "relay"` brought to the relay:
/// decided at the deadline, the queue's 2xx answered, the relay port given.
fn relaying_call(t0: Instant) -> (Call, Instant) {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let invite = request(&format!(
        "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa9\r\n\
         From: <sip:c@127.0.0.1>;tag=c1\r\nTo: <sip:emonav@127.0.0.1>\r\nCall-ID: alloc-9\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:c@127.0.0.1:5070>\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    let profile = Profile::from_toml(
        "[transfer]\ntransfer_mode = \"b2bua\"\nmedia = \"relay\"\n\
         [policy]\ndecision_deadline_ms = 1000\ndefault_queue = \"sip:q@127.0.0.1:5090\"\n",
        "relay",
    )
    .unwrap();
    let settings = Arc::new(CallSettings::from_profile(&profile, 5060));
    let src: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let local = "127.0.0.1:20000".parse().unwrap();
    let mut call = Call::new(settings, invite, src, local, t0).unwrap();
    ack_200(&mut call, "alloc-9", t0);
    let t = t0 + Duration::from_millis(1100);
    call.handle_timeout(t);
    let mut queue_invite = None;
    while let Some(o) = call.poll_output() {
        if let Output::Transmit(Transmit {
            socket: Socket::Sip { .. },
            payload,
            ..
        }) = o
        {
            if let Ok(Message::Request(r)) = parse_datagram(&payload) {
                queue_invite = Some(r);
            }
        }
    }
    let inv = queue_invite.expect("our INVITE to the queue");
    let offer = "v=0\r\no=q 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio 7000 RTP/AVP 96\r\na=rtpmap:96 PCMU/8000\r\n";
    let mut ok = inv.make_response(200, "OK");
    let to = format!("{};tag=q1", inv.headers.get("To").unwrap());
    ok.headers.set("To", to);
    ok.headers.push("Contact", "<sip:q@127.0.0.1:5090>");
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = offer.as_bytes().to_vec();
    call.handle_response(&ok, t);
    let mut asked = false;
    while let Some(o) = call.poll_output() {
        asked |= matches!(o, Output::RelayPort);
    }
    assert!(asked, "the relay port asked for");
    call.relay_port(Some("127.0.0.1:20002".parse().unwrap()), t);
    while call.poll_output().is_some() {}
    assert!(call.relaying());
    (call, t)
}

#[test]
fn relayed_packets_are_forwarded_without_allocating() {
    let t0 = Instant::now();
    let (mut call, t) = relaying_call(t0);
    let caller: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let queue: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let packet = |pt: u8, i: u32| {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&(i as u16).to_be_bytes());
        p.extend_from_slice(&(i * 160).to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    };
    let mut up: Vec<Vec<u8>> = (0..600).map(|i| packet(0, i)).collect();
    let mut down: Vec<Vec<u8>> = (0..600).map(|i| packet(96, i)).collect();
    let at = |i: usize| t + Duration::from_millis(20 * i as u64);
    let step = |call: &mut Call, i: usize, up: &mut [u8], down: &mut [u8]| {
        let to_queue = call.relay_rtp(RelaySide::Caller, up, caller, at(i));
        let to_caller = call.relay_rtp(RelaySide::Queue, down, queue, at(i));
        call.handle_timeout(at(i) + Duration::from_millis(5));
        while call.poll_output().is_some() {}
        assert_eq!((to_queue, to_caller), (Some(queue), Some(caller)));
        assert_eq!((up[1], down[1]), (96, 0), "payload types mapped");
    };
    for i in 0..50 {
        step(&mut call, i, &mut up[i], &mut down[i]);
    }
    let before = allocs();
    for i in 50..600 {
        step(&mut call, i, &mut up[i], &mut down[i]);
    }
    let during = allocs() - before;
    assert_eq!(during, 0, "{during} allocations for 550 packets each way");
}
