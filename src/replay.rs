//! A captured RTP stream analysed as a call's media would be, for `emonav
//! analyze FILE.pcap`: the datagrams go, at their capture times, through the
//! call's own media session (RTP checks, jitter buffer, decoder with its
//! concealment of lost packets, the analyser and the line's adaptation) and
//! the call's decider (early decision, deadline from the first audio), on a
//! virtual clock, so a capture of a real call is judged as that call was.

use std::time::{Duration, Instant};

use emonav_dsp::Estimate;

use crate::call::CallSettings;
use crate::media::session::{MediaConfig, MediaSession};
use crate::policy::{Decider, Decision};
use crate::sdp::{CodecName, Direction, Negotiated};

/// What a stream would have made a call decide.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The decision.
    pub decision: Decision,
    /// When, in ms after the stream's first packet.
    pub decision_ms: u64,
    /// Audio played out to the analyser, ms.
    pub audio_ms: u32,
    /// The estimate at the decision.
    pub estimate: Estimate,
    /// Datagrams that were not the stream's audio (other payload types,
    /// garbage): counted, not analysed.
    pub ignored: u64,
    /// Packets lost (sequence gaps), concealed as the call does.
    pub lost: u64,
}

/// Why a stream could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The codec's decoder could not be created.
    #[error("cannot decode the stream: {0}")]
    Decoder(String),
}

/// Replay `packets` (time since the first, datagram) of one RTP stream of
/// `codec` and payload type `pt` through a call's media path and policy.
pub fn replay(
    s: &CallSettings,
    codec: CodecName,
    pt: u8,
    packets: &[(Duration, Vec<u8>)],
) -> Result<Replayed, ReplayError> {
    let t0 = Instant::now();
    let opus = codec == CodecName::Opus;
    let neg = Negotiated {
        media_index: 0,
        codec,
        pt,
        clock_rate: if opus { 48_000 } else { 8000 },
        channels: if opus { 2 } else { 1 },
        fmtp: None,
        telephone_event_pt: None,
        remote_rtp: std::net::SocketAddr::from(([0, 0, 0, 0], 9)),
        direction: Direction::SendRecv,
        ptime: None,
        rtcp_mux: false,
        remote_rtcp: None,
        srtp: None,
    };
    let cfg = MediaConfig {
        jitter_delay: s.jitter_delay,
        send_silence: false,
        keepalive_interval: crate::media::sender::PTIME,
        symmetric: false,
        trusted: None,
        models: &s.models,
        lines: &s.lines,
    };
    let mut m =
        MediaSession::new(&neg, cfg, t0, t0).map_err(|e| ReplayError::Decoder(e.to_string()))?;
    let mut d = Decider::new(s.policy.clone());
    // Answered as the first packet came: the deadline runs from there.
    d.answered(t0);
    let mut decided_at: Option<(Instant, Estimate)> = None;
    let id = "capture";
    // Play out and fire the deadline up to `now`, as the call's timers do.
    let advance = |m: &mut MediaSession,
                   d: &mut Decider,
                   decided_at: &mut Option<(Instant, Estimate)>,
                   now: Instant| {
        while decided_at.is_none() {
            let due = [m.playout_due(), d.deadline()]
                .into_iter()
                .flatten()
                .min()
                .filter(|t| *t <= now);
            let Some(t) = due else { break };
            if m.playout_due().is_some_and(|p| p <= t) {
                if m.play_out(t, id, |e| d.after_packet(e).map(|_| ()))
                    .is_some()
                {
                    *decided_at = Some((t, m.estimate()));
                }
            } else if d.at_deadline(&m.estimate()).is_some() {
                *decided_at = Some((t, m.estimate()));
            }
        }
    };
    let mut last = t0;
    for (offset, datagram) in packets {
        let now = t0 + *offset;
        last = now;
        advance(&mut m, &mut d, &mut decided_at, now);
        if decided_at.is_some() {
            break;
        }
        if let crate::media::session::Heard::Packet { fed: true } =
            m.on_rtp(datagram, None, now, true, false, id)
        {
            d.heard(now);
        }
        if m.play_out(now, id, |e| d.after_packet(e).map(|_| ()))
            .is_some()
        {
            decided_at = Some((now, m.estimate()));
        }
    }
    // The capture ended: what is buffered plays out, then the deadline (a
    // call whose caller went silent decides then, on what it heard).
    let horizon = last + s.jitter_delay + Duration::from_millis(s.policy.decision_deadline_ms) * 2;
    advance(&mut m, &mut d, &mut decided_at, horizon);
    let (at, estimate) = match decided_at {
        Some(x) => x,
        None => {
            let e = m.estimate();
            d.at_deadline(&e);
            (last, e)
        }
    };
    let decision = d
        .decision()
        .cloned()
        .expect("decided above: the deadline always decides");
    let stats = m.rtp_stats();
    Ok(Replayed {
        decision,
        decision_ms: at.duration_since(t0).as_millis() as u64,
        audio_ms: m.audio_ms(),
        estimate,
        ignored: stats.malformed + stats.unknown_pt + stats.rtcp,
        lost: stats.lost,
    })
}
