//! Our side of a sendrecv stream: 20 ms RTP packets of silence, so that a
//! PBX or SBC with an RTP-inactivity timer does not hang the call up while
//! we only listen. G.711 carries digital silence (μ-law 0xFF, A-law 0xD5);
//! Opus carries the 3-byte CELT silence frame (TOC 0xF8: fullband, 20 ms,
//! mono, one frame) that WebRTC stacks send for muted audio. Our own random
//! SSRC, sequence and timestamp start (RFC 3550 §5.1), sequence +1 and
//! timestamp +1 frame per packet; if the task wakes late the timestamp
//! follows the wall clock, the sequence stays contiguous.
//!
//! A PBX's RTP-inactivity timer counts seconds (Asterisk's `rtptimeout`,
//! FreeSWITCH's `media_timeout`), so 50 packets a second is far more than it
//! needs: `[media] keepalive_interval_ms` sends one packet per interval
//! instead, as a discontinuous-transmission sender does (the timestamp jumps
//! with the wall clock, the sequence stays contiguous, the marker bit opens
//! each packet after a gap, RFC 3551 §4.1), at 1/N of the cost. The failure
//! tone is always a continuous 20 ms stream.
//!
//! Sans-IO and allocation-free per packet: [`poll`](SilenceSender::poll)
//! fills a buffer allocated once.

use std::time::{Duration, Instant};

use crate::media::tone::Tone;
use crate::sdp::CodecName;

/// Packet interval.
pub(crate) const PTIME: Duration = Duration::from_millis(20);
/// One 20 ms Opus frame of silence (RFC 6716 §3.1 TOC config 31, code 0).
pub(crate) const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
/// Packets sent at most at once when the task woke late; older slots are skipped.
const MAX_BURST: u32 = 3;

/// Generator of our silence stream.
#[derive(Debug)]
pub(crate) struct SilenceSender {
    buf: Box<[u8; 12 + 160]>,
    len: usize,
    seq: u16,
    ts: u32,
    /// Timestamp units per packet.
    step: u32,
    next_at: Instant,
    sent: u64,
    codec: CodecName,
    /// The failure tone in place of silence, once started.
    tone: Option<Tone>,
    /// Time between silence packets (a multiple of [`PTIME`]).
    interval: Duration,
    /// The next packet comes after a gap (RFC 3551 §4.1: mark it).
    after_gap: bool,
}

impl SilenceSender {
    /// A stream of payload type `pt` for `codec`, first packet at `start`.
    #[cfg(test)]
    pub(crate) fn new(codec: CodecName, pt: u8, start: Instant) -> Self {
        Self::with_ssrc(codec, pt, start, fastrand::u32(..), PTIME)
    }

    /// [`SilenceSender::new`] with our SSRC chosen by the caller (the one
    /// our RTCP reports carry too) and one silence packet per `interval`
    /// (rounded down to a multiple of 20 ms, at least 20 ms).
    pub(crate) fn with_ssrc(
        codec: CodecName,
        pt: u8,
        start: Instant,
        ssrc: u32,
        interval: Duration,
    ) -> Self {
        let frames = (interval.as_millis() / PTIME.as_millis()).max(1) as u32;
        let (payload, step): (&[u8], u32) = match codec {
            CodecName::Pcmu => (&[0xFF; 160], 160),
            CodecName::Pcma => (&[0xD5; 160], 160),
            CodecName::Opus => (&OPUS_SILENCE, 960),
        };
        let mut buf = Box::new([0u8; 12 + 160]);
        buf[0] = 0x80;
        buf[1] = pt & 0x7F;
        buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
        buf[12..12 + payload.len()].copy_from_slice(payload);
        Self {
            buf,
            len: 12 + payload.len(),
            seq: fastrand::u16(..),
            ts: fastrand::u32(..),
            step,
            next_at: start,
            sent: 0,
            codec,
            tone: None,
            interval: PTIME * frames,
            after_gap: false,
        }
    }

    /// From the next packet on, the congestion tone instead of silence
    /// (see [`Tone`]); idempotent.
    pub(crate) fn start_tone(&mut self) {
        if self.tone.is_none() {
            self.tone = Tone::new(self.codec);
            if self.tone.is_some() && self.after_gap {
                // Pull the pending gap in to one frame: the tone follows
                // the last silence packet at once, not an interval later.
                let extra = self.interval - PTIME;
                let frames = (extra.as_millis() / PTIME.as_millis()) as u32;
                self.next_at -= extra;
                self.ts = self.ts.wrapping_sub(frames * self.step);
                self.after_gap = false;
            }
        }
    }

