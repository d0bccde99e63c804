//! Every deadline a call has, in one table: the transaction timers of
//! RFC 3261 §17 (G/H/I for INVITE responses, E/F/K for our requests, J for
//! answered requests), the session timer (RFC 4028 §10), the decision
//! deadline and RTP timeout, the wait for the final NOTIFY (RFC 3515), the
//! answer delay, the lingering after the end, jitter-buffer playout and the
//! pacing of our RTP and RTCP (RFC 3550 §6.2). One `poll_timeout` reads the
//! table and one `handle_timeout` dispatches what expired.
//!
//! Some entries are set when their deadline is decided (answer, NOTIFY wait,
//! linger, session expiry and refresh); the others follow a sub-state's own
//! clock (a transaction, the jitter buffer, the decider) and are re-armed
//! from it after every input (`Call::arm_timers`).

use std::time::Instant;

use super::{Call, Phase};
use crate::events::Outcome;
use emonav_sip::transaction::Action;

/// A call's timers. Their order is the order they are handled in when
/// several expire at once: transactions before what they may end, playout
/// before the decision it may take early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Timer J of the requests we answered (RFC 3261 §17.2.2).
    Answered = 0,
    /// Timers G/H/I of a re-INVITE we answered.
    ReInvite,
    /// Our session refresh is due (we are the refresher, RFC 4028 §10).
    SessionRefresh,
    /// The caller did not refresh the session: BYE.
    SessionExpiry,
    /// Timers G/H/I of the initial INVITE's response.
    Invite,
    /// Timers E/F/K of our current request (REFER, BYE or UPDATE).
    Request,
    /// The jitter buffer releases the next packet to analyse.
    Playout,
    /// Answer the INVITE (`[sip] answer_delay_ms`).
    Answer,
    /// No RTP for `[media] rtp_timeout_ms` before a decision.
    RtpTimeout,
    /// The decision deadline.
    Decision,
    /// No final NOTIFY in time after our REFER.
    Transfer,
    /// Third-party call control: queue legs' transactions and answer
    /// deadline, our re-INVITE of the caller (RFC 3725).
    ThirdParty,
    /// The call stops answering stray requests.
    Linger,
    /// Our next RTP or RTCP packet (taken by `poll_output`).
    Media,
}

impl Timer {
    const COUNT: usize = Timer::Media as usize + 1;
    const ALL: [Timer; Timer::COUNT] = [
        Timer::Answered,
        Timer::ReInvite,
        Timer::SessionRefresh,
        Timer::SessionExpiry,
        Timer::Invite,
        Timer::Request,
        Timer::Playout,
        Timer::Answer,
        Timer::RtpTimeout,
        Timer::Decision,
        Timer::Transfer,
        Timer::ThirdParty,
        Timer::Linger,
        Timer::Media,
    ];
}

/// When each [`Timer`] expires, if armed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TimerTable {
    at: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Arm `timer` for `at` (or disarm with `None`).
    pub(crate) fn set(&mut self, timer: Timer, at: Option<Instant>) {
        self.at[timer as usize] = at;
    }

    /// When `timer` expires.
    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    /// Disarm `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.set(timer, None);
    }

    /// The earliest armed instant.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// The earliest armed instant but `skip`'s.
    #[cfg(test)]
    pub(super) fn next_except(&self, skip: Timer) -> Option<Instant> {
        Timer::ALL
            .into_iter()
            .filter(|t| *t != skip)
            .filter_map(|t| self.get(t))
            .min()
    }

    /// The timers expired at `now`, in handling order.
    fn expired(&self, now: Instant) -> impl Iterator<Item = Timer> + '_ {
        Timer::ALL
            .into_iter()
            .filter(move |t| self.get(*t).is_some_and(|at| at <= now))
    }
}

impl Call {
    /// Re-arm the timers that follow a sub-state's own clock.
    pub(super) fn arm_timers(&mut self) {
        // A phase's deadline goes with the phase.
        for (timer, phase) in [
            (Timer::Answer, Phase::Offered),
            (Timer::Transfer, Phase::Transferring),
            (Timer::Linger, Phase::Lingering),
        ] {
            if self.phase != phase {
                self.timers.stop(timer);
            }
        }
        let mid = self.mid.poll_timeouts();
        self.timers.set(Timer::Answered, mid.answered);
        self.timers.set(Timer::ReInvite, mid.reinvite);
        self.timers.set(Timer::Invite, self.invite.poll_timeout());
        self.timers.set(Timer::Request, self.client.poll_timeout());
        self.timers.set(Timer::Playout, self.playout_due());
        let listening = matches!(self.phase, Phase::Listening);
        self.timers.set(
            Timer::Decision,
            self.decider.deadline().filter(|_| listening),
        );
        self.timers.set(
            Timer::RtpTimeout,
            self.rtp_timeout_due().filter(|_| listening),
        );
        self.timers.set(Timer::Media, self.media_due());
        self.timers.set(Timer::ThirdParty, self.b2b.poll_timeout());
    }

