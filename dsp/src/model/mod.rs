//! Trained emotion models: the feature vector, the model file, training, and
//! the streaming estimator a call runs.
//!
//! A model is two calibrated classifiers over the standardised
//! [`FEATURE_NAMES`] vector: arousal (high vs low) and anger (vs the rest),
//! each linear or (see [`Family`]) with a small hidden layer of tanh units.
//! Each probability is Platt-calibrated on out-of-speaker predictions made
//! during training, so "0.9" means what it says for a speaker the model has
//! not heard (under equal class priors; see docs/model.md).

mod embedded;
mod logistic;
mod mlp;
mod vector;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::adapt::LineMap;
use crate::estimator::{EmotionEstimator, Estimate};
use crate::features::{FrameFeatures, Functionals};
pub use embedded::{embedded, DEFAULT_MODEL, DEFAULT_MODEL_16K};
use logistic::{balanced_weights, fit, Design};
pub use vector::{feature_vector, FEATURES, FEATURE_NAMES};

/// Identifies the file format; bumped on any incompatible change.
pub const FORMAT: &str = "emonav-model/1";

/// The format of a model with a hidden layer in any classifier: a build that
/// reads only [`FORMAT`] refuses it rather than ignoring the hidden layer.
/// Models without one are still written as [`FORMAT`].
pub const FORMAT_HIDDEN: &str = "emonav-model/2";

/// Standardised values are clipped to this many deviations, so one wild
/// feature on a strange line cannot swamp the rest.
const CLIP: f32 = 5.0;

fn narrowband() -> u32 {
    8000
}

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not JSON, or not a model.
    #[error("not an emonav model: {0}")]
    Json(#[from] serde_json::Error),
    /// Another format version.
    #[error("model format {found:?}, this build reads {FORMAT:?}")]
    Format {
        /// The format the file declares.
        found: String,
    },
    /// Built over another feature layout.
    #[error("model was built over other features (at {index}: {found:?}, expected {expected:?}); retrain it with this build")]
    Features {
        /// First differing position.
        index: usize,
        /// The file's name there.
        found: String,
        /// This build's name there.
        expected: String,
    },
    /// Vectors of the wrong length.
    #[error("model field {0} has the wrong length")]
    Shape(&'static str),
}

/// Why training cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A task has only one class among the labelled samples.
    #[error("task {0}: training data needs both classes")]
    OneClass(&'static str),
}

/// One calibrated classifier: a linear score, plus a hidden layer's when it
/// has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// One weight per standardised feature (all zero for a plain network).
    pub weights: Vec<f32>,
    /// Intercept.
    pub bias: f32,
    /// Platt scaling `(a, b)`: probability = σ(a·score + b).
    pub calibration: [f32; 2],
    /// L2 strength chosen by cross-validation over speakers.
    pub lambda: f32,
    /// Tanh units whose weighted outputs add to the score (format
    /// [`FORMAT_HIDDEN`]); absent in a linear classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Hidden>,
}

/// A hidden layer: unit `u` computes `tanh(inputs[u]·x + biases[u])` and adds
/// `outputs[u]` times that to the classifier's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hidden {
    /// Input weights, unit-major: `FEATURES` per unit.
    pub inputs: Vec<f32>,
    /// One bias per unit.
    pub biases: Vec<f32>,
    /// One output weight per unit.
    pub outputs: Vec<f32>,
}

impl Linear {
    fn score(&self, x: &[f32; FEATURES]) -> f32 {
        let mut s = self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + self.bias;
        if let Some(h) = &self.hidden {
            for ((w, b), o) in h
                .inputs
                .chunks_exact(FEATURES)
                .zip(&h.biases)
                .zip(&h.outputs)
            {
                let a = w.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b;
                s += o * a.tanh();
            }
        }
        s
    }

    fn probability(&self, x: &[f32; FEATURES]) -> f32 {
        let [a, b] = self.calibration;
        1.0 / (1.0 + (-(a * self.score(x) + b)).exp())
    }
}

