//! Giving the heap back after a load peak (issue 11 item 4).
//!
//! glibc's allocator keeps what calls freed in its arenas: after an overload
//! of 1,000 calls the process stayed at its peak RSS with no call up. Freed
//! chunks in the middle of an arena are only returned by `malloc_trim`, which
//! walks every arena and `madvise`s their free pages away. It costs a walk of
//! the heap (milliseconds for a few hundred MB) and makes the next peak fault
//! its pages in again, so it runs only when the number of calls in progress
//! has fallen to half of its recent peak, at most once per [`TICK`], on a
//! blocking thread rather than a runtime worker, never on the packet path.
//! A second trim follows [`FOLLOW_UP`] later: the SIP side of the peak's
//! calls (their completed transactions, kept 64·T1 = 32 s by RFC 3261
//! §17) is freed only then, and was measured as half of what stayed
//! (30 of 62 MB after 400 calls). The decisions of the peak's calls go
//! [`RETAIN`](crate::decisions::RETAIN) after them: expired at each tick
//! (a walk of at most 20,000 keys), and the heap trimmed once more then.

use std::sync::Arc;

use crate::decisions::Decisions;
use crate::lifecycle::Lifecycle;

/// How often the call count is looked at.
pub(crate) const TICK: std::time::Duration = std::time::Duration::from_secs(3);

/// When the second trim after a fall comes: past 64·T1 (32 s).
pub(crate) const FOLLOW_UP: std::time::Duration = std::time::Duration::from_secs(36);

/// A peak below this many calls leaves too little behind to be worth a walk
/// of the heap (about 0.1–0.3 MB a call).
const MIN_PEAK: usize = 32;

/// Expired decision keys worth a walk of the heap (one or two a call).
const MIN_EXPIRED: usize = 2 * MIN_PEAK;

/// When to trim, from the calls in progress at each tick and their peak
/// since the last trim.
#[derive(Debug, Default)]
pub(crate) struct TrimPolicy {
    peak: usize,
    /// Ticks left until the follow-up trim of the last fall.
    follow_up: Option<u32>,
}

impl TrimPolicy {
    /// Note the highest count since the last tick and the current one; true
    /// when the heap should be trimmed now.
    pub(crate) fn tick(&mut self, peak_since_last: usize, active: usize) -> bool {
        self.peak = self.peak.max(peak_since_last).max(active);
        if self.peak < MIN_PEAK || active > self.peak / 2 {
            return match self.follow_up {
                Some(0) => {
                    self.follow_up = None;
                    true
                }
                Some(n) => {
                    self.follow_up = Some(n - 1);
                    false
                }
                None => false,
            };
        }
        // The next trim needs a new peak to fall from.
        self.peak = active;
        self.follow_up = Some((FOLLOW_UP.as_secs() / TICK.as_secs()) as u32 - 1);
        true
    }
}

/// Trim the heap whenever [`TrimPolicy`] says so, or when expired
/// decisions (kept [`RETAIN`](crate::decisions::RETAIN) after their call)
/// went, until the server is gone.
pub(crate) async fn run(life: std::sync::Weak<Lifecycle>, decisions: std::sync::Weak<Decisions>) {
    let mut policy = TrimPolicy::default();
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(life) = life.upgrade() else { return };
        let (peak, active) = life.take_peak();
        // A peak's decisions expire together 5 minutes after it: their
        // pages come back only if the heap is trimmed then too.
        let expired = decisions
            .upgrade()
            .map_or(0, |d| d.expire(std::time::Instant::now()));
        // `|`, not `||`: the policy sees every tick's counts.
        if policy.tick(peak, active) | (expired >= MIN_EXPIRED) {
            drop(life);
            let trimmed = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(peak, active, trimmed, "heap trimmed after a load peak");
        }
    }
}

/// Start [`run`] for the server, where there is a `malloc_trim` to call.
pub(crate) fn spawn(life: &Arc<Lifecycle>, decisions: &Arc<Decisions>) {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        tokio::spawn(run(Arc::downgrade(life), Arc::downgrade(decisions)));
    }
}

/// Return the free pages of every arena to the system; true if any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim only takes the allocator's own locks and releases
    // free pages; it touches no memory the program holds.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_the_calls_fall_to_half_of_their_peak() {
        let mut p = TrimPolicy::default();
        assert!(!p.tick(400, 400), "at the peak");
        assert!(!p.tick(410, 300), "down by a quarter");
        assert!(p.tick(300, 205), "half of 410");
        assert!(
            !p.tick(205, 150),
            "no new peak since the trim: 150 > 205 / 2"
        );
        assert!(p.tick(150, 0), "all gone");
        let ticks = (FOLLOW_UP.as_secs() / TICK.as_secs()) as usize;
        let later: Vec<bool> = (0..2 * ticks).map(|_| p.tick(0, 0)).collect();
        let fired: Vec<usize> = (0..later.len()).filter(|&i| later[i]).collect();
        assert_eq!(
            fired,
            [ticks - 1],
            "one follow-up, FOLLOW_UP after the fall: {later:?}"
        );
    }

    #[test]
    fn a_peak_between_ticks_counts_and_small_peaks_are_ignored() {
        let mut p = TrimPolicy::default();
        assert!(!p.tick(20, 0), "below the floor");
        assert!(
            p.tick(1000, 10),
            "a burst that came and went between two ticks"
        );
    }
}
