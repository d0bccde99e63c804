//! Routing policy: when to decide, and which queue a caller goes to.
//!
//! The decision is taken as soon as the estimator is confident enough after a
//! minimum of speech, or at the latest at the deadline after the first audio.
//! Rules are checked in order; the first that matches names the queue. A call
//! that could not be analysed (no speech, no audio) goes to the default queue:
//! no caller is stranded. [`Decider`] applies the policy over a call's time.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use emonav_dsp::Estimate;

use crate::history::CallerFacts;

/// `[policy]` of a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Speech (ms) needed before an early, confident decision.
    pub min_speech_ms: u32,
    /// Latest decision, in ms after the first audio (or after answering, when no audio comes).
    pub decision_deadline_ms: u64,
    /// Confidence needed for an early decision, in [0, 1].
    pub confidence_threshold: f32,
    /// Queue for calls no rule matches, and for calls that could not be analysed.
    pub default_queue: String,
    /// Arousal at or above which a call is flagged high-risk in logs and events.
    pub flag_arousal: f32,
    /// Probability of anger at or above which a call is flagged high-risk too
    /// (while arousal is at least 0.5).
    pub flag_anger: f32,
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
    /// Keypad rules (RFC 4733 telephone-events), checked before any emotion rule.
    pub dtmf: Vec<DtmfRule>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_speech_ms: 1000,
            decision_deadline_ms: 3000,
            confidence_threshold: 0.7,
            default_queue: "sip:default@127.0.0.1:5070".into(),
            flag_arousal: 0.8,
            flag_anger: 0.6,
            rules: vec![
                Rule {
                    label: "agitated".into(),
                    arousal_min: Some(0.5),
                    arousal_max: None,
                    queue: "sip:deescalation@127.0.0.1:5070".into(),
                    repeat_calls_24h_min: None,
                    flagged_in_last_30d: None,
                },
                Rule {
                    label: "calm".into(),
                    arousal_min: None,
                    arousal_max: Some(0.5),
                    queue: "sip:standard@127.0.0.1:5070".into(),
                    repeat_calls_24h_min: None,
                    flagged_in_last_30d: None,
                },
            ],
            dtmf: Vec::new(),
        }
    }
}

/// One routing rule: matches when arousal is in `[arousal_min, arousal_max)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Name of the emotional state this rule stands for (goes into `X-Emonav-Emotion`).
    pub label: String,
    /// Lower bound, inclusive.
    #[serde(default)]
    pub arousal_min: Option<f32>,
    /// Upper bound, exclusive.
    #[serde(default)]
    pub arousal_max: Option<f32>,
    /// Refer-To target, any SIP/SIPS/tel URI, used verbatim.
    pub queue: String,
    /// Caller history (`[history]`): at least this many earlier calls from
    /// the same caller in the last 24 h (2 = the third call).
    #[serde(default)]
    pub repeat_calls_24h_min: Option<u32>,
    /// Caller history: `true` matches a caller flagged high-risk in the last
    /// 30 days, `false` one who was not.
    #[serde(default)]
    pub flagged_in_last_30d: Option<bool>,
}

impl Rule {
    /// Every condition the rule sets holds; a history condition never holds
    /// while the caller's history is unknown (store off, slow or down).
    fn matches(&self, arousal: f32, history: Option<&CallerFacts>) -> bool {
        let needs_history =
            self.repeat_calls_24h_min.is_some() || self.flagged_in_last_30d.is_some();
        let history_ok = match history {
            Some(h) => {
                self.repeat_calls_24h_min
                    .is_none_or(|n| h.repeat_calls_24h >= n)
                    && self.flagged_in_last_30d.is_none_or(|f| h.flagged_30d == f)
            }
            None => !needs_history,
        };
        history_ok
            && self.arousal_min.is_none_or(|m| arousal >= m)
            && self.arousal_max.is_none_or(|m| arousal < m)
    }

    /// The rule asks about the caller's history.
    pub(crate) fn uses_history(&self) -> bool {
        self.repeat_calls_24h_min.is_some() || self.flagged_in_last_30d.is_some()
    }
}

