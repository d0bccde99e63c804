//! `emonav train` and `emonav eval`: features from a labelled corpus through
//! the in-call pipeline, the model fit, leave-one-speaker-out evaluation and
//! its metrics (UAR per task, confusion matrices, UAR by seconds of speech
//! heard, reliability of the probabilities).

use std::collections::BTreeMap;
use std::io::IsTerminal;

use emonav_dsp::model::{self, Sample, FEATURES};
use emonav_dsp::Model;
use serde::Serialize;

use crate::corpus::{extract, CorpusError, Emotion, Features, Item, SNAPSHOTS_MS};

#[cfg(test)]
#[path = "confusion_tests.rs"]
mod confusion_tests;
#[cfg(test)]
#[path = "flag_tests.rs"]
mod flag_tests;

/// The category names a model is trained over, in `Emotion::ALL` order.
pub fn category_labels() -> Vec<&'static str> {
    Emotion::ALL.iter().map(|e| e.name()).collect()
}

/// The embedded default model for an analysis rate (16000, else 8000): the
/// endpoint's own loader, [`emonav_dsp::model::embedded`].
pub fn default_model(rate: u32) -> Model {
    model::embedded(rate)
}

/// Extract every item's features, on all cores, with a progress line on a terminal.
pub fn extract_all(items: &[Item], rate: u32) -> Result<Vec<Features>, CorpusError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    // Items per worker; at least one, so that an empty list makes no empty chunks.
    let per = items.len().div_ceil(workers).max(1);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let show = std::io::stderr().is_terminal();
    let mut out: Vec<Option<Result<Features, CorpusError>>> =
        (0..items.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        for (w, slot) in out.chunks_mut(per).enumerate() {
            let start = w * per;
            let done = &done;
            s.spawn(move || {
                for (i, o) in slot.iter_mut().enumerate() {
                    *o = Some(extract(&items[start + i].path, rate));
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if show && (n % 10 == 0 || n == items.len()) {
                        let bar = 30 * n / items.len();
                        eprint!(
                            "\rextracting [{}{}] {n}/{}",
                            "#".repeat(bar),
                            " ".repeat(30 - bar),
                            items.len()
                        );
                    }
                }
            });
        }
    });
    if show {
        eprintln!();
    }
    out.into_iter()
        .map(|o| o.expect("every slot filled"))
        .collect()
}

/// Speaker index per item; items without a speaker fall into five
/// interleaved groups, so model selection still has folds to use.
pub fn groups(items: &[Item]) -> (Vec<u32>, Vec<String>) {
    let mut names: Vec<String> = items.iter().filter_map(|i| i.speaker.clone()).collect();
    names.sort();
    names.dedup();
    let g = items
        .iter()
        .enumerate()
        .map(|(n, i)| match &i.speaker {
            Some(s) => names.binary_search(s).expect("listed") as u32,
            None => (names.len() + n % 5) as u32,
        })
        .collect();
    (g, names)
}

/// How features are normalised before training and scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalisation {
    /// Population statistics only (what a call can do).
    Population,
    /// Each speaker's features z-scored over all of that speaker's clips
    /// first: the corpus README's "per-speaker normalisation" reference. A
    /// live call cannot do this (it would need the caller's speech in every
    /// emotion); it bounds what caller normalisation could reach.
    Speaker,
}

/// z-score each speaker's vectors (every snapshot) by the statistics of that
/// speaker's whole-clip vectors.
pub fn speaker_normalise(feats: &mut [Features], g: &[u32]) {
    let mut by: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &s) in g.iter().enumerate() {
        by.entry(s).or_default().push(i);
    }
    for idx in by.values() {
        for j in 0..FEATURES {
            let vals: Vec<f32> = idx
                .iter()
                .map(|&i| feats[i].whole[j])
                .filter(|v| v.is_finite())
                .collect();
            if vals.len() < 2 {
                continue;
            }
            let m = vals.iter().sum::<f32>() / vals.len() as f32;
            let sd = (vals.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / vals.len() as f32)
                .sqrt()
                .max(1e-6);
            for &i in idx {
                let f = &mut feats[i];
                f.whole[j] = (f.whole[j] - m) / sd;
                for a in f.at.iter_mut() {
                    a[j] = (a[j] - m) / sd;
                }
            }
        }
    }
}

