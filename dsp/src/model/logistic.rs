//! L2-regularised logistic regression fitted by Newton's method (IRLS).
//!
//! Hand-written rather than pulled from linfa or smartcore: with ~40
//! standardised features and a few thousand rows, Newton converges in about
//! ten steps on a 41×41 system, the whole optimiser is sixty lines, and it
//! keeps ndarray/BLAS out of the build. Class weights make the fit target
//! unweighted average recall (the corpus protocol's metric) rather than
//! accuracy on unbalanced classes.

/// A design matrix: `rows` × `dims`, row-major, already standardised.
pub(crate) struct Design<'a> {
    pub x: &'a [f64],
    pub dims: usize,
}

impl Design<'_> {
    fn rows(&self) -> usize {
        self.x.len() / self.dims
    }
    fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.dims..(i + 1) * self.dims]
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Weights that give each class the same total weight (mean 1 per row).
pub(crate) fn balanced_weights(y: &[bool]) -> Vec<f64> {
    let pos = y.iter().filter(|&&v| v).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    let n = y.len() as f64;
    y.iter()
        .map(|&v| if v { n / (2.0 * pos) } else { n / (2.0 * neg) })
        .collect()
}

/// Fit `p(y) = σ(w·x + b)` minimising the weighted mean log loss plus
/// `lambda/2 · |w|²` (the bias is not penalised). Returns `w` followed by `b`.
pub(crate) fn fit(d: &Design, y: &[bool], weight: &[f64], lambda: f64) -> Vec<f64> {
    let (n, k) = (d.rows(), d.dims + 1);
    let total: f64 = weight.iter().sum::<f64>().max(1e-12);
    let mut beta = vec![0.0; k];
    let mut grad = vec![0.0; k];
    let mut hess = vec![0.0; k * k];
    for _ in 0..100 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        hess.iter_mut().for_each(|h| *h = 0.0);
        for i in 0..n {
            let row = d.row(i);
            let z = row.iter().zip(&beta).map(|(a, b)| a * b).sum::<f64>() + beta[k - 1];
            let p = sigmoid(z);
            let wi = weight[i] / total;
            let r = wi * (p - if y[i] { 1.0 } else { 0.0 });
            let c = wi * (p * (1.0 - p)).max(1e-9);
            for a in 0..k {
                let xa = if a < k - 1 { row[a] } else { 1.0 };
                grad[a] += r * xa;
                for b in 0..=a {
                    let xb = if b < k - 1 { row[b] } else { 1.0 };
                    hess[a * k + b] += c * xa * xb;
                }
            }
        }
        for a in 0..k - 1 {
            grad[a] += lambda * beta[a];
            hess[a * k + a] += lambda;
        }
        hess[k * k - 1] += 1e-9;
        let step = cholesky_solve(&mut hess, &grad, k);
        let mut largest = 0.0f64;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b -= s;
            largest = largest.max(s.abs());
        }
        if largest < 1e-7 {
            break;
        }
    }
    beta
}

/// Solve `H x = g` for symmetric positive definite `H`, of which only the
/// lower triangle is filled; `H` is overwritten by its factor.
fn cholesky_solve(h: &mut [f64], g: &[f64], k: usize) -> Vec<f64> {
    for j in 0..k {
        let mut s = h[j * k + j];
        for m in 0..j {
            s -= h[j * k + m] * h[j * k + m];
        }
        let diag = s.max(1e-12).sqrt();
        h[j * k + j] = diag;
        for i in j + 1..k {
            let mut s = h[i * k + j];
            for m in 0..j {
                s -= h[i * k + m] * h[j * k + m];
            }
            h[i * k + j] = s / diag;
        }
    }
    let mut x = g.to_vec();
    for i in 0..k {
        for m in 0..i {
            x[i] -= h[i * k + m] * x[m];
        }
        x[i] /= h[i * k + i];
    }
    for i in (0..k).rev() {
        for m in i + 1..k {
            x[i] -= h[m * k + i] * x[m];
        }
        x[i] /= h[i * k + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_logistic_model() {
        // y ~ Bernoulli(σ(2 x0 − x1 + 0.5)) over many rows: the fit must land
        // near the generating weights.
        let mut rng = fastrand::Rng::with_seed(3);
        let (n, true_w, true_b) = (20000, [2.0, -1.0], 0.5);
        let mut x = Vec::with_capacity(2 * n);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let a = rng.f64() * 4.0 - 2.0;
            let b = rng.f64() * 4.0 - 2.0;
            x.extend([a, b]);
            y.push(rng.f64() < sigmoid(true_w[0] * a + true_w[1] * b + true_b));
        }
        let w = vec![1.0; n];
        let beta = fit(&Design { x: &x, dims: 2 }, &y, &w, 0.0);
        for (got, want) in beta.iter().zip([2.0, -1.0, 0.5]) {
            assert!((got - want).abs() < 0.1, "{beta:?}");
        }
    }

    #[test]
    fn regularisation_shrinks_and_separable_data_stays_finite() {
        let x = [-1.0, -0.5, 0.5, 1.0];
        let y = [false, false, true, true];
        let w = balanced_weights(&y);
        let d = Design { x: &x, dims: 1 };
        let loose = fit(&d, &y, &w, 1e-3);
        let tight = fit(&d, &y, &w, 1.0);
        assert!(loose[0].is_finite() && loose[0] > tight[0] && tight[0] > 0.0);
    }

    #[test]
    fn balanced_weights_equalise_the_classes() {
        let y = [true, false, false, false];
        let w = balanced_weights(&y);
        assert!((w[0] - 3.0 * w[1]).abs() < 1e-12);
        assert!((w.iter().sum::<f64>() - 4.0).abs() < 1e-12);
    }
}
