//! RTCP reports (RFC 3550 §6.4: a sender report while we send media, a
//! receiver report otherwise; §6.4.1 for the caller's SR timestamps,
//! Appendix A.3 for the loss figures and A.8 for the interarrival jitter),
//! sent every 5 s randomised to 0.5–1.5× (§6.3.1) while media flows: a
//! compound packet, SR or RR with one report block for the latched source,
//! followed by SDES CNAME (§6.1). Where it goes is the call's
//! business: the RTP address with rtcp-mux (RFC 5761), else the SDP's
//! `a=rtcp` (RFC 3605), else the RTP port + 1.
//!
//! Sans-IO and allocation-free per packet: [`Reporter::on_rtp`] and
//! [`Reporter::on_rtcp`] only update a few integers; [`Reporter::poll`]
//! fills a buffer allocated once.

use std::time::{Duration, Instant};

/// Nominal report interval (§6.2 minimum for a two-party session).
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);

/// RR (8 + one 24-byte report block), then SDES with a CNAME of at most 255 bytes.
const RR_LEN: usize = 32;
/// SR header (28 bytes) and one report block (24).
const SR_LEN: usize = 52;
/// Where an RR starts in the buffer: it ends where an SR would, so that the
/// report block and the SDES after it sit at one place for both.
const RR_AT: usize = SR_LEN - RR_LEN;
/// Room for the longest SR + SDES, and a BYE (8 bytes) after them.
const BUF_LEN: usize = SR_LEN + 8 + 2 + 255 + 4 + 8;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// What the receiver knows of the reported source (RFC 3550 A.1/A.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reception {
    /// SSRC of the source.
    pub ssrc: u32,
    /// Extended highest sequence number received (cycles << 16 | max_seq).
    pub extended_max: u32,
    /// Packets expected (extended_max - base_seq + 1).
    pub expected: u64,
    /// Packets received (duplicates excluded).
    pub received: u64,
}

/// The last sender report of a source: its NTP timestamp's middle 32 bits
/// and when it arrived (for LSR and DLSR, §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastSr {
    /// Source that sent it.
    pub ssrc: u32,
    /// Middle 32 bits of its NTP timestamp.
    pub lsr: u32,
    /// Arrival time.
    pub at: Instant,
}

/// Interarrival jitter (Appendix A.8), in RTP timestamp units × 16.
#[derive(Debug, Clone, Copy)]
struct Jitter {
    epoch: Instant,
    clock_rate: u32,
    /// (SSRC, last transit time).
    transit: Option<(u32, u32)>,
    scaled: u32,
}

impl Jitter {
    fn update(&mut self, ssrc: u32, ts: u32, now: Instant) {
        let micros = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let arrival = (micros * self.clock_rate as u64 / 1_000_000) as u32;
        let transit = arrival.wrapping_sub(ts);
        match self.transit {
            Some((s, prev)) if s == ssrc => {
                let d = (transit.wrapping_sub(prev) as i32).unsigned_abs();
                // J += (|D| - J) / 16, in integers scaled by 16 (A.8).
                self.scaled = self
                    .scaled
                    .wrapping_add(d)
                    .wrapping_sub((self.scaled + 8) >> 4);
            }
            // A new source starts its own estimate.
            _ => self.scaled = 0,
        }
        self.transit = Some((ssrc, transit));
    }
}

/// The receiver-report side of one call's RTP session.
#[derive(Debug)]
pub(crate) struct Reporter {
    buf: Box<[u8; BUF_LEN]>,
    len: usize,
    rng: fastrand::Rng,
    next_at: Option<Instant>,
    /// (SSRC, expected, received) at the last report (A.3 interval figures).
    prior: Option<(u32, u64, u64)>,
    sr: Option<LastSr>,
    jitter: Jitter,
    sent: u64,
    said_bye: bool,
}

