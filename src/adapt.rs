//! Adaptation to the line, live: every analysed call's whole-call feature
//! vector joins the deployment's running statistics (`emonav_dsp::adapt`),
//! and each new call is scored through the map those statistics give, once
//! enough calls were seen (`[adapt]` in the profile).
//!
//! Off the packet path: a call takes a snapshot of the map (one `Arc` clone
//! under a short lock) when its media starts, and its vector is added when
//! its record comes out. The statistics are written to `[adapt] file`
//! every [`PERSIST_EVERY`] calls and at shutdown, so a restart keeps what
//! the line taught. With `[history] backend = "postgres"` the instances of
//! a deployment share one window of calls through the database
//! ([`shared`]): each call's vector also goes to an outbox that the sync
//! task empties into the database, and the calls the other instances heard
//! come back into these statistics.

pub(crate) mod shared;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use emonav_dsp::adapt::{LineMap, LineStats};
use emonav_dsp::model::{FEATURES, FEATURE_NAMES};
use emonav_dsp::Model;

use crate::config::AdaptConfig;

/// Calls between two writes of the statistics file: a crash loses at most
/// this many calls' worth of adaptation, and the ~0.5 MB file is not
/// rewritten for every call.
pub(crate) const PERSIST_EVERY: u64 = 20;

/// Speech a call must have held for its vector to describe the line: below
/// it, the functionals are too thin and mostly the greeting.
pub(crate) const MIN_SPEECH_MS: u32 = 1000;

/// One model's line statistics and the map they give.
#[derive(Debug)]
pub struct LineAdapter {
    cfg: AdaptConfig,
    model_mean: Vec<f32>,
    model_scale: Vec<f32>,
    file: Option<PathBuf>,
    /// What the vectors are comparable within ([`layout`]).
    layout: String,
    state: Mutex<State>,
    /// Woken when [`PERSIST_EVERY`] calls wait in the outbox.
    due: tokio::sync::Notify,
}

#[derive(Debug)]
struct State {
    stats: LineStats,
    map: Option<Arc<LineMap>>,
    unsaved: u64,
    /// Shared through the database: vectors not yet written there.
    outbox: Option<Vec<[f32; FEATURES]>>,
}

