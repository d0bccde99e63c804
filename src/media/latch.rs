//! Symmetric RTP (RFC 4961) by latching, the "comedia" behaviour of SBCs and
//! PBXs: the SDP's connection address is a hint (it may be private, or a
//! media relay may send from elsewhere), so RTP is taken from whoever sends
//! valid RTP of the negotiated payload type first, and our own RTP goes back
//! there. Once latched, datagrams from other addresses are counted and
//! ignored, so a stray or hostile source cannot inject audio into the
//! analysis. When the latched source falls silent and another sends RTP with
//! a new SSRC (the PBX re-anchored media), the latch moves to it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the latched source must be silent before a new SSRC from another
/// address takes over.
pub(crate) const RELATCH_AFTER: Duration = Duration::from_millis(200);

/// Counters for the call's event record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatchStats {
    /// Datagrams ignored because they came from another address than the latched one.
    pub stray: u64,
    /// Times the latch moved to a new source after the first.
    pub relatches: u64,
}

/// The latch of one call's RTP stream.
#[derive(Debug)]
pub(crate) struct Latch {
    audio_pt: u8,
    latched: Option<(SocketAddr, u32)>,
    last_heard: Option<Instant>,
    stats: LatchStats,
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Process it.
    Accept,
    /// Ignore it (counted as stray).
    Stray,
}

impl Latch {
    /// A latch that opens for RTP of `audio_pt`.
    pub(crate) fn new(audio_pt: u8) -> Self {
        Self {
            audio_pt,
            latched: None,
            last_heard: None,
            stats: LatchStats::default(),
        }
    }

    /// A re-negotiated payload type: RTP of it (re-)latches from now on.
    pub(crate) fn set_audio_pt(&mut self, pt: u8) {
        self.audio_pt = pt;
    }

    /// The address our RTP goes to, once latched.
    pub(crate) fn address(&self) -> Option<SocketAddr> {
        self.latched.map(|(a, _)| a)
    }

    /// Counters.
    pub(crate) fn stats(&self) -> LatchStats {
        self.stats
    }

    /// Decide on a datagram from `source`; `rtp` is its (payload type, SSRC)
    /// when it is valid RTP ([`super::rtp::peek`]).
    pub(crate) fn check(
        &mut self,
        source: SocketAddr,
        rtp: Option<(u8, u32)>,
        now: Instant,
        call_id: &str,
    ) -> Verdict {
        let audio = rtp.filter(|&(pt, _)| pt == self.audio_pt);
        match (self.latched, audio) {
            (Some((addr, ssrc)), _) if addr == source => {
                self.last_heard = Some(now);
                if let Some((_, new)) = audio.filter(|&(_, s)| s != ssrc) {
                    tracing::info!(%call_id, %source, old_ssrc = ssrc, ssrc = new, "RTP SSRC changed on the latched source");
                    self.latched = Some((addr, new));
                }
                Verdict::Accept
            }
            (None, Some((_, ssrc))) => {
                tracing::debug!(%call_id, %source, ssrc, "RTP latched");
                self.latched = Some((source, ssrc));
                self.last_heard = Some(now);
                Verdict::Accept
            }
            // Not latched yet: garbage and RTCP are counted by the receiver.
            (None, None) => Verdict::Accept,
            (Some((addr, ssrc)), Some((_, new)))
                if new != ssrc && self.last_heard.is_none_or(|t| now >= t + RELATCH_AFTER) =>
            {
                tracing::info!(%call_id, from = %addr, to = %source, ssrc = new, "RTP re-latched to a new source");
                self.latched = Some((source, new));
                self.last_heard = Some(now);
                self.stats.relatches += 1;
                Verdict::Accept
            }
            (Some(_), _) => {
                self.stats.stray += 1;
                Verdict::Stray
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latches_first_valid_source_and_ignores_others() {
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut l = Latch::new(0);
        // Garbage or another payload type does not latch.
        assert_eq!(l.check(b, None, t0, "c"), Verdict::Accept);
        assert_eq!(l.check(b, Some((18, 1)), t0, "c"), Verdict::Accept);
        assert_eq!(l.address(), None);
        assert_eq!(l.check(a, Some((0, 1)), t0, "c"), Verdict::Accept);
        assert_eq!(l.address(), Some(a));
        // B keeps sending while A is active: stray, even with a new SSRC.
        let ms = Duration::from_millis(1);
        assert_eq!(l.check(b, Some((0, 2)), t0 + 20 * ms, "c"), Verdict::Stray);
        assert_eq!(l.check(a, None, t0 + 40 * ms, "c"), Verdict::Accept);
        assert_eq!(l.check(b, Some((0, 1)), t0 + 60 * ms, "c"), Verdict::Stray);
        assert_eq!(
            l.stats(),
            LatchStats {
                stray: 2,
                relatches: 0
            }
        );
        // A falls silent; B with a new SSRC takes over.
        assert_eq!(
            l.check(b, Some((0, 2)), t0 + 300 * ms, "c"),
            Verdict::Accept
        );
        assert_eq!(l.address(), Some(b));
        assert_eq!(l.check(a, Some((0, 1)), t0 + 320 * ms, "c"), Verdict::Stray);
        assert_eq!(l.stats().relatches, 1);
        // An SSRC change from the latched source is followed.
        assert_eq!(
            l.check(b, Some((0, 3)), t0 + 340 * ms, "c"),
            Verdict::Accept
        );
        assert_eq!(
            l.check(a, Some((0, 1)), t0 + 900 * ms, "c"),
            Verdict::Accept
        );
        assert_eq!(
            l.address(),
            Some(a),
            "B silent long enough, A's SSRC differs"
        );
    }
}
