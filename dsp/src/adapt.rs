//! Unsupervised adaptation to the line: running feature statistics over the
//! recent calls of one deployment, and the map that moves a call's feature
//! vector from the line's distribution onto the one the model was trained on.
//!
//! Why: a model trained on one corpus meets lines (handsets, codecs, gateways,
//! languages) whose feature distributions are shifted and scaled against its
//! training data. Normalising each held-out corpus by its own statistics (no
//! labels needed) is the classic remedy for cross-corpus emotion recognition
//! (Schuller et al., "Cross-corpus acoustic emotion recognition", IEEE TAC
//! 2010). A deployment hears thousands of callers on the same lines, so it can
//! estimate those statistics itself.
//!
//! Robust and bounded: the last [`LineStats::capacity`] calls' vectors are
//! kept in a ring (47 floats a call, ~190 KB for 1,000 calls); the centre is
//! the per-feature median and the spread the inter-quartile range / 1.349, so
//! a few strange calls (music on hold, a fax, silence) move neither. They are
//! recomputed once per call added, never per packet. The ring serialises, so
//! the statistics survive a restart.
//!
//! Only the *shape* of the distribution is learnt from the line: a line where
//! most callers are calm has a calmer median than the balanced training
//! corpus, and full normalisation would then shift calm callers toward
//! "agitated". [`LineMap`] therefore blends the line's statistics with the
//! model's by `strength` (profile key), and starts only once `min_calls`
//! calls have been seen.

use serde::{Deserialize, Serialize};

use crate::model::FEATURES;

/// The last calls' feature vectors on one line, and their robust statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineStats {
    capacity: usize,
    /// Ring of raw vectors, `FEATURES` values each (NaN: not computable in
    /// that call).
    ring: Rows,
    /// Where the next vector goes once the ring is full.
    next: usize,
    /// Calls ever observed (not bounded by the ring).
    seen: u64,
    #[serde(skip)]
    centre: Vec<f32>,
    #[serde(skip)]
    spread: Vec<f32>,
}

impl LineStats {
    /// Empty statistics over at most `capacity` recent calls (at least 8).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(8),
            ring: Rows::default(),
            next: 0,
            seen: 0,
            centre: vec![f32::NAN; FEATURES],
            spread: vec![f32::NAN; FEATURES],
        }
    }

    /// Calls kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Calls observed since the statistics were created (persisted too).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Calls in the window now.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// No call observed yet.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Add one call's raw feature vector (whole call). Vectors with no
    /// finite value are ignored.
    pub fn observe(&mut self, raw: &[f32; FEATURES]) {
        self.extend([raw]);
    }

    /// Add many calls' vectors at once (oldest first), recomputing the
    /// statistics once rather than per vector: how statistics other
    /// instances observed join these (the window then holds the newest
    /// `capacity` of both, exactly as if one process had seen them all).
    pub fn extend<'a>(&mut self, vectors: impl IntoIterator<Item = &'a [f32; FEATURES]>) {
        let before = self.seen;
        for raw in vectors {
            if !raw.iter().any(|v| v.is_finite()) {
                continue;
            }
            if self.ring.len() < self.capacity {
                self.ring.0.extend_from_slice(raw);
            } else {
                self.ring.row_mut(self.next).copy_from_slice(raw);
                self.next = (self.next + 1) % self.capacity;
            }
            self.seen += 1;
        }
        if self.seen != before {
            self.recompute();
        }
    }

    /// The window's vectors, oldest first.
    pub fn vectors(&self) -> impl Iterator<Item = &[f32]> {
        let (newer, older) = self
            .ring
            .0
            .split_at(self.next.min(self.ring.len()) * FEATURES);
        older
            .chunks_exact(FEATURES)
            .chain(newer.chunks_exact(FEATURES))
    }

    /// Per-feature median and robust spread (IQR / 1.349, the standard
    /// deviation for a normal distribution) of the window; NaN where fewer
    /// than 4 calls had the feature or the spread is zero.
    pub fn centre_and_spread(&self) -> (&[f32], &[f32]) {
        (&self.centre, &self.spread)
    }

    fn recompute(&mut self) {
        let mut col = Vec::with_capacity(self.ring.len());
        self.centre.resize(FEATURES, f32::NAN);
        self.spread.resize(FEATURES, f32::NAN);
        for j in 0..FEATURES {
            col.clear();
            col.extend(self.ring.iter().map(|r| r[j]).filter(|v| v.is_finite()));
            if col.len() < 4 {
                self.centre[j] = f32::NAN;
                self.spread[j] = f32::NAN;
                continue;
            }
            col.sort_unstable_by(f32::total_cmp);
            let q = |p: f32| {
                let pos = p * (col.len() - 1) as f32;
                let (i, f) = (pos.floor() as usize, pos.fract());
                let hi = col[(i + 1).min(col.len() - 1)];
                col[i] + f * (hi - col[i])
            };
            let iqr = q(0.75) - q(0.25);
            self.centre[j] = q(0.5);
            self.spread[j] = if iqr > 0.0 { iqr / 1.349 } else { f32::NAN };
        }
    }

    /// Read statistics written by [`LineStats::to_json`]; the window is
    /// trimmed to `capacity` (newest kept) when the profile shrank it.
    pub fn from_json(text: &str, capacity: usize) -> Result<Self, serde_json::Error> {
        let mut s: LineStats = serde_json::from_str(text)?;
        // (Rows of another length were dropped as they were read.)
        // Oldest first, so trimming keeps the newest.
        let next = s.next.min(s.ring.len());
        s.ring.0.rotate_left(next * FEATURES);
        s.next = 0;
        s.capacity = capacity.max(8);
        if s.ring.len() > s.capacity {
            let drop = s.ring.len() - s.capacity;
            s.ring.0.drain(..drop * FEATURES);
        }
        s.recompute();
        Ok(s)
    }

    /// The statistics as JSON (the window itself, so medians are exact
    /// after a restart).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("line statistics always serialise")
    }
}

