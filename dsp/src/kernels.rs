//! The two reductions every frame runs many times. Float addition is not
//! reassociated by the compiler, so a plain `.sum()` is one long chain of
//! dependent adds; eight independent partial sums let it use SIMD lanes and
//! overlap the adds (measured: 7.8 ns against 29.6 ns for a 92-sample dot
//! product on the project machine).

/// Dot product of the common length of `a` and `b`.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut out = [0f32];
    correlate(&a[..n], &b[..n], &mut out);
    out[0]
}

/// `out[k] = dot(a, &b[k..k + a.len()])` for every `k` of `out`: a
/// correlation over consecutive lags, bit for bit what separate [`dot`]
/// calls give (the same kernel), but the CPU check and the call into the
/// AVX code happen once per scan rather than once per lag.
///
/// Panics unless `b.len() >= a.len() + out.len() - 1`.
#[inline]
pub(crate) fn correlate(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(out.is_empty() || b.len() + 1 >= a.len() + out.len());
    // The baseline x86-64 target has 4-lane SSE only; on CPUs with AVX the
    // same eight partial sums fit one 8-lane register. Lane for lane the
    // arithmetic is identical (no FMA is enabled, so nothing is fused), so
    // both paths return bit-identical results.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX, checked just above.
        #[allow(unsafe_code)]
        // one of the two unsafe blocks of the workspace, with src/trim.rs (lint: unsafe_code = "deny")
        return unsafe { correlate_avx(a, b, out) };
    }
    correlate_portable(a, b, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn correlate_avx(a: &[f32], b: &[f32], out: &mut [f32]) {
    correlate_portable(a, b, out)
}

#[inline(always)]
fn correlate_portable(a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = a.len();
    for (k, o) in out.iter_mut().enumerate() {
        *o = dot_portable(a, &b[k..k + n]);
    }
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of `a`.
#[inline]
pub(crate) fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = a.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Natural logarithm of a positive, normal `x`, to about 1e-5 absolute:
/// exponent from the bits, mantissa m in [1, 2) through
/// ln m = 2·atanh((m - 1)/(m + 1)) to the s⁷ term. The spectral front end
/// takes ~75 logarithms a frame; libm's `ln` made them a third of its cost.
pub(crate) fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let ln_m = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0))));
    e as f32 * std::f32::consts::LN_2 + ln_m
}

/// 10·log10(x) for a positive, normal `x`, through [`ln`].
pub(crate) fn db(x: f32) -> f32 {
    (10.0 / std::f32::consts::LN_10) * ln(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agree_with_plain_loops() {
        let a: Vec<f32> = (0..93).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..93).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
        assert!((sum(&a) - a.iter().sum::<f32>()).abs() < 1e-4);
        assert_eq!(
            dot(&a[..3], &b),
            a[..3].iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        );
    }

    #[test]
    fn the_avx_path_is_bit_identical_to_the_portable_one() {
        for n in [0, 1, 7, 8, 9, 92, 185, 320] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 1e3).collect();
            assert_eq!(
                dot(&a, &b).to_bits(),
                dot_portable(&a, &b).to_bits(),
                "n={n}"
            );
        }
    }

    #[test]
    fn correlation_is_a_dot_product_per_lag_bit_for_bit() {
        let x: Vec<f32> = (0..400).map(|i| (i as f32 * 0.37).sin() * 1e2).collect();
        for (span, lags) in [
            (0, 3),
            (5, 9),
            (92, 60),
            (185, 120),
            (8, 1),
            (16, 4),
            (33, 7),
        ] {
            let mut out = vec![0f32; lags];
            correlate(&x[..span], &x[1..1 + span + lags - 1], &mut out);
            let mut portable = vec![0f32; lags];
            correlate_portable(&x[..span], &x[1..1 + span + lags - 1], &mut portable);
            for k in 0..lags {
                let want = dot_portable(&x[..span], &x[1 + k..1 + k + span]).to_bits();
                assert_eq!(out[k].to_bits(), want, "span {span} lag {k}");
                assert_eq!(portable[k].to_bits(), want, "span {span} lag {k}");
            }
        }
    }
}
