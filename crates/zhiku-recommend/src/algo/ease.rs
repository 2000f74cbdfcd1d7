//! EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): the item-item
//! weight matrix B that best reconstructs the binary user-item matrix X from itself with a zero
//! diagonal, in closed form: P = (XᵀX + λI)⁻¹, B_ij = −P_ij / P_jj, B_ii = 0. A user's scores are
//! their history row times B. Dense in the number of items (n² weights, n³ to train), so it is
//! offered for catalogues up to MAX_ITEMS.

use crate::matrix::Csr;
use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub const MAX_ITEMS: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EaseParams {
    pub regularization: f32,
}

impl Default for EaseParams {
    fn default() -> Self {
        Self { regularization: 250.0 }
    }
}

/// B, row-major n x n.
pub fn fit(ui: &Csr, p: &EaseParams) -> Result<Vec<f32>> {
    let n = ui.cols;
    if n > MAX_ITEMS {
        bail!("EASE keeps an {n} x {n} item matrix; it is offered up to {MAX_ITEMS} items (use als or bpr)");
    }
    let mut g = vec![0f64; n * n];
    for u in 0..ui.rows {
        let items = ui.row(u).0;
        for &a in items {
            let row = &mut g[a as usize * n..(a as usize + 1) * n];
            for &b in items {
                row[b as usize] += 1.0;
            }
        }
    }
    for i in 0..n {
        g[i * n + i] += p.regularization as f64;
    }
    invert_spd(&mut g, n);
    let mut b = vec![0f32; n * n];
    b.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = if i == j { 0.0 } else { (-g[i * n + j] / g[j * n + j]) as f32 };
        }
    });
    Ok(b)
}

/// In-place Gauss-Jordan inverse of a symmetric positive definite matrix (no pivoting needed:
/// every pivot of an SPD matrix is positive). Rows are updated in parallel.
fn invert_spd(a: &mut [f64], n: usize) {
    let mut pivot_row = vec![0f64; n];
    for k in 0..n {
        let p = a[k * n + k];
        a[k * n + k] = 1.0;
        for v in &mut a[k * n..(k + 1) * n] {
            *v /= p;
        }
        pivot_row.copy_from_slice(&a[k * n..(k + 1) * n]);
        a.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            if i == k {
                return;
            }
            let f = row[k];
            if f == 0.0 {
                return;
            }
            row[k] = 0.0;
            for (r, q) in row.iter_mut().zip(&pivot_row) {
                *r -= f * q;
            }
        });
    }
}

/// Scores every item for a history: Σ_{j ∈ history} B[j, ·].
pub fn score(b: &[f32], n: usize, history: &[u32], out: &mut [f32]) {
    out.fill(0.0);
    for &j in history {
        for (o, w) in out.iter_mut().zip(&b[j as usize * n..(j as usize + 1) * n]) {
            *o += w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_times_matrix_is_identity() {
        let n = 5;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = 1.0 / (1.0 + (i as f64 - j as f64).abs()) + if i == j { 2.0 } else { 0.0 };
            }
        }
        let orig = a.clone();
        invert_spd(&mut a, n);
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|k| orig[i * n + k] * a[k * n + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10, "{i},{j}: {v}");
            }
        }
    }

    #[test]
    fn weights_have_a_zero_diagonal_and_favour_co_occurring_items() {
        let ui = Csr::from_triplets(4, 3, [(0u32, 0u32, 1.0f32), (0, 1, 1.0), (1, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0), (3, 0, 1.0)].into_iter());
        let b = fit(&ui, &EaseParams { regularization: 0.5 }).unwrap();
        assert!((0..3).all(|i| b[i * 3 + i] == 0.0));
        let mut out = vec![0.0; 3];
        score(&b, 3, &[0], &mut out);
        assert!(out[1] > out[2], "{out:?}");
    }
}
