//! Multi-condition features: every clip rendered through line conditions
//! ([`crate::conditions`]), features extracted on two threads and cached on
//! disk (keyed by clip, condition and a feature version), training rows over
//! several renderings per clip, and leave-one-speaker-out scoring per
//! condition.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use emonav_dsp::adapt::{LineMap, LineStats};
use emonav_dsp::model::{self, Family, Sample, FEATURES, FEATURE_NAMES};
use emonav_dsp::{telephone, Model};

use crate::analyze::{read_wav, AnalyzeError};
use crate::conditions::{self, render, Condition, Noise, Render, LINE_RATE};
use crate::corpus::{extract_pcm, CorpusError, Emotion, Features, Item, SNAPSHOTS_MS};
use crate::learn::{category_labels, predict, Prediction};

/// Bump when the analyser or a rendering changes in a way the feature names
/// do not show, so that cached features are not reused.
pub const CACHE_REVISION: u32 = 4;

/// One extraction: (condition, item) and its features.
type Rendered = ((usize, usize), Result<Features, CorpusError>);

/// Features per condition and item: `feats[c][i]`, `None` where not needed.
pub type Table = Vec<Vec<Option<Features>>>;

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn cache_dir(root: &Path, c: &Condition) -> PathBuf {
    let names = FEATURE_NAMES.join(",");
    root.join(format!(
        "r{CACHE_REVISION}-{FEATURES}-{:016x}",
        fnv(names.as_bytes())
    ))
    .join(c.name)
}

fn cache_file(root: &Path, c: &Condition, item: &Item) -> PathBuf {
    let key = fnv(item.path.to_string_lossy().as_bytes());
    let stem = item
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    cache_dir(root, c).join(format!("{stem}-{key:016x}.f32"))
}

fn to_bytes(f: &Features) -> Vec<u8> {
    let mut out = Vec::with_capacity((SNAPSHOTS_MS.len() + 1) * FEATURES * 4 + 4);
    for v in f.at.iter().flatten().chain(&f.whole) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&f.speech_ms.to_le_bytes());
    out
}

