//! From the decision to the end of the transfer: REFER (RFC 3515) with
//! `Referred-By` (RFC 3892) and our `X-Emonav-*` headers, the implicit
//! subscription's sipfrag NOTIFYs (RFC 3515 §2.4.4-§2.4.6, RFC 3420) or its
//! absence (RFC 4488 `Refer-Sub: false`), the BYE once it worked (RFC 5589
//! §6), and the profile's fallback when it did not: the caller is never
//! silently dropped.

use emonav_sip::transport::Peer;
use std::time::Instant;

use super::timer::Timer;
use super::{Call, Phase};
use crate::config::{Fallback, TransferMode};
use crate::decisions::{DecisionNote, PublishedDecision};
use crate::events::{Outcome, ReferAttempt};
use crate::policy::{Decision, Reason};
use emonav_sip::header;
use emonav_sip::message::{Method, Request, Response};
use emonav_sip::refer::{self, NotifyError, ReferNotify};

/// The transfer's own state.
#[derive(Debug, Default)]
pub(super) struct Transfer {
    /// CSeq of the REFER whose subscription we follow.
    pub(super) refer_cseq: Option<u32>,
    /// The caller's INVITE said `Supported: norefersub` (RFC 4488).
    pub(super) norefersub: bool,
    /// The caller hung up (the transfer may still be going on).
    pub(super) caller_hung_up: bool,
    /// The caller's INVITE had an `Allow` without REFER.
    pub(super) refer_not_allowed: bool,
}

/// `X-Emonav-Emotion`: the emotion label the call was routed on.
pub(crate) const X_EMONAV_EMOTION: &str = "X-Emonav-Emotion";
/// `X-Emonav-Arousal`: the arousal estimate, two decimals.
pub(crate) const X_EMONAV_AROUSAL: &str = "X-Emonav-Arousal";
/// `X-Emonav-Confidence`: the classifier's confidence, two decimals.
pub(crate) const X_EMONAV_CONFIDENCE: &str = "X-Emonav-Confidence";
/// `X-Emonav-Reason`: why the decision was taken.
pub(crate) const X_EMONAV_REASON: &str = "X-Emonav-Reason";
/// `X-Emonav-Flag`: `high-risk` when the policy flagged the caller.
pub(crate) const X_EMONAV_FLAG: &str = "X-Emonav-Flag";
/// `X-Emonav-Queue`: the chosen queue, on our BYE in `decision_only` mode.
pub(crate) const X_EMONAV_QUEUE: &str = "X-Emonav-Queue";

/// Our `X-Emonav-*` headers on the REFER: what the agent taking the call
/// should know about the caller.
pub(crate) fn decision_headers(d: &Decision) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (X_EMONAV_EMOTION, d.label.clone()),
        (X_EMONAV_AROUSAL, format!("{:.2}", d.arousal)),
        (X_EMONAV_CONFIDENCE, format!("{:.2}", d.confidence)),
        (X_EMONAV_REASON, reason_token(d.reason).to_string()),
    ];
    if d.flagged {
        h.push((X_EMONAV_FLAG, "high-risk".to_string()));
    }
    h
}

fn reason_token(r: Reason) -> &'static str {
    match r {
        Reason::Confident => "confident",
        Reason::Deadline => "deadline",
        Reason::NoSpeech => "no-speech",
        Reason::NotAnalysed => "not-analysed",
        Reason::Dtmf => "dtmf",
    }
}

/// RFC 4488: with `Refer-Sub: false` accepted (echoed in the 2xx), the
/// 2xx is the end of the transfer: no NOTIFY will come.
pub(super) fn refer_without_subscription(resp: &Response) -> bool {
    resp.headers.get(header::REFER_SUB).is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("false")
    })
}

impl Call {
    /// The decider just decided: record it and transfer.
    pub(super) fn decided(&mut self, now: Instant) {
        let Some(d) = self.decider.decision() else {
            return;
        };
        let r = &mut self.record;
        r.audio_ms = self.media.as_ref().map(|m| m.audio_ms()).unwrap_or(0);
        r.first_audio_to_decision_ms = self
            .decider
            .first_audio()
            .filter(|_| self.media.is_some())
            .map(|t| (now - t).as_millis() as u64);
        r.speech_ms = d.speech_ms;
        r.arousal = Some(d.arousal);
        r.confidence = Some(d.confidence);
        r.anger = Some(d.anger);
        r.emotion = Some(d.label.clone());
        r.queue = Some(d.queue.clone());
        r.decision_reason = Some(d.reason);
        r.flagged = d.flagged;
        if d.flagged {
            tracing::warn!(call_id = %self.dialog.call_id, arousal = d.arousal, "high-risk call flagged");
        }
        tracing::info!(
            call_id = %self.dialog.call_id, queue = %d.queue, emotion = %d.label,
            arousal = d.arousal, confidence = d.confidence, reason = ?d.reason, "decision"
        );
        let published = PublishedDecision {
            call_id: self.dialog.call_id.clone(),
            queue: d.queue.clone(),
            emotion: d.label.clone(),
            arousal: d.arousal,
            confidence: d.confidence,
            anger: d.anger,
            reason: d.reason,
            flagged: d.flagged,
            transfer_mode: super::transfer_mode_name(self.s.transfer_mode),
        };
        let keys = self.decision_keys.clone();
        self.out.push(super::Output::Decision(DecisionNote::Decided(
            keys,
            Box::new(published),
        )));
        let target = d.queue.clone();
        self.route(&target, now);
    }