/// The ring's vectors back to back in one allocation, `FEATURES` floats
/// each. A `Vec` per call was one small allocation kept as long as the
/// process (the window, 2,000 calls by default), each made amid the calls
/// of the load that brought it and pinning a heap page after that load was
/// gone. Serialised as before: an array of arrays.
#[derive(Debug, Clone, Default)]
struct Rows(Vec<f32>);

impl Rows {
    fn len(&self) -> usize {
        self.0.len() / FEATURES
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.0.chunks_exact(FEATURES)
    }

    fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.0[i * FEATURES..(i + 1) * FEATURES]
    }
}

impl Serialize for Rows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Rows {
    /// Rows of another length (another model's features) are dropped.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let rows = Vec::<Vec<f32>>::deserialize(d)?;
        Ok(Rows(
            rows.into_iter()
                .filter(|r| r.len() == FEATURES)
                .flatten()
                .collect(),
        ))
    }
}

/// How a call's raw features are moved from the line onto the model's
/// training distribution: `x' = m + (x − c)·s/σ` per feature, where `c`, `σ`
/// are the line's (blended with the model's by `strength`) and `m`, `s` the
/// model's training mean and scale. Built once per call from a snapshot of
/// [`LineStats`]; applying it never allocates.
#[derive(Debug, Clone, PartialEq)]
pub struct LineMap {
    gain: [f32; FEATURES],
    offset: [f32; FEATURES],
}

impl LineMap {
    /// The map for a line, or `None` while fewer than `min_calls` calls
    /// were seen (the identity then). `strength` in [0, 1]: 0 leaves the
    /// features as they are, 1 normalises fully to the line.
    pub fn new(
        line: &LineStats,
        model_mean: &[f32],
        model_scale: &[f32],
        min_calls: usize,
        strength: f32,
    ) -> Option<Self> {
        if line.len() < min_calls.max(4) || model_mean.len() != FEATURES {
            return None;
        }
        let w = strength.clamp(0.0, 1.0);
        let (centre, spread) = line.centre_and_spread();
        let mut gain = [1.0; FEATURES];
        let mut offset = [0.0; FEATURES];
        for j in 0..FEATURES {
            let (m, s) = (model_mean[j], model_scale[j]);
            if !(centre[j].is_finite() && spread[j].is_finite() && s > 0.0) {
                continue;
            }
            // Blend the line's location and spread with the model's, then
            // map the blended distribution onto the model's.
            let c = w * centre[j] + (1.0 - w) * m;
            let sd = w * spread[j] + (1.0 - w) * s;
            // A line may not stretch or squeeze a feature by more than 4x:
            // beyond that the window says more about a few odd calls than
            // about the line.
            let g = (s / sd).clamp(0.25, 4.0);
            gain[j] = g;
            offset[j] = m - c * g;
        }
        Some(Self { gain, offset })
    }