fn from_bytes(b: &[u8]) -> Option<Features> {
    let n = (SNAPSHOTS_MS.len() + 1) * FEATURES;
    if b.len() != n * 4 + 4 {
        return None;
    }
    let v: Vec<f32> = b[..n * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut f = Features {
        at: [[0.0; FEATURES]; SNAPSHOTS_MS.len()],
        whole: [0.0; FEATURES],
        speech_ms: u32::from_le_bytes([b[n * 4], b[n * 4 + 1], b[n * 4 + 2], b[n * 4 + 3]]),
    };
    for (k, a) in f.at.iter_mut().enumerate() {
        a.copy_from_slice(&v[k * FEATURES..(k + 1) * FEATURES]);
    }
    f.whole.copy_from_slice(&v[SNAPSHOTS_MS.len() * FEATURES..]);
    Some(f)
}

/// The speakers whose clips make an item's babble: the next two speakers
/// after the item's own, in speaker order, so never the item's speaker.
pub fn babble_speakers(g: &[u32], i: usize) -> [u32; 2] {
    let n = g.iter().copied().max().unwrap_or(0) + 1;
    [(g[i] + 1) % n, (g[i] + 2) % n]
}

/// Render and extract the (condition, item) pairs `need` asks for, on two
/// threads, reading and writing `cache` when given.
pub fn extract(
    items: &[Item],
    g: &[u32],
    conds: &[Condition],
    need: &dyn Fn(usize, usize) -> bool,
    cache: Option<&Path>,
) -> Result<Table, CorpusError> {
    let mut table: Table = vec![vec![None; items.len()]; conds.len()];
    let mut todo: Vec<(usize, usize)> = Vec::new();
    for (c, cond) in conds.iter().enumerate() {
        for (i, item) in items.iter().enumerate() {
            if !need(c, i) {
                continue;
            }
            let hit = cache
                .and_then(|root| std::fs::read(cache_file(root, cond, item)).ok())
                .and_then(|b| from_bytes(&b));
            match hit {
                Some(f) => table[c][i] = Some(f),
                None => todo.push((c, i)),
            }
        }
    }
    if todo.is_empty() {
        return Ok(table);
    }
    // Babble sources: every clip at the line rate, read once.
    let babble_needed = todo
        .iter()
        .any(|&(c, _)| matches!(conds[c].noise, Some((Noise::Babble, _))));
    let line: Vec<Vec<f32>> = if babble_needed {
        items
            .iter()
            .map(|it| {
                let (a, r) = read_wav(&it.path)?;
                telephone::resample(&a, r, LINE_RATE)
                    .map_err(|e| CorpusError::Audio(AnalyzeError::from(e)))
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let show = std::io::stderr().is_terminal();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let workers = 2usize;
    let results: Vec<Vec<Rendered>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (todo, line, done) = (&todo, &line, &done);
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut last_item = usize::MAX;
                    let mut audio = (Vec::new(), 0u32);
                    for &(c, i) in todo.iter().skip(w).step_by(workers) {
                        if i != last_item {
                            match read_wav(&items[i].path) {
                                Ok(a) => audio = a,
                                Err(e) => {
                                    out.push(((c, i), Err(CorpusError::from(e))));
                                    continue;
                                }
                            }
                            last_item = i;
                        }
                        let f = render_one(items, g, conds, line, c, i, &audio);
                        out.push(((c, i), f));
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if show && (n % 20 == 0 || n == todo.len()) {
                            eprint!("\rrendering and extracting {n}/{}", todo.len());
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("extraction thread"))
            .collect()
    });
    if show {
        eprintln!();
    }
    for ((c, i), f) in results.into_iter().flatten() {
        let f = f?;
        if let Some(root) = cache {
            let path = cache_file(root, &conds[c], &items[i]);
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(path, to_bytes(&f));
        }
        table[c][i] = Some(f);
    }
    Ok(table)
}

fn render_one(
    items: &[Item],
    g: &[u32],
    conds: &[Condition],
    line: &[Vec<f32>],
    c: usize,
    i: usize,
    audio: &(Vec<f32>, u32),
) -> Result<Features, CorpusError> {
    let cond = &conds[c];
    let mut babble: Vec<&[f32]> = Vec::new();
    if matches!(cond.noise, Some((Noise::Babble, _))) {
        for (k, spk) in babble_speakers(g, i).into_iter().enumerate() {
            let theirs: Vec<usize> = (0..items.len()).filter(|&j| g[j] == spk).collect();
            if !theirs.is_empty() {
                let j = theirs[(i * 7 + k * 13) % theirs.len()];
                babble.push(&line[j]);
            }
        }
    }
    let seed = fnv(cond.name.as_bytes()) ^ (i as u64).wrapping_mul(0x9e3779b97f4a7c15);
    let pcm = render(
        &audio.0,
        audio.1,
        cond,
        &Render {
            seed,
            babble: &babble,
        },
    )
    .map_err(|e| CorpusError::Label {
        at: items[i].path.display().to_string(),
        why: e.to_string(),
    })?;
    Ok(extract_pcm(&pcm, LINE_RATE))
}

/// The training conditions: the reference first, then every other one.
pub fn training_conditions() -> Vec<Condition> {
    conditions::ALL
        .iter()
        .chain(&conditions::TRAIN_EXTRA)
        .copied()
        .collect()
}

/// How many of [`training_conditions`] (from the first) the default recipe
/// draws its renderings from: `ALL` and `speed-1`. Conditions added to
/// `TRAIN_EXTRA` after those are reachable only by `--renderings all`, so
/// adding one does not change the default model.
pub const DEFAULT_POOL: usize = conditions::ALL.len() + 1;

/// How many renderings of each clip training uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Renderings {
    /// The reference only.
    CleanOnly,
    /// The reference and this many others, picked deterministically per clip
    /// from the first [`DEFAULT_POOL`] training conditions.
    Some(usize),
    /// The clip under every training condition.
    All,
}

/// Which training renderings (indices into [`training_conditions`]) item `i`
/// contributes: the reference first, then the others `r` asks for.
pub fn renderings_of(i: usize, r: Renderings) -> Vec<usize> {
    let (extra, n) = match r {
        Renderings::CleanOnly => return vec![0],
        Renderings::All => return (0..training_conditions().len()).collect(),
        Renderings::Some(extra) => (extra, DEFAULT_POOL),
    };
    let mut out = vec![0];
    let mut k = (i * 7 + 3) % (n - 1);
    while out.len() < 1 + extra.min(n - 1) {
        let c = 1 + k;
        if !out.contains(&c) {
            out.push(c);
        }
        k = (k + 5) % (n - 1);
    }
    out
}

/// Read the features named in `names` as unknown (NaN: the population mean)
/// in every row of `table`, so that a model trained and scored on it cannot
/// use them: the feature layout without them, compared from one cache.
pub fn mask(table: &mut Table, names: &[String]) -> Result<(), String> {
    let mut cols = Vec::new();
    for n in names {
        match FEATURE_NAMES.iter().position(|f| f == n) {
            Some(k) => cols.push(k),
            None => return Err(format!("unknown feature {n:?}")),
        }
    }
    for f in table.iter_mut().flatten().flatten() {
        for x in f.at.iter_mut().chain(std::iter::once(&mut f.whole)) {
            for &k in &cols {
                x[k] = f32::NAN;
            }
        }
    }
    Ok(())
}

/// Training rows: each chosen rendering of each item in `which` at 0.5 s and
/// 1 s of speech and whole. Babble renderings whose talkers include
/// `exclude` (the held-out speaker of a LOSO fold) are left out.
pub fn samples(
    items: &[Item],
    table: &Table,
    g: &[u32],
    which: &[usize],
    picks: &dyn Fn(usize) -> Vec<usize>,
    exclude: Option<u32>,
) -> Vec<Sample> {
    let conds = training_conditions();
    let mut out = Vec::new();
    for &i in which {
        let e = items[i].emotion;
        for c in picks(i) {
            if let Some(h) = exclude {
                if matches!(conds[c].noise, Some((Noise::Babble, _)))
                    && babble_speakers(g, i).contains(&h)
                {
                    continue;
                }
            }
            let Some(f) = &table[c][i] else { continue };
            for x in [f.at[0], f.at[1], f.whole] {
                out.push(Sample {
                    x,
                    arousal: e.high_arousal(),
                    anger: Some(e == Emotion::Anger),
                    category: Emotion::ALL.iter().position(|&k| k == e),
                    group: g[i],
                });
            }
        }
    }
    out
}

/// How each fold's model is fitted.
#[derive(Debug, Clone, Copy)]
pub struct Recipe<'a> {
    /// L2 strengths: one is used as is, several are chosen from per task by
    /// inner leave-one-speaker-out.
    pub lambdas: &'a [f64],
    /// The classifier family of every task.
    pub family: Family,
}

/// One model per held-out speaker: trained on the other speakers' chosen
/// renderings (`(speaker, model)` in speaker order), two folds at a time.
pub fn fold_models(
    items: &[Item],
    table: &Table,
    g: &[u32],
    picks: &(dyn Fn(usize) -> Vec<usize> + Sync),
    recipe: Recipe,
) -> Result<Vec<(u32, Model)>, model::TrainError> {
    let mut speakers: Vec<u32> = g.to_vec();
    speakers.sort_unstable();
    speakers.dedup();
    let fold = |held: u32| {
        let train_idx: Vec<usize> = (0..items.len()).filter(|&i| g[i] != held).collect();
        let m = model::train_family(
            &samples(items, table, g, &train_idx, picks, Some(held)),
            LINE_RATE,
            "loso fold",
            &category_labels(),
            recipe.lambdas,
            recipe.family,
        )?;
        Ok((held, m))
    };
    let workers = 2usize;
    let mut out: Vec<Result<(u32, Model), model::TrainError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (speakers, fold) = (&speakers, &fold);
                s.spawn(move || {
                    speakers
                        .iter()
                        .skip(w)
                        .step_by(workers)
                        .map(|&h| fold(h))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("training thread"))
            .collect()
    });
    out.sort_by_key(|r| r.as_ref().map_or(0, |(s, _)| *s));
    out.into_iter().collect()
}