/// Training rows for the given items: each clip at 0.5 s and 1 s of speech
/// and whole, so that one model is calibrated for the early, thin evidence a
/// call decides on as well as for full clips.
pub fn samples(items: &[Item], feats: &[Features], g: &[u32], which: &[usize]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(which.len() * 3);
    for &i in which {
        let e = items[i].emotion;
        let f = &feats[i];
        for x in [f.at[0], f.at[1], f.whole] {
            out.push(Sample {
                x,
                arousal: e.high_arousal(),
                anger: Some(e == crate::corpus::Emotion::Anger),
                category: Emotion::ALL.iter().position(|&c| c == e),
                group: g[i],
            });
        }
    }
    out
}

/// Probabilities for one clip: at each snapshot, then whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prediction {
    /// P(high arousal) at each of [`SNAPSHOTS_MS`].
    pub arousal_at: [f32; SNAPSHOTS_MS.len()],
    /// P(anger) at each of [`SNAPSHOTS_MS`].
    pub anger_at: [f32; SNAPSHOTS_MS.len()],
    /// P(high arousal), whole clip.
    pub arousal: f32,
    /// P(anger), whole clip.
    pub anger: f32,
    /// Most likely category at each snapshot (an `Emotion::ALL` index), when the model has categories.
    pub category_at: [Option<usize>; SNAPSHOTS_MS.len()],
    /// Most likely category, whole clip.
    pub category: Option<usize>,
    /// The model's familiarity with the features at each snapshot (0..1;
    /// the call's confidence is |2P − 1| times this).
    pub familiarity_at: [f32; SNAPSHOTS_MS.len()],
}

/// Score one clip with a model.
pub fn predict(m: &Model, f: &Features) -> Prediction {
    let mut p = Prediction::default();
    for (k, x) in f.at.iter().enumerate() {
        let s = m.scores(x);
        p.arousal_at[k] = s.arousal;
        p.familiarity_at[k] = s.familiarity;
        p.anger_at[k] = s.anger;
    }
    let s = m.scores(&f.whole);
    p.arousal = s.arousal;
    p.anger = s.anger;
    // The model's category labels, mapped back to `Emotion::ALL`.
    let to_emotion = |k: usize| {
        let name = &m.categories.as_ref()?.labels[k];
        Emotion::ALL.iter().position(|e| e.name() == name)
    };
    for (k, x) in f.at.iter().enumerate() {
        p.category_at[k] = m.category(x).and_then(|(c, _)| to_emotion(c));
    }
    p.category = m.category(&f.whole).and_then(|(c, _)| to_emotion(c));
    p
}

/// Leave-one-speaker-out: for each speaker, train on the others (with their
/// own nested model selection) and score the held-out speaker's clips.
pub fn loso(
    items: &[Item],
    feats: &[Features],
    g: &[u32],
    rate: u32,
) -> Result<Vec<Prediction>, model::TrainError> {
    let mut speakers: Vec<u32> = g.to_vec();
    speakers.sort_unstable();
    speakers.dedup();
    let mut preds = vec![Prediction::default(); items.len()];
    for &held in &speakers {
        let train_idx: Vec<usize> = (0..items.len()).filter(|&i| g[i] != held).collect();
        let m = model::train(
            &samples(items, feats, g, &train_idx),
            rate,
            "loso fold",
            &category_labels(),
        )?;
        for i in (0..items.len()).filter(|&i| g[i] == held) {
            preds[i] = predict(&m, &feats[i]);
        }
    }
    Ok(preds)
}

/// A binary task's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    /// The negative and positive class names.
    pub classes: [&'static str; 2],
    /// Clips in the task.
    pub clips: usize,
    /// Unweighted average recall, whole clip.
    pub uar: f64,
    /// UAR from the first N seconds of speech (the whole clip when shorter), keyed by N.
    pub uar_by_speech_s: BTreeMap<String, f64>,
    /// Whole-clip confusion matrix: rows truth (negative, positive), columns prediction.
    pub confusion: [[usize; 2]; 2],
}

