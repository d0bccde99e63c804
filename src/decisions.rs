//! The decision API for PBX-driven routing (`[transfer] transfer_mode =
//! "decision_only"`, and every other mode too): each call's routing decision
//! published under its Call-ID and under the `X-Emonav-Key` its INVITE
//! carried, for `GET /decisions/{key}` to read, waiting (long-poll) while
//! the call is still being analysed.
//!
//! The store is plain data behind one mutex, never held across an await;
//! waiters are woken through a [`Notify`] and re-check. The HTTP side is
//! [`get`], a function of the request path that any HTTP server can route
//! to (src/http.rs does it by hand today).
//!
//! Bounded: at most [`CAPACITY`] keys. Entries whose call ended more than
//! [`RETAIN`] ago are dropped as new calls come once half of that is in
//! use, and every few seconds whatever the size (src/trim.rs, which then
//! gives their memory back); a call that finds the store full is not
//! published (a warning says so).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use crate::policy::Reason;

/// `X-Emonav-Key`: the PBX's own key for the call, in its INVITE.
pub(crate) const X_EMONAV_KEY: &str = "X-Emonav-Key";

/// How long a decision stays readable after its call ended.
pub(crate) const RETAIN: Duration = Duration::from_secs(300);
/// Most keys kept.
pub(crate) const CAPACITY: usize = 20_000;
/// Default and longest wait of a long-poll.
const WAIT_DEFAULT: Duration = Duration::from_secs(10);
const WAIT_MAX: Duration = Duration::from_secs(60);

/// The decision as published (JSON on `/decisions/{key}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublishedDecision {
    /// The caller's Call-ID.
    pub call_id: String,
    /// The chosen queue.
    pub queue: String,
    /// The emotion label of the matching rule.
    pub emotion: String,
    /// Probability of high arousal.
    pub arousal: f32,
    /// The classifier's confidence.
    pub confidence: f32,
    /// Probability of anger.
    pub anger: f32,
    /// Why the decision was taken when it was.
    pub reason: Reason,
    /// High-risk flag.
    pub flagged: bool,
    /// How the call goes on: `refer`, `b2bua`, `refer_then_b2bua`, `decision_only`.
    pub transfer_mode: &'static str,
}

/// What a call tells the decision store.
#[derive(Debug, Clone, PartialEq)]
pub enum DecisionNote {
    /// The call exists under these keys; its decision is to come.
    Pending(Vec<String>),
    /// It decided.
    Decided(Vec<String>, Box<PublishedDecision>),
    /// It ended (decided or not).
    Ended(Vec<String>),
}

#[derive(Debug)]
enum State {
    Pending,
    /// The JSON, one exact-size allocation shared by the call's keys
    /// (it was a copy per key), kept [`RETAIN`] after the call.
    Decided(Arc<str>),
    /// Ended without a decision.
    Undecided,
}

#[derive(Debug)]
struct Entry {
    state: State,
    ended: Option<Instant>,
}

/// Published decisions and their waiters.
#[derive(Debug, Default)]
pub(crate) struct Decisions {
    map: Mutex<HashMap<String, Entry>>,
    changed: Notify,
}

/// An HTTP answer: status, content type, body.
pub(crate) type HttpAnswer = (&'static str, &'static str, String);

