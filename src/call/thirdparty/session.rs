//! Session timers on the queue leg (RFC 4028): our INVITE to the queue
//! offers `Supported: timer` with `Session-Expires` ([`QUEUE_SESSION_EXPIRES`]
//! raised to `[sip] min_se_s`) and our `Min-SE`; a `422` is answered once
//! with the queue's `Min-SE` (§6). The queue's 2xx says who refreshes: we
//! do, at half the interval, with an UPDATE without SDP (§7.4: no media
//! change, so the caller's leg is not disturbed); the queue does, and we
//! answer its refreshes and end both legs if none comes in time (§10). A
//! 2xx without `Session-Expires` means the queue runs no timer, nor do we.

use std::time::{Duration, Instant};

use super::super::{Call, Output};
use super::LegRequest;
use emonav_sip::header;
use emonav_sip::message::{Headers, Method, Request, Response};
use emonav_sip::session_timer::{lists_option, Refresher, SessionTimer};
use emonav_sip::transaction::{Action, ClientNonInvite};
use emonav_sip::transport::Transport;

/// The session interval we ask of a queue, seconds (RFC 4028 §4's
/// recommended 30 minutes), unless `[sip] min_se_s` is larger.
pub(super) const QUEUE_SESSION_EXPIRES: u32 = 1800;

/// The queue leg's session timer.
#[derive(Debug)]
pub(super) struct QueueTimer {
    timer: SessionTimer,
    /// When we refresh (we are the refresher).
    refresh_at: Option<Instant>,
    /// When we give up on the queue's refresh (it is the refresher).
    expires_at: Option<Instant>,
    /// Our refresh UPDATE in progress, and its CSeq.
    update: Option<(LegRequest, u32)>,
}

