//! Session timers (RFC 4028) of an answered call: our `Session-Expires`
//! on 2xx (§9), BYE when the caller does not refresh in time (§10), and,
//! when we are the refresher, our refresh UPDATE without SDP (§7.4, §10)
//! through the client transaction.

use std::time::{Duration, Instant};

use super::mid_dialog::SUPPORTED;
use super::timer::Timer;
use super::Call;
use crate::events::Outcome;
use emonav_sip::header;
use emonav_sip::message::{Method, Response};
use emonav_sip::session_timer::{Refresher, SessionTimer};

/// How long a due session refresh waits for a busy client transaction.
const REFRESH_RETRY: Duration = Duration::from_secs(2);

impl Call {
    /// Our session timer headers on a 2xx (RFC 4028 §9).
    pub(super) fn add_timer_headers(&self, resp: &mut Response) {
        if let Some(t) = &self.mid.timer {
            resp.headers.push(header::SESSION_EXPIRES, t.header());
            if t.require {
                resp.headers.push(header::REQUIRE, "timer");
            }
        }
    }

    /// The session was (re)established or refreshed now with timer `t`.
    ///
    /// With refresher=uac we send BYE if the caller does not refresh in
    /// time. With refresher=uas (the caller does not support timers, or
    /// asked us) we refresh at half the interval with an UPDATE without SDP
    /// (RFC 4028 §10) when the caller's `Allow` lists UPDATE. A re-INVITE
    /// refresh would need an INVITE client transaction, which we do not
    /// have: without UPDATE nobody refreshes and no expiry is armed (our
    /// calls usually end with the transfer well within 90 s).
    pub(super) fn start_session_timer(&mut self, t: Option<SessionTimer>, now: Instant) {
        self.mid.timer = t;
        self.mid.refreshed_at = Some(now);
        let expires_at = t
            .filter(|t| t.refresher == Refresher::Uac)
            .map(|t| now + t.bye_after());
        let refresh_at = t
            .filter(|t| t.refresher == Refresher::Uas && self.mid.peer_allows_update)
            .map(|t| now + Duration::from_secs(t.interval.into()) / 2);
        self.timers.set(Timer::SessionExpiry, expires_at);
        self.timers.set(Timer::SessionRefresh, refresh_at);
    }

    /// Our session refresh is due: an UPDATE without SDP through the
    /// non-INVITE client transaction, or a little later if it is busy.
    pub(super) fn send_refresh(&mut self, now: Instant) {
        self.timers.stop(Timer::SessionRefresh);
        let Some(t) = self.mid.timer else { return };
        if !self.is_live() {
            return;
        }
        if self.client.awaiting_final() {
            self.timers
                .set(Timer::SessionRefresh, Some(now + REFRESH_RETRY));
            return;
        }
        tracing::debug!(call_id = %self.dialog.call_id, interval = t.interval, "session refresh (UPDATE)");
        let mut req = self.dialog.request(
            Method::Update,
            &self.s.via(self.invite.transport),
            &self.contact(),
        );
        // §7.4: the refresher names itself, the UAC of the refresh.
        req.headers.push(
            header::SESSION_EXPIRES,
            format!("{};refresher=uac", t.interval),
        );
        req.headers.push(header::MIN_SE, self.s.min_se.to_string());
        req.headers.push(header::SUPPORTED, SUPPORTED);
        self.send_request(req, now);
    }

    /// A REFER or BYE took the client transaction from our refresh UPDATE:
    /// refresh again once it is free.
    pub(super) fn refresh_displaced(&mut self, now: Instant) {
        if self.mid.timer.is_some() && self.timers.get(Timer::SessionRefresh).is_none() {
            self.timers
                .set(Timer::SessionRefresh, Some(now + REFRESH_RETRY));
        }
    }

    /// The final response to our refresh UPDATE (408 for a timeout), with
    /// its `Session-Expires`: a 2xx refreshes the session (the peer may
    /// change the interval, or take the refresher role, §7.4); 408 or 481
    /// end the call with BYE (§10); another failure leaves the session to
    /// expire, and we send BYE just before it does.
    pub(super) fn refresh_done(&mut self, code: u16, session_expires: Option<&str>, now: Instant) {
        let call_id = self.dialog.call_id.clone();
        let Some(t) = self.mid.timer else { return };
        if !self.is_live() {
            return;
        }
        match code {
            200..=299 => {
                let mut t = t;
                if let Some(se) = session_expires {
                    let mut parts = se.split(';');
                    if let Some(i) = parts.next().and_then(|v| v.trim().parse().ok()) {
                        t.interval = i;
                    }
                    if parts.any(|p| p.trim().eq_ignore_ascii_case("refresher=uas")) {
                        t.refresher = Refresher::Uac;
                    }
                }
                tracing::debug!(%call_id, interval = t.interval, "session refreshed");
                // The caller taking the role is, from the dialog's side, refresher=uac.
                self.start_session_timer(Some(t), now);
            }
            408 | 481 => {
                tracing::warn!(%call_id, code, "session refresh failed; hanging up");
                self.timers.stop(Timer::SessionRefresh);
                self.end_queue_leg(now);
                self.hang_up(Outcome::SessionExpired, now);
            }
            _ => {
                tracing::warn!(%call_id, code, "session refresh refused; the session will expire");
                self.timers.stop(Timer::SessionRefresh);
                let since = self.mid.refreshed_at.unwrap_or(now);
                self.timers
                    .set(Timer::SessionExpiry, Some((since + t.bye_after()).max(now)));
            }
        }
    }

    /// The caller did not refresh the session in time (RFC 4028 §10).
    pub(super) fn session_expired(&mut self, now: Instant) {
        self.timers.stop(Timer::SessionExpiry);
        if self.is_live() {
            tracing::warn!(call_id = %self.dialog.call_id, "session timer expired without a refresh; hanging up");
            self.client.abandon();
            self.end_queue_leg(now);
            self.hang_up(Outcome::SessionExpired, now);
        }
    }
}
