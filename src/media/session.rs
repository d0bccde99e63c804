//! The media side of one call: the caller's RTP latched (RFC 4961),
//! accounted (RFC 3550 §6.4.1, §A.8), reordered by the jitter buffer,
//! decoded (G.711, Opus with PLC and in-band FEC, RFC 6716 / RFC 7587) and
//! fed to the analyser; RFC 4733 telephone-events picked out; our silence
//! stream and our RTCP reports (RFC 3550 §6.4, §6.3.7 BYE; RFC 5761
//! rtcp-mux; RFC 3605 `a=rtcp`) paced and addressed.
//!
//! The per-packet path allocates nothing: every buffer is allocated when the
//! session starts, and packets to send are lent out of them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use emonav_dsp::model::{feature_vector, FEATURES};
use emonav_dsp::{Analyzer, Estimate, Model, ModelEstimator};

use crate::adapt::LineAdapter;

use crate::events::{CallRecord, LineSample, MediaStats};
use crate::media::jitter::JitterBuffer;
use crate::media::latch::{Latch, Verdict};
use crate::media::opus::{self, OpusDecoder};
use crate::media::rtcp::{self, Reporter, SenderInfo};
use crate::media::rtp::{self as rtp, Ignored, RtpEvent, RtpReceiver};
use crate::media::sender::SilenceSender;
use crate::media::srtp::SrtpContext;
use crate::sdp::{self, CodecName, Negotiated, SdpError};
use crate::trust::TrustedSet;

/// Largest RTP payload decoded per packet (G.711 at 120 ms ptime is 960 bytes;
/// a 120 ms Opus packet decodes to at most 1920 samples).
const MAX_SAMPLES: usize = 2048;
const _: () = assert!(opus::MAX_PACKET_SAMPLES <= MAX_SAMPLES);

/// Rate Opus is decoded at for the analyser: 8 kHz, like G.711, so every
/// call reaches the one 8 kHz model through the same conditioning
/// (`emonav_dsp::condition`, 300–3400 Hz; docs/model.md "One signal path").
/// libopus decodes any Opus stream at 8 kHz; the analyser's band ends at
/// 3.4 kHz anyway, so nothing it uses is lost.
pub(crate) const OPUS_ANALYSIS_RATE: u32 = 8_000;

/// Most Opus packets concealed for one sequence gap: enough to bridge the
/// usual burst loss, bounded so a long outage or a resynchronised sequence
/// does not make up seconds of audio the caller never said.
const MAX_CONCEALED: u16 = 5;

/// How far from its due time a packet may leave the jitter buffer. The
/// buffer dates each packet from its timestamp, so the packet due now and
/// the one arriving now come together give or take the network's jitter;
/// without slack each packet woke the call twice, once to arrive and once
/// to play out (each wake-up a timer, a task poll and an `epoll_wait`).
/// Releasing up to 5 ms early, or late when no packet comes, changes the
/// playout delay by that much (`[media] jitter_ms`, 60 by default), which
/// analysis does not hear; a packet due less than 5 ms before the decision
/// deadline that no arrival released waits past it, so the deadline's
/// estimate may lack that one packet (the calm fixtures: 2,940 ms of audio
/// instead of 2,960). Here rather than in the call, so that `emonav analyze
/// FILE.pcap` (src/replay.rs) plays out exactly as a call does.
pub(crate) const PLAYOUT_SLACK: Duration = Duration::from_millis(5);

/// How far from its slot a silence packet may leave: half a packet time, so
/// that the caller's packet arriving nearest the slot sends it. A 20 ms
/// keepalive on its own timer woke the call a second time every 20 ms (a
/// timer, a task poll, an `epoll_wait`) beside the caller's packet. The
/// timestamp stays the slot's: the peer sees at most 10 ms of jitter on a
/// stream of silence. The failure tone, which someone hears, keeps its
/// slots exactly.
const SEND_SLACK: Duration = Duration::from_millis(10);

/// The payload the jitter buffer is sized for: 64 kbit/s at the offered
/// ptime (20 ms when none), i.e. a G.711 packet exactly and an Opus one up to
/// that rate; a longer packet grows the buffer once.
fn expected_payload(neg: &Negotiated) -> usize {
    const BYTES_PER_MS: usize = 8;
    let ptime = neg.ptime.unwrap_or(20).clamp(10, 120);
    BYTES_PER_MS * ptime as usize
}

