//! No queue could take the call (no queue leg answered in b2bua mode, or
//! every REFER failed in refer mode): the caller hears the congestion tone
//! ([`crate::media::tone`]) for `[transfer] failure_tone_ms`, then our BYE
//! with `Reason` (RFC 3326) naming why. RFC 3725 §7 leaves the failure
//! policy to the controller; ours is that a caller is never dropped into
//! silence: a dead line sounds like a fault, a congestion tone says "the
//! network is busy, call again".

use std::time::Instant;

use super::super::{Call, Phase};
use crate::events::Outcome;

/// The tone is playing; the BYE goes at `until`.
#[derive(Debug)]
pub(super) struct Failing {
    pub(super) until: Instant,
    /// Our BYE's `Reason` value.
    pub(super) reason: String,
}

impl Call {
    /// True while the failure tone plays before our BYE.
    pub(in crate::call) fn failure_tone_playing(&self) -> bool {
        self.b2b.failing.is_some()
    }

    /// Every route failed (queue legs in b2bua mode, REFERs in refer mode):
    /// congestion tone, then BYE with `reason`. At once when the tone is
    /// off, or we cannot send media to the caller.
    pub(in crate::call) fn fail_with_tone(&mut self, reason: String, now: Instant) {
        let tone = self.s.failure_tone;
        let playing = !tone.is_zero()
            && self.sends_media()
            && self.media.as_mut().is_some_and(|m| {
                m.play_failure_tone();
                true
            });
        if !playing {
            return self.hang_up_with_reason(Outcome::Failed, &reason, now);
        }
        tracing::info!(call_id = %self.dialog.call_id, ms = tone.as_millis() as u64, "no queue reachable: congestion tone, then BYE");
        // A caller who hangs up during the tone still ends as failed.
        self.record.outcome = Outcome::Failed;
        self.b2b.failing = Some(Failing {
            until: now + tone,
            reason,
        });
    }

    /// The tone is over: the BYE.
    pub(super) fn failure_tone_timeout(&mut self, now: Instant) {
        if self.b2b.failing.as_ref().is_none_or(|f| now < f.until) {
            return;
        }
        let reason = std::mem::take(&mut self.b2b.failing)
            .map(|f| f.reason)
            .unwrap_or_default();
        if matches!(self.phase, Phase::Bridging | Phase::Transferring) {
            self.hang_up_with_reason(Outcome::Failed, &reason, now);
        }
    }
}