fn uar(pairs: impl Iterator<Item = (bool, f32)>) -> (f64, [[usize; 2]; 2]) {
    let mut c = [[0usize; 2]; 2];
    for (truth, p) in pairs {
        c[truth as usize][(p >= 0.5) as usize] += 1;
    }
    let recall = |r: [usize; 2], k: usize| {
        let n = r[0] + r[1];
        if n == 0 {
            0.0
        } else {
            r[k] as f64 / n as f64
        }
    };
    ((recall(c[0], 0) + recall(c[1], 1)) / 2.0, c)
}

fn task_report(
    classes: [&'static str; 2],
    truth: &[Option<bool>],
    at: impl Fn(usize, usize) -> f32,
    whole: impl Fn(usize) -> f32,
) -> TaskReport {
    let idx: Vec<usize> = (0..truth.len()).filter(|&i| truth[i].is_some()).collect();
    let (u, confusion) = uar(idx.iter().map(|&i| (truth[i].unwrap(), whole(i))));
    let uar_by_speech_s = SNAPSHOTS_MS
        .iter()
        .enumerate()
        .map(|(k, ms)| {
            let (u, _) = uar(idx.iter().map(|&i| (truth[i].unwrap(), at(i, k))));
            (format!("{}", *ms as f32 / 1000.0), u)
        })
        .collect();
    TaskReport {
        classes,
        clips: idx.len(),
        uar: u,
        uar_by_speech_s,
        confusion,
    }
}

/// The categories' figures: UAR over the categories present in the corpus.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryReport {
    /// The categories present, in `Emotion::ALL` order.
    pub labels: Vec<&'static str>,
    /// Clips scored.
    pub clips: usize,
    /// Unweighted average recall over `labels` (chance: 1 / their number), whole clip.
    pub uar: f64,
    /// UAR from the first N seconds of speech, keyed by N.
    pub uar_by_speech_s: BTreeMap<String, f64>,
    /// Whole-clip confusion: rows truth in `labels` order; columns predicted
    /// in `labels` order, then one column ("other") for predictions of a
    /// category the corpus does not have. Each row sums to its clips.
    pub confusion: Vec<Vec<usize>>,
}

fn category_report(items: &[Item], preds: &[Prediction]) -> Option<CategoryReport> {
    if preds.iter().all(|p| p.category.is_none()) {
        return None;
    }
    let present: Vec<usize> = (0..Emotion::ALL.len())
        .filter(|&k| items.iter().any(|i| i.emotion == Emotion::ALL[k]))
        .collect();
    let row = |e: Emotion| present.iter().position(|&k| Emotion::ALL[k] == e);
    let score = |pick: &dyn Fn(&Prediction) -> Option<usize>| {
        // One column per category present, and a last one for predictions
        // of categories the corpus does not have (or none): every clip is
        // counted in its row.
        let mut c = vec![vec![0usize; present.len() + 1]; present.len()];
        for (i, p) in items.iter().zip(preds) {
            let Some(r) = row(i.emotion) else { continue };
            match pick(p).and_then(|k| present.iter().position(|&q| q == k)) {
                Some(col) => c[r][col] += 1,
                None => c[r][present.len()] += 1,
            }
        }
        let recall: f64 = (0..present.len())
            .map(|r| {
                let n = c[r].iter().sum::<usize>();
                if n == 0 {
                    0.0
                } else {
                    c[r][r] as f64 / n as f64
                }
            })
            .sum();
        (recall / present.len() as f64, c)
    };
    let (uar, confusion) = score(&|p| p.category);
    let uar_by_speech_s = SNAPSHOTS_MS
        .iter()
        .enumerate()
        .map(|(k, ms)| {
            (
                format!("{}", *ms as f32 / 1000.0),
                score(&|p| p.category_at[k]).0,
            )
        })
        .collect();
    Some(CategoryReport {
        labels: present.iter().map(|&k| Emotion::ALL[k].name()).collect(),
        clips: items.len(),
        uar,
        uar_by_speech_s,
        confusion,
    })
}

