//! The per-packet path (RTP in → validate → decode → analyse → policy check)
//! must not allocate in steady state. A counting global allocator watches the
//! real `Call::handle_rtp` while a call is listening.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emonav::call::{Call, CallSettings};
use emonav::config::Profile;
use emonav::sip::message::{parse_datagram, Message};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
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
    let before = ALLOCS.load(Ordering::Relaxed);
    for (i, p) in packets[50..].iter().enumerate() {
        call.handle_rtp(p, t0 + Duration::from_millis(20 * i as u64));
        assert!(call.poll_output().is_none(), "no decision expected");
    }
    let during = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(during, 0, "{during} allocations for 550 packets");
    assert!(call.wants_media());
    assert!(
        call.estimate().speech_ms >= 10_000,
        "the audio was analysed: {:?}",
        call.estimate()
    );
}