/// Leave-one-speaker-out: for each speaker, train on the others' chosen
/// renderings and score the held-out speaker under every evaluated
/// condition (`eval[k]` indexes [`training_conditions`]). Returns
/// predictions per evaluated condition and item.
pub fn loso(
    items: &[Item],
    table: &Table,
    g: &[u32],
    picks: &(dyn Fn(usize) -> Vec<usize> + Sync),
    eval: &[usize],
    recipe: Recipe,
) -> Result<Vec<Vec<Prediction>>, model::TrainError> {
    let models = fold_models(items, table, g, picks, recipe)?;
    let mut preds = vec![vec![Prediction::default(); items.len()]; eval.len()];
    for (held, m) in &models {
        for (k, &c) in eval.iter().enumerate() {
            for i in (0..items.len()).filter(|&i| g[i] == *held) {
                if let Some(f) = &table[c][i] {
                    preds[k][i] = predict(m, f);
                }
            }
        }
    }
    Ok(preds)
}

/// How `eval --adapt` simulates a deployment's adaptation to the line.
#[derive(Debug, Clone, Copy)]
pub struct AdaptSim {
    /// Calls seen before the statistics are used (`[adapt] min_calls`).
    pub min_calls: usize,
    /// Window of recent calls (`[adapt] window`).
    pub window: usize,
    /// Blend of line and model statistics (`[adapt] strength`).
    pub strength: f32,
    /// Seed of the stream's order.
    pub seed: u64,
}

