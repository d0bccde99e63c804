//! A small multi-layer perceptron for the binary tasks: one hidden layer of
//! tanh units and a logistic output, L2 weight decay, trained full batch by
//! L-BFGS from a seeded initialisation, for a fixed number of iterations.
//!
//! Hand-written for the same reason as [`super::logistic`]: a few hundred
//! parameters and a few thousand rows need sixty lines of L-BFGS, not a
//! tensor library. The loss is the one the logistic fit minimises (weighted
//! mean log loss, class weights equalising the classes), so the two families
//! differ only in the score function.

use super::logistic::Design;

/// Hidden units: enough for a few interactions between ~40 features, few
/// enough (≈ 750 parameters) for ~4,000 correlated rows under weight decay.
pub(crate) const UNITS: usize = 16;

/// L-BFGS iterations: fixed a priori, not tuned on the corpus.
pub(crate) const ITERATIONS: usize = 200;

/// Correction pairs L-BFGS keeps.
const MEMORY: usize = 7;

/// A trained network, in training precision. Input weights are stored
/// input-major (`w1[j * units + u]`) so that the forward and backward passes
/// run over contiguous units.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    pub units: usize,
    pub w1: Vec<f64>,
    pub b1: Vec<f64>,
    pub v: Vec<f64>,
    pub c: f64,
}

impl Net {
    /// The output logit for one row; `h` is scratch of `units` values.
    pub(crate) fn score(&self, row: &[f64], h: &mut [f64]) -> f64 {
        h.copy_from_slice(&self.b1);
        for (j, &x) in row.iter().enumerate() {
            let w = &self.w1[j * self.units..(j + 1) * self.units];
            for (a, &wu) in h.iter_mut().zip(w) {
                *a += x * wu;
            }
        }
        self.c
            + h.iter()
                .zip(&self.v)
                .map(|(a, v)| a.tanh() * v)
                .sum::<f64>()
    }
}

/// A splitmix64 stream: a deterministic initialisation without a crate.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform on (−a, a).
    fn symmetric(&mut self, a: f64) -> f64 {
        (2.0 * self.next() - 1.0) * a
    }
}

/// Parameter vector layout: `w1` (dims × units), `b1`, `v`, `c`.
fn unpack(p: &[f64], dims: usize, units: usize) -> Net {
    let (w1, rest) = p.split_at(dims * units);
    let (b1, rest) = rest.split_at(units);
    let (v, rest) = rest.split_at(units);
    Net {
        units,
        w1: w1.to_vec(),
        b1: b1.to_vec(),
        v: v.to_vec(),
        c: rest[0],
    }
}