/// The key under which a model's vectors are shared: its sample rate and
/// a hash of the feature names, so that instances running different
/// feature code (a rolling upgrade) never mix incomparable vectors.
pub(crate) fn layout(sample_rate: u32) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for name in FEATURE_NAMES {
        h.update(name.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{sample_rate}Hz-{FEATURES}f-{hex}")
}

impl LineAdapter {
    /// An adapter for `model`, its statistics read from `file` when it
    /// exists (an unreadable file is logged and adaptation starts afresh: a
    /// bad file must not stop calls).
    pub fn new(model: &Model, cfg: &AdaptConfig, file: Option<PathBuf>) -> Self {
        let stats = file
            .as_ref()
            .and_then(|f| match std::fs::read_to_string(f) {
                Ok(text) => match LineStats::from_json(&text, cfg.window) {
                    Ok(s) => {
                        tracing::info!(file = %f.display(), calls = s.len(), "line statistics loaded");
                        Some(s)
                    }
                    Err(e) => {
                        tracing::warn!(file = %f.display(), error = %e, "line statistics unreadable: starting afresh");
                        None
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "line statistics unreadable: starting afresh");
                    None
                }
            })
            .unwrap_or_else(|| LineStats::new(cfg.window));
        let a = Self {
            cfg: cfg.clone(),
            model_mean: model.mean.clone(),
            model_scale: model.scale.clone(),
            file,
            layout: layout(model.sample_rate),
            state: Mutex::new(State {
                stats,
                map: None,
                unsaved: 0,
                outbox: None,
            }),
            due: tokio::sync::Notify::new(),
        };
        {
            let mut st = a.lock();
            st.map = a.build(&st.stats);
        }
        a
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves consistent data (each
        // update is one assignment); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(&self, stats: &LineStats) -> Option<Arc<LineMap>> {
        if !self.cfg.enabled {
            return None;
        }
        LineMap::new(
            stats,
            &self.model_mean,
            &self.model_scale,
            self.cfg.min_calls,
            self.cfg.strength,
        )
        .map(Arc::new)
    }

    /// The map a new call is scored through (`None`: not enough calls yet,
    /// or adaptation off).
    pub fn current(&self) -> Option<Arc<LineMap>> {
        self.lock().map.clone()
    }

    /// Calls in the statistics' window.
    pub fn calls(&self) -> usize {
        self.lock().stats.len()
    }

    /// A finished call's raw whole-call vector. Returns the statistics as
    /// JSON when they are due to be written (the caller writes them off the
    /// async runtime with [`LineAdapter::write`]).
    pub fn observe(&self, raw: &[f32; FEATURES], speech_ms: u32) -> Option<String> {
        if !self.cfg.enabled || speech_ms < MIN_SPEECH_MS {
            return None;
        }
        let mut st = self.lock();
        st.stats.observe(raw);
        st.map = self.build(&st.stats);
        st.unsaved += 1;
        let cap = st.stats.capacity();
        if let Some(out) = &mut st.outbox {
            if out.len() >= cap {
                out.remove(0);
            }
            out.push(*raw);
            // Only on reaching it: while the database is down the outbox
            // grows and the periodic retry, not every call, knocks again.
            if out.len() == PERSIST_EVERY as usize {
                self.due.notify_one();
            }
        }
        if self.file.is_some() && st.unsaved >= PERSIST_EVERY {
            st.unsaved = 0;
            return Some(st.stats.to_json());
        }
        None
    }

    /// The statistics as JSON when some are not yet written (at shutdown).
    pub fn unsaved(&self) -> Option<String> {
        let mut st = self.lock();
        (self.file.is_some() && st.unsaved > 0).then(|| {
            st.unsaved = 0;
            st.stats.to_json()
        })
    }

    /// Adaptation on: there are statistics to share.
    pub(crate) fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// The profile's window, in calls.
    pub(crate) fn window(&self) -> usize {
        self.cfg.window
    }

    /// The feature layout the vectors are shared under.
    pub(crate) fn layout(&self) -> &str {
        &self.layout
    }

    /// Keep every call's vector for the database from now on.
    pub(crate) fn share(&self) {
        self.lock().outbox.get_or_insert_with(Vec::new);
    }

    /// Resolves once [`PERSIST_EVERY`] calls wait to be written.
    pub(crate) async fn due(&self) {
        self.due.notified().await;
    }

    /// The vectors not yet in the database, taken out of the outbox.
    pub(crate) fn take_outbox(&self) -> Vec<Vec<f32>> {
        let mut st = self.lock();
        let out = st.outbox.as_mut().map(std::mem::take).unwrap_or_default();
        out.into_iter().map(|v| v.to_vec()).collect()
    }

    /// Put back vectors a failed write took out, before any newer ones;
    /// the outbox keeps at most a window's worth, newest first.
    pub(crate) fn restore_outbox(&self, vectors: Vec<Vec<f32>>) {
        let mut st = self.lock();
        let cap = st.stats.capacity();
        let Some(out) = st.outbox.as_mut() else {
            return;
        };
        let mut all: Vec<[f32; FEATURES]> = vectors.iter().filter_map(|v| as_vector(v)).collect();
        all.append(out);
        let excess = all.len().saturating_sub(cap);
        all.drain(..excess);
        *out = all;
    }

    /// The database's window (oldest first) replaces what this process
    /// holds, plus its own calls not yet written there. An empty database
    /// instead receives what this process holds (from `[adapt] file`), so
    /// that moving one instance onto the shared store keeps its past.
    /// Returns the calls now in the statistics.
    pub(crate) fn load_shared(&self, vectors: &[Vec<f32>]) -> usize {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(out) = st.outbox.as_mut() else {
            return st.stats.len();
        };
        if vectors.is_empty() {
            *out = st.stats.vectors().filter_map(as_vector).collect();
            return st.stats.len();
        }
        let mut stats = LineStats::new(self.cfg.window);
        let rows: Vec<[f32; FEATURES]> = vectors.iter().filter_map(|v| as_vector(v)).collect();
        stats.extend(rows.iter().chain(out.iter()));
        st.stats = stats;
        st.map = self.build(&st.stats);
        st.stats.len()
    }

    /// Calls other instances heard (oldest first) join the statistics.
    pub(crate) fn extend_shared(&self, vectors: &[Vec<f32>]) {
        if vectors.is_empty() {
            return;
        }
        let rows: Vec<[f32; FEATURES]> = vectors.iter().filter_map(|v| as_vector(v)).collect();
        let mut st = self.lock();
        st.stats.extend(rows.iter());
        st.map = self.build(&st.stats);
    }

    /// Write `json` to the statistics file (through a temporary file and a
    /// rename, so a crash mid-write leaves the previous file whole).
    pub fn write(&self, json: &str) {
        let Some(file) = &self.file else { return };
        let tmp = file.with_extension("tmp");
        let res = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, file));
        match res {
            Ok(()) => tracing::debug!(file = %file.display(), "line statistics written"),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot write line statistics")
            }
        }
    }
}

