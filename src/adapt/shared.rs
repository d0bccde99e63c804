//! Line statistics shared by the instances of a deployment through the
//! PostgreSQL caller-history database (`[history] backend = "postgres"`).
//!
//! Each instance keeps its own [`LineAdapter`] in memory, scores calls
//! through it and feeds it its own calls at once, exactly as alone. A task
//! of its own (never a call's) exchanges with the database: at start it
//! loads the newest `window` calls of every instance; then every
//! [`PERSIST_EVERY`](super::PERSIST_EVERY) calls, every [`SYNC_EVERY`] and at shutdown it writes
//! the calls it heard (src/history/line_stats.rs) and reads back the ones
//! the others wrote since. A database that is down or slow only stalls this
//! task: calls go on being scored through what the instance has, its own
//! calls keep joining its statistics, and the unwritten ones wait (up to a
//! window) for the database to come back. Failures are counted in
//! `emonav_line_stats_sync_failures_total{op}`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::LineAdapter;
use crate::history::postgres::PgStore;
use crate::metrics::Metrics;

/// Longest between two exchanges when an instance has few calls: how stale
/// its view of the others' calls can get.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(10);

/// One exchange may take this long before it is abandoned (and retried at
/// the next one); the pool's own waits are shorter.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// The exchange of one process's line statistics with the database.
pub(crate) struct LineSync {
    store: PgStore,
    /// This process among the deployment's (host, SIP address, pid): its
    /// rows are the ones it need not read back.
    instance: String,
    lines: Vec<Arc<LineAdapter>>,
    metrics: Arc<Metrics>,
}

impl LineSync {
    /// Sharing for the adapters that are on; `sip` names this process.
    pub(crate) fn new(
        store: PgStore,
        lines: &[Arc<LineAdapter>],
        sip: std::net::SocketAddr,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lines: Vec<_> = lines.iter().filter(|l| l.enabled()).cloned().collect();
        for l in &lines {
            l.share();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self {
            store,
            instance: format!("{host}/{sip}/{}", std::process::id()),
            lines,
            metrics,
        }
    }

    /// Exchange now, then whenever a line has [`PERSIST_EVERY`](super::PERSIST_EVERY) calls to
    /// write or [`SYNC_EVERY`] passed. Runs until the process ends.
    pub(crate) async fn run(self: Arc<Self>) {
        if self.lines.is_empty() {
            return;
        }
        // Per line: the newest row read (`None`: not loaded yet).
        let mut last = vec![None; self.lines.len()];
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // (At most two lines: the 8 and 16 kHz models.)
            let second = async {
                match self.lines.get(1) {
                    Some(l) => l.due().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.lines[0].due() => {}
                _ = second => {}
            }
            for (l, last) in self.lines.iter().zip(&mut last) {
                self.round(l, last).await;
            }
        }
    }

    /// At shutdown: write what is still unwritten (bounded by
    /// [`ROUND_TIMEOUT`]; a database that is down loses those calls' share).
    pub(crate) async fn flush(&self) {
        for l in &self.lines {
            let out = l.take_outbox();
            if out.is_empty() {
                continue;
            }
            let n = out.len();
            if let Err(e) = self.write(l, out).await {
                tracing::warn!(error = %e, calls = n, layout = l.layout(),
                    "line statistics: calls not written at shutdown");
            }
        }
    }

    async fn write(&self, l: &LineAdapter, out: Vec<Vec<f32>>) -> Result<(), String> {
        let r = tokio::time::timeout(
            ROUND_TIMEOUT,
            self.store.line_insert(
                l.layout(),
                &self.instance,
                crate::history::now_ms(),
                &out,
                l.window(),
            ),
        )
        .await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
        .inspect_err(|_| {
            self.metrics.line_sync_failures[0].fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Load (first time) or read what is new, then write this process's
    /// calls; a failure leaves everything for the next round.
    async fn round(&self, l: &LineAdapter, last: &mut Option<Option<i64>>) {
        let after = *last;
        let read = tokio::time::timeout(
            ROUND_TIMEOUT,
            self.store
                .line_rows(l.layout(), after.flatten(), &self.instance, l.window()),
        )
        .await;
        match read {
            Ok(Ok(rows)) => {
                if after.is_none() {
                    let calls = l.load_shared(&rows.vectors);
                    tracing::info!(
                        layout = l.layout(),
                        rows = rows.vectors.len(),
                        calls,
                        instance = %self.instance,
                        "line statistics loaded from PostgreSQL"
                    );
                } else {
                    l.extend_shared(&rows.vectors);
                }
                *last = Some(rows.last_id);
            }
            Ok(Err(e)) => self.read_failed(l, &e.to_string()),
            Err(_) => self.read_failed(l, "timed out"),
        }
        let out = l.take_outbox();
        if out.is_empty() {
            return;
        }
        if let Err(e) = self.write(l, out.clone()).await {
            tracing::warn!(error = %e, calls = out.len(), layout = l.layout(),
                "line statistics not written to PostgreSQL: kept for the next try");
            l.restore_outbox(out);
        }
    }

    fn read_failed(&self, l: &LineAdapter, e: &str) {
        self.metrics.line_sync_failures[1].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, layout = l.layout(),
            "line statistics not read from PostgreSQL: scoring with what this instance has");
    }
}
