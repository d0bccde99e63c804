//! Fuzz targets: every way network bytes enter emonav, as functions of one
//! byte slice that must never panic. The same functions run under
//! libFuzzer (`fuzz/`, `cargo +nightly fuzz run NAME`) for long
//! coverage-guided runs, and under `tests/fuzz.rs` on stable in CI: the
//! committed corpus (`fuzz/corpus/NAME/`) and a time-bounded mutation loop.
//! docs/security.md ("Fuzzing") says what was run and found.
//!
//! Not part of the API: hidden from the documentation, for those two
//! harnesses only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emonav_sip::digest::{self, AuthKind, Authenticator};
use emonav_sip::message::{parse_datagram, Message};
use emonav_sip::transport::{Peer, StreamFramer, Transport};

use crate::call::{Call, CallSettings, Output, Socket, Transmit};
use crate::config::{Profile, SrtpMode};
use crate::endpoint::{Endpoint, Event, Registrations};
use crate::media::rtcp::Reporter;
use crate::media::rtp::RtpReceiver;
use crate::media::srtp::SrtpContext;
use crate::metrics::Metrics;
use crate::sdes::{MasterKey, Suite};
use crate::sdp::{self, CodecName};

/// A fuzz target: any bytes, never a panic.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: [(&str, Target); 6] = [
    ("sip_datagram", sip_datagram),
    ("sip_stream", sip_stream),
    ("sdp", sdp),
    ("rtp_rtcp", rtp_rtcp),
    ("digest", digest),
    ("endpoint", endpoint),
];

/// One UDP datagram through the SIP parser (RFC 3261 §7, §18.3); what
/// parses is serialised again (what we would forward or answer from it).
pub fn sip_datagram(data: &[u8]) {
    if let Ok(msg) = parse_datagram(data) {
        let _ = msg.to_bytes();
        if let Message::Request(r) = &msg {
            let _ = r.make_response(400, "Bad Request").to_bytes();
            let _ = (r.top_via(), r.cseq(), r.from(), r.to(), r.call_id());
        }
    }
}