    /// The ACK confirmed the dialog: a decision taken before it transfers now.
    pub(super) fn maybe_refer_after_ack(&mut self, now: Instant) {
        if let (Phase::Listening, Some(d)) = (&self.phase, self.decider.decision()) {
            let target = d.queue.clone();
            self.route(&target, now);
        }
    }

    /// Take the decided call to `target` the profile's way
    /// (`[transfer] transfer_mode`), once the dialog is confirmed.
    fn route(&mut self, target: &str, now: Instant) {
        if self.invite.awaiting_ack() {
            // A confirmed dialog first: the ACK routes (maybe_refer_after_ack).
            return;
        }
        let call_id = &self.dialog.call_id;
        match self.s.transfer_mode {
            TransferMode::Refer => {
                if self.transfer.refer_not_allowed {
                    tracing::warn!(%call_id, "the caller's Allow lacks REFER; transfer_mode = \"refer\" tries anyway");
                }
                self.send_refer(target, now);
            }
            TransferMode::ReferThenB2bua if !self.transfer.refer_not_allowed => {
                self.send_refer(target, now)
            }
            TransferMode::ReferThenB2bua | TransferMode::B2bua => {
                if self.transfer.refer_not_allowed {
                    tracing::info!(%call_id, "the caller's Allow lacks REFER: third-party call control");
                }
                self.bridge(target, now);
            }
            TransferMode::DecisionOnly => self.hang_up_decided(target, now),
        }
    }

    /// `decision_only`: the decision is published; our BYE carries it too
    /// (`Reason`, RFC 3326, and `X-Emonav-*`) for the PBX's dialplan.
    fn hang_up_decided(&mut self, target: &str, now: Instant) {
        let mut extra = vec![
            (
                header::REASON,
                format!("SIP ;cause=200 ;text=\"emonav decision: {target}\""),
            ),
            (X_EMONAV_QUEUE, target.to_string()),
        ];
        if let Some(d) = self.decider.decision() {
            extra.extend(decision_headers(d));
        }
        tracing::info!(call_id = %self.dialog.call_id, queue = %target, "decision published; hanging up for the PBX to route");
        self.hang_up_with(Outcome::Decided, &extra, now);
    }

    pub(super) fn send_refer(&mut self, target: &str, now: Instant) {
        if self.invite.awaiting_ack() {
            // REFER needs a confirmed dialog: the ACK sends it (maybe_refer_after_ack).
            return;
        }
        let Some(d) = self.decider.decision() else {
            return;
        };
        let extra = decision_headers(d);
        let transport = self.invite.transport;
        let mut req = self
            .dialog
            .request(Method::Refer, &self.s.via(transport), &self.contact());
        let referred_by = self.dialog.local.uri.clone();
        refer::add_refer_headers(&mut req, target, &referred_by, &extra);
        if self.transfer.norefersub {
            // RFC 4488 §4: no implicit subscription; the 2xx ends the transfer.
            req.headers.push(header::REFER_SUB, "false");
            req.headers.push(header::SUPPORTED, "norefersub");
        }
        if self.record.answer_to_refer_ms.is_none() {
            self.record.answer_to_refer_ms =
                self.clock.answered_at.map(|t| (now - t).as_millis() as u64);
        }
        self.record.refer_attempts.push(ReferAttempt {
            target: target.to_string(),
            response: None,
            notify_status: None,
        });
        self.transfer.refer_cseq = Some(self.dialog.local_cseq);
        self.phase = Phase::Transferring;
        self.timers
            .set(Timer::Transfer, Some(now + self.s.notify_timeout));
        self.send_request(req, now);
    }

    /// The final response to our REFER (408 for a timeout).
    pub(super) fn refer_answered(&mut self, code: u16, now: Instant) {
        if let Some(a) = self.record.refer_attempts.last_mut() {
            a.response = Some(code);
        }
        if !(200..300).contains(&code) {
            tracing::info!(call_id = %self.dialog.call_id, code, "REFER refused");
            if matches!(code, 405 | 420 | 501) {
                tracing::warn!(call_id = %self.dialog.call_id, code, "peer cannot transfer");
            }
            if matches!(self.phase, Phase::Transferring) {
                self.transfer_failed(Some(code), now);
            }
        }
    }

    /// A 2xx to a REFER sent with `Refer-Sub: false`: the transfer is done.
    pub(super) fn accepted_without_subscription(&mut self, now: Instant) {
        tracing::info!(call_id = %self.dialog.call_id, "REFER accepted without subscription (RFC 4488)");
        if let Some(a) = self.record.refer_attempts.last_mut() {
            a.notify_status = None;
        }
        self.transfer_succeeded(now);
    }