/// Why the decision was taken when it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Confidence passed the threshold after enough speech.
    Confident,
    /// The deadline came with some speech heard: best estimate used.
    Deadline,
    /// The deadline came and no speech was heard.
    NoSpeech,
    /// The call could not be analysed (e.g. the media never started).
    NotAnalysed,
    /// The caller pressed a key that a `[[policy.dtmf]]` rule routes (RFC 4733).
    Dtmf,
}

/// A keypad rule: the digit routes the caller, whatever the emotion estimate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtmfRule {
    /// One of `0`–`9`, `*`, `#`, `A`–`D`.
    pub digit: char,
    /// Refer-To target, any SIP/SIPS/tel URI, used verbatim.
    pub queue: String,
    /// Label for `X-Emonav-Emotion` and the event line (default `dtmf`).
    #[serde(default = "dtmf_label")]
    pub label: String,
}

fn dtmf_label() -> String {
    "dtmf".into()
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Queue URI for Refer-To.
    pub queue: String,
    /// Label of the matching rule, or `"unknown"` for the default queue.
    pub label: String,
    /// Why now.
    pub reason: Reason,
    /// The estimate the decision was based on.
    pub arousal: f32,
    /// Its confidence.
    pub confidence: f32,
    /// Probability of anger at the time.
    pub anger: f32,
    /// Speech heard, ms.
    pub speech_ms: u32,
    /// Flagged high-risk.
    pub flagged: bool,
}

impl Policy {
    /// Check values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.confidence_threshold) {
            return Err("policy.confidence_threshold must be within [0, 1]".into());
        }
        if self.decision_deadline_ms == 0 {
            return Err("policy.decision_deadline_ms must be > 0".into());
        }
        check_uri("policy.default_queue", &self.default_queue)?;
        for (i, r) in self.dtmf.iter().enumerate() {
            check_uri(&format!("policy.dtmf[{i}].queue"), &r.queue)?;
            if !"0123456789*#ABCD".contains(r.digit) {
                return Err(format!(
                    "policy.dtmf[{i}].digit: {:?} is not a keypad digit (0-9, *, #, A-D)",
                    r.digit
                ));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            check_uri(&format!("policy.rules[{i}].queue"), &r.queue)?;
            if let (Some(lo), Some(hi)) = (r.arousal_min, r.arousal_max) {
                if lo >= hi {
                    return Err(format!(
                        "policy.rules[{i}]: arousal_min must be < arousal_max"
                    ));
                }
            }
        }
        Ok(())
    }

    /// High-risk: high arousal, or likely anger. Anger is a high-arousal
    /// state, so an anger score counts only while arousal is on the high
    /// side too: the two classifiers must agree, which keeps voices unlike
    /// any training speech (synthetic ones, say) from being flagged on the
    /// anger score alone.
    fn flags(&self, e: &Estimate) -> bool {
        e.speech_ms > 0
            && (e.arousal >= self.flag_arousal || (e.anger >= self.flag_anger && e.arousal >= 0.5))
    }

    /// An early decision, if the estimate is already good enough.
    pub fn early(&self, e: &Estimate) -> Option<Decision> {
        self.early_with(e, None)
    }

    /// [`Policy::early`], the caller's history known or not.
    pub(crate) fn early_with(&self, e: &Estimate, h: Option<&CallerFacts>) -> Option<Decision> {
        (e.speech_ms >= self.min_speech_ms && e.confidence >= self.confidence_threshold)
            .then(|| self.route(e, Reason::Confident, h))
    }

    /// Some rule asks about the caller's history.
    pub(crate) fn uses_history(&self) -> bool {
        self.rules.iter().any(Rule::uses_history)
    }

    /// The decision at the deadline, whatever the confidence.
    pub fn at_deadline(&self, e: &Estimate) -> Decision {
        self.at_deadline_with(e, None)
    }

    /// [`Policy::at_deadline`], the caller's history known or not.
    pub(crate) fn at_deadline_with(&self, e: &Estimate, h: Option<&CallerFacts>) -> Decision {
        if e.speech_ms == 0 {
            self.default_decision(e, Reason::NoSpeech)
        } else {
            self.route(e, Reason::Deadline, h)
        }
    }

    /// The decision for a keypad digit, if a rule routes it.
    pub fn on_digit(&self, digit: char, e: &Estimate) -> Option<Decision> {
        let rule = self.dtmf.iter().find(|r| r.digit == digit)?;
        Some(Decision {
            queue: rule.queue.clone(),
            label: rule.label.clone(),
            reason: Reason::Dtmf,
            arousal: e.arousal,
            confidence: e.confidence,
            speech_ms: e.speech_ms,
            anger: e.anger,
            flagged: self.flags(e),
        })
    }

    /// The default queue, for a call that could not be analysed.
    pub fn default_decision(&self, e: &Estimate, reason: Reason) -> Decision {
        Decision {
            queue: self.default_queue.clone(),
            label: "unknown".into(),
            reason,
            arousal: e.arousal,
            confidence: e.confidence,
            speech_ms: e.speech_ms,
            anger: e.anger,
            flagged: false,
        }
    }

    fn route(&self, e: &Estimate, reason: Reason, h: Option<&CallerFacts>) -> Decision {
        match self.rules.iter().find(|r| r.matches(e.arousal, h)) {
            Some(rule) => Decision {
                queue: rule.queue.clone(),
                label: rule.label.clone(),
                reason,
                arousal: e.arousal,
                confidence: e.confidence,
                speech_ms: e.speech_ms,
                anger: e.anger,
                flagged: self.flags(e),
            },
            None => self.default_decision(e, reason),
        }
    }
}