/// Leave-one-speaker-out with adaptation to the line, simulated honestly:
/// under each evaluated condition the clips arrive as one shuffled stream of
/// calls on one line; each is scored by its own fold's model (never trained
/// on its speaker) through the map of the line statistics of the clips
/// *before* it in the stream (no labels, nothing from the future), then
/// joins the statistics as a finished call would (whole clip, at least
/// `emonav::adapt::MIN_SPEECH_MS` of speech). Returns predictions per
/// evaluated condition and item.
pub fn loso_adapted(
    items: &[Item],
    table: &Table,
    g: &[u32],
    picks: &(dyn Fn(usize) -> Vec<usize> + Sync),
    eval: &[usize],
    recipe: Recipe,
    sim: AdaptSim,
) -> Result<Vec<Vec<Prediction>>, model::TrainError> {
    let models = fold_models(items, table, g, picks, recipe)?;
    let model_of = |i: usize| {
        &models
            .iter()
            .find(|(s, _)| *s == g[i])
            .expect("a fold per speaker")
            .1
    };
    let mut order: Vec<usize> = (0..items.len()).collect();
    fastrand::Rng::with_seed(sim.seed).shuffle(&mut order);
    let mut preds = vec![vec![Prediction::default(); items.len()]; eval.len()];
    for (k, &c) in eval.iter().enumerate() {
        let mut line = LineStats::new(sim.window);
        for &i in &order {
            let Some(f) = &table[c][i] else { continue };
            let m = model_of(i);
            let mut seen = f.clone();
            if let Some(map) = LineMap::new(&line, &m.mean, &m.scale, sim.min_calls, sim.strength) {
                for x in seen.at.iter_mut() {
                    map.apply(x);
                }
                map.apply(&mut seen.whole);
            }
            preds[k][i] = predict(m, &seen);
            if f.speech_ms >= ADAPT_MIN_SPEECH_MS {
                line.observe(&f.whole);
            }
        }
    }
    Ok(preds)
}

/// Speech a call must hold to join the line statistics (as
/// `emonav::adapt::MIN_SPEECH_MS`; EmoDB clips hold 0.6–1.9 s).
pub const ADAPT_MIN_SPEECH_MS: u32 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_round_trip_through_the_cache_format() {
        let mut f = Features {
            at: [[0.5; FEATURES]; SNAPSHOTS_MS.len()],
            whole: [1.5; FEATURES],
            speech_ms: 1230,
        };
        f.at[1][3] = f32::NAN;
        let back = from_bytes(&to_bytes(&f)).unwrap();
        assert_eq!(back.speech_ms, 1230);
        assert_eq!(back.whole, f.whole);
        assert!(back.at[1][3].is_nan() && back.at[0][0] == 0.5);
    }

    #[test]
    fn renderings_are_the_reference_and_distinct_others() {
        assert_eq!(renderings_of(5, Renderings::CleanOnly), vec![0]);
        for i in 0..50 {
            let r = renderings_of(i, Renderings::Some(2));
            assert_eq!(r.len(), 3);
            assert_eq!(r[0], 0);
            assert!(r[1] != r[2] && r[1] != 0 && r[2] != 0);
            assert!(r.iter().all(|&c| c < DEFAULT_POOL));
        }
        let all = renderings_of(3, Renderings::All);
        assert_eq!(all.len(), training_conditions().len());
        assert_eq!(all[0], 0);
    }

    #[test]
    fn babble_never_uses_the_clips_own_speaker() {
        let g = [0, 1, 2, 3, 0, 3];
        for i in 0..g.len() {
            assert!(!babble_speakers(&g, i).contains(&g[i]));
        }
    }
}
