//! Scores recordings with the streaming analyser, one line per file:
//! `cargo run -p emonav-dsp --release --example score -- FILE.ul [FILE.ul …]`
//!
//! Input is raw G.711 μ-law at 8 kHz (`sox IN.wav -r 8000 -t raw -e mu-law OUT.ul`),
//! which is what a call delivers. Used to calibrate the heuristic estimator
//! (docs/features.md).

fn main() {
    println!("file\tspeech_ms\tenergy_db\tf0_st\tf0_std\thf_db\tonsets_s\tarousal@1s\tarousal\tconfidence");
    for path in std::env::args().skip(1) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let mut pcm = vec![0i16; bytes.len()];
        emonav_dsp::g711::decode_ulaw(&bytes, &mut pcm);
        let r = emonav_dsp::analyze_pcm(8000, &pcm);
        let f = &r.functionals;
        let at1 = r
            .timeline
            .iter()
            .find(|(ms, _)| *ms >= 1000)
            .map_or(f32::NAN, |(_, e)| e.arousal);
        let last = r.timeline.last().map(|(_, e)| *e).unwrap_or_default();
        let o = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "{path}\t{}\t{}\t{}\t{}\t{}\t{}\t{at1:.2}\t{:.2}\t{:.2}",
            f.speech_ms(),
            o(f.energy_mean_db()),
            o(f.f0_mean_st()),
            o(f.f0_std_st()),
            o(f.hf_ratio_mean_db()),
            o(f.onsets_per_s()),
            last.arousal,
            last.confidence
        );
    }
}