    /// A final response to the current REFER whose transaction is already
    /// gone: the final NOTIFY overtook the 202 (a proxy's workers may swap
    /// them, RFC 3515 allows it). Only recorded in the attempt.
    pub(super) fn late_refer_response(&mut self, resp: &Response) {
        let Some(cseq) = resp.cseq() else { return };
        if resp.code < 200
            || cseq.method != Method::Refer
            || Some(cseq.seq) != self.transfer.refer_cseq
            || self.refer_open()
        {
            return;
        }
        if let Some(a) = self.record.refer_attempts.last_mut() {
            a.response.get_or_insert(resp.code);
        }
    }

    pub(super) fn on_notify(&mut self, req: &Request, peer: Peer, now: Instant) {
        let notify = match refer::inspect_notify(req) {
            Ok(n) => n,
            Err(NotifyError::BadEvent) => return self.reply(req, peer, 489, "Bad Event", now),
            Err(NotifyError::BadBody) => {
                return self.reply(req, peer, 400, "Bad Request (sipfrag body expected)", now)
            }
        };
        self.reply(req, peer, 200, "OK", now);
        // RFC 3515 §2.4.6: `id` names the REFER's CSeq; an old subscription's
        // reports must not decide the current attempt.
        let id = req
            .headers
            .get(header::EVENT)
            .and_then(|e| e.split(';').find_map(|p| p.trim().strip_prefix("id=")))
            .and_then(|v| v.trim().parse::<u32>().ok());
        if id.is_some() && id != self.transfer.refer_cseq {
            return;
        }
        self.on_refer_progress(notify, now);
    }

    fn on_refer_progress(&mut self, n: ReferNotify, now: Instant) {
        if let Some(a) = self.record.refer_attempts.last_mut() {
            a.notify_status = Some(n.status);
        }
        if !matches!(self.phase, Phase::Transferring) || !n.is_final() {
            return;
        }
        // The REFER itself may still be retransmitting if its 202 was lost.
        self.client.abandon();
        if (200..300).contains(&n.status) {
            self.transfer_succeeded(now);
        } else {
            self.transfer_failed(Some(n.status), now);
        }
    }

    pub(super) fn transfer_failed(&mut self, code: Option<u16>, now: Instant) {
        if self.failure_tone_playing() {
            // Already failed (a late NOTIFY, or the transfer timer).
            return;
        }
        if self.transfer.caller_hung_up {
            self.record.outcome = Outcome::CallerHangup;
            self.finish(now);
            return;
        }
        if self.s.transfer_mode == TransferMode::ReferThenB2bua {
            // REFER cannot pass here (405/420/501: the peer cannot transfer;
            // 403: not allowed; no answer): connect the caller ourselves.
            let target = self
                .record
                .refer_attempts
                .first()
                .map(|a| a.target.clone())
                .unwrap_or_else(|| self.s.policy.default_queue.clone());
            tracing::warn!(call_id = %self.dialog.call_id, ?code, "REFER failed: third-party call control instead");
            self.client.abandon();
            return self.bridge(&target, now);
        }
        let default = self.s.policy.default_queue.clone();
        let tried_default = self
            .record
            .refer_attempts
            .iter()
            .any(|a| a.target == default);
        let retry = self.s.fallback == Fallback::DefaultQueueThenHangup
            && self.record.refer_attempts.len() == 1
            && !tried_default;
        tracing::warn!(
            call_id = %self.dialog.call_id, ?code, retry_default = retry,
            "transfer failed"
        );
        if retry {
            self.send_refer(&default, now);
        } else {
            let cause = match code {
                Some(c) => format!("refer: {c}"),
                None => "refer: no final NOTIFY in time".into(),
            };
            // As in b2bua mode: the congestion tone, then the BYE saying why.
            let status = code.filter(|c| *c >= 300).unwrap_or(480);
            let reason = format!("SIP ;cause={status} ;text=\"transfer failed: {cause}\"");
            self.record.failure_cause = Some(cause);
            self.fail_with_tone(reason, now);
        }
    }

    fn transfer_succeeded(&mut self, now: Instant) {
        let outcome = if self.record.refer_attempts.len() > 1 {
            Outcome::TransferredToFallback
        } else {
            Outcome::Transferred
        };
        if self.transfer.caller_hung_up {
            self.record.outcome = outcome;
            self.finish(now);
        } else {
            // RFC 5589 §6: the transferor ends its dialog once the transfer worked.
            self.hang_up(outcome, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_headers_name_emotion_scores_reason_and_flag() {
        let d = Decision {
            queue: "sip:q@h".into(),
            label: "agitated".into(),
            reason: Reason::NoSpeech,
            arousal: 0.876,
            confidence: 0.5,
            anger: 0.0,
            speech_ms: 0,
            flagged: true,
        };
        let h = decision_headers(&d);
        let names: Vec<_> = h.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        assert_eq!(
            names,
            [
                "X-Emonav-Emotion: agitated",
                "X-Emonav-Arousal: 0.88",
                "X-Emonav-Confidence: 0.50",
                "X-Emonav-Reason: no-speech",
                "X-Emonav-Flag: high-risk"
            ]
        );
    }
}