/// Both tasks' probabilities for one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scores {
    /// Probability of high arousal.
    pub arousal: f32,
    /// Probability of anger, never above `arousal` (anger is a high-arousal
    /// state, so a coherent P(anger) cannot exceed P(high arousal)).
    pub anger: f32,
    /// How typical the vector is of the training data, 0..1: 1 within the
    /// training distribution, falling as the vector's mean squared
    /// standardised distance exceeds what 95 % of training vectors have
    /// (see [`Model::typical_distance`]).
    pub familiarity: f32,
}

/// A trained model, as stored in a JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// [`FORMAT`].
    pub format: String,
    /// What it was trained on and how (free text, for people).
    pub description: String,
    /// The analysis rate its features were computed at (8000 for G.711
    /// calls, 16000 for Opus): features differ between the two bands.
    #[serde(default = "narrowband")]
    pub sample_rate: u32,
    /// [`FEATURE_NAMES`] at training time.
    pub features: Vec<String>,
    /// Per-feature mean over the training data.
    pub mean: Vec<f32>,
    /// Per-feature standard deviation over the training data.
    pub scale: Vec<f32>,
    /// High vs low arousal.
    pub arousal: Linear,
    /// Anger vs everything else.
    pub anger: Linear,
    /// Optional: the emotion categories, one calibrated one-vs-rest
    /// classifier each (for reports; routing uses arousal and anger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Categories>,
    /// The 95th percentile, over the training vectors, of the mean squared
    /// standardised feature value: vectors beyond it are unusual, and the
    /// estimator lowers its confidence in proportion. Absent in older files
    /// (no lowering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typical_distance: Option<f32>,
}

/// One-vs-rest classifiers over emotion categories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Categories {
    /// Category names, in the order of `classifiers`.
    pub labels: Vec<String>,
    /// P(this category) vs the rest, each calibrated on its own.
    pub classifiers: Vec<Linear>,
}

impl Model {
    /// Read and check a model from JSON.
    pub fn from_json(text: &str) -> Result<Model, ModelError> {
        let m: Model = serde_json::from_str(text)?;
        let hidden = m.classifiers().any(|l| l.hidden.is_some());
        if m.format != FORMAT && m.format != FORMAT_HIDDEN || (hidden && m.format == FORMAT) {
            return Err(ModelError::Format { found: m.format });
        }
        for h in m.classifiers().filter_map(|l| l.hidden.as_ref()) {
            let units = h.outputs.len();
            if h.biases.len() != units || h.inputs.len() != units * FEATURES {
                return Err(ModelError::Shape("hidden"));
            }
        }
        for (index, expected) in FEATURE_NAMES.iter().enumerate() {
            let found = m.features.get(index).map(String::as_str).unwrap_or("");
            if found != *expected {
                return Err(ModelError::Features {
                    index,
                    found: found.into(),
                    expected: (*expected).into(),
                });
            }
        }
        if m.sample_rate != 8000 && m.sample_rate != 16000 {
            return Err(ModelError::Shape("sample_rate (8000 or 16000)"));
        }
        if m.features.len() != FEATURES {
            return Err(ModelError::Shape("features"));
        }
        if let Some(c) = &m.categories {
            if c.labels.len() != c.classifiers.len()
                || c.classifiers.iter().any(|l| l.weights.len() != FEATURES)
            {
                return Err(ModelError::Shape("categories"));
            }
        }
        for (name, len) in [
            ("mean", m.mean.len()),
            ("scale", m.scale.len()),
            ("arousal.weights", m.arousal.weights.len()),
            ("anger.weights", m.anger.weights.len()),
        ] {
            if len != FEATURES {
                return Err(ModelError::Shape(name));
            }
        }
        Ok(m)
    }

    /// Every classifier: arousal, anger, then the categories'.
    fn classifiers(&self) -> impl Iterator<Item = &Linear> {
        [&self.arousal, &self.anger]
            .into_iter()
            .chain(self.categories.iter().flat_map(|c| c.classifiers.iter()))
    }