impl Reporter {
    /// Reports from our `ssrc` with `cname` (truncated to 255 bytes), for a
    /// stream of `clock_rate` Hz; `now` is the jitter's time origin.
    pub(crate) fn new(ssrc: u32, cname: &str, clock_rate: u32, now: Instant) -> Self {
        let mut buf = Box::new([0u8; BUF_LEN]);
        // RR header: V=2, RC=1, PT=201, length 7 words; our SSRC. An SR
        // (§6.4.1) is written over it at the front when we send media.
        buf[RR_AT..RR_AT + 4].copy_from_slice(&[0x81, 201, 0, 7]);
        buf[RR_AT + 4..RR_AT + 8].copy_from_slice(&ssrc.to_be_bytes());
        buf[..4].copy_from_slice(&[0x81, 200, 0, 12]);
        buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
        // SDES: one chunk, CNAME item, null-terminated and padded to 32 bits.
        let cname = &cname.as_bytes()[..cname.len().min(255)];
        let items = (2 + cname.len() + 4) & !3;
        let words = (4 + 4 + items) / 4 - 1;
        let s = &mut buf[SR_LEN..];
        s[..2].copy_from_slice(&[0x81, 202]);
        s[2..4].copy_from_slice(&(words as u16).to_be_bytes());
        s[4..8].copy_from_slice(&ssrc.to_be_bytes());
        s[8] = 1;
        s[9] = cname.len() as u8;
        s[10..10 + cname.len()].copy_from_slice(cname);
        Self {
            len: SR_LEN + 8 + items,
            buf,
            rng: fastrand::Rng::new(),
            next_at: None,
            prior: None,
            sr: None,
            jitter: Jitter {
                epoch: now,
                clock_rate,
                transit: None,
                scaled: 0,
            },
            sent: 0,
            said_bye: false,
        }
    }

    #[cfg(test)]
    /// Deterministic randomisation of the interval, for tests.
    pub(crate) fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// Reports sent.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Interarrival jitter in timestamp units (A.8).
    pub(crate) fn jitter(&self) -> u32 {
        self.jitter.scaled >> 4
    }

    #[cfg(test)]
    /// The last sender report taken into account.
    pub(crate) fn last_sr(&self) -> Option<LastSr> {
        self.sr
    }

    /// A new codec clock: the jitter estimate starts over.
    pub(crate) fn set_clock_rate(&mut self, clock_rate: u32) {
        if clock_rate != self.jitter.clock_rate {
            self.jitter.clock_rate = clock_rate;
            self.jitter.transit = None;
            self.jitter.scaled = 0;
        }
    }

    /// An accepted audio packet (not telephone-events, whose timestamp is
    /// the event's start) of `ssrc` with RTP timestamp `ts` arrived at `now`.
    /// The first one starts the report schedule (half an interval, §6.2).
    pub(crate) fn on_rtp(&mut self, ssrc: u32, ts: u32, now: Instant) {
        self.jitter.update(ssrc, ts, now);
        if self.next_at.is_none() {
            let first = if self.sent == 0 {
                INTERVAL / 2
            } else {
                INTERVAL
            };
            self.next_at = Some(now + self.randomised(first));
        }
    }