/// Decoding of the packets the jitter buffer releases, in order.
struct Decode {
    codec: CodecName,
    pcm: Box<[i16; MAX_SAMPLES]>,
    /// The decoder of an Opus call (G.711 needs no state).
    opus: Option<OpusDecoder>,
    /// Samples in the last G.711 packet: a lost one is replaced by as much silence.
    g711_frame: usize,
    /// Packets the decoder refused since the last good one: concealed with the next.
    refused: u16,
}

impl Decode {
    /// Decode one released packet into the analyser, first concealing the
    /// `lost` packets before it (at most [`MAX_CONCEALED`]) so the analysed
    /// timeline stays continuous: Opus by PLC (the last one from this
    /// packet's in-band FEC when it has some), G.711 by silence (repeating
    /// a frame would make up pitch and energy the caller never produced).
    /// False when the decoder refused the packet: it is then concealed when
    /// the next good packet comes.
    fn feed(&mut self, analyzer: &mut Analyzer, lost: u16, payload: &[u8]) -> bool {
        let lost = lost.saturating_add(std::mem::take(&mut self.refused));
        let pcm = &mut self.pcm[..];
        match (self.codec, &mut self.opus) {
            (CodecName::Opus, Some(dec)) => {
                if lost > 0 {
                    for _ in 1..lost.min(MAX_CONCEALED) {
                        if let Ok(n) = dec.conceal(pcm) {
                            analyzer.push(&pcm[..n]);
                        }
                    }
                    let n = dec.recover(payload, pcm).or_else(|_| dec.conceal(pcm));
                    if let Ok(n) = n {
                        analyzer.push(&pcm[..n]);
                    }
                }
                match dec.decode(payload, pcm) {
                    Ok(n) => {
                        analyzer.push(&pcm[..n]);
                        true
                    }
                    Err(_) => {
                        self.refused = 1;
                        false
                    }
                }
            }
            (CodecName::Opus, None) => false,
            (g711, _) => {
                let frame = self.g711_frame.min(MAX_SAMPLES);
                pcm[..frame].fill(0);
                for _ in 0..lost.min(MAX_CONCEALED) {
                    analyzer.push(&pcm[..frame]);
                }
                let n = payload.len().min(MAX_SAMPLES);
                if n == 0 {
                    return false;
                }
                let pcm = &mut pcm[..n];
                if g711 == CodecName::Pcmu {
                    emonav_dsp::g711::decode_ulaw(&payload[..n], pcm);
                } else {
                    emonav_dsp::g711::decode_alaw(&payload[..n], pcm);
                }
                analyzer.push(pcm);
                self.g711_frame = n;
                true
            }
        }
    }
}

/// What one RTP datagram meant for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Not from the caller's latched source: ignored entirely.
    Stray,
    /// Counted; audio was queued for analysis when `fed` is true.
    Packet {
        /// Audio went into the jitter buffer (the decision deadline runs
        /// from the first audio heard, not played out).
        fed: bool,
    },
    /// The end of a keypad press, once per event (RFC 4733 §2.5.1.4).
    Digit(char),
}