/// The call's decision clock, sans-IO: when to decide and what, given the
/// estimate as audio is analysed. Early after any analysed packet once
/// confident enough; at the deadline otherwise, the deadline being a budget
/// of listening time from the first audio (or from the answer while none
/// comes) that hold pauses; the default queue for a call that could not be
/// analysed; a keypad rule whenever a digit comes. Decides once.
#[derive(Debug, Clone)]
pub struct Decider {
    policy: Policy,
    budget: Duration,
    answered: Option<Instant>,
    first_audio: Option<Instant>,
    paused_since: Option<Instant>,
    pauses: Vec<(Instant, Instant)>,
    decision: Option<Decision>,
    /// The caller's history, once the store answered.
    history: Option<CallerFacts>,
}

impl Decider {
    /// A decider for `policy`, its deadline `[policy] decision_deadline_ms`.
    pub fn new(policy: Policy) -> Self {
        let budget = Duration::from_millis(policy.decision_deadline_ms);
        Self {
            policy,
            budget,
            answered: None,
            first_audio: None,
            paused_since: None,
            pauses: Vec::new(),
            decision: None,
            history: None,
        }
    }

    /// The caller's history arrived: `false` when too late (already decided).
    pub(crate) fn set_history(&mut self, h: CallerFacts) -> bool {
        self.history = Some(h);
        self.decision.is_none()
    }

    /// The call was answered: the deadline runs from now until audio comes.
    pub fn answered(&mut self, now: Instant) {
        self.answered = Some(now);
    }

    /// Audio was heard: the deadline runs from the first (heard, not played out).
    pub fn heard(&mut self, now: Instant) {
        self.first_audio.get_or_insert(now);
    }

    /// When the first audio was heard.
    pub(crate) fn first_audio(&self) -> Option<Instant> {
        self.first_audio
    }

    /// The call is on hold from `now`: the deadline's clock stops.
    pub(crate) fn pause(&mut self, now: Instant) {
        self.paused_since.get_or_insert(now);
    }

    /// The call is resumed at `now`: the deadline moves by the time on hold.
    pub(crate) fn resume(&mut self, now: Instant) {
        if let Some(since) = self.paused_since.take() {
            self.pauses.push((since, now));
        }
    }