    /// The model as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a model always serialises")
    }

    /// Standardise a raw vector in place (NaN becomes the mean, 0).
    pub fn standardise(&self, x: &mut [f32; FEATURES]) {
        for ((v, m), s) in x.iter_mut().zip(&self.mean).zip(&self.scale) {
            *v = if v.is_finite() {
                ((*v - m) / s).clamp(-CLIP, CLIP)
            } else {
                0.0
            };
        }
    }

    /// Probabilities for a raw feature vector. Never allocates.
    pub fn scores(&self, raw: &[f32; FEATURES]) -> Scores {
        let familiarity = match self.typical_distance {
            Some(t) => (t / distance(raw, &self.mean, &self.scale).max(1e-6)).min(1.0),
            None => 1.0,
        };
        let mut x = *raw;
        self.standardise(&mut x);
        let arousal = self.arousal.probability(&x);
        Scores {
            arousal,
            anger: self.anger.probability(&x).min(arousal),
            familiarity,
        }
    }

    /// The most likely category and its probability share, when the model has
    /// categories: the one-vs-rest probabilities normalised to sum to one.
    pub fn category(&self, raw: &[f32; FEATURES]) -> Option<(usize, f32)> {
        let c = self.categories.as_ref()?;
        let mut x = *raw;
        self.standardise(&mut x);
        let mut total = 0.0;
        let mut best = (0, f32::MIN);
        for (i, l) in c.classifiers.iter().enumerate() {
            let p = l.probability(&x);
            total += p;
            if p > best.1 {
                best = (i, p);
            }
        }
        (total > 0.0).then(|| (best.0, best.1 / total))
    }

    /// Probabilities from the functionals so far.
    pub fn scores_of(&self, f: &Functionals) -> Scores {
        let mut raw = [0.0; FEATURES];
        feature_vector(f, &mut raw);
        self.scores(&raw)
    }
}

/// Mean squared standardised value of a raw vector's finite features (each
/// term capped at 100), by the given statistics: about 1 for a typical vector.
pub fn distance(raw: &[f32; FEATURES], mean: &[f32], scale: &[f32]) -> f32 {
    let mut sum = 0.0;
    let mut n = 0;
    for ((v, m), s) in raw.iter().zip(mean).zip(scale) {
        if v.is_finite() {
            let z = (v - m) / s;
            sum += (z * z).min(100.0);
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f32
    }
}

/// One training example: a raw feature vector, its labels and its speaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Raw features.
    pub x: [f32; FEATURES],
    /// High arousal? `None` leaves the sample out of the arousal task.
    pub arousal: Option<bool>,
    /// Anger? `None` leaves the sample out of the anger task.
    pub anger: Option<bool>,
    /// Index into the category labels given to [`train`]; `None` leaves the
    /// sample out of the category classifiers.
    pub category: Option<usize>,
    /// Speaker (or any grouping that must not straddle a train/test split).
    pub group: u32,
}

/// L2 strengths tried by cross-validation over speakers when asked to tune.
pub const LAMBDAS: [f64; 5] = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1];

/// The fixed L2 strength [`train`] uses: moderately strong. Tuning it per
/// task by inner leave-one-speaker-out (`LAMBDAS`) over-fits the model
/// selection to the training corpus; docs/model.md has the comparison.
pub const DEFAULT_LAMBDA: f64 = 1e-2;

/// Train a model: standardise, then for each task pick the L2 strength by
/// leave-one-group-out log loss, calibrate on the out-of-group scores, and
/// fit the final weights on everything.
/// `category_labels` names the categories `Sample::category` indexes; a
/// category with no sample, or every labelled sample, gets no classifier, and
/// an empty list trains none.
pub fn train(
    samples: &[Sample],
    sample_rate: u32,
    description: &str,
    category_labels: &[&str],
) -> Result<Model, TrainError> {
    train_with(
        samples,
        sample_rate,
        description,
        category_labels,
        &[DEFAULT_LAMBDA],
    )
}

