//! Adaptation to the line, live: every analysed call's whole-call feature
//! vector joins the deployment's running statistics (`emonav_dsp::adapt`),
//! and each new call is scored through the map those statistics give, once
//! enough calls were seen (`[adapt]` in the profile).
//!
//! Off the packet path: a call takes a snapshot of the map (one `Arc` clone
//! under a short lock) when its media starts, and its vector is added when
//! its record comes out. The statistics are written to `[adapt] file`
//! every [`PERSIST_EVERY`] calls and at shutdown, so a restart keeps what
//! the line taught.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use emonav_dsp::adapt::{LineMap, LineStats};
use emonav_dsp::model::FEATURES;
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
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stats: LineStats,
    map: Option<Arc<LineMap>>,
    unsaved: u64,
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
            state: Mutex::new(State {
                stats,
                map: None,
                unsaved: 0,
            }),
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
}
