//! Category confusion counts every clip, whatever the model predicts.

use std::path::PathBuf;

use super::*;

#[test]
fn predictions_of_absent_categories_are_counted() {
    let item = |e: Emotion| Item {
        path: PathBuf::from("x.wav"),
        emotion: e,
        speaker: Some("01".into()),
    };
    let items = vec![
        item(Emotion::Anger),
        item(Emotion::Anger),
        item(Emotion::Neutral),
    ];
    let idx = |e: Emotion| Emotion::ALL.iter().position(|&k| k == e);
    let mut preds = vec![Prediction::default(); 3];
    preds[0].category = idx(Emotion::Anger);
    // Surprise is not in this corpus: still counted, in the "other" column.
    preds[1].category = idx(Emotion::Surprise);
    preds[2].category = idx(Emotion::Neutral);
    let c = category_report(&items, &preds).unwrap();
    assert_eq!(c.labels, ["anger", "neutral"]);
    assert_eq!(c.confusion, vec![vec![1, 0, 1], vec![0, 1, 0]]);
    let counted: usize = c.confusion.iter().flatten().sum();
    assert_eq!(counted, items.len(), "every prediction counted");
    assert!((c.uar - 0.75).abs() < 1e-9, "{}", c.uar);
}