/// [`train`] choosing each task's L2 strength from `lambdas` by
/// leave-one-group-out log loss (one value: fixed, no search).
pub fn train_with(
    samples: &[Sample],
    sample_rate: u32,
    description: &str,
    category_labels: &[&str],
    lambdas: &[f64],
) -> Result<Model, TrainError> {
    train_family(
        samples,
        sample_rate,
        description,
        category_labels,
        lambdas,
        Family::Logistic,
    )
}

/// The classifier family every task is fitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// L2 logistic regression (Newton).
    #[default]
    Logistic,
    /// One hidden layer of 16 tanh units, the same L2 strength as weight
    /// decay, 200 L-BFGS iterations from a fixed seed.
    Mlp,
    /// The mean of the logistic and the network's scores (logits), then
    /// calibrated together.
    Ensemble,
    /// The mean score of [`BAG`] networks from different seeds.
    Bagged,
}

/// Networks averaged by [`Family::Bagged`].
pub const BAG: usize = 4;

/// [`train_with`] fitting every task with `family`.
pub fn train_family(
    samples: &[Sample],
    sample_rate: u32,
    description: &str,
    category_labels: &[&str],
    lambdas: &[f64],
    family: Family,
) -> Result<Model, TrainError> {
    let (mean, scale) = standardisation(samples);
    let mut d: Vec<f32> = samples
        .iter()
        .map(|s| distance(&s.x, &mean, &scale))
        .collect();
    d.sort_by(f32::total_cmp);
    let typical_distance = d.get(d.len() * 95 / 100).copied();
    let mut x = Vec::with_capacity(samples.len() * FEATURES);
    for s in samples {
        for ((v, m), sd) in s.x.iter().zip(&mean).zip(&scale) {
            let z = if v.is_finite() {
                ((v - m) / sd).clamp(-CLIP, CLIP)
            } else {
                0.0
            };
            x.push(z as f64);
        }
    }
    let groups: Vec<u32> = samples.iter().map(|s| s.group).collect();
    let arousal = train_task(
        &x,
        &groups,
        samples.iter().map(|s| s.arousal),
        "arousal",
        lambdas,
        family,
    )?;
    let anger = train_task(
        &x,
        &groups,
        samples.iter().map(|s| s.anger),
        "anger",
        lambdas,
        family,
    )?;
    let mut labels = Vec::new();
    let mut classifiers = Vec::new();
    for (k, name) in category_labels.iter().enumerate() {
        let one_vs_rest = samples.iter().map(|s| s.category.map(|c| c == k));
        match train_task(&x, &groups, one_vs_rest, "category", lambdas, family) {
            Ok(l) => {
                labels.push(name.to_string());
                classifiers.push(l);
            }
            Err(TrainError::OneClass(_)) => {}
        }
    }
    let categories = (classifiers.len() >= 2).then_some(Categories {
        labels,
        classifiers,
    });
    let hidden = [&arousal, &anger]
        .into_iter()
        .chain(categories.iter().flat_map(|c| c.classifiers.iter()))
        .any(|l| l.hidden.is_some());
    Ok(Model {
        format: if hidden { FORMAT_HIDDEN } else { FORMAT }.into(),
        description: description.into(),
        sample_rate,
        features: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
        mean,
        scale,
        arousal,
        anger,
        categories,
        typical_distance,
    })
}

fn standardisation(samples: &[Sample]) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0.0f32; FEATURES];
    let mut scale = vec![1.0f32; FEATURES];
    for j in 0..FEATURES {
        let vals: Vec<f64> = samples
            .iter()
            .map(|s| s.x[j] as f64)
            .filter(|v| v.is_finite())
            .collect();
        if vals.len() < 2 {
            continue;
        }
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64;
        mean[j] = m as f32;
        scale[j] = (var.sqrt() as f32).max(1e-6);
    }
    (mean, scale)
}

