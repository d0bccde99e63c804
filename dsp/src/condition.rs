//! The analyser's input conditioning: every sample a call, `train`, `eval` or
//! `analyze` pushes into an [`crate::Analyzer`] first passes through this
//! telephone-band filter (300–3400 Hz) at the analysis rate, so the features
//! never see what a particular line happens to carry outside that band (an
//! IP phone's G.711 is flat from 0 to 4 kHz, a PSTN leg is already
//! band-limited, Opus is wideband) and the model is trained on exactly the
//! numbers a call computes.
//!
//! Level is not normalised here: the model's features are relative (level
//! deviations, ratios, spectral shapes), and a test in `model::vector` checks
//! that a 9 dB gain change moves none of them by more than 5 %. Absolute
//! level only matters to the speech detector's −55 dBFS floor.

/// High-pass corner: the telephone band's lower edge (Hz).
pub const LOW_HZ: f32 = 300.0;
/// Low-pass corner: the telephone band's upper edge (Hz).
pub const HIGH_HZ: f32 = 3400.0;

/// One direct-form-I biquad section.
#[derive(Debug, Clone, Copy)]
struct Biquad {
    b: [f32; 3],
    a: [f32; 2],
    x: [f32; 2],
    y: [f32; 2],
}

impl Biquad {
    /// A second-order Butterworth section (RBJ cookbook), high- or low-pass.
    fn butterworth(rate: u32, cutoff: f32, high: bool) -> Self {
        let w0 = 2.0 * std::f32::consts::PI * cutoff / rate as f32;
        let (sin, cos) = crate::table_math::sin_cos(w0);
        let alpha = sin / (2.0 * std::f32::consts::FRAC_1_SQRT_2);
        let a0 = 1.0 + alpha;
        let b = if high {
            [(1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0]
        } else {
            [(1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0]
        };
        Self {
            b: b.map(|v| v / a0),
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
            x: [0.0; 2],
            y: [0.0; 2],
        }
    }

    #[inline]
    fn run(&mut self, v: f32) -> f32 {
        let y = self.b[0] * v + self.b[1] * self.x[0] + self.b[2] * self.x[1]
            - self.a[0] * self.y[0]
            - self.a[1] * self.y[1];
        self.x = [v, self.x[0]];
        self.y = [y, self.y[0]];
        y
    }

    /// [`Biquad::run`] over a block in place, the state in registers for the
    /// whole block: the same operations in the same order for every sample,
    /// so the same bits, at about half the instructions of per-sample calls.
    fn run_block(&mut self, buf: &mut [f32]) {
        let ([b0, b1, b2], [a0, a1]) = (self.b, self.a);
        let ([mut x0, mut x1], [mut y0, mut y1]) = (self.x, self.y);
        for v in buf.iter_mut() {
            let x = *v;
            let y = b0 * x + b1 * x0 + b2 * x1 - a0 * y0 - a1 * y1;
            (x1, x0, y1, y0) = (x0, x, y0, y);
            *v = y;
        }
        (self.x, self.y) = ([x0, x1], [y0, y1]);
    }
}

/// The telephone-band filter: fourth-order high-pass at [`LOW_HZ`] and
/// low-pass at [`HIGH_HZ`] (two Butterworth sections each). Steep edges, so
/// that the rumble and hum a full-band line carries are gone and a line that
/// was already band-limited (a PSTN leg's own 300–3400 Hz filter) looks
/// almost the same as a full-band one afterwards. Planned once per call;
/// filtering never allocates.
#[derive(Debug, Clone)]
pub struct TelephoneBand {
    sections: [Biquad; 4],
}

impl TelephoneBand {
    /// The filter for audio at `rate` Hz.
    pub fn new(rate: u32) -> Self {
        Self {
            sections: [
                Biquad::butterworth(rate, LOW_HZ, true),
                Biquad::butterworth(rate, LOW_HZ, true),
                Biquad::butterworth(rate, HIGH_HZ, false),
                Biquad::butterworth(rate, HIGH_HZ, false),
            ],
        }
    }

    /// Filter one sample (±1.0 full scale).
    #[inline]
    pub fn process(&mut self, v: f32) -> f32 {
        let mut y = v;
        for s in &mut self.sections {
            y = s.run(y);
        }
        y
    }

    /// Filter a block in place: bit-identical to [`TelephoneBand::process`]
    /// on each sample in turn (each section runs over the whole block before
    /// the next, which changes no operation), and what `Analyzer::push` uses.
    pub fn process_block(&mut self, buf: &mut [f32]) {
        for s in &mut self.sections {
            s.run_block(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gain(rate: u32, f: f32) -> f32 {
        let mut band = TelephoneBand::new(rate);
        let n = rate as usize;
        let out: Vec<f32> = (0..n)
            .map(|i| band.process((2.0 * std::f32::consts::PI * f * i as f32 / rate as f32).sin()))
            .collect();
        let tail = &out[n / 2..];
        (2.0 * tail.iter().map(|v| v * v).sum::<f32>() / tail.len() as f32).sqrt()
    }

    #[test]
    fn passes_the_voice_band_and_cuts_outside_it() {
        for rate in [8000, 16000] {
            assert!(gain(rate, 1000.0) > 0.9, "1 kHz at {rate}");
            assert!(gain(rate, 100.0) < 0.02, "100 Hz at {rate}");
            assert!(gain(rate, 50.0) < 0.002, "50 Hz hum at {rate}");
            assert!(gain(rate, 3900.0) < 0.5, "3.9 kHz at {rate}");
        }
        assert!(gain(16000, 6000.0) < 0.05);
    }

    #[test]
    fn blocks_give_the_same_bits_as_samples() {
        let mut rng = fastrand::Rng::with_seed(7);
        let x: Vec<f32> = (0..2000).map(|_| rng.f32() * 2.0 - 1.0).collect();
        for rate in [8000, 16000] {
            let mut one = TelephoneBand::new(rate);
            let want: Vec<u32> = x.iter().map(|&v| one.process(v).to_bits()).collect();
            let mut blocks = TelephoneBand::new(rate);
            let mut got = x.clone();
            // Uneven block lengths, as packets and hops split the stream.
            let mut at = 0;
            for len in [1, 7, 80, 160, 3, 333].iter().cycle() {
                let end = (at + len).min(got.len());
                blocks.process_block(&mut got[at..end]);
                at = end;
                if at == got.len() {
                    break;
                }
            }
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "rate {rate}");
        }
    }
}