/// One call's media session.
pub(crate) struct MediaSession {
    rtp: RtpReceiver,
    /// Puts the caller's packets back in order and paces them (`[media] jitter_ms`).
    jitter: JitterBuffer,
    jitter_delay: Duration,
    /// Where the caller's RTP really comes from (RFC 4961 latching).
    latch: Latch,
    /// Negotiated audio payload type (the jitter buffer also carries
    /// telephone-events, which only hold their sequence slot).
    audio_pt: u8,
    dec: Decode,
    analyzer: Analyzer,
    /// Rate the analyser runs at (8000 for every codec today).
    analysis_rate: u32,
    /// Our silence stream (`[media] send_silence`), started at the answer;
    /// None until then or when we must not send.
    sender: Option<SilenceSender>,
    /// Whether we send at all: sendrecv/sendonly answer, send_silence on.
    send: bool,
    send_silence: bool,
    /// `[media] keepalive_interval_ms`.
    keepalive_interval: Duration,
    /// The SDP's direction lets us send (sendrecv/sendonly).
    may_send: bool,
    /// The failure tone replaces our silence (sent even without
    /// `send_silence`: a caller no queue took must hear something).
    failure_tone: bool,
    /// The SDP's RTP address, used until the latch knows better (never
    /// with `symmetric`).
    sdp_rtp: Option<SocketAddr>,
    /// `[media] symmetric_rtp`: send only to the latched source.
    symmetric: bool,
    /// `[security]` on: the trusted set and the call's signalling source,
    /// the only addresses we send to.
    trusted: Option<(Arc<TrustedSet>, IpAddr)>,
    /// Our SSRC: the silence stream's and the RTCP reports'.
    ssrc: u32,
    /// Our RTCP reports (RFC 3550 §6.4).
    rtcp: Reporter,
    /// RTCP on the RTP port (RFC 5761), offered and answered.
    rtcp_mux: bool,
    /// The SDP's `a=rtcp` address (RFC 3605).
    sdp_rtcp: Option<SocketAddr>,
    /// Where the caller's RTCP came from on our RTCP port (symmetric RTCP).
    rtcp_source: Option<SocketAddr>,
    last_packet: Option<Instant>,
    /// Scored through a line map.
    line_adapted: bool,
    /// RTP timestamp of the last telephone-event acted on.
    last_event: Option<u32>,
    /// SRTP/SRTCP (RFC 3711) when the call negotiated it: every datagram
    /// in and out passes through it.
    srtp: Option<SrtpContext>,
    /// Datagrams SRTP refused (forged, replayed, plain, garbage).
    srtp_refused: u64,
}

fn srtp_context(neg: &Negotiated) -> Result<Option<SrtpContext>, SdpError> {
    neg.srtp
        .as_ref()
        .map(|k| SrtpContext::new(k.suite, &k.remote, &k.local))
        .transpose()
        .map_err(|e| {
            tracing::error!(error = %e, "no SRTP context");
            SdpError::Srtp("SRTP unavailable")
        })
}

/// How a [`MediaSession`] is set up, from the call's settings.
#[derive(Debug, Clone)]
pub(crate) struct MediaConfig<'a> {
    /// Jitter-buffer playout delay.
    pub jitter_delay: Duration,
    /// Send 20 ms silence packets to the caller.
    pub send_silence: bool,
    /// One silence packet per this interval (20 ms: a continuous stream).
    pub keepalive_interval: Duration,
    /// Send only to where the caller's RTP comes from (RFC 4961).
    pub symmetric: bool,
    /// When `[security]` is on: the set our media may go to, and the
    /// call's signalling source (trusted too).
    pub trusted: Option<(Arc<TrustedSet>, IpAddr)>,
    /// The G.711 (8 kHz) and Opus (16 kHz) models.
    pub models: &'a [Arc<Model>; 2],
    /// Their line adaptation: the map in force when the call starts is the
    /// one it is scored through.
    pub lines: &'a [Arc<LineAdapter>; 2],
}

