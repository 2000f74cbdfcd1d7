//! Implicit-feedback matrix factorisation by alternating least squares (Hu, Koren and Volinsky
//! 2008), with the conventions of the `implicit` package so that one set of hyperparameters means
//! the same in both: an observed value r gives the confidence c = alpha * r, unobserved pairs have
//! confidence 1 and target 0, and each half-step solves, for every user u (then every item),
//!     (YᵀY + Σ_{i∈I(u)} (c_ui − 1) y_i y_iᵀ + λI) x_u = Σ_{i∈I(u)} c_ui y_i
//! either by a few conjugate-gradient steps warm-started from the previous x_u (Takács et al.
//! 2011; cost O(|I(u)| d) per step, what `implicit` does by default) or exactly by Cholesky
//! (O(|I(u)| d² + d³)).

use super::Factors;
use crate::matrix::{axpy, cholesky_solve, dot, gram, Csr};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlsParams {
    pub factors: usize,
    pub regularization: f32,
    pub alpha: f32,
    pub iterations: usize,
    /// Conjugate-gradient steps per solve; 0 solves exactly by Cholesky.
    pub cg_steps: usize,
}

impl Default for AlsParams {
    fn default() -> Self {
        Self { factors: 64, regularization: 0.01, alpha: 1.0, iterations: 15, cg_steps: 3 }
    }
}

/// Trains on the user-item matrix `ui` (values are the r of c = alpha * r).
pub fn fit(ui: &Csr, p: &AlsParams, seed: u64, mut progress: impl FnMut(usize)) -> Factors {
    let d = p.factors;
    let iu = ui.transpose();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Small random starts, as `implicit` (uniform in [0, 0.01)).
    let mut x: Vec<f32> = (0..ui.rows * d).map(|_| rng.random::<f32>() * 0.01).collect();
    let mut y: Vec<f32> = (0..ui.cols * d).map(|_| rng.random::<f32>() * 0.01).collect();
    for it in 0..p.iterations {
        solve_side(ui, &mut x, &y, p);
        solve_side(&iu, &mut y, &x, p);
        progress(it + 1);
    }
    Factors { dim: d, user: x, item: y, item_bias: None }
}

/// One half-step: every row of `x` from the fixed `y`.
pub(crate) fn solve_side(m: &Csr, x: &mut [f32], y: &[f32], p: &AlsParams) {
    let d = p.factors;
    let mut yty = gram(y, d);
    for k in 0..d {
        yty[k * d + k] += p.regularization as f64;
    }
    let yty32: Vec<f32> = yty.iter().map(|&v| v as f32).collect();
    x.par_chunks_mut(d).enumerate().for_each(|(u, xu)| {
        let (items, values) = m.row(u);
        if items.is_empty() {
            xu.fill(0.0);
            return;
        }
        if p.cg_steps == 0 {
            solve_exact(xu, items, values, y, &yty, p);
        } else {
            solve_cg(xu, items, values, y, &yty32, p);
        }
    });
}

/// Exact solve of one row by Cholesky.
pub(crate) fn solve_exact(xu: &mut [f32], items: &[u32], values: &[f32], y: &[f32], yty: &[f64], p: &AlsParams) {
    let d = xu.len();
    let mut a = yty.to_vec();
    let mut b = vec![0f64; d];
    for (&i, &r) in items.iter().zip(values) {
        let c = (p.alpha * r) as f64;
        let yi = &y[i as usize * d..(i as usize + 1) * d];
        for k in 0..d {
            let w = (c - 1.0) * yi[k] as f64;
            let row = &mut a[k * d..(k + 1) * d];
            for (l, v) in row.iter_mut().enumerate() {
                *v += w * yi[l] as f64;
            }
            b[k] += c * yi[k] as f64;
        }
    }
    if cholesky_solve(&mut a, &mut b, d) {
        for (x, v) in xu.iter_mut().zip(&b) {
            *x = *v as f32;
        }
    }
}

