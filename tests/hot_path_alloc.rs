//! The per-packet path (RTP in → validate → decode → analyse → policy check)
//! must not allocate in steady state. A counting global allocator watches the
//! real `Call::handle_rtp` while a call is listening. The count is per
//! thread so that the tests, which the harness runs in parallel, do not see
//! each other's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emonav::call::{Call, CallSettings};
use emonav::config::Profile;
use emonav::sip::message::{parse_datagram, Message};

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

fn request(text: &str) -> emonav::sip::message::Request {
    match parse_datagram(text.as_bytes()).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!(),
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
    while call.poll_output().is_some() {}

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
    // Warm up: the first packets set up the stream state.
    for p in &packets[..50] {
        call.handle_rtp(p, t0);
    }
    let before = allocs();
    for (i, p) in packets[50..].iter().enumerate() {
        call.handle_rtp(p, t0 + Duration::from_millis(20 * i as u64));
        assert!(call.poll_output().is_none(), "no decision expected");
    }
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
    profile.media.codecs = vec![emonav::sdp::CodecName::Opus];
    profile.policy.decision_deadline_ms = 60_000;
    profile.policy.min_speech_ms = 60_000;
    let settings = Arc::new(CallSettings::from_profile(&profile, 5060));
    let t0 = Instant::now();
    let src: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let local = "127.0.0.1:20000".parse().unwrap();
    let mut call = Call::new(settings, invite, src, local, t0).unwrap();
    while call.poll_output().is_some() {}

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
    for p in &packets[..50] {
        call.handle_rtp(p, t0);
    }
    let before = allocs();
    for (i, p) in packets[50..].iter().enumerate() {
        call.handle_rtp(p, t0 + Duration::from_millis(20 * i as u64));
        assert!(call.poll_output().is_none(), "no decision expected");
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