/// A TCP byte stream (RFC 3261 §18.3 framing by Content-Length), cut into
/// reads where the input says: each read's length is the next byte.
pub fn sip_stream(data: &[u8]) {
    let mut framer = StreamFramer::new(16 * 1024);
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        framer.push(&tail[..n]);
        rest = &tail[n..];
        // A framing error closes the connection: the stream ends there.
        loop {
            match framer.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// An SDP body (RFC 8866) negotiated as an offer under each SRTP mode
/// (RFC 3264, RFC 4568), answered, and our re-offer built from it.
pub fn sdp(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = sdp::parse(text) else {
        return;
    };
    let local: SocketAddr = "192.0.2.1:20000".parse().expect("static address");
    let codecs = [CodecName::Pcmu, CodecName::Pcma, CodecName::Opus];
    for mode in [SrtpMode::Off, SrtpMode::Optional, SrtpMode::Required] {
        if let Ok(neg) = sdp::negotiate(&offer, &codecs, mode) {
            let _ = sdp::answer(&offer, &neg, local, 1, 1);
            let _ = sdp::offer(&neg, local, 1, 2);
            let _ = neg.is_hold();
        }
    }
}

/// A media datagram: RTP (RFC 3550, RFC 4733 events) through the
/// receiver, RTCP through the report parser, and both through SRTP's
/// checks (RFC 3711) before.
pub fn rtp_rtcp(data: &[u8]) {
    let now = Instant::now();
    let mut rx = RtpReceiver::new(0, Some(101));
    let _ = rx.handle(data);
    rx.handle_rtcp_port(data);
    let mut reporter = Reporter::new(1, "fuzz@emonav", 8000, now);
    let _ = reporter.on_rtcp(data, now);
    let key = MasterKey::from_bytes([7; crate::sdes::MASTER_LEN]);
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
        if let Ok(mut s) = SrtpContext::new(suite, &key, &key) {
            let _ = s.unprotect_rtp(data);
            let _ = s.unprotect_rtcp(data);
            let _ = s.protect_rtp(data);
            let _ = s.protect_rtcp(data);
        }
    }
}

/// A Digest challenge header value (RFC 7616, RFC 8760), and if one
/// parses, our answer to it.
pub fn digest(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let all = digest::Challenge::parse_all(value);
    let offered: Vec<_> = all.into_iter().flatten().collect();
    for c in offered {
        let mut auth = Authenticator::new(AuthKind::Www, c.clone());
        let _ = auth.authorization_with_cnonce("user", "secret", "INVITE", "sip:q@x", b"", "0a1b");
        auth.rechallenge(c);
        let _ = auth.authorization_with_cnonce("user", "secret", "REFER", "sip:q@x", b"v=0", "2c");
    }
}

/// Separates the steps of an [`endpoint`] input.
pub const STEP: &[u8] = b"\n--step--\n";

/// The sans-IO endpoint and the calls it starts, fed a sequence of steps
/// separated by [`STEP`]: `RTP:`/`RTCP:` + bytes to the first call's media,
/// `WAIT:<ms>` to let time pass (timers fire), `ACK` (the first call's
/// last 2xx acknowledged), `REPLY:<code>` (its last request answered),
/// `NOTIFY:<sipfrag status line>` (a NOTIFY in its dialog), anything else
/// a SIP datagram from the caller's address. The three built steps carry
/// the dialog's tags, which a fuzzer cannot guess. Calls run with SRTP optional and a short
/// decision deadline, so that REFERs, transfers and BYEs happen too.
pub fn endpoint(data: &[u8]) {
    let _ = run_endpoint(data);
}

/// [`endpoint`], returning how many calls started and how many outputs
/// they gave (to check that the seeds reach the calls at all).
fn run_endpoint(data: &[u8]) -> (usize, usize) {
    let mut outputs = 0;
    // Tags, branches and SSRCs from a fixed seed: an input replays alike.
    fastrand::seed(0x656d_6f6e_6176);
    let mut profile = Profile::default();
    profile.media.srtp = SrtpMode::Optional;
    profile.policy.decision_deadline_ms = 500;
    profile.policy.min_speech_ms = 100;
    let settings = Arc::new(CallSettings::from_profile(&profile, 5060));
    let mut ep: Endpoint<usize> = Endpoint::new(
        "emonav-fuzz".into(),
        90,
        Registrations::default(),
        Arc::new(Metrics::default()),
    );
    let mut calls: Vec<Call> = Vec::new();
    let t0 = Instant::now();
    let mut now = t0;
    let peer = Peer {
        addr: "127.0.0.1:5070".parse().expect("static address"),
        transport: Transport::Udp,
    };
    let media_src: Option<SocketAddr> = "127.0.0.1:40000".parse().ok();
    let local_rtp: SocketAddr = "127.0.0.1:20000".parse().expect("static address");
    let mut seen = Seen::default();
    let mut notify_cseq = 10;
    for step in split(data, STEP) {
        now += Duration::from_millis(20);
        let built = if step == b"ACK" {
            seen.ack()
        } else if let Some(code) = step.strip_prefix(b"REPLY:") {
            seen.reply(code)
        } else if let Some(frag) = step.strip_prefix(b"NOTIFY:") {
            notify_cseq += 1;
            seen.notify(frag, notify_cseq)
        } else {
            None
        };
        let step = built.as_deref().unwrap_or(step);
        if let Some(p) = step.strip_prefix(b"RTP:") {
            if let Some(c) = calls.first_mut() {
                c.handle_rtp_from(p, media_src, now);
            }
        } else if let Some(p) = step.strip_prefix(b"RTCP:") {
            if let Some(c) = calls.first_mut() {
                c.handle_rtcp(p, media_src, now);
            }
        } else if let Some(ms) = step.strip_prefix(b"WAIT:") {
            let ms: u64 = std::str::from_utf8(ms)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1000);
            now += Duration::from_millis(ms.min(120_000));
        } else {
            match ep.handle_datagram(step, peer.addr, now) {
                Some(Event::NewCall {
                    call_id,
                    invite,
                    peer,
                }) if calls.len() < 8 => {
                    if let Ok(c) = Call::new(settings.clone(), invite, peer.addr, local_rtp, now) {
                        ep.insert_call(call_id, calls.len());
                        calls.push(c);
                    }
                }
                Some(Event::ToCall {
                    handle, msg, peer, ..
                }) => {
                    if let Some(c) = calls.get_mut(handle) {
                        match msg {
                            Message::Request(r) => c.handle_request(&r, peer, now),
                            Message::Response(r) => c.handle_response(&r, now),
                        }
                    }
                }
                _ => {}
            }
        }
        for c in &mut calls {
            for _ in 0..1000 {
                if c.poll_timeout().is_none_or(|t| t > now) {
                    break;
                }
                c.handle_timeout(now);
                outputs += drain(c, &mut seen);
            }
            outputs += drain(c, &mut seen);
            let _ = (c.is_finished(), c.wants_media(), c.estimate());
        }
    }
    (calls.len(), outputs)
}