/// `cg_steps` conjugate-gradient steps on one row, from its current value.
fn solve_cg(xu: &mut [f32], items: &[u32], values: &[f32], y: &[f32], yty: &[f32], p: &AlsParams) {
    let d = xu.len();
    let row = |i: u32| &y[i as usize * d..(i as usize + 1) * d];
    // r = b - A x, with A x = YᵀY x + Σ (c - 1)(y_i . x) y_i
    let mut r = vec![0f32; d];
    sym_matvec(yty, xu, &mut r);
    r.iter_mut().for_each(|v| *v = -*v);
    for (&i, &v) in items.iter().zip(values) {
        let c = p.alpha * v;
        let yi = row(i);
        axpy(c - (c - 1.0) * dot(yi, xu), yi, &mut r);
    }
    let mut dir = r.clone();
    let mut rs_old = dot(&r, &r);
    let mut ap = vec![0f32; d];
    for _ in 0..p.cg_steps {
        if rs_old < 1e-20 {
            break;
        }
        sym_matvec(yty, &dir, &mut ap);
        for (&i, &v) in items.iter().zip(values) {
            let c = p.alpha * v;
            let yi = row(i);
            axpy((c - 1.0) * dot(yi, &dir), yi, &mut ap);
        }
        let step = rs_old / dot(&dir, &ap);
        axpy(step, &dir, xu);
        axpy(-step, &ap, &mut r);
        let rs_new = dot(&r, &r);
        let beta = rs_new / rs_old;
        for (p_k, r_k) in dir.iter_mut().zip(&r) {
            *p_k = r_k + beta * *p_k;
        }
        rs_old = rs_new;
    }
}

/// out = A v for symmetric A (d x d): a sum of A's rows scaled by v, each a vectorised
/// multiply-add (a dot product per row ends in a horizontal sum each time, slower at d ≈ 100).
fn sym_matvec(a: &[f32], v: &[f32], out: &mut [f32]) {
    let d = v.len();
    out.fill(0.0);
    for (k, &vk) in v.iter().enumerate() {
        axpy(vk, &a[k * d..(k + 1) * d], out);
    }
}

/// The ALS loss Σ c (p − x.y)² over all pairs plus λ(‖X‖² + ‖Y‖²), computed the slow, obvious
/// way (for tests on small matrices).
#[cfg(test)]
pub(crate) fn loss(ui: &Csr, f: &Factors, p: &AlsParams) -> f64 {
    let d = f.dim;
    let mut total = 0f64;
    for u in 0..ui.rows {
        for i in 0..ui.cols {
            let pred = dot(&f.user[u * d..(u + 1) * d], &f.item[i * d..(i + 1) * d]) as f64;
            let (items, values) = ui.row(u);
            let (c, target) = match items.binary_search(&(i as u32)) {
                Ok(k) => ((p.alpha * values[k]) as f64, 1.0),
                Err(_) => (1.0, 0.0),
            };
            total += c * (target - pred).powi(2);
        }
    }
    let norm: f64 = f.user.iter().chain(&f.item).map(|v| (*v as f64).powi(2)).sum();
    total + p.regularization as f64 * norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Csr {
        // Two taste groups over 8 items.
        let mut t = Vec::new();
        for u in 0..12u32 {
            let base = if u % 2 == 0 { 0 } else { 4 };
            for k in 0..3 {
                t.push((u, base + (u + k) % 4, 1.0 + (k as f32)));
            }
        }
        Csr::from_triplets(12, 8, t.into_iter())
    }

    #[test]
    fn each_exact_half_step_lowers_the_loss_and_cg_approaches_it() {
        let ui = toy();
        let p = AlsParams { factors: 4, regularization: 0.1, alpha: 4.0, iterations: 1, cg_steps: 0 };
        let mut f = fit(&ui, &AlsParams { iterations: 0, ..p }, 1, |_| {});
        let mut last = loss(&ui, &f, &p);
        let iu = ui.transpose();
        for _ in 0..5 {
            solve_side(&ui, &mut f.user, &f.item, &p);
            let l = loss(&ui, &f, &p);
            assert!(l <= last + 1e-6, "{l} > {last}");
            solve_side(&iu, &mut f.item, &f.user, &p);
            let l2 = loss(&ui, &f, &p);
            assert!(l2 <= l + 1e-6, "{l2} > {l}");
            last = l2;
        }
        // CG with enough steps reaches the exact solution of a half-step.
        let mut exact = f.user.clone();
        solve_side(&ui, &mut exact, &f.item, &p);
        let mut cg = f.user.clone();
        solve_side(&ui, &mut cg, &f.item, &AlsParams { cg_steps: 20, ..p });
        for (a, b) in exact.iter().zip(&cg) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn learns_the_two_groups() {
        let ui = toy();
        // Two factors and firm regularisation leave room for the groups, not for each user's items.
        let f = fit(&ui, &AlsParams { factors: 2, regularization: 1.0, alpha: 10.0, iterations: 15, cg_steps: 3 }, 7, |_| {});
        // User 0 (group 0) scores an unseen group-0 item above every group-1 item.
        let score = |u: usize, i: usize| dot(&f.user[u * 2..u * 2 + 2], &f.item[i * 2..i * 2 + 2]);
        let unseen = (0..4).find(|&i| !ui.contains(0, i as u32)).unwrap();
        for other in 4..8 {
            assert!(score(0, unseen) > score(0, other), "{} vs {}", score(0, unseen), score(0, other));
        }
    }
}
