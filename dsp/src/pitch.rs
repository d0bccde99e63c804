//! Fundamental frequency by the normalised cross-correlation function (NCCF,
//! as in RAPT, Talkin 1995): for each lag the correlation of the frame with
//! itself shifted, normalised by both segments' energies, over a fixed
//! integration length so that every lag is judged on equal terms. The best
//! peak, preferring the shortest lag within 10 % of it (which avoids the
//! octave-down errors of plain autocorrelation), refined by parabolic
//! interpolation. Works on telephone audio where the fundamental itself is
//! filtered out: the period is still in the harmonics.

use crate::kernels::{correlate, dot};

/// Lowest F0 searched (Hz).
pub const F0_MIN: f32 = 60.0;
/// Highest F0 searched (Hz).
pub const F0_MAX: f32 = 500.0;
/// NCCF peak needed to call a frame voiced.
pub const VOICING_THRESHOLD: f32 = 0.55;

/// A planned pitch tracker for one sample rate; no allocation after `new`.
#[derive(Debug, Clone)]
pub struct PitchTracker {
    rate: f32,
    min_lag: usize,
    max_lag: usize,
    /// Samples correlated at every lag.
    span: usize,
    nccf: Vec<f32>,
    /// The frame decimated by two, and its NCCF.
    dec: Vec<f32>,
    coarse: Vec<f32>,
    /// Prefix sums of squares (scratch).
    sq: Vec<f32>,
}

/// One frame's pitch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pitch {
    /// F0 in Hz (0 when unvoiced).
    pub f0_hz: f32,
    /// NCCF peak in [-1, 1]: the voicing strength.
    pub strength: f32,
    /// Whether the frame is voiced.
    pub voiced: bool,
    /// Local jitter: mean absolute difference of consecutive periods over the
    /// mean period (Praat's "jitter (local)"), when at least 3 periods were marked.
    pub jitter: Option<f32>,
    /// Local shimmer in dB: mean |20·log10| of consecutive period peak ratios.
    pub shimmer_db: Option<f32>,
}

/// Mean power of the correlated head of the window, relative to the whole
/// window's, below which the frame is an onset and not yet voiced (−13 dB).
const ONSET_RATIO: f32 = 0.05;

/// Peaks marked per frame at most (40 ms at 500 Hz is 20 periods).
const MAX_PEAKS: usize = 32;

/// Mark one peak per period, each searched within ±20 % of the period after
/// the last, and derive local jitter and shimmer from them (the cycle-to-cycle
/// measures eGeMAPS uses, here within one analysis window).
fn perturbation(x: &[f32], period: f32) -> (Option<f32>, Option<f32>) {
    let t = period.round() as usize;
    if t < 4 || x.len() < 3 * t {
        return (None, None);
    }
    // First maximum of x[lo..hi] (a plain loop: `max_by` with `total_cmp`
    // cost 7 % of the whole pipeline).
    let argmax = |lo: usize, hi: usize| {
        let mut best = lo;
        for i in lo + 1..hi.min(x.len()) {
            if x[i] > x[best] {
                best = i;
            }
        }
        best
    };
    let mut pos = [0f32; MAX_PEAKS];
    let mut amp = [0f32; MAX_PEAKS];
    let mut n = 0;
    let mut p = argmax(0, t);
    loop {
        // Sub-sample position by parabolic interpolation.
        let frac = if p > 0 && p + 1 < x.len() {
            let (a, b, c) = (x[p - 1], x[p], x[p + 1]);
            let d = a - 2.0 * b + c;
            if d.abs() > f32::EPSILON {
                (0.5 * (a - c) / d).clamp(-0.5, 0.5)
            } else {
                0.0
            }
        } else {
            0.0
        };
        pos[n] = p as f32 + frac;
        amp[n] = x[p];
        n += 1;
        let lo = p + (t * 4) / 5;
        let hi = p + (t * 6) / 5 + 1;
        if n == MAX_PEAKS || hi > x.len() {
            break;
        }
        p = argmax(lo, hi);
    }
    if n < 4 {
        return (None, None);
    }
    let periods = n - 1;
    let mean_t = (pos[n - 1] - pos[0]) / periods as f32;
    let jitter = (1..periods)
        .map(|i| ((pos[i + 1] - pos[i]) - (pos[i] - pos[i - 1])).abs())
        .sum::<f32>()
        / (periods - 1) as f32
        / mean_t;
    let shimmer = if amp[..n].iter().all(|a| *a > 0.0) {
        Some(
            (1..n)
                .map(|i| (2.0 * crate::kernels::db(amp[i] / amp[i - 1])).abs())
                .sum::<f32>()
                / (n - 1) as f32,
        )
    } else {
        None
    };
    (Some(jitter), shimmer)
}

