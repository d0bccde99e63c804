//! The webhook outbox, sans-IO: events waiting for their POST, in order,
//! with the retry schedule and the bound. The task in `mod.rs` does the
//! sockets and the file; everything here is driven by `now`, so retries and
//! back-off are tested without sleeping.
//!
//! Delivery is at least once and in order: the head is retried until the
//! receiver takes it (2xx) or refuses it for good (4xx other than 408/429),
//! and nothing behind it overtakes it, so a receiver sees a call's `flag`
//! before its `call_end`. Each event carries an `id` for the receiver to
//! drop the duplicates a lost response causes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What became of one POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// 2xx: the receiver has it.
    Delivered,
    /// A 4xx that retrying cannot fix (bad URL, auth): the event is dropped
    /// and counted, or it would block every event behind it for ever.
    Refused,
    /// No answer, a connection error, 5xx, 408 or 429: try again later.
    Retry,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OutboxStats {
    /// Events the receiver took.
    pub(crate) delivered: u64,
    /// Events it refused for good.
    pub(crate) refused: u64,
    /// Events dropped because the outbox was full.
    pub(crate) dropped: u64,
    /// POSTs that failed and were retried.
    pub(crate) retries: u64,
}

/// Events waiting, oldest first.
#[derive(Debug)]
pub(crate) struct Outbox {
    pending: VecDeque<String>,
    max: usize,
    first_retry: Duration,
    max_retry: Duration,
    /// Failed POSTs of the head in a row.
    failures: u32,
    next_try: Option<Instant>,
    in_flight: bool,
    /// Changed since the spool was last written.
    dirty: bool,
    stats: OutboxStats,
}

impl Outbox {
    /// An empty outbox holding at most `max` events (at least 1).
    pub(crate) fn new(max: usize, first_retry: Duration, max_retry: Duration) -> Self {
        Self {
            pending: VecDeque::new(),
            max: max.max(1),
            first_retry,
            max_retry: max_retry.max(first_retry),
            failures: 0,
            next_try: None,
            in_flight: false,
            dirty: false,
            stats: OutboxStats::default(),
        }
    }

    /// Queue one event (a JSON object on one line). When full, the oldest
    /// event not being posted makes room: the newest alert matters most.
    pub(crate) fn push(&mut self, event: String) {
        if self.pending.len() >= self.max {
            let victim = usize::from(self.in_flight);
            if victim < self.pending.len() {
                self.pending.remove(victim);
                self.stats.dropped += 1;
            } else {
                // max == 1 and that one is in flight: the new one goes.
                self.stats.dropped += 1;
                return;
            }
        }
        self.pending.push_back(event);
        self.dirty = true;
    }

    /// The event to POST now, if one is due and none is in flight.
    pub(crate) fn poll_send(&mut self, now: Instant) -> Option<String> {
        if self.in_flight || self.next_try.is_some_and(|t| now < t) {
            return None;
        }
        let head = self.pending.front()?.clone();
        self.in_flight = true;
        Some(head)
    }

    /// The POST of the head finished.
    pub(crate) fn on_result(&mut self, result: Attempt, now: Instant) {
        if !self.in_flight {
            return;
        }
        self.in_flight = false;
        match result {
            Attempt::Delivered | Attempt::Refused => {
                self.pending.pop_front();
                self.dirty = true;
                self.failures = 0;
                self.next_try = None;
                if result == Attempt::Delivered {
                    self.stats.delivered += 1;
                } else {
                    self.stats.refused += 1;
                }
            }
            Attempt::Retry => {
                self.stats.retries += 1;
                self.failures = self.failures.saturating_add(1);
                // Exponential back-off, capped; ±20 % jitter so that many
                // instances whose receiver came back do not retry in step.
                let exp = self
                    .first_retry
                    .saturating_mul(1u32 << self.failures.saturating_sub(1).min(20))
                    .min(self.max_retry);
                let jitter = 0.8 + 0.4 * fastrand::f64();
                self.next_try = Some(now + exp.mul_f64(jitter));
            }
        }
    }

