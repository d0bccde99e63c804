//! The drop policy of the bounded queues between the edge's tasks: a full
//! queue drops the message (network input must not grow memory without
//! limit), counts it in a `/metrics` counter, and warns at most once per
//! [`WARN_EVERY`] with the number dropped since; each drop alone is a trace.
//! Over UDP the sender's transaction retransmits what was dropped
//! (RFC 3261 §17.1.1.2, §17.1.2.2).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{error::TrySendError, Sender};

/// At most one warning per queue kind this often: a flood must not turn
/// into a flood of log lines.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts the drops of one kind of queue and rate-limits their warning.
/// Shared by the tasks that feed such queues, hence atomics.
#[derive(Debug)]
pub(crate) struct DropLog {
    start: Instant,
    /// Milliseconds after `start` before which no warning is due; 0 before
    /// the first one.
    quiet_until_ms: AtomicU64,
    /// Drops not yet reported in a warning.
    unreported: AtomicU64,
}

impl DropLog {
    /// A log whose clock starts at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            start: now,
            quiet_until_ms: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    /// Account one dropped message in `counter`. Returns the number of drops
    /// to warn about when a warning is due, `None` otherwise.
    pub(crate) fn record(&self, counter: &AtomicU64, now: Instant) -> Option<u64> {
        counter.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let now_ms = now.saturating_duration_since(self.start).as_millis() as u64;
        let quiet = self.quiet_until_ms.load(Ordering::Relaxed);
        if quiet != 0 && now_ms < quiet {
            return None;
        }
        let next = (now_ms + WARN_EVERY.as_millis() as u64).max(1);
        // Only one of the racing tasks warns.
        self.quiet_until_ms
            .compare_exchange(quiet, next, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.unreported.swap(0, Ordering::Relaxed))
    }
}

/// What became of a message offered to a bounded queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer<T> {
    /// Queued.
    Queued,
    /// The queue was full: dropped and counted. `warn` is the number of
    /// drops to warn about, when a warning is due.
    Dropped {
        /// Drops since the last warning, if one is due now.
        warn: Option<u64>,
    },
    /// The receiver is gone: the message is given back.
    Closed(T),
}

/// Offer `item` to `tx` without waiting; a full queue drops it, counted in
/// `counter` through `drops`.
pub(crate) fn offer<T>(
    tx: &Sender<T>,
    item: T,
    drops: &DropLog,
    counter: &AtomicU64,
    now: Instant,
) -> Offer<T> {
    match tx.try_send(item) {
        Ok(()) => Offer::Queued,
        Err(TrySendError::Full(_)) => Offer::Dropped {
            warn: drops.record(counter, now),
        },
        Err(TrySendError::Closed(item)) => Offer::Closed(item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_into_a_queue_nobody_reads_keeps_its_bound() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let t0 = Instant::now();
        let (log, counter) = (DropLog::new(t0), AtomicU64::new(0));
        let mut warnings = 0;
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            match offer(&tx, vec![0; 1400], &log, &counter, now) {
                Offer::Queued => assert!(i < 64, "queued beyond the bound"),
                Offer::Dropped { warn } => warnings += usize::from(warn.is_some()),
                Offer::Closed(_) => panic!("closed"),
            }
        }
        assert_eq!(counter.load(Ordering::Relaxed), 10_000 - 64);
        assert_eq!(warnings, 1, "one second of flood, one warning");
        // Drained, it takes messages again.
        while rx.try_recv().is_ok() {}
        assert_eq!(offer(&tx, vec![], &log, &counter, t0), Offer::Queued);
        drop(rx);
        assert_eq!(
            offer(&tx, vec![1], &log, &counter, t0),
            Offer::Closed(vec![1])
        );
    }

    #[test]
    fn every_drop_is_counted_and_warnings_are_rate_limited() {
        let t0 = Instant::now();
        let log = DropLog::new(t0);
        let counter = AtomicU64::new(0);
        assert_eq!(log.record(&counter, t0), Some(1), "the first drop warns");
        for i in 1..100 {
            let t = t0 + Duration::from_millis(i * 50);
            assert_eq!(log.record(&counter, t), None, "quiet within WARN_EVERY");
        }
        assert_eq!(counter.load(Ordering::Relaxed), 100);
        let later = t0 + WARN_EVERY + Duration::from_millis(1);
        assert_eq!(
            log.record(&counter, later),
            Some(100),
            "the next warning reports the drops since the last"
        );
        assert_eq!(log.record(&counter, later), None);
        assert_eq!(counter.load(Ordering::Relaxed), 102);
    }
}
