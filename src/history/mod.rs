//! Caller history: who called, when, how they sounded and where they went,
//! so that routing rules can see a repeat caller (`repeat_calls_24h_min`)
//! or one flagged before (`flagged_in_last_30d`). The caller is the From
//! URI's user part (the number of a `tel:` URI, RFC 3966), optionally stored
//! as a salted SHA-256 so that the store holds no number.
//!
//! One store per process, picked by `[history] backend`: the embedded SQLite
//! file ([`sqlite`]) or a PostgreSQL database shared by every instance
//! ([`postgres`]). Lookups are bounded in time by the caller (src/server.rs):
//! a slow or absent store never holds a decision.

pub(crate) mod line_stats;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `[history]` of a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Where finished calls are kept.
    pub backend: Backend,
    /// SQLite file, relative to the profile's folder.
    pub file: String,
    /// PostgreSQL connection URL (`postgres://user@host:port/db`).
    pub postgres_url: String,
    /// Connections in the PostgreSQL pool.
    pub pool_size: usize,
    /// Non-empty: caller ids are stored as SHA-256(salt, id), never in clear.
    pub hash_salt: String,
    /// Rows older than this are deleted.
    pub retention_days: u32,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Off,
            file: "history.sqlite".into(),
            postgres_url: String::new(),
            pool_size: 4,
            hash_salt: String::new(),
            retention_days: 90,
        }
    }
}

/// `[history] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// No history: history rules never match.
    Off,
    /// Embedded SQLite file.
    Sqlite,
    /// Shared PostgreSQL database.
    Postgres,
}

/// What the rules may ask about a caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerFacts {
    /// Earlier calls from this caller in the last 24 hours.
    pub repeat_calls_24h: u32,
    /// An earlier call from this caller was flagged high-risk in the last 30 days.
    pub flagged_30d: bool,
}

/// One finished call, as stored.
#[derive(Debug, Clone)]
pub struct CallEntry {
    /// Caller key ([`caller_key`]).
    pub caller: String,
    /// Call start, ms since the Unix epoch.
    pub at_ms: i64,
    /// Arousal estimate at the decision.
    pub arousal: Option<f32>,
    /// Probability of anger at the decision.
    pub anger: Option<f32>,
    /// Queue the caller was sent to.
    pub queue: Option<String>,
    /// Flagged high-risk.
    pub flagged: bool,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled PostgreSQL connection.
    #[error("postgres pool: {0}")]
    Pool(String),
    /// The blocking task running the query died.
    #[error("store task failed")]
    Task,
    /// The file could be neither opened nor recreated.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

const DAY_MS: i64 = 86_400_000;

/// The caller history store the profile picked.
#[derive(Clone)]
pub enum HistoryStore {
    /// Embedded file.
    Sqlite(Arc<sqlite::SqliteStore>),
    /// Shared database.
    Postgres(postgres::PgStore),
}

impl HistoryStore {
    /// Open the store `cfg` names (`None` when off); `base` is the profile's folder.
    pub fn open(cfg: &HistoryConfig, base: &Path) -> Result<Option<Self>, HistoryError> {
        Ok(match cfg.backend {
            Backend::Off => None,
            Backend::Sqlite => Some(Self::Sqlite(Arc::new(sqlite::SqliteStore::open(
                &base.join(&cfg.file),
            )?))),
            Backend::Postgres => Some(Self::Postgres(postgres::PgStore::new(
                &cfg.postgres_url,
                cfg.pool_size,
            )?)),
        })
    }

    /// What is known about `caller` at `now_ms`.
    pub async fn lookup(&self, caller: &str, now_ms: i64) -> Result<CallerFacts, HistoryError> {
        match self {
            Self::Sqlite(s) => {
                let (s, c) = (s.clone(), caller.to_string());
                tokio::task::spawn_blocking(move || s.lookup(&c, now_ms))
                    .await
                    .map_err(|_| HistoryError::Task)?
            }
            Self::Postgres(p) => p.lookup(caller, now_ms).await,
        }
    }

    /// Keep a finished call, and delete rows older than `retention_days`.
    pub async fn record(&self, e: CallEntry, retention_days: u32) -> Result<(), HistoryError> {
        let cutoff = e.at_ms - i64::from(retention_days) * DAY_MS;
        match self {
            Self::Sqlite(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.record(&e, cutoff))
                    .await
                    .map_err(|_| HistoryError::Task)?
            }
            Self::Postgres(p) => p.record(&e, cutoff).await,
        }
    }
}

/// The key a caller is stored under: the From URI's user part (a `tel:`
/// URI's number), visual separators removed, hashed with `salt` when one is
/// set. `None` for an anonymous or unparseable From.
pub fn caller_key(from: &str, salt: &str) -> Option<String> {
    let addr = emonav_sip::message::NameAddr::parse(from).ok()?;
    let user = addr.uri.user?;
    let id: String = user
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
        .collect();
    if id.is_empty() || id.eq_ignore_ascii_case("anonymous") {
        return None;
    }
    if salt.is_empty() {
        return Some(id);
    }
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Ms since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The 24 h and 30 d windows' starts at `now_ms`.
fn windows(now_ms: i64) -> (i64, i64) {
    (now_ms - DAY_MS, now_ms - 30 * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_key_is_the_user_part_hashed_with_a_salt() {
        let plain = caller_key("\"Ann\" <sip:+49-30-1234@pbx.example>;tag=1", "").unwrap();
        assert_eq!(plain, "+49301234");
        let tel = caller_key("<tel:+49-30-1234>;tag=2", "").unwrap();
        assert_eq!(tel, plain);
        let hashed = caller_key("<sip:+49301234@h>;tag=1", "pepper").unwrap();
        assert_eq!(hashed.len(), 64);
        assert!(!hashed.contains("49301234"));
        assert_ne!(hashed, caller_key("<sip:+49301234@h>", "salt2").unwrap());
        assert!(caller_key("<sip:anonymous@anonymous.invalid>", "").is_none());
        assert!(caller_key("<sip:h.example>", "").is_none());
        assert!(caller_key("garbage <<", "").is_none());
    }
}