    /// When [`Outbox::poll_send`] has something next, if not now.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight || self.pending.is_empty() {
            None
        } else {
            self.next_try
        }
    }

    /// Events waiting (the one in flight included).
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// True while the receiver is failing: what waits should be on disk.
    pub(crate) fn failing(&self) -> bool {
        self.failures > 0
    }

    /// Changed since the spool was last taken.
    pub(crate) fn dirty(&self) -> bool {
        self.dirty
    }

    /// The spool's text if it changed since the last call: one event per line.
    pub(crate) fn take_spool(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        let mut text = String::new();
        for e in &self.pending {
            text.push_str(e);
            text.push('\n');
        }
        Some(text)
    }

    /// Queue what a spool file held (lines that are not JSON objects are
    /// skipped: a torn last line after a crash loses only itself).
    pub(crate) fn load_spool(&mut self, text: &str) -> usize {
        let mut n = 0;
        for line in text.lines() {
            let ok = serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object());
            if ok {
                self.push(line.to_string());
                n += 1;
            }
        }
        n
    }

    /// Counts so far.
    pub(crate) fn stats(&self) -> OutboxStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(max: usize) -> Outbox {
        Outbox::new(max, Duration::from_millis(500), Duration::from_secs(60))
    }

    #[test]
    fn in_order_one_at_a_time() {
        let now = Instant::now();
        let mut o = outbox(10);
        o.push(r#"{"n":1}"#.into());
        o.push(r#"{"n":2}"#.into());
        assert_eq!(o.poll_send(now).as_deref(), Some(r#"{"n":1}"#));
        // The second waits for the first's answer.
        assert_eq!(o.poll_send(now), None);
        o.on_result(Attempt::Delivered, now);
        assert_eq!(o.poll_send(now).as_deref(), Some(r#"{"n":2}"#));
        o.on_result(Attempt::Delivered, now);
        assert_eq!(o.len(), 0);
        assert_eq!(o.stats().delivered, 2);
    }

    #[test]
    fn retries_back_off_exponentially_then_cap() {
        let t0 = Instant::now();
        let mut o = outbox(10);
        o.push("{}".into());
        let mut now = t0;
        let mut gaps = vec![];
        for _ in 0..10 {
            assert!(o.poll_send(now).is_some());
            o.on_result(Attempt::Retry, now);
            let next = o.poll_timeout().unwrap();
            assert_eq!(o.poll_send(next - Duration::from_millis(1)), None);
            gaps.push((next - now).as_secs_f64());
            now = next;
        }
        // 0.5, 1, 2, 4 s ... within the jitter, capped at 60 s.
        for (i, g) in gaps.iter().enumerate() {
            let nominal = (0.5 * 2f64.powi(i as i32)).min(60.0);
            assert!(
                (nominal * 0.8 - 1e-3..=nominal * 1.2 + 1e-3).contains(g),
                "{i}: {g}"
            );
        }
        assert!(o.failing());
        assert!(o.poll_send(now).is_some());
        o.on_result(Attempt::Delivered, now);
        assert!(!o.failing());
        assert_eq!(o.stats().retries, 10);
    }

    #[test]
    fn a_refused_event_does_not_block_the_rest() {
        let now = Instant::now();
        let mut o = outbox(10);
        o.push(r#"{"n":1}"#.into());
        o.push(r#"{"n":2}"#.into());
        o.poll_send(now);
        o.on_result(Attempt::Refused, now);
        assert_eq!(o.poll_send(now).as_deref(), Some(r#"{"n":2}"#));
        assert_eq!(o.stats().refused, 1);
    }

    #[test]
    fn full_drops_the_oldest_not_in_flight() {
        let now = Instant::now();
        let mut o = outbox(2);
        o.push(r#"{"n":1}"#.into());
        o.push(r#"{"n":2}"#.into());
        assert_eq!(o.poll_send(now).as_deref(), Some(r#"{"n":1}"#));
        o.push(r#"{"n":3}"#.into());
        assert_eq!(o.stats().dropped, 1);
        o.on_result(Attempt::Delivered, now);
        assert_eq!(o.poll_send(now).as_deref(), Some(r#"{"n":3}"#));
    }

    #[test]
    fn spool_round_trip_skips_a_torn_line() {
        let mut o = outbox(10);
        o.push(r#"{"n":1}"#.into());
        o.push(r#"{"n":2}"#.into());
        let text = o.take_spool().unwrap();
        assert_eq!(o.take_spool(), None, "unchanged: nothing to write");
        let mut p = outbox(10);
        assert_eq!(p.load_spool(&format!("{text}{{\"n\":")), 2);
        assert_eq!(p.poll_send(Instant::now()).as_deref(), Some(r#"{"n":1}"#));
    }
}