impl MediaSession {
    /// A session for the negotiated media; the jitter buffer's clock starts
    /// at `started`. Fails when the codec's decoder cannot be created.
    pub(crate) fn new(
        neg: &Negotiated,
        cfg: MediaConfig<'_>,
        started: Instant,
        now: Instant,
    ) -> Result<Self, SdpError> {
        let (rate, opus) = match neg.codec {
            CodecName::Pcmu | CodecName::Pcma => (8000, None),
            CodecName::Opus => match OpusDecoder::new(OPUS_ANALYSIS_RATE) {
                Ok(d) => (OPUS_ANALYSIS_RATE, Some(d)),
                Err(e) => {
                    tracing::error!(error = %e, "no Opus decoder");
                    return Err(opus_unavailable());
                }
            },
        };
        let line = cfg.lines[usize::from(rate == 16000)].current();
        let line_adapted = line.is_some();
        let ssrc = fastrand::u32(..);
        // RFC 7022 §4.2: a random CNAME per call.
        let cname = format!("{:016x}@emonav", fastrand::u64(..));
        let mut m = MediaSession {
            ssrc,
            rtcp: Reporter::new(ssrc, &cname, neg.clock_rate, now),
            rtcp_mux: false,
            sdp_rtcp: None,
            rtcp_source: None,
            rtp: RtpReceiver::new(neg.pt, neg.telephone_event_pt),
            jitter: JitterBuffer::new(
                cfg.jitter_delay,
                neg.clock_rate,
                expected_payload(neg),
                started,
            ),
            jitter_delay: cfg.jitter_delay,
            latch: Latch::new(neg.pt),
            audio_pt: neg.pt,
            dec: Decode {
                codec: neg.codec,
                pcm: Box::new([0; MAX_SAMPLES]),
                opus,
                g711_frame: 160,
                refused: 0,
            },
            sender: None,
            send: false,
            send_silence: cfg.send_silence,
            keepalive_interval: cfg.keepalive_interval,
            may_send: false,
            failure_tone: false,
            sdp_rtp: None,
            symmetric: cfg.symmetric,
            trusted: cfg.trusted.clone(),
            analyzer: Analyzer::with_estimator(
                rate,
                Box::new(ModelEstimator::with_line(
                    cfg.models[usize::from(rate == 16000)].clone(),
                    line,
                )),
            ),
            analysis_rate: rate,
            line_adapted,
            last_packet: None,
            last_event: None,
            srtp: srtp_context(neg)?,
            srtp_refused: 0,
        };
        m.set_direction(neg);
        Ok(m)
    }

    /// Rate the analyser runs at.
    pub(crate) fn analysis_rate(&self) -> u32 {
        self.analysis_rate
    }

    /// The codec being decoded.
    pub(crate) fn codec(&self) -> CodecName {
        self.dec.codec
    }

    /// The caller's emotion estimate so far.
    pub(crate) fn estimate(&self) -> Estimate {
        self.analyzer.estimate()
    }

    /// Audio analysed so far, ms.
    pub(crate) fn audio_ms(&self) -> u32 {
        self.analyzer.audio_ms()
    }

    /// Reception statistics so far.
    pub(crate) fn rtp_stats(&self) -> rtp::RtpStats {
        self.rtp.stats()
    }

    /// When the last datagram from the caller came.
    pub(crate) fn last_packet(&self) -> Option<Instant> {
        self.last_packet
    }

    /// Whether and where we send, from a (re-)negotiation.
    fn set_direction(&mut self, neg: &Negotiated) {
        self.may_send = matches!(
            neg.direction,
            sdp::Direction::SendRecv | sdp::Direction::SendOnly
        );
        self.send = (self.send_silence || self.failure_tone) && self.may_send;
        self.sdp_rtp = Some(neg.remote_rtp).filter(|a| a.port() != 0 && !a.ip().is_unspecified());
        self.rtcp_mux = neg.rtcp_mux;
        self.sdp_rtcp = neg.remote_rtcp.filter(|a| !a.ip().is_unspecified());
    }

    /// A re-negotiation (RFC 3264 §8): a new codec gets a new decoder, jitter
    /// clock and silence stream; direction and addresses follow the SDP. On
    /// error (no decoder) nothing changed.
    pub(crate) fn renegotiate(
        &mut self,
        old: Option<&Negotiated>,
        neg: &Negotiated,
        now: Instant,
    ) -> Result<(), SdpError> {
        let codec_changed = old.is_none_or(|o| o.codec != neg.codec || o.pt != neg.pt);
        if codec_changed {
            let opus = match neg.codec {
                CodecName::Opus if self.dec.opus.is_some() => self.dec.opus.take(),
                CodecName::Opus => {
                    Some(OpusDecoder::new(self.analysis_rate).map_err(|_| opus_unavailable())?)
                }
                _ => None,
            };
            self.dec.opus = opus;
            self.dec.codec = neg.codec;
            self.dec.refused = 0;
            self.audio_pt = neg.pt;
            self.latch.set_audio_pt(neg.pt);
            // A new clock rate, and no gap to conceal across the change.
            self.jitter = JitterBuffer::new(
                self.jitter_delay,
                neg.clock_rate,
                expected_payload(neg),
                now,
            );
            self.rtcp.set_clock_rate(neg.clock_rate);
            // Our silence follows the new codec.
            self.sender = None;
        }
        if old.is_none_or(|o| o.srtp != neg.srtp) {
            self.srtp = srtp_context(neg)?;
        }
        self.rtp.set_payload_types(neg.pt, neg.telephone_event_pt);
        self.set_direction(neg);
        Ok(())
    }

