//! The live view: calls in progress with their latest scores (`/calls`) and
//! a stream of what happens to them (`/events`, server-sent events).
//!
//! Call tasks publish here at most every [`SNAPSHOT_EVERY`], at their
//! decision and at their end — never per packet — so the one mutex is taken
//! a few times a second per call, and never across an await. Events go out
//! through a bounded broadcast channel: a slow HTTP client loses events,
//! a call never waits for one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use emonav_dsp::Estimate;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::decisions::PublishedDecision;
use crate::events::CallRecord;

/// How often a call task publishes its estimate.
pub(crate) const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

/// Events buffered for each `/events` client.
const EVENT_BACKLOG: usize = 1024;

/// Most calls shown: a flood of calls must not grow the map without bound
/// (calls beyond it are analysed and routed as usual, just not shown).
const MAX_SHOWN: usize = 10_000;

/// One call as `/calls` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CallView {
    /// Call-ID.
    pub(crate) call_id: String,
    /// From header of the INVITE.
    pub(crate) from: String,
    /// Unix time the call started, ms.
    pub(crate) started_unix_ms: u64,
    /// `answered` (no speech yet), `analysing`, `decided`.
    pub(crate) phase: &'static str,
    /// Latest probability of high arousal.
    pub(crate) arousal: f32,
    /// Latest probability of anger.
    pub(crate) anger: f32,
    /// Latest confidence.
    pub(crate) confidence: f32,
    /// Speech heard so far, ms.
    pub(crate) speech_ms: u32,
    /// The chosen queue, once decided.
    pub(crate) queue: Option<String>,
    /// The emotion label, once decided.
    pub(crate) emotion: Option<String>,
    /// High-risk flag.
    pub(crate) flagged: bool,
}

/// One server-sent event: its `event:` name and its JSON `data:`.
#[derive(Debug, Clone)]
pub(crate) struct LiveEvent {
    /// `call_started`, `score`, `decision`, `flag`, `call_end`.
    pub(crate) kind: &'static str,
    /// The JSON object.
    pub(crate) json: String,
}

/// Calls in progress and the event stream.
#[derive(Debug)]
pub(crate) struct Live {
    calls: Mutex<HashMap<String, CallView>>,
    tx: broadcast::Sender<LiveEvent>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
            tx: broadcast::channel(EVENT_BACKLOG).0,
        }
    }
}

#[derive(Serialize)]
struct Score<'a> {
    call_id: &'a str,
    phase: &'static str,
    arousal: f32,
    anger: f32,
    confidence: f32,
    speech_ms: u32,
}

#[derive(Serialize)]
struct End<'a> {
    call_id: &'a str,
    outcome: crate::events::Outcome,
    queue: Option<&'a str>,
    failure_cause: Option<&'a str>,
    flagged: bool,
    answer_to_refer_ms: Option<u64>,
}

impl Live {
    /// A new `/events` client.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }

    fn send(&self, kind: &'static str, value: &impl Serialize) {
        // Nobody listening: nothing to serialise.
        if self.tx.receiver_count() == 0 {
            return;
        }
        if let Ok(json) = serde_json::to_string(value) {
            let _ = self.tx.send(LiveEvent { kind, json });
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, CallView>) -> R) -> R {
        let mut map = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map)
    }

    /// A call was answered.
    pub(crate) fn started(&self, call_id: &str, from: &str, started_unix_ms: u64) {
        let view = CallView {
            call_id: call_id.to_string(),
            from: from.to_string(),
            started_unix_ms,
            phase: "answered",
            arousal: 0.0,
            anger: 0.0,
            confidence: 0.0,
            speech_ms: 0,
            queue: None,
            emotion: None,
            flagged: false,
        };
        self.send("call_started", &view);
        self.with(|m| {
            if m.len() < MAX_SHOWN {
                m.insert(call_id.to_string(), view);
            }
        });
    }

    /// The call's latest estimate (every [`SNAPSHOT_EVERY`]).
    pub(crate) fn score(&self, call_id: &str, e: &Estimate) {
        let phase = self.with(|m| {
            let v = m.get_mut(call_id)?;
            if v.phase == "answered" && e.speech_ms > 0 {
                v.phase = "analysing";
            }
            v.arousal = e.arousal;
            v.anger = e.anger;
            v.confidence = e.confidence;
            v.speech_ms = e.speech_ms;
            Some(v.phase)
        });
        if let Some(phase) = phase {
            self.send(
                "score",
                &Score {
                    call_id,
                    phase,
                    arousal: e.arousal,
                    anger: e.anger,
                    confidence: e.confidence,
                    speech_ms: e.speech_ms,
                },
            );
        }
    }

    /// The call decided (its queue, emotion and flag).
    pub(crate) fn decided(&self, d: &PublishedDecision) {
        self.with(|m| {
            if let Some(v) = m.get_mut(&d.call_id) {
                v.phase = "decided";
                v.queue = Some(d.queue.clone());
                v.emotion = Some(d.emotion.clone());
                v.flagged = d.flagged;
            }
        });
        self.send("decision", d);
        if d.flagged {
            self.send("flag", d);
        }
    }

    /// The call ended: out of `/calls`, its outcome on the stream.
    pub(crate) fn ended(&self, r: &CallRecord) {
        self.with(|m| m.remove(&r.call_id));
        self.send(
            "call_end",
            &End {
                call_id: &r.call_id,
                outcome: r.outcome,
                queue: r.queue.as_deref(),
                failure_cause: r.failure_cause.as_deref(),
                flagged: r.flagged,
                answer_to_refer_ms: r.answer_to_refer_ms,
            },
        );
    }

    /// `/calls`: the calls in progress, oldest first.
    pub(crate) fn calls_json(&self) -> String {
        let mut calls: Vec<CallView> = self.with(|m| m.values().cloned().collect());
        calls.sort_by_key(|c| c.started_unix_ms);
        serde_json::to_string(&calls).unwrap_or_else(|_| "[]".into())
    }
}