/// NCCF of `x` for lags `lo..=hi` over `span` samples into `out[lag]`;
/// returns the best (lag, value), or `None` for a silent segment. `sq` is
/// scratch for prefix sums of squares (at least `x.len() + 1` long), so that
/// each lag's energy is a subtraction rather than a serial running update,
/// and the normalisation runs as its own loop over the whole lag range.
fn nccf_scan(
    x: &[f32],
    span: usize,
    lo: usize,
    hi: usize,
    out: &mut [f32],
    sq: &mut [f32],
) -> Option<(usize, f32)> {
    // Few lags (the refinement pass): a dot product per energy is cheaper
    // than a serial prefix sum over the whole stretch.
    let direct = hi - lo < 16;
    if !direct {
        sq[0] = 0.0;
        for i in 0..hi + span {
            sq[i + 1] = sq[i] + x[i] * x[i];
        }
    }
    let e0 = if direct {
        dot(&x[..span], &x[..span])
    } else {
        sq[span]
    };
    if e0 <= f32::EPSILON {
        return None;
    }
    correlate(&x[..span], &x[lo..hi + span], &mut out[lo..=hi]);
    for (lag, o) in out[lo..=hi].iter_mut().enumerate() {
        let at = lag + lo;
        let el = if direct {
            dot(&x[at..at + span], &x[at..at + span])
        } else {
            (sq[at + span] - sq[at]).max(0.0)
        };
        *o /= (e0 * el).sqrt().max(f32::EPSILON);
    }
    let mut best = (lo, f32::MIN);
    for (lag, &v) in out[lo..=hi].iter().enumerate() {
        if v > best.1 {
            best = (lag + lo, v);
        }
    }
    Some(best)
}

impl PitchTracker {
    /// Plan for `rate` Hz and frames of `frame_len` samples (at least 2 periods of `F0_MIN`).
    pub fn new(rate: u32, frame_len: usize) -> Self {
        let min_lag = (rate as f32 / F0_MAX).floor() as usize;
        let max_lag = (rate as f32 / F0_MIN).ceil() as usize;
        assert!(
            frame_len > max_lag + min_lag,
            "frame too short for the F0 range"
        );
        Self {
            rate: rate as f32,
            min_lag,
            max_lag,
            span: frame_len - max_lag - 1,
            nccf: vec![0.0; max_lag + 2],
            dec: vec![0.0; frame_len / 2 + 1],
            coarse: vec![0.0; max_lag / 2 + 3],
            sq: vec![0.0; frame_len + 1],
        }
    }

    /// Samples a frame must hold.
    pub fn frame_len(&self) -> usize {
        self.span + self.max_lag + 1
    }