    /// From now on the congestion tone instead of our silence (no queue
    /// could take the call; [`crate::media::tone`]).
    pub(crate) fn play_failure_tone(&mut self) {
        self.failure_tone = true;
        self.send = self.may_send;
        if let Some(s) = &mut self.sender {
            s.start_tone();
        }
    }

    /// Hold or unhold: the gap is not a loss to conceal.
    pub(crate) fn restart_timeline(&mut self) {
        self.jitter.reset();
        self.dec.refused = 0;
    }

    /// Where our RTP goes: the latched source, else (unless symmetric)
    /// the SDP's address; never outside the trusted set.
    pub(crate) fn rtp_dest(&self) -> Option<SocketAddr> {
        let sdp = self.sdp_rtp.filter(|_| !self.symmetric);
        self.latch
            .address()
            .or(sdp)
            .filter(|a| self.may_send_to(a.ip()))
    }

    /// Whether our media may go to `ip`: in the trusted set (when on) and,
    /// when symmetric, the host whose RTP we latched.
    fn may_send_to(&self, ip: IpAddr) -> bool {
        let trusted = self
            .trusted
            .as_ref()
            .is_none_or(|(set, signalling)| ip == *signalling || set.contains(ip));
        let symmetric = !self.symmetric || self.latch.address().is_some_and(|a| a.ip() == ip);
        trusted && symmetric
    }

    /// Where our RTCP goes, and whether on the RTP port: with rtcp-mux the
    /// RTP destination; else where the caller's RTCP comes from, the SDP's
    /// `a=rtcp`, or the RTP destination's port + 1 (RFC 3605).
    pub(crate) fn rtcp_dest(&self) -> Option<SocketAddr> {
        let rtp = self.rtp_dest();
        if self.rtcp_mux {
            return rtp;
        }
        self.rtcp_source
            .or(self.sdp_rtcp)
            .or_else(|| {
                let a = rtp?;
                Some(SocketAddr::new(a.ip(), a.port().checked_add(1)?))
            })
            .filter(|a| self.may_send_to(a.ip()))
    }

    /// Statistics into the call's record.
    pub(crate) fn record(&self, r: &mut CallRecord) {
        let f = self.analyzer.functionals();
        let mut raw = [0.0; FEATURES];
        feature_vector(f, &mut raw);
        r.line_adapted = self.line_adapted;
        r.line_sample = Some(LineSample {
            slot: usize::from(self.analysis_rate == 16000),
            raw: Box::new(raw),
            speech_ms: f.speech_ms(),
        });
        let jitter = self.jitter.stats();
        r.rtp = self.rtp.stats();
        r.rtp.late = jitter.late;
        r.rtp.srtp_refused = self.srtp_refused;
        r.media = MediaStats {
            jitter,
            latch: self.latch.stats(),
            sent: self.sender.as_ref().map_or(0, |s| s.sent()),
            rtcp_sent: self.rtcp.sent(),
            interarrival_jitter: self.rtcp.jitter(),
        };
    }