    /// The decision taken, if any.
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// When the deadline decision is due: `None` once decided, on hold, or
    /// before the deadline's clock started.
    pub fn deadline(&self) -> Option<Instant> {
        if self.decision.is_some() || self.paused_since.is_some() {
            return None;
        }
        let start = self.first_audio.or(self.answered)?;
        let held: Duration = self
            .pauses
            .iter()
            .filter(|(_, end)| *end > start)
            .map(|(s, end)| *end - (*s).max(start))
            .sum();
        Some(start + self.budget + held)
    }

    /// After an analysed packet: the early decision, if the estimate is
    /// already good enough.
    pub fn after_packet(&mut self, e: &Estimate) -> Option<&Decision> {
        let d = self.policy.early_with(e, self.history.as_ref())?;
        self.settle(d)
    }

    /// A keypad digit: the decision, if a rule routes it.
    pub(crate) fn on_digit(&mut self, digit: char, e: &Estimate) -> Option<&Decision> {
        let d = self.policy.on_digit(digit, e)?;
        self.settle(d)
    }

    /// The deadline came: the best estimate decides, whatever its confidence.
    pub fn at_deadline(&mut self, e: &Estimate) -> Option<&Decision> {
        let d = self.policy.at_deadline_with(e, self.history.as_ref());
        self.settle(d)
    }

    /// The call cannot be analysed (its media stopped): the default queue.
    pub(crate) fn not_analysed(&mut self, e: &Estimate) -> Option<&Decision> {
        let d = self.policy.default_decision(e, Reason::NotAnalysed);
        self.settle(d)
    }

    fn settle(&mut self, d: Decision) -> Option<&Decision> {
        if self.decision.is_some() {
            return None;
        }
        self.decision = Some(d);
        self.decision.as_ref()
    }
}