    /// Estimate the pitch of `x` (DC removed by the caller), `x.len() >= frame_len()`.
    pub fn process(&mut self, x: &[f32]) -> Pitch {
        // Coarse search on the signal decimated by two ([1 2 1]/4 low-pass):
        // a quarter of the work, and the harmonics that carry the period of a
        // voice are below 2 kHz anyway. Then the best coarse lag is refined at
        // full rate (RAPT's two-pass scheme).
        let half = x.len() / 2;
        // The first output has no left neighbour (the edge sample stands in);
        // every other one has both, so the loop needs no edge tests.
        self.dec[0] = 0.25 * x[0] + 0.5 * x[0] + 0.25 * x[1];
        for (d, w) in self.dec[1..half]
            .iter_mut()
            .zip(x[1..2 * half].windows(3).step_by(2))
        {
            *d = 0.25 * w[0] + 0.5 * w[1] + 0.25 * w[2];
        }
        let (clo, chi) = ((self.min_lag / 2).max(1), self.max_lag.div_ceil(2));
        let coarse_span = half - chi - 1;
        let Some(coarse_best) = nccf_scan(
            &self.dec[..half],
            coarse_span,
            clo,
            chi,
            &mut self.coarse,
            &mut self.sq,
        ) else {
            return Pitch::default();
        };
        // The correlated segment (the window's start) must hold the voice, not
        // just the tail: at a syllable onset the start is silence, which after
        // DC removal is a constant offset that correlates perfectly with
        // itself at the shortest lag (a spurious "500 Hz" frame at every
        // onset). The prefix sums of the scan above give both energies free.
        let head = self.sq[coarse_span] / coarse_span as f32;
        let whole = self.sq[chi + coarse_span] / (chi + coarse_span) as f32;
        if head < ONSET_RATIO * whole {
            return Pitch::default();
        }
        // The decimated correlation runs a little lower than the full-rate one.
        if coarse_best.1 < VOICING_THRESHOLD - 0.1 {
            return Pitch {
                strength: coarse_best.1,
                ..Pitch::default()
            };
        }
        // Shortest coarse lag at a local peak within 10 % of the best one
        // (plain autocorrelation's octave-down errors pick twice the period).
        // A maximum on the edge of the lag range is no peak: it is what a
        // window half filled with a burst onset gives (a "500 Hz" frame at
        // every syllable start), so such a frame is unvoiced.
        let is_peak = |l: usize| {
            let v = self.coarse[l];
            v >= self.coarse[l - 1] && v >= self.coarse[l + 1]
        };
        let Some(c) = (clo + 1..chi).find(|&l| self.coarse[l] >= 0.9 * coarse_best.1 && is_peak(l))
        else {
            return Pitch {
                strength: coarse_best.1,
                ..Pitch::default()
            };
        };
        let lo = (2 * c).saturating_sub(3).max(self.min_lag);
        let hi = (2 * c + 3).min(self.max_lag);
        let Some(best) = nccf_scan(x, self.span, lo, hi, &mut self.nccf, &mut self.sq) else {
            return Pitch::default();
        };
        if best.1 < VOICING_THRESHOLD {
            return Pitch {
                strength: best.1,
                ..Pitch::default()
            };
        }
        let lag = best.0;
        let refined = if lag > lo && lag < hi {
            let (a, b, c) = (self.nccf[lag - 1], self.nccf[lag], self.nccf[lag + 1]);
            let denom = a - 2.0 * b + c;
            if denom.abs() > f32::EPSILON {
                lag as f32 + (0.5 * (a - c) / denom).clamp(-0.5, 0.5)
            } else {
                lag as f32
            }
        } else {
            lag as f32
        };
        let (jitter, shimmer_db) = perturbation(x, refined);
        Pitch {
            f0_hz: self.rate / refined,
            strength: self.nccf[lag],
            voiced: true,
            jitter,
            shimmer_db,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, f: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * f * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn pure_tones_at_8_and_16_khz() {
        for rate in [8000, 16000] {
            let len = rate as usize * 40 / 1000;
            let mut p = PitchTracker::new(rate, len);
            for f in [80.0, 120.0, 200.0, 310.0, 450.0] {
                let r = p.process(&tone(rate, f, len));
                assert!(r.voiced, "{f} Hz at {rate}");
                assert!(
                    (r.f0_hz - f).abs() < 2.0,
                    "{f} Hz at {rate}: got {}",
                    r.f0_hz
                );
            }
        }
    }

    #[test]
    fn missing_fundamental_pulse_train() {
        // Harmonics 3..8 of 150 Hz only, as after a 300-3400 Hz telephone filter.
        let (rate, len) = (8000, 320);
        let x: Vec<f32> = (0..len)
            .map(|i| {
                (3..=8)
                    .map(|h| {
                        (2.0 * std::f32::consts::PI * 150.0 * h as f32 * i as f32 / 8000.0).sin()
                    })
                    .sum()
            })
            .collect();
        let r = PitchTracker::new(rate, len).process(&x);
        assert!(r.voiced && (r.f0_hz - 150.0).abs() < 2.0, "{r:?}");
    }

    #[test]
    fn jitter_and_shimmer_of_a_steady_and_a_perturbed_pulse_train() {
        // Triangular glottal-like pulses every `periods[i]` samples with
        // amplitudes `amps[i]`; wide enough that a one-sample period change
        // keeps the signal periodic-looking, as a voice does.
        fn train(periods: &[usize], amps: &[f32]) -> Vec<f32> {
            let mut x = vec![0f32; 320];
            let mut at = 8;
            for (p, a) in periods.iter().cycle().zip(amps.iter().cycle()) {
                if at + 8 >= x.len() {
                    break;
                }
                for k in -7i32..=7 {
                    x[(at as i32 + k) as usize] += a * (1.0 - k.abs() as f32 / 8.0);
                }
                at += p;
            }
            x
        }
        let mut p = PitchTracker::new(8000, 320);
        let steady = p.process(&train(&[50], &[1.0]));
        assert!(
            steady.voiced && (steady.f0_hz - 160.0).abs() < 2.0,
            "{steady:?}"
        );
        assert!(steady.jitter.unwrap() < 0.005, "{steady:?}");
        assert!(steady.shimmer_db.unwrap() < 0.05, "{steady:?}");
        // Periods alternate 49/51 samples: |ΔT| = 2 over a 50-sample mean, 4 %.
        let jittery = p.process(&train(&[49, 51], &[1.0, 0.9]));
        assert!(jittery.voiced, "{jittery:?}");
        let j = jittery
            .jitter
            .unwrap_or_else(|| panic!("periods marked: {jittery:?}"));
        assert!((j - 0.04).abs() < 0.01, "jitter {j}");
        // Amplitudes alternate 1.0/0.9: |20·log10(0.9)| = 0.92 dB.
        let s = jittery.shimmer_db.expect("peaks marked");
        assert!((s - 0.92).abs() < 0.2, "shimmer {s}");
    }

    #[test]
    fn white_noise_is_unvoiced() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut p = PitchTracker::new(8000, 320);
        let voiced = (0..50)
            .filter(|_| {
                let x: Vec<f32> = (0..320).map(|_| rng.f32() - 0.5).collect();
                p.process(&x).voiced
            })
            .count();
        assert!(voiced <= 2, "{voiced} of 50 noise frames voiced");
    }
}