    /// When the next packet is due.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next_at
    }

    /// Packets sent so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// The RTP timestamp of instant `now` on our stream's clock, with the
    /// packets and payload octets sent so far: a sender report's sender info
    /// (RFC 3550 §6.4.1). The next packet's timestamp belongs to its due time.
    pub(crate) fn stream_position(&self, now: Instant) -> (u32, u32, u32) {
        let ahead = self.next_at.saturating_duration_since(now).as_micros() as u64;
        // `step` timestamp units per 20 ms packet.
        let units = ahead * self.step as u64 / PTIME.as_micros() as u64;
        let ts = self.ts.wrapping_sub(units as u32);
        let payload = (self.len - 12) as u64;
        (ts, self.sent as u32, (self.sent * payload) as u32)
    }

    /// The next packet if one is due at `now`; call until None.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<&[u8]> {
        if now < self.next_at {
            return None;
        }
        let behind = ((now - self.next_at).as_micros() / PTIME.as_micros()) as u32;
        if behind >= MAX_BURST {
            // Woke very late: skip the missed slots (the timestamp keeps the
            // wall clock, the sequence stays contiguous: nothing was lost).
            let skip = behind - MAX_BURST + 1;
            self.ts = self.ts.wrapping_add(skip * self.step);
            self.next_at += PTIME * skip;
        }
        if let Some(t) = &mut self.tone {
            if let Some(n) = t.frame(&mut self.buf[12..]) {
                self.len = 12 + n;
            }
        }
        // A tone is a continuous stream; silence goes once per interval.
        let interval = if self.tone.is_some() {
            PTIME
        } else {
            self.interval
        };
        self.buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        self.buf[4..8].copy_from_slice(&self.ts.to_be_bytes());
        // Marker on the first packet of the stream and on each one after a
        // gap in a sparse stream (RFC 3551 §4.1: the start of a talkspurt).
        let marker = self.sent == 0 || self.after_gap;
        self.buf[1] = (self.buf[1] & 0x7F) | if marker { 0x80 } else { 0 };
        self.after_gap = interval > PTIME;
        let frames = (interval.as_millis() / PTIME.as_millis()) as u32;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(self.step * frames);
        self.next_at += interval;
        self.sent += 1;
        Some(&self.buf[..self.len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::opus::{OpusDecoder, MAX_PACKET_SAMPLES};

    fn header(p: &[u8]) -> (u8, u16, u32) {
        let r = rtp_rs::RtpReader::new(p).unwrap();
        (r.payload_type(), r.sequence_number().into(), r.timestamp())
    }

    #[test]
    fn pcmu_packets_every_20_ms_with_contiguous_sequence_and_timestamps() {
        let t0 = Instant::now();
        let mut s = SilenceSender::new(CodecName::Pcmu, 0, t0);
        let first = s.poll(t0).unwrap().to_vec();
        assert_eq!(first.len(), 172);
        assert!(first[12..].iter().all(|&b| b == 0xFF));
        assert_eq!(first[1] & 0x80, 0x80, "marker on the first packet");
        assert!(s.poll(t0).is_none());
        assert_eq!(s.poll_timeout(), t0 + PTIME);
        let second = s.poll(t0 + PTIME).unwrap().to_vec();
        let (h1, h2) = (header(&first), header(&second));
        assert_eq!((h1.0, h2.0), (0, 0));
        assert_eq!(h2.1, h1.1.wrapping_add(1));
        assert_eq!(h2.2, h1.2.wrapping_add(160));
        assert_eq!(second[8..12], first[8..12], "one SSRC");
        // A 1 s stall: at most a short burst, the timestamp follows the clock.
        let late = t0 + Duration::from_millis(1040);
        let mut burst = vec![];
        while let Some(p) = s.poll(late) {
            burst.push(header(p));
        }
        assert_eq!(burst.len(), MAX_BURST as usize);
        assert_eq!(burst[0].1, h2.1.wrapping_add(1));
        assert_eq!(burst.last().unwrap().2, h1.2.wrapping_add(52 * 160));
        assert_eq!(s.sent(), 2 + MAX_BURST as u64);
    }

    #[test]
    fn a_sparse_keepalive_sends_one_packet_per_interval_on_the_wall_clock() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut s = SilenceSender::with_ssrc(CodecName::Pcma, 8, t0, 7, second);
        let mut sent = vec![];
        let mut now = t0;
        // Ten seconds polled every 20 ms, as the call's media task wakes.
        while now < t0 + 10 * second {
            while let Some(p) = s.poll(now) {
                sent.push((now, header(p), p[1] & 0x80 != 0));
            }
            now += PTIME;
        }
        assert_eq!(sent.len(), 10, "one packet a second, not 500");
        for w in sent.windows(2) {
            let ((t1, h1, _), (t2, h2, m2)) = (w[0], w[1]);
            assert_eq!(t2 - t1, second);
            assert_eq!(h2.1, h1.1.wrapping_add(1), "sequence contiguous");
            assert_eq!(h2.2, h1.2.wrapping_add(8000), "timestamp follows the clock");
            assert!(m2, "each packet after a gap is marked");
        }
        // The failure tone follows the last silence packet at once and is
        // a continuous, unmarked stream whatever the interval.
        let last = header(s.poll(now).unwrap());
        s.start_tone();
        assert_eq!(s.poll_timeout(), now + PTIME);
        for k in 1..=3u32 {
            let p = s.poll(now + PTIME * k).unwrap();
            assert_eq!(p[1] & 0x80, 0, "a continuous tone is not marked");
            let h = header(p);
            assert_eq!(h.1, last.1.wrapping_add(k as u16));
            assert_eq!(h.2, last.2.wrapping_add(160 * k));
        }
    }

    #[test]
    fn opus_silence_frame_decodes_to_20_ms_of_silence() {
        let t0 = Instant::now();
        let mut s = SilenceSender::new(CodecName::Opus, 111, t0);
        let p = s.poll(t0).unwrap().to_vec();
        let p2 = s.poll(t0 + PTIME).unwrap().to_vec();
        assert_eq!(header(&p2).2, header(&p).2.wrapping_add(960));
        assert_eq!(header(&p).0, 111);
        let mut dec = OpusDecoder::new(16_000).unwrap();
        let mut out = [0i16; MAX_PACKET_SAMPLES];
        let n = dec.decode(&p[12..], &mut out).unwrap();
        assert_eq!(n, 320);
        assert!(out[..n].iter().all(|&x| x.abs() < 4));
        let a = SilenceSender::new(CodecName::Pcma, 8, t0).poll(t0).unwrap()[12];
        assert_eq!(a, 0xD5);
    }
}