impl QueueTimer {
    /// The next instant the timer needs.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        [
            self.refresh_at,
            self.expires_at,
            self.update.as_ref().and_then(|(r, _)| r.tx.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// `Session-Expires` of a message: the interval, and whether it names the
/// UAS (the queue, for our INVITE) as refresher.
fn session_expires(value: &str) -> Option<(u32, bool)> {
    let mut parts = value.split(';');
    let interval = parts.next()?.trim().parse().ok()?;
    let uas = parts.any(|p| p.trim().eq_ignore_ascii_case("refresher=uas"));
    Some((interval, uas))
}

impl Call {
    /// The session interval our INVITE to a queue asks for.
    pub(super) fn queue_session_interval(&self) -> u32 {
        QUEUE_SESSION_EXPIRES.max(self.s.min_se)
    }

    /// RFC 4028 headers on our INVITE to a queue, asking for `interval`.
    pub(super) fn add_queue_timer_headers(&self, invite: &mut Request, interval: u32) {
        invite.headers.set(header::SUPPORTED, "timer");
        invite
            .headers
            .set(header::SESSION_EXPIRES, interval.to_string());
        invite
            .headers
            .set(header::MIN_SE, self.s.min_se.to_string());
    }

    /// The queue's `422` (§6): the interval it names, if larger than ours.
    pub(super) fn queue_min_se(&self, invite: &Request, resp: &Response) -> Option<u32> {
        let asked = invite
            .headers
            .get(header::SESSION_EXPIRES)
            .and_then(session_expires)
            .map_or(0, |(i, _)| i);
        resp.headers
            .get(header::MIN_SE)
            .and_then(|v| v.split(';').next()?.trim().parse().ok())
            .filter(|m| *m > asked)
    }

    /// The queue's 2xx (or a 2xx to our refresh): (re)start the timer.
    pub(super) fn queue_session_refreshed(&mut self, resp_headers: &Headers, now: Instant) {
        let Some((interval, queue_refreshes)) = resp_headers
            .get(header::SESSION_EXPIRES)
            .and_then(session_expires)
        else {
            self.b2b.queue_timer = None;
            return;
        };
        let refresher = if queue_refreshes {
            Refresher::Uas
        } else {
            Refresher::Uac
        };
        let timer = SessionTimer {
            interval,
            refresher,
            require: false,
        };
        self.start_queue_timer(timer, now);
    }

    fn start_queue_timer(&mut self, timer: SessionTimer, now: Instant) {
        let half = Duration::from_secs(timer.interval.into()) / 2;
        // From the queue leg's side we are the UAC: refresher=uac is us.
        let ours = timer.refresher == Refresher::Uac;
        let update = self.b2b.queue_timer.take().and_then(|t| t.update);
        self.b2b.queue_timer = Some(Box::new(QueueTimer {
            timer,
            refresh_at: ours.then(|| now + half),
            expires_at: (!ours).then(|| now + timer.bye_after()),
            update,
        }));
    }

    /// The queue refreshed the session (its UPDATE or re-INVITE): the
    /// `Session-Expires` of our 2xx to it, and the timer restarted.
    pub(super) fn queue_refresh_headers(
        &mut self,
        req: &Request,
        resp: &mut Response,
        now: Instant,
    ) {
        let Some((interval, uas)) = req
            .headers
            .get(header::SESSION_EXPIRES)
            .and_then(session_expires)
        else {
            return;
        };
        // In its request the queue is the UAC: refresher=uac is the queue.
        let queue_refreshes = !uas;
        let interval = interval.max(self.s.min_se);
        let who = if queue_refreshes { "uac" } else { "uas" };
        resp.headers.push(
            header::SESSION_EXPIRES,
            format!("{interval};refresher={who}"),
        );
        if lists_option(&req.headers, header::SUPPORTED, "timer") {
            resp.headers.push(header::REQUIRE, "timer");
        }
        let refresher = if queue_refreshes {
            Refresher::Uas
        } else {
            Refresher::Uac
        };
        self.start_queue_timer(
            SessionTimer {
                interval,
                refresher,
                require: false,
            },
            now,
        );
    }

    /// The caller's leg is over (its session expired): so is the queue's.
    pub(in crate::call) fn end_queue_leg(&mut self, now: Instant) {
        self.b2b.queue_timer = None;
        if let Some(i) = self
            .b2b
            .legs
            .len()
            .checked_sub(1)
            .filter(|_| self.bridging())
        {
            self.bye_queue(i, now);
        }
    }

    /// The queue answered `422` (§6): our INVITE again, once, asking for
    /// its `Min-SE`. True if it was sent.
    pub(super) fn queue_session_too_small(
        &mut self,
        i: usize,
        resp: &Response,
        now: Instant,
    ) -> bool {
        let leg = &self.b2b.legs[i];
        if leg.session_retried {
            return false;
        }
        let Some(min) = self.queue_min_se(&leg.invite, resp) else {
            return false;
        };
        let mut req = leg.invite.clone();
        self.add_queue_timer_headers(&mut req, min);
        self.resend_queue_invite(i, req, now);
        self.b2b.legs[i].session_retried = true;
        true
    }

    /// Our refresh is due, or the queue's is overdue.
    pub(super) fn queue_timer_timeout(&mut self, now: Instant) {
        if self.b2b.legs.last().is_none_or(|l| l.ended || l.abandoned) {
            self.b2b.queue_timer = None;
        }
        let Some(qt) = &mut self.b2b.queue_timer else {
            return;
        };
        if let Some((r, _)) = &mut qt.update {
            match r.tx.on_timeout(now) {
                Action::Retransmit => {
                    let (dest, data) = (r.dest, r.data.clone());
                    self.out.push(Output::sip(Transport::Udp, dest, data, dest));
                }
                Action::TimedOut => {
                    qt.update = None;
                    return self
                        .queue_session_over("queue did not answer the session refresh", now);
                }
                Action::None => {}
            }
        }
        if qt.expires_at.is_some_and(|t| now >= t) {
            qt.expires_at = None;
            return self.queue_session_over("queue session expired (RFC 4028)", now);
        }
        if qt.refresh_at.is_none_or(|t| now < t) || qt.update.is_some() {
            return;
        }
        qt.refresh_at = None;
        let interval = qt.timer.interval;
        let via = self.s.via(Transport::Udp);
        let contact = self.s.contact_uri(Transport::Udp);
        let min_se = self.s.min_se;
        let ua = self.s.user_agent.clone();
        let Some(leg) = self.b2b.legs.last_mut().filter(|l| !l.ended) else {
            return;
        };
        let Some(d) = &mut leg.dialog else { return };
        let mut req = d.request(Method::Update, &via, &contact);
        req.headers
            .push(header::SESSION_EXPIRES, format!("{interval};refresher=uac"));
        req.headers.push(header::MIN_SE, min_se.to_string());
        req.headers.push(header::SUPPORTED, "timer");
        req.headers.push(header::USER_AGENT, ua);
        let cseq = req.cseq().map_or(0, |c| c.seq);
        let data = req.to_bytes();
        let dest = leg.dest;
        tracing::debug!(call_id = %self.dialog.call_id, interval, "queue leg session refresh (UPDATE)");
        self.out
            .push(Output::sip(Transport::Udp, dest, data.clone(), dest));
        if let Some(qt) = &mut self.b2b.queue_timer {
            qt.update = Some((
                LegRequest {
                    tx: ClientNonInvite::new(now, self.s.timers),
                    data,
                    dest,
                },
                cseq,
            ));
        }
    }

    /// A response to our refresh UPDATE on the queue leg. True if it was.
    pub(super) fn queue_refresh_response(&mut self, resp: &Response, now: Instant) -> bool {
        let Some(qt) = &mut self.b2b.queue_timer else {
            return false;
        };
        let Some((r, cseq)) = &mut qt.update else {
            return false;
        };
        if resp
            .cseq()
            .is_none_or(|c| c.method != Method::Update || c.seq != *cseq)
        {
            return false;
        }
        if !(r.tx.on_response(resp.code, now) && resp.code >= 200) {
            return true;
        }
        qt.update = None;
        match resp.code {
            200..=299 => self.queue_session_refreshed(&resp.headers, now),
            408 | 481 => self.queue_session_over("queue session refresh failed", now),
            code => {
                // §10: refused; the session runs out at its expiry.
                tracing::warn!(call_id = %self.dialog.call_id, code, "queue refused the session refresh");
                let t = qt.timer;
                qt.expires_at = Some(now + t.bye_after() / 2);
            }
        }
        true
    }

    /// The queue leg's session is over: BYE on both legs, with the reason.
    fn queue_session_over(&mut self, cause: &str, now: Instant) {
        tracing::warn!(call_id = %self.dialog.call_id, %cause, "B2BUA: ending both legs");
        self.b2b.queue_timer = None;
        if let Some(i) = self.b2b.legs.len().checked_sub(1) {
            self.bye_queue(i, now);
        }
        if self.bridging() {
            self.hang_up_with_reason(
                crate::events::Outcome::SessionExpired,
                &format!("SIP ;cause=408 ;text=\"{cause}\""),
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::session_expires;

    #[test]
    fn session_expires_names_the_refresher() {
        assert_eq!(session_expires("90;refresher=uas"), Some((90, true)));
        assert_eq!(session_expires("1800"), Some((1800, false)));
        assert_eq!(session_expires("x;refresher=uas"), None);
    }
}
