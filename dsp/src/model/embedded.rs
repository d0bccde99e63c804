//! The default models compiled into the endpoint (`models/` at the
//! repository root, written by `emonav train`; docs/model.md).

use super::Model;

/// The default model for G.711 calls (8 kHz analysis), as JSON.
pub const DEFAULT_MODEL: &str = include_str!("../../../models/default.json");
/// The default model for wideband (Opus) calls (16 kHz analysis), as JSON.
pub const DEFAULT_MODEL_16K: &str = include_str!("../../../models/default-16k.json");

/// The embedded default model for an analysis rate (16000, else 8000).
pub fn embedded(rate: u32) -> Model {
    let text = if rate == 16000 {
        DEFAULT_MODEL_16K
    } else {
        DEFAULT_MODEL
    };
    Model::from_json(text).expect("the embedded models match this build (tested)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_embedded_models_load_at_their_rates() {
        assert_eq!(embedded(8000).sample_rate, 8000);
        assert_eq!(embedded(16000).sample_rate, 16000);
    }
}
