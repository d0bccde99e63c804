//! The shared caller history: a PostgreSQL database every instance behind a
//! dispatcher uses, so a repeat caller is recognised whichever instance
//! answers. Connections come from a pool (deadpool); the schema is migrated
//! on first use (numbered steps in `emonav_migrations`), so an instance
//! started while the database is down starts anyway and catches up.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use super::{windows, CallEntry, CallerFacts, HistoryError};

/// Schema steps, applied in order once each.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS emonav_calls (
        caller  TEXT    NOT NULL,
        at_ms   BIGINT  NOT NULL,
        arousal REAL,
        anger   REAL,
        queue   TEXT,
        flagged BOOLEAN NOT NULL
    );
    CREATE INDEX IF NOT EXISTS emonav_calls_by_caller ON emonav_calls (caller, at_ms);
    CREATE INDEX IF NOT EXISTS emonav_calls_by_time ON emonav_calls (at_ms);",
    // The line-adaptation window shared by the instances (super::line_stats).
    "CREATE TABLE IF NOT EXISTS emonav_line_calls (
        id       BIGSERIAL PRIMARY KEY,
        layout   TEXT     NOT NULL,
        instance TEXT     NOT NULL,
        at_ms    BIGINT   NOT NULL,
        features REAL[]   NOT NULL
    );
    CREATE INDEX IF NOT EXISTS emonav_line_calls_by_layout ON emonav_line_calls (layout, id);",
];

/// A pooled PostgreSQL caller history.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    migrated: Arc<OnceCell<()>>,
}

impl PgStore {
    /// A pool for `url`; nothing is connected until first use.
    pub fn new(url: &str, size: usize) -> Result<Self, HistoryError> {
        let pg: tokio_postgres::Config = url.parse()?;
        let mgr = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(std::time::Duration::from_secs(2)))
            .wait_timeout(Some(std::time::Duration::from_secs(2)))
            .build()
            .map_err(|e| HistoryError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            migrated: Arc::new(OnceCell::new()),
        })
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, HistoryError> {
        let c = self
            .pool
            .get()
            .await
            .map_err(|e| HistoryError::Pool(e.to_string()))?;
        self.migrated
            .get_or_try_init(|| async {
                c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS emonav_migrations (version INT PRIMARY KEY)",
                )
                .await?;
                // One instance migrates at a time; the others wait, then skip.
                c.batch_execute("SELECT pg_advisory_lock(74100)").await?;
                let done = c
                    .query_one(
                        "SELECT COALESCE(MAX(version), 0) FROM emonav_migrations",
                        &[],
                    )
                    .await?
                    .get::<_, i32>(0);
                for (i, step) in MIGRATIONS.iter().enumerate().skip(done as usize) {
                    c.batch_execute(step).await?;
                    c.execute(
                        "INSERT INTO emonav_migrations (version) VALUES ($1)",
                        &[&(i as i32 + 1)],
                    )
                    .await?;
                }
                c.batch_execute("SELECT pg_advisory_unlock(74100)").await?;
                Ok::<(), HistoryError>(())
            })
            .await?;
        Ok(c)
    }

    /// What is known about `caller` at `now_ms`.
    pub async fn lookup(&self, caller: &str, now_ms: i64) -> Result<CallerFacts, HistoryError> {
        let (day, month) = windows(now_ms);
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE at_ms >= $2), COALESCE(BOOL_OR(flagged), false)
                 FROM emonav_calls WHERE caller = $1 AND at_ms >= $3",
                &[&caller, &day, &month],
            )
            .await?;
        Ok(CallerFacts {
            repeat_calls_24h: row.get::<_, i64>(0).clamp(0, i64::from(u32::MAX)) as u32,
            flagged_30d: row.get(1),
        })
    }

    /// Keep `e`; delete rows older than `cutoff_ms`.
    pub async fn record(&self, e: &CallEntry, cutoff_ms: i64) -> Result<(), HistoryError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO emonav_calls (caller, at_ms, arousal, anger, queue, flagged)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &e.caller, &e.at_ms, &e.arousal, &e.anger, &e.queue, &e.flagged,
            ],
        )
        .await?;
        c.execute("DELETE FROM emonav_calls WHERE at_ms < $1", &[&cutoff_ms])
            .await?;
        Ok(())
    }
}