/// One bin of the reliability curve.
#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    /// Lower edge of the predicted probability.
    pub from: f32,
    /// Mean predicted probability in the bin.
    pub predicted: f64,
    /// Share of the bin that was truly positive.
    pub observed: f64,
    /// Predictions in the bin.
    pub count: usize,
}

fn reliability(pairs: &[(bool, f32)]) -> Vec<Bin> {
    (0..10)
        .filter_map(|b| {
            let lo = b as f32 / 10.0;
            let inside: Vec<&(bool, f32)> = pairs
                .iter()
                .filter(|(_, p)| *p >= lo && (*p < lo + 0.1 || b == 9))
                .collect();
            (!inside.is_empty()).then(|| Bin {
                from: lo,
                predicted: inside.iter().map(|(_, p)| *p as f64).sum::<f64>() / inside.len() as f64,
                observed: inside.iter().filter(|(t, _)| *t).count() as f64 / inside.len() as f64,
                count: inside.len(),
            })
        })
        .collect()
}

/// The profile's anger flag threshold the report measures (sip-profiles `flag_anger`).
pub const ANGER_FLAG: f32 = 0.6;

/// One speaker's whole-clip figures.
#[derive(Debug, Clone, Serialize)]
pub struct SpeakerFigures {
    /// The speaker.
    pub speaker: String,
    /// Arousal UAR, whole clip.
    pub arousal: f64,
    /// Arousal UAR after 1 s of speech.
    pub arousal_1s: f64,
    /// Anger UAR, whole clip.
    pub anger: f64,
}

/// How often the early gate (confidence |2P − 1| ≥ 0.7, i.e. P ≥ 0.85 or
/// ≤ 0.15) would fire, per arousal class, after some speech.
#[derive(Debug, Clone, Serialize)]
pub struct GateFigures {
    /// Seconds of speech heard.
    pub speech_s: f32,
    /// Share of high-arousal clips confidently high.
    pub high_confident_right: f64,
    /// Share of high-arousal clips confidently low.
    pub high_confident_wrong: f64,
    /// Share of low-arousal clips confidently low.
    pub low_confident_right: f64,
    /// Share of low-arousal clips confidently high.
    pub low_confident_wrong: f64,
    /// Share of high-arousal clips confidently right in a call, where the
    /// confidence is also scaled by the model's familiarity.
    pub high_in_call: f64,
    /// Share of low-arousal clips confidently right in a call, likewise.
    pub low_in_call: f64,
}

/// The anger flag at the profile's threshold, whole clip.
#[derive(Debug, Clone, Serialize)]
pub struct AngerFlag {
    /// P(anger) threshold (with P(high arousal) ≥ 0.5).
    pub threshold: f32,
    /// Share of angry clips flagged.
    pub recall: f64,
    /// Share of other clips flagged.
    pub false_positive_rate: f64,
    /// Precision were anger as common as the rest (equal priors).
    pub precision_equal_priors: f64,
}

/// The anger flag with its threshold chosen for each speaker from the other
/// speakers' out-of-fold scores: the highest threshold on a grid whose recall
/// over the other speakers is at least [`FLAG_RECALL_GOAL`], applied to the
/// held-out speaker. Counts are pooled over speakers; nothing of a speaker's
/// own clips chooses its threshold (their scores came from fold models that
/// did train on that speaker, so it is one level less strict than a fully
/// nested retraining).
#[derive(Debug, Clone, Serialize)]
pub struct HeldOutFlag {
    /// Lowest and highest threshold chosen over the speakers.
    pub thresholds: (f32, f32),
    /// Share of angry clips flagged, pooled.
    pub recall: f64,
    /// Precision under equal priors, pooled.
    pub precision_equal_priors: f64,
    /// Lowest per-speaker recall (speakers with angry clips).
    pub worst_speaker_recall: f64,
}

/// The recall the held-out threshold choice asks for on the other speakers.
pub const FLAG_RECALL_GOAL: f64 = 0.85;

/// Pooled (recall, precision under equal priors) of a flag over clips.
fn flag_counts(clips: impl Iterator<Item = (bool, bool)>) -> (usize, usize, usize, usize) {
    let (mut tp, mut fnn, mut fp, mut tn) = (0, 0, 0, 0);
    for (angry, flagged) in clips {
        match (angry, flagged) {
            (true, true) => tp += 1,
            (true, false) => fnn += 1,
            (false, true) => fp += 1,
            (false, false) => tn += 1,
        }
    }
    (tp, fnn, fp, tn)
}