/// A stored vector of the right length (a row of another feature layout
/// never gets here: rows are selected by layout).
fn as_vector(v: &[f32]) -> Option<[f32; FEATURES]> {
    <[f32; FEATURES]>::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let mut m = emonav_dsp::model::embedded(8000);
        m.mean = (0..FEATURES).map(|j| j as f32).collect();
        m.scale = vec![1.0; FEATURES];
        m
    }

    fn cfg(min_calls: usize) -> AdaptConfig {
        AdaptConfig {
            enabled: true,
            min_calls,
            window: 100,
            strength: 1.0,
            file: None,
        }
    }

    #[test]
    fn maps_after_min_calls_persists_and_reloads() {
        let dir = std::env::temp_dir().join(format!("emonav-adapt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("line.json");
        let _ = std::fs::remove_file(&file);
        let a = LineAdapter::new(&model(), &cfg(10), Some(file.clone()));
        let mut rng = fastrand::Rng::with_seed(1);
        let mut raw = [0.0; FEATURES];
        let mut written = 0;
        for i in 0..40 {
            for (j, v) in raw.iter_mut().enumerate() {
                *v = j as f32 + 5.0 + rng.f32();
            }
            assert_eq!(a.current().is_some(), i >= 10, "call {i}");
            // Too little speech: not a sample of the line.
            assert!(a.observe(&raw, 200).is_none());
            if let Some(json) = a.observe(&raw, 1500) {
                a.write(&json);
                written += 1;
            }
        }
        assert_eq!((a.calls(), written), (40, 2));
        // The map moves the line's +5.5 shift back onto the model's means.
        let mut x = [0.0; FEATURES];
        for (j, v) in x.iter_mut().enumerate() {
            *v = j as f32 + 5.5;
        }
        a.current().unwrap().apply(&mut x);
        // (Without the map it would stay 5.5 away; the median of 40 calls is
        // itself uncertain by ~0.1, stretched by the line's narrow spread.)
        assert!((x[3] - 3.0).abs() < 0.6, "{}", x[3]);
        let b = LineAdapter::new(&model(), &cfg(10), Some(file.clone()));
        assert_eq!(b.calls(), 40);
        assert!(b.current().is_some());
        // Off: observed, never mapped, never written.
        let off = AdaptConfig {
            enabled: false,
            ..cfg(10)
        };
        let c = LineAdapter::new(&model(), &off, Some(file.clone()));
        assert!(c.current().is_none() && c.observe(&raw, 5000).is_none());
        // A corrupt file does not stop the endpoint.
        std::fs::write(&file, "{ not json").unwrap();
        assert_eq!(LineAdapter::new(&model(), &cfg(10), Some(file)).calls(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shared_outbox_survives_a_failed_write_and_the_database_window_replaces_the_local_one() {
        let a = LineAdapter::new(&model(), &cfg(10), None);
        let call = |k: f32| {
            let mut raw = [0.0; FEATURES];
            for (j, v) in raw.iter_mut().enumerate() {
                *v = j as f32 + k;
            }
            raw
        };
        // Not shared: nothing queued for the database.
        a.observe(&call(0.0), 1500);
        assert!(a.take_outbox().is_empty());
        a.share();
        // An empty database receives what this process already holds.
        assert_eq!(a.load_shared(&[]), 1);
        for k in 1..4 {
            a.observe(&call(k as f32), 1500);
        }
        let out = a.take_outbox();
        assert_eq!(out.len(), 4);
        // The write failed: back in, before the calls heard since.
        a.observe(&call(9.0), 1500);
        a.restore_outbox(out);
        let out = a.take_outbox();
        assert_eq!(out.len(), 5);
        assert_eq!((out[0][0], out[4][0]), (0.0, 9.0));
        a.restore_outbox(out);
        // The database's window (other instances' calls) plus the unwritten
        // own ones become the statistics; later rows join them.
        let theirs: Vec<Vec<f32>> = (0..20).map(|k| call(100.0 + k as f32).to_vec()).collect();
        assert_eq!(a.load_shared(&theirs), 25);
        assert!(a.current().is_some(), "past min_calls");
        a.extend_shared(&theirs[..3]);
        assert_eq!(a.calls(), 28);
        // A vector of another length is not a call of this layout.
        a.extend_shared(&[vec![1.0; 3]]);
        assert_eq!(a.calls(), 28);
        assert!(a.layout().starts_with("8000Hz-"), "{}", a.layout());
    }
}
