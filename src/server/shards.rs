//! Media shards: the call tasks run on a few single-threaded runtimes, one
//! per core by default, each call pinned to one shard for its whole life.
//!
//! Why not the multi-threaded runtime the SIP task runs on: a call's task
//! wakes about 100 times a second (its RTP in, its playout timer, its
//! silence out), and on a work-stealing runtime a wake-up that lands on a
//! parked worker costs a futex wake and an `epoll_wait` on another thread.
//! Measured with `strace -f -c` over 20 analysed SIPp calls (issue 11): per
//! RTP packet received, 1.5 `futex` and 2.3 `epoll_wait` calls besides the
//! `recvfrom`/`sendto` that do the work, `futex` alone 70 % of the time in
//! system calls. A call's socket, timers and task on one thread keep those
//! wake-ups on that thread (the str0m/rtpengine model of a thread owning
//! its media), and N shards still use every core. Nothing is shared by all
//! calls on the packet path: each shard has its own reactor, timer wheel
//! and scheduler.
//!
//! Each shard also measures its own scheduling lag (RFC 6357 §3 headroom,
//! as [`super::probe_lag`] does for the SIP runtime); overload control reads
//! the worst of them.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

/// The media runtimes.
#[derive(Debug)]
pub(crate) struct Shards {
    handles: Vec<tokio::runtime::Handle>,
    /// Each shard's last measured lag, µs.
    lag_us: Arc<Vec<AtomicU64>>,
    next: AtomicUsize,
    /// Dropping (or taking) these ends the shards' threads.
    stop: Mutex<Vec<oneshot::Sender<()>>>,
}

impl Shards {
    /// Start `n` shards (`0`: one per available core).
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n
        };
        let lag_us = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            let lag = lag_us.clone();
            std::thread::Builder::new()
                .name(format!("emonav-media-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        tokio::select! {
                            _ = rx => {}
                            _ = probe(lag, i) => {}
                        }
                    });
                    // Dropping the runtime cancels the calls still on it,
                    // as ending the process would.
                    drop(rt);
                })?;
        }
        Ok(Self {
            handles,
            lag_us,
            next: AtomicUsize::new(0),
            stop: Mutex::new(stop),
        })
    }

    /// Run a call's task on the next shard (round robin).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[i].spawn(task));
    }

    /// How many shards run.
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// The worst shard's scheduling lag, µs.
    pub(crate) fn max_lag_us(&self) -> u64 {
        self.lag_us
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// End the shards' threads (the calls still on them are dropped).
    pub(crate) fn stop(&self) {
        self.stop.lock().map(|mut s| s.clear()).unwrap_or_default();
    }
}

/// A shard's lag probe: how late a 50 ms timer fires on it.
async fn probe(lag: Arc<Vec<AtomicU64>>, i: usize) {
    let mut due = Instant::now() + super::LAG_PROBE;
    loop {
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        let late = now.saturating_duration_since(due);
        lag[i].store(
            u64::try_from(late.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        due = now + super::LAG_PROBE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_spread_over_the_shards_each_on_its_own_thread() {
        let shards = Shards::start(2).unwrap();
        assert_eq!(shards.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            shards.spawn(async move {
                // A timer and the thread's name: the task runs inside a
                // runtime with time enabled, on a media thread.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let name = std::thread::current().name().unwrap_or("").to_string();
                tx.send(name).unwrap();
            });
        }
        let mut names: Vec<String> = (0..4)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "emonav-media-0",
                "emonav-media-0",
                "emonav-media-1",
                "emonav-media-1"
            ]
        );
        shards.stop();
    }
}