fn check_uri(key: &str, uri: &str) -> Result<(), String> {
    emonav_sip::message::Uri::parse(uri)
        .map(|_| ())
        .map_err(|e| format!("{key}: {uri:?} is not a SIP, SIPS or tel URI ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(arousal: f32, confidence: f32, speech_ms: u32) -> Estimate {
        Estimate {
            arousal,
            confidence,
            speech_ms,
            ..Default::default()
        }
    }

    #[test]
    fn confident_agitated_caller_routes_early_to_deescalation() {
        let p = Policy::default();
        let d = p.early(&est(0.9, 0.9, 1200)).expect("early decision");
        assert_eq!(d.queue, "sip:deescalation@127.0.0.1:5070");
        assert_eq!(d.reason, Reason::Confident);
        assert!(d.flagged);
    }

    #[test]
    fn anger_flags_only_when_arousal_agrees() {
        let p = Policy::default();
        let angry = |arousal| Estimate {
            anger: 0.95,
            ..est(arousal, 0.8, 1500)
        };
        assert!(p.at_deadline(&angry(0.7)).flagged, "angry and aroused");
        assert!(!p.at_deadline(&angry(0.1)).flagged, "anger score alone");
        assert!(!p.at_deadline(&est(0.7, 0.4, 1500)).flagged, "neither high");
    }

    #[test]
    fn no_early_decision_without_enough_speech_or_confidence() {
        let p = Policy::default();
        assert!(p.early(&est(0.9, 0.95, 400)).is_none());
        assert!(p.early(&est(0.55, 0.2, 2000)).is_none());
    }

    #[test]
    fn deadline_uses_best_estimate_and_silence_goes_to_default() {
        let p = Policy::default();
        let d = p.at_deadline(&est(0.3, 0.2, 800));
        assert_eq!(
            (d.queue.as_str(), d.reason),
            ("sip:standard@127.0.0.1:5070", Reason::Deadline)
        );
        let d = p.at_deadline(&est(0.0, 0.0, 0));
        assert_eq!(
            (d.queue.as_str(), d.reason),
            ("sip:default@127.0.0.1:5070", Reason::NoSpeech)
        );
    }

    #[test]
    fn keypad_rule_routes_whatever_the_emotion() {
        let p = Policy {
            dtmf: vec![DtmfRule {
                digit: '0',
                queue: "sip:operator@127.0.0.1:5070".into(),
                label: "operator".into(),
            }],
            ..Policy::default()
        };
        let d = p.on_digit('0', &est(0.95, 0.9, 2000)).unwrap();
        assert_eq!(
            (d.queue.as_str(), d.reason),
            ("sip:operator@127.0.0.1:5070", Reason::Dtmf)
        );
        assert!(p.on_digit('5', &est(0.2, 0.9, 2000)).is_none());
        let bad = Policy {
            dtmf: vec![DtmfRule {
                digit: 'x',
                queue: "sip:o@h".into(),
                label: "o".into(),
            }],
            ..Policy::default()
        };
        assert!(bad.validate().unwrap_err().contains("keypad digit"));
    }

    #[test]
    fn no_matching_rule_goes_to_default_queue() {
        let p = Policy {
            rules: vec![Rule {
                label: "angry".into(),
                arousal_min: Some(0.8),
                arousal_max: None,
                queue: "tel:+4930123456".into(),
                repeat_calls_24h_min: None,
                flagged_in_last_30d: None,
            }],
            ..Policy::default()
        };
        assert_eq!(p.at_deadline(&est(0.5, 0.1, 900)).queue, p.default_queue);
        assert_eq!(p.at_deadline(&est(0.85, 0.1, 900)).queue, "tel:+4930123456");
    }

    #[test]
    fn history_rules_match_only_a_known_history() {
        let mut p = Policy::default();
        p.rules.insert(
            0,
            Rule {
                label: "repeat".into(),
                arousal_min: None,
                arousal_max: None,
                queue: "sip:advisor@127.0.0.1:5070".into(),
                repeat_calls_24h_min: Some(2),
                flagged_in_last_30d: None,
            },
        );
        let e = est(0.2, 0.9, 1500);
        let h = |n, f| CallerFacts {
            repeat_calls_24h: n,
            flagged_30d: f,
        };
        assert_eq!(p.at_deadline_with(&e, Some(&h(2, false))).label, "repeat");
        assert_eq!(p.at_deadline_with(&e, Some(&h(1, true))).label, "calm");
        assert_eq!(
            p.at_deadline_with(&e, None).label,
            "calm",
            "history unknown"
        );
        p.rules[0].repeat_calls_24h_min = None;
        p.rules[0].flagged_in_last_30d = Some(true);
        assert_eq!(p.at_deadline_with(&e, Some(&h(0, true))).label, "repeat");
        assert_eq!(p.at_deadline_with(&e, Some(&h(5, false))).label, "calm");
        let mut d = Decider::new(p);
        assert!(d.set_history(h(0, true)));
        assert_eq!(d.at_deadline(&e).unwrap().label, "repeat");
        assert!(!d.set_history(h(0, true)), "after the decision: too late");
    }

    #[test]
    fn decider_deadline_is_a_listening_budget_that_hold_pauses() {
        let t0 = Instant::now();
        let mut d = Decider::new(Policy::default());
        assert_eq!(d.deadline(), None, "not answered yet");
        d.answered(t0);
        assert_eq!(d.deadline(), Some(t0 + Duration::from_secs(3)));
        d.heard(t0 + Duration::from_secs(1));
        d.heard(t0 + Duration::from_secs(2));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_secs(4)));
        d.pause(t0 + Duration::from_secs(2));
        assert_eq!(d.deadline(), None, "on hold");
        d.resume(t0 + Duration::from_secs(7));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_secs(9)));
        assert!(d.after_packet(&est(0.9, 0.9, 400)).is_none());
        let q = d.at_deadline(&est(0.0, 0.0, 0)).unwrap().reason;
        assert_eq!(q, Reason::NoSpeech);
        assert!(d.not_analysed(&est(0.0, 0.0, 0)).is_none(), "decides once");
        assert_eq!(d.deadline(), None);
    }
}