    /// One RTP datagram from `source` (`None`: unknown, no latching):
    /// latched, accounted, and with `feed` put in the jitter buffer;
    /// telephone-events become digits when `dtmf`. Allocation-free.
    pub(crate) fn on_rtp(
        &mut self,
        datagram: &[u8],
        source: Option<SocketAddr>,
        now: Instant,
        feed: bool,
        dtmf: bool,
        call_id: &str,
    ) -> Heard {
        // Authenticated and decrypted before anything reads it: a packet
        // SRTP refuses is not the caller's (it neither latches nor counts).
        let datagram = match &mut self.srtp {
            None => datagram,
            Some(srtp) => {
                let clear = if rtp::is_rtcp(datagram) {
                    srtp.unprotect_rtcp(datagram)
                } else {
                    srtp.unprotect_rtp(datagram)
                };
                match clear {
                    Ok(d) => d,
                    Err(e) => {
                        self.srtp_refused += 1;
                        tracing::trace!(%call_id, error = %e, "SRTP refused a datagram");
                        return Heard::Stray;
                    }
                }
            }
        };
        if let Some(src) = source {
            let peeked = rtp::peek(datagram);
            if self.latch.check(src, peeked, now, call_id) == Verdict::Stray {
                return Heard::Stray;
            }
        }
        self.last_packet = Some(now);
        match self.rtp.handle(datagram) {
            RtpEvent::Audio {
                ssrc,
                seq,
                timestamp,
                payload,
            } => {
                self.rtcp.on_rtp(ssrc, timestamp, now);
                if feed {
                    self.jitter
                        .push(ssrc, seq, Some(timestamp), self.audio_pt, payload, now);
                }
                Heard::Packet { fed: feed }
            }
            RtpEvent::Ignored(Ignored::Rtcp) => {
                // RFC 5761: RTCP on the RTP port.
                self.rtcp.on_rtcp(datagram, now);
                Heard::Packet { fed: false }
            }
            RtpEvent::Event {
                ssrc,
                seq,
                event,
                end,
                timestamp,
                ..
            } => {
                tracing::trace!(%call_id, event, end, "telephone-event");
                // Its sequence slot, so the audio around it shows no gap.
                if feed {
                    self.jitter.push(ssrc, seq, None, u8::MAX, &[], now);
                }
                // RFC 4733 §2.5.1.4: the end packet is sent three times; act once.
                if dtmf && end && self.last_event != Some(timestamp) {
                    self.last_event = Some(timestamp);
                    if let Some(d) = keypad_digit(event) {
                        return Heard::Digit(d);
                    }
                }
                Heard::Packet { fed: false }
            }
            _ => Heard::Packet { fed: false },
        }
    }

    /// A datagram on the RTCP port (RTP port + 1) from `source`: counted;
    /// a sender report is remembered for our reports, and RTCP from
    /// the caller's media address makes its source where ours goes.
    pub(crate) fn on_rtcp_port(
        &mut self,
        datagram: &[u8],
        source: Option<SocketAddr>,
        now: Instant,
    ) {
        self.rtp.handle_rtcp_port(datagram);
        if !rtp::is_rtcp(datagram) {
            return;
        }
        let media_ip = self.rtp_dest().map(|a| a.ip());
        let datagram = match &mut self.srtp {
            None => datagram,
            Some(srtp) => match srtp.unprotect_rtcp(datagram) {
                Ok(d) => d,
                Err(e) => {
                    self.srtp_refused += 1;
                    tracing::trace!(error = %e, "SRTCP refused a datagram");
                    return;
                }
            },
        };
        self.rtcp.on_rtcp(datagram, now);
        if let Some(src) = source {
            if media_ip.is_none_or(|ip| ip == src.ip()) {
                self.rtcp_source = Some(src);
            }
        }
    }

    /// Decode and analyse what the jitter buffer releases at `now` or within
    /// [`PLAYOUT_SLACK`] after it, asking `check` after each analysed packet
    /// whether that settles it: the first answer stops the playout and is
    /// returned.
    pub(crate) fn play_out<T>(
        &mut self,
        now: Instant,
        call_id: &str,
        mut check: impl FnMut(&Estimate) -> Option<T>,
    ) -> Option<T> {
        while let Some(p) = self.jitter.pop(now + PLAYOUT_SLACK) {
            if p.pt != self.audio_pt {
                continue;
            }
            if !self.dec.feed(&mut self.analyzer, p.lost, p.payload) {
                tracing::trace!(%call_id, seq = p.seq, "undecodable audio packet");
                self.rtp.count_undecodable();
                continue;
            }
            if let Some(t) = check(&self.analyzer.estimate()) {
                return Some(t);
            }
        }
        None
    }

    /// When to play out next: [`PLAYOUT_SLACK`] after the jitter buffer's
    /// next packet is due, so that the packet arriving about then plays it
    /// out instead.
    pub(crate) fn playout_due(&self) -> Option<Instant> {
        Some(self.jitter.poll_timeout()? + PLAYOUT_SLACK)
    }