fn recall_precision((tp, fnn, fp, tn): (usize, usize, usize, usize)) -> (f64, f64) {
    let recall = tp as f64 / (tp + fnn).max(1) as f64;
    let fpr = fp as f64 / (fp + tn).max(1) as f64;
    let precision = if recall + fpr > 0.0 {
        recall / (recall + fpr)
    } else {
        0.0
    };
    (recall, precision)
}

/// See [`HeldOutFlag`]; `None` with fewer than two speakers.
fn held_out_flag(
    g: &[u32],
    speakers: usize,
    items: &[Item],
    preds: &[Prediction],
) -> Option<HeldOutFlag> {
    if speakers < 2 {
        return None;
    }
    let grid: Vec<f32> = (6..=19).map(|k| k as f32 * 0.05).collect();
    let flagged = |p: &Prediction, t: f32| p.anger >= t && p.arousal >= 0.5;
    let angry = |i: &Item| i.emotion == Emotion::Anger;
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut total = (0, 0, 0, 0);
    let mut worst = f64::INFINITY;
    for s in 0..speakers as u32 {
        let others = |t: f32| {
            recall_precision(flag_counts(
                items
                    .iter()
                    .zip(preds)
                    .zip(g)
                    .filter(|(_, &k)| k != s)
                    .map(|((i, p), _)| (angry(i), flagged(p, t))),
            ))
            .0
        };
        let t = grid
            .iter()
            .copied()
            .filter(|&t| others(t) >= FLAG_RECALL_GOAL)
            .fold(grid[0], f32::max);
        lo = lo.min(t);
        hi = hi.max(t);
        let c = flag_counts(
            items
                .iter()
                .zip(preds)
                .zip(g)
                .filter(|(_, &k)| k == s)
                .map(|((i, p), _)| (angry(i), flagged(p, t))),
        );
        if c.0 + c.1 > 0 {
            worst = worst.min(recall_precision(c).0);
        }
        total = (total.0 + c.0, total.1 + c.1, total.2 + c.2, total.3 + c.3);
    }
    let (recall, precision_equal_priors) = recall_precision(total);
    Some(HeldOutFlag {
        thresholds: (lo, hi),
        recall,
        precision_equal_priors,
        worst_speaker_recall: worst,
    })
}

/// Everything `emonav eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// "loso" or "model".
    pub mode: String,
    /// The normalisation used.
    pub normalisation: Normalisation,
    /// Analysis rate: 8000 (G.711 conditions) or 16000 (Opus, wideband).
    pub sample_rate: u32,
    /// Clips scored.
    pub clips: usize,
    /// Speakers in the corpus.
    pub speakers: usize,
    /// High vs low arousal.
    pub arousal: TaskReport,
    /// Anger vs the rest.
    pub anger: TaskReport,
    /// The emotion categories, when the model has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<CategoryReport>,
    /// Figures per speaker.
    pub per_speaker: Vec<SpeakerFigures>,
    /// The early gate per class, after 0.5 s and 1 s of speech.
    pub gate: Vec<GateFigures>,
    /// The anger flag at [`ANGER_FLAG`].
    pub anger_flag: AngerFlag,
    /// The anger flag's (threshold, recall, precision under equal priors) at
    /// other thresholds, for choosing the profile's `flag_anger`.
    pub anger_flag_sweep: Vec<(f32, f64, f64)>,
    /// The anger flag at a threshold chosen per held-out speaker (LOSO only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anger_flag_held_out: Option<HeldOutFlag>,
    /// Arousal UAR when routing "agitated" at P(high) ≥ threshold:
    /// (threshold, whole clip, after 1 s of speech), for choosing the
    /// profile's `arousal_min`.
    pub routing_sweep: Vec<(f32, f64, f64)>,
    /// Arousal reliability, every snapshot and whole clip pooled.
    pub arousal_reliability: Vec<Bin>,
    /// Anger reliability, pooled likewise.
    pub anger_reliability: Vec<Bin>,
}