fn train_task(
    x: &[f64],
    groups: &[u32],
    labels: impl Iterator<Item = Option<bool>>,
    task: &'static str,
    lambdas: &[f64],
    family: Family,
) -> Result<Linear, TrainError> {
    let mut rows = Vec::new();
    let mut g = Vec::new();
    let mut y = Vec::new();
    for (i, l) in labels.enumerate() {
        if let Some(l) = l {
            rows.extend_from_slice(&x[i * FEATURES..(i + 1) * FEATURES]);
            g.push(groups[i]);
            y.push(l);
        }
    }
    if y.iter().all(|&v| v) || y.iter().all(|&v| !v) {
        return Err(TrainError::OneClass(task));
    }
    let mut distinct = g.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // With a single group there is nothing to cross-validate over: a middle
    // strength and an identity calibration.
    let (lambda, calibration) = if distinct.len() < 2 {
        (1e-2, [1.0, 0.0])
    } else {
        let mut best = (f64::INFINITY, lambdas[0], Vec::new());
        for &lambda in lambdas {
            let oof = out_of_group_scores(&rows, &g, &distinct, &y, lambda, family);
            let loss = weighted_log_loss(&oof, &y);
            if loss < best.0 {
                best = (loss, lambda, oof);
            }
        }
        let (_, lambda, oof) = best;
        let platt = fit(
            &Design { x: &oof, dims: 1 },
            &y,
            &balanced_weights(&y),
            1e-6,
        );
        (lambda, [platt[0] as f32, platt[1] as f32])
    };
    let f = Fitted::fit(&rows, &y, lambda, family);
    let hidden = f.nets.first().map(|_| {
        let mut h = Hidden {
            inputs: Vec::new(),
            biases: Vec::new(),
            outputs: Vec::new(),
        };
        for (net, share) in f.nets.iter().zip(f.shares.iter()) {
            for u in 0..net.units {
                h.inputs
                    .extend((0..FEATURES).map(|j| net.w1[j * net.units + u] as f32));
                h.biases.push(net.b1[u] as f32);
                h.outputs.push((share * net.v[u]) as f32);
            }
        }
        h
    });
    Ok(Linear {
        weights: f.linear[..FEATURES].iter().map(|&w| w as f32).collect(),
        bias: f.linear[FEATURES] as f32,
        calibration,
        lambda: lambda as f32,
        hidden,
    })
}

/// A fitted score in training precision: a linear part (weights, then the
/// bias; already scaled by its share) plus networks' logits, each weighted by
/// its share.
struct Fitted {
    linear: Vec<f64>,
    nets: Vec<mlp::Net>,
    shares: Vec<f64>,
}

impl Fitted {
    fn fit(rows: &[f64], y: &[bool], lambda: f64, family: Family) -> Fitted {
        let d = Design {
            x: rows,
            dims: FEATURES,
        };
        let w = balanced_weights(y);
        let nets = |seeds: std::ops::Range<u64>| -> Vec<mlp::Net> {
            seeds
                .map(|seed| mlp::fit(&d, y, &w, lambda, mlp::UNITS, seed))
                .collect()
        };
        let (mut linear, nets, linear_share) = match family {
            Family::Logistic => (fit(&d, y, &w, lambda), Vec::new(), 1.0),
            Family::Mlp => (vec![0.0; FEATURES + 1], nets(1..2), 0.0),
            Family::Ensemble => (fit(&d, y, &w, lambda), nets(1..2), 0.5),
            Family::Bagged => (vec![0.0; FEATURES + 1], nets(1..1 + BAG as u64), 0.0),
        };
        let share = (1.0 - linear_share) / nets.len().max(1) as f64;
        linear.iter_mut().for_each(|v| *v *= linear_share);
        // The networks' output biases join the linear bias.
        linear[FEATURES] += nets.iter().map(|n| share * n.c).sum::<f64>();
        let shares = vec![share; nets.len()];
        Fitted {
            linear,
            nets,
            shares,
        }
    }