    fn randomised(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.5 + self.rng.f64())
    }

    /// A (compound) RTCP packet from the peer: a sender report's NTP
    /// timestamp is remembered for LSR/DLSR. Malformed input is ignored.
    /// True when it held a sender report.
    pub(crate) fn on_rtcp(&mut self, datagram: &[u8], now: Instant) -> bool {
        let mut rest = datagram;
        let mut found = false;
        while rest.len() >= 4 && rest[0] >> 6 == 2 {
            let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
            if len > rest.len() {
                break;
            }
            let p = &rest[..len];
            if p[1] == 200 && len >= 28 {
                let word = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
                let (ntp_sec, ntp_frac) = (word(8), word(12));
                self.sr = Some(LastSr {
                    ssrc: word(4),
                    lsr: (ntp_sec << 16) | (ntp_frac >> 16),
                    at: now,
                });
                found = true;
            }
            rest = &rest[len..];
        }
        found
    }

    /// When the next report is due (None while no media flows).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.next_at
    }

    /// The compound report if one is due at `now`, for the source the
    /// receiver follows. No report (and the schedule stops until the next
    /// packet) when nothing was received since the last one.
    /// With `sending` (we are an active sender, §6.4) the report is a sender
    /// report carrying it; otherwise a receiver report.
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        rx: Option<Reception>,
        sending: Option<SenderInfo>,
    ) -> Option<&[u8]> {
        if self.said_bye || self.next_at.is_none_or(|t| now < t) {
            return None;
        }
        let Some(rx) = rx else {
            self.next_at = None;
            return None;
        };
        let (prior_expected, prior_received) = match self.prior {
            Some((ssrc, e, r)) if ssrc == rx.ssrc => (e, r),
            _ => (0, 0),
        };
        if self.sent > 0 && rx.received == prior_received && self.prior.is_some() {
            self.next_at = None;
            return None;
        }
        let next = self.randomised(INTERVAL);
        self.next_at = Some(now + next);
        // A.3: interval and cumulative loss.
        let expected_interval = rx.expected.saturating_sub(prior_expected);
        let received_interval = rx.received.saturating_sub(prior_received);
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let lost = (rx.expected as i64 - rx.received as i64).clamp(-0x80_0000, 0x7f_ffff) as i32;
        self.prior = Some((rx.ssrc, rx.expected, rx.received));
        let (lsr, dlsr) = match self.sr {
            Some(sr) if sr.ssrc == rx.ssrc => {
                let since = now.saturating_duration_since(sr.at);
                let dlsr = (since.as_micros() as u64 * 65_536 / 1_000_000).min(u32::MAX as u64);
                (sr.lsr, dlsr as u32)
            }
            _ => (0, 0),
        };
        let jitter = self.jitter();
        let b = &mut self.buf[28..SR_LEN];
        b[..4].copy_from_slice(&rx.ssrc.to_be_bytes());
        b[4..8]
            .copy_from_slice(&((fraction as u32) << 24 | (lost as u32 & 0xff_ffff)).to_be_bytes());
        b[8..12].copy_from_slice(&rx.extended_max.to_be_bytes());
        b[12..16].copy_from_slice(&jitter.to_be_bytes());
        b[16..20].copy_from_slice(&lsr.to_be_bytes());
        b[20..24].copy_from_slice(&dlsr.to_be_bytes());
        self.sent += 1;
        let start = match sending {
            Some(info) => {
                self.buf[8..16].copy_from_slice(&info.ntp.to_be_bytes());
                self.buf[16..20].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
                self.buf[20..24].copy_from_slice(&info.packets.to_be_bytes());
                self.buf[24..28].copy_from_slice(&info.octets.to_be_bytes());
                0
            }
            None => RR_AT,
        };
        Some(&self.buf[start..self.len])
    }
}

impl Reporter {
    /// The compound packet that ends our part in the session (§6.3.7): an
    /// empty RR, our SDES CNAME and a BYE for our SSRC, once. `None` when we
    /// never reported (a peer that never heard from us needs no goodbye) or
    /// already said it. No report follows.
    pub(crate) fn bye(&mut self) -> Option<&[u8]> {
        if self.sent == 0 || self.said_bye {
            return None;
        }
        self.said_bye = true;
        self.next_at = None;
        let ssrc = [self.buf[4], self.buf[5], self.buf[6], self.buf[7]];
        // The empty RR goes right before the SDES (which starts at SR_LEN),
        // over the report block no longer needed; the BYE goes after it.
        let rr = SR_LEN - 8;
        self.buf[rr..rr + 4].copy_from_slice(&[0x80, 201, 0, 1]);
        self.buf[rr + 4..SR_LEN].copy_from_slice(&ssrc);
        let end = self.len;
        self.buf[end..end + 4].copy_from_slice(&[0x81, 203, 0, 1]);
        self.buf[end + 4..end + 8].copy_from_slice(&ssrc);
        Some(&self.buf[rr..end + 8])
    }
}