    /// Apply in place (NaN stays NaN: the model reads it as its mean).
    pub fn apply(&self, raw: &mut [f32; FEATURES]) {
        for ((v, g), o) in raw.iter_mut().zip(&self.gain).zip(&self.offset) {
            *v = *v * g + o;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(rng: &mut fastrand::Rng, shift: f32, scale: f32) -> [f32; FEATURES] {
        let mut x = [0.0; FEATURES];
        for (j, v) in x.iter_mut().enumerate() {
            // Roughly normal (sum of uniforms), per-feature location j.
            let z: f32 = (0..6).map(|_| rng.f32()).sum::<f32>() - 3.0;
            *v = j as f32 + shift + scale * z * 1.4;
        }
        x
    }

    #[test]
    fn a_shifted_scaled_line_is_mapped_back_onto_the_model() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mean: Vec<f32> = (0..FEATURES).map(|j| j as f32).collect();
        let scale = vec![1.0; FEATURES];
        let mut line = LineStats::new(500);
        for _ in 0..500 {
            line.observe(&vector(&mut rng, 3.0, 2.0));
        }
        let map = LineMap::new(&line, &mean, &scale, 100, 1.0).unwrap();
        let (mut sum, mut n) = (0.0f64, 0);
        for _ in 0..2000 {
            let mut x = vector(&mut rng, 3.0, 2.0);
            map.apply(&mut x);
            for (j, v) in x.iter().enumerate() {
                sum += (*v - j as f32) as f64;
                n += 1;
            }
        }
        let bias = sum / n as f64;
        assert!(bias.abs() < 0.1, "residual shift {bias}");
        // Half strength leaves half the shift.
        let half = LineMap::new(&line, &mean, &scale, 100, 0.5).unwrap();
        let mut x = [0.0; FEATURES];
        for (j, v) in x.iter_mut().enumerate() {
            *v = j as f32 + 3.0;
        }
        half.apply(&mut x);
        assert!((x[10] - 10.0 - 1.0).abs() < 0.4, "{}", x[10]);
    }

    #[test]
    fn no_map_before_enough_calls_and_outliers_do_not_move_it() {
        let mut rng = fastrand::Rng::with_seed(4);
        let mean: Vec<f32> = (0..FEATURES).map(|j| j as f32).collect();
        let scale = vec![1.0; FEATURES];
        let mut line = LineStats::new(200);
        for _ in 0..49 {
            line.observe(&vector(&mut rng, 0.0, 1.0));
        }
        assert!(LineMap::new(&line, &mean, &scale, 50, 1.0).is_none());
        for _ in 0..151 {
            line.observe(&vector(&mut rng, 0.0, 1.0));
        }
        let before = line.centre_and_spread().0.to_vec();
        // Ten wild calls (5 % of the window) barely move the medians.
        for _ in 0..10 {
            line.observe(&[1e6; FEATURES]);
        }
        let after = line.centre_and_spread().0;
        for j in 0..FEATURES {
            assert!(
                (after[j] - before[j]).abs() < 0.3,
                "{j}: {} -> {}",
                before[j],
                after[j]
            );
        }
        // A vector with nothing computable is not a call.
        let seen = line.seen();
        line.observe(&[f32::NAN; FEATURES]);
        assert_eq!(line.seen(), seen);
    }

    #[test]
    fn extending_in_one_batch_equals_observing_one_by_one() {
        let mut rng = fastrand::Rng::with_seed(6);
        let calls: Vec<[f32; FEATURES]> = (0..90)
            .map(|i| vector(&mut rng, i as f32 / 20.0, 1.0))
            .collect();
        let mut one = LineStats::new(64);
        for c in &calls {
            one.observe(c);
        }
        let mut batch = LineStats::new(64);
        batch.extend(&calls[..30]);
        batch.extend(calls[30..].iter().chain([&[f32::NAN; FEATURES]]));
        assert_eq!((batch.len(), batch.seen()), (64, 90));
        assert_eq!(batch.centre_and_spread(), one.centre_and_spread());
        // Oldest first: the last 64 calls, in order.
        let kept: Vec<&[f32]> = batch.vectors().collect();
        assert_eq!(kept.len(), 64);
        assert_eq!(kept[0], &calls[26][..]);
        assert_eq!(kept[63], &calls[89][..]);
    }

    #[test]
    fn the_window_is_bounded_and_survives_a_restart() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut line = LineStats::new(64);
        for i in 0..100 {
            line.observe(&vector(&mut rng, i as f32 / 10.0, 1.0));
        }
        assert_eq!((line.len(), line.seen()), (64, 100));
        let back = LineStats::from_json(&line.to_json(), 64).unwrap();
        assert_eq!(back.centre_and_spread(), line.centre_and_spread());
        assert_eq!(back.seen(), 100);
        // A smaller window keeps the newest calls.
        let small = LineStats::from_json(&line.to_json(), 16).unwrap();
        assert_eq!(small.len(), 16);
        assert!(small.centre_and_spread().0[0] > line.centre_and_spread().0[0]);
        assert!(LineStats::from_json("{", 16).is_err());
    }

    #[test]
    fn the_ring_is_written_as_an_array_of_vectors_and_odd_rows_are_dropped() {
        let mut rng = fastrand::Rng::with_seed(6);
        let mut line = LineStats::new(8);
        for i in 0..10 {
            line.observe(&vector(&mut rng, i as f32, 1.0));
        }
        let json: serde_json::Value = serde_json::from_str(&line.to_json()).unwrap();
        let ring = json["ring"].as_array().unwrap();
        assert_eq!(ring.len(), 8);
        assert!(ring.iter().all(|r| r.as_array().unwrap().len() == FEATURES));
        let newest: Vec<f32> = line.vectors().last().unwrap().to_vec();
        // A file with a row of another model's length still loads, without it.
        let mut edited = json.clone();
        edited["ring"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!([1.0, 2.0]));
        let back = LineStats::from_json(&edited.to_string(), 8).unwrap();
        assert_eq!(back.len(), 8);
        assert_eq!(back.vectors().last().unwrap(), &newest[..]);
    }
}
