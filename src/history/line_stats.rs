//! The line-adaptation window in PostgreSQL, shared by every instance of a
//! deployment (src/adapt/shared.rs runs the exchange).
//!
//! One table of recent calls' raw feature vectors (`emonav_line_calls`),
//! one row per call, tagged with the feature layout it was computed with
//! and the instance that heard it. Why rows of calls rather than one row of
//! statistics per instance: the statistics are medians and quartiles over
//! the last `window` calls, which do not combine from per-instance
//! summaries; pooling the calls themselves gives every instance exactly
//! the window a single process would have seen, and no instance ever
//! overwrites another's work (rows are only inserted, and those older than
//! the newest `window` deleted).

use super::postgres::PgStore;
use super::HistoryError;

/// Rows read back: their ids and feature vectors (`None` for rows the
/// asking instance wrote itself, which it already holds).
pub(crate) struct LineRows {
    /// Highest id seen, to ask only for newer rows next time.
    pub last_id: Option<i64>,
    /// Vectors oldest first.
    pub vectors: Vec<Vec<f32>>,
}

impl PgStore {
    /// Keep `vectors` (one call each) heard by `instance`, then delete the
    /// rows of `layout` older than the newest `window`.
    pub(crate) async fn line_insert(
        &self,
        layout: &str,
        instance: &str,
        at_ms: i64,
        vectors: &[Vec<f32>],
        window: usize,
    ) -> Result<(), HistoryError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let insert = tx
            .prepare(
                "INSERT INTO emonav_line_calls (layout, instance, at_ms, features)
                 VALUES ($1, $2, $3, $4)",
            )
            .await?;
        for v in vectors {
            tx.execute(&insert, &[&layout, &instance, &at_ms, v])
                .await?;
        }
        tx.execute(
            "DELETE FROM emonav_line_calls WHERE layout = $1 AND id <= (
                 SELECT id FROM emonav_line_calls WHERE layout = $1
                 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            &[&layout, &(window as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `window` rows of `layout` with an id above `after` (all
    /// of them when `None`), except the vectors `instance` wrote.
    ///
    /// Ids come from a sequence, so a row whose transaction commits after
    /// a newer one was read is skipped: one call fewer in a window of
    /// thousands, which the robust statistics do not notice.
    pub(crate) async fn line_rows(
        &self,
        layout: &str,
        after: Option<i64>,
        instance: &str,
        window: usize,
    ) -> Result<LineRows, HistoryError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, CASE WHEN instance = $3 THEN NULL ELSE features END
                 FROM emonav_line_calls WHERE layout = $1 AND id > $2
                 ORDER BY id DESC LIMIT $4",
                &[&layout, &after.unwrap_or(0), &instance, &(window as i64)],
            )
            .await?;
        let last_id = rows.first().map(|r| r.get::<_, i64>(0)).or(after);
        let vectors = rows
            .iter()
            .rev()
            .filter_map(|r| r.get::<_, Option<Vec<f32>>>(1))
            .collect();
        Ok(LineRows { last_id, vectors })
    }
}