    /// When [`poll_transmit`](Self::poll_transmit)
    /// has the next packet, while we send media; our silence starts at
    /// `start` (the answer).
    pub(crate) fn send_due(&self, start: Instant) -> Option<Instant> {
        let rtp = (self.send && self.rtp_dest().is_some()).then(|| {
            self.sender
                .as_ref()
                .map_or(start, |s| s.poll_timeout() + self.send_slack())
        });
        rtp.into_iter().chain(self.rtcp.poll_timeout()).min()
    }

    /// [`SEND_SLACK`] while silence goes out, none for the failure tone.
    fn send_slack(&self) -> Duration {
        if self.failure_tone {
            Duration::ZERO
        } else {
            SEND_SLACK
        }
    }

    /// Our next packet, if one is due at `now`: RTP first, then RTCP (SR
    /// while we send, else RR), with the port it leaves from and where it
    /// goes; `wall` is the wall-clock time at `now`. Call until `None`; the
    /// packet lives in a buffer allocated once.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        wall: SystemTime,
    ) -> Option<(Port, SocketAddr, &[u8])> {
        let rtp_dest = self.rtp_dest().filter(|_| self.send);
        if let Some(dest) = rtp_dest {
            // Due, or early by less than the slack: then it goes in its slot
            // (one packet: the next slot is a packet time away).
            let slack = self.send_slack();
            let slot = self.sender.as_ref().map_or(Some(now), |s| {
                let due = s.poll_timeout();
                (now >= due)
                    .then_some(now)
                    .or_else(|| (due.saturating_duration_since(now) < slack).then_some(due))
            });
            if let Some(slot) = slot {
                let (codec, pt, ssrc) = (self.dec.codec, self.audio_pt, self.ssrc);
                let interval = self.keepalive_interval;
                let sender = self.sender.get_or_insert_with(|| {
                    SilenceSender::with_ssrc(codec, pt, now, ssrc, interval)
                });
                if self.failure_tone {
                    sender.start_tone();
                }
                let packet = sender.poll(slot)?;
                let packet = match &mut self.srtp {
                    Some(srtp) => srtp.protect_rtp(packet).ok()?,
                    None => packet,
                };
                return Some((Port::Rtp, dest, packet));
            }
        }
        let (dest, port) = (self.rtcp_dest(), self.rtcp_port());
        let rx = self.rtp.reception();
        // While our keepalive flows we are a sender (§6.4).
        let sending = self.sender.as_ref().filter(|s| s.sent() > 0).map(|s| {
            let (rtp_timestamp, packets, octets) = s.stream_position(now);
            SenderInfo {
                ntp: rtcp::ntp_time(wall),
                rtp_timestamp,
                packets,
                octets,
            }
        });
        // Polled even without a destination, so the schedule moves on.
        let report = self.rtcp.poll(now, rx, sending)?;
        let dest = dest?;
        let report = match &mut self.srtp {
            Some(srtp) => srtp.protect_rtcp(report).ok()?,
            None => report,
        };
        Some((port, dest, report))
    }

    /// Our RTCP BYE (RFC 3550 §6.3.7), once; `None` when we never sent a report.
    pub(crate) fn bye(&mut self) -> Option<(Port, SocketAddr, &[u8])> {
        let (dest, port) = (self.rtcp_dest(), self.rtcp_port());
        let bye = self.rtcp.bye()?;
        let dest = dest?;
        let bye = match &mut self.srtp {
            Some(srtp) => srtp.protect_rtcp(bye).ok()?,
            None => bye,
        };
        Some((port, dest, bye))
    }

    fn rtcp_port(&self) -> Port {
        if self.rtcp_mux {
            Port::Rtp
        } else {
            Port::Rtcp
        }
    }
}

/// Which of the call's media sockets a packet leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// The RTP port (RTP, and RTCP with rtcp-mux, RFC 5761).
    Rtp,
    /// The RTCP port (RTP port + 1, RFC 3550 §11).
    Rtcp,
}

fn opus_unavailable() -> SdpError {
    SdpError::NoCommonCodec {
        offered: "opus (decoder unavailable)".into(),
    }
}

/// The keypad character of an RFC 4733 event code (§3.2: 0-9, *, #, A-D).
fn keypad_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}