/// Weighted mean log loss plus `lambda/2 · (|w1|² + |v|²)` and its gradient.
fn objective(d: &Design, y: &[bool], wt: &[f64], lambda: f64, p: &[f64], g: &mut [f64]) -> f64 {
    let (dims, units) = (d.dims, (p.len() - 1) / (d.dims + 2));
    let (w1, rest) = p.split_at(dims * units);
    let (b1, rest) = rest.split_at(units);
    let (v, rest) = rest.split_at(units);
    let c = rest[0];
    g.iter_mut().for_each(|x| *x = 0.0);
    let mut h = vec![0.0; units];
    let mut da = vec![0.0; units];
    let mut loss = 0.0;
    for (i, row) in d.x.chunks_exact(dims).enumerate() {
        h.copy_from_slice(b1);
        for (j, &x) in row.iter().enumerate() {
            for (a, &wu) in h.iter_mut().zip(&w1[j * units..(j + 1) * units]) {
                *a += x * wu;
            }
        }
        h.iter_mut().for_each(|a| *a = a.tanh());
        let z = c + h.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
        let t = if y[i] { 1.0 } else { 0.0 };
        // log(1 + e^z) − t·z, stably.
        loss += wt[i] * (z.max(0.0) + (-z.abs()).exp().ln_1p() - t * z);
        let dz = wt[i] * (1.0 / (1.0 + (-z).exp()) - t);
        let (gw1, grest) = g.split_at_mut(dims * units);
        let (gb1, grest) = grest.split_at_mut(units);
        let (gv, gc) = grest.split_at_mut(units);
        gc[0] += dz;
        for u in 0..units {
            gv[u] += dz * h[u];
            da[u] = dz * v[u] * (1.0 - h[u] * h[u]);
            gb1[u] += da[u];
        }
        for (j, &x) in row.iter().enumerate() {
            for (gw, &d) in gw1[j * units..(j + 1) * units].iter_mut().zip(&da) {
                *gw += x * d;
            }
        }
    }
    let decayed = (0..dims * units).chain(dims * units + units..dims * units + 2 * units);
    for k in decayed {
        loss += 0.5 * lambda * p[k] * p[k];
        g[k] += lambda * p[k];
    }
    loss
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fit a network of `units` tanh units minimising the weighted mean log loss
/// (weights normalised to sum to one) plus `lambda/2` times the squared
/// weights (biases free), from the initialisation `seed` gives.
pub(crate) fn fit(
    d: &Design,
    y: &[bool],
    weight: &[f64],
    lambda: f64,
    units: usize,
    seed: u64,
) -> Net {
    let dims = d.dims;
    let total: f64 = weight.iter().sum::<f64>().max(1e-12);
    let wt: Vec<f64> = weight.iter().map(|w| w / total).collect();
    let n = dims * units + 2 * units + 1;
    let mut rng = SplitMix(seed);
    let mut p = vec![0.0; n];
    // Unit variance pre-activations for standardised inputs; output weights
    // small enough that the start is near p = 0.5 but not at a saddle.
    let a_in = (3.0 / dims as f64).sqrt();
    let a_out = (3.0 / units as f64).sqrt() * 0.5;
    for x in &mut p[..dims * units] {
        *x = rng.symmetric(a_in);
    }
    for x in &mut p[dims * units + units..dims * units + 2 * units] {
        *x = rng.symmetric(a_out);
    }
    let mut g = vec![0.0; n];
    let mut f = objective(d, y, &wt, lambda, &p, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut trial = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    for iter in 0..ITERATIONS {
        // Two-loop recursion: dir = −H·g.
        let mut q = g.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for k in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[k], &s_hist[k]);
            alpha[k] = rho * dot(&s_hist[k], &q);
            q.iter_mut()
                .zip(&y_hist[k])
                .for_each(|(a, b)| *a -= alpha[k] * b);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(yk)) => dot(s, yk) / dot(yk, yk),
            _ => 1.0 / dot(&g, &g).sqrt().max(1e-12),
        };
        q.iter_mut().for_each(|a| *a *= gamma);
        for k in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[k], &s_hist[k]);
            let beta = rho * dot(&y_hist[k], &q);
            q.iter_mut()
                .zip(&s_hist[k])
                .for_each(|(a, b)| *a += (alpha[k] - beta) * b);
        }
        let mut dir: Vec<f64> = q.iter().map(|a| -a).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from −g.
            s_hist.clear();
            y_hist.clear();
            dir = g.iter().map(|a| -a).collect();
            slope = dot(&g, &dir);
        }
        // Backtracking to the Armijo condition.
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..30 {
            for k in 0..n {
                trial[k] = p[k] + step * dir[k];
            }
            let f_new = objective(d, y, &wt, lambda, &trial, &mut g_new);
            if f_new <= f + 1e-4 * step * slope {
                accepted = Some(f_new);
                break;
            }
            step *= 0.5;
        }
        let Some(f_new) = accepted else { break };
        let s: Vec<f64> = (0..n).map(|k| trial[k] - p[k]).collect();
        let yk: Vec<f64> = (0..n).map(|k| g_new[k] - g[k]).collect();
        if dot(&s, &yk) > 1e-12 {
            if s_hist.len() == MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(yk);
        }
        p.copy_from_slice(&trial);
        g.copy_from_slice(&g_new);
        let done = (f - f_new).abs() < 1e-10 * f.abs().max(1.0) && iter > 10;
        f = f_new;
        if done || g.iter().all(|x| x.abs() < 1e-7) {
            break;
        }
    }
    unpack(&p, dims, units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_xor_which_no_linear_model_can() {
        // Four noisy clusters, XOR-labelled: a linear score is at chance.
        let mut rng = SplitMix(5);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..400 {
            let (a, b) = ((i % 2) as f64, ((i / 2) % 2) as f64);
            x.extend([
                2.0 * a - 1.0 + rng.symmetric(0.4),
                2.0 * b - 1.0 + rng.symmetric(0.4),
            ]);
            y.push((a > 0.5) != (b > 0.5));
        }
        let d = Design { x: &x, dims: 2 };
        let w = vec![1.0; y.len()];
        let net = fit(&d, &y, &w, 1e-4, 8, 1);
        let mut h = vec![0.0; 8];
        let right = x
            .chunks_exact(2)
            .zip(&y)
            .filter(|(r, &t)| (net.score(r, &mut h) > 0.0) == t)
            .count();
        assert!(right >= 390, "{right}/400");
    }

    #[test]
    fn the_fit_is_deterministic_and_decay_shrinks() {
        let x: Vec<f64> = (0..200).map(|i| (i as f64 / 50.0) - 2.0).collect();
        let y: Vec<bool> = x.iter().map(|&v| v > 0.3).collect();
        let d = Design { x: &x, dims: 1 };
        let w = vec![1.0; y.len()];
        let a = fit(&d, &y, &w, 1e-2, 4, 7);
        let b = fit(&d, &y, &w, 1e-2, 4, 7);
        assert_eq!(a.w1, b.w1);
        let tight = fit(&d, &y, &w, 1.0, 4, 7);
        let norm = |n: &Net| dot(&n.w1, &n.w1) + dot(&n.v, &n.v);
        assert!(norm(&tight) < norm(&a), "{} {}", norm(&tight), norm(&a));
    }
}