/// What the calls sent, for the built steps.
#[derive(Default)]
struct Seen {
    /// Call-ID and To of the last 2xx to an INVITE.
    ok: Option<(String, String)>,
    /// The last request a call sent.
    request: Option<emonav_sip::message::Request>,
}

impl Seen {
    fn ack(&self) -> Option<Vec<u8>> {
        let (call_id, to) = self.ok.as_ref()?;
        Some(
            format!(
                "ACK sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfuzzack\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
                 CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes(),
        )
    }

    fn reply(&self, code: &[u8]) -> Option<Vec<u8>> {
        let req = self.request.as_ref()?;
        let code: u16 = std::str::from_utf8(code).ok()?.trim().parse().ok()?;
        let mut resp = req.make_response(code.clamp(100, 699), "Fuzz");
        if resp.to().is_some_and(|t| t.tag().is_none()) {
            let to = resp.headers.get("To").unwrap_or_default().to_string();
            resp.headers.set("To", format!("{to};tag=fz"));
        }
        Some(resp.to_bytes())
    }

    fn notify(&self, frag: &[u8], cseq: u32) -> Option<Vec<u8>> {
        let (call_id, to) = self.ok.as_ref()?;
        let frag = String::from_utf8_lossy(frag);
        // The caller's NOTIFY: its From is the dialog's remote end (our To).
        Some(
            format!(
                "NOTIFY sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfuzzn{cseq}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
                 CSeq: {cseq} NOTIFY\r\nEvent: refer\r\nSubscription-State: active\r\n\
                 Content-Type: message/sipfrag;version=2.0\r\nContent-Length: {}\r\n\r\n{frag}",
                frag.len()
            )
            .into_bytes(),
        )
    }

    fn saw(&mut self, payload: &[u8]) {
        match parse_datagram(payload) {
            Ok(Message::Response(r))
                if (200..300).contains(&r.code)
                    && r.cseq().is_some_and(|c| c.method.as_str() == "INVITE") =>
            {
                let to = r.headers.get("To").unwrap_or_default().to_string();
                let call_id = r.call_id().unwrap_or_default().to_string();
                self.ok = Some((call_id, to));
            }
            Ok(Message::Request(r)) => self.request = Some(r),
            _ => {}
        }
    }
}

fn drain(c: &mut Call, seen: &mut Seen) -> usize {
    let mut n = 0;
    // A call that never stops producing output at one instant is a bug;
    // the bound keeps the harness from hanging on it.
    while let Some(o) = c.poll_output() {
        if let Output::Transmit(Transmit {
            socket: Socket::Sip { .. },
            payload,
            ..
        }) = o
        {
            seen.saw(&payload);
        }
        n += 1;
        assert!(n < 10_000, "a call produces output without end");
    }
    n
}

fn split<'a>(data: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                rest = Some(&r[i + sep.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The endpoint seeds start calls that answer, send media and end.
    #[test]
    fn endpoint_seeds_reach_the_calls() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/endpoint");
        for name in ["call_rtp_wait_bye", "savp_call", "reinvite_refer_declined"] {
            let seed = std::fs::read(dir.join(name)).unwrap();
            let (calls, outputs) = run_endpoint(&seed);
            assert_eq!(calls, 1, "{name}");
            // 100, 200, our RTP and RTCP, REFER, BYE…
            assert!(outputs > 10, "{name}: {outputs} outputs");
        }
    }
}