    fn score(&self, row: &[f64], h: &mut [f64]) -> f64 {
        let mut s = row
            .iter()
            .zip(&self.linear)
            .map(|(a, b)| a * b)
            .sum::<f64>()
            + self.linear[FEATURES];
        for (n, share) in self.nets.iter().zip(&self.shares) {
            s += share * (n.score(row, h) - n.c);
        }
        s
    }
}

/// Each row's score from a model that never saw its group.
fn out_of_group_scores(
    rows: &[f64],
    g: &[u32],
    distinct: &[u32],
    y: &[bool],
    lambda: f64,
    family: Family,
) -> Vec<f64> {
    let mut oof = vec![0.0; y.len()];
    let mut h = vec![0.0; mlp::UNITS];
    for &held in distinct {
        let mut tx = Vec::new();
        let mut ty = Vec::new();
        for i in 0..y.len() {
            if g[i] != held {
                tx.extend_from_slice(&rows[i * FEATURES..(i + 1) * FEATURES]);
                ty.push(y[i]);
            }
        }
        if ty.iter().all(|&v| v) || ty.iter().all(|&v| !v) {
            continue;
        }
        let f = Fitted::fit(&tx, &ty, lambda, family);
        for i in (0..y.len()).filter(|&i| g[i] == held) {
            oof[i] = f.score(&rows[i * FEATURES..(i + 1) * FEATURES], &mut h);
        }
    }
    oof
}

fn weighted_log_loss(scores: &[f64], y: &[bool]) -> f64 {
    let w = balanced_weights(y);
    scores
        .iter()
        .zip(y)
        .zip(&w)
        .map(|((&z, &l), &wi)| {
            // log(1 + e^{-z}) for positives, log(1 + e^{z}) for negatives, stably.
            let m = if l { -z } else { z };
            wi * (m.max(0.0) + (-m.abs()).exp().ln_1p())
        })
        .sum::<f64>()
        / y.len() as f64
}

/// Milliseconds between model evaluations in a call.
pub const UPDATE_MS: u32 = 250;

/// The estimator a call runs: re-scores the model every [`UPDATE_MS`] of
/// audio from the functionals so far (the features are cumulative, so
/// nothing is lost between updates), and reports the calibrated arousal
/// probability with confidence |2p − 1|.
#[derive(Debug, Clone)]
pub struct ModelEstimator {
    model: Arc<Model>,
    line: Option<Arc<LineMap>>,
    raw: [f32; FEATURES],
    frames: u32,
    current: Estimate,
}

impl ModelEstimator {
    /// An estimator over a shared model.
    pub fn new(model: Arc<Model>) -> Self {
        Self::with_line(model, None)
    }

    /// An estimator that first moves each vector from the line's feature
    /// distribution onto the model's ([`crate::adapt`]).
    pub fn with_line(model: Arc<Model>, line: Option<Arc<LineMap>>) -> Self {
        Self {
            model,
            line,
            raw: [0.0; FEATURES],
            frames: 0,
            current: Estimate::default(),
        }
    }
}

impl EmotionEstimator for ModelEstimator {
    fn update(&mut self, _frame: &FrameFeatures, f: &Functionals) {
        self.frames += 1;
        if self.frames * 10 < UPDATE_MS || f.speech_frames == 0 {
            return;
        }
        self.frames = 0;
        feature_vector(f, &mut self.raw);
        if let Some(line) = &self.line {
            line.apply(&mut self.raw);
        }
        let s = self.model.scores(&self.raw);
        self.current = Estimate {
            arousal: s.arousal,
            anger: s.anger,
            // Unusual audio (a line or voice unlike the training data) lowers
            // the confidence, so the call waits for more speech.
            confidence: (2.0 * s.arousal - 1.0).abs() * s.familiarity,
            speech_ms: f.speech_ms(),
        };
    }