impl Decisions {
    /// Apply a call's note.
    pub(crate) fn note(&self, note: DecisionNote, now: Instant) {
        {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match note {
                DecisionNote::Pending(keys) => {
                    evict(&mut map, now);
                    if map.len() + keys.len() > CAPACITY {
                        tracing::warn!(
                            keys = ?keys,
                            "decision store full: this call's decision is not published"
                        );
                        return;
                    }
                    for k in keys {
                        map.insert(
                            k,
                            Entry {
                                state: State::Pending,
                                ended: None,
                            },
                        );
                    }
                }
                DecisionNote::Decided(keys, d) => {
                    let json: Arc<str> = serde_json::to_string(&d).unwrap_or_default().into();
                    for k in keys {
                        if let Some(e) = map.get_mut(&k) {
                            e.state = State::Decided(json.clone());
                        }
                    }
                }
                DecisionNote::Ended(keys) => {
                    for k in keys {
                        if let Some(e) = map.get_mut(&k) {
                            if matches!(e.state, State::Pending) {
                                e.state = State::Undecided;
                            }
                            e.ended = Some(now);
                        }
                    }
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// What `key` has now: `None` for an unknown key, `Some(None)` while pending.
    fn lookup(&self, key: &str) -> Option<Option<HttpAnswer>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(key)?;
        Some(match &e.state {
            State::Pending => None,
            State::Decided(json) => Some(("200 OK", "application/json", json.to_string())),
            State::Undecided => Some((
                "410 Gone",
                "application/json",
                "{\"error\":\"the call ended without a decision\"}".into(),
            )),
        })
    }

    /// Wait until `key` is decided (or ended), at most `wait`.
    pub(crate) async fn wait(&self, key: &str, wait: Duration) -> HttpAnswer {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so no change is missed in between.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.lookup(key) {
                None => {
                    return (
                        "404 Not Found",
                        "application/json",
                        "{\"error\":\"unknown key\"}".into(),
                    )
                }
                Some(Some(answer)) => return answer,
                Some(None) => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return (
                    "504 Gateway Timeout",
                    "application/json",
                    "{\"error\":\"not decided yet\",\"state\":\"pending\"}".into(),
                );
            }
        }
    }
}

/// Drop entries ended longer than [`RETAIN`] ago, once the store is half full.
fn evict(map: &mut HashMap<String, Entry>, now: Instant) {
    if map.len() >= CAPACITY / 2 {
        expire(map, now);
    }
}

/// Drop entries ended longer than [`RETAIN`] ago.
fn expire(map: &mut HashMap<String, Entry>, now: Instant) {
    map.retain(|_, e| {
        e.ended
            .is_none_or(|t| now.saturating_duration_since(t) < RETAIN)
    });
}

impl Decisions {
    /// Drop the decisions past [`RETAIN`] whatever the store's size, and
    /// give the table back once it is mostly empty; how many keys went.
    /// Without this a load peak's decisions stayed until 10,000 keys were
    /// in use, however long the instance then stayed quiet.
    pub(crate) fn expire(&self, now: Instant) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        expire(&mut map, now);
        if map.len() < map.capacity() / 4 {
            map.shrink_to_fit();
        }
        before - map.len()
    }
}

/// `GET /decisions/{key}[?wait_ms=N][&format=queue]`: the decision as JSON
/// (200), or only the queue URI as text (`format=queue`, for a dialplan's
/// `CURL()`); 404 for an unknown key, 410 for a call that ended undecided,
/// 504 when `wait_ms` (default 10 s, at most 60 s) passed first. `None` when
/// the path is not under `/decisions/`.
pub(crate) async fn get(store: &Decisions, path_and_query: &str) -> Option<HttpAnswer> {
    let rest = path_and_query.strip_prefix("/decisions/")?;
    let (key, query) = rest.split_once('?').unwrap_or((rest, ""));
    let key = percent_decode(key)?;
    let mut wait = WAIT_DEFAULT;
    let mut queue_only = false;
    for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        match name {
            "wait_ms" => match value.parse::<u64>() {
                Ok(ms) => wait = Duration::from_millis(ms).min(WAIT_MAX),
                Err(_) => {
                    return Some((
                        "400 Bad Request",
                        "application/json",
                        "{\"error\":\"wait_ms must be a number of milliseconds\"}".into(),
                    ))
                }
            },
            "format" => queue_only = value == "queue",
            _ => {}
        }
    }
    if key.is_empty() {
        return Some((
            "400 Bad Request",
            "application/json",
            "{\"error\":\"empty key\"}".into(),
        ));
    }
    let answer = store.wait(&key, wait).await;
    if queue_only && answer.0.starts_with("200") {
        let queue = serde_json::from_str::<serde_json::Value>(&answer.2)
            .ok()
            .and_then(|v| v["queue"].as_str().map(str::to_owned))
            .unwrap_or_default();
        return Some(("200 OK", "text/plain", queue));
    }
    Some(answer)
}

