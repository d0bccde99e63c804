//! Runs the analyser over a μ-law file many times, for profilers
//! (`valgrind --tool=callgrind target/release/examples/profile FILE.ul`).

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: profile FILE.ul [REPEATS]");
    let repeats: usize = std::env::args()
        .nth(2)
        .map_or(5, |r| r.parse().expect("REPEATS is a number"));
    let ulaw = std::fs::read(path).expect("readable file");
    let mut pcm = vec![0i16; ulaw.len()];
    emonav_dsp::g711::decode_ulaw(&ulaw, &mut pcm);
    let mut a = emonav_dsp::Analyzer::new(8000);
    for _ in 0..repeats {
        for p in pcm.chunks(160) {
            a.push(p);
        }
    }
    println!("{} ms of speech", a.functionals().speech_ms());
}
