//! The anger flag's threshold for a speaker is chosen without that speaker's clips.

use std::path::PathBuf;

use super::*;

#[test]
fn a_speakers_own_scores_do_not_choose_its_flag_threshold() {
    let mut items = Vec::new();
    let mut preds = Vec::new();
    // Speakers 01 and 02 score their angry clips at 0.93, speaker 03 at 0.55;
    // every other clip at 0.2. All clips read as high arousal.
    for (spk, angry_score) in [("01", 0.93f32), ("02", 0.93), ("03", 0.55)] {
        for (e, a) in [
            (Emotion::Anger, angry_score),
            (Emotion::Anger, angry_score),
            (Emotion::Happiness, 0.2),
            (Emotion::Neutral, 0.2),
        ] {
            items.push(Item {
                path: PathBuf::from("x.wav"),
                emotion: e,
                speaker: Some(spk.into()),
            });
            preds.push(Prediction {
                anger: a,
                arousal: 0.9,
                ..Prediction::default()
            });
        }
    }
    let (g, names) = groups(&items);
    let h = held_out_flag(&g, names.len(), &items, &preds).expect("three speakers");
    // 03's threshold comes from 01 and 02 (high: 0.9), so its 0.55 angry
    // clips are missed; 01's and 02's thresholds come from a pool holding
    // 03's low scores, so they are low enough to flag their own.
    assert!(h.thresholds.1 >= 0.9, "{:?}", h.thresholds);
    assert!(h.thresholds.0 <= 0.55, "{:?}", h.thresholds);
    assert!((h.recall - 4.0 / 6.0).abs() < 1e-9, "{}", h.recall);
    assert_eq!(h.worst_speaker_recall, 0.0);
    assert!((h.precision_equal_priors - 1.0).abs() < 1e-9);
    // Not measured without speakers to hold out.
    assert!(held_out_flag(&g, 1, &items, &preds).is_none());
}
