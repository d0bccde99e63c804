//! Read-only tables every analyser of a process shares: FFT plans and
//! windows. Planning them per analyser (per call) cost about 60,000
//! instructions of each call's set-up (docs/performance.md, "Where a
//! signalling-only call's CPU goes"); they depend only on their length, so
//! the first analyser of a length plans them and the others take an `Arc`.
//! The same code computes them either way: the values are bit-identical.

use std::sync::{Arc, Mutex, OnceLock};

use realfft::{RealFftPlanner, RealToComplex};

/// Lock a cache even if a thread panicked while holding it: the caches only
/// ever gain complete entries, so what is there is usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The forward real FFT of length `n` (realfft's planner keeps one plan per
/// length, so a shared planner hands every caller the same plan).
pub(crate) fn forward_fft(n: usize) -> Arc<dyn RealToComplex<f32>> {
    static PLANNER: OnceLock<Mutex<RealFftPlanner<f32>>> = OnceLock::new();
    let planner = PLANNER.get_or_init(|| Mutex::new(RealFftPlanner::new()));
    lock(planner).plan_fft_forward(n)
}

/// A Hamming window of `len` samples, shared.
pub(crate) fn hamming(len: usize) -> Arc<[f32]> {
    static WINDOWS: Mutex<Vec<(usize, Arc<[f32]>)>> = Mutex::new(Vec::new());
    let mut windows = lock(&WINDOWS);
    if let Some((_, w)) = windows.iter().find(|(l, _)| *l == len) {
        return w.clone();
    }
    let w: Arc<[f32]> = crate::spectral::hamming(len).into();
    windows.push((len, w.clone()));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_request_gets_the_same_tables() {
        assert!(Arc::ptr_eq(&forward_fft(256), &forward_fft(256)));
        assert_eq!(forward_fft(512).len(), 512);
        let (a, b) = (hamming(200), hamming(200));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&a[..], &crate::spectral::hamming(200)[..]);
        assert_eq!(hamming(320).len(), 320);
    }
}
