//! The embedded caller history: one SQLite file (WAL journal). A file that
//! is not a database, or fails SQLite's quick check, is moved aside
//! (`<file>.corrupt-<unix s>`) and a new one created: a damaged history
//! loses the past, never the service.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection};

use super::{windows, CallEntry, CallerFacts, HistoryError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    caller  TEXT    NOT NULL,
    at_ms   INTEGER NOT NULL,
    arousal REAL,
    anger   REAL,
    queue   TEXT,
    flagged INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_caller ON calls (caller, at_ms);
CREATE INDEX IF NOT EXISTS calls_by_time ON calls (at_ms);
";

/// A SQLite caller history. Queries are short and run on the blocking pool
/// ([`super::HistoryStore`]); the mutex is never held across an await.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Open (or create) `path`, recreating it when corrupt.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let conn = match try_open(path) {
            Ok(c) => c,
            Err(e) => {
                let aside = aside_name(path);
                tracing::warn!(file = %path.display(), moved_to = %aside.display(), error = %e,
                    "caller history file unreadable or corrupt: moved aside, a new one is created");
                std::fs::rename(path, &aside)?;
                for ext in ["-wal", "-shm"] {
                    let mut side = path.as_os_str().to_owned();
                    side.push(ext);
                    let _ = std::fs::remove_file(PathBuf::from(side));
                }
                try_open(path)?
            }
        };
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// What is known about `caller` at `now_ms`.
    pub fn lookup(&self, caller: &str, now_ms: i64) -> Result<CallerFacts, HistoryError> {
        let (day, month) = windows(now_ms);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let (calls, flagged): (i64, i64) = conn.query_row(
            "SELECT COALESCE(SUM(at_ms >= ?2), 0), COALESCE(MAX(flagged), 0)
             FROM calls WHERE caller = ?1 AND at_ms >= ?3",
            params![caller, day, month],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(CallerFacts {
            repeat_calls_24h: calls.clamp(0, i64::from(u32::MAX)) as u32,
            flagged_30d: flagged != 0,
        })
    }

    /// Keep `e`; delete rows older than `cutoff_ms`.
    pub fn record(&self, e: &CallEntry, cutoff_ms: i64) -> Result<(), HistoryError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO calls (caller, at_ms, arousal, anger, queue, flagged)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.caller, e.at_ms, e.arousal, e.anger, e.queue, e.flagged],
        )?;
        conn.execute("DELETE FROM calls WHERE at_ms < ?1", params![cutoff_ms])?;
        Ok(())
    }
}

fn try_open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(200))?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(check),
        ));
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn aside_name(path: &Path) -> PathBuf {
    let secs = super::now_ms() / 1000;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{secs}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(caller: &str, at_ms: i64, flagged: bool) -> CallEntry {
        CallEntry {
            caller: caller.into(),
            at_ms,
            arousal: Some(0.4),
            anger: None,
            queue: Some("sip:q@h".into()),
            flagged,
        }
    }

    #[test]
    fn counts_a_day_flags_a_month_prunes_past_retention_and_survives_corruption() {
        let dir = std::env::temp_dir().join(format!("emonav-hist-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("h.sqlite");
        std::fs::write(&f, b"this is not a database, not even close.........").unwrap();
        let s = SqliteStore::open(&f).expect("recreated");
        let now = 100 * super::super::DAY_MS;
        let day = super::super::DAY_MS;
        s.record(&entry("a", now - 2 * day, true), 0).unwrap();
        s.record(&entry("a", now - 1000, false), 0).unwrap();
        s.record(&entry("a", now - 500, false), 0).unwrap();
        s.record(&entry("b", now - 40 * day, true), 0).unwrap();
        let a = s.lookup("a", now).unwrap();
        assert_eq!(
            a,
            CallerFacts {
                repeat_calls_24h: 2,
                flagged_30d: true
            }
        );
        assert_eq!(s.lookup("b", now).unwrap(), CallerFacts::default());
        s.record(&entry("c", now, false), now - 10 * day).unwrap();
        assert_eq!(s.lookup("b", now + 1).unwrap(), CallerFacts::default());
        let n: i64 = s
            .conn
            .lock()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM calls", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 4, "the 40-day-old row pruned");
        let aside = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("h.sqlite.corrupt-")
            });
        assert!(aside, "corrupt file kept aside");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