    fn estimate(&self, _f: &Functionals) -> Estimate {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two speakers, two clusters per task along different features.
    fn toy() -> Vec<Sample> {
        let mut rng = fastrand::Rng::with_seed(9);
        (0..400)
            .map(|i| {
                let high = i % 2 == 0;
                let angry = high && i % 4 == 0;
                let mut x = [0.0f32; FEATURES];
                for v in x.iter_mut() {
                    *v = rng.f32();
                }
                x[0] += if high { 1.5 } else { 0.0 };
                x[5] += if angry { 1.5 } else { 0.0 };
                x[7] = f32::NAN;
                Sample {
                    x,
                    arousal: Some(high),
                    anger: Some(angry),
                    category: Some(usize::from(high) + usize::from(angry)),
                    group: i % 2 + 2 * (i / 200),
                }
            })
            .collect()
    }

    #[test]
    fn trains_separates_and_round_trips_through_json() {
        let data = toy();
        let m = train(&data, 8000, "toy", &[]).unwrap();
        let right = data
            .iter()
            .filter(|s| {
                let p = m.scores(&s.x);
                (p.arousal > 0.5) == s.arousal.unwrap() && (p.anger > 0.5) == s.anger.unwrap()
            })
            .count();
        assert!(right > 360, "{right}/400");
        let back = Model::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.scores(&data[0].x), m.scores(&data[0].x));
    }

    #[test]
    fn categories_one_vs_rest() {
        let data = toy();
        let m = train(&data, 8000, "toy", &["low", "high", "angry", "absent"]).unwrap();
        let c = m.categories.as_ref().expect("categories trained");
        assert_eq!(
            c.labels,
            ["low", "high", "angry"],
            "no classifier without samples"
        );
        let right = data
            .iter()
            .filter(|s| m.category(&s.x).map(|(k, _)| k) == s.category)
            .count();
        assert!(right > 300, "{right}/400");
        assert_eq!(Model::from_json(&m.to_json()).unwrap(), m);
        let without = train(&data, 8000, "toy", &[]).unwrap();
        assert!(without.categories.is_none() && without.category(&data[0].x).is_none());
        assert!(!without.to_json().contains("categories"));
    }

    #[test]
    fn a_model_over_other_features_is_refused() {
        let mut m = train(&toy(), 8000, "toy", &[]).unwrap();
        m.features[3] = "something_else".into();
        let err = Model::from_json(&m.to_json()).unwrap_err();
        assert!(
            matches!(err, ModelError::Features { index: 3, .. }),
            "{err}"
        );
        assert!(matches!(
            Model::from_json("{\"format\":\"x\"}"),
            Err(ModelError::Json(_))
        ));
    }

    #[test]
    fn networks_separate_and_are_written_as_format_2() {
        let data = toy();
        for family in [Family::Mlp, Family::Ensemble, Family::Bagged] {
            let m = train_family(&data, 8000, "toy", &["a", "b", "c"], &[1e-2], family).unwrap();
            assert_eq!(m.format, FORMAT_HIDDEN, "{family:?}");
            let units = m.arousal.hidden.as_ref().unwrap().outputs.len();
            let bag = if family == Family::Bagged { BAG } else { 1 };
            assert_eq!(units, 16 * bag, "{family:?}");
            let right = data
                .iter()
                .filter(|s| (m.scores(&s.x).arousal > 0.5) == s.arousal.unwrap())
                .count();
            assert!(right > 360, "{family:?}: {right}/400");
            assert_eq!(Model::from_json(&m.to_json()).unwrap(), m);
            // A format-1 file must not carry a hidden layer a format-1 reader
            // would silently ignore.
            let mut old = m.clone();
            old.format = FORMAT.into();
            assert!(matches!(
                Model::from_json(&old.to_json()),
                Err(ModelError::Format { .. })
            ));
        }
        let linear = train(&data, 8000, "toy", &[]).unwrap();
        assert_eq!(linear.format, FORMAT);
        assert!(!linear.to_json().contains("hidden"));
    }

    #[test]
    fn one_class_is_an_error() {
        let mut d = toy();
        d.iter_mut().for_each(|s| s.anger = Some(false));
        assert!(matches!(
            train(&d, 8000, "", &[]),
            Err(TrainError::OneClass("anger"))
        ));
    }
}