/// Figures from predictions.
pub fn report(
    mode: &str,
    normalisation: Normalisation,
    sample_rate: u32,
    items: &[Item],
    speakers: usize,
    preds: &[Prediction],
) -> EvalReport {
    let (g, names) = groups(items);
    let per_speaker = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let mine: Vec<usize> = (0..items.len()).filter(|&i| g[i] == k as u32).collect();
            let pick = |t: &dyn Fn(&Item) -> Option<bool>, p: &dyn Fn(&Prediction) -> f32| {
                uar(mine
                    .iter()
                    .filter_map(|&i| t(&items[i]).map(|t| (t, p(&preds[i])))))
                .0
            };
            SpeakerFigures {
                speaker: name.clone(),
                arousal: pick(&|i| i.emotion.high_arousal(), &|p| p.arousal),
                arousal_1s: pick(&|i| i.emotion.high_arousal(), &|p| p.arousal_at[1]),
                anger: pick(&|i| Some(i.emotion == Emotion::Anger), &|p| p.anger),
            }
        })
        .collect();
    let gate = [0usize, 1]
        .iter()
        .map(|&k| {
            let share = |high: bool| {
                let v: Vec<f32> = items
                    .iter()
                    .zip(preds)
                    .filter(|(i, _)| i.emotion.high_arousal() == Some(high))
                    .map(|(_, p)| p.arousal_at[k])
                    .collect();
                let right = v
                    .iter()
                    .filter(|&&p| if high { p >= 0.85 } else { p <= 0.15 })
                    .count();
                let wrong = v
                    .iter()
                    .filter(|&&p| if high { p <= 0.15 } else { p >= 0.85 })
                    .count();
                let n = v.len().max(1) as f64;
                (right as f64 / n, wrong as f64 / n)
            };
            let (high, high_wrong) = share(true);
            let (low, low_wrong) = share(false);
            let in_call = |high: bool| {
                let v: Vec<(f32, f32)> = items
                    .iter()
                    .zip(preds)
                    .filter(|(i, _)| i.emotion.high_arousal() == Some(high))
                    .map(|(_, p)| (p.arousal_at[k], p.familiarity_at[k]))
                    .collect();
                let right = v
                    .iter()
                    .filter(|(p, f)| (2.0 * p - 1.0) * f * if high { 1.0 } else { -1.0 } >= 0.7)
                    .count();
                right as f64 / v.len().max(1) as f64
            };
            GateFigures {
                speech_s: SNAPSHOTS_MS[k] as f32 / 1000.0,
                high_confident_right: high,
                high_confident_wrong: high_wrong,
                low_confident_right: low,
                low_confident_wrong: low_wrong,
                high_in_call: in_call(true),
                low_in_call: in_call(false),
            }
        })
        .collect();
    let routing_sweep = [0.3f32, 0.4, 0.5, 0.6, 0.7]
        .iter()
        .map(|&t| {
            let at = |k: Option<usize>| {
                let (mut c, mut n) = ([0usize; 2], [0usize; 2]);
                for (i, p) in items.iter().zip(preds) {
                    if let Some(h) = i.emotion.high_arousal() {
                        let v = k.map_or(p.arousal, |k| p.arousal_at[k]);
                        n[h as usize] += 1;
                        c[h as usize] += usize::from((v >= t) == h);
                    }
                }
                (c[0] as f64 / n[0].max(1) as f64 + c[1] as f64 / n[1].max(1) as f64) / 2.0
            };
            (t, at(None), at(Some(1)))
        })
        .collect();
    let flag_at = |thr: f32| {
        let (mut tp, mut fnn, mut fp, mut tn) = (0usize, 0usize, 0usize, 0usize);
        for (i, p) in items.iter().zip(preds) {
            let angry = i.emotion == Emotion::Anger;
            let flagged = p.anger >= thr && p.arousal >= 0.5;
            match (angry, flagged) {
                (true, true) => tp += 1,
                (true, false) => fnn += 1,
                (false, true) => fp += 1,
                (false, false) => tn += 1,
            }
        }
        let recall = tp as f64 / (tp + fnn).max(1) as f64;
        let fpr = fp as f64 / (fp + tn).max(1) as f64;
        let precision = if recall + fpr > 0.0 {
            recall / (recall + fpr)
        } else {
            0.0
        };
        (thr, recall, precision)
    };
    let anger_flag_sweep = [0.5f32, 0.6, 0.7, 0.8, 0.9].map(flag_at).to_vec();
    let anger_flag = {
        let (mut tp, mut fnn, mut fp, mut tn) = (0usize, 0usize, 0usize, 0usize);
        for (i, p) in items.iter().zip(preds) {
            let angry = i.emotion == Emotion::Anger;
            // The policy's flag: anger at the threshold while arousal >= 0.5.
            let flagged = p.anger >= ANGER_FLAG && p.arousal >= 0.5;
            match (angry, flagged) {
                (true, true) => tp += 1,
                (true, false) => fnn += 1,
                (false, true) => fp += 1,
                (false, false) => tn += 1,
            }
        }
        let recall = tp as f64 / (tp + fnn).max(1) as f64;
        let fpr = fp as f64 / (fp + tn).max(1) as f64;
        AngerFlag {
            threshold: ANGER_FLAG,
            recall,
            false_positive_rate: fpr,
            precision_equal_priors: if recall + fpr > 0.0 {
                recall / (recall + fpr)
            } else {
                0.0
            },
        }
    };
    let arousal_truth: Vec<Option<bool>> = items.iter().map(|i| i.emotion.high_arousal()).collect();
    let anger_truth: Vec<Option<bool>> = items
        .iter()
        .map(|i| Some(i.emotion == crate::corpus::Emotion::Anger))
        .collect();
    let pooled = |truth: &[Option<bool>], f: &dyn Fn(&Prediction) -> Vec<f32>| {
        let mut v = Vec::new();
        for (t, p) in truth.iter().zip(preds) {
            if let Some(t) = t {
                v.extend(f(p).into_iter().map(|x| (*t, x)));
            }
        }
        reliability(&v)
    };
    EvalReport {
        mode: mode.into(),
        normalisation,
        sample_rate,
        clips: items.len(),
        speakers,
        arousal: task_report(
            ["low", "high"],
            &arousal_truth,
            |i, k| preds[i].arousal_at[k],
            |i| preds[i].arousal,
        ),
        anger: task_report(
            ["rest", "anger"],
            &anger_truth,
            |i, k| preds[i].anger_at[k],
            |i| preds[i].anger,
        ),
        categories: category_report(items, preds),
        per_speaker,
        gate,
        anger_flag,
        anger_flag_sweep,
        anger_flag_held_out: (mode == "loso")
            .then(|| held_out_flag(&g, names.len(), items, preds))
            .flatten(),
        routing_sweep,
        arousal_reliability: pooled(&arousal_truth, &|p| {
            let mut v = p.arousal_at.to_vec();
            v.push(p.arousal);
            v
        }),
        anger_reliability: pooled(&anger_truth, &|p| {
            let mut v = p.anger_at.to_vec();
            v.push(p.anger);
            v
        }),
    }
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} evaluation at {} Hz, {} clips, {} speakers, {:?} normalisation",
            self.mode, self.sample_rate, self.clips, self.speakers, self.normalisation
        )?;
        writeln!(f, "\ntask      UAR    | UAR after seconds of speech heard")?;
        write!(f, "                 |")?;
        for k in self.arousal.uar_by_speech_s.keys() {
            write!(f, " {k:>6}")?;
        }
        writeln!(f)?;
        for (name, t) in [("arousal", &self.arousal), ("anger", &self.anger)] {
            write!(f, "{name:<9} {:.3}  |", t.uar)?;
            for v in t.uar_by_speech_s.values() {
                write!(f, " {v:>6.3}")?;
            }
            writeln!(f)?;
        }
        if let Some(c) = &self.categories {
            write!(
                f,
                "{:<9} {:.3}  |",
                format!("{}-class", c.labels.len()),
                c.uar
            )?;
            for v in c.uar_by_speech_s.values() {
                write!(f, " {v:>6.3}")?;
            }
            writeln!(f)?;
        }
        for (name, t) in [("arousal", &self.arousal), ("anger", &self.anger)] {
            let [n, p] = t.classes;
            let c = t.confusion;
            writeln!(
                f,
                "\n{name} confusion (rows truth, columns predicted), {} clips",
                t.clips
            )?;
            writeln!(f, "{:>8} {n:>8} {p:>8}", "")?;
            writeln!(f, "{n:>8} {:>8} {:>8}", c[0][0], c[0][1])?;
            writeln!(f, "{p:>8} {:>8} {:>8}", c[1][0], c[1][1])?;
        }
        if let Some(c) = &self.categories {
            writeln!(
                f,
                "\ncategories confusion (rows truth, columns predicted), {} clips",
                c.clips
            )?;
            write!(f, "{:>10}", "")?;
            for l in &c.labels {
                write!(f, " {:>9}", l)?;
            }
            writeln!(f, " {:>9}", "other")?;
            for (l, row) in c.labels.iter().zip(&c.confusion) {
                write!(f, "{l:>10}")?;
                for v in row {
                    write!(f, " {v:>9}")?;
                }
                writeln!(f)?;
            }
        }
        let spread = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n == 0 {
                return (0.0, 0.0, 0.0);
            }
            let median = if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            };
            (v[0], median, v[n - 1])
        };
        writeln!(f, "\nper-speaker UAR   min    median max")?;
        type Row = (&'static str, fn(&SpeakerFigures) -> f64);
        let rows: [Row; 3] = [
            ("arousal", |s| s.arousal),
            ("arousal 1 s", |s| s.arousal_1s),
            ("anger", |s| s.anger),
        ];
        for (name, get) in rows {
            let (lo, med, hi) = spread(&mut self.per_speaker.iter().map(get).collect());
            writeln!(f, "  {name:<14} {lo:.3}  {med:.3}  {hi:.3}")?;
        }
        writeln!(
            f,
            "\nearly gate (P >= 0.85 or <= 0.15): share confidently right / wrong"
        )?;
        for gt in &self.gate {
            writeln!(
                f,
                "  after {:.1} s: high {:.2} / {:.2}   low {:.2} / {:.2}   (in a call, with familiarity: high {:.2}, low {:.2})",
                gt.speech_s,
                gt.high_confident_right,
                gt.high_confident_wrong,
                gt.low_confident_right,
                gt.low_confident_wrong,
                gt.high_in_call,
                gt.low_in_call
            )?;
        }
        let a = &self.anger_flag;
        writeln!(
            f,
            "\nanger flag at {:.2}: recall {:.3}, false positives {:.3}, precision {:.3} (equal priors)",
            a.threshold, a.recall, a.false_positive_rate, a.precision_equal_priors
        )?;
        write!(f, "  at other thresholds (recall/precision):")?;
        for (t, r, p) in &self.anger_flag_sweep {
            write!(f, "  {t:.1}: {r:.2}/{p:.2}")?;
        }
        writeln!(f)?;
        if let Some(h) = &self.anger_flag_held_out {
            writeln!(
                f,
                "  threshold chosen per held-out speaker (highest with recall >= {FLAG_RECALL_GOAL} on the others; {:.2}-{:.2}): recall {:.3}, precision {:.3} (equal priors), worst speaker's recall {:.3}",
                h.thresholds.0, h.thresholds.1, h.recall, h.precision_equal_priors, h.worst_speaker_recall
            )?;
        }
        writeln!(
            f,
            "\narousal UAR routing agitated at P(high) >= t (whole clip, after 1 s):"
        )?;
        for (t, w, e) in &self.routing_sweep {
            writeln!(f, "  t = {t:.1}: {w:.3}, {e:.3}")?;
        }
        for (name, bins) in [
            ("arousal", &self.arousal_reliability),
            ("anger", &self.anger_reliability),
        ] {
            writeln!(f, "\n{name} reliability: predicted -> observed (count)")?;
            for b in bins {
                writeln!(
                    f,
                    "  {:.1}-{:.1}: {:.2} -> {:.2} ({})",
                    b.from,
                    b.from + 0.1,
                    b.predicted,
                    b.observed,
                    b.count
                )?;
            }
        }
        Ok(())
    }
}
