//! Formants F1–F3 by linear prediction (autocorrelation method,
//! Levinson–Durbin) and peak picking on the LPC envelope, evaluated through
//! a zero-padded FFT of the predictor polynomial; the FFT is planned once and
//! every buffer lives in the tracker. Peak picking rather than polynomial
//! roots: it needs no complex root finder and is what eGeMAPS' F1–F3 means
//! are compared on (the frequencies, not the bandwidths).

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::RealToComplex;

/// Highest LPC order (16 kHz).
const MAX_ORDER: usize = 18;
/// Envelope resolution: FFT length (31 Hz bins at 8 kHz, refined by
/// parabolic interpolation on the log envelope).
const N: usize = 256;

/// A planned formant tracker for one sample rate.
pub struct FormantTracker {
    rate: f32,
    order: usize,
    window: Arc<[f32]>,
    frame: Vec<f32>,
    poly: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    envelope: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl FormantTracker {
    /// Plan for `rate` Hz and frames of `len` samples. Order: 2 + rate/1 kHz
    /// (the usual rule: two poles per kHz of band plus two for the source).
    pub fn new(rate: u32, len: usize) -> Self {
        let fft = crate::plans::forward_fft(N);
        Self {
            rate: rate as f32,
            order: (2 + rate as usize / 1000).min(MAX_ORDER),
            window: crate::plans::hamming(len),
            frame: vec![0.0; len],
            poly: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            envelope: vec![0.0; N / 2 + 1],
            fft,
        }
    }

    /// F1–F3 in Hz of the last `len` samples of `x`; 0 where fewer peaks were found.
    pub fn process(&mut self, x: &[f32]) -> [f32; 3] {
        let len = self.frame.len();
        let x = &x[x.len() - len..];
        // Pre-emphasis (first-order, 0.97) flattens the glottal tilt; Hamming window.
        for i in 0..len {
            let prev = if i > 0 { x[i - 1] } else { 0.0 };
            self.frame[i] = (x[i] - 0.97 * prev) * self.window[i];
        }
        let p = self.order;
        let mut r = [0f64; MAX_ORDER + 1];
        for (lag, rv) in r.iter_mut().enumerate().take(p + 1) {
            *rv = crate::kernels::dot(&self.frame[lag..], &self.frame[..len - lag]) as f64;
        }
        if r[0] <= 1e-12 {
            return [0.0; 3];
        }
        r[0] *= 1.0 + 1e-9; // white-noise correction keeps the recursion stable
                            // Levinson–Durbin.
        let mut a = [0f64; MAX_ORDER + 1];
        let mut tmp = [0f64; MAX_ORDER + 1];
        a[0] = 1.0;
        let mut err = r[0];
        for i in 1..=p {
            let acc: f64 = (1..i).map(|j| a[j] * r[i - j]).sum::<f64>() + r[i];
            let k = -acc / err;
            tmp[..=i].copy_from_slice(&a[..=i]);
            for j in 1..i {
                a[j] = tmp[j] + k * tmp[i - j];
            }
            a[i] = k;
            err *= 1.0 - k * k;
            if err <= 0.0 {
                return [0.0; 3];
            }
        }
        self.poly.iter_mut().for_each(|v| *v = 0.0);
        for (dst, src) in self.poly.iter_mut().zip(&a[..=p]) {
            *dst = *src as f32;
        }
        if self
            .fft
            .process_with_scratch(&mut self.poly, &mut self.spectrum, &mut self.scratch)
            .is_err()
        {
            return [0.0; 3];
        }
        for (e, c) in self.envelope.iter_mut().zip(&self.spectrum) {
            *e = 1.0 / c.norm_sqr().max(1e-12);
        }
        let bin_hz = self.rate / N as f32;
        let lo = (90.0 / bin_hz) as usize;
        let hi = ((self.rate / 2.0 - 100.0) / bin_hz) as usize;
        let mut out = [0f32; 3];
        let mut found = 0;
        for k in lo.max(1)..hi.min(self.envelope.len() - 1) {
            let (l, m, rr) = (self.envelope[k - 1], self.envelope[k], self.envelope[k + 1]);
            if m > l && m >= rr {
                // Parabolic interpolation on the log envelope.
                let ln = |v: f32| crate::kernels::ln(v.max(1e-30));
                let (l, m, rr) = (ln(l), ln(m), ln(rr));
                let d = l - 2.0 * m + rr;
                let off = if d.abs() > f32::EPSILON {
                    (0.5 * (l - rr) / d).clamp(-0.5, 0.5)
                } else {
                    0.0
                };
                out[found] = (k as f32 + off) * bin_hz;
                found += 1;
                if found == 3 {
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 120 Hz pulse train through second-order resonators at `formants`.
    fn vowel(rate: f32, formants: &[(f32, f32)], n: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..n)
            .map(|i| {
                if i % (rate as usize / 120) == 0 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        for &(f, bw) in formants {
            let r = (-std::f32::consts::PI * bw / rate).exp();
            let c = 2.0 * r * (2.0 * std::f32::consts::PI * f / rate).cos();
            let (mut y1, mut y2) = (0.0, 0.0);
            for v in x.iter_mut() {
                let y = *v + c * y1 - r * r * y2;
                y2 = y1;
                y1 = y;
                *v = y;
            }
        }
        let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        x.iter().map(|v| v / peak * 0.5).collect()
    }

    #[test]
    fn finds_the_formants_of_a_synthetic_vowel() {
        for (rate, len) in [(8000u32, 200usize), (16000, 400)] {
            let x = vowel(
                rate as f32,
                &[(700.0, 80.0), (1220.0, 90.0), (2600.0, 120.0)],
                2000,
            );
            let mut t = FormantTracker::new(rate, len);
            let f = t.process(&x[1000..1000 + len]);
            for (got, want) in f.iter().zip([700.0, 1220.0, 2600.0]) {
                assert!((got - want).abs() < 90.0, "{rate} Hz: {f:?}");
            }
        }
    }

    #[test]
    fn silence_has_no_formants() {
        let mut t = FormantTracker::new(8000, 200);
        assert_eq!(t.process(&[0.0; 200]), [0.0; 3]);
    }
}
