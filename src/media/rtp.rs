//! RTP reception (RFC 3550): header validation through rtp-rs, per-stream
//! statistics (§6.4.1, Appendix A.1/A.3: sequence wrap, loss, duplicates), and
//! RFC 4733 telephone-event payloads. Sans-IO: the socket lives elsewhere.

/// What one received datagram turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum RtpEvent<'a> {
    /// Audio of the negotiated payload type, new (possibly out of order: the
    /// jitter buffer puts it back in place or finds it late).
    Audio {
        /// Synchronisation source.
        ssrc: u32,
        /// Sequence number.
        seq: u16,
        /// RTP timestamp.
        timestamp: u32,
        /// Codec payload.
        payload: &'a [u8],
    },
    /// An RFC 4733 event packet (digit 0-15, end flag, duration).
    Event {
        /// Synchronisation source.
        ssrc: u32,
        /// Sequence number (shared with the audio).
        seq: u16,
        /// Event code (0-9, 10 = `*`, 11 = `#`, 12-15 = A-D).
        event: u8,
        /// End bit.
        end: bool,
        /// Duration in timestamp units.
        duration: u16,
        /// RTP timestamp (identifies the event across its retransmissions).
        timestamp: u32,
    },
    /// Counted and ignored (garbage, RTCP on the RTP port, unknown PT, duplicate…).
    Ignored(Ignored),
}

/// Why a datagram was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not a valid RTP v2 packet.
    Malformed,
    /// RTCP (PT 200-204) arriving on the RTP port (rtcp-mux or confusion).
    Rtcp,
    /// A payload type we did not negotiate.
    UnknownPayloadType,
    /// Same sequence number seen already.
    Duplicate,
}

/// Counters for the call's event line and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RtpStats {
    /// Valid RTP packets accepted.
    pub received: u64,
    /// Expected minus received (RFC 3550 A.3), never negative.
    pub lost: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Packets that came after their play-out time (counted by the call's
    /// jitter buffer: the receiver hands reordered packets on).
    pub late: u64,
    /// Malformed datagrams, and valid RTP whose payload the codec refused.
    pub malformed: u64,
    /// RTCP seen on the RTP port.
    pub rtcp: u64,
    /// Packets with a payload type we did not negotiate.
    pub unknown_pt: u64,
    /// SSRC changes followed.
    pub ssrc_changes: u64,
    /// Datagrams SRTP/SRTCP refused (RFC 3711: authentication, replay).
    pub srtp_refused: u64,
}

/// Payload type and SSRC of a datagram if it is valid RTP (not RTCP), without
/// accounting it anywhere: for deciding where media comes from.
pub(crate) fn peek(datagram: &[u8]) -> Option<(u8, u32)> {
    if is_rtcp(datagram) {
        return None;
    }
    let rtp = rtp_rs::RtpReader::new(datagram).ok()?;
    Some((rtp.payload_type(), rtp.ssrc()))
}

/// RTCP shares the first byte's layout; its packet types 200-204 land on RTP
/// payload types 72-76 with the marker bit set (RFC 5761 §4).
pub(crate) fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && datagram[0] >> 6 == 2 && (200..=204).contains(&datagram[1])
}

/// RFC 3550 Appendix A.1 constants.
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;

/// Per-stream receiver state.
#[derive(Debug)]
pub struct RtpReceiver {
    audio_pt: u8,
    event_pt: Option<u8>,
    stats: RtpStats,
    seq: Option<SeqState>,
}

/// Sequence bookkeeping of the current source (RFC 3550 A.1).
#[derive(Debug, Clone, Copy)]
struct SeqState {
    ssrc: u32,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    /// A jump beyond MAX_DROPOUT: a second packet right after it restarts the sequence.
    bad_seq: Option<u16>,
    /// Bit i set: `max_seq - i` was received (duplicate detection over 64 packets).
    window: u64,
    received: u64,
}

