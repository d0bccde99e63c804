//! Cosine, sine, exponential and logarithm for the tables an analyser builds
//! once (windows, DCT basis, mel edges, filter coefficients), always
//! evaluated at run time by the C library.
//!
//! Given a constant argument the compiler folds a libm call at build time
//! with its own arithmetic (double precision, rounded to f32), and that
//! differs from glibc's `cosf` in the last bit for some arguments: 2 of the
//! 104 DCT coefficients of the MFCCs. Whether a table gets folded depends on
//! inlining decisions that an unrelated change (or `codegen-units = 1`)
//! flips, and the features' and estimates' last digits flipped with them
//! (docs/performance.md, issue 10.8). An opaque argument keeps every build
//! on the run-time values. Per-frame calls take data, which is never folded.

use std::hint::black_box;

/// `x.cos()`, never folded at build time.
#[inline]
pub(crate) fn cos(x: f32) -> f32 {
    black_box(x).cos()
}

/// `(x.sin(), x.cos())`, never folded at build time.
#[inline]
pub(crate) fn sin_cos(x: f32) -> (f32, f32) {
    let x = black_box(x);
    (x.sin(), x.cos())
}

/// `x.exp()`, never folded at build time.
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    black_box(x).exp()
}

/// `x.ln()`, never folded at build time.
#[inline]
pub(crate) fn ln(x: f32) -> f32 {
    black_box(x).ln()
}