/// `%XX` decoding of a path segment (Call-IDs hold `@`, often escaped).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> PublishedDecision {
        PublishedDecision {
            call_id: "c1@h".into(),
            queue: "sip:q@h".into(),
            emotion: "calm".into(),
            arousal: 0.25,
            confidence: 0.75,
            anger: 0.0,
            reason: Reason::Confident,
            flagged: false,
            transfer_mode: "decision_only",
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_the_decision_when_it_comes_and_unknown_keys_are_404() {
        let store = Arc::new(Decisions::default());
        let keys = vec!["c1@h".to_string(), "pbx-42".to_string()];
        store.note(DecisionNote::Pending(keys.clone()), Instant::now());
        let s = store.clone();
        let waiter = tokio::spawn(async move { get(&s, "/decisions/pbx-42?wait_ms=5000").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "pending: the request waits");
        store.note(
            DecisionNote::Decided(keys.clone(), Box::new(decision())),
            Instant::now(),
        );
        let (status, _, body) = waiter.await.unwrap().unwrap();
        assert_eq!(status, "200 OK");
        assert_eq!(
            body,
            "{\"call_id\":\"c1@h\",\"queue\":\"sip:q@h\",\"emotion\":\"calm\",\"arousal\":0.25,\
             \"confidence\":0.75,\"anger\":0.0,\"reason\":\"confident\",\"flagged\":false,\
             \"transfer_mode\":\"decision_only\"}",
            "the published JSON, under either key"
        );
        let (_, _, again) = get(&store, "/decisions/c1%40h").await.unwrap();
        assert_eq!(again, body);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["queue"], "sip:q@h");
        assert_eq!(v["reason"], "confident");
        let (_, ctype, q) = get(&store, "/decisions/c1%40h?format=queue").await.unwrap();
        assert_eq!((ctype, q.as_str()), ("text/plain", "sip:q@h"));
        let (status, _, _) = get(&store, "/decisions/nope").await.unwrap();
        assert_eq!(status, "404 Not Found");
        assert!(get(&store, "/metrics").await.is_none());
    }

    #[test]
    fn decisions_expire_after_retain_however_few_and_pending_ones_stay() {
        let store = Decisions::default();
        let t0 = Instant::now();
        store.note(DecisionNote::Pending(vec!["a".into()]), t0);
        store.note(DecisionNote::Pending(vec!["b".into(), "pbx-b".into()]), t0);
        store.note(
            DecisionNote::Decided(vec!["b".into(), "pbx-b".into()], Box::new(decision())),
            t0,
        );
        store.note(DecisionNote::Ended(vec!["b".into(), "pbx-b".into()]), t0);
        assert_eq!(store.expire(t0 + RETAIN - Duration::from_secs(1)), 0);
        assert_eq!(store.expire(t0 + RETAIN), 2, "both keys of the ended call");
        assert!(store.lookup("pbx-b").is_none());
        assert_eq!(store.lookup("a"), Some(None), "still pending");
    }

    #[tokio::test]
    async fn a_pending_key_times_out_and_an_undecided_end_is_410() {
        let store = Decisions::default();
        store.note(DecisionNote::Pending(vec!["k".into()]), Instant::now());
        let (status, _, _) = get(&store, "/decisions/k?wait_ms=30").await.unwrap();
        assert_eq!(status, "504 Gateway Timeout");
        store.note(DecisionNote::Ended(vec!["k".into()]), Instant::now());
        let (status, _, _) = get(&store, "/decisions/k").await.unwrap();
        assert_eq!(status, "410 Gone");
        let (status, _, _) = get(&store, "/decisions/k?wait_ms=x").await.unwrap();
        assert_eq!(status, "400 Bad Request");
    }
}