/// What a sender report says about our own stream (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SenderInfo {
    /// Wall-clock time of the report, 64-bit NTP format.
    pub ntp: u64,
    /// Our RTP timestamp for that same instant.
    pub rtp_timestamp: u32,
    /// RTP packets we have sent.
    pub packets: u32,
    /// Payload octets we have sent.
    pub octets: u32,
}

/// 64-bit NTP time (seconds since 1900 in the high word, fraction in the low)
/// of a wall-clock time.
pub(crate) fn ntp_time(t: std::time::SystemTime) -> u64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::RtpReceiver;

    const MS: Duration = Duration::from_millis(1);

    fn rtp(seq: u16) -> Vec<u8> {
        rtp_rs::RtpPacketBuilder::new()
            .payload_type(0)
            .ssrc(0xCAFE)
            .sequence(seq.into())
            .timestamp(seq as u32 * 160)
            .payload(&[0xff; 160])
            .build()
            .unwrap()
    }

    #[test]
    fn receiver_report_is_byte_exact() {
        let t0 = Instant::now();
        let mut r = Reporter::new(0x0102_0304, "abc", 8000, t0).with_seed(1);
        // An SR from the source: NTP 0x11223344.55667788 → LSR 0x33445566.
        let sr = [
            0x80, 200, 0, 6, 0xA0, 0xA1, 0xA2, 0xA3, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
            0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        r.on_rtp(0xA0A1_A2A3, 0, t0);
        let due = r.poll_timeout().unwrap();
        assert!(due >= t0 + 1250 * MS && due <= t0 + 3750 * MS, "{due:?}");
        assert!(r.poll(due - MS, None, None).is_none());
        assert!(r.on_rtcp(&sr, due - 1500 * MS));
        let rx = Reception {
            ssrc: 0xA0A1_A2A3,
            extended_max: 0x0001_0005,
            expected: 100,
            received: 90,
        };
        // Exactly 1.5 s after the SR: DLSR 1.5 × 65536 = 0x18000.
        let p = r.poll(due, Some(rx), None).unwrap().to_vec();
        #[rustfmt::skip]
        let want = [
            // RR: V=2 RC=1, PT 201, length 7, our SSRC.
            0x81, 201, 0, 7, 0x01, 0x02, 0x03, 0x04,
            // Report block: source, fraction 10/100 × 256 = 25, cumulative 10,
            0xA0, 0xA1, 0xA2, 0xA3, 25, 0, 0, 10,
            // extended highest sequence, jitter 0, LSR, DLSR.
            0x00, 0x01, 0x00, 0x05, 0, 0, 0, 0,
            0x33, 0x44, 0x55, 0x66, 0x00, 0x01, 0x80, 0x00,
            // SDES: V=2 SC=1, PT 202, length 3, our SSRC, CNAME "abc", one null.
            0x81, 202, 0, 3, 0x01, 0x02, 0x03, 0x04,
            1, 3, b'a', b'b', b'c', 0, 0, 0,
        ];
        assert_eq!(p, want);
        // Another interval with no packets: no report, the schedule stops.
        let next = r.poll_timeout().unwrap();
        assert!(r.poll(next, Some(rx), None).is_none());
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.sent(), 1);
    }

    #[test]
    fn sender_report_when_we_send_media() {
        let t0 = Instant::now();
        let mut r = Reporter::new(0x0102_0304, "abc", 8000, t0).with_seed(1);
        r.on_rtp(0xA0A1_A2A3, 0, t0);
        let due = r.poll_timeout().unwrap();
        let rx = Reception {
            ssrc: 0xA0A1_A2A3,
            extended_max: 7,
            expected: 8,
            received: 8,
        };
        let info = SenderInfo {
            ntp: 0xE000_0001_8000_0000,
            rtp_timestamp: 0x0000_1F40,
            packets: 50,
            octets: 8000,
        };
        let p = r.poll(due, Some(rx), Some(info)).unwrap().to_vec();
        #[rustfmt::skip]
        let want = [
            // SR: V=2 RC=1, PT 200, length 12, our SSRC, NTP, RTP time, counts.
            0x81, 200, 0, 12, 0x01, 0x02, 0x03, 0x04,
            0xE0, 0, 0, 0x01, 0x80, 0, 0, 0,
            0, 0, 0x1F, 0x40, 0, 0, 0, 50, 0, 0, 0x1F, 0x40,
            // Report block: nothing lost, highest 7, no jitter, no SR heard.
            0xA0, 0xA1, 0xA2, 0xA3, 0, 0, 0, 0,
            0, 0, 0, 7, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0,
            // SDES as in the RR.
            0x81, 202, 0, 3, 0x01, 0x02, 0x03, 0x04,
            1, 3, b'a', b'b', b'c', 0, 0, 0,
        ];
        assert_eq!(p, want);
    }

    #[test]
    fn bye_once_after_reporting() {
        let t0 = Instant::now();
        let mut r = Reporter::new(0x0102_0304, "abc", 8000, t0).with_seed(1);
        assert!(r.bye().is_none(), "never reported: no goodbye");
        r.on_rtp(0xA0A1_A2A3, 0, t0);
        let due = r.poll_timeout().unwrap();
        let rx = Reception {
            ssrc: 0xA0A1_A2A3,
            extended_max: 7,
            expected: 8,
            received: 8,
        };
        assert!(r.poll(due, Some(rx), None).is_some());
        let bye = r.bye().unwrap().to_vec();
        #[rustfmt::skip]
        let want = [
            // Empty RR, SDES CNAME "abc", BYE for our SSRC.
            0x80, 201, 0, 1, 0x01, 0x02, 0x03, 0x04,
            0x81, 202, 0, 3, 0x01, 0x02, 0x03, 0x04,
            1, 3, b'a', b'b', b'c', 0, 0, 0,
            0x81, 203, 0, 1, 0x01, 0x02, 0x03, 0x04,
        ];
        assert_eq!(bye, want);
        assert!(r.bye().is_none(), "once");
        assert_eq!(r.poll_timeout(), None);
        assert!(
            r.poll(due + INTERVAL * 3, Some(rx), None).is_none(),
            "no report after BYE"
        );
    }

    #[test]
    fn ntp_time_of_the_unix_epoch_and_a_half_second() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(ntp_time(t), ((2_208_988_801u64) << 32) | 0x8000_0000);
    }

    #[test]
    fn sdes_padding_keeps_a_null_octet() {
        let t0 = Instant::now();
        for (cname, total) in [("ab", 8), ("abcdef", 12), ("abcde", 8)] {
            let mut r = Reporter::new(1, cname, 8000, t0);
            r.on_rtp(2, 0, t0);
            let rx = Reception {
                ssrc: 2,
                extended_max: 0,
                expected: 1,
                received: 1,
            };
            let p = r.poll(t0 + INTERVAL, Some(rx), None).unwrap();
            let sdes = &p[RR_LEN..];
            assert_eq!(sdes.len(), 8 + total, "{cname}");
            assert_eq!(
                u16::from_be_bytes([sdes[2], sdes[3]]) as usize,
                (8 + total) / 4 - 1
            );
            assert_eq!(sdes[10 + cname.len()], 0, "terminated");
        }
    }

    #[test]
    fn loss_figures_with_loss_and_wrap() {
        let t0 = Instant::now();
        let mut rx = RtpReceiver::new(0, None);
        let mut r = Reporter::new(1, "x", 8000, t0).with_seed(2);
        // 65530..=65535, 0..10 with 65533, 2 and 3 lost: 16 expected, 13 received.
        let first: Vec<u16> = (65530..=65535)
            .chain(0..10)
            .filter(|s| ![65533, 2, 3].contains(s))
            .collect();
        for &s in &first {
            rx.handle(&rtp(s));
            r.on_rtp(0xCAFE, s as u32 * 160, t0);
        }
        let rec = rx.reception().unwrap();
        assert_eq!(rec.ssrc, 0xCAFE);
        assert_eq!(rec.extended_max, 0x0001_0009, "one cycle, max 9");
        assert_eq!((rec.expected, rec.received), (16, 13));
        let p = r.poll(t0 + INTERVAL * 2, Some(rec), None).unwrap();
        // fraction = 3 × 256 / 16 = 48, cumulative 3.
        assert_eq!(p[12..16], [48, 0, 0, 3]);
        assert_eq!(p[16..20], [0, 1, 0, 9]);
        // Next interval: 10..30 with one lost (20): 1/20 → 12; cumulative 4.
        for s in (10..30).filter(|&s| s != 20) {
            rx.handle(&rtp(s));
        }
        let rec = rx.reception().unwrap();
        let due = r.poll_timeout().unwrap();
        let p = r.poll(due, Some(rec), None).unwrap();
        assert_eq!(p[12..16], [12, 0, 0, 4]);
        assert_eq!(p[16..20], [0, 1, 0, 29]);
        assert_eq!(rx.stats().lost, 4);
    }

    #[test]
    fn interarrival_jitter_follows_a8() {
        let t0 = Instant::now();
        let mut r = Reporter::new(1, "x", 8000, t0);
        // Steady 20 ms / 160 units: no jitter.
        for i in 0..10u32 {
            r.on_rtp(7, 1000 + i * 160, t0 + 20 * MS * i);
        }
        assert_eq!(r.jitter(), 0);
        let t1 = t0 + 200 * MS;
        let mut r = Reporter::new(1, "x", 8000, t1);
        r.on_rtp(7, 0, t1);
        // 10 ms late: D = 80 units, J = 80/16 = 5.
        r.on_rtp(7, 160, t1 + 30 * MS);
        assert_eq!(r.jitter(), 5);
        // Back on time: D = 80 again, J = 5 + (80 - 5)/16 = 9.69 → 9.
        r.on_rtp(7, 320, t1 + 40 * MS);
        assert_eq!(r.jitter(), 9);
        // A new source starts over.
        r.on_rtp(8, 99, t1 + 60 * MS);
        assert_eq!(r.jitter(), 0);
    }

    #[test]
    fn sender_report_gives_lsr_and_dlsr_and_garbage_is_ignored() {
        let t0 = Instant::now();
        let mut r = Reporter::new(1, "x", 8000, t0);
        // Compound: an RR first, then the SR (NTP 0xE1234567.89ABCDEF), then SDES.
        let mut c = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        c.extend_from_slice(&[0x80, 200, 0, 6, 0, 0, 0, 9]);
        c.extend_from_slice(&[0xE1, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]);
        c.extend_from_slice(&[0; 12]);
        c.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 9]);
        assert!(r.on_rtcp(&c, t0 + 100 * MS));
        let sr = r.last_sr().unwrap();
        assert_eq!((sr.ssrc, sr.lsr), (9, 0x4567_89AB));
        assert!(!r.on_rtcp(&[0x80, 200, 0, 6, 1, 2], t0));
        assert!(!r.on_rtcp(b"junk", t0));
        assert!(!r.on_rtcp(&[0x80, 200, 0xff, 0xff], t0));
        r.on_rtp(9, 0, t0);
        let rx = Reception {
            ssrc: 9,
            extended_max: 0,
            expected: 1,
            received: 1,
        };
        // 5.25 s after the SR: DLSR = 5.25 × 65536.
        let p = r.poll(t0 + 350 * MS + INTERVAL, Some(rx), None).unwrap();
        assert_eq!(p[24..28], [0x45, 0x67, 0x89, 0xAB]);
        assert_eq!(
            u32::from_be_bytes([p[28], p[29], p[30], p[31]]),
            (5_250 * 65_536 / 1000)
        );
    }
}