impl SeqState {
    fn new(ssrc: u32, seq: u16) -> Self {
        Self {
            ssrc,
            base_seq: seq as u32,
            max_seq: seq,
            cycles: 0,
            bad_seq: None,
            window: 1,
            received: 1,
        }
    }

    fn expected(&self) -> u64 {
        (self.cycles as u64 + self.max_seq as u64 + 1).saturating_sub(self.base_seq as u64)
    }
}

impl RtpReceiver {
    /// A receiver accepting audio payload type `audio_pt` and, optionally, telephone-event `event_pt`.
    pub fn new(audio_pt: u8, event_pt: Option<u8>) -> Self {
        Self {
            audio_pt,
            event_pt,
            stats: RtpStats::default(),
            seq: None,
        }
    }

    /// Classify and account one datagram. Never panics on any input.
    pub fn handle<'a>(&mut self, datagram: &'a [u8]) -> RtpEvent<'a> {
        if is_rtcp(datagram) {
            self.stats.rtcp += 1;
            return RtpEvent::Ignored(Ignored::Rtcp);
        }
        let Ok(rtp) = rtp_rs::RtpReader::new(datagram) else {
            self.stats.malformed += 1;
            return RtpEvent::Ignored(Ignored::Malformed);
        };
        let pt = rtp.payload_type();
        if pt != self.audio_pt && Some(pt) != self.event_pt {
            self.stats.unknown_pt += 1;
            return RtpEvent::Ignored(Ignored::UnknownPayloadType);
        }
        let payload = rtp.payload();
        let is_event = Some(pt) == self.event_pt;
        if is_event && payload.len() < 4 {
            self.stats.malformed += 1;
            return RtpEvent::Ignored(Ignored::Malformed);
        }
        if let Some(ignored) = self.account(rtp.ssrc(), rtp.sequence_number().into()) {
            return RtpEvent::Ignored(ignored);
        }
        if is_event {
            // RFC 4733 §2.3: event, E|R|volume, duration.
            return RtpEvent::Event {
                ssrc: rtp.ssrc(),
                seq: rtp.sequence_number().into(),
                event: payload[0],
                end: payload[1] & 0x80 != 0,
                duration: u16::from_be_bytes([payload[2], payload[3]]),
                timestamp: rtp.timestamp(),
            };
        }
        RtpEvent::Audio {
            ssrc: rtp.ssrc(),
            seq: rtp.sequence_number().into(),
            timestamp: rtp.timestamp(),
            payload,
        }
    }

    /// RFC 3550 A.1 `update_seq`, plus duplicate and late detection.
    fn account(&mut self, ssrc: u32, seq: u16) -> Option<Ignored> {
        let s = match &mut self.seq {
            Some(s) if s.ssrc == ssrc => s,
            Some(_) => {
                // A new source (e.g. the PBX re-anchored media): follow it.
                self.stats.ssrc_changes += 1;
                self.retire_source();
                self.seq = Some(SeqState::new(ssrc, seq));
                self.stats.received += 1;
                return None;
            }
            None => {
                self.seq = Some(SeqState::new(ssrc, seq));
                self.stats.received += 1;
                return None;
            }
        };
        let delta = seq.wrapping_sub(s.max_seq);
        if delta == 0 {
            self.stats.duplicates += 1;
            return Some(Ignored::Duplicate);
        }
        if delta < MAX_DROPOUT {
            if seq < s.max_seq {
                s.cycles += 1 << 16;
            }
            s.window = if delta >= 64 { 0 } else { s.window << delta };
            s.window |= 1;
            s.max_seq = seq;
            s.bad_seq = None;
        } else if delta <= u16::MAX - MAX_MISORDER {
            // A big jump: believe it only if the next packet follows it (A.1).
            if s.bad_seq == Some(seq) {
                self.retire_source();
                self.seq = Some(SeqState::new(ssrc, seq));
                self.stats.received += 1;
                return None;
            }
            s.bad_seq = Some(seq.wrapping_add(1));
            self.stats.malformed += 1;
            return Some(Ignored::Malformed);
        } else {
            // Reordered within MAX_MISORDER: a duplicate if seen, else new.
            let back = s.max_seq.wrapping_sub(seq) as u32;
            if back < 64 && s.window & (1u64 << back) != 0 {
                self.stats.duplicates += 1;
                return Some(Ignored::Duplicate);
            }
            if back < 64 {
                s.window |= 1u64 << back;
            }
            s.received += 1;
            self.stats.received += 1;
            return None;
        }
        s.received += 1;
        self.stats.received += 1;
        None
    }

    /// Fold the current source's loss into the totals before replacing it.
    fn retire_source(&mut self) {
        if let Some(s) = self.seq.take() {
            self.stats.lost += s.expected().saturating_sub(s.received);
        }
    }

    /// Accept other payload types from now on (a re-INVITE changed the
    /// codec), keeping the statistics and the sequence state.
    pub fn set_payload_types(&mut self, audio_pt: u8, event_pt: Option<u8>) {
        self.audio_pt = audio_pt;
        self.event_pt = event_pt;
    }

    /// Count an accepted audio packet whose payload the decoder refused: to
    /// the operator it is garbage like any malformed datagram.
    pub fn count_undecodable(&mut self) {
        self.stats.malformed += 1;
    }

    /// Account a datagram that arrived on the RTCP port (RTP port + 1): RTCP
    /// is counted, anything else is garbage. Never touches the RTP state.
    pub fn handle_rtcp_port(&mut self, datagram: &[u8]) {
        if is_rtcp(datagram) {
            self.stats.rtcp += 1;
        } else {
            self.stats.malformed += 1;
        }
    }

    /// The current source's sequence figures for a receiver report
    /// (RFC 3550 A.3), once a packet came.
    pub fn reception(&self) -> Option<crate::media::rtcp::Reception> {
        self.seq.map(|s| crate::media::rtcp::Reception {
            ssrc: s.ssrc,
            extended_max: s.cycles.wrapping_add(s.max_seq as u32),
            expected: s.expected(),
            received: s.received,
        })
    }

    /// Statistics so far.
    pub fn stats(&self) -> RtpStats {
        let mut st = self.stats;
        if let Some(s) = &self.seq {
            st.lost += s.expected().saturating_sub(s.received);
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtp_rs::RtpPacketBuilder;

    fn pkt(ssrc: u32, seq: u16, pt: u8, payload: &[u8]) -> Vec<u8> {
        RtpPacketBuilder::new()
            .payload_type(pt)
            .ssrc(ssrc)
            .sequence(seq.into())
            .timestamp(seq as u32 * 160)
            .payload(payload)
            .build()
            .unwrap()
    }

    fn feed(rx: &mut RtpReceiver, seqs: &[u16]) -> Vec<bool> {
        seqs.iter()
            .map(|&s| {
                matches!(
                    rx.handle(&pkt(1, s, 0, &[0xff; 160])),
                    RtpEvent::Audio { .. }
                )
            })
            .collect()
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut rx = RtpReceiver::new(0, None);
        assert!(feed(&mut rx, &(0..50).collect::<Vec<_>>())
            .iter()
            .all(|&a| a));
        let st = rx.stats();
        assert_eq!((st.received, st.lost, st.duplicates), (50, 0, 0));
    }

    #[test]
    fn loss_reorder_and_duplicates() {
        let mut rx = RtpReceiver::new(0, None);
        // 3 lost for good, 6 reordered (handed on: the jitter buffer decides
        // whether it is late), 5 duplicated.
        let audio = feed(&mut rx, &[1, 2, 4, 5, 5, 7, 6, 8, 12]);
        assert_eq!(
            audio,
            [true, true, true, true, false, true, true, true, true]
        );
        let st = rx.stats();
        assert_eq!(st.received, 8);
        assert_eq!(st.duplicates, 1);
        assert_eq!(st.late, 0);
        assert_eq!(st.lost, 12 - 8, "3, 9, 10, 11 missing");
    }

    #[test]
    fn sequence_wraps_without_loss() {
        let mut rx = RtpReceiver::new(0, None);
        let seqs: Vec<u16> = (65530..=65535).chain(0..10).collect();
        assert!(feed(&mut rx, &seqs).iter().all(|&a| a));
        assert_eq!(rx.stats().lost, 0);
        assert_eq!(rx.stats().received, 16);
    }

    #[test]
    fn ssrc_change_is_followed() {
        let mut rx = RtpReceiver::new(0, None);
        feed(&mut rx, &[10, 11, 12]);
        assert!(matches!(
            rx.handle(&pkt(2, 5000, 0, &[1])),
            RtpEvent::Audio { seq: 5000, .. }
        ));
        assert!(matches!(
            rx.handle(&pkt(2, 5001, 0, &[1])),
            RtpEvent::Audio { .. }
        ));
        let st = rx.stats();
        assert_eq!((st.ssrc_changes, st.received, st.lost), (1, 5, 0));
    }

    #[test]
    fn rtcp_garbage_and_unknown_pt_are_counted_and_ignored() {
        let mut rx = RtpReceiver::new(0, Some(101));
        let rr = [
            0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(rx.handle(&rr), RtpEvent::Ignored(Ignored::Rtcp));
        assert_eq!(rx.handle(b"hello"), RtpEvent::Ignored(Ignored::Malformed));
        assert_eq!(
            rx.handle(&[0x40; 20]),
            RtpEvent::Ignored(Ignored::Malformed),
            "version 1"
        );
        assert_eq!(
            rx.handle(&pkt(1, 1, 18, &[0; 20])),
            RtpEvent::Ignored(Ignored::UnknownPayloadType)
        );
        let st = rx.stats();
        assert_eq!(
            (st.rtcp, st.malformed, st.unknown_pt, st.received),
            (1, 2, 1, 0)
        );
    }

    #[test]
    fn rtcp_interleaved_with_rtp_does_not_disturb_the_stream() {
        let mut rx = RtpReceiver::new(0, None);
        let sr = [
            0x80, 200, 0, 6, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let bye = [0x81, 203, 0, 1, 0, 0, 0, 9];
        for seq in 0..20u16 {
            assert!(matches!(
                rx.handle(&pkt(1, seq, 0, &[0xff; 160])),
                RtpEvent::Audio { .. }
            ));
            assert_eq!(rx.handle(&sr), RtpEvent::Ignored(Ignored::Rtcp));
            assert_eq!(peek(&sr), None, "RTCP never latches");
        }
        rx.handle(&bye);
        rx.handle_rtcp_port(&sr);
        rx.handle_rtcp_port(b"junk");
        let st = rx.stats();
        assert_eq!(
            (st.received, st.lost, st.rtcp, st.malformed),
            (20, 0, 22, 1)
        );
        assert_eq!(st.ssrc_changes, 0);
    }

    #[test]
    fn telephone_event_is_decoded() {
        let mut rx = RtpReceiver::new(0, Some(101));
        match rx.handle(&pkt(1, 1, 101, &[5, 0x80 | 10, 0x03, 0x20])) {
            RtpEvent::Event {
                event,
                end,
                duration,
                ..
            } => assert_eq!((event, end, duration), (5, true, 800)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rx.handle(&pkt(1, 2, 101, &[5, 0])),
            RtpEvent::Ignored(Ignored::Malformed)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rx = RtpReceiver::new(0, Some(101));
        let mut rng = fastrand::Rng::with_seed(3);
        let base = pkt(1, 1, 0, &[0; 32]);
        for _ in 0..20_000 {
            let mut b = if rng.bool() {
                base.clone()
            } else {
                vec![0; rng.usize(..64)]
            };
            for x in b.iter_mut() {
                if rng.u8(..) < 40 {
                    *x = rng.u8(..);
                }
            }
            let _ = rx.handle(&b);
        }
        let _ = rx.stats();
    }
}