    /// The earliest instant [`handle_timeout`](Self::handle_timeout) must
    /// run, or [`poll_output`](Self::poll_output) has a packet to send.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.arm_timers();
        self.timers.next_timeout()
    }

    /// Handle the timers expired at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.out.now = now;
        self.arm_timers();
        let mut expired = [None; Timer::COUNT];
        for (slot, t) in expired.iter_mut().zip(self.timers.expired(now)) {
            *slot = Some(t);
        }
        for t in expired.into_iter().flatten() {
            self.on_timer(t, now);
            self.arm_timers();
        }
    }

    /// One expired timer. Each re-checks that it is still due: an earlier
    /// one handled at the same instant may have changed the call.
    fn on_timer(&mut self, timer: Timer, now: Instant) {
        let due = |t: Option<Instant>| t.is_some_and(|t| now >= t);
        match timer {
            Timer::Answered | Timer::ReInvite => self.mid_dialog_timeout(timer, now),
            Timer::SessionRefresh if due(self.timers.get(timer)) => self.send_refresh(now),
            Timer::SessionExpiry if due(self.timers.get(timer)) => self.session_expired(now),
            Timer::Invite => self.invite_timeout(now),
            Timer::Request => self.request_timeout(now),
            Timer::Playout => {
                if matches!(self.phase, Phase::Offered | Phase::Listening) {
                    self.play_out(now);
                }
            }
            Timer::Answer if matches!(self.phase, Phase::Offered) => {
                self.timers.stop(Timer::Answer);
                self.answer(now);
            }
            Timer::RtpTimeout
                if matches!(self.phase, Phase::Listening) && due(self.rtp_timeout_due()) =>
            {
                tracing::info!(call_id = %self.dialog.call_id, "RTP stopped before a decision");
                let e = self.estimate();
                if self.decider.not_analysed(&e).is_some() {
                    self.decided(now);
                }
            }
            Timer::Decision
                if matches!(self.phase, Phase::Listening) && due(self.decider.deadline()) =>
            {
                let e = self.estimate();
                if self.decider.at_deadline(&e).is_some() {
                    self.decided(now);
                }
            }
            Timer::Transfer if matches!(self.phase, Phase::Transferring) => {
                tracing::info!(call_id = %self.dialog.call_id, "no final NOTIFY in time");
                self.timers.stop(Timer::Transfer);
                self.transfer_failed(None, now);
            }
            Timer::ThirdParty if due(self.b2b.poll_timeout()) => self.thirdparty_timeout(now),
            Timer::Linger if matches!(self.phase, Phase::Lingering) => {
                self.timers.stop(Timer::Linger);
                self.phase = Phase::Finished;
            }
            _ => {}
        }
    }

    /// Timers G/H/I of the INVITE's final response.
    fn invite_timeout(&mut self, now: Instant) {
        match self.invite.on_timeout(now) {
            // Timer G is for unreliable transports (§17.2.1); the 2xx is
            // retransmitted whatever the transport (§13.3.1.4).
            Action::Retransmit
                if self.invite.transport.is_reliable()
                    && self.invite.final_code().is_some_and(|c| c >= 300) => {}
            Action::Retransmit => self.resend_invite_response(),
            Action::TimedOut if self.invite.final_code().is_some_and(|c| c < 300) => {
                tracing::warn!(call_id = %self.dialog.call_id, "no ACK for 200 OK; hanging up");
                self.hang_up(Outcome::NoAck, now);
            }
            Action::TimedOut => self.finish(now),
            Action::None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn table_yields_the_earliest_and_the_expired_in_handling_order() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::Linger, Some(t0));
        t.set(Timer::Answered, Some(t0 + Duration::from_secs(1)));
        t.set(Timer::Invite, Some(t0 + Duration::from_secs(2)));
        assert_eq!(t.next_timeout(), Some(t0));
        let now = t0 + Duration::from_secs(1);
        assert_eq!(
            t.expired(now).collect::<Vec<_>>(),
            [Timer::Answered, Timer::Linger]
        );
        t.stop(Timer::Linger);
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(1)));
    }
}
